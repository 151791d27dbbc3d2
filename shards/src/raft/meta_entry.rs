//! What the metadata group's entries hold: the clients' registry (what `clients.dat` holds on
//! a standalone server, so a follower appends a client's record as it came) and the cluster's
//! nodes with their core counts. The registry's `Store` / `Unstore` effects become these
//! entries; every node applies them when committed.

use crate::cluster as pb;
use crate::store::clients::{self, StoredClient};
use bytes::Bytes;
use prost::Message as _;

/// A decoded metadata entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetaOp {
    ClientAdded(StoredClient),
    ClientRemoved(String),
    NodeAdded {
        node: u64,
        cores: u32,
    },
    NodeRemoved(u64),
    /// The cluster's ack key material.
    AckKey([u8; crate::ack_key::KEY_LEN]),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MetaError {
    #[error("metadata entry: undecodable: {0}")]
    Decode(String),
    #[error("metadata entry: {0}")]
    Invalid(&'static str),
}

/// A node's core count is at least one and at most this (a bad entry must not size tables).
const MAX_CORES: u32 = 4096;

pub fn encode(op: &MetaOp) -> Bytes {
    let mut e = pb::MetaEntry::default();
    match op {
        MetaOp::ClientAdded(c) => {
            let mut record = Vec::new();
            clients::encode_add(&mut record, c);
            e.client_added = Bytes::from(record);
        }
        MetaOp::ClientRemoved(id) => e.client_removed = id.clone(),
        MetaOp::NodeAdded { node, cores } => {
            e.node_added = *node;
            e.node_cores = *cores;
        }
        MetaOp::NodeRemoved(node) => e.node_removed = *node,
        MetaOp::AckKey(key) => e.ack_key = Bytes::copy_from_slice(key),
    }
    Bytes::from(e.encode_to_vec())
}

pub fn decode(bytes: &[u8]) -> Result<MetaOp, MetaError> {
    let e = pb::MetaEntry::decode(bytes).map_err(|e| MetaError::Decode(e.to_string()))?;
    let set = [
        !e.client_added.is_empty(),
        !e.client_removed.is_empty(),
        e.node_added != 0,
        e.node_removed != 0,
        !e.ack_key.is_empty(),
    ];
    if set.iter().filter(|s| **s).count() != 1 {
        return Err(MetaError::Invalid("not exactly one operation"));
    }
    if !e.client_added.is_empty() {
        let replayed = clients::replay_with(&e.client_added, false)
            .map_err(|_| MetaError::Invalid("client record"))?;
        return match replayed.clients.as_slice() {
            [client] if replayed.end == e.client_added.len() && !client.id.is_empty() => {
                Ok(MetaOp::ClientAdded(client.clone()))
            }
            _ => Err(MetaError::Invalid("client record")),
        };
    }
    if !e.client_removed.is_empty() {
        return Ok(MetaOp::ClientRemoved(e.client_removed));
    }
    if e.node_added != 0 {
        if e.node_cores == 0 || e.node_cores > MAX_CORES {
            return Err(MetaError::Invalid("node core count"));
        }
        return Ok(MetaOp::NodeAdded {
            node: e.node_added,
            cores: e.node_cores,
        });
    }
    if !e.ack_key.is_empty() {
        let key = <[u8; crate::ack_key::KEY_LEN]>::try_from(e.ack_key.as_ref())
            .map_err(|_| MetaError::Invalid("ack key length"))?;
        return Ok(MetaOp::AckKey(key));
    }
    Ok(MetaOp::NodeRemoved(e.node_removed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_operation_round_trips() {
        let ops = [
            MetaOp::ClientAdded(StoredClient {
                id: "me".into(),
                hb_inbox: "_INBOX.hb".into(),
                conn_id: Bytes::from_static(b"conn1"),
            }),
            MetaOp::ClientRemoved("me".into()),
            MetaOp::NodeAdded { node: 3, cores: 4 },
            MetaOp::NodeRemoved(3),
            MetaOp::AckKey([9; crate::ack_key::KEY_LEN]),
        ];
        for op in ops {
            assert_eq!(decode(&encode(&op)).unwrap(), op);
        }
    }

    #[test]
    fn entries_that_say_nothing_or_too_much_are_refused() {
        assert!(decode(&[]).is_err(), "no operation");
        let two = pb::MetaEntry {
            client_removed: "a".into(),
            node_removed: 2,
            ..Default::default()
        };
        assert!(decode(&two.encode_to_vec()).is_err());
        let cores = pb::MetaEntry {
            node_added: 2,
            node_cores: 0,
            ..Default::default()
        };
        assert!(decode(&cores.encode_to_vec()).is_err());
        let garbage = pb::MetaEntry {
            client_added: Bytes::from_static(b"\x05\x00\x00\x00garbage"),
            ..Default::default()
        };
        assert!(decode(&garbage.encode_to_vec()).is_err());
    }
}
