//! Command-line flags: every flag of nats-streaming-server and of its embedded NATS server
//! (stan-reference.md §2.2-2.7). Go's flag package accepts `-name` and `--name` alike, so
//! single-dash long flags (`-sc`, `-cid`, `-DV`, `-user`) are rewritten to their double-dash
//! form before clap sees them; true single-letter flags (`-p 4222`) are left alone. Boolean
//! flags may be bare (`-SD`) or carry a value (`-SD=false`), as in Go.

use super::conf;
use super::load;
use super::options::{ConfigError, Options};
use super::streaming::{ClusterOptions, StoreType};
use clap::Parser;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Parser, Default)]
#[command(
    name = "stanza",
    version,
    about = "A NATS Streaming server, thread-per-core on glommio; a drop-in replacement for \
             nats-streaming-server (same flags, config files and client protocol)",
    disable_help_flag = true,
    disable_version_flag = true,
    allow_negative_numbers = true,
    // Go's flag package takes a repeated flag and keeps the last value; wrapper scripts and
    // test harnesses rely on prepending flags.
    args_override_self = true,
    max_term_width = 100
)]
pub struct Cli {
    /// Print help
    #[arg(short = 'h', long = "help", action = clap::ArgAction::Help, help_heading = "Common")]
    help: Option<bool>,
    /// Print the version
    #[arg(short = 'v', long = "version", action = clap::ArgAction::Version, help_heading = "Common")]
    version: Option<bool>,
    /// Send a signal to a running server: stop, quit, reopen, reload (optionally =<pid>)
    #[arg(
        long = "signal",
        alias = "sl",
        value_name = "SIGNAL[=PID]",
        help_heading = "Common"
    )]
    pub signal: Option<String>,
    /// Check the configuration and exit
    #[arg(short = 't', help_heading = "Common")]
    pub check_config: bool,

    // ---- Streaming server ----
    /// Cluster ID (default: test-cluster)
    #[arg(
        long = "cluster_id",
        alias = "cid",
        value_name = "ID",
        help_heading = "Streaming Server"
    )]
    pub cluster_id: Option<String>,
    /// Store type: MEMORY|FILE|SQL (default: MEMORY)
    #[arg(
        long = "store",
        alias = "st",
        value_name = "TYPE",
        help_heading = "Streaming Server"
    )]
    pub store: Option<String>,
    /// For FILE store type, this is the root directory
    #[arg(long = "dir", value_name = "DIR", help_heading = "Streaming Server")]
    pub dir: Option<PathBuf>,
    /// Max number of channels (0 for unlimited)
    #[arg(
        long = "max_channels",
        alias = "mc",
        value_name = "INT",
        help_heading = "Streaming Server"
    )]
    pub max_channels: Option<i64>,
    /// Max number of subscriptions per channel (0 for unlimited)
    #[arg(
        long = "max_subs",
        alias = "msu",
        value_name = "INT",
        help_heading = "Streaming Server"
    )]
    pub max_subs: Option<i64>,
    /// Max number of messages per channel (0 for unlimited)
    #[arg(
        long = "max_msgs",
        alias = "mm",
        value_name = "INT",
        help_heading = "Streaming Server"
    )]
    pub max_msgs: Option<i64>,
    /// Max messages total size per channel (0 for unlimited)
    #[arg(long = "max_bytes", alias = "mb", value_name = "SIZE", value_parser = parse_size, help_heading = "Streaming Server")]
    pub max_bytes: Option<i64>,
    /// Max duration a message can be stored ("0s" for unlimited)
    #[arg(long = "max_age", alias = "ma", value_name = "DURATION", value_parser = parse_duration, help_heading = "Streaming Server")]
    pub max_age: Option<Duration>,
    /// Max inactivity (no new message, no subscription) after which a channel is removed
    #[arg(long = "max_inactivity", alias = "mi", value_name = "DURATION", value_parser = parse_duration, help_heading = "Streaming Server")]
    pub max_inactivity: Option<Duration>,
    /// Connect to this external NATS server URL (embedded otherwise)
    #[arg(
        long = "nats_server",
        alias = "ns",
        value_name = "URL",
        help_heading = "Streaming Server"
    )]
    pub nats_server: Option<String>,
    /// Streaming server configuration file
    #[arg(
        long = "stan_config",
        alias = "sc",
        value_name = "FILE",
        help_heading = "Streaming Server"
    )]
    pub stan_config: Option<PathBuf>,
    /// Interval at which the server sends heartbeats to a client
    #[arg(long = "hb_interval", alias = "hbi", value_name = "DURATION", value_parser = parse_duration, help_heading = "Streaming Server")]
    pub hb_interval: Option<Duration>,
    /// How long the server waits for a heartbeat response
    #[arg(long = "hb_timeout", alias = "hbt", value_name = "DURATION", value_parser = parse_duration, help_heading = "Streaming Server")]
    pub hb_timeout: Option<Duration>,
    /// Number of failed heartbeats before the server closes the client connection
    #[arg(
        long = "hb_fail_count",
        alias = "hbf",
        value_name = "INT",
        help_heading = "Streaming Server"
    )]
    pub hb_fail_count: Option<u32>,
    /// Name of the FT group; enables fault-tolerant mode
    #[arg(
        long = "ft_group",
        value_name = "NAME",
        help_heading = "Streaming Server"
    )]
    pub ft_group: Option<String>,
    /// Encrypt messages at rest
    #[arg(long = "encrypt", num_args = 0..=1, default_missing_value = "true", require_equals = true, help_heading = "Streaming Server")]
    pub encrypt: Option<bool>,
    /// AES or CHACHA
    #[arg(
        long = "encryption_cipher",
        value_name = "CIPHER",
        help_heading = "Streaming Server"
    )]
    pub encryption_cipher: Option<String>,
    /// Encryption key (the NATS_STREAMING_ENCRYPTION_KEY variable is preferred)
    #[arg(
        long = "encryption_key",
        value_name = "KEY",
        help_heading = "Streaming Server"
    )]
    pub encryption_key: Option<String>,
    /// Replace the existing durable subscription instead of reporting a duplicate
    #[arg(long = "replace_durable", num_args = 0..=1, default_missing_value = "true", require_equals = true, help_heading = "Streaming Server")]
    pub replace_durable: Option<bool>,
    /// Max number of messages per I/O batch (accepted for compatibility)
    #[arg(long = "io_batch_size", value_name = "INT", hide = true)]
    pub io_batch_size: Option<usize>,
    /// Microseconds to wait for a batch to fill (accepted for compatibility)
    #[arg(long = "io_sleep_time", value_name = "INT", hide = true)]
    pub io_sleep_time: Option<u64>,

    // ---- Streaming clustering ----
    /// Run in cluster mode
    #[arg(long = "clustered", num_args = 0..=1, default_missing_value = "true", require_equals = true, help_heading = "Streaming Server Clustering")]
    pub clustered: Option<bool>,
    /// ID of the node within the cluster if there is no stored ID
    #[arg(
        long = "cluster_node_id",
        value_name = "ID",
        help_heading = "Streaming Server Clustering"
    )]
    pub cluster_node_id: Option<String>,
    /// Bootstrap the cluster if there is no existing state by electing self as leader
    #[arg(long = "cluster_bootstrap", num_args = 0..=1, default_missing_value = "true", require_equals = true, help_heading = "Streaming Server Clustering")]
    pub cluster_bootstrap: Option<bool>,
    /// Comma-separated list of cluster peer node IDs to bootstrap cluster state
    #[arg(
        long = "cluster_peers",
        value_name = "IDS",
        help_heading = "Streaming Server Clustering"
    )]
    pub cluster_peers: Option<String>,
    /// Directory to store log replication data
    #[arg(
        long = "cluster_log_path",
        value_name = "DIR",
        help_heading = "Streaming Server Clustering"
    )]
    pub cluster_log_path: Option<PathBuf>,
    /// Number of log entries to cache in memory to reduce disk IO
    #[arg(
        long = "cluster_log_cache_size",
        value_name = "INT",
        help_heading = "Streaming Server Clustering"
    )]
    pub cluster_log_cache_size: Option<i64>,
    /// Number of log snapshots to retain
    #[arg(
        long = "cluster_log_snapshots",
        value_name = "INT",
        help_heading = "Streaming Server Clustering"
    )]
    pub cluster_log_snapshots: Option<i64>,
    /// Number of log entries to leave after a snapshot and compaction
    #[arg(
        long = "cluster_trailing_logs",
        value_name = "INT",
        help_heading = "Streaming Server Clustering"
    )]
    pub cluster_trailing_logs: Option<i64>,
    /// Do a file sync after every write to the replication log and message store
    #[arg(long = "cluster_sync", num_args = 0..=1, default_missing_value = "true", require_equals = true, help_heading = "Streaming Server Clustering")]
    pub cluster_sync: Option<bool>,
    /// Enable logging from the raft library
    #[arg(long = "cluster_raft_logging", num_args = 0..=1, default_missing_value = "true", require_equals = true, help_heading = "Streaming Server Clustering")]
    pub cluster_raft_logging: Option<bool>,
    /// Start even if snapshot messages cannot be restored
    #[arg(long = "cluster_proceed_on_restore_failure", num_args = 0..=1, default_missing_value = "true", require_equals = true, hide = true)]
    pub cluster_proceed_on_restore_failure: Option<bool>,
    /// Enable the ability to send requests to the leader to add/remove cluster nodes
    #[arg(long = "cluster_allow_add_remove_node", num_args = 0..=1, default_missing_value = "true", require_equals = true, help_heading = "Streaming Server Clustering")]
    pub cluster_allow_add_remove_node: Option<bool>,

    // ---- File store ----
    /// Enable file compaction
    #[arg(long = "file_compact_enabled", num_args = 0..=1, default_missing_value = "true", require_equals = true, help_heading = "Streaming Server File Store")]
    pub file_compact_enabled: Option<bool>,
    /// File fragmentation threshold for compaction
    #[arg(
        long = "file_compact_frag",
        value_name = "INT",
        help_heading = "Streaming Server File Store"
    )]
    pub file_compact_frag: Option<i64>,
    /// Minimum interval (in seconds) between file compactions
    #[arg(
        long = "file_compact_interval",
        value_name = "INT",
        help_heading = "Streaming Server File Store"
    )]
    pub file_compact_interval: Option<i64>,
    /// Minimum file size for compaction
    #[arg(long = "file_compact_min_size", value_name = "SIZE", value_parser = parse_size, help_heading = "Streaming Server File Store")]
    pub file_compact_min_size: Option<i64>,
    /// File buffer size (in bytes)
    #[arg(long = "file_buffer_size", value_name = "SIZE", value_parser = parse_size, help_heading = "Streaming Server File Store")]
    pub file_buffer_size: Option<i64>,
    /// Enable file CRC-32 checksum
    #[arg(long = "file_crc", num_args = 0..=1, default_missing_value = "true", require_equals = true, help_heading = "Streaming Server File Store")]
    pub file_crc: Option<bool>,
    /// Polynomial used to make the table used for CRC-32 checksum
    #[arg(
        long = "file_crc_poly",
        value_name = "INT",
        help_heading = "Streaming Server File Store"
    )]
    pub file_crc_poly: Option<i64>,
    /// Enable File.Sync on Flush
    #[arg(long = "file_sync", num_args = 0..=1, default_missing_value = "true", require_equals = true, help_heading = "Streaming Server File Store")]
    pub file_sync: Option<bool>,
    /// Maximum number of messages per file slice (subject to channel limits)
    #[arg(
        long = "file_slice_max_msgs",
        value_name = "INT",
        help_heading = "Streaming Server File Store"
    )]
    pub file_slice_max_msgs: Option<i64>,
    /// Maximum file slice size, including index file (subject to channel limits)
    #[arg(long = "file_slice_max_bytes", value_name = "SIZE", value_parser = parse_size, help_heading = "Streaming Server File Store")]
    pub file_slice_max_bytes: Option<i64>,
    /// Maximum file slice duration starting when the first message is stored
    #[arg(long = "file_slice_max_age", value_name = "DURATION", value_parser = parse_duration, help_heading = "Streaming Server File Store")]
    pub file_slice_max_age: Option<Duration>,
    /// Path to script to use if you want to archive a file slice being removed
    #[arg(
        long = "file_slice_archive_script",
        value_name = "FILE",
        help_heading = "Streaming Server File Store"
    )]
    pub file_slice_archive_script: Option<PathBuf>,
    /// Store will try to use no more file descriptors than this given limit
    #[arg(
        long = "file_fds_limit",
        value_name = "INT",
        help_heading = "Streaming Server File Store"
    )]
    pub file_fds_limit: Option<i64>,
    /// On startup, number of channels that can be recovered in parallel
    #[arg(
        long = "file_parallel_recovery",
        value_name = "INT",
        help_heading = "Streaming Server File Store"
    )]
    pub file_parallel_recovery: Option<i64>,
    /// stanza: with file_sync, write zeroes ahead of the records (faster synced commits, twice
    /// the bytes written; false for SD cards)
    #[arg(long = "file_zero_ahead", num_args = 0..=1, default_missing_value = "true", require_equals = true, help_heading = "Streaming Server File Store")]
    pub file_zero_ahead: Option<bool>,
    /// Truncate files for which there is an unexpected EOF on recovery, dataloss may occur
    #[arg(long = "file_truncate_bad_eof", num_args = 0..=1, default_missing_value = "true", require_equals = true, help_heading = "Streaming Server File Store")]
    pub file_truncate_bad_eof: Option<bool>,
    /// Size of messages read ahead from message files (in bytes)
    #[arg(long = "file_read_buffer_size", value_name = "SIZE", value_parser = parse_size, help_heading = "Streaming Server File Store")]
    pub file_read_buffer_size: Option<i64>,
    /// Interval at which the store should be automatically flushed and sync'ed on disk (<= 0 to disable)
    #[arg(long = "file_auto_sync", value_name = "DURATION", value_parser = parse_duration, help_heading = "Streaming Server File Store")]
    pub file_auto_sync: Option<Duration>,

    // ---- SQL store ----
    /// Name of the SQL driver to use (mysql or postgres)
    #[arg(
        long = "sql_driver",
        value_name = "DRIVER",
        help_heading = "Streaming Server SQL Store"
    )]
    pub sql_driver: Option<String>,
    /// Datasource used when opening an SQL connection to the database
    #[arg(
        long = "sql_source",
        value_name = "SOURCE",
        help_heading = "Streaming Server SQL Store"
    )]
    pub sql_source: Option<String>,
    /// Enable/Disable caching for improved performance
    #[arg(long = "sql_no_caching", num_args = 0..=1, default_missing_value = "true", require_equals = true, help_heading = "Streaming Server SQL Store")]
    pub sql_no_caching: Option<bool>,
    /// Maximum number of opened connections to the database
    #[arg(
        long = "sql_max_open_conns",
        value_name = "INT",
        help_heading = "Streaming Server SQL Store"
    )]
    pub sql_max_open_conns: Option<i64>,
    /// Maximum number of messages stored with a single SQL "INSERT" statement
    #[arg(
        long = "sql_bulk_insert_limit",
        value_name = "INT",
        help_heading = "Streaming Server SQL Store"
    )]
    pub sql_bulk_insert_limit: Option<i64>,

    // ---- Streaming TLS (connections to NATS) ----
    /// Use a TLS connection to the NATS server without verification
    #[arg(long = "secure", num_args = 0..=1, default_missing_value = "true", require_equals = true, help_heading = "Streaming Server TLS")]
    pub secure: Option<bool>,
    /// Client certificate for the streaming server
    #[arg(
        long = "tls_client_cert",
        value_name = "FILE",
        help_heading = "Streaming Server TLS"
    )]
    pub tls_client_cert: Option<PathBuf>,
    /// Client private key for the streaming server
    #[arg(
        long = "tls_client_key",
        value_name = "FILE",
        help_heading = "Streaming Server TLS"
    )]
    pub tls_client_key: Option<PathBuf>,
    /// Client certificate CA for the streaming server
    #[arg(
        long = "tls_client_cacert",
        value_name = "FILE",
        help_heading = "Streaming Server TLS"
    )]
    pub tls_client_cacert: Option<PathBuf>,

    // ---- Streaming logging ----
    /// Enable STAN debugging output
    #[arg(long = "stan_debug", alias = "SD", num_args = 0..=1, default_missing_value = "true", require_equals = true, help_heading = "Streaming Server Logging")]
    pub stan_debug: Option<bool>,
    /// Trace the raw STAN protocol
    #[arg(long = "stan_trace", alias = "SV", num_args = 0..=1, default_missing_value = "true", require_equals = true, help_heading = "Streaming Server Logging")]
    pub stan_trace: Option<bool>,
    /// Debug and trace STAN
    #[arg(long = "SDV", help_heading = "Streaming Server Logging")]
    pub stan_debug_and_trace: bool,
    /// Event source name for the Windows event log (accepted; unused on Linux)
    #[arg(
        long = "syslog_name",
        value_name = "NAME",
        help_heading = "Streaming Server Logging"
    )]
    pub syslog_name: Option<String>,

    // ---- Embedded NATS server ----
    /// NATS configuration file (also the streaming one unless -sc names another)
    #[arg(
        short = 'c',
        long = "config",
        value_name = "FILE",
        help_heading = "NATS Server"
    )]
    pub config: Option<PathBuf>,
    /// Bind to host address (default: 0.0.0.0)
    #[arg(
        short = 'a',
        long = "addr",
        alias = "net",
        value_name = "HOST",
        help_heading = "NATS Server"
    )]
    pub addr: Option<String>,
    /// Use port for clients (default: 4222)
    #[arg(
        short = 'p',
        long = "port",
        value_name = "PORT",
        help_heading = "NATS Server"
    )]
    pub port: Option<u16>,
    /// Server name (default: auto)
    #[arg(
        short = 'n',
        long = "name",
        alias = "server_name",
        value_name = "NAME",
        help_heading = "NATS Server"
    )]
    pub name: Option<String>,
    /// Client URL to advertise to other servers
    #[arg(
        long = "client_advertise",
        value_name = "URL",
        help_heading = "NATS Server"
    )]
    pub client_advertise: Option<String>,
    /// Use port for http monitoring
    #[arg(
        short = 'm',
        long = "http_port",
        value_name = "PORT",
        help_heading = "NATS Server"
    )]
    pub http_port: Option<u16>,
    /// Use port for https monitoring
    #[arg(
        long = "https_port",
        alias = "ms",
        value_name = "PORT",
        help_heading = "NATS Server"
    )]
    pub https_port: Option<u16>,
    /// File to store PID
    #[arg(
        short = 'P',
        long = "pid",
        value_name = "FILE",
        help_heading = "NATS Server"
    )]
    pub pid_file: Option<PathBuf>,
    /// Directory to write a ports file to
    #[arg(
        long = "ports_file_dir",
        value_name = "DIR",
        help_heading = "NATS Server"
    )]
    pub ports_file_dir: Option<PathBuf>,
    /// Number of cores (shards) to run on (default: all online CPUs)
    #[arg(long = "cores", value_name = "N", help_heading = "NATS Server")]
    pub cores: Option<usize>,
    /// How long an idle core polls before sleeping (stanza only; 0 disables; default 100us)
    #[arg(long = "spin_before_park", value_name = "DURATION", value_parser = parse_duration, help_heading = "NATS Server")]
    pub spin_before_park: Option<Duration>,
    /// Profiling HTTP port (accepted; stanza has no Go profiler)
    #[arg(long = "profile", value_name = "PORT", hide = true)]
    pub profile: Option<u16>,

    // ---- Logging ----
    /// File to redirect log output (reopened on SIGUSR1)
    #[arg(
        short = 'l',
        long = "log",
        value_name = "FILE",
        help_heading = "NATS Server Logging"
    )]
    pub log_file: Option<PathBuf>,
    /// Log file size limit (rotation)
    #[arg(long = "log_size_limit", value_name = "SIZE", value_parser = parse_size, help_heading = "NATS Server Logging")]
    pub log_size_limit: Option<i64>,
    /// Timestamp log entries (default: true)
    #[arg(short = 'T', long = "logtime", num_args = 0..=1, default_missing_value = "true", require_equals = true, help_heading = "NATS Server Logging")]
    pub logtime: Option<bool>,
    /// Timestamps in UTC instead of local time
    #[arg(long = "logtime_utc", num_args = 0..=1, default_missing_value = "true", require_equals = true, help_heading = "NATS Server Logging")]
    pub logtime_utc: Option<bool>,
    /// Log to syslog or windows event log
    #[arg(short = 's', long = "syslog", num_args = 0..=1, default_missing_value = "true", require_equals = true, help_heading = "NATS Server Logging")]
    pub syslog: Option<bool>,
    /// Syslog server addr (udp://localhost:514)
    #[arg(
        short = 'r',
        long = "remote_syslog",
        value_name = "URL",
        help_heading = "NATS Server Logging"
    )]
    pub remote_syslog: Option<String>,
    /// Enable debugging output
    #[arg(short = 'D', long = "debug", num_args = 0..=1, default_missing_value = "true", require_equals = true, help_heading = "NATS Server Logging")]
    pub debug: Option<bool>,
    /// Trace the raw protocol
    #[arg(short = 'V', long = "trace", num_args = 0..=1, default_missing_value = "true", require_equals = true, help_heading = "NATS Server Logging")]
    pub trace: Option<bool>,
    /// Verbose trace (traces system account as well)
    #[arg(long = "VV", help_heading = "NATS Server Logging")]
    pub verbose_trace: bool,
    /// Debug and trace
    #[arg(long = "DV", help_heading = "NATS Server Logging")]
    pub debug_and_trace: bool,
    /// Debug and verbose trace
    #[arg(long = "DVV", help_heading = "NATS Server Logging")]
    pub debug_and_verbose_trace: bool,
    /// Maximum printable length for traced messages (accepted)
    #[arg(long = "max_traced_msg_len", value_name = "LEN", hide = true)]
    pub max_traced_msg_len: Option<i64>,

    // ---- Authorization ----
    /// User required for connections
    #[arg(
        long = "user",
        value_name = "USER",
        help_heading = "NATS Server Authorization"
    )]
    pub user: Option<String>,
    /// Password required for connections
    #[arg(
        long = "pass",
        value_name = "PASSWORD",
        help_heading = "NATS Server Authorization"
    )]
    pub pass: Option<String>,
    /// Authorization token required for connections
    #[arg(
        long = "auth",
        value_name = "TOKEN",
        help_heading = "NATS Server Authorization"
    )]
    pub auth: Option<String>,

    // ---- TLS ----
    /// Enable TLS, do not verify clients (default: false)
    #[arg(long = "tls", num_args = 0..=1, default_missing_value = "true", require_equals = true, help_heading = "NATS Server TLS")]
    pub tls: Option<bool>,
    /// Server certificate file
    #[arg(
        long = "tlscert",
        value_name = "FILE",
        help_heading = "NATS Server TLS"
    )]
    pub tlscert: Option<PathBuf>,
    /// Private key for server certificate
    #[arg(long = "tlskey", value_name = "FILE", help_heading = "NATS Server TLS")]
    pub tlskey: Option<PathBuf>,
    /// Enable TLS, verify client certificates
    #[arg(long = "tlsverify", num_args = 0..=1, default_missing_value = "true", require_equals = true, help_heading = "NATS Server TLS")]
    pub tlsverify: Option<bool>,
    /// Client certificate CA for verification
    #[arg(
        long = "tlscacert",
        value_name = "FILE",
        help_heading = "NATS Server TLS"
    )]
    pub tlscacert: Option<PathBuf>,

    // ---- NATS clustering (routes) ----
    /// Routes to solicit and connect
    #[arg(
        long = "routes",
        value_name = "URLS",
        help_heading = "NATS Server Clustering"
    )]
    pub routes: Option<String>,
    /// Cluster URL for solicited routes
    #[arg(
        long = "cluster",
        alias = "cluster_listen",
        value_name = "URL",
        help_heading = "NATS Server Clustering"
    )]
    pub cluster_listen: Option<String>,
    /// Cluster name
    #[arg(
        long = "cluster_name",
        value_name = "NAME",
        help_heading = "NATS Server Clustering"
    )]
    pub cluster_name: Option<String>,
    /// Cluster URL to advertise to other servers
    #[arg(
        long = "cluster_advertise",
        value_name = "URL",
        help_heading = "NATS Server Clustering"
    )]
    pub cluster_advertise: Option<String>,
    /// Do not advertise known cluster IPs to clients
    #[arg(long = "no_advertise", num_args = 0..=1, default_missing_value = "true", require_equals = true, help_heading = "NATS Server Clustering")]
    pub no_advertise: Option<bool>,
    /// For implicit routes, number of connect retries
    #[arg(
        long = "connect_retries",
        value_name = "INT",
        help_heading = "NATS Server Clustering"
    )]
    pub connect_retries: Option<i64>,

    // ---- JetStream (not part of NATS Streaming) ----
    /// Accepted for compatibility; stanza does not run JetStream
    #[arg(long = "jetstream", alias = "js", num_args = 0..=1, default_missing_value = "true", require_equals = true, hide = true)]
    pub jetstream: Option<bool>,
    /// Accepted for compatibility; stanza does not run JetStream
    #[arg(long = "store_dir", alias = "sd", value_name = "DIR", hide = true)]
    pub store_dir: Option<PathBuf>,
}

