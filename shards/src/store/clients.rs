//! The file store's client registry, `clients.dat`: an append log of client additions and
//! removals, so that clients (and the connection IDs their publishes carry) survive a restart.
//! Each record: body length (u32 LE), CRC-32C of the body (u32 LE), body = kind (1 add,
//! 2 remove), then client ID, heartbeat inbox and connection ID, each as u16 LE length + bytes
//! (a removal carries the ID only). At start-up the log is replayed and written back compacted.

use super::journal::{self, put_str, AppendFile, Fields};
use bytes::Bytes;
use std::io;
use std::path::Path;
use thiserror::Error;

const ADD: u8 = 1;
const REMOVE: u8 = 2;
#[cfg(test)]
const HEADER: usize = journal::HEADER;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredClient {
    pub id: String,
    pub hb_inbox: String,
    pub conn_id: Bytes,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ClientLogError {
    #[error("clients.dat: corrupt record at offset {0}")]
    Corrupt(usize),
}

pub fn encode_add(out: &mut Vec<u8>, c: &StoredClient) {
    let mut body = vec![ADD];
    put_str(&mut body, c.id.as_bytes());
    put_str(&mut body, c.hb_inbox.as_bytes());
    put_str(&mut body, &c.conn_id);
    journal::frame(out, &body);
}

pub fn encode_remove(out: &mut Vec<u8>, id: &str) {
    let mut body = vec![REMOVE];
    put_str(&mut body, id.as_bytes());
    journal::frame(out, &body);
}

/// The clients registered at the end of the log, in registration order. A torn last record
/// (cut short, or zeroes) ends the log; a bad record before the end is an error.
pub fn replay(buf: &[u8]) -> Result<Vec<StoredClient>, ClientLogError> {
    replay_with(buf, false).map(|r| r.clients)
}

/// What a replay of `clients.dat` found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Replayed {
    pub clients: Vec<StoredClient>,
    /// Bad records stepped over (only when asked to skip them).
    pub skipped: Vec<journal::Skipped>,
    /// Where the log ends: what follows is a torn tail or zeroes.
    pub end: usize,
}

/// As [`replay`]; with `skip_bad` (`--file_truncate_bad_eof`) a bad record is stepped over
/// and reported instead of refusing the log.
pub fn replay_with(buf: &[u8], skip_bad: bool) -> Result<Replayed, ClientLogError> {
    let mut clients: Vec<StoredClient> = Vec::new();
    let (end, skipped) = journal::replay_with(buf, skip_bad, |body| {
        let mut f = Fields::new(body);
        match f.u8()? {
            ADD => {
                let id = f.string()?;
                let hb_inbox = f.string()?;
                let conn_id = Bytes::copy_from_slice(f.bytes()?);
                clients.retain(|c| c.id != id);
                clients.push(StoredClient {
                    id,
                    hb_inbox,
                    conn_id,
                });
            }
            REMOVE => {
                let id = f.string()?;
                clients.retain(|c| c.id != id);
            }
            _ => return None,
        }
        Some(())
    })
    .map_err(|e| ClientLogError::Corrupt(e.0))?;
    Ok(Replayed {
        clients,
        skipped,
        end,
    })
}

/// `clients.dat` of a store directory (empty when there is none yet). With `log_drops`, every
/// record dropped is logged with the file, offset and length: bad ones stepped over (with
/// `skip_bad`) and a torn last record (one reader logs them, not every core).
pub fn read(root: &Path, skip_bad: bool, log_drops: bool) -> io::Result<Vec<StoredClient>> {
    let path = root.join(FILE_NAME);
    let buf = journal::read_file(&path)?;
    let replayed = replay_with(&buf, skip_bad).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{e} (--file_truncate_bad_eof skips it, losing that record)"),
        )
    })?;
    if !log_drops {
        return Ok(replayed.clients);
    }
    for s in &replayed.skipped {
        log::error!(
            "STAN: {}: dropped a corrupt record at offset {} ({} bytes)",
            path.display(),
            s.offset,
            s.len
        );
    }
    journal::log_torn_tail(&path, &buf, replayed.end);
    Ok(replayed.clients)
}

pub const FILE_NAME: &str = "clients.dat";

fn compacted(clients: &[StoredClient]) -> Vec<u8> {
    let mut out = Vec::new();
    for c in clients {
        encode_add(&mut out, c);
    }
    out
}

/// The open log, on the shard that owns the client registry.
pub struct ClientLog {
    file: std::cell::RefCell<std::rc::Rc<AppendFile>>,
    root: std::path::PathBuf,
    sync: bool,
    /// Records in the file, and when it was last compacted (for the compaction rule).
    records: std::cell::Cell<u64>,
    compacted_at: std::cell::Cell<std::time::Instant>,
    /// One writer at a time: a record appended to a file being replaced would be lost.
    busy: glommio::sync::Semaphore,
}

impl ClientLog {
    /// Replays `clients.dat`, writes it back holding only the registered clients (written to
    /// a new file, synced, renamed over the old one), and opens it for appending.
    pub async fn open(
        root: &Path,
        sync: bool,
        skip_bad: bool,
    ) -> io::Result<(ClientLog, Vec<StoredClient>)> {
        let clients = read(root, skip_bad, true)?;
        let file = AppendFile::rewrite(&root.join(FILE_NAME), &compacted(&clients), sync).await?;
        Ok((
            ClientLog {
                file: std::cell::RefCell::new(std::rc::Rc::new(file)),
                root: root.to_path_buf(),
                sync,
                records: std::cell::Cell::new(clients.len() as u64),
                compacted_at: std::cell::Cell::new(std::time::Instant::now()),
                busy: glommio::sync::Semaphore::new(1),
            },
            clients,
        ))
    }

