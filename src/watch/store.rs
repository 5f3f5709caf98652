//! The store as this instance's callers see it: every call goes to the real
//! store, and the hub hears of every write made through this instance, so
//! its copy of a line is never trusted past a change made here; a user's
//! own lookup is answered from the copy when it can be (see `lookup.rs`)
//! and remembered when it cannot.
//!
//! Handlers and the queue worker hold this, never the store beneath, so no
//! write can forget to tell the hub: the trait has no default methods, and
//! a new one must be named here, among the calls passed on unchanged or
//! written out with what it changed (`store::queue_store_over!`). Writes
//! that the watchers on other instances must hear of at once (admissions,
//! a queue's configuration, its draw or clearing) are also announced to
//! them through the store (`QueueStore::announce`).

use std::sync::Arc;

use super::WatchHub;
use crate::Result;
use crate::domain::{
    Admitted, NamedAdmission, Place, PlaceClaim, PlaceState, QueueConfig, QueueId, QueueUpdate,
    RequestId, Restoration, UserId,
};
use crate::store::QueueStore;
use crate::telemetry::metrics::{LookupLabels, metrics};

/// The store, with the hub told of every write.
pub struct WatchedStore {
    inner: Arc<dyn QueueStore>,
    hub: Arc<WatchHub>,
}

impl WatchedStore {
    /// `hub` must follow `inner` itself, not this.
    pub fn new(inner: Arc<dyn QueueStore>, hub: Arc<WatchHub>) -> Self {
        Self { inner, hub }
    }

    /// Tells the other instances, beside the call: its caller does not
    /// wait for the store's answer.
    fn tell_others(&self, queue: &QueueId) {
        let (inner, queue) = (Arc::clone(&self.inner), queue.clone());
        tokio::spawn(async move { inner.announce(&queue).await });
    }

    pub fn hub(&self) -> &Arc<WatchHub> {
        &self.hub
    }

    /// The place a new `WatchRank` stream starts with: from the store (a
    /// sign of life), not remembered as a poll: the stream follows the
    /// place from here on, and a stream is not a poller.
    pub async fn first_place(
        &self,
        queue: &QueueId,
        user: &UserId,
        now_ms: u64,
    ) -> Result<Option<Place>> {
        self.inner.place(queue, user, now_ms).await
    }
}

