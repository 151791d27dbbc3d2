//! One core's streaming layer: it recognises STAN subjects in client publishes, sends each
//! request to the shard that owns it (itself or another core over the mesh), runs this
//! core's `Shard` state machine, and publishes what the state machine queues. On shard 0 it
//! also runs the control plane (`control.rs`).

use super::control::ControlPlane;
use super::directory::SharedDirectory;
use super::external::External;
use super::ft::Ft;
use super::messages::{ControlMsg, DataMsg, PublishFrame, RegistryEvent, StanMsg};
use super::partitions::{self, Partition};
use super::requests;
use super::role::{Role, State};
use super::subjects::{Kind, Subjects};
use super::time;
use crate::config::Options;
use crate::nats::core::{Core, Handled, InternalHandler, MsgRef};
use crate::nats::mesh_msg::MeshMsg;
use crate::stan::snapshot::{self, CoreSnapshot};
use crate::util::gathering::Gathering;
use crate::util::notify::Notify;
use crate::util::timeout::within;
use bytes::Bytes;
use fxhash::FxHashMap;
use prost::Message;
use shards::limits::{ChannelLimits, ResolvedLimits};
use shards::pb::{ConnectRequest, Ping, PingResponse};
use shards::shard::{AckPlace, Incoming, Shard, ShardConfig, SubEnd};
use shards::store::clients::{self, ClientLog};
use shards::store::file::{FileStore, SliceLimits};
use shards::store::journal::{self, CompactPolicy};
use std::cell::{Cell, RefCell};
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::Duration;

/// Shares of the replay task queue against the default queue's 1000: reads from disk for
/// catching-up subscribers get a fifth of a busy core.
const REPLAY_SHARES: usize = 250;

/// The file store's compact* options.
pub(super) fn compact_policy(file: &crate::config::streaming::FileOptions) -> CompactPolicy {
    CompactPolicy {
        enabled: file.compact,
        frag_percent: u64::try_from(file.compact_frag).unwrap_or(0),
        interval: Duration::from_secs(u64::try_from(file.compact_interval).unwrap_or(0)),
        min_size: u64::try_from(file.compact_min_size).unwrap_or(0),
    }
}

/// How often a shard looks at its timers (redelivery, max_age, max_inactivity). Ack waits
/// are whole seconds, so this bounds lateness well below what clients notice.
const TICK: Duration = Duration::from_millis(20);

/// Largest single DMA write of a slice (see `open_store`).
const DMA_BUFFER_CAP: usize = 64 << 10;

/// How long the standalone check waits for another server's answer (the reference's 250 ms).
const PROBE_TIMEOUT: Duration = Duration::from_millis(250);

/// Partitioning: the quiet time that ends the collection of other servers' answers, the wait
/// after a route joins before checking again, and how long a subscription of a client not
/// known yet waits for its connect (the reference's values).
const PARTITION_REPLY_WAIT: Duration = Duration::from_secs(1);
const PARTITION_RECHECK: Duration = Duration::from_millis(500);
const PARTITION_CONNECT_WAIT: Duration = Duration::from_secs(1);

/// A request this core made to a client (heartbeat, duplicate-ID probe), waiting for an
/// answer on a reply inbox.
#[derive(Default)]
pub struct Waiter {
    pub answered: Cell<bool>,
    pub notify: Notify,
    /// Every answer's payload, for requests that gather several (partition lists).
    pub answers: RefCell<Vec<Bytes>>,
}

pub struct Node {
    pub core: Rc<Core>,
    /// Set when the server stops: requests are no longer answered (the reference stops its
    /// streaming side before NATS).
    stopped: std::cell::OnceCell<Arc<std::sync::atomic::AtomicBool>>,
    pub subjects: Rc<Subjects>,
    pub shard: RefCell<Shard>,
    pub dir: Arc<SharedDirectory>,
    pub opts: Rc<Options>,
    pub control: Option<ControlPlane>,
    /// Whether the streaming server answers (standalone, or FT and active).
    pub role: Arc<Role>,
    /// Core 0 in FT mode: the standby loop's state and the active server's heartbeats.
    pub ft: Option<Rc<Ft>>,
    /// Partitioning: the channels this server serves (requests for others are left alone).
    pub partition: Option<Rc<Partition>>,
    /// This shard's connection to an external NATS server (`-ns`); `None` when embedded.
    external: RefCell<Option<Rc<External>>>,
    waiters: RefCell<FxHashMap<u64, Rc<Waiter>>>,
    /// The file store of this shard (`--store file`); `None` with the memory store.
    pub(super) store: RefCell<Option<Rc<FileStore>>>,
    /// File store, shard 0: the client registry's log.
    pub(super) client_log: RefCell<Option<Rc<ClientLog>>>,
    pub(super) ticks: Cell<u64>,
    /// A commit (write + sync of this turn's messages) is in progress or scheduled.
    pub(super) committing: Cell<bool>,
    /// File store: the task queue reads back from disk run in, with fewer shares than the
    /// default queue (publishes, acks, live deliveries), so catching up does not starve them.
    pub(super) replay_queue: Cell<Option<glommio::TaskQueueHandle>>,
    /// Monitoring snapshots being gathered from every core.
    gathers: Gathering<CoreSnapshot>,
    /// Publishes and acks of this turn, handled together once the task that received them
    /// yields: one clock reading and one flush for a whole read of the socket, not per message.
    batched: RefCell<Vec<DataMsg>>,
    /// A task to handle `batched` is spawned and has not run yet.
    batch_scheduled: Cell<bool>,
    /// Publishes and acks of this turn for other shards, per shard, sent as one mesh message
    /// each when the receiving task yields (or before anything else for that shard).
    remote_batches: RefCell<Vec<Vec<DataMsg>>>,
    remote_scheduled: Cell<bool>,
    me: RefCell<Weak<Node>>,
}

