//! What this instance remembers of the lines it follows and followed: the
//! bounds a queue re-made after a loss adopts.

use std::time::{Duration, Instant};

use super::WatchHub;
use crate::domain::{Admitted, QueueId};

/// What an instance last knew of a queue's line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KnownLine {
    /// The queue's `created_at_ms`.
    pub epoch_ms: u64,
    /// At or below the lowest waiting ticket seen: everyone below it had
    /// been admitted or had left.
    pub head: u64,
    /// At or above the highest ticket seen given.
    pub top: u64,
    /// When a refresh last showed it.
    pub at: Instant,
}

impl WatchHub {
    /// Notes what a refresh of a queue's line showed.
    pub(super) fn know_line(&self, queue: &QueueId, epoch_ms: u64, (head, top): (u64, u64)) {
        if let Ok(mut known) = self.known_lines.lock() {
            let line = known.entry(queue.clone()).or_insert(KnownLine {
                epoch_ms,
                head: 0,
                top: 0,
                at: Instant::now(),
            });
            // A late word of the queue before it was deleted and made
            // again says nothing of the new one.
            if epoch_ms < line.epoch_ms {
                return;
            }
            if line.epoch_ms != epoch_ms {
                line.epoch_ms = epoch_ms;
                (line.head, line.top) = (0, 0);
            }
            line.head = line.head.max(head);
            line.top = line.top.max(top);
            line.at = Instant::now();
        }
    }

    /// Notes admissions made through this instance: the line's head is past
    /// the highest ticket admitted from its front, at once, not at the next
    /// refresh. A queue the store loses in between is re-made without
    /// giving those places back.
    pub(super) fn know_admitted(&self, queue: &QueueId, admitted: &[Admitted]) {
        let Some(last) = admitted.iter().max_by_key(|a| a.admission.ticket) else {
            return;
        };
        let (epoch_ms, ticket) = (last.admission.queue_epoch_ms, last.admission.ticket);
        self.know_line(queue, epoch_ms, (ticket + 1, ticket));
    }

    /// The lines this instance knows, with whether it follows each now;
    /// forgets those it stopped following longer than `keep` ago.
    pub fn known_lines(&self, keep: Duration) -> Vec<(QueueId, KnownLine, bool)> {
        let followed: Vec<QueueId> = self
            .queues
            .lock()
            .map(|queues| queues.keys().cloned().collect())
            .unwrap_or_default();
        let Ok(mut known) = self.known_lines.lock() else {
            return Vec::new();
        };
        known.retain(|queue, line| followed.contains(queue) || line.at.elapsed() < keep);
        known
            .iter()
            .map(|(queue, line)| (queue.clone(), *line, followed.contains(queue)))
            .collect()
    }

    /// What this instance last knew of a queue's line, if anything.
    pub fn known_line(&self, queue: &QueueId) -> Option<KnownLine> {
        self.known_lines.lock().ok()?.get(queue).copied()
    }

    /// Forgets a line whose queue was deleted or is back.
    pub fn forget_line(&self, queue: &QueueId) {
        if let Ok(mut known) = self.known_lines.lock() {
            known.remove(queue);
        }
    }
}
