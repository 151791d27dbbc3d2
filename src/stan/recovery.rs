//! Opening a shard's part of the file store and recovering it: channels and their slices,
//! clients, subscriptions and what they had pending, at start-up or at an FT take-over.

use super::streaming::Streaming;
use super::time;
use shards::store::clients::{self, ClientLog};
use shards::store::file::{FileStore, SliceLimits};
use shards::store::journal::{self, CompactPolicy};
use std::rc::Rc;
use std::time::Duration;

/// Shares of the replay task queue against the default queue's 1000: reads from disk for
/// catching-up subscribers get a fifth of a busy core.
const REPLAY_SHARES: usize = 250;

/// Largest single DMA write of a slice (see `open_store`).
const DMA_BUFFER_CAP: usize = 64 << 10;

/// The file store's compact* options.
pub(super) fn compact_policy(file: &crate::config::streaming::FileOptions) -> CompactPolicy {
    CompactPolicy {
        enabled: file.compact,
        frag_percent: u64::try_from(file.compact_frag).unwrap_or(0),
        interval: Duration::from_secs(u64::try_from(file.compact_interval).unwrap_or(0)),
        min_size: u64::try_from(file.compact_min_size).unwrap_or(0),
    }
}

impl Streaming {
    /// Whether the store syncs its writes: `file_sync`, or clustered `cluster.sync` (the
    /// reference overrides the one with the other: durability then comes from the quorum).
    pub(super) fn store_syncs(&self) -> bool {
        let s = &self.opts.streaming;
        match &s.cluster {
            Some(c) if self.role.cluster.is_some() => c.sync,
            _ => s.file.sync,
        }
    }

    /// Opens the client log (`clients.dat`) in `dir` for appending; returns it with the
    /// clients it holds.
    pub(super) async fn open_client_log(
        &self,
        dir: &std::path::Path,
        truncate_bad_eof: bool,
    ) -> Result<(ClientLog, Vec<clients::StoredClient>), String> {
        ClientLog::open(dir, self.store_syncs(), truncate_bad_eof)
            .await
            .map_err(|e| {
                format!(
                    "cannot open {}: {e}",
                    dir.join(clients::FILE_NAME).display()
                )
            })
    }

    /// Reads back the channels of the store that this core owns, logging everything recovery
    /// dropped (torn or damaged records) with its file, offset and count.
    pub(super) async fn recover_own_channels(
        &self,
        store: &FileStore,
    ) -> Result<Vec<shards::store::file::Recovered>, String> {
        let me = self.core.id;
        let recovered = store
            .recover(
                |name| self.core_of_channel(name.as_bytes()) == me,
                self.opts.streaming.file.truncate_bad_eof,
            )
            .await?;
        for d in recovered.iter().flat_map(|r| &r.truncated) {
            log::warn!(
                "STAN: {}: dropped {} message(s) at offset {} ({} bytes): {}",
                d.path.display(),
                d.messages,
                d.offset,
                d.bytes,
                d.why
            );
        }
        Ok(recovered)
    }

    /// Opens this shard's file store in `dir` with the configured file options (nothing
    /// recovered yet).
    pub(super) async fn open_file_store(&self, dir: &std::path::Path) -> Result<FileStore, String> {
        let s = &self.opts.streaming;
        // The largest single DMA write. Commits are usually far smaller; a cap keeps one DMA
        // buffer from being as large as Go's 2 MiB write buffer (buffer_size bounds it too).
        let buffer = usize::try_from(s.file.buffer_size)
            .unwrap_or(DMA_BUFFER_CAP)
            .clamp(4096, DMA_BUFFER_CAP);
        let slice_limits = SliceLimits {
            max_bytes: u64::try_from(s.file.slice_max_bytes).unwrap_or(0),
            max_msgs: u64::try_from(s.file.slice_max_msgs).unwrap_or(0),
            max_age: s.file.slice_max_age,
            archive_script: s.file.slice_archive_script.clone(),
        };
        let compact = compact_policy(&s.file);
        let mut store = FileStore::open(dir, buffer, slice_limits, compact, self.store_syncs())
            .await
            .map_err(|e| format!("cannot open the file store in {}: {e}", dir.display()))?;
        store.set_zero_ahead(s.file.zero_ahead);
        // The limit is the process's (file_descriptors_limit, else three quarters of the
        // open-file limit, so that many channels never run the process out of descriptors):
        // each shard keeps its share, a quarter for slices read back, the rest for the slices
        // being written (two descriptors each: the slice and its index).
        let limit = match usize::try_from(s.file.file_descriptors_limit) {
            Ok(n) if n > 0 => n,
            _ => open_file_limit().saturating_mul(3) / 4,
        };
        let share = limit / self.core.ncores.max(1);
        if s.file.file_descriptors_limit > 0 {
            store.set_max_readers(share / 4);
        }
        store.set_max_writers(share * 3 / 4 / 2);
        Ok(store)
    }

