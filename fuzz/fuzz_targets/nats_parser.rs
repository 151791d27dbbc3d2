//! Feeds arbitrary bytes, split at an arbitrary point, to the client protocol parser: it
//! must never panic, and must make progress or stop on every call.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use stanza::nats::parser::{Parser, ParserLimits};

fuzz_target!(|data: &[u8]| {
    let Some((&cut, rest)) = data.split_first() else {
        return;
    };
    let cut = (cut as usize).min(rest.len());
    let mut parser = Parser::new(ParserLimits {
        max_control_line: 256,
        max_payload: 4096,
    });
    let mut buf = BytesMut::from(&rest[..cut]);
    let mut fed_rest = false;
    loop {
        let before = buf.len();
        match parser.parse(&mut buf) {
            Ok(Some(_)) => assert!(buf.len() < before || before == 0),
            Ok(None) if !fed_rest => {
                buf.extend_from_slice(&rest[cut..]);
                fed_rest = true;
            }
            Ok(None) | Err(_) => break,
        }
    }
});
