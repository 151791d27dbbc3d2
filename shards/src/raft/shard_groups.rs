//! Every raft group one shard owns, driven together, as the shard's driver runs them: bytes
//! from other nodes routed to their groups, one tick for all, and per call of `ready` one
//! `Turn`: every group's records as one append to the shard's raft log file, the messages that
//! may go at once gathered into one batch per destination node, the committed entries to
//! apply, proposal outcomes and role changes. The append comes as a `PendingWrite`; once it
//! landed, `written` hands out the messages that had to wait for it (votes, append answers).
//! No I/O here: the driver writes, sends and applies.

use super::group::{Group, GroupError, Outcome};
use super::log_file::{self, Records};
use super::wire::{self, WireError};
use bytes::Bytes;
use raft::prelude::{Entry, Message, Snapshot};
use raft::StateRole;
use std::collections::BTreeMap;

/// Why bytes from another node were not taken.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReceiveError {
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("raft batch for node {to} arrived at node {me}")]
    WrongNode { to: u64, me: u64 },
}

/// One turn's records for the raft log file, and what waits for them.
#[must_use = "hand it back to ShardGroups::written once the records are written"]
#[derive(Debug, Default)]
pub struct PendingWrite {
    /// Append these to the shard's raft log file (take them; hand the rest back).
    pub records: Vec<u8>,
    /// Sync the append (a vote, a term or new entries: not a commit index alone); the
    /// reference syncs only with `cluster.sync`, which the driver decides.
    pub must_sync: bool,
    readies: Vec<(u32, u64)>,
    after: Vec<(u32, Message)>,
}

/// One group's messages for one node, encoded as a batch: they travel on a subject naming
/// both, so the receiving node hands them to the core that owns the group without decoding
/// (nodes may run different core counts).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    pub to: u64,
    pub group: u32,
    pub bytes: Vec<u8>,
}

/// What one call of `ready` wants done.
#[derive(Debug, Default)]
pub struct Turn {
    /// Encoded batches to send now, by destination node and group.
    pub send_now: Vec<Outgoing>,
    pub write: Option<PendingWrite>,
    /// Snapshots received from a leader: the group's state is replaced by each (before its
    /// committed entries below are applied).
    pub snapshots: Vec<(u32, Snapshot)>,
    /// Entries to apply, in log order per group.
    pub committed: Vec<(u32, Entry)>,
    pub outcomes: Vec<(u32, Outcome)>,
    pub roles: Vec<(u32, StateRole)>,
    /// Groups that failed this turn (an entry they could not apply): each is taken out of
    /// service here (its later messages are dropped, proposals refused) rather than go on with
    /// a state that skipped an entry; the driver logs it and, as the reference does when a
    /// replicated entry cannot be stored, stops the node.
    pub errors: Vec<GroupError>,
}

impl Turn {
    pub fn is_empty(&self) -> bool {
        self.send_now.is_empty()
            && self.write.is_none()
            && self.snapshots.is_empty()
            && self.committed.is_empty()
            && self.outcomes.is_empty()
            && self.roles.is_empty()
            && self.errors.is_empty()
    }
}

/// When groups snapshot and how much log they keep behind a snapshot (the reference's
/// values: a snapshot once 8,192 entries are new, 10,240 entries kept, `trailing_logs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotPolicy {
    pub every: u64,
    pub trailing: u64,
}

impl Default for SnapshotPolicy {
    fn default() -> Self {
        SnapshotPolicy {
            every: 8192,
            trailing: 10240,
        }
    }
}

/// The groups of one shard on this node.
pub struct ShardGroups {
    node_id: u64,
    groups: BTreeMap<u32, Group>,
    /// Snapshot and compaction records made since the last turn: they go with its write.
    records: Vec<u8>,
    /// Messages for groups this shard does not have (another node's partition map disagrees,
    /// or a group not created yet, or one taken out of service): dropped, counted.
    pub dropped: u64,
    /// Groups taken out of service after an error (see `Turn::errors`).
    failed: Vec<u32>,
}

impl ShardGroups {
    pub fn new(node_id: u64) -> ShardGroups {
        ShardGroups {
            node_id,
            groups: BTreeMap::new(),
            records: Vec::new(),
            dropped: 0,
            failed: Vec::new(),
        }
    }

