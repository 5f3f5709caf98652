//! The in-memory store: one process, no persistence, and the executable
//! specification of the queue's semantics. The Redis store is tested against
//! it answer for answer, so every branch here has its twin in a Lua script
//! (`store/redis/scripts/`), named alike.
//!
//! Layout: this file holds the store and its trait; `queue.rs` a queue's
//! state and its transitions, `opening.rs` the pre-queue and the opening
//! draw, `presence.rs` signs of life and the release of the silent,
//! `flow.rs` the sale's figures in their buckets, `tokens.rs` the online
//! check of an admission and the consumed tokens.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Mutex;

use async_trait::async_trait;

mod flow;
mod opening;
mod presence;
mod queue;
mod tokens;

use self::opening::Draw;
use self::queue::QueueState;

use super::{QueueStore, batch_result_ttl_ms};
use crate::domain::{
    AdmissionCheck, AdmissionStatus, Admitted, DrawHold, LineChanges, LineSnapshot, LineSummary,
    NamedAdmission, Place, PlaceClaim, PlaceState, QueueConfig, QueueId, QueueMode, QueueStats,
    QueueUpdate, Refusal, RequestId, Restoration, RestoreView, UserId, restore_decision,
};
use crate::{Error, Result};

/// The in-memory store. A single mutex guards everything: every operation is
/// short and does no I/O, and one lock makes each one trivially atomic.
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    queues: BTreeMap<QueueId, QueueState>,
    /// Consumed token ids by the time they are remembered until. Outlives
    /// queue deletion; `used_tokens` indexes it, with the request that
    /// consumed each.
    used_by_expiry: BTreeSet<(u64, QueueId, String)>,
    used_tokens: HashMap<(QueueId, String), (u64, RequestId)>,
    /// Service instances' stream counts and when each was reported.
    instances: BTreeMap<String, (u64, u64)>,
    /// Queues deleted and not created again, with the latest epoch each
    /// had: the mark that tells a deletion from a loss
    /// ([`QueueStore::queue_lost`]), and that the next creation passes.
    deleted: HashMap<QueueId, u64>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn with_queue<T>(
        &self,
        queue: &QueueId,
        f: impl FnOnce(&mut QueueState) -> Result<T>,
    ) -> Result<T> {
        let mut inner = self.lock()?;
        let state = inner
            .queues
            .get_mut(queue)
            .ok_or_else(|| Error::QueueNotFound(queue.to_string()))?;
        f(state)
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Inner>> {
        self.inner
            .lock()
            .map_err(|_| Error::Internal("memory store lock poisoned".into()))
    }
}

#[async_trait]
impl QueueStore for MemoryStore {
    // One process: every instance is this one.
    async fn announce(&self, _queue: &QueueId) {}

    async fn hear_announcements(
        &self,
        _heard: crate::store::Announced,
        stop: tokio_util::sync::CancellationToken,
    ) {
        stop.cancelled().await;
    }

    async fn create_queue(&self, config: &QueueConfig) -> Result<QueueConfig> {
        let mut inner = self.lock()?;
        if inner.queues.contains_key(&config.id) {
            return Err(Error::QueueAlreadyExists(config.id.to_string()));
        }
        // A queue's epoch tells its receipts and tokens from a deleted
        // one's of the same name: one made in the deleted one's
        // millisecond, or by a replica whose clock is behind, takes the
        // millisecond after (as create_queue.lua).
        let mut config = config.clone();
        if let Some(deleted) = inner.deleted.remove(&config.id) {
            config.created_at_ms = config.created_at_ms.max(deleted + 1);
        }
        inner
            .queues
            .insert(config.id.clone(), QueueState::new(config.clone()));
        Ok(config)
    }

    async fn queue_lost(&self, queue: &QueueId) -> Result<bool> {
        let inner = self.lock()?;
        Ok(!inner.queues.contains_key(queue) && !inner.deleted.contains_key(queue))
    }

    /// This store loses a queue whole or not at all.
    async fn remake_from_parts(
        &self,
        _queue: &QueueId,
        _epoch_ms: u64,
        _now_ms: u64,
    ) -> Result<Option<QueueConfig>> {
        Ok(None)
    }

    async fn get_queue(&self, queue: &QueueId) -> Result<QueueConfig> {
        self.with_queue(queue, |state| Ok(state.config()))
    }

