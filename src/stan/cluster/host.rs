//! One core's raft groups in a running server: the groups this core owns (the metadata group
//! on core 0, partition group g on core `(g - 1) % cores`), their log file
//! (`<log_dir>/raft-core-<core>.log`), and the loop that drives them: a tick every 50 ms, and
//! after a tick or a received batch one `ShardGroups::ready` at a time: batches out at once,
//! the turn's records appended to the log file, then what waited for the append.
//! How bytes travel is the caller's (`Streaming::run_raft`); this owns the groups and the file.

use super::setup::{ClusterSetup, TICK};
use crate::util::notify::Notify;
use bytes::Bytes;
use shards::raft::partitions::shard_of_group;
use shards::raft::{
    log_file, Group, GroupConfig, GroupLog, Outgoing, ShardGroups, SnapshotPolicy, StateRole, Turn,
};
use shards::store::journal::AppendFile;
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// A received batch that does not decode is logged at most this often per core (a peer of
/// another version, or garbage on the subject, would otherwise flood the log).
const REPORT_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// One group's figures for monitoring (`/streaming/clusterz`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupStatus {
    pub group: u32,
    pub role: StateRole,
    /// The leader this node knows of (raft ID, 0: none).
    pub leader: u64,
    pub term: u64,
    pub commit: u64,
    pub applied: u64,
    pub first_index: u64,
    pub last_index: u64,
    pub voters: Vec<u64>,
    /// As leader: each member's matched index.
    pub matched: Vec<(u64, u64)>,
}

pub struct RaftHost {
    groups: RefCell<ShardGroups>,
    file: AppendFile,
    /// `_STAN.raft.<cid>.`: followed by `<node raft ID>.<group>`.
    prefix: String,
    node_id: u64,
    policy: SnapshotPolicy,
    wake: Notify,
    /// Received batches refused (not decodable, or for another node), and when one was last
    /// logged.
    refused: Cell<u64>,
    last_report: Cell<Option<Instant>>,
    /// The role of each group, as last reported.
    roles: RefCell<BTreeMap<u32, StateRole>>,
}

/// Why a core's groups did not start.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("{0}")]
    Log(#[from] log_file::ReplayError),
    #[error("{path}: raft group {group} is missing from this core's log (the log directory was changed by hand, or the cluster's partition count)")]
    MissingGroup { path: String, group: u32 },
    #[error("{path}: holds raft group {group}, which this core does not own")]
    StrayGroup { path: String, group: u32 },
    #[error("{path}: raft group {group}: {why}")]
    Group {
        path: String,
        group: u32,
        why: String,
    },
    #[error("{path}: writing the bootstrap configuration: {source}")]
    Bootstrap {
        path: String,
        source: std::io::Error,
    },
}

/// The groups core `core` of `cores` owns.
pub fn groups_of_core(partitions: u32, core: usize, cores: usize) -> Vec<u32> {
    (0..=partitions)
        .filter(|g| shard_of_group(*g, cores) == core)
        .collect()
}

impl RaftHost {
    /// Opens this core's log and starts its groups: from the log, or on a new node from the
    /// bootstrap voters (written, synced, before anything else).
    pub async fn open(
        setup: &ClusterSetup,
        cluster_id: &str,
        core: usize,
        cores: usize,
    ) -> Result<RaftHost, HostError> {
        let path = setup.log_file(core);
        let name = path.display().to_string();
        let (mut recovered, file) = log_file::open(&path, setup.sync).await?;
        let mut groups = ShardGroups::new(setup.node_id);
        let mut boot = Vec::new();
        for g in groups_of_core(setup.partitions, core, cores) {
            let mut config = GroupConfig::new(g, setup.node_id);
            config.election_ticks = setup.election_ticks;
            config.heartbeat_ticks = setup.heartbeat_ticks;
            let bad = |why: String| HostError::Group {
                path: name.clone(),
                group: g,
                why,
            };
            let group = match (recovered.remove(&g), &setup.bootstrap_voters) {
                (Some(r), _) => {
                    let applied = r.snapshot.get_metadata().index;
                    let log = r.into_log().map_err(|e| bad(e.to_string()))?;
                    Group::new(&config, log, applied).map_err(|e| bad(e.to_string()))?
                }
                (None, Some(voters)) => {
                    let group = Group::new(&config, GroupLog::with_voters(voters), 0)
                        .map_err(|e| bad(e.to_string()))?;
                    log_file::encode_snapshot(&mut boot, g, group.log().last_snapshot(), (0, 0));
                    group
                }
                (None, None) => {
                    return Err(HostError::MissingGroup {
                        path: name,
                        group: g,
                    })
                }
            };
            groups.insert(group);
        }
        if let Some(&group) = recovered.keys().next() {
            return Err(HostError::StrayGroup { path: name, group });
        }
        file.append_with(boot, true)
            .await
            .map_err(|source| HostError::Bootstrap {
                path: name.clone(),
                source,
            })?;
        Ok(RaftHost {
            groups: RefCell::new(groups),
            file,
            prefix: format!("_STAN.raft.{cluster_id}."),
            node_id: setup.node_id,
            policy: SnapshotPolicy {
                trailing: setup.trailing_logs,
                ..SnapshotPolicy::default()
            },
            wake: Notify::new(),
            refused: Cell::new(0),
            last_report: Cell::new(None),
            roles: RefCell::new(BTreeMap::new()),
        })
    }

    /// The subject a group's messages for `node` travel on.
    pub fn subject(&self, node: u64, group: u32) -> String {
        format!("{}{node}.{group}", self.prefix)
    }

