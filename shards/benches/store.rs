//! The store's hot paths: appending to a channel's memory log (every publish), framing records
//! for the file store (every publish with `-st file`), scanning a slice back (recovery),
//! the file store's read-back path (planning a block, checking its records, serving them),
//! indexing written messages, the subscription journal (a send and an ack per delivery),
//! reading indexes at start-up, and the DMA write and read of a slice on the temp directory.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use glommio::LocalExecutorBuilder;
use shards::store::file_log::{parse_read, FileLog, Lookup};
use shards::store::index;
use shards::store::memory::MemoryLog;
use shards::store::record;
use shards::store::slice::{read_slice, warm_up, SliceWriter};
use shards::store::subs::SubJournal;
use std::time::{Duration, Instant};

const MSGS: usize = 10_000;
const PAYLOAD: [u8; 128] = [b'x'; 128];

fn framed(n: usize) -> Vec<u8> {
    let mut log = MemoryLog::new();
    let mut out = Vec::new();
    for i in 0..n {
        let m = log.append(b"bench.channel", b"", &PAYLOAD, i as i64);
        record::encode(&mut out, m.seq, m.timestamp, &m.encoded);
    }
    out
}

fn in_memory(c: &mut Criterion) {
    let mut group = c.benchmark_group("store");
    group.throughput(Throughput::Elements(MSGS as u64));
    group.bench_function("memory_append_128B", |b| {
        b.iter(|| {
            let mut log = MemoryLog::new();
            for i in 0..MSGS {
                log.append(b"bench.channel", b"", &PAYLOAD, i as i64);
            }
            log.last_seq()
        })
    });
    // As a publish turn does with `-st file`: append, frame into the turn's batch, and hand
    // the batch over every 256 messages (its buffer is reused, as the allocator would).
    group.bench_function("append_and_frame_128B", |b| {
        let mut batch = Vec::with_capacity(256 * 200);
        b.iter(|| {
            let mut log = MemoryLog::new();
            let mut handed = 0;
            for i in 0..MSGS {
                let m = log.append(b"bench.channel", b"", &PAYLOAD, i as i64);
                record::encode(&mut batch, m.seq, m.timestamp, &m.encoded);
                if i % 256 == 255 {
                    handed += batch.len();
                    batch.clear();
                }
            }
            handed + batch.len()
        })
    });
    group.bench_function("crc32c_160B", |b| {
        let body = [7u8; 160];
        b.iter(|| {
            let mut x = 0u32;
            for _ in 0..MSGS {
                x ^= crc32c::crc32c(std::hint::black_box(&body));
            }
            x
        })
    });
    let slice = framed(MSGS);
    group.bench_function("scan_slice_128B", |b| {
        b.iter(|| {
            record::scan(&slice)
                .map(|(found, _)| found.len())
                .unwrap_or(0)
        })
    });
    group.finish();
}