    async fn list_queues(&self, after: Option<&QueueId>, limit: usize) -> Result<Vec<QueueConfig>> {
        use std::ops::Bound::{Excluded, Unbounded};
        let inner = self.lock()?;
        let range = match after {
            Some(after) => inner
                .queues
                .range::<QueueId, _>((Excluded(after), Unbounded)),
            None => inner.queues.range::<QueueId, _>(..),
        };
        Ok(range.take(limit).map(|(_, s)| s.config()).collect())
    }

    async fn update_queue(
        &self,
        queue: &QueueId,
        update: &QueueUpdate,
        now_ms: u64,
    ) -> Result<QueueConfig> {
        self.with_queue(queue, |state| {
            if update.opens_at.is_some() && state.opening.draw != Draw::None {
                return Err(Error::OpeningPassed(queue.to_string()));
            }
            let was_closed = state.config.mode == QueueMode::Closed;
            let shortened = update
                .heartbeat_timeout
                .is_some_and(|timeout| timeout < state.config.heartbeat_timeout);
            state.config.apply(update);
            if update.opens_at == Some(None) {
                // Clearing an opening that has not happened opens the queue now.
                state.config.opens_at_ms = Some(now_ms);
            }
            // Reopening, or a shorter heartbeat timeout: presence counts from
            // now, so nobody is released for silence the old rules allowed.
            if (was_closed && state.config.mode != QueueMode::Closed) || shortened {
                state.config.presence_since_ms = now_ms;
                state.presence.restart(now_ms);
            }
            if was_closed && state.config.mode != QueueMode::Closed {
                state.cleared.clear();
            }
            Ok(state.config())
        })
    }

    async fn delete_queue(&self, queue: &QueueId) -> Result<()> {
        let mut inner = self.lock()?;
        // Marked even when already gone (see delete_queue.lua).
        let removed = inner.queues.remove(queue);
        let epoch = removed
            .as_ref()
            .map_or(0, |state| state.config.created_at_ms);
        let mark = inner.deleted.entry(queue.clone()).or_default();
        *mark = (*mark).max(epoch);
        match removed {
            Some(_) => Ok(()),
            None => Err(Error::QueueNotFound(queue.to_string())),
        }
    }

    async fn enqueue(&self, queue: &QueueId, user: &UserId, now_ms: u64) -> Result<Place> {
        // The Redis store's single enqueue is a batch of one too.
        self.enqueue_many(queue, std::slice::from_ref(user), now_ms)
            .await?
            .pop()
            .unwrap_or_else(|| Err(Error::Internal("enqueue answered no place".into())))
    }

    async fn enqueue_many(
        &self,
        queue: &QueueId,
        users: &[UserId],
        now_ms: u64,
    ) -> Result<Vec<Result<Place>>> {
        self.with_queue(queue, |state| {
            state.prepare(now_ms);
            let before = state.line.given;
            let given_before = state.last_given();
            // As enqueue_many.lua: consecutive newcomers joining a line
            // with no pre-queue are one run, logged as one change; anyone
            // else goes through enqueue_one.
            let gathering = state.config.mode == QueueMode::Queueing
                && (state.config.opens_at_ms.is_none() || state.opening.draw == Draw::Done);
            let limited = state.config.max_active > 0 || state.config.admit_per_second > 0;
            let mut named: HashSet<&UserId> = HashSet::new();
            let mut run: Option<(u64, u64, usize)> = None;
            let mut places = Vec::with_capacity(users.len());
            // Over sub-lines, a call serves each sub-line's users in turn
            // (sub-line 0 first), as the Redis store calls them one slot
            // after another; the order within a call is not the line's.
            let mut order: Vec<usize> = (0..users.len()).collect();
            if state.line.sub_lines.is_some() {
                order.sort_by_key(|&i| state.sub_line(&users[i]));
            }
            // How many of the call's users of each one's sub-line are still
            // to serve, that user included: what a block leased for that
            // user covers, as the Redis store's call of that sub-line
            // tells its script.
            let mut wanted: Vec<u64> = vec![0; order.len()];
            let mut after: HashMap<usize, u64> = HashMap::new();
            for (at, &i) in order.iter().enumerate().rev() {
                let count = after.entry(state.sub_line(&users[i])).or_default();
                *count += 1;
                wanted[at] = *count;
            }
            for (at, user) in order.iter().map(|&i| &users[i]).enumerate() {
                let newcomer = gathering
                    && !named.contains(user)
                    && !state.line.tickets.contains_key(user)
                    && !state.admissions.admitted.contains_key(user)
                    && (run.is_some()
                        || state.in_line() > 0
                        || !limited
                        || !state.admits_on_join());
                named.insert(user);
                if newcomer {
                    let ticket = state.new_ticket(user, now_ms, wanted[at]);
                    state.insert_waiting(user.clone(), ticket);
                    state.see(user, now_ms);
                    // A run is consecutive tickets of one sub-line, logged
                    // in its log; sub-lines' blocks interleave, so a ticket
                    // that does not follow ends it.
                    let at = state.sub_line(user);
                    let follows = !state.starts_block(user, ticket);
                    match &mut run {
                        Some((first, count, of))
                            if *first + *count == ticket && *of == at && follows =>
                        {
                            *count += 1
                        }
                        _ => {
                            state.end_run(run.take(), now_ms);
                            run = Some((ticket, 1, at));
                        }
                    }
                    // Counted once the call is done, below.
                    places.push(Ok(state.place(
                        PlaceState::Waiting { position: 0 },
                        ticket,
                        now_ms,
                    )));
                } else {
                    state.end_run(run.take(), now_ms);
                    places.push(state.enqueue_one(queue, user, now_ms, wanted[at]));
                }
            }
            state.end_run(run, now_ms);
            if state.line.given != before {
                state.note_joined_after_call(&given_before, now_ms);
            }
            // One call is one step: every position as it stands after it.
            // With one sub-line that is the position at each join (later
            // joins go behind); with several, a later user of the call may
            // take a ticket below an earlier one's from another block.
            for place in places.iter_mut().flatten() {
                if let PlaceState::Waiting { position } = &mut place.state {
                    *position = state.line.ranks.count_up_to(place.ticket);
                }
            }
            state.read_after_call(places.iter_mut().flatten(), now_ms);
            let mut in_order: Vec<Option<Result<Place>>> = users.iter().map(|_| None).collect();
            for (i, place) in order.into_iter().zip(places) {
                in_order[i] = Some(place);
            }
            Ok(in_order.into_iter().flatten().collect())
        })
    }

