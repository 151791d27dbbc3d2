//! What one core owns of the core NATS server: its connections, the sublist of their
//! subscriptions, its replica of the cross-core interest map, and its counters.
//!
//! How a message travels (DESIGN.md §3): the publishing connection's core matches the subject
//! against its own sublist (local subscribers) and against the interest map (which cores have
//! subscribers). It writes MSG frames for local subscribers straight into their output buffers
//! and queues one `Routed` per interested core in the mesh outbox. Each queue group gets the
//! message exactly once: the publishing core picks the local members or one interested core,
//! and that core picks one of its members.

use super::mesh_msg::{MeshMsg, Routed};
use crate::config::options::Authorization;
use crate::config::Options;
use crate::mesh::{InterestSync, Outbox};
use crate::nats::sublist::{MatchResult, Sublist};
use crate::nats::{subject, wire};
use crate::util::gathering::Gathering;
use crate::util::notify::Notify;
use crate::util::rng::Rng;
use crate::util::tasks::CoreTasks;
use crate::util::timeout::within;
use bytes::Bytes;
use fxhash::FxHashMap;
use std::cell::{Cell, RefCell};
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Upper bound of the per-subscriber output that makes a producer wait.
const MAX_STALL_THRESHOLD: usize = 4 << 20;
/// Longest a fast producer waits for one stalled subscriber (nats-server 2.9's
/// `stallClientMaxDuration`).
const STALL_MAX: std::time::Duration = std::time::Duration::from_secs(1);

/// Counters shared by all cores; touched only when connections open and close.
pub struct GlobalCounters {
    pub connections: AtomicUsize,
    /// Connections owned by each core, for placing new connections.
    pub per_core: Vec<AtomicUsize>,
}

impl GlobalCounters {
    pub fn new(cores: usize) -> Self {
        GlobalCounters {
            connections: AtomicUsize::new(0),
            per_core: (0..cores).map(|_| AtomicUsize::new(0)).collect(),
        }
    }

    /// Takes a connection slot under `max`; false when the server is full.
    pub fn try_open(&self, max: usize) -> bool {
        self.connections
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok()
    }

    pub fn close(&self) {
        self.connections.fetch_sub(1, Ordering::AcqRel);
    }

    /// The core that should own a connection accepted by `me`: `me` unless another core owns
    /// fewer connections. The chosen core's count is taken now, so a burst of accepts spreads.
    pub fn place(&self, me: usize) -> usize {
        let count = |c: usize| {
            self.per_core
                .get(c)
                .map_or(usize::MAX, |n| n.load(Ordering::Acquire))
        };
        let mine = count(me);
        let (best, least) = (0..self.per_core.len())
            .map(|c| (c, count(c)))
            .min_by_key(|&(c, n)| (n, c != me))
            .unwrap_or((me, mine));
        let target = if least < mine { best } else { me };
        if let Some(n) = self.per_core.get(target) {
            n.fetch_add(1, Ordering::AcqRel);
        }
        target
    }

    /// Counts a connection on `core` without choosing.
    pub fn place_on(&self, core: usize) {
        if let Some(n) = self.per_core.get(core) {
            n.fetch_add(1, Ordering::AcqRel);
        }
    }

    pub fn release(&self, core: usize) {
        if let Some(n) = self.per_core.get(core) {
            n.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

#[derive(Default)]
pub struct CoreStats {
    pub in_msgs: Cell<u64>,
    pub in_bytes: Cell<u64>,
    pub out_msgs: Cell<u64>,
    pub out_bytes: Cell<u64>,
    pub slow_consumers: Cell<u64>,
    pub total_connections: Cell<u64>,
}

fn bump(c: &Cell<u64>, by: u64) {
    c.set(c.get().wrapping_add(by));
}

/// Why a connection ended (logged, and later shown by `/connz?state=closed`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    ClientClosed,
    ReadError,
    WriteError,
    SlowConsumerPendingBytes,
    SlowConsumerWriteDeadline,
    StaleConnection,
    ProtocolViolation,
    AuthenticationTimeout,
    AuthenticationViolation,
    MaxPayloadExceeded,
    MaxControlLineExceeded,
    MaxConnectionsExceeded,
    ServerShutdown,
}

/// Options a client sent in CONNECT (nats-server's defaults before it does).
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(default)]
pub struct ConnectOptions {
    pub verbose: bool,
    pub pedantic: bool,
    pub echo: bool,
    pub headers: bool,
    pub no_responders: bool,
    pub name: String,
    pub lang: String,
    pub version: String,
    pub protocol: i64,
    pub user: Option<String>,
    pub pass: Option<String>,
    pub auth_token: Option<String>,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            verbose: true,
            pedantic: true,
            echo: true,
            headers: false,
            no_responders: false,
            name: String::new(),
            lang: String::new(),
            version: String::new(),
            protocol: 0,
            user: None,
            pass: None,
            auth_token: None,
        }
    }
}

