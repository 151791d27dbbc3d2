//! The file store's layout and I/O for one shard: `<dir>/server.dat` (format version and
//! cluster ID), `<dir>/channels/<encoded name>/slice.<first seq>.dat`. Channel directories do
//! not depend on the shard count, so any number of cores finds every channel at start-up.
//! Each process start opens a new slice per channel; older slices are only read.

use super::file_log::ReadPlan;
use super::index::{self, SliceIndex};
use super::journal::{self, AppendFile, CompactPolicy};
use super::record::{scan, ScanEnd};
use super::slice::{read_size_for, read_slice, warm_up, SliceWriter};
use super::subs::{self, RecoveredSub};
use crate::ack_key::KEY_LEN;
use bytes::Bytes;
use fxhash::FxHashMap;
use glommio::io::{DmaFile, OpenOptions};
use std::cell::RefCell;
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

mod transfer;
pub use transfer::StoredRecords;

pub const FORMAT_VERSION: u32 = 1;

/// A channel name as a directory name: bytes outside `[A-Za-z0-9._-]` as `%XX`.
pub fn channel_dir_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub fn channel_name_from_dir(dir: &str) -> Option<String> {
    let bytes = dir.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// What `server.dat` holds besides the cluster ID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerFile {
    /// The ack key material (ack_key.rs).
    pub ack_key: [u8; KEY_LEN],
    /// Clustered: this node's name, stored at its first clustered start; it wins over the
    /// configured one at every later start (the reference keeps it in `ServerInfo.NodeID`).
    pub node_id: Option<String>,
    /// The file was there: the store holds state from an earlier start.
    pub recovered: bool,
}

/// The reference's refusal of a store written by a standalone server, started clustered.
pub const NOT_PREVIOUSLY_CLUSTERED: &str =
    "stan: cannot restart server in clustered mode if it was not previously clustered";

/// Checks (or creates) `server.dat`: a directory written for another cluster ID is refused,
/// with the reference's text. Returns the ack key material kept there (ack_key.rs), made and
/// written on first use (a store from before it gets one, and its old ack inboxes stop
/// acking: their messages are redelivered, as after any lost ack).
pub fn check_server_file(root: &Path, cluster_id: &str) -> Result<[u8; KEY_LEN], String> {
    open_server_file(root, cluster_id, None).map(|f| f.ack_key)
}

/// `check_server_file`, and for a clustered start (`node_id`: the configured or drawn name)
/// the node's name: the stored one if there is one; else, on a new store, `node_id`, written
/// down; a store with state from a standalone server is refused (the reference's text).
pub fn open_server_file(
    root: &Path,
    cluster_id: &str,
    node_id: Option<&str>,
) -> Result<ServerFile, String> {
    std::fs::create_dir_all(root.join("channels"))
        .map_err(|e| format!("cannot create the store directory {}: {e}", root.display()))?;
    let path = root.join("server.dat");
    let mut key = None;
    let mut stored_node = None;
    let recovered = match std::fs::read_to_string(&path) {
        Ok(text) => {
            let mut version = None;
            let mut stored = None;
            for line in text.lines() {
                match line.split_once('=') {
                    Some(("format", v)) => version = v.trim().parse::<u32>().ok(),
                    Some(("cluster_id", v)) => stored = Some(v.trim().to_string()),
                    Some(("node_id", v)) if !v.trim().is_empty() => {
                        stored_node = Some(v.trim().to_string())
                    }
                    Some(("ack_key", v)) => {
                        key = Some(parse_key(v.trim()).ok_or_else(|| {
                            format!("{}: ack_key is not {KEY_LEN} bytes of hex", path.display())
                        })?)
                    }
                    _ => {}
                }
            }
            match (version, stored) {
                (Some(v), _) if v > FORMAT_VERSION => {
                    return Err(format!(
                        "{}: store format {v} is newer than this stanza ({FORMAT_VERSION})",
                        path.display()
                    ))
                }
                (Some(_), Some(id)) if id == cluster_id => {}
                (Some(_), Some(id)) => {
                    return Err(format!(
                        "cluster ID {cluster_id:?} does not match recovered value of {id:?}"
                    ))
                }
                _ => return Err(format!("{}: not a stanza store file", path.display())),
            }
            true
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => false,
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    if recovered && node_id.is_some() && stored_node.is_none() {
        return Err(NOT_PREVIOUSLY_CLUSTERED.to_string());
    }
    let node = stored_node.or_else(|| node_id.map(str::to_string));
    if let (Some(key), true) = (key, recovered) {
        return Ok(ServerFile {
            ack_key: key,
            node_id: node,
            recovered,
        });
    }
    let key = match key {
        Some(key) => key,
        None => crate::ack_key::random_material()
            .map_err(|_| "no random bytes from the operating system".to_string())?,
    };
    write_server_file(root, cluster_id, &key, node.as_deref())?;
    Ok(ServerFile {
        ack_key: key,
        node_id: node,
        recovered,
    })
}

/// Writes `server.dat` whole (a new file synced, then renamed over the old one). A cluster
/// rewrites it when its replicated ack key arrives.
pub fn write_server_file(
    root: &Path,
    cluster_id: &str,
    key: &[u8; KEY_LEN],
    node_id: Option<&str>,
) -> Result<(), String> {
    let path = root.join("server.dat");
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    let node_line = node_id
        .map(|n| format!("node_id={n}\n"))
        .unwrap_or_default();
    let tmp = root.join("server.dat.tmp");
    std::fs::write(
        &tmp,
        format!("format={FORMAT_VERSION}\ncluster_id={cluster_id}\nack_key={hex}\n{node_line}"),
    )
    .and_then(|_| std::fs::File::open(&tmp)?.sync_all())
    .and_then(|_| std::fs::rename(&tmp, &path))
    .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

fn parse_key(hex: &str) -> Option<[u8; KEY_LEN]> {
    if hex.len() != 2 * KEY_LEN {
        return None;
    }
    let mut key = [0u8; KEY_LEN];
    for (i, byte) in key.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(key)
}

/// Records recovery dropped from a slice: where, how many bytes, how many messages, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dropped {
    pub path: PathBuf,
    pub offset: u64,
    pub bytes: u64,
    pub messages: u64,
    pub why: &'static str,
}

/// A channel read back from disk: its name and its records in order.
pub struct Recovered {
    pub name: String,
    /// Where each kept message is (the slices' indexes), oldest slice first.
    pub slices: Vec<SliceIndex>,
    /// What recovery dropped from slices (torn tails, corruption accepted with
    /// `--file_truncate_bad_eof`, records an index listed that its slice no longer holds), for
    /// the log.
    pub truncated: Vec<Dropped>,
    /// The channel's subscriptions from `subs.dat`, and what `open_subs` needs of that file.
    pub subs: Vec<RecoveredSub>,
    pub subs_log: SubsLogEnd,
}

/// Where a channel's `subs.dat` ends (a torn tail is cut there) and how many records it holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SubsLogEnd {
    pub end: u64,
    pub records: u64,
}

/// A channel's open `subs.dat`.
struct SubsLog {
    file: AppendFile,
    records: u64,
    compacted_at: Instant,
    /// Records it held when opened or last rewritten: judged from the log alone, it is due
    /// for compaction once it holds twice as many (`subs_log_compaction_due`).
    records_at_compaction: u64,
}

fn slice_number(file_name: &str) -> Option<u64> {
    file_name
        .strip_prefix("slice.")?
        .strip_suffix(".dat")?
        .parse()
        .ok()
}

/// When a channel's write slice is closed and a new one started (0 / zero: no limit), and what
/// happens to slices whose messages are all gone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SliceLimits {
    pub max_bytes: u64,
    pub max_msgs: u64,
    pub max_age: Duration,
    /// Run as `script <channel> <slice>.bak <index>.bak` for each slice dropped by the channel
    /// limits, after renaming both `*.bak`; the script is expected to delete them.
    pub archive_script: Option<PathBuf>,
}

