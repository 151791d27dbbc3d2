//! One raft group's log as raft-rs reads it (`raft::Storage`): the hard state, the membership,
//! the last snapshot, and the entries after it, in memory. The shard that owns the group appends
//! here before it hands a `Ready` back to raft-rs (raft-rs reads what it just wrote through this
//! trait), and makes the same records durable in its own write for the turn; this type does no
//! I/O.

use bytes::Bytes;
use raft::prelude::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, Storage, StorageError};
use std::cell::Cell;
use std::collections::VecDeque;

/// The in-memory log of one group. Invariants: `entries[k].index == before.0 + 1 + k`, and
/// the snapshot is at or after `before` (the log may keep trailing entries the snapshot
/// already covers, as the reference keeps `trailing_logs`).
#[derive(Default)]
pub struct GroupLog {
    hard_state: HardState,
    /// The membership as of the last applied entry.
    conf_state: ConfState,
    /// Index and term of the entry just before `entries` (0, 0: the log starts at 1).
    before: (u64, u64),
    entries: VecDeque<Entry>,
    /// The last snapshot made here or received (index 0: none).
    snapshot: Snapshot,
    /// raft-rs asked for a snapshot this log could not give (none, too old, or made before the
    /// receiver was a member): the owner should make one (`make_snapshot`).
    snapshot_wanted: Cell<bool>,
}

impl GroupLog {
    /// An empty log whose first membership is `voters` (the bootstrap of a new cluster: every
    /// listed node starts with the same voters at index 0, so no entry is needed to agree).
    pub fn with_voters(voters: &[u64]) -> GroupLog {
        let conf_state = ConfState::from((voters.iter().copied(), std::iter::empty()));
        let mut log = GroupLog {
            conf_state: conf_state.clone(),
            ..GroupLog::default()
        };
        log.snapshot.mut_metadata().set_conf_state(conf_state);
        log
    }

    /// A log as it was made durable: what a restart reads back. `before` is the index and
    /// term of the entry before the first one kept.
    pub fn restored(
        hard_state: HardState,
        conf_state: ConfState,
        snapshot: Snapshot,
        before: (u64, u64),
        entries: Vec<Entry>,
    ) -> Result<GroupLog, LogError> {
        for (k, entry) in entries.iter().enumerate() {
            let expected = before.0 + 1 + k as u64;
            if entry.index != expected {
                return Err(LogError::Gap {
                    expected,
                    found: entry.index,
                });
            }
        }
        if snapshot.get_metadata().index < before.0 {
            return Err(LogError::SnapshotBehindLog {
                snapshot: snapshot.get_metadata().index,
                first: before.0 + 1,
            });
        }
        // What raft-rs asserts on when it starts: checked here so a damaged file is an error.
        let last = before.0 + entries.len() as u64;
        if hard_state.commit > last || hard_state.commit < before.0 {
            return Err(LogError::CommitOutsideLog {
                commit: hard_state.commit,
                first: before.0 + 1,
                last,
            });
        }
        let mut term = before.1;
        for entry in &entries {
            if entry.term < term {
                return Err(LogError::TermsOutOfOrder { index: entry.index });
            }
            term = entry.term;
        }
        if term > hard_state.term {
            return Err(LogError::TermsOutOfOrder { index: last });
        }
        Ok(GroupLog {
            hard_state,
            conf_state,
            before,
            entries: entries.into(),
            snapshot,
            snapshot_wanted: Cell::new(false),
        })
    }

    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    pub fn set_hard_state(&mut self, hard_state: HardState) {
        self.hard_state = hard_state;
    }

    pub fn conf_state(&self) -> &ConfState {
        &self.conf_state
    }

    /// A membership change was applied.
    pub fn set_conf_state(&mut self, conf_state: ConfState) {
        self.conf_state = conf_state;
    }

    /// The last snapshot (received, or made by `make_snapshot`).
    pub fn last_snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    /// Index and term of the entry before the first one kept.
    pub fn before(&self) -> (u64, u64) {
        self.before
    }

    pub fn first(&self) -> u64 {
        self.before.0 + 1
    }

    pub fn last(&self) -> u64 {
        self.before.0 + self.entries.len() as u64
    }

    pub fn snapshot_wanted(&self) -> bool {
        self.snapshot_wanted.get()
    }