/// A client connection as the rest of its core sees it: an output buffer and flags.
pub struct ClientConn {
    pub cid: u64,
    pub out: RefCell<Vec<u8>>,
    pub wake_writer: Notify,
    /// Notified by the writer after each completed write and when the connection ends.
    pub drained: Notify,
    pub closed: Cell<Option<CloseReason>>,
    pub opts: RefCell<ConnectOptions>,
    pub subs: RefCell<FxHashMap<Bytes, Rc<LocalSub>>>,
    pub in_msgs: Cell<u64>,
    pub out_msgs: Cell<u64>,
    pub in_bytes: Cell<u64>,
    pub out_bytes: Cell<u64>,
    /// The client's address, for monitoring (`/connz`).
    pub peer: Cell<Option<std::net::SocketAddr>>,
    pub started: std::time::SystemTime,
    /// Server PINGs not answered yet.
    pub pings_out: Cell<u32>,
    /// A valid CONNECT was received.
    pub connected: Cell<bool>,
    /// Plain TCP (a TLS session cannot move to another core).
    pub plain_tcp: Cell<bool>,
    /// Its first streaming publish or subscription has placed it: it moves at most once.
    pub placed: Cell<bool>,
    /// Asked to move to this core at the reader's next operation boundary.
    pub move_to: Cell<Option<usize>>,
    /// Moved to this core: this is the stub the old core keeps, and it forwards.
    pub moved_to: Cell<Option<usize>>,
    /// Just moved here: its own output waits until the old core has forwarded what it had
    /// (`nats::handover`).
    pub held: RefCell<Option<Vec<u8>>>,
    /// The writer stops without closing the socket (the connection is moving).
    pub stop_writer: Cell<bool>,
    /// Bytes the writer took out of `out` and has not finished writing.
    pub writing: Cell<usize>,
    /// A route to another server (`nats/route.rs`): messages for it are written as `RMSG`.
    pub route: Cell<bool>,
    /// The peer route takes headers (`HMSG`).
    pub route_headers: Cell<bool>,
    max_pending: usize,
}

impl ClientConn {
    pub fn new(cid: u64, max_pending: usize) -> Self {
        ClientConn {
            cid,
            out: RefCell::new(Vec::new()),
            wake_writer: Notify::new(),
            drained: Notify::new(),
            closed: Cell::new(None),
            opts: RefCell::new(ConnectOptions::default()),
            subs: RefCell::new(FxHashMap::default()),
            in_msgs: Cell::new(0),
            out_msgs: Cell::new(0),
            in_bytes: Cell::new(0),
            out_bytes: Cell::new(0),
            peer: Cell::new(None),
            started: std::time::SystemTime::now(),
            pings_out: Cell::new(0),
            connected: Cell::new(false),
            plain_tcp: Cell::new(false),
            placed: Cell::new(false),
            move_to: Cell::new(None),
            moved_to: Cell::new(None),
            held: RefCell::new(None),
            stop_writer: Cell::new(false),
            writing: Cell::new(0),
            route: Cell::new(false),
            route_headers: Cell::new(false),
            max_pending,
        }
    }

    /// Clients known to write their flush PING ahead of buffered protocol (nats-py).
    pub fn writes_ping_early(&self) -> bool {
        self.opts.borrow().lang.starts_with("python")
    }

