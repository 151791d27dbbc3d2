//! Slice files written through the page cache, for a store that does not sync (`file_sync`
//! off). A write is one `pwrite`: once it returns the records survive the process (not the
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
    /// Bytes written.
    written: u64,
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
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.written
    }

    /// Appends already framed records. A failed write (a full disk may take part of it) is an
    /// error; the caller abandons the slice, which cuts off what part of it landed.
    pub fn write(&mut self, records: &[u8]) -> io::Result<()> {
        self.file.write_all_at(records, self.written).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "writing {} bytes to {}: {e}",
                    records.len(),
                    self.path.display()
                ),
            )
        })?;
        self.written += records.len() as u64;
        Ok(())
    }

    /// Gives the file up after a failed write: it is cut back to `keep` bytes (what earlier
    /// writes wrote) and closed.
    pub fn abandon(self, keep: u64) -> io::Result<()> {
        self.file.set_len(keep)
    }

    /// Closes the file.
    pub fn close(self) -> io::Result<()> {
        Ok(())
    }
}
