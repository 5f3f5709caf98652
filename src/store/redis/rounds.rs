//! Reads of a queue's places over its sub-lines, shared by the batches that
//! ask at once.
//!
//! Each sub-line coalesces its own joins and lookups (`batch.rs`), and each
//! such batch then reads its places over every sub-line and the head: K + 1
//! calls, made at once. Batches of K sub-lines finishing together would
//! make K × (K + 1) calls for what one round of K + 1 answers. So a batch
//! asks its round: the first to find no read under way reads for everyone
//! who asked until then, and those who asked meanwhile wait for the next
//! read, made for all of them. Every read starts after the calls of the batches it answers,
//! so each place is still read as the call left the line.
//!
//! A reader does not start at once while calls on the queue's other
//! sub-lines are in flight and will ask in a moment: it waits for them, for
//! at most [`GATHER`], so that in a burst, where every sub-line's batch is in
//! flight at once, one read answers them all rather than every other one.
//!
//! A sub-line whose joins come faster than its calls carry them is not
//! asked apart: the read of its part rides on its lane's next join call
//! (`enqueue_many.lua`, COUNT), sent after the calls the read answers as a
//! read of its own would be, which saves the read's call on each sub-line
//! with a full call waiting.
//! A lane waits for its last call's places before its next call, as it
//! always did; a rider coming meanwhile has the next call sent at once
//! when a full call is waiting, and is dropped otherwise (the reader then
//! asks the sub-line itself). A reader waits for a rider an eighth of the
//! timeout at most.
//!
//! A round also keeps what it last read of the head and of each sub-line.
//! A part that does not answer (its primary lost, until its replica takes
//! over) is counted as last read, for at most [`LAST_KEEP`], so joins and
//! lookups on the other sub-lines go on being answered, their positions
//! off by what changed on that sub-line since. A part read before is
//! waited for a quarter of the timeout (its call, given up then, trips no
//! breaker: a slow part is not a dead one), and not at all while the
//! breaker holds its calls back, so a dead one does not hold the round
//! past its callers' own deadline.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use tokio::sync::{Notify, oneshot};

use super::sub_lines::{Layout, LineView, Part, Sample, SubLineLink};
use crate::domain::{DrawHold, QueueId};
use crate::{Error, Result};

/// Each queue's round of reads.
#[derive(Default)]
pub(super) struct Rounds {
    queues: Mutex<HashMap<QueueId, Arc<Round>>>,
}

#[derive(Default)]
struct Round {
    asked: Mutex<Vec<Ask>>,
    /// Calls on the queue's sub-lines that will ask for a read and have not
    /// asked yet (each a [`Coming`]).
    coming: AtomicUsize,
    /// Told whenever one of them asks, or ends without asking.
    came: Notify,
    /// Held by the batch reading for the round.
    reading: tokio::sync::Mutex<()>,
    last: Mutex<Last>,
    /// Each sub-line's join lane, for a read to ride on.
    lanes: Mutex<Vec<Lane>>,
    /// Parts read by a call they rode on.
    #[cfg(any(test, feature = "testkit"))]
    rides: AtomicUsize,
}

/// A sub-line's join lane as a read sees it.
#[derive(Default)]
struct Lane {
    /// Its last join call's places are being read, or its next call,
    /// sent with a full one waiting behind it, is under way: a rider goes
    /// with its next call if that is full.
    busy: bool,
    rider: Option<Rider>,
    /// Told when a rider comes, for a lane that waits for one.
    rode: Arc<Notify>,
}

/// A read of one sub-line's part for a round, riding on that sub-line's
/// next join call.
pub(super) struct Rider {
    pub(super) layout: Layout,
    pub(super) tickets: Vec<u64>,
    answer: oneshot::Sender<Part>,
}

impl Rider {
    /// Hands the part its call read to the round's reader.
    pub(super) fn answer(self, part: Part) {
        let _ = self.answer.send(part);
    }
}

/// How long a part last read stands in for one that does not answer: a
/// failover's time, not an outage's.
pub(super) const LAST_KEEP: Duration = Duration::from_secs(60);

/// How long a reader waits for the calls in flight that will ask: about
/// what a burst's batch of a few hundred users keeps a sub-line busy.
const GATHER: Duration = Duration::from_millis(2);

/// How long reads count a sub-line that kept one waiting a quarter of the
/// timeout as last read without asking it again.
const SLOW_SKIP: Duration = Duration::from_secs(1);

/// Why a read counted a part as last read: it kept the read waiting.
const GAVE_UP: &str = "no answer in time for this read";

/// A sub-line's part as last read: when, and the tickets it was read for
/// (shared by the parts of one read).
type KeptPart = (Instant, Arc<[u64]>, Part);

/// What a round last read, for a part that does not answer.
#[derive(Default)]
struct Last {
    layout: Option<Layout>,
    head: Option<(Instant, Sample)>,
    parts: Vec<Option<KeptPart>>,
    /// Until when each sub-line that kept a read waiting is not asked.
    slow: Vec<Option<Instant>>,
}

impl Last {
    /// The head's sample last read for `layout`, if young enough to stand
    /// in.
    fn head(&self, layout: &Layout) -> Option<Sample> {
        let (read, sample) = self.head.filter(|_| self.layout.as_ref() == Some(layout))?;
        (read.elapsed() < LAST_KEEP).then_some(sample)
    }

