//! What one core's streaming layer sends another over the mesh. Payloads stay `Bytes` slices
//! of the frame the client's core read: nothing is copied or decoded on the way.

use bytes::Bytes;
use shards::pb::{SubscriptionRequest, UnsubscribeRequest};
use shards::shard::SubEnd;

pub enum StanMsg {
    /// Publishes and acks of one turn for the same shard, in the order they came: one mesh
    /// message instead of one each.
    Batch(Vec<StanMsg>),
    /// To the channel's owner.
    Publish {
        channel: Bytes,
        reply: Option<Bytes>,
        payload: Bytes,
    },
    /// To the channel's owner, checked for format already.
    Subscribe {
        req: SubscriptionRequest,
        reply: Option<Bytes>,
    },
    Unsubscribe {
        req: UnsubscribeRequest,
        end: SubEnd,
        reply: Option<Bytes>,
    },
    /// To the shard named in the ack inbox.
    Ack {
        subject: Bytes,
        payload: Bytes,
    },
    /// To the control plane (shard 0).
    Connect {
        payload: Bytes,
        reply: Option<Bytes>,
    },
    Close {
        payload: Bytes,
        reply: Option<Bytes>,
    },
    /// A client's answer on a server reply inbox, to the shard that made the request.
    Reply {
        token: u64,
    },
    /// From the control plane to every shard; answered with `Done`.
    ClientAdded {
        client_id: String,
        conn_id: Bytes,
        token: u64,
    },
    ClientRemoved {
        client_id: String,
        token: u64,
    },
    Done {
        token: u64,
    },
    HeartbeatState {
        client_id: String,
        failed: bool,
    },
    /// From any core to the control plane: a failed client pinged, try it again now.
    HurryHeartbeat {
        client_id: String,
    },
    /// Monitoring: report this core's figures to the asking core.
    Snapshot {
        token: u64,
    },
    SnapshotReply {
        token: u64,
        snapshot: Box<crate::monitor::snapshot::CoreSnapshot>,
    },
}
