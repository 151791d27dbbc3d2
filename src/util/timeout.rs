//! Bounding a wait: a future raced against a glommio timer on the same executor.

use glommio::timer::Timer;
use std::future::Future;
use std::time::Duration;

/// The future's output, or `None` if `limit` passes first (the future is then dropped).
pub async fn within<T>(limit: Duration, fut: impl Future<Output = T>) -> Option<T> {
    let done = async { Some(fut.await) };
    let expired = async {
        Timer::new(limit).await;
        None
    };
    futures_lite::future::or(done, expired).await
}
