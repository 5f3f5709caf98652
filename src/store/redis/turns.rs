//! Admissions of a queue over sub-lines from this process, one at a time.
//!
//! An admission over sub-lines reads each sub-line's front, then plans at
//! the head, which refuses the plan when another admission came in between
//! (`admission_head.lua`, 'again'); one refused eight times is answered
//! `UNAVAILABLE`. Admissions this process is asked for at once (a booking
//! service's workers, the rate's admitter) would only take each other's
//! turns, so each waits here for the one before it, at most the store's
//! timeout. Other replicas' admissions still meet at the head, which keeps
//! each admission exactly once whatever the order.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::OwnedMutexGuard;

use crate::domain::QueueId;
use crate::{Error, Result};

/// Each queue's turn.
#[derive(Default)]
pub(super) struct Turns {
    queues: Mutex<HashMap<QueueId, Arc<tokio::sync::Mutex<()>>>>,
}

impl Turns {
    /// The queue's turn, once the admission before it ended; `UNAVAILABLE`
    /// after `timeout`.
    pub(super) async fn take(
        &self,
        queue: &QueueId,
        timeout: Duration,
    ) -> Result<OwnedMutexGuard<()>> {
        let turn = {
            let mut queues = self
                .queues
                .lock()
                .map_err(|_| Error::Internal("admission turns lock poisoned".into()))?;
            Arc::clone(queues.entry(queue.clone()).or_default())
        };
        tokio::time::timeout(timeout, turn.lock_owned())
            .await
            .map_err(|_| {
                Error::Unavailable(format!(
                    "another admission of this queue held its turn for {timeout:?}"
                ))
            })
    }

    /// Drops the queue's turn: it was deleted.
    pub(super) fn forget(&self, queue: &QueueId) {
        if let Ok(mut queues) = self.queues.lock() {
            queues.remove(queue);
        }
    }
}
