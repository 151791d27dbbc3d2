//! One core's raft groups in a running server: the groups this core owns (the metadata group
//! on core 0, partition group g on core `(g - 1) % cores`), their log file
//! (`<log_dir>/raft-core-<core>.log`), the proposals waiting for their fate, and the steps
//! the core's raft loop (`driver.rs`) takes with them: tick, ready, append, propose, compact.
//! How bytes travel and what entries do is the loop's; this owns the groups and the file.

use super::driver::Transition;
use super::proposals::{Proposals, Waiter};
use super::setup::ClusterSetup;
use crate::util::notify::Notify;
use bytes::Bytes;
use fxhash::FxHashMap;
use shards::raft::group::NOT_LEADER;
use shards::raft::partitions::shard_of_group;
use shards::raft::{
    log_file, Group, GroupConfig, GroupError, GroupLog, Outgoing, PendingWrite, ShardGroups,
    SnapshotPolicy, StateRole, Turn,
};
use shards::store::journal::AppendFile;
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Instant;

/// A received batch that does not decode is logged at most this often per core (a peer of
/// another version, or garbage on the subject, would otherwise flood the log).
const REPORT_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// The messages a node's store holds for one channel (limits are applied by the serving node
/// only: a follower's store keeps what it applied until it serves).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoredRange {
    pub first_seq: u64,
    pub last_seq: u64,
    pub msgs: u64,
    /// Message body bytes.
    pub bytes: u64,
}

impl StoredRange {
    /// Records from `first_seq` on, `msgs` of them with `bytes` of bodies, were stored.
    pub fn took(&mut self, first_seq: u64, msgs: u64, bytes: u64) {
        if msgs == 0 {
            return;
        }
        if self.msgs == 0 {
            self.first_seq = first_seq;
        }
        self.last_seq = first_seq + msgs - 1;
        self.msgs += msgs;
        self.bytes += bytes;
    }
}

/// A leader keeps what a lagging member lacks up to this many times `trailing_logs` entries.
const KEEP_FOR_LAGGING_MEMBERS: u64 = 8;

