//! The rows of DESIGN.md §3's table ("who handles each STAN request") as scenarios on the
//! deterministic multi-shard simulation (`sim/`): every scenario runs under many seeds, each
//! one interleaving of the links between cores, and checks what a client could observe.

mod common;
mod sim;

use bytes::Bytes;
use prost::Message;
use shards::pb::{MsgProto, PubAck, SubscriptionResponse};
use sim::{Sim, MS};

const SEEDS: u64 = 64;
const CORES: usize = 4;

fn pub_acks(sim: &mut Sim, client: &str) -> Vec<PubAck> {
    sim.take(&format!("acks.{client}"))
        .into_iter()
        .map(|b| PubAck::decode(b).expect("a PubAck"))
        .collect()
}

fn msgs(sim: &mut Sim, inbox: &str) -> Vec<MsgProto> {
    sim.take(inbox)
        .into_iter()
        .map(|b| MsgProto::decode(b).expect("a MsgProto"))
        .collect()
}

fn sub_answer(sim: &mut Sim, inbox: &str) -> SubscriptionResponse {
    let answers = sim.take(&format!("subreply.{inbox}"));
    assert_eq!(
        answers.len(),
        1,
        "one answer to the subscription on {inbox}"
    );
    SubscriptionResponse::decode(answers[0].clone()).expect("a SubscriptionResponse")
}

/// Connects `client` through core `at` and runs until everything settled.
fn connected(sim: &mut Sim, at: usize, client: &str) {
    sim.connect(at, client);
    sim.run();
    assert_eq!(
        sim.take(&format!("connected.{client}")),
        vec![Bytes::from_static(b"ok")]
    );
}

/// A channel name whose owner is `shard` (of `CORES`).
fn channel_on(shard: usize, stem: &str) -> String {
    (0..)
        .map(|i| format!("{stem}{i}"))
        .find(|c| shards::shard_for(c, CORES) == shard)
        .unwrap_or_default()
}

/// ConnectRequest row: the control plane registers the client and every shard has it before
/// the connect is answered, so a publish sent right after the answer, through any core, finds
/// the client on the channel's owner.
#[test]
fn connect_before_first_publish() {
    for seed in 0..SEEDS {
        let mut sim = Sim::new(CORES, false, seed);
        sim.connect(1, "a");
        while !sim.inboxes.contains_key("connected.a") {
            assert!(sim.step(), "seed {seed}: the connect was never answered");
        }
        assert!(sim.known_everywhere("a"), "seed {seed}: answered too early");
        for core in 0..CORES {
            sim.publish(core, "a", &channel_on(core, "first"), "hello");
        }
        sim.run();
        let acks = pub_acks(&mut sim, "a");
        assert_eq!(acks.len(), CORES, "seed {seed}");
        assert!(
            acks.iter().all(|a| a.error.is_empty()),
            "seed {seed}: {acks:?}"
        );
    }
}

/// CloseRequest row: the control plane answers a close once every shard dropped the client
/// and its subscriptions; a publish after the answer is refused wherever it lands.
#[test]
fn close_applied_on_every_shard() {
    for seed in 0..SEEDS {
        let mut sim = Sim::new(CORES, false, seed);
        connected(&mut sim, 2, "a");
        for shard in 0..CORES {
            let channel = channel_on(shard, "c");
            sim.subscribe(shard, "a", &channel, &format!("in.{shard}"));
        }
        sim.run();
        sim.close(3, "a");
        while !sim.inboxes.contains_key("closed.a") {
            assert!(sim.step(), "seed {seed}: the close was never answered");
        }
        assert_eq!(sim.take("closed.a"), vec![Bytes::from_static(b"ok")]);
        assert!(
            !sim.known_anywhere("a"),
            "seed {seed}: a shard still has it"
        );
        for core in &sim.cores {
            assert!(
                core.shard.channels().all(|c| c.plain.is_empty()),
                "seed {seed}: a subscription outlived its client"
            );
        }
        sim.publish(0, "a", &channel_on(1, "c"), "late");
        sim.run();
        let acks = pub_acks(&mut sim, "a");
        assert_eq!(acks.len(), 1);
        assert_eq!(
            acks[0].error, "stan: invalid publish request",
            "seed {seed}"
        );
    }
}

