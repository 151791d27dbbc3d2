//! What a raft snapshot of the streaming state holds, and the answers to a catching-up node's
//! fetches: encoded here, and decoded with every check a node's store would otherwise take on
//! trust (they come from another node): channel names, sequence ranges, subscription and
//! client logs that replay, message records framed and numbered.

use super::partition_entry::{self, is_channel_name, PartitionOp};
use crate::ack_key::KEY_LEN;
use crate::cluster as pb;
use crate::store::file::ChannelBatch;
use crate::store::{clients, subs};
use bytes::Bytes;
use prost::Message as _;

/// One channel in a partition group's snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelState {
    pub name: String,
    /// 0 and 0 for a channel without messages.
    pub first_seq: u64,
    pub last_seq: u64,
    /// Its subscription log (`subs.dat`), whole.
    pub subs_log: Bytes,
}

/// The metadata group's snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaState {
    pub clients_log: Bytes,
    pub ack_key: [u8; KEY_LEN],
}

/// Why snapshot data or a fetch answer was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SnapshotError {
    #[error("undecodable: {0}")]
    Decode(String),
    #[error("bad channel name {0:?}")]
    ChannelName(String),
    #[error("channel {0:?}: first sequence {1} after last {2}")]
    Range(String, u64, u64),
    #[error("channel {0:?}: its subscription log does not replay")]
    SubsLog(String),
    #[error("the client log does not replay")]
    ClientsLog,
    #[error("ack key of {0} bytes")]
    AckKey(usize),
    #[error("{0}")]
    Records(String),
}

pub fn encode_partition(channels: &[ChannelState]) -> Bytes {
    let snap = pb::PartitionSnapshot {
        channels: channels
            .iter()
            .map(|c| pb::SnapshotChannel {
                name: c.name.clone(),
                first_seq: c.first_seq,
                last_seq: c.last_seq,
                subs_log: c.subs_log.clone(),
            })
            .collect(),
    };
    Bytes::from(snap.encode_to_vec())
}

pub fn decode_partition(bytes: &[u8]) -> Result<Vec<ChannelState>, SnapshotError> {
    let snap =
        pb::PartitionSnapshot::decode(bytes).map_err(|e| SnapshotError::Decode(e.to_string()))?;
    let mut out = Vec::with_capacity(snap.channels.len());
    for c in snap.channels {
        if !is_channel_name(&c.name) {
            return Err(SnapshotError::ChannelName(c.name));
        }
        let empty = c.first_seq == 0 && c.last_seq == 0;
        if !empty && (c.first_seq == 0 || c.first_seq > c.last_seq) {
            return Err(SnapshotError::Range(c.name, c.first_seq, c.last_seq));
        }
        if !c.subs_log.is_empty() {
            match subs::replay(&c.subs_log) {
                Ok((_, end, _)) if end == c.subs_log.len() => {}
                _ => return Err(SnapshotError::SubsLog(c.name)),
            }
        }
        out.push(ChannelState {
            name: c.name,
            first_seq: c.first_seq,
            last_seq: c.last_seq,
            subs_log: c.subs_log,
        });
    }
    Ok(out)
}

pub fn encode_meta(state: &MetaState) -> Bytes {
    let snap = pb::MetaSnapshot {
        clients_log: state.clients_log.clone(),
        ack_key: Bytes::copy_from_slice(&state.ack_key),
    };
    Bytes::from(snap.encode_to_vec())
}

pub fn decode_meta(bytes: &[u8]) -> Result<MetaState, SnapshotError> {
    let snap = pb::MetaSnapshot::decode(bytes).map_err(|e| SnapshotError::Decode(e.to_string()))?;
    let ack_key = <[u8; KEY_LEN]>::try_from(snap.ack_key.as_ref())
        .map_err(|_| SnapshotError::AckKey(snap.ack_key.len()))?;
    match clients::replay_with(&snap.clients_log, false) {
        Ok(r) if r.end == snap.clients_log.len() => {}
        _ => return Err(SnapshotError::ClientsLog),
    }
    Ok(MetaState {
        clients_log: snap.clients_log,
        ack_key,
    })
}

