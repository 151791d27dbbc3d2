//! What one core owns of the core NATS server (`Core`): its connections, the sublist of their
//! subscriptions, its replica of the cross-core interest map, its counters and long-lived
//! tasks, and what it does with messages from other cores. Its other parts live beside it:
//! `connections.rs` (a connection's state), `interest.rs` (subscriptions and the interest
//! map), `delivery.rs` (how a message reaches subscribers, cores and routes) and
//! `handover.rs` (moving a connection to another core).
//!
//! How a message travels (DESIGN.md §3): the publishing connection's core matches the subject
//! against its own sublist (local subscribers) and against the interest map (which cores have
//! subscribers). It writes MSG frames for local subscribers straight into their output buffers
//! and queues one `Routed` per interested core in the mesh outbox. Each queue group gets the
//! message exactly once: the publishing core picks the local members or one interested core,
//! and that core picks one of its members.

pub use super::connections::{ClientConn, CloseReason, ConnectOptions, GlobalCounters};
use super::delivery::{RouteFanout, RouteMemo, MAX_STALL_THRESHOLD};
use super::mesh_msg::{MeshMsg, Routed};
use crate::config::options::Authorization;
use crate::config::Options;
use crate::mesh::{InterestSync, Outbox};
use crate::nats::sublist::Sublist;
use crate::nats::{subject, wire};
use crate::util::gathering::Gathering;
use crate::util::rng::Rng;
use crate::util::tasks::CoreTasks;
use bytes::Bytes;
use fxhash::FxHashMap;
use std::cell::{Cell, RefCell};
use std::rc::{Rc, Weak};
use std::sync::Arc;

#[derive(Default)]
pub struct CoreStats {
    pub in_msgs: Cell<u64>,
    pub in_bytes: Cell<u64>,
    pub out_msgs: Cell<u64>,
    pub out_bytes: Cell<u64>,
    pub slow_consumers: Cell<u64>,
    pub total_connections: Cell<u64>,
}

pub(super) fn bump(c: &Cell<u64>, by: u64) {
    c.set(c.get().wrapping_add(by));
}

/// One subscription of a local connection.
pub struct LocalSub {
    pub conn: Weak<ClientConn>,
    pub cid: u64,
    pub sid: Bytes,
    pub subject: Bytes,
    pub queue: Option<Bytes>,
    /// Auto-unsubscribe after this many deliveries (0: never).
    pub max: Cell<u64>,
    pub delivered: Cell<u64>,
}

/// A sublist entry: compares by identity.
#[derive(Clone)]
pub struct SubRef(pub Rc<LocalSub>);

impl PartialEq for SubRef {
    fn eq(&self, other: &Self) -> bool {
        Rc::ptr_eq(&self.0, &other.0)
    }
}

/// A server-side handler of some subjects (the streaming layer registers one). Core NATS hands
/// it client publishes on those subjects and the mesh messages addressed to it, and knows
/// nothing else about it.
pub trait InternalHandler {
    /// Handles a client publish if its subject belongs to the handler; says whether it did,
    /// and which core owns the channel it was about.
    fn on_publish(&self, msg: &MsgRef<'_>) -> Handled;
    /// A `MeshMsg::Internal` sent by the handler on another core.
    fn on_mesh(&self, from: usize, msg: Box<dyn std::any::Any + Send>);
}

/// What the internal handler did with a publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handled {
    /// Not one of its subjects: core NATS routes it.
    No,
    Yes,
    /// A streaming publish or subscription request on a channel that `core` owns: the
    /// sender's connection would best live there.
    Channel {
        core: usize,
    },
}

