//! Waiting for what a test expects, without timed assertions: poll until it holds or a
//! generous limit passes.

use std::time::{Duration, Instant};

/// Polls `check` until it returns true or `limit` passes; returns whether it did.
pub async fn wait_for<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    loop {
        if check().await {
            return true;
        }
        if started.elapsed() > limit {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
