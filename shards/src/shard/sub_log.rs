//! The subscription log (subs.dat) records a shard writes, and recovery of its channels and subscriptions at start-up.

use super::*;

impl Shard {
    /// Recovery (file store, after `persist_messages`): a channel and the indexes of its
    /// slices, before any client. Returns how many messages it keeps once its limits applied.
    pub fn restore_channel(
        &mut self,
        now: Now,
        name: &str,
        slices: Vec<SliceIndex>,
        dir: &dyn ChannelDirectory,
    ) -> Result<u64, String> {
        if !self.channels.contains_key(name) {
            dir.register(name)?;
            self.create_channel(now, name);
        }
        let Some(ch) = self.channels.get_mut(name) else {
            return Ok(0);
        };
        ch.log = ChannelLog::File(Box::new(FileLog::restore(slices)));
        let limits = ch.limits;
        ch.log.enforce_size_limits(&limits);
        ch.log.expire(&limits, now.wall_ns);
        Ok(ch.log.count())
    }

    // ---- subscription log (file store) ----

    /// What the subscription log keeps of a subscription (a queue member carries its group's
    /// position).
    pub(super) fn sub_record(&self, sub: &Subscription) -> SubRecord {
        let last_sent = if sub.is_queue() {
            self.channels
                .get(&sub.channel)
                .and_then(|c| c.queues.get(&sub.queue))
                .map_or(sub.last_sent, |g| g.last_sent)
        } else {
            sub.last_sent
        };
        SubRecord {
            id: sub.id,
            client_id: sub.client_id.clone(),
            inbox: String::from_utf8_lossy(&sub.inbox).into_owned(),
            durable_name: sub.durable_name.clone(),
            queue: sub.queue.clone(),
            is_durable: sub.is_durable,
            offline: sub.offline,
            ack_generation: sub.ack_generation,
            max_in_flight: u32::try_from(sub.max_in_flight).unwrap_or(u32::MAX),
            ack_wait_ns: sub.ack_wait_ns,
            last_sent,
        }
    }

    /// Logs a subscription's whole state (created, resumed, gone offline, position moved).
    pub(super) fn note_put(&mut self, id: u64) {
        if self.unwritten.is_none() {
            return;
        }
        let Some(sub) = self.subs.get(&id) else {
            return;
        };
        let record = self.sub_record(sub);
        let channel = sub.channel.clone();
        if let Some(j) = journal(&mut self.unwritten, &channel) {
            j.put(&record);
        }
    }

    /// The subscription log of `channel` compacted: every subscription and its pending
    /// messages, and how many records that is.
    pub fn sub_snapshot(&self, channel: &str) -> (Vec<u8>, u64) {
        let Some(ch) = self.channels.get(channel) else {
            return (Vec::new(), 0);
        };
        let records: Vec<(SubRecord, Vec<u64>)> = ch
            .subscription_ids()
            .filter_map(|id| self.subs.get(&id))
            .map(|s| (self.sub_record(s), s.pending.seqs().collect()))
            .collect();
        crate::store::subs::snapshot(records.iter().map(|(r, p)| (r, p.as_slice())))
    }

    /// Records a compacted subscription log of `channel` holds.
    pub fn sub_live_records(&self, channel: &str) -> u64 {
        let Some(ch) = self.channels.get(channel) else {
            return 0;
        };
        ch.subscription_ids()
            .filter_map(|id| self.subs.get(&id))
            .map(|s| 1 + s.pending.len() as u64)
            .sum()
    }

