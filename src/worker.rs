//! The background work every replica does for every queue; none is in
//! charge and no leader is elected, because each step is one atomic store
//! transition that is safe to run on all replicas at once:
//!
//! - automatic admission: admit what each queue's rate allows. The rate's
//!   token bucket lives in the store and is shared, so any number of
//!   replicas together admit at the configured rate, never a multiple;
//! - the opening draw of a scheduled opening, one chunk per step;
//! - releasing the places of users silent for longer than the heartbeat
//!   timeout, only while this replica is ready: a replica nobody can reach
//!   hears nobody, and its passes must not count as time anyone could have
//!   shown life in (`domain::presence_after_gap`).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::domain::draw::{DRAW_CHUNK, new_seed};
use crate::domain::{Clock, QueueConfig, QueueId, QueueMode};
use crate::store::QueueStore;

/// Most users one step admits in one queue.
const MAX_STEP: u32 = 10_000;

/// Most users one reaping step releases in one queue.
const MAX_REAP: u32 = 1_000;

/// How often the list of queues is re-read (sooner when a local admin call
/// changed a queue).
const REFRESH_EVERY: Duration = Duration::from_secs(2);

/// How often each queue is checked for silent users, by the injected clock
/// the heartbeat timeouts are measured with.
const REAP_EVERY_MS: u64 = 1000;

/// Most draw steps in a row before other queues get their turn.
const DRAW_STEPS_PER_TICK: usize = 50;

pub struct QueueWorker {
    store: Arc<dyn QueueStore>,
    clock: Arc<dyn Clock>,
    interval: Duration,
    queues_changed: Arc<Notify>,
    /// Passes over every queue completed so far.
    passes: Arc<AtomicU64>,
    /// The replica is ready (it answers, the store answers): only then
    /// does it reap.
    ready: Arc<AtomicBool>,
}

impl QueueWorker {
    pub fn new(
        store: Arc<dyn QueueStore>,
        clock: Arc<dyn Clock>,
        interval: Duration,
        queues_changed: Arc<Notify>,
        ready: Arc<AtomicBool>,
    ) -> Self {
        Self {
            store,
            clock,
            interval,
            queues_changed,
            passes: Arc::default(),
            ready,
        }
    }

    /// The count of passes over every queue this worker has completed: a
    /// pass counted after a moment began after it when the count has grown
    /// by two.
    pub fn passes(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.passes)
    }

    /// Runs until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut queues: Vec<QueueConfig> = Vec::new();
        let mut listed_at: Option<Instant> = None;
        let mut reaped_at: HashMap<QueueId, u64> = HashMap::new();
        // Draws this worker saw complete (queue and creation) since its
        // last listing, which still says otherwise: no more steps for them
        // until the next.
        let mut drawn: HashSet<(QueueId, u64)> = HashSet::new();
        let mut failing = false;
        loop {
            if listed_at.is_none_or(|at| at.elapsed() >= REFRESH_EVERY) {
                match self.all_queues().await {
                    Ok(all) => {
                        reaped_at.retain(|id, _| all.iter().any(|q| &q.id == id));
                        // A fresh listing says which draws go on (one
                        // taken up again since included).
                        drawn.clear();
                        queues = all;
                        listed_at = Some(Instant::now());
                    }
                    Err(error) => {
                        if !failing {
                            tracing::warn!(%error, "cannot list queues");
                        }
                        failing = true;
                    }
                }
            }
            for queue in &queues {
                let result = self.step(queue, &mut reaped_at, &mut drawn).await;
                match result {
                    Ok(()) => failing = false,
                    Err(crate::Error::QueueNotFound(_)) => listed_at = None,
                    Err(error) => {
                        if !failing {
                            tracing::warn!(%error, queue = %queue.id, "background step failed");
                        }
                        failing = true;
                    }
                }
            }
            self.passes.fetch_add(1, Ordering::AcqRel);
            tokio::select! {
                _ = tokio::time::sleep(self.interval) => {}
                _ = self.queues_changed.notified() => listed_at = None,
                _ = shutdown.cancelled() => return,
            }
        }
    }

    async fn step(
        &self,
        queue: &QueueConfig,
        reaped_at: &mut HashMap<QueueId, u64>,
        drawn: &mut HashSet<(QueueId, u64)>,
    ) -> crate::Result<()> {
        let now = self.clock.now_ms();
        let this_draw = (queue.id.clone(), queue.created_at_ms);
        if draw_pending(queue, now) && !drawn.contains(&this_draw) {
            let seed = new_seed().map_err(crate::Error::Internal)?;
            for _ in 0..DRAW_STEPS_PER_TICK {
                if self
                    .store
                    .draw_step(&queue.id, &seed, DRAW_CHUNK, self.clock.now_ms())
                    .await?
                {
                    tracing::debug!(queue = %queue.id, "opening draw complete");
                    drawn.insert(this_draw);
                    break;
                }
            }
        }
        if is_automatic(queue) {
            let admitted = self.store.admit_due(&queue.id, MAX_STEP, now).await?;
            if !admitted.is_empty() {
                tracing::debug!(queue = %queue.id, count = admitted.len(), "admitted");
            }
        }
        if self.ready.load(Ordering::Relaxed)
            && reaped_at
                .get(&queue.id)
                .is_none_or(|at| now.saturating_sub(*at) >= REAP_EVERY_MS)
        {
            reaped_at.insert(queue.id.clone(), now);
            let released = self.store.reap(&queue.id, MAX_REAP, now).await?;
            if released > 0 {
                tracing::info!(queue = %queue.id, released, "released the places of silent users");
            }
        }
        Ok(())
    }

    async fn all_queues(&self) -> crate::Result<Vec<QueueConfig>> {
        let mut all = Vec::new();
        let mut after: Option<QueueId> = None;
        loop {
            let page = self.store.list_queues(after.as_ref(), 1000).await?;
            let Some(last) = page.last() else {
                return Ok(all);
            };
            after = Some(last.id.clone());
            all.extend(page);
        }
    }
}

