//! Message records of the file store, as framed on disk (FORMAT.md): a 24-byte header (body
//! length, CRC-32C of the body, sequence, timestamp) then the body, the message's encoded
//! first-delivery `MsgProto`. Recovery scans a slice, stops at a clean end (end of file or
//! zero padding), truncates a torn tail, and reports corruption before the tail with the file
//! offset.

use thiserror::Error;

pub const HEADER_LEN: usize = 24;
/// A record body larger than this is not a record (the reference's max payload is far lower).
pub const MAX_BODY: usize = 64 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    pub body_len: u32,
    pub crc: u32,
    pub seq: u64,
    pub timestamp: i64,
}

/// Appends one framed record to `out`.
pub fn encode(out: &mut Vec<u8>, seq: u64, timestamp: i64, body: &[u8]) {
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(body).to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&timestamp.to_le_bytes());
    out.extend_from_slice(body);
}

/// The header of the record at `at`, if the bytes are there.
pub fn header_at(buf: &[u8], at: usize) -> Option<RecordHeader> {
    let h = buf.get(at..at + HEADER_LEN)?;
    let u32_at = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
    let u64_at = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&h[i..i + 8]);
        u64::from_le_bytes(b)
    };
    Some(RecordHeader {
        body_len: u32_at(0),
        crc: u32_at(4),
        seq: u64_at(8),
        timestamp: u64_at(16) as i64,
    })
}

/// One record found by a scan: where it starts and its header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found {
    pub offset: usize,
    pub header: RecordHeader,
}

