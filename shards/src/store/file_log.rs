//! The file store's view of one channel's messages. It knows where every stored message is on
//! disk (the slice indexes: slice, offset, timestamp) without holding the messages: the newest
//! ones stay in memory (the tail: every message not written yet, then up to `TAIL_BYTES`), and
//! older ones are read back in blocks of about `BLOCK_BYTES` when a subscriber catches up,
//! kept (up to `CACHE_BYTES` per channel, least recently used out first) for every subscriber
//! reading the same part, and read ahead of the readers.
//!
//! No I/O here: a lookup of a message not in memory answers `NotLoaded`; the shard then asks
//! `plan_read` what to read, the node reads it and hands the block back to `loaded`.

use super::index::SliceIndex;
use super::memory::{MemoryLog, StoredMsg};
use super::record::{header_at, HEADER_LEN};
use crate::limits::ChannelLimits;
use bytes::Bytes;
use std::cell::Cell;
use std::collections::{BTreeMap, VecDeque};

/// Written messages kept in memory beyond the unwritten ones, per channel: live subscribers
/// read these without touching the disk.
pub const TAIL_BYTES: u64 = 8 << 20;
/// Blocks read back for catching-up subscribers, per channel.
pub const CACHE_BYTES: u64 = 32 << 20;
/// About how much one read brings back.
pub const BLOCK_BYTES: u64 = 1 << 20;
/// Blocks kept read (or being read) ahead of a reader.
pub const READ_AHEAD: usize = 3;

/// What a lookup found.
#[derive(Debug)]
pub enum Lookup<'a> {
    Found(&'a StoredMsg),
    /// Not stored: below the first or above the last sequence.
    Missing,
    /// Stored on disk, not in memory: to be read.
    NotLoaded,
    /// Stored, but its record on disk is damaged (logged when read): delivery stops before it.
    Unreadable,
}

/// A read of consecutive records of one slice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadPlan {
    /// The slice (its first sequence, which names its file).
    pub slice: u64,
    /// Byte range in the slice file.
    pub start: u64,
    pub end: u64,
    /// Sequence of the first record and the record offsets, relative to `start`.
    pub first_seq: u64,
    pub offsets: Vec<u64>,
}

struct Block {
    msgs: Vec<StoredMsg>,
    bytes: u64,
    last_used: Cell<u64>,
}

impl Block {
    fn end(&self, first: u64) -> u64 {
        first + self.msgs.len() as u64
    }
}

#[derive(Default)]
pub struct FileLog {
    /// The indexes of the slices holding messages still kept, oldest first.
    slices: VecDeque<SliceIndex>,
    /// First sequence kept (`last + 1` when empty, 0 when nothing was ever stored).
    first: u64,
    last: u64,
    /// Body bytes of the messages kept.
    bytes: u64,
    /// Last sequence written and indexed.
    indexed: u64,
    /// Newest messages, consecutive up to `last` (may start below `first`: messages dropped by
    /// a limit before they were written stay until they are).
    tail: MemoryLog,
    blocks: BTreeMap<u64, Block>,
    cache_bytes: u64,
    clock: Cell<u64>,
    /// Reads under way: start sequence -> end (exclusive).
    reading: BTreeMap<u64, u64>,
}

impl std::fmt::Debug for FileLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileLog")
            .field("first", &self.first)
            .field("last", &self.last)
            .field("indexed", &self.indexed)
            .field("blocks", &self.blocks.len())
            .finish()
    }
}

impl FileLog {
    pub fn new() -> Self {
        FileLog::default()
    }

    /// A channel recovered from its slice indexes (sequences following each other).
    pub fn restore(slices: Vec<SliceIndex>) -> Self {
        let mut log = FileLog::new();
        for s in slices.into_iter().filter(|s| !s.is_empty()) {
            if log.last != 0 && s.first_seq != log.last + 1 {
                // A gap (slices deleted by hand): what follows starts over from there.
                log.slices.clear();
                log.bytes = 0;
                log.first = s.first_seq;
            }
            if log.first == 0 || log.slices.is_empty() {
                log.first = s.first_seq;
            }
            log.bytes += s.body_bytes();
            log.last = s.last_seq();
            let last_ts = s.timestamps.last().copied().unwrap_or(0);
            log.tail.resume_after(log.last, last_ts);
            log.slices.push_back(s);
        }
        log.indexed = log.last;
        log
    }