impl Node {
    /// Builds this core's streaming layer, registers it with core NATS and starts its timer.
    pub fn start(
        core: Rc<Core>,
        opts: &Options,
        dir: Arc<SharedDirectory>,
        ack_key: shards::ack_key::AckKey,
        role: Arc<Role>,
    ) -> Rc<Node> {
        let s = &opts.streaming;
        let subjects = Rc::new(Subjects::new(
            &s.cluster_id,
            &s.discover_prefix,
            s.ft_group.as_deref(),
        ));
        let limits = match s.store_limits.to_limits().build() {
            Ok(l) => l,
            Err(e) => {
                // validate() refuses such limits before any core starts.
                log::error!("STAN: invalid store limits ({e}); using the defaults");
                ResolvedLimits {
                    max_channels: 100,
                    global: ChannelLimits::default(),
                    entries: Vec::new(),
                }
            }
        };
        let partition = s.partitioning.then(|| {
            Rc::new(Partition::new(
                limits.entries.iter().map(|e| e.name.clone()).collect(),
            ))
        });
        let shard = Shard::new(ShardConfig {
            shard: core.id,
            ack_prefix: subjects.ack_prefix(core.id),
            ack_key,
            limits,
            replace_durable: s.replace_durable,
        });
        let node = Rc::new(Node {
            stopped: std::cell::OnceCell::new(),
            control: (core.id == 0).then(|| ControlPlane::new(s)),
            ft: subjects
                .ft
                .clone()
                .filter(|_| core.id == 0)
                .map(|subject| Rc::new(Ft::new(subject))),
            role,
            partition,
            external: RefCell::new(None),
            core: core.clone(),
            subjects,
            shard: RefCell::new(shard),
            dir,
            opts: Rc::new(opts.clone()),
            waiters: RefCell::new(FxHashMap::default()),
            batched: RefCell::new(Vec::new()),
            batch_scheduled: Cell::new(false),
            remote_batches: RefCell::new((0..core.ncores).map(|_| Vec::new()).collect()),
            remote_scheduled: Cell::new(false),
            store: RefCell::new(None),
            client_log: RefCell::new(None),
            committing: Cell::new(false),
            replay_queue: Cell::new(None),
            ticks: Cell::new(0),
            gathers: Gathering::default(),
            me: RefCell::new(Weak::new()),
        });
        *node.me.borrow_mut() = Rc::downgrade(&node);
        if core.id == 0 && s.nats_server.is_none() {
            // Routes to other servers announce the streaming server's subjects as interest
            // (a standby's only the FT subject).
            core.routes.set_internal(node.served_subjects());
        }
        core.set_internal_handler(node.clone());
        let ticking = node.clone();
        core.tasks.spawn("streaming tick", None, async move {
            loop {
                glommio::timer::sleep(TICK).await;
                ticking.tick();
            }
        });
        node
    }

    /// From the moment `flag` is set, streaming requests get no answer (they are routed as
    /// plain NATS messages, to whoever else subscribes).
    pub fn stop_answering_when(&self, flag: Arc<std::sync::atomic::AtomicBool>) {
        let _ = self.stopped.set(flag);
    }

    fn is_stopped(&self) -> bool {
        !self.role.serving()
            || self
                .stopped
                .get()
                .is_some_and(|f| f.load(std::sync::atomic::Ordering::Acquire))
    }

    /// The subjects the streaming server listens on now: the FT subject in FT mode, and the
    /// request and inbox subjects unless it stands by.
    pub fn served_subjects(&self) -> Vec<String> {
        let standing_by = matches!(self.role.state(), State::Standby | State::Failed);
        self.streaming_subjects(!standing_by)
    }

    fn streaming_subjects(&self, serving: bool) -> Vec<String> {
        let mut subjects = if serving {
            self.subjects
                .internal_subscriptions(self.partition_channels())
        } else {
            Vec::new()
        };
        subjects.extend(self.subjects.ft.clone());
        subjects
    }

