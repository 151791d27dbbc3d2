//! A channel's subscription log, `subs.dat`: the subscriptions of the channel (full state at
//! creation and at each change), their removal, and which messages each was sent and has
//! acked, so that subscriptions, durables and pending acks survive a restart.
//!
//! Records are journal frames (store::journal) whose body starts with a kind:
//! 1 put (full state), 2 delete, 3 sent (a run of consecutive sequences), 4 acked (a run).
//! Consecutive sends (or acks) of one subscription are written as one run, so a subscriber
//! replaying a million messages costs a handful of records, not a million.

use super::journal::{self, put_str, Fields};
use std::collections::BTreeMap;

const PUT: u8 = 1;
const DELETE: u8 = 2;
const SENT: u8 = 3;
const ACKED: u8 = 4;

const DURABLE: u8 = 1;
const OFFLINE: u8 = 2;

pub const FILE_NAME: &str = "subs.dat";

/// The stored state of a subscription (what a put record carries).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubRecord {
    pub id: u64,
    /// Empty for the shadow of a durable queue group.
    pub client_id: String,
    pub inbox: String,
    pub durable_name: String,
    /// Queue group name ("durable:group" for durable groups); empty for plain subscriptions.
    pub queue: String,
    pub is_durable: bool,
    pub offline: bool,
    pub ack_generation: u32,
    pub max_in_flight: u32,
    pub ack_wait_ns: u64,
    /// The last sequence sent (for a queue member: its group's).
    pub last_sent: u64,
}

fn encode_put(out: &mut Vec<u8>, s: &SubRecord) {
    let mut body = Vec::with_capacity(64 + s.client_id.len() + s.inbox.len());
    body.push(PUT);
    body.extend_from_slice(&s.id.to_le_bytes());
    body.extend_from_slice(&s.ack_generation.to_le_bytes());
    body.extend_from_slice(&s.max_in_flight.to_le_bytes());
    body.extend_from_slice(&s.ack_wait_ns.to_le_bytes());
    body.extend_from_slice(&s.last_sent.to_le_bytes());
    let flags = if s.is_durable { DURABLE } else { 0 } | if s.offline { OFFLINE } else { 0 };
    body.push(flags);
    put_str(&mut body, s.client_id.as_bytes());
    put_str(&mut body, s.inbox.as_bytes());
    put_str(&mut body, s.durable_name.as_bytes());
    put_str(&mut body, s.queue.as_bytes());
    journal::frame(out, &body);
}

fn encode_id(out: &mut Vec<u8>, kind: u8, id: u64, run: Option<(u64, u64)>) {
    let mut body = [0u8; 25];
    body[0] = kind;
    body[1..9].copy_from_slice(&id.to_le_bytes());
    let len = match run {
        Some((first, count)) => {
            body[9..17].copy_from_slice(&first.to_le_bytes());
            body[17..25].copy_from_slice(&count.to_le_bytes());
            25
        }
        None => 9,
    };
    journal::frame(out, &body[..len]);
}

/// A run of consecutive sequences, not written yet: (first, count).
type Run = (u64, u64);

/// The open runs of one subscription: its sends and its acks are extended independently, so
/// that a replaying subscriber (ack 1, send 1025, ack 2, send 1026, ...) keeps two runs, not
/// a record per message. Written sends first, then acks: every ack in the run is of a message
/// sent before it, in this run or an earlier record.
#[derive(Debug, Default, Clone, Copy)]
struct OpenRuns {
    sent: Option<Run>,
    acked: Option<Run>,
}

/// The subscription records of one channel made during a turn, to be written with the turn's
/// messages.
#[derive(Debug, Default)]
pub struct SubJournal {
    records: Vec<u8>,
    count: u64,
    open: fxhash::FxHashMap<u64, OpenRuns>,
    /// A put or delete is waiting: replies must wait for the write (a subscription
    /// acknowledged to its client is on disk). Sends and acks do not hold anything back.
    pub gating: bool,
}

fn contains(run: Option<Run>, seq: u64) -> bool {
    run.is_some_and(|(first, count)| seq >= first && seq - first < count)
}

/// `run` grown by `seq` if it directly follows it.
fn extended(run: Option<Run>, seq: u64) -> Option<Run> {
    run.filter(|(first, count)| first.checked_add(*count) == Some(seq))
        .map(|(first, count)| (first, count + 1))
}

impl SubJournal {
    pub fn is_empty(&self) -> bool {
        self.count == 0 && self.open.is_empty()
    }

    fn write_run(&mut self, kind: u8, id: u64, run: Option<Run>) {
        if let Some(run) = run {
            encode_id(&mut self.records, kind, id, Some(run));
            self.count += 1;
        }
    }