    fn part(&self, layout: &Layout, sub_line: usize) -> Option<&KeptPart> {
        let part = self.parts.get(sub_line)?.as_ref()?;
        (self.layout.as_ref() == Some(layout) && part.0.elapsed() < LAST_KEEP).then_some(part)
    }

    /// Whether sub-line `sub_line`'s last read of `layout` can stand in:
    /// `Some(slow)`, `slow` when it kept a read waiting less than
    /// [`SLOW_SKIP`] ago.
    fn standing(&self, layout: &Layout, sub_line: usize) -> Option<bool> {
        self.part(layout, sub_line)?;
        let until = self.slow.get(sub_line).copied().flatten();
        Some(until.is_some_and(|until| Instant::now() < until))
    }

    /// Sub-line `sub_line`'s last read of `layout` counted for `tickets`:
    /// each at the closest ticket read at or below it (0 below them all).
    fn counted(&self, layout: &Layout, sub_line: usize, tickets: &[u64]) -> Option<Part> {
        let (_, read, part) = self.part(layout, sub_line)?;
        Some(Part {
            in_line: part.in_line,
            prequeued: part.prequeued,
            held: part.held,
            sample: part.sample,
            below: tickets
                .iter()
                .map(|ticket| match read.partition_point(|t| t <= ticket) {
                    0 => 0,
                    i => part.below.get(i - 1).copied().unwrap_or(0),
                })
                .collect(),
        })
    }

    /// Keeps what a read for `tickets` got: the head's sample, each part
    /// read, and which sub-lines kept it waiting.
    fn keep(
        &mut self,
        layout: &Layout,
        tickets: &[u64],
        head: Option<Sample>,
        parts: Vec<(Option<Part>, bool)>,
    ) {
        if self.layout.as_ref() != Some(layout) {
            *self = Self::default();
            self.layout = Some(layout.clone());
        }
        let now = Instant::now();
        if let Some(head) = head {
            self.head = Some((now, head));
        }
        let tickets: Arc<[u64]> = tickets.into();
        let len = parts.len().max(self.parts.len());
        self.parts.resize(len, None);
        self.slow.resize(len, None);
        for ((kept, slow), (part, waited)) in self.parts.iter_mut().zip(&mut self.slow).zip(parts) {
            if let Some(part) = part {
                *kept = Some((now, Arc::clone(&tickets), part));
                *slow = None;
            } else if waited {
                *slow = Some(now + SLOW_SKIP);
            }
        }
    }
}

struct Ask {
    layout: Layout,
    probes: Vec<u64>,
    now_ms: u64,
    answer: oneshot::Sender<Result<LineView>>,
}

/// A call on a queue's sub-lines that will ask the queue's round for a
/// read of its places: counted from before the call is sent until it asks
/// (or ends without asking), so a reader waits for it.
pub(super) struct Coming(Option<Arc<Round>>);

impl Drop for Coming {
    fn drop(&mut self) {
        if let Some(round) = self.0.take() {
            round.coming.fetch_sub(1, Ordering::AcqRel);
            round.came.notify_waiters();
        }
    }
}

impl Round {
    /// A read of sub-line `sub_line`'s part for `tickets` riding on its
    /// lane's next join call, if the lane has one coming: its answer, or
    /// closed when the lane does not carry it after all.
    fn ride(
        &self,
        sub_line: usize,
        layout: &Layout,
        tickets: &[u64],
    ) -> Option<oneshot::Receiver<Part>> {
        let mut lanes = self.lanes.lock().ok()?;
        let lane = lanes.get_mut(sub_line)?;
        let taken = lane.rider.as_ref().is_some_and(|r| !r.answer.is_closed());
        if !lane.busy || taken {
            return None;
        }
        let (answer, answered) = oneshot::channel();
        lane.rider = Some(Rider {
            layout: layout.clone(),
            tickets: tickets.to_vec(),
            answer,
        });
        lane.rode.notify_one();
        Some(answered)
    }

    /// Waits, for at most `most`, until no call that will ask is in flight.
    async fn gathered(&self, most: Duration) {
        let until = tokio::time::Instant::now() + most;
        loop {
            let came = self.came.notified();
            let mut came = std::pin::pin!(came);
            came.as_mut().enable();
            if self.coming.load(Ordering::Acquire) == 0
                || tokio::time::timeout_at(until, came).await.is_err()
            {
                return;
            }
        }
    }
}

impl Rounds {
    /// A call about to be made on `queue`'s sub-lines that will ask for a
    /// read of its places.
    pub(super) fn coming(&self, queue: &QueueId) -> Coming {
        let round = self.of(queue);
        if let Some(round) = &round {
            round.coming.fetch_add(1, Ordering::AcqRel);
        }
        Coming(round)
    }

    /// Sub-line `sub_line`'s join lane of `queue` is about to send a call:
    /// the read waiting to ride on it, if any.
    pub(super) fn take_rider(&self, queue: &QueueId, sub_line: usize) -> Option<Rider> {
        self.lane(queue, sub_line, |lane| {
            lane.rider.take().filter(|rider| !rider.answer.is_closed())
        })
        .flatten()
    }

