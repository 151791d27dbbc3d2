//! Arbitrary bytes as a committed metadata entry (`shards::raft::meta_entry::decode`), what
//! every node's registry and `clients.dat` would take: decoding must never panic, and what it
//! accepts comes back the same through the encoder.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shards::raft::meta_entry::{decode, encode};

fuzz_target!(|data: &[u8]| {
    if let Ok(op) = decode(data) {
        assert_eq!(decode(&encode(&op)).expect("our own entry decodes"), op);
    }
});