    /// Bytes queued for the client, including what the writer is writing now.
    pub fn pending(&self) -> usize {
        self.out.borrow().len() + self.writing.get()
    }

    pub fn is_closed(&self) -> bool {
        self.closed.get().is_some()
    }

    /// Marks the connection closed (the first reason wins) and wakes its writer to finish.
    pub fn close(&self, reason: CloseReason) {
        if self.closed.get().is_none() {
            self.closed.set(Some(reason));
        }
        self.wake_writer.notify();
    }

    /// Where output goes: the held buffer while a move completes, unless it is a message
    /// forwarded by the old core (which must go first).
    fn output(&self, forwarded: bool) -> std::cell::RefMut<'_, Vec<u8>> {
        if !forwarded {
            if let Ok(held) = std::cell::RefMut::filter_map(self.held.borrow_mut(), Option::as_mut)
            {
                return held;
            }
        }
        self.out.borrow_mut()
    }

    /// Queues protocol bytes for the writer.
    pub fn send(&self, bytes: &[u8]) {
        self.output(false).extend_from_slice(bytes);
        self.wake_writer.notify();
    }

    pub fn send_err(&self, text: &str) {
        wire::push_err(&mut self.output(false), text);
        self.wake_writer.notify();
    }

    pub fn send_info(&self, info: &wire::ServerInfo) {
        wire::push_info(&mut self.output(false), info);
        self.wake_writer.notify();
    }

    /// The old core has forwarded everything: held output follows it.
    pub fn release_held(&self) {
        if let Some(held) = self.held.borrow_mut().take() {
            self.out.borrow_mut().extend_from_slice(&held);
        }
        self.wake_writer.notify();
    }
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

/// Whether a subscription is a route's (interest of another server).
fn is_route_sub(sub: &LocalSub) -> bool {
    sub.conn.upgrade().is_some_and(|c| c.route.get())
}

/// One route a message goes to: the connection and the queue groups chosen for it (plain
/// interest needs no mark: being listed sends the `RMSG`).
type RouteTarget = (Rc<ClientConn>, Vec<Bytes>);

/// The routes one message goes to: each at most once, with the queue groups chosen for it
/// (nats-server sends one `RMSG` per route carrying the union of its queue names).
#[derive(Default)]
struct RouteFanout(smallvec::SmallVec<[RouteTarget; 2]>);

impl RouteFanout {
    fn entry(&mut self, sub: &LocalSub) -> Option<&mut RouteTarget> {
        let conn = sub.conn.upgrade().filter(|c| !c.is_closed())?;
        let at = match self.0.iter().position(|(c, _)| c.cid == conn.cid) {
            Some(at) => at,
            None => {
                self.0.push((conn, Vec::new()));
                self.0.len() - 1
            }
        };
        self.0.get_mut(at)
    }

    fn plain(&mut self, sub: &LocalSub) -> bool {
        self.entry(sub).is_some()
    }

    fn queue(&mut self, sub: &LocalSub, group: &Bytes) -> bool {
        match self.entry(sub) {
            Some((_, queues)) => {
                if !queues.contains(group) {
                    queues.push(group.clone());
                }
                true
            }
            None => false,
        }
    }