    /// Partitioning: the channels this server lists (it listens to their publishes only, as
    /// the reference subscribes them).
    fn partition_channels(&self) -> Option<&[String]> {
        self.partition.as_deref().map(Partition::channels)
    }

    /// Whether this server serves `channel`: always, unless partitioning leaves it to another.
    fn serves_channel(&self, channel: &[u8]) -> bool {
        self.partition.as_ref().is_none_or(|p| p.owns(channel))
    }

    /// An ack whose inbox names a shard that does not hold its channel (handed out under
    /// another core count) goes to the channel's owner, which finds the subscription by
    /// channel. `here_too`: also when that is this core (an inbox naming a shard this run
    /// does not have); an ack this core's shard already put `Elsewhere` is dropped instead.
    fn pass_ack_to_owner(&self, subject: Bytes, payload: Bytes, here_too: bool) {
        let Ok(ack) = shards::wire::AckView::parse(&payload) else {
            return;
        };
        let owner = shards::shard_for_bytes(ack.subject, self.core.ncores);
        if owner != self.core.id || here_too {
            self.send_data(owner, DataMsg::Ack { subject, payload });
        }
    }

    /// Partitioning: a subscription of a client this server does not know yet waits up to a
    /// second for its connect, then fails with the reference's text for that case.
    async fn subscribe_once_known(
        self: Rc<Self>,
        req: Box<shards::pb::SubscriptionRequest>,
        reply: Option<Bytes>,
    ) {
        let deadline = std::time::Instant::now() + PARTITION_CONNECT_WAIT;
        while !self.shard.borrow().knows_client(&req.client_id) {
            if std::time::Instant::now() >= deadline {
                self.reply(
                    reply.as_ref(),
                    requests::sub_error(requests::ERR_INVALID_SUB_REQ),
                );
                return;
            }
            glommio::timer::sleep(Duration::from_millis(10)).await;
        }
        self.shard
            .borrow_mut()
            .subscribe(time::now(), *req, reply, &*self.dir);
        self.flush();
    }

    /// Partitioning, core 0: another server's list; the answer names the first channel both
    /// claim, or nothing.
    fn answer_partition_list(&self, payload: &[u8], reply: Option<&[u8]>) {
        let (Some(partition), Some(reply)) = (&self.partition, reply) else {
            return;
        };
        if payload.is_empty() {
            return;
        }
        let theirs = partitions::decode(payload)
            .and_then(|(sender, data)| Ok((sender, partitions::decode_list(&data)?)));
        let (sender, theirs) = match theirs {
            Ok(v) => v,
            Err(e) => {
                log::error!("STAN: Error processing partitioning request: {e}");
                return;
            }
        };
        if sender == self.role.server_id {
            return;
        }
        let conflict = partition.first_conflict(&theirs);
        if let Some(c) = &conflict {
            log::error!("STAN: channel {c:?} is also served by server {sender:?}");
        }
        self.publish(
            reply,
            None,
            &partitions::encode_reply(&self.role.server_id, conflict.as_deref()),
        );
    }

    /// Partitioning, core 0: sends this server's list to the others and collects their answers
    /// until a second passes without one (how many servers there are is not known); an answer
    /// naming a channel is a clash.
    pub async fn check_partitions(&self) -> Result<(), String> {
        let Some(partition) = &self.partition else {
            return Ok(());
        };
        let lists = partitions::encode_list(
            &self.role.server_id,
            partition.channels(),
            self.opts.max_payload,
        )?;
        let (inbox, token, waiter) = self.new_waiter();
        for list in &lists {
            self.publish(
                self.subjects.partitions.as_bytes(),
                Some(inbox.as_bytes()),
                list,
            );
        }
        let mut read = 0;
        let result = loop {
            let more = within(PARTITION_REPLY_WAIT, async {
                while waiter.answers.borrow().len() == read {
                    waiter.notify.notified().await;
                }
            })
            .await
            .is_some();
            let answers: Vec<Bytes> = waiter.answers.borrow()[read..].to_vec();
            read += answers.len();
            let clash = answers.iter().find_map(|a| match partitions::decode(a) {
                Ok((_, data)) if data.is_empty() => None,
                Ok((server, data)) => Some(format!(
                    "channel {:?} causes conflict with channels on server {server:?}",
                    String::from_utf8_lossy(&data)
                )),
                Err(e) => Some(format!("unable to decode partitioning response: {e}")),
            });
            if let Some(clash) = clash {
                break Err(clash);
            }
            if !more {
                break Ok(());
            }
        };
        self.drop_waiter(token);
        result
    }

