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

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

mod line;
mod lookup;
mod slot;
mod store;

use self::line::Line;
use self::lookup::{Copy, Pollers};
pub use self::slot::PlaceReceiver;
use self::slot::PlaceSender;
pub use self::store::WatchedStore;
use crate::domain::{
    Clock, LineEvent, LineSnapshot, Place, PlaceState, QueueId, QueueMode, UserId,
};
use crate::store::QueueStore;
use crate::{Error, Result};

/// Consecutive failed refreshes after which streams end with `UNAVAILABLE`
/// (clients reconnect; places are kept).
const MAX_FAILED_REFRESHES: u32 = 8;

/// Log entries read per call while catching up: one short store call each.
const CHANGES_PER_READ: u32 = 2_000;

/// Reads per refresh before giving up on catching up this time.
const MAX_CATCH_UP_READS: usize = 50;

/// Tickets per snapshot chunk: one short store call each (a few
/// milliseconds of Redis time), however long the line.
const SNAPSHOT_CHUNK: u32 = 2_000;

/// What a user sees of a place; a message is sent only when it changes.
/// Kept small: there is one per open stream, and the hub keeps a queue's
/// watchers in one vector (see `docs/benchmarks.md` on its size).
#[derive(Clone, Debug)]
struct View {
    state: Shown,
    waiting_count: u64,
    mode: QueueMode,
    estimated_wait: Option<Duration>,
}

/// The state part of a view. The countdown to an opening is not in it: a
/// client counts down from `opens_in` itself, or every pre-queued watcher
/// would get a message every refresh; a moved opening is. Admitted and
/// closed end the stream, so what they carry is never compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shown {
    Waiting {
        position: u64,
    },
    /// Counting down to the opening at this time (of the hub's clock),
    /// within [`Shown::OPENING_TOLERANCE_MS`].
    PreQueue {
        opens_at_ms: u64,
    },
    /// Pre-queued while the opening draw places everyone.
    Drawing,
    Admitted,
    Closed,
}

impl Shown {
    /// Two readings of one opening differ by the time between the clock
    /// readings they were computed with; a moved opening by more.
    const OPENING_TOLERANCE_MS: u64 = 1000;

    fn of(state: &PlaceState, now_ms: u64) -> Self {
        match *state {
            PlaceState::Waiting { position } => Self::Waiting { position },
            PlaceState::PreQueue { opens_in_ms: 0 } => Self::Drawing,
            PlaceState::PreQueue { opens_in_ms } => Self::PreQueue {
                opens_at_ms: now_ms + opens_in_ms,
            },
            PlaceState::Admitted(_) => Self::Admitted,
            PlaceState::Closed => Self::Closed,
        }
    }

    fn differs_from(self, last: Self) -> bool {
        match (self, last) {
            (Self::PreQueue { opens_at_ms: a }, Self::PreQueue { opens_at_ms: b }) => {
                a.abs_diff(b) > Self::OPENING_TOLERANCE_MS
            }
            _ => self != last,
        }
    }
}

impl View {
    fn of(place: &Place, now_ms: u64) -> Self {
        Self {
            state: Shown::of(&place.state, now_ms),
            waiting_count: place.waiting_count,
            mode: place.mode,
            estimated_wait: place.estimated_wait(),
        }
    }

    fn differs_from(&self, last: &View) -> bool {
        self.state.differs_from(last.state)
            || self.waiting_count != last.waiting_count
            || self.mode != last.mode
            || self.estimated_wait != last.estimated_wait
    }
}

struct Watcher {
    /// The user's ticket; `None` while pre-queued.
    ticket: Option<u64>,
    last: View,
    /// The stream's end holds the user and the latest place.
    tx: PlaceSender,
    _slot: StreamSlot,
}

/// Counts an open stream, on the instance and in its queue, for as long as
/// its watcher lives.
struct StreamSlot {
    instance: Arc<AtomicUsize>,
    queue: Arc<AtomicUsize>,
}

impl StreamSlot {
    /// The permit's place on the instance, now also counted in its queue.
    fn new(permit: StreamPermit, queue: &Arc<AtomicUsize>) -> Self {
        queue.fetch_add(1, Ordering::Relaxed);
        let instance = Arc::clone(&permit.instance);
        // The instance count passes to the slot, which gives it back.
        std::mem::forget(permit);
        Self {
            instance,
            queue: Arc::clone(queue),
        }
    }
}

