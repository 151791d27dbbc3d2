//! Cross-core transport over glommio's channel mesh: whatever one core tells another (the
//! message type is the layer above's: `nats::mesh_msg::MeshMsg`), batched per peer and flushed
//! once per event-loop turn; and the interest-change sync. Producers never block on a full ring: they queue in the outbox, and
//! only connection readers wait (before reading more input) when a peer falls far behind, so
//! two cores can never deadlock sending to each other.

use crate::util::notify::Notify;
use crate::util::tasks::CoreTasks;
use glommio::channels::channel_mesh::Senders;
use std::cell::{Cell, RefCell};
use std::rc::Rc;

/// Messages queued for peers above this count make connection readers pause.
const HIGH_WATER: usize = 256 * 1024;

/// What one flush sends a peer.
pub type Batch<M> = Vec<M>;

pub struct Outbox<M> {
    me: usize,
    queues: Vec<RefCell<Batch<M>>>,
    signals: Vec<Notify>,
    queued: Cell<usize>,
    drained: Notify,
}

impl<M: Send + 'static> Outbox<M> {
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

    pub fn push(&self, peer: usize, msg: M) {
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
    pub fn start_flushers(self: &Rc<Self>, senders: Rc<Senders<Batch<M>>>, tasks: &CoreTasks) {
        for peer in self.peers().collect::<Vec<_>>() {
            let outbox = self.clone();
            let senders = senders.clone();
            tasks.spawn("mesh flusher", None, async move {
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
            });
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
