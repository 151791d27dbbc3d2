//! Slice files written through the page cache, for a store that does not sync (`file_sync`
//! off). A commit is one `pwrite`: once it returns the records survive the process (not the
//! machine), which is all an unsynced store promises, and it costs a copy instead of a device
//! round trip (DMA submission, interrupt, completion and the wake-up waiting for it) per
//! commit. Reads stay DMA: the kernel writes dirty pages of a range back before an O_DIRECT
//! read of it, so they see every committed record.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Appends records to one slice file through the page cache.
pub(super) struct CachedSlice {
    file: File,
    path: PathBuf,
    /// Bytes committed.
    written: u64,
    /// Records appended since the last commit.
    pending: Vec<u8>,
}

impl CachedSlice {
    /// Creates (or truncates) a slice file.
    pub fn create(path: &Path) -> io::Result<CachedSlice> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        Ok(CachedSlice {
            file,
            path: path.to_path_buf(),
            written: 0,
            pending: Vec::new(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes appended so far.
    pub fn len(&self) -> u64 {
        self.written + self.pending.len() as u64
    }

    /// Appends already framed records (written at the next commit).
    pub fn append(&mut self, records: &[u8]) -> io::Result<()> {
        self.pending.extend_from_slice(records);
        Ok(())
    }

    /// Writes everything appended. A failed write (a full disk may take part of it) is an
    /// error; the caller abandons the slice, which cuts off what part of it landed.
    pub fn commit(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        self.file
            .write_all_at(&self.pending, self.written)
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!(
                        "writing {} bytes to {}: {e}",
                        self.pending.len(),
                        self.path.display()
                    ),
                )
            })?;
        self.written += self.pending.len() as u64;
        self.pending.clear();
        Ok(())
    }

    /// Gives the file up after a failed commit: it is cut back to `keep` bytes (what earlier
    /// commits wrote) and closed.
    pub fn abandon(self, keep: u64) -> io::Result<()> {
        self.file.set_len(keep)
    }

    /// Commits what is left and closes the file.
    pub fn close(mut self) -> io::Result<()> {
        self.commit()
    }
}
