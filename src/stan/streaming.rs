//! One core's streaming layer, `Streaming`: what it holds (its `Shard`, the store, the
//! batches, reply-inbox waiters, the role, FT and partitioning state) and how it starts, talks
//! to core NATS or an external NATS server, and checks for other servers. Its other parts are
//! `impl Streaming` blocks of their own files: `routing.rs` (where requests go, how each plane
//! is handled), `driver.rs` (the shard's ready/advance loop), `recovery.rs` (opening the store)
//! and `control.rs` (the control plane's I/O, core 0).

use super::control::ControlPlane;
use super::directory::SharedDirectory;
use super::external::External;
use super::ft::Ft;
use super::messages::{ControlMsg, DataMsg, StanMsg};
use super::partitions::{self, Partition};
use super::requests;
use super::role::{Role, State};
use super::subjects::Subjects;
use super::time;
use crate::config::Options;
use crate::nats::core::{Core, InternalHandler, MsgRef};
use crate::stan::snapshot::CoreSnapshot;
use crate::util::gathering::Gathering;
use crate::util::notify::Notify;
use crate::util::timeout::within;
use bytes::Bytes;
use fxhash::FxHashMap;
use prost::Message;
use shards::limits::{ChannelLimits, ResolvedLimits};
use shards::pb::ConnectRequest;
use shards::shard::{Input, Shard, ShardConfig};
use shards::store::clients::ClientLog;
use shards::store::file::FileStore;
use std::cell::{Cell, RefCell};
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::Duration;

/// How often a shard looks at its timers (redelivery, max_age, max_inactivity). Ack waits
/// are whole seconds, so this bounds lateness well below what clients notice.
const TICK: Duration = Duration::from_millis(20);

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

pub struct Streaming {
    pub core: Rc<Core>,
    /// Set when the server stops: requests are no longer answered (the reference stops its
    /// streaming side before NATS).
    pub(super) stopped: std::cell::OnceCell<Arc<std::sync::atomic::AtomicBool>>,
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
    pub(super) external: RefCell<Option<Rc<External>>>,
    pub(super) waiters: RefCell<FxHashMap<u64, Rc<Waiter>>>,
    /// The file store of this shard (`--store file`); `None` with the memory store.
    pub(super) store: RefCell<Option<Rc<FileStore>>>,
    /// File store, shard 0: the client registry's log.
    pub(super) client_log: RefCell<Option<Rc<ClientLog>>>,
    pub(super) ticks: Cell<u64>,
    /// The time last read on this core (a turn's batch, a tick): for inputs that read none.
    pub(super) last_now: Cell<shards::shard::Now>,
    /// A commit (write + sync of this turn's messages) is in progress or scheduled.
    pub(super) committing: Cell<bool>,
    /// File store: the task queue reads back from disk run in, with fewer shares than the
    /// default queue (publishes, acks, live deliveries), so catching up does not starve them.
    pub(super) replay_queue: Cell<Option<glommio::TaskQueueHandle>>,
    /// Monitoring snapshots being gathered from every core.
    pub(super) gathers: Gathering<CoreSnapshot>,
    /// Publishes and acks of this turn, handled together once the task that received them
    /// yields: one clock reading and one flush for a whole read of the socket, not per message.
    pub(super) batched: RefCell<Vec<DataMsg>>,
    /// A task to handle `batched` is spawned and has not run yet.
    pub(super) batch_scheduled: Cell<bool>,
    /// Publishes and acks of this turn for other shards, per shard, sent as one mesh message
    /// each when the receiving task yields (or before anything else for that shard).
    pub(super) remote_batches: RefCell<Vec<Vec<DataMsg>>>,
    pub(super) remote_scheduled: Cell<bool>,
    pub(super) me: RefCell<Weak<Streaming>>,
    /// Clustered: this core's raft groups (`cluster/host.rs`), once opened.
    pub raft: RefCell<Option<Rc<super::cluster::host::RaftHost>>>,
    /// What the shard was made with (a clustered node that stops leading starts a new one).
    pub(super) shard_config: ShardConfig,
    /// Clustered, core 0: every core's report of a role change (serving, standing down).
    pub(super) cluster_gathers: Gathering<Result<(), String>>,
}

