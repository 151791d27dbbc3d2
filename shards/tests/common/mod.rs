//! What the shards crate's integration tests that touch the disk share: a scratch directory on
//! the build's own disk, and a glommio executor to run a test's body on.

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
