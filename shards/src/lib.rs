//! What one stanza core owns, with no sockets: channel ownership today; channels, stores and
//! subscription state machines as the streaming layer lands (DESIGN.md §1-2).

pub mod ack_key;
pub mod channel;
pub mod limits;
pub mod owed_acks;
pub mod raft;
pub mod registry;
pub mod shard;
pub mod store;
pub mod subscription;
pub mod wire;

/// The STAN client protocol (proto/protocol.proto), generated at build time.
#[allow(clippy::all, missing_docs)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/pb.rs"));
}

/// stanza's node-to-node messages (proto/cluster.proto), generated at build time.
#[allow(clippy::all, missing_docs)]
pub mod cluster {
    include!(concat!(env!("OUT_DIR"), "/cluster.rs"));
}

/// The shard that owns a channel: `fxhash(channel) % shards` (DESIGN.md §2). Stable across
/// restarts with the same shard count, which is all stores rely on.
pub fn shard_for(channel: &str, shards: usize) -> usize {
    shard_for_bytes(channel.as_bytes(), shards)
}

/// `shard_for` on the raw bytes of a subject suffix, before any UTF-8 check.
pub fn shard_for_bytes(channel: &[u8], shards: usize) -> usize {
    if shards <= 1 {
        return 0;
    }
    (fxhash::hash64(channel) % shards as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spreads_and_is_stable() {
        assert_eq!(shard_for("foo", 1), 0);
        assert_eq!(shard_for("foo", 4), shard_for("foo", 4));
        let mut seen = [0; 4];
        for i in 0..1000 {
            seen[shard_for(&format!("channel.{i}"), 4)] += 1;
        }
        assert!(seen.iter().all(|n| *n > 150), "{seen:?}");
    }
}