    /// Writes the open runs of `id`, sends before acks.
    fn close_runs(&mut self, id: u64) {
        if let Some(runs) = self.open.remove(&id) {
            self.write_run(SENT, id, runs.sent);
            self.write_run(ACKED, id, runs.acked);
        }
    }

    pub fn put(&mut self, s: &SubRecord) {
        self.close_runs(s.id);
        encode_put(&mut self.records, s);
        self.count += 1;
        self.gating = true;
    }

    pub fn delete(&mut self, id: u64) {
        self.close_runs(id);
        encode_id(&mut self.records, DELETE, id, None);
        self.count += 1;
        self.gating = true;
    }

    pub fn sent(&mut self, id: u64, seq: u64) {
        let runs = self.open.get(&id).copied().unwrap_or_default();
        // A sequence acked in the open run and sent again (reused after a failed write) must
        // land after that ack.
        if !contains(runs.acked, seq) {
            if let Some(grown) = extended(runs.sent, seq) {
                self.open.entry(id).or_default().sent = Some(grown);
                return;
            }
        }
        if runs.sent.is_some() || contains(runs.acked, seq) {
            self.close_runs(id);
        }
        self.open.entry(id).or_default().sent = Some((seq, 1));
    }

    pub fn acked(&mut self, id: u64, seq: u64) {
        let runs = self.open.get(&id).copied().unwrap_or_default();
        if let Some(grown) = extended(runs.acked, seq) {
            self.open.entry(id).or_default().acked = Some(grown);
            return;
        }
        if runs.acked.is_some() {
            self.close_runs(id);
        }
        self.open.entry(id).or_default().acked = Some((seq, 1));
    }

    /// The framed records and how many there are.
    pub fn finish(mut self) -> (Vec<u8>, u64) {
        let mut ids: Vec<u64> = self.open.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            self.close_runs(id);
        }
        (self.records, self.count)
    }
}

/// Disjoint half-open ranges of sequences (start -> end), so that a run of a million sends
/// replays in constant time and a forged huge run costs nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SeqRanges(BTreeMap<u64, u64>);

impl SeqRanges {
    pub fn insert(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        self.remove(start, end);
        let (mut start, mut end) = (start, end);
        if let Some((&s, &e)) = self.0.range(..=start).next_back() {
            if e == start {
                self.0.remove(&s);
                start = s;
            }
        }
        if let Some(&e) = self.0.get(&end) {
            self.0.remove(&end);
            end = e;
        }
        self.0.insert(start, end);
    }

    pub fn remove(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        // A range starting before `start` that reaches into it is cut in two.
        if let Some((&s, &e)) = self.0.range(..start).next_back() {
            if e > start {
                self.0.insert(s, start);
                if e > end {
                    self.0.insert(end, e);
                }
            }
        }
        let inside: Vec<(u64, u64)> = self.0.range(start..end).map(|(s, e)| (*s, *e)).collect();
        for (s, e) in inside {
            self.0.remove(&s);
            if e > end {
                self.0.insert(end, e);
            }
        }
    }

