//! What one core's streaming layer sends another over the mesh. Payloads stay `Bytes` slices
//! of the frame the client's core read: nothing is copied or decoded on the way.

use bytes::{BufMut, Bytes, BytesMut};
use shards::pb::{SubscriptionRequest, UnsubscribeRequest};
use shards::shard::SubEnd;
use shards::wire::range_within;
use std::ops::Range;

/// What one core's streaming layer sends another, by plane.
pub enum StanMsg {
    /// The data plane: requests for the shard that owns their channel, in the order they came
    /// (a turn's requests for one shard travel as one mesh message).
    Data(Vec<DataMsg>),
    /// The client registry, from the control plane to every shard.
    Registry(RegistryEvent),
    /// Coordination: requests for the control plane, answers on reply inboxes, FT take-over,
    /// monitoring.
    Control(ControlMsg),
}

/// A request for the shard that owns its channel. (Requests are boxed: every message is as
/// large as the largest variant, and publishes are moved into batches by the many.)
pub enum DataMsg {
    Publish(PublishFrame),
    /// To the shard named in the ack inbox.
    Ack {
        subject: Bytes,
        payload: Bytes,
    },
    /// Checked for format already.
    Subscribe {
        req: Box<SubscriptionRequest>,
        reply: Option<Bytes>,
    },
    Unsubscribe {
        req: Box<UnsubscribeRequest>,
        end: SubEnd,
        reply: Option<Bytes>,
    },
}

/// A change of the client registry, applied by every shard to its copy; those with a token
/// are answered with `ControlMsg::Done`.
pub enum RegistryEvent {
    ClientAdded {
        client_id: String,
        conn_id: Bytes,
        token: u64,
    },
    ClientRemoved {
        client_id: String,
        token: u64,
    },
    HeartbeatState {
        client_id: String,
        failed: bool,
    },
}

pub enum ControlMsg {
    /// To the control plane (shard 0).
    Connect {
        payload: Bytes,
        reply: Option<Bytes>,
    },
    Close {
        payload: Bytes,
        reply: Option<Bytes>,
    },
    /// A shard applied a registry change.
    Done {
        token: u64,
    },
    /// From any core to the control plane: a failed client pinged, try it again now.
    HurryHeartbeat {
        client_id: String,
    },
    /// A client's answer on a server reply inbox, to the shard that made the request.
    Reply {
        token: u64,
        payload: Bytes,
    },
    /// FT take-over, from core 0 to every core: open this core's part of the store (its ack
    /// inboxes made with the store's key) and answer with `Activated`.
    Activate {
        ack_key: shards::ack_key::AckKey,
    },
    Activated {
        result: Result<(), String>,
    },
    /// A message on the FT subject published on another core, for core 0 to look at.
    FtMessage {
        payload: Bytes,
    },
    /// Clustering: a raft batch received on another core, for the core owning its group.
    Raft {
        payload: Bytes,
    },
    /// Clustering: a catching-up node's fetch of a channel's messages, for the channel's core.
    RaftFetch {
        payload: Bytes,
        reply: Option<Bytes>,
    },
    /// Clustering, from core 0 to every core: this node serves now (open the store as the
    /// serving node, with the cluster's ack key) or stops serving; answered with
    /// `ClusterReport`.
    ClusterServe {
        token: u64,
        ack_key: shards::ack_key::AckKey,
    },
    ClusterStandDown {
        token: u64,
    },
    /// Clustering: a request for the metadata group's core (core 0).
    RaftCore0 {
        request: crate::stan::cluster::membership::Core0Request,
        payload: Bytes,
        reply: Option<Bytes>,
    },
    /// Clustering, from core 0 to every core: add `node` to (`add`) or remove it from every
    /// partition group this core leads; answered with `ClusterReport`.
    ClusterMembership {
        token: u64,
        node: u64,
        add: bool,
    },
    ClusterReport {
        token: u64,
        result: Result<(), String>,
    },
    /// Monitoring: report this core's figures to the asking core.
    Snapshot {
        token: u64,
    },
    SnapshotReply {
        token: u64,
        snapshot: Box<crate::stan::snapshot::CoreSnapshot>,
    },
}

