//! The automatic admitter. Every replica runs one; none is in charge. Each
//! tick it asks the store to admit what is due in every queue with an
//! admission rate (and to drain queues in pass-through mode). The rate's
//! token bucket lives in the store and is shared, so any number of replicas
//! together admit at the configured rate, never a multiple of it.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::domain::{Clock, QueueConfig, QueueId, QueueMode};
use crate::store::QueueStore;
use crate::watch::WatchHub;

/// Most users one step admits in one queue.
const MAX_STEP: u32 = 10_000;

/// How often the list of queues is re-read (sooner when a local admin call
/// changed a queue).
const REFRESH_EVERY: Duration = Duration::from_secs(2);

pub struct Admitter {
    store: Arc<dyn QueueStore>,
    clock: Arc<dyn Clock>,
    hub: Arc<WatchHub>,
    interval: Duration,
    queues_changed: Arc<Notify>,
}

impl Admitter {
    pub fn new(
        store: Arc<dyn QueueStore>,
        clock: Arc<dyn Clock>,
        hub: Arc<WatchHub>,
        interval: Duration,
        queues_changed: Arc<Notify>,
    ) -> Self {
        Self {
            store,
            clock,
            hub,
            interval,
            queues_changed,
        }
    }

    /// Runs until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut due: Vec<QueueId> = Vec::new();
        let mut listed_at = None::<tokio::time::Instant>;
        let mut failing = false;
        loop {
            let stale = listed_at.is_none_or(|at| at.elapsed() >= REFRESH_EVERY);
            if stale {
                match self.automatic_queues().await {
                    Ok(queues) => {
                        due = queues;
                        listed_at = Some(tokio::time::Instant::now());
                    }
                    Err(error) => {
                        if !failing {
                            tracing::warn!(%error, "admitter cannot list queues");
                        }
                        failing = true;
                    }
                }
            }
            for queue in &due {
                match self
                    .store
                    .admit_due(queue, MAX_STEP, self.clock.now_ms())
                    .await
                {
                    Ok(admitted) => {
                        failing = false;
                        if !admitted.is_empty() {
                            tracing::debug!(queue = %queue, count = admitted.len(), "admitted");
                            self.hub.nudge(queue);
                        }
                    }
                    Err(crate::Error::QueueNotFound(_)) => listed_at = None,
                    Err(error) => {
                        if !failing {
                            tracing::warn!(%error, queue = %queue, "automatic admission failed");
                        }
                        failing = true;
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(self.interval) => {}
                _ = self.queues_changed.notified() => listed_at = None,
                _ = shutdown.cancelled() => return,
            }
        }
    }

    /// Queues with something for the admitter to do.
    async fn automatic_queues(&self) -> crate::Result<Vec<QueueId>> {
        let mut due = Vec::new();
        let mut after: Option<QueueId> = None;
        loop {
            let page = self.store.list_queues(after.as_ref(), 1000).await?;
            let Some(last) = page.last() else {
                return Ok(due);
            };
            after = Some(last.id.clone());
            due.extend(
                page.iter()
                    .filter(|q| is_automatic(q))
                    .map(|q| q.id.clone()),
            );
        }
    }
}

fn is_automatic(queue: &QueueConfig) -> bool {
    match queue.mode {
        QueueMode::PassThrough => true,
        QueueMode::Queueing => queue.admit_per_second > 0,
        QueueMode::Paused | QueueMode::Closed => false,
    }
}