pub struct Core {
    pub id: usize,
    /// This core's long-lived tasks, stopped together at shutdown.
    pub tasks: CoreTasks,
    pub ncores: usize,
    pub opts: Rc<Options>,
    /// Authorization in force: `opts.auth` at start, replaced by a configuration reload.
    pub auth: RefCell<Rc<Authorization>>,
    pub server_id: Rc<str>,
    pub global: Arc<GlobalCounters>,
    pub conns: RefCell<FxHashMap<u64, Rc<ClientConn>>>,
    pub sublist: RefCell<Sublist<SubRef>>,
    pub interest: RefCell<Sublist<usize>>,
    pub(super) local_interest: RefCell<FxHashMap<(Bytes, Option<Bytes>), usize>>,
    pub outbox: Rc<Outbox<MeshMsg>>,
    pub sync: InterestSync,
    pub rng: Rng,
    pub stats: CoreStats,
    pub(super) next_conn: Cell<u64>,
    /// Subscribers whose output passed the stall threshold, with the client whose publish
    /// put it there: only that producer waits for them (as nats-server stalls the fast
    /// producer, never the server's own traffic nor other clients).
    pub(super) stalled: RefCell<Vec<(u64, Rc<ClientConn>)>>,
    /// The client whose publish is being routed (`None`: the server's own messages and what
    /// other cores forward, which never stall).
    pub(super) producing: Cell<Option<u64>>,
    /// Routes to other servers, on the core that holds them (`nats/route.rs`).
    pub routes: crate::nats::route::RouteHub,
    /// The client URLs of the cluster (empty when standalone), sent in client INFO.
    pub connect_urls: RefCell<Vec<String>>,
    pub(super) stall_threshold: usize,
    /// The last subject routed and what it matched: publishers mostly repeat one subject.
    pub(super) last_route: RefCell<Option<RouteMemo>>,
    /// Barriers in progress: id -> peers that have not answered yet.
    /// Barrier rounds in flight (`barrier`).
    pub(super) barriers: Gathering<()>,
    pub(super) internal: RefCell<Option<Rc<dyn InternalHandler>>>,
    /// TLS on the client port: every connection upgrades after the INFO line.
    pub(super) tls: RefCell<Option<futures_rustls::TlsAcceptor>>,
    /// Connections that moved to another core and whose stubs still forward.
    pub moving_out: RefCell<FxHashMap<u64, crate::nats::handover::MovingOut>>,
}

impl Core {
    pub fn new(
        id: usize,
        ncores: usize,
        opts: Rc<Options>,
        server_id: Rc<str>,
        global: Arc<GlobalCounters>,
    ) -> Self {
        let opts_max_pending = opts.max_pending;
        Core {
            id,
            ncores,
            auth: RefCell::new(Rc::new(opts.auth.clone())),
            opts,
            server_id,
            global,
            conns: RefCell::new(FxHashMap::default()),
            sublist: RefCell::new(Sublist::new()),
            interest: RefCell::new(Sublist::new()),
            local_interest: RefCell::new(FxHashMap::default()),
            outbox: Rc::new(Outbox::new(id, ncores)),
            tasks: CoreTasks::new(),
            sync: InterestSync::new(id, ncores),
            rng: Rng::new(0x9e37_79b9_7f4a_7c15 ^ (id as u64 + 1) ^ std::process::id() as u64),
            stats: CoreStats::default(),
            next_conn: Cell::new(0),
            stalled: RefCell::new(Vec::new()),
            producing: Cell::new(None),
            routes: crate::nats::route::RouteHub::default(),
            connect_urls: RefCell::new(Vec::new()),
            stall_threshold: (opts_max_pending / 2).clamp(1, MAX_STALL_THRESHOLD),
            last_route: RefCell::new(None),
            barriers: Gathering::default(),
            internal: RefCell::new(None),
            tls: RefCell::new(None),
            moving_out: RefCell::new(FxHashMap::default()),
        }
    }

    pub fn set_internal_handler(&self, handler: Rc<dyn InternalHandler>) {
        *self.internal.borrow_mut() = Some(handler);
    }

    pub fn set_tls(&self, config: Option<std::sync::Arc<rustls::ServerConfig>>) {
        *self.tls.borrow_mut() = config.map(futures_rustls::TlsAcceptor::from);
    }

