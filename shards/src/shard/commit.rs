//! The seam between a shard and the world: `ready` hands out everything the shard wants done
//! (output to send now, channels to ask for and to hand back, reads to start, whether a
//! commit is due; the next deadline is `Shard::next_deadline`, asked only by whoever
//! schedules ticks, not at every turn), `take_commit` the commit (what to write, with the
//! output it holds back), and `advance` is told how the commit went. The output a
//! commit covers is `Held`, which only `advance` opens: nothing leaves before its write lands.
//! A failed write takes its messages back here, finding their queued deliveries by what they
//! are (`About`), never by decoding them. Replication (raft, issue 18) goes in this seam: a
//! commit is what a channel's group replicates before `advance`.

use super::*;
use crate::store::file::{ChannelBatch, WriteOutcome};

/// Everything a shard wants done, as of one call of `Shard::ready`.
#[derive(Default)]
#[must_use]
pub struct Ready {
    /// Output that waits for nothing: send it now, in order.
    pub send: Vec<Out>,
    /// Channels deleted (max_inactivity): hand their names back to whoever grants channels.
    /// Before `grants`: a name deleted and asked for again is released first.
    pub released: Vec<String>,
    /// Channels wanted by requests that wait for them: answer each with `Input::Granted`.
    pub grants: Vec<String>,
    /// Acks (inbox, payload) of channels another shard owns: pass them to it.
    pub misplaced_acks: Vec<(Bytes, Bytes)>,
    /// File store: a commit is due (`take_commit`). The driver may let the rest of its turn's
    /// requests join it first; meanwhile all output waits for it (`send` is empty).
    pub write_due: bool,
    /// File store: messages to read back from disk for waiting readers (then `Shard::loaded`).
    pub reads: Vec<(String, ReadPlan)>,
}

/// One write: channels to delete, then records to append, and what is held until they land.
#[must_use]
pub struct Commit {
    /// Channels deleted (max_inactivity) whose files go first: a batch below may belong to a
    /// channel created again under the same name.
    pub deleted: Vec<String>,
    /// Per channel, its message and subscription records (the driver sets `slice_limits`).
    pub batches: Vec<ChannelBatch>,
    /// What waits for the write; only `Shard::advance` opens it.
    pub held: Held,
}

/// The output and PubAcks a commit covers. It cannot be sent: `Shard::advance` turns it into
/// `Released` once the commit's outcome is known.
#[must_use = "held output is released only by Shard::advance"]
pub struct Held {
    out: Vec<Out>,
    /// Per channel: the first sequence written and the PubAcks its messages owe.
    owed: Vec<(String, u64, OwedAcks)>,
    /// Per channel: the subscriptions whose OK replies wait for their puts.
    confirms: Vec<(String, Vec<Confirm>)>,
}

impl Held {
    /// How many outputs it holds.
    pub fn len(&self) -> usize {
        self.out.len()
    }

    pub fn is_empty(&self) -> bool {
        self.out.is_empty()
    }
}

/// What a commit's outcome lets go: output to send, in order, then PubAcks (with the error
/// text, empty when stored).
pub struct Released {
    pub out: Vec<Out>,
    pub pub_acks: Vec<(OwedAcks, String)>,
}

impl Shard {
    /// Keeps every stored message's record for the file store (handed out by `ready`).
    pub fn persist_messages(&mut self) {
        self.unwritten = Some(UnwrittenMap::default());
    }

    /// Whether stored messages or subscription changes wait to be written (output must then
    /// wait for the commit).
    fn has_unwritten(&self) -> bool {
        !self.deleted.is_empty()
            || self
                .unwritten
                .as_ref()
                .is_some_and(|u| u.values().any(|b| b.count > 0 || b.subs.gating))
    }

    /// Whether anything at all waits to be written (sends and acks of subscriptions too,
    /// which hold no output back).
    fn has_journal(&self) -> bool {
        self.has_unwritten() || self.unwritten.as_ref().is_some_and(|u| !u.is_empty())
    }

