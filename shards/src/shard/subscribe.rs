//! New subscriptions: plain, durable, queue groups, their replies and first deliveries.

use super::*;

impl Shard {
    pub(super) fn sub_reply(&mut self, reply: Option<Bytes>, ack_inbox: &str, error: &str) {
        let Some(reply) = reply else {
            return;
        };
        let r = SubscriptionResponse {
            ack_inbox: ack_inbox.to_string(),
            error: error.to_string(),
        };
        self.out.push(Out::new(
            reply,
            Bytes::from(r.encode_to_vec()),
            About::Other,
        ));
    }

    /// The current ack inbox of a subscription (monitoring shows it).
    pub fn ack_inbox_of(&self, sub: &Subscription) -> String {
        self.ack_inbox(sub)
    }

    pub(super) fn ack_inbox(&self, sub: &Subscription) -> String {
        format!(
            "{}{}.{}.{}",
            self.cfg.ack_prefix,
            sub.id,
            sub.ack_generation,
            crate::ack_key::format_tag(sub.ack_tag)
        )
    }

    /// A subscription request already checked for format (payload, client ID present, ack
    /// wait, window, start position, channel name) by the core that received it.
    pub fn subscribe(&mut self, now: Now, req: SubscriptionRequest, reply: Option<Bytes>) {
        if !self.clients.contains_key(&req.client_id) {
            self.sub_reply(reply, "", ERR_UNKNOWN_CLIENT);
            return;
        }
        if !self.channels.contains_key(&req.subject) {
            let channel = req.subject.clone();
            let req = Box::new(req);
            self.await_grant(&channel, grants::AwaitingGrant::Subscribe { req, reply });
            return;
        }
        let channel = req.subject.clone();
        if let Some(ch) = self.channels.get_mut(&channel) {
            ch.last_activity = now.mono_ns;
        }
        let is_queue = !req.q_group.is_empty();
        let is_durable = !req.durable_name.is_empty();
        if is_queue && is_durable && req.durable_name.contains(':') {
            self.sub_reply(reply, "", ERR_DURABLE_QUEUE_NAME);
            return;
        }
        let first_new_id = self.next_sub_id;
        let result = if is_queue {
            self.subscribe_queue(now, &req)
        } else if is_durable {
            self.subscribe_durable(now, &req)
        } else {
            self.create_plain(now, &req, false)
        };
        match result {
            Ok(id) => {
                let inbox = match self.subs.get(&id) {
                    Some(s) => self.ack_inbox(s),
                    None => return,
                };
                log::debug!(
                    "STAN: [Client:{}] Started new subscription, subject={}, inbox={}, subid={id}, durable={:?}, queue={:?}, maxInflight={}, ackWait={}s",
                    req.client_id,
                    req.subject,
                    req.inbox,
                    req.durable_name,
                    req.q_group,
                    req.max_in_flight,
                    req.ack_wait_in_secs
                );
                let answered = reply.is_some();
                self.sub_reply(reply, &inbox, "");
                if let Some(batch) = unwritten_of(&mut self.unwritten, &channel) {
                    // The OK reply waits for the put; `advance` turns it into the error if the
                    // put is not stored.
                    if let Some(answer) = self.out.last_mut().filter(|_| answered) {
                        answer.about = About::SubReply { sub_id: id };
                    }
                    batch.confirms.push(Confirm {
                        sub_id: id,
                        created: id >= first_new_id,
                    });
                }
                self.start_delivery(now, id);
            }
            Err(e) => self.sub_reply(reply, "", e),
        }
    }

    pub(super) fn new_subscription(&mut self, req: &SubscriptionRequest) -> Subscription {
        let id = self.next_sub_id;
        self.next_sub_id += 1;
        Subscription {
            id,
            client_id: req.client_id.clone(),
            channel: req.subject.clone(),
            inbox: Bytes::from(req.inbox.clone()),
            ack_generation: 0,
            ack_tag: self.cfg.ack_key.tag(id, 0),
            earlier_id: None,
            durable_name: String::new(),
            queue: String::new(),
            is_durable: false,
            max_in_flight: window(req),
            ack_wait_ns: ack_wait_ns(req),
            last_sent: 0,
            pending: Pending::default(),
            armed: None,
            redeliveries: FxHashMap::default(),
            offline: false,
            new_on_hold: false,
        }
    }

    pub(super) fn room_for_one_more(&self, channel: &str) -> bool {
        let Some(ch) = self.channels.get(channel) else {
            return false;
        };
        ch.limits.max_subs <= 0 || (ch.subscription_count() as i64) < ch.limits.max_subs
    }

    /// Where a new position starts: the sequence last sent, per the start position.
    pub(super) fn start_last_sent(&self, now: Now, req: &SubscriptionRequest) -> u64 {
        let Some(ch) = self.channels.get(&req.subject) else {
            return 0;
        };
        let first = ch.log.first_seq();
        let last = ch.log.last_seq();
        let first_minus_one = first.saturating_sub(1);
        match pb::StartPosition::try_from(req.start_position) {
            Ok(pb::StartPosition::LastReceived) => last.saturating_sub(1),
            Ok(pb::StartPosition::TimeDeltaStart) => {
                let start = now.wall_ns.saturating_sub(req.start_time_delta);
                match ch.log.first_seq_at_or_after(start) {
                    Some(seq) => seq - 1,
                    None => last,
                }
            }
            Ok(pb::StartPosition::SequenceStart) => {
                let s = req.start_sequence;
                if s == 0 || s < first {
                    first_minus_one
                } else if s > last {
                    last
                } else {
                    s - 1
                }
            }
            Ok(pb::StartPosition::First) => first_minus_one,
            _ => last,
        }
    }