    fn write(self, msg: &MsgRef<'_>) {
        for (conn, queues) in self.0 {
            {
                let mut out = conn.out.borrow_mut();
                crate::nats::route_proto::push_msg(
                    &mut out,
                    msg.subject,
                    msg.reply,
                    &queues,
                    msg.header_len,
                    msg.payload,
                    conn.route_headers.get(),
                );
            }
            bump(&conn.out_msgs, 1);
            bump(&conn.out_bytes, msg.payload.len() as u64);
            conn.wake_writer.notify();
        }
    }
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
    local_interest: RefCell<FxHashMap<(Bytes, Option<Bytes>), usize>>,
    pub outbox: Rc<Outbox<MeshMsg>>,
    pub sync: InterestSync,
    pub rng: Rng,
    pub stats: CoreStats,
    next_conn: Cell<u64>,
    /// Subscribers whose output passed the stall threshold, with the client whose publish
    /// put it there: only that producer waits for them (as nats-server stalls the fast
    /// producer, never the server's own traffic nor other clients).
    stalled: RefCell<Vec<(u64, Rc<ClientConn>)>>,
    /// The client whose publish is being routed (`None`: the server's own messages and what
    /// other cores forward, which never stall).
    producing: Cell<Option<u64>>,
    /// Routes to other servers, on the core that holds them (`nats/route.rs`).
    pub routes: crate::nats::route::RouteHub,
    /// The client URLs of the cluster (empty when standalone), sent in client INFO.
    pub connect_urls: RefCell<Vec<String>>,
    stall_threshold: usize,
    /// The last subject routed and what it matched: publishers mostly repeat one subject.
    last_route: RefCell<Option<RouteMemo>>,
    /// Barriers in progress: id -> peers that have not answered yet.
    /// Barrier rounds in flight (`barrier`).
    barriers: Gathering<()>,
    internal: RefCell<Option<Rc<dyn InternalHandler>>>,
    /// TLS on the client port: every connection upgrades after the INFO line.
    tls: RefCell<Option<futures_rustls::TlsAcceptor>>,
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

    pub fn add_subscription(&self, sub: Rc<LocalSub>) {
        self.sublist
            .borrow_mut()
            .insert(&sub.subject, sub.queue.as_ref(), SubRef(sub.clone()));
        self.routes.touched(&sub.subject, sub.queue.as_ref());
        let key = (sub.subject.clone(), sub.queue.clone());
        let first = {
            let mut li = self.local_interest.borrow_mut();
            let n = li.entry(key).or_insert(0);
            *n += 1;
            *n == 1
        };
        if first {
            self.broadcast_interest(&sub, true);
        }
    }

    /// Tells every other core that this core gained (`added`) or lost its interest in the
    /// subscription's (subject, queue).
    fn broadcast_interest(&self, sub: &LocalSub, added: bool) {
        if self.ncores < 2 {
            return;
        }
        let epoch = self.sync.next_epoch();
        for peer in self.outbox.peers() {
            let (subject, queue) = (sub.subject.clone(), sub.queue.clone());
            let msg = if added {
                MeshMsg::InterestAdd {
                    subject,
                    queue,
                    epoch,
                }
            } else {
                MeshMsg::InterestRemove {
                    subject,
                    queue,
                    epoch,
                }
            };
            self.outbox.push(peer, msg);
        }
    }

    pub fn remove_subscription(&self, sub: &Rc<LocalSub>) {
        if self.unlist(sub) == Some(0) {
            self.broadcast_interest(sub, false);
        }
    }

    /// Takes a subscription out of the sublist and off the local count of its (subject,
    /// queue); says how many local ones are left on it, None if it was not listed.
    fn unlist(&self, sub: &Rc<LocalSub>) -> Option<usize> {
        let removed = self.sublist.borrow_mut().remove(
            &sub.subject,
            sub.queue.as_ref(),
            &SubRef(sub.clone()),
        );
        if !removed {
            return None;
        }
        self.routes.touched(&sub.subject, sub.queue.as_ref());
        let key = (sub.subject.clone(), sub.queue.clone());
        let mut li = self.local_interest.borrow_mut();
        Some(match li.get_mut(&key) {
            Some(n) if *n > 1 => {
                *n -= 1;
                *n
            }
            Some(_) => {
                li.remove(&key);
                0
            }
            None => 0,
        })
    }

    /// How many local subscriptions share (subject, queue).
    pub fn local_interest_count(&self, subject: &Bytes, queue: Option<&Bytes>) -> usize {
        self.local_interest
            .borrow()
            .get(&(subject.clone(), queue.cloned()))
            .copied()
            .unwrap_or(0)
    }

    /// A subscription of a connection moved here from `left`: into the sublist, counted, and
    /// `left` out of this core's interest map when it has no other subscriber; the other
    /// cores learn it from one `InterestMove`. Says whether it is this core's first on it.
    pub fn install_moved_subscription(
        &self,
        sub: Rc<LocalSub>,
        left: usize,
        drop_left: bool,
    ) -> bool {
        self.sublist
            .borrow_mut()
            .insert(&sub.subject, sub.queue.as_ref(), SubRef(sub.clone()));
        self.routes.touched(&sub.subject, sub.queue.as_ref());
        if drop_left {
            self.interest
                .borrow_mut()
                .remove(&sub.subject, sub.queue.as_ref(), &left);
        }
        let mut li = self.local_interest.borrow_mut();
        let n = li
            .entry((sub.subject.clone(), sub.queue.clone()))
            .or_insert(0);
        *n += 1;
        *n == 1
    }

