//! Arbitrary bytes as a slice file: the recovery scan must never panic, and every record it
//! returns must lie inside the data with a matching CRC.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shards::store::record::{scan, ScanEnd};

fuzz_target!(|data: &[u8]| {
    if let Ok((found, end)) = scan(data) {
        for f in &found {
            assert!(f.end() <= data.len());
            assert_eq!(crc32c::crc32c(f.body(data)), f.header.crc);
        }
        if let ScanEnd::TornTail { offset } = end {
            assert!(offset <= data.len());
        }
    }
});
