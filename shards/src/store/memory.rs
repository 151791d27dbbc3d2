//! The memory store of one channel: messages in sequence order, each kept as the encoded
//! `MsgProto` of its first delivery (encoded once, shared by every subscriber), with the
//! max_msgs / max_bytes / max_age limits applied as the reference applies them.

use crate::limits::ChannelLimits;
use crate::pb::MsgProto;
use crate::wire::{encode_msg_into, msg_len};
use bytes::Bytes;
use bytes::BytesMut;
use prost::Message;
use std::collections::VecDeque;

#[derive(Debug, Clone)]
pub struct StoredMsg {
    pub seq: u64,
    pub timestamp: i64,
    /// `MsgProto{sequence, subject, reply, data, timestamp}` encoded, as first delivered.
    pub encoded: Bytes,
}

impl StoredMsg {
    /// The size limits and monitoring count: the protobuf size, as the reference's memory
    /// store counts it.
    pub fn size(&self) -> u64 {
        self.encoded.len() as u64
    }

    pub fn decode(&self) -> Option<MsgProto> {
        MsgProto::decode(self.encoded.clone()).ok()
    }
}

/// Messages are encoded into shared chunks that grow from this size...
const FIRST_CHUNK: usize = 4 << 10;
/// ...to this one, so a busy channel makes one allocation per thousands of messages and an
/// idle one holds little. A chunk is freed when the last message in it is.
const MAX_CHUNK: usize = 1 << 20;
/// Filled chunks still holding messages, kept to be reused once their messages are gone: a
/// freed chunk of this size goes back to the operating system, and a new one comes back as
/// fresh pages, a page fault each (3% of a stored publish's CPU, measured). More than this many
/// and the oldest is let go (freed with its last message, as before). The file store keeps
/// `TAIL_BYTES` (8 chunks) of written messages in memory, so its ninth chunk back is the one
/// that frees up.
const RETIRED_CHUNKS: usize = 12;

#[derive(Debug, Default)]
pub struct MemoryLog {
    msgs: VecDeque<StoredMsg>,
    chunk: BytesMut,
    next_chunk: usize,
    /// Filled chunks, oldest first (`RETIRED_CHUNKS`).
    retired: VecDeque<BytesMut>,
    /// Chunks allocated (reuses not counted); 0 while `chunk` is still the empty initial one.
    fresh_chunks: u64,
    /// The sequence the next message gets, minus one.
    last_seq: u64,
    bytes: u64,
    last_timestamp: i64,
}

impl MemoryLog {
    pub fn new() -> Self {
        MemoryLog::default()
    }

    /// Appends a message; its timestamp never goes below the previous one.
    pub fn append(&mut self, subject: &[u8], reply: &[u8], data: &[u8], now_ns: i64) -> &StoredMsg {
        let seq = self.last_seq + 1;
        let timestamp = now_ns.max(self.last_timestamp);
        let len = msg_len(seq, subject, reply, data, timestamp);
        if self.chunk.capacity() - self.chunk.len() < len {
            self.next_chunk = (self.next_chunk * 2).clamp(FIRST_CHUNK, MAX_CHUNK);
            self.new_chunk(self.next_chunk.max(len));
        }
        encode_msg_into(&mut self.chunk, seq, subject, reply, data, timestamp);
        let encoded = self.chunk.split().freeze();
        self.last_seq = seq;
        self.last_timestamp = timestamp;
        self.bytes += encoded.len() as u64;
        self.msgs.push_back(StoredMsg {
            seq,
            timestamp,
            encoded,
        });
        self.msgs.back().expect("just pushed")
    }

    /// Retires the filled chunk and takes one of at least `want` bytes: a retired chunk none of
    /// whose messages is left, or a new one. Other retired chunks found unused are freed, so
    /// what is kept unused is one chunk at most.
    fn new_chunk(&mut self, want: usize) {
        let had_chunk = self.fresh_chunks > 0;
        let mut reused = None;
        self.retired.retain_mut(|chunk| {
            // A retired chunk has less room left than any message needs, so this succeeds only
            // when no message holds the chunk any more, and then gives all of it back.
            if !chunk.try_reclaim(want) {
                return true;
            }
            if reused.is_none() {
                reused = Some(std::mem::take(chunk));
            }
            false
        });
        let fresh = reused.unwrap_or_else(|| {
            self.fresh_chunks += 1;
            BytesMut::with_capacity(want)
        });
        let filled = std::mem::replace(&mut self.chunk, fresh);
        if had_chunk {
            self.retired.push_back(filled);
        }
        if self.retired.len() > RETIRED_CHUNKS {
            self.retired.pop_front();
        }
    }