    /// Applies another core's `InterestMove`; on the core the connection left, counts the
    /// notice and tells the new core that everything before it was forwarded.
    fn apply_interest_move(
        &self,
        from: usize,
        cid: u64,
        left: usize,
        changes: &[super::mesh_msg::InterestChange],
    ) {
        {
            let mut interest = self.interest.borrow_mut();
            for c in changes {
                if c.drop_left && left != self.id {
                    interest.remove(&c.subject, c.queue.as_ref(), &left);
                }
                if c.add_new {
                    interest.insert(&c.subject, c.queue.as_ref(), from);
                }
                self.routes.touched(&c.subject, c.queue.as_ref());
            }
        }
        if left == self.id {
            self.outbox.push(from, MeshMsg::ForwardDone { cid });
            self.move_notice(cid);
        } else {
            self.outbox.push(left, MeshMsg::MoveApplied { cid });
        }
    }

    /// One more core will send nothing to a moved connection's stubs; after the last, they
    /// leave the sublist.
    fn move_notice(&self, cid: u64) {
        let done = {
            let mut moving = self.moving_out.borrow_mut();
            match moving.get_mut(&cid) {
                Some(m) => {
                    m.waiting = m.waiting.saturating_sub(1);
                    if m.waiting == 0 {
                        moving.remove(&cid)
                    } else {
                        None
                    }
                }
                None => None,
            }
        };
        let Some(gone) = done else {
            return;
        };
        for (sub, announced_dropped) in &gone.subs {
            let Some(left) = self.unlist(sub) else {
                continue;
            };
            // The move told the others what this core had then; correct them if a local
            // subscriber came or went since.
            if *announced_dropped && left > 0 {
                self.broadcast_interest(sub, true);
            } else if !announced_dropped && left == 0 {
                self.broadcast_interest(sub, false);
            }
        }
    }

    /// Removes a subscription from its connection and the sublist.
    pub fn unsubscribe(&self, conn: &ClientConn, sid: &Bytes) {
        let sub = conn.subs.borrow_mut().remove(sid);
        if let Some(sub) = sub {
            self.remove_subscription(&sub);
        }
    }

    /// Writes one message to a local subscriber; false if it could not take it.
    fn deliver(&self, sub: &Rc<LocalSub>, msg: &MsgRef<'_>) -> bool {
        self.deliver_as(sub, msg, false)
    }

