//! The control plane's I/O, on shard 0. The decisions (the client registry, the duplicate
//! client ID probe, heartbeats and their failure counts) are the state machine
//! `shards::registry::Registry`; this file decodes connect and close requests for it and
//! carries out its effects: empty requests to client inboxes (heartbeats, the probe) whose
//! answers it reports back, the client log (file store) in one queue, registry changes applied
//! on every shard (reported once all have answered), and the answers to clients.

use super::messages::{RegistryEvent, StanMsg};
use super::requests::{self, ERR_INVALID_CLOSE_REQ};
use super::streaming::Streaming;
use super::time;
use crate::config::streaming::StreamingOptions;
use crate::util::gathering::Gathering;
use bytes::Bytes;
use fxhash::FxHashMap;
use prost::Message;
use shards::pb::{CloseRequest, CloseResponse, ConnectRequest, ConnectResponse};
use shards::registry::{Effect, Registry, RegistryConfig};
use shards::store::clients::StoredClient;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::Duration;

/// How long the owner of a client ID has to answer before a new connect takes the ID over.
const DUPLICATE_CHECK_TIMEOUT: Duration = Duration::from_millis(500);

/// What answering a request needs: where the answer goes, and for a connect its request.
pub struct Answer {
    reply: Option<Bytes>,
    client_id: String,
    connect: Option<Box<ConnectRequest>>,
}

/// A change of the client log, written in the order the registry asked for them.
enum LogChange {
    Add { job: u64, client: StoredClient },
    Remove { client_id: String },
}

pub struct ControlPlane {
    registry: RefCell<Registry<Answer>>,
    /// The token of a reply inbox -> the registry's ask it answers, and back.
    asks: RefCell<FxHashMap<u64, u64>>,
    tokens: RefCell<FxHashMap<u64, u64>>,
    /// Client log changes not written yet, and whether a task writes them.
    log_queue: RefCell<VecDeque<LogChange>>,
    log_writer: Cell<bool>,
    /// Registry changes being applied on every shard (each answers `Done`).
    broadcasts: Gathering<()>,
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl ControlPlane {
    pub fn new(s: &StreamingOptions) -> Self {
        ControlPlane {
            registry: RefCell::new(Registry::new(RegistryConfig {
                hb_interval_ns: nanos(s.hb_interval),
                hb_timeout_ns: nanos(s.hb_timeout),
                hb_fail_count: s.hb_fail_count,
                probe_timeout_ns: nanos(DUPLICATE_CHECK_TIMEOUT),
            })),
            asks: RefCell::new(FxHashMap::default()),
            tokens: RefCell::new(FxHashMap::default()),
            log_queue: RefCell::new(VecDeque::new()),
            log_writer: Cell::new(false),
            broadcasts: Gathering::default(),
        }
    }

    /// Forgets every client and pending change (a clustered node that stops serving: the
    /// next leader has them).
    pub fn reset(&self, s: &StreamingOptions) {
        let fresh = ControlPlane::new(s);
        *self.registry.borrow_mut() = fresh.registry.into_inner();
        self.asks.borrow_mut().clear();
        self.tokens.borrow_mut().clear();
        self.log_queue.borrow_mut().clear();
    }

    /// (client ID, heartbeat inbox) of every registered client.
    pub fn clients_list(&self) -> Vec<(String, String)> {
        self.registry
            .borrow()
            .clients()
            .map(|c| (c.id.clone(), c.hb_inbox.clone()))
            .collect()
    }
}

fn mono_now() -> u64 {
    time::now().mono_ns
}

impl Streaming {
    pub(super) fn on_connect(&self, payload: Bytes, reply: Option<Bytes>) {
        let Some(cp) = &self.control else {
            return;
        };
        let req = match requests::check_connect(&payload) {
            Ok(r) => r,
            Err(e) => {
                log::error!("STAN: [Client:?] Invalid conn request: {e}");
                self.reply(reply.as_ref(), requests::connect_error(e));
                return;
            }
        };
        let client = StoredClient {
            id: req.client_id.clone(),
            hb_inbox: req.heartbeat_inbox.clone(),
            conn_id: req.conn_id.clone(),
        };
        let answer = Answer {
            reply,
            client_id: req.client_id.clone(),
            connect: Some(Box::new(req)),
        };
        cp.registry.borrow_mut().connect(mono_now(), client, answer);
        self.run_control();
    }