/// A scheduled opening that has come, whose draw is not done as far as the
/// last listing knows; a step on a finished draw is a no-op.
fn draw_pending(queue: &QueueConfig, now_ms: u64) -> bool {
    !queue.draw_complete && queue.opens_at_ms.is_some_and(|at| now_ms >= at)
}

fn is_automatic(queue: &QueueConfig) -> bool {
    match queue.mode {
        QueueMode::PassThrough => true,
        QueueMode::Queueing => queue.admit_per_second > 0,
        QueueMode::Paused | QueueMode::Closed => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{ManualClock, PlaceState, UserId};
    use crate::store::MemoryStore;

    const T0: u64 = 1_000_000;

    /// A worker over `store` on a paused tokio clock, already past its
    /// first pass, and its shutdown.
    async fn running(store: &Arc<MemoryStore>, changed: &Arc<Notify>) -> CancellationToken {
        let worker = QueueWorker::new(
            Arc::clone(store) as Arc<dyn QueueStore>,
            Arc::new(ManualClock::new(T0)),
            Duration::from_millis(10),
            Arc::clone(changed),
            Arc::new(AtomicBool::new(true)),
        );
        let passes = worker.passes();
        let stop = CancellationToken::new();
        tokio::spawn(worker.run(stop.clone()));
        while passes.load(Ordering::Acquire) < 1 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        stop
    }

    /// A queue admitting one a second, made after the worker's listing,
    /// and the first of two arrivals still in line, whom only the worker's
    /// admission lets in (the bucket's token, if it had one, went to the
    /// other at once).
    async fn made_after_the_listing(store: &MemoryStore) -> (QueueId, UserId) {
        let queue = QueueId::parse("late").unwrap();
        let mut config = QueueConfig::new(queue.clone());
        config.created_at_ms = T0 - 10_000;
        config.admit_per_second = 1;
        store.create_queue(&config).await.unwrap();
        let mut waiting = Vec::new();
        for name in ["a", "b"] {
            let user = UserId::parse(name).unwrap();
            let place = store.enqueue(&queue, &user, T0 - 5_000).await.unwrap();
            if matches!(place.state, PlaceState::Waiting { .. }) {
                waiting.push(user);
            }
        }
        (queue, waiting.remove(0))
    }

    /// How long, on the paused clock, until `user` is admitted.
    async fn until_admitted(store: &MemoryStore, queue: &QueueId, user: &UserId) -> Duration {
        let started = Instant::now();
        loop {
            let place = store.place(queue, user, T0).await.unwrap().unwrap();
            if matches!(place.state, PlaceState::Admitted(_)) {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "never admitted"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_queue_made_on_another_replica_is_served_from_the_next_listing() {
        let (store, changed) = (Arc::new(MemoryStore::new()), Arc::new(Notify::new()));
        let stop = running(&store, &changed).await;
        let (queue, waiting) = made_after_the_listing(&store).await;
        let took = until_admitted(&store, &queue, &waiting).await;
        // Nothing told this worker: the list is read again when it is
        // REFRESH_EVERY old, and not before.
        assert!(
            took > REFRESH_EVERY - Duration::from_millis(100)
                && took <= REFRESH_EVERY + Duration::from_millis(100),
            "admitted after {took:?}"
        );
        stop.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn a_queue_changed_through_this_replica_is_served_at_once() {
        let (store, changed) = (Arc::new(MemoryStore::new()), Arc::new(Notify::new()));
        let stop = running(&store, &changed).await;
        let (queue, waiting) = made_after_the_listing(&store).await;
        changed.notify_one();
        let took = until_admitted(&store, &queue, &waiting).await;
        assert!(took <= Duration::from_millis(50), "admitted after {took:?}");
        stop.cancel();
    }

    /// A draw over sub-lines taken up again just after this worker saw it
    /// over (someone pre-queued on a sub-line made again empty, by a
    /// replica whose clock is behind): the next listing says it goes on,
    /// and the worker steps it until that user is placed.
    #[tokio::test]
    async fn a_draw_taken_up_again_after_this_worker_saw_it_over_is_stepped_again() {
        use crate::store::{RedisOptions, RedisStore};
        let redis = crate::testkit::RedisServer::start().unwrap_or_else(|e| panic!("{e}"));
        let store = Arc::new(
            RedisStore::connect(&RedisOptions {
                url: redis.url(),
                password: None,
                cluster: false,
                prefix: "w".into(),
                timeout: Duration::from_secs(2),
                sentinel_master: None,
                sentinel_password: None,
            })
            .await
            .unwrap()
            .with_sub_lines(),
        );
        let queue = QueueId::parse("drop").unwrap();
        let opens_at = T0 + 10_000;
        let mut config = QueueConfig::new(queue.clone()).created(T0);
        config.shards = 2;
        config.opens_at_ms = Some(opens_at);
        config.prequeue_window = Duration::from_secs(60);
        store.create_queue(&config).await.unwrap();
        let of = |name: &str, sub_line: u32| {
            (0..)
                .map(|n| UserId::parse(&format!("{name}-{n}")).unwrap())
                .find(|user| crate::domain::shards::sub_line_of(user.as_str(), 2) == sub_line)
                .unwrap()
        };
        for n in 0..20 {
            let user = UserId::parse(&format!("early-{n}")).unwrap();
            store.enqueue(&queue, &user, T0 + 1_000).await.unwrap();
        }
        let worker = QueueWorker::new(
            Arc::clone(&store) as Arc<dyn QueueStore>,
            Arc::new(ManualClock::new(opens_at)),
            Duration::from_millis(10),
            Arc::new(Notify::new()),
            Arc::new(AtomicBool::new(true)),
        );
        let stop = CancellationToken::new();
        tokio::spawn(worker.run(stop.clone()));
        let waited = Instant::now();
        while !store.get_queue(&queue).await.unwrap().draw_complete {
            assert!(waited.elapsed() < Duration::from_secs(10), "never drawn");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        // Sub-line 1 made again empty: its copy of the config back to no
        // opening made, and someone pre-queued there by a clock behind.
        let mut conn = redis::Client::open(redis.url())
            .and_then(|client| client.get_connection())
            .unwrap();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("w:{drop/2~1*}:config")
            .query(&mut conn)
            .unwrap();
        let _: () = redis::cmd("HSET")
            .arg(&keys[0])
            .arg("draw")
            .arg("none")
            .query(&mut conn)
            .unwrap();
        let skewed = of("skewed", 1);
        store.enqueue(&queue, &skewed, opens_at - 10).await.unwrap();
        store
            .enqueue(&queue, &of("late", 1), opens_at + 10)
            .await
            .unwrap();
        let waited = Instant::now();
        loop {
            let place = store
                .place(&queue, &skewed, opens_at + 20)
                .await
                .unwrap()
                .unwrap();
            if matches!(place.state, PlaceState::Waiting { .. }) {
                break;
            }
            assert!(
                waited.elapsed() < REFRESH_EVERY * 3,
                "the draw taken up again was never stepped"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        stop.cancel();
    }
}
