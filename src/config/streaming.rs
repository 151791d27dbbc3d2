//! The streaming server's options: the keys of the `streaming { }` block (or of the top level
//! of a streaming config file), with the reference's names, aliases and defaults
//! (stan-reference.md §2.2-2.6). Keys for features that land later are parsed and validated now.

use super::de::{duration, size};
use serde::{Deserialize, Deserializer, Serialize};
use shards::limits::{ChannelLimits, ChannelOverride, Override, StoreLimits};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "UPPERCASE")]
pub enum StoreType {
    #[default]
    Memory,
    File,
    Sql,
}

impl StoreType {
    pub fn parse(text: &str) -> Option<StoreType> {
        match text.to_ascii_uppercase().as_str() {
            "MEMORY" => Some(StoreType::Memory),
            "FILE" => Some(StoreType::File),
            "SQL" => Some(StoreType::Sql),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            StoreType::Memory => "MEMORY",
            StoreType::File => "FILE",
            StoreType::Sql => "SQL",
        }
    }
}

impl<'de> Deserialize<'de> for StoreType {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        StoreType::parse(&text).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "unsupported store type: {text} (MEMORY, FILE or SQL)"
            ))
        })
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct StreamingOptions {
    #[serde(alias = "id", alias = "cid")]
    pub cluster_id: String,
    pub discover_prefix: String,
    #[serde(alias = "st", alias = "store_type", alias = "storetype")]
    pub store: StoreType,
    #[serde(alias = "datastore")]
    pub dir: Option<PathBuf>,
    #[serde(alias = "ns", alias = "nats_server_url")]
    pub nats_server: Option<String>,
    pub credentials: Option<PathBuf>,
    #[serde(alias = "user")]
    pub username: Option<String>,
    #[serde(alias = "pass")]
    pub password: Option<String>,
    pub token: Option<String>,
    pub nkey_seed_file: Option<PathBuf>,
    #[serde(
        alias = "hbi",
        alias = "server_to_client_hb_interval",
        with = "duration"
    )]
    pub hb_interval: Duration,
    #[serde(
        alias = "hbt",
        alias = "server_to_client_hb_timeout",
        with = "duration"
    )]
    pub hb_timeout: Duration,
    #[serde(alias = "hbf", alias = "server_to_client_hb_fail_count")]
    pub hb_fail_count: u32,
    #[serde(alias = "ft_group_name")]
    pub ft_group: Option<String>,
    pub partitioning: bool,
    pub encrypt: bool,
    pub encryption_cipher: Option<String>,
    pub encryption_key: Option<String>,
    #[serde(
        alias = "replace_durables",
        alias = "replace_duplicate_durable",
        alias = "replace_duplicate_durables"
    )]
    pub replace_durable: bool,
    #[serde(alias = "sd")]
    pub stan_debug: bool,
    #[serde(alias = "sv")]
    pub stan_trace: bool,
    pub syslog_name: Option<String>,
    pub secure: bool,
    pub tls: NatsClientTls,
    #[serde(alias = "limits", alias = "storelimits")]
    pub store_limits: StoreLimitsConf,
    #[serde(alias = "file_options")]
    pub file: FileOptions,
    #[serde(alias = "sql_options")]
    pub sql: SqlOptions,
    /// Present means clustered (the block alone turns clustering on).
    pub cluster: Option<ClusterOptions>,
    /// Flag-only in the reference; kept for command-line compatibility.
    #[serde(skip)]
    pub io_batch_size: usize,
    #[serde(skip)]
    pub io_sleep_time_us: u64,
}

impl Default for StreamingOptions {
    fn default() -> Self {
        StreamingOptions {
            cluster_id: "test-cluster".into(),
            discover_prefix: "_STAN.discover".into(),
            store: StoreType::Memory,
            dir: None,
            nats_server: None,
            credentials: None,
            username: None,
            password: None,
            token: None,
            nkey_seed_file: None,
            hb_interval: Duration::from_secs(30),
            hb_timeout: Duration::from_secs(10),
            hb_fail_count: 10,
            ft_group: None,
            partitioning: false,
            encrypt: false,
            encryption_cipher: None,
            encryption_key: None,
            replace_durable: false,
            stan_debug: false,
            stan_trace: false,
            syslog_name: None,
            secure: false,
            tls: NatsClientTls::default(),
            store_limits: StoreLimitsConf::default(),
            file: FileOptions::default(),
            sql: SqlOptions::default(),
            cluster: None,
            io_batch_size: 1024,
            io_sleep_time_us: 0,
        }
    }
}

