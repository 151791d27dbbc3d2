//! Where a channel lives in a cluster: its partition (a fixed number per cluster, chosen at
//! bootstrap and kept), the raft group of that partition, and the shard of each node that owns
//! the group. Every node computes the same partition and group; the shard is each node's own
//! (`group % its cores`), so nodes with different core counts interoperate. Group 0 is the
//! metadata group, on shard 0.

/// Partitions of a new cluster unless configured: enough for the cores of typical servers
/// (and a Raspberry Pi's four) to share the work.
pub const DEFAULT_PARTITIONS: u32 = 16;
/// The metadata group (clients, nodes).
pub const METADATA_GROUP: u32 = 0;

/// The partition of a channel. fxhash's low bits follow the last bytes of a name too closely
/// for names like `orders.1`, `orders.2`, ... (16 partitions got 620 to 1,620 of 16,000 such
/// channels each), so its value is mixed (MurmurHash3's 64-bit finaliser) before the modulo.
/// Every node of a cluster must compute the same partition: this function never changes.
pub fn partition_of(channel: &str, partitions: u32) -> u32 {
    partition_of_bytes(channel.as_bytes(), partitions)
}

/// `partition_of` on a subject's raw bytes (before any UTF-8 check, as requests are routed).
pub fn partition_of_bytes(channel: &[u8], partitions: u32) -> u32 {
    if partitions <= 1 {
        return 0;
    }
    (stable_hash(channel) % u64::from(partitions)) as u32
}

/// The raft group of a channel.
pub fn group_of_channel(channel: &[u8], partitions: u32) -> u32 {
    group_of_partition(partition_of_bytes(channel, partitions))
}

/// fxhash mixed by MurmurHash3's 64-bit finaliser: every bit depends on every input byte.
/// What nodes compute alike (partitions, raft IDs of node names): it never changes.
pub(crate) fn stable_hash(bytes: &[u8]) -> u64 {
    let mut h = fxhash::hash64(bytes);
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h
}

/// The raft group of a partition (groups 1..=partitions; 0 is the metadata group).
pub fn group_of_partition(partition: u32) -> u32 {
    partition + 1
}

/// The shard that owns `group` on a node with `shards` cores.
pub fn shard_of_group(group: u32, shards: usize) -> usize {
    if group == METADATA_GROUP || shards <= 1 {
        return 0;
    }
    (group as usize - 1) % shards
}

/// The shard that owns `channel` on a clustered node: its partition's shard, so that one
/// shard's commit only ever holds channels of groups that shard drives.
pub fn shard_of_channel(channel: &str, partitions: u32, shards: usize) -> usize {
    shard_of_group(
        group_of_partition(partition_of(channel, partitions)),
        shards,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const PINNED: [u32; 4] = [1, 0, 6, 11];

    #[test]
    fn a_channel_lives_in_its_partition_group_on_every_core_count() {
        for cores in [1, 2, 3, 4, 16, 64] {
            for i in 0..500 {
                let channel = format!("ch.{i}");
                let group = group_of_partition(partition_of(&channel, DEFAULT_PARTITIONS));
                assert!((1..=DEFAULT_PARTITIONS).contains(&group));
                assert_eq!(
                    shard_of_channel(&channel, DEFAULT_PARTITIONS, cores),
                    shard_of_group(group, cores)
                );
                assert!(shard_of_group(group, cores) < cores);
            }
        }
        assert_eq!(shard_of_group(METADATA_GROUP, 8), 0);
    }

    #[test]
    fn partitions_spread_channels() {
        for name in ["orders.{}", "{}", "sensor-{}.temp"] {
            let mut seen = vec![0; DEFAULT_PARTITIONS as usize];
            for i in 0..16_000 {
                let channel = name.replace("{}", &i.to_string());
                seen[partition_of(&channel, DEFAULT_PARTITIONS) as usize] += 1;
            }
            assert!(
                seen.iter().all(|n| (850..1150).contains(n)),
                "{name}: {seen:?}"
            );
        }
    }

    #[test]
    fn the_partition_of_a_name_never_changes() {
        // Nodes of one cluster, and every release, must agree.
        let known: Vec<u32> = ["a", "orders", "orders.1", "foo.bar.baz"]
            .iter()
            .map(|c| partition_of(c, DEFAULT_PARTITIONS))
            .collect();
        assert_eq!(known, PINNED);
    }
}
