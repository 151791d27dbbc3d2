//! The file store's layout and I/O for one shard: `<dir>/server.dat` (format version and
//! cluster ID), `<dir>/channels/<encoded name>/slice.<first seq>.dat`. Channel directories do
//! not depend on the shard count, so any number of cores finds every channel at start-up.
//! Each process start opens a new slice per channel; older slices are only read.

use super::journal::{self, AppendFile, CompactPolicy};
use super::record::{scan, ScanEnd};
use super::slice::{read_size_for, read_slice, warm_up, SliceWriter};
use super::subs::{self, RecoveredSub};
use bytes::Bytes;
use fxhash::FxHashMap;
use std::cell::RefCell;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

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

/// Checks (or creates) `server.dat`: a directory written for another cluster ID is refused,
/// with the reference's text.
pub fn check_server_file(root: &Path, cluster_id: &str) -> Result<(), String> {
    std::fs::create_dir_all(root.join("channels"))
        .map_err(|e| format!("cannot create the store directory {}: {e}", root.display()))?;
    let path = root.join("server.dat");
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let mut version = None;
            let mut stored = None;
            for line in text.lines() {
                match line.split_once('=') {
                    Some(("format", v)) => version = v.trim().parse::<u32>().ok(),
                    Some(("cluster_id", v)) => stored = Some(v.trim().to_string()),
                    _ => {}
                }
            }
            match (version, stored) {
                (Some(v), _) if v > FORMAT_VERSION => Err(format!(
                    "{}: store format {v} is newer than this stanza ({FORMAT_VERSION})",
                    path.display()
                )),
                (Some(_), Some(id)) if id == cluster_id => Ok(()),
                (Some(_), Some(id)) => Err(format!(
                    "cluster ID {cluster_id:?} does not match recovered value of {id:?}"
                )),
                _ => Err(format!("{}: not a stanza store file", path.display())),
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let tmp = root.join("server.dat.tmp");
            std::fs::write(
                &tmp,
                format!("format={FORMAT_VERSION}\ncluster_id={cluster_id}\n"),
            )
            .and_then(|_| std::fs::rename(&tmp, &path))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))
        }
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// A channel read back from disk: its name and its records in order.
pub struct Recovered {
    pub name: String,
    pub messages: Vec<(u64, i64, Bytes)>,
    /// Torn tails dropped, as (file, offset), for the log.
    pub truncated: Vec<(PathBuf, usize)>,
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
    /// limits, after renaming it `*.bak`; the script is expected to delete it. This store
    /// keeps no index file: the third argument names a file that does not exist.
    pub archive_script: Option<PathBuf>,
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
}

/// The slice a channel appends to.
struct OpenSlice {
    writer: SliceWriter,
    msgs: u64,
    opened: Instant,
}

