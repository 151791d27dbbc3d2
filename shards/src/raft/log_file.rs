//! A shard's raft log on disk: the records of every group the shard owns in one journal file
//! (the file store's framing: length, CRC-32C, body; `store::journal`), each body a prost
//! `RaftLogRecord` (proto/cluster.proto). One turn's records for all groups go out in one
//! append (one sync with `cluster.sync`). Replay rebuilds every group's log, ending at a torn
//! tail and refusing corruption before it; a rewrite (compaction) writes each group's log
//! whole. Encoding and replay do no I/O; `open` is the only part that touches the disk.

use super::log::{GroupLog, LogError};
use super::wire::{self, WireError};
use crate::cluster as pb;
use crate::store::journal::{self, AppendFile, Corrupt};
use prost::Message as _;
use raft::prelude::{Entry, HardState, Snapshot};
use std::collections::BTreeMap;
use std::path::Path;

/// What one group's `ready` asks to make durable.
#[derive(Default)]
pub struct Records<'a> {
    pub received_snapshot: Option<&'a Snapshot>,
    pub entries: &'a [Entry],
    pub hard_state: Option<&'a HardState>,
}

fn hard_state_to_pb(hs: &HardState) -> pb::RaftHardState {
    pb::RaftHardState {
        term: hs.term,
        vote: hs.vote,
        commit: hs.commit,
    }
}

fn push(out: &mut Vec<u8>, record: pb::RaftLogRecord) {
    journal::frame(out, &record.encode_to_vec());
}

/// Appends the record of one group's ready to `out` (nothing when there is nothing to keep).
pub fn encode_ready(out: &mut Vec<u8>, group: u32, records: &Records<'_>) {
    if records.received_snapshot.is_none()
        && records.entries.is_empty()
        && records.hard_state.is_none()
    {
        return;
    }
    push(
        out,
        pb::RaftLogRecord {
            group,
            received_snapshot: records.received_snapshot.map(wire::snapshot_to_pb),
            entries: records.entries.iter().map(wire::entry_to_pb).collect(),
            hard_state: records.hard_state.map(hard_state_to_pb),
            ..Default::default()
        },
    );
}

/// Appends a snapshot made here and the compaction that follows it (entries up to `base`
/// dropped; `base` is (0, 0) when nothing is dropped).
pub fn encode_snapshot(out: &mut Vec<u8>, group: u32, made: &Snapshot, base: (u64, u64)) {
    push(
        out,
        pb::RaftLogRecord {
            group,
            base_index: base.0,
            base_term: base.1,
            made_snapshot: Some(wire::snapshot_to_pb(made)),
            ..Default::default()
        },
    );
}

/// Appends one group's whole log (a rewrite of the file writes this for every group).
pub fn encode_whole(out: &mut Vec<u8>, group: u32, log: &GroupLog) {
    let before = log.before();
    push(
        out,
        pb::RaftLogRecord {
            group,
            base_index: before.0,
            base_term: before.1,
            entries: log.entries_from(0).map(wire::entry_to_pb).collect(),
            hard_state: Some(hard_state_to_pb(log.hard_state())),
            made_snapshot: Some(wire::snapshot_to_pb(log.last_snapshot())),
            ..Default::default()
        },
    );
}

/// One group's log as replay found it.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct RecoveredGroup {
    pub hard_state: HardState,
    pub snapshot: Snapshot,
    /// Index and term of the entry before `entries`.
    pub before: (u64, u64),
    pub entries: Vec<Entry>,
}

impl RecoveredGroup {
    fn last(&self) -> u64 {
        self.before.0 + self.entries.len() as u64
    }

    fn term_at(&self, index: u64) -> Option<u64> {
        if index == self.before.0 {
            return Some(self.before.1);
        }
        let k = index.checked_sub(self.before.0 + 1)?;
        self.entries.get(k as usize).map(|e| e.term)
    }

    fn apply(&mut self, r: pb::RaftLogRecord) -> Result<(), RecordError> {
        if let Some(s) = r.received_snapshot {
            let s = wire::snapshot_from_pb(s);
            let meta = s.get_metadata();
            self.before = (meta.index, meta.term);
            self.entries.clear();
            self.hard_state.commit = self.hard_state.commit.max(meta.index);
            self.snapshot = s;
        }
        if r.base_index > 0 {
            self.rebase(r.base_index, r.base_term)?;
        }
        if let Some(head) = r.entries.first().map(|e| e.index) {
            let first = self.before.0 + 1;
            if head < first || head > self.last() + 1 {
                return Err(RecordError::Gap {
                    head,
                    first,
                    last: self.last(),
                });
            }
            self.entries.truncate((head - first) as usize);
            for (k, e) in r.entries.into_iter().enumerate() {
                if e.index != head + k as u64 {
                    return Err(RecordError::Gap {
                        head: e.index,
                        first,
                        last: self.last(),
                    });
                }
                self.entries.push(wire::entry_from_pb(e)?);
            }
        }
        if let Some(hs) = r.hard_state {
            self.hard_state.term = hs.term;
            self.hard_state.vote = hs.vote;
            self.hard_state.commit = hs.commit;
        }
        if let Some(s) = r.made_snapshot {
            self.snapshot = wire::snapshot_from_pb(s);
        }
        if self.snapshot.get_metadata().index < self.before.0 {
            return Err(RecordError::SnapshotBehindLog);
        }
        Ok(())
    }

