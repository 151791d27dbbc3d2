//! Typed append logs of the file store (`clients.dat`, `subs.dat`): CRC-framed records, a
//! replay that ends at a torn tail and refuses corruption before it, and the open file that
//! appends records (synced when the store syncs) and is rewritten whole when compacted.
//!
//! A record: body length (u32 LE), CRC-32C of the body (u32 LE), body. What a body holds is the
//! caller's; `Fields` reads the little-endian integers and u16-length strings they are made of.

use glommio::io::{BufferedFile, OpenOptions};
use std::cell::Cell;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use thiserror::Error;

pub const HEADER: usize = 8;

#[derive(Debug, Error, PartialEq, Eq)]
#[error("corrupt record at offset {0}")]
pub struct Corrupt(pub usize);

/// Appends one framed record holding `body`.
pub fn frame(out: &mut Vec<u8>, body: &[u8]) {
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(body).to_le_bytes());
    out.extend_from_slice(body);
}

/// A u16 length of this value announces a long field: a u32 LE length follows.
const LONG_FIELD: u16 = u16::MAX;

/// Appends a string field whole: u16 LE length then its bytes or, for a field of 65,535 bytes
/// or more, the marker 0xFFFF, a u32 LE length and the bytes. (Fields were once cut at
/// 65,535 bytes, which could leave half a UTF-8 character and a record the next start
/// refused.) A field over 4 GiB cannot arrive in a NATS message.
pub fn put_str(out: &mut Vec<u8>, field: &[u8]) {
    match u16::try_from(field.len()) {
        Ok(len) if len < LONG_FIELD => out.extend_from_slice(&len.to_le_bytes()),
        _ => {
            let len = u32::try_from(field.len()).unwrap_or(u32::MAX);
            out.extend_from_slice(&LONG_FIELD.to_le_bytes());
            out.extend_from_slice(&len.to_le_bytes());
        }
    }
    out.extend_from_slice(&field[..field.len().min(u32::MAX as usize)]);
}

/// Reads a record body's fields in order; every read is bounds-checked.
pub struct Fields<'a> {
    body: &'a [u8],
    at: usize,
}

impl<'a> Fields<'a> {
    pub fn new(body: &'a [u8]) -> Self {
        Fields { body, at: 0 }
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let f = self.body.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(f)
    }

    pub fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    pub fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }

    pub fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }

    pub fn bytes(&mut self) -> Option<&'a [u8]> {
        let len = u16::from_le_bytes(self.take(2)?.try_into().ok()?);
        let len = if len == LONG_FIELD {
            self.u32()? as usize
        } else {
            len as usize
        };
        self.take(len)
    }

    pub fn string(&mut self) -> Option<String> {
        String::from_utf8(self.bytes()?.to_vec()).ok()
    }
}

/// Hands every record body to `apply`, in order, and returns where the log ends (the length to
/// keep). A cut-short or zero last record is a torn tail and ends the log; a bad record before
/// the end, or a body `apply` cannot read (it returns `None`), is corruption at its offset.
pub fn replay(buf: &[u8], mut apply: impl FnMut(&[u8]) -> Option<()>) -> Result<usize, Corrupt> {
    let mut at = 0;
    while at + HEADER <= buf.len() {
        let word = |i: usize| u32::from_le_bytes([buf[i], buf[i + 1], buf[i + 2], buf[i + 3]]);
        let (len, crc) = (word(at) as usize, word(at + 4));
        if len == 0 && crc == 0 {
            break;
        }
        let Some(body) = buf.get(at + HEADER..at + HEADER + len) else {
            // Cut short: a torn tail, unless a whole record follows (then its length lies).
            if next_record_after(buf, at).is_some() {
                return Err(Corrupt(at));
            }
            break;
        };
        let last = at + HEADER + len == buf.len();
        if crc32c::crc32c(body) != crc {
            if last {
                break;
            }
            return Err(Corrupt(at));
        }
        if apply(body).is_none() {
            return Err(Corrupt(at));
        }
        at += HEADER + len;
    }
    Ok(at)
}

