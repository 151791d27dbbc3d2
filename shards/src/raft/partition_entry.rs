//! What a partition group's entries hold: one channel's `ChannelBatch` of one turn (the
//! message records and subscription records the leader's shard wrote), or a channel's
//! deletion. A follower hands a decoded batch to `FileStore::write`, the call the leader's
//! driver makes, so its store holds the same records; decoding checks everything a store would
//! otherwise take on trust (the records framed, with their CRCs, numbered from `first_seq`,
//! `msgs` of them; the subscription records readable).

use crate::cluster as pb;
use crate::store::file::ChannelBatch;
use crate::store::{record, subs};
use bytes::Bytes;
use prost::Message as _;

/// A decoded partition entry.
#[derive(Debug)]
pub enum PartitionOp {
    Batch(ChannelBatch),
    Delete(String),
}

/// Why an entry was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EntryError {
    #[error("partition entry: undecodable: {0}")]
    Decode(String),
    #[error("partition entry: bad channel name")]
    ChannelName,
    #[error("partition entry for {channel:?}: {what}")]
    Records { channel: String, what: String },
}

/// Longest channel name an entry may carry (far above any real subject).
const MAX_CHANNEL_NAME: usize = 4096;

/// A literal subject: dot-separated non-empty tokens, no wildcards, no blanks (so also never
/// `.` or `..` as a directory name).
pub(crate) fn is_channel_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_CHANNEL_NAME
        && name
            .split('.')
            .all(|t| !t.is_empty() && t != "*" && t != ">")
        && !name
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
}

/// `batch` without the message records a store already holds (sequences up to
/// `last_stored`): a restarted node applies again the committed entries after its last
/// snapshot, some of which its store took before it stopped. Subscription records are kept
/// (applied again in order they set the state they set before). The records were checked at
/// decoding.
pub fn without_stored(mut batch: ChannelBatch, last_stored: u64) -> ChannelBatch {
    if batch.msgs == 0 || batch.first_seq > last_stored {
        return batch;
    }
    let mut at = 0;
    let mut skipped = 0;
    while let Some(h) = record::header_at(&batch.records, at) {
        if h.seq > last_stored {
            break;
        }
        at += record::HEADER_LEN + h.body_len as usize;
        skipped += 1;
    }
    batch.records.drain(..at.min(batch.records.len()));
    batch.msgs = batch.msgs.saturating_sub(skipped);
    batch.first_seq += skipped;
    if batch.msgs == 0 {
        batch.records.clear();
    }
    batch
}

/// The entry for one channel's batch.
pub fn encode_batch(batch: &ChannelBatch) -> Bytes {
    let entry = pb::PartitionEntry {
        channel: batch.channel.clone(),
        records: Bytes::copy_from_slice(&batch.records),
        first_seq: batch.first_seq,
        msgs: batch.msgs,
        subs: Bytes::copy_from_slice(&batch.subs),
        sub_records: batch.sub_records,
        subs_sync: batch.subs_sync,
        delete: false,
    };
    Bytes::from(entry.encode_to_vec())
}

/// The entry that deletes `channel` (its files, on every node).
pub fn encode_delete(channel: &str) -> Bytes {
    let entry = pb::PartitionEntry {
        channel: channel.to_string(),
        delete: true,
        ..Default::default()
    };
    Bytes::from(entry.encode_to_vec())
}

