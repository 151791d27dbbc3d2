//! The streaming state machine of one shard: the channels it owns, their subscriptions, and
//! the replica of the client registry. It takes decoded requests and the time, and queues
//! what to send (`Out`): PubAcks, deliveries, replies. No sockets, no clocks of its own, so
//! delivery, redelivery and limits are tested deterministically.
//!
//! How a publish travels here: `publish` checks the client and the channel, appends to the
//! channel's log (the `MsgProto` is encoded once), queues the PubAck, then hands the message
//! to every subscription that has room in its window. Acks free window slots; `tick`
//! redelivers what expired, in expiry order, from one ordered timer set for the whole shard.

use crate::ack_key::AckKey;
use crate::channel::{is_valid_channel, Channel};
use crate::limits::ResolvedLimits;
use crate::pb::{self, SubscriptionRequest, SubscriptionResponse};
use crate::store::file_log::{FileLog, ReadPlan};
use crate::store::index::SliceIndex;
use crate::store::subs::{RecoveredSub, SubJournal, SubRecord};
use crate::store::{ChannelLog, Lookup, StoredMsg};
use crate::subscription::{Pending, QueueGroup, Subscription};
use crate::wire::{encode_pub_ack, AckView, PubMsgView};
use bytes::Bytes;
use fxhash::FxHashMap;
use prost::Message;
use std::collections::BTreeSet;

pub const ERR_INVALID_PUB: &str = "stan: invalid publish request";
pub const ERR_UNKNOWN_CLIENT: &str = "stan: unknown clientID";
pub const ERR_UNKNOWN_CHANNEL: &str = "stan: unknown channel";
pub const ERR_INVALID_SUB: &str = "stan: invalid subscription";
pub const ERR_DUP_DURABLE: &str = "stan: duplicate durable registration";
pub const ERR_DURABLE_QUEUE_NAME: &str =
    "stan: durable name of a durable queue subscriber can't contain the character ':'";
pub const ERR_TOO_MANY_SUBS: &str = "too many subscriptions per channel";
pub const ERR_TOO_MANY_CHANNELS: &str = "too many channels";

/// A redelivery of a message that had to be read from disk first is tried again this much
/// later.
const READ_RETRY_NS: u64 = 20_000_000;

/// Redeliveries due within this margin are sent in the same pass (the reference's 15 ms).
const REDELIVERY_SLACK_NS: u64 = 15_000_000;

/// The time, injected: wall clock for message timestamps, monotonic for deadlines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    pub wall_ns: i64,
    pub mono_ns: u64,
}

/// Something to publish on NATS.
#[derive(Debug, Clone, PartialEq)]
pub struct Out {
    pub subject: Bytes,
    pub reply: Option<Bytes>,
    pub payload: Bytes,
}

/// Where channel names are registered server-wide: `max_channels` and the rule that two
/// channels may not differ only by case span every shard.
pub trait ChannelDirectory {
    /// Registers a new channel, or says why it cannot exist.
    fn register(&self, name: &str) -> Result<(), String>;
    fn unregister(&self, name: &str);
}

#[derive(Debug, Clone)]
pub struct ShardConfig {
    pub shard: usize,
    /// Ack inboxes handed out by this shard: `<prefix><sub id>.<generation>.<tag>`.
    pub ack_prefix: String,
    /// Makes the tags of ack inboxes (ack_key.rs).
    pub ack_key: AckKey,
    pub limits: ResolvedLimits,
    pub replace_durable: bool,
}

impl ShardConfig {
    /// `ack_prefix` without this shard's number (`_STAN.ack.<cid>.`): inboxes of every shard,
    /// whatever the core count when they were handed out, start with it.
    fn ack_root(&self) -> &str {
        let without_dot = self
            .ack_prefix
            .strip_suffix('.')
            .unwrap_or(&self.ack_prefix);
        match without_dot.rfind('.') {
            Some(i) => &self.ack_prefix[..=i],
            None => "",
        }
    }
}