    pub fn node_id(&self) -> u64 {
        self.node_id
    }

    pub fn insert(&mut self, group: Group) {
        self.groups.insert(group.id(), group);
    }

    pub fn group(&self, id: u32) -> Option<&Group> {
        self.groups.get(&id)
    }

    pub fn group_mut(&mut self, id: u32) -> Option<&mut Group> {
        self.groups.get_mut(&id)
    }

    pub fn groups(&self) -> impl Iterator<Item = &Group> {
        self.groups.values()
    }

    /// Groups taken out of service after an error.
    pub fn failed(&self) -> &[u32] {
        &self.failed
    }

    /// A batch another node sent: each message to its group. Messages raft refuses (an old
    /// term, a node outside the group) are not errors; a batch that does not decode is.
    pub fn receive(&mut self, bytes: &[u8]) -> Result<(), ReceiveError> {
        let batch = wire::decode_batch(bytes)?;
        if batch.to_node != self.node_id {
            return Err(ReceiveError::WrongNode {
                to: batch.to_node,
                me: self.node_id,
            });
        }
        for (group, message) in batch.messages {
            match self.groups.get_mut(&group) {
                Some(g) => {
                    let _ = g.step(message);
                }
                None => self.dropped += 1,
            }
        }
        Ok(())
    }

    /// One tick of every group's clock.
    pub fn tick(&mut self) {
        for g in self.groups.values_mut() {
            g.tick();
        }
    }

    /// Proposes `data` on `group`; `token` comes back in an outcome. Returns the entry's index.
    pub fn propose(&mut self, group: u32, data: Bytes, token: u64) -> Result<u64, GroupError> {
        serving(&mut self.groups, group)?.propose(data, token)
    }

    /// Groups raft-rs needs a snapshot of (for a follower too far behind, or a new member):
    /// answer each with `make_snapshot`.
    pub fn snapshots_wanted(&self) -> Vec<u32> {
        self.groups
            .values()
            .filter(|g| g.wants_snapshot())
            .map(|g| g.id())
            .collect()
    }

    /// Groups whose log grew `policy.every` entries past their last snapshot: snapshot each
    /// (`make_snapshot` with the state, keeping `policy.trailing` entries).
    pub fn snapshots_due(&self, policy: &SnapshotPolicy) -> Vec<u32> {
        self.groups
            .values()
            .filter(|g| {
                let last = g.log().last_snapshot().get_metadata().index;
                g.applied().saturating_sub(last) >= policy.every
            })
            .map(|g| g.id())
            .collect()
    }

    /// Records `data` (the group's state with everything applied) as its snapshot, and with
    /// `keep` forgets the log before the last `keep` entries it covers (the reference's
    /// `trailing_logs`: a follower a little behind catches up from entries, not a snapshot).
    /// Its records go with the next turn's write. Returns the snapshot's index.
    pub fn make_snapshot(
        &mut self,
        group: u32,
        data: Bytes,
        keep: Option<u64>,
    ) -> Result<u64, GroupError> {
        let g = serving(&mut self.groups, group)?;
        let index = g.make_snapshot(data)?;
        let base = match keep {
            Some(keep) => {
                g.compact(index.saturating_sub(keep));
                g.log().before()
            }
            None => (0, 0),
        };
        log_file::encode_snapshot(&mut self.records, group, g.log().last_snapshot(), base);
        Ok(index)
    }

    /// Everything the groups want done now (see `Turn`).
    pub fn ready(&mut self) -> Turn {
        let mut turn = Turn::default();
        let mut write = PendingWrite {
            records: std::mem::take(&mut self.records),
            ..PendingWrite::default()
        };
        let mut now = Vec::new();
        let mut failed = Vec::new();
        for (id, g) in self.groups.iter_mut() {
            let rd = match g.ready() {
                Ok(Some(rd)) => rd,
                Ok(None) => continue,
                Err(e) => {
                    failed.push(*id);
                    turn.errors.push(e);
                    continue;
                }
            };
            log_file::encode_ready(
                &mut write.records,
                *id,
                &Records {
                    received_snapshot: rd.snapshot.as_ref(),
                    entries: &rd.entries,
                    hard_state: rd.hard_state.as_ref(),
                },
            );
            write.must_sync |= rd.must_sync;
            write.readies.push((*id, rd.number));
            write
                .after
                .extend(rd.send_after_write.into_iter().map(|m| (*id, m)));
            now.extend(rd.send_now.into_iter().map(|m| (*id, m)));
            if let Some(s) = rd.snapshot {
                turn.snapshots.push((*id, s));
            }
            turn.committed
                .extend(rd.committed.into_iter().map(|e| (*id, e)));
            turn.outcomes
                .extend(rd.outcomes.into_iter().map(|o| (*id, o)));
            if let Some(role) = rd.role_changed {
                turn.roles.push((*id, role));
            }
        }
        for id in failed {
            self.groups.remove(&id);
            self.failed.push(id);
        }
        turn.send_now = self.by_destination(now);
        if !write.records.is_empty() || !write.readies.is_empty() {
            turn.write = Some(write);
        }
        turn
    }

