//! Raft clustering inside a shard: each group is driven by raft-rs's `RawNode` (consensus is
//! the library's, never stanza's), behind the shard's own step / ready / persisted shape.
//! `log` is a group's log as raft-rs reads it, `log_file` the shard's file of every group's
//! log, `group` one group's pump, `shard_groups` all of one shard's groups driven in one
//! turn, `partitions` where a channel lives (partition, group, shard), `partition_entry` what
//! a partition group's entries hold (a channel's records of one turn), `meta_entry` what the
//! metadata group's hold (clients, nodes), `node_ids` the raft numbers of node names, `wire` the node-to-node encoding that keeps rust-protobuf
//! away from network input.

// raft-rs's types are rust-protobuf structs with private bookkeeping fields: they are made
// with `default()` and then filled in (as raft-rs itself does).
#![allow(clippy::field_reassign_with_default)]

pub mod group;
pub mod log;
pub mod log_file;
pub mod meta_entry;
pub mod node_ids;
pub mod partition_entry;
pub mod partitions;
pub mod shard_groups;
pub mod snapshot_data;
pub mod wire;

pub use group::{Group, GroupConfig, GroupError, GroupReady, Outcome};
pub use log::{GroupLog, LogError};
pub use raft::prelude::{
    ConfChangeSingle, ConfChangeType, ConfChangeV2, Entry, EntryType, Message,
};
pub use raft::StateRole;
pub use shard_groups::{Outgoing, PendingWrite, ReceiveError, ShardGroups, SnapshotPolicy, Turn};

/// A normal entry whose data names its index and term (the unit tests' log content).
#[cfg(test)]
pub(crate) fn test_entry(index: u64, term: u64) -> Entry {
    let mut e = Entry::default();
    e.index = index;
    e.term = term;
    e.data = bytes::Bytes::from(format!("{index}/{term}"));
    e
}