impl SliceLimits {
    /// Whether no slice limit is set (the channel's limits then give automatic ones).
    pub fn is_unset(&self) -> bool {
        self.max_bytes == 0 && self.max_msgs == 0 && self.max_age.is_zero()
    }

    /// The reference's automatic slice limits: a quarter of the channel's max_msgs, max_bytes
    /// and max_age (the age at least 1 s); none where the channel has none.
    pub fn auto_for(&self, max_msgs: u64, max_bytes: u64, max_age: Duration) -> SliceLimits {
        let age = if max_age.is_zero() {
            Duration::ZERO
        } else {
            (max_age / 4).max(Duration::from_secs(1))
        };
        SliceLimits {
            max_bytes: max_bytes / 4,
            max_msgs: max_msgs / 4,
            max_age: age,
            archive_script: self.archive_script.clone(),
        }
    }
}

/// One channel's records of a turn, framed (store::record), as the shard made them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChannelBatch {
    pub channel: String,
    pub records: Vec<u8>,
    /// Sequence of the first record (a new slice is named after it).
    pub first_seq: u64,
    /// How many records (slice_max_msgs counts them).
    pub msgs: u64,
    /// Subscription records (store::subs) for `subs.dat`, how many, and whether they must be
    /// synced (a subscription created or removed; sends and acks are not waited for).
    pub subs: Vec<u8>,
    pub sub_records: u64,
    pub subs_sync: bool,
    /// The channel's own slice limits (automatic ones), instead of the store's.
    pub slice_limits: Option<SliceLimits>,
}

/// A slice open for reading, and when it was last used.
type OpenReader = (Rc<DmaFile>, u64);

/// Slices kept open for reading per shard unless file_descriptors_limit says otherwise.
pub const DEFAULT_MAX_READERS: usize = 256;

/// The key of the entry `used` says was used longest ago (the files closed first when too
/// many are open).
fn least_recently_used<K: Clone, V>(open: &FxHashMap<K, V>, used: impl Fn(&V) -> u64) -> Option<K> {
    open.iter()
        .min_by_key(|(_, v)| used(v))
        .map(|(k, _)| k.clone())
}

/// The first sequence a slice file is named after (0 for anything else).
fn first_of(path: &Path) -> u64 {
    path.file_name()
        .and_then(|n| slice_number(&n.to_string_lossy()))
        .unwrap_or(0)
}

/// Where a channel's records of one write went: the slice (its first sequence) and the offset
/// of the first record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Landed {
    /// The records written: `msgs` from `first_seq` on.
    pub first_seq: u64,
    pub msgs: u64,
    pub slice: u64,
    pub offset: u64,
}

/// What a write did: per channel, where its records went, or why they could not be written.
#[derive(Debug, Default)]
pub struct WriteOutcome {
    pub landed: Vec<(String, Landed)>,
    pub failed: Vec<(String, io::Error)>,
    /// Channels whose subscription records could not be written (the subscriptions those
    /// records created or resumed are refused, `Shard::subscriptions_not_stored`).
    pub subs_failed: Vec<(String, io::Error)>,
}