    /// Whether a commit is due (`take_commit`).
    pub fn wants_write(&self) -> bool {
        !self.writing && (self.has_unwritten() || (self.journal_due && self.has_journal()))
    }

    /// Sends and acks journaled since the last commit are written with the next `ready`, even
    /// if no message waits (each tick, and before the store closes).
    pub fn write_journal_soon(&mut self) {
        self.journal_due = true;
    }

    /// Everything the shard wants done now. While a commit is due or out (`advance` not
    /// called yet) no output is handed out: what is queued waits behind that write.
    pub fn ready(&mut self) -> Ready {
        let mut ready = Ready {
            released: std::mem::take(&mut self.released),
            grants: std::mem::take(&mut self.grants_wanted),
            misplaced_acks: std::mem::take(&mut self.misplaced_acks),
            ..Ready::default()
        };
        if self.writing {
            return ready;
        }
        if self.wants_write() {
            ready.write_due = true;
            return ready;
        }
        self.journal_due = false;
        ready.send = std::mem::replace(&mut self.out, std::mem::take(&mut self.spare_out));
        if self.reading {
            ready.reads = self.take_reads();
        }
        ready
    }

    /// Gives back an emptied output buffer (`Ready::send`) to be filled again: no allocation
    /// per turn.
    pub fn recycle(&mut self, mut buffer: Vec<Out>) {
        buffer.clear();
        if buffer.capacity() > self.spare_out.capacity() {
            self.spare_out = buffer;
        }
    }

    /// The commit that is due, if one is (`Ready::write_due`): channels to delete, records to
    /// write, and everything queued so far, held until `advance`.
    pub fn take_commit(&mut self) -> Option<Commit> {
        if !self.wants_write() {
            return None;
        }
        self.journal_due = false;
        self.writing = true;
        let deleted = std::mem::take(&mut self.deleted);
        let mut batches = Vec::new();
        let mut owed = Vec::new();
        let mut confirms = Vec::new();
        if let Some(unwritten) = self.unwritten.as_mut() {
            for (channel, batch) in unwritten.drain() {
                if !batch.confirms.is_empty() {
                    confirms.push((channel.clone(), batch.confirms));
                }
                let subs_sync = batch.subs.gating;
                let (subs, sub_records) = batch.subs.finish();
                owed.push((channel.clone(), batch.first_seq, batch.acks));
                batches.push(ChannelBatch {
                    channel,
                    records: batch.records,
                    first_seq: batch.first_seq,
                    msgs: batch.count,
                    subs,
                    sub_records,
                    subs_sync,
                    slice_limits: None,
                });
            }
        }
        Some(Commit {
            deleted,
            batches,
            held: Held {
                out: std::mem::take(&mut self.out),
                owed,
                confirms,
            },
        })
    }

    /// How the commit that held `held` went. Records that landed may leave memory;
    /// subscriptions whose puts did not land are refused (their held OK replies become the
    /// error); channels whose messages did not land take them back (`rollback`), and their
    /// PubAcks, and those of later messages of the channel, carry the error.
    pub fn advance(&mut self, now: Now, held: Held, outcome: &WriteOutcome) -> Released {
        self.writing = false;
        let Held {
            mut out,
            mut owed,
            confirms,
        } = held;
        for (channel, l) in &outcome.landed {
            self.written(channel, l.first_seq, l.msgs, l.slice, l.offset);
        }
        for (channel, e) in &outcome.subs_failed {
            if let Some((_, refused)) = confirms.iter().find(|(c, _)| c == channel) {
                self.subscriptions_not_stored(now, refused, &e.to_string(), &mut out);
            }
        }
        let mut refused = Vec::new();
        for (channel, e) in &outcome.failed {
            let text = e.to_string();
            log::error!("STAN: storing messages of channel {channel:?} failed: {text}");
            let Some(i) = owed.iter().position(|(c, _, _)| c == channel) else {
                continue;
            };
            let (_, first_seq, mut acks) = owed.remove(i);
            let later = self.rollback(channel, first_seq, &mut out);
            acks.extend(&later);
            refused.push((acks, text));
        }
        let mut pub_acks: Vec<(OwedAcks, String)> = owed
            .into_iter()
            .map(|(_, _, acks)| (acks, String::new()))
            .collect();
        pub_acks.extend(refused);
        Released { out, pub_acks }
    }