// Passed on unchanged: the reads, and the writes that move nobody in line
// (presence, a consumed token, the instances' load).
crate::store::queue_store_over!(
    WatchedStore,
    inner,
    [
        touch,
        check_admission,
        share_load,
        get_queue,
        queue_lost,
        list_queues,
        line_snapshot,
        line_changes,
        stats,
        ping,
        setup_problem,
        announce,
        hear_announcements,
    ],
    {
        async fn create_queue(&self, config: &QueueConfig) -> Result<QueueConfig> {
            let created = self.inner.create_queue(config).await?;
            self.hub.reconfigured(&config.id);
            self.tell_others(&config.id);
            Ok(created)
        }

        async fn remake_from_parts(
            &self,
            queue: &QueueId,
            epoch_ms: u64,
            now_ms: u64,
        ) -> Result<Option<QueueConfig>> {
            let made = self
                .inner
                .remake_from_parts(queue, epoch_ms, now_ms)
                .await?;
            if made.is_some() {
                self.hub.reconfigured(queue);
                self.tell_others(queue);
            }
            Ok(made)
        }

        async fn update_queue(
            &self,
            queue: &QueueId,
            update: &QueueUpdate,
            now_ms: u64,
        ) -> Result<QueueConfig> {
            let updated = self.inner.update_queue(queue, update, now_ms).await;
            // Refused or not, the hub reads the queue again: a refusal may
            // have come after the change was made.
            self.hub.reconfigured(queue);
            self.tell_others(queue);
            updated
        }

        async fn delete_queue(&self, queue: &QueueId) -> Result<()> {
            let deleted = self.inner.delete_queue(queue).await;
            self.hub.reconfigured(queue);
            self.tell_others(queue);
            deleted
        }

        async fn enqueue(&self, queue: &QueueId, user: &UserId, now_ms: u64) -> Result<Place> {
            let place = self.inner.enqueue(queue, user, now_ms).await?;
            // A newcomer joins behind everyone: nobody's position moves, and
            // the next refresh brings the count. A poller enqueued again holds
            // a new ticket (or an admission) from now on.
            self.hub.enqueued(queue, user, &place, now_ms);
            Ok(place)
        }

        async fn enqueue_many(
            &self,
            queue: &QueueId,
            users: &[UserId],
            now_ms: u64,
        ) -> Result<Vec<Result<Place>>> {
            let places = self.inner.enqueue_many(queue, users, now_ms).await?;
            for (user, place) in users.iter().zip(&places) {
                if let Ok(place) = place {
                    self.hub.enqueued(queue, user, place, now_ms);
                }
            }
            Ok(places)
        }

        async fn places(
            &self,
            queue: &QueueId,
            users: &[UserId],
            touch: bool,
            now_ms: u64,
        ) -> Result<Vec<Option<Place>>> {
            let places = self.inner.places(queue, users, touch, now_ms).await?;
            // In pass-through a lookup admits, now: a change to the line.
            if places
                .iter()
                .flatten()
                .any(|p| matches!(&p.state, PlaceState::Admitted(a) if a.admitted_at_ms == now_ms))
            {
                self.hub.nudge(queue);
            }
            Ok(places)
        }

        async fn place(
            &self,
            queue: &QueueId,
            user: &UserId,
            now_ms: u64,
        ) -> Result<Option<Place>> {
            let answered = self.hub.lookup(queue, user, now_ms);
            metrics()
                .rank_lookups
                .get_or_create(&LookupLabels {
                    answered_by: if answered.is_some() { "copy" } else { "store" },
                })
                .inc();
            if answered.is_some() {
                return Ok(answered);
            }
            let place = self.inner.place(queue, user, now_ms).await?;
            if let Some(place) = &place {
                self.hub.remember(queue, user, place, now_ms);
            }
            Ok(place)
        }

        async fn restore(
            &self,
            queue: &QueueId,
            user: &UserId,
            claim: &PlaceClaim,
            now_ms: u64,
        ) -> Result<Restoration> {
            let outcome = self.inner.restore(queue, user, claim, now_ms).await?;
            // A place given back may stand anywhere in line: everyone behind
            // it moves back one, so the copy reads the line now.
            if let Restoration::Restored(place) = &outcome {
                self.hub.remember(queue, user, place, now_ms);
                self.hub.nudge(queue);
                self.tell_others(queue);
            }
            Ok(outcome)
        }

        async fn reap(&self, queue: &QueueId, limit: u32, now_ms: u64) -> Result<u64> {
            let released = self.inner.reap(queue, limit, now_ms).await?;
            if released > 0 {
                self.hub.nudge(queue);
            }
            Ok(released)
        }

        async fn draw_step(
            &self,
            queue: &QueueId,
            seed: &str,
            chunk: u32,
            now_ms: u64,
        ) -> Result<bool> {
            let done = self.inner.draw_step(queue, seed, chunk, now_ms).await?;
            // The draw places pre-queued users, behind nobody already known to
            // a poller here and ahead only of later arrivals; they reach the
            // copy with the next refresh. Its end is told at once.
            if done {
                self.hub.nudge(queue);
                self.tell_others(queue);
            }
            Ok(done)
        }

        async fn leave(&self, queue: &QueueId, user: &UserId, now_ms: u64) -> Result<bool> {
            let left = self.inner.leave(queue, user, now_ms).await?;
            if left {
                self.hub.nudge(queue);
            }
            Ok(left)
        }

        async fn admit(
            &self,
            queue: &QueueId,
            max_count: u32,
            request: Option<&RequestId>,
            now_ms: u64,
        ) -> Result<Vec<Admitted>> {
            let admitted = self.inner.admit(queue, max_count, request, now_ms).await?;
            if !admitted.is_empty() {
                self.hub.know_admitted(queue, &admitted);
                self.hub.nudge(queue);
                self.tell_others(queue);
            }
            Ok(admitted)
        }

        async fn admit_due(
            &self,
            queue: &QueueId,
            max_count: u32,
            now_ms: u64,
        ) -> Result<Vec<Admitted>> {
            let admitted = self.inner.admit_due(queue, max_count, now_ms).await?;
            if !admitted.is_empty() {
                self.hub.know_admitted(queue, &admitted);
                self.hub.nudge(queue);
                self.tell_others(queue);
            }
            Ok(admitted)
        }

        async fn admit_users(
            &self,
            queue: &QueueId,
            users: &[UserId],
            request: &RequestId,
            override_capacity: bool,
            now_ms: u64,
        ) -> Result<Vec<NamedAdmission>> {
            let results = self
                .inner
                .admit_users(queue, users, request, override_capacity, now_ms)
                .await?;
            if results
                .iter()
                .any(|r| matches!(r, NamedAdmission::Admitted(_)))
            {
                self.hub.nudge(queue);
                self.tell_others(queue);
            }
            Ok(results)
        }

        async fn clear_step(&self, queue: &QueueId, limit: u32, now_ms: u64) -> Result<u64> {
            let cleared = self.inner.clear_step(queue, limit, now_ms).await?;
            if cleared > 0 {
                self.hub.nudge(queue);
                self.tell_others(queue);
            }
            Ok(cleared)
        }

        async fn complete(&self, queue: &QueueId, user: &UserId, now_ms: u64) -> Result<bool> {
            let completed = self.inner.complete(queue, user, now_ms).await?;
            if completed {
                self.hub.nudge(queue);
            }
            Ok(completed)
        }
    }
);

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::domain::{QueueMode, SystemClock};
    use crate::store::MemoryStore;

    /// A memory store behind a hub that follows it, and the watched store.
    fn watched() -> (Arc<WatchHub>, WatchedStore) {
        let inner: Arc<dyn QueueStore> = Arc::new(MemoryStore::new());
        let hub = WatchHub::new(
            Arc::clone(&inner),
            Arc::new(SystemClock),
            Duration::from_secs(60),
            CancellationToken::new(),
        );
        let store = WatchedStore::new(inner, Arc::clone(&hub));
        (hub, store)
    }

    /// [`watched`], with queue `q` made (created at 1 ms).
    async fn watched_queue() -> (Arc<WatchHub>, WatchedStore, QueueId) {
        let (hub, store) = watched();
        let q = QueueId::parse("q").unwrap();
        store
            .create_queue(&QueueConfig::new(q.clone()).created(1))
            .await
            .unwrap();
        (hub, store, q)
    }

    /// Every write that changed something through the watched store reached
    /// the hub. A write added to the trait must be added here too: the
    /// trait has no defaults, so the watched store does not compile
    /// without it.
    #[tokio::test(start_paused = true)]
    async fn every_write_through_the_watched_store_reaches_the_hub() {
        let (hub, store) = watched();
        let heard = || hub.heard.load(Ordering::Relaxed);
        let q = QueueId::parse("q").unwrap();
        let (a, b, c) = (
            UserId::parse("a").unwrap(),
            UserId::parse("b").unwrap(),
            UserId::parse("c").unwrap(),
        );
        let mut config = QueueConfig::new(q.clone()).created(1);
        config.max_active = 1;
        config.heartbeat_timeout = Duration::from_secs(5);
        let mut before = heard();
        let mut wrote = |what: &str| {
            let now = heard();
            assert!(now > before, "{what} did not reach the hub");
            before = now;
        };
        store.create_queue(&config).await.unwrap();
        wrote("create_queue");
        store.enqueue(&q, &a, 10).await.unwrap();
        wrote("enqueue");
        store
            .enqueue_many(&q, &[b.clone(), c.clone()], 10)
            .await
            .unwrap();
        wrote("enqueue_many");
        store.leave(&q, &c, 20).await.unwrap();
        wrote("leave");
        store.complete(&q, &a, 30).await.unwrap();
        wrote("complete");
        store.admit(&q, 1, None, 40).await.unwrap();
        wrote("admit");
        let update = QueueUpdate {
            mode: Some(QueueMode::PassThrough),
            ..Default::default()
        };
        store.update_queue(&q, &update, 50).await.unwrap();
        wrote("update_queue");
        store.enqueue(&q, &c, 60).await.unwrap();
        wrote("enqueue (admitted at once)");
        store.leave(&q, &c, 61).await.unwrap();
        wrote("leave (an admission)");
        // b holds the one slot: c and d wait.
        let update = QueueUpdate {
            mode: Some(QueueMode::Queueing),
            admit_per_second: Some(5),
            ..Default::default()
        };
        store.update_queue(&q, &update, 62).await.unwrap();
        wrote("update_queue");
        store.enqueue(&q, &c, 63).await.unwrap();
        store
            .enqueue(&q, &UserId::parse("d").unwrap(), 63)
            .await
            .unwrap();
        wrote("enqueue");
        let update = QueueUpdate {
            max_active: Some(10),
            ..Default::default()
        };
        store.update_queue(&q, &update, 63).await.unwrap();
        wrote("update_queue");
        store.admit_due(&q, 10, 64).await.unwrap();
        wrote("admit_due");
        store
            .enqueue(&q, &UserId::parse("e").unwrap(), 65)
            .await
            .unwrap();
        store.reap(&q, 10, 60_000).await.unwrap();
        wrote("reap");
        let update = QueueUpdate {
            opens_at: Some(Some(70_000)),
            ..Default::default()
        };
        store.update_queue(&q, &update, 60_001).await.unwrap();
        wrote("update_queue (an opening)");
        store
            .enqueue(&q, &UserId::parse("f").unwrap(), 60_002)
            .await
            .unwrap();
        while !store.draw_step(&q, "seed", 10, 70_001).await.unwrap() {}
        wrote("draw_step (the draw done)");
        store.delete_queue(&q).await.unwrap();
        wrote("delete_queue");
    }

    /// Admissions made here raise the head this instance knows at once: a
    /// queue lost before the next refresh is re-made without giving the
    /// admitted their places back.
    #[tokio::test(start_paused = true)]
    async fn admissions_made_here_raise_the_known_head_before_any_refresh() {
        let (hub, store, q) = watched_queue().await;
        for user in ["a", "b", "c", "d"] {
            store
                .enqueue(&q, &UserId::parse(user).unwrap(), 10)
                .await
                .unwrap();
        }
        let admitted = store.admit(&q, 2, None, 20).await.unwrap();
        let known = hub.known_line(&q).expect("the admission is known");
        assert_eq!((known.epoch_ms, known.head), (1, 3));
        assert_eq!(admitted[1].admission.ticket + 1, known.head);
        store
            .update_queue(
                &q,
                &QueueUpdate {
                    admit_per_second: Some(100),
                    ..Default::default()
                },
                30,
            )
            .await
            .unwrap();
        store.admit_due(&q, 1, 1_000).await.unwrap();
        assert_eq!(hub.known_line(&q).map(|k| k.head), Some(4));
        // A late word of an earlier queue of that name changes nothing.
        hub.know_line(&q, 0, (1, 1));
        let known = hub.known_line(&q).expect("still known");
        assert_eq!((known.epoch_ms, known.head), (1, 4));
    }

    /// A stream's first place is a sign of life, not a poll: the hub does
    /// not start following the queue for it (the stream does that), and a
    /// poll does.
    #[tokio::test(start_paused = true)]
    async fn a_streams_first_place_is_not_remembered_as_a_poll() {
        let (hub, store, q) = watched_queue().await;
        let user = UserId::parse("u").unwrap();
        store.enqueue(&q, &user, 10).await.unwrap();
        assert!(store.first_place(&q, &user, 20).await.unwrap().is_some());
        assert!(
            hub.followed(&q).is_none(),
            "a stream's first place made a poller"
        );
        assert!(store.place(&q, &user, 30).await.unwrap().is_some());
        assert!(hub.followed(&q).is_some(), "a poll is remembered");
    }
}