    pub fn first_seq(&self) -> u64 {
        if self.count() == 0 {
            if self.last == 0 {
                0
            } else {
                self.last + 1
            }
        } else {
            self.first
        }
    }

    pub fn last_seq(&self) -> u64 {
        self.last
    }

    pub fn count(&self) -> u64 {
        if self.first == 0 || self.last < self.first {
            0
        } else {
            self.last - self.first + 1
        }
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Appends a message (kept in memory until written and indexed).
    pub fn append(&mut self, subject: &[u8], reply: &[u8], data: &[u8], now_ns: i64) -> &StoredMsg {
        let was_empty = self.count() == 0;
        let msg = self.tail.append(subject, reply, data, now_ns);
        self.last = msg.seq;
        self.bytes += msg.size();
        if was_empty {
            self.first = msg.seq;
        }
        msg
    }

    fn slice_of(&self, seq: u64) -> Option<(&SliceIndex, usize)> {
        let i = self.slices.partition_point(|s| s.first_seq <= seq);
        let s = self.slices.get(i.checked_sub(1)?)?;
        s.contains(seq)
            .then(|| (s, usize::try_from(seq - s.first_seq).unwrap_or(usize::MAX)))
    }

    fn block_of(&self, seq: u64) -> Option<(u64, &Block)> {
        let (&first, b) = self.blocks.range(..=seq).next_back()?;
        (seq < b.end(first)).then_some((first, b))
    }

    pub fn get(&self, seq: u64) -> Lookup<'_> {
        if self.count() == 0 || seq < self.first || seq > self.last {
            return Lookup::Missing;
        }
        if let Some(m) = self.tail.get(seq) {
            return Lookup::Found(m);
        }
        match self.block_of(seq) {
            Some((first, b)) => {
                b.last_used.set(self.tick());
                match b.msgs.get((seq - first) as usize) {
                    Some(m) if !m.encoded.is_empty() => Lookup::Found(m),
                    _ => Lookup::Unreadable,
                }
            }
            None => Lookup::NotLoaded,
        }
    }

    fn tick(&self) -> u64 {
        let t = self.clock.get() + 1;
        self.clock.set(t);
        t
    }

    /// When `seq` was just served from the start or the middle of a block read back: the
    /// start of the next block to read so that `READ_AHEAD` blocks are in memory or on their
    /// way ahead of the reader, if one is missing.
    pub fn read_ahead_from(&self, seq: u64) -> Option<u64> {
        let (first, b) = self.block_of(seq)?;
        if seq != first && seq != first + b.msgs.len() as u64 / 2 {
            return None;
        }
        let mut next = b.end(first);
        for _ in 0..READ_AHEAD {
            if next > self.indexed || self.tail.get(next).is_some() {
                return None;
            }
            if let Some((f, b)) = self.block_of(next) {
                next = b.end(f);
            } else if let Some((_, end)) = self
                .reading
                .range(..=next)
                .next_back()
                .filter(|(_, end)| next < **end)
            {
                next = *end;
            } else {
                return Some(next);
            }
        }
        None
    }

    fn is_reading(&self, seq: u64) -> bool {
        self.reading
            .range(..=seq)
            .next_back()
            .is_some_and(|(_, end)| seq < *end)
    }

