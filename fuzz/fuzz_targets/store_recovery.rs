//! A whole file store directory made of the input, then recovered as a server starts:
//! `server.dat`, `clients.dat`, and for up to four channels their slices, indexes and
//! `subs.dat`; the store opened and recovered (strictly, and stepping over bad records), the
//! channels and subscriptions restored into a shard with the clients registered, and every
//! message the recovered indexes point at read back from disk. Errors are fine; a panic, a
//! hang or a read past what the index promised is not.
//!
//! Input: entries of `kind u8, channel u8, first_seq u8, len u16 LE, bytes`. Kind (mod 5):
//! 0 `clients.dat`, 1 `server.dat`, 2 `slice.<first_seq>.dat`, 3 `slice.<first_seq>.idx`,
//! 4 `subs.dat`; channel (mod 4) names `c.0`..`c.3`. A seed is a real store packed this way
//! (tests/fuzz_seeds.rs writes them).
#![no_main]

use libfuzzer_sys::fuzz_target;
use shards::limits::StoreLimits;
use shards::shard::{ChannelDirectory, Now, Shard, ShardConfig};
use shards::store::file::{FileStore, SliceLimits};
use shards::store::journal::CompactPolicy;
use std::cell::RefCell;
use std::path::{Path, PathBuf};

/// Every channel may exist (the recovery path, not the directory, is under test).
struct OpenDirectory;

impl ChannelDirectory for OpenDirectory {
    fn register(&self, _name: &str) -> Result<(), String> {
        Ok(())
    }
    fn unregister(&self, _name: &str) {}
}

thread_local! {
    static EXECUTOR: RefCell<Option<glommio::LocalExecutor>> = const { RefCell::new(None) };
}

fn scratch() -> PathBuf {
    // A real file system: the store reads with O_DIRECT, which tmpfs refuses.
    let base = std::env::var_os("STANZA_FUZZ_SCRATCH")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("stanza-fuzz-recovery"));
    base.join(std::process::id().to_string())
}

/// Writes the entries of `data` as a store directory under `root`.
fn unpack(data: &[u8], root: &Path) {
    let _ = std::fs::remove_dir_all(root);
    let _ = std::fs::create_dir_all(root.join("channels"));
    let mut at = 0;
    while at + 5 <= data.len() {
        let (kind, channel, first) = (data[at] % 5, data[at + 1] % 4, data[at + 2]);
        let len = u16::from_le_bytes([data[at + 3], data[at + 4]]) as usize;
        let body = &data[(at + 5).min(data.len())..(at + 5 + len).min(data.len())];
        at += 5 + len;
        let dir = root.join("channels").join(format!("c.{channel}"));
        let path = match kind {
            0 => root.join("clients.dat"),
            1 => root.join("server.dat"),
            2 => dir.join(format!("slice.{}.dat", u64::from(first).max(1))),
            3 => dir.join(format!("slice.{}.idx", u64::from(first).max(1))),
            _ => dir.join("subs.dat"),
        };
        if let Some(parent) = path.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        let _ = std::fs::write(path, body);
    }
}

async fn recover(root: &Path, skip_bad: bool) {
    if shards::store::file::check_server_file(root, "fuzz").is_err() {
        return;
    }
    let limits = SliceLimits {
        max_bytes: 0,
        max_msgs: 0,
        max_age: std::time::Duration::ZERO,
        archive_script: None,
    };
    let Ok(store) = FileStore::open(root, 4096, limits, CompactPolicy::default(), false).await
    else {
        return;
    };
    let Ok(recovered) = store.recover(|_| true, skip_bad).await else {
        return;
    };
    let Ok(store_limits) = StoreLimits::default().build() else {
        return;
    };
    let mut shard = Shard::new(ShardConfig {
        shard: 0,
        ack_prefix: "_STAN.ack.fuzz.0.".into(),
        ack_key: shards::ack_key::AckKey::new(&[1; shards::ack_key::KEY_LEN]),
        limits: store_limits,
        replace_durable: false,
    });
    shard.persist_messages();
    let now = Now {
        wall_ns: 1_700_000_000_000_000_000,
        mono_ns: 1_000_000_000,
    };
    let mut subs = Vec::new();
    for r in recovered {
        if shard
            .restore_channel(now, &r.name, r.slices, &OpenDirectory)
            .is_ok()
        {
            subs.push((r.name, r.subs));
        }
    }
    if let Ok(clients) = shards::store::clients::read(root, skip_bad, false) {
        for c in clients {
            shard.client_added(&c.id, c.conn_id);
        }
    }
    for (name, subs) in subs {
        shard.restore_subscriptions(now, &name, subs);
    }
    // Read back what restored subscribers want, a bounded number of rounds.
    shard.start_reading();
    for _ in 0..8 {
        let ready = shard.ready();
        if let Some(commit) = shard.take_commit() {
            let _ = shard.advance(now, commit.held, &Default::default());
        }
        let plans = ready.reads;
        if plans.is_empty() {
            break;
        }
        for (channel, plan) in plans {
            let msgs = match store.read_block(&channel, &plan).await {
                Ok(buf) => {
                    let (msgs, _bad) = shards::store::file_log::parse_read(&plan, &buf);
                    assert!(msgs.len() <= plan.offsets.len());
                    msgs
                }
                Err(_) => Vec::new(),
            };
            shard.loaded(now, &channel, plan.first_seq, msgs);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let root = scratch();
    unpack(data, &root);
    EXECUTOR.with(|cell| {
        let mut cell = cell.borrow_mut();
        if cell.is_none() {
            *cell = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
                .make()
                .ok();
        }
        if let Some(ex) = cell.as_ref() {
            ex.run(async {
                recover(&root, false).await;
                recover(&root, true).await;
            });
        }
    });
});
