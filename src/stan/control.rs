//! The control plane, on shard 0: the client registry (connect, close, the duplicate client
//! ID probe), server-to-client heartbeats, and replication of the registry to every shard.
//! A connect is answered only after every shard has the client, so the client's first
//! publish or subscription finds it wherever it lands.

use super::messages::StanMsg;
use super::node::Node;
use super::requests::{self, ERR_CLIENT_REGISTERED, ERR_INVALID_CLOSE_REQ};
use crate::util::gathering::Gathering;
use crate::util::notify::Notify;
use crate::util::timeout::within;
use bytes::Bytes;
use fxhash::{FxHashMap, FxHashSet};
use prost::Message;
use shards::pb::{CloseRequest, CloseResponse, ConnectRequest, ConnectResponse};
use shards::shard::ERR_UNKNOWN_CLIENT;
use shards::store::clients::StoredClient;
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

/// How long the owner of a client ID has to answer before a new connect takes the ID over.
const DUPLICATE_CHECK_TIMEOUT: Duration = Duration::from_millis(500);

struct ClientRecord {
    hb_inbox: String,
    /// Kept for the compacted client log.
    conn_id: Bytes,
    /// Cleared when the client is removed or replaced: its heartbeat task then stops.
    alive: Rc<Cell<bool>>,
    /// Wakes the heartbeat task early (a client with failed heartbeats pinged).
    hurry: Rc<Notify>,
}

#[derive(Default)]
pub struct ControlPlane {
    clients: RefCell<FxHashMap<String, ClientRecord>>,
    /// Client IDs whose previous owner is being probed.
    checking: RefCell<FxHashSet<String>>,
    /// Registry broadcasts in flight (every shard answers `Done` once it applied one).
    broadcasts: Gathering<()>,
}

impl ControlPlane {
    /// (client ID, heartbeat inbox) of every registered client.
    pub fn clients_list(&self) -> Vec<(String, String)> {
        self.clients
            .borrow()
            .iter()
            .map(|(id, c)| (id.clone(), c.hb_inbox.clone()))
            .collect()
    }
}

impl Node {
    pub(super) fn on_connect(&self, payload: Bytes, reply: Option<Bytes>) {
        if let Some(node) = self.rc() {
            glommio::spawn_local(async move { node.connect(payload, reply).await }).detach();
        }
    }

    pub(super) fn on_close(&self, payload: Bytes, reply: Option<Bytes>) {
        if let Some(node) = self.rc() {
            glommio::spawn_local(async move { node.close_client(payload, reply).await }).detach();
        }
    }

    pub(super) fn on_done(&self, token: u64) {
        let Some(cp) = &self.control else {
            return;
        };
        cp.broadcasts.answer(token, ());
    }

    pub(super) fn hurry_heartbeat(&self, client_id: &str) {
        if let Some(cp) = &self.control {
            if let Some(c) = cp.clients.borrow().get(client_id) {
                c.hurry.notify();
            }
        }
    }

    /// Sends `msg_for(token)` to every shard (this one included) and waits until all have
    /// applied it.
    async fn broadcast(&self, msg_for: impl Fn(u64) -> StanMsg) {
        let Some(cp) = &self.control else {
            return;
        };
        let token = cp.broadcasts.open(self.core.ncores);
        for shard in 0..self.core.ncores {
            self.send_to(shard, msg_for(token));
        }
        cp.broadcasts.wait(token, None).await;
    }

    /// Tells every shard whether a client is missing heartbeats (no answer needed).
    fn broadcast_heartbeat_state(&self, client_id: &str, failed: bool) {
        for shard in 0..self.core.ncores {
            self.send_to(
                shard,
                StanMsg::HeartbeatState {
                    client_id: client_id.to_string(),
                    failed,
                },
            );
        }
    }

    /// An empty request to a client inbox; whether it answered within `timeout`. With no
    /// subscriber on the inbox anywhere (this core, other cores) nobody can answer: false at
    /// once, as the reference learns from NATS "no responders" instead of waiting.
    async fn request_answered(&self, subject: &str, timeout: Duration) -> bool {
        let (inbox, token, waiter) = self.new_waiter();
        if !self.publish(subject.as_bytes(), Some(inbox.as_bytes()), &Bytes::new()) {
            self.drop_waiter(token);
            return false;
        }
        self.wait_answer(token, &waiter, timeout).await
    }

    async fn connect(self: Rc<Self>, payload: Bytes, reply: Option<Bytes>) {
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
        let id = req.client_id.clone();
        if cp.checking.borrow().contains(&id) {
            self.reply(
                reply.as_ref(),
                requests::connect_error(ERR_CLIENT_REGISTERED),
            );
            return;
        }
        let previous = cp.clients.borrow().get(&id).map(|c| c.hb_inbox.clone());
        if let Some(old_inbox) = previous {
            cp.checking.borrow_mut().insert(id.clone());
            let answered = self
                .request_answered(&old_inbox, DUPLICATE_CHECK_TIMEOUT)
                .await;
            cp.checking.borrow_mut().remove(&id);
            if answered {
                log::debug!("STAN: [Client:{id}] Connect failed; already connected");
                self.reply(
                    reply.as_ref(),
                    requests::connect_error(ERR_CLIENT_REGISTERED),
                );
                return;
            }
            log::debug!(
                "STAN: [Client:{id}] Replacing old client whose heartbeats went unanswered"
            );
            self.remove_client(&id).await;
        }
        if let Err(e) = self.register(cp, &req).await {
            log::error!("STAN: [Client:{id}] cannot store the client: {e}");
            self.reply(
                reply.as_ref(),
                requests::connect_error(&format!("stan: unable to store client: {e}")),
            );
            return;
        }
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
        log::debug!(
            "STAN: [Client:{id}] Connected (Inbox={})",
            req.heartbeat_inbox
        );
        self.reply(reply.as_ref(), Bytes::from(resp.encode_to_vec()));
    }

