//! How subscriptions end: unsubscribe, close, queue members leaving.

use super::*;

impl Shard {
    /// Unsubscribe or close of one subscription, named by its ack inbox or its delivery
    /// inbox. Replies (when asked) with an empty SubscriptionResponse or the error.
    pub fn unsubscribe(
        &mut self,
        now: Now,
        req: &pb::UnsubscribeRequest,
        end: SubEnd,
        reply: Option<Bytes>,
    ) {
        let result = self.find_for_unsubscribe(req);
        match result {
            Ok(id) => {
                log::debug!(
                    "STAN: [Client:{}] {} subject={}, inbox={}, subid={id}",
                    req.client_id,
                    if end == SubEnd::Close {
                        "Closed subscription"
                    } else {
                        "Unsubscribed"
                    },
                    req.subject,
                    req.inbox
                );
                self.end_subscription(now, id, end);
                self.sub_reply(reply, "", "");
            }
            Err(e) => self.sub_reply(reply, "", e),
        }
    }

    pub(super) fn find_for_unsubscribe(
        &self,
        req: &pb::UnsubscribeRequest,
    ) -> Result<u64, &'static str> {
        let Some(ch) = self.channels.get(&req.subject) else {
            return Err(ERR_UNKNOWN_CHANNEL);
        };
        // A closed durable (or a durable queue group's offline shadow) is no subscription to
        // close or unsubscribe: the reference answers "invalid subscription".
        let by_ack = self
            .ack_inbox_owner(req.inbox.as_bytes(), ch.name.as_bytes())
            .filter(|id| self.subs.get(id).is_some_and(|s| !s.offline));
        let id = by_ack.or_else(|| {
            ch.subscription_ids().find(|id| {
                self.subs
                    .get(id)
                    .is_some_and(|s| !s.offline && s.inbox.as_ref() == req.inbox.as_bytes())
            })
        });
        let Some(id) = id else {
            return Err(ERR_INVALID_SUB);
        };
        let owner_ok = self.clients.contains_key(&req.client_id)
            && self
                .subs
                .get(&id)
                .is_some_and(|s| s.client_id == req.client_id);
        if !owner_ok {
            return Err(ERR_UNKNOWN_CLIENT);
        }
        Ok(id)
    }

    /// Applies the reference's table: a plain subscription is removed; a durable is removed
    /// by unsubscribe and goes offline on close; a queue member leaves (its pending messages
    /// go to the others), and the last one removes the group, or leaves a durable group's
    /// shadow on close.
    pub fn end_subscription(&mut self, now: Now, id: u64, end: SubEnd) {
        let Some(sub) = self.subs.get(&id) else {
            return;
        };
        let channel = sub.channel.clone();
        if sub.is_queue() {
            self.leave_queue(now, id, end);
            return;
        }
        if sub.is_durable && end == SubEnd::Close {
            if let Some(sub) = self.subs.get_mut(&id) {
                sub.offline = true;
                sub.new_on_hold = false;
            }
            self.note_put(id);
            return;
        }
        self.delete_subscription(id);
        if let Some(ch) = self.channels.get_mut(&channel) {
            ch.plain.retain(|s| *s != id);
            ch.durables.retain(|_, s| *s != id);
            ch.last_activity = now.mono_ns;
        }
    }

    pub(super) fn delete_subscription(&mut self, id: u64) {
        if let Some(sub) = self.subs.remove(&id) {
            if let Some(at) = sub.armed {
                self.timers.remove(&(at, id));
            }
            if let Some(j) = journal(&mut self.unwritten, &sub.channel) {
                j.delete(id);
            }
        }
    }

    pub(super) fn leave_queue(&mut self, now: Now, id: u64, end: SubEnd) {
        let Some(sub) = self.subs.get(&id) else {
            return;
        };
        let channel = sub.channel.clone();
        let queue = sub.queue.clone();
        let Some(group) = self
            .channels
            .get(&channel)
            .and_then(|c| c.queues.get(&queue))
        else {
            return;
        };
        let others: Vec<u64> = group
            .members
            .iter()
            .copied()
            .filter(|m| *m != id && self.subs.get(m).is_some_and(|s| !s.offline))
            .collect();
        let durable = group.durable;
        if others.is_empty() {
            if durable && end == SubEnd::Close {
                // The group stays as an offline shadow holding its position and pending acks.
                if let Some(sub) = self.subs.get_mut(&id) {
                    sub.offline = true;
                    sub.client_id.clear();
                    sub.new_on_hold = false;
                }
                self.note_put(id);
                return;
            }
            self.delete_subscription(id);
            if let Some(ch) = self.channels.get_mut(&channel) {
                ch.queues.remove(&queue);
                ch.last_activity = now.mono_ns;
            }
            return;
        }
        // Hand the leaver's pending messages to the remaining members, due at once.
        let pending: Vec<u64> = self
            .subs
            .get(&id)
            .map(|s| s.pending.seqs().collect())
            .unwrap_or_default();
        self.delete_subscription(id);
        if let Some(g) = self
            .channels
            .get_mut(&channel)
            .and_then(|c| c.queues.get_mut(&queue))
        {
            g.members.retain(|m| *m != id);
        }
        for (i, seq) in pending.into_iter().enumerate() {
            let target = others[i % others.len()];
            if let Some(s) = self.subs.get_mut(&target) {
                s.pending.insert(seq, now.mono_ns);
                arm(&mut self.timers, s, now.mono_ns);
                if let Some(j) = journal(&mut self.unwritten, &channel) {
                    j.sent(target, seq);
                }
            }
        }
        self.deliver_queue(now, &channel, &queue);
    }
}