    /// `forwarded`: sent on by the core the connection left, ahead of any held output.
    fn deliver_as(&self, sub: &Rc<LocalSub>, msg: &MsgRef<'_>, forwarded: bool) -> bool {
        let Some(conn) = sub.conn.upgrade() else {
            return false;
        };
        if let Some(to) = conn.moved_to.get() {
            self.outbox.push(
                to,
                MeshMsg::ToConn {
                    cid: conn.cid,
                    sid: sub.sid.clone(),
                    msg: Routed {
                        subject: msg.share(msg.subject),
                        reply: msg.reply.map(|r| msg.share(r)),
                        header_len: msg.header_len,
                        payload: msg.share(msg.payload),
                        plain: true,
                        queues: Vec::new(),
                    },
                },
            );
            return true;
        }
        if conn.is_closed() {
            return false;
        }
        let max = sub.max.get();
        let delivered = sub.delivered.get() + 1;
        if max > 0 && delivered > max {
            return false;
        }
        sub.delivered.set(delivered);
        let headers = conn.opts.borrow().headers;
        let pending = {
            let mut out = conn.output(forwarded);
            wire::push_msg(
                &mut out,
                msg.subject,
                &sub.sid,
                msg.reply,
                msg.header_len,
                msg.payload,
                headers,
            );
            out.len()
        } + conn.writing.get();
        if super::trace::enabled() {
            super::trace::outbound_msg(&conn, msg.subject, &sub.sid, msg.reply, msg.payload.len());
        }
        bump(&conn.out_msgs, 1);
        bump(&conn.out_bytes, msg.payload.len() as u64);
        bump(&self.stats.out_msgs, 1);
        bump(&self.stats.out_bytes, msg.payload.len() as u64);
        if max > 0 && delivered == max {
            self.unsubscribe(&conn, &sub.sid);
        }
        if pending > self.stall_threshold && pending <= conn.max_pending {
            if let Some(producer) = self.producing.get().filter(|p| *p != conn.cid) {
                let mut stalled = self.stalled.borrow_mut();
                if !stalled
                    .iter()
                    .any(|(p, c)| *p == producer && c.cid == conn.cid)
                {
                    stalled.push((producer, conn.clone()));
                }
            }
        }
        if pending > conn.max_pending {
            bump(&self.stats.slow_consumers, 1);
            log::warn!(
                "{} - cid:{} - Slow Consumer Detected: MaxPending of {} Exceeded",
                conn.peer
                    .get()
                    .map(|p| p.to_string())
                    .unwrap_or_else(|| "?".into()),
                conn.cid,
                conn.max_pending
            );
            // Give the memory back now, not when the writer finishes.
            *conn.out.borrow_mut() = Vec::new();
            *conn.held.borrow_mut() = None;
            conn.close(CloseReason::SlowConsumerPendingBytes);
        }
        conn.wake_writer.notify();
        true
    }

    /// Flow control, as nats-server 2.9 stalls fast producers: the client whose publish filled
    /// a subscriber's buffer past the stall threshold waits (before reading more input) until
    /// that subscriber's writer drains it, it closes, or `STALL_MAX` passed (nats-server's
    /// `stallClientMaxDuration`). Only that producer waits: other connections, the server's
    /// own messages and what other cores forward go on, and a subscriber that still does not
    /// read is cut at `max_pending`.
    pub async fn wait_stalled(&self, own_cid: u64) {
        loop {
            let next = {
                let mut stalled = self.stalled.borrow_mut();
                let at = stalled.iter().position(|(p, _)| *p == own_cid);
                at.map(|i| stalled.swap_remove(i).1)
            };
            let Some(conn) = next else {
                return;
            };
            let give_up = Instant::now() + STALL_MAX;
            while !conn.is_closed() && conn.pending() > self.stall_threshold {
                let left = give_up.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                if within(left, conn.drained.notified()).await.is_none() {
                    break;
                }
            }
        }
    }

    /// Forgets the stalls a closed connection caused or suffered.
    pub fn forget_stalls(&self, cid: u64) {
        self.stalled
            .borrow_mut()
            .retain(|(p, c)| *p != cid && c.cid != cid);
    }

    /// Delivers to one member of a queue group, trying others if the first cannot take it.
    /// Delivers to plain subscribers (but `skip_cid`); a route's subscription adds that route
    /// to `fanout` instead (`None`: the message came from a route and goes to no route).
    /// Returns whether any subscriber was found.
    fn deliver_plain(
        &self,
        subs: &[SubRef],
        msg: &MsgRef<'_>,
        skip_cid: Option<u64>,
        fanout: &mut Option<RouteFanout>,
    ) -> bool {
        let mut found = false;
        for sub in subs {
            if Some(sub.0.cid) == skip_cid {
                continue;
            }
            found |= match (is_route_sub(&sub.0), fanout.as_mut()) {
                (false, _) => self.deliver(&sub.0, msg),
                (true, Some(f)) => f.plain(&sub.0),
                (true, None) => false,
            };
        }
        found
    }

    /// A member that is a route's subscription adds the group to that route's message in
    /// `fanout` instead (`None`: the message came from a route and goes to no route).
    fn deliver_to_one(
        &self,
        members: &[SubRef],
        group: &Bytes,
        msg: &MsgRef<'_>,
        skip_cid: Option<u64>,
        fanout: &mut Option<RouteFanout>,
    ) -> bool {
        if members.is_empty() {
            return false;
        }
        let start = self.rng.below(members.len());
        (0..members.len()).any(|i| {
            let sub = &members[(start + i) % members.len()].0;
            if Some(sub.cid) == skip_cid {
                return false;
            }
            match (is_route_sub(sub), fanout.as_mut()) {
                (false, _) => self.deliver(sub, msg),
                (true, Some(f)) => f.queue(sub, group),
                (true, None) => false,
            }
        })
    }

