//! Delivery and redelivery to plain subscribers and queue groups.

use super::*;

impl Shard {
    /// Gives every subscription of the channel what it has room for.
    pub(super) fn deliver_channel(&mut self, now: Now, channel: &str) {
        // The channel and its batch are looked up once for all its subscribers (this runs for
        // every publish on a channel with subscribers).
        let (subs, channels, unwritten, mut to) = self.split_for_delivery();
        let Some(ch) = channels.get(channel) else {
            return;
        };
        if !ch.plain.is_empty() {
            to.journal = journal(unwritten, channel);
            for &id in &ch.plain {
                if let Some(sub) = subs.get_mut(&id) {
                    to.plain(now, ch, id, sub);
                }
            }
        }
        if ch.queues.is_empty() {
            return;
        }
        let groups: Vec<String> = ch.queues.keys().cloned().collect();
        for g in groups {
            self.deliver_queue(now, channel, &g);
        }
    }

    pub(super) fn deliver_plain(&mut self, now: Now, id: u64) {
        let (subs, channels, unwritten, mut to) = self.split_for_delivery();
        let Some(sub) = subs.get_mut(&id) else {
            return;
        };
        let Some(ch) = channels.get(&sub.channel) else {
            return;
        };
        to.journal = journal(unwritten, &sub.channel);
        to.plain(now, ch, id, sub);
    }

    /// The shard borrowed apart for deliveries: its subscriptions, its channels, the turn's
    /// batches (for the journal) and what a delivery writes to.
    pub(super) fn split_for_delivery(
        &mut self,
    ) -> (
        &mut FxHashMap<u64, Subscription>,
        &FxHashMap<String, Channel>,
        &mut Option<UnwrittenMap>,
        Deliveries<'_>,
    ) {
        let Shard {
            subs,
            channels,
            unwritten,
            timers,
            out,
            stats,
            reads_wanted,
            ..
        } = self;
        let to = Deliveries {
            timers,
            out,
            stats,
            reads_wanted,
            journal: None,
        };
        (subs, channels, unwritten, to)
    }

    /// The member with room and the fewest pending acks whose client answers heartbeats.
    pub(super) fn best_member(&self, group: &QueueGroup) -> Option<u64> {
        group
            .members
            .iter()
            .filter_map(|id| self.subs.get(id))
            .filter(|s| !s.offline && !s.new_on_hold && !s.is_stalled())
            .filter(|s| {
                !self
                    .clients
                    .get(&s.client_id)
                    .is_some_and(|c| c.failed_heartbeat)
            })
            .min_by_key(|s| s.pending.len())
            .map(|s| s.id)
    }

    pub(super) fn deliver_queue(&mut self, now: Now, channel: &str, group_name: &str) {
        loop {
            let Some(ch) = self.channels.get(channel) else {
                return;
            };
            let Some(group) = ch.queues.get(group_name) else {
                return;
            };
            let next = (group.last_sent + 1).max(ch.log.first_seq());
            let uid = ch.uid;
            let msg = match ch.log.get(next) {
                Lookup::Found(m) => m,
                Lookup::Missing => return,
                Lookup::NotLoaded => {
                    self.want_read(channel, next);
                    return;
                }
                // Never stepped over silently: the group stops before it (see `plain`).
                Lookup::Unreadable => return,
            };
            let ahead = ch.log.read_ahead_from(next);
            let Some(member) = self.best_member(group) else {
                return;
            };
            let payload = msg.encoded.clone();
            // Rotate the chosen member to the back so equals take turns.
            if let Some(g) = self
                .channels
                .get_mut(channel)
                .and_then(|c| c.queues.get_mut(group_name))
            {
                g.last_sent = next;
                if g.members.first() == Some(&member) && g.members.len() > 1 {
                    g.members.rotate_left(1);
                }
            }
            let Some(sub) = self.subs.get_mut(&member) else {
                return;
            };
            let expiry = now.mono_ns + sub.ack_wait_ns;
            sub.pending.insert(next, expiry);
            arm(&mut self.timers, sub, expiry);
            log::trace!(
                "STAN: [Client:{}] Delivering msg to subid={member}, subject={channel}, seq={next}",
                sub.client_id
            );
            let inbox = sub.inbox.clone();
            if let Some(j) = journal(&mut self.unwritten, channel) {
                j.sent(member, next);
            }
            if let Some(ahead) = ahead {
                self.want_read(channel, ahead);
            }
            self.send(inbox, payload, uid, next);
        }
    }