/// A bad record that a lenient replay stepped over: where it was and how many bytes it took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Skipped {
    pub offset: usize,
    pub len: usize,
}

/// As [`replay`], or, when `skip_bad`, stepping over each bad record instead of refusing the
/// log (the operator's `--file_truncate_bad_eof`): only that record is lost, not every record
/// after it. A bad record whose frame is intact (its CRC matches; `apply` could not read it)
/// is skipped by its length; otherwise replay resumes at the next offset where a whole record
/// with a matching CRC starts, and with none the rest is a torn tail.
pub fn replay_with(
    buf: &[u8],
    skip_bad: bool,
    mut apply: impl FnMut(&[u8]) -> Option<()>,
) -> Result<(usize, Vec<Skipped>), Corrupt> {
    let mut skipped = Vec::new();
    let mut at = 0;
    loop {
        let bad = match replay(&buf[at..], &mut apply) {
            Ok(end) => return Ok((at + end, skipped)),
            Err(Corrupt(offset)) if skip_bad => at + offset,
            Err(Corrupt(offset)) => return Err(Corrupt(at + offset)),
        };
        match next_record_after(buf, bad) {
            Some(next) => {
                skipped.push(Skipped {
                    offset: bad,
                    len: next - bad,
                });
                at = next;
            }
            None => {
                skipped.push(Skipped {
                    offset: bad,
                    len: buf.len() - bad,
                });
                return Ok((bad, skipped));
            }
        }
    }
}