    /// Whether a read may wait for the next call of sub-line `sub_line`'s
    /// join lane of `queue` (`more`): yes while the lane waits for its last
    /// call's places, and through its next call when a full one was
    /// waiting as it went. With no, a rider the lane holds is dropped, and
    /// its reader reads the sub-line itself.
    pub(super) fn lane_after(&self, queue: &QueueId, sub_line: usize, more: bool) {
        self.lane(queue, sub_line, |lane| {
            lane.busy = more;
            if !more {
                lane.rider = None;
            }
        });
    }

    /// Waits until `read` (the places of sub-line `sub_line`'s lane's last
    /// join call) ends, or until a read comes to ride on the lane's next
    /// call while `next` says it has one to make. A rider that finds
    /// nothing to ride on is dropped, and no other comes until the lane's
    /// next call: its reader reads the sub-line itself.
    pub(super) async fn rider_or(
        &self,
        queue: &QueueId,
        sub_line: usize,
        read: impl Future,
        next: impl Fn() -> bool,
    ) {
        let Some(rode) = self.lane(queue, sub_line, |lane| Arc::clone(&lane.rode)) else {
            read.await;
            return;
        };
        let mut read = std::pin::pin!(read);
        loop {
            tokio::select! {
                _ = &mut read => return,
                () = rode.notified() => {}
            }
            // A wake-up left by a rider since taken, dropped or given up
            // is not one.
            let waiting = |lane: &mut Lane| {
                lane.rider
                    .as_ref()
                    .is_some_and(|rider| !rider.answer.is_closed())
            };
            if self.lane(queue, sub_line, waiting) == Some(false) {
                continue;
            }
            if next() {
                return;
            }
            self.lane_after(queue, sub_line, false);
            read.await;
            return;
        }
    }

    /// Runs `f` on sub-line `sub_line`'s lane of `queue`'s round, if the
    /// queue has one: a lane makes none, so a made-up or deleted queue's
    /// lane leaves nothing behind.
    fn lane<T>(
        &self,
        queue: &QueueId,
        sub_line: usize,
        f: impl FnOnce(&mut Lane) -> T,
    ) -> Option<T> {
        let round = Arc::clone(self.queues.lock().ok()?.get(queue)?);
        let mut lanes = round.lanes.lock().ok()?;
        if lanes.len() <= sub_line {
            lanes.resize_with(sub_line + 1, Lane::default);
        }
        Some(f(&mut lanes[sub_line]))
    }

    /// Drops what the queue's round last read: the queue was deleted, and
    /// one made again under its name must not be counted as the old one.
    pub(super) fn forget(&self, queue: &QueueId) {
        if let Ok(mut queues) = self.queues.lock() {
            queues.remove(queue);
        }
    }

    /// How many parts of `queue`'s reads rode on a join call.
    #[cfg(feature = "testkit")]
    pub(super) fn rides(&self, queue: &QueueId) -> usize {
        self.queues
            .lock()
            .ok()
            .and_then(|queues| {
                queues
                    .get(queue)
                    .map(|round| round.rides.load(Ordering::Relaxed))
            })
            .unwrap_or(0)
    }

    fn of(&self, queue: &QueueId) -> Option<Arc<Round>> {
        let mut queues = self.queues.lock().ok()?;
        Some(Arc::clone(queues.entry(queue.clone()).or_default()))
    }
}

impl SubLineLink<'_> {
    /// The line over `layout` as it stands after the caller's call (the
    /// call `coming` counted): the waiting at or below each of `probes`
    /// (sorted, distinct), read in the queue's next round.
    pub(super) async fn shared_view(
        &self,
        layout: &Layout,
        probes: Vec<u64>,
        now_ms: u64,
        coming: Coming,
    ) -> Result<LineView> {
        let round = self.rounds.of(self.queue);
        let Some(round) = round else {
            return self.view(layout, &probes, now_ms).await;
        };
        let (answer, mut answered) = oneshot::channel();
        let ask = Ask {
            layout: layout.clone(),
            probes: probes.clone(),
            now_ms,
            answer,
        };
        let pushed = match round.asked.lock() {
            Ok(mut asked) => {
                asked.push(ask);
                true
            }
            Err(_) => false,
        };
        drop(coming);
        if !pushed {
            return self.view(layout, &probes, now_ms).await;
        }
        let reading = round.reading.lock().await;
        match answered.try_recv() {
            Ok(view) => return view,
            Err(oneshot::error::TryRecvError::Empty) => {}
            // The reader that took the ask was dropped before it answered
            // (its caller gave up): the ask went with it, so read alone,
            // leaving the round to the others.
            Err(oneshot::error::TryRecvError::Closed) => {
                drop(reading);
                return self.view(layout, &probes, now_ms).await;
            }
        }
        round.gathered(GATHER).await;
        let taken: Vec<Ask> = match round.asked.lock() {
            Ok(mut asked) => {
                // An ask whose caller went away is dropped, not read for.
                let (same, other): (Vec<Ask>, Vec<Ask>) = asked
                    .drain(..)
                    .filter(|ask| !ask.answer.is_closed())
                    .partition(|ask| ask.layout == *layout);
                *asked = other;
                same
            }
            Err(_) => Vec::new(),
        };
        let mut merged: Vec<u64> = taken
            .iter()
            .flat_map(|ask| ask.probes.iter().copied())
            .collect();
        merged.sort_unstable();
        merged.dedup();
        let now_ms = taken.iter().map(|ask| ask.now_ms).max().unwrap_or(now_ms);
        let read = self.view_or_last(&round, layout, &merged, now_ms).await;
        for ask in taken {
            let view = read.as_ref().map_err(Clone::clone).map(|view| LineView {
                in_line: view.in_line,
                prequeued: view.prequeued,
                held: view.held,
                below: ask
                    .probes
                    .iter()
                    .map(|p| merged.binary_search(p).map_or(0, |i| view.below[i]))
                    .collect(),
                sample: view.sample,
            });
            let _ = ask.answer.send(view);
        }
        answered.try_recv().unwrap_or_else(|_| {
            Err(crate::Error::Internal(
                "a round left its reader unanswered".into(),
            ))
        })
    }
}

