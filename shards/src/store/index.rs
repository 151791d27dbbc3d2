//! Slice index files, `slice.<first seq>.idx`: one 16-byte entry per record of the slice with
//! the same name, in sequence order (entry i is sequence `first + i`): the record's offset in
//! the slice (u64 LE) and its timestamp (i64 LE). Recovery reads indexes instead of slices;
//! an index that is missing, inconsistent, or disagrees with its slice is rebuilt from the
//! slice.

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

/// Appends the entry of one record.
pub fn encode_entry(out: &mut Vec<u8>, offset: u64, timestamp: i64) {
    out.extend_from_slice(&offset.to_le_bytes());
    out.extend_from_slice(&timestamp.to_le_bytes());
}

/// Reads an index file's entries. A cut-short last entry is ignored (a write cut short); the
/// offsets must start at 0 and grow by at least a record header each, timestamps must not go
/// back, and every offset must fit the 4 GiB a slice may hold. `None` when they do not: the
/// index is then rebuilt from its slice.
pub fn decode(first_seq: u64, buf: &[u8]) -> Option<SliceIndex> {
    let n = buf.len() / ENTRY_LEN;
    let mut idx = SliceIndex::new(first_seq);
    idx.offsets.reserve_exact(n);
    idx.timestamps.reserve_exact(n);
    let mut prev: Option<(u64, i64)> = None;
    for e in buf.chunks_exact(ENTRY_LEN) {
        let offset = u64::from_le_bytes(e[..8].try_into().ok()?);
        let ts = i64::from_le_bytes(e[8..].try_into().ok()?);
        match prev {
            None if offset != 0 => return None,
            Some((po, pt)) if offset < po + HEADER_LEN as u64 || ts < pt => return None,
            _ => {}
        }
        if offset > u64::from(u32::MAX) {
            return None;
        }
        idx.offsets.push(offset as u32);
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
        encode_entry(&mut buf, 0, 10);
        encode_entry(&mut buf, 40, 10);
        encode_entry(&mut buf, 100, 12);
        let idx = decode(7, &buf).unwrap();
        assert_eq!(idx.offsets, vec![0, 40, 100]);
        assert_eq!(idx.timestamps, vec![10, 10, 12]);
        assert_eq!((idx.first_seq, idx.last_seq()), (7, 9));
        assert_eq!(
            decode(7, &buf[..buf.len() - 3]).unwrap().len(),
            2,
            "cut short"
        );
        let mut back = buf.clone();
        back[16..24].copy_from_slice(&10u64.to_le_bytes());
        assert_eq!(decode(7, &back), None, "offsets must grow by a header");
        let mut not_zero = buf.clone();
        not_zero[0] = 1;
        assert_eq!(decode(7, &not_zero), None);
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