/// The index entries of framed records appended at `offset`.
fn index_entries(records: &[u8], offset: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(records.len() / 8);
    let mut at = 0;
    while let Some(h) = super::record::header_at(records, at) {
        index::encode_entry(&mut out, h.seq, offset + at as u64, h.timestamp);
        at += super::record::HEADER_LEN + h.body_len as usize;
    }
    out
}

/// The slice a channel appends to.
struct OpenSlice {
    writer: SliceWriter,
    /// The slice's index file (appended after each write, not synced: recovery completes a
    /// short index from the slice).
    index: AppendFile,
    first_seq: u64,
    msgs: u64,
    opened: Instant,
    /// When it was last written (`FileStore::writes` then): the least recently written is
    /// closed first when too many are open.
    last_write: u64,
}

/// Index entries hold 32-bit offsets: a slice is closed before it reaches 4 GiB, whatever
/// the limits.
const MAX_SLICE_BYTES: u64 = (u32::MAX as u64) - (256 << 20);

impl OpenSlice {
    fn is_full(&self, limits: &SliceLimits) -> bool {
        self.writer.len() >= MAX_SLICE_BYTES
            || (limits.max_bytes > 0 && self.writer.len() >= limits.max_bytes)
            || (limits.max_msgs > 0 && self.msgs >= limits.max_msgs)
            || (!limits.max_age.is_zero() && self.opened.elapsed() >= limits.max_age)
    }
}

pub struct FileStore {
    root: PathBuf,
    buffer_size: usize,
    read_size: usize,
    writers: RefCell<FxHashMap<String, OpenSlice>>,
    /// Every slice of every channel of this shard: (first sequence, path), in order.
    slices: RefCell<FxHashMap<String, Vec<(u64, PathBuf)>>>,
    slice_limits: SliceLimits,
    sub_logs: RefCell<FxHashMap<String, SubsLog>>,
    compact: CompactPolicy,
    sync: bool,
    /// Slices open for reading back, by (channel, slice first sequence), with when each was
    /// last used: at most `max_readers` stay open (file_descriptors_limit).
    readers: RefCell<FxHashMap<(String, u64), OpenReader>>,
    reads: std::cell::Cell<u64>,
    max_readers: usize,
    /// At most this many channels keep their write slice (and its index) open: two file
    /// descriptors each. Past it, the least recently written is closed as if full and that
    /// channel's next records start a new slice (file_descriptors_limit).
    max_writers: usize,
    /// Writes so far (the clock of `OpenSlice::last_write`).
    writes: std::cell::Cell<u64>,
    zero_ahead: std::cell::Cell<bool>,
}

impl FileStore {
    /// Opens the store for one shard (warming up DMA on its device first).
    pub async fn open(
        root: &Path,
        buffer_size: usize,
        slice_limits: SliceLimits,
        compact: CompactPolicy,
        sync: bool,
    ) -> io::Result<FileStore> {
        // A full disk must not keep the server from starting and serving what it stored.
        if let Err(e) = warm_up(root).await {
            log::warn!("DMA warm-up in {} failed: {e}", root.display());
        }
        let read_size = read_size_for(root);
        // Every core opens the store; one line says what they all read with.
        static LOGGED: std::sync::Once = std::sync::Once::new();
        LOGGED.call_once(|| {
            log::info!(
                "STAN: DMA reads capped at {} KiB (the data device's single-request limit, at most 128 KiB)",
                read_size >> 10
            )
        });
        Ok(FileStore {
            root: root.to_path_buf(),
            buffer_size,
            read_size,
            writers: RefCell::new(FxHashMap::default()),
            slices: RefCell::new(FxHashMap::default()),
            slice_limits,
            sub_logs: RefCell::new(FxHashMap::default()),
            compact,
            sync,
            readers: RefCell::new(FxHashMap::default()),
            reads: std::cell::Cell::new(0),
            max_readers: DEFAULT_MAX_READERS,
            max_writers: usize::MAX,
            writes: std::cell::Cell::new(0),
            zero_ahead: std::cell::Cell::new(true),
        })
    }

    fn channel_dir(&self, name: &str) -> PathBuf {
        self.root.join("channels").join(channel_dir_name(name))
    }