    pub fn tls_acceptor(&self) -> Option<futures_rustls::TlsAcceptor> {
        self.tls.borrow().clone()
    }

    pub fn internal_handler(&self) -> Option<Rc<dyn InternalHandler>> {
        self.internal.borrow().clone()
    }

    /// Client IDs are unique across cores: `(cid - 1) % ncores` is the core that accepted the
    /// connection (it may move once, `nats::handover`).
    pub fn next_cid(&self) -> u64 {
        let n = self.next_conn.get();
        self.next_conn.set(n + 1);
        n * self.ncores as u64 + self.id as u64 + 1
    }

    /// The cluster's client URLs changed: clients that speak protocol 1 and finished their
    /// CONNECT get an INFO with the new list (they fail over with it).
    pub fn set_connect_urls(&self, urls: Vec<String>) {
        if *self.connect_urls.borrow() == urls {
            return;
        }
        *self.connect_urls.borrow_mut() = urls;
        let conns: Vec<Rc<ClientConn>> = self.conns.borrow().values().cloned().collect();
        for conn in conns {
            if conn.route.get() || !conn.connected.get() || conn.opts.borrow().protocol < 1 {
                continue;
            }
            let ip = conn
                .peer
                .get()
                .map(|p| p.ip().to_string())
                .unwrap_or_default();
            let info = crate::nats::client::server_info(self, conn.cid, ip);
            conn.send_info(&info);
        }
    }

    /// Handles what another core sent.
    pub fn on_mesh(&self, from: usize, msg: MeshMsg) {
        match msg {
            MeshMsg::Deliver(r) => {
                let m = MsgRef::of_routed(&r);
                let local = self.sublist.borrow_mut().matches(&r.subject);
                // What another core forwards came from its clients or the server: routes
                // here may take it (a message from a route is never forwarded to a core
                // for its routes: only this core holds routes).
                let mut fanout = Some(RouteFanout::default());
                if r.plain {
                    self.deliver_plain(&local.plain, &m, None, &mut fanout);
                }
                for group in &r.queues {
                    if let Some((_, members)) = local.queues.iter().find(|(q, _)| q == group) {
                        self.deliver_to_one(members, group, &m, None, &mut fanout);
                    }
                }
                if let Some(f) = fanout.filter(|f| !f.0.is_empty()) {
                    self.routes.announce_pending(self);
                    f.write(&m);
                }
            }
            MeshMsg::InterestAdd {
                subject,
                queue,
                epoch,
            } => {
                self.interest
                    .borrow_mut()
                    .insert(&subject, queue.as_ref(), from);
                self.routes.touched(&subject, queue.as_ref());
                self.outbox.push(from, MeshMsg::InterestAck { epoch });
            }
            MeshMsg::InterestRemove {
                subject,
                queue,
                epoch,
            } => {
                self.interest
                    .borrow_mut()
                    .remove(&subject, queue.as_ref(), &from);
                self.routes.touched(&subject, queue.as_ref());
                self.outbox.push(from, MeshMsg::InterestAck { epoch });
            }
            MeshMsg::InterestAck { epoch } => self.sync.record_ack(from, epoch),
            MeshMsg::ConnectUrls(urls) => self.set_connect_urls(urls),
            MeshMsg::Internal(m) => {
                if let Some(h) = self.internal_handler() {
                    h.on_mesh(from, m);
                }
            }
            MeshMsg::ToConn { cid, sid, msg } => {
                let sub = self
                    .conns
                    .borrow()
                    .get(&cid)
                    .and_then(|c| c.subs.borrow().get(&sid).cloned());
                if let Some(sub) = sub {
                    self.deliver_as(&sub, &MsgRef::of_routed(&msg), true);
                }
            }
            MeshMsg::InterestMove { cid, left, changes } => {
                self.apply_interest_move(from, cid, left, &changes)
            }
            MeshMsg::MoveApplied { cid } => self.move_notice(cid),
            MeshMsg::ForwardDone { cid } => {
                let conn = self.conns.borrow().get(&cid).cloned();
                if let Some(conn) = conn {
                    conn.release_held();
                    // An INFO after the CONNECT is one clients take at any time: it tells
                    // them which core holds them now.
                    let ip = conn
                        .peer
                        .get()
                        .map(|p| p.ip().to_string())
                        .unwrap_or_default();
                    let info = crate::nats::client::server_info(self, cid, ip);
                    conn.send_info(&info);
                }
            }
            // Adopted by the server loop, which owns the core's Rc (see server.rs).
            MeshMsg::ConnMove(_) => {}
            MeshMsg::Barrier { id } => self.outbox.push(from, MeshMsg::BarrierAck { id }),
            MeshMsg::BarrierAck { id } => self.barriers.answer(id, ()),
        }
    }