/// TLS for the streaming server's own connections to an external NATS server.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct NatsClientTls {
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    #[serde(alias = "client_cacert")]
    pub client_ca: Option<PathBuf>,
    #[serde(alias = "server_hostname")]
    pub server_name: Option<String>,
    #[serde(alias = "insecure")]
    pub skip_verify: bool,
}

/// `store_limits { }`: globals plus the per-channel map, as written (before inheritance).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct StoreLimitsConf {
    #[serde(alias = "mc", alias = "maxchannels")]
    pub max_channels: i64,
    #[serde(alias = "msu", alias = "max_subscriptions", alias = "maxsubscriptions")]
    pub max_subs: i64,
    #[serde(
        alias = "mm",
        alias = "maxmsgs",
        alias = "max_count",
        alias = "maxcount"
    )]
    pub max_msgs: i64,
    #[serde(
        alias = "mb",
        alias = "maxbytes",
        deserialize_with = "size::deserialize"
    )]
    pub max_bytes: i64,
    #[serde(alias = "ma", alias = "maxage", with = "duration")]
    pub max_age: Duration,
    #[serde(alias = "mi", alias = "maxinactivity", with = "duration")]
    pub max_inactivity: Duration,
    #[serde(
        alias = "channels_limits",
        alias = "channelslimits",
        alias = "per_channel",
        alias = "per_channel_limits"
    )]
    pub channels: BTreeMap<String, ChannelLimitsConf>,
}

impl Default for StoreLimitsConf {
    fn default() -> Self {
        let d = StoreLimits::default();
        StoreLimitsConf {
            max_channels: d.max_channels,
            max_subs: d.global.max_subs,
            max_msgs: d.global.max_msgs,
            max_bytes: d.global.max_bytes,
            max_age: d.global.max_age,
            max_inactivity: d.global.max_inactivity,
            channels: BTreeMap::new(),
        }
    }
}

/// One per-channel entry: an absent key inherits; 0 (or less) means unlimited for that limit.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct ChannelLimitsConf {
    #[serde(
        alias = "msu",
        alias = "max_subscriptions",
        alias = "maxsubscriptions",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_subs: Option<i64>,
    #[serde(
        alias = "mm",
        alias = "maxmsgs",
        alias = "max_count",
        alias = "maxcount",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_msgs: Option<i64>,
    #[serde(
        alias = "mb",
        alias = "maxbytes",
        deserialize_with = "optional_size",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_bytes: Option<i64>,
    #[serde(
        alias = "ma",
        alias = "maxage",
        with = "duration::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_age: Option<Duration>,
    #[serde(
        alias = "mi",
        alias = "maxinactivity",
        with = "duration::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_inactivity: Option<Duration>,
}

fn optional_size<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    size::deserialize(d).map(Some)
}

fn count_override(v: Option<i64>) -> Override<i64> {
    match v {
        None => Override::Inherit,
        Some(n) if n <= 0 => Override::Unlimited,
        Some(n) => Override::Value(n),
    }
}

fn duration_override(v: Option<Duration>) -> Override<Duration> {
    match v {
        None => Override::Inherit,
        Some(d) if d.is_zero() => Override::Unlimited,
        Some(d) => Override::Value(d),
    }
}

impl StoreLimitsConf {
    /// The limits model the stores use.
    pub fn to_limits(&self) -> StoreLimits {
        StoreLimits {
            max_channels: self.max_channels,
            global: ChannelLimits {
                max_subs: self.max_subs,
                max_msgs: self.max_msgs,
                max_bytes: self.max_bytes,
                max_age: self.max_age,
                max_inactivity: self.max_inactivity,
            },
            per_channel: self
                .channels
                .iter()
                .map(|(name, c)| {
                    (
                        name.clone(),
                        ChannelOverride {
                            max_subs: count_override(c.max_subs),
                            max_msgs: count_override(c.max_msgs),
                            max_bytes: count_override(c.max_bytes),
                            max_age: duration_override(c.max_age),
                            max_inactivity: duration_override(c.max_inactivity),
                        },
                    )
                })
                .collect(),
        }
    }
}