    /// Reads every channel `owns(name)` selects. A corrupt record (not a torn tail) is an
    /// error naming the file and offset unless `truncate_bad_eof`.
    pub async fn recover(
        &self,
        owns: impl Fn(&str) -> bool,
        truncate_bad_eof: bool,
    ) -> Result<Vec<Recovered>, String> {
        let channels = self.root.join("channels");
        let entries = std::fs::read_dir(&channels)
            .map_err(|e| format!("cannot list {}: {e}", channels.display()))?;
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let dir_name = entry.file_name().to_string_lossy().into_owned();
            let Some(name) = channel_name_from_dir(&dir_name) else {
                continue;
            };
            if !owns(&name) {
                continue;
            }
            let mut slices: Vec<(u64, PathBuf)> = std::fs::read_dir(entry.path())
                .map_err(|e| format!("cannot list {}: {e}", entry.path().display()))?
                .flatten()
                .filter_map(|f| {
                    let n = slice_number(&f.file_name().to_string_lossy())?;
                    Some((n, f.path()))
                })
                .collect();
            slices.sort();
            let subs_path = entry.path().join(subs::FILE_NAME);
            let subs_buf = journal::read_file(&subs_path)
                .map_err(|e| format!("cannot read {}: {e}", subs_path.display()))?;
            let (found_subs, subs_end, subs_records, skipped) =
                subs::replay_with(&subs_buf, truncate_bad_eof).map_err(|e| {
                    format!(
                        "{}: {e} (--file_truncate_bad_eof skips it, losing that record)",
                        subs_path.display()
                    )
                })?;
            for s in &skipped {
                log::error!(
                    "STAN: {}: dropped a corrupt record at offset {} ({} bytes)",
                    subs_path.display(),
                    s.offset,
                    s.len
                );
            }
            journal::log_torn_tail(&subs_path, &subs_buf, subs_end);
            let mut rec = Recovered {
                name,
                slices: Vec::new(),
                truncated: Vec::new(),
                subs: found_subs.into_values().collect(),
                subs_log: SubsLogEnd {
                    end: subs_end as u64,
                    records: subs_records,
                },
            };
            let mut kept = Vec::new();
            for (first_seq, path) in slices {
                match self
                    .recover_slice(&path, first_seq, truncate_bad_eof, &mut rec.truncated)
                    .await?
                {
                    Some(idx) => {
                        rec.slices.push(idx);
                        kept.push((first_seq, path));
                    }
                    None => remove_slice_files(&path),
                }
            }
            self.slices.borrow_mut().insert(rec.name.clone(), kept);
            out.push(rec);
        }
        Ok(out)
    }

    /// One slice at start-up, from its index when the index is whole and agrees with the
    /// slice's last records; otherwise from the slice itself (its index is then written
    /// again). A torn tail is cut off the file. `None` for a slice with no record.
    async fn recover_slice(
        &self,
        path: &Path,
        first_seq: u64,
        truncate_bad_eof: bool,
        truncated: &mut Vec<Dropped>,
    ) -> Result<Option<SliceIndex>, String> {
        let idx_path = path.with_extension("idx");
        let from_index = match std::fs::read(&idx_path) {
            Ok(buf) => {
                let decoded = index::decode(first_seq, &buf);
                if decoded.is_none() && !buf.is_empty() {
                    log::warn!(
                        "STAN: {} is damaged (an entry fails its check) or of an older format: rebuilding it from {}",
                        idx_path.display(),
                        path.display()
                    );
                }
                decoded
            }
            Err(_) => None,
        };
        let mut indexed = 0;
        if let Some(mut idx) = from_index.filter(|i| !i.is_empty()) {
            indexed = idx.len();
            if let Some(end) = check_tail(path, &mut idx, truncated)? {
                if end.added > 0 {
                    rewrite_index(&idx_path, &idx)?;
                }
                return Ok(Some(idx));
            }
            log::warn!(
                "STAN: {} does not match {}: rebuilding it",
                idx_path.display(),
                path.display()
            );
        }
        let data = read_slice(path, self.read_size)
            .await
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let mut corrupt_from = None;
        let (found, end) = match scan(&data) {
            Ok(r) => r,
            Err(e) if truncate_bad_eof => {
                let offset = match e {
                    super::record::ScanError::Corrupt { offset, .. } => offset,
                };
                corrupt_from = Some(offset);
                let found = scan(&data[..offset]).map(|r| r.0).unwrap_or_default();
                (found, ScanEnd::TornTail { offset })
            }
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        let idx = SliceIndex::from_found(first_seq, &found);
        let before = truncated.len();
        settle_end(path, end, 0, data.len() as u64, idx.end, truncated)?;
        if let (Some(offset), Some(d)) = (corrupt_from, truncated.get_mut(before)) {
            // The damaged record and every whole record after it.
            d.messages = 1 + super::record::count_whole_records(&data, offset + 1) as u64;
            d.why = "a damaged record and everything after it (--file_truncate_bad_eof)";
        }
        if indexed > idx.len() {
            let missing = (indexed - idx.len()) as u64;
            let accounted: u64 = truncated[before..].iter().map(|d| d.messages).sum();
            if missing > accounted {
                truncated.push(Dropped {
                    path: path.to_path_buf(),
                    offset: idx.end,
                    bytes: 0,
                    messages: missing - accounted,
                    why: "listed by the slice's index, no longer in the slice",
                });
            }
        }
        if idx.is_empty() {
            return Ok(None);
        }
        rewrite_index(&idx_path, &idx)?;
        Ok(Some(idx))
    }

    /// Appends each channel's records (one write per channel, synced when the store syncs) and
    /// subscription records, and returns the channels whose message write failed, with the
    /// error. A failed channel's slice is cut back to what was on disk before and closed; its
    /// next records start a new slice. A failed subscription write is logged and returned: the
    /// subscriptions its puts created or resumed are then refused; for the others a restart
    /// may redeliver a message.
    pub async fn write(&self, batches: Vec<ChannelBatch>) -> WriteOutcome {
        let mut out = WriteOutcome::default();
        for mut batch in batches {
            if batch.msgs > 0 {
                match self.write_channel(&batch).await {
                    Ok(landed) => out.landed.push((batch.channel.clone(), landed)),
                    Err(e) => out.failed.push((batch.channel.clone(), e)),
                }
            }
            if batch.sub_records > 0 {
                let records = std::mem::take(&mut batch.subs);
                if let Err(e) = self
                    .append_subs(&batch.channel, records, batch.sub_records, batch.subs_sync)
                    .await
                {
                    log::error!(
                        "STAN: cannot store the subscriptions of channel {:?}: {e}",
                        batch.channel
                    );
                    out.subs_failed.push((batch.channel.clone(), e));
                }
            }
        }
        out
    }

    /// Bounds how many slices stay open for reading (from file_descriptors_limit).
    pub fn slice_limits(&self) -> &SliceLimits {
        &self.slice_limits
    }

    /// With sync: whether slices get zeroes written ahead of their records (the default).
    pub fn set_zero_ahead(&self, on: bool) {
        self.zero_ahead.set(on);
    }

    pub fn set_max_readers(&mut self, n: usize) {
        self.max_readers = n.max(1);
    }

    /// Bounds how many channels keep their write slice open (see `max_writers`).
    pub fn set_max_writers(&mut self, n: usize) {
        self.max_writers = n.max(1);
    }

    /// Closes the least recently written open slice when `max_writers` are open, before
    /// another is opened.
    async fn make_room_for_a_writer(&self) {
        let victim = {
            let writers = self.writers.borrow();
            if writers.len() < self.max_writers {
                return;
            }
            least_recently_used(&writers, |o| o.last_write)
        };
        let Some(name) = victim else {
            return;
        };
        let open = self.writers.borrow_mut().remove(&name);
        if let Some(o) = open {
            let _ = o.index.close().await;
            if let Err(e) = o.writer.close().await {
                log::warn!("STAN: closing the slice of channel {name:?}: {e}");
            }
        }
    }

    /// Reads the bytes of a planned read (`plan.start..plan.end` of the slice) with DMA reads
    /// issued together, none crossing a multiple of `read_size`: each then stays within the
    /// device's single-request limit once aligned (on Linux 6.1 a larger DMA read on glommio's
    /// polled ring is retried inside the kernel forever; see slice::read_size_for).
    pub async fn read_block(&self, channel: &str, plan: &ReadPlan) -> io::Result<Bytes> {
        let file = self.reader(channel, plan.slice).await?;
        let total = usize::try_from(plan.end.saturating_sub(plan.start))
            .map_err(|_| io::Error::other("read too large"))?;
        let reads: Vec<_> = read_windows(plan.start, plan.end, self.read_size as u64)
            .map(|(pos, len)| {
                let file = file.clone();
                glommio::spawn_local(async move { (len, file.read_at(pos, len).await) })
            })
            .collect();
        let mut out = bytes::BytesMut::with_capacity(total);
        for read in reads {
            let (len, read) = read.await;
            let read = read.map_err(|e| io::Error::other(e.to_string()))?;
            if read.len() < len {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "{} bytes where {total} were indexed",
                        out.len() + read.len()
                    ),
                ));
            }
            out.extend_from_slice(&read[..len]);
        }
        Ok(out.freeze())
    }

    /// The path of a channel's slice.
    pub fn slice_path(&self, channel: &str, slice: u64) -> PathBuf {
        self.channel_dir(channel).join(format!("slice.{slice}.dat"))
    }

    async fn reader(&self, channel: &str, slice: u64) -> io::Result<Rc<DmaFile>> {
        let stamp = self.reads.get() + 1;
        self.reads.set(stamp);
        let key = (channel.to_string(), slice);
        if let Some((f, used)) = self.readers.borrow_mut().get_mut(&key) {
            *used = stamp;
            return Ok(f.clone());
        }
        let file = OpenOptions::new()
            .read(true)
            .dma_open(self.slice_path(channel, slice))
            .await
            .map_err(|e| io::Error::other(e.to_string()))?;
        let file = Rc::new(file);
        let mut readers = self.readers.borrow_mut();
        while readers.len() >= self.max_readers {
            let Some(oldest) = least_recently_used(&readers, |(_, used)| *used) else {
                break;
            };
            // Closed when the last read using it is done (glommio closes on drop).
            readers.remove(&oldest);
        }
        readers.insert(key, (file.clone(), stamp));
        Ok(file)
    }

    /// Opens a recovered channel's `subs.dat` for appending, first rewriting it as `rewrite`
    /// (a compacted log and its record count) when given.
    pub async fn open_subs(
        &self,
        channel: &str,
        end: SubsLogEnd,
        rewrite: Option<(Vec<u8>, u64)>,
    ) -> io::Result<()> {
        let path = self.channel_dir(channel).join(subs::FILE_NAME);
        let (file, records) = match rewrite {
            Some((contents, records)) => (
                AppendFile::rewrite(&path, &contents, self.sync).await?,
                records,
            ),
            None if end.records == 0 && !path.exists() => return Ok(()),
            None => (
                AppendFile::open_at(&path, end.end, self.sync).await?,
                end.records,
            ),
        };
        self.sub_logs.borrow_mut().insert(
            channel.to_string(),
            SubsLog {
                file,
                records,
                compacted_at: Instant::now(),
                records_at_compaction: records,
            },
        );
        Ok(())
    }

    async fn append_subs(
        &self,
        channel: &str,
        records: Vec<u8>,
        count: u64,
        sync: bool,
    ) -> io::Result<()> {
        let log = self.sub_logs.borrow_mut().remove(channel);
        let mut log = match log {
            Some(l) => l,
            None => {
                let dir = self.channel_dir(channel);
                std::fs::create_dir_all(&dir)?;
                SubsLog {
                    file: AppendFile::open_at(&dir.join(subs::FILE_NAME), 0, self.sync).await?,
                    records: 0,
                    compacted_at: Instant::now(),
                    records_at_compaction: 0,
                }
            }
        };
        let result = log.file.append_with(records, sync).await;
        if result.is_ok() {
            log.records += count;
        }
        self.sub_logs.borrow_mut().insert(channel.to_string(), log);
        result
    }

    /// Whether `channel`'s `subs.dat` is due for compaction, given how many records its
    /// compacted form would hold (the compact* options).
    pub fn subs_compaction_due(&self, channel: &str, live: u64) -> bool {
        self.subs_due(channel, |_| Some(live))
    }

    /// Whether `channel`'s `subs.dat` is due for compaction under the store's `compact*`
    /// options, with `live` telling how many of its records still matter (None: not due).
    fn subs_due(&self, channel: &str, live: impl Fn(&SubsLog) -> Option<u64>) -> bool {
        self.sub_logs.borrow().get(channel).is_some_and(|l| {
            live(l).is_some_and(|live| {
                journal::needs_compaction(&self.compact, l.file.len(), l.records, live)
            }) && l.compacted_at.elapsed() >= self.compact.interval
        })
    }

    /// Whether `channel`'s `subs.dat` is due for compaction judged from the log alone (a
    /// clustered node, whose shard may hold changes not committed yet, or holds none): the
    /// store's `compact*` options, with the log at twice the records it had when last
    /// compacted counted as half dead.
    pub fn subs_log_compaction_due(&self, channel: &str) -> bool {
        self.subs_due(channel, |l| {
            let live = l.records_at_compaction.max(1);
            (l.records >= 2 * live).then_some(live)
        })
    }

    /// Rewrites `channel`'s `subs.dat` from its own records, replayed and written compacted:
    /// it then holds exactly the state its records did (nothing from outside the log).
    pub async fn compact_subs_from_log(&self, channel: &str) {
        let replayed = self
            .subs_log_bytes(channel)
            .map_err(|e| e.to_string())
            .and_then(|bytes| subs::replay(&bytes).map_err(|e| format!("{e:?}")));
        match replayed {
            Ok((subs, _, _)) => {
                let pending: Vec<(&subs::SubRecord, Vec<u64>)> = subs
                    .values()
                    .map(|s| (&s.record, s.pending.within(0, u64::MAX)))
                    .collect();
                let (contents, records) =
                    subs::snapshot(pending.iter().map(|(r, p)| (*r, p.as_slice())));
                self.rewrite_subs(channel, contents, records).await;
            }
            Err(e) => {
                log::error!("STAN: cannot compact the subscriptions of channel {channel:?}: {e}")
            }
        }
    }

    /// Replaces `channel`'s `subs.dat` with its compacted form. The caller writes nothing else
    /// to it meanwhile (the commit task is the only writer).
    pub async fn rewrite_subs(&self, channel: &str, contents: Vec<u8>, records: u64) {
        let old = self.sub_logs.borrow_mut().remove(channel);
        if let Some(old) = old {
            let _ = old.file.close().await;
        }
        let opened = self
            .open_subs(channel, SubsLogEnd::default(), Some((contents, records)))
            .await;
        if let Err(e) = opened {
            log::error!("STAN: cannot compact the subscriptions of channel {channel:?}: {e}");
        }
    }

    /// A channel deleted for inactivity: its files go.
    pub async fn delete_channel(&self, channel: &str) {
        let writer = self.writers.borrow_mut().remove(channel);
        if let Some(w) = writer {
            let _ = w.index.close().await;
            let _ = w.writer.close().await;
        }
        let subs_log = self.sub_logs.borrow_mut().remove(channel);
        if let Some(l) = subs_log {
            let _ = l.file.close().await;
        }
        self.slices.borrow_mut().remove(channel);
        self.readers.borrow_mut().retain(|(c, _), _| c != channel);
        let dir = self.channel_dir(channel);
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            if e.kind() != io::ErrorKind::NotFound {
                log::warn!("STAN: cannot delete {}: {e}", dir.display());
            }
        }
    }

    async fn write_channel(&self, batch: &ChannelBatch) -> io::Result<Landed> {
        let (channel, first_seq) = (batch.channel.as_str(), batch.first_seq);
        let open = self.writers.borrow_mut().remove(channel);
        // A full slice is closed; the records go to a new one.
        let open = match open {
            Some(o) if o.is_full(batch.slice_limits.as_ref().unwrap_or(&self.slice_limits)) => {
                let _ = o.index.close().await;
                o.writer.close().await?;
                None
            }
            other => other,
        };
        let mut open = match open {
            Some(w) => w,
            None => {
                self.make_room_for_a_writer().await;
                let dir = self.channel_dir(channel);
                std::fs::create_dir_all(&dir)?;
                let path = dir.join(format!("slice.{first_seq}.dat"));
                let w =
                    SliceWriter::create(&path, self.buffer_size, self.sync, self.zero_ahead.get())
                        .await?;
                let index = AppendFile::open_at(&path.with_extension("idx"), 0, false).await?;
                let mut slices = self.slices.borrow_mut();
                let list = slices.entry(channel.to_string()).or_default();
                // A slice abandoned empty after a failed write is created again.
                if list.last().map(|(first, _)| *first) != Some(first_seq) {
                    list.push((first_seq, path));
                }
                OpenSlice {
                    writer: w,
                    index,
                    first_seq,
                    msgs: 0,
                    opened: Instant::now(),
                    last_write: 0,
                }
            }
        };
        let before = open.writer.len();
        self.writes.set(self.writes.get() + 1);
        open.last_write = self.writes.get();
        match open.writer.write(&batch.records).await {
            Ok(()) => {
                open.msgs += batch.msgs;
                let entries = index_entries(&batch.records, before);
                let landed = Landed {
                    first_seq: batch.first_seq,
                    msgs: batch.msgs,
                    slice: open.first_seq,
                    offset: before,
                };
                let indexed = open.index.append_with(entries, false).await;
                self.writers.borrow_mut().insert(channel.to_string(), open);
                if let Err(e) = indexed {
                    // The records are safe; recovery rebuilds the index from the slice.
                    log::warn!("STAN: cannot append to the index of channel {channel:?}: {e}");
                }
                Ok(landed)
            }
            Err(e) => {
                let path = open.writer.path().to_path_buf();
                let _ = open.index.close().await;
                if let Err(cut) = open.writer.abandon(before).await {
                    log::error!(
                        "cannot cut {} back to {before} bytes after a failed write: {cut}",
                        path.display()
                    );
                }
                Err(e)
            }
        }
    }

    /// Deletes the slices of `channel` that hold only messages below `first_seq` (dropped by the
    /// channel's limits). The slice being written is never deleted.
    pub fn drop_slices_before(&self, channel: &str, first_seq: u64) {
        let mut slices = self.slices.borrow_mut();
        let Some(list) = slices.get_mut(channel) else {
            return;
        };
        // Slice i holds sequences [first_i, first_{i+1}).
        let mut drop = 0;
        while drop + 1 < list.len() && list[drop + 1].0 <= first_seq {
            drop += 1;
        }
        for (_, path) in list.drain(..drop) {
            self.readers
                .borrow_mut()
                .remove(&(channel.to_string(), first_of(&path)));
            match &self.slice_limits.archive_script {
                Some(script) => archive(script, channel, &path),
                None => remove_slice_files(&path),
            }
        }
    }

    /// Closes every open slice (clean shutdown: no padding left).
    pub async fn close(&self) {
        let sub_logs: Vec<SubsLog> = self.sub_logs.borrow_mut().drain().map(|(_, l)| l).collect();
        for l in sub_logs {
            let _ = l.file.close().await;
        }
        let writers: Vec<OpenSlice> = self.writers.borrow_mut().drain().map(|(_, o)| o).collect();
        for o in writers {
            let _ = o.index.close().await;
            if let Err(e) = o.writer.close().await {
                log::warn!("STAN: closing a slice: {e}");
            }
        }
    }
}

