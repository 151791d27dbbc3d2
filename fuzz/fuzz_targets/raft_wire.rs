//! Arbitrary bytes from another node to the raft wire decoder (`shards::raft::wire`), and every
//! message it accepts stepped into a live group (a follower with a log, then a leader): neither
//! the decoder nor raft-rs behind `Group::step` may panic on what a peer sends.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use shards::raft::{wire, Group, GroupConfig, GroupLog};

fn group(leader: bool) -> Option<Group> {
    let mut config = GroupConfig::new(0, 1);
    config.fixed_election_timeout = Some(config.election_ticks);
    let mut g = Group::new(&config, GroupLog::with_voters(&[1, 2, 3]), 0).ok()?;
    if leader {
        g.campaign().ok()?;
        drain(&mut g);
        let mut vote = raft::prelude::Message::default();
        vote.set_msg_type(raft::prelude::MessageType::MsgRequestVoteResponse);
        vote.from = 2;
        vote.to = 1;
        vote.term = g.term();
        let _ = g.step(vote);
        drain(&mut g);
        let _ = g.propose(Bytes::from_static(b"a"), 1);
        drain(&mut g);
    }
    Some(g)
}

fn drain(g: &mut Group) {
    for _ in 0..8 {
        match g.ready() {
            Ok(Some(rd)) => g.persisted(rd.number),
            _ => return,
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(batch) = wire::decode_batch(data) else {
        return;
    };
    for leader in [false, true] {
        let Some(mut g) = group(leader) else {
            return;
        };
        for (_, mut m) in batch.messages.clone() {
            m.to = 1;
            let _ = g.step(m);
            drain(&mut g);
        }
        for _ in 0..3 {
            g.tick();
            drain(&mut g);
        }
    }
});
