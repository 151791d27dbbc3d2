//! Arbitrary bytes as another node's snapshot data (a partition group's or the metadata
//! group's) and as an answer to a catching-up node's fetch (`shards::raft::snapshot_data`),
//! what a node's store would take: decoding must never panic, and what it accepts comes back
//! the same through the encoders.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shards::raft::snapshot_data::{
    decode_fetched, decode_meta, decode_partition, encode_fetched, encode_meta, encode_partition,
};

fuzz_target!(|data: &[u8]| {
    if let Ok(channels) = decode_partition(data) {
        let again = decode_partition(&encode_partition(&channels)).expect("our own snapshot");
        assert_eq!(again, channels);
    }
    if let Ok(meta) = decode_meta(data) {
        assert_eq!(
            decode_meta(&encode_meta(&meta)).expect("our own snapshot"),
            meta
        );
    }
    if let Ok(Ok(Some(batch))) = decode_fetched(data, "fuzz.channel") {
        let answer = encode_fetched(batch.first_seq, batch.msgs, batch.records.clone(), "");
        let again = decode_fetched(&answer, "fuzz.channel").expect("our own answer");
        assert_eq!(again, Ok(Some(batch)));
    }
});