    /// What to read so that `seq` (and the records after it, about `BLOCK_BYTES`, within one
    /// slice) are in memory, unless they are or a read of them is under way. The read is
    /// counted as under way until `loaded`.
    pub fn plan_read(&mut self, seq: u64) -> Option<ReadPlan> {
        if seq < self.first
            || seq > self.indexed
            || self.tail.get(seq).is_some()
            || self.block_of(seq).is_some()
            || self.is_reading(seq)
        {
            return None;
        }
        // Stop before what is in memory or being read already.
        let mut limit = self.indexed + 1;
        if let Some(front) = self.tail.front() {
            limit = limit.min(front.seq.max(seq + 1));
        }
        if let Some((&b, _)) = self.blocks.range(seq..).next() {
            limit = limit.min(b);
        }
        if let Some((&r, _)) = self.reading.range(seq..).next() {
            limit = limit.min(r);
        }
        let (slice, i) = self.slice_of(seq)?;
        let start = u64::from(slice.offsets[i]);
        let mut offsets = vec![0];
        let mut j = i;
        while j + 1 < slice.len()
            && slice.first_seq + (j as u64) + 1 < limit
            && slice.next_offset(j + 1) - start <= BLOCK_BYTES
        {
            j += 1;
            offsets.push(u64::from(slice.offsets[j]) - start);
        }
        let plan = ReadPlan {
            slice: slice.first_seq,
            start,
            end: slice.next_offset(j),
            first_seq: seq,
            offsets,
        };
        self.reading.insert(seq, seq + plan.offsets.len() as u64);
        Some(plan)
    }

    /// A planned read is back: its messages (an empty body for a record that could not be
    /// read) are kept for the readers, the least recently used blocks making room.
    pub fn loaded(&mut self, first_seq: u64, msgs: Vec<StoredMsg>) {
        // Only what this log asked for (not a read for a channel deleted and created again).
        if self.reading.remove(&first_seq).is_none() {
            return;
        }
        let end = first_seq + msgs.len() as u64;
        if msgs.is_empty() || end <= self.first {
            return;
        }
        let bytes: u64 = msgs.iter().map(|m| m.encoded.len() as u64).sum();
        while self.cache_bytes + bytes > CACHE_BYTES {
            let Some(oldest) = self
                .blocks
                .iter()
                .min_by_key(|(_, b)| b.last_used.get())
                .map(|(f, _)| *f)
            else {
                break;
            };
            self.drop_block(oldest);
        }
        self.cache_bytes += bytes;
        let last_used = Cell::new(self.tick());
        self.blocks.insert(
            first_seq,
            Block {
                msgs,
                bytes,
                last_used,
            },
        );
    }

    fn drop_block(&mut self, first: u64) {
        if let Some(b) = self.blocks.remove(&first) {
            self.cache_bytes -= b.bytes;
        }
    }

    /// A commit wrote `count` messages from `first_seq` on to slice `slice`, the first at
    /// `offset`: they are indexed, and the tail beyond `TAIL_BYTES` leaves memory.
    pub fn written(&mut self, first_seq: u64, count: u64, slice: u64, offset: u64) {
        let mut at = offset;
        for seq in first_seq..first_seq + count {
            let Some(m) = self.tail.get(seq) else {
                break;
            };
            let (ts, len) = (m.timestamp, (HEADER_LEN + m.encoded.len()) as u64);
            if self.slices.back().is_none_or(|s| s.first_seq != slice) {
                self.slices.push_back(SliceIndex::new(slice));
            }
            if let Some(s) = self.slices.back_mut() {
                s.push(at, ts, len);
            }
            at += len;
            self.indexed = seq;
        }
        self.trim();
    }

    /// Lets go of what is no longer needed in memory: messages dropped by the limits, tail
    /// messages beyond the budget once written, indexes and blocks wholly below `first`.
    fn trim(&mut self) {
        while let Some(front) = self.tail.front() {
            let written = front.seq <= self.indexed;
            let drop = front.seq < self.first || self.tail.bytes() > TAIL_BYTES;
            if !(written && drop) {
                break;
            }
            self.tail.drop_front();
        }
        while self
            .slices
            .front()
            .is_some_and(|s| s.is_empty() || s.last_seq() < self.first)
            && self.slices.len() > 1
        {
            self.slices.pop_front();
        }
        while let Some((&first, b)) = self.blocks.iter().next() {
            if b.end(first) > self.first {
                break;
            }
            self.drop_block(first);
        }
    }

    fn size_of(&self, seq: u64) -> u64 {
        if let Some(m) = self.tail.get(seq) {
            return m.size();
        }
        self.slice_of(seq).map_or(0, |(s, i)| s.body_size(i))
    }

    fn timestamp_of(&self, seq: u64) -> Option<i64> {
        if let Some(m) = self.tail.get(seq) {
            return Some(m.timestamp);
        }
        self.slice_of(seq).map(|(s, i)| s.timestamps[i])
    }

