//! Slice files on the machine's disk, both writers (DMA and O_DSYNC for a synced store, the
//! page cache for an unsynced one): group-committed appends read back record for record with
//! DMA reads, a writer abandoned without close (a crash after a commit) leaves a tail that
//! recovery reads cleanly (zero padding and zeroes written ahead for DMA), and a truncated file
//! is a torn tail.

mod common;

use common::{run, scratch};
use shards::store::record::{encode, scan, ScanEnd};
use shards::store::slice::{read_size_for, read_slice, warm_up, SliceWriter};

fn batch(from: u64, n: u64) -> Vec<u8> {
    let mut out = Vec::new();
    for seq in from..from + n {
        encode(
            &mut out,
            seq,
            seq as i64,
            format!("message {seq}").as_bytes(),
        );
    }
    out
}

#[test]
fn committed_batches_read_back_and_survive_an_abandoned_writer() {
    commit_and_crash("commit-dma", true, true);
}

/// `file { zero_ahead: false }` (SD cards): records appended past the end of the file.
#[test]
fn committed_batches_without_zeroes_ahead_survive_an_abandoned_writer() {
    commit_and_crash("commit-dma-no-zeroes", true, false);
}

#[test]
fn committed_batches_read_back_and_survive_an_abandoned_page_cache_writer() {
    commit_and_crash("commit-cached", false, true);
}