pub fn decode(bytes: &[u8]) -> Result<PartitionOp, EntryError> {
    let e = pb::PartitionEntry::decode(bytes).map_err(|e| EntryError::Decode(e.to_string()))?;
    if !is_channel_name(&e.channel) {
        return Err(EntryError::ChannelName);
    }
    if e.delete {
        return Ok(PartitionOp::Delete(e.channel));
    }
    let bad = |what: String| EntryError::Records {
        channel: e.channel.clone(),
        what,
    };
    let (found, end) = record::scan(&e.records).map_err(|err| bad(err.to_string()))?;
    if end != record::ScanEnd::Clean || found.len() as u64 != e.msgs {
        return Err(bad(format!(
            "{} whole records for {} messages",
            found.len(),
            e.msgs
        )));
    }
    for (k, f) in found.iter().enumerate() {
        if Some(f.header.seq) != e.first_seq.checked_add(k as u64) {
            return Err(bad(format!(
                "record {k} has sequence {}, expected {}",
                f.header.seq,
                e.first_seq.saturating_add(k as u64)
            )));
        }
    }
    let (_, subs_end, sub_records) =
        subs::replay(&e.subs).map_err(|c| bad(format!("subscription record at {}", c.0)))?;
    if subs_end != e.subs.len() || sub_records != e.sub_records {
        return Err(bad(format!(
            "{sub_records} subscription records, {} announced",
            e.sub_records
        )));
    }
    Ok(PartitionOp::Batch(ChannelBatch {
        channel: e.channel,
        records: e.records.to_vec(),
        first_seq: e.first_seq,
        msgs: e.msgs,
        subs: e.subs.to_vec(),
        sub_records: e.sub_records,
        subs_sync: e.subs_sync,
        slice_limits: None,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch() -> ChannelBatch {
        let mut records = Vec::new();
        for seq in 5..8 {
            record::encode(&mut records, seq, 1_000 + seq as i64, b"payload");
        }
        ChannelBatch {
            channel: "orders".into(),
            records,
            first_seq: 5,
            msgs: 3,
            subs: Vec::new(),
            sub_records: 0,
            subs_sync: false,
            slice_limits: None,
        }
    }

    #[test]
    fn a_batch_and_a_deletion_round_trip() {
        let b = batch();
        let Ok(PartitionOp::Batch(back)) = decode(&encode_batch(&b)) else {
            panic!("a batch");
        };
        assert_eq!(
            (back.channel.as_str(), back.first_seq, back.msgs),
            ("orders", 5, 3)
        );
        assert_eq!(back.records, b.records);
        assert!(matches!(
            decode(&encode_delete("orders")),
            Ok(PartitionOp::Delete(c)) if c == "orders"
        ));
    }

    #[test]
    fn records_that_do_not_add_up_are_refused() {
        let mut b = batch();
        b.msgs = 4;
        assert!(matches!(
            decode(&encode_batch(&b)),
            Err(EntryError::Records { .. })
        ));
        let mut b = batch();
        b.first_seq = 6;
        assert!(matches!(
            decode(&encode_batch(&b)),
            Err(EntryError::Records { .. })
        ));
        let mut b = batch();
        let last = b.records.len() - 1;
        b.records[last] ^= 1;
        assert!(decode(&encode_batch(&b)).is_err());
        let mut b = batch();
        for bad in ["..", "a..b", "a.*", "a b", ""] {
            b.channel = bad.into();
            assert_eq!(
                decode(&encode_batch(&b)).unwrap_err(),
                EntryError::ChannelName
            );
        }
        let mut b = batch();
        b.sub_records = 1;
        assert!(decode(&encode_batch(&b)).is_err());
    }

    #[test]
    fn records_a_store_holds_are_left_out() {
        let mut records = Vec::new();
        for seq in 5..=8 {
            record::encode(&mut records, seq, seq as i64, b"body");
        }
        let batch = ChannelBatch {
            channel: "c".into(),
            records: records.clone(),
            first_seq: 5,
            msgs: 4,
            ..ChannelBatch::default()
        };
        assert_eq!(
            without_stored(batch.clone(), 4),
            batch,
            "nothing stored yet"
        );
        let rest = without_stored(batch.clone(), 6);
        assert_eq!((rest.first_seq, rest.msgs), (7, 2));
        assert_eq!(record::header_at(&rest.records, 0).map(|h| h.seq), Some(7));
        let none = without_stored(batch, 8);
        assert_eq!((none.msgs, none.records.len()), (0, 0));
    }
}