    /// The subjects this core receives on: its groups' messages for this node.
    pub fn own_subjects(&self) -> Vec<String> {
        self.groups
            .borrow()
            .groups()
            .map(|g| self.subject(self.node_id, g.id()))
            .collect()
    }

    /// A batch from another node for one of this core's groups.
    pub fn receive(&self, bytes: &[u8]) {
        let result = self.groups.borrow_mut().receive(bytes);
        if let Err(e) = result {
            self.refused.set(self.refused.get() + 1);
            let due = self
                .last_report
                .get()
                .is_none_or(|t| t.elapsed() >= REPORT_EVERY);
            if due {
                self.last_report.set(Some(Instant::now()));
                log::error!(
                    "STAN: raft: refused a batch from another node ({} refused so far): {e}",
                    self.refused.get()
                );
            }
            return;
        }
        self.wake.notify();
    }

    /// What this core's groups report now.
    pub fn status(&self) -> Vec<GroupStatus> {
        self.groups
            .borrow()
            .groups()
            .map(|g| GroupStatus {
                group: g.id(),
                role: g.role(),
                leader: g.leader(),
                term: g.term(),
                commit: g.commit_index(),
                applied: g.applied(),
                first_index: g.log().first(),
                last_index: g.log().last(),
                voters: g.voters(),
                matched: g.matched(),
            })
            .collect()
    }

    /// The role of `group` on this node, if this core has it.
    pub fn role_of(&self, group: u32) -> Option<StateRole> {
        self.groups.borrow().group(group).map(Group::role)
    }

    /// Drives the groups for the life of the core. `send` publishes a batch on a subject.
    /// `metadata_leader` is the process-wide record of the metadata group's leader (raft ID,
    /// 0: none known): core 0 keeps it, and every core hands the groups it leads to that node,
    /// so that one node leads them all and serves (the reference's single serving leader).
    /// A failed append to the log ends the process: the groups cannot go on without what
    /// they were told is written (the reference stops a node that cannot store its log).
    pub async fn run(&self, send: impl Fn(&str, Bytes), metadata_leader: &AtomicU64) {
        let mut next_tick = Instant::now() + TICK;
        loop {
            let now = Instant::now();
            if now < next_tick {
                futures_lite::future::or(self.wake.notified(), async {
                    glommio::timer::sleep(next_tick - now).await;
                })
                .await;
            }
            if Instant::now() >= next_tick {
                self.groups.borrow_mut().tick();
                self.follow_metadata_leader(metadata_leader.load(Ordering::Acquire));
                next_tick += TICK;
                if next_tick < Instant::now() {
                    // A stalled core does not tick in a burst afterwards.
                    next_tick = Instant::now() + TICK;
                }
            }
            self.snapshot_when_due();
            // Turns until the groups want nothing more (a landed write makes more ready).
            loop {
                let turn = self.groups.borrow_mut().ready();
                if turn.is_empty() {
                    break;
                }
                self.carry_out(turn, &send).await;
            }
            if let Some(meta) = self.groups.borrow().group(0) {
                metadata_leader.store(meta.leader(), Ordering::Release);
            }
        }
    }

    /// Partition groups this node leads while another node leads the metadata group go to
    /// that node (raft-rs first brings its log up to date, then has it elect itself at once).
    fn follow_metadata_leader(&self, meta: u64) {
        if meta == 0 || meta == self.node_id {
            return;
        }
        let mut groups = self.groups.borrow_mut();
        let led: Vec<u32> = groups
            .groups()
            .filter(|g| g.id() != 0 && g.is_leader() && g.voters().contains(&meta))
            .map(|g| g.id())
            .collect();
        for id in led {
            if let Some(g) = groups.group_mut(id) {
                g.transfer_leader(meta);
            }
        }
    }

    /// With no state machine behind the groups yet, a snapshot holds nothing but its
    /// position: it lets the log be compacted by `trailing_logs`, and a follower far behind
    /// start from it.
    fn snapshot_when_due(&self) {
        let mut groups = self.groups.borrow_mut();
        let mut due = groups.snapshots_due(&self.policy);
        due.extend(groups.snapshots_wanted());
        due.sort_unstable();
        due.dedup();
        for g in due {
            if let Err(e) = groups.make_snapshot(g, Bytes::new(), Some(self.policy.trailing)) {
                log::error!("STAN: raft: snapshot of group {g}: {e}");
            }
        }
    }

    async fn carry_out(&self, turn: Turn, send: &impl Fn(&str, Bytes)) {
        let Turn {
            send_now,
            write,
            snapshots: _,
            committed: _,
            outcomes: _,
            roles,
            errors,
        } = turn;
        self.send_all(send_now, send);
        for (group, role) in roles {
            self.roles.borrow_mut().insert(group, role);
            match (group, role) {
                (0, StateRole::Leader | StateRole::Follower) => {
                    log::info!("STAN: raft: this node is now the metadata group's {role:?}")
                }
                _ => log::debug!("STAN: raft: group {group}: this node is now {role:?}"),
            }
        }
        for e in errors {
            log::error!("STAN: raft: {e}; the group is out of service on this node");
        }
        if let Some(mut write) = write {
            let records = std::mem::take(&mut write.records);
            if let Err(e) = self.file.append_with(records, write.must_sync).await {
                log::error!("STAN: raft: cannot append to the log: {e}; stopping");
                log::logger().flush();
                std::process::exit(1);
            }
            let after = self.groups.borrow_mut().written(write);
            self.send_all(after, send);
        }
    }

    fn send_all(&self, batches: Vec<Outgoing>, send: &impl Fn(&str, Bytes)) {
        for Outgoing { to, group, bytes } in batches {
            send(&self.subject(to, group), Bytes::from(bytes));
        }
    }
}
