//! One raft group as its shard drives it: raft-rs's `RawNode` behind the same shape as the shard
//! (`step` in, `ready` out, `persisted` when the write landed). The group knows which of its
//! proposals committed and which were lost, so the shard answers a publisher only for an entry
//! a quorum holds (PubAck after commit) and answers with the reference's error when leadership
//! went away first. It does no I/O: the records it hands out are written by the shard, in the
//! one write of the turn that all its groups share.

use super::log::{GroupLog, LogError};
use super::wire;
use bytes::Bytes;
use raft::prelude::{ConfChangeV2, Entry, EntryType, HardState, Message, Snapshot};
use raft::{RawNode, StateRole};
use std::collections::VecDeque;

/// The error text a publisher sees when its entry may not have committed (hashicorp's text,
/// which the reference's clients get in `PubAck.error`).
pub const LEADERSHIP_LOST: &str = "leadership lost while committing log";
/// A proposal made on a node that does not lead.
pub const NOT_LEADER: &str = "node is not the leader";

/// The membership change that adds `node` as a voter (`add`) or removes it.
pub fn membership_change(node: u64, add: bool) -> ConfChangeV2 {
    let mut single = raft::prelude::ConfChangeSingle::default();
    single.set_change_type(if add {
        raft::prelude::ConfChangeType::AddNode
    } else {
        raft::prelude::ConfChangeType::RemoveNode
    });
    single.node_id = node;
    let mut change = ConfChangeV2::default();
    change.set_changes(vec![single].into());
    change
}

/// How one group runs: who this node is in it, and its timers in ticks.
#[derive(Debug, Clone)]
pub struct GroupConfig {
    pub group: u32,
    pub node_id: u64,
    /// A follower that hears no leader for `election_ticks` to `2 * election_ticks` ticks
    /// (randomised by raft-rs) starts an election.
    pub election_ticks: usize,
    pub heartbeat_ticks: usize,
    /// Always this election timeout instead of raft-rs's random one (simulations draw each
    /// node's from their seed, so a run replays exactly).
    pub fixed_election_timeout: Option<usize>,
    /// Entries per append message (the reference's MaxAppendEntries is 64).
    pub max_inflight: usize,
    pub max_size_per_msg: u64,
    /// raft-rs's own log lines go to the process log (`cluster.raft_logging`); else they are
    /// dropped (stanza logs the decisions it acts on).
    pub raft_logging: bool,
}

/// raft-rs's log lines (slog) as the process's log lines, at debug level but for its
/// warnings and errors, tagged with the group.
struct LogDrain {
    group: u32,
}

impl slog::Drain for LogDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &slog::Record<'_>, _: &slog::OwnedKVList) -> Result<(), slog::Never> {
        let level = match record.level() {
            slog::Level::Critical | slog::Level::Error => log::Level::Error,
            slog::Level::Warning => log::Level::Warn,
            _ => log::Level::Debug,
        };
        log::log!(level, "STAN: raft: group {}: {}", self.group, record.msg());
        Ok(())
    }
}

impl GroupConfig {
    pub fn new(group: u32, node_id: u64) -> GroupConfig {
        GroupConfig {
            group,
            node_id,
            election_ticks: 10,
            heartbeat_ticks: 2,
            fixed_election_timeout: None,
            max_inflight: 256,
            max_size_per_msg: 1024 * 1024,
            raft_logging: false,
        }
    }

    fn raft_config(&self, applied: u64) -> raft::Config {
        let mut c = raft::Config::new(self.node_id);
        c.election_tick = self.election_ticks;
        c.heartbeat_tick = self.heartbeat_ticks;
        c.applied = applied;
        c.max_inflight_msgs = self.max_inflight;
        c.max_size_per_msg = self.max_size_per_msg;
        // A node cut off and back does not disturb a working leader (pre-vote), and a leader
        // that cannot reach a quorum steps down within an election timeout (check quorum), so
        // an isolated old leader stops serving by itself.
        c.pre_vote = true;
        c.check_quorum = true;
        if let Some(ticks) = self.fixed_election_timeout {
            c.min_election_tick = ticks.max(self.election_ticks);
            c.max_election_tick = c.min_election_tick + 1;
        }
        c
    }
}

/// Why the group refused something.
#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    #[error("raft group {group}: {source}")]
    Raft { group: u32, source: raft::Error },
    #[error("raft group {group}: {source}")]
    Log { group: u32, source: LogError },
    #[error("raft group {group}: {source}")]
    Wire { group: u32, source: wire::WireError },
    #[error("raft group {0}: no such group on this shard")]
    NoSuchGroup(u32),
    #[error(
        "raft group {group}: applied index {applied} is past the committed, written log ({limit})"
    )]
    AppliedBeyondLog {
        group: u32,
        applied: u64,
        limit: u64,
    },
}

