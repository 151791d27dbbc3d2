//! Slice files: a writer that appends the records of one event-loop turn and commits them at
//! once (with glommio DMA to an O_DSYNC file when the store syncs, through the page cache when
//! it does not), and a DMA reader for recovery and replay. It applies the fixes of
//! shared/practical-notes.md: a warm-up of the device's IOPOLL probe before the first DMA
//! file, read sizes capped to the device's request limit, power-of-two reader buffers.

use futures_lite::AsyncReadExt;
use glommio::io::{DmaFile, DmaStreamReaderBuilder, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use super::cached_slice::CachedSlice;

/// Largest DMA read issued, whatever the device allows (practical notes: min(128 KiB, limit)).
const MAX_READ: usize = 128 << 10;

fn to_io(e: glommio::GlommioError<()>) -> io::Error {
    let text = e.to_string();
    if text.contains(&format!("(os error {})", libc::EMFILE)) {
        // Says what to do about it where it is seen (the log, a publisher's PubAck).
        return io::Error::other(format!(
            "{text}: raise the open-file limit (LimitNOFILE, ulimit -n): a FILE store keeps each channel's slice, index and subscription log open"
        ));
    }
    io::Error::other(text)
}

/// glommio probes IOPOLL support with the first DMA file it opens on a device; on an empty new
/// file the probe never reaches the disk and the device is wrongly taken as pollable. Opening a
/// non-empty file first makes the probe honest. Call once per executor and data directory.
pub async fn warm_up(dir: &Path) -> io::Result<()> {
    // Every executor warms up at the same time: each needs its own probe file.
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let probe = dir.join(format!(".stanza-dma-probe-{}-{n}", std::process::id()));
    std::fs::write(&probe, vec![0u8; 4096])?;
    let opened = OpenOptions::new().read(true).dma_open(&probe).await;
    if let Ok(file) = opened {
        let _ = file.close().await;
    }
    std::fs::remove_file(&probe)
}

/// The largest read the data device takes in one request, from sysfs, capped at 128 KiB and
/// rounded down to a power of two (glommio's stream reader needs one).
pub fn read_size_for(dir: &Path) -> usize {
    let limit = device_limit(dir).unwrap_or(MAX_READ).clamp(4096, MAX_READ);
    1 << (usize::BITS - 1 - limit.leading_zeros())
}

fn device_limit(dir: &Path) -> Option<usize> {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(dir).ok()?.dev();
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    let base = PathBuf::from(format!("/sys/dev/block/{major}:{minor}"));
    // A partition's queue limits live on its parent disk.
    let queue = [base.join("queue"), base.join("../queue")]
        .into_iter()
        .find(|q| q.exists())?;
    let kb: usize = std::fs::read_to_string(queue.join("max_sectors_kb"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// Zeroes are written ahead of the records, so that commits overwrite blocks the file already
/// has: an append past the end of the file makes ext4 allocate blocks and grow the file under
/// its exclusive inode lock, which io_uring cannot do in line (it hands the write to a kernel
/// worker thread), and with O_DSYNC every such write also waits for a journal commit. The first
/// run is this long; each next one twice the last, up to `ZERO_RUN_MAX`, so a quiet channel
/// keeps little zeroed space and a busy one few runs.
const ZERO_RUN_FIRST: u64 = 64 << 10;
const ZERO_RUN_MAX: u64 = 4 << 20;
/// Largest DMA buffer one zero run writes at a time.
const ZERO_WRITE: usize = 1 << 20;

/// Appends records to one slice file: with DMA when every commit is synced, through the page
/// cache when none is (see `CachedSlice`).
pub struct SliceWriter(Writer);

enum Writer {
    Direct(DirectSlice),
    Cached(CachedSlice),
}

impl SliceWriter {
    /// Creates (or truncates) a slice file. `max_write` bounds one DMA write. `sync`: every
    /// commit is on the device when it completes.
    /// `zero_ahead` (with `sync`): zeroes are written ahead of the records (see `DirectSlice`).
    pub async fn create(
        path: &Path,
        max_write: usize,
        sync: bool,
        zero_ahead: bool,
    ) -> io::Result<SliceWriter> {
        let writer = if sync {
            Writer::Direct(DirectSlice::create(path, max_write, zero_ahead).await?)
        } else {
            Writer::Cached(CachedSlice::create(path)?)
        };
        Ok(SliceWriter(writer))
    }

    pub fn path(&self) -> &Path {
        match &self.0 {
            Writer::Direct(w) => w.path(),
            Writer::Cached(w) => w.path(),
        }
    }

    /// Bytes appended so far.
    pub fn len(&self) -> u64 {
        match &self.0 {
            Writer::Direct(w) => w.len(),
            Writer::Cached(w) => w.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends already framed records: on the device (synced slices) or in the page cache once
    /// it returns. A failed write is followed by `abandon`.
    pub async fn write(&mut self, records: &[u8]) -> io::Result<()> {
        match &mut self.0 {
            Writer::Direct(w) => w.write(records).await,
            Writer::Cached(w) => w.write(records),
        }
    }

    /// Gives the file up after a failed commit, cut back to `keep` bytes.
    pub async fn abandon(self, keep: u64) -> io::Result<()> {
        match self.0 {
            Writer::Direct(w) => w.abandon(keep).await,
            Writer::Cached(w) => w.abandon(keep),
        }
    }

    /// Closes the file (clean shutdown, or a full slice).
    pub async fn close(self) -> io::Result<()> {
        match self.0 {
            Writer::Direct(w) => w.close().await,
            Writer::Cached(w) => w.close(),
        }
    }
}

/// Appends records to one slice file with DMA. The writer keeps the file's unfinished last page
/// in memory and rewrites it at each write, always zero-padded: what follows the last record
/// on disk is zeroes, never bytes of a recycled buffer (which could hold another slice's
/// records).
struct DirectSlice {
    file: Rc<DmaFile>,
    path: PathBuf,
    /// File offset where `tail` starts (page-aligned).
    tail_pos: u64,
    /// The unfinished last page: the bytes from `tail_pos` on.
    tail: Vec<u8>,
    max_write: usize,
    /// Zeroes are on disk from the end of the records up to here.
    zeroed: u64,
    /// The zero run being written (ends where it says when it succeeds) and its length.
    zeroing: Option<(glommio::task::JoinHandle<io::Result<u64>>, u64)>,
    /// Length of the next zero run; 0 once one failed (a full disk: the records get the rest).
    next_run: u64,
}

const PAGE: usize = 4096;

impl DirectSlice {
    /// Creates (or truncates) a slice file, opened O_DSYNC: every write is on the device when
    /// it completes, so a commit waits for one operation instead of a write and an fdatasync.
    /// `max_write` bounds one DMA write. Without `zero_ahead` records are appended past the
    /// end of the file: each commit also waits for the file system to record the new blocks,
    /// and nothing is written twice.
    pub async fn create(
        path: &Path,
        max_write: usize,
        zero_ahead: bool,
    ) -> io::Result<DirectSlice> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags(libc::O_DSYNC)
            .dma_open(path)
            .await
            .map_err(to_io)?;
        let mut writer = DirectSlice {
            file: Rc::new(file),
            path: path.to_path_buf(),
            tail_pos: 0,
            tail: Vec::new(),
            max_write: max_write.max(PAGE).next_multiple_of(PAGE),
            zeroed: 0,
            zeroing: None,
            next_run: if zero_ahead { ZERO_RUN_FIRST } else { 0 },
        };
        // The first run is waited for: the first commits would wait for it anyway.
        writer.zero_ahead();
        writer.finish_zeroing().await;
        Ok(writer)
    }

    /// Where the records written so far end on disk, padding included.
    fn written_end(&self) -> u64 {
        self.tail_pos + self.tail.len().next_multiple_of(PAGE) as u64
    }

    /// Starts the next zero run once less than a quarter of its length (half of the last run,
    /// until the runs stop growing) is left zeroed ahead of the records.
    fn zero_ahead(&mut self) {
        if self.next_run == 0 || self.zeroing.is_some() {
            return;
        }
        let end = self.written_end();
        if self.zeroed.saturating_sub(end) > self.next_run / 4 {
            return;
        }
        let len = self.next_run;
        let file = self.file.clone();
        let run = glommio::spawn_local(write_zeroes(file, self.zeroed.max(end), len)).detach();
        self.zeroing = Some((run, len));
    }

    /// Waits for the zero run in flight, if any.
    async fn finish_zeroing(&mut self) {
        let Some((run, len)) = self.zeroing.take() else {
            return;
        };
        match run.await {
            Some(Ok(end)) => {
                self.zeroed = end;
                self.next_run = (len * 2).min(ZERO_RUN_MAX);
            }
            Some(Err(e)) => {
                log::debug!(
                    "STAN: no more zeroes written ahead in {}: {e}",
                    self.path.display()
                );
                self.next_run = 0;
            }
            None => self.next_run = 0,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.tail_pos + self.tail.len() as u64
    }

    /// Writes the unfinished page and `records` after it (the last page zero-padded), on the
    /// device once it returns; then starts the next zero run if one is due. The DMA buffers
    /// are filled from the unfinished page and the records directly.
    pub async fn write(&mut self, records: &[u8]) -> io::Result<()> {
        let total = self.tail.len() + records.len();
        // A zero run must land before records are written over its range.
        if self.tail_pos + total.next_multiple_of(PAGE) as u64 > self.zeroed {
            self.finish_zeroing().await;
        }
        let mut written = 0;
        while written < total {
            let chunk = (total - written).min(self.max_write);
            let padded = chunk.next_multiple_of(PAGE);
            let mut buf = self.file.alloc_dma_buffer(padded);
            let bytes = buf.as_bytes_mut();
            copy_joined(&self.tail, records, written, &mut bytes[..chunk]);
            bytes[chunk..].fill(0);
            let done = self
                .file
                .write_at(buf, self.tail_pos + written as u64)
                .await
                .map_err(to_io)?;
            // A full disk may take part of a write: that is a failed write, not a success.
            if done < padded {
                return Err(io::Error::new(
                    io::ErrorKind::StorageFull,
                    format!(
                        "short write to {} ({done} of {padded} bytes): no space left on device",
                        self.path.display()
                    ),
                ));
            }
            written += chunk;
        }
        // Whole pages are final; the unfinished one stays to be rewritten with what follows.
        let full = total / PAGE * PAGE;
        let mut unfinished = Vec::with_capacity(PAGE);
        unfinished.resize(total - full, 0);
        copy_joined(&self.tail, records, full, &mut unfinished);
        self.tail = unfinished;
        self.tail_pos += full as u64;
        self.zero_ahead();
        Ok(())
    }

    /// Gives the file up after a failed commit: it is cut back to `keep` bytes (what earlier
    /// commits wrote), so that nothing of the failed records stays behind it, and closed.
    pub async fn abandon(mut self, keep: u64) -> io::Result<()> {
        self.finish_zeroing().await;
        let cut = self.file.truncate(keep).await.map_err(to_io);
        let closed = close_shared(self.file).await;
        cut.and(closed)
    }

    /// Trims the zero padding and the zeroes ahead, and closes the file (clean shutdown, or a
    /// full slice).
    pub async fn close(mut self) -> io::Result<()> {
        self.finish_zeroing().await;
        let len = self.len();
        self.file.truncate(len).await.map_err(to_io)?;
        close_shared(self.file).await
    }
}

/// Copies `out.len()` bytes from offset `from` of `first` followed by `second`.
fn copy_joined(first: &[u8], second: &[u8], from: usize, out: &mut [u8]) {
    let mut at = 0;
    if from < first.len() {
        let n = (first.len() - from).min(out.len());
        out[..n].copy_from_slice(&first[from..from + n]);
        at = n;
        if at == out.len() {
            return;
        }
    }
    let start = from + at - first.len();
    let rest = out.len() - at;
    out[at..].copy_from_slice(&second[start..start + rest]);
}

/// Closes a file shared with a zero run (none is in flight by then: the caller waited for it).
async fn close_shared(file: Rc<DmaFile>) -> io::Result<()> {
    match Rc::try_unwrap(file) {
        Ok(file) => file.close().await.map_err(to_io),
        // Dropping the last reference closes it.
        Err(_) => Ok(()),
    }
}

/// Writes `len` zero bytes at `from` and returns where they end. A short write (a full disk)
/// is an error: the zeroes that did land are harmless, records overwrite them.
async fn write_zeroes(file: Rc<DmaFile>, from: u64, len: u64) -> io::Result<u64> {
    let mut at = from;
    while at < from + len {
        let chunk = ((from + len - at) as usize).min(ZERO_WRITE);
        let mut buf = file.alloc_dma_buffer(chunk);
        buf.as_bytes_mut().fill(0);
        let done = file.write_at(buf, at).await.map_err(to_io)?;
        if done < chunk {
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                format!("short write of zeroes ({done} of {chunk} bytes)"),
            ));
        }
        at += chunk as u64;
    }
    Ok(at)
}

/// Reads a whole slice file with sequential DMA reads of `read_size` (a power of two).
pub async fn read_slice(path: &Path, read_size: usize) -> io::Result<Vec<u8>> {
    let file = OpenOptions::new()
        .read(true)
        .dma_open(path)
        .await
        .map_err(to_io)?;
    let mut reader = DmaStreamReaderBuilder::new(file)
        .with_buffer_size(read_size)
        .with_read_ahead(4)
        .build();
    let mut out = Vec::new();
    reader.read_to_end(&mut out).await?;
    let _ = reader.close().await;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::copy_joined;

    #[test]
    fn joined_copies_match_the_concatenation() {
        let (first, second) = (b"abcdef".as_slice(), b"0123456789".as_slice());
        let whole: Vec<u8> = [first, second].concat();
        for from in 0..=whole.len() {
            for len in 0..=whole.len() - from {
                let mut out = vec![0u8; len];
                copy_joined(first, second, from, &mut out);
                assert_eq!(out, &whole[from..from + len], "from {from} len {len}");
            }
        }
        let mut out = [0u8; 3];
        copy_joined(b"", b"xyz", 0, &mut out);
        assert_eq!(&out, b"xyz");
    }
}