/// `file { }` / `file_options { }` (stan-reference.md §2.4).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct FileOptions {
    #[serde(alias = "compact_enabled")]
    pub compact: bool,
    #[serde(alias = "compact_fragmentation")]
    pub compact_frag: i64,
    /// Seconds.
    pub compact_interval: i64,
    #[serde(deserialize_with = "size::deserialize")]
    pub compact_min_size: i64,
    #[serde(deserialize_with = "size::deserialize")]
    pub buffer_size: i64,
    #[serde(alias = "do_crc")]
    pub crc: bool,
    pub crc_poly: i64,
    #[serde(alias = "do_sync", alias = "sync_on_flush")]
    pub sync: bool,
    #[serde(alias = "slice_max_count", alias = "slice_msgs", alias = "slice_count")]
    pub slice_max_msgs: i64,
    #[serde(
        alias = "slice_max_size",
        alias = "slice_bytes",
        alias = "slice_size",
        deserialize_with = "size::deserialize"
    )]
    pub slice_max_bytes: i64,
    #[serde(
        alias = "slice_age",
        alias = "slice_max_time",
        alias = "slice_time_limit",
        with = "duration"
    )]
    pub slice_max_age: Duration,
    #[serde(alias = "slice_archive", alias = "slice_script")]
    pub slice_archive_script: Option<PathBuf>,
    #[serde(alias = "fds_limit")]
    pub file_descriptors_limit: i64,
    pub parallel_recovery: i64,
    /// Command line only, on purpose (as in the reference).
    #[serde(skip_deserializing)]
    pub truncate_bad_eof: bool,
    #[serde(
        alias = "file_read_buffer_size",
        deserialize_with = "size::deserialize"
    )]
    pub read_buffer_size: i64,
    #[serde(alias = "file_auto_sync", with = "duration")]
    pub auto_sync: Duration,
    /// stanza only: with `sync`, write zeroes ahead of the records so that each synced commit
    /// overwrites blocks the file already has (fast O_DSYNC commits on ext4) at the price of
    /// writing every byte twice. `false` halves the bytes written (SD cards wear) and makes
    /// each commit wait for the file system's metadata (see README, Raspberry Pi).
    #[serde(alias = "file_zero_ahead")]
    pub zero_ahead: bool,
}

impl Default for FileOptions {
    fn default() -> Self {
        FileOptions {
            compact: true,
            compact_frag: 50,
            compact_interval: 300,
            compact_min_size: 1 << 20,
            buffer_size: 2 << 20,
            crc: true,
            crc_poly: 0xedb8_8320,
            sync: true,
            slice_max_msgs: 0,
            slice_max_bytes: 64 << 20,
            slice_max_age: Duration::ZERO,
            slice_archive_script: None,
            file_descriptors_limit: 0,
            parallel_recovery: 1,
            truncate_bad_eof: false,
            read_buffer_size: 2 << 20,
            auto_sync: Duration::from_secs(60),
            zero_ahead: true,
        }
    }
}

/// `sql { }` / `sql_options { }` (stan-reference.md §2.5).
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct SqlOptions {
    pub driver: Option<String>,
    pub source: Option<String>,
    pub no_caching: bool,
    #[serde(alias = "max_conns")]
    pub max_open_conns: i64,
    pub bulk_insert_limit: i64,
}

/// Streaming clustering: `cluster { }` inside the streaming section (stan-reference.md §2.3).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct ClusterOptions {
    pub node_id: Option<String>,
    pub bootstrap: bool,
    pub peers: Vec<String>,
    pub log_path: Option<PathBuf>,
    pub log_cache_size: i64,
    pub log_snapshots: i64,
    pub trailing_logs: i64,
    pub sync: bool,
    pub raft_logging: bool,
    pub proceed_on_restore_failure: bool,
    pub allow_add_remove_node: bool,
    #[serde(with = "duration")]
    pub raft_heartbeat_timeout: Duration,
    #[serde(with = "duration")]
    pub raft_election_timeout: Duration,
    #[serde(with = "duration")]
    pub raft_lease_timeout: Duration,
    #[serde(with = "duration")]
    pub raft_commit_timeout: Duration,
    pub bolt_free_list_sync: bool,
    pub bolt_free_list_map: bool,
    pub nodes_connections: bool,
    /// stanza's own key: how many partitions (raft groups of channels) the cluster has, fixed
    /// when it is bootstrapped.
    pub partitions: u32,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            node_id: None,
            bootstrap: false,
            peers: Vec::new(),
            log_path: None,
            log_cache_size: 512,
            log_snapshots: 2,
            trailing_logs: 10240,
            sync: false,
            raft_logging: false,
            proceed_on_restore_failure: false,
            allow_add_remove_node: false,
            raft_heartbeat_timeout: Duration::from_secs(2),
            raft_election_timeout: Duration::from_secs(2),
            raft_lease_timeout: Duration::from_secs(1),
            raft_commit_timeout: Duration::from_millis(100),
            bolt_free_list_sync: false,
            bolt_free_list_map: false,
            nodes_connections: false,
            partitions: shards::raft::partitions::DEFAULT_PARTITIONS,
        }
    }
}
