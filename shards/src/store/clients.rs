//! The file store's client registry, `clients.dat`: an append log of client additions and
//! removals, so that clients (and the connection IDs their publishes carry) survive a restart.
//! Each record: body length (u32 LE), CRC-32C of the body (u32 LE), body = kind (1 add,
//! 2 remove), then client ID, heartbeat inbox and connection ID, each as u16 LE length + bytes
//! (a removal carries the ID only). At start-up the log is replayed and written back compacted.

use bytes::Bytes;
use glommio::io::{BufferedFile, OpenOptions};
use std::cell::Cell;
use std::io::{self, Write};
use std::path::Path;
use thiserror::Error;

const ADD: u8 = 1;
const REMOVE: u8 = 2;
const HEADER: usize = 8;

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

fn put_field(out: &mut Vec<u8>, field: &[u8]) {
    // Client IDs, inboxes and connection IDs are far below 64 KiB (the server checks IDs);
    // a longer field is cut rather than written unreadable.
    let len = field.len().min(u16::MAX as usize);
    out.extend_from_slice(&(len as u16).to_le_bytes());
    out.extend_from_slice(&field[..len]);
}

fn frame(out: &mut Vec<u8>, body: &[u8]) {
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(body).to_le_bytes());
    out.extend_from_slice(body);
}

pub fn encode_add(out: &mut Vec<u8>, c: &StoredClient) {
    let mut body = vec![ADD];
    put_field(&mut body, c.id.as_bytes());
    put_field(&mut body, c.hb_inbox.as_bytes());
    put_field(&mut body, &c.conn_id);
    frame(out, &body);
}

pub fn encode_remove(out: &mut Vec<u8>, id: &str) {
    let mut body = vec![REMOVE];
    put_field(&mut body, id.as_bytes());
    frame(out, &body);
}

fn field<'a>(body: &'a [u8], at: &mut usize) -> Option<&'a [u8]> {
    let len = u16::from_le_bytes([*body.get(*at)?, *body.get(*at + 1)?]) as usize;
    let f = body.get(*at + 2..*at + 2 + len)?;
    *at += 2 + len;
    Some(f)
}

/// The clients registered at the end of the log, in registration order. A torn last record
/// (cut short, or zeroes) ends the log; a bad record before the end is an error.
pub fn replay(buf: &[u8]) -> Result<Vec<StoredClient>, ClientLogError> {
    let mut clients: Vec<StoredClient> = Vec::new();
    let mut at = 0;
    while at + HEADER <= buf.len() {
        let len = u32::from_le_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]) as usize;
        let crc = u32::from_le_bytes([buf[at + 4], buf[at + 5], buf[at + 6], buf[at + 7]]);
        if len == 0 && crc == 0 {
            break;
        }
        let Some(body) = buf.get(at + HEADER..at + HEADER + len) else {
            break;
        };
        let last = at + HEADER + len == buf.len();
        if crc32c::crc32c(body) != crc {
            if last {
                break;
            }
            return Err(ClientLogError::Corrupt(at));
        }
        let mut pos = 1;
        let parsed = match body.first() {
            Some(&ADD) => (|| {
                let id = String::from_utf8(field(body, &mut pos)?.to_vec()).ok()?;
                let hb = String::from_utf8(field(body, &mut pos)?.to_vec()).ok()?;
                let conn = Bytes::copy_from_slice(field(body, &mut pos)?);
                clients.retain(|c| c.id != id);
                clients.push(StoredClient {
                    id,
                    hb_inbox: hb,
                    conn_id: conn,
                });
                Some(())
            })(),
            Some(&REMOVE) => field(body, &mut pos)
                .and_then(|id| std::str::from_utf8(id).ok())
                .map(|id| clients.retain(|c| c.id != id)),
            _ => None,
        };
        if parsed.is_none() {
            return Err(ClientLogError::Corrupt(at));
        }
        at += HEADER + len;
    }
    Ok(clients)
}

/// `clients.dat` of a store directory (empty when there is none yet).
pub fn read(root: &Path) -> io::Result<Vec<StoredClient>> {
    let path = root.join(FILE_NAME);
    let buf = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    replay(&buf).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

pub const FILE_NAME: &str = "clients.dat";

/// The open log, on the shard that owns the client registry.
pub struct ClientLog {
    file: BufferedFile,
    end: Cell<u64>,
    sync: bool,
}

impl ClientLog {
    /// Replays `clients.dat`, writes it back holding only the registered clients (written to
    /// a new file, synced, renamed over the old one), and opens it for appending.
    pub async fn open(root: &Path, sync: bool) -> io::Result<(ClientLog, Vec<StoredClient>)> {
        let clients = read(root)?;
        let mut compacted = Vec::new();
        for c in &clients {
            encode_add(&mut compacted, c);
        }
        let path = root.join(FILE_NAME);
        let tmp = root.join(format!("{FILE_NAME}.tmp"));
        {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&compacted)?;
            f.sync_data()?;
        }
        std::fs::rename(&tmp, &path)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .buffered_open(&path)
            .await
            .map_err(|e| io::Error::other(e.to_string()))?;
        Ok((
            ClientLog {
                file,
                end: Cell::new(compacted.len() as u64),
                sync,
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
        let at = self.end.get();
        let len = records.len();
        self.end.set(at + len as u64);
        let written = self
            .file
            .write_at(records, at)
            .await
            .map_err(|e| io::Error::other(e.to_string()));
        let failed = match written {
            Ok(n) if n == len => None,
            Ok(n) => Some(io::Error::new(
                io::ErrorKind::StorageFull,
                format!("short write to {FILE_NAME} ({n} of {len} bytes)"),
            )),
            Err(e) => Some(e),
        };
        if let Some(e) = failed {
            // The next record goes where this one failed, unless another append already went
            // past it; a hole would end the log early at replay.
            if self.end.get() == at + len as u64 {
                self.end.set(at);
            }
            return Err(e);
        }
        if self.sync {
            self.file
                .fdatasync()
                .await
                .map_err(|e| io::Error::other(e.to_string()))?;
        }
        Ok(())
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
