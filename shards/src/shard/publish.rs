//! Channels and publishing: the channel found or created, the message appended, its PubAck.

use super::*;

impl Shard {
    // ---- publish ----

    /// A PubMsg for `channel` (the publish subject's suffix). Queues the PubAck to `reply`.
    pub fn publish(&mut self, now: Now, channel: &str, incoming: Incoming<'_>) {
        let payload = incoming.pub_msg;
        let pm = match PubMsgView::parse(payload) {
            Ok(pm) => pm,
            Err(_) => {
                // Never retried as another message type: what arrives on the publish subject
                // is a publish, and a client waiting for its PubAck gets one.
                self.pub_ack(&incoming, b"", ERR_INVALID_PUB);
                return;
            }
        };
        self.stats.in_msgs += 1;
        self.stats.in_bytes += payload.len() as u64;
        let client_ok = if pm.client_id.is_empty() {
            self.conns.contains_key(pm.conn_id)
        } else {
            std::str::from_utf8(pm.client_id).is_ok_and(|id| self.client_valid(id, pm.conn_id))
        };
        if pm.guid.is_empty() || pm.subject != channel.as_bytes() || !client_ok {
            self.pub_ack(&incoming, pm.guid, ERR_INVALID_PUB);
            return;
        }
        log::trace!(
            "STAN: [Client:{}] Received message from publisher subj={channel} guid={}",
            String::from_utf8_lossy(pm.client_id),
            String::from_utf8_lossy(pm.guid)
        );
        self.append_published(now, channel, &incoming, &pm);
    }

    /// Stores a checked publish in its channel; one of a channel not created yet waits for
    /// the channel's grant (`grants.rs`).
    pub(super) fn append_published(
        &mut self,
        now: Now,
        channel: &str,
        incoming: &Incoming<'_>,
        pm: &PubMsgView<'_>,
    ) {
        // One lookup for a known channel; a new name is checked before it is asked for.
        let Some(ch) = self.channels.get_mut(channel) else {
            if !is_valid_channel(channel) {
                self.pub_ack(incoming, pm.guid, ERR_INVALID_PUB);
                return;
            }
            let pub_msg = incoming
                .frame
                .and_then(|f| crate::wire::slice_within(f, incoming.pub_msg))
                .unwrap_or_else(|| Bytes::copy_from_slice(incoming.pub_msg));
            let reply = incoming.reply_bytes();
            self.await_grant(channel, grants::AwaitingGrant::Publish { pub_msg, reply });
            return;
        };
        let stored = ch
            .log
            .append(channel.as_bytes(), pm.reply, pm.data, now.wall_ns);
        let mut ack_owed_by_disk = false;
        if let Some(batch) = unwritten_of(&mut self.unwritten, channel) {
            if batch.records.is_empty() {
                batch.first_seq = stored.seq;
            }
            crate::store::record::encode(
                &mut batch.records,
                stored.seq,
                stored.timestamp,
                &stored.encoded,
            );
            batch.count += 1;
            if let Some(reply) = incoming.reply {
                batch.acks.push(reply, pm.guid);
            }
            ack_owed_by_disk = true;
        }
        ch.last_activity = now.mono_ns;
        let limits = ch.limits;
        ch.log.enforce_size_limits(&limits);
        let has_subs = !ch.plain.is_empty() || !ch.queues.is_empty();
        if !ack_owed_by_disk {
            self.pub_ack(incoming, pm.guid, "");
        }
        if has_subs {
            self.deliver_channel(now, channel);
        }
    }

    pub(super) fn pub_ack(&mut self, incoming: &Incoming<'_>, guid: &[u8], error: &str) {
        let Some(reply) = incoming.reply_bytes() else {
            return;
        };
        self.out
            .push(Out::new(reply, encode_pub_ack(guid, error), About::Other));
    }
}