/// How an index's last entry compared with its slice: how many records were found after it
/// (and added to the index).
struct TailCheck {
    added: usize,
}

/// Reads the slice from the index's last entry on: that record must be whole and carry the
/// entry's sequence and timestamp; records after it (written, not indexed: a crash between
/// the two) are added to the index; a torn tail after them is cut off the file. `None` when
/// the slice disagrees with the index.
fn check_tail(
    path: &Path,
    idx: &mut SliceIndex,
    truncated: &mut Vec<Dropped>,
) -> Result<Option<TailCheck>, String> {
    use std::os::unix::fs::FileExt;
    let last = idx.len() - 1;
    let from = u64::from(idx.offsets[last]);
    let file =
        std::fs::File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let size = file
        .metadata()
        .map_err(|e| format!("cannot stat {}: {e}", path.display()))?
        .len();
    if size < from {
        return Ok(None);
    }
    let mut buf = vec![0u8; (size - from) as usize];
    file.read_exact_at(&mut buf, from)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let Ok((found, end)) = scan(&buf) else {
        return Ok(None);
    };
    let Some(first) = found.first() else {
        return Ok(None);
    };
    if first.offset != 0
        || first.header.seq != idx.last_seq()
        || first.header.timestamp != idx.timestamps[last]
    {
        return Ok(None);
    }
    idx.end = from + first.end() as u64;
    for f in &found[1..] {
        idx.push_found(from, f);
    }
    settle_end(path, end, from, size, idx.end, truncated)?;
    Ok(Some(TailCheck {
        added: found.len() - 1,
    }))
}

