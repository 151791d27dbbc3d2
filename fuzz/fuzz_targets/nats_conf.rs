//! Arbitrary text to the NATS configuration parser and the options mapping: errors are fine,
//! panics are not.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stanza::config::{load, Options};

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let mut options = Options::default();
        let _ = load::apply_text(&mut options, text, "fuzz.conf");
    }
});