fn parse_size(text: &str) -> Result<i64, String> {
    conf::parse_sized_integer(text.trim()).ok_or_else(|| format!("'{text}' is not a valid size"))
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    conf::parse_duration(text).ok_or_else(|| format!("'{text}' is not a valid duration"))
}

/// Long flags that Go users write with one dash.
fn rewrite_go_flag(arg: String) -> String {
    let Some(rest) = arg.strip_prefix('-') else {
        return arg;
    };
    if rest.starts_with('-') || rest.len() < 2 || rest.starts_with(|c: char| c.is_ascii_digit()) {
        return arg;
    }
    let name = rest.split('=').next().unwrap_or(rest);
    // Single-letter flags take no glued value in Go's flag package, so any longer name is a
    // long flag.
    if name.len() >= 2 {
        return format!("-{arg}");
    }
    arg
}

pub fn normalize_args(args: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut out = Vec::new();
    let mut iter = args.into_iter();
    if let Some(program) = iter.next() {
        out.push(program);
    }
    let mut after_double_dash = false;
    for arg in iter {
        if after_double_dash {
            out.push(arg);
            continue;
        }
        if arg == "--" {
            after_double_dash = true;
            out.push(arg);
            continue;
        }
        out.push(rewrite_go_flag(arg));
    }
    out
}