    /// Recovery: the subscriptions of a restored channel, read back from its log, once the
    /// registered clients are known. Subscriptions of clients that are gone are dropped,
    /// except durables, which come back offline (a durable queue group keeps one offline
    /// shadow). Pending messages are redelivered before anything new.
    ///
    /// Returns whether the state differs from the log's (a subscription dropped or renumbered,
    /// a queue member's pending handed on): the log is then to be rewritten from
    /// `sub_snapshot`.
    pub fn restore_subscriptions(
        &mut self,
        now: Now,
        channel: &str,
        recovered: Vec<RecoveredSub>,
    ) -> bool {
        let Some(ch) = self.channels.get(channel) else {
            return !recovered.is_empty();
        };
        let mut changed = false;
        let (first, last) = (ch.log.first_seq(), ch.log.last_seq());
        let mut groups: std::collections::BTreeMap<String, Vec<RecoveredSub>> = Default::default();
        let mut online = Vec::new();
        for r in recovered {
            if !r.record.queue.is_empty() {
                groups.entry(r.record.queue.clone()).or_default().push(r);
                continue;
            }
            let known = self.clients.contains_key(&r.record.client_id);
            if !known && !r.record.is_durable {
                changed = true;
                continue;
            }
            let old_id = r.record.id;
            let id = self.restore_one(now, channel, r, first, last, !known);
            changed |= id != old_id;
            if let Some(ch) = self.channels.get_mut(channel) {
                ch.plain.push(id);
                if let Some(sub) = self.subs.get(&id) {
                    if sub.is_durable {
                        ch.durables.insert(
                            Subscription::durable_key(&sub.client_id, channel, &sub.durable_name),
                            id,
                        );
                    }
                }
            }
            online.push(id);
        }
        for (name, mut members) in groups {
            let durable = members.iter().any(|m| m.record.is_durable);
            let group_last = members
                .iter()
                .map(|m| m.record.last_sent)
                .max()
                .unwrap_or(0)
                .min(last);
            let alive = |m: &RecoveredSub| {
                !m.record.offline && self.clients.contains_key(&m.record.client_id)
            };
            let (mut live, ghosts): (Vec<_>, Vec<_>) = members.drain(..).partition(alive);
            let shadow_only = live.is_empty()
                && ghosts.len() == 1
                && ghosts[0].record.offline
                && ghosts[0].record.client_id.is_empty();
            changed |= !ghosts.is_empty() && !shadow_only;
            let mut orphaned = crate::store::subs::SeqRanges::default();
            for g in &ghosts {
                for seq in g.pending.within(first, last) {
                    orphaned.insert(seq, seq + 1);
                }
            }
            if live.is_empty() {
                if !durable {
                    continue;
                }
                // One offline shadow keeps the group's position and everything pending.
                let Some(mut shadow) = ghosts.into_iter().next() else {
                    continue;
                };
                shadow.record.client_id.clear();
                shadow.pending = orphaned;
                live.push(shadow);
            } else if !orphaned.is_empty() {
                let n = live.len();
                for (i, seq) in orphaned.within(first, last).into_iter().enumerate() {
                    live[i % n].pending.insert(seq, seq + 1);
                }
            }
            let mut ids = Vec::new();
            for m in live {
                let shadow = m.record.client_id.is_empty();
                let old_id = m.record.id;
                let id = self.restore_one(now, channel, m, first, last, shadow);
                changed |= id != old_id;
                ids.push(id);
            }
            if let Some(ch) = self.channels.get_mut(channel) {
                ch.queues.insert(
                    name,
                    QueueGroup {
                        members: ids.clone(),
                        last_sent: group_last,
                        durable,
                        redeliveries: FxHashMap::default(),
                    },
                );
            }
            online.extend(ids);
        }
        for id in online {
            if self.subs.get(&id).is_some_and(|s| !s.offline) {
                self.start_delivery(now, id);
            }
        }
        changed
    }

    /// One recovered subscription back in the shard (under a new ID if its old one is taken,
    /// which happens only when the shard count changed). Returns its ID.
    pub(super) fn restore_one(
        &mut self,
        now: Now,
        channel: &str,
        r: RecoveredSub,
        first: u64,
        last: u64,
        offline: bool,
    ) -> u64 {
        let rec = r.record;
        let id = if rec.id == 0 || self.subs.contains_key(&rec.id) {
            self.next_sub_id
        } else {
            rec.id
        };
        self.next_sub_id = self.next_sub_id.max(id + 1);
        let ack_wait_ns = rec.ack_wait_ns.max(1_000_000_000);
        let expiry = now.mono_ns + ack_wait_ns;
        let mut pending = Pending::default();
        for seq in r.pending.within(first, last) {
            pending.insert(seq, expiry);
        }
        let offline = offline || rec.offline;
        let sub = Subscription {
            id,
            client_id: rec.client_id,
            channel: channel.to_string(),
            inbox: Bytes::from(rec.inbox),
            ack_generation: rec.ack_generation,
            ack_tag: self.cfg.ack_key.tag(id, rec.ack_generation),
            earlier_id: (rec.id != 0 && rec.id != id).then_some(rec.id),
            durable_name: rec.durable_name,
            queue: rec.queue,
            is_durable: rec.is_durable,
            max_in_flight: (rec.max_in_flight as usize).max(1),
            ack_wait_ns,
            last_sent: rec.last_sent.min(last),
            new_on_hold: !offline && !pending.is_empty(),
            pending,
            armed: None,
            redeliveries: FxHashMap::default(),
            offline,
        };
        self.subs.insert(id, sub);
        if let Some(sub) = self.subs.get_mut(&id).filter(|s| !s.pending.is_empty()) {
            arm(&mut self.timers, sub, expiry);
        }
        id
    }
}