    /// The write of a turn landed (writes land in the order their turns made them): the groups
    /// learn it, and the messages that waited for it go out.
    pub fn written(&mut self, write: PendingWrite) -> Vec<Outgoing> {
        for (id, number) in write.readies {
            if let Some(g) = self.groups.get_mut(&id) {
                g.persisted(number);
            }
        }
        self.by_destination(write.after)
    }

    /// One encoded batch per destination node and group.
    fn by_destination(&self, messages: Vec<(u32, Message)>) -> Vec<Outgoing> {
        let mut by_node: BTreeMap<(u64, u32), Vec<(u32, Message)>> = BTreeMap::new();
        for (group, m) in messages {
            by_node.entry((m.to, group)).or_default().push((group, m));
        }
        by_node
            .into_iter()
            .map(|((to, group), messages)| Outgoing {
                to,
                group,
                bytes: wire::encode_batch(self.node_id, to, &messages),
            })
            .collect()
    }
}

/// A group this shard drives (not one it never had or took out of service).
fn serving(groups: &mut BTreeMap<u32, Group>, group: u32) -> Result<&mut Group, GroupError> {
    groups.get_mut(&group).ok_or(GroupError::NoSuchGroup(group))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::{GroupConfig, GroupLog};

    fn single_node(node: u64, groups: &[u32]) -> ShardGroups {
        let mut shard = ShardGroups::new(node);
        for g in groups {
            let config = GroupConfig::new(*g, node);
            let group = Group::new(&config, GroupLog::with_voters(&[node]), 0).unwrap();
            shard.insert(group);
        }
        shard
    }

    type Committed = Vec<(u32, Entry)>;
    type Outcomes = Vec<(u32, Outcome)>;

    /// Turns until nothing is left, each write landing at once; returns every turn's
    /// committed entries and outcomes.
    fn settle(shard: &mut ShardGroups) -> (Committed, Outcomes) {
        let mut committed = Vec::new();
        let mut outcomes = Vec::new();
        for _ in 0..16 {
            let mut turn = shard.ready();
            if turn.is_empty() {
                break;
            }
            committed.append(&mut turn.committed);
            outcomes.append(&mut turn.outcomes);
            if let Some(w) = turn.write {
                assert!(shard.written(w).is_empty(), "a lone node sends nothing");
            }
        }
        (committed, outcomes)
    }

    #[test]
    fn one_write_carries_every_group_and_proposals_commit_on_a_lone_voter() {
        let mut shard = single_node(1, &[0, 3]);
        for g in [0, 3] {
            shard.group_mut(g).unwrap().campaign().unwrap();
        }
        let turn = shard.ready();
        let write = turn.write.expect("votes and terms to write");
        assert!(write.must_sync);
        let (groups, _) = log_file::replay(&write.records).unwrap();
        assert_eq!(groups.keys().copied().collect::<Vec<_>>(), vec![0, 3]);
        let _ = shard.written(write);
        settle(&mut shard);
        assert!(shard.groups().all(|g| g.is_leader()));
        shard.propose(3, Bytes::from_static(b"x"), 42).unwrap();
        let (committed, outcomes) = settle(&mut shard);
        assert!(committed
            .iter()
            .any(|(g, e)| *g == 3 && e.data.as_ref() == b"x"));
        assert_eq!(outcomes, vec![(3, Outcome::Committed(42))]);
        assert!(shard.propose(9, Bytes::from_static(b"y"), 43).is_err());
    }

    #[test]
    fn a_group_that_cannot_apply_an_entry_is_taken_out_of_service() {
        // Node 1 follows node 2 in groups 0 and 1. Node 2 sends group 1 a committed
        // membership change whose bytes do not decode (only a broken peer or disk makes one).
        let mut shard = ShardGroups::new(1);
        for g in [0, 1] {
            let config = GroupConfig::new(g, 1);
            shard.insert(Group::new(&config, GroupLog::with_voters(&[1, 2]), 0).unwrap());
        }
        let mut entry = Entry::default();
        entry.set_entry_type(raft::prelude::EntryType::EntryConfChangeV2);
        entry.term = 1;
        entry.index = 1;
        entry.data = Bytes::from_static(b"\xff\xff\xff");
        let append = |group: u32, entries: Vec<Entry>| {
            let mut m = Message::default();
            m.set_msg_type(raft::prelude::MessageType::MsgAppend);
            m.to = 1;
            m.from = 2;
            m.term = 1;
            m.commit = entries.len() as u64;
            m.set_entries(entries.into());
            (group, m)
        };
        let mut normal = entry.clone();
        normal.set_entry_type(raft::prelude::EntryType::EntryNormal);
        normal.data = Bytes::from_static(b"fine");
        let batch = wire::encode_batch(2, 1, &[append(0, vec![normal]), append(1, vec![entry])]);
        shard.receive(&batch).unwrap();
        let mut errors = Vec::new();
        let mut applied = Vec::new();
        for _ in 0..8 {
            let mut turn = shard.ready();
            errors.append(&mut turn.errors);
            applied.append(&mut turn.committed);
            if let Some(w) = turn.write {
                let _ = shard.written(w);
            }
        }
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(shard.failed(), &[1]);
        assert!(shard.group(1).is_none());
        assert!(shard.propose(1, Bytes::from_static(b"x"), 1).is_err());
        assert!(
            applied
                .iter()
                .any(|(g, e)| *g == 0 && e.data.as_ref() == b"fine"),
            "the other group goes on"
        );
        shard.receive(&batch).unwrap();
        assert_eq!(
            shard.dropped, 1,
            "group 1's messages are dropped from now on"
        );
    }

    #[test]
    fn snapshots_come_due_by_entries_and_keep_the_trailing_log() {
        let mut shard = single_node(1, &[0, 1]);
        for g in [0, 1] {
            shard.group_mut(g).unwrap().campaign().unwrap();
        }
        settle(&mut shard);
        for n in 0..30 {
            shard.propose(0, Bytes::from(format!("{n}")), n).unwrap();
        }
        settle(&mut shard);
        let policy = SnapshotPolicy {
            every: 20,
            trailing: 10,
        };
        assert_eq!(
            shard.snapshots_due(&policy),
            vec![0],
            "group 1 has only its no-op"
        );
        let index = shard
            .make_snapshot(0, Bytes::from_static(b"state"), Some(policy.trailing))
            .unwrap();
        let log = shard.group(0).unwrap().log();
        assert_eq!(log.last_snapshot().get_metadata().index, index);
        assert_eq!(
            log.before().0,
            index - 10,
            "ten entries kept behind the snapshot"
        );
        assert!(shard.snapshots_due(&policy).is_empty());
        // The records go with the next write and replay to the same log.
        let write = shard.ready().write.expect("the snapshot's records");
        let (groups, _) = log_file::replay(&write.records).unwrap();
        assert_eq!(groups[&0].before, (index - 10, groups[&0].before.1));
    }

    #[test]
    fn batches_for_another_node_or_group_are_not_taken() {
        let mut shard = single_node(1, &[0]);
        let mut m = Message::default();
        m.set_msg_type(raft::prelude::MessageType::MsgHeartbeat);
        m.to = 1;
        m.from = 2;
        m.term = 1;
        let elsewhere = wire::encode_batch(2, 5, &[(0, m.clone())]);
        assert_eq!(
            shard.receive(&elsewhere),
            Err(ReceiveError::WrongNode { to: 5, me: 1 })
        );
        let unknown_group = wire::encode_batch(2, 1, &[(7, m)]);
        assert_eq!(shard.receive(&unknown_group), Ok(()));
        assert_eq!(shard.dropped, 1);
        assert!(matches!(shard.receive(b"\x01"), Err(ReceiveError::Wire(_))));
    }
}
