//! The shard's work for one stored publish, without sockets: decode the PubMsg, check its
//! client, append to the channel's file-store log and to the turn's batch, owe the PubAck;
//! every 256 publishes the batch is taken and marked written, as a commit does. The PubMsgs
//! are slices of one shared buffer, as they come out of a connection's read buffer.

use bytes::{Bytes, BytesMut};
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use prost::Message;
use shards::limits::StoreLimits;
use shards::pb::{PubMsg, SubscriptionRequest, SubscriptionResponse};
use shards::shard::{ChannelDirectory, Incoming, Input, Now, Out, Shard, ShardConfig};
use shards::store::file::{Landed, WriteOutcome};
use shards::wire::{encode_ack_into, MsgView, PubMsgView};

const TURN: usize = 256;

struct Dir;

impl ChannelDirectory for Dir {
    fn register(&self, _name: &str) -> Result<(), String> {
        Ok(())
    }
    fn unregister(&self, _name: &str) {}
}

/// `TURN` PubMsgs of 128 B for channel "bench", as slices of one buffer.
fn pub_msgs() -> Vec<Bytes> {
    let mut buf = BytesMut::new();
    let mut ends = Vec::new();
    for i in 0..TURN {
        let pm = PubMsg {
            client_id: "bench-client".into(),
            guid: format!("M7lqKBkbWyUpQNXnF8Oc{i:04}"),
            subject: "bench".into(),
            data: Bytes::from(vec![b'x'; 128]),
            conn_id: Bytes::from_static(b"conn-1"),
            ..Default::default()
        };
        buf.extend_from_slice(&pm.encode_to_vec());
        ends.push(buf.len());
    }
    let buf = buf.freeze();
    let mut start = 0;
    ends.into_iter()
        .map(|end| {
            let m = buf.slice(start..end);
            start = end;
            m
        })
        .collect()
}

/// A file-store shard (nothing written to disk: commits are marked written) with the bench
/// client registered.
fn stored_shard() -> Option<Shard> {
    let Ok(limits) = StoreLimits::default().build() else {
        eprintln!("SKIPPED: default limits do not build");
        return None;
    };
    let mut shard = Shard::new(ShardConfig {
        shard: 0,
        ack_prefix: "_STAN.ack.bench.0.".into(),
        ack_key: shards::ack_key::AckKey::new(&[7; shards::ack_key::KEY_LEN]),
        limits,
        replace_durable: false,
    });
    shard.persist_messages();
    shard.client_added("bench-client", Bytes::from_static(b"conn-1"));
    Some(shard)
}

/// One turn: the publishes, then the commit's bookkeeping. Returns what the shard queued.
fn publish_turn(shard: &mut Shard, now: &mut Now, msgs: &[Bytes]) -> Vec<Out> {
    const REPLY: &[u8] = b"_STAN.acks.Xq8Yz1sNdRuFZcI0bN2f3g";
    now.mono_ns += 1_000;
    now.wall_ns += 1_000;
    for m in msgs {
        let incoming = Incoming {
            pub_msg: m,
            reply: Some(REPLY),
            frame: Some(m),
        };
        shard.publish(*now, "bench", incoming);
    }
    settle(shard, *now)
}

/// What the driver does at the end of a turn: every commit written in full (slice 1), its
/// output released. Returns what would be sent (PubAcks are counted, not encoded).
fn settle(shard: &mut Shard, now: Now) -> Vec<Out> {
    let mut sent = Vec::new();
    loop {
        let ready = shard.ready();
        sent.extend(ready.send);
        for name in &ready.grants {
            shard.granted(now, name, Dir.register(name));
        }
        let Some(commit) = shard.take_commit() else {
            if ready.grants.is_empty() {
                return sent;
            }
            continue;
        };
        let landed = commit
            .batches
            .iter()
            .filter(|b| b.msgs > 0)
            .map(|b| {
                let at = Landed {
                    first_seq: b.first_seq,
                    msgs: b.msgs,
                    slice: 1,
                    offset: 0,
                };
                (b.channel.clone(), at)
            })
            .collect();
        black_box(&commit.batches);
        let outcome = WriteOutcome {
            landed,
            ..Default::default()
        };
        let released = shard.advance(now, commit.held, &outcome);
        black_box(&released.pub_acks);
        sent.extend(released.out);
    }
}

fn start() -> Now {
    Now {
        wall_ns: 1_700_000_000_000_000_000,
        mono_ns: 1_000_000_000,
    }
}

fn publish(c: &mut Criterion) {
    let Some(mut shard) = stored_shard() else {
        return;
    };
    let msgs = pub_msgs();
    let mut now = start();
    let mut group = c.benchmark_group("shard");
    group.throughput(Throughput::Elements(TURN as u64));
    group.bench_function("stored_publish_128B", |b| {
        b.iter(|| black_box(publish_turn(&mut shard, &mut now, &msgs)))
    });
    group.finish();
}

/// The same with one plain subscriber: each publish is also delivered (queued for its inbox),
/// and each delivery acked, as a live subscriber does.
fn publish_delivered_acked(c: &mut Criterion) {
    let Some(mut shard) = stored_shard() else {
        return;
    };
    let mut now = start();
    shard.subscribe(
        now,
        SubscriptionRequest {
            client_id: "bench-client".into(),
            subject: "bench".into(),
            inbox: "_INBOX.bench.sub".into(),
            max_in_flight: 16384,
            ack_wait_in_secs: 30,
            ..Default::default()
        },
        Some(Bytes::from_static(b"subreply")),
    );
    let ack_inbox = settle(&mut shard, now)
        .iter()
        .find(|o| o.subject.as_ref() == b"subreply")
        .and_then(|o| SubscriptionResponse::decode(o.payload.clone()).ok())
        .map(|r| r.ack_inbox)
        .unwrap_or_default();
    let msgs = pub_msgs();
    let mut acks: Vec<Vec<u8>> = Vec::with_capacity(TURN);
    let mut group = c.benchmark_group("shard");
    group.throughput(Throughput::Elements(TURN as u64));
    group.bench_function("stored_publish_delivered_acked_128B", |b| {
        b.iter(|| {
            let out = publish_turn(&mut shard, &mut now, &msgs);
            acks.clear();
            for o in &out {
                if let Ok(m) = MsgView::parse(&o.payload) {
                    let mut ack = Vec::with_capacity(16);
                    encode_ack_into(&mut ack, b"bench", m.sequence);
                    acks.push(ack);
                }
            }
            // As the server takes them: each ack in turn, then the room they made, once.
            for a in &acks {
                let ack = Input::Ack {
                    subject: ack_inbox.as_bytes(),
                    payload: a,
                };
                shard.step(now, ack);
            }
            shard.step(now, Input::EndOfTurn);
            black_box(out);
        })
    });
    group.finish();
}

/// Decoding alone: a quarter of the shard's work for a publish (profiled).
fn parse(c: &mut Criterion) {
    let msgs = pub_msgs();
    let mut group = c.benchmark_group("wire");
    group.throughput(Throughput::Elements(TURN as u64));
    group.bench_function("parse_pub_msg_128B", |b| {
        b.iter(|| {
            for m in &msgs {
                let _ = black_box(PubMsgView::parse(black_box(m)));
            }
        })
    });
    group.finish();
}

criterion_group!(benches, publish, publish_delivered_acked, parse);
criterion_main!(benches);