    /// Routes a message published by a local connection (or by the server itself when
    /// `origin` is `None`). Returns whether any subscriber, here or on another core, was
    /// found.
    pub fn publish(&self, origin: Option<&ClientConn>, msg: &MsgRef<'_>) -> bool {
        bump(&self.stats.in_msgs, 1);
        bump(&self.stats.in_bytes, msg.payload.len() as u64);
        self.route(origin, msg)
    }

    /// Routes a message (already counted as received) to local and remote subscribers.
    pub fn route(&self, origin: Option<&ClientConn>, msg: &MsgRef<'_>) -> bool {
        let producing = self.producing.replace(origin.map(|c| c.cid));
        let found = self.route_from(origin, msg, None);
        self.producing.set(producing);
        found
    }

    /// A message from the route `from`: to local subscribers and other cores, and to one
    /// member of each queue group it names (only those), never to a route.
    pub fn route_from_peer(&self, from: &ClientConn, msg: &MsgRef<'_>, queues: &[Bytes]) -> bool {
        // The route is the producer: a subscriber it fills past the stall threshold holds its
        // reading back, as a client's would (TCP then slows the peer down).
        let producing = self.producing.replace(Some(from.cid));
        let found = self.route_from(Some(from), msg, Some(queues));
        self.producing.set(producing);
        found
    }

