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

mod acks;
mod commit;
mod grants;
mod step;
pub use commit::{Commit, Held, Ready, Released};
pub use step::Input;
mod delivery;
mod publish;
mod reads;
mod registry;
mod sub_log;
mod subscribe;
mod time;
mod unsubscribe;

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
    /// What it is, for what a failed write takes back (`Shard::advance`).
    about: About,
}

/// What an output is, where a failed write must find it again without decoding it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum About {
    #[default]
    Other,
    /// A (re)delivery of message `seq` of the channel numbered `channel` (`Channel::uid`).
    Delivery { channel: u64, seq: u64 },
    /// The OK reply to subscription `sub_id`, turned into an error if its put is not stored.
    SubReply { sub_id: u64 },
}

impl Out {
    fn new(subject: Bytes, payload: Bytes, about: About) -> Out {
        Out {
            subject,
            reply: None,
            payload,
            about,
        }
    }
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
    /// A commit was handed out by `ready` and `advance` has not been told how it went:
    /// nothing more is handed out meanwhile (output waits behind the write).
    writing: bool,
    /// Sends and acks in the journal are to be written with the next `ready` even though no
    /// message waits (set by `tick` and `journal_due`).
    journal_due: bool,
    /// Requests for channels not created yet, per channel, waiting for its grant.
    awaiting: FxHashMap<String, Vec<grants::AwaitingGrant>>,
    /// Channels to ask for (`Ready::grants`), and deleted ones to hand back (`Ready::released`).
    grants_wanted: Vec<String>,
    released: Vec<String>,
    /// Acks of channels of other shards, to pass on (`Ready::misplaced_acks`).
    misplaced_acks: Vec<(Bytes, Bytes)>,
    /// The number the next new channel gets (`Channel::uid`, never reused).
    next_channel_uid: u64,
    /// Reads from disk may be handed out (`start_reading`).
    reading: bool,
    /// An emptied output buffer given back by the driver (`recycle`), reused.
    spare_out: Vec<Out>,
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
struct Unwritten {
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
struct Confirm {
    pub sub_id: u64,
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
            self.out.push(Out::new(
                sub.inbox.clone(),
                msg.encoded.clone(),
                About::Delivery {
                    channel: ch.uid,
                    seq: next,
                },
            ));
        }
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
            writing: false,
            journal_due: false,
            next_channel_uid: 1,
            awaiting: FxHashMap::default(),
            grants_wanted: Vec::new(),
            released: Vec::new(),
            misplaced_acks: Vec::new(),
            spare_out: Vec::new(),
            reading: false,
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

    pub fn channel(&self, name: &str) -> Option<&Channel> {
        self.channels.get(name)
    }

    pub fn channels(&self) -> impl Iterator<Item = &Channel> {
        self.channels.values()
    }

    /// The names of the channels (owned, to act on each while the shard changes).
    pub fn channel_names(&self) -> Vec<String> {
        self.channels.values().map(|c| c.name.clone()).collect()
    }

    pub fn subscription(&self, id: u64) -> Option<&Subscription> {
        self.subs.get(&id)
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
