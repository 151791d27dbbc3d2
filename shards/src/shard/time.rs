//! Time: redelivery deadlines, max_age and max_inactivity.

use super::*;

impl Shard {
    /// Redelivers what expired, drops aged messages, deletes inactive channels.
    pub fn tick(&mut self, now: Now) {
        let horizon = now.mono_ns + REDELIVERY_SLACK_NS;
        let mut due = Vec::new();
        while let Some(&(at, id)) = self.timers.first() {
            if at > horizon {
                break;
            }
            self.timers.pop_first();
            if let Some(sub) = self.subs.get_mut(&id) {
                sub.armed = None;
            }
            due.push(id);
        }
        for id in due {
            self.expire(now, id, horizon);
        }
        self.apply_age_and_inactivity(now);
    }

    /// Redelivers a subscription's messages whose ack wait ends by `horizon`, soonest first,
    /// and sets its timer for the next one.
    pub(super) fn expire(&mut self, now: Now, id: u64, horizon: u64) {
        let Some(sub) = self.subs.get(&id) else {
            return;
        };
        let hb_failed = self
            .clients
            .get(&sub.client_id)
            .is_some_and(|c| c.failed_heartbeat);
        let hold = sub.offline || (hb_failed && !sub.is_queue());
        for (expiry, seq) in sub.pending.due_by(horizon) {
            let Some(sub) = self.subs.get_mut(&id) else {
                return;
            };
            if sub.pending.get(seq) != Some(expiry) {
                continue;
            }
            if hold {
                // Not delivered to now; tried again one ack wait later.
                let next = now.mono_ns + sub.ack_wait_ns;
                sub.pending.insert(seq, next);
                continue;
            }
            self.redeliver(now, id, seq);
        }
        if let Some(sub) = self.subs.get_mut(&id) {
            if let Some(next) = sub.pending.earliest() {
                arm(&mut self.timers, sub, next);
            }
        }
    }

    pub(super) fn apply_age_and_inactivity(&mut self, now: Now) {
        let mut inactive = Vec::new();
        for ch in self.channels.values_mut() {
            let limits = ch.limits;
            ch.log.expire(&limits, now.wall_ns);
            if !limits.max_inactivity.is_zero() {
                let idle = now.mono_ns.saturating_sub(ch.last_activity);
                let online_subs = ch
                    .subscription_ids()
                    .any(|id| self.subs.get(&id).is_some_and(|s| !s.offline));
                if online_subs {
                    ch.last_activity = now.mono_ns;
                } else if u128::from(idle) >= limits.max_inactivity.as_nanos() {
                    inactive.push(ch.name.clone());
                }
            }
        }
        for name in inactive {
            self.delete_channel(&name);
        }
    }

    pub(super) fn delete_channel(&mut self, name: &str) {
        let Some(ch) = self.channels.remove(name) else {
            return;
        };
        let ids: Vec<u64> = ch.subscription_ids().collect();
        for id in ids {
            self.delete_subscription(id);
        }
        if let Some(u) = self.unwritten.as_mut() {
            u.remove(name);
            self.deleted.push(name.to_string());
        }
        self.released.push(name.to_string());
    }

    /// The next time `tick` has work (for the runtime's timer), if any.
    pub fn next_deadline(&self) -> Option<u64> {
        self.timers.first().map(|t| t.0)
    }
}
