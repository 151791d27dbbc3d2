//! Arbitrary bytes as a channel's `subs.dat`: replay must never panic, and the compacted form
//! of what it returns (as start-up and run-time compaction write it) must replay to the same
//! subscriptions and pending sequences.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shards::store::subs::{replay, snapshot};

fuzz_target!(|data: &[u8]| {
    let Ok((subs, _, _)) = replay(data) else {
        return;
    };
    // Pending sets can be huge ranges: compare them within a window.
    let window = |s: &shards::store::subs::RecoveredSub| s.pending.within(0, 4096);
    let pending: Vec<Vec<u64>> = subs.values().map(window).collect();
    let (compacted, _) = snapshot(subs.values().map(|s| &s.record).zip(pending.iter().map(Vec::as_slice)));
    let (again, end, _) = replay(&compacted).expect("a compacted log replays");
    assert_eq!(end, compacted.len());
    assert_eq!(again.len(), subs.len());
    for (id, s) in &subs {
        let a = &again[id];
        assert_eq!(window(a), window(s));
        assert_eq!(a.record.id, s.record.id);
        assert_eq!(a.record.client_id, s.record.client_id);
    }
});
