//! Without io_uring (here: `kernel.io_uring_disabled = 2`) stanza exits with a clear message
//! and status 1, never a panic. In a test binary of its own because the switch is machine
//! wide and cargo runs test binaries one after another.

mod common;

use common::fails_cleanly;

struct RestoreSysctl(String);

impl Drop for RestoreSysctl {
    fn drop(&mut self) {
        let _ = std::fs::write(SYSCTL, &self.0);
    }
}

const SYSCTL: &str = "/proc/sys/kernel/io_uring_disabled";

#[test]
fn exits_cleanly_when_io_uring_is_disabled() {
    let Ok(before) = std::fs::read_to_string(SYSCTL) else {
        common::skip(&format!("{SYSCTL} does not exist (kernel older than 6.6)"));
        return;
    };
    if std::fs::write(SYSCTL, "2").is_err() {
        common::skip(&format!("cannot write {SYSCTL} (needs root)"));
        return;
    }
    let _restore = RestoreSysctl(before);
    let err = fails_cleanly(&["-a", "127.0.0.1", "-p", "0"]);
    assert!(err.contains("stanza needs io_uring"), "{err}");
}