/// What happened to one proposal, by the token its proposer gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Committed on a quorum; the entry is in `GroupReady::committed` of the same call.
    Committed(u64),
    /// Not known to be committed: leadership changed first. The entry may still commit under
    /// the next leader (then it is applied like any other entry, but nobody is told success).
    Lost(u64, &'static str),
}

/// Everything one call of `ready` wants done.
#[derive(Debug, Default)]
pub struct GroupReady {
    /// The `Ready` number: hand it back to `persisted` when this write has landed.
    pub number: u64,
    /// Messages to send at once (the leader's appends and heartbeats: raft lets a leader
    /// replicate while it writes its own copy).
    pub send_now: Vec<Message>,
    /// Messages to send only after this write landed (votes and append answers).
    pub send_after_write: Vec<Message>,
    /// Records to make durable in this turn's write (already readable in the log).
    pub entries: Vec<Entry>,
    pub hard_state: Option<HardState>,
    pub snapshot: Option<Snapshot>,
    /// A sync is needed (new entries, a vote or a term): a commit index alone needs none.
    pub must_sync: bool,
    /// Entries a quorum holds and this node has written: apply them in order, and a received
    /// `snapshot` before them, before the next `ready` (they count as applied from here on).
    /// Conf changes among them are applied to the membership already; normal ones are the
    /// caller's.
    pub committed: Vec<Entry>,
    /// Answers for the proposals this node made, in proposal order.
    pub outcomes: Vec<Outcome>,
    /// The role changed in this ready (the new role).
    pub role_changed: Option<StateRole>,
}

struct Pending {
    index: u64,
    term: u64,
    token: u64,
}

/// One raft group on this node.
pub struct Group {
    id: u32,
    node: RawNode<GroupLog>,
    /// Proposals made here and not yet answered, by log index.
    pending: VecDeque<Pending>,
    /// The role as last reported in a `GroupReady`.
    reported_role: StateRole,
    /// A received snapshot in ready N, applied (in raft-rs's count) when N is persisted.
    snapshot_pending: Option<(u64, u64)>,
}

impl Group {
    /// Starts (or restarts) the group on `log`; `applied` is how far the caller's state already
    /// reflects the log (its snapshot or its own store), so nothing is applied twice.
    pub fn new(config: &GroupConfig, log: GroupLog, applied: u64) -> Result<Group, GroupError> {
        // raft-rs aborts on an applied index past what is committed and written.
        let limit = log.hard_state().commit.min(log.last());
        if applied > limit {
            return Err(GroupError::AppliedBeyondLog {
                group: config.group,
                applied,
                limit,
            });
        }
        let logger = if config.raft_logging {
            slog::Logger::root(
                LogDrain {
                    group: config.group,
                },
                slog::o!(),
            )
        } else {
            slog::Logger::root(slog::Discard, slog::o!())
        };
        let node = RawNode::new(&config.raft_config(applied), log, &logger).map_err(|source| {
            GroupError::Raft {
                group: config.group,
                source,
            }
        })?;
        Ok(Group {
            id: config.group,
            node,
            pending: VecDeque::new(),
            reported_role: StateRole::Follower,
            snapshot_pending: None,
        })
    }

    pub fn id(&self) -> u32 {
        self.id
    }

    pub fn role(&self) -> StateRole {
        self.node.raft.state
    }

    pub fn is_leader(&self) -> bool {
        self.node.raft.state == StateRole::Leader
    }

    /// The leader this node knows of (0: none).
    pub fn leader(&self) -> u64 {
        self.node.raft.leader_id
    }

    pub fn term(&self) -> u64 {
        self.node.raft.term
    }

    pub fn commit_index(&self) -> u64 {
        self.node.raft.raft_log.committed
    }

    pub fn log(&self) -> &GroupLog {
        self.node.store()
    }

    /// As leader: how far each member's log is known to match this one's (raft ID, index), in
    /// member order; empty on other nodes, which do not track it.
    pub fn matched(&self) -> Vec<(u64, u64)> {
        if !self.is_leader() {
            return Vec::new();
        }
        let mut out: Vec<(u64, u64)> = self
            .node
            .raft
            .prs()
            .iter()
            .map(|(id, pr)| (*id, pr.matched))
            .collect();
        out.sort_unstable();
        out
    }

    /// The voting members, in order.
    pub fn voters(&self) -> Vec<u64> {
        let mut voters = self.node.store().conf_state().voters.clone();
        voters.sort_unstable();
        voters
    }

