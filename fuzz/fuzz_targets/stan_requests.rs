//! Arbitrary payloads on every STAN request path that decodes client input: the hand-written
//! PubMsg and Ack readers, and the checks of subscription, unsubscribe and connect requests. None may
//! panic; the PubMsg and Ack readers must agree with prost whenever prost accepts the bytes.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use prost::Message;
use shards::pb::{Ack, PubMsg};
use shards::wire::{AckView, PubMsgView};
use stanza::stan::requests;

fuzz_target!(|data: &[u8]| {
    let view = PubMsgView::parse(data);
    if let Ok(pm) = PubMsg::decode(data) {
        let v = view.expect("prost accepted what the view refused");
        assert_eq!(v.guid, pm.guid.as_bytes());
        assert_eq!(v.data, pm.data.as_ref());
    }
    let ack = AckView::parse(data);
    if let Ok(a) = Ack::decode(data) {
        let v = ack.expect("prost accepted an Ack the view refused");
        assert_eq!(v.subject, a.subject.as_bytes());
        assert_eq!(v.sequence, a.sequence);
    }
    let payload = Bytes::copy_from_slice(data);
    let _ = requests::check_subscription(&payload);
    let _ = requests::decode_unsubscribe(&payload);
    let _ = requests::check_connect(&payload);
});