    fn drop_first(&mut self) {
        self.bytes = self.bytes.saturating_sub(self.size_of(self.first));
        self.first += 1;
    }

    /// Drops the oldest messages beyond max_msgs / max_bytes, always keeping the newest one.
    pub fn enforce_size_limits(&mut self, limits: &ChannelLimits) -> u64 {
        let mut dropped = 0;
        while self.count() > 1 {
            let over_count = limits.max_msgs > 0 && self.count() > limits.max_msgs as u64;
            let over_bytes = limits.max_bytes > 0 && self.bytes > limits.max_bytes as u64;
            if !(over_count || over_bytes) {
                break;
            }
            self.drop_first();
            dropped += 1;
        }
        if dropped > 0 {
            self.trim();
        }
        dropped
    }

    /// Drops messages older than max_age.
    pub fn expire(&mut self, limits: &ChannelLimits, now_ns: i64) -> u64 {
        let Some(cutoff) = limits.age_cutoff(now_ns) else {
            return 0;
        };
        let mut dropped = 0;
        while self.count() > 0 && self.timestamp_of(self.first).is_some_and(|t| t <= cutoff) {
            self.drop_first();
            dropped += 1;
        }
        if dropped > 0 {
            self.trim();
            self.tail.release_unused_chunks();
        }
        dropped
    }

    /// The first kept message whose timestamp is at or after `ts`.
    pub fn first_seq_at_or_after(&self, ts: i64) -> Option<u64> {
        if self.count() == 0 {
            return None;
        }
        for s in &self.slices {
            if s.is_empty() || s.last_seq() < self.first {
                continue;
            }
            let skip = self.first.saturating_sub(s.first_seq) as usize;
            let i = s.timestamps[skip..].partition_point(|t| *t < ts) + skip;
            if i < s.len() {
                return Some(s.first_seq + i as u64);
            }
        }
        self.tail
            .iter()
            .find(|m| m.seq > self.indexed && m.seq >= self.first && m.timestamp >= ts)
            .map(|m| m.seq)
    }

    /// Removes the messages from `seq` on, which were not written (their write failed).
    pub fn truncate_from(&mut self, seq: u64) {
        let seq = seq.max(self.indexed + 1);
        if seq > self.last {
            return;
        }
        for s in seq..=self.last {
            if s >= self.first {
                self.bytes = self.bytes.saturating_sub(self.size_of(s));
            }
        }
        self.tail.truncate_from(seq);
        self.last = seq - 1;
        if self.first > self.last + 1 {
            self.first = self.last + 1;
        }
    }
}