    pub(super) fn on_close(&self, payload: Bytes, reply: Option<Bytes>) {
        let Some(cp) = &self.control else {
            return;
        };
        match CloseRequest::decode(payload) {
            Err(_) => {
                log::error!("STAN: Received invalid close request");
                self.answer_close(reply.as_ref(), ERR_INVALID_CLOSE_REQ);
            }
            Ok(req) => {
                let answer = Answer {
                    reply,
                    client_id: req.client_id.clone(),
                    connect: None,
                };
                cp.registry.borrow_mut().close(&req.client_id, answer);
                self.run_control();
            }
        }
    }

    pub(super) fn on_done(&self, token: u64) {
        if let Some(cp) = &self.control {
            cp.broadcasts.answer(token, ());
        }
    }

    /// A client with failed heartbeats pinged: it is asked again now.
    pub(super) fn hurry_heartbeat(&self, client_id: &str) {
        if let Some(cp) = &self.control {
            let now = mono_now();
            let mut registry = cp.registry.borrow_mut();
            registry.hurry(now, client_id);
            registry.tick(now);
            drop(registry);
            self.run_control();
        }
    }

    /// The control plane's share of the tick: heartbeats due, asks expired.
    pub(super) fn tick_control(&self) {
        if let Some(cp) = &self.control {
            cp.registry.borrow_mut().tick(mono_now());
            self.run_control();
        }
    }

    /// An answer on a reply inbox: true if the registry asked on it.
    pub(super) fn control_answer(&self, token: u64) -> bool {
        let Some(cp) = &self.control else {
            return false;
        };
        let Some(ask) = cp.asks.borrow_mut().remove(&token) else {
            return false;
        };
        cp.tokens.borrow_mut().remove(&ask);
        cp.registry.borrow_mut().answered(mono_now(), ask);
        self.run_control();
        true
    }

    /// A client read back from the file store at start-up (every shard has added it itself):
    /// registered here and heartbeaten; one that does not answer is removed as usual.
    pub(super) fn restore_client(&self, client: StoredClient) {
        if let Some(cp) = &self.control {
            cp.registry.borrow_mut().restore(mono_now(), client);
        }
    }

    /// Carries out the registry's effects until it wants nothing more (an effect done at once
    /// may lead to more).
    fn run_control(&self) {
        let Some(cp) = &self.control else {
            return;
        };
        loop {
            let effects = cp.registry.borrow_mut().ready();
            if effects.is_empty() {
                return;
            }
            for effect in effects {
                self.carry_out_effect(cp, effect);
            }
        }
    }

    fn carry_out_effect(&self, cp: &ControlPlane, effect: Effect<Answer>) {
        match effect {
            Effect::Ask { ask, inbox } => self.ask(cp, ask, &inbox),
            Effect::Forget { ask } => {
                if let Some(token) = cp.tokens.borrow_mut().remove(&ask) {
                    cp.asks.borrow_mut().remove(&token);
                }
            }
            Effect::Store { job, client } => {
                if self.client_log.borrow().is_none() {
                    cp.registry.borrow_mut().stored(mono_now(), job, Ok(()));
                } else {
                    self.change_client_log(cp, LogChange::Add { job, client });
                }
            }
            Effect::Unstore { client_id } => {
                if self.client_log.borrow().is_some() {
                    self.change_client_log(cp, LogChange::Remove { client_id });
                }
            }
            Effect::AddOnShards {
                job,
                client_id,
                conn_id,
            } => self.apply_on_shards(cp, job, |token| {
                StanMsg::Registry(RegistryEvent::ClientAdded {
                    client_id: client_id.clone(),
                    conn_id: conn_id.clone(),
                    token,
                })
            }),
            Effect::RemoveFromShards { job, client_id } => self.apply_on_shards(cp, job, |token| {
                StanMsg::Registry(RegistryEvent::ClientRemoved {
                    client_id: client_id.clone(),
                    token,
                })
            }),
            Effect::HeartbeatState { client_id, failed } => {
                for shard in 0..self.core.ncores {
                    self.send_to(
                        shard,
                        StanMsg::Registry(RegistryEvent::HeartbeatState {
                            client_id: client_id.clone(),
                            failed,
                        }),
                    );
                }
            }
            Effect::Connected(answer) => self.answer_connect(answer),
            Effect::ConnectRefused(answer, error) => {
                self.reply(answer.reply.as_ref(), requests::connect_error(&error));
            }
            Effect::Closed(answer, error) => {
                if error.is_empty() {
                    log::debug!("STAN: [Client:{}] Closed", answer.client_id);
                }
                self.answer_close(answer.reply.as_ref(), error);
            }
        }
    }