/// Where an ack belongs (`Shard::take_ack_now`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckPlace {
    /// Taken, or ignored (unknown inbox or sequence) on the shard that owns its channel.
    Here,
    /// Its channel is not on this shard.
    Elsewhere,
}

#[derive(Debug, Clone, Default)]
struct ClientEntry {
    conn_id: Bytes,
    failed_heartbeat: bool,
}

/// Counters for monitoring.
#[derive(Debug, Clone, Copy, Default)]
pub struct ShardStats {
    pub in_msgs: u64,
    pub in_bytes: u64,
    pub out_msgs: u64,
    pub out_bytes: u64,
}

pub struct Shard {
    cfg: ShardConfig,
    clients: FxHashMap<String, ClientEntry>,
    /// Connection ID -> client ID, for publishes and pings that name only the connection.
    conns: FxHashMap<Bytes, String>,
    channels: FxHashMap<String, Channel>,
    subs: FxHashMap<u64, Subscription>,
    /// (deadline, subscription) of every subscription with pending messages: the shard's one
    /// timer. One entry per subscription, not per message: sends and acks do not touch it.
    timers: BTreeSet<(u64, u64)>,
    next_sub_id: u64,
    out: Vec<Out>,
    pub stats: ShardStats,
    /// File store: framed records appended this turn, per channel, not yet on disk. `None`
    /// with the memory store.
    unwritten: Option<UnwrittenMap>,
    /// File store: channels deleted (max_inactivity) whose files are still to be removed.
    deleted: Vec<String>,
    /// File store: (channel, sequence) of messages wanted by a reader and not in memory.
    reads_wanted: Vec<(String, u64)>,
    /// Who acks taken since the last `fill_acked` made room for (neighbours merged).
    acked_rooms: Vec<Room>,
}

/// Who an ack made room for.
#[derive(Debug, PartialEq, Eq)]
enum Room {
    Plain(u64),
    Queue { channel: String, queue: String },
}

pub use crate::owed_acks::OwedAcks;

/// A publish as a shard takes it.
pub struct Incoming<'a> {
    /// The `PubMsg`.
    pub pub_msg: &'a [u8],
    pub reply: Option<&'a [u8]>,
    /// What the parts were read in, if they lie in it: a PubAck queued for later shares its
    /// reply subject instead of copying it.
    pub frame: Option<&'a Bytes>,
}

impl Incoming<'_> {
    /// The reply subject as `Bytes` of its own.
    fn reply_bytes(&self) -> Option<Bytes> {
        let reply = self.reply?;
        Some(
            self.frame
                .and_then(|f| crate::wire::slice_within(f, reply))
                .unwrap_or_else(|| Bytes::copy_from_slice(reply)),
        )
    }
}

/// File store: one channel's messages of this turn that are not on disk yet, and the PubAcks
/// that wait for them.
#[derive(Debug, Default)]
pub struct Unwritten {
    /// Framed records (store::record).
    pub records: Vec<u8>,
    /// Sequence of the first record.
    pub first_seq: u64,
    /// How many records.
    pub count: u64,
    /// The PubAcks owed once the records are on disk.
    pub acks: OwedAcks,
    /// Subscription records of the channel (subs.dat).
    pub subs: SubJournal,
    /// The subscriptions these records created or resumed, answered OK in the output they
    /// hold back: refused instead if the records cannot be written.
    pub confirms: Vec<Confirm>,
}

/// A subscription request answered OK whose put waits to be written.
#[derive(Debug, Clone)]
pub struct Confirm {
    pub sub_id: u64,
    /// The queued reply (found again by its payload, which no other output shares).
    reply_payload: Bytes,
    /// A new subscription (undone if not stored), or a durable resumed (put back offline).
    created: bool,
}

/// The turn's batches, by channel name.
type UnwrittenMap = hashbrown::HashMap<String, Unwritten, fxhash::FxBuildHasher>;

/// The turn's unwritten records of `channel` (file store only): one lookup, and the name is
/// copied only when the channel first has some in this turn, not at every publish.
fn unwritten_of<'a>(
    unwritten: &'a mut Option<UnwrittenMap>,
    channel: &str,
) -> Option<&'a mut Unwritten> {
    Some(unwritten.as_mut()?.entry_ref(channel).or_default())
}