impl Found {
    pub fn body<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        let start = self.offset + HEADER_LEN;
        &buf[start..start + self.header.body_len as usize]
    }

    pub fn end(&self) -> usize {
        self.offset + HEADER_LEN + self.header.body_len as usize
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScanEnd {
    /// The data ended exactly after a record, or only zero padding follows.
    Clean,
    /// The last record is incomplete or fails its CRC with nothing valid after it: a write
    /// cut short by a crash. Everything from `offset` on should be dropped.
    TornTail { offset: usize },
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ScanError {
    #[error("corrupt record at offset {offset}: {why}")]
    Corrupt { offset: usize, why: String },
}

/// The records of a slice, in order, and how the data ends. A bad record followed by more data
/// that is not zero padding is corruption, not a torn tail.
pub fn scan(buf: &[u8]) -> Result<(Vec<Found>, ScanEnd), ScanError> {
    let mut found = Vec::new();
    let mut at = 0;
    loop {
        if at == buf.len() || buf[at..].iter().all(|b| *b == 0) {
            return Ok((found, ScanEnd::Clean));
        }
        let problem = match header_at(buf, at) {
            None => Some("truncated header".to_string()),
            Some(h) if h.body_len as usize > MAX_BODY => {
                Some(format!("record length {} is too large", h.body_len))
            }
            Some(h) => {
                let end = at + HEADER_LEN + h.body_len as usize;
                match buf.get(at + HEADER_LEN..end) {
                    None => Some("truncated body".to_string()),
                    Some(body) if crc32c::crc32c(body) != h.crc => {
                        Some("CRC-32C mismatch".to_string())
                    }
                    Some(_) => {
                        if let Some(prev) = found.last() {
                            let prev: &Found = prev;
                            if prev.header.seq.checked_add(1) != Some(h.seq) {
                                return Err(ScanError::Corrupt {
                                    offset: at,
                                    why: format!("sequence {} follows {}", h.seq, prev.header.seq),
                                });
                            }
                        }
                        found.push(Found {
                            offset: at,
                            header: h,
                        });
                        at = end;
                        None
                    }
                }
            }
        };
        if let Some(why) = problem {
            // A torn tail is the last thing in the file: nothing valid can follow it.
            let expected = found
                .last()
                .map(|f| f.header.seq.saturating_add(1))
                .unwrap_or(0);
            if looks_like_tail(buf, at, expected) {
                return Ok((found, ScanEnd::TornTail { offset: at }));
            }
            return Err(ScanError::Corrupt { offset: at, why });
        }
    }
}

/// Whether a bad record at `at` can be a write cut short: no valid record (CRC-checked, with a
/// plausible later sequence) starts anywhere in the non-zero data after it.
fn looks_like_tail(buf: &[u8], at: usize, expected_seq: u64) -> bool {
    let data_end = buf.len() - buf.iter().rev().take_while(|b| **b == 0).count();
    for start in at + 1..data_end {
        let Some(h) = header_at(buf, start) else {
            break;
        };
        let len = h.body_len as usize;
        let plausible_seq = if expected_seq == 0 {
            h.seq > 0
        } else {
            h.seq >= expected_seq && h.seq - expected_seq < 1 << 32
        };
        if len == 0 || len > MAX_BODY || !plausible_seq {
            continue;
        }
        if let Some(body) = buf.get(start + HEADER_LEN..start + HEADER_LEN + len) {
            if crc32c::crc32c(body) == h.crc {
                return false;
            }
        }
    }
    true
}

/// How many whole records (CRC-checked) start at or after `from`: each found one is stepped
/// over whole, bytes that start none are stepped over one by one. For the log of what a cut
/// drops.
pub fn count_whole_records(buf: &[u8], from: usize) -> usize {
    let mut count = 0;
    let mut at = from;
    while at + HEADER_LEN <= buf.len() {
        let whole = header_at(buf, at).and_then(|h| {
            let len = h.body_len as usize;
            if len == 0 || len > MAX_BODY {
                return None;
            }
            let body = buf.get(at + HEADER_LEN..at + HEADER_LEN + len)?;
            (crc32c::crc32c(body) == h.crc).then_some(HEADER_LEN + len)
        });
        match whole {
            Some(len) => {
                count += 1;
                at += len;
            }
            None => at += 1,
        }
    }
    count
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn slice(n: u64) -> Vec<u8> {
        let mut out = Vec::new();
        for seq in 1..=n {
            encode(
                &mut out,
                seq,
                seq as i64 * 10,
                format!("body-{seq}").as_bytes(),
            );
        }
        out
    }

    #[test]
    fn whole_records_after_a_cut_are_counted() {
        let buf = slice(6);
        let (found, _) = scan(&buf).unwrap();
        assert_eq!(count_whole_records(&buf, 0), 6);
        assert_eq!(count_whole_records(&buf, found[2].offset), 4);
        assert_eq!(count_whole_records(&buf, found[2].offset + 1), 3);
        assert_eq!(count_whole_records(&buf, buf.len()), 0);
    }

    #[test]
    fn clean_scan_and_zero_padding() {
        let mut buf = slice(5);
        let (found, end) = scan(&buf).unwrap();
        assert_eq!(found.len(), 5);
        assert_eq!(end, ScanEnd::Clean);
        assert_eq!(found[2].body(&buf), b"body-3");
        assert_eq!(found[4].header.timestamp, 50);
        buf.extend_from_slice(&[0; 4096]);
        assert_eq!(scan(&buf).unwrap().1, ScanEnd::Clean);
    }

    #[test]
    fn torn_tails_are_found() {
        let full = slice(5);
        let (found, _) = scan(&full).unwrap();
        let last = found[4];
        for cut in [last.offset + 3, last.offset + HEADER_LEN + 2] {
            let (found, end) = scan(&full[..cut]).unwrap();
            assert_eq!(found.len(), 4);
            assert_eq!(
                end,
                ScanEnd::TornTail {
                    offset: last.offset
                }
            );
        }
        // A half-written last record followed by zeroes (a padded DMA page).
        let mut padded = full[..last.offset + HEADER_LEN + 2].to_vec();
        padded.extend_from_slice(&[0; 512]);
        assert_eq!(
            scan(&padded).unwrap().1,
            ScanEnd::TornTail {
                offset: last.offset
            }
        );
    }

    #[test]
    fn a_damaged_length_before_large_records_is_corruption() {
        let mut buf = Vec::new();
        for seq in 1..=3 {
            encode(&mut buf, seq, 0, &vec![7u8; 20_000]);
        }
        buf[0] = 0xff; // record 1's length now lies
        assert!(matches!(
            scan(&buf),
            Err(ScanError::Corrupt { offset: 0, .. })
        ));
    }

    #[test]
    fn corruption_before_the_tail_names_the_offset() {
        let mut buf = slice(5);
        let (found, _) = scan(&buf).unwrap();
        let victim = found[1];
        buf[victim.offset + HEADER_LEN] ^= 0xff;
        assert_eq!(
            scan(&buf).unwrap_err(),
            ScanError::Corrupt {
                offset: victim.offset,
                why: "CRC-32C mismatch".into()
            }
        );
    }

    /// Found by the store_record_scan fuzz target: sequence arithmetic at u64::MAX.
    #[test]
    fn sequence_at_the_top_of_the_range() {
        let mut buf = Vec::new();
        encode(&mut buf, u64::MAX, 0, b"x");
        buf.extend_from_slice(&[1, 2, 3]);
        assert!(scan(&buf).is_ok());
        encode(&mut buf, 1, 0, b"y");
        // Nothing can follow u64::MAX, so the rest is a torn tail.
        let (found, end) = scan(&buf).unwrap();
        assert_eq!(found.len(), 1);
        assert!(matches!(end, ScanEnd::TornTail { .. }));
    }

    proptest! {
        #[test]
        fn scan_never_panics(buf in prop::collection::vec(any::<u8>(), 0..600)) {
            let _ = scan(&buf);
        }

        #[test]
        fn any_cut_is_a_clean_prefix_or_torn_tail(n in 1u64..20, cut in 0usize..2000) {
            let full = slice(n);
            let cut = cut.min(full.len());
            let (found, end) = scan(&full[..cut]).unwrap();
            let kept = found.last().map(|f| f.end()).unwrap_or(0);
            match end {
                ScanEnd::Clean => prop_assert_eq!(kept, cut),
                ScanEnd::TornTail { offset } => prop_assert_eq!(offset, kept),
            }
            for (i, f) in found.iter().enumerate() {
                prop_assert_eq!(f.header.seq, i as u64 + 1);
            }
        }
    }
}
