//! Arbitrary bytes as `clients.dat`: replay must never panic, and what it returns written back
//! (as the start-up compaction does) must replay to the same clients.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shards::store::clients::{encode_add, replay};

fuzz_target!(|data: &[u8]| {
    if let Ok(clients) = replay(data) {
        let mut compacted = Vec::new();
        for c in &clients {
            encode_add(&mut compacted, c);
        }
        assert_eq!(replay(&compacted).ok(), Some(clients));
    }
});