/// A stream counted against the instance's limit before its first place is
/// read, so concurrent openings cannot together pass the limit. Given back
/// when dropped, unless it became a stream.
pub struct StreamPermit {
    instance: Arc<AtomicUsize>,
}

impl Drop for StreamPermit {
    fn drop(&mut self) {
        self.instance.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.instance.fetch_sub(1, Ordering::Relaxed);
        self.queue.fetch_sub(1, Ordering::Relaxed);
    }
}

#[derive(Default)]
struct QueueWatch {
    watchers: Mutex<Vec<Watcher>>,
    wake: Notify,
    /// Streams open on this queue, including those being refreshed.
    open: Arc<AtomicUsize>,
    /// The copy of the line, written by the queue's task, read by lookups.
    copy: RwLock<Copy>,
    /// Changes to the line made through this instance so far.
    changes: AtomicU64,
    /// Reads of the line begun so far.
    reads: AtomicU64,
    /// The creation time of the queue the pollers' tickets are of; 0 until
    /// the first snapshot.
    epoch_ms: AtomicU64,
    pollers: Mutex<Pollers>,
    /// The queue's heartbeat timeout as of the last refresh; 0 until then,
    /// and after a configuration change made here until it is read again.
    heartbeat_ms: AtomicU64,
}

impl QueueWatch {
    // A panic elsewhere while holding these leaves data that is still
    // whole (every update is a single assignment or insert), so a poisoned
    // lock is used as it is.
    fn copy(&self) -> RwLockReadGuard<'_, Copy> {
        self.copy.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn copy_mut(&self) -> RwLockWriteGuard<'_, Copy> {
        self.copy.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn pollers(&self) -> std::sync::MutexGuard<'_, Pollers> {
        self.pollers.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Pushes place changes to `WatchRank` streams.
pub struct WatchHub {
    store: Arc<dyn QueueStore>,
    clock: Arc<dyn Clock>,
    interval: Duration,
    queues: Mutex<HashMap<QueueId, Arc<QueueWatch>>>,
    shutdown: CancellationToken,
    /// Streams open on this instance.
    open: Arc<AtomicUsize>,
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
            queues: Mutex::new(HashMap::new()),
            shutdown,
            open: Arc::new(AtomicUsize::new(0)),
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