    async fn places(
        &self,
        queue: &QueueId,
        users: &[UserId],
        touch: bool,
        now_ms: u64,
    ) -> Result<Vec<Option<Place>>> {
        self.with_queue(queue, |state| {
            state.prepare(now_ms);
            let mut places: Vec<Option<Place>> = users
                .iter()
                .map(|user| {
                    let place = state.current_place(user, now_ms);
                    if touch && place.as_ref().is_some_and(|p| !p.is_final()) {
                        state.see(user, now_ms);
                    }
                    place
                })
                .collect();
            state.read_after_call(places.iter_mut().flatten(), now_ms);
            Ok(places)
        })
    }

    async fn place(&self, queue: &QueueId, user: &UserId, now_ms: u64) -> Result<Option<Place>> {
        let mut places = self
            .places(queue, std::slice::from_ref(user), true, now_ms)
            .await?;
        Ok(places.pop().flatten())
    }

    async fn restore(
        &self,
        queue: &QueueId,
        user: &UserId,
        claim: &PlaceClaim,
        now_ms: u64,
    ) -> Result<Restoration> {
        self.with_queue(queue, |state| {
            state.prepare(now_ms);
            let opening = state.config.opens_at_ms.is_some_and(|at| now_ms < at)
                || state.opening.draw.in_progress();
            let holds = state.line.tickets.contains_key(user)
                || state.admissions.admitted.contains_key(user)
                || state.opening.prequeued.contains_key(user)
                || state.opening.pooled.contains_key(user)
                || state.cleared.contains(user);
            if holds {
                return Ok(Restoration::Holds);
            }
            if opening || state.line.waiting.contains_key(&claim.ticket) {
                return Ok(Restoration::Refused(Refusal::NotGiven));
            }
            let view = RestoreView {
                epoch_ms: state.config.created_at_ms,
                seq: state.line.seq,
                presence_since_ms: state.presence_since(user),
                release_after_ms: state.config.release_after_ms(),
                adoption: state.config.adoption,
            };
            let restored = match restore_decision(&view, claim, now_ms) {
                Ok(restored) => restored,
                Err(refusal) => return Ok(Restoration::Refused(refusal)),
            };
            // A lost line's place is given back once: whatever became of
            // it here since (admitted, left, released) stands.
            let adopted = claim.epoch_ms != state.config.created_at_ms;
            if adopted && !state.line.given_back.insert(claim.ticket) {
                return Ok(Restoration::Refused(Refusal::NotGiven));
            }
            state.move_seq(restored.seq);
            state.config.adoption = restored.adoption;
            state.add_waiting(user.clone(), claim.ticket);
            state.see(user, now_ms);
            match state.current_place(user, now_ms) {
                Some(place) => Ok(Restoration::Restored(place)),
                None => Err(Error::Internal("a place given back is not there".into())),
            }
        })
    }