    /// Partitioning, core 0: checks the lists again whenever a route joins (the reference
    /// does so 500 ms after NATS reports new servers); a clash then ends the process.
    pub fn watch_partitions(self: &Rc<Self>) {
        if self.partition.is_none() || self.core.id != 0 {
            return;
        }
        let me = self.clone();
        self.core.tasks.spawn("partition watch", None, async move {
            let mut known = me.core.routes.links().len();
            loop {
                glommio::timer::sleep(PARTITION_RECHECK).await;
                let now = me.core.routes.links().len();
                let joined = now > known;
                known = now;
                if !joined {
                    continue;
                }
                glommio::timer::sleep(PARTITION_RECHECK).await;
                if let Err(e) = me.check_partitions().await {
                    log::error!("STAN: Partitioning error: {e}");
                    log::logger().flush();
                    std::process::exit(1);
                }
            }
        });
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

    pub fn rc(&self) -> Option<Rc<Node>> {
        self.me.borrow().upgrade()
    }

    /// Sends a message to a core: handled here if that is this core. Requests batched for
    /// that core this turn go first.
    pub fn send_to(&self, core: usize, msg: StanMsg) {
        if core == self.core.id {
            self.handle(core, msg);
            return;
        }
        if core >= self.core.ncores {
            return;
        }
        self.send_remote_batch(core);
        self.core
            .outbox
            .push(core, MeshMsg::Internal(Box::new(msg)));
    }

    /// Calls every core (this one included) with `msg_for(token)`; their answers are gathered
    /// in `gathering` under that token (`Gathering::wait`).
    pub fn call_every_core<T>(
        &self,
        gathering: &Gathering<T>,
        msg_for: impl Fn(u64) -> StanMsg,
    ) -> u64 {
        let token = gathering.open(self.core.ncores);
        for core in 0..self.core.ncores {
            self.send_to(core, msg_for(token));
        }
        token
    }

    pub fn send_control(&self, core: usize, msg: ControlMsg) {
        self.send_to(core, StanMsg::Control(msg));
    }

    /// A request for the shard that owns its channel: handled here if that is this core, else
    /// kept with the other requests of this turn for that core and sent with them, as one
    /// mesh message, when the task that received them yields.
    pub fn send_data(&self, shard: usize, msg: DataMsg) {
        if shard == self.core.id {
            self.handle_data(msg);
            return;
        }
        if shard >= self.core.ncores {
            return;
        }
        if let Some(batch) = self.remote_batches.borrow_mut().get_mut(shard) {
            batch.push(msg);
        }
        if !self.remote_scheduled.replace(true) {
            if let Some(me) = self.rc() {
                glommio::spawn_local(async move {
                    futures_lite::future::yield_now().await;
                    me.remote_scheduled.set(false);
                    for shard in 0..me.core.ncores {
                        me.send_remote_batch(shard);
                    }
                })
                .detach();
            }
        }
    }

    fn send_remote_batch(&self, shard: usize) {
        let batch = match self.remote_batches.borrow_mut().get_mut(shard) {
            Some(b) if !b.is_empty() => std::mem::take(b),
            _ => return,
        };
        self.core
            .outbox
            .push(shard, MeshMsg::Internal(Box::new(StanMsg::Data(batch))));
    }

    /// `--store file`: opens this shard's store and recovers the channels it owns (found in the
    /// store wherever they were written, whatever the shard count then).
    pub async fn open_store(self: &Rc<Self>) -> Result<(), String> {
        let s = &self.opts.streaming;
        let Some(dir) = s.dir.clone() else {
            return Ok(());
        };
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
        let mut store = FileStore::open(&dir, buffer, slice_limits, compact, s.file.sync)
            .await
            .map_err(|e| format!("cannot open the file store in {}: {e}", dir.display()))?;
        store.set_zero_ahead(s.file.zero_ahead);
        if s.file.file_descriptors_limit > 0 {
            // The limit is the process's: each shard keeps its share of slices open for reading.
            let share = s.file.file_descriptors_limit as usize / self.core.ncores.max(1);
            store.set_max_readers(share);
        }
        let queue = glommio::executor().create_task_queue(
            glommio::Shares::Static(REPLAY_SHARES),
            glommio::Latency::NotImportant,
            "stan-replay",
        );
        self.replay_queue.set(Some(queue));
        // Channels created from here on keep their messages on disk.
        self.shard.borrow_mut().persist_messages();
        let me = self.core.id;
        let ncores = self.core.ncores;
        let recovered = store
            .recover(
                |name| shards::shard_for(name, ncores) == me,
                s.file.truncate_bad_eof,
            )
            .await?;
        let now = time::now();
        let mut sub_logs = Vec::new();
        for r in recovered {
            for d in &r.truncated {
                log::warn!(
                    "STAN: {}: dropped {} message(s) at offset {} ({} bytes): {}",
                    d.path.display(),
                    d.messages,
                    d.offset,
                    d.bytes,
                    d.why
                );
            }
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
            let (log, clients) = ClientLog::open(&dir, s.file.sync, s.file.truncate_bad_eof)
                .await
                .map_err(|e| {
                    format!(
                        "cannot open {}: {e}",
                        dir.join(clients::FILE_NAME).display()
                    )
                })?;
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

    /// Returns whether anyone could receive it: a subscriber here or on another core (always
    /// true with an external NATS server, which does not say).
    pub fn publish(&self, subject: &[u8], reply: Option<&[u8]>, payload: &Bytes) -> bool {
        self.publish_with(subject, None, reply, payload, payload)
    }

    /// `publish` of a subject held in its own `Bytes` (deliveries, replies): it is shared with
    /// another core instead of copied.
    pub(super) fn publish_out(&self, o: &shards::shard::Out) {
        self.publish_with(
            &o.subject,
            Some(&o.subject),
            o.reply.as_deref(),
            &o.payload,
            &o.payload,
        );
    }

    /// `payload` lies within `backing`, which a core it goes to shares instead of copying.
    pub(super) fn publish_with(
        &self,
        subject: &[u8],
        subject_backing: Option<&Bytes>,
        reply: Option<&[u8]>,
        payload: &[u8],
        backing: &Bytes,
    ) -> bool {
        if let Some(ext) = self.external.borrow().as_ref() {
            ext.publish(subject, reply, payload);
            return true;
        }
        self.core.publish(
            None,
            &MsgRef {
                subject,
                reply,
                header_len: 0,
                payload,
                backing: Some(backing),
                subject_backing,
            },
        )
    }

    pub(super) fn reply(&self, reply: Option<&Bytes>, payload: Bytes) {
        if let Some(r) = reply {
            self.publish(r, None, &payload);
        }
    }

    /// A message from the external NATS server on one of this shard's subscriptions.
    pub fn on_external_msg(&self, subject: &Bytes, reply: Option<&Bytes>, payload: &Bytes) {
        let msg = MsgRef {
            subject,
            reply: reply.map(|r| r.as_ref()),
            header_len: 0,
            payload,
            backing: Some(payload),
            subject_backing: Some(subject),
        };
        InternalHandler::on_publish(self, &msg);
    }

    /// External NATS mode: connects this shard. A standalone server then checks (shard 0) that
    /// no other streaming server answers on the discover subject and serves; an FT standby
    /// listens only for heartbeats until it takes over (`activate`).
    pub async fn start_external(self: &Rc<Self>) -> Result<(), String> {
        let ext = External::new(self)?;
        if let (0, Some(ft)) = (self.core.id, &self.subjects.ft) {
            ext.subscribe(ft);
        }
        ext.start().await?;
        *self.external.borrow_mut() = Some(ext);
        if !self.role.serving() {
            return Ok(());
        }
        self.serve_external(true).await
    }

    /// External NATS mode: subscribes this shard's inboxes and, on shard 0, the request
    /// subjects (after the standalone check when `probe`).
    async fn serve_external(self: &Rc<Self>, probe: bool) -> Result<(), String> {
        let Some(ext) = self.external.borrow().clone() else {
            return Ok(());
        };
        let cid = self.subjects.cluster_id.clone();
        ext.subscribe(&format!("{}>", self.subjects.ack_prefix(self.core.id)));
        ext.subscribe(&format!("{}>", self.subjects.reply_prefix(self.core.id)));
        if self.core.id != 0 {
            return Ok(());
        }
        ext.flush(PROBE_TIMEOUT * 4).await;
        // Partitioned servers share the cluster ID by design: their lists are checked instead.
        if probe && self.partition.is_none() && self.another_server_answers().await {
            return Err(format!(
                "discovered another streaming server with cluster ID {cid:?}"
            ));
        }
        for subject in self.subjects.request_subjects(self.partition_channels()) {
            ext.subscribe(&subject);
        }
        ext.flush(PROBE_TIMEOUT * 4).await;
        if probe {
            self.check_partitions().await?;
            self.watch_partitions();
        }
        Ok(())
    }

    /// On a routed cluster (core 0, once the configured routes are up or 2 s passed): the
    /// standalone check across the routes, so that a second streaming server with the same
    /// cluster ID refuses to start, as it does with `-ns`; with partitioning, the check of the
    /// servers' channel lists instead (then again whenever a route joins).
    pub async fn refuse_if_served_elsewhere(self: &Rc<Self>) -> Result<(), String> {
        let Some(cluster) = &self.opts.cluster else {
            return Ok(());
        };
        let configured = cluster.routes.len();
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while self.core.routes.links().len() < configured && std::time::Instant::now() < deadline {
            glommio::timer::sleep(Duration::from_millis(20)).await;
        }
        if self.partition.is_some() {
            self.watch_partitions();
        }
        if self.core.routes.links().is_empty() {
            return Ok(());
        }
        // Let the peers apply our interest (and we theirs) before asking.
        glommio::timer::sleep(Duration::from_millis(100)).await;
        if self.partition.is_some() {
            return self.check_partitions().await;
        }
        if self.another_server_answers().await {
            return Err(format!(
                "discovered another streaming server with cluster ID {:?}",
                self.subjects.cluster_id
            ));
        }
        Ok(())
    }

    /// The reference's standalone check: a connect request for our own cluster ID on the
    /// discover subject; any answer means another server serves it.
    async fn another_server_answers(&self) -> bool {
        let (inbox, token, waiter) = self.new_waiter();
        let probe = ConnectRequest {
            client_id: self.subjects.cluster_id.clone(),
            heartbeat_inbox: format!("{inbox}.hb"),
            protocol: 1,
            ..Default::default()
        };
        self.publish(
            self.subjects.discover.as_bytes(),
            Some(inbox.as_bytes()),
            &Bytes::from(probe.encode_to_vec()),
        );
        self.wait_answer(token, &waiter, PROBE_TIMEOUT).await
    }

    /// Waits up to `limit` for the answer a waiter registered for; forgets the waiter.
    pub async fn wait_answer(&self, token: u64, waiter: &Waiter, limit: Duration) -> bool {
        let answered = within(limit, async {
            while !waiter.answered.get() {
                waiter.notify.notified().await;
            }
        })
        .await
        .is_some();
        self.drop_waiter(token);
        answered
    }

    /// Registers a waiter for an answer on a new reply inbox of this core.
    /// The token is random (63 bits from a CSPRNG, as nuid's inboxes are in the reference):
    /// another connection cannot guess the inbox and answer a heartbeat or a duplicate-ID
    /// probe in the client's place.
    pub fn new_waiter(&self) -> (String, u64, Rc<Waiter>) {
        let waiter = Rc::new(Waiter::default());
        let (inbox, token) = self.new_reply_inbox(|_| false);
        self.waiters.borrow_mut().insert(token, waiter.clone());
        (inbox, token, waiter)
    }

    /// A reply inbox of this core under a fresh random token: not a waiter's, nor `taken`.
    pub(super) fn new_reply_inbox(&self, taken: impl Fn(u64) -> bool) -> (String, u64) {
        let waiters = self.waiters.borrow();
        let token = loop {
            let token = rand::random::<u64>() >> 1;
            if !waiters.contains_key(&token) && !taken(token) {
                break token;
            }
        };
        (self.subjects.reply_inbox(self.core.id, token), token)
    }

    pub fn drop_waiter(&self, token: u64) {
        self.waiters.borrow_mut().remove(&token);
    }

    /// Every core's monitoring report (cores that do not answer within `limit` are missing).
    pub async fn gather(&self, limit: Duration) -> Vec<CoreSnapshot> {
        let token = self.call_every_core(&self.gathers, |token| {
            StanMsg::Control(ControlMsg::Snapshot { token })
        });
        let mut reports = self.gathers.wait(token, Some(limit)).await;
        reports.sort_by_key(|r| r.core);
        reports
    }

    fn ping(&self, payload: &Bytes, reply: Option<&Bytes>) {
        if payload.is_empty() {
            return;
        }
        let Ok(ping) = Ping::decode(payload.clone()) else {
            return;
        };
        let client = self
            .shard
            .borrow()
            .client_for_conn(&ping.conn_id)
            .map(str::to_string);
        match client {
            Some(client_id) => {
                self.reply(reply, Bytes::new());
                if self.shard.borrow().heartbeat_failed(&client_id) {
                    self.send_control(0, ControlMsg::HurryHeartbeat { client_id });
                }
            }
            None => {
                let r = PingResponse {
                    error: requests::ERR_PING_UNKNOWN.to_string(),
                };
                self.reply(reply, Bytes::from(r.encode_to_vec()));
            }
        }
    }

    /// Keeps a publish or an ack for the end of the turn (see `batched`).
    fn batch(&self, msg: DataMsg) {
        self.batched.borrow_mut().push(msg);
        self.schedule_batch();
    }

    /// Handles what was kept, once, when the task that read it yields.
    fn schedule_batch(&self) {
        if self.batch_scheduled.replace(true) {
            return;
        }
        if let Some(me) = self.rc() {
            // glommio runs a spawned task at once, up to its first wait: yield first, so that
            // the receiving task finishes its whole read before the batch is handled.
            glommio::spawn_local(async move {
                futures_lite::future::yield_now().await;
                me.batch_scheduled.set(false);
                me.handle_batched();
            })
            .detach();
        }
    }

    /// Handles the publishes and acks kept this turn, in the order they came, and fills the
    /// room that acks taken at once made.
    fn handle_batched(&self) {
        let batch = std::mem::take(&mut *self.batched.borrow_mut());
        if batch.is_empty() && !self.shard.borrow().has_acked_rooms() {
            return;
        }
        let now = time::now();
        let mut misplaced = Vec::new();
        {
            let mut shard = self.shard.borrow_mut();
            shard.fill_acked(now);
            let mut rest = batch.as_slice();
            while let Some(first) = rest.first() {
                if let DataMsg::Publish(p) = first {
                    let channel = std::str::from_utf8(p.channel()).unwrap_or("");
                    let incoming = Incoming {
                        pub_msg: p.payload(),
                        reply: p.reply(),
                        frame: Some(p.frame()),
                    };
                    shard.publish(now, channel, incoming, &*self.dir);
                    rest = &rest[1..];
                    continue;
                }
                // A run of acks: room made by all of them is filled once.
                let run = rest
                    .iter()
                    .take_while(|m| matches!(m, DataMsg::Ack { .. }))
                    .count()
                    .max(1);
                let elsewhere = shard.acks(
                    now,
                    rest[..run].iter().filter_map(|m| match m {
                        DataMsg::Ack { subject, payload } => {
                            Some((subject.as_ref(), payload.as_ref()))
                        }
                        _ => None,
                    }),
                );
                for i in elsewhere {
                    if let Some(DataMsg::Ack { subject, payload }) = rest.get(i) {
                        misplaced.push((subject.clone(), payload.clone()));
                    }
                }
                rest = &rest[run..];
            }
        }
        for (subject, payload) in misplaced {
            self.pass_ack_to_owner(subject, payload, false);
        }
        // Keep the buffer's capacity for the next turn.
        let mut batch = batch;
        batch.clear();
        let mut kept = self.batched.borrow_mut();
        if kept.is_empty() {
            *kept = batch;
        }
        drop(kept);
        self.flush();
    }

    fn handle(&self, from: usize, msg: StanMsg) {
        match msg {
            StanMsg::Data(msgs) => {
                // Publishes and acks are handled together, at once (they waited on the
                // sending core already); anything else after those before it.
                for m in msgs {
                    match m {
                        DataMsg::Publish(_) | DataMsg::Ack { .. } => {
                            self.batched.borrow_mut().push(m)
                        }
                        other => self.handle_data(other),
                    }
                }
                self.handle_batched();
            }
            // Anything else sees the state the publishes and acks before it left.
            StanMsg::Registry(event) => {
                self.handle_batched();
                self.apply_registry(from, event);
            }
            StanMsg::Control(msg) => {
                self.handle_batched();
                self.handle_control(from, msg);
            }
        }
    }

    fn handle_data(&self, msg: DataMsg) {
        let req = match msg {
            DataMsg::Publish(_) | DataMsg::Ack { .. } => {
                self.batch(msg);
                return;
            }
            other => other,
        };
        self.handle_batched();
        let now = time::now();
        match req {
            DataMsg::Publish(_) | DataMsg::Ack { .. } => {}
            DataMsg::Subscribe { req, reply } => {
                if self.partition.is_some() && !self.shard.borrow().knows_client(&req.client_id) {
                    // Another server may have answered the client's connect before this one
                    // registered it: wait for it a moment, as the reference does.
                    if let Some(me) = self.rc() {
                        glommio::spawn_local(me.subscribe_once_known(req, reply)).detach();
                    }
                    return;
                }
                self.shard
                    .borrow_mut()
                    .subscribe(now, *req, reply, &*self.dir);
                self.flush();
            }
            DataMsg::Unsubscribe { req, end, reply } => {
                self.shard.borrow_mut().unsubscribe(now, &req, end, reply);
                self.flush();
            }
        }
    }

    fn apply_registry(&self, from: usize, event: RegistryEvent) {
        match event {
            RegistryEvent::ClientAdded {
                client_id,
                conn_id,
                token,
            } => {
                self.shard.borrow_mut().client_added(&client_id, conn_id);
                self.send_control(from, ControlMsg::Done { token });
            }
            RegistryEvent::ClientRemoved { client_id, token } => {
                self.shard
                    .borrow_mut()
                    .client_removed(time::now(), &client_id);
                self.flush();
                self.send_control(from, ControlMsg::Done { token });
            }
            RegistryEvent::HeartbeatState { client_id, failed } => {
                self.shard
                    .borrow_mut()
                    .set_heartbeat_failed(&client_id, failed);
            }
        }
    }

    fn handle_control(&self, from: usize, msg: ControlMsg) {
        match msg {
            ControlMsg::Reply { token, payload } => {
                if self.control_answer(token) {
                    return;
                }
                // The waiter stays registered until its owner drops it: a request may gather
                // several answers.
                if let Some(w) = self.waiters.borrow().get(&token) {
                    w.answered.set(true);
                    w.answers.borrow_mut().push(payload);
                    w.notify.notify();
                }
            }
            ControlMsg::Connect { payload, reply } => self.on_connect(payload, reply),
            ControlMsg::Close { payload, reply } => self.on_close(payload, reply),
            ControlMsg::Done { token } => self.on_done(token),
            ControlMsg::HurryHeartbeat { client_id } => self.hurry_heartbeat(&client_id),
            ControlMsg::Activate { ack_key } => {
                if let Some(me) = self.rc() {
                    glommio::spawn_local(async move {
                        let result = me.activate(ack_key).await;
                        me.send_control(0, ControlMsg::Activated { result });
                    })
                    .detach();
                }
            }
            ControlMsg::FtMessage { payload } => {
                if let Some(ft) = &self.ft {
                    ft.on_message(self, &payload);
                }
            }
            ControlMsg::Activated { result } => {
                if let Some(ft) = &self.ft {
                    ft.core_reported(result);
                }
            }
            ControlMsg::Snapshot { token } => {
                let snapshot = Box::new(snapshot::take(self));
                self.send_control(from, ControlMsg::SnapshotReply { token, snapshot });
            }
            ControlMsg::SnapshotReply { token, snapshot } => self.gathers.answer(token, *snapshot),
        }
    }
}

impl InternalHandler for Node {
    /// Publishes and subscription requests name the core of their channel: the sender's
    /// connection is best served from there (deliveries, acks and PubAcks then never cross
    /// between cores).
    fn on_publish(&self, msg: &MsgRef<'_>) -> Handled {
        let Some(kind) = self.subjects.classify(msg.subject) else {
            return Handled::No;
        };
        if kind == Kind::Ft {
            // Core 0 watches the FT subject (routes and the external connection deliver there;
            // a local publisher's message is passed on); the message still goes to whoever
            // else subscribes.
            match &self.ft {
                Some(ft) => ft.on_message(self, msg.payload),
                None if self.role.is_ft() => {
                    let payload = msg.share(msg.payload);
                    self.send_control(0, ControlMsg::FtMessage { payload });
                }
                None => {}
            }
            return Handled::No;
        }
        if self.is_stopped() {
            return Handled::No;
        }
        if kind
            == (Kind::Ack {
                shard: self.core.id,
            })
        {
            // An ack for this core is taken at once, in place (nothing is kept but who got
            // room); only filling that room waits for the end of the turn.
            let place = self
                .shard
                .borrow_mut()
                .take_ack_now(msg.subject, msg.payload);
            if place == AckPlace::Elsewhere {
                self.pass_ack_to_owner(msg.share(msg.subject), msg.share(msg.payload), false);
            }
            self.schedule_batch();
            return Handled::Yes;
        }
        let ncores = self.core.ncores;
        if let Kind::Publish { channel } = kind {
            if !self.serves_channel(channel) {
                return Handled::No;
            }
            let shard = shards::shard_for_bytes(channel, ncores);
            let Some(frame) = PublishFrame::new(msg.backing, channel, msg.reply, msg.payload)
            else {
                log::warn!("STAN: publish of 4 GiB or more on {channel:?} dropped");
                return Handled::Yes;
            };
            self.send_data(shard, DataMsg::Publish(frame));
            return Handled::Channel { core: shard };
        }
        if kind == Kind::Partitions {
            // Lists reach core 0 (its routes, its external connection).
            if self.core.id == 0 {
                self.answer_partition_list(msg.payload, msg.reply);
            }
            return Handled::No;
        }
        let reply = msg.reply.map(|r| msg.share(r));
        let payload = msg.share(msg.payload);
        match kind {
            Kind::Publish { .. } => {}
            Kind::Subscribe => match requests::check_subscription(&payload) {
                Ok(req) if !self.serves_channel(req.subject.as_bytes()) => return Handled::No,
                Ok(req) => {
                    let shard = shards::shard_for(&req.subject, ncores);
                    self.send_data(
                        shard,
                        DataMsg::Subscribe {
                            req: Box::new(req),
                            reply,
                        },
                    );
                    return Handled::Channel { core: shard };
                }
                Err(e) => self.reply(reply.as_ref(), requests::sub_error(e)),
            },
            Kind::Unsubscribe | Kind::SubClose => {
                let end = if kind == Kind::Unsubscribe {
                    SubEnd::Unsubscribe
                } else {
                    SubEnd::Close
                };
                match requests::decode_unsubscribe(&payload) {
                    Ok(req) if !self.serves_channel(req.subject.as_bytes()) => return Handled::No,
                    Ok(req) => {
                        let shard = shards::shard_for(&req.subject, ncores);
                        self.send_data(
                            shard,
                            DataMsg::Unsubscribe {
                                req: Box::new(req),
                                end,
                                reply,
                            },
                        );
                    }
                    Err(e) => self.reply(reply.as_ref(), requests::sub_error(e)),
                }
            }
            Kind::Ack { shard } => {
                let subject = msg.share(msg.subject);
                if shard < ncores {
                    self.send_data(shard, DataMsg::Ack { subject, payload });
                } else {
                    // An inbox of a larger core count than this run's.
                    self.pass_ack_to_owner(subject, payload, true);
                }
            }
            Kind::Reply { shard, token } => {
                self.send_control(shard, ControlMsg::Reply { token, payload })
            }
            Kind::Discover => self.send_control(0, ControlMsg::Connect { payload, reply }),
            Kind::Close => self.send_control(0, ControlMsg::Close { payload, reply }),
            Kind::Ping => self.ping(&payload, reply.as_ref()),
            Kind::Ft | Kind::Partitions => {}
        }
        Handled::Yes
    }

    fn on_mesh(&self, from: usize, msg: Box<dyn std::any::Any + Send>) {
        if let Ok(m) = msg.downcast::<StanMsg>() {
            self.handle(from, *m);
        }
    }
}