    /// The sequences within `[low, high]`, in order.
    pub fn within(&self, low: u64, high: u64) -> Vec<u64> {
        let mut out = Vec::new();
        for (&s, &e) in &self.0 {
            let from = s.max(low);
            let to = e.min(high.saturating_add(1));
            out.extend(from..to.max(from));
        }
        out
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A subscription read back from the log: its last state and the sequences it was sent and
/// has not acked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveredSub {
    pub record: SubRecord,
    pub pending: SeqRanges,
}

/// Replays a channel's log: the subscriptions not deleted, by ID, and the length of the log's
/// good part (a torn tail is cut there). Corruption before the tail is an error at its offset.
pub fn replay(buf: &[u8]) -> Result<(BTreeMap<u64, RecoveredSub>, usize, u64), journal::Corrupt> {
    replay_with(buf, false).map(|(subs, end, records, _)| (subs, end, records))
}

/// As [`replay`]; with `skip_bad` (`--file_truncate_bad_eof`) a bad record is stepped over
/// and returned instead of refusing the log: a lost put loses that subscription's change, a
/// lost sent or acked run may redeliver, nothing after it is lost.
#[allow(clippy::type_complexity)]
pub fn replay_with(
    buf: &[u8],
    skip_bad: bool,
) -> Result<
    (
        BTreeMap<u64, RecoveredSub>,
        usize,
        u64,
        Vec<journal::Skipped>,
    ),
    journal::Corrupt,
> {
    let mut subs: BTreeMap<u64, RecoveredSub> = BTreeMap::new();
    let mut records = 0u64;
    let (end, skipped) = journal::replay_with(buf, skip_bad, |body| {
        records += 1;
        let mut f = Fields::new(body);
        match f.u8()? {
            PUT => {
                let id = f.u64()?;
                let ack_generation = f.u32()?;
                let max_in_flight = f.u32()?;
                let ack_wait_ns = f.u64()?;
                let last_sent = f.u64()?;
                let flags = f.u8()?;
                let record = SubRecord {
                    id,
                    client_id: f.string()?,
                    inbox: f.string()?,
                    durable_name: f.string()?,
                    queue: f.string()?,
                    is_durable: flags & DURABLE != 0,
                    offline: flags & OFFLINE != 0,
                    ack_generation,
                    max_in_flight,
                    ack_wait_ns,
                    last_sent,
                };
                match subs.get_mut(&id) {
                    Some(s) => s.record = record,
                    None => {
                        subs.insert(
                            id,
                            RecoveredSub {
                                record,
                                pending: SeqRanges::default(),
                            },
                        );
                    }
                }
            }
            DELETE => {
                subs.remove(&f.u64()?);
            }
            kind @ (SENT | ACKED) => {
                let id = f.u64()?;
                let first = f.u64()?;
                let count = f.u64()?;
                let end = first.checked_add(count)?;
                // A run for a subscription deleted (or never put) is simply dropped.
                if let Some(s) = subs.get_mut(&id).filter(|_| count > 0) {
                    if kind == SENT {
                        s.pending.insert(first, end);
                        s.record.last_sent = s.record.last_sent.max(end - 1);
                    } else {
                        s.pending.remove(first, end);
                    }
                }
            }
            _ => return None,
        }
        Some(())
    })?;
    Ok((subs, end, records, skipped))
}

/// The compacted form of a channel's subscriptions: one put each, then their pending runs.
pub fn snapshot<'a>(subs: impl Iterator<Item = (&'a SubRecord, &'a [u64])>) -> (Vec<u8>, u64) {
    let mut journal = SubJournal::default();
    for (record, pending) in subs {
        journal.put(record);
        for &seq in pending {
            journal.sent(record.id, seq);
        }
    }
    journal.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn record(id: u64) -> SubRecord {
        SubRecord {
            id,
            client_id: format!("c{id}"),
            inbox: format!("_INBOX.{id}"),
            durable_name: "dur".into(),
            queue: String::new(),
            is_durable: true,
            offline: false,
            ack_generation: 2,
            max_in_flight: 10,
            ack_wait_ns: 30_000_000_000,
            last_sent: 0,
        }
    }

    #[test]
    fn sends_and_acks_become_runs_and_replay_to_the_pending_set() {
        let mut j = SubJournal::default();
        j.put(&record(1));
        j.put(&record(2));
        for seq in 1..=100 {
            j.sent(1, seq);
        }
        j.sent(2, 5);
        for seq in 1..=90 {
            j.acked(1, seq);
        }
        j.acked(1, 95);
        let (log, count) = j.finish();
        assert_eq!(count, 6, "2 puts, 2 send runs, 2 ack runs");
        let (subs, end, records) = replay(&log).unwrap();
        assert_eq!((end, records), (log.len(), 6));
        let one = &subs[&1];
        assert_eq!(one.record.last_sent, 100);
        let mut want: Vec<u64> = (91..=100).collect();
        want.retain(|s| *s != 95);
        assert_eq!(one.pending.within(0, u64::MAX), want);
        assert_eq!(subs[&2].pending.within(0, u64::MAX), vec![5]);
        assert_eq!(subs[&2].record.last_sent, 5);
    }

    #[test]
    fn a_delete_forgets_and_a_put_replaces_the_state() {
        let mut j = SubJournal::default();
        j.put(&record(1));
        j.sent(1, 1);
        let mut offline = record(1);
        offline.offline = true;
        offline.ack_generation = 3;
        offline.last_sent = 1;
        j.put(&offline);
        j.put(&record(2));
        j.delete(2);
        j.sent(2, 9);
        let (log, _) = j.finish();
        let (subs, _, _) = replay(&log).unwrap();
        assert_eq!(subs.len(), 1);
        assert!(subs[&1].record.offline);
        assert_eq!(subs[&1].record.ack_generation, 3);
        assert_eq!(subs[&1].record.last_sent, 1, "the put carries the position");
        assert_eq!(subs[&1].pending.within(0, 10), vec![1]);
        assert!(j_gates());
    }

    fn j_gates() -> bool {
        let mut j = SubJournal::default();
        j.sent(1, 1);
        j.acked(1, 1);
        let quiet = !j.gating;
        j.delete(1);
        quiet && j.gating
    }

