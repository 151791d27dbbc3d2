//! What one core's NATS layer tells another over the mesh: messages to deliver, interest
//! changes and their acknowledgements, connection hand-overs, and an opaque slot for the
//! streaming layer (`Internal`). The transport is `mesh::Outbox<MeshMsg>`.

use bytes::Bytes;

/// A message published on one core, for the subscribers of another.
#[derive(Debug, Clone)]
pub struct Routed {
    pub subject: Bytes,
    pub reply: Option<Bytes>,
    pub header_len: usize,
    pub payload: Bytes,
    /// Deliver to the receiving core's plain (non-queue) subscribers.
    pub plain: bool,
    /// Queue groups for which the receiving core was picked to deliver to one member.
    pub queues: Vec<Bytes>,
}

#[derive(Debug)]
pub enum MeshMsg {
    Deliver(Routed),
    /// The sending core gained its first subscription on (subject, queue).
    InterestAdd {
        subject: Bytes,
        queue: Option<Bytes>,
        epoch: u64,
    },
    /// The sending core lost its last subscription on (subject, queue).
    InterestRemove {
        subject: Bytes,
        queue: Option<Bytes>,
        epoch: u64,
    },
    /// The sending core has applied the receiver's interest changes up to `epoch`.
    InterestAck {
        epoch: u64,
    },
    /// Asks for a `BarrierAck`: since rings are FIFO, once it arrives the asking core has
    /// applied every interest change the peer made before answering.
    Barrier {
        id: u64,
    },
    BarrierAck {
        id: u64,
    },
    /// From the core that holds the routes: the client URLs of the whole cluster changed (a
    /// route came or went); clients are told with an INFO.
    ConnectUrls(Vec<String>),
    /// A message for the server-side handler of internal subjects (the streaming layer), which
    /// core NATS carries without knowing its type.
    Internal(Box<dyn std::any::Any + Send>),
    /// A connection handed to the receiving core (`nats::handover`).
    ConnMove(Box<super::handover::MovedConn>),
    /// From the core a connection left: a message that matched one of its subscriptions
    /// there, for the core that holds it now.
    ToConn {
        cid: u64,
        sid: Bytes,
        msg: Routed,
    },
    /// From the core that took a connection over, to every other core: its subscriptions are
    /// there now. Applied at once, so no core routes a message to both cores or to neither.
    InterestMove {
        cid: u64,
        /// The core the connection left.
        left: usize,
        changes: Vec<InterestChange>,
    },
    /// To the core a connection left, from a third core: it applied the `InterestMove`, so it
    /// sends nothing more for that connection there.
    MoveApplied {
        cid: u64,
    },
    /// To the core that took a connection over, from the one it left: every message for it
    /// that the new core routed to the old one before taking it over has been forwarded.
    ForwardDone {
        cid: u64,
    },
}

/// How one subscription of a moved connection changes the interest map.
#[derive(Debug, Clone)]
pub struct InterestChange {
    pub subject: Bytes,
    pub queue: Option<Bytes>,
    /// The core the connection left has no other subscriber for it.
    pub drop_left: bool,
    /// The core that took it over had no subscriber for it before.
    pub add_new: bool,
}