    /// Opens a stream of a user's place that starts with `first`. The stream
    /// ends after a final place (admitted or closed), or with an error.
    pub fn watch(
        self: &Arc<Self>,
        permit: StreamPermit,
        queue: QueueId,
        user: UserId,
        first: Place,
    ) -> PlaceReceiver {
        let last = View::of(&first, self.clock.now_ms());
        let ticket = Some(first.ticket).filter(|t| *t > 0);
        let is_final = first.is_final();
        let (tx, rx) = slot::link(user, Ok(first));
        if is_final || self.shutdown.is_cancelled() {
            return rx;
        }
        let Ok(mut queues) = self.queues.lock() else {
            let _ = tx.send(Err(Error::Internal("watch hub lock poisoned".into())));
            return rx;
        };
        let watch = self.follow(&mut queues, &queue);
        if let Ok(mut watchers) = watch.watchers.lock() {
            let slot = StreamSlot::new(permit, &watch.open);
            watchers.push(Watcher {
                ticket,
                last,
                tx,
                _slot: slot,
            });
        }
        rx
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

    /// The queue's entry, if this instance follows it.
    fn followed(&self, queue: &QueueId) -> Option<Arc<QueueWatch>> {
        self.queues.lock().ok()?.get(queue).cloned()
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

    async fn run(self: Arc<Self>, queue: QueueId, watch: Arc<QueueWatch>) {
        let mut failures = 0u32;
        let mut presence = Presence::new();
        // Reads begin at a steady pace, however long each takes, so the
        // copy is never much older than the interval.
        let mut ticks = tokio::time::interval(self.interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = watch.wake.notified() => {}
                _ = self.shutdown.cancelled() => {
                    let watchers = take(&watch);
                    // Told to reconnect: the timeout runs from now.
                    let mut users: Vec<UserId> = watchers.iter().map(|w| w.tx.user().clone()).collect();
                    users.extend(watch.pollers().take_unrecorded());
                    let _ = self.store.touch(&queue, &users, self.clock.now_ms()).await;
                    let reason = Error::Unavailable("server shutting down; reconnect to keep watching".into());
                    end_all(watchers, &reason);
                    return;
                }
            }
            let mut watchers = take(&watch);
            let now = self.clock.now_ms();
            // A stream that just dropped counts as a last sign of life, so a
            // reconnect has the whole heartbeat timeout from the drop.
            let dropped: Vec<UserId> = watchers
                .iter()
                .filter(|w| w.tx.is_closed())
                .map(|w| w.tx.user().clone())
                .collect();
            if !dropped.is_empty() {
                let _ = self.store.touch(&queue, &dropped, now).await;
                watchers.retain(|w| !w.tx.is_closed());
            }
            if watchers.is_empty() && watch.pollers().is_empty() {
                if self.retire(&queue, &watch) {
                    return;
                }
                continue;
            }
            presence
                .record(
                    self.store.as_ref(),
                    self.clock.as_ref(),
                    &queue,
                    &watchers,
                    &watch,
                )
                .await;
            let survivors = match self.refresh(&queue, &watch, &mut watchers, now).await {
                Ok(()) => {
                    failures = 0;
                    let mut pollers = watch.pollers();
                    if let Some(line) = &watch.copy().line {
                        pollers.prune(line, now);
                    }
                    watchers
                }
                Err(error @ Error::QueueNotFound(_)) => {
                    watch.copy_mut().reset();
                    *watch.pollers() = Pollers::default();
                    end_all(watchers, &error);
                    Vec::new()
                }
                Err(error) => {
                    watch.copy_mut().reset();
                    failures += 1;
                    if failures >= MAX_FAILED_REFRESHES {
                        end_all(watchers, &error);
                        Vec::new()
                    } else {
                        watchers
                    }
                }
            };
            // Streams opened meanwhile join the survivors' vector, not the
            // other way round, so the vector of every watcher is kept rather
            // than copied into a new one at each refresh.
            if let Ok(mut current) = watch.watchers.lock() {
                let mut survivors = survivors;
                survivors.append(&mut current);
                *current = survivors;
            }
        }
    }

    /// Brings the copy of the line up to date, then sends each watcher its
    /// place if it changed. Keeps in `watchers` those still watching.
    async fn refresh(
        &self,
        queue: &QueueId,
        watch: &QueueWatch,
        watchers: &mut Vec<Watcher>,
        now: u64,
    ) -> Result<()> {
        // Changes made here before this point are in what is read below.
        let changes_before = watch.changes.load(Ordering::Acquire);
        // Pre-queued watchers (no ticket yet) by user, built at the first
        // log entry that names one: the draw logs every pre-queued user.
        let mut unplaced: Option<HashMap<UserId, Vec<usize>>> = None;
        // Catch up with the log; a copy that fell behind what the log keeps
        // starts again from a snapshot. Reads happen outside the lock, so
        // lookups go on meanwhile.
        let mut from_snapshot = false;
        for _ in 0..MAX_CATCH_UP_READS {
            let seq = watch.copy().line.as_ref().map(|line| line.seq);
            let seq = match seq {
                Some(seq) => seq,
                None => {
                    from_snapshot = true;
                    let snapshot = self.snapshot(queue).await?;
                    let epoch_ms = snapshot.epoch_ms;
                    let previous = watch.epoch_ms.swap(epoch_ms, Ordering::AcqRel);
                    if previous != 0 && previous != epoch_ms {
                        // The queue was created again: every ticket known
                        // is of the old one.
                        *watch.pollers() = Pollers::default();
                        for watcher in watchers.iter_mut().filter(|w| w.ticket.is_some()) {
                            watcher.ticket = Some(0);
                        }
                    }
                    let line = Line::from_snapshot(snapshot);
                    let seq = line.seq;
                    watch.copy_mut().line = Some(line);
                    seq
                }
            };
            // The moment the copy is as of, for lookups: the summary's
            // rate is computed for it, and the log is read after it.
            let read_ms = self.clock.now_ms();
            let read_at = std::time::Instant::now();
            let read_no = watch.reads.fetch_add(1, Ordering::AcqRel) + 1;
            let changes = self
                .store
                .line_changes(queue, seq, CHANGES_PER_READ, read_ms)
                .await?;
            let mut copy = watch.copy_mut();
            if !changes.complete {
                copy.reset();
                continue;
            }
            let Some(current) = copy.line.as_mut() else {
                continue;
            };
            if changes.summary.epoch_ms != watch.epoch_ms.load(Ordering::Acquire) {
                // The queue was created again: a new snapshot (which drops
                // what was known of the old one).
                copy.reset();
                continue;
            }
            for (seq, event) in changes.events {
                current.seq = seq;
                let (user, ticket) = match event {
                    LineEvent::Joined { ticket, user } => {
                        current.join(ticket);
                        // A pre-queued watcher placed by the opening draw.
                        (user, ticket)
                    }
                    LineEvent::Left { ticket, .. } => {
                        current.leave(ticket);
                        continue;
                    }
                    // Looked up below: gone, or elsewhere.
                    LineEvent::PreQueueLeft { user } => (user, 0),
                };
                let unplaced = unplaced.get_or_insert_with(|| unplaced_watchers(watchers));
                if !unplaced.is_empty()
                    && let Some(found) = unplaced.remove(&user)
                {
                    for i in found {
                        watchers[i].ticket = Some(ticket);
                    }
                }
            }
            let caught_up = current.seq >= changes.summary.seq;
            watch
                .heartbeat_ms
                .store(changes.summary.heartbeat_ms, Ordering::Relaxed);
            copy.summary = Some(changes.summary);
            copy.read_ms = read_ms;
            copy.read_at = Some(read_at);
            copy.read_no = read_no;
            copy.changes_seen = caught_up.then_some(changes_before);
            if caught_up {
                break;
            }
        }
        // A snapshot says nothing of the pre-queue: what happened to a
        // pre-queued watcher before it (placed by the draw, or gone) is
        // only in log entries this copy never read, so they are looked up.
        if from_snapshot {
            for watcher in watchers.iter_mut().filter(|w| w.ticket.is_none()) {
                watcher.ticket = Some(0);
            }
        }

        // Watchers whose ticket left the line: one lookup for all of them.
        let mut gone: Vec<UserId> = {
            let copy = watch.copy();
            let (Some(line), Some(_)) = (&copy.line, &copy.summary) else {
                return Err(Error::Unavailable(
                    "the line log could not be followed".into(),
                ));
            };
            watchers
                .iter()
                .filter(|w| w.ticket.is_some_and(|t| !line.contains(t)))
                .map(|w| w.tx.user().clone())
                .collect()
        };
        gone.sort();
        gone.dedup();
        let looked_up: HashMap<UserId, Option<Place>> = if gone.is_empty() {
            HashMap::new()
        } else {
            let places = self.store.places(queue, &gone, false, now).await?;
            gone.into_iter().zip(places).collect()
        };

        let copy = watch.copy();
        let (Some(line), Some(summary)) = (&copy.line, &copy.summary) else {
            return Err(Error::Unavailable(
                "the line log could not be followed".into(),
            ));
        };
        let in_line = summary.waiting + summary.prequeued;
        let opens_in_ms = match (summary.opened, summary.opens_at_ms) {
            (false, Some(at)) => at.saturating_sub(now),
            _ => 0,
        };
        watchers.retain_mut(|watcher| {
            let place = match watcher.ticket {
                None => Some(Place {
                    state: PlaceState::PreQueue { opens_in_ms },
                    ticket: 0,
                    waiting_count: in_line,
                    mode: summary.mode,
                    rate: summary.rate,
                }),
                Some(ticket) if line.contains(ticket) => line.place(summary, ticket),
                Some(_) => {
                    let found = looked_up.get(watcher.tx.user()).cloned().flatten();
                    // Enqueued again under a new ticket: follow that one.
                    watcher.ticket = found.as_ref().map(|p| p.ticket).filter(|t| *t > 0);
                    found
                }
            };
            offer(watcher, place, queue, now)
        });
        Ok(())
    }

    /// The whole line, read in chunks (see [`crate::domain::LineSnapshot`]),
    /// as of the first chunk.
    async fn snapshot(&self, queue: &QueueId) -> Result<LineSnapshot> {
        let mut snapshot = self.store.line_snapshot(queue, 0, SNAPSHOT_CHUNK).await?;
        let mut last_chunk = snapshot.tickets.len();
        while last_chunk == SNAPSHOT_CHUNK as usize {
            let after = snapshot.tickets.last().copied().unwrap_or(0);
            let chunk = self
                .store
                .line_snapshot(queue, after, SNAPSHOT_CHUNK)
                .await?;
            if chunk.epoch_ms != snapshot.epoch_ms {
                return Err(Error::Unavailable(
                    "the queue was created again while its line was read".into(),
                ));
            }
            last_chunk = chunk.tickets.len();
            snapshot.tickets.extend(chunk.tickets);
        }
        Ok(snapshot)
    }

    /// Removes a queue with no watchers or pollers left; false if one
    /// arrived meanwhile.
    fn retire(&self, queue: &QueueId, watch: &QueueWatch) -> bool {
        let Ok(mut queues) = self.queues.lock() else {
            return true;
        };
        let empty =
            watch.watchers.lock().map_or(true, |w| w.is_empty()) && watch.pollers().is_empty();
        if empty {
            queues.remove(queue);
        }
        empty
    }
}

/// Records the presence of a queue's watchers and pollers. Times are the
/// injected clock's, like the heartbeat timeout they are held to.
struct Presence {
    recorded_at_ms: Option<u64>,
}

impl Presence {
    fn new() -> Self {
        Self {
            recorded_at_ms: None,
        }
    }