/// A fetch answer: the records as a batch of `channel` (checked as a partition entry is),
/// `None` when the leader holds nothing from the asked sequence on, or the leader's error.
pub fn decode_fetched(
    bytes: &[u8],
    channel: &str,
) -> Result<Result<Option<ChannelBatch>, String>, SnapshotError> {
    let got = pb::FetchResponse::decode(bytes).map_err(|e| SnapshotError::Decode(e.to_string()))?;
    if !got.error.is_empty() {
        return Ok(Err(got.error));
    }
    if got.msgs == 0 {
        return Ok(Ok(None));
    }
    let batch = ChannelBatch {
        channel: channel.to_string(),
        records: got.records.to_vec(),
        first_seq: got.first_seq,
        msgs: got.msgs,
        ..ChannelBatch::default()
    };
    match partition_entry::decode(&partition_entry::encode_batch(&batch)) {
        Ok(PartitionOp::Batch(batch)) => Ok(Ok(Some(batch))),
        Ok(PartitionOp::Delete(_)) => Err(SnapshotError::Records("not a batch".into())),
        Err(e) => Err(SnapshotError::Records(e.to_string())),
    }
}

pub fn encode_fetched(first_seq: u64, msgs: u64, records: Vec<u8>, error: &str) -> Bytes {
    let answer = pb::FetchResponse {
        first_seq,
        msgs,
        records: Bytes::from(records),
        error: error.to_string(),
    };
    Bytes::from(answer.encode_to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_round_trip_and_bad_ones_are_refused() {
        let channels = vec![
            ChannelState {
                name: "orders".into(),
                first_seq: 3,
                last_seq: 9,
                subs_log: Bytes::new(),
            },
            ChannelState {
                name: "empty".into(),
                first_seq: 0,
                last_seq: 0,
                subs_log: Bytes::new(),
            },
        ];
        assert_eq!(
            decode_partition(&encode_partition(&channels)).unwrap(),
            channels
        );
        let mut bad = channels.clone();
        bad[0].first_seq = 10;
        assert!(matches!(
            decode_partition(&encode_partition(&bad)),
            Err(SnapshotError::Range(..))
        ));
        bad[0].name = "a.*".into();
        assert!(decode_partition(&encode_partition(&bad)).is_err());
        bad[0] = channels[0].clone();
        bad[0].subs_log = Bytes::from_static(b"\x01\x02\x03");
        assert!(decode_partition(&encode_partition(&bad)).is_err());
        let meta = MetaState {
            clients_log: Bytes::new(),
            ack_key: [5; KEY_LEN],
        };
        assert_eq!(decode_meta(&encode_meta(&meta)).unwrap(), meta);
        let short = pb::MetaSnapshot {
            ack_key: Bytes::from_static(b"k"),
            ..Default::default()
        };
        assert_eq!(
            decode_meta(&short.encode_to_vec()),
            Err(SnapshotError::AckKey(1))
        );
        let mut records = Vec::new();
        crate::store::record::encode(&mut records, 4, 1, b"m");
        let ok = encode_fetched(4, 1, records.clone(), "");
        let batch = decode_fetched(&ok, "c").unwrap().unwrap().unwrap();
        assert_eq!((batch.first_seq, batch.msgs), (4, 1));
        assert!(decode_fetched(&encode_fetched(5, 1, records, ""), "c").is_err());
        assert_eq!(
            decode_fetched(&encode_fetched(0, 0, Vec::new(), "gone"), "c").unwrap(),
            Err("gone".into())
        );
        assert_eq!(
            decode_fetched(&encode_fetched(0, 0, Vec::new(), ""), "c").unwrap(),
            Ok(None)
        );
    }
}