    /// Appends entries from a `Ready`. An entry at an index the log already holds replaces it
    /// and everything after it (a new leader overwrote an uncommitted suffix).
    pub fn append(&mut self, entries: &[Entry]) -> Result<(), LogError> {
        let Some(head) = entries.first() else {
            return Ok(());
        };
        let first = self.first();
        if head.index < first {
            return Err(LogError::BeforeSnapshot {
                index: head.index,
                first,
            });
        }
        if head.index > self.last() + 1 {
            return Err(LogError::Gap {
                expected: self.last() + 1,
                found: head.index,
            });
        }
        self.entries.truncate((head.index - first) as usize);
        self.entries.extend(entries.iter().cloned());
        Ok(())
    }

    /// Replaces the whole log by a snapshot received from the leader.
    pub fn apply_snapshot(&mut self, snapshot: Snapshot) {
        let meta = snapshot.get_metadata();
        self.hard_state.commit = self.hard_state.commit.max(meta.index);
        self.hard_state.term = self.hard_state.term.max(meta.term);
        self.conf_state = meta.get_conf_state().clone();
        self.before = (meta.index, meta.term);
        self.entries.clear();
        self.snapshot = snapshot;
    }

    /// Records `data`, the owner's state after applying the log up to `index`, as the snapshot
    /// a follower too far behind (or a new member) receives. `index` must be applied, so
    /// committed, and still in the log; the membership is the applied one.
    pub fn make_snapshot(&mut self, index: u64, data: Bytes) -> Result<(), LogError> {
        if index > self.hard_state.commit {
            return Err(LogError::SnapshotUncommitted {
                index,
                commit: self.hard_state.commit,
            });
        }
        let term = self.term_of(index).ok_or(LogError::NotInLog {
            index,
            first: self.first(),
            last: self.last(),
        })?;
        let meta = self.snapshot.mut_metadata();
        meta.index = index;
        meta.term = term;
        meta.set_conf_state(self.conf_state.clone());
        self.snapshot.data = data;
        self.snapshot_wanted.set(false);
        Ok(())
    }

    /// Forgets the entries up to `index`, never past the snapshot (what it summarises is
    /// what a lagging follower gets instead).
    pub fn compact(&mut self, index: u64) {
        let index = index
            .min(self.snapshot.get_metadata().index)
            .min(self.last());
        if index < self.first() {
            return;
        }
        if let Some(term) = self.term_of(index) {
            let drop = (index + 1 - self.first()) as usize;
            self.entries.drain(..drop);
            self.before = (index, term);
        }
    }

    fn term_of(&self, index: u64) -> Option<u64> {
        if index == self.before.0 {
            return Some(self.before.1);
        }
        self.entry(index).map(|e| e.term)
    }

    fn entry(&self, index: u64) -> Option<&Entry> {
        let first = self.first();
        if index < first {
            return None;
        }
        self.entries.get((index - first) as usize)
    }

    pub fn entries_from(&self, index: u64) -> impl Iterator<Item = &Entry> {
        let skip = index.saturating_sub(self.first()) as usize;
        self.entries.iter().skip(skip)
    }
}

/// What the log refuses: each would break an invariant.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LogError {
    #[error("raft log: expected entry {expected}, found {found}")]
    Gap { expected: u64, found: u64 },
    #[error("raft log: entry {index} is before the log's first index {first}")]
    BeforeSnapshot { index: u64, first: u64 },
    #[error("raft log: cannot snapshot at {index}, only {commit} is committed")]
    SnapshotUncommitted { index: u64, commit: u64 },
    #[error("raft log: entry {index} is not in the log ({first}..={last})")]
    NotInLog { index: u64, first: u64, last: u64 },
    #[error("raft log: the snapshot ({snapshot}) is older than the log's first entry {first}")]
    SnapshotBehindLog { snapshot: u64, first: u64 },
    #[error("raft log: commit index {commit} outside the log ({first}..={last})")]
    CommitOutsideLog { commit: u64, first: u64, last: u64 },
    #[error("raft log: entry {index} has a term older than the entry before it, or newer than the hard state")]
    TermsOutOfOrder { index: u64 },
}

fn is_member(conf_state: &ConfState, node: u64) -> bool {
    conf_state.voters.contains(&node)
        || conf_state.learners.contains(&node)
        || conf_state.voters_outgoing.contains(&node)
}