/// Acts on how a slice of `size` bytes, scanned from file offset `from`, ended: a torn tail is
/// cut off and reported; the zeroes a slice's writer wrote ahead of its records and a crash
/// left after `records_end` are given back (the slice is never appended to again; failing to
/// costs only disk space, so it is logged).
fn settle_end(
    path: &Path,
    end: ScanEnd,
    from: u64,
    size: u64,
    records_end: u64,
    truncated: &mut Vec<Dropped>,
) -> Result<(), String> {
    match end {
        ScanEnd::TornTail { offset } => {
            let at = from + offset as u64;
            cut_slice(path, at)?;
            truncated.push(Dropped {
                path: path.to_path_buf(),
                offset: at,
                bytes: size.saturating_sub(at),
                messages: 1,
                why: "a torn last record (a write a crash cut short)",
            });
        }
        ScanEnd::Clean if size > records_end => {
            if let Err(e) = cut_slice(path, records_end) {
                log::warn!("STAN: {e} (zeroes after its last record)");
            }
        }
        ScanEnd::Clean => {}
    }
    Ok(())
}

/// Cuts a torn tail off a slice file.
fn cut_slice(path: &Path, len: u64) -> Result<(), String> {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|f| f.set_len(len))
        .map_err(|e| format!("cannot truncate {}: {e}", path.display()))
}

