//! A subscription's delivery state: where it is in its channel, its in-flight window, the
//! acks it waits for (with their expiry), and what kind it is (plain, durable, queue member,
//! durable queue shadow).

use bytes::Bytes;
use fxhash::FxHashMap;
use std::collections::VecDeque;

#[derive(Debug, Clone)]
pub struct Subscription {
    pub id: u64,
    /// Empty for the shadow of a durable queue group whose members all closed.
    pub client_id: String,
    pub channel: String,
    pub inbox: Bytes,
    /// Bumped at each durable resume: the ack inbox handed out is new, older ones still work.
    pub ack_generation: u32,
    /// The secret tag of the ack inbox of `ack_generation` (ack_key.rs), kept so that an ack
    /// is checked with a comparison instead of a MAC.
    pub ack_tag: u64,
    /// The ID its ack inboxes were made with before a restart gave it another (its channel
    /// met, on this core, a subscription holding the same ID: the core count changed). Those
    /// inboxes, still in the client's hands, keep acknowledging.
    pub earlier_id: Option<u64>,
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
    pub pending: Pending,
    /// The deadline this subscription has in the shard's timer set, if any: never later than
    /// its soonest expiry (acks leave it early; it is moved when it fires).
    pub armed: Option<u64>,
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

/// A subscription's messages sent and not acked yet, with when each expires (monotonic ns).
///
/// Kept in a deque ordered by sequence: a subscription sends in sequence order and is mostly
/// acked in that order, so a send is a push at the back and an ack a pop at the front. An ack
/// out of order leaves a hole (expiry 0) that is dropped once it reaches the front, or when
/// holes outnumber live entries.
#[derive(Debug, Clone, Default)]
pub struct Pending {
    entries: VecDeque<(u64, u64)>,
    live: usize,
}

/// Marks an acked entry not yet dropped.
const HOLE: u64 = 0;

impl Pending {
    pub fn len(&self) -> usize {
        self.live
    }

    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    fn position(&self, seq: u64) -> Result<usize, usize> {
        self.entries.binary_search_by_key(&seq, |e| e.0)
    }

    /// Adds `seq`, or sets its expiry if it is pending already.
    pub fn insert(&mut self, seq: u64, expiry: u64) {
        // A deadline of 0 would read as a hole; one nanosecond later changes nothing.
        let expiry = expiry.max(1);
        if self.entries.back().is_none_or(|e| e.0 < seq) {
            self.entries.push_back((seq, expiry));
            self.live += 1;
            return;
        }
        match self.position(seq) {
            Ok(i) => {
                if self.entries[i].1 == HOLE {
                    self.live += 1;
                }
                self.entries[i].1 = expiry;
            }
            Err(i) => {
                self.entries.insert(i, (seq, expiry));
                self.live += 1;
            }
        }
    }

    /// The expiry of `seq` if it is pending.
    pub fn get(&self, seq: u64) -> Option<u64> {
        let front = self.entries.front()?;
        let i = if front.0 == seq {
            0
        } else {
            self.position(seq).ok()?
        };
        Some(self.entries[i].1).filter(|e| *e != HOLE)
    }

    /// Takes `seq` out; returns its expiry if it was pending.
    pub fn remove(&mut self, seq: u64) -> Option<u64> {
        let front = *self.entries.front()?;
        if front.0 == seq {
            self.entries.pop_front();
            if front.1 == HOLE {
                return None;
            }
            self.live -= 1;
            self.drop_front_holes();
            return Some(front.1);
        }
        let i = self.position(seq).ok()?;
        let expiry = std::mem::replace(&mut self.entries[i].1, HOLE);
        if expiry == HOLE {
            return None;
        }
        self.live -= 1;
        let holes = self.entries.len() - self.live;
        if holes > 64 && holes > self.live {
            self.entries.retain(|e| e.1 != HOLE);
        }
        while self.entries.back().is_some_and(|e| e.1 == HOLE) {
            self.entries.pop_back();
        }
        Some(expiry)
    }

