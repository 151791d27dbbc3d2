//! The STAN front: which NATS subjects belong to the streaming server, how each request kind
//! reaches the shard that owns it, and the control plane (client registry, heartbeats) on
//! shard 0. Core NATS calls in through `nats::core::InternalHandler`; the streaming state
//! machine itself is `shards::shard::Shard`.
//!
//! How a publish travels: a client's `PUB _STAN.pub.<cid>.foo <reply>` is recognised by
//! `subjects::classify` on the core that read it; `streaming::Streaming::on_publish` hashes `foo` to
//! its shard and hands (channel, reply, payload) over the mesh without decoding; the owner's
//! `Shard::publish` decodes, stores, queues the PubAck and deliveries; `Streaming::flush` publishes
//! them through core NATS, which routes each to the core of the connection it is for.

pub mod cluster;
pub mod control;
pub mod directory;
pub mod driver;
pub mod external;
pub mod ft;
pub mod ft_heartbeat;
pub mod messages;
pub mod partitions;
pub mod recovery;
pub mod requests;
pub mod role;
pub mod routing;
pub mod snapshot;
pub mod streaming;
pub mod subjects;
pub mod time;