    /// One tick of the group's clock (elections and heartbeats count ticks).
    pub fn tick(&mut self) {
        self.node.tick();
    }

    /// A message from another node of this group. Messages of an older term and from nodes
    /// outside the group are dropped by raft-rs itself; errors are only reported.
    pub fn step(&mut self, mut message: Message) -> Result<(), GroupError> {
        // A heartbeat's commit index is at most what the follower matched, as the leader last
        // knew it; a follower that lost unsynced entries in a crash (`sync: false`, as the
        // reference's default) has less, and raft-rs would abort on committing past its log.
        // Committing only what it holds is safe: the rest comes with the next appends.
        if message.get_msg_type() == raft::prelude::MessageType::MsgHeartbeat {
            message.commit = message.commit.min(self.node.raft.raft_log.last_index());
        }
        self.node.step(message).map_err(|source| GroupError::Raft {
            group: self.id,
            source,
        })
    }

    /// Proposes `data` as one entry; `token` comes back in an `Outcome`. Refused at once on a
    /// node that does not lead (the caller answers `NOT_LEADER`). Returns the entry's index.
    pub fn propose(&mut self, data: Bytes, token: u64) -> Result<u64, GroupError> {
        if !self.is_leader() {
            return Err(GroupError::Raft {
                group: self.id,
                source: raft::Error::ProposalDropped,
            });
        }
        let before = self.node.raft.raft_log.last_index();
        self.node
            .propose(Vec::new(), data.to_vec())
            .map_err(|source| GroupError::Raft {
                group: self.id,
                source,
            })?;
        let index = self.node.raft.raft_log.last_index();
        if index == before {
            return Err(GroupError::Raft {
                group: self.id,
                source: raft::Error::ProposalDropped,
            });
        }
        self.pending.push_back(Pending {
            index,
            term: self.node.raft.term,
            token,
        });
        Ok(index)
    }

    /// Whether this node leads and has applied everything up to an entry of its own term:
    /// its state then holds every entry any earlier leader had acknowledged.
    pub fn leads_with_everything_applied(&self) -> bool {
        let raft = &self.node.raft;
        self.is_leader()
            && raft.raft_log.term(raft.raft_log.committed).ok() == Some(raft.term)
            && raft.raft_log.applied >= raft.raft_log.committed
    }

    /// Proposes a membership change (adding or removing a node).
    pub fn propose_membership(&mut self, change: ConfChangeV2) -> Result<(), GroupError> {
        if !self.is_leader() {
            return Err(GroupError::Raft {
                group: self.id,
                source: raft::Error::ProposalDropped,
            });
        }
        self.node
            .propose_conf_change(Vec::new(), change)
            .map_err(|source| GroupError::Raft {
                group: self.id,
                source,
            })
    }

    /// A membership change was proposed and is not applied yet (raft-rs takes one at a time:
    /// another proposed meanwhile would be dropped).
    pub fn has_pending_conf(&self) -> bool {
        self.node.raft.has_pending_conf()
    }

    /// Hands leadership to `node` (leader placement: every group led where clients are served).
    pub fn transfer_leader(&mut self, node: u64) {
        self.node.transfer_leader(node);
    }

    /// Starts an election now (a node told it should lead).
    pub fn campaign(&mut self) -> Result<(), GroupError> {
        self.node.campaign().map_err(|source| GroupError::Raft {
            group: self.id,
            source,
        })
    }

    /// A peer could not be reached (its link is down): raft stops pipelining to it.
    pub fn report_unreachable(&mut self, node: u64) {
        self.node.report_unreachable(node);
    }

    /// How far this node applied the log.
    pub fn applied(&self) -> u64 {
        self.node.raft.raft_log.applied
    }

    /// raft-rs needs a snapshot this node does not have (a follower too far behind, or a new
    /// member): make one with `make_snapshot`.
    pub fn wants_snapshot(&self) -> bool {
        self.node.store().snapshot_wanted()
    }

    /// Records `data` (the caller's state with everything applied) as the group's snapshot, at
    /// the applied index. Returns that index.
    pub fn make_snapshot(&mut self, data: Bytes) -> Result<u64, GroupError> {
        let index = self.applied();
        self.node
            .mut_store()
            .make_snapshot(index, data)
            .map_err(|source| GroupError::Log {
                group: self.id,
                source,
            })?;
        Ok(index)
    }

    /// Forgets the log up to `index`, never past the last snapshot.
    pub fn compact(&mut self, index: u64) {
        self.node.mut_store().compact(index);
    }

    pub fn has_ready(&self) -> bool {
        self.node.has_ready()
    }

