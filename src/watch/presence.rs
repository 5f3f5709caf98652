//! Recording that watchers and pollers are alive: one store write for all
//! of a queue's users on this instance, not one per stream or poll.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::task::JoinHandle;

use super::{QueueWatch, Watcher};
use crate::domain::{Clock, QueueId, UserId};
use crate::store::QueueStore;

/// Records the presence of a queue's watchers and pollers. Times are the
/// injected clock's, like the heartbeat timeout they are held to.
pub(super) struct Presence {
    recorded_at_ms: Option<u64>,
    /// The watchers' write in flight, begun at this time. It runs beside
    /// the follow loop: at 100,000 streams it is twenty store calls, and
    /// made in the loop it held every admission's message back by as long
    /// (`watch --flow --heartbeat 30s`: p99 301 ms, against 77 ms beside).
    writing: Option<(u64, JoinHandle<bool>)>,
}

impl Presence {
    pub(super) fn new() -> Self {
        Self {
            recorded_at_ms: None,
            writing: None,
        }
    }

    /// Records the watchers when they are due (every third of the heartbeat
    /// timeout the last refresh read, so a shortened timeout is followed
    /// within a refresh), in the background, and the pollers answered here
    /// since the last call (each poll is a sign of life of its own).
    pub(super) async fn record(
        &mut self,
        store: &Arc<dyn QueueStore>,
        clock: &dyn Clock,
        queue: &QueueId,
        watchers: &[Watcher],
        watch: &QueueWatch,
    ) {
        let every_ms = match watch.heartbeat_ms.load(Ordering::Relaxed) {
            // Not read yet, or changed here: as often as the shortest
            // timeout needs.
            0 => {
                crate::domain::QueueConfig::HEARTBEAT_TIMEOUT_RANGE
                    .0
                    .as_millis() as u64
                    / 3
            }
            heartbeat_ms => (heartbeat_ms / 3).max(1000),
        };
        let polled = watch.pollers().take_unrecorded();
        // Read after the polls were taken, so no poll is recorded as older
        // than it was.
        let now = clock.now_ms();
        // Opening a stream looked the place up, which counted.
        let recorded_at = *self.recorded_at_ms.get_or_insert(now);
        if self.writing.as_ref().is_some_and(|(_, w)| w.is_finished())
            && let Some((begun_ms, write)) = self.writing.take()
            // A write that failed is due again at once.
            && write.await.unwrap_or(false)
        {
            self.recorded_at_ms = Some(begun_ms.max(recorded_at));
        }
        let recorded_at = self.recorded_at_ms.unwrap_or(now);
        if self.writing.is_none() && now.saturating_sub(recorded_at) >= every_ms {
            let users: Vec<UserId> = watchers.iter().map(|w| w.tx.user().clone()).collect();
            self.writing = Some((now, write_beside(store, queue, users, now)));
        }
        let written = polled.is_empty() || write(store.as_ref(), queue, polled.clone(), now).await;
        watch.pollers().recorded(&polled, written, now);
    }
}

/// [`write`] in a task of its own, so the follow loop goes on meanwhile.
pub(super) fn write_beside(
    store: &Arc<dyn QueueStore>,
    queue: &QueueId,
    users: Vec<UserId>,
    now_ms: u64,
) -> JoinHandle<bool> {
    let (store, queue) = (Arc::clone(store), queue.clone());
    tokio::spawn(async move { write(store.as_ref(), &queue, users, now_ms).await })
}

/// One write of `users`' presence at `now_ms`; false if it failed.
async fn write(
    store: &dyn QueueStore,
    queue: &QueueId,
    mut users: Vec<UserId>,
    now_ms: u64,
) -> bool {
    // A user with two streams is written once.
    users.sort();
    users.dedup();
    match store.touch(queue, &users, now_ms).await {
        Ok(()) => true,
        Err(error) => {
            tracing::debug!(%error, queue = %queue, "recording presence failed");
            false
        }
    }
}