    async fn touch(&self, queue: &QueueId, users: &[UserId], now_ms: u64) -> Result<()> {
        self.with_queue(queue, |state| {
            for user in users {
                // Only those in line: a user gone is not brought back.
                if state.presence.seen.contains_key(user) {
                    state.see(user, now_ms);
                }
            }
            Ok(())
        })
    }

    async fn reap(&self, queue: &QueueId, limit: u32, now_ms: u64) -> Result<u64> {
        self.with_queue(queue, |state| Ok(state.reap(limit, now_ms)))
    }

    async fn line_snapshot(
        &self,
        queue: &QueueId,
        sub_line: u32,
        after: u64,
        limit: u32,
    ) -> Result<LineSnapshot> {
        self.with_queue(queue, |state| {
            let seq = state.log(sub_line)?.seq;
            Ok(LineSnapshot {
                epoch_ms: state.config.created_at_ms,
                seq,
                tickets: state.sub_line_tickets(sub_line, after, limit),
                shards: state.line.logs.len() as u32,
                // A draw step is one step here.
                held: DrawHold::NONE,
            })
        })
    }

    async fn line_changes(
        &self,
        queue: &QueueId,
        sub_line: u32,
        after: u64,
        limit: u32,
        now_ms: u64,
    ) -> Result<LineChanges> {
        self.with_queue(queue, |state| {
            // A sub-line the queue does not have is refused before anything
            // is done, as the Redis store refuses it.
            state.log(sub_line)?;
            state.prepare(now_ms);
            let log = state.log(sub_line)?;
            let oldest = log.events.keys().next().copied();
            let complete =
                after <= log.seq && (after == log.seq || oldest.is_some_and(|o| o <= after + 1));
            let events = log
                .events
                .range(after + 1..)
                .take(limit as usize)
                .map(|(seq, event)| (*seq, event.clone()))
                .collect();
            let seq = log.seq;
            Ok(LineChanges {
                summary: LineSummary {
                    epoch_ms: state.config.created_at_ms,
                    seq,
                    mode: state.config.mode,
                    waiting: state.line.waiting.len() as u64,
                    prequeued: (state.opening.prequeue.len() + state.opening.pool.len()) as u64,
                    opens_at_ms: state.config.opens_at_ms,
                    opened: state.opening.draw != Draw::None,
                    rate: state.rate_sample(now_ms),
                    heartbeat_ms: state.config.heartbeat_timeout.as_millis() as u64,
                    signs: state.config.signs(),
                    shards: state.config.shards,
                    held: DrawHold::NONE,
                },
                events,
                complete,
            })
        })
    }

    async fn draw_step(
        &self,
        queue: &QueueId,
        seed: &str,
        chunk: u32,
        now_ms: u64,
    ) -> Result<bool> {
        self.with_queue(queue, |state| {
            state.prepare(now_ms);
            Ok(state.draw_chunk(seed, chunk))
        })
    }

    async fn leave(&self, queue: &QueueId, user: &UserId, now_ms: u64) -> Result<bool> {
        self.with_queue(queue, |state| {
            state.prepare(now_ms);
            let left = state.remove_from_line(user) || state.end_admission(user);
            if left {
                state.counters.left += 1;
            }
            Ok(left)
        })
    }

    async fn admit(
        &self,
        queue: &QueueId,
        max_count: u32,
        request: Option<&RequestId>,
        now_ms: u64,
    ) -> Result<Vec<Admitted>> {
        self.with_queue(queue, |state| {
            state.forget_lapsed_results(now_ms);
            if let Some((_, previous)) = request.and_then(|r| state.admissions.batches.get(r)) {
                return Ok(previous.clone());
            }
            match state.config.mode {
                QueueMode::Paused => return Err(Error::QueuePaused(queue.to_string())),
                QueueMode::Closed => return Err(state.closed(queue)),
                QueueMode::Queueing | QueueMode::PassThrough => {}
            }
            state.prepare(now_ms);
            let mut room = u64::from(max_count);
            if state.opening.draw.in_progress() {
                room = 0;
            } else if state.config.mode == QueueMode::Queueing {
                room = room.min(state.free_slots());
            }
            let admitted = state.admit_next(room, now_ms);
            if let Some(request) = request {
                state.admissions.batches.insert(
                    request.clone(),
                    (now_ms + batch_result_ttl_ms(request), admitted.clone()),
                );
            }
            Ok(admitted)
        })
    }