fn set<T: Clone>(target: &mut T, flag: &Option<T>) {
    if let Some(v) = flag {
        *target = v.clone();
    }
}

fn set_some<T: Clone>(target: &mut Option<T>, flag: &Option<T>) {
    if flag.is_some() {
        target.clone_from(flag);
    }
}

impl Cli {
    pub fn parse_from_env() -> Result<Cli, clap::Error> {
        Cli::try_parse_from(normalize_args(std::env::args()))
    }

    /// Builds options: defaults, then the config file(s), then flags. Returns warnings to log.
    pub fn build_options(&self) -> Result<(Options, Vec<String>), ConfigError> {
        let mut options = Options::default();
        let warnings = load::apply_files(
            &mut options,
            self.config.as_deref(),
            self.stan_config.as_deref(),
        )?;
        options.finish()?;
        self.apply_flags(&mut options)?;
        if let Ok(key) = std::env::var("NATS_STREAMING_ENCRYPTION_KEY") {
            if !key.is_empty() {
                options.streaming.encryption_key = Some(key);
            }
        }
        if options.streaming.encryption_key.is_some() {
            options.streaming.encrypt = true;
        }
        options.validate()?;
        Ok((options, warnings))
    }

    /// Flags win over the file.
    pub fn apply_flags(&self, o: &mut Options) -> Result<(), ConfigError> {
        self.apply_nats_flags(o);
        self.apply_streaming_flags(o)?;
        Ok(())
    }