impl OpenSlice {
    fn is_full(&self, limits: &SliceLimits) -> bool {
        (limits.max_bytes > 0 && self.writer.len() >= limits.max_bytes)
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
        Ok(FileStore {
            root: root.to_path_buf(),
            buffer_size,
            read_size: read_size_for(root),
            writers: RefCell::new(FxHashMap::default()),
            slices: RefCell::new(FxHashMap::default()),
            slice_limits,
            sub_logs: RefCell::new(FxHashMap::default()),
            compact,
            sync,
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
            self.slices
                .borrow_mut()
                .insert(name.clone(), slices.clone());
            let subs_path = entry.path().join(subs::FILE_NAME);
            let subs_buf = journal::read_file(&subs_path)
                .map_err(|e| format!("cannot read {}: {e}", subs_path.display()))?;
            let (found_subs, subs_end, subs_records) = match subs::replay(&subs_buf) {
                Ok(r) => r,
                Err(e) if truncate_bad_eof => {
                    let kept = subs::replay(&subs_buf[..e.0]).unwrap_or_default();
                    log::warn!("STAN: {}: {e}; dropped from there on", subs_path.display());
                    kept
                }
                Err(e) => return Err(format!("{}: {e}", subs_path.display())),
            };
            if subs_end < subs_buf.len() {
                log_torn_subs_tail(&subs_path, subs_end);
            }
            let mut rec = Recovered {
                name,
                messages: Vec::new(),
                truncated: Vec::new(),
                subs: found_subs.into_values().collect(),
                subs_log: SubsLogEnd {
                    end: subs_end as u64,
                    records: subs_records,
                },
            };
            for (_, path) in slices {
                let data = read_slice(&path, self.read_size)
                    .await
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                let data = Bytes::from(data);
                let (found, end) = match scan(&data) {
                    Ok(r) => r,
                    Err(e) if truncate_bad_eof => {
                        let offset = match e {
                            super::record::ScanError::Corrupt { offset, .. } => offset,
                        };
                        let found = scan(&data[..offset]).map(|r| r.0).unwrap_or_default();
                        (found, ScanEnd::TornTail { offset })
                    }
                    Err(e) => return Err(format!("{}: {e}", path.display())),
                };
                if let ScanEnd::TornTail { offset } = end {
                    rec.truncated.push((path.clone(), offset));
                }
                for f in found {
                    let start = f.offset + super::record::HEADER_LEN;
                    let body = data.slice(start..start + f.header.body_len as usize);
                    rec.messages.push((f.header.seq, f.header.timestamp, body));
                }
            }
            out.push(rec);
        }
        Ok(out)
    }

    /// Appends each channel's records (one DMA write per channel, synced when `sync`) and
    /// subscription records, and returns the channels whose message write failed, with the
    /// error. A failed channel's slice is cut back to what was on disk before and closed; its
    /// next records start a new slice. A failed subscription write is logged (the
    /// subscriptions keep working; a restart may then redeliver or miss a change).
    pub async fn write(&self, batches: Vec<ChannelBatch>, sync: bool) -> Vec<(String, io::Error)> {
        let mut failed = Vec::new();
        for mut batch in batches {
            if batch.msgs > 0 {
                if let Err(e) = self.write_channel(&batch, sync).await {
                    failed.push((batch.channel.clone(), e));
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
                }
            }
        }
        failed
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
        self.sub_logs.borrow().get(channel).is_some_and(|l| {
            journal::needs_compaction(&self.compact, l.file.len(), l.records, live)
                && l.compacted_at.elapsed() >= self.compact.interval
        })
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
            let _ = w.writer.close().await;
        }
        let subs_log = self.sub_logs.borrow_mut().remove(channel);
        if let Some(l) = subs_log {
            let _ = l.file.close().await;
        }
        self.slices.borrow_mut().remove(channel);
        let dir = self.channel_dir(channel);
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            if e.kind() != io::ErrorKind::NotFound {
                log::warn!("STAN: cannot delete {}: {e}", dir.display());
            }
        }
    }

    async fn write_channel(&self, batch: &ChannelBatch, sync: bool) -> io::Result<()> {
        let (channel, first_seq) = (batch.channel.as_str(), batch.first_seq);
        let open = self.writers.borrow_mut().remove(channel);
        // A full slice is closed; the records go to a new one.
        let open = match open {
            Some(o) if o.is_full(&self.slice_limits) => {
                o.writer.close().await?;
                None
            }
            other => other,
        };
        let mut open = match open {
            Some(w) => w,
            None => {
                let dir = self.channel_dir(channel);
                std::fs::create_dir_all(&dir)?;
                let path = dir.join(format!("slice.{first_seq}.dat"));
                let w = SliceWriter::create(&path, self.buffer_size).await?;
                let mut slices = self.slices.borrow_mut();
                let list = slices.entry(channel.to_string()).or_default();
                // A slice abandoned empty after a failed write is created again.
                if list.last().map(|(first, _)| *first) != Some(first_seq) {
                    list.push((first_seq, path));
                }
                OpenSlice {
                    writer: w,
                    msgs: 0,
                    opened: Instant::now(),
                }
            }
        };
        let before = open.writer.len();
        open.writer.append(&batch.records).await?;
        match open.writer.commit_with(sync).await {
            Ok(()) => {
                open.msgs += batch.msgs;
                self.writers.borrow_mut().insert(channel.to_string(), open);
                Ok(())
            }
            Err(e) => {
                let path = open.writer.path().to_path_buf();
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
            match &self.slice_limits.archive_script {
                Some(script) => archive(script, channel, &path),
                None => {
                    if let Err(e) = std::fs::remove_file(&path) {
                        log::warn!("STAN: cannot delete {}: {e}", path.display());
                    }
                }
            }
        }
    }

    /// Closes every open slice (clean shutdown: no padding left).
    pub async fn close(&self) {
        let sub_logs: Vec<SubsLog> = self.sub_logs.borrow_mut().drain().map(|(_, l)| l).collect();
        for l in sub_logs {
            let _ = l.file.close().await;
        }
        let writers: Vec<SliceWriter> = self
            .writers
            .borrow_mut()
            .drain()
            .map(|(_, o)| o.writer)
            .collect();
        for w in writers {
            if let Err(e) = w.close().await {
                log::warn!("STAN: closing a slice: {e}");
            }
        }
    }
}

fn log_torn_subs_tail(path: &Path, end: usize) {
    log::warn!(
        "STAN: {}: dropped a torn record tail at offset {end}",
        path.display()
    );
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

#[cfg(test)]
mod tests {
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
    fn server_file_keeps_the_cluster_id() {
        let root = std::env::temp_dir().join(format!("stanza-srvfile-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        check_server_file(&root, "one").unwrap();
        check_server_file(&root, "one").unwrap();
        assert_eq!(
            check_server_file(&root, "two").unwrap_err(),
            "cluster ID \"two\" does not match recovered value of \"one\""
        );
        let _ = std::fs::remove_dir_all(&root);
    }
}