    /// Registers a client: in the file store's log first (the connect fails if that fails),
    /// then on every shard; then its heartbeats start.
    async fn register(
        self: &Rc<Self>,
        cp: &ControlPlane,
        req: &ConnectRequest,
    ) -> Result<(), std::io::Error> {
        let log = self.client_log.borrow().clone();
        if let Some(log) = log {
            log.add(&StoredClient {
                id: req.client_id.clone(),
                hb_inbox: req.heartbeat_inbox.clone(),
                conn_id: req.conn_id.clone(),
            })
            .await?;
        }
        self.track_client(
            cp,
            StoredClient {
                id: req.client_id.clone(),
                hb_inbox: req.heartbeat_inbox.clone(),
                conn_id: req.conn_id.clone(),
            },
        );
        let conn_id = req.conn_id.clone();
        self.broadcast(|token| StanMsg::ClientAdded {
            client_id: req.client_id.clone(),
            conn_id: conn_id.clone(),
            token,
        })
        .await;
        Ok(())
    }

    /// A client read back from the file store at start-up (every shard has added it itself):
    /// registered here and heartbeaten; one that does not answer is removed as usual.
    pub(super) fn restore_client(self: &Rc<Self>, client: StoredClient) {
        if let Some(cp) = &self.control {
            self.track_client(cp, client);
        }
    }

    /// Enters a client in the registry and starts its heartbeats (the first one goes out
    /// after a whole interval).
    fn track_client(self: &Rc<Self>, cp: &ControlPlane, client: StoredClient) {
        let StoredClient {
            id: client_id,
            hb_inbox,
            conn_id,
        } = client;
        let alive = Rc::new(Cell::new(true));
        let hurry = Rc::new(Notify::new());
        cp.clients.borrow_mut().insert(
            client_id.clone(),
            ClientRecord {
                hb_inbox: hb_inbox.clone(),
                conn_id,
                alive: alive.clone(),
                hurry: hurry.clone(),
            },
        );
        let node = self.clone();
        glommio::spawn_local(
            async move { node.heartbeats(client_id, hb_inbox, alive, hurry).await },
        )
        .detach();
    }

    /// Unregisters a client everywhere: its subscriptions end (durables go offline).
    async fn remove_client(&self, client_id: &str) -> bool {
        let Some(cp) = &self.control else {
            return false;
        };
        let Some(record) = cp.clients.borrow_mut().remove(client_id) else {
            return false;
        };
        record.alive.set(false);
        record.hurry.notify();
        self.broadcast(|token| StanMsg::ClientRemoved {
            client_id: client_id.to_string(),
            token,
        })
        .await;
        let log = self.client_log.borrow().clone();
        if let Some(log) = log {
            if let Err(e) = log.remove(client_id).await {
                // It comes back at the next start and is removed then for missed heartbeats.
                log::error!("STAN: [Client:{client_id}] cannot store the removal: {e}");
            }
            let policy = super::node::compact_policy(&self.opts.streaming.file);
            let registered = || {
                cp.clients
                    .borrow()
                    .iter()
                    .map(|(id, r)| StoredClient {
                        id: id.clone(),
                        hb_inbox: r.hb_inbox.clone(),
                        conn_id: r.conn_id.clone(),
                    })
                    .collect()
            };
            if let Err(e) = log.compact_if_due(&policy, registered).await {
                log::error!("STAN: cannot compact the client log: {e}");
            }
        }
        true
    }

    async fn close_client(self: Rc<Self>, payload: Bytes, reply: Option<Bytes>) {
        let error = match CloseRequest::decode(payload.clone()) {
            Err(_) => {
                log::error!("STAN: Received invalid close request");
                ERR_INVALID_CLOSE_REQ
            }
            Ok(req) => {
                if self.remove_client(&req.client_id).await {
                    log::debug!("STAN: [Client:{}] Closed", req.client_id);
                    ""
                } else {
                    ERR_UNKNOWN_CLIENT
                }
            }
        };
        let resp = CloseResponse {
            error: error.to_string(),
        };
        self.reply(reply.as_ref(), Bytes::from(resp.encode_to_vec()));
    }

    /// Every `hb_interval`, an empty request to the client's heartbeat inbox; more than
    /// `hb_fail_count` unanswered in a row and the client is closed.
    async fn heartbeats(
        self: Rc<Self>,
        client_id: String,
        inbox: String,
        alive: Rc<Cell<bool>>,
        hurry: Rc<Notify>,
    ) {
        let s = &self.opts.streaming;
        let (interval, timeout, max_failures) = (s.hb_interval, s.hb_timeout, s.hb_fail_count);
        let mut failed: u32 = 0;
        loop {
            within(interval, hurry.notified()).await;
            if !alive.get() {
                return;
            }
            let answered = self.request_answered(&inbox, timeout).await;
            if !alive.get() {
                return;
            }
            if answered {
                if failed > 0 {
                    failed = 0;
                    self.broadcast_heartbeat_state(&client_id, false);
                }
                continue;
            }
            failed += 1;
            log::debug!("STAN: [Client:{client_id}] Timed out on heartbeats (failed {failed})");
            if failed == 1 {
                self.broadcast_heartbeat_state(&client_id, true);
            }
            if failed > max_failures {
                log::info!("STAN: [Client:{client_id}] Closing because of failed heartbeats");
                self.remove_client(&client_id).await;
                return;
            }
        }
    }
}
