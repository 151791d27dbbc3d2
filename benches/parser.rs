//! Protocol parser throughput: PUB frames of two sizes, parsed out of a large read buffer.

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use stanza::nats::parser::{ClientOp, Parser, ParserLimits};

fn frames(size: usize, count: usize) -> Vec<u8> {
    let mut frame = format!("PUB bench.subject.{size} _INBOX.reply {size}\r\n").into_bytes();
    frame.extend(std::iter::repeat_n(b'x', size));
    frame.extend_from_slice(b"\r\n");
    frame.repeat(count)
}

fn parse_pubs(c: &mut Criterion) {
    let mut group = c.benchmark_group("parse_pub");
    for size in [16usize, 128, 1024] {
        let count = 1000;
        let wire = frames(size, count);
        group.throughput(Throughput::Elements(count as u64));
        group.bench_with_input(BenchmarkId::from_parameter(size), &wire, |b, wire| {
            b.iter(|| {
                let mut parser = Parser::new(ParserLimits::default());
                let mut buf = BytesMut::from(&wire[..]);
                let mut n = 0;
                while let Ok(Some(op)) = parser.parse(&mut buf) {
                    if let ClientOp::Pub(p) = op {
                        n += p.payload().len();
                    }
                }
                n
            })
        });
    }
    group.finish();
}

criterion_group!(benches, parse_pubs);
criterion_main!(benches);