    /// Records a registered client (synced when the store syncs).
    pub async fn add(&self, client: &StoredClient) -> io::Result<()> {
        let mut record = Vec::new();
        encode_add(&mut record, client);
        self.append(record).await
    }

    /// Records a client's removal.
    pub async fn remove(&self, id: &str) -> io::Result<()> {
        let mut record = Vec::new();
        encode_remove(&mut record, id);
        self.append(record).await
    }

    async fn append(&self, records: Vec<u8>) -> io::Result<()> {
        let _turn = self
            .busy
            .acquire_permit(1)
            .await
            .map_err(|e| io::Error::other(e.to_string()))?;
        let file = self.file.borrow().clone();
        file.append(records).await?;
        self.records.set(self.records.get() + 1);
        Ok(())
    }

    /// After a removal: rewrites the log with only the `registered()` clients when the
    /// compaction rule says so and `policy.interval` passed since the last time. `registered`
    /// is asked once no append is in progress, so the new file misses no record.
    pub async fn compact_if_due(
        &self,
        policy: &journal::CompactPolicy,
        registered: impl FnOnce() -> Vec<StoredClient>,
    ) -> io::Result<bool> {
        let _turn = self
            .busy
            .acquire_permit(1)
            .await
            .map_err(|e| io::Error::other(e.to_string()))?;
        let registered = registered();
        let size = self.file.borrow().len();
        let due =
            journal::needs_compaction(policy, size, self.records.get(), registered.len() as u64)
                && self.compacted_at.get().elapsed() >= policy.interval;
        if !due {
            return Ok(false);
        }
        let file = AppendFile::rewrite(
            &self.root.join(FILE_NAME),
            &compacted(&registered),
            self.sync,
        )
        .await?;
        let old = std::mem::replace(&mut *self.file.borrow_mut(), std::rc::Rc::new(file));
        if let Ok(old) = std::rc::Rc::try_unwrap(old) {
            let _ = old.close().await;
        }
        self.records.set(registered.len() as u64);
        self.compacted_at.set(std::time::Instant::now());
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn client(id: &str) -> StoredClient {
        StoredClient {
            id: id.into(),
            hb_inbox: format!("_INBOX.{id}"),
            conn_id: Bytes::from(format!("conn-{id}")),
        }
    }

    #[test]
    fn adds_removes_and_replacements() {
        let mut log = Vec::new();
        encode_add(&mut log, &client("a"));
        encode_add(&mut log, &client("b"));
        encode_remove(&mut log, "a");
        let mut b2 = client("b");
        b2.conn_id = Bytes::from_static(b"second");
        encode_add(&mut log, &b2);
        encode_add(&mut log, &client("c"));
        assert_eq!(replay(&log), Ok(vec![b2, client("c")]));
    }

    /// Issue 21.1: a heartbeat inbox of 70,000 bytes of two-byte characters is stored whole
    /// and read back; it was cut at 65,535 bytes, inside a character, and the log refused.
    #[test]
    fn long_multibyte_fields_survive() {
        let mut c = client("long");
        c.hb_inbox = format!("_INBOX.{}", "é".repeat(35_000));
        let mut log = Vec::new();
        encode_add(&mut log, &c);
        encode_add(&mut log, &client("next"));
        assert_eq!(replay(&log), Ok(vec![c, client("next")]));
    }

    #[test]
    fn torn_tail_ends_the_log_and_corruption_before_it_is_an_error() {
        let mut log = Vec::new();
        encode_add(&mut log, &client("a"));
        let first = log.len();
        encode_add(&mut log, &client("b"));
        assert_eq!(replay(&log[..log.len() - 3]), Ok(vec![client("a")]));
        let mut padded = log.clone();
        padded.extend_from_slice(&[0; 100]);
        assert_eq!(replay(&padded).map(|c| c.len()), Ok(2));
        let mut flipped = log.clone();
        flipped[HEADER + 3] ^= 0xff;
        assert_eq!(replay(&flipped), Err(ClientLogError::Corrupt(0)));
        let mut last_flipped = log.clone();
        last_flipped[first + HEADER + 3] ^= 0xff;
        assert_eq!(
            replay(&last_flipped),
            Ok(vec![client("a")]),
            "a torn last record"
        );
    }

    proptest! {
        #[test]
        fn replay_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = replay(&bytes);
        }

        #[test]
        fn replay_matches_a_model(ops in proptest::collection::vec((0u8..4, any::<bool>()), 0..40)) {
            let mut log = Vec::new();
            let mut model: Vec<StoredClient> = Vec::new();
            for (id, add) in ops {
                let c = client(&id.to_string());
                if add {
                    encode_add(&mut log, &c);
                    model.retain(|m| m.id != c.id);
                    model.push(c);
                } else {
                    encode_remove(&mut log, &c.id);
                    model.retain(|m| m.id != c.id);
                }
            }
            prop_assert_eq!(replay(&log), Ok(model));
        }
    }
}
