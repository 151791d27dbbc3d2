//! Slice index files, `slice.<first seq>.idx`: one 16-byte entry per record of the slice with
//! the same name, in sequence order (entry i is sequence `first + i`): the record's offset in
//! the slice (u32 LE), a CRC-32C of the entry's sequence, offset and timestamp (u32 LE), and
//! its timestamp (i64 LE). The check catches an entry that was damaged or shifted to another
//! sequence (which would make the server skip an intact message). Recovery reads indexes
//! instead of slices; an index that is missing, inconsistent, fails a check or disagrees with
//! its slice is rebuilt from the slice.

use super::record::{Found, HEADER_LEN};

pub const ENTRY_LEN: usize = 16;

/// Where each record of one slice is, and when it was stored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SliceIndex {
    /// The slice's first sequence (its file name); entry i is sequence `first_seq + i`.
    pub first_seq: u64,
    /// Record offsets in the slice file.
    pub offsets: Vec<u32>,
    pub timestamps: Vec<i64>,
    /// Where the last record ends.
    pub end: u64,
}

impl SliceIndex {
    pub fn new(first_seq: u64) -> Self {
        SliceIndex {
            first_seq,
            ..Default::default()
        }
    }

    pub fn len(&self) -> usize {
        self.offsets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.offsets.is_empty()
    }

    /// The last sequence indexed (`first_seq - 1` when empty).
    pub fn last_seq(&self) -> u64 {
        (self.first_seq + self.offsets.len() as u64).saturating_sub(1)
    }

    pub fn contains(&self, seq: u64) -> bool {
        seq >= self.first_seq && seq - self.first_seq < self.offsets.len() as u64
    }

    /// Where the record after entry `i` starts (the end of entry i's record).
    pub fn next_offset(&self, i: usize) -> u64 {
        match self.offsets.get(i + 1) {
            Some(o) => u64::from(*o),
            None => self.end,
        }
    }

    /// The body size of entry `i` (what size limits and monitoring count).
    pub fn body_size(&self, i: usize) -> u64 {
        (self.next_offset(i) - u64::from(self.offsets[i])).saturating_sub(HEADER_LEN as u64)
    }

    /// Body bytes of all entries.
    pub fn body_bytes(&self) -> u64 {
        match self.offsets.first() {
            Some(first) => (self.end - u64::from(*first))
                .saturating_sub(HEADER_LEN as u64 * self.offsets.len() as u64),
            None => 0,
        }
    }

    pub fn push(&mut self, offset: u64, timestamp: i64, record_len: u64) {
        self.offsets.push(offset as u32);
        self.timestamps.push(timestamp);
        self.end = offset + record_len;
    }

    /// Indexes a record a scan found in bytes that start at `base` in the slice file.
    pub fn push_found(&mut self, base: u64, f: &Found) {
        self.push(
            base + f.offset as u64,
            f.header.timestamp,
            (f.end() - f.offset) as u64,
        );
    }

    /// The index of the records a scan of a whole slice found (`first_seq` when it found none).
    pub fn from_found(first_seq: u64, found: &[Found]) -> SliceIndex {
        let mut idx = SliceIndex::new(found.first().map_or(first_seq, |f| f.header.seq));
        for f in found {
            idx.push_found(0, f);
        }
        idx
    }
}

/// The check of an entry: CRC-32C of its sequence, offset and timestamp.
fn entry_check(seq: u64, offset: u32, timestamp: i64) -> u32 {
    let mut bytes = [0u8; 20];
    bytes[..8].copy_from_slice(&seq.to_le_bytes());
    bytes[8..12].copy_from_slice(&offset.to_le_bytes());
    bytes[12..].copy_from_slice(&timestamp.to_le_bytes());
    crc32c::crc32c(&bytes)
}

/// Appends the entry of record `seq` (offsets are below 4 GiB: slices roll before).
pub fn encode_entry(out: &mut Vec<u8>, seq: u64, offset: u64, timestamp: i64) {
    let offset = offset as u32;
    out.extend_from_slice(&offset.to_le_bytes());
    out.extend_from_slice(&entry_check(seq, offset, timestamp).to_le_bytes());
    out.extend_from_slice(&timestamp.to_le_bytes());
}

/// Reads an index file's entries. A cut-short last entry is ignored (a write cut short); every
/// entry's check must match its sequence, the offsets must start at 0 and grow by at least a
/// record header each, and timestamps must not go back. `None` when they do not: the index is
/// then rebuilt from its slice.
pub fn decode(first_seq: u64, buf: &[u8]) -> Option<SliceIndex> {
    let n = buf.len() / ENTRY_LEN;
    let mut idx = SliceIndex::new(first_seq);
    idx.offsets.reserve_exact(n);
    idx.timestamps.reserve_exact(n);
    let mut prev: Option<(u64, i64)> = None;
    for (i, e) in buf.chunks_exact(ENTRY_LEN).enumerate() {
        let offset32 = u32::from_le_bytes(e[..4].try_into().ok()?);
        let check = u32::from_le_bytes(e[4..8].try_into().ok()?);
        let ts = i64::from_le_bytes(e[8..].try_into().ok()?);
        if entry_check(first_seq.wrapping_add(i as u64), offset32, ts) != check {
            return None;
        }
        let offset = u64::from(offset32);
        match prev {
            None if offset != 0 => return None,
            Some((po, pt)) if offset < po + HEADER_LEN as u64 || ts < pt => return None,
            _ => {}
        }
        idx.offsets.push(offset32);
        idx.timestamps.push(ts);
        prev = Some((offset, ts));
    }
    Some(idx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn entries_round_trip_and_bad_ones_are_refused() {
        let mut buf = Vec::new();
        encode_entry(&mut buf, 7, 0, 10);
        encode_entry(&mut buf, 8, 40, 10);
        encode_entry(&mut buf, 9, 100, 12);
        let idx = decode(7, &buf).unwrap();
        assert_eq!(idx.offsets, vec![0, 40, 100]);
        assert_eq!(idx.timestamps, vec![10, 10, 12]);
        assert_eq!((idx.first_seq, idx.last_seq()), (7, 9));
        assert_eq!(
            decode(7, &buf[..buf.len() - 3]).unwrap().len(),
            2,
            "cut short"
        );
        let mut back = Vec::new();
        encode_entry(&mut back, 7, 0, 10);
        encode_entry(&mut back, 8, 10, 10);
        assert_eq!(decode(7, &back), None, "offsets must grow by a header");
        let mut not_zero = Vec::new();
        encode_entry(&mut not_zero, 7, 1, 10);
        assert_eq!(decode(7, &not_zero), None);
        // Issue 21.6: a damaged entry, or entries shifted by one (an entry lost), fail their
        // checks, where the old format took them (and skipped an intact message).
        let mut damaged = buf.clone();
        damaged[16] ^= 0x04;
        assert_eq!(decode(7, &damaged), None, "damaged offset");
        let shifted = [&buf[..16], &buf[32..]].concat();
        assert_eq!(decode(7, &shifted), None, "entry 8 lost, 9 shifted");
    }

    #[test]
    fn sizes_come_from_the_offsets() {
        let mut idx = SliceIndex::new(1);
        idx.push(0, 1, 30);
        idx.push(30, 1, 50);
        assert_eq!((idx.body_size(0), idx.body_size(1)), (6, 26));
        assert_eq!(idx.body_bytes(), 32);
        assert!(idx.contains(2) && !idx.contains(3) && !idx.contains(0));
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode(1, &bytes);
        }
    }
}
