//! Arbitrary bytes on `_STAN.part.<cid>` (another partitioned server's channel list, or an
//! answer to ours) to the partitioning readers: they must never panic, a list they read must
//! come back the same through the writer, and checking it against a list must not panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stanza::stan::partitions::{decode, decode_list, encode_list, Partition};

fuzz_target!(|data: &[u8]| {
    let Ok((server, list)) = decode(data) else {
        return;
    };
    let Ok(channels) = decode_list(&list) else {
        return;
    };
    let ours = Partition::new(vec!["foo.>".into(), "bar.*".into(), "baz".into()]);
    let _ = ours.first_conflict(&channels);
    for c in &channels {
        let _ = ours.owns(c.as_bytes());
    }
    if let Ok(msgs) = encode_list(&server, &channels, 1 << 20) {
        let mut back = Vec::new();
        for m in &msgs {
            let (id, part) = decode(m).expect("our own list reads back");
            assert_eq!(id, server);
            back.extend(decode_list(&part).expect("our own list reads back"));
        }
        assert_eq!(back, channels);
    }
});