    fn drop_front_holes(&mut self) {
        while self.entries.front().is_some_and(|e| e.1 == HOLE) {
            self.entries.pop_front();
        }
    }

    /// (sequence, expiry) of every pending message, in sequence order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.entries.iter().copied().filter(|e| e.1 != HOLE)
    }

    /// The pending sequences, in order.
    pub fn seqs(&self) -> impl Iterator<Item = u64> + '_ {
        self.iter().map(|e| e.0)
    }

    /// Takes out every sequence from `first` on.
    pub fn split_off(&mut self, first: u64) -> Vec<(u64, u64)> {
        let at = match self.position(first) {
            Ok(i) | Err(i) => i,
        };
        let gone: Vec<(u64, u64)> = self
            .entries
            .split_off(at)
            .into_iter()
            .filter(|e| e.1 != HOLE)
            .collect();
        self.live -= gone.len();
        gone
    }

    /// The soonest expiry.
    pub fn earliest(&self) -> Option<u64> {
        self.iter().map(|e| e.1).min()
    }

    /// (expiry, sequence) of the messages expiring by `horizon`, soonest first.
    pub fn due_by(&self, horizon: u64) -> Vec<(u64, u64)> {
        let mut due: Vec<(u64, u64)> = self
            .iter()
            .filter(|e| e.1 <= horizon)
            .map(|(seq, expiry)| (expiry, seq))
            .collect();
        due.sort_unstable();
        due
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    #[test]
    fn in_order_acks_pop_the_front_and_holes_are_dropped() {
        let mut p = Pending::default();
        for seq in 1..=5 {
            p.insert(seq, 100 + seq);
        }
        assert_eq!(p.remove(3), Some(103));
        assert_eq!(p.remove(3), None);
        assert_eq!(p.len(), 4);
        assert_eq!(p.remove(1), Some(101));
        assert_eq!(p.remove(2), Some(102));
        // The hole left by 3 went with the front.
        assert_eq!(p.entries.len(), 2);
        assert_eq!(p.seqs().collect::<Vec<_>>(), vec![4, 5]);
        assert_eq!(p.earliest(), Some(104));
        p.insert(4, 50);
        assert_eq!(p.due_by(104), vec![(50, 4)]);
        assert_eq!(p.split_off(5), vec![(5, 105)]);
        assert_eq!(p.len(), 1);
    }

    #[test]
    fn holes_never_outgrow_the_live_entries_by_much() {
        let mut p = Pending::default();
        for seq in 1..=10_000 {
            p.insert(seq, seq);
        }
        // Acks of everything but the first: the front never moves.
        for seq in 2..=10_000 {
            p.remove(seq);
        }
        assert_eq!(p.len(), 1);
        assert!(p.entries.len() <= 130, "{} entries kept", p.entries.len());
    }

    proptest! {
        #[test]
        fn pending_matches_a_map(ops in prop::collection::vec((0u8..4, 1u64..60, 1u64..1000), 0..300)) {
            let mut p = Pending::default();
            let mut model: BTreeMap<u64, u64> = BTreeMap::new();
            for (op, seq, expiry) in ops {
                match op {
                    0 | 1 => { p.insert(seq, expiry); model.insert(seq, expiry); }
                    2 => prop_assert_eq!(p.remove(seq), model.remove(&seq)),
                    _ => {
                        let gone = p.split_off(seq);
                        let want: Vec<(u64, u64)> = model.split_off(&seq).into_iter().collect();
                        prop_assert_eq!(gone, want);
                    }
                }
                prop_assert_eq!(p.len(), model.len());
                prop_assert_eq!(p.get(seq), model.get(&seq).copied());
            }
            prop_assert_eq!(p.iter().collect::<Vec<_>>(), model.iter().map(|(s, e)| (*s, *e)).collect::<Vec<_>>());
            prop_assert_eq!(p.earliest(), model.values().min().copied());
            let mut due: Vec<(u64, u64)> = model.iter().filter(|(_, e)| **e <= 500).map(|(s, e)| (*e, *s)).collect();
            due.sort_unstable();
            prop_assert_eq!(p.due_by(500), due);
        }
    }
}