/// The subscription journal of `channel` in the turn's unwritten records (file store only).
fn journal<'a>(
    unwritten: &'a mut Option<UnwrittenMap>,
    channel: &str,
) -> Option<&'a mut SubJournal> {
    unwritten_of(unwritten, channel).map(|b| &mut b.subs)
}

/// A decimal number made of ASCII digits only (no sign, no spaces), as `str::parse` takes
/// it; None when empty, not digits, or above u64.
fn decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &d| {
        if !d.is_ascii_digit() {
            return None;
        }
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// Makes sure `sub` has a timer entry no later than `deadline`.
fn arm(timers: &mut BTreeSet<(u64, u64)>, sub: &mut Subscription, deadline: u64) {
    if sub.armed.is_some_and(|at| at <= deadline) {
        return;
    }
    if let Some(at) = sub.armed {
        timers.remove(&(at, sub.id));
    }
    timers.insert((deadline, sub.id));
    sub.armed = Some(deadline);
}

/// The parts of a shard a delivery to a plain subscriber touches, borrowed apart from the
/// channel it reads.
struct Deliveries<'a> {
    timers: &'a mut BTreeSet<(u64, u64)>,
    out: &'a mut Vec<Out>,
    stats: &'a mut ShardStats,
    reads_wanted: &'a mut Vec<(String, u64)>,
    /// The channel's subscription journal (file store only).
    journal: Option<&'a mut SubJournal>,
}

impl Deliveries<'_> {
    /// Sends a plain subscriber of `ch` what its window has room for.
    fn plain(&mut self, now: Now, ch: &Channel, id: u64, sub: &mut Subscription) {
        if sub.offline || sub.new_on_hold || sub.is_queue() {
            return;
        }
        let expiry = now.mono_ns + sub.ack_wait_ns;
        while !sub.is_stalled() {
            let next = (sub.last_sent + 1).max(ch.log.first_seq());
            let msg = match ch.log.get(next) {
                Lookup::Found(m) => m,
                Lookup::Missing => return,
                Lookup::NotLoaded => {
                    self.reads_wanted.push((sub.channel.clone(), next));
                    return;
                }
                // A damaged record is never stepped over silently: delivery stops before it,
                // as the reference's does (it was logged with its file and offset when read),
                // until the channel's limits drop it.
                Lookup::Unreadable => return,
            };
            if let Some(ahead) = ch.log.read_ahead_from(next) {
                self.reads_wanted.push((sub.channel.clone(), ahead));
            }
            sub.last_sent = next;
            sub.pending.insert(next, expiry);
            arm(self.timers, sub, expiry);
            log::trace!(
                "STAN: [Client:{}] Delivering msg to subid={id}, subject={}, seq={next}",
                sub.client_id,
                sub.channel
            );
            if let Some(j) = self.journal.as_deref_mut() {
                j.sent(id, next);
            }
            self.stats.out_msgs += 1;
            self.stats.out_bytes += msg.encoded.len() as u64;
            self.out.push(Out {
                subject: sub.inbox.clone(),
                reply: None,
                payload: msg.encoded.clone(),
            });
        }
    }
}

/// Whether `out` delivers a message of `channel` at or after `first_seq`.
fn delivers(out: &Out, channel: &str, first_seq: u64) -> bool {
    match pb::MsgProto::decode(out.payload.clone()) {
        Ok(m) => m.sequence >= first_seq && m.subject == channel,
        Err(_) => false,
    }
}

/// How a subscription ends: an unsubscribe deletes durable state, a close keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubEnd {
    Unsubscribe,
    Close,
}

fn window(req: &SubscriptionRequest) -> usize {
    usize::try_from(req.max_in_flight.max(1)).unwrap_or(1)
}

fn ack_wait_ns(req: &SubscriptionRequest) -> u64 {
    u64::try_from(req.ack_wait_in_secs.max(1)).unwrap_or(1) * 1_000_000_000
}