    async fn admit_due(
        &self,
        queue: &QueueId,
        max_count: u32,
        now_ms: u64,
    ) -> Result<Vec<Admitted>> {
        self.with_queue(queue, |state| {
            state.prepare(now_ms);
            let room = match state.config.mode {
                _ if state.opening.draw.in_progress() => 0,
                QueueMode::PassThrough => u64::from(max_count),
                QueueMode::Queueing if state.config.admit_per_second > 0 => {
                    // Tokens only for those admission may take now: with
                    // sub-lines, the newest wait for their blocks to close.
                    let wanted = u64::from(max_count)
                        .min(state.admissible(now_ms))
                        .min(state.free_slots());
                    state.take_tokens(wanted, now_ms)
                }
                _ => 0,
            };
            Ok(state.admit_next(room, now_ms))
        })
    }

    async fn admit_users(
        &self,
        queue: &QueueId,
        users: &[UserId],
        request: &RequestId,
        override_capacity: bool,
        now_ms: u64,
    ) -> Result<Vec<NamedAdmission>> {
        self.with_queue(queue, |state| {
            state.forget_lapsed_results(now_ms);
            if let Some((_, named, previous)) = state.admissions.named.get(request) {
                if named.as_slice() != users {
                    return Err(Error::invalid(
                        "request_id",
                        "was used by an earlier AdmitUsers naming other users: a retry names the same users",
                    ));
                }
                return Ok(previous.clone());
            }
            if state.config.mode == QueueMode::Closed {
                return Err(state.closed(queue));
            }
            state.prepare(now_ms);
            let before = state.line.given;
            let given_before = state.last_given();
            let results: Vec<NamedAdmission> = users
                .iter()
                .map(|user| state.admit_named(user, override_capacity, now_ms))
                .collect();
            if state.line.given != before {
                state.note_joined_after_call(&given_before, now_ms);
            }
            state.admissions.named.insert(
                request.clone(),
                (
                    now_ms + batch_result_ttl_ms(request),
                    users.to_vec(),
                    results.clone(),
                ),
            );
            Ok(results)
        })
    }

    async fn clear_step(&self, queue: &QueueId, limit: u32, now_ms: u64) -> Result<u64> {
        self.with_queue(queue, |state| {
            state.prepare(now_ms);
            let cleared = state.clear_some(u64::from(limit));
            state.counters.cleared += cleared;
            Ok(cleared)
        })
    }

    async fn complete(&self, queue: &QueueId, user: &UserId, now_ms: u64) -> Result<bool> {
        self.with_queue(queue, |state| {
            state.prepare(now_ms);
            let completed = state.end_admission(user);
            if completed {
                state.counters.completed += 1;
            }
            Ok(completed)
        })
    }

    async fn check_admission(
        &self,
        queue: &QueueId,
        check: &AdmissionCheck,
        now_ms: u64,
    ) -> Result<AdmissionStatus> {
        Ok(self.lock()?.check_admission(queue, check, now_ms))
    }

    async fn stats(&self, queue: &QueueId, now_ms: u64) -> Result<QueueStats> {
        self.with_queue(queue, |state| {
            state.prepare(now_ms);
            let c = &state.counters;
            Ok(QueueStats {
                waiting: state.in_line(),
                active: state.admissions.active.len() as u64,
                enqueued: c.enqueued,
                admitted: c.admitted,
                completed: c.completed,
                expired: c.expired,
                left: c.left,
                abandoned: c.abandoned,
                prequeued: (state.opening.prequeue.len() + state.opening.pool.len()) as u64,
                cleared: c.cleared,
                rate: state.rate_sample(now_ms),
                flow: state.flow(now_ms),
            })
        })
    }

    async fn ping(&self) -> Result<()> {
        Ok(())
    }

    async fn setup_problem(&self) -> Result<Option<String>> {
        Ok(None)
    }

    async fn share_load(
        &self,
        instance: &str,
        streams: Option<u64>,
        ttl_ms: u64,
        now_ms: u64,
    ) -> Result<Vec<u64>> {
        let mut inner = self.lock()?;
        Ok(super::share_of(
            &mut inner.instances,
            instance,
            streams,
            ttl_ms,
            now_ms,
        ))
    }
}