/// The messages of a planned read, from the bytes read (the slice's bytes `start..end`). Each
/// record is checked (length, CRC, sequence); a damaged one becomes an empty (unreadable)
/// message and is reported as (file offset, what is wrong).
pub fn parse_read(plan: &ReadPlan, buf: &Bytes) -> (Vec<StoredMsg>, Vec<(u64, String)>) {
    let mut msgs = Vec::with_capacity(plan.offsets.len());
    let mut bad = Vec::new();
    for (i, &rel) in plan.offsets.iter().enumerate() {
        let seq = plan.first_seq + i as u64;
        let at = usize::try_from(rel).unwrap_or(usize::MAX);
        let checked = match header_at(buf, at) {
            None => Err("record cut short".to_string()),
            Some(h) if h.seq != seq => Err(format!("sequence {} where {seq} belongs", h.seq)),
            Some(h) => {
                let start = at + HEADER_LEN;
                match buf.get(start..start + h.body_len as usize) {
                    None => Err("record cut short".to_string()),
                    Some(body) if crc32c::crc32c(body) != h.crc => Err(format!(
                        "corrupt record of sequence {seq}: CRC-32C mismatch"
                    )),
                    Some(_) => Ok(StoredMsg {
                        seq,
                        timestamp: h.timestamp,
                        encoded: buf.slice(start..start + h.body_len as usize),
                    }),
                }
            }
        };
        match checked {
            Ok(m) => msgs.push(m),
            Err(why) => {
                bad.push((plan.start + rel, why));
                msgs.push(StoredMsg {
                    seq,
                    timestamp: 0,
                    encoded: Bytes::new(),
                });
            }
        }
    }
    (msgs, bad)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn publish(log: &mut FileLog, n: u64, ts: i64) -> (u64, u64) {
        let mut sizes = 0;
        let first = log.last_seq() + 1;
        for _ in 0..n {
            sizes += (HEADER_LEN + log.append(b"foo", b"", &[7; 100], ts).encoded.len()) as u64;
        }
        (first, sizes)
    }

    /// Reads a plan back the way the node does, from the records the log itself encoded.
    fn read_back(log: &FileLog, plan: &ReadPlan, source: &FileLog) -> Vec<StoredMsg> {
        let _ = log;
        (0..plan.offsets.len() as u64)
            .map(|i| match source.tail.get(plan.first_seq + i) {
                Some(m) => m.clone(),
                None => panic!("not in the source"),
            })
            .collect()
    }

    #[test]
    fn written_messages_leave_memory_and_are_read_back_in_blocks() {
        let mut log = FileLog::new();
        let mut shadow = FileLog::new();
        let (first, bytes) = publish(&mut log, 200_000, 5);
        publish(&mut shadow, 200_000, 5);
        assert!(matches!(log.get(1), Lookup::Found(_)));
        log.written(first, 200_000, 1, 0);
        let ch_bytes = log.bytes();
        assert_eq!(ch_bytes, bytes - 200_000 * HEADER_LEN as u64);
        assert!(log.tail.bytes() <= TAIL_BYTES);
        assert!(matches!(log.get(1), Lookup::NotLoaded));
        assert!(
            matches!(log.get(200_000), Lookup::Found(_)),
            "the newest stay"
        );
        assert!(matches!(log.get(200_001), Lookup::Missing));
        let plan = log.plan_read(1).unwrap();
        assert_eq!((plan.slice, plan.start, plan.first_seq), (1, 0, 1));
        assert!(plan.end <= BLOCK_BYTES && plan.end > BLOCK_BYTES - 200);
        assert_eq!(log.plan_read(2), None, "under way already");
        let msgs = read_back(&log, &plan, &shadow);
        let n = msgs.len() as u64;
        log.loaded(1, msgs);
        assert!(matches!(log.get(n), Lookup::Found(m) if m.seq == n));
        assert_eq!(log.read_ahead_from(n / 2 + 1), Some(n + 1));
        assert_eq!(log.read_ahead_from(3), None);
        let next = log.plan_read(n + 1).unwrap();
        assert_eq!(next.start, plan.end);
    }

    #[test]
    fn limits_drop_from_the_index_and_recovery_counts_from_it() {
        let mut log = FileLog::new();
        let (first, _) = publish(&mut log, 10, 100);
        log.written(first, 10, 1, 0);
        let (second, _) = publish(&mut log, 10, 200);
        log.written(second, 10, 11, 0);
        log.enforce_size_limits(&ChannelLimits {
            max_msgs: 15,
            ..Default::default()
        });
        assert_eq!((log.first_seq(), log.last_seq(), log.count()), (6, 20, 15));
        assert_eq!(log.first_seq_at_or_after(150), Some(11));
        assert_eq!(log.first_seq_at_or_after(50), Some(6));
        log.expire(
            &ChannelLimits {
                max_age: Duration::from_nanos(100),
                ..Default::default()
            },
            250,
        );
        assert_eq!(log.first_seq(), 11);
        assert_eq!(log.slices.len(), 1, "the first slice's index is gone");
        let recovered = FileLog::restore(log.slices.iter().cloned().collect());
        assert_eq!((recovered.first_seq(), recovered.last_seq()), (11, 20));
        assert_eq!(recovered.bytes(), log.bytes());
    }

    #[test]
    fn an_unwritten_tail_is_taken_back() {
        let mut log = FileLog::new();
        let (first, _) = publish(&mut log, 3, 1);
        log.written(first, 3, 1, 0);
        let before = log.bytes();
        publish(&mut log, 2, 1);
        log.truncate_from(4);
        assert_eq!((log.last_seq(), log.bytes()), (3, before));
        log.truncate_from(2);
        assert_eq!(log.last_seq(), 3, "written messages stay");
        assert_eq!(log.append(b"foo", b"", b"x", 2).seq, 4);
    }
}
