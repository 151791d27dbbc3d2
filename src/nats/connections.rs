//! A client or route connection as its core keeps it (`ClientConn`: output buffer, flow
//! control, close reason, connect options) and the counters of connections shared by all
//! cores (`GlobalCounters`: limits and placement).

use super::core::LocalSub;
use crate::nats::wire;
use crate::util::notify::Notify;
use bytes::Bytes;
use fxhash::FxHashMap;
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};

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
    pub(super) max_pending: usize,
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
    pub(super) fn output(&self, forwarded: bool) -> std::cell::RefMut<'_, Vec<u8>> {
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