    /// Returns once every other core has answered a barrier: this core then knows all interest
    /// those cores had when they answered.
    pub async fn barrier(&self) {
        if self.ncores < 2 {
            return;
        }
        let id = self.barriers.open(self.ncores - 1);
        for peer in self.outbox.peers() {
            self.outbox.push(peer, MeshMsg::Barrier { id });
        }
        self.barriers.wait(id, None).await;
    }

    /// nats-server's "no responders": a request nobody received gets a 503 status message
    /// on the requester's own subscription that matches the reply subject.
    pub fn send_no_responders(&self, conn: &ClientConn, reply: &[u8]) {
        let sid = conn
            .subs
            .borrow()
            .values()
            .find(|s| subject::matches(&s.subject, reply))
            .map(|s| s.sid.clone());
        if let Some(sid) = sid {
            let header = wire::NO_RESPONDERS_HEADER;
            wire::push_msg(
                &mut conn.out.borrow_mut(),
                reply,
                &sid,
                None,
                header.len(),
                header,
                true,
            );
            conn.wake_writer.notify();
        }
    }
}

/// A message being routed, borrowed from where it was parsed or received.
pub struct MsgRef<'a> {
    pub subject: &'a [u8],
    pub reply: Option<&'a [u8]>,
    pub header_len: usize,
    pub payload: &'a [u8],
    /// The buffer the slices above live in: shared, not copied, when the message goes to
    /// another core.
    pub backing: Option<&'a Bytes>,
    /// The subject's own buffer when it lives apart (a server-made message): shared too.
    pub subject_backing: Option<&'a Bytes>,
}

impl MsgRef<'_> {
    /// A part of this message as `Bytes`: a slice of the backing buffer when there is one.
    pub fn share(&self, part: &[u8]) -> Bytes {
        [self.backing, self.subject_backing]
            .into_iter()
            .flatten()
            .find_map(|b| shards::wire::slice_within(b, part))
            .unwrap_or_else(|| Bytes::copy_from_slice(part))
    }

    /// A message another core sent, as a reference to route or deliver here.
    pub fn of_routed(r: &Routed) -> MsgRef<'_> {
        MsgRef {
            subject: &r.subject,
            reply: r.reply.as_deref(),
            header_len: r.header_len,
            payload: &r.payload,
            backing: None,
            subject_backing: None,
        }
    }
}

impl crate::nats::parser::Publish {
    pub fn msg_ref(&self) -> MsgRef<'_> {
        MsgRef {
            subject: self.subject(),
            reply: self.reply(),
            header_len: self.header_len,
            payload: self.payload(),
            backing: Some(&self.frame),
            subject_backing: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    pub(super) fn placement_fills_the_least_loaded_core() {
        let g = GlobalCounters::new(3);
        let placed: Vec<usize> = (0..6).map(|_| g.place(0)).collect();
        assert_eq!(placed, vec![0, 1, 2, 0, 1, 2]);
        g.release(1);
        g.release(1);
        assert_eq!(g.place(2), 1);
        assert_eq!(g.place(2), 1);
        assert_eq!(g.place(2), 2, "ties stay on the accepting core");
    }
}