    fn apply_nats_flags(&self, o: &mut Options) {
        set(&mut o.host, &self.addr);
        set(&mut o.port, &self.port);
        set_some(&mut o.server_name, &self.name);
        set_some(&mut o.client_advertise, &self.client_advertise);
        set_some(&mut o.cores, &self.cores);
        set_some(&mut o.spin_before_park, &self.spin_before_park);
        set_some(&mut o.http_port, &self.http_port);
        set_some(&mut o.https_port, &self.https_port);
        set_some(&mut o.pid_file, &self.pid_file);
        set_some(&mut o.ports_file_dir, &self.ports_file_dir);
        set_some(&mut o.log_file, &self.log_file);
        set(&mut o.log_size_limit, &self.log_size_limit);
        set(&mut o.logtime, &self.logtime);
        set(&mut o.logtime_utc, &self.logtime_utc);
        set(&mut o.syslog, &self.syslog);
        set_some(&mut o.remote_syslog, &self.remote_syslog);
        set(&mut o.max_traced_msg_len, &self.max_traced_msg_len);
        set(&mut o.debug, &self.debug);
        set(&mut o.trace, &self.trace);
        if self.debug_and_trace || self.debug_and_verbose_trace {
            o.debug = true;
            o.trace = true;
        }
        if self.verbose_trace {
            o.trace = true;
        }
        if let Some(u) = &self.user {
            o.auth.user = Some(u.clone());
            o.auth.users.clear();
        }
        set_some(&mut o.auth.password, &self.pass);
        set_some(&mut o.auth.token, &self.auth);
        let tls_flags = self.tls.is_some()
            || self.tlscert.is_some()
            || self.tlskey.is_some()
            || self.tlsverify.is_some()
            || self.tlscacert.is_some();
        if tls_flags {
            let tls = o.tls.get_or_insert_with(Default::default);
            set_some(&mut tls.cert_file, &self.tlscert);
            set_some(&mut tls.key_file, &self.tlskey);
            set_some(&mut tls.ca_file, &self.tlscacert);
            set(&mut tls.verify, &self.tlsverify);
        }
        let route_flags = self.routes.is_some()
            || self.cluster_listen.is_some()
            || self.cluster_name.is_some()
            || self.cluster_advertise.is_some()
            || self.no_advertise.is_some()
            || self.connect_retries.is_some();
        if route_flags {
            let c = o.cluster.get_or_insert_with(Default::default);
            if let Some(routes) = &self.routes {
                c.routes = split_list(routes);
            }
            set_some(&mut c.listen, &self.cluster_listen);
            set_some(&mut c.name, &self.cluster_name);
            set_some(&mut c.advertise, &self.cluster_advertise);
            set(&mut c.no_advertise, &self.no_advertise);
            set(&mut c.connect_retries, &self.connect_retries);
        }
    }