    /// Writing `channel`'s messages from `first_seq` on failed: they are removed as if never
    /// published (the next publish gets `first_seq` again), deliveries of them are taken back
    /// (queued ones dropped, pending acks forgotten), and the PubAcks owed for later messages
    /// of the channel not taken for writing yet are returned, to be answered with the error too.
    ///
    /// Deliveries are taken back from `held` (the output the failed commit covered) and from
    /// the output queued since.
    fn rollback(&mut self, channel: &str, first_seq: u64, held: &mut Vec<Out>) -> OwedAcks {
        let owed = self
            .unwritten
            .as_mut()
            .and_then(|u| u.remove(channel))
            .map(|b| b.acks)
            .unwrap_or_default();
        let Some(ch) = self.channels.get_mut(channel) else {
            return owed;
        };
        ch.log.truncate_from(first_seq);
        let uid = ch.uid;
        let keep_last = first_seq.saturating_sub(1);
        let mut ids: Vec<u64> = ch.plain.clone();
        for group in ch.queues.values_mut() {
            group.last_sent = group.last_sent.min(keep_last);
            group.redeliveries.retain(|seq, _| *seq < first_seq);
            ids.extend(group.members.iter().copied());
        }
        for id in ids {
            let Some(sub) = self.subs.get_mut(&id) else {
                continue;
            };
            sub.last_sent = sub.last_sent.min(keep_last);
            let gone = sub.pending.split_off(first_seq);
            for (seq, _) in gone {
                if let Some(j) = journal(&mut self.unwritten, channel) {
                    j.acked(id, seq);
                }
            }
            sub.redeliveries.retain(|seq, _| *seq < first_seq);
            self.note_put(id);
        }
        let taken_back = |o: &Out| matches!(o.about, About::Delivery { channel, seq } if channel == uid && seq >= first_seq);
        held.retain(|o| !taken_back(o));
        self.out.retain(|o| !taken_back(o));
        owed
    }

    /// Writing the subscription records of `channel` failed with `error`: each subscription
    /// they created is removed and each durable they resumed put back offline, and their OK
    /// replies, still held back, become the error. (Other records of the batch were sends
    /// and acks: a restart may redeliver those messages, as after a crash.)
    fn subscriptions_not_stored(
        &mut self,
        now: Now,
        confirms: &[Confirm],
        error: &str,
        held: &mut [Out],
    ) {
        for c in confirms {
            let refused = Bytes::from(
                SubscriptionResponse {
                    ack_inbox: String::new(),
                    error: error.to_string(),
                }
                .encode_to_vec(),
            );
            let reply = About::SubReply { sub_id: c.sub_id };
            if let Some(o) = held.iter_mut().find(|o| o.about == reply) {
                o.payload = refused;
                o.about = About::Other;
            }
            let end = if c.created {
                SubEnd::Unsubscribe
            } else {
                SubEnd::Close
            };
            log::error!(
                "STAN: subscription {} refused: its state could not be stored: {error}",
                c.sub_id
            );
            self.end_subscription(now, c.sub_id, end);
        }
    }

    /// A commit wrote `count` messages of `channel` from `first_seq` on, into slice `slice`
    /// from `offset` on: they may now leave memory.
    fn written(&mut self, channel: &str, first_seq: u64, count: u64, slice: u64, offset: u64) {
        if let Some(ch) = self.channels.get_mut(channel) {
            ch.log.written(first_seq, count, slice, offset);
        }
    }
}