/// Commits of 80 KiB batches, as a synced store writes them (DMA, O_DSYNC, zeroes written
/// ahead) and as an unsynced one does (through the page cache), and a sequential DMA read of
/// the slice, inside one glommio executor: the whole timed loop runs there, so executor
/// start-up is not measured.
fn on_disk(c: &mut Criterion) {
    let dir = std::env::temp_dir().join(format!("stanza-bench-store-{}", std::process::id()));
    if std::fs::create_dir_all(&dir).is_err() {
        eprintln!("SKIPPED: cannot create {}", dir.display());
        return;
    }
    let batch = framed(500); // about 80 KiB of 128 B messages
    let mut group = c.benchmark_group("store_slice");
    group.throughput(Throughput::Bytes(batch.len() as u64));
    let run = |iters: u64, read: bool, sync: bool| -> Duration {
        let dir = dir.clone();
        let batch = batch.clone();
        let ex = LocalExecutorBuilder::default().make();
        let Ok(ex) = ex else {
            return Duration::ZERO;
        };
        ex.run(async move {
            let _ = warm_up(&dir).await;
            let path = dir.join("slice.1.dat");
            let Ok(mut w) = SliceWriter::create(&path, 64 << 10, sync, true).await else {
                return Duration::ZERO;
            };
            let start = Instant::now();
            for _ in 0..iters {
                let _ = w.write(&batch).await;
            }
            let wrote = start.elapsed();
            let _ = w.close().await;
            if !read {
                return wrote;
            }
            let start = Instant::now();
            let _ = read_slice(&path, 128 << 10).await;
            start.elapsed()
        })
    };
    group.bench_function("write_batch_dsync", |b| {
        b.iter_custom(|iters| run(iters, false, true))
    });
    group.bench_function("write_batch_page_cache", |b| {
        b.iter_custom(|iters| run(iters, false, false))
    });
    group.bench_function("read_slice_per_batch", |b| {
        b.iter_custom(|iters| run(iters, true, false))
    });
    group.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Reads a whole channel back from `slice` as the node does: plan a block, check its
/// records, keep it, until nothing is left to read.
fn load_all(log: &mut FileLog, slice: &bytes::Bytes) -> u64 {
    let mut seq = 1;
    while let Some(plan) = log.plan_read(seq) {
        let buf = slice.slice(plan.start as usize..plan.end as usize);
        let (msgs, _) = parse_read(&plan, &buf);
        seq = plan.first_seq + msgs.len() as u64;
        log.loaded(plan.first_seq, msgs);
    }
    seq
}

fn read_back(c: &mut Criterion) {
    let mut group = c.benchmark_group("file_log");
    group.throughput(Throughput::Elements(MSGS as u64));
    group.bench_function("index_written_128B", |b| {
        b.iter_batched(
            || {
                let mut log = FileLog::new();
                for i in 0..MSGS {
                    log.append(b"bench.channel", b"", &PAYLOAD, i as i64);
                }
                log
            },
            |mut log| {
                log.written(1, MSGS as u64, 1, 0);
                log.count()
            },
            criterion::BatchSize::LargeInput,
        )
    });
    let slice = bytes::Bytes::from(framed(MSGS));
    // Plan a read of the whole channel, check every record, keep it: what one block costs.
    group.bench_function("plan_parse_load_128B", |b| {
        b.iter_batched(
            || FileLog::restore(vec![index_of(&slice)]),
            |mut log| load_all(&mut log, &slice),
            criterion::BatchSize::LargeInput,
        )
    });
    let mut loaded = FileLog::restore(vec![index_of(&slice)]);
    load_all(&mut loaded, &slice);
    group.bench_function("get_from_blocks", |b| {
        b.iter(|| {
            let mut n = 0;
            for s in 1..=MSGS as u64 {
                if let Lookup::Found(m) = loaded.get(s) {
                    n += m.encoded.len();
                }
                if loaded.read_ahead_from(s).is_some() {
                    n += 1;
                }
            }
            n
        })
    });
    group.bench_function("journal_send_and_ack", |b| {
        b.iter(|| {
            let mut j = SubJournal::default();
            for s in 1..=MSGS as u64 {
                j.sent(7, s);
            }
            for s in 1..=MSGS as u64 {
                j.acked(7, s);
            }
            j.finish().1
        })
    });
    let mut idx_file = Vec::new();
    let idx = index_of(&slice);
    for (i, (o, t)) in idx.offsets.iter().zip(&idx.timestamps).enumerate() {
        index::encode_entry(&mut idx_file, idx.first_seq + i as u64, u64::from(*o), *t);
    }
    group.bench_function("decode_index", |b| {
        b.iter(|| index::decode(1, &idx_file).map(|i| i.len()))
    });
    group.finish();
}

fn index_of(slice: &[u8]) -> index::SliceIndex {
    let found = record::scan(slice).map(|r| r.0).unwrap_or_default();
    index::SliceIndex::from_found(1, &found)
}

criterion_group!(benches, in_memory, read_back, on_disk);
criterion_main!(benches);
