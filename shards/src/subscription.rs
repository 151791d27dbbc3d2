//! A subscription's delivery state: where it is in its channel, its in-flight window, the
//! acks it waits for (with their expiry), and what kind it is (plain, durable, queue member,
//! durable queue shadow).

use bytes::Bytes;
use fxhash::FxHashMap;
use std::collections::BTreeMap;

#[derive(Debug, Clone)]
pub struct Subscription {
    pub id: u64,
    /// Empty for the shadow of a durable queue group whose members all closed.
    pub client_id: String,
    pub channel: String,
    pub inbox: Bytes,
    /// Bumped at each durable resume: the ack inbox handed out is new, older ones still work.
    pub ack_generation: u32,
    /// Durable name of a plain durable (empty otherwise; durable queue groups keep it in
    /// `queue` as "durable:group", as the reference stores it).
    pub durable_name: String,
    pub queue: String,
    pub is_durable: bool,
    pub max_in_flight: usize,
    pub ack_wait_ns: u64,
    /// Last sequence sent (plain subscriptions; a queue group keeps its own).
    pub last_sent: u64,
    /// Sequences sent and not acked yet, with when they expire (monotonic ns).
    pub pending: BTreeMap<u64, u64>,
    /// Redelivery counts (plain subscriptions; a queue group counts for its members).
    pub redeliveries: FxHashMap<u64, u32>,
    /// A closed durable (or queue shadow): kept, not delivered to.
    pub offline: bool,
    /// A resumed durable gets no new messages until its pending ones were redelivered once.
    pub new_on_hold: bool,
}

impl Subscription {
    pub fn is_queue(&self) -> bool {
        !self.queue.is_empty()
    }

    pub fn is_stalled(&self) -> bool {
        self.pending.len() >= self.max_in_flight
    }

    /// The reference's durable key: client ID, channel and durable name.
    pub fn durable_key(client_id: &str, channel: &str, durable: &str) -> String {
        format!("{client_id}-{channel}-{durable}")
    }
}

/// A queue group of a channel: one position shared by its members.
#[derive(Debug, Clone, Default)]
pub struct QueueGroup {
    pub members: Vec<u64>,
    pub last_sent: u64,
    pub durable: bool,
    pub redeliveries: FxHashMap<u64, u32>,
}