impl Streaming {
    /// Builds this core's streaming layer, registers it with core NATS and starts its timer.
    pub fn start(
        core: Rc<Core>,
        opts: &Options,
        dir: Arc<SharedDirectory>,
        ack_key: shards::ack_key::AckKey,
        role: Arc<Role>,
    ) -> Rc<Streaming> {
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
        let shard_config = ShardConfig {
            shard: core.id,
            ack_prefix: subjects.ack_prefix(core.id),
            ack_key,
            limits,
            replace_durable: s.replace_durable,
        };
        let shard = Shard::new(shard_config.clone());
        let node = Rc::new(Streaming {
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
            last_now: Cell::new(time::now()),
            gathers: Gathering::default(),
            me: RefCell::new(Weak::new()),
            raft: RefCell::new(None),
            shard_config,
            cluster_gathers: Gathering::default(),
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

    pub(super) fn is_stopped(&self) -> bool {
        !self.role.serving()
            || self
                .stopped
                .get()
                .is_some_and(|f| f.load(std::sync::atomic::Ordering::Acquire))
    }

    /// The subjects the streaming server listens on now: the FT subject in FT mode, and the
    /// request and inbox subjects unless it stands by.
    pub fn served_subjects(&self) -> Vec<String> {
        let standing_by = matches!(
            self.role.state(),
            State::Standby | State::Failed | State::Clustered | State::ClusterActivating
        );
        self.streaming_subjects(!standing_by)
    }

    pub(super) fn streaming_subjects(&self, serving: bool) -> Vec<String> {
        let mut subjects = if serving {
            self.subjects
                .internal_subscriptions(self.partition_channels())
        } else {
            Vec::new()
        };
        subjects.extend(self.subjects.ft.clone());
        subjects.extend(self.cluster_subjects());
        subjects
    }

    /// Partitioning: the channels this server lists (it listens to their publishes only, as
    /// the reference subscribes them).
    pub(super) fn partition_channels(&self) -> Option<&[String]> {
        self.partition.as_deref().map(Partition::channels)
    }

    /// Whether this server serves `channel`: always, unless partitioning leaves it to another.
    pub(super) fn serves_channel(&self, channel: &[u8]) -> bool {
        self.partition.as_ref().is_none_or(|p| p.owns(channel))
    }

    /// Partitioning: a subscription of a client this server does not know yet waits up to a
    /// second for its connect, then fails with the reference's text for that case.
    pub(super) async fn subscribe_once_known(
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
            .step(time::now(), Input::Subscribe { req, reply });
        self.flush();
    }

    /// Partitioning, core 0: another server's list; the answer names the first channel both
    /// claim, or nothing.
    pub(super) fn answer_partition_list(&self, payload: &[u8], reply: Option<&[u8]>) {
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

    /// Partitioning, core 0: checks the lists again whenever servers join: a route of the
    /// embedded server, or (`-ns`) servers the external NATS server announces (the reference
    /// does so 500 ms after NATS reports new servers); a clash then ends the process.
    pub fn watch_partitions(self: &Rc<Self>) {
        if self.partition.is_none() || self.core.id != 0 {
            return;
        }
        let me = self.clone();
        self.core.tasks.spawn("partition watch", None, async move {
            let servers_seen = |me: &Streaming| {
                let discovered = me
                    .external
                    .borrow()
                    .as_ref()
                    .map_or(0, |ext| ext.discovered());
                (me.core.routes.links().len(), discovered)
            };
            let mut known = servers_seen(&me);
            loop {
                glommio::timer::sleep(PARTITION_RECHECK).await;
                let now = servers_seen(&me);
                let joined = now.0 > known.0 || now.1 > known.1;
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

    pub fn rc(&self) -> Option<Rc<Streaming>> {
        self.me.borrow().upgrade()
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
    pub(super) async fn serve_external(self: &Rc<Self>, probe: bool) -> Result<(), String> {
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
    pub(super) async fn another_server_answers(&self) -> bool {
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
}
