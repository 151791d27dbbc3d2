//! Flow control for asynchronous publishes: at most `max` publishes without a PubAck, as
//! stan.go's MaxPubAcksInflight; and the publish->PubAck latency of each one, read from the
//! send time that its guid carries.

use hdrhistogram::Histogram;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use thiserror::Error;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum WindowError {
    #[error("publish refused by the server: {0}")]
    Refused(String),
    #[error("connection lost: {0}")]
    Lost(String),
    #[error("no PubAck within {0:?}")]
    Timeout(Duration),
}

struct State {
    inflight: usize,
    acked: u64,
    failure: Option<WindowError>,
    latency: Histogram<u64>,
}

pub struct PublishWindow {
    max: usize,
    state: Mutex<State>,
    changed: Condvar,
}

/// Latencies in nanoseconds, 3 significant figures, up to one hour.
pub fn new_histogram() -> Histogram<u64> {
    // Constant, valid bounds: this cannot fail.
    Histogram::new_with_bounds(1, 3_600_000_000_000, 3).expect("valid histogram bounds")
}

impl PublishWindow {
    pub fn new(max: usize) -> Self {
        PublishWindow {
            max,
            state: Mutex::new(State {
                inflight: 0,
                acked: 0,
                failure: None,
                latency: new_histogram(),
            }),
            changed: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a slot if one is free.
    pub fn try_acquire(&self) -> Result<bool, WindowError> {
        let mut s = self.lock();
        if let Some(f) = &s.failure {
            return Err(f.clone());
        }
        if s.inflight < self.max {
            s.inflight += 1;
            return Ok(true);
        }
        Ok(false)
    }

    /// Waits for a free slot.
    pub fn acquire(&self, timeout: Duration) -> Result<(), WindowError> {
        let mut s = self.wait_until(timeout, |s| s.inflight < self.max)?;
        s.inflight += 1;
        Ok(())
    }

    /// Waits until `ready` holds, failing first if the window failed or `timeout` passed.
    fn wait_until(
        &self,
        timeout: Duration,
        ready: impl Fn(&State) -> bool,
    ) -> Result<MutexGuard<'_, State>, WindowError> {
        let deadline = Instant::now() + timeout;
        let mut s = self.lock();
        loop {
            if let Some(f) = &s.failure {
                return Err(f.clone());
            }
            if ready(&s) {
                return Ok(s);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(WindowError::Timeout(timeout));
            }
            s = self
                .changed
                .wait_timeout(s, left)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }

    /// One PubAck: frees its slot and records its latency (`guid` starts with the send time).
    pub fn settle(&self, guid: &str, error: &str, now_nanos: u64) {
        let mut s = self.lock();
        s.inflight = s.inflight.saturating_sub(1);
        if !error.is_empty() {
            s.failure
                .get_or_insert(WindowError::Refused(error.to_string()));
        } else {
            s.acked += 1;
            if let Some(sent) = guid.split('.').next().and_then(|t| t.parse::<u64>().ok()) {
                let _ = s.latency.record(now_nanos.saturating_sub(sent).max(1));
            }
        }
        drop(s);
        self.changed.notify_all();
    }

    /// The connection is gone: every waiter fails with `reason`.
    pub fn fail(&self, reason: &str) {
        let mut s = self.lock();
        s.failure
            .get_or_insert(WindowError::Lost(reason.to_string()));
        drop(s);
        self.changed.notify_all();
    }

    /// Waits until nothing is in flight; a refused publish makes it fail.
    pub fn wait_idle(&self, timeout: Duration) -> Result<(), WindowError> {
        self.wait_until(timeout, |s| s.inflight == 0).map(drop)
    }

    pub fn acked(&self) -> u64 {
        self.lock().acked
    }

    pub fn latency(&self) -> Histogram<u64> {
        self.lock().latency.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn window_blocks_at_max_and_frees_on_ack() {
        let w = Arc::new(PublishWindow::new(2));
        assert_eq!(w.try_acquire(), Ok(true));
        assert_eq!(w.try_acquire(), Ok(true));
        assert_eq!(w.try_acquire(), Ok(false));
        assert_eq!(
            w.acquire(Duration::from_millis(20)),
            Err(WindowError::Timeout(Duration::from_millis(20)))
        );
        let w2 = w.clone();
        let t = std::thread::spawn(move || w2.acquire(Duration::from_secs(5)));
        w.settle("1000.1", "", 3000);
        assert_eq!(t.join().ok(), Some(Ok(())));
        assert_eq!(w.acked(), 1);
        let h = w.latency();
        assert_eq!(h.len(), 1);
        assert!(h.equivalent(h.max(), 2000));
    }

    #[test]
    fn errors_reach_waiters() {
        let w = PublishWindow::new(1);
        assert_eq!(w.try_acquire(), Ok(true));
        w.settle("x", "invalid subject", 0);
        assert_eq!(
            w.wait_idle(Duration::from_secs(1)),
            Err(WindowError::Refused("invalid subject".into()))
        );
        assert_eq!(
            w.try_acquire(),
            Err(WindowError::Refused("invalid subject".into()))
        );
        let w = PublishWindow::new(1);
        assert_eq!(w.try_acquire(), Ok(true));
        w.fail("closed");
        assert_eq!(
            w.wait_idle(Duration::from_secs(1)),
            Err(WindowError::Lost("closed".into()))
        );
    }
}