    /// `only_queues`: a message from a route serves just the queue groups it names.
    fn route_from(
        &self,
        origin: Option<&ClientConn>,
        msg: &MsgRef<'_>,
        only_queues: Option<&[Bytes]>,
    ) -> bool {
        let from_route = origin.is_some_and(|c| c.route.get());
        let skip_cid = origin
            .filter(|c| c.route.get() || !c.opts.borrow().echo)
            .map(|c| c.cid);
        let (local, remote) = self.match_both(msg.subject);
        let mut found = false;
        let mut fanout = (!from_route).then(RouteFanout::default);
        found |= self.deliver_plain(&local.plain, msg, skip_cid, &mut fanout);
        // Per remote core: (deliver to plain subscribers, queue groups it must serve).
        let mut targets: Vec<(usize, bool, Vec<Bytes>)> = Vec::new();
        for &core in &remote.plain {
            match targets.iter_mut().find(|t| t.0 == core) {
                Some(t) => t.1 = true,
                None => targets.push((core, true, Vec::new())),
            }
        }
        let mut groups: Vec<&Bytes> = local.queues.iter().map(|(q, _)| q).collect();
        for (q, _) in &remote.queues {
            if !groups.contains(&q) {
                groups.push(q);
            }
        }
        if let Some(named) = only_queues {
            groups.retain(|g| named.contains(g));
        }
        for group in groups {
            let local_members: &[SubRef] = local
                .queues
                .iter()
                .find(|(q, _)| q == group)
                .map(|(_, m)| m.as_slice())
                .unwrap_or(&[]);
            let mut cores: Vec<usize> = remote
                .queues
                .iter()
                .find(|(q, _)| q == group)
                .map(|(_, c)| c.clone())
                .unwrap_or_default();
            cores.sort_unstable();
            cores.dedup();
            let local_slot = usize::from(!local_members.is_empty());
            let pick = self.rng.below(local_slot + cores.len());
            if pick < local_slot
                && self.deliver_to_one(local_members, group, msg, skip_cid, &mut fanout)
            {
                found = true;
                continue;
            }
            if cores.is_empty() {
                continue;
            }
            let core = cores[pick.saturating_sub(local_slot) % cores.len()];
            found = true;
            match targets.iter_mut().find(|t| t.0 == core) {
                Some(t) => t.2.push(group.clone()),
                None => targets.push((core, false, vec![group.clone()])),
            }
        }
        if let Some(f) = fanout.filter(|f| !f.0.is_empty()) {
            // Interest this message's sender announced first goes out first: a peer's
            // streaming server answers a subscription request at once, to an inbox it must
            // already know we listen on.
            self.routes.announce_pending(self);
            f.write(msg);
        }
        if targets.is_empty() {
            return found;
        }
        let subject = msg.share(msg.subject);
        let reply = msg.reply.map(|r| msg.share(r));
        let payload = msg.share(msg.payload);
        for (core, plain, queues) in targets {
            self.outbox.push(
                core,
                MeshMsg::Deliver(Routed {
                    subject: subject.clone(),
                    reply: reply.clone(),
                    header_len: msg.header_len,
                    payload: payload.clone(),
                    plain,
                    queues,
                }),
            );
        }
        true
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

    /// This server's own interest in exactly `subject` (and `queue`), for its routes: its
    /// subscriptions on this core that are not a route's, plus the other cores that have some.
    pub fn own_interest(&self, subject: &[u8], queue: Option<&Bytes>) -> u32 {
        let here = self
            .sublist
            .borrow()
            .exact(subject, queue)
            .iter()
            .filter(|s| !is_route_sub(&s.0))
            .count();
        let mut cores = self.interest.borrow().exact(subject, queue);
        cores.sort_unstable();
        cores.dedup();
        u32::try_from(here + cores.len()).unwrap_or(u32::MAX)
    }

    /// Every (subject, queue) this server has some own interest in.
    pub fn own_interest_keys(&self) -> Vec<(Bytes, Option<Bytes>)> {
        let mut keys: Vec<(Bytes, Option<Bytes>)> = self
            .sublist
            .borrow()
            .entries()
            .into_iter()
            .filter(|(_, _, subs)| subs.iter().any(|s| !is_route_sub(&s.0)))
            .map(|(s, q, _)| (s, q))
            .chain(
                self.interest
                    .borrow()
                    .entries()
                    .into_iter()
                    .map(|(s, q, _)| (s, q)),
            )
            .collect();
        keys.sort();
        keys.dedup();
        keys
    }

    /// Whether any subscriber, here or on another core, may match a subject starting with
    /// `subject`'s first token. Cheap (two root-level lookups): the streaming front asks it
    /// for every request it takes, to pass the request on to ordinary subscribers as well.
    pub fn may_have_subscribers(&self, subject: &[u8]) -> bool {
        let first = subject.split(|b| *b == b'.').next().unwrap_or_default();
        self.sublist.borrow().may_match_first_token(first)
            || (self.ncores > 1 && self.interest.borrow().may_match_first_token(first))
    }

    /// Local subscribers and interested cores for a subject, through the one-entry memo.
    fn match_both(&self, subject: &[u8]) -> (Rc<MatchResult<SubRef>>, Rc<MatchResult<usize>>) {
        let generations = (
            self.sublist.borrow().generation(),
            self.interest.borrow().generation(),
        );
        if let Some(memo) = self.last_route.borrow().as_ref() {
            if memo.generations == generations && memo.subject == subject {
                return (memo.local.clone(), memo.remote.clone());
            }
        }
        let local = self.sublist.borrow_mut().matches(subject);
        let remote = if self.ncores > 1 {
            self.interest.borrow_mut().matches(subject)
        } else {
            Rc::new(MatchResult::default())
        };
        let mut memo = self.last_route.borrow_mut();
        match memo.as_mut() {
            // Reuse the subject buffer: publishers cycling through subjects do not allocate.
            Some(m) => {
                m.subject.clear();
                m.subject.extend_from_slice(subject);
                m.generations = generations;
                m.local = local.clone();
                m.remote = remote.clone();
            }
            None => {
                *memo = Some(RouteMemo {
                    subject: subject.to_vec(),
                    generations,
                    local: local.clone(),
                    remote: remote.clone(),
                })
            }
        }
        (local, remote)
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

struct RouteMemo {
    subject: Vec<u8>,
    generations: (u64, u64),
    local: Rc<MatchResult<SubRef>>,
    remote: Rc<MatchResult<usize>>,
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
    fn placement_fills_the_least_loaded_core() {
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
