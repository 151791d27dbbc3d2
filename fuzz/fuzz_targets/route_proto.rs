//! Arbitrary bytes from a route peer, split at an arbitrary point, to the route protocol
//! reader: it must never panic, must consume input on every operation, and what it reads as a
//! message must come back the same through the writer.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use stanza::nats::route_proto::{next_op, push_msg, RouteOp};

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
            Ok(Some(op)) => {
                assert!(buf.len() < before);
                if let RouteOp::Msg {
                    subject,
                    reply,
                    queues,
                    header_len,
                    payload,
                    ..
                } = &op
                {
                    let mut out = Vec::new();
                    push_msg(&mut out, subject, reply.as_deref(), queues, *header_len, payload, true);
                    let again = next_op(&mut BytesMut::from(&out[..]));
                    match again {
                        Ok(Some(RouteOp::Msg {
                            payload: p2,
                            queues: q2,
                            header_len: h2,
                            ..
                        })) => {
                            assert_eq!(&p2, payload);
                            assert_eq!(&q2, queues);
                            assert_eq!(h2, *header_len);
                        }
                        other => panic!("re-encoded message not read back: {other:?}"),
                    }
                }
            }
            Ok(None) if !fed_rest => {
                buf.extend_from_slice(&rest[cut..]);
                fed_rest = true;
            }
            Ok(None) | Err(_) => break,
        }
    }
});