    /// Entries up to `index` dropped; on a log that does not reach it, the log starts there.
    fn rebase(&mut self, index: u64, term: u64) -> Result<(), RecordError> {
        if index <= self.before.0 {
            return Ok(());
        }
        if index >= self.last() {
            self.entries.clear();
        } else {
            if self.term_at(index) != Some(term) {
                return Err(RecordError::BaseTerm { index, term });
            }
            let drop = (index - self.before.0) as usize;
            self.entries.drain(..drop);
        }
        self.before = (index, term);
        Ok(())
    }

    /// The group's log, its membership as of the snapshot (raft-rs applies the entries after
    /// it again, conf changes included). Start the group with `applied` = the snapshot index.
    pub fn into_log(mut self) -> Result<GroupLog, LogError> {
        let conf_state = self.snapshot.get_metadata().get_conf_state().clone();
        // A snapshot covers only committed entries, but the hard state saying so may have
        // been in a write that did not land before a crash: the snapshot is the proof.
        let snapshot_index = self.snapshot.get_metadata().index;
        self.hard_state.commit = self.hard_state.commit.max(snapshot_index);
        GroupLog::restored(
            self.hard_state,
            conf_state,
            self.snapshot,
            self.before,
            self.entries,
        )
    }
}

/// Why one record could not be applied.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecordError {
    #[error("undecodable record: {0}")]
    Decode(String),
    #[error("entries from {head} do not follow the log ({first}..={last})")]
    Gap { head: u64, first: u64, last: u64 },
    #[error("compaction to {index} names term {term}, the log has another")]
    BaseTerm { index: u64, term: u64 },
    #[error("the snapshot is older than the log's start")]
    SnapshotBehindLog,
    #[error(transparent)]
    Wire(#[from] WireError),
}

/// Why a raft log file could not be read back.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("{path}: {bad}")]
    Corrupt { path: String, bad: BadRecord },
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

/// A record replay refused, before the end of the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("corrupt record at offset {offset}: {reason}")]
pub struct BadRecord {
    pub offset: usize,
    pub reason: String,
}

/// Every group's log from the bytes of a log file, and where the file's good part ends.
pub fn replay(buf: &[u8]) -> Result<(BTreeMap<u32, RecoveredGroup>, usize), BadRecord> {
    let mut groups: BTreeMap<u32, RecoveredGroup> = BTreeMap::new();
    let mut failure = None;
    let result = journal::replay(buf, |body| {
        let applied = pb::RaftLogRecord::decode(body)
            .map_err(|e| RecordError::Decode(e.to_string()))
            .and_then(|r| groups.entry(r.group).or_default().apply(r));
        match applied {
            Ok(()) => Some(()),
            Err(e) => {
                failure = Some(e.to_string());
                None
            }
        }
    });
    match result {
        Ok(end) => Ok((groups, end)),
        Err(Corrupt(offset)) => Err(BadRecord {
            offset,
            reason: failure.unwrap_or_else(|| "bad length or CRC".to_string()),
        }),
    }
}