impl SubLineLink<'_> {
    /// `call`'s answer, given up after a quarter of the timeout when
    /// `stand_in` (a last read can stand in for it). Given up so, the call
    /// trips no breaker: a slow part is not a dead one.
    async fn within<T>(&self, stand_in: bool, call: impl Future<Output = Result<T>>) -> Result<T> {
        if !stand_in {
            return call.await;
        }
        tokio::time::timeout(self.timeout / 4, call)
            .await
            .unwrap_or_else(|_| Err(Error::Unavailable(GAVE_UP.into())))
    }

    /// [`SubLineLink::view`], each part that does not answer counted as
    /// the round last read it (when it has).
    async fn view_or_last(
        &self,
        round: &Round,
        layout: &Layout,
        tickets: &[u64],
        now_ms: u64,
    ) -> Result<LineView> {
        let shards = layout.shards as usize;
        let (head, standing) = match round.last.lock() {
            Ok(last) => (
                last.head(layout),
                (0..shards).map(|s| last.standing(layout, s)).collect(),
            ),
            Err(_) => (None, vec![None; shards]),
        };
        // The head and every sub-line at once; each part as it answered,
        // and whether it kept the read waiting (a rider's wait aside: a
        // lane held up is not a slow sub-line).
        let parts = join_all(
            standing
                .iter()
                .enumerate()
                .map(|(sub_line, standing)| async move {
                    // A sub-line whose calls the breaker holds back, or that kept a
                    // read waiting a moment ago, is not waited for: its own joins
                    // probe it.
                    let skip = match standing {
                        Some(slow) => *slow || self.breaker.holds_back(layout.tag(sub_line)?),
                        None => false,
                    };
                    if skip {
                        return Ok((
                            Err(Error::Unavailable(
                                "the sub-line did not answer recently".into(),
                            )),
                            false,
                        ));
                    }
                    // Waited for a moment only: a lane whose call is held
                    // up leaves the read to a call of its own.
                    if let Some(ride) = round.ride(sub_line, layout, tickets)
                        && let Ok(Ok(part)) = tokio::time::timeout(self.timeout / 8, ride).await
                        && part.below.len() == tickets.len()
                    {
                        #[cfg(any(test, feature = "testkit"))]
                        round.rides.fetch_add(1, Ordering::Relaxed);
                        return Ok((Ok(part), false));
                    }
                    let part = self.count_part(layout, sub_line, tickets, now_ms);
                    let answer = self.within(standing.is_some(), part).await;
                    let waited = matches!(&answer, Err(Error::Unavailable(m)) if m == GAVE_UP);
                    Ok::<_, Error>((answer, waited))
                }),
        );
        let (sample_now, parts) =
            tokio::join!(self.within(head.is_some(), self.head_sample(now_ms)), parts);
        let (sample, head_read) = match (sample_now, head) {
            (Ok(sample), _) => (sample, Some(sample)),
            (Err(Error::Unavailable(_)), Some(sample)) => (sample, None),
            (Err(error), _) => return Err(error),
        };
        let mut view = LineView {
            in_line: 0,
            prequeued: 0,
            held: DrawHold::NONE,
            below: vec![0; tickets.len()],
            sample,
        };
        let mut read = Vec::with_capacity(shards);
        for (sub_line, (part, standing)) in parts.into_iter().zip(standing).enumerate() {
            let (answer, waited) = part?;
            match (answer, standing) {
                (Ok(part), _) => {
                    view.add(&part);
                    read.push((Some(part), false));
                }
                (Err(error @ Error::Unavailable(_)), Some(_)) => {
                    let last = round.last.lock().ok();
                    match last.and_then(|last| last.counted(layout, sub_line, tickets)) {
                        Some(part) => view.add(&part),
                        None => return Err(error),
                    }
                    read.push((None, waited));
                }
                (Err(error), _) => return Err(error),
            }
        }
        if let Ok(mut last) = round.last.lock() {
            last.keep(layout, tickets, head_read, read);
        }
        Ok(view)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::domain::{PlaceState, UserId};
    use crate::store::QueueStore;
    use crate::testkit::RedisServer;

    /// Asserts that the calls since `before` were one read: each sub-line
    /// and the head once.
    fn one_read_since(redis: &RedisServer, before: u64, layout: &Layout) {
        assert_eq!(
            redis.calls("evalsha").unwrap() - before,
            u64::from(layout.shards) + 1,
            "one read (each sub-line and the head once) for the three"
        );
    }

    #[tokio::test]
    async fn a_part_read_too_long_ago_no_longer_stands_in() {
        let layout = Layout::new(&QueueId::parse("sale").unwrap(), 2, |_| 0);
        let part = Part {
            in_line: 3,
            prequeued: 0,
            held: DrawHold::NONE,
            sample: Sample::default(),
            below: vec![3],
        };
        let mut last = Last::default();
        last.keep(
            &layout,
            &[7],
            None,
            vec![(Some(part), false), (None, false)],
        );
        assert_eq!(last.standing(&layout, 0), Some(false));
        assert_eq!(
            last.counted(&layout, 0, &[9]).map(|p| p.below),
            Some(vec![3])
        );
        assert_eq!(last.standing(&layout, 1), None, "never read");
        let long_ago = Instant::now().checked_sub(LAST_KEEP).unwrap();
        last.parts[0].as_mut().unwrap().0 = long_ago;
        assert_eq!(last.standing(&layout, 0), None);
        assert!(last.counted(&layout, 0, &[9]).is_none());
    }

    #[tokio::test]
    async fn deleting_a_queue_drops_what_its_round_last_read() {
        let redis = RedisServer::start().unwrap_or_else(|e| panic!("{e}"));
        let (store, queue) = super::super::tests::over_three_sub_lines(&redis).await;
        let user = UserId::parse("someone").unwrap();
        store.enqueue(&queue, &user, 1_000).await.unwrap();
        assert!(store.rounds.queues.lock().unwrap().contains_key(&queue));
        store.delete_queue(&queue).await.unwrap();
        assert!(!store.rounds.queues.lock().unwrap().contains_key(&queue));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_read_that_gives_up_on_a_slow_part_trips_no_breaker() {
        let redis = RedisServer::start().unwrap_or_else(|e| panic!("{e}"));
        let (store, queue) = super::super::tests::over_three_sub_lines(&redis).await;
        let user = UserId::parse("someone").unwrap();
        let ticket = store.enqueue(&queue, &user, 1_000).await.unwrap().ticket;
        let link = store.link(&queue);
        let layout = link.layout().await.unwrap();
        // Redis slower than a quarter of the timeout, not dead: the read
        // counts every part as last read, and holds nothing back.
        redis.pause().unwrap();
        let view = link
            .shared_view(&layout, vec![ticket], 1_000, store.rounds.coming(&queue))
            .await;
        redis.resume().unwrap();
        let view = view.unwrap();
        assert_eq!((view.in_line, view.below), (1, vec![1]));
        assert!(!store.breaker.holds_back(""));
        assert!((0..3).all(|s| !store.breaker.holds_back(layout.tag(s).unwrap())));
    }

    #[tokio::test]
    async fn an_ask_whose_caller_went_away_is_dropped_by_the_next_read() {
        let redis = RedisServer::start().unwrap_or_else(|e| panic!("{e}"));
        let (store, queue) = super::super::tests::over_three_sub_lines(&redis).await;
        let link = store.link(&queue);
        let layout = link.layout().await.unwrap();
        let round = store.rounds.of(&queue).unwrap();
        // Asked under a layout read before the queue was made again with
        // another number of sub-lines, by a caller that went away.
        let (answer, gone) = oneshot::channel();
        drop(gone);
        round.asked.lock().unwrap().push(Ask {
            layout: Layout::new(&queue, 2, |_| 0),
            probes: vec![1],
            now_ms: 0,
            answer,
        });
        link.shared_view(&layout, vec![1], 1_000, store.rounds.coming(&queue))
            .await
            .unwrap();
        assert!(round.asked.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn batches_that_ask_while_a_read_is_under_way_share_the_next_read() {
        let redis = RedisServer::start().unwrap_or_else(|e| panic!("{e}"));
        let (store, queue) = super::super::tests::over_three_sub_lines(&redis).await;
        let mut tickets = Vec::new();
        for i in 0..12 {
            let user = UserId::parse(&format!("user-{i}")).unwrap();
            tickets.push(store.enqueue(&queue, &user, 1_000).await.unwrap().ticket);
        }
        tickets.sort_unstable();
        let link = store.link(&queue);
        let layout = link.layout().await.unwrap();
        let alone = link.view(&layout, &tickets, 1_000).await.unwrap();

        // A read under way: three batches ask meanwhile.
        let round = store.rounds.of(&queue).unwrap();
        let reading = round.reading.lock().await;
        let before = redis.calls("evalsha").unwrap();
        let asks = [
            vec![tickets[0]],
            vec![tickets[3], tickets[11]],
            vec![tickets[3]],
        ];
        let views = async {
            tokio::join!(
                link.shared_view(&layout, asks[0].clone(), 1_000, store.rounds.coming(&queue)),
                link.shared_view(&layout, asks[1].clone(), 1_000, store.rounds.coming(&queue)),
                link.shared_view(&layout, asks[2].clone(), 1_000, store.rounds.coming(&queue)),
            )
        };
        // Bounded, so a round that never asks fails the test, not hangs it.
        let release = async {
            for _ in 0..1_000 {
                if round.asked.lock().unwrap().len() == 3 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            drop(reading);
        };
        let ((a, b, c), ()) = tokio::join!(views, release);
        for (ask, view) in asks.iter().zip([a, b, c]) {
            let view = view.unwrap();
            assert_eq!(view.in_line, alone.in_line);
            let expected: Vec<u64> = ask
                .iter()
                .map(|t| alone.below[tickets.binary_search(t).unwrap()])
                .collect();
            assert_eq!(view.below, expected, "the counts asked for {ask:?}");
        }
        one_read_since(&redis, before, &layout);
    }

    #[tokio::test]
    async fn a_reader_waits_for_the_calls_in_flight_and_reads_once_for_them_all() {
        let redis = RedisServer::start().unwrap_or_else(|e| panic!("{e}"));
        let (store, queue) = super::super::tests::over_three_sub_lines(&redis).await;
        let mut tickets = Vec::new();
        for i in 0..3 {
            let user = UserId::parse(&format!("user-{i}")).unwrap();
            tickets.push(store.enqueue(&queue, &user, 1_000).await.unwrap().ticket);
        }
        let link = store.link(&queue);
        let layout = link.layout().await.unwrap();
        // Three sub-lines' calls in flight at once, as in a burst; the
        // first to ask finds no read under way.
        let coming = [(); 3].map(|()| store.rounds.coming(&queue));
        let before = redis.calls("evalsha").unwrap();
        let [a, b, c] = coming;
        let (a, b, c) = tokio::join!(
            link.shared_view(&layout, vec![tickets[0]], 1_000, a),
            link.shared_view(&layout, vec![tickets[1]], 1_000, b),
            link.shared_view(&layout, vec![tickets[2]], 1_000, c),
        );
        for view in [a, b, c] {
            assert_eq!(view.unwrap().in_line, 3);
        }
        one_read_since(&redis, before, &layout);
    }

    /// A user of `queue` on sub-line `sub_line` of `layout`.
    fn user_on(layout: &Layout, sub_line: usize, name: &str) -> UserId {
        (0..)
            .map(|i| UserId::parse(&format!("{name}-{i}")).unwrap())
            .find(|user| layout.sub_line(user) == sub_line)
            .unwrap()
    }

    /// Waits, bounded, until sub-line `sub_line`'s lane holds a rider.
    async fn rider_waiting(round: &Round, sub_line: usize) {
        for _ in 0..1_000 {
            if round.lanes.lock().unwrap()[sub_line].rider.is_some() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        panic!("no read came to ride on sub-line {sub_line}'s lane");
    }

    #[tokio::test]
    async fn a_read_rides_on_the_next_join_call_of_a_busy_lane() {
        let redis = RedisServer::start().unwrap_or_else(|e| panic!("{e}"));
        let (store, queue) = super::super::tests::over_three_sub_lines(&redis).await;
        let link = store.link(&queue);
        let layout = link.layout().await.unwrap();
        let mut tickets = Vec::new();
        for sub_line in 0..3 {
            let user = user_on(&layout, sub_line, "first");
            tickets.push(store.enqueue(&queue, &user, 1_000).await.unwrap().ticket);
        }
        tickets.sort_unstable();
        // Sub-line 1's lane's last call ended with more waiting.
        let round = store.rounds.of(&queue).unwrap();
        store.rounds.lane_after(&queue, 1, true);
        let before = redis.calls("evalsha").unwrap();
        let view = link.shared_view(&layout, tickets.clone(), 1_000, store.rounds.coming(&queue));
        let next_call = async {
            rider_waiting(&round, 1).await;
            for _ in 0..1_000 {
                if redis.calls("evalsha").unwrap() - before >= 3 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            assert_eq!(
                redis.calls("evalsha").unwrap() - before,
                3,
                "the head and the two other sub-lines read on their own"
            );
            // The lane's next call: a newcomer on sub-line 1.
            let newcomer = [user_on(&layout, 1, "next")];
            let (places, _coming) = link
                .join_many(&layout, &newcomer, 1_000, Some(1))
                .await
                .unwrap();
            places[0].0.as_ref().unwrap().ticket
        };
        let (view, newcomer) = tokio::join!(view, next_call);
        let view = view.unwrap();
        // Read after the newcomer's join, in the same call.
        assert_eq!(view.in_line, 4);
        assert!(newcomer > tickets[2]);
        assert_eq!(view.below, vec![1, 2, 3]);
        assert!(round.lanes.lock().unwrap()[1].rider.is_none());
    }

    #[tokio::test]
    async fn a_read_waiting_on_a_lane_that_goes_idle_reads_the_sub_line_itself() {
        let redis = RedisServer::start().unwrap_or_else(|e| panic!("{e}"));
        let (store, queue) = super::super::tests::over_three_sub_lines(&redis).await;
        let link = store.link(&queue);
        let layout = link.layout().await.unwrap();
        let user = user_on(&layout, 1, "first");
        let ticket = store.enqueue(&queue, &user, 1_000).await.unwrap().ticket;
        let round = store.rounds.of(&queue).unwrap();
        store.rounds.lane_after(&queue, 1, true);
        let started = Instant::now();
        let view = link.shared_view(&layout, vec![ticket], 1_000, store.rounds.coming(&queue));
        let idle = async {
            rider_waiting(&round, 1).await;
            // The lane's next call ended with nothing waiting behind it.
            store.rounds.lane_after(&queue, 1, false);
        };
        let (view, ()) = tokio::join!(view, idle);
        assert_eq!(view.unwrap().below, vec![1]);
        // Not held until the rider's wait ran out (an eighth of the
        // store's 2 s timeout).
        assert!(started.elapsed() < Duration::from_millis(200));
        // An idle lane is not waited for at all.
        let before = redis.calls("evalsha").unwrap();
        let view = link
            .shared_view(&layout, vec![ticket], 1_000, store.rounds.coming(&queue))
            .await
            .unwrap();
        assert_eq!(view.below, vec![1]);
        assert!(round.lanes.lock().unwrap()[1].rider.is_none());
        one_read_since(&redis, before, &layout);
    }

    #[tokio::test]
    async fn a_rider_never_taken_costs_a_moment_and_marks_no_sub_line_slow() {
        let redis = RedisServer::start().unwrap_or_else(|e| panic!("{e}"));
        let (store, queue) = super::super::tests::over_three_sub_lines(&redis).await;
        let link = store.link(&queue);
        let layout = link.layout().await.unwrap();
        let user = user_on(&layout, 1, "first");
        let ticket = store.enqueue(&queue, &user, 1_000).await.unwrap().ticket;
        let round = store.rounds.of(&queue).unwrap();
        // Every part read once, so each can stand in.
        link.shared_view(&layout, vec![ticket], 1_000, store.rounds.coming(&queue))
            .await
            .unwrap();
        // A lane with calls waiting whose next call does not come.
        store.rounds.lane_after(&queue, 1, true);
        let started = Instant::now();
        let view = link
            .shared_view(&layout, vec![ticket], 1_000, store.rounds.coming(&queue))
            .await
            .unwrap();
        assert_eq!(view.below, vec![1], "read by the reader itself");
        let waited = started.elapsed();
        assert!(
            waited >= store.timeout / 8,
            "waited {waited:?} for the rider"
        );
        assert!(waited < store.timeout / 4, "waited {waited:?}");
        let last = round.last.lock().unwrap();
        assert!(
            last.slow.iter().all(Option::is_none),
            "no sub-line marked slow"
        );
        assert_eq!(last.standing(&layout, 1), Some(false));
    }

    #[tokio::test]
    async fn a_lane_sends_its_next_call_for_a_rider_only_with_one_to_send() {
        let redis = RedisServer::start().unwrap_or_else(|e| panic!("{e}"));
        let (store, queue) = super::super::tests::over_three_sub_lines(&redis).await;
        let layout = store.link(&queue).layout().await.unwrap();
        let round = store.rounds.of(&queue).unwrap();
        let rounds = &store.rounds;
        for has_next in [false, true] {
            // A join call ended; its places are being read.
            rounds.lane_after(&queue, 1, true);
            let read_ended = std::sync::atomic::AtomicBool::new(false);
            let (read_done, read) = oneshot::channel::<()>();
            let lane = async {
                let waited = rounds.rider_or(&queue, 1, read, || has_next);
                tokio::time::timeout(Duration::from_secs(5), waited)
                    .await
                    .expect("the lane waits no longer than its read");
                let ended = read_ended.load(Ordering::Acquire);
                // The next call, carrying the rider if the lane holds one.
                let carried = rounds.take_rider(&queue, 1).map(|rider| {
                    rider.answer(Part {
                        in_line: 1,
                        prequeued: 0,
                        held: DrawHold::NONE,
                        sample: Sample::default(),
                        below: vec![7],
                    })
                });
                (carried.is_some(), ended)
            };
            let reader = async {
                let ride = round.ride(1, &layout, &[1]).expect("the lane is busy");
                let rode = tokio::time::timeout(Duration::from_secs(5), ride).await;
                // The lane's own read ends only once the rider's fate is known.
                read_ended.store(true, Ordering::Release);
                let _ = read_done.send(());
                rode.expect("the rider is answered or dropped at once")
            };
            let ((carried, read_had_ended), rode) = tokio::join!(lane, reader);
            if has_next {
                // The lane went at once, rider in hand, before its read.
                assert!(carried && !read_had_ended);
                assert_eq!(rode.unwrap().below, vec![7]);
            } else {
                // Nothing to ride on: dropped at once, read by the reader;
                // the lane waited for its read.
                assert!(!carried && read_had_ended);
                assert!(rode.is_err());
                assert!(!round.lanes.lock().unwrap()[1].busy);
            }
        }
    }

    #[tokio::test]
    async fn a_batch_that_waited_behind_its_lane_s_read_is_stamped_when_sent() {
        let redis = RedisServer::start().unwrap_or_else(|e| panic!("{e}"));
        let (store, queue) = super::super::tests::over_three_sub_lines(&redis).await;
        let store = std::sync::Arc::new(store);
        let on_one = |name: &str| {
            (0..)
                .map(|i| format!("{name}-{i}"))
                .find(|user| crate::domain::shards::sub_line_of(user, 3) == 1)
                .unwrap()
        };
        let (first, second) = (on_one("first"), on_one("second"));
        let join = |name: &str| {
            let (store, queue) = (std::sync::Arc::clone(&store), queue.clone());
            let user = UserId::parse(name).unwrap();
            tokio::spawn(async move { store.enqueue(&queue, &user, 10_000).await })
        };
        // The layout read and the lane started, then every read held.
        join(&on_one("before")).await.unwrap().unwrap();
        let round = store.rounds.of(&queue).unwrap();
        let reading = round.reading.lock().await;
        let first_join = join(&first);
        tokio::time::sleep(Duration::from_millis(50)).await;
        // The first call ended and its lane waits for its read: the second
        // waits behind it, both read at 10 s.
        let second_join = join(&second);
        tokio::time::sleep(Duration::from_millis(400)).await;
        drop(reading);
        first_join.await.unwrap().unwrap();
        second_join.await.unwrap().unwrap();
        let keys = super::super::keys::tagged_keys("t", "sale/3~1");
        let mut conn = super::super::tests::connection_to(&redis);
        let mut seen = |user: &str| -> u64 {
            redis::cmd("ZSCORE")
                .arg(&keys[11])
                .arg(user)
                .query(&mut conn)
                .unwrap()
        };
        assert_eq!(seen(&first), 10_000, "sent at once, as read");
        let second = seen(&second);
        assert!(
            (10_350..11_000).contains(&second),
            "sent after waiting about 400 ms, at {second}"
        );
    }

    #[tokio::test]
    async fn a_join_lane_of_a_made_up_queue_leaves_no_round_behind() {
        let redis = RedisServer::start().unwrap_or_else(|e| panic!("{e}"));
        let (store, _) = super::super::tests::over_three_sub_lines(&redis).await;
        let made_up = QueueId::parse("no-such-sale").unwrap();
        let user = UserId::parse("someone").unwrap();
        assert!(store.enqueue(&made_up, &user, 1_000).await.is_err());
        assert!(!store.rounds.queues.lock().unwrap().contains_key(&made_up));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_burst_s_reads_ride_on_its_join_calls_and_place_everyone() {
        let redis = RedisServer::start().unwrap_or_else(|e| panic!("{e}"));
        let (store, queue) = super::super::tests::over_three_sub_lines(&redis).await;
        let store = Arc::new(store);
        let crowd = 4_000;
        let joins: Vec<_> = (0..crowd)
            .map(|i| {
                let (store, queue) = (Arc::clone(&store), queue.clone());
                let user = UserId::parse(&format!("user-{i}")).unwrap();
                tokio::spawn(async move { store.enqueue(&queue, &user, 1_000).await })
            })
            .collect();
        let mut places = Vec::new();
        for join in joins {
            places.push(join.await.unwrap().unwrap());
        }
        let mut tickets: Vec<u64> = places.iter().map(|place| place.ticket).collect();
        tickets.sort_unstable();
        tickets.dedup();
        assert_eq!(tickets.len(), crowd, "a ticket each");
        // Nobody left or was admitted: each was placed behind at most
        // everyone below their ticket, and counted in.
        for place in &places {
            let below = tickets.partition_point(|&t| t <= place.ticket) as u64;
            match place.state {
                PlaceState::Waiting { position } => {
                    assert!((1..=below).contains(&position), "{position} of {below}");
                }
                ref state => panic!("{state:?}"),
            }
        }
        let round = store.rounds.of(&queue).unwrap();
        assert!(
            round.rides.load(Ordering::Relaxed) > 0,
            "no read rode on a join call"
        );
    }

    #[tokio::test]
    async fn only_a_join_lane_tells_the_round_whether_it_has_calls_waiting() {
        use super::super::batch::{Op, after_call};
        let redis = RedisServer::start().unwrap_or_else(|e| panic!("{e}"));
        let (store, queue) = super::super::tests::over_three_sub_lines(&redis).await;
        let caller = store.caller(&queue).await.unwrap();
        let round = store.rounds.of(&queue).unwrap();
        let busy = || round.lanes.lock().unwrap()[1].busy;
        after_call(&caller, &(queue.clone(), Op::Enqueue, 1), true);
        assert!(busy());
        // Lookups on the same sub-line carry no read: their lane running
        // dry says nothing of the join lane's next call.
        after_call(&caller, &(queue.clone(), Op::Place, 1), false);
        assert!(busy());
        after_call(&caller, &(queue.clone(), Op::Enqueue, 1), false);
        assert!(!busy());
    }

    #[tokio::test]
    async fn a_reader_waits_for_a_call_that_never_asks_only_a_moment() {
        let redis = RedisServer::start().unwrap_or_else(|e| panic!("{e}"));
        let (store, queue) = super::super::tests::over_three_sub_lines(&redis).await;
        let user = UserId::parse("someone").unwrap();
        let ticket = store.enqueue(&queue, &user, 1_000).await.unwrap().ticket;
        let link = store.link(&queue);
        let layout = link.layout().await.unwrap();
        // A call in flight on a sub-line that does not answer.
        let stuck = store.rounds.coming(&queue);
        let started = Instant::now();
        let view = tokio::time::timeout(
            Duration::from_secs(5),
            link.shared_view(&layout, vec![ticket], 1_000, store.rounds.coming(&queue)),
        )
        .await
        .expect("the read waits for the stuck call only a moment");
        assert_eq!(view.unwrap().below, vec![1]);
        assert!(started.elapsed() >= GATHER);
        drop(stuck);
        let round = store.rounds.of(&queue).unwrap();
        assert_eq!(round.coming.load(Ordering::Acquire), 0);
    }
}
