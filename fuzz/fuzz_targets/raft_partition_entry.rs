//! Arbitrary bytes as a committed partition entry (`shards::raft::partition_entry::decode`),
//! what a follower's store would take: decoding must never panic, and what it accepts comes
//! back the same through the encoder.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shards::raft::partition_entry::{decode, encode_batch, encode_delete, PartitionOp};

fuzz_target!(|data: &[u8]| {
    match decode(data) {
        Ok(PartitionOp::Batch(batch)) => {
            let again = decode(&encode_batch(&batch)).expect("our own entry decodes");
            let PartitionOp::Batch(again) = again else {
                panic!("a batch came back as a deletion");
            };
            assert_eq!(again.records, batch.records);
            assert_eq!(again.subs, batch.subs);
            assert_eq!((again.first_seq, again.msgs), (batch.first_seq, batch.msgs));
        }
        Ok(PartitionOp::Delete(channel)) => {
            assert!(matches!(decode(&encode_delete(&channel)), Ok(PartitionOp::Delete(c)) if c == channel));
        }
        Err(_) => {}
    }
});
