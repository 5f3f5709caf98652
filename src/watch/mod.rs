//! The per-instance hub behind `WatchRank`.
//!
//! Streams do not poll the store. Each queue with watchers on this instance
//! has one task that keeps a copy of the queue's waiting set ([`line`]):
//! one snapshot when it starts, then, every refresh interval (or at once
//! when a local change nudges it), one read of the changes logged since
//! and of the queue's summary. Positions, waiting counts and estimates of
//! all local watchers are computed from that in memory, exact as of the
//! read, so the store's work does not grow with the number of watchers.
//! Only a watcher whose ticket left the line (admitted, or gone) is looked
//! up, once, to fetch its admission. Each stream is sent its place only when
//! what the user sees has changed, through a one-place link that holds
//! the latest place (a slow client skips to the newest; see [`slot`]); a
//! stream whose client went away is dropped on
//! the next tick.
//!
//! An open stream is a sign of life. The hub records it for all the users it
//! watches in one queue with one store write every third of the queue's
//! heartbeat timeout, not one write per stream.
//!
//! The same copy answers `GetRank` for users who polled before ([`lookup`]).
//!
//! Layout: this file holds the hub's API; what it keeps per queue is in
//! `queue_watch.rs`, what it remembers of lines it followed in `known.rs`,
//! answers to calls with a receipt in `receipts.rs`, the follow loop in
//! `follow.rs`, presence in `presence.rs`, what a user sees in `view.rs`,
//! the copy of a line in `line.rs`, answers to polls in `lookup.rs`, the
//! stream's end in `slot.rs`, counting open streams in `streams.rs`, the
//! moments paced messages go out at in `pace.rs`, connections and their
//! streams in `connection.rs`, moving streams to the replicas that hold
//! fewer than their share in `balance.rs`, the store as callers see it in
//! `store.rs` (and, for tests only, one whose presence writes wait while
//! held, in `held_touch.rs`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

mod balance;
mod connection;
mod follow;
#[cfg(test)]
mod held_touch;
mod known;
mod line;
mod lookup;
mod pace;
mod presence;
mod queue_watch;
mod receipts;
mod slot;
mod store;
mod streams;
mod view;

pub use self::balance::{Balancer, Balancing, OpenConnections, jittered};
pub use self::connection::StreamConnection;
pub use self::known::KnownLine;
use self::pace::{next_moment, phase_of};
pub use self::queue_watch::LineBounds;
use self::queue_watch::QueueWatch;
pub use self::slot::PlaceReceiver;
use self::slot::PlaceSender;
pub use self::store::WatchedStore;
pub use self::streams::StreamPermit;
use self::streams::StreamSlot;
use self::view::View;
use crate::Error;
use crate::domain::{Clock, Place, PlaceState, QueueId, UserId};
use crate::store::QueueStore;

struct Watcher {
    /// The user's ticket; `None` while pre-queued.
    ticket: Option<u64>,
    last: View,
    /// The stream's end holds the user and the latest place.
    tx: PlaceSender,
    slot: StreamSlot,
    /// Before this time (the hub's clock, ms) a change of position, count
    /// or estimate alone is not sent: see [`WatchHub::set_position_pace`].
    /// Always one of the stream's own moments (see [`next_moment`]).
    paced_until_ms: u64,
    /// Where in each pace the stream's moments fall, as a fraction of the
    /// pace (of 65,536), from its user: the same on every instance.
    phase: u16,
    /// A paced change is due this refresh, sent after the changes of state.
    due: bool,
}