    pub(super) fn create_plain(
        &mut self,
        now: Now,
        req: &SubscriptionRequest,
        durable: bool,
    ) -> Result<u64, &'static str> {
        if !self.room_for_one_more(&req.subject) {
            return Err(ERR_TOO_MANY_SUBS);
        }
        let mut sub = self.new_subscription(req);
        sub.last_sent = self.start_last_sent(now, req);
        if durable {
            sub.is_durable = true;
            sub.durable_name = req.durable_name.clone();
        }
        let id = sub.id;
        if let Some(ch) = self.channels.get_mut(&req.subject) {
            ch.plain.push(id);
            if durable {
                ch.durables.insert(
                    Subscription::durable_key(&req.client_id, &req.subject, &req.durable_name),
                    id,
                );
            }
        }
        self.subs.insert(id, sub);
        self.note_put(id);
        Ok(id)
    }

    pub(super) fn subscribe_durable(
        &mut self,
        now: Now,
        req: &SubscriptionRequest,
    ) -> Result<u64, &'static str> {
        let key = Subscription::durable_key(&req.client_id, &req.subject, &req.durable_name);
        let existing = self
            .channels
            .get(&req.subject)
            .and_then(|c| c.durables.get(&key).copied());
        let Some(id) = existing else {
            return self.create_plain(now, req, true);
        };
        let online = self.subs.get(&id).is_some_and(|s| !s.offline);
        if online {
            if !self.cfg.replace_durable {
                return Err(ERR_DUP_DURABLE);
            }
            self.end_subscription(now, id, SubEnd::Close);
        }
        // Resume: the start position is ignored; the new window and ack wait apply.
        let Some(sub) = self.subs.get_mut(&id) else {
            return Err(ERR_INVALID_SUB);
        };
        resume(sub, req, &self.cfg.ack_key);
        self.note_put(id);
        Ok(id)
    }

    pub(super) fn subscribe_queue(
        &mut self,
        now: Now,
        req: &SubscriptionRequest,
    ) -> Result<u64, &'static str> {
        let durable = !req.durable_name.is_empty();
        let name = if durable {
            format!("{}:{}", req.durable_name, req.q_group)
        } else {
            req.q_group.clone()
        };
        let channel = req.subject.clone();
        let group_exists = self
            .channels
            .get(&channel)
            .is_some_and(|c| c.queues.contains_key(&name));
        if group_exists {
            // A durable group whose members all closed is one offline shadow: the new member
            // takes it over and resumes at its position.
            let shadow = self.channels.get(&channel).and_then(|c| {
                let g = c.queues.get(&name)?;
                match g.members.as_slice() {
                    [only] if self.subs.get(only).is_some_and(|s| s.offline) => Some(*only),
                    _ => None,
                }
            });
            if let Some(id) = shadow {
                if let Some(sub) = self.subs.get_mut(&id) {
                    resume(sub, req, &self.cfg.ack_key);
                }
                self.note_put(id);
                return Ok(id);
            }
            let id = self.new_queue_member(req, &name, durable)?;
            if let Some(g) = self
                .channels
                .get_mut(&channel)
                .and_then(|c| c.queues.get_mut(&name))
            {
                g.members.push(id);
            }
            self.note_put(id);
            return Ok(id);
        }
        let last_sent = self.start_last_sent(now, req);
        let id = self.new_queue_member(req, &name, durable)?;
        if let Some(ch) = self.channels.get_mut(&channel) {
            ch.queues.insert(
                name,
                QueueGroup {
                    members: vec![id],
                    last_sent,
                    durable,
                    redeliveries: FxHashMap::default(),
                },
            );
        }
        self.note_put(id);
        Ok(id)
    }

    /// A new member record of queue group `name` (counted against max_subs).
    pub(super) fn new_queue_member(
        &mut self,
        req: &SubscriptionRequest,
        name: &str,
        durable: bool,
    ) -> Result<u64, &'static str> {
        if !self.room_for_one_more(&req.subject) {
            return Err(ERR_TOO_MANY_SUBS);
        }
        let mut sub = self.new_subscription(req);
        sub.queue = name.to_string();
        sub.is_durable = durable;
        let id = sub.id;
        self.subs.insert(id, sub);
        Ok(id)
    }

    /// After the reply: a resumed subscription gets its pending messages again first, then
    /// what is available.
    pub(super) fn start_delivery(&mut self, now: Now, id: u64) {
        let Some(sub) = self.subs.get(&id) else {
            return;
        };
        let channel = sub.channel.clone();
        if sub.new_on_hold {
            let seqs: Vec<u64> = sub.pending.seqs().collect();
            // Every pending message must be in memory first (file store): the redeliveries
            // go out together, before anything new; `loaded` comes back here.
            let not_loaded: Vec<u64> = match self.channels.get(&channel) {
                Some(ch) => seqs
                    .iter()
                    .copied()
                    .filter(|s| matches!(ch.log.get(*s), Lookup::NotLoaded))
                    .collect(),
                None => Vec::new(),
            };
            if !not_loaded.is_empty() {
                for seq in not_loaded {
                    self.want_read(&channel, seq);
                }
                return;
            }
            for seq in seqs {
                self.redeliver(now, id, seq);
            }
            if let Some(sub) = self.subs.get_mut(&id) {
                sub.new_on_hold = false;
            }
        }
        self.deliver_channel(now, &channel);
    }
}
