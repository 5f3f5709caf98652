//! Waiting on something observable, never for a fixed time: shared by the
//! API and fault tests (`#[path]`), so every poll in them is one of these.

use std::future::Future;
use std::time::{Duration, Instant};

/// How often a condition is looked at again.
const POLL: Duration = Duration::from_millis(20);

/// Polls `check` until it answers `Ok`, and returns what it held; fails the
/// test with what the last `Err` described once `limit` has passed.
pub async fn until<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let started = Instant::now();
    loop {
        match check().await {
            Ok(held) => return held,
            Err(state) => assert!(
                started.elapsed() < limit,
                "{what}: not after {limit:?}: {state}"
            ),
        }
        tokio::time::sleep(POLL).await;
    }
}

/// [`until`] for a condition that holds or does not.
pub async fn wait_until<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    until(what, limit, || {
        let held = check();
        async move {
            if held.await {
                Ok(())
            } else {
                Err("never held".into())
            }
        }
    })
    .await
}

/// [`until`] for code that cannot await: blocks the thread between looks.
#[allow(dead_code)]
pub fn until_blocking<T>(
    what: &str,
    limit: Duration,
    mut check: impl FnMut() -> Result<T, String>,
) -> T {
    let started = Instant::now();
    loop {
        match check() {
            Ok(held) => return held,
            Err(state) => assert!(
                started.elapsed() < limit,
                "{what}: not after {limit:?}: {state}"
            ),
        }
        std::thread::sleep(POLL);
    }
}

/// A steady beat for traffic a test keeps up (joins, admissions, polls)
/// while it watches something else: the first tick is at once, and a beat
/// missed is not made up.
#[allow(dead_code)]
pub fn every(period: Duration) -> tokio::time::Interval {
    let mut beat = tokio::time::interval(period);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    beat
}
