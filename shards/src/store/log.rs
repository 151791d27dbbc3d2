//! A channel's messages, whichever store keeps them: all in memory (memory store), or on disk
//! with the newest and the recently read in memory (file store). The shard sees one API.

use super::file_log::{FileLog, Lookup, ReadPlan};
use super::memory::{MemoryLog, StoredMsg};
use crate::limits::ChannelLimits;

#[derive(Debug)]
pub enum ChannelLog {
    Memory(MemoryLog),
    File(Box<FileLog>),
}

impl ChannelLog {
    pub fn first_seq(&self) -> u64 {
        match self {
            ChannelLog::Memory(l) => l.first_seq(),
            ChannelLog::File(l) => l.first_seq(),
        }
    }

    pub fn last_seq(&self) -> u64 {
        match self {
            ChannelLog::Memory(l) => l.last_seq(),
            ChannelLog::File(l) => l.last_seq(),
        }
    }

    pub fn count(&self) -> u64 {
        match self {
            ChannelLog::Memory(l) => l.count(),
            ChannelLog::File(l) => l.count(),
        }
    }

    pub fn bytes(&self) -> u64 {
        match self {
            ChannelLog::Memory(l) => l.bytes(),
            ChannelLog::File(l) => l.bytes(),
        }
    }

    pub fn append(&mut self, subject: &[u8], reply: &[u8], data: &[u8], now_ns: i64) -> &StoredMsg {
        match self {
            ChannelLog::Memory(l) => l.append(subject, reply, data, now_ns),
            ChannelLog::File(l) => l.append(subject, reply, data, now_ns),
        }
    }

    pub fn get(&self, seq: u64) -> Lookup<'_> {
        match self {
            ChannelLog::Memory(l) => match l.get(seq) {
                Some(m) => Lookup::Found(m),
                None => Lookup::Missing,
            },
            ChannelLog::File(l) => l.get(seq),
        }
    }

    /// The message if it is in memory (a redelivery or a monitoring peek).
    pub fn get_loaded(&self, seq: u64) -> Option<&StoredMsg> {
        match self.get(seq) {
            Lookup::Found(m) => Some(m),
            _ => None,
        }
    }

    pub fn enforce_size_limits(&mut self, limits: &ChannelLimits) -> u64 {
        match self {
            ChannelLog::Memory(l) => l.enforce_size_limits(limits),
            ChannelLog::File(l) => l.enforce_size_limits(limits),
        }
    }

    pub fn expire(&mut self, limits: &ChannelLimits, now_ns: i64) -> u64 {
        match self {
            ChannelLog::Memory(l) => l.expire(limits, now_ns),
            ChannelLog::File(l) => l.expire(limits, now_ns),
        }
    }

    pub fn first_seq_at_or_after(&self, ts: i64) -> Option<u64> {
        match self {
            ChannelLog::Memory(l) => l.first_seq_at_or_after(ts),
            ChannelLog::File(l) => l.first_seq_at_or_after(ts),
        }
    }

    pub fn truncate_from(&mut self, seq: u64) {
        match self {
            ChannelLog::Memory(l) => l.truncate_from(seq),
            ChannelLog::File(l) => l.truncate_from(seq),
        }
    }

    /// File store: the next block to read ahead of a reader just served `seq`.
    pub fn read_ahead_from(&self, seq: u64) -> Option<u64> {
        match self {
            ChannelLog::Memory(_) => None,
            ChannelLog::File(l) => l.read_ahead_from(seq),
        }
    }

    /// File store: what to read to bring `seq` into memory.
    pub fn plan_read(&mut self, seq: u64) -> Option<ReadPlan> {
        match self {
            ChannelLog::Memory(_) => None,
            ChannelLog::File(l) => l.plan_read(seq),
        }
    }

    /// File store: a planned read is back.
    pub fn loaded(&mut self, first_seq: u64, msgs: Vec<StoredMsg>) {
        if let ChannelLog::File(l) = self {
            l.loaded(first_seq, msgs);
        }
    }

    /// File store: messages were written to slice `slice` from `offset` on.
    pub fn written(&mut self, first_seq: u64, count: u64, slice: u64, offset: u64) {
        if let ChannelLog::File(l) = self {
            l.written(first_seq, count, slice, offset);
        }
    }
}