    /// Records the watchers when they are due (every third of the heartbeat
    /// timeout the last refresh read, so a shortened timeout is followed
    /// within a refresh), and the pollers answered here since the last call
    /// (each poll is a sign of life of its own).
    async fn record(
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

fn take(watch: &QueueWatch) -> Vec<Watcher> {
    watch
        .watchers
        .lock()
        .map(|mut w| std::mem::take(&mut *w))
        .unwrap_or_default()
}

/// The indices of the watchers without a ticket (pre-queued), by user.
fn unplaced_watchers(watchers: &[Watcher]) -> HashMap<UserId, Vec<usize>> {
    let mut unplaced: HashMap<UserId, Vec<usize>> = HashMap::new();
    for (i, watcher) in watchers.iter().enumerate() {
        if watcher.ticket.is_none() {
            unplaced
                .entry(watcher.tx.user().clone())
                .or_default()
                .push(i);
        }
    }
    unplaced
}

/// Sends a watcher its place if what the user sees changed; true if the
/// watcher keeps watching (not after a final place, a vanished place, or a
/// client that went away).
fn offer(watcher: &mut Watcher, place: Option<Place>, queue: &QueueId, now_ms: u64) -> bool {
    let Some(place) = place else {
        let _ = watcher
            .tx
            .send(Err(Error::PlaceNotFound(queue.to_string())));
        return false;
    };
    let view = View::of(&place, now_ms);
    if !view.differs_from(&watcher.last) {
        return true;
    }
    // A final place ends the stream: the watcher is dropped with its
    // sender, after the place is read.
    let is_final = place.is_final();
    if watcher.tx.send(Ok(place)).is_ok() && !is_final {
        watcher.last = view;
        return true;
    }
    false
}

fn end_all(watchers: Vec<Watcher>, error: &Error) {
    let error = match error {
        Error::QueueNotFound(_) | Error::PlaceNotFound(_) => error.clone(),
        other => Error::Unavailable(other.to_string()),
    };
    for watcher in watchers {
        let _ = watcher.tx.send(Err(error.clone()));
    }
}

#[cfg(test)]
mod tests {
    use tokio_stream::StreamExt;

    use super::*;
    use crate::domain::{QueueConfig, SystemClock};
    use crate::store::MemoryStore;

    #[tokio::test]
    async fn a_stream_whose_client_went_away_is_dropped_and_its_queue_task_ends() {
        let store = Arc::new(MemoryStore::new());
        let queue = QueueId::parse("q").unwrap();
        store
            .create_queue(&QueueConfig::new(queue.clone()))
            .await
            .unwrap();
        let user = UserId::parse("u").unwrap();
        let first = store.enqueue(&queue, &user, 0).await.unwrap();
        let hub = WatchHub::new(
            store,
            Arc::new(SystemClock),
            Duration::from_millis(10),
            CancellationToken::new(),
        );
        let permit = hub.reserve_stream(1).unwrap();
        let mut stream = hub.watch(permit, queue.clone(), user.clone(), first);
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

    #[tokio::test]
    async fn shutdown_ends_open_streams_with_unavailable() {
        let store = Arc::new(MemoryStore::new());
        let queue = QueueId::parse("q").unwrap();
        store
            .create_queue(&QueueConfig::new(queue.clone()))
            .await
            .unwrap();
        let user = UserId::parse("u").unwrap();
        let first = store.enqueue(&queue, &user, 0).await.unwrap();
        let shutdown = CancellationToken::new();
        let hub = WatchHub::new(
            store,
            Arc::new(SystemClock),
            Duration::from_secs(60),
            shutdown.clone(),
        );
        let permit = hub.reserve_stream(1).unwrap();
        let mut stream = hub.watch(permit, queue, user, first);
        assert!(stream.next().await.is_some());
        shutdown.cancel();
        let last = tokio::time::timeout(Duration::from_secs(1), stream.next())
            .await
            .unwrap();
        assert!(matches!(last, Some(Err(Error::Unavailable(_)))));
        assert!(stream.next().await.is_none());
    }
}