/// A durable (or durable queue shadow) comes back online with the request's inbox, window and
/// ack wait, and a new ack inbox; its pending messages are redelivered before anything new.
fn resume(sub: &mut Subscription, req: &SubscriptionRequest, key: &AckKey) {
    sub.client_id = req.client_id.clone();
    sub.inbox = Bytes::from(req.inbox.clone());
    sub.max_in_flight = window(req);
    sub.ack_wait_ns = ack_wait_ns(req);
    sub.ack_generation += 1;
    sub.ack_tag = key.tag(sub.id, sub.ack_generation);
    sub.offline = false;
    sub.new_on_hold = !sub.pending.is_empty();
}

impl Shard {
    pub fn new(cfg: ShardConfig) -> Self {
        Shard {
            cfg,
            clients: FxHashMap::default(),
            conns: FxHashMap::default(),
            channels: FxHashMap::default(),
            subs: FxHashMap::default(),
            timers: BTreeSet::new(),
            next_sub_id: 1,
            out: Vec::new(),
            stats: ShardStats::default(),
            unwritten: None,
            deleted: Vec::new(),
            reads_wanted: Vec::new(),
            acked_rooms: Vec::new(),
        }
    }

    /// Whether the client registry (replicated to every shard) has `client_id`.
    pub fn knows_client(&self, client_id: &str) -> bool {
        self.clients.contains_key(client_id)
    }

    /// The ack key of a store opened after start-up (an FT standby becoming active learns it
    /// from the store): set before any subscription exists, since their ack inboxes use it.
    pub fn set_ack_key(&mut self, key: AckKey) {
        self.cfg.ack_key = key;
    }

    /// Keeps every stored message's record for the file store (see `take_unwritten`).
    pub fn persist_messages(&mut self) {
        self.unwritten = Some(UnwrittenMap::default());
    }

    /// Whether stored messages or subscription changes wait to be written (output must then
    /// wait for the commit).
    pub fn has_unwritten(&self) -> bool {
        !self.deleted.is_empty()
            || self
                .unwritten
                .as_ref()
                .is_some_and(|u| u.values().any(|b| b.count > 0 || b.subs.gating))
    }

    /// Whether anything at all waits to be written (sends and acks of subscriptions too,
    /// which hold no output back).
    pub fn has_journal(&self) -> bool {
        self.has_unwritten() || self.unwritten.as_ref().is_some_and(|u| !u.is_empty())
    }

    /// The records to write, per channel, and how much of the output they cover: the output
    /// queued so far may go out once they are on disk.
    pub fn take_unwritten(&mut self) -> (Vec<(String, Unwritten)>, usize) {
        let batches = match self.unwritten.as_mut() {
            Some(u) => u.drain().collect(),
            None => Vec::new(),
        };
        (batches, self.out.len())
    }

    /// Channels deleted since the last call, whose files are to be removed (before any write
    /// taken after this call, which may belong to a channel created again under that name).
    pub fn take_deleted(&mut self) -> Vec<String> {
        std::mem::take(&mut self.deleted)
    }

    /// Writing `channel`'s messages from `first_seq` on failed: they are removed as if never
    /// published (the next publish gets `first_seq` again), deliveries of them are taken back
    /// (queued ones dropped, pending acks forgotten), and the PubAcks owed for later messages
    /// of the channel not taken for writing yet are returned, to be answered with the error too.
    ///
    /// `covered` counts the queued outputs a commit covers; it is reduced by those taken back.
    pub fn rollback(&mut self, channel: &str, first_seq: u64, covered: &mut usize) -> OwedAcks {
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
        let mut index = 0;
        let mut removed_in_prefix = 0;
        let prefix = *covered;
        self.out.retain(|o| {
            let keep = !delivers(o, channel, first_seq);
            if !keep && index < prefix {
                removed_in_prefix += 1;
            }
            index += 1;
            keep
        });
        *covered -= removed_in_prefix;
        owed
    }