    /// Puts back a message read from disk at recovery (sequences must follow each other; the
    /// first one recovered sets where the log starts).
    pub fn restore(&mut self, seq: u64, timestamp: i64, encoded: Bytes) -> bool {
        if !self.msgs.is_empty() && seq != self.last_seq + 1 {
            return false;
        }
        self.last_seq = seq;
        self.last_timestamp = self.last_timestamp.max(timestamp);
        self.bytes += encoded.len() as u64;
        self.msgs.push_back(StoredMsg {
            seq,
            timestamp,
            encoded,
        });
        true
    }

    /// The first stored sequence; `last + 1` when empty (0 when nothing was ever stored).
    pub fn first_seq(&self) -> u64 {
        match self.msgs.front() {
            Some(m) => m.seq,
            None if self.last_seq == 0 => 0,
            None => self.last_seq + 1,
        }
    }

    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    pub fn count(&self) -> u64 {
        self.msgs.len() as u64
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn is_empty(&self) -> bool {
        self.msgs.is_empty()
    }

    pub fn get(&self, seq: u64) -> Option<&StoredMsg> {
        let first = self.msgs.front()?.seq;
        let idx = seq.checked_sub(first)?;
        self.msgs.get(usize::try_from(idx).ok()?)
    }

    /// The first message whose timestamp is at or after `ts`.
    pub fn first_seq_at_or_after(&self, ts: i64) -> Option<u64> {
        let idx = self.msgs.partition_point(|m| m.timestamp < ts);
        self.msgs.get(idx).map(|m| m.seq)
    }

    /// Drops the oldest messages beyond max_msgs / max_bytes, always keeping the newest one.
    /// Returns how many were dropped.
    pub fn enforce_size_limits(&mut self, limits: &ChannelLimits) -> u64 {
        let mut dropped = 0;
        while self.msgs.len() > 1 {
            let over_count = limits.max_msgs > 0 && self.msgs.len() as u64 > limits.max_msgs as u64;
            let over_bytes = limits.max_bytes > 0 && self.bytes > limits.max_bytes as u64;
            if !(over_count || over_bytes) {
                break;
            }
            self.pop_front();
            dropped += 1;
        }
        dropped
    }

    /// Drops messages older than max_age. Returns how many were dropped.
    pub fn expire(&mut self, limits: &ChannelLimits, now_ns: i64) -> u64 {
        let Some(cutoff) = limits.age_cutoff(now_ns) else {
            return 0;
        };
        let mut dropped = 0;
        while self.msgs.front().is_some_and(|m| m.timestamp <= cutoff) {
            self.pop_front();
            dropped += 1;
        }
        if dropped > 0 {
            self.release_unused_chunks();
        }
        dropped
    }

    /// Frees the retired chunks that no message holds any more. New messages reuse one at the
    /// next chunk change, but messages that age out may leave a channel idle, holding them.
    pub fn release_unused_chunks(&mut self) {
        // A retired chunk can have more room than it has left only when no message holds it.
        self.retired.retain_mut(|chunk| {
            let more = chunk.capacity() + 1;
            !chunk.try_reclaim(more)
        });
    }

    /// When the oldest message expires (for scheduling), if max_age applies.
    pub fn next_expiry(&self, limits: &ChannelLimits) -> Option<i64> {
        if limits.max_age.is_zero() {
            return None;
        }
        let age = i64::try_from(limits.max_age.as_nanos()).unwrap_or(i64::MAX);
        self.msgs.front().map(|m| m.timestamp.saturating_add(age))
    }

    /// Removes the messages from `seq` on (a write of them failed): the next message gets
    /// `seq` again.
    pub fn truncate_from(&mut self, seq: u64) {
        if seq == 0 || seq > self.last_seq {
            return;
        }
        while self.msgs.back().is_some_and(|m| m.seq >= seq) {
            if let Some(m) = self.msgs.pop_back() {
                self.bytes -= m.size();
            }
        }
        self.last_seq = seq - 1;
    }

    /// Continues numbering after `seq` (the file store's tail after recovery: the stored
    /// messages are on disk, the next one appended gets `seq + 1`).
    pub fn resume_after(&mut self, seq: u64, timestamp: i64) {
        self.last_seq = seq;
        self.last_timestamp = timestamp;
    }

    /// The oldest message held, if any.
    pub fn front(&self) -> Option<&StoredMsg> {
        self.msgs.front()
    }

    /// Forgets the oldest message held.
    pub fn drop_front(&mut self) {
        self.pop_front();
    }

    /// The messages held, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &StoredMsg> {
        self.msgs.iter()
    }

