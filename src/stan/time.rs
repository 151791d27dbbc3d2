//! The clock the shard state machines are given: wall time (ns) for message timestamps, and a
//! coarse monotonic clock for deadlines (ack waits are whole seconds; the coarse clock costs
//! a memory read instead of a timer read on the publish path).

use shards::shard::Now;

fn read(clock: libc::clockid_t) -> libc::timespec {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own; both clocks exist on Linux.
    unsafe {
        libc::clock_gettime(clock, &mut ts);
    }
    ts
}

// time_t and c_long are i64 on the 64-bit targets stanza ships for, not on every target.
#[allow(clippy::unnecessary_cast)]
fn nanos(ts: libc::timespec) -> i64 {
    (ts.tv_sec as i64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as i64)
}

pub fn now() -> Now {
    Now {
        wall_ns: nanos(read(libc::CLOCK_REALTIME)),
        mono_ns: u64::try_from(nanos(read(libc::CLOCK_MONOTONIC_COARSE))).unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn clocks_move_forward() {
        let a = super::now();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let b = super::now();
        assert!(b.wall_ns > a.wall_ns && b.mono_ns > a.mono_ns);
    }
}