impl Storage for GroupLog {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState {
            hard_state: self.hard_state.clone(),
            conf_state: self.conf_state.clone(),
        })
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low < self.first() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > self.last() + 1 || low > high {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let start = (low - self.first()) as usize;
        let end = (high - self.first()) as usize;
        let mut out: Vec<Entry> = self.entries.range(start..end).cloned().collect();
        raft::util::limit_size(&mut out, max_size.into());
        Ok(out)
    }

    fn term(&self, index: u64) -> raft::Result<u64> {
        if index < self.before.0 {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        match self.term_of(index) {
            Some(term) => Ok(term),
            None => Err(raft::Error::Store(StorageError::Unavailable)),
        }
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.first())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last())
    }

    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        // The receiver must be in the snapshot's membership (raft-rs refuses one without it: a
        // new member needs one made after its addition), and it must cover what was asked for
        // and the log's compacted part. Otherwise the owner makes a fresh one and raft-rs asks
        // again on its next probe.
        let meta = self.snapshot.get_metadata();
        if meta.index < request_index
            || meta.index < self.before.0
            || meta.index == 0
            || !is_member(meta.get_conf_state(), to)
        {
            self.snapshot_wanted.set(true);
            return Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        Ok(self.snapshot.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::raft::test_entry as entry;

    fn ctx() -> GetEntriesContext {
        GetEntriesContext::empty(false)
    }

    #[test]
    fn appends_truncate_a_conflicting_suffix() {
        let mut log = GroupLog::with_voters(&[1, 2, 3]);
        log.append(&[entry(1, 1), entry(2, 1), entry(3, 1)])
            .unwrap();
        log.append(&[entry(2, 2)]).unwrap();
        assert_eq!(log.last(), 2);
        assert_eq!(log.term(2).unwrap(), 2);
        assert_eq!(
            log.append(&[entry(5, 2)]),
            Err(LogError::Gap {
                expected: 3,
                found: 5
            })
        );
    }

    #[test]
    fn compaction_stops_at_the_snapshot_and_keeps_the_term_before() {
        let mut log = GroupLog::with_voters(&[1]);
        log.append(&[entry(1, 1), entry(2, 1), entry(3, 2)])
            .unwrap();
        assert!(log.make_snapshot(2, Bytes::from_static(b"state")).is_err());
        let mut hs = HardState::default();
        hs.commit = 3;
        log.set_hard_state(hs);
        // Nothing to give yet: raft-rs is told to wait, the owner to make one.
        assert!(log.snapshot(0, 1).is_err());
        assert!(log.snapshot_wanted());
        log.make_snapshot(2, Bytes::from_static(b"state")).unwrap();
        assert!(!log.snapshot_wanted());
        log.compact(3);
        assert_eq!(log.first(), 3, "compaction stops at the snapshot");
        assert_eq!(log.term(2).unwrap(), 1);
        assert!(matches!(
            log.term(1),
            Err(raft::Error::Store(StorageError::Compacted))
        ));
        assert!(matches!(
            log.entries(2, 4, None, ctx()),
            Err(raft::Error::Store(StorageError::Compacted))
        ));
        assert_eq!(log.entries(3, 4, None, ctx()).unwrap().len(), 1);
        assert_eq!(
            log.snapshot(2, 1).unwrap().data,
            Bytes::from_static(b"state")
        );
        assert!(log.snapshot(3, 1).is_err(), "older than asked");
        assert!(log.snapshot(2, 7).is_err(), "node 7 is not a member");
        assert_eq!(
            log.last_snapshot().get_metadata().get_conf_state().voters,
            vec![1]
        );
    }

    #[test]
    fn a_restored_log_must_be_contiguous() {
        let snap = Snapshot::default();
        let cs = ConfState::default();
        let mut hs = HardState::default();
        hs.term = 1;
        let restore = |before, entries| {
            GroupLog::restored(hs.clone(), cs.clone(), snap.clone(), before, entries)
        };
        assert!(restore((0, 0), vec![entry(1, 1)]).is_ok());
        assert!(restore((0, 0), vec![entry(2, 1)]).is_err());
        // A snapshot behind the log is not a log; nor are terms going back or past the state.
        assert!(restore((1, 1), vec![entry(2, 1)]).is_err());
        assert!(restore((0, 0), vec![entry(1, 1), entry(2, 0)]).is_err());
        assert!(restore((0, 0), vec![entry(1, 2)]).is_err());
    }
}