    /// Takes what the group wants done. Entries and the hard state are in the in-memory log
    /// when this returns; the caller writes them (with the rest of the turn) and then calls
    /// `persisted(number)`.
    pub fn ready(&mut self) -> Result<Option<GroupReady>, GroupError> {
        if !self.node.has_ready() {
            return Ok(None);
        }
        let mut rd = self.node.ready();
        let mut out = GroupReady {
            number: rd.number(),
            must_sync: rd.must_sync(),
            ..GroupReady::default()
        };
        out.send_now = rd.take_messages();
        if !rd.snapshot().is_empty() {
            let snapshot = rd.snapshot().clone();
            self.snapshot_pending = Some((rd.number(), snapshot.get_metadata().index));
            self.node.mut_store().apply_snapshot(snapshot.clone());
            out.snapshot = Some(snapshot);
        }
        let entries = rd.take_entries();
        self.node
            .mut_store()
            .append(&entries)
            .map_err(|source| GroupError::Log {
                group: self.id,
                source,
            })?;
        out.entries = entries;
        if let Some(hs) = rd.hs() {
            self.node.mut_store().set_hard_state(hs.clone());
            out.hard_state = Some(hs.clone());
        }
        let committed = rd.take_committed_entries();
        out.send_after_write = rd.take_persisted_messages();
        self.node.advance_append_async(rd);
        // The transport forgets what it sent (NATS delivers at most once), so a snapshot is
        // reported sent as it leaves: raft-rs then probes the follower, and if the snapshot was
        // lost on the way the probe's rejection makes it send a new one. Without the report the
        // leader would wait for that follower forever.
        for m in out.send_now.iter().chain(&out.send_after_write) {
            if m.get_msg_type() == raft::prelude::MessageType::MsgSnapshot {
                self.node
                    .report_snapshot(m.to, raft::SnapshotStatus::Finish);
            }
        }
        self.apply_committed(committed, &mut out)?;
        self.note_role(&mut out);
        Ok(Some(out))
    }

    /// The write that carried ready `number` (and every earlier one) landed.
    pub fn persisted(&mut self, number: u64) {
        self.node.on_persist_ready(number);
        // A received snapshot counts as applied once it is written (raft-rs allows nothing
        // applied beyond what is persisted), and must then: raft-rs reads the log from the
        // applied index on (e.g. when it campaigns), and the snapshot replaced the log before it.
        if let Some((ready, index)) = self.snapshot_pending {
            if ready <= number {
                self.snapshot_pending = None;
                if index > self.applied() {
                    self.node.advance_apply_to(index);
                }
            }
        }
    }

    fn apply_committed(
        &mut self,
        committed: Vec<Entry>,
        out: &mut GroupReady,
    ) -> Result<(), GroupError> {
        let Some(last) = committed.last().map(|e| e.index) else {
            return Ok(());
        };
        for entry in &committed {
            if entry.get_entry_type() != EntryType::EntryNormal {
                let change =
                    wire::conf_change_from_entry(entry).map_err(|source| GroupError::Wire {
                        group: self.id,
                        source,
                    })?;
                let conf_state =
                    self.node
                        .apply_conf_change(&change)
                        .map_err(|source| GroupError::Raft {
                            group: self.id,
                            source,
                        })?;
                self.node.mut_store().set_conf_state(conf_state);
            }
            self.answer(entry, out);
        }
        // Handed out counts as applied: the caller applies it before its next `ready`.
        self.node.advance_apply_to(last);
        out.committed = committed;
        Ok(())
    }

    /// Matches an applied entry against this node's proposals: the same index and term is
    /// ours and committed; a different term at our index means another leader's entry won.
    fn answer(&mut self, entry: &Entry, out: &mut GroupReady) {
        while self.pending.front().is_some_and(|p| p.index <= entry.index) {
            let Some(p) = self.pending.pop_front() else {
                break;
            };
            if p.index == entry.index && p.term == entry.term {
                out.outcomes.push(Outcome::Committed(p.token));
            } else {
                out.outcomes.push(Outcome::Lost(p.token, LEADERSHIP_LOST));
            }
        }
    }

    /// On losing leadership every unanswered proposal is answered with the reference's error
    /// at once (as the reference does): its entry may still commit, but no success is sent.
    fn note_role(&mut self, out: &mut GroupReady) {
        let role = self.node.raft.state;
        if role == self.reported_role {
            return;
        }
        if self.reported_role == StateRole::Leader {
            for p in self.pending.drain(..) {
                out.outcomes.push(Outcome::Lost(p.token, LEADERSHIP_LOST));
            }
        }
        self.reported_role = role;
        out.role_changed = Some(role);
    }
}
