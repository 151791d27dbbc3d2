//! Arbitrary bytes as a shard's raft log file (`shards::raft::log_file::replay`): replay must
//! never panic; every group it recovers must become a log (or be refused with an error), start
//! a raft group without panicking, and come back the same through a rewrite of the file.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shards::raft::log_file::{encode_whole, replay};
use shards::raft::{Group, GroupConfig};

fuzz_target!(|data: &[u8]| {
    let Ok((groups, end)) = replay(data) else {
        return;
    };
    assert!(end <= data.len());
    for (id, recovered) in groups {
        let applied = recovered.snapshot.get_metadata().index;
        let Ok(log) = recovered.into_log() else {
            continue;
        };
        let mut whole = Vec::new();
        encode_whole(&mut whole, id, &log);
        let (again, _) = replay(&whole).expect("a rewrite replays");
        let again = again.get(&id).expect("the group is in its rewrite");
        assert_eq!(again.entries.len() as u64, log.last() - log.before().0);
        let config = GroupConfig::new(id, 1);
        if let Ok(mut group) = Group::new(&config, log, applied) {
            group.tick();
            let _ = group.ready();
        }
    }
});
