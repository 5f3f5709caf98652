//! Recording that watchers and pollers are alive: one store write for all
//! of a queue's users on this instance, not one per stream or poll.

use std::sync::atomic::Ordering;

use super::{QueueWatch, Watcher};
use crate::domain::{Clock, QueueId};
use crate::store::QueueStore;

/// Records the presence of a queue's watchers and pollers. Times are the
/// injected clock's, like the heartbeat timeout they are held to.
pub(super) struct Presence {
    recorded_at_ms: Option<u64>,
}

impl Presence {
    pub(super) fn new() -> Self {
        Self {
            recorded_at_ms: None,
        }
    }

    /// Records the watchers when they are due (every third of the heartbeat
    /// timeout the last refresh read, so a shortened timeout is followed
    /// within a refresh), and the pollers answered here since the last call
    /// (each poll is a sign of life of its own).
    pub(super) async fn record(
        &mut self,
        store: &dyn QueueStore,
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
        let watchers_due = now.saturating_sub(recorded_at) >= every_ms;
        let mut all = Vec::new();
        let users = if watchers_due {
            all.extend(polled.iter().cloned());
            all.extend(watchers.iter().map(|w| w.tx.user().clone()));
            all.sort();
            all.dedup();
            &all
        } else {
            &polled
        };
        let written = users.is_empty() || {
            match store.touch(queue, users, now).await {
                Ok(()) => true,
                Err(error) => {
                    tracing::debug!(%error, queue = %queue, "recording presence failed");
                    false
                }
            }
        };
        watch.pollers().recorded(&polled, written, now);
        if written && watchers_due {
            self.recorded_at_ms = Some(now);
        }
    }
}