/// Opens (or creates) a shard's raft log file: every group's recovered log, and the file
/// ready to append after the last good record (a torn tail is cut off and logged).
pub async fn open(
    path: &Path,
    sync: bool,
) -> Result<(BTreeMap<u32, RecoveredGroup>, AppendFile), ReplayError> {
    let name = path.display().to_string();
    let io = |source| ReplayError::Io {
        path: name.clone(),
        source,
    };
    let buf = journal::read_file(path).map_err(io)?;
    let (groups, end) = replay(&buf).map_err(|bad| ReplayError::Corrupt {
        path: name.clone(),
        bad,
    })?;
    journal::log_torn_tail(path, &buf, end);
    let file = AppendFile::open_at(path, end as u64, sync)
        .await
        .map_err(io)?;
    Ok((groups, file))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use raft::prelude::ConfState;

    use crate::raft::test_entry as entry;

    fn hs(term: u64, vote: u64, commit: u64) -> HardState {
        let mut h = HardState::default();
        h.term = term;
        h.vote = vote;
        h.commit = commit;
        h
    }

    fn bootstrap() -> Snapshot {
        let mut s = Snapshot::default();
        s.mut_metadata()
            .set_conf_state(ConfState::from((vec![1, 2, 3], Vec::<u64>::new())));
        s
    }

    #[test]
    fn replay_rebuilds_each_group_with_truncations_snapshots_and_compaction() {
        let mut out = Vec::new();
        let boot = bootstrap();
        encode_snapshot(&mut out, 0, &boot, (0, 0));
        encode_snapshot(&mut out, 1, &boot, (0, 0));
        let e1 = [entry(1, 1), entry(2, 1), entry(3, 1)];
        encode_ready(
            &mut out,
            0,
            &Records {
                entries: &e1,
                hard_state: Some(&hs(1, 1, 0)),
                ..Default::default()
            },
        );
        // A new leader replaced entry 3 on; group 1 is untouched by group 0's records.
        let e2 = [entry(3, 2), entry(4, 2)];
        encode_ready(
            &mut out,
            0,
            &Records {
                entries: &e2,
                hard_state: Some(&hs(2, 2, 3)),
                ..Default::default()
            },
        );
        encode_ready(
            &mut out,
            1,
            &Records {
                entries: &[entry(1, 5)],
                hard_state: Some(&hs(5, 0, 0)),
                ..Default::default()
            },
        );
        let mut made = boot.clone();
        made.mut_metadata().index = 2;
        made.mut_metadata().term = 1;
        made.data = Bytes::from_static(b"state@2");
        encode_snapshot(&mut out, 0, &made, (2, 1));

        let (groups, end) = replay(&out).unwrap();
        assert_eq!(end, out.len());
        let g0 = &groups[&0];
        assert_eq!(g0.before, (2, 1));
        assert_eq!(g0.entries, vec![entry(3, 2), entry(4, 2)]);
        assert_eq!(g0.hard_state, hs(2, 2, 3));
        assert_eq!(g0.snapshot.data, Bytes::from_static(b"state@2"));
        assert_eq!(groups[&1].entries, vec![entry(1, 5)]);

        // A rewrite of the file gives the same logs back.
        let mut whole = Vec::new();
        for (g, r) in &groups {
            encode_whole(&mut whole, *g, &r.clone().into_log().unwrap());
        }
        let (again, _) = replay(&whole).unwrap();
        assert_eq!(again, groups);

        // A torn tail ends the log; a bad record before the end is refused with its offset.
        let mut torn = out.clone();
        torn.truncate(out.len() - 3);
        let (_, end) = replay(&torn).unwrap();
        assert!(end < torn.len());
        let mut bad = out.clone();
        bad[12] ^= 0xff;
        assert_eq!(replay(&bad).unwrap_err().offset, 0);
    }

    #[test]
    fn records_that_break_the_log_are_corruption() {
        let mut out = Vec::new();
        encode_ready(
            &mut out,
            0,
            &Records {
                entries: &[entry(2, 1)],
                ..Default::default()
            },
        );
        let bad = replay(&out).unwrap_err();
        assert_eq!(bad.offset, 0);
        assert!(bad.reason.contains("do not follow"), "{bad}");
    }

    #[test]
    fn a_restored_group_runs_again() {
        let mut out = Vec::new();
        encode_snapshot(&mut out, 0, &bootstrap(), (0, 0));
        encode_ready(
            &mut out,
            0,
            &Records {
                entries: &[entry(1, 1)],
                hard_state: Some(&hs(1, 1, 1)),
                ..Default::default()
            },
        );
        let (mut groups, _) = replay(&out).unwrap();
        let log = groups.remove(&0).unwrap().into_log().unwrap();
        assert_eq!(log.conf_state().voters, vec![1, 2, 3]);
        let g = crate::raft::Group::new(&crate::raft::GroupConfig::new(0, 1), log, 0).unwrap();
        assert_eq!(g.term(), 1);
        assert_eq!(g.commit_index(), 1);
    }

    #[test]
    fn the_file_is_appended_after_its_last_good_record() {
        let dir = std::env::temp_dir().join(format!("stanza-raftlog-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("raft-0.log");
        let mut first = Vec::new();
        encode_snapshot(&mut first, 3, &bootstrap(), (0, 0));
        let mut torn = first.clone();
        torn.extend_from_slice(&[9, 0, 0, 0, 1]);
        std::fs::write(&path, &torn).unwrap();
        let p = path.clone();
        glommio::LocalExecutorBuilder::default()
            .spawn(move || async move {
                let (groups, file) = open(&p, false).await.unwrap();
                assert_eq!(groups.len(), 1);
                let mut more = Vec::new();
                encode_ready(
                    &mut more,
                    3,
                    &Records {
                        entries: &[entry(1, 1)],
                        ..Default::default()
                    },
                );
                file.append(more).await.unwrap();
                file.close().await.unwrap();
                let (groups, _) = open(&p, false).await.unwrap();
                assert_eq!(groups[&3].entries.len(), 1);
            })
            .unwrap()
            .join()
            .unwrap();
        std::fs::remove_dir_all(&dir).ok();
    }
}
