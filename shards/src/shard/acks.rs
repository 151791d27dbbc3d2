//! Acks: the ack inbox checked, the window slot freed, more delivered.

use super::*;

impl Shard {
    /// An Ack published on an ack inbox this shard handed out (`<prefix><id>.<generation>`).
    /// Unknown inboxes, channels and sequences are ignored.
    pub fn ack(&mut self, now: Now, ack_subject: &[u8], payload: &[u8]) {
        self.take_ack_now(ack_subject, payload);
        self.fill_acked(now);
    }

    /// Removes what an ack acknowledges now and remembers who got room; `fill_acked` fills
    /// it. Lets a caller take acks as it reads them, without keeping them.
    ///
    /// An ack whose channel is not on this shard (its inbox was handed out under another core
    /// count, naming the core that owned the channel then) is `Elsewhere`: the caller passes it
    /// to the channel's owner, which finds the subscription by channel.
    pub fn take_ack_now(&mut self, ack_subject: &[u8], payload: &[u8]) -> AckPlace {
        match self.take_ack(ack_subject, payload) {
            Ok(Some(room)) => {
                // Acks of one subscription come together; filling one twice costs a look at
                // its window, so only neighbours are merged (no quadratic search).
                if self.acked_rooms.last() != Some(&room) {
                    self.acked_rooms.push(room);
                }
                AckPlace::Here
            }
            Ok(None) => AckPlace::Here,
            Err(elsewhere) => elsewhere,
        }
    }

    /// Gives each subscription (or queue group) that acks made room for what it can take.
    pub fn fill_acked(&mut self, now: Now) {
        if self.acked_rooms.is_empty() {
            return;
        }
        let rooms = std::mem::take(&mut self.acked_rooms);
        for room in rooms {
            self.deliver_to(now, room);
        }
    }

    pub fn has_acked_rooms(&self) -> bool {
        !self.acked_rooms.is_empty()
    }

    pub(super) fn deliver_to(&mut self, now: Now, room: Room) {
        match room {
            Room::Plain(id) => self.deliver_plain(now, id),
            Room::Queue { channel, queue } => self.deliver_queue(now, &channel, &queue),
        }
    }

    /// Removes what an ack acknowledges; says who got room in its window.
    pub(super) fn take_ack(
        &mut self,
        ack_subject: &[u8],
        payload: &[u8],
    ) -> Result<Option<Room>, AckPlace> {
        let Ok(ack) = AckView::parse(payload) else {
            return Ok(None);
        };
        let Some(id) = self.ack_inbox_owner(ack_subject, ack.subject) else {
            let here =
                std::str::from_utf8(ack.subject).is_ok_and(|c| self.channels.contains_key(c));
            return if here {
                Ok(None)
            } else {
                Err(AckPlace::Elsewhere)
            };
        };
        let Some(sub) = self.subs.get(&id) else {
            return Ok(None);
        };
        log::trace!(
            "STAN: [Client:{}] Processing ack for subid={id}, subject={}, seq={}",
            sub.client_id,
            sub.channel,
            ack.sequence
        );
        if sub.queue.is_empty() {
            return Ok(self
                .remove_pending(id, ack.sequence)
                .then_some(Room::Plain(id)));
        }
        let channel = sub.channel.clone();
        let queue = sub.queue.clone();
        let mut acked = self.remove_pending(id, ack.sequence);
        if !acked {
            // An ack for a message pending on another member of the group applies there.
            let members = self
                .channels
                .get(&channel)
                .and_then(|c| c.queues.get(&queue))
                .map(|g| g.members.clone())
                .unwrap_or_default();
            acked = members
                .into_iter()
                .any(|m| self.remove_pending(m, ack.sequence));
        }
        Ok(acked.then_some(Room::Queue { channel, queue }))
    }

    /// The subscription of `channel` an ack inbox names: `<root><shard>.<id>.<generation>.<tag>`,
    /// with a generation it has had and the tag that generation was handed out with (an inbox
    /// that was not handed out is ignored, as an unknown one). Inboxes of this shard are found
    /// by ID; one handed out under another core count (another shard number, or an ID the
    /// subscription no longer has) is looked for among the channel's subscriptions.
    pub(super) fn ack_inbox_owner(&self, inbox: &[u8], channel: &[u8]) -> Option<u64> {
        let tail = inbox.strip_prefix(self.cfg.ack_root().as_bytes())?;
        let dot = tail.iter().position(|&b| b == b'.')?;
        let shard = decimal(&tail[..dot])?;
        let tail = &tail[dot + 1..];
        // `<id>.<generation>.<16 hex digits>`: the tag is the fixed-size tail.
        let (named, tag) = tail.split_at_checked(tail.len().checked_sub(17)?)?;
        let tag = crate::ack_key::parse_tag(tag.strip_prefix(b".")?)?;
        let dot = named.iter().position(|&b| b == b'.')?;
        let id = decimal(&named[..dot])?;
        let generation = u32::try_from(decimal(&named[dot + 1..])?).ok()?;
        if shard == self.cfg.shard as u64 {
            if let Some(sub) = self.subs.get(&id) {
                let expected = if generation == sub.ack_generation {
                    Some(sub.ack_tag)
                } else if generation < sub.ack_generation {
                    Some(self.cfg.ack_key.tag(id, generation))
                } else {
                    None
                };
                if expected == Some(tag) && sub.channel.as_bytes() == channel {
                    return Some(id);
                }
            }
        }
        let ch = self.channels.get(std::str::from_utf8(channel).ok()?)?;
        if self.cfg.ack_key.tag(id, generation) != tag {
            return None;
        }
        ch.subscription_ids().find(|sid| {
            self.subs.get(sid).is_some_and(|s| {
                (s.id == id || s.earlier_id == Some(id)) && generation <= s.ack_generation
            })
        })
    }
}
