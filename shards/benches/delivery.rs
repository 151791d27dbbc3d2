//! The per-delivery hot path of a catching-up subscriber: its pending window (one send and one
//! ack per message), the subscription journal's runs (ack n, send n + window, ...), and reading
//! the Ack that comes back for every message (in place, against prost).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use prost::Message;
use shards::pb::Ack;
use shards::store::subs::SubJournal;
use shards::subscription::Pending;
use shards::wire::AckView;
use std::collections::BTreeMap;

const MSGS: u64 = 100_000;
const WINDOW: u64 = 1024;

fn delivery(c: &mut Criterion) {
    let mut group = c.benchmark_group("delivery");
    group.throughput(Throughput::Elements(MSGS));
    group.bench_function("pending_window_deque", |b| {
        b.iter(|| {
            let mut p = Pending::default();
            for seq in 1..=WINDOW {
                p.insert(seq, seq);
            }
            for seq in 1..=MSGS {
                p.remove(seq);
                p.insert(seq + WINDOW, seq + WINDOW);
            }
            p.len()
        })
    });
    // What the deque replaced: a map per subscription plus one shard-wide timer entry per
    // pending message.
    group.bench_function("pending_window_btree_and_timers", |b| {
        b.iter(|| {
            let mut p: BTreeMap<u64, u64> = BTreeMap::new();
            let mut timers = std::collections::BTreeSet::new();
            for seq in 1..=WINDOW {
                p.insert(seq, seq);
                timers.insert((seq, 7u64, seq));
            }
            for seq in 1..=MSGS {
                if let Some(e) = p.remove(&seq) {
                    timers.remove(&(e, 7, seq));
                }
                p.insert(seq + WINDOW, seq + WINDOW);
                timers.insert((seq + WINDOW, 7, seq + WINDOW));
            }
            p.len() + timers.len()
        })
    });
    group.bench_function("journal_interleaved_runs", |b| {
        b.iter(|| {
            let mut j = SubJournal::default();
            for seq in 1..=WINDOW {
                j.sent(7, seq);
            }
            for seq in 1..=MSGS {
                j.acked(7, seq);
                j.sent(7, seq + WINDOW);
            }
            j.finish().1
        })
    });
    let acks: Vec<Vec<u8>> = (1..=MSGS)
        .map(|sequence| {
            Ack {
                subject: "bench.subject".into(),
                sequence,
            }
            .encode_to_vec()
        })
        .collect();
    group.bench_function("ack_view", |b| {
        b.iter(|| {
            acks.iter()
                .filter_map(|a| AckView::parse(a).ok())
                .map(|a| a.sequence)
                .sum::<u64>()
        })
    });
    group.bench_function("ack_prost", |b| {
        b.iter(|| {
            acks.iter()
                .filter_map(|a| Ack::decode(a.as_slice()).ok())
                .map(|a| a.sequence)
                .sum::<u64>()
        })
    });
    group.finish();
}

criterion_group!(benches, delivery);
criterion_main!(benches);