    /// An empty request to a client inbox, with a reply inbox routed back here by its token.
    /// With no subscriber on the inbox anywhere nobody can answer: reported at once.
    fn ask(&self, cp: &ControlPlane, ask: u64, inbox: &str) {
        let (reply_inbox, token) = self.new_reply_inbox(|t| cp.asks.borrow().contains_key(&t));
        if self.publish(
            inbox.as_bytes(),
            Some(reply_inbox.as_bytes()),
            &Bytes::new(),
        ) {
            cp.asks.borrow_mut().insert(token, ask);
            cp.tokens.borrow_mut().insert(ask, token);
        } else {
            cp.registry.borrow_mut().no_responders(mono_now(), ask);
        }
    }

    /// Sends `msg_for(token)` to every shard (this one included); the registry hears when all
    /// have applied it.
    fn apply_on_shards(&self, cp: &ControlPlane, job: u64, msg_for: impl Fn(u64) -> StanMsg) {
        let token = self.call_every_core(&cp.broadcasts, msg_for);
        let Some(me) = self.rc() else {
            return;
        };
        glommio::spawn_local(async move {
            if let Some(cp) = &me.control {
                cp.broadcasts.wait(token, None).await;
                cp.registry.borrow_mut().applied(job);
            }
            me.run_control();
        })
        .detach();
    }

    /// Queues a change of the client log; one task writes the queue in order (an old client's
    /// removal always lands before the new registration of its ID).
    fn change_client_log(&self, cp: &ControlPlane, change: LogChange) {
        cp.log_queue.borrow_mut().push_back(change);
        if cp.log_writer.replace(true) {
            return;
        }
        let Some(me) = self.rc() else {
            return;
        };
        glommio::spawn_local(async move { me.write_client_log().await }).detach();
    }

    async fn write_client_log(self: Rc<Self>) {
        let Some(cp) = &self.control else {
            return;
        };
        loop {
            let next = cp.log_queue.borrow_mut().pop_front();
            let Some(change) = next else {
                break;
            };
            let log = self.client_log.borrow().clone();
            let Some(log) = log else {
                continue;
            };
            let clustered = self.role.cluster.is_some();
            match change {
                // Clustered, the change goes through the metadata group, and every node (this
                // one too) writes it to its client log once committed.
                LogChange::Add { job, client } if clustered => {
                    let op = shards::raft::meta_entry::MetaOp::ClientAdded(client);
                    let result = self.replicate_meta(&op).await;
                    cp.registry.borrow_mut().stored(mono_now(), job, result);
                    self.run_control();
                }
                LogChange::Remove { client_id } if clustered => {
                    let op = shards::raft::meta_entry::MetaOp::ClientRemoved(client_id.clone());
                    if let Err(e) = self.replicate_meta(&op).await {
                        log::error!("STAN: [Client:{client_id}] cannot replicate the removal: {e}");
                    }
                }
                LogChange::Add { job, client } => {
                    let result = log.add(&client).await.map_err(|e| e.to_string());
                    cp.registry.borrow_mut().stored(mono_now(), job, result);
                    self.run_control();
                }
                LogChange::Remove { client_id } => {
                    if let Err(e) = log.remove(&client_id).await {
                        // It comes back at the next start and is removed then for missed
                        // heartbeats.
                        log::error!("STAN: [Client:{client_id}] cannot store the removal: {e}");
                    }
                    let policy = super::recovery::compact_policy(&self.opts.streaming.file);
                    let registered = || cp.registry.borrow().clients().cloned().collect();
                    if let Err(e) = log.compact_if_due(&policy, registered).await {
                        log::error!("STAN: cannot compact the client log: {e}");
                    }
                }
            }
        }
        cp.log_writer.set(false);
    }

    fn answer_connect(&self, answer: Answer) {
        let Some(req) = answer.connect else {
            return;
        };
        let mut resp = ConnectResponse {
            pub_prefix: self.subjects.publish_prefix.clone(),
            sub_requests: self.subjects.subscribe.clone(),
            unsub_requests: self.subjects.unsubscribe.clone(),
            close_requests: self.subjects.close.clone(),
            sub_close_requests: self.subjects.sub_close.clone(),
            protocol: 1,
            ..Default::default()
        };
        if req.protocol >= 1 {
            resp.ping_requests = self.subjects.pings.clone();
            resp.ping_interval = req.ping_interval;
            resp.ping_max_out = req.ping_max_out;
        }
        self.reply(answer.reply.as_ref(), Bytes::from(resp.encode_to_vec()));
    }

    fn answer_close(&self, reply: Option<&Bytes>, error: &str) {
        let resp = CloseResponse {
            error: error.to_string(),
        };
        self.reply(reply, Bytes::from(resp.encode_to_vec()));
    }
}