/// Pushes place changes to `WatchRank` streams.
pub struct WatchHub {
    store: Arc<dyn QueueStore>,
    clock: Arc<dyn Clock>,
    interval: Duration,
    /// Least time between two messages of a stream that only move its
    /// position, count or estimate; 0: every change at once.
    position_pace_ms: AtomicU64,
    /// Most position messages a second over all streams (0: none).
    position_budget: AtomicU64,
    /// See [`WatchHub::set_stall_timeout`] (ms).
    stall_ms: AtomicU64,
    queues: Mutex<HashMap<QueueId, Arc<QueueWatch>>>,
    shutdown: CancellationToken,
    /// Streams open on this instance.
    open: Arc<AtomicUsize>,
    /// The gRPC connections open on this instance.
    connections: Arc<OpenConnections>,
    /// What this instance last knew of each line it followed, kept after
    /// the store says the queue is gone: what a queue re-made after a loss
    /// takes back ([`crate::domain::Adoption`]).
    known_lines: Mutex<HashMap<QueueId, KnownLine>>,
    /// Writes made through this instance that the hub was told of.
    #[cfg(test)]
    heard: AtomicU64,
}

impl WatchHub {
    pub fn new(
        store: Arc<dyn QueueStore>,
        clock: Arc<dyn Clock>,
        interval: Duration,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            clock,
            interval,
            position_pace_ms: AtomicU64::new(0),
            position_budget: AtomicU64::new(0),
            stall_ms: AtomicU64::new(0),
            queues: Mutex::new(HashMap::new()),
            shutdown,
            open: Arc::new(AtomicUsize::new(0)),
            connections: Arc::default(),
            known_lines: Mutex::new(HashMap::new()),
            #[cfg(test)]
            heard: AtomicU64::new(0),
        })
    }

    /// A place for one more stream on this instance; `None` when `max`
    /// streams are open (or being opened).
    pub fn reserve_stream(&self, max: usize) -> Option<StreamPermit> {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (open < max).then_some(open + 1)
            })
            .ok()
            .map(|_| StreamPermit {
                instance: Arc::clone(&self.open),
            })
    }

    /// Opens a stream of a user's place that starts with `first`, carried
    /// by `connection` (when known). The stream ends after a final place
    /// (admitted or closed), or with an error.
    pub fn watch(
        self: &Arc<Self>,
        permit: StreamPermit,
        queue: QueueId,
        user: UserId,
        first: Place,
        connection: Option<Arc<StreamConnection>>,
    ) -> PlaceReceiver {
        let last = View::of(&first, self.clock.now_ms());
        let ticket = Some(first.ticket).filter(|t| *t > 0);
        let is_final = first.is_final();
        let stall = Duration::from_millis(self.stall_ms.load(Ordering::Relaxed));
        let (tx, rx) = slot::link(user, Ok(first), stall);
        if is_final {
            return rx;
        }
        let Ok(mut queues) = self.queues.lock() else {
            let _ = tx.send(Err(Error::Internal("watch hub lock poisoned".into())));
            return rx;
        };
        // Checked under the lock the queue's task takes to end its streams
        // at shutdown, so no stream joins a queue after its task ended them.
        if let Some(reason) = self.leaving(connection.as_deref()) {
            let _ = tx.send(Err(reason));
            return rx;
        }
        // Streams opened together (a crowd arriving, a replica's streams
        // moving) get their paced messages at different moments.
        let pace = self.position_pace_ms();
        let phase = phase_of(tx.user());
        let paced_until_ms = next_moment(self.clock.now_ms(), phase, pace);
        let watch = self.follow(&mut queues, &queue);
        if let Ok(mut watchers) = watch.watchers.lock() {
            let slot = StreamSlot::new(permit, &watch.open, connection);
            watchers.push(Watcher {
                ticket,
                last,
                tx,
                slot,
                paced_until_ms,
                phase,
                due: false,
            });
        }
        rx
    }

    /// Why a stream on `connection` must end now, if it must: the server is
    /// stopping, or the connection is closing. Either way the client
    /// reconnects and keeps its place.
    fn leaving(&self, connection: Option<&StreamConnection>) -> Option<Error> {
        if self.shutdown.is_cancelled() {
            Some(Error::Reconnect("this server is shutting down".into()))
        } else if connection.is_some_and(StreamConnection::is_closing) {
            Some(Error::Reconnect(
                "this server is closing the connection (its age, or streams moving to other replicas)"
                    .into(),
            ))
        } else {
            None
        }
    }

    /// Refreshes every followed queue now: connections were told to close,
    /// and their streams end at the next refresh.
    pub fn wake_all(&self) {
        if let Ok(queues) = self.queues.lock() {
            for watch in queues.values() {
                watch.connections_closing.store(true, Ordering::Release);
                watch.wake.notify_one();
            }
        }
    }

    /// The queue's entry, with a task following its line, started if none.
    fn follow<'a>(
        self: &Arc<Self>,
        queues: &'a mut HashMap<QueueId, Arc<QueueWatch>>,
        queue: &QueueId,
    ) -> &'a Arc<QueueWatch> {
        queues.entry(queue.clone()).or_insert_with(|| {
            let watch = Arc::new(QueueWatch::default());
            tokio::spawn(Arc::clone(self).run(queue.clone(), Arc::clone(&watch)));
            watch
        })
    }

    /// A user's place from this instance's copy of the line, when it can
    /// answer as the store would (see [`lookup`]); `None`: ask the store,
    /// then [`remember`](Self::remember) its answer.
    pub fn lookup(&self, queue: &QueueId, user: &UserId, now_ms: u64) -> Option<Place> {
        // Polls answered after the last recording would never be recorded.
        if self.shutdown.is_cancelled() {
            return None;
        }
        let watch = self.followed(queue)?;
        let changes = watch.changes.load(Ordering::Acquire);
        // Reads begin every interval; a quarter more for the read itself.
        let max_age_ms = (self.interval + self.interval / 4).as_millis() as u64;
        let heartbeat_ms = watch.heartbeat_ms.load(Ordering::Relaxed);
        let mut pollers = watch.pollers();
        pollers.answer(
            user,
            &watch.copy(),
            changes,
            max_age_ms,
            heartbeat_ms,
            now_ms,
        )
    }

    /// Remembers the store's answer to a user's lookup, asked at `asked_ms`
    /// (when it recorded the user's presence), so the next ones can be
    /// answered here.
    pub fn remember(
        self: &Arc<Self>,
        queue: &QueueId,
        user: &UserId,
        place: &Place,
        asked_ms: u64,
    ) {
        self.remember_answer(queue, user, place, asked_ms, true);
    }

    /// Notes the place the store just gave a user who enqueued: a poller
    /// enqueued again holds a new ticket (or was admitted) from now on.
    pub fn enqueued(
        self: &Arc<Self>,
        queue: &QueueId,
        user: &UserId,
        place: &Place,
        asked_ms: u64,
    ) {
        #[cfg(test)]
        self.heard.fetch_add(1, Ordering::Relaxed);
        self.remember_answer(queue, user, place, asked_ms, false);
    }

    fn remember_answer(
        self: &Arc<Self>,
        queue: &QueueId,
        user: &UserId,
        place: &Place,
        asked_ms: u64,
        follow: bool,
    ) {
        let in_line = matches!(place.state, PlaceState::Waiting { .. } | PlaceState::Closed);
        let Ok(mut queues) = self.queues.lock() else {
            return;
        };
        let watch = match queues.get(queue) {
            Some(watch) => watch,
            None if follow && in_line && !self.shutdown.is_cancelled() => {
                self.follow(&mut queues, queue)
            }
            None => return,
        };
        // The store's answer may be newer than a read begun before it came
        // back: only a read begun after it may answer next.
        let min_read = watch.reads.load(Ordering::Acquire) + 1;
        let mut pollers = watch.pollers();
        if follow || pollers.knows(user) {
            pollers.remember(user, place, asked_ms, min_read);
        }
    }

    /// A queue's configuration was changed through this instance: its
    /// heartbeat timeout is read again before lookups are answered here.
    pub fn reconfigured(&self, queue: &QueueId) {
        if let Some(watch) = self.followed(queue) {
            watch.heartbeat_ms.store(0, Ordering::Relaxed);
        }
        self.nudge(queue);
    }

    /// Refreshes a queue's watchers now: a change to the line was just made
    /// through this instance. Until a refresh that began after it, lookups
    /// go to the store.
    pub fn nudge(&self, queue: &QueueId) {
        #[cfg(test)]
        self.heard.fetch_add(1, Ordering::Relaxed);
        if let Some(watch) = self.followed(queue) {
            watch.changes.fetch_add(1, Ordering::AcqRel);
            watch.wake.notify_one();
        }
    }

    /// Another instance changed the queue (see `QueueStore::announce`):
    /// its watchers here hear of it at a refresh now, not at the next
    /// interval. Lookups are not sent to the store meanwhile, as they are
    /// after a change made here: the copy still answers only within the
    /// interval of its read.
    pub fn heard_elsewhere(&self, queue: &QueueId) {
        if let Some(watch) = self.followed(queue) {
            watch.heard.notify_one();
        }
    }

    /// The queue's entry, if this instance follows it.
    fn followed(&self, queue: &QueueId) -> Option<Arc<QueueWatch>> {
        self.queues.lock().ok()?.get(queue).cloned()
    }

    /// Refreshes of a queue's copy completed so far on this instance; 0
    /// while it does not follow the queue. A refresh counted after a call
    /// returned began after it when the count has grown by two.
    pub fn refreshes(&self, queue: &QueueId) -> u64 {
        self.followed(queue)
            .map_or(0, |watch| watch.refreshed.load(Ordering::Acquire))
    }

    /// The gRPC connections open on this instance.
    pub fn connections(&self) -> Arc<OpenConnections> {
        Arc::clone(&self.connections)
    }

    /// Number of open streams on this instance.
    pub fn watcher_count(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Open streams of each queue on this instance.
    pub fn watchers_by_queue(&self) -> HashMap<QueueId, u64> {
        self.queues.lock().map_or_else(
            |_| HashMap::new(),
            |queues| {
                queues
                    .iter()
                    .map(|(q, w)| (q.clone(), w.open.load(Ordering::Relaxed) as u64))
                    .collect()
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use tokio_stream::StreamExt;

    use super::*;
    use crate::domain::{QueueConfig, SystemClock};
    use crate::store::MemoryStore;

    /// A memory store with an empty queue `q`.
    async fn empty_queue() -> (Arc<MemoryStore>, QueueId) {
        let store = Arc::new(MemoryStore::new());
        let queue = QueueId::parse("q").unwrap();
        store
            .create_queue(&QueueConfig::new(queue.clone()))
            .await
            .unwrap();
        (store, queue)
    }

    /// A memory store with queue `q` and user `u` waiting in it, and the
    /// user's place.
    async fn one_waiting_user() -> (Arc<MemoryStore>, QueueId, UserId, Place) {
        let (store, queue) = empty_queue().await;
        let user = UserId::parse("u").unwrap();
        let first = store.enqueue(&queue, &user, 0).await.unwrap();
        (store, queue, user, first)
    }

    #[test]
    fn a_stream_s_moments_fall_at_its_phase_of_every_pace() {
        for pace in [1u64, 7, 1_000, 4_000] {
            for phase in [0u16, 1, 32_768, u16::MAX] {
                let offset = u64::from(phase) * pace / 65_536;
                for now in [1_000_000u64, 1_000_001, 1_000_000 + offset, 1_003_999] {
                    let next = next_moment(now, phase, pace);
                    assert!(next > now && next <= now + pace, "{now} {phase} {pace}");
                    assert_eq!(next % pace, offset % pace);
                }
            }
        }
        assert_eq!(next_moment(5, 9, 0), 5);
        // Users with ids alike spread evenly over the pace: each sixteenth
        // of it holds about a sixteenth of them.
        let mut sixteenths = [0u32; 16];
        for i in 0..16_000 {
            let user = UserId::parse(&format!("user-{i}")).unwrap();
            sixteenths[usize::from(phase_of(&user) / 4_096)] += 1;
        }
        assert!(
            sixteenths.iter().all(|n| (800..1_200).contains(n)),
            "{sixteenths:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_position_budget_stretches_the_pace_in_whole_paces() {
        let hub = idle_hub(Arc::new(MemoryStore::new()));
        hub.set_position_pace(Duration::from_secs(1));
        hub.set_position_budget(50_000);
        let mut permits = Vec::new();
        let mut pace_with = |streams: usize| {
            permits.resize_with(streams, || hub.reserve_stream(usize::MAX).unwrap());
            hub.position_pace_ms()
        };
        assert_eq!(pace_with(0), 1_000);
        assert_eq!(pace_with(50_000), 1_000);
        assert_eq!(pace_with(50_001), 2_000);
        assert_eq!(pace_with(100_000), 2_000);
        assert_eq!(pace_with(99_000), 2_000);
        assert_eq!(pace_with(200_000), 4_000);
        hub.set_position_budget(0);
        assert_eq!(hub.position_pace_ms(), 1_000);
        hub.set_position_pace(Duration::ZERO);
        hub.set_position_budget(50_000);
        assert_eq!(hub.position_pace_ms(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_whose_client_went_away_is_dropped_and_its_queue_task_ends() {
        let (store, queue, user, first) = one_waiting_user().await;
        let hub = WatchHub::new(
            store,
            Arc::new(SystemClock),
            Duration::from_millis(10),
            CancellationToken::new(),
        );
        let permit = hub.reserve_stream(1).unwrap();
        let mut stream = hub.watch(permit, queue.clone(), user.clone(), first, None);
        assert!(stream.next().await.is_some());
        assert_eq!(hub.watcher_count(), 1);
        drop(stream);
        for _ in 0..100 {
            if hub.queues.lock().unwrap().is_empty() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the hub still holds the queue of a stream nobody reads");
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_opened_after_shutdown_began_is_told_to_reconnect_not_ok() {
        let (store, queue, user, first) = one_waiting_user().await;
        let shutdown = CancellationToken::new();
        let hub = WatchHub::new(
            store,
            Arc::new(SystemClock),
            Duration::from_secs(60),
            shutdown.clone(),
        );
        shutdown.cancel();
        let permit = hub.reserve_stream(1).unwrap();
        let mut stream = hub.watch(permit, queue, user, first, None);
        assert!(matches!(
            stream.next().await,
            Some(Err(Error::Reconnect(_)))
        ));
        assert!(stream.next().await.is_none());
        assert_eq!(hub.watcher_count(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_ends_open_streams_with_a_reconnect() {
        let (store, queue, user, first) = one_waiting_user().await;
        let shutdown = CancellationToken::new();
        let hub = WatchHub::new(
            store,
            Arc::new(SystemClock),
            Duration::from_secs(60),
            shutdown.clone(),
        );
        let permit = hub.reserve_stream(1).unwrap();
        let mut stream = hub.watch(permit, queue, user, first, None);
        assert!(stream.next().await.is_some());
        shutdown.cancel();
        let last = tokio::time::timeout(Duration::from_secs(1), stream.next())
            .await
            .unwrap();
        assert!(matches!(last, Some(Err(Error::Reconnect(_)))));
        assert!(stream.next().await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn streams_of_a_closing_connection_end_with_a_reconnect_and_others_stay() {
        let (store, queue, user, first) = one_waiting_user().await;
        let other = UserId::parse("other").unwrap();
        let second = store.enqueue(&queue, &other, 0).await.unwrap();
        let hub = idle_hub(store);
        let (closing, staying) = (
            Arc::new(StreamConnection::default()),
            Arc::new(StreamConnection::default()),
        );
        let mut leaving = hub.watch(
            hub.reserve_stream(2).unwrap(),
            queue.clone(),
            user,
            first,
            Some(Arc::clone(&closing)),
        );
        let mut kept = hub.watch(
            hub.reserve_stream(2).unwrap(),
            queue,
            other,
            second,
            Some(Arc::clone(&staying)),
        );
        assert!(leaving.next().await.is_some());
        assert!(kept.next().await.is_some());
        assert_eq!((closing.streams(), staying.streams()), (1, 1));
        closing.close();
        hub.wake_all();
        let last = tokio::time::timeout(Duration::from_secs(5), leaving.next())
            .await
            .unwrap();
        assert!(matches!(last, Some(Err(Error::Reconnect(_)))));
        assert!(leaving.next().await.is_none());
        assert_eq!((closing.streams(), staying.streams()), (0, 1));
        assert_eq!(hub.watcher_count(), 1);
    }

    /// Waits for a refresh of `queue` that began after this call.
    async fn refreshed(hub: &WatchHub, queue: &QueueId) {
        let before = hub.refreshes(queue);
        hub.nudge(queue);
        tokio::time::timeout(Duration::from_secs(5), async {
            while hub.refreshes(queue) < before + 2 {
                tokio::time::sleep(Duration::from_millis(2)).await;
                hub.nudge(queue);
            }
        })
        .await
        .unwrap();
    }

    /// A hub over `store` on the system clock, refreshing every minute
    /// unless asked.
    fn idle_hub(store: Arc<dyn QueueStore>) -> Arc<WatchHub> {
        WatchHub::new(
            store,
            Arc::new(SystemClock),
            Duration::from_secs(60),
            CancellationToken::new(),
        )
    }

    /// A hub over `store` on a clock set by hand to `t0`, its position
    /// messages paced at `pace_ms`.
    fn paced_hub<S: QueueStore>(
        store: &Arc<S>,
        t0: u64,
        pace_ms: u64,
    ) -> (Arc<crate::domain::ManualClock>, Arc<WatchHub>) {
        let clock = Arc::new(crate::domain::ManualClock::new(t0));
        let hub = WatchHub::new(
            Arc::clone(store) as Arc<dyn QueueStore>,
            Arc::clone(&clock) as Arc<dyn Clock>,
            Duration::from_secs(60),
            CancellationToken::new(),
        );
        hub.set_position_pace(Duration::from_millis(pace_ms));
        (clock, hub)
    }

    /// One ahead leaves and one joins behind in the same refresh: the line
    /// keeps its length and the estimate stays, but the position moved.
    #[tokio::test(start_paused = true)]
    async fn a_position_that_moves_while_the_line_keeps_its_length_is_sent() {
        let (store, queue) = empty_queue().await;
        let ahead = UserId::parse("ahead").unwrap();
        store.enqueue(&queue, &ahead, 0).await.unwrap();
        let user = UserId::parse("w").unwrap();
        let first = store.enqueue(&queue, &user, 0).await.unwrap();
        let hub = idle_hub(Arc::clone(&store) as Arc<dyn QueueStore>);
        let mut stream = hub.watch(
            hub.reserve_stream(1).unwrap(),
            queue.clone(),
            user,
            first,
            None,
        );
        let position = |place: Place| match place.state {
            PlaceState::Waiting { position } => (position, place.waiting_count),
            _ => (0, 0),
        };
        assert_eq!(position(stream.next().await.unwrap().unwrap()), (2, 2));
        assert!(store.leave(&queue, &ahead, 0).await.unwrap());
        let late = UserId::parse("late").unwrap();
        store.enqueue(&queue, &late, 0).await.unwrap();
        refreshed(&hub, &queue).await;
        let moved = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .expect("the new position was never sent");
        assert_eq!(position(moved.unwrap().unwrap()), (1, 2));
    }

    #[tokio::test(start_paused = true)]
    async fn after_a_quiet_spell_a_crowd_s_new_positions_go_out_at_their_own_moments() {
        let (store, queue) = empty_queue().await;
        store
            .enqueue(&queue, &UserId::parse("front").unwrap(), 0)
            .await
            .unwrap();
        let (t0, pace) = (1_000_000, 10_000);
        let (clock, hub) = paced_hub(&store, t0, pace);
        let mut streams = Vec::new();
        for i in 0..200 {
            let user = UserId::parse(&format!("user-{i}")).unwrap();
            let first = store.enqueue(&queue, &user, 0).await.unwrap();
            let mut stream = hub.watch(
                hub.reserve_stream(200).unwrap(),
                queue.clone(),
                user,
                first,
                None,
            );
            assert!(stream.next().await.is_some());
            streams.push(stream);
        }
        let sent = |streams: &mut Vec<PlaceReceiver>| {
            use tokio_stream::Stream;
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            let mut ready = 0;
            for stream in streams.iter_mut() {
                if std::pin::Pin::new(stream).poll_next(&mut cx).is_ready() {
                    ready += 1;
                }
            }
            ready
        };
        // A quiet minute (in which the line's length as the later arrivals
        // left it reaches those who came before them), then the front is
        // admitted: every position moves.
        refreshed(&hub, &queue).await;
        clock.set_ms(t0 + 60_000);
        refreshed(&hub, &queue).await;
        assert_eq!(sent(&mut streams), 199);
        store.admit(&queue, 1, None, t0 + 60_000).await.unwrap();
        refreshed(&hub, &queue).await;
        // Not all at once: each stream waits for its own moment.
        assert_eq!(sent(&mut streams), 0);
        // Half a pace on, about half of them have had theirs.
        clock.set_ms(t0 + 65_001);
        refreshed(&hub, &queue).await;
        let half = sent(&mut streams);
        assert!((60..=140).contains(&half), "{half} of 200");
        clock.set_ms(t0 + 70_001);
        refreshed(&hub, &queue).await;
        assert_eq!(half + sent(&mut streams), 200);
    }

    #[tokio::test(start_paused = true)]
    async fn positions_are_paced_to_the_latest_and_an_admission_is_not() {
        let (store, queue) = empty_queue().await;
        for i in 0..5 {
            let ahead = UserId::parse(&format!("a{i}")).unwrap();
            store.enqueue(&queue, &ahead, 0).await.unwrap();
        }
        let user = UserId::parse("w").unwrap();
        let first = store.enqueue(&queue, &user, 0).await.unwrap();
        let (t0, pace) = (1_000_000, 10_000);
        let (clock, hub) = paced_hub(&store, t0, pace);
        let due = next_moment(t0, phase_of(&user), pace);
        let mut stream = hub.watch(
            hub.reserve_stream(1).unwrap(),
            queue.clone(),
            user,
            first,
            None,
        );
        let position = |place: &Place| match place.state {
            PlaceState::Waiting { position } => position,
            _ => 0,
        };
        assert_eq!(position(&stream.next().await.unwrap().unwrap()), 6);
        refreshed(&hub, &queue).await;
        // Two admissions before the stream's turn: nothing is sent.
        clock.set_ms(due.saturating_sub(1).max(t0));
        store.admit(&queue, 1, None, t0).await.unwrap();
        refreshed(&hub, &queue).await;
        store.admit(&queue, 1, None, t0).await.unwrap();
        refreshed(&hub, &queue).await;
        let nothing = tokio::time::timeout(Duration::from_millis(50), stream.next()).await;
        assert!(
            due == t0 || nothing.is_err(),
            "a paced change was sent early"
        );
        // Its turn: the latest position, once.
        clock.set_ms(due);
        refreshed(&hub, &queue).await;
        assert_eq!(position(&stream.next().await.unwrap().unwrap()), 4);
        // Admitted within the pace: sent at once, before any paced change.
        clock.set_ms(due + 1);
        store.admit(&queue, 4, None, due).await.unwrap();
        hub.nudge(&queue);
        let admitted = tokio::time::timeout(Duration::from_secs(1), stream.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(matches!(admitted.state, PlaceState::Admitted(_)));
    }

    #[tokio::test(start_paused = true)]
    async fn an_admission_goes_out_while_the_watchers_presence_is_being_written() {
        let (memory, queue) = empty_queue().await;
        let store = Arc::new(held_touch::HeldTouches::new(Arc::clone(&memory)));
        let t0 = 1_000_000;
        let (clock, hub) = paced_hub(&store, t0, 0);
        let mut streams = Vec::new();
        for name in ["front", "next"] {
            let user = UserId::parse(name).unwrap();
            let first = memory.enqueue(&queue, &user, t0).await.unwrap();
            streams.push(hub.watch(
                hub.reserve_stream(2).unwrap(),
                queue.clone(),
                user,
                first,
                None,
            ));
        }
        refreshed(&hub, &queue).await;
        // A third of the heartbeat timeout on, the watchers' presence is due;
        // the write is held, as a slow store would hold it.
        store.hold();
        let third = QueueConfig::DEFAULT_HEARTBEAT_TIMEOUT.as_millis() as u64 / 3;
        clock.set_ms(t0 + third + 1_000);
        refreshed(&hub, &queue).await;
        refreshed(&hub, &queue).await;
        assert_eq!(
            store.waiting.load(Ordering::SeqCst),
            1,
            "one write at a time"
        );
        memory
            .admit(&queue, 1, None, t0 + third + 1_000)
            .await
            .unwrap();
        hub.nudge(&queue);
        let admitted = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                let place = streams[0].next().await.unwrap().unwrap();
                if matches!(place.state, PlaceState::Admitted(_)) {
                    return place;
                }
            }
        })
        .await;
        assert!(
            admitted.is_ok(),
            "the admission waited for the presence write"
        );
        store.release();
        tokio::time::timeout(Duration::from_secs(5), async {
            while store.waiting.load(Ordering::SeqCst) > 0 {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
        .await
        .unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn an_admission_goes_out_while_ended_streams_presence_is_being_written() {
        let (memory, queue) = empty_queue().await;
        let store = Arc::new(held_touch::HeldTouches::new(Arc::clone(&memory)));
        let hub = idle_hub(Arc::clone(&store) as Arc<dyn QueueStore>);
        let (closing, staying) = (
            Arc::new(StreamConnection::default()),
            Arc::new(StreamConnection::default()),
        );
        let mut streams = Vec::new();
        for (name, connection) in [("front", &staying), ("leaving", &closing)] {
            let user = UserId::parse(name).unwrap();
            let first = memory.enqueue(&queue, &user, 0).await.unwrap();
            let mut stream = hub.watch(
                hub.reserve_stream(2).unwrap(),
                queue.clone(),
                user,
                first,
                Some(Arc::clone(connection)),
            );
            assert!(stream.next().await.is_some());
            streams.push(stream);
        }
        // The closing connection's stream ends; its sign of life is held,
        // as a slow store would hold it.
        store.hold();
        closing.close();
        hub.wake_all();
        let last = tokio::time::timeout(Duration::from_secs(5), streams[1].next())
            .await
            .unwrap();
        assert!(matches!(last, Some(Err(Error::Reconnect(_)))));
        memory.admit(&queue, 1, None, 0).await.unwrap();
        hub.nudge(&queue);
        let admitted = tokio::time::timeout(Duration::from_secs(5), async {
            while let Some(Ok(place)) = streams[0].next().await {
                if matches!(place.state, PlaceState::Admitted(_)) {
                    return;
                }
            }
        })
        .await;
        assert!(
            admitted.is_ok(),
            "the admission waited for the ended stream's write"
        );
        assert_eq!(store.waiting.load(Ordering::SeqCst), 1);
        store.release();
    }

    #[tokio::test(start_paused = true)]
    async fn other_instances_announcements_are_heard_at_most_once_a_gap() {
        let (store, queue, user, first) = one_waiting_user().await;
        let hub = idle_hub(store);
        let _stream = hub.watch(
            hub.reserve_stream(1).unwrap(),
            queue.clone(),
            user,
            first,
            None,
        );
        refreshed(&hub, &queue).await;
        let before = hub.refreshes(&queue);
        let started = tokio::time::Instant::now();
        while started.elapsed() < Duration::from_millis(500) {
            hub.heard_elsewhere(&queue);
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let refreshes = hub.refreshes(&queue) - before;
        // Heard (the interval is a minute), and once a gap at most.
        let most = 500 / follow::ANNOUNCED_GAP.as_millis() as u64 + 2;
        assert!(
            (1..=most).contains(&refreshes),
            "{refreshes} refreshes for 500 ms of announcements"
        );
    }
}
