//! Admissions of a queue over sub-lines from this process, one at a time.
//!
//! An admission over sub-lines reads each sub-line's front, then plans at
//! the head, which refuses the plan when another admission came in between
//! (`admission_head.lua`, 'again'); one refused eight times is answered
//! `UNAVAILABLE`. Admissions this process is asked for at once (a booking
//! service's workers, the rate's admitter) would only take each other's
//! turns, so each waits here for the ones before it, at most the store's
//! timeout; the rate's admitter, which steps every queue in turn, a
//! quarter of it, and then admits at its next pass. Other replicas'
//! admissions still meet at the head, which keeps each admission exactly
//! once whatever the order.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::OwnedMutexGuard;

use crate::domain::QueueId;
use crate::{Error, Result};

/// Each queue's turn.
#[derive(Default)]
pub(super) struct Turns {
    queues: Mutex<HashMap<QueueId, Arc<tokio::sync::Mutex<()>>>>,
}

/// A queue's turn, held until dropped.
pub(super) struct Turn {
    _held: OwnedMutexGuard<()>,
    waited_ms: u64,
}

impl Turn {
    /// A clock read at `asked_ms`, before waiting for the turn, moved on by
    /// the wait: the admission runs as of when it got its turn, as one
    /// that read the clock then.
    pub(super) fn now_ms(&self, asked_ms: u64) -> u64 {
        asked_ms.saturating_add(self.waited_ms)
    }
}

impl Turns {
    /// The queue's turn, once the admissions before it ended; `UNAVAILABLE`
    /// after `wait`.
    pub(super) async fn take(&self, queue: &QueueId, wait: Duration) -> Result<Turn> {
        self.within(queue, wait).await?.ok_or_else(|| {
            Error::Unavailable(format!(
                "the admissions of this queue before this one took more than {wait:?}"
            ))
        })
    }

    /// The queue's turn, or none after `wait`.
    pub(super) async fn within(&self, queue: &QueueId, wait: Duration) -> Result<Option<Turn>> {
        let turn = {
            let mut queues = self
                .queues
                .lock()
                .map_err(|_| Error::Internal("admission turns lock poisoned".into()))?;
            Arc::clone(queues.entry(queue.clone()).or_default())
        };
        let asked = Instant::now();
        Ok(tokio::time::timeout(wait, turn.lock_owned())
            .await
            .ok()
            .map(|held| Turn {
                _held: held,
                waited_ms: asked.elapsed().as_millis() as u64,
            }))
    }

    /// Drops the queue's turn: it was deleted.
    pub(super) fn forget(&self, queue: &QueueId) {
        if let Ok(mut queues) = self.queues.lock() {
            queues.remove(queue);
        }
    }
}