/// The frame at `at`, if it is whole and its CRC matches: the body's length.
fn valid_frame_at(buf: &[u8], at: usize) -> Option<usize> {
    let header = buf.get(at..at.checked_add(HEADER)?)?;
    let len = u32::from_le_bytes(header[..4].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(header[4..].try_into().ok()?);
    let body = buf.get(at + HEADER..(at + HEADER).checked_add(len)?)?;
    (len > 0 && crc32c::crc32c(body) == crc).then_some(len)
}

/// Where the record after the bad one at `bad` starts, if any.
fn next_record_after(buf: &[u8], bad: usize) -> Option<usize> {
    if let Some(len) = valid_frame_at(buf, bad) {
        let next = bad + HEADER + len;
        return (next < buf.len()).then_some(next);
    }
    (bad + 1..buf.len()).find(|&at| valid_frame_at(buf, at).is_some())
}

/// Logs what a replay that ended at `end` leaves of `buf`: a torn last record (not zeroes,
/// which are a clean end), with the file, offset and length.
pub fn log_torn_tail(path: &Path, buf: &[u8], end: usize) {
    let rest = buf.get(end..).unwrap_or_default();
    if rest.iter().any(|b| *b != 0) {
        log::warn!(
            "STAN: {}: dropped a torn last record at offset {end} ({} bytes)",
            path.display(),
            rest.len()
        );
    }
}

/// Reads a whole log file; a missing file is an empty log.
pub fn read_file(path: &Path) -> io::Result<Vec<u8>> {
    match std::fs::read(path) {
        Ok(b) => Ok(b),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

fn glommio_io<T>(e: glommio::GlommioError<T>) -> io::Error {
    io::Error::other(e.to_string())
}

/// An open log being appended to. Records are written with a plain `pwrite` into the page
/// cache (microseconds, and no extra io_uring round trip holding up the commit that wrote
/// them); only the sync, when asked for, is an asynchronous io_uring operation.
pub struct AppendFile {
    file: BufferedFile,
    writer: std::fs::File,
    path: PathBuf,
    end: Cell<u64>,
    sync: bool,
}

impl AppendFile {
    /// Replaces the log with `contents` (written to a new file, synced, renamed over the old
    /// one) and opens it for appending.
    pub async fn rewrite(path: &Path, contents: &[u8], sync: bool) -> io::Result<AppendFile> {
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(contents)?;
            f.sync_data()?;
        }
        std::fs::rename(&tmp, path)?;
        Self::open_at(path, contents.len() as u64, sync).await
    }

    /// Opens (or creates) the log to append at `end`, cutting off whatever follows (a torn
    /// tail must not sit behind new records, where replay would take it for corruption).
    pub async fn open_at(path: &Path, end: u64, sync: bool) -> io::Result<AppendFile> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .buffered_open(path)
            .await
            .map_err(glommio_io)?;
        let size = file.file_size().await.map_err(glommio_io)?;
        if size > end {
            file.truncate(end).await.map_err(glommio_io)?;
        }
        let writer = std::fs::OpenOptions::new().write(true).open(path)?;
        Ok(AppendFile {
            file,
            writer,
            path: path.to_path_buf(),
            end: Cell::new(end),
            sync,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes in the log.
    pub fn len(&self) -> u64 {
        self.end.get()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends framed records (and syncs when the store syncs).
    pub async fn append(&self, records: Vec<u8>) -> io::Result<()> {
        self.append_with(records, self.sync).await
    }

    /// Appends framed records, synced when `sync` (and the store syncs). A failed or short
    /// write leaves the end where it was, so the next records overwrite the failed ones.
    pub async fn append_with(&self, records: Vec<u8>, sync: bool) -> io::Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let at = self.end.get();
        let len = records.len();
        self.end.set(at + len as u64);
        let written = std::os::unix::fs::FileExt::write_all_at(&self.writer, &records, at);
        let failed = written.err().map(|e| {
            io::Error::new(
                e.kind(),
                format!("writing {} bytes to {}: {e}", len, self.path.display()),
            )
        });
        if let Some(e) = failed {
            // Unless another append already went past it: a hole would end the log early.
            if self.end.get() == at + len as u64 {
                self.end.set(at);
                // A short write (a full disk) leaves part of the records in the file: cut it
                // off (which needs no space), or a smaller record written over its start
                // later would leave the rest behind as a bad record in the middle of the log.
                if let Err(cut) = self.writer.set_len(at) {
                    log::error!(
                        "STAN: cannot cut {} back to {at} bytes after a failed write: {cut}",
                        self.path.display()
                    );
                }
            }
            return Err(e);
        }
        if sync && self.sync {
            self.file.fdatasync().await.map_err(glommio_io)?;
        }
        Ok(())
    }

    pub async fn close(self) -> io::Result<()> {
        self.file.close().await.map_err(glommio_io)
    }
}

/// Whether a log of `size` bytes holding `total` records of which `live` still matter is due
/// for compaction under the store's `compact*` options (the reference's rule: enabled, at least
/// `min_size` bytes, and at least `frag` percent of the records dead).
pub fn needs_compaction(policy: &CompactPolicy, size: u64, total: u64, live: u64) -> bool {
    policy.enabled
        && total > 0
        && size >= policy.min_size
        && total.saturating_sub(live).saturating_mul(100) >= policy.frag_percent * total
}

/// The `compact`, `compact_frag`, `compact_interval` and `compact_min_size` options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompactPolicy {
    pub enabled: bool,
    pub frag_percent: u64,
    pub interval: std::time::Duration,
    pub min_size: u64,
}

impl Default for CompactPolicy {
    fn default() -> Self {
        CompactPolicy {
            enabled: true,
            frag_percent: 50,
            interval: std::time::Duration::from_secs(300),
            min_size: 1 << 20,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn log_of(bodies: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for b in bodies {
            frame(&mut out, b);
        }
        out
    }

    fn bodies(buf: &[u8]) -> Result<(Vec<Vec<u8>>, usize), Corrupt> {
        let mut seen = Vec::new();
        let end = replay(buf, |b| {
            seen.push(b.to_vec());
            Some(())
        })?;
        Ok((seen, end))
    }

    #[test]
    fn torn_tails_end_the_log_and_corruption_before_them_is_refused() {
        let log = log_of(&[b"one", b"two"]);
        let first = HEADER + 3;
        assert_eq!(
            bodies(&log),
            Ok((vec![b"one".to_vec(), b"two".to_vec()], log.len()))
        );
        assert_eq!(
            bodies(&log[..log.len() - 1]),
            Ok((vec![b"one".to_vec()], first))
        );
        let mut zeroes = log.clone();
        zeroes.extend_from_slice(&[0; 64]);
        assert_eq!(bodies(&zeroes).map(|r| r.1), Ok(log.len()));
        let mut flipped = log.clone();
        flipped[HEADER] ^= 1;
        assert_eq!(bodies(&flipped), Err(Corrupt(0)));
        let mut last_flipped = log.clone();
        last_flipped[first + HEADER] ^= 1;
        assert_eq!(bodies(&last_flipped), Ok((vec![b"one".to_vec()], first)));
        assert_eq!(replay(&log, |_| None), Err(Corrupt(0)));
    }

    #[test]
    fn long_fields_are_stored_whole() {
        let long = "é".repeat(40_000); // 80,000 bytes, a cut would split a character
        for field in ["", "x", &"a".repeat(65_534), &"a".repeat(65_535), &long] {
            let mut body = Vec::new();
            put_str(&mut body, field.as_bytes());
            put_str(&mut body, b"after");
            let mut f = Fields::new(&body);
            assert_eq!(f.string().as_deref(), Some(field));
            assert_eq!(f.string().as_deref(), Some("after"));
        }
    }

    #[test]
    fn a_lenient_replay_skips_only_the_bad_record() {
        let log = log_of(&[b"one", b"two", b"three", b"four"]);
        let second = HEADER + 3;
        let third = second + HEADER + 3;
        let collect = |buf: &[u8], skip: bool, refuse: &[u8]| {
            let mut seen = Vec::new();
            replay_with(buf, skip, |b| {
                if b == refuse {
                    return None;
                }
                seen.push(b.to_vec());
                Some(())
            })
            .map(|(end, skipped)| (seen, end, skipped))
        };
        // A body flipped: its CRC fails.
        let mut flipped = log.clone();
        flipped[second + HEADER] ^= 1;
        assert_eq!(collect(&flipped, false, b""), Err(Corrupt(second)));
        let (seen, end, skipped) = collect(&flipped, true, b"").unwrap();
        assert_eq!(
            seen,
            vec![b"one".to_vec(), b"three".to_vec(), b"four".to_vec()]
        );
        assert_eq!(end, log.len());
        assert_eq!(
            skipped,
            vec![Skipped {
                offset: second,
                len: third - second
            }]
        );
        // A length that lies: replay resumes at the next whole record.
        let mut lying = log.clone();
        lying[second] = 200;
        let (seen, _, skipped) = collect(&lying, true, b"").unwrap();
        assert_eq!(
            seen,
            vec![b"one".to_vec(), b"three".to_vec(), b"four".to_vec()]
        );
        assert_eq!(skipped[0].offset, second);
        // A whole record its reader cannot read is skipped by its length.
        let (seen, _, skipped) = collect(&log, true, b"two").unwrap();
        assert_eq!(
            seen,
            vec![b"one".to_vec(), b"three".to_vec(), b"four".to_vec()]
        );
        assert_eq!(skipped.len(), 1);
    }

    #[test]
    fn fields_are_bounds_checked() {
        let mut body = vec![7];
        body.extend_from_slice(&9u64.to_le_bytes());
        put_str(&mut body, b"abc");
        let mut f = Fields::new(&body);
        assert_eq!(f.u8(), Some(7));
        assert_eq!(f.u64(), Some(9));
        assert_eq!(f.string().as_deref(), Some("abc"));
        assert_eq!(f.u32(), None);
        let mut short = Fields::new(&[5, 0, b'a']);
        assert_eq!(short.bytes(), None);
    }

    #[test]
    fn compaction_rule() {
        let p = CompactPolicy::default();
        assert!(!needs_compaction(&p, 2 << 20, 100, 60), "40% dead");
        assert!(needs_compaction(&p, 2 << 20, 100, 50));
        assert!(!needs_compaction(&p, 1000, 100, 0), "too small");
        let off = CompactPolicy {
            enabled: false,
            ..p
        };
        assert!(!needs_compaction(&off, 2 << 20, 100, 0));
    }

    proptest! {
        #[test]
        fn replay_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = bodies(&bytes);
            let _ = replay_with(&bytes, true, |_| Some(()));
        }
    }
}
