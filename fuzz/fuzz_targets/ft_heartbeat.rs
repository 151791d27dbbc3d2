//! Arbitrary bytes on the FT subject to the heartbeat reader (`stan::ft_heartbeat`): it must
//! never panic, and a heartbeat it reads with a time must come back the same through the writer.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stanza::stan::ft_heartbeat::{decode, encode};

fuzz_target!(|data: &[u8]| {
    if let Some(hb) = decode(data) {
        if let Some(at) = hb.activated {
            let again = decode(&encode(&hb.server_id, at)).expect("our own heartbeat reads back");
            assert_eq!(again, hb);
        }
    }
});