fn commit_and_crash(tag: &str, sync: bool, zero_ahead: bool) {
    let dir = scratch(tag);
    let path = dir.join("msgs.1.dat");
    let p = path.clone();
    let d = dir.clone();
    run(move || async move {
        warm_up(&d).await.expect("warm up");
        let mut w = SliceWriter::create(&p, 64 << 10, sync, zero_ahead)
            .await
            .expect("create");
        for turn in 0..50u64 {
            w.write(&batch(turn * 20 + 1, 20)).await.expect("write");
        }
        let written = w.len();
        // A crash right after a commit: no close, so no truncation of the padding.
        std::mem::forget(w);
        let data = read_slice(&p, read_size_for(&d)).await.expect("read");
        assert!(data.len() as u64 >= written);
        let (found, end) = scan(&data).expect("scan");
        assert_eq!(found.len(), 1000);
        assert_eq!(end, ScanEnd::Clean);
        assert_eq!(found[999].header.seq, 1000);
    });
    // Cut the file in the middle of a record: a torn tail.
    let len = std::fs::metadata(&path).expect("meta").len();
    let data = std::fs::read(&path).expect("read");
    let (found, _) = scan(&data).expect("scan");
    let cut = found[500].offset as u64 + 10;
    assert!(cut < len);
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("open");
    f.set_len(cut).expect("truncate");
    let (found, end) = scan(&std::fs::read(&path).expect("read")).expect("scan");
    assert_eq!(found.len(), 500);
    assert!(matches!(end, ScanEnd::TornTail { .. }));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn closed_slice_has_no_padding() {
    let dir = scratch("close");
    let path = dir.join("msgs.1.dat");
    let (p, d) = (path.clone(), dir.clone());
    run(move || async move {
        warm_up(&d).await.expect("warm up");
        let mut w = SliceWriter::create(&p, 4096, true, true)
            .await
            .expect("create");
        w.write(&batch(1, 3)).await.expect("write");
        // The padding after a commit is zeroes.
        let padded = std::fs::read(&p).expect("read");
        assert!(padded[w.len() as usize..].iter().all(|b| *b == 0));
        let written = w.len();
        w.close().await.expect("close");
        assert_eq!(std::fs::metadata(&p).expect("meta").len(), written);
    });
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn zeroes_written_ahead_never_cover_records() {
    let dir = scratch("ahead");
    let path = dir.join("msgs.1.dat");
    let (p, d) = (path.clone(), dir.clone());
    run(move || async move {
        warm_up(&d).await.expect("warm up");
        let mut w = SliceWriter::create(&p, 64 << 10, true, true)
            .await
            .expect("create");
        // Batches of 1 to 300 records (about 6 MiB in all): commits cross the end of several
        // zero runs, some while the run is still being written.
        let mut seq = 1;
        for turn in 0..2000u64 {
            let n = 1 + (turn * 37) % 300;
            w.write(&batch(seq, n)).await.expect("write");
            seq += n;
        }
        let written = w.len();
        std::mem::forget(w);
        let size = std::fs::metadata(&p).expect("meta").len();
        assert!(
            size > written,
            "zeroes ahead of the records: {size} <= {written}"
        );
        assert!(size <= written + (4 << 20) + 4096, "{size} vs {written}");
        let data = read_slice(&p, read_size_for(&d)).await.expect("read");
        let (found, end) = scan(&data).expect("scan");
        assert_eq!(end, ScanEnd::Clean);
        assert_eq!(found.len() as u64, seq - 1);
        for (i, f) in found.iter().enumerate() {
            assert_eq!(f.header.seq, i as u64 + 1);
            assert_eq!(f.body(&data), format!("message {}", i + 1).as_bytes());
        }
    });
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_abandoned_slice_keeps_only_what_earlier_commits_wrote() {
    let dir = scratch("abandon");
    let d = dir.clone();
    run(move || async move {
        warm_up(&d).await.expect("warm up");
        for sync in [true, false] {
            let p = d.join(format!("msgs.{sync}.dat"));
            let mut w = SliceWriter::create(&p, 64 << 10, sync, true)
                .await
                .expect("create");
            w.write(&batch(1, 100)).await.expect("write");
            let keep = w.len();
            // As if this write had failed partway: abandoning cuts off what of it landed.
            w.write(&batch(101, 100)).await.expect("write");
            w.abandon(keep).await.expect("abandon");
            assert_eq!(
                std::fs::metadata(&p).expect("meta").len(),
                keep,
                "sync {sync}"
            );
            let (found, end) = scan(&std::fs::read(&p).expect("read")).expect("scan");
            assert_eq!(found.len(), 100);
            assert_eq!(end, ScanEnd::Clean);
        }
    });
    let _ = std::fs::remove_dir_all(&dir);
}

/// With room for two open write slices, three channels written in turn each close the least
/// recently written one (its next records start a new slice): every write lands, every record
/// reads back, and a new store recovers every channel whole across its slices.
#[test]
fn channels_beyond_the_open_writer_limit_take_turns_and_lose_nothing() {
    use shards::store::file::{ChannelBatch, FileStore, SliceLimits};
    use shards::store::journal::CompactPolicy;
    let dir = scratch("writer-limit");
    let d = dir.clone();
    run(move || async move {
        std::fs::create_dir_all(d.join("channels")).expect("mkdir");
        let open = || {
            FileStore::open(
                &d,
                64 << 10,
                SliceLimits::default(),
                CompactPolicy::default(),
                true,
            )
        };
        let mut store = open().await.expect("store");
        store.set_max_writers(2);
        for turn in 0..10u64 {
            for c in 0..3 {
                let out = store
                    .write(vec![ChannelBatch {
                        channel: format!("ch.{c}"),
                        records: batch(turn * 5 + 1, 5),
                        first_seq: turn * 5 + 1,
                        msgs: 5,
                        subs: Vec::new(),
                        sub_records: 0,
                        subs_sync: false,
                        slice_limits: None,
                    }])
                    .await;
                assert!(out.failed.is_empty(), "{:?}", out.failed);
                assert_eq!(out.landed.len(), 1);
            }
        }
        for c in 0..3 {
            let got = store
                .read_records(&format!("ch.{c}"), 1, 1 << 20)
                .expect("read");
            assert_eq!((got.first_seq, got.msgs > 0), (1, true));
        }
        store.close().await;
        let again = open().await.expect("store");
        let recovered = again.recover(|_| true, false).await.expect("recover");
        assert_eq!(recovered.len(), 3);
        for r in &recovered {
            let msgs: u64 = r
                .slices
                .iter()
                .filter(|s| !s.is_empty())
                .map(|s| s.last_seq() + 1 - s.first_seq)
                .sum();
            assert_eq!(msgs, 50, "channel {}", r.name);
            assert!(r.slices.len() > 1, "channel {} took turns", r.name);
        }
        again.close().await;
    });
    let _ = std::fs::remove_dir_all(&dir);
}

/// A clustered node compacts a channel's `subs.dat` from its own records: puts, sends, acks
/// and a deletion written as committed batches replay to the same subscriptions after the
/// rewrite, in fewer records, and the log stays open for appending.
#[test]
fn a_subscription_log_compacted_from_itself_keeps_its_state() {
    use shards::store::file::{ChannelBatch, FileStore, SliceLimits};
    use shards::store::journal::CompactPolicy;
    use shards::store::subs::{self, SubJournal, SubRecord};
    let dir = scratch("subs-from-log");
    let d = dir.clone();
    run(move || async move {
        std::fs::create_dir_all(d.join("channels")).expect("mkdir");
        let store = FileStore::open(
            &d,
            64 << 10,
            SliceLimits::default(),
            CompactPolicy::default(),
            false,
        )
        .await
        .expect("store");
        let write = |journal: SubJournal| {
            let (subs, sub_records) = journal.finish();
            store.write(vec![ChannelBatch {
                channel: "ch".into(),
                records: Vec::new(),
                first_seq: 1,
                msgs: 0,
                subs,
                sub_records,
                subs_sync: true,
                slice_limits: None,
            }])
        };
        let sub = |id| SubRecord {
            id,
            client_id: format!("c{id}"),
            inbox: format!("_INBOX.{id}"),
            max_in_flight: 10,
            ..SubRecord::default()
        };
        for round in 0..20u64 {
            let mut j = SubJournal::default();
            j.put(&sub(1));
            j.put(&sub(2));
            j.sent(1, round * 2 + 1);
            j.sent(1, round * 2 + 2);
            j.acked(1, round * 2 + 1);
            if round == 19 {
                j.delete(2);
            }
            let out = write(j).await;
            assert!(out.subs_failed.is_empty());
        }
        let before = subs::replay(&store.subs_log_bytes("ch").expect("read")).expect("replay");
        store.compact_subs_from_log("ch").await;
        let after = subs::replay(&store.subs_log_bytes("ch").expect("read")).expect("replay");
        assert_eq!(
            after.0, before.0,
            "the same subscriptions and pending messages"
        );
        assert_eq!(after.0.len(), 1);
        assert!(
            after.2 < before.2 / 3,
            "{} -> {} records",
            before.2,
            after.2
        );
        let mut j = SubJournal::default();
        j.acked(1, 40);
        assert!(
            write(j).await.subs_failed.is_empty(),
            "still open for appending"
        );
        let last = subs::replay(&store.subs_log_bytes("ch").expect("read")).expect("replay");
        assert_eq!(last.0[&1].pending.within(0, u64::MAX).len(), 19);
        store.close().await;
    });
    let _ = std::fs::remove_dir_all(&dir);
}
