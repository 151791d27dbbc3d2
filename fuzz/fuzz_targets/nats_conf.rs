//! Arbitrary text to the NATS configuration parser and the options mapping: errors are fine,
//! panics are not.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stanza::config::{conf, Options};

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(map) = conf::parse_str(text, "fuzz.conf") {
            let mut options = Options::default();
            let _ = options.apply_conf(&map);
        }
    }
});
