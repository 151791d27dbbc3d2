//! Feeds arbitrary bytes, split at an arbitrary point, to the server-to-client protocol reader
//! used by external NATS mode: it must never panic and must consume input on every operation.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use stanza::nats::client_proto::next_op;

fuzz_target!(|data: &[u8]| {
    let Some((&cut, rest)) = data.split_first() else {
        return;
    };
    let cut = (cut as usize).min(rest.len());
    let mut buf = BytesMut::from(&rest[..cut]);
    let mut fed_rest = false;
    loop {
        let before = buf.len();
        match next_op(&mut buf) {
            Ok(Some(_)) => assert!(buf.len() < before),
            Ok(None) if !fed_rest => {
                buf.extend_from_slice(&rest[cut..]);
                fed_rest = true;
            }
            Ok(None) | Err(_) => break,
        }
    }
});