    /// FT take-over on this core: opens its part of the store with the store's ack key, then
    /// listens on the streaming subjects (they answer once every core has done this).
    pub async fn activate(self: &Rc<Self>, ack_key: shards::ack_key::AckKey) -> Result<(), String> {
        self.shard.borrow_mut().set_ack_key(ack_key);
        self.open_store().await?;
        if self.external.borrow().is_some() {
            return self.serve_external(false).await;
        }
        if self.core.id == 0 {
            self.core.routes.set_internal(self.streaming_subjects(true));
        }
        Ok(())
    }

    /// `--store file`: opens this shard's store and recovers the channels it owns (found in the
    /// store wherever they were written, whatever the shard count then).
    pub async fn open_store(self: &Rc<Self>) -> Result<(), String> {
        let s = &self.opts.streaming;
        let Some(dir) = s.dir.clone() else {
            return Ok(());
        };
        let compact = compact_policy(&s.file);
        let store = self.open_file_store(&dir).await?;
        let queue = glommio::executor().create_task_queue(
            glommio::Shares::Static(REPLAY_SHARES),
            glommio::Latency::NotImportant,
            "stan-replay",
        );
        self.replay_queue.set(Some(queue));
        // Channels created from here on keep their messages on disk.
        self.shard.borrow_mut().persist_messages();
        let me = self.core.id;
        let recovered = self.recover_own_channels(&store).await?;
        let now = time::now();
        let mut sub_logs = Vec::new();
        for r in recovered {
            let n = self
                .shard
                .borrow_mut()
                .restore_channel(now, &r.name, r.slices, &*self.dir)?;
            log::debug!("STAN: recovered channel {:?} ({n} messages)", r.name);
            sub_logs.push((r.name.clone(), r.subs, r.subs_log));
            // Limits applied at start-up may leave whole slices with nothing kept.
            self.drop_emptied_slices(&store, &r.name);
        }
        // Every shard reads the registered clients itself (no mesh is running yet); shard 0
        // also compacts the log, keeps it open and resumes their heartbeats.
        let clients = if me == 0 {
            let (log, clients) = self.open_client_log(&dir, s.file.truncate_bad_eof).await?;
            *self.client_log.borrow_mut() = Some(Rc::new(log));
            clients
        } else {
            clients::read(&dir, s.file.truncate_bad_eof, false).map_err(|e| {
                format!(
                    "cannot read {}: {e}",
                    dir.join(clients::FILE_NAME).display()
                )
            })?
        };
        for c in &clients {
            self.shard
                .borrow_mut()
                .client_added(&c.id, c.conn_id.clone());
        }
        if me == 0 {
            if !clients.is_empty() {
                log::info!("STAN: recovered {} clients", clients.len());
            }
            for c in clients {
                self.restore_client(c);
            }
        }
        // Subscriptions once the clients are known (those of clients gone are dropped, or
        // offline when durable). A log that no longer matches, or is due, is compacted.
        for (name, subs, end) in sub_logs {
            let count = subs.len();
            let changed = self
                .shard
                .borrow_mut()
                .restore_subscriptions(now, &name, subs);
            let due = || {
                let live = self.shard.borrow().sub_live_records(&name);
                journal::needs_compaction(&compact, end.end, end.records, live)
            };
            let rewrite = (changed || due()).then(|| self.shard.borrow().sub_snapshot(&name));
            store.open_subs(&name, end, rewrite).await.map_err(|e| {
                format!("cannot open the subscriptions log of channel {name:?}: {e}")
            })?;
            if count > 0 {
                log::debug!("STAN: recovered {count} subscriptions on channel {name:?}");
            }
        }
        *self.store.borrow_mut() = Some(Rc::new(store));
        // Reads wanted during recovery (restored subscribers' backlogs) start now.
        self.shard.borrow_mut().start_reading();
        self.flush();
        Ok(())
    }
}

/// The process's open-file limit (soft), or a conservative 1,024 when it cannot be read.
fn open_file_limit() -> usize {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct it is given and nothing else.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 1024;
    }
    usize::try_from(lim.rlim_cur).unwrap_or(usize::MAX)
}