/// A log file smaller than this is never rewritten.
const REWRITE_MIN: u64 = 64 << 20;

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
    /// The log file (replaced by a rewrite, `rewrite_when_mostly_dead`).
    file: RefCell<Rc<AppendFile>>,
    path: std::path::PathBuf,
    sync: bool,
    /// The file's length after it was opened or last rewritten.
    rewritten_at: Cell<u64>,
    /// A file smaller than this is never rewritten (`REWRITE_MIN`; tests lower it).
    rewrite_min: Cell<u64>,
    /// `_STAN.raft.<cid>.`: followed by `<node raft ID>.<group>`.
    prefix: String,
    node_id: u64,
    policy: Cell<SnapshotPolicy>,
    wake: Notify,
    /// Received batches refused (not decodable, or for another node), and when one was last
    /// logged.
    refused: Cell<u64>,
    last_report: Cell<Option<Instant>>,
    /// The role of each group, as last reported.
    roles: RefCell<BTreeMap<u32, StateRole>>,
    /// This core's proposals waiting for their fate.
    pub proposals: Proposals,
    /// A role change core 0 asked for, carried out between turns.
    pub transition: RefCell<Option<Transition>>,
    /// What this node's store holds per channel of this core: entries applied again after a
    /// restart skip what it has, and a follower's monitoring reports it.
    pub stored: RefCell<FxHashMap<String, StoredRange>>,
    /// Groups a membership change wants snapshotted (and their log compacted) in the next
    /// turn, so that a new member starts from a snapshot carrying the membership.
    forced_snapshots: RefCell<Vec<u32>>,
    /// Core 0 of a node joining: a member with this node's partition count was heard.
    pub member_heard: Cell<bool>,
    /// Core 0 of the leader: the nodes whose membership is being changed now.
    changing: RefCell<Vec<u64>>,
    /// Core 0: node names heard in hellos, by raft ID (monitoring names nodes that joined).
    pub heard_names: RefCell<BTreeMap<u64, String>>,
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
    #[error("{path}: {}", super::setup::REMOVED_TEXT)]
    Removed { path: String },
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
            config.raft_logging = setup.raft_logging;
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
        if let Some(meta) = groups.group(0) {
            let voters = meta.voters();
            if !voters.is_empty() && !voters.contains(&setup.node_id) {
                return Err(HostError::Removed { path: name });
            }
        }
        file.append_with(boot, true)
            .await
            .map_err(|source| HostError::Bootstrap {
                path: name.clone(),
                source,
            })?;
        let length = file.len();
        Ok(RaftHost {
            groups: RefCell::new(groups),
            file: RefCell::new(Rc::new(file)),
            path,
            sync: setup.sync,
            rewritten_at: Cell::new(length),
            rewrite_min: Cell::new(REWRITE_MIN),
            prefix: format!("_STAN.raft.{cluster_id}."),
            node_id: setup.node_id,
            // A snapshot once as many entries as `trailing_logs` were applied since the last
            // one (the reference's 8,192 at most, 64 at least).
            policy: Cell::new(SnapshotPolicy {
                trailing: setup.trailing_logs,
                every: setup
                    .trailing_logs
                    .clamp(64, SnapshotPolicy::default().every),
            }),
            wake: Notify::new(),
            refused: Cell::new(0),
            last_report: Cell::new(None),
            roles: RefCell::new(BTreeMap::new()),
            proposals: Proposals::default(),
            transition: RefCell::new(None),
            stored: RefCell::new(FxHashMap::default()),
            forced_snapshots: RefCell::new(Vec::new()),
            member_heard: Cell::new(false),
            changing: RefCell::new(Vec::new()),
            heard_names: RefCell::new(BTreeMap::new()),
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

    /// Waits for a received batch or `until`, whichever comes first.
    pub async fn wait(&self, until: Instant) {
        let now = Instant::now();
        if now < until {
            futures_lite::future::or(self.wake.notified(), async {
                glommio::timer::sleep(until - now).await;
            })
            .await;
        }
    }

    /// Wakes the loop (a proposal was made).
    pub fn wake(&self) {
        self.wake.notify();
    }

    /// One tick of every group; groups this node leads while another node leads the metadata
    /// group (`metadata_leader`, raft ID, 0: none known) go to that node, so that one node
    /// leads them all and serves (the reference's single serving leader; raft-rs first brings
    /// the target's log up to date, then has it elect itself at once).
    pub fn tick(&self, metadata_leader: u64) {
        let mut groups = self.groups.borrow_mut();
        groups.tick();
        if metadata_leader == 0 || metadata_leader == self.node_id {
            return;
        }
        let led: Vec<u32> = groups
            .groups()
            .filter(|g| g.id() != 0 && g.is_leader() && g.voters().contains(&metadata_leader))
            .map(|g| g.id())
            .collect();
        for id in led {
            if let Some(g) = groups.group_mut(id) {
                g.transfer_leader(metadata_leader);
            }
        }
    }

    /// The metadata group's leader as this core sees it (core 0 has the group).
    pub fn metadata_leader(&self) -> Option<u64> {
        self.groups.borrow().group(0).map(Group::leader)
    }

    /// Whether this node leads every group of this core with everything applied (ready to
    /// serve them).
    pub fn leads_everything(&self) -> bool {
        self.groups
            .borrow()
            .groups()
            .all(Group::leads_with_everything_applied)
    }

    pub fn ready(&self) -> Turn {
        self.groups.borrow_mut().ready()
    }

    /// Appends a turn's records to the log; what waited for them is returned to be sent.
    /// A failed append ends the process: the groups cannot go on without what they were told
    /// is written (the reference stops a node that cannot store its log).
    pub async fn append(&self, mut write: PendingWrite) -> Vec<Outgoing> {
        let records = std::mem::take(&mut write.records);
        let file = self.file.borrow().clone();
        if let Err(e) = file.append_with(records, write.must_sync).await {
            super::stop(&format!(
                "STAN: raft: cannot append to the log: {e}; stopping"
            ));
        }
        self.groups.borrow_mut().written(write)
    }

    /// Proposes `data` on `group`; the waiter answers once it committed and was applied here,
    /// or was lost.
    pub fn propose(&self, group: u32, data: Bytes) -> Result<Rc<Waiter>, String> {
        let token = self.proposals.token();
        let index = self
            .groups
            .borrow_mut()
            .propose(group, data, token)
            .map_err(|e| match e {
                GroupError::Raft { .. } => NOT_LEADER.to_string(),
                other => other.to_string(),
            })?;
        self.wake();
        Ok(self.proposals.register(group, index, token))
    }

    /// Keeps the log in bounds: the groups whose log grew `SnapshotPolicy.every` entries
    /// since their last snapshot, or that raft-rs needs a snapshot of (to send to a member
    /// behind its log), with how many entries to keep behind the snapshot: `trailing_logs`,
    /// and on a leader what some member still lacks, up to `KEEP_FOR_LAGGING_MEMBERS` times
    /// `trailing_logs` (beyond that the member catches up from the snapshot).
    pub fn snapshots_due(&self) -> Vec<(u32, u64)> {
        let groups = self.groups.borrow();
        let policy = self.policy.get();
        let mut due = groups.snapshots_due(&policy);
        due.extend(groups.snapshots_wanted());
        let forced = std::mem::take(&mut *self.forced_snapshots.borrow_mut());
        due.retain(|g| !forced.contains(g));
        due.sort_unstable();
        due.dedup();
        // A forced snapshot leaves no entry 1 in the log: a new member must get a snapshot
        // (with the membership in it), never the log from its start.
        let forced = forced.into_iter().filter_map(|g| {
            let applied = groups.group(g)?.applied();
            (applied > 0).then(|| (g, policy.trailing.min(applied - 1)))
        });
        due.into_iter()
            .filter_map(|g| {
                let group = groups.group(g)?;
                let applied = group.applied();
                let lacking = group
                    .matched()
                    .iter()
                    .map(|(_, m)| *m)
                    .min()
                    .map_or(0, |m| applied.saturating_sub(m));
                let bound = policy.trailing.saturating_mul(KEEP_FOR_LAGGING_MEMBERS);
                Some((g, policy.trailing.max(lacking.min(bound))))
            })
            .chain(forced)
            .collect()
    }

    /// The groups of this core.
    pub fn group_ids(&self) -> Vec<u32> {
        self.groups.borrow().groups().map(Group::id).collect()
    }

    /// Whether `node` votes in `group` (None: not a group of this core).
    pub fn votes_in(&self, group: u32, node: u64) -> Option<bool> {
        let groups = self.groups.borrow();
        groups.group(group).map(|g| g.voters().contains(&node))
    }

    /// The voters of `group` (empty: not a group of this core, or no members yet).
    pub fn voters_of(&self, group: u32) -> Vec<u64> {
        self.groups
            .borrow()
            .group(group)
            .map(Group::voters)
            .unwrap_or_default()
    }

    /// Notes that `node`'s membership is being changed; false if it already is.
    pub fn start_change(&self, node: u64) -> bool {
        let mut changing = self.changing.borrow_mut();
        if changing.contains(&node) {
            return false;
        }
        changing.push(node);
        true
    }

    pub fn end_change(&self, node: u64) {
        self.changing.borrow_mut().retain(|n| *n != node);
    }

    /// Core 0: whether this node is a member of the cluster (votes in the metadata group).
    pub fn is_member(&self) -> bool {
        self.votes_in(0, self.node_id).unwrap_or(false)
    }

    /// Core 0: whether this node has no membership at all yet (a node joining).
    pub fn joining(&self) -> bool {
        self.groups
            .borrow()
            .group(0)
            .is_some_and(|g| g.voters().is_empty())
    }

    /// One step of adding or removing `node` in `group`, as its leader: a group whose log
    /// still starts at entry 1 is first snapshotted (a new member would otherwise replay the
    /// log without the initial membership); then the change is proposed unless one is still
    /// pending. Called again until `votes_in` says it is done.
    pub fn step_membership(&self, group: u32, node: u64, add: bool) -> Result<(), String> {
        let mut groups = self.groups.borrow_mut();
        let Some(g) = groups.group_mut(group) else {
            return Err(format!("raft group {group} is not on this core"));
        };
        if !g.is_leader() {
            return Err(format!("this node no longer leads raft group {group}"));
        }
        if add && g.log().first() <= 1 {
            let mut forced = self.forced_snapshots.borrow_mut();
            if !forced.contains(&group) {
                forced.push(group);
            }
            drop(groups);
            self.wake();
            return Ok(());
        }
        if g.has_pending_conf() {
            return Ok(());
        }
        let change = shards::raft::group::membership_change(node, add);
        let proposed = g.propose_membership(change).map_err(|e| e.to_string());
        drop(groups);
        self.wake();
        proposed
    }

    /// Records `data` (this node's state of `group`, everything applied) as its snapshot and
    /// compacts the log but for `keep` entries.
    pub fn make_snapshot(&self, group: u32, data: Bytes, keep: u64) {
        if let Err(e) = self
            .groups
            .borrow_mut()
            .make_snapshot(group, data, Some(keep))
        {
            log::error!("STAN: raft: snapshot of group {group}: {e}");
        }
    }

    /// The leader of `group` this node knows of (raft ID, 0: none).
    pub fn leader_of(&self, group: u32) -> u64 {
        self.groups.borrow().group(group).map_or(0, Group::leader)
    }

    /// Rewrites the log file with every group's live log once it is at least `rewrite_min`
    /// and has doubled since it was last written whole, if at least half of it is dead
    /// (entries compacted away): the file would otherwise grow with all traffic ever.
    pub async fn rewrite_when_mostly_dead(&self) {
        let length = self.file.borrow().len();
        if length < self.rewrite_min.get().max(2 * self.rewritten_at.get()) {
            return;
        }
        let mut contents = Vec::new();
        for g in self.groups.borrow().groups() {
            log_file::encode_whole(&mut contents, g.id(), g.log());
        }
        if contents.len() as u64 * 2 > length {
            self.rewritten_at.set(length);
            return;
        }
        match AppendFile::rewrite(&self.path, &contents, self.sync).await {
            Ok(file) => {
                log::debug!(
                    "STAN: raft: {} rewritten: {length} -> {} bytes",
                    self.path.display(),
                    contents.len()
                );
                self.rewritten_at.set(file.len());
                *self.file.borrow_mut() = Rc::new(file);
            }
            Err(e) => {
                // The old file is intact (the new one replaces it only once written): go on
                // appending to it, and try again when it has doubled.
                log::error!("STAN: raft: cannot rewrite {}: {e}", self.path.display());
                self.rewritten_at.set(length);
            }
        }
    }

    #[cfg(test)]
    fn compact_for_tests(&self) {
        for (g, keep) in self.snapshots_due() {
            self.make_snapshot(g, Bytes::new(), keep);
        }
    }

    #[cfg(test)]
    fn policy_every_for_tests(&self, every: u64) {
        let mut p = self.policy.get();
        p.every = every;
        self.policy.set(p);
    }

    /// Notes role changes (the metadata group's at info level).
    /// Returns whether a partition group this node led stopped being led here.
    pub fn note_roles(&self, roles: Vec<(u32, StateRole)>) -> bool {
        let mut partition_lost = false;
        for (group, role) in roles {
            let before = self.roles.borrow_mut().insert(group, role);
            if group != 0 && before == Some(StateRole::Leader) && role != StateRole::Leader {
                partition_lost = true;
            }
            match (group, role) {
                (0, StateRole::Leader | StateRole::Follower) => {
                    log::info!("STAN: raft: this node is now the metadata group's {role:?}")
                }
                _ => log::debug!("STAN: raft: group {group}: this node is now {role:?}"),
            }
        }
        partition_lost
    }

    pub fn send_all(&self, batches: Vec<Outgoing>, send: &impl Fn(&str, Bytes)) {
        for Outgoing { to, group, bytes } in batches {
            send(&self.subject(to, group), Bytes::from(bytes));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use glommio::LocalExecutorBuilder;

    fn setup(dir: &std::path::Path) -> ClusterSetup {
        ClusterSetup {
            node_name: "solo".into(),
            node_id: 7,
            names: BTreeMap::new(),
            log_dir: dir.to_path_buf(),
            partitions: 2,
            bootstrap_voters: Some(vec![7]),
            allow_add_remove_node: false,
            announces_bootstrap: false,
            election_ticks: 3,
            heartbeat_ticks: 1,
            sync: false,
            trailing_logs: 10,
            raft_logging: false,
        }
    }

    /// Turns until the groups want nothing, writes appended.
    async fn settle(host: &RaftHost) {
        for _ in 0..64 {
            let turn = host.ready();
            if turn.is_empty() {
                return;
            }
            if let Some(w) = turn.write {
                host.append(w).await;
            }
        }
    }

    /// A lone voter's groups write many entries, compact, and the file is rewritten with only
    /// the live logs; reopened, the groups are where they were.
    #[test]
    fn a_mostly_dead_log_file_is_rewritten_and_replays_the_same_groups() {
        let dir = std::env::temp_dir().join(format!("stanza-host-rewrite-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let ran = LocalExecutorBuilder::default()
            .spawn(move || async move {
                let s = setup(&dir);
                let host = RaftHost::open(&s, "c", 0, 1).await.expect("open");
                for _ in 0..20 {
                    host.tick(0);
                    settle(&host).await;
                }
                assert!(host.leads_everything(), "a lone voter leads");
                for n in 0..3000u32 {
                    for g in 0..=2 {
                        host.propose(g, Bytes::from(vec![n as u8; 200]))
                            .expect("leader");
                    }
                    if n % 100 == 99 {
                        settle(&host).await;
                    }
                }
                settle(&host).await;
                host.policy_every_for_tests(1000);
                host.compact_for_tests();
                settle(&host).await;
                let before = host.status();
                let length = host.file.borrow().len();
                host.rewrite_min.set(1);
                host.rewritten_at.set(0);
                host.rewrite_when_mostly_dead().await;
                let after = host.file.borrow().len();
                assert!(after * 4 < length, "rewritten: {length} -> {after}");
                drop(host);
                let again = RaftHost::open(&s, "c", 0, 1).await.expect("reopen");
                let status = again.status();
                let key = |v: &[GroupStatus]| -> Vec<(u32, u64, u64, u64)> {
                    v.iter()
                        .map(|g| (g.group, g.term, g.commit, g.last_index))
                        .collect()
                };
                assert_eq!(key(&status), key(&before));
                let _ = std::fs::remove_dir_all(&dir);
                true
            })
            .and_then(|h| h.join());
        assert!(matches!(ran, Ok(true)), "executor: {:?}", ran.err());
    }
}
