//! Arbitrary bytes as a slice index file: decoding must never panic, and an index it accepts
//! has offsets that start at 0 and grow by at least a record header.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shards::store::index::decode;

fuzz_target!(|data: &[u8]| {
    if let Some(idx) = decode(1, data) {
        assert_eq!(idx.len(), data.len() / 16);
        assert!(idx.offsets.first().is_none_or(|o| *o == 0));
        assert!(idx.offsets.windows(2).all(|w| w[1] >= w[0] + 24));
        assert!(idx.timestamps.windows(2).all(|w| w[1] >= w[0]));
    }
});
