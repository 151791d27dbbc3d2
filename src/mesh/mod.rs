//! Cross-core traffic over glommio's channel mesh: what one core tells another (messages to
//! deliver, interest changes and their acknowledgements), batched per peer and flushed once
//! per event-loop turn. Producers never block on a full ring: they queue in the outbox, and
//! only connection readers wait (before reading more input) when a peer falls far behind, so
//! two cores can never deadlock sending to each other.

use crate::util::notify::Notify;
use bytes::Bytes;
use glommio::channels::channel_mesh::Senders;
use std::cell::{Cell, RefCell};
use std::rc::Rc;

/// Messages queued for peers above this count make connection readers pause.
const HIGH_WATER: usize = 256 * 1024;

/// A message published on one core, for the subscribers of another.
#[derive(Debug, Clone)]
pub struct Routed {
    pub subject: Bytes,
    pub reply: Option<Bytes>,
    pub header_len: usize,
    pub payload: Bytes,
    /// Deliver to the receiving core's plain (non-queue) subscribers.
    pub plain: bool,
    /// Queue groups for which the receiving core was picked to deliver to one member.
    pub queues: Vec<Bytes>,
}

#[derive(Debug)]
pub enum MeshMsg {
    Deliver(Routed),
    /// The sending core gained its first subscription on (subject, queue).
    InterestAdd {
        subject: Bytes,
        queue: Option<Bytes>,
        epoch: u64,
    },
    /// The sending core lost its last subscription on (subject, queue).
    InterestRemove {
        subject: Bytes,
        queue: Option<Bytes>,
        epoch: u64,
    },
    /// The sending core has applied the receiver's interest changes up to `epoch`.
    InterestAck {
        epoch: u64,
    },
    /// Asks for a `BarrierAck`: since rings are FIFO, once it arrives the asking core has
    /// applied every interest change the peer made before answering.
    Barrier {
        id: u64,
    },
    BarrierAck {
        id: u64,
    },
    /// From the core that holds the routes: the client URLs of the whole cluster changed (a
    /// route came or went); clients are told with an INFO.
    ConnectUrls(Vec<String>),
    /// A message for the server-side handler of internal subjects (the streaming layer), which
    /// core NATS carries without knowing its type.
    Internal(Box<dyn std::any::Any + Send>),
    /// A connection handed to the receiving core (`nats::handover`).
    ConnMove(Box<crate::nats::handover::MovedConn>),
    /// From the core a connection left: a message that matched one of its subscriptions
    /// there, for the core that holds it now.
    ToConn {
        cid: u64,
        sid: Bytes,
        msg: Routed,
    },
    /// From the core that took a connection over, to every other core: its subscriptions are
    /// there now. Applied at once, so no core routes a message to both cores or to neither.
    InterestMove {
        cid: u64,
        /// The core the connection left.
        left: usize,
        changes: Vec<InterestChange>,
    },
    /// To the core a connection left, from a third core: it applied the `InterestMove`, so it
    /// sends nothing more for that connection there.
    MoveApplied {
        cid: u64,
    },
    /// To the core that took a connection over, from the one it left: every message for it
    /// that the new core routed to the old one before taking it over has been forwarded.
    ForwardDone {
        cid: u64,
    },
}

/// How one subscription of a moved connection changes the interest map.
#[derive(Debug, Clone)]
pub struct InterestChange {
    pub subject: Bytes,
    pub queue: Option<Bytes>,
    /// The core the connection left has no other subscriber for it.
    pub drop_left: bool,
    /// The core that took it over had no subscriber for it before.
    pub add_new: bool,
}

pub type Batch = Vec<MeshMsg>;

pub struct Outbox {
    me: usize,
    queues: Vec<RefCell<Batch>>,
    signals: Vec<Notify>,
    queued: Cell<usize>,
    drained: Notify,
}

impl Outbox {
    pub fn new(me: usize, peers: usize) -> Self {
        Outbox {
            me,
            queues: (0..peers).map(|_| RefCell::new(Vec::new())).collect(),
            signals: (0..peers).map(|_| Notify::new()).collect(),
            queued: Cell::new(0),
            drained: Notify::new(),
        }
    }

    pub fn peers(&self) -> impl Iterator<Item = usize> + '_ {
        let me = self.me;
        (0..self.queues.len()).filter(move |p| *p != me)
    }

    pub fn push(&self, peer: usize, msg: MeshMsg) {
        let Some(queue) = self.queues.get(peer) else {
            return;
        };
        let mut queue = queue.borrow_mut();
        queue.push(msg);
        self.queued.set(self.queued.get() + 1);
        if queue.len() == 1 {
            self.signals[peer].notify();
        }
    }

    pub fn is_congested(&self) -> bool {
        self.queued.get() > HIGH_WATER
    }

    pub async fn until_uncongested(&self) {
        while self.is_congested() {
            self.drained.notified().await;
        }
    }

    /// Starts one flusher task per peer; each sends everything queued for its peer as one
    /// batch, after letting the current turn's producers finish.
    pub fn start_flushers(self: &Rc<Self>, senders: Rc<Senders<Batch>>) {
        for peer in self.peers().collect::<Vec<_>>() {
            let outbox = self.clone();
            let senders = senders.clone();
            glommio::spawn_local(async move {
                loop {
                    if outbox.queues[peer].borrow().is_empty() {
                        outbox.signals[peer].notified().await;
                        futures_lite::future::yield_now().await;
                    }
                    let batch = std::mem::take(&mut *outbox.queues[peer].borrow_mut());
                    if batch.is_empty() {
                        continue;
                    }
                    let sent = batch.len();
                    if senders.send_to(peer, batch).await.is_err() {
                        log::debug!("core {}: mesh to core {peer} closed", outbox.me);
                        break;
                    }
                    outbox.queued.set(outbox.queued.get().saturating_sub(sent));
                    outbox.drained.notify();
                }
            })
            .detach();
        }
    }
}

/// Tracks whether every peer has applied this core's interest changes, so that a client's
/// PING is answered only once its subscriptions are visible to publishers on every core.
pub struct InterestSync {
    epoch: Cell<u64>,
    acked: RefCell<Vec<u64>>,
    me: usize,
    changed: Notify,
}

impl InterestSync {
    pub fn new(me: usize, peers: usize) -> Self {
        InterestSync {
            epoch: Cell::new(0),
            acked: RefCell::new(vec![0; peers]),
            me,
            changed: Notify::new(),
        }
    }

    /// The epoch of a new interest change.
    pub fn next_epoch(&self) -> u64 {
        let e = self.epoch.get() + 1;
        self.epoch.set(e);
        e
    }

    pub fn current(&self) -> u64 {
        self.epoch.get()
    }

    pub fn record_ack(&self, peer: usize, epoch: u64) {
        if let Some(a) = self.acked.borrow_mut().get_mut(peer) {
            *a = (*a).max(epoch);
        }
        self.changed.notify();
    }

    fn synced(&self, epoch: u64) -> bool {
        self.acked
            .borrow()
            .iter()
            .enumerate()
            .all(|(p, a)| p == self.me || *a >= epoch)
    }

    pub async fn wait_synced(&self, epoch: u64) {
        while !self.synced(epoch) {
            self.changed.notified().await;
        }
    }
}