    fn pop_front(&mut self) {
        if let Some(m) = self.msgs.pop_front() {
            self.bytes -= m.size();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn sequences_timestamps_and_limits() {
        let mut log = MemoryLog::new();
        assert_eq!((log.first_seq(), log.last_seq()), (0, 0));
        for i in 0..5 {
            log.append(b"foo", b"", &[b'x'; 10], 100 - i);
        }
        assert_eq!((log.first_seq(), log.last_seq()), (1, 5));
        assert!(log.get(5).unwrap().timestamp >= log.get(4).unwrap().timestamp);
        let limits = ChannelLimits {
            max_msgs: 3,
            ..Default::default()
        };
        assert_eq!(log.enforce_size_limits(&limits), 2);
        assert_eq!((log.first_seq(), log.count()), (3, 3));
        let one_byte = ChannelLimits {
            max_msgs: 0,
            max_bytes: 1,
            ..Default::default()
        };
        log.enforce_size_limits(&one_byte);
        assert_eq!(log.count(), 1, "the newest message always stays");
        let aged = ChannelLimits {
            max_age: Duration::from_nanos(10),
            ..Default::default()
        };
        assert_eq!(log.expire(&aged, 1000), 1);
        assert_eq!((log.first_seq(), log.last_seq()), (6, 5));
        assert_eq!(log.append(b"foo", b"", b"", 2000).seq, 6);
        let m = log.get(6).unwrap().decode().unwrap();
        assert_eq!((m.sequence, m.subject.as_str()), (6, "foo"));
    }

    #[test]
    fn truncating_the_tail_reuses_its_sequences() {
        let mut log = MemoryLog::new();
        for i in 0..5 {
            log.append(b"foo", b"", &[b'x'; 10], i);
        }
        let bytes_of_two = log.get(1).unwrap().size() + log.get(2).unwrap().size();
        log.truncate_from(3);
        assert_eq!((log.first_seq(), log.last_seq(), log.count()), (1, 2, 2));
        assert_eq!(log.bytes(), bytes_of_two);
        assert_eq!(log.append(b"foo", b"", b"again", 10).seq, 3);
        log.truncate_from(9);
        log.truncate_from(0);
        assert_eq!(log.last_seq(), 3);
        log.truncate_from(1);
        assert_eq!((log.count(), log.last_seq(), log.first_seq()), (0, 0, 0));
    }

    #[test]
    fn chunks_whose_messages_are_gone_are_reused_and_held_ones_never_are() {
        let per_chunk = MAX_CHUNK / 1000;
        let mut log = MemoryLog::new();
        // Limits keep about two chunks of messages, as the file store keeps its tail.
        let limits = ChannelLimits {
            max_msgs: 2 * per_chunk as i64,
            ..Default::default()
        };
        let mut held = None;
        for i in 0..per_chunk * 40 {
            let m = log.append(b"foo", b"", &[(i % 251) as u8; 1000], 0);
            // A message a delivery still holds keeps its chunk from reuse.
            if i == per_chunk * 15 {
                held = Some(m.clone());
            }
            log.enforce_size_limits(&limits);
        }
        assert!(
            log.fresh_chunks < 20,
            "{} chunks allocated for 40 chunks of messages",
            log.fresh_chunks
        );
        let held = held.unwrap();
        // (A decoded message shares its chunk too: decoded in place.)
        assert_eq!(
            held.decode().unwrap().data,
            vec![((per_chunk * 15) % 251) as u8; 1000]
        );
        for m in log.iter() {
            let d = m.decode().unwrap();
            assert_eq!(d.data, vec![((m.seq - 1) % 251) as u8; 1000]);
        }
        assert!(log.retired.len() <= RETIRED_CHUNKS);
        // Everything ages out: the chunks no message holds are freed, the held one stays.
        let aged = ChannelLimits {
            max_age: Duration::from_nanos(1),
            ..Default::default()
        };
        log.expire(&aged, 10);
        assert_eq!(log.count(), 0);
        assert_eq!(
            log.retired.len(),
            1,
            "only the chunk the held message is in"
        );
        assert_eq!(held.decode().unwrap().data.len(), 1000);
        drop(held);
        log.release_unused_chunks();
        assert!(log.retired.is_empty());
    }
}