    #[test]
    fn a_torn_tail_is_cut_and_corruption_before_it_is_refused() {
        let mut j = SubJournal::default();
        j.put(&record(1));
        let first = {
            let (l, _) = std::mem::take(&mut j).finish();
            l.len()
        };
        let mut j = SubJournal::default();
        j.put(&record(1));
        j.put(&record(2));
        let (log, _) = j.finish();
        let (subs, end, _) = replay(&log[..log.len() - 2]).unwrap();
        assert_eq!((subs.len(), end), (1, first));
        let mut bad = log.clone();
        bad[10] ^= 0x40;
        assert_eq!(replay(&bad).unwrap_err(), journal::Corrupt(0));
    }

    #[test]
    fn a_replaying_subscriber_keeps_one_send_run_and_one_ack_run() {
        let mut j = SubJournal::default();
        for seq in 1..=1024 {
            j.sent(7, seq);
        }
        // The steady state of a full window: each ack frees a slot for the next send.
        for seq in 1..=10_000 {
            j.acked(7, seq);
            j.sent(7, seq + 1024);
        }
        let mut with_put = SubJournal::default();
        with_put.put(&record(7));
        let (mut log, _) = with_put.finish();
        let (records, count) = j.finish();
        assert_eq!(count, 2);
        log.extend_from_slice(&records);
        let (subs, _, _) = replay(&log).unwrap();
        assert_eq!(
            subs[&7].pending.within(0, u64::MAX),
            (10_001..=11_024).collect::<Vec<_>>()
        );
    }

    #[test]
    fn an_empty_run_is_nothing() {
        let mut log = Vec::new();
        encode_put(&mut log, &record(1));
        encode_id(&mut log, SENT, 1, Some((0, 0)));
        encode_id(&mut log, ACKED, 1, Some((0, 0)));
        let (subs, _, _) = replay(&log).unwrap();
        assert_eq!(subs[&1].record.last_sent, 0);
        assert!(subs[&1].pending.is_empty());
    }

    #[test]
    fn ranges_merge_split_and_clip() {
        let mut r = SeqRanges::default();
        r.insert(1, 5);
        r.insert(5, 8);
        r.insert(20, 22);
        assert_eq!(r.within(0, 100), vec![1, 2, 3, 4, 5, 6, 7, 20, 21]);
        r.remove(3, 6);
        assert_eq!(r.within(0, 100), vec![1, 2, 6, 7, 20, 21]);
        assert_eq!(r.within(2, 20), vec![2, 6, 7, 20]);
        r.insert(0, u64::MAX);
        r.remove(10, u64::MAX);
        assert_eq!(r.within(0, 100), (0..10).collect::<Vec<_>>());
    }

    proptest! {
        #[test]
        fn replay_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = replay(&bytes);
        }

        #[test]
        fn ranges_match_a_set(ops in proptest::collection::vec((any::<bool>(), 0u64..40, 0u64..8), 0..60)) {
            let mut r = SeqRanges::default();
            let mut model = std::collections::BTreeSet::new();
            for (add, start, len) in ops {
                if add {
                    r.insert(start, start + len);
                    model.extend(start..start + len);
                } else {
                    r.remove(start, start + len);
                    for s in start..start + len {
                        model.remove(&s);
                    }
                }
            }
            prop_assert_eq!(r.within(0, 100), model.into_iter().collect::<Vec<_>>());
        }

        #[test]
        fn journal_replays_to_a_model(ops in proptest::collection::vec((0u8..4, 1u64..4, 1u64..30), 0..80)) {
            let mut j = SubJournal::default();
            let mut model: BTreeMap<u64, std::collections::BTreeSet<u64>> = BTreeMap::new();
            for (op, id, seq) in ops {
                match op {
                    0 => { j.put(&record(id)); model.entry(id).or_default(); }
                    1 => { j.delete(id); model.remove(&id); }
                    2 => { j.sent(id, seq); if let Some(p) = model.get_mut(&id) { p.insert(seq); } }
                    _ => { j.acked(id, seq); if let Some(p) = model.get_mut(&id) { p.remove(&seq); } }
                }
            }
            let (log, _) = j.finish();
            let (subs, _, _) = replay(&log).unwrap();
            let got: BTreeMap<u64, Vec<u64>> = subs.iter().map(|(id, s)| (*id, s.pending.within(0, 100))).collect();
            let want: BTreeMap<u64, Vec<u64>> = model.into_iter().map(|(id, p)| (id, p.into_iter().collect())).collect();
            prop_assert_eq!(got, want);
        }
    }
}
