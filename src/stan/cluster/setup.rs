//! What a clustered start decides before any core runs: this node's name (the one kept in
//! `server.dat` wins), where its raft log lives, whether it bootstraps the groups and with
//! which voters, the partition count, and the timers. The reference's start-up refusals live
//! here, with its texts: a store recovered with an empty log path. A node with neither
//! `peers` nor `bootstrap` and no log joins (its groups start with no members). A log written under another core count is refused too (each core keeps
//! the log of the groups it owns).

use crate::config::streaming::ClusterOptions;
use shards::raft::node_ids;
use shards::store::file::ServerFile;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// One raft tick. Timers are counted in ticks of this.
pub const TICK: Duration = Duration::from_millis(50);
/// A follower that hears no leader for 10 to 20 ticks (0.5-1 s) starts an election, unless
/// the configuration sets other timeouts than the reference's defaults.
const DEFAULT_ELECTION_TICKS: usize = 10;
/// The file in the log directory that says how the logs are laid out.
const LAYOUT_FILE: &str = "cluster.dat";
/// The file a node removed from the cluster leaves in its log directory: it then refuses to
/// start on that log (its groups would wait for a leader that no longer talks to it).
pub const REMOVED_FILE: &str = "removed";
/// What a removed node's refusal to start says to do.
pub const REMOVED_TEXT: &str = "this node was removed from the cluster; to take part again, clear its raft log and store and start it to join";

/// Everything a core needs to host its raft groups.
#[derive(Debug, Clone)]
pub struct ClusterSetup {
    pub node_name: String,
    pub node_id: u64,
    /// Every node known at start-up, by raft ID (monitoring names them).
    pub names: BTreeMap<u64, String>,
    /// `<log_path>/<cluster_id>`.
    pub log_dir: PathBuf,
    pub partitions: u32,
    /// No log yet: every group starts with these voters (raft IDs), written before anything;
    /// none for a node that joins.
    pub bootstrap_voters: Option<Vec<u64>>,
    /// The leader answers `node.add` / `node.remove` (`allow_add_remove_node`).
    pub allow_add_remove_node: bool,
    /// Started with `bootstrap`: the node announces it, and two such nodes refuse each other.
    pub announces_bootstrap: bool,
    pub election_ticks: usize,
    pub heartbeat_ticks: usize,
    /// Sync the raft log's appends (`cluster.sync`).
    pub sync: bool,
    pub trailing_logs: u64,
    /// raft-rs's own log lines in the process log (`raft_logging`).
    pub raft_logging: bool,
}

impl ClusterSetup {
    /// The raft log file of `core`.
    pub fn log_file(&self, core: usize) -> PathBuf {
        self.log_dir.join(format!("raft-core-{core}.log"))
    }
}

/// Why a clustered start was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SetupError {
    #[error("streaming state was recovered but cluster log path {0:?} is empty")]
    EmptyLogPath(String),
    #[error("{0}")]
    NodeIds(#[from] node_ids::NodeIdError),
    #[error("{path}: {why}")]
    Layout { path: String, why: String },
    #[error("cluster log {path} was written by a server running on {written} core(s); this one runs on {now}: start it with --cores {written} (each core keeps the log of the raft groups it owns)")]
    CoreCount {
        path: String,
        written: usize,
        now: usize,
    },
    #[error("{0}: {REMOVED_TEXT}")]
    Removed(String),
    #[error("cluster.partitions must be between 1 and {max} (got {got})")]
    Partitions { got: u32, max: u32 },
}

pub const MAX_PARTITIONS: u32 = 1024;

