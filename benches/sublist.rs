//! Sublist matching: cached literal hits, uncached wildcard walks, and the cost of a change.

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use stanza::nats::sublist::Sublist;

fn populated() -> Sublist<usize> {
    let mut sl = Sublist::new();
    let mut id = 0;
    for a in 0..20 {
        for b in 0..50 {
            sl.insert(format!("svc.{a}.{b}").as_bytes(), None, id);
            id += 1;
        }
        sl.insert(format!("svc.{a}.*").as_bytes(), None, id);
        id += 1;
    }
    sl.insert(b"svc.>", Some(&Bytes::from_static(b"workers")), id);
    sl
}

fn matching(c: &mut Criterion) {
    let mut sl = populated();
    let subject = Bytes::from_static(b"svc.7.21");
    c.bench_function("sublist_match_cached", |b| {
        b.iter(|| sl.matches(&subject).plain.len())
    });
    let subjects: Vec<Bytes> = (0..10_000)
        .map(|i| Bytes::from(format!("svc.{}.{}", i % 20, i % 97)))
        .collect();
    c.bench_function("sublist_match_mostly_uncached", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % subjects.len();
            sl.matches(&subjects[i]).plain.len()
        })
    });
    c.bench_function("sublist_insert_remove", |b| {
        b.iter(|| {
            sl.insert(b"svc.99.new", None, usize::MAX);
            sl.remove(b"svc.99.new", None, &usize::MAX)
        })
    });
}

criterion_group!(benches, matching);
criterion_main!(benches);