    fn apply_streaming_flags(&self, o: &mut Options) -> Result<(), ConfigError> {
        let s = &mut o.streaming;
        set(&mut s.cluster_id, &self.cluster_id);
        if let Some(store) = &self.store {
            s.store = StoreType::parse(store).ok_or_else(|| {
                ConfigError::Invalid(format!(
                    "unsupported store type: {store} (MEMORY, FILE or SQL)"
                ))
            })?;
        }
        set_some(&mut s.dir, &self.dir);
        let l = &mut s.store_limits;
        set(&mut l.max_channels, &self.max_channels);
        set(&mut l.max_subs, &self.max_subs);
        set(&mut l.max_msgs, &self.max_msgs);
        set(&mut l.max_bytes, &self.max_bytes);
        set(&mut l.max_age, &self.max_age);
        set(&mut l.max_inactivity, &self.max_inactivity);
        set_some(&mut s.nats_server, &self.nats_server);
        set(&mut s.hb_interval, &self.hb_interval);
        set(&mut s.hb_timeout, &self.hb_timeout);
        set(&mut s.hb_fail_count, &self.hb_fail_count);
        set_some(&mut s.ft_group, &self.ft_group);
        set(&mut s.encrypt, &self.encrypt);
        set_some(&mut s.encryption_cipher, &self.encryption_cipher);
        set_some(&mut s.encryption_key, &self.encryption_key);
        set(&mut s.replace_durable, &self.replace_durable);
        set(&mut s.io_batch_size, &self.io_batch_size);
        set(&mut s.io_sleep_time_us, &self.io_sleep_time);
        set(&mut s.stan_debug, &self.stan_debug);
        set(&mut s.stan_trace, &self.stan_trace);
        if self.stan_debug_and_trace {
            s.stan_debug = true;
            s.stan_trace = true;
        }
        set_some(&mut s.syslog_name, &self.syslog_name);
        set(&mut s.secure, &self.secure);
        set_some(&mut s.tls.client_cert, &self.tls_client_cert);
        set_some(&mut s.tls.client_key, &self.tls_client_key);
        set_some(&mut s.tls.client_ca, &self.tls_client_cacert);

        let f = &mut s.file;
        set(&mut f.compact, &self.file_compact_enabled);
        set(&mut f.compact_frag, &self.file_compact_frag);
        set(&mut f.compact_interval, &self.file_compact_interval);
        set(&mut f.compact_min_size, &self.file_compact_min_size);
        set(&mut f.buffer_size, &self.file_buffer_size);
        set(&mut f.crc, &self.file_crc);
        set(&mut f.crc_poly, &self.file_crc_poly);
        set(&mut f.sync, &self.file_sync);
        set(&mut f.slice_max_msgs, &self.file_slice_max_msgs);
        set(&mut f.slice_max_bytes, &self.file_slice_max_bytes);
        set(&mut f.slice_max_age, &self.file_slice_max_age);
        set_some(&mut f.slice_archive_script, &self.file_slice_archive_script);
        set(&mut f.file_descriptors_limit, &self.file_fds_limit);
        set(&mut f.parallel_recovery, &self.file_parallel_recovery);
        set(&mut f.truncate_bad_eof, &self.file_truncate_bad_eof);
        set(&mut f.zero_ahead, &self.file_zero_ahead);
        set(&mut f.read_buffer_size, &self.file_read_buffer_size);
        set(&mut f.auto_sync, &self.file_auto_sync);

        let q = &mut s.sql;
        set_some(&mut q.driver, &self.sql_driver);
        set_some(&mut q.source, &self.sql_source);
        set(&mut q.no_caching, &self.sql_no_caching);
        set(&mut q.max_open_conns, &self.sql_max_open_conns);
        set(&mut q.bulk_insert_limit, &self.sql_bulk_insert_limit);

        if self.clustered == Some(false) {
            s.cluster = None;
        }
        let cluster_flags = self.clustered == Some(true)
            || self.cluster_node_id.is_some()
            || self.cluster_bootstrap.is_some()
            || self.cluster_peers.is_some()
            || self.cluster_log_path.is_some()
            || self.cluster_log_cache_size.is_some()
            || self.cluster_log_snapshots.is_some()
            || self.cluster_trailing_logs.is_some()
            || self.cluster_sync.is_some()
            || self.cluster_raft_logging.is_some()
            || self.cluster_proceed_on_restore_failure.is_some()
            || self.cluster_allow_add_remove_node.is_some();
        if cluster_flags && self.clustered != Some(false) {
            let c = s.cluster.get_or_insert_with(ClusterOptions::default);
            set_some(&mut c.node_id, &self.cluster_node_id);
            set(&mut c.bootstrap, &self.cluster_bootstrap);
            if let Some(peers) = &self.cluster_peers {
                c.peers = split_list(peers);
            }
            set_some(&mut c.log_path, &self.cluster_log_path);
            set(&mut c.log_cache_size, &self.cluster_log_cache_size);
            set(&mut c.log_snapshots, &self.cluster_log_snapshots);
            set(&mut c.trailing_logs, &self.cluster_trailing_logs);
            set(&mut c.sync, &self.cluster_sync);
            set(&mut c.raft_logging, &self.cluster_raft_logging);
            set(
                &mut c.proceed_on_restore_failure,
                &self.cluster_proceed_on_restore_failure,
            );
            set(
                &mut c.allow_add_remove_node,
                &self.cluster_allow_add_remove_node,
            );
        }
        Ok(())
    }
}