/// Decides the clustered start. `server` is what `server.dat` said (with the node name it
/// settled on); `warnings` are for the log.
pub fn prepare(
    cluster_id: &str,
    options: &ClusterOptions,
    server: &ServerFile,
    cores: usize,
    warnings: &mut Vec<String>,
) -> Result<ClusterSetup, SetupError> {
    let node_name = server
        .node_id
        .clone()
        .or_else(|| options.node_id.clone())
        .unwrap_or_default();
    if let Some(configured) = &options.node_id {
        if *configured != node_name {
            warnings.push(format!(
                "Cluster node ID {configured:?} is configured, but the store holds node ID {node_name:?}: using the stored one"
            ));
        }
    }
    if options.partitions == 0 || options.partitions > MAX_PARTITIONS {
        return Err(SetupError::Partitions {
            got: options.partitions,
            max: MAX_PARTITIONS,
        });
    }
    warnings.extend(without_effect(options));
    let log_path = options
        .log_path
        .clone()
        .unwrap_or_else(|| Path::new(".").join(cluster_id).join(&node_name));
    let log_dir = log_path.join(cluster_id);
    let (voters, peer_warnings) = node_ids::voters(&node_name, &options.peers)?;
    warnings.extend(peer_warnings);
    let node_id = node_ids::raft_id(&node_name);
    let names = voters.iter().map(|(n, id)| (*id, n.clone())).collect();
    let removed = log_dir.join(REMOVED_FILE);
    if removed.exists() {
        return Err(SetupError::Removed(removed.display().to_string()));
    }
    let layout_path = log_dir.join(LAYOUT_FILE);
    let layout = read_layout(&layout_path)?;
    let (partitions, bootstrap_voters) = match layout {
        Some(l) => {
            if l.cores != cores {
                return Err(SetupError::CoreCount {
                    path: layout_path.display().to_string(),
                    written: l.cores,
                    now: cores,
                });
            }
            if l.partitions != options.partitions {
                warnings.push(format!(
                    "cluster.partitions is {} but the cluster was created with {}: the cluster's value is kept",
                    options.partitions, l.partitions
                ));
            }
            (l.partitions, None)
        }
        None if server.recovered => {
            return Err(SetupError::EmptyLogPath(log_path.display().to_string()))
        }
        None => {
            // A new log: every group starts with this node and its peers (`bootstrap` or
            // `peers`), or with no members until the leader adds this node (a join).
            let bootstraps = options.bootstrap || !options.peers.is_empty();
            let ids: Vec<u64> = if bootstraps {
                voters.values().copied().collect()
            } else {
                Vec::new()
            };
            write_layout(&log_dir, &layout_path, options.partitions, cores)?;
            (options.partitions, Some(ids))
        }
    };
    let (election_ticks, heartbeat_ticks) = timers(options);
    Ok(ClusterSetup {
        node_name,
        node_id,
        names,
        log_dir,
        partitions,
        bootstrap_voters,
        announces_bootstrap: options.bootstrap,
        allow_add_remove_node: options.allow_add_remove_node,
        election_ticks,
        heartbeat_ticks,
        sync: options.sync,
        trailing_logs: u64::try_from(options.trailing_logs).unwrap_or(0),
        raft_logging: options.raft_logging,
    })
}

/// Election and heartbeat ticks. The reference's 2 s defaults (elections after 2-4 s) cannot
/// give a fail-over within 2 s, so unless a timeout is configured to something else, a
/// follower waits 10-20 ticks (0.5-1 s) and a leader heartbeats every 2 ticks. A configured
/// timeout is used as it is (the longer of the heartbeat and election timeouts: raft-rs has
/// one follower timeout), heartbeats five times within it.
fn timers(options: &ClusterOptions) -> (usize, usize) {
    let defaults = ClusterOptions::default();
    let configured = options.raft_heartbeat_timeout != defaults.raft_heartbeat_timeout
        || options.raft_election_timeout != defaults.raft_election_timeout;
    let election = if configured {
        let timeout = options
            .raft_heartbeat_timeout
            .max(options.raft_election_timeout);
        ((timeout.as_millis() / TICK.as_millis()) as usize).max(3)
    } else {
        DEFAULT_ELECTION_TICKS
    };
    (election, (election / 5).max(1))
}

/// Keys that tune the reference's raft and log libraries (hashicorp raft, bbolt), which stanza
/// does not use: accepted, said to have no effect when set to anything but their default.
fn without_effect(options: &ClusterOptions) -> Vec<String> {
    let d = ClusterOptions::default();
    let set = [
        ("log_cache_size", options.log_cache_size != d.log_cache_size),
        ("log_snapshots", options.log_snapshots != d.log_snapshots),
        (
            "raft_lease_timeout",
            options.raft_lease_timeout != d.raft_lease_timeout,
        ),
        (
            "raft_commit_timeout",
            options.raft_commit_timeout != d.raft_commit_timeout,
        ),
        (
            "bolt_free_list_sync",
            options.bolt_free_list_sync != d.bolt_free_list_sync,
        ),
        (
            "bolt_free_list_map",
            options.bolt_free_list_map != d.bolt_free_list_map,
        ),
        (
            "nodes_connections",
            options.nodes_connections != d.nodes_connections,
        ),
        (
            "proceed_on_restore_failure",
            options.proceed_on_restore_failure != d.proceed_on_restore_failure,
        ),
    ];
    set.iter()
        .filter(|(_, changed)| *changed)
        .map(|(key, _)| {
            format!(
                "cluster.{key} tunes the reference's raft or bbolt libraries, which stanza does not use: it has no effect"
            )
        })
        .collect()
}

struct Layout {
    partitions: u32,
    cores: usize,
}

