//! What the shards crate's integration tests share: a scratch directory on the build's own
//! disk, a glommio executor to run a test's body on, and the seeded generator the
//! simulations draw their interleavings from.

#![allow(dead_code)]

use glommio::{LocalExecutorBuilder, Placement};
use std::path::PathBuf;

/// An empty directory for `tag` under the build's own directory: not a tmpfs, since O_DIRECT
/// needs a real block device.
pub fn scratch(tag: &str) -> PathBuf {
    let dir =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("mkdir");
    dir
}

/// Runs `f` on a glommio executor of its own and waits for it.
pub fn run<F: std::future::Future<Output = ()> + 'static>(f: impl FnOnce() -> F + Send + 'static) {
    LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(512 << 10)
        .spawn(f)
        .expect("executor")
        .join()
        .expect("join");
}

/// xorshift64*, seeded: a simulation run replays exactly from its seed.
pub struct SeededRng(u64);

impl SeededRng {
    pub fn new(seed: u64) -> SeededRng {
        SeededRng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}