    /// Queues a (re)delivery of message `seq` of the channel numbered `channel`.
    pub(super) fn send(&mut self, inbox: Bytes, payload: Bytes, channel: u64, seq: u64) {
        self.stats.out_msgs += 1;
        self.stats.out_bytes += payload.len() as u64;
        self.out
            .push(Out::new(inbox, payload, About::Delivery { channel, seq }));
    }

    /// Sends a pending message again, flagged, with its redelivery count; the window does not
    /// apply. A message gone from the log counts as acked.
    pub(super) fn redeliver(&mut self, now: Now, id: u64, seq: u64) {
        let Some(sub) = self.subs.get(&id) else {
            return;
        };
        let Some(old_expiry) = sub.pending.get(seq) else {
            return;
        };
        let channel = sub.channel.clone();
        let queue = sub.queue.clone();
        let ack_wait = sub.ack_wait_ns;
        let inbox = sub.inbox.clone();
        let uid = self.channels.get(&channel).map_or(0, |c| c.uid);
        let lookup = self.channels.get(&channel).map(|c| match c.log.get(seq) {
            Lookup::Found(m) => Ok(m.decode()),
            Lookup::NotLoaded => Err(()),
            Lookup::Missing | Lookup::Unreadable => Ok(None),
        });
        let stored = match lookup {
            Some(Ok(decoded)) => decoded,
            None => None,
            Some(Err(())) => {
                // On disk, not in memory: read it, and try again shortly.
                self.want_read(&channel, seq);
                let retry = now.mono_ns + READ_RETRY_NS;
                if let Some(sub) = self.subs.get_mut(&id) {
                    sub.pending.insert(seq, retry);
                    arm(&mut self.timers, sub, retry);
                }
                return;
            }
        };
        let Some(mut proto) = stored else {
            // Dropped by a limit: counts as acked, which may free a window slot.
            self.remove_pending(id, seq);
            if queue.is_empty() {
                self.deliver_plain(now, id);
            } else {
                self.deliver_queue(now, &channel, &queue);
            }
            return;
        };
        let count = if queue.is_empty() {
            let Some(sub) = self.subs.get_mut(&id) else {
                return;
            };
            let c = sub.redeliveries.entry(seq).or_insert(0);
            *c += 1;
            *c
        } else {
            let Some(g) = self
                .channels
                .get_mut(&channel)
                .and_then(|c| c.queues.get_mut(&queue))
            else {
                return;
            };
            let c = g.redeliveries.entry(seq).or_insert(0);
            *c += 1;
            *c
        };
        proto.redelivered = true;
        proto.redelivery_count = count;
        let mut expiry = old_expiry.saturating_add(ack_wait);
        if expiry <= now.mono_ns {
            expiry = now.mono_ns + ack_wait;
        }
        if let Some(sub) = self.subs.get_mut(&id) {
            sub.pending.insert(seq, expiry);
            arm(&mut self.timers, sub, expiry);
            log::trace!(
                "STAN: [Client:{}] Redelivering msg to subid={id}, subject={channel}, seq={seq}",
                sub.client_id
            );
        }
        self.send(inbox, Bytes::from(proto.encode_to_vec()), uid, seq);
    }

    pub(super) fn remove_pending(&mut self, id: u64, seq: u64) -> bool {
        // Borrowed apart: this runs once per ack.
        let Shard {
            subs,
            channels,
            unwritten,
            ..
        } = self;
        let Some(sub) = subs.get_mut(&id) else {
            return false;
        };
        if sub.pending.remove(seq).is_none() {
            return false;
        }
        if !sub.redeliveries.is_empty() {
            sub.redeliveries.remove(&seq);
        }
        if let Some(j) = journal(unwritten, &sub.channel) {
            j.acked(id, seq);
        }
        if sub.is_queue() {
            if let Some(g) = channels
                .get_mut(&sub.channel)
                .and_then(|c| c.queues.get_mut(&sub.queue))
                .filter(|g| !g.redeliveries.is_empty())
            {
                g.redeliveries.remove(&seq);
            }
        }
        true
    }
}