fn read_layout(path: &Path) -> Result<Option<Layout>, SetupError> {
    let bad = |why: String| SetupError::Layout {
        path: path.display().to_string(),
        why,
    };
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(bad(format!("cannot read it: {e}"))),
    };
    let (mut partitions, mut cores) = (None, None);
    for line in text.lines() {
        match line.split_once('=') {
            Some(("partitions", v)) => partitions = v.trim().parse::<u32>().ok(),
            Some(("cores", v)) => cores = v.trim().parse::<usize>().ok(),
            _ => {}
        }
    }
    match (partitions, cores) {
        (Some(p), Some(c)) if (1..=MAX_PARTITIONS).contains(&p) && c > 0 => Ok(Some(Layout {
            partitions: p,
            cores: c,
        })),
        _ => Err(bad(
            "not a stanza cluster layout (partitions=, cores=)".into()
        )),
    }
}

fn write_layout(dir: &Path, path: &Path, partitions: u32, cores: usize) -> Result<(), SetupError> {
    let bad = |e: std::io::Error| SetupError::Layout {
        path: path.display().to_string(),
        why: format!("cannot write it: {e}"),
    };
    std::fs::create_dir_all(dir).map_err(bad)?;
    let tmp = path.with_extension("dat.tmp");
    std::fs::write(&tmp, format!("partitions={partitions}\ncores={cores}\n"))
        .and_then(|_| std::fs::File::open(&tmp)?.sync_all())
        .and_then(|_| std::fs::rename(&tmp, path))
        .map_err(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("stanza-setup-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn server(node: &str, recovered: bool) -> ServerFile {
        ServerFile {
            ack_key: [0; shards::ack_key::KEY_LEN],
            node_id: Some(node.into()),
            recovered,
        }
    }

    fn options(dir: &Path, peers: &[&str]) -> ClusterOptions {
        ClusterOptions {
            node_id: Some("a".into()),
            peers: peers.iter().map(|p| p.to_string()).collect(),
            log_path: Some(dir.to_path_buf()),
            ..ClusterOptions::default()
        }
    }

    #[test]
    fn a_new_node_bootstraps_with_its_peers_then_restarts_from_its_log() {
        let dir = scratch("boot");
        let mut w = Vec::new();
        let o = options(&dir, &["b", "c"]);
        let s = prepare("cid", &o, &server("a", false), 2, &mut w).unwrap();
        assert_eq!(s.bootstrap_voters.as_ref().map(Vec::len), Some(3));
        assert_eq!(s.log_dir, dir.join("cid"));
        assert_eq!((s.election_ticks, s.heartbeat_ticks), (10, 2));
        let again = prepare("cid", &o, &server("a", true), 2, &mut w).unwrap();
        assert!(again.bootstrap_voters.is_none(), "the log has the groups");
        assert!(matches!(
            prepare("cid", &o, &server("a", true), 4, &mut w),
            Err(SetupError::CoreCount {
                written: 2,
                now: 4,
                ..
            })
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_references_refusals() {
        let dir = scratch("refuse");
        let mut w = Vec::new();
        let o = options(&dir, &["b"]);
        let err = prepare("cid", &o, &server("a", true), 1, &mut w).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "streaming state was recovered but cluster log path {:?} is empty",
                dir.display().to_string()
            )
        );
        let mut stored = options(&dir, &["b"]);
        stored.node_id = Some("z".into());
        let s = prepare("cid", &stored, &server("a", false), 1, &mut w).unwrap();
        assert_eq!(s.node_name, "a", "the stored name wins");
        assert!(w.iter().any(|m| m.contains("using the stored one")));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_node_without_peers_or_bootstrap_joins_with_no_members() {
        let dir = scratch("join");
        let mut w = Vec::new();
        let mut alone = options(&dir, &[]);
        alone.allow_add_remove_node = true;
        let s = prepare("cid", &alone, &server("a", false), 1, &mut w).unwrap();
        assert_eq!(s.bootstrap_voters, Some(Vec::new()));
        assert!(s.allow_add_remove_node);
        let again = prepare("cid", &alone, &server("a", true), 1, &mut w).unwrap();
        assert!(again.bootstrap_voters.is_none(), "the log has the groups");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn library_knobs_are_said_to_do_nothing() {
        let dir = scratch("knobs");
        let mut w = Vec::new();
        let mut o = options(&dir, &["b"]);
        o.log_cache_size = 1;
        o.nodes_connections = true;
        prepare("cid", &o, &server("a", false), 1, &mut w).unwrap();
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w[0].contains("cluster.log_cache_size") && w[0].contains("no effect"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn configured_timeouts_are_used_as_given() {
        let mut o = ClusterOptions {
            raft_heartbeat_timeout: Duration::from_secs(3),
            ..ClusterOptions::default()
        };
        assert_eq!(timers(&o), (60, 12));
        o.raft_heartbeat_timeout = Duration::from_millis(100);
        o.raft_election_timeout = Duration::from_millis(100);
        assert_eq!(timers(&o), (3, 1));
    }
}
