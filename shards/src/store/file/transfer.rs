//! What a cluster node reads from and writes to its file store to send or install a raft
//! snapshot: a channel's stored records from a sequence on (answering a catching-up node),
//! and a channel's subscription log, read whole or replaced whole.

use super::super::subs;
use super::super::{index, record};
use super::{first_of, FileStore, SubsLogEnd};
use std::io;
use std::os::unix::fs::FileExt;

/// Records read for a catching-up node: from `first_seq` on, `msgs` of them, framed as a
/// `ChannelBatch` holds them.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct StoredRecords {
    pub first_seq: u64,
    pub msgs: u64,
    pub records: Vec<u8>,
}

impl StoredRecords {
    /// Only the records up to sequence `last`.
    pub fn up_to(mut self, last: u64) -> StoredRecords {
        if self.msgs == 0 || self.first_seq + self.msgs - 1 <= last {
            return self;
        }
        if self.first_seq > last {
            return StoredRecords::default();
        }
        let keep = last - self.first_seq + 1;
        let mut at = 0;
        for _ in 0..keep {
            match record::header_at(&self.records, at) {
                Some(h) => at += record::HEADER_LEN + h.body_len as usize,
                None => break,
            }
        }
        self.records.truncate(at.min(self.records.len()));
        self.msgs = keep;
        self
    }
}

impl FileStore {
    /// The stored records of `channel` from `from_seq` on (or from the first one kept, if
    /// older ones are gone), whole records up to about `max_bytes` (at least one). Reads the
    /// slice files and their indexes as they are on disk: everything this store wrote is in
    /// them (the index is appended after each write).
    pub fn read_records(
        &self,
        channel: &str,
        from_seq: u64,
        max_bytes: usize,
    ) -> io::Result<StoredRecords> {
        let dir = self.channel_dir(channel);
        let mut slices: Vec<u64> = match std::fs::read_dir(&dir) {
            Ok(entries) => entries
                .filter_map(|e| e.ok())
                .map(|e| first_of(&e.path()))
                .filter(|first| *first > 0)
                .collect(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        slices.sort_unstable();
        // The slice holding `from_seq`, or the first one after it.
        let start = slices
            .partition_point(|first| *first <= from_seq)
            .saturating_sub(1);
        for &first in &slices[start..] {
            let path = self.slice_path(channel, first);
            let idx = match std::fs::read(path.with_extension("idx")) {
                Ok(buf) => index::decode(first, &buf).ok_or_else(|| {
                    io::Error::other(format!("{}: unreadable index", path.display()))
                })?,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            if idx.is_empty() || idx.last_seq() < from_seq {
                continue;
            }
            let from = from_seq.max(idx.first_seq);
            let i = (from - idx.first_seq) as usize;
            let offset = |k: usize| u64::from(idx.offsets[k]);
            let begin = offset(i);
            // Whole records while they fit (the index gives where each starts; the last one's
            // end is in its header).
            let mut j = i;
            while j + 1 < idx.len() && offset(j + 1) - begin < max_bytes as u64 {
                j += 1;
            }
            let file = std::fs::File::open(&path)?;
            let end = if j + 1 < idx.len() {
                offset(j + 1)
            } else {
                let mut header = [0u8; record::HEADER_LEN];
                file.read_exact_at(&mut header, offset(j))?;
                let h = record::header_at(&header, 0)
                    .filter(|h| h.body_len as usize <= record::MAX_BODY)
                    .ok_or_else(|| {
                        io::Error::other(format!("{}: bad record header", path.display()))
                    })?;
                offset(j) + record::HEADER_LEN as u64 + u64::from(h.body_len)
            };
            let mut records = vec![0u8; (end - begin) as usize];
            file.read_exact_at(&mut records, begin)?;
            return Ok(StoredRecords {
                first_seq: from,
                msgs: (j - i + 1) as u64,
                records,
            });
        }
        Ok(StoredRecords::default())
    }

    /// `channel`'s subscription log as it is on disk (empty if it has none).
    pub fn subs_log_bytes(&self, channel: &str) -> io::Result<Vec<u8>> {
        match std::fs::read(self.channel_dir(channel).join(subs::FILE_NAME)) {
            Ok(b) => Ok(b),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    /// Replaces `channel`'s subscription log with `contents` (another node's, from a
    /// snapshot), checked first, and keeps it open for appending.
    pub async fn replace_subs(&self, channel: &str, contents: Vec<u8>) -> io::Result<()> {
        let records = if contents.is_empty() {
            0
        } else {
            subs::replay(&contents)
                .map_err(|e| io::Error::other(format!("subscription log of {channel:?}: {e:?}")))?
                .2
        };
        std::fs::create_dir_all(self.channel_dir(channel))?;
        let old = self.sub_logs.borrow_mut().remove(channel);
        if let Some(old) = old {
            let _ = old.file.close().await;
        }
        self.open_subs(channel, SubsLogEnd::default(), Some((contents, records)))
            .await
    }
}