/// Ack row: the ack inbox names the shard that owns the subscription, so an ack sent through
/// any core reaches it, and nothing acked is redelivered.
#[test]
fn ack_reaching_the_owner() {
    for seed in 0..SEEDS / 4 {
        let mut sim = Sim::new(CORES, false, seed);
        connected(&mut sim, 0, "a");
        let channel = channel_on(2, "acked");
        sim.subscribe(1, "a", &channel, "in");
        sim.run();
        let ack_inbox = sub_answer(&mut sim, "in").ack_inbox;
        assert!(ack_inbox.starts_with("_STAN.ack.sim.2."), "{ack_inbox}");
        for i in 0..3 {
            sim.publish(3, "a", &channel, &format!("m{i}"));
        }
        sim.run();
        let got = msgs(&mut sim, "in");
        assert_eq!(
            got.iter().map(|m| m.sequence).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
        for (core, seq) in [(0, 1), (3, 2), (1, 3)] {
            sim.ack(core, &ack_inbox, &channel, seq);
        }
        sim.run();
        sim.advance(31_000 * MS);
        assert!(
            msgs(&mut sim, "in").is_empty(),
            "seed {seed}: an acked message was redelivered"
        );
    }
}

/// New channel row: channels created at the same time on different shards are granted
/// against one `max_channels`; exactly one wins and the other's publish is refused.
#[test]
fn racing_channel_grants() {
    for seed in 0..SEEDS {
        let mut sim = Sim::new(CORES, false, seed);
        sim.directory.max_channels = 1;
        connected(&mut sim, 0, "a");
        let (x, y) = (channel_on(1, "x"), channel_on(3, "y"));
        sim.publish(2, "a", &x, "one");
        sim.publish(0, "a", &y, "two");
        sim.run();
        let acks = pub_acks(&mut sim, "a");
        assert_eq!(acks.len(), 2, "seed {seed}");
        let refused: Vec<&PubAck> = acks.iter().filter(|a| !a.error.is_empty()).collect();
        assert_eq!(refused.len(), 1, "seed {seed}: {acks:?}");
        assert_eq!(refused[0].error, "too many channels");
        let created: usize = sim.cores.iter().map(|c| c.shard.channels().count()).sum();
        assert_eq!(created, 1, "seed {seed}");
    }
}

/// PubMsg row with the file store: a write that fails (full disk) takes its messages back;
/// their PubAcks carry the error, nothing of them is delivered, and once the disk has room
/// the next message takes the same sequence.
#[test]
fn rollback_on_a_full_disk() {
    for seed in 0..SEEDS / 4 {
        let mut sim = Sim::new(CORES, true, seed);
        connected(&mut sim, 0, "a");
        let channel = channel_on(1, "disk");
        sim.subscribe(2, "a", &channel, "in");
        sim.run();
        assert!(sub_answer(&mut sim, "in").error.is_empty());
        sim.cores[1].disk.full.insert(channel.clone());
        sim.publish(3, "a", &channel, "lost");
        sim.publish(0, "a", &channel, "lost too");
        sim.run();
        let acks = pub_acks(&mut sim, "a");
        assert_eq!(acks.len(), 2, "seed {seed}");
        assert!(
            acks.iter().all(|a| a.error == "no space left on device"),
            "seed {seed}: {acks:?}"
        );
        assert!(msgs(&mut sim, "in").is_empty(), "seed {seed}");
        sim.cores[1].disk.full.clear();
        sim.publish(3, "a", &channel, "kept");
        sim.run();
        assert!(pub_acks(&mut sim, "a")[0].error.is_empty());
        let got = msgs(&mut sim, "in");
        assert_eq!(got.len(), 1, "seed {seed}");
        assert_eq!((got[0].sequence, got[0].data.as_ref()), (1, &b"kept"[..]));
    }
}

/// Heartbeats row: the control plane's heartbeats go unanswered; after more failures than
/// allowed the client is removed from every shard.
#[test]
fn a_silent_client_is_removed_everywhere() {
    for seed in 0..SEEDS / 8 {
        let mut sim = Sim::new(CORES, false, seed);
        connected(&mut sim, 1, "a");
        sim.advance(1_000 * MS);
        assert!(sim.known_everywhere("a"), "answered heartbeats keep it");
        sim.answering.clear();
        sim.advance(1_000 * MS);
        assert!(sim.known_everywhere("a"), "one failure is allowed");
        sim.advance(1_000 * MS);
        assert!(!sim.known_anywhere("a"), "seed {seed}: still registered");
        assert_eq!(sim.in_flight(), 0);
    }
}