fn split_list(text: &str) -> Vec<String> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn parse(list: &[&str]) -> Cli {
        Cli::try_parse_from(normalize_args(args(list))).unwrap()
    }

    /// Go's flag package: a repeated flag is accepted and the last value wins (issue 22.5).
    #[test]
    fn repeated_flags_keep_the_last_value() {
        let cli = parse(&[
            "stanza",
            "-a",
            "x",
            "-a",
            "127.0.0.1",
            "-p",
            "1",
            "-p",
            "2",
            "-cid",
            "a",
            "-cid",
            "b",
            "-SD",
            "-SD=false",
            "--max_age",
            "1s",
            "-ma",
            "2s",
        ]);
        let (o, _) = cli.build_options().unwrap();
        assert_eq!(o.host, "127.0.0.1");
        assert_eq!(o.port, 2);
        assert_eq!(o.streaming.cluster_id, "b");
        assert!(!o.streaming.stan_debug);
        assert_eq!(o.streaming.store_limits.max_age, Duration::from_secs(2));
    }

    #[test]
    fn go_style_flags() {
        let cli = parse(&[
            "stanza", "-p", "4333", "-user", "u", "-pass=pw", "-DV", "--cores", "1",
        ]);
        assert_eq!(cli.port, Some(4333));
        assert_eq!(cli.user.as_deref(), Some("u"));
        assert_eq!(cli.pass.as_deref(), Some("pw"));
        assert!(cli.debug_and_trace);
        assert_eq!(cli.cores, Some(1));
        let (o, _) = parse(&["stanza"]).build_options().unwrap();
        assert!(
            o.spin_before_park().is_zero(),
            "no polling unless asked for"
        );
        let (o, _) = parse(&[
            "stanza",
            "-st",
            "file",
            "-dir",
            "/tmp/x",
            "-spin_before_park",
            "250us",
        ])
        .build_options()
        .unwrap();
        assert_eq!(o.spin_before_park(), Duration::from_micros(250));
        let (o, _) = parse(&["stanza", "--spin_before_park=0"])
            .build_options()
            .unwrap();
        assert!(o.spin_before_park().is_zero());
    }

    #[test]
    fn streaming_single_dash_flags() {
        let cli = parse(&[
            "stanza",
            "-cid",
            "prod",
            "-st",
            "file",
            "--dir",
            "/tmp/x",
            "-mm",
            "500",
            "-mb",
            "1MB",
            "-ma",
            "1h30m",
            "-mc",
            "7",
            "-msu",
            "9",
            "-mi",
            "10s",
            "-hbi",
            "5s",
            "-hbt",
            "2s",
            "-hbf",
            "3",
            "-SDV",
            "-ns",
            "nats://127.0.0.1:4222",
            "-m",
            "8222",
            "-ms",
            "8443",
            "-SD=false",
        ]);
        let (o, _) = cli.build_options().unwrap();
        let s = &o.streaming;
        assert_eq!(s.cluster_id, "prod");
        assert_eq!(s.store, StoreType::File);
        assert_eq!(s.store_limits.max_msgs, 500);
        assert_eq!(s.store_limits.max_bytes, 1 << 20);
        assert_eq!(s.store_limits.max_age, Duration::from_secs(5400));
        assert_eq!(s.store_limits.max_channels, 7);
        assert_eq!(s.store_limits.max_subs, 9);
        assert_eq!(s.store_limits.max_inactivity, Duration::from_secs(10));
        assert_eq!(s.hb_interval, Duration::from_secs(5));
        assert_eq!(s.hb_timeout, Duration::from_secs(2));
        assert_eq!(s.hb_fail_count, 3);
        assert!(s.stan_debug && s.stan_trace, "-SDV wins over -SD=false");
        assert_eq!(s.nats_server.as_deref(), Some("nats://127.0.0.1:4222"));
        assert_eq!(o.http_port, Some(8222));
        assert_eq!(o.https_port, Some(8443));
    }

    #[test]
    fn clustering_and_file_flags() {
        let cli = parse(&[
            "stanza",
            "-st",
            "FILE",
            "-dir",
            "/data",
            "-clustered",
            "-cluster_node_id",
            "a",
            "-cluster_peers",
            "a,b, c",
            "-cluster_bootstrap=false",
            "-file_sync=false",
            "-file_slice_max_bytes",
            "10KB",
            "-file_truncate_bad_eof",
            "-file_zero_ahead=false",
        ]);
        let (o, _) = cli.build_options().unwrap();
        let c = o.streaming.cluster.as_ref().unwrap();
        assert_eq!(c.node_id.as_deref(), Some("a"));
        assert_eq!(c.peers, vec!["a", "b", "c"]);
        assert!(!c.bootstrap);
        assert!(!o.streaming.file.sync);
        assert_eq!(o.streaming.file.slice_max_bytes, 10 << 10);
        assert!(o.streaming.file.truncate_bad_eof);
        assert!(!o.streaming.file.zero_ahead);
        assert!(
            parse(&["stanza"])
                .build_options()
                .unwrap()
                .0
                .streaming
                .file
                .zero_ahead
        );
    }

    #[test]
    fn invalid_combinations_are_rejected() {
        for (list, msg) in [
            (
                &["stanza", "-clustered"][..],
                "clustering mode not supported with MEMORY",
            ),
            (&["stanza", "-st", "FILE"][..], "needs a directory"),
            (
                &["stanza", "-mm", "-1"][..],
                "max messages limit cannot be negative",
            ),
            (&["stanza", "-cid", "a.b"][..], "invalid cluster ID"),
            (&["stanza", "--ft_group", "g"][..], "only FILE or SQL"),
        ] {
            let err = parse(list).build_options().unwrap_err().to_string();
            assert!(err.contains(msg), "{list:?}: {err}");
        }
        assert!(
            Cli::try_parse_from(normalize_args(args(&["stanza", "-st", "x"])))
                .unwrap()
                .build_options()
                .is_err()
        );
    }

    #[test]
    fn flags_override_file() {
        let dir = std::env::temp_dir().join(format!("stanza-cli-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.conf");
        std::fs::write(
            &path,
            "port: 5000\nmax_payload: 1000\nstreaming { id: fromfile, store_limits { max_msgs: 10 } }\n",
        )
        .unwrap();
        let p = path.to_str().unwrap();
        let (o, _) = parse(&["stanza", "-c", p, "-p", "6000", "-mm", "20"])
            .build_options()
            .unwrap();
        assert_eq!(o.port, 6000);
        assert_eq!(o.max_payload, 1000);
        assert_eq!(o.streaming.cluster_id, "fromfile");
        assert_eq!(o.streaming.store_limits.max_msgs, 20);
        let (o, _) = parse(&["stanza", "-sc", p]).build_options().unwrap();
        assert_eq!(o.port, 5000, "one -sc file configures NATS too");
        assert_eq!(o.streaming.cluster_id, "fromfile");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