/// A publish on its way to the channel's owner: one share of the frame it was read in, and
/// where its channel name, reply subject and PubMsg lie in it. One share instead of one per
/// part, as each share and drop is an atomic operation on the frame.
pub struct PublishFrame {
    frame: Bytes,
    channel: Part,
    reply: Option<Part>,
    payload: Part,
}

/// Where a part lies in the frame: offset and length (32 bits each, to keep a publish small
/// as it is moved into batches).
#[derive(Clone, Copy)]
struct Part {
    at: u32,
    len: u32,
}

impl Part {
    fn of(range: Range<usize>) -> Option<Part> {
        Some(Part {
            at: u32::try_from(range.start).ok()?,
            len: u32::try_from(range.len()).ok()?,
        })
    }

    fn range(self) -> Range<usize> {
        self.at as usize..self.at as usize + self.len as usize
    }
}

impl PublishFrame {
    /// The parts shared with `backing` when they all lie in it, else copied into a frame of
    /// their own. `None` for parts of 4 GiB or more, which no NATS frame holds.
    pub fn new(
        backing: Option<&Bytes>,
        channel: &[u8],
        reply: Option<&[u8]>,
        payload: &[u8],
    ) -> Option<Self> {
        if let Some(frame) = backing {
            let within = |part: &[u8]| range_within(frame, part).and_then(Part::of);
            let reply_part = match reply {
                Some(r) => within(r).map(Some),
                None => Some(None),
            };
            if let (Some(channel), Some(reply), Some(payload)) =
                (within(channel), reply_part, within(payload))
            {
                return Some(PublishFrame {
                    frame: frame.clone(),
                    channel,
                    reply,
                    payload,
                });
            }
        }
        let reply_len = reply.map_or(0, <[u8]>::len);
        let mut copy = BytesMut::with_capacity(channel.len() + reply_len + payload.len());
        let mut put = |part: &[u8]| {
            let start = copy.len();
            copy.put_slice(part);
            Part::of(start..copy.len())
        };
        let channel = put(channel)?;
        let reply = match reply {
            Some(r) => Some(put(r)?),
            None => None,
        };
        let payload = put(payload)?;
        Some(PublishFrame {
            channel,
            reply,
            payload,
            frame: copy.freeze(),
        })
    }

    pub fn channel(&self) -> &[u8] {
        &self.frame[self.channel.range()]
    }

    pub fn reply(&self) -> Option<&[u8]> {
        self.reply.map(|r| &self.frame[r.range()])
    }

    /// The PubMsg.
    pub fn payload(&self) -> &[u8] {
        &self.frame[self.payload.range()]
    }

    /// What the parts lie in.
    pub fn frame(&self) -> &Bytes {
        &self.frame
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_in_the_frame_are_shared_and_others_copied() {
        let frame = Bytes::from_static(b"PUB _STAN.pub.c.foo _INBOX.r 3\r\nabc\r\n");
        let channel = &frame[16..19];
        let reply = &frame[20..28];
        let payload = &frame[32..35];
        let shared = PublishFrame::new(Some(&frame), channel, Some(reply), payload).unwrap();
        assert_eq!(shared.frame().as_ptr(), frame.as_ptr());
        assert_eq!(
            (shared.channel(), shared.reply(), shared.payload()),
            (&b"foo"[..], Some(&b"_INBOX.r"[..]), &b"abc"[..])
        );
        let elsewhere = b"_INBOX.other".to_vec();
        for (backing, reply) in [
            (Some(&frame), Some(&elsewhere[..])),
            (None, Some(reply)),
            (None, None),
        ] {
            let copied = PublishFrame::new(backing, channel, reply, payload).unwrap();
            assert_ne!(copied.frame().as_ptr(), frame.as_ptr());
            assert_eq!(
                (copied.channel(), copied.reply(), copied.payload()),
                (&b"foo"[..], reply, &b"abc"[..])
            );
        }
        let no_reply = PublishFrame::new(Some(&frame), channel, None, payload).unwrap();
        assert_eq!(
            (no_reply.frame().as_ptr(), no_reply.reply()),
            (frame.as_ptr(), None)
        );
    }
}