/// Writes a slice's index file whole (a new file renamed over the old one).
fn rewrite_index(path: &Path, idx: &SliceIndex) -> Result<(), String> {
    let mut buf = Vec::with_capacity(idx.len() * index::ENTRY_LEN);
    for (i, (o, t)) in idx.offsets.iter().zip(&idx.timestamps).enumerate() {
        index::encode_entry(&mut buf, idx.first_seq + i as u64, u64::from(*o), *t);
    }
    let tmp = path.with_extension("idx.tmp");
    std::fs::write(&tmp, &buf)
        .and_then(|_| std::fs::rename(&tmp, path))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// Deletes a slice and its index.
fn remove_slice_files(path: &Path) {
    for p in [path.to_path_buf(), path.with_extension("idx")] {
        if let Err(e) = std::fs::remove_file(&p) {
            if e.kind() != io::ErrorKind::NotFound {
                log::warn!("STAN: cannot delete {}: {e}", p.display());
            }
        }
    }
}

/// Renames a dropped slice `*.bak` and runs the archive script on it; a thread waits for the
/// script so that no zombie is left, and logs how it ended.
fn archive(script: &Path, channel: &str, slice: &Path) {
    let mut bak = slice.as_os_str().to_owned();
    bak.push(".bak");
    let bak = PathBuf::from(bak);
    if let Err(e) = std::fs::rename(slice, &bak) {
        log::warn!("STAN: cannot rename {} for archiving: {e}", slice.display());
        return;
    }
    let idx = slice.with_extension("idx.bak");
    if let Err(e) = std::fs::rename(slice.with_extension("idx"), &idx) {
        if e.kind() != io::ErrorKind::NotFound {
            log::warn!(
                "STAN: cannot rename the index of {} for archiving: {e}",
                slice.display()
            );
        }
    }
    let spawned = std::process::Command::new(script)
        .arg(channel)
        .arg(&bak)
        .arg(&idx)
        .stdin(std::process::Stdio::null())
        .spawn();
    match spawned {
        Ok(mut child) => {
            let what = format!("{} {channel} {}", script.display(), bak.display());
            let waiter = std::thread::Builder::new()
                .name("slice-archive".into())
                .spawn(move || match child.wait() {
                    Ok(status) if status.success() => {}
                    Ok(status) => log::warn!("STAN: archive script {what} ended with {status}"),
                    Err(e) => log::warn!("STAN: archive script {what}: {e}"),
                });
            if let Err(e) = waiter {
                log::warn!("STAN: cannot wait for the archive script: {e}");
            }
        }
        Err(e) => log::error!(
            "STAN: cannot run the slice archive script {}: {e}",
            script.display()
        ),
    }
}

/// `start..end` cut at the multiples of `window` (a power of two): (position, length) of each
/// piece.
fn read_windows(start: u64, end: u64, window: u64) -> impl Iterator<Item = (u64, usize)> {
    let mut pos = start;
    std::iter::from_fn(move || {
        if pos >= end {
            return None;
        }
        let next = ((pos / window) + 1) * window;
        let piece_end = next.min(end);
        let piece = (pos, (piece_end - pos) as usize);
        pos = piece_end;
        Some(piece)
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_are_cut_at_window_boundaries() {
        let pieces: Vec<_> = super::read_windows(100, 300_000, 65_536).collect();
        assert_eq!(pieces.first(), Some(&(100, 65_436)));
        assert_eq!(pieces.last(), Some(&(262_144, 37_856)));
        assert!(pieces
            .iter()
            .all(|(p, l)| p / 65_536 == (p + *l as u64 - 1) / 65_536));
        let total: usize = pieces.iter().map(|(_, l)| l).sum();
        assert_eq!(total, 300_000 - 100);
        assert_eq!(super::read_windows(5, 5, 4096).count(), 0);
    }

    use super::*;

    #[test]
    fn channel_dir_names_round_trip() {
        for name in ["foo", "foo.bar", "a b", "ünï", "x%y", "A-B_c.9"] {
            let d = channel_dir_name(name);
            assert!(!d.contains('/') && !d.starts_with('.'));
            assert_eq!(channel_name_from_dir(&d).as_deref(), Some(name));
        }
        assert_eq!(channel_name_from_dir("bad%zz"), None);
    }

    #[test]
    fn automatic_slice_limits_are_a_quarter_of_the_channel_limits() {
        let none = SliceLimits::default();
        assert!(none.is_unset());
        let auto = none.auto_for(1000, 4 << 20, Duration::from_secs(2));
        assert_eq!(
            (auto.max_msgs, auto.max_bytes, auto.max_age),
            (250, 1 << 20, Duration::from_secs(1)),
            "the age at least 1 s"
        );
        assert!(none.auto_for(0, 0, Duration::ZERO).is_unset());
    }

    #[test]
    fn server_file_keeps_the_cluster_id() {
        let root = std::env::temp_dir().join(format!("stanza-srvfile-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let key = check_server_file(&root, "one").unwrap();
        assert_eq!(
            check_server_file(&root, "one").unwrap(),
            key,
            "the ack key is kept"
        );
        assert_eq!(
            check_server_file(&root, "two").unwrap_err(),
            "cluster ID \"two\" does not match recovered value of \"one\""
        );
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn server_file_keeps_the_first_node_id_and_refuses_standalone_state() {
        let root = std::env::temp_dir().join(format!("stanza-srvnode-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let first = open_server_file(&root, "c", Some("a")).unwrap();
        assert_eq!(first.node_id.as_deref(), Some("a"));
        assert!(!first.recovered);
        let again = open_server_file(&root, "c", Some("b")).unwrap();
        assert_eq!(again.node_id.as_deref(), Some("a"), "the stored name wins");
        assert!(again.recovered);
        assert_eq!(again.ack_key, first.ack_key);
        let _ = std::fs::remove_dir_all(&root);
        check_server_file(&root, "c").unwrap();
        assert_eq!(
            open_server_file(&root, "c", Some("a")).unwrap_err(),
            NOT_PREVIOUSLY_CLUSTERED
        );
        let _ = std::fs::remove_dir_all(&root);
    }
}
