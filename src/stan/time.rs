//! The clock the shard state machines are given: wall time for message timestamps, a
//! process-wide monotonic clock for deadlines.

use shards::shard::Now;
use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

static START: OnceLock<Instant> = OnceLock::new();

pub fn now() -> Now {
    let start = *START.get_or_init(Instant::now);
    let wall_ns = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    Now {
        wall_ns,
        mono_ns: u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX),
    }
}
