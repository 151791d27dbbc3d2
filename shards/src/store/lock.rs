//! The store directory's lock: one server uses a directory at a time. An open-file-description
//! write lock (`F_OFD_SETLK`, whole file) on `<dir>/.rootdir.lck`, the reference's lock file:
//! the kernel drops it when the holder dies (a kill -9 frees it at once, a stopped process keeps
//! it), NFS and EFS honour it like a POSIX lock, and unlike a classic POSIX lock it is not lost
//! when some other descriptor of the file is closed in this process. The file says who holds
//! it, so that a refused server can name the holder.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use thiserror::Error;

pub const LOCK_FILE: &str = ".rootdir.lck";

#[derive(Debug, Error)]
pub enum LockError {
    #[error("cannot open the store lock {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("cannot lock {path}: {source}")]
    Lock { path: PathBuf, source: io::Error },
}

/// The held lock; dropping it (or the process ending) releases it.
#[derive(Debug)]
pub struct StoreLock {
    file: File,
    path: PathBuf,
}

/// What trying the lock gave.
#[derive(Debug)]
pub enum Attempt {
    Held(StoreLock),
    /// Another process holds it; what its lock file says about it, if anything.
    Busy {
        holder: String,
    },
}

impl StoreLock {
    /// Tries the lock once without waiting (the directory is created if missing). `me` is
    /// written into the lock file once held (who holds it, for a refused server's message).
    pub fn try_acquire(dir: &Path, me: &str) -> Result<Attempt, LockError> {
        let path = dir.join(LOCK_FILE);
        let open_err = |source| LockError::Open {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(open_err)?;
        // Not truncated on open: until the lock is ours the holder's words stay readable.
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(open_err)?;
        match set_lock(&file, libc::F_WRLCK as libc::c_short) {
            Ok(()) => {}
            Err(e) if is_busy(&e) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                return Ok(Attempt::Busy {
                    holder: holder.trim().to_string(),
                });
            }
            Err(source) => return Err(LockError::Lock { path, source }),
        }
        // Who holds it is advice for people; failing to write it does not give the lock up.
        let _ = file
            .set_len(0)
            .and_then(|_| file.seek(SeekFrom::Start(0)))
            .and_then(|_| file.write_all(format!("{me}\n").as_bytes()));
        Ok(Attempt::Held(StoreLock { file, path }))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether this process still holds the lock on the file at its path: the file was not
    /// removed or replaced (another server could then lock the new one), and no one else holds
    /// a lock on it (a network file system that dropped ours, for instance).
    pub fn still_held(&self) -> bool {
        let ours = match self.file.metadata() {
            Ok(m) => (m.dev(), m.ino()),
            Err(_) => return false,
        };
        match std::fs::metadata(&self.path) {
            Ok(m) if (m.dev(), m.ino()) == ours => {}
            _ => return false,
        }
        matches!(conflicting_lock(&self.file), Ok(false))
    }
}

fn flock_for(kind: libc::c_short) -> libc::flock {
    // SAFETY: flock is plain data; zero is a valid value of every field.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = 0;
    fl.l_len = 0; // the whole file, however long
    fl
}

fn set_lock(file: &File, kind: libc::c_short) -> io::Result<()> {
    let mut fl = flock_for(kind);
    // SAFETY: F_OFD_SETLK reads the flock struct we pass; the descriptor is open.
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &mut fl) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Whether some other open file description holds a lock that conflicts with a write lock.
fn conflicting_lock(file: &File) -> io::Result<bool> {
    let mut fl = flock_for(libc::F_WRLCK as libc::c_short);
    // SAFETY: F_OFD_GETLK reads and writes the flock struct we pass; the descriptor is open.
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_GETLK, &mut fl) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fl.l_type != libc::F_UNLCK as libc::c_short)
}

/// The errors that mean "someone else holds it" rather than "locking does not work here".
fn is_busy(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EAGAIN | libc::EACCES | libc::EINTR | libc::ENOLCK)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("stanza-lock-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn one_holder_at_a_time_and_the_holder_is_named() {
        let dir = temp_dir("one");
        let Ok(Attempt::Held(first)) = StoreLock::try_acquire(&dir, "pid 1") else {
            panic!("the first attempt holds the lock");
        };
        // A second open file description conflicts even within one process.
        match StoreLock::try_acquire(&dir, "pid 2") {
            Ok(Attempt::Busy { holder }) => assert_eq!(holder, "pid 1"),
            other => panic!("{other:?}"),
        }
        assert!(first.still_held());
        drop(first);
        let Ok(Attempt::Held(second)) = StoreLock::try_acquire(&dir, "pid 2") else {
            panic!("released with its holder");
        };
        assert!(second.still_held());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_removed_lock_file_is_a_lost_lock() {
        let dir = temp_dir("removed");
        let Ok(Attempt::Held(lock)) = StoreLock::try_acquire(&dir, "me") else {
            panic!("held");
        };
        std::fs::remove_file(dir.join(LOCK_FILE)).expect("remove");
        assert!(!lock.still_held());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
