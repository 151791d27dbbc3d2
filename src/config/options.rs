//! The server's options, one serde model: the embedded NATS server's keys at the top level and
//! the streaming keys in `streaming`. Defaults here, then the configuration file (`load.rs`),
//! then command-line flags (`cli.rs`); `validate` checks what no single key can.

use super::de::{duration, size};
use super::streaming::{StoreType, StreamingOptions};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;
use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct User {
    #[serde(alias = "username")]
    pub user: String,
    #[serde(alias = "pass", default)]
    pub password: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct Authorization {
    #[serde(alias = "username")]
    pub user: Option<String>,
    #[serde(alias = "pass")]
    pub password: Option<String>,
    pub token: Option<String>,
    pub users: Vec<User>,
    /// Seconds a client has to send CONNECT; `None` keeps the server default.
    #[serde(with = "duration::option", skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
}

impl Authorization {
    pub fn required(&self) -> bool {
        self.user.is_some() || self.token.is_some() || !self.users.is_empty()
    }

    /// Only the credentials: what a reload compares to decide whether clients are rechecked.
    pub fn credentials(&self) -> (&Option<String>, &Option<String>, &Option<String>, &[User]) {
        (&self.user, &self.password, &self.token, &self.users)
    }
}

/// `tls { }` of the client port (served once TLS lands).
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct TlsConfig {
    #[serde(alias = "cert")]
    pub cert_file: Option<PathBuf>,
    #[serde(alias = "key")]
    pub key_file: Option<PathBuf>,
    #[serde(alias = "ca")]
    pub ca_file: Option<PathBuf>,
    pub verify: bool,
    pub verify_and_map: bool,
    pub insecure: bool,
    #[serde(with = "duration::option", skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    pub cipher_suites: Vec<String>,
    pub curve_preferences: Vec<String>,
    pub pinned_certs: Vec<String>,
    pub handshake_first: bool,
}

/// The NATS `cluster { }` block: routes between servers (not streaming clustering).
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct RouteCluster {
    pub name: Option<String>,
    pub listen: Option<String>,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub routes: Vec<String>,
    pub authorization: Authorization,
    pub tls: Option<TlsConfig>,
    #[serde(alias = "cluster_advertise")]
    pub advertise: Option<String>,
    pub no_advertise: bool,
    pub connect_retries: i64,
    pub pool_size: i64,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct Options {
    #[serde(alias = "net", alias = "listen_host")]
    pub host: String,
    pub port: u16,
    /// `host:port` in one key; split into `host` and `port` by `finish`.
    #[serde(skip_serializing)]
    pub listen: Option<String>,
    #[serde(alias = "name")]
    pub server_name: Option<String>,
    pub client_advertise: Option<String>,
    /// Number of shards (glommio executors); `None` means one per online CPU.
    pub cores: Option<usize>,
    /// stanza only: how long an idle core polls for work before it sleeps. Sleeping costs a
    /// `membarrier()` (an IPI to every core of the process) and a wake-up later; request/reply
    /// traffic such as synchronous publishing pays that at every message. 0 disables; `None`
    /// is 0 (`spin_before_park()`).
    #[serde(with = "duration::option", skip_serializing_if = "Option::is_none")]
    pub spin_before_park: Option<Duration>,
    #[serde(deserialize_with = "size::deserialize")]
    pub max_payload: usize,
    #[serde(deserialize_with = "size::deserialize")]
    pub max_control_line: usize,
    #[serde(alias = "max_conn")]
    pub max_connections: usize,
    /// 0 means unlimited, as in nats-server.
    #[serde(alias = "max_subs")]
    pub max_subscriptions: usize,
    #[serde(deserialize_with = "size::deserialize")]
    pub max_pending: usize,
    #[serde(with = "duration")]
    pub write_deadline: Duration,
    #[serde(with = "duration")]
    pub ping_interval: Duration,
    pub ping_max: u32,
    #[serde(rename = "authorization")]
    pub auth: Authorization,
    pub no_auth_user: Option<String>,
    #[serde(skip)]
    pub auth_timeout: Duration,
    pub tls: Option<TlsConfig>,
    pub cluster: Option<RouteCluster>,
    #[serde(alias = "monitor_port")]
    pub http_port: Option<u16>,
    pub https_port: Option<u16>,
    /// `host:port` forms of the monitoring listeners.
    pub http: Option<String>,
    pub https: Option<String>,
    pub http_base_path: Option<String>,
    pub debug: bool,
    pub trace: bool,
    pub logtime: bool,
    pub logtime_utc: bool,
    #[serde(alias = "logfile")]
    pub log_file: Option<PathBuf>,
    #[serde(deserialize_with = "size::deserialize", alias = "logfile_size_limit")]
    pub log_size_limit: i64,
    pub max_traced_msg_len: i64,
    pub syslog: bool,
    pub remote_syslog: Option<String>,
    #[serde(alias = "pidfile")]
    pub pid_file: Option<PathBuf>,
    pub ports_file_dir: Option<PathBuf>,
    #[serde(with = "duration")]
    pub lame_duck_duration: Duration,
    #[serde(with = "duration")]
    pub lame_duck_grace_period: Duration,
    /// Filled from the `streaming { }` block or the streaming config file (`load.rs`).
    #[serde(skip_deserializing)]
    pub streaming: StreamingOptions,
    #[serde(skip)]
    pub config_file: Option<PathBuf>,
    #[serde(skip)]
    pub stan_config_file: Option<PathBuf>,
}

const DEFAULT_AUTH_TIMEOUT: Duration = Duration::from_secs(2);

impl Default for Options {
    fn default() -> Self {
        Options {
            host: "0.0.0.0".into(),
            port: 4222,
            listen: None,
            server_name: None,
            client_advertise: None,
            cores: None,
            spin_before_park: None,
            max_payload: 1024 * 1024,
            max_control_line: 4096,
            max_connections: 64 * 1024,
            max_subscriptions: 0,
            max_pending: 64 * 1024 * 1024,
            write_deadline: Duration::from_secs(10),
            ping_interval: Duration::from_secs(120),
            ping_max: 2,
            auth: Authorization::default(),
            no_auth_user: None,
            auth_timeout: DEFAULT_AUTH_TIMEOUT,
            tls: None,
            cluster: None,
            http_port: None,
            https_port: None,
            http: None,
            https: None,
            http_base_path: None,
            debug: false,
            trace: false,
            logtime: true,
            logtime_utc: false,
            log_file: None,
            log_size_limit: 0,
            max_traced_msg_len: 0,
            syslog: false,
            remote_syslog: None,
            pid_file: None,
            ports_file_dir: None,
            lame_duck_duration: Duration::from_secs(120),
            lame_duck_grace_period: Duration::from_secs(10),
            streaming: StreamingOptions::default(),
            config_file: None,
            stan_config_file: None,
        }
    }
}

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error(transparent)]
    Parse(#[from] super::conf::ConfError),
    #[error(transparent)]
    Value(#[from] super::de::DeError),
    #[error("{file}: {msg}")]
    Toml { file: String, msg: String },
    #[error("{0}")]
    Invalid(String),
}

fn invalid(msg: impl Into<String>) -> ConfigError {
    ConfigError::Invalid(msg.into())
}

impl Options {
    /// The polling before sleeping in force: as set, else none. Measured here (2026-12-02,
    /// stan-bench, 200k async publishes of 128 B): 100 us of polling cost 27-28 CPU ticks of
    /// the server on the file store without sync against 19-23 without polling, 15-18 against
    /// 12-15 on the memory store, and 24-28 against 19-23 for one publisher and one subscriber,
    /// at the same or lower rates; one stan.go synchronous publisher got no faster (13.5-13.9k
    /// against 13.0-14.3k msgs/s, memory store). Only a client as quick as `stanza bench`
    /// gains from it when publishing synchronously (18.6-19.1k against 14.6-15.1k msgs/s, for
    /// 30-40% more CPU per message), so it is the operator's choice.
    pub fn spin_before_park(&self) -> Duration {
        self.spin_before_park.unwrap_or(Duration::ZERO)
    }

    /// Settles keys that depend on others once the file is read (`listen`, the authorization
    /// timeout).
    pub fn finish(&mut self) -> Result<(), ConfigError> {
        if let Some(listen) = self.listen.take() {
            let (host, port) = split_host_port(&listen)
                .ok_or_else(|| invalid(format!("listen '{listen}' must be host:port")))?;
            self.port = port;
            if !host.is_empty() {
                self.host = host;
            }
        }
        self.auth_timeout = self.auth.timeout.unwrap_or(DEFAULT_AUTH_TIMEOUT);
        Ok(())
    }

    /// Checks relations between options that no single key can check, with the reference's
    /// messages where it has one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(c) = &self.cluster {
            // nats-server's errors for what route authorization cannot have.
            if c.authorization.token.is_some() {
                return Err(invalid("Cluster authorization does not support tokens"));
            }
            if !c.authorization.users.is_empty() {
                return Err(invalid(
                    "Cluster authorization does not allow multiple users",
                ));
            }
        }
        if self.max_payload == 0 {
            return Err(invalid("max_payload must be positive"));
        }
        if self.max_control_line < 16 {
            return Err(invalid("max_control_line must be at least 16"));
        }
        if self.max_payload > self.max_pending {
            return Err(invalid(format!(
                "max_payload ({}) can not be higher than max_pending ({})",
                self.max_payload, self.max_pending
            )));
        }
        if self.cores == Some(0) {
            return Err(invalid("cores must be at least 1"));
        }
        let auth = &self.auth;
        if auth.token.is_some() && (auth.user.is_some() || !auth.users.is_empty()) {
            return Err(invalid(
                "authorization can not have a token and a user/password at the same time",
            ));
        }
        if auth.user.is_some() && !auth.users.is_empty() {
            return Err(invalid(
                "authorization can not have a single user/pass and a users array",
            ));
        }
        if auth.user.is_some() && auth.password.is_none() {
            return Err(invalid("authorization user has no password"));
        }
        self.validate_streaming()
    }

    fn validate_streaming(&self) -> Result<(), ConfigError> {
        let s = &self.streaming;
        if !is_valid_cluster_id(&s.cluster_id) {
            return Err(invalid(format!(
                "invalid cluster ID {:?}: only alphanumeric and `-` or `_` characters allowed",
                s.cluster_id
            )));
        }
        if !crate::util::subject::is_valid_literal_subject(s.discover_prefix.as_bytes()) {
            return Err(invalid(format!(
                "invalid discover_prefix {:?}",
                s.discover_prefix
            )));
        }
        let limits = s
            .store_limits
            .to_limits()
            .build()
            .map_err(|e| invalid(e.to_string()))?;
        if s.partitioning && s.cluster.is_some() {
            return Err(invalid(
                "stan: channels partitioning in clustering mode is not supported",
            ));
        }
        if s.partitioning && limits.entries.is_empty() {
            return Err(invalid("stan: no configured channel"));
        }
        if s.cluster.is_some() && s.store == StoreType::Memory {
            return Err(invalid(
                "stan: clustering mode not supported with MEMORY store type",
            ));
        }
        if s.ft_group.is_some() && s.store == StoreType::Memory {
            return Err(invalid("ft: only FILE or SQL stores supported in FT mode"));
        }
        if s.ft_group.is_some() && s.cluster.is_some() {
            // The reference does not check this; its FT lock and raft would fight over one store.
            return Err(invalid(
                "ft: FT mode and clustering are mutually exclusive: set either ft_group or cluster",
            ));
        }
        if let Some(group) = &s.ft_group {
            if !crate::util::subject::is_valid_literal_subject(group.as_bytes()) {
                return Err(invalid(format!(
                    "ft: invalid ft_group {group:?}: it names the subject _STAN.ft.<cluster_id>.<ft_group>"
                )));
            }
        }
        if s.store == StoreType::File && s.dir.is_none() {
            return Err(invalid(
                "the FILE store needs a directory: set --dir or the 'dir' key",
            ));
        }
        if s.store == StoreType::Sql && (s.sql.driver.is_none() || s.sql.source.is_none()) {
            return Err(invalid(
                "the SQL store needs a driver and a source: set --sql_driver and --sql_source",
            ));
        }
        if let Some(cipher) = &s.encryption_cipher {
            if !matches!(
                cipher.to_ascii_uppercase().as_str(),
                "AES" | "CHACHA" | "CHACHAPOLY"
            ) {
                return Err(invalid(format!(
                    "unknown encryption cipher {cipher:?} (AES or CHACHA)"
                )));
            }
        }
        if s.hb_interval.is_zero() || s.hb_timeout.is_zero() {
            return Err(invalid("hb_interval and hb_timeout must be positive"));
        }
        let f = &s.file;
        for (name, value) in [
            ("file compact_frag", f.compact_frag),
            ("file compact_interval", f.compact_interval),
            ("file compact_min_size", f.compact_min_size),
            ("file buffer_size", f.buffer_size),
            ("file slice_max_msgs", f.slice_max_msgs),
            ("file slice_max_bytes", f.slice_max_bytes),
            ("file file_descriptors_limit", f.file_descriptors_limit),
            ("file read_buffer_size", f.read_buffer_size),
        ] {
            if value < 0 {
                return Err(invalid(format!("{name} cannot be negative ({value})")));
            }
        }
        if f.parallel_recovery < 1 {
            return Err(invalid("file parallel_recovery must be at least 1"));
        }
        Ok(())
    }

    /// Whether streaming or the embedded NATS server asked for debug / trace logging.
    /// Debug and trace, NATS side (`-D`, `-V`) and streaming side (`-SD`, `-SV`).
    pub fn log_levels(&self) -> crate::util::logging::Levels {
        crate::util::logging::Levels {
            nats_debug: self.debug,
            nats_trace: self.trace,
            stan_debug: self.streaming.stan_debug,
            stan_trace: self.streaming.stan_trace,
        }
    }
}

/// The reference accepts only alphanumerics, `-` and `_` in cluster and client IDs.
pub fn is_valid_cluster_id(id: &str) -> bool {
    !id.is_empty()
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn split_host_port(listen: &str) -> Option<(String, u16)> {
    let (host, port) = listen.rsplit_once(':')?;
    let port = port.parse().ok()?;
    Some((host.trim_matches(['[', ']']).to_string(), port))
}