    /// Writing the subscription records of `channel` failed with `error`: each subscription
    /// they created is removed and each durable they resumed put back offline, and their OK
    /// replies, still held back, become the error. (Other records of the batch were sends
    /// and acks: a restart may redeliver those messages, as after a crash.)
    pub fn subscriptions_not_stored(&mut self, now: Now, confirms: &[Confirm], error: &str) {
        for c in confirms {
            let refused = Bytes::from(
                SubscriptionResponse {
                    ack_inbox: String::new(),
                    error: error.to_string(),
                }
                .encode_to_vec(),
            );
            if let Some(o) = self
                .out
                .iter_mut()
                .find(|o| o.payload.as_ptr() == c.reply_payload.as_ptr())
            {
                o.payload = refused;
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

    /// The first `n` queued outputs (those covered by a commit).
    pub fn take_out_prefix(&mut self, n: usize) -> Vec<Out> {
        let n = n.min(self.out.len());
        self.out.drain(..n).collect()
    }

    /// Recovery (file store, after `persist_messages`): a channel and the indexes of its
    /// slices, before any client. Returns how many messages it keeps once its limits applied.
    pub fn restore_channel(
        &mut self,
        now: Now,
        name: &str,
        slices: Vec<SliceIndex>,
        dir: &dyn ChannelDirectory,
    ) -> Result<u64, String> {
        self.lookup_or_create(now, name, dir)?;
        let Some(ch) = self.channels.get_mut(name) else {
            return Ok(0);
        };
        ch.log = ChannelLog::File(Box::new(FileLog::restore(slices)));
        let limits = ch.limits;
        ch.log.enforce_size_limits(&limits);
        ch.log.expire(&limits, now.wall_ns);
        Ok(ch.log.count())
    }

    // ---- reads from disk (file store) ----

    fn want_read(&mut self, channel: &str, seq: u64) {
        self.reads_wanted.push((channel.to_string(), seq));
    }

    /// Whether readers wait for messages to be read from disk.
    pub fn has_reads(&self) -> bool {
        !self.reads_wanted.is_empty()
    }

    /// The reads to make for the readers waiting (each counted as under way until `loaded`).
    pub fn take_reads(&mut self) -> Vec<(String, ReadPlan)> {
        let wanted = std::mem::take(&mut self.reads_wanted);
        let mut plans = Vec::new();
        for (channel, seq) in wanted {
            if let Some(plan) = self
                .channels
                .get_mut(&channel)
                .and_then(|c| c.log.plan_read(seq))
            {
                plans.push((channel, plan));
            }
        }
        plans
    }

    /// A read is back: its messages are kept in memory and the channel's readers go on.
    pub fn loaded(&mut self, now: Now, channel: &str, first_seq: u64, msgs: Vec<StoredMsg>) {
        let Some(ch) = self.channels.get_mut(channel) else {
            return;
        };
        ch.log.loaded(first_seq, msgs);
        let held: Vec<u64> = ch
            .subscription_ids()
            .filter(|id| {
                self.subs
                    .get(id)
                    .is_some_and(|s| s.new_on_hold && !s.offline)
            })
            .collect();
        for id in held {
            self.start_delivery(now, id);
        }
        self.deliver_channel(now, channel);
    }

    /// A commit wrote `count` messages of `channel` from `first_seq` on, into slice `slice`
    /// from `offset` on: they may now leave memory.
    pub fn written(&mut self, channel: &str, first_seq: u64, count: u64, slice: u64, offset: u64) {
        if let Some(ch) = self.channels.get_mut(channel) {
            ch.log.written(first_seq, count, slice, offset);
        }
    }

    /// What to send, in order.
    pub fn take_out(&mut self) -> Vec<Out> {
        std::mem::take(&mut self.out)
    }

    /// Moves what to send into `into` (empty), keeping both buffers' capacity for reuse.
    pub fn swap_out(&mut self, into: &mut Vec<Out>) {
        std::mem::swap(&mut self.out, into);
    }

    pub fn channel(&self, name: &str) -> Option<&Channel> {
        self.channels.get(name)
    }

    pub fn channels(&self) -> impl Iterator<Item = &Channel> {
        self.channels.values()
    }

    pub fn subscription(&self, id: u64) -> Option<&Subscription> {
        self.subs.get(&id)
    }

    // ---- client registry replica ----

    pub fn client_added(&mut self, client_id: &str, conn_id: Bytes) {
        if let Some(old) = self.clients.get(client_id) {
            self.conns.remove(&old.conn_id);
        }
        if !conn_id.is_empty() {
            self.conns.insert(conn_id.clone(), client_id.to_string());
        }
        self.clients.insert(
            client_id.to_string(),
            ClientEntry {
                conn_id,
                failed_heartbeat: false,
            },
        );
    }

    pub fn set_heartbeat_failed(&mut self, client_id: &str, failed: bool) {
        if let Some(c) = self.clients.get_mut(client_id) {
            c.failed_heartbeat = failed;
        }
    }

    /// The client is gone: its plain subscriptions end, durables go offline, queue members
    /// leave their groups.
    pub fn client_removed(&mut self, now: Now, client_id: &str) {
        if let Some(old) = self.clients.remove(client_id) {
            self.conns.remove(&old.conn_id);
        }
        let ids: Vec<u64> = self
            .subs
            .values()
            .filter(|s| s.client_id == client_id && !s.offline)
            .map(|s| s.id)
            .collect();
        for id in ids {
            self.end_subscription(now, id, SubEnd::Close);
        }
    }

    fn client_valid(&self, client_id: &str, conn_id: &[u8]) -> bool {
        match self.clients.get(client_id) {
            Some(c) => conn_id.is_empty() || c.conn_id.as_ref() == conn_id,
            None => false,
        }
    }

    /// The client registered with this connection ID, if any.
    pub fn client_for_conn(&self, conn_id: &[u8]) -> Option<&str> {
        self.conns.get(conn_id).map(String::as_str)
    }

    /// Whether the client has missed heartbeats (its PINGs then hurry the next one).
    pub fn heartbeat_failed(&self, client_id: &str) -> bool {
        self.clients
            .get(client_id)
            .is_some_and(|c| c.failed_heartbeat)
    }

    // ---- channels ----

    fn lookup_or_create(
        &mut self,
        now: Now,
        name: &str,
        dir: &dyn ChannelDirectory,
    ) -> Result<(), String> {
        if self.channels.contains_key(name) {
            return Ok(());
        }
        dir.register(name)?;
        let limits = self.cfg.limits.for_channel(name);
        let on_disk = self.unwritten.is_some();
        self.channels.insert(
            name.to_string(),
            Channel::new(name, limits, now.mono_ns, on_disk),
        );
        Ok(())
    }

    // ---- publish ----

    /// A PubMsg for `channel` (the publish subject's suffix). Queues the PubAck to `reply`.
    pub fn publish(
        &mut self,
        now: Now,
        channel: &str,
        incoming: Incoming<'_>,
        dir: &dyn ChannelDirectory,
    ) {
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
        // One lookup for a known channel; a new name is checked before it is created.
        let ch = match self.channels.get_mut(channel) {
            Some(ch) => ch,
            None => {
                if !is_valid_channel(channel) {
                    self.pub_ack(&incoming, pm.guid, ERR_INVALID_PUB);
                    return;
                }
                if let Err(e) = self.lookup_or_create(now, channel, dir) {
                    self.pub_ack(&incoming, pm.guid, &e);
                    return;
                }
                let Some(ch) = self.channels.get_mut(channel) else {
                    return;
                };
                ch
            }
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
            self.pub_ack(&incoming, pm.guid, "");
        }
        if has_subs {
            self.deliver_channel(now, channel);
        }
    }

    fn pub_ack(&mut self, incoming: &Incoming<'_>, guid: &[u8], error: &str) {
        let Some(reply) = incoming.reply_bytes() else {
            return;
        };
        self.out.push(Out {
            subject: reply,
            reply: None,
            payload: encode_pub_ack(guid, error),
        });
    }

    // ---- subscribe ----

    fn sub_reply(&mut self, reply: Option<Bytes>, ack_inbox: &str, error: &str) {
        let Some(reply) = reply else {
            return;
        };
        let r = SubscriptionResponse {
            ack_inbox: ack_inbox.to_string(),
            error: error.to_string(),
        };
        self.out.push(Out {
            subject: reply,
            reply: None,
            payload: Bytes::from(r.encode_to_vec()),
        });
    }

    /// The current ack inbox of a subscription (monitoring shows it).
    pub fn ack_inbox_of(&self, sub: &Subscription) -> String {
        self.ack_inbox(sub)
    }

    fn ack_inbox(&self, sub: &Subscription) -> String {
        format!(
            "{}{}.{}.{}",
            self.cfg.ack_prefix,
            sub.id,
            sub.ack_generation,
            crate::ack_key::format_tag(sub.ack_tag)
        )
    }

    // ---- subscription log (file store) ----

    /// What the subscription log keeps of a subscription (a queue member carries its group's
    /// position).
    fn sub_record(&self, sub: &Subscription) -> SubRecord {
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
    fn note_put(&mut self, id: u64) {
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
    fn restore_one(
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

    /// A subscription request already checked for format (payload, client ID present, ack
    /// wait, window, start position, channel name) by the core that received it.
    pub fn subscribe(
        &mut self,
        now: Now,
        req: SubscriptionRequest,
        reply: Option<Bytes>,
        dir: &dyn ChannelDirectory,
    ) {
        if !self.clients.contains_key(&req.client_id) {
            self.sub_reply(reply, "", ERR_UNKNOWN_CLIENT);
            return;
        }
        if let Err(e) = self.lookup_or_create(now, &req.subject, dir) {
            self.sub_reply(reply, "", &e);
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
                self.sub_reply(reply, &inbox, "");
                if let (Some(answer), Some(batch)) = (
                    self.out.last().map(|o| o.payload.clone()),
                    unwritten_of(&mut self.unwritten, &channel),
                ) {
                    batch.confirms.push(Confirm {
                        sub_id: id,
                        reply_payload: answer,
                        created: id >= first_new_id,
                    });
                }
                self.start_delivery(now, id);
            }
            Err(e) => self.sub_reply(reply, "", e),
        }
    }

    fn new_subscription(&mut self, req: &SubscriptionRequest) -> Subscription {
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

    fn room_for_one_more(&self, channel: &str) -> bool {
        let Some(ch) = self.channels.get(channel) else {
            return false;
        };
        ch.limits.max_subs <= 0 || (ch.subscription_count() as i64) < ch.limits.max_subs
    }

    /// Where a new position starts: the sequence last sent, per the start position.
    fn start_last_sent(&self, now: Now, req: &SubscriptionRequest) -> u64 {
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

    fn create_plain(
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

    fn subscribe_durable(
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

    fn subscribe_queue(
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
    fn new_queue_member(
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
    fn start_delivery(&mut self, now: Now, id: u64) {
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

    // ---- delivery ----

    /// Gives every subscription of the channel what it has room for.
    fn deliver_channel(&mut self, now: Now, channel: &str) {
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

    fn deliver_plain(&mut self, now: Now, id: u64) {
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
    fn split_for_delivery(
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
    fn best_member(&self, group: &QueueGroup) -> Option<u64> {
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

    fn deliver_queue(&mut self, now: Now, channel: &str, group_name: &str) {
        loop {
            let Some(ch) = self.channels.get(channel) else {
                return;
            };
            let Some(group) = ch.queues.get(group_name) else {
                return;
            };
            let next = (group.last_sent + 1).max(ch.log.first_seq());
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
            self.send(inbox, payload);
        }
    }

    fn send(&mut self, inbox: Bytes, payload: Bytes) {
        self.stats.out_msgs += 1;
        self.stats.out_bytes += payload.len() as u64;
        self.out.push(Out {
            subject: inbox,
            reply: None,
            payload,
        });
    }

    /// Sends a pending message again, flagged, with its redelivery count; the window does not
    /// apply. A message gone from the log counts as acked.
    fn redeliver(&mut self, now: Now, id: u64, seq: u64) {
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
        self.send(inbox, Bytes::from(proto.encode_to_vec()));
    }

    fn remove_pending(&mut self, id: u64, seq: u64) -> bool {
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

    // ---- acks ----

    /// An Ack published on an ack inbox this shard handed out (`<prefix><id>.<generation>`).
    /// Unknown inboxes, channels and sequences are ignored.
    pub fn ack(&mut self, now: Now, ack_subject: &[u8], payload: &[u8]) {
        self.take_ack_now(ack_subject, payload);
        self.fill_acked(now);
    }

    /// Several acks: every pending entry goes first, then each subscription (or queue group)
    /// that got room is given what it can take, once, instead of once per ack.
    /// Returns the positions of acks whose channel is not on this shard (`take_ack_now`).
    pub fn acks<'a>(
        &mut self,
        now: Now,
        acks: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
    ) -> Vec<usize> {
        let mut elsewhere = Vec::new();
        for (i, (subject, payload)) in acks.into_iter().enumerate() {
            if self.take_ack_now(subject, payload) == AckPlace::Elsewhere {
                elsewhere.push(i);
            }
        }
        self.fill_acked(now);
        elsewhere
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

    fn deliver_to(&mut self, now: Now, room: Room) {
        match room {
            Room::Plain(id) => self.deliver_plain(now, id),
            Room::Queue { channel, queue } => self.deliver_queue(now, &channel, &queue),
        }
    }

    /// Removes what an ack acknowledges; says who got room in its window.
    fn take_ack(&mut self, ack_subject: &[u8], payload: &[u8]) -> Result<Option<Room>, AckPlace> {
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
    fn ack_inbox_owner(&self, inbox: &[u8], channel: &[u8]) -> Option<u64> {
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

    // ---- unsubscribe / close ----

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

    fn find_for_unsubscribe(&self, req: &pb::UnsubscribeRequest) -> Result<u64, &'static str> {
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

    fn delete_subscription(&mut self, id: u64) {
        if let Some(sub) = self.subs.remove(&id) {
            if let Some(at) = sub.armed {
                self.timers.remove(&(at, id));
            }
            if let Some(j) = journal(&mut self.unwritten, &sub.channel) {
                j.delete(id);
            }
        }
    }

    fn leave_queue(&mut self, now: Now, id: u64, end: SubEnd) {
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

    // ---- time ----

    /// Redelivers what expired, drops aged messages, deletes inactive channels.
    pub fn tick(&mut self, now: Now, dir: &dyn ChannelDirectory) {
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
        self.apply_age_and_inactivity(now, dir);
    }

    /// Redelivers a subscription's messages whose ack wait ends by `horizon`, soonest first,
    /// and sets its timer for the next one.
    fn expire(&mut self, now: Now, id: u64, horizon: u64) {
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

    fn apply_age_and_inactivity(&mut self, now: Now, dir: &dyn ChannelDirectory) {
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
            self.delete_channel(&name, dir);
        }
    }

    fn delete_channel(&mut self, name: &str, dir: &dyn ChannelDirectory) {
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
        dir.unregister(name);
    }

    /// The next time `tick` has work (for the runtime's timer), if any.
    pub fn next_deadline(&self) -> Option<u64> {
        self.timers.first().map(|t| t.0)
    }
}

#[cfg(test)]
mod tests {
    use super::decimal;
    use proptest::prelude::*;

    #[test]
    fn decimal_takes_digits_only() {
        assert_eq!(decimal(b"0"), Some(0));
        assert_eq!(decimal(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(decimal(b"18446744073709551616"), None);
        for bad in [&b""[..], b"+1", b"-1", b" 1", b"1 ", b"1a", b"0x1"] {
            assert_eq!(decimal(bad), None, "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn decimal_agrees_with_parse_on_digit_strings(s in "[0-9]{1,22}") {
            prop_assert_eq!(decimal(s.as_bytes()), s.parse::<u64>().ok());
        }
    }
}
