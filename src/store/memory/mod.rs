//! The in-memory store: one process, no persistence, and the executable
//! specification of the queue's semantics. The Redis store is tested against
//! it answer for answer, so every branch here has its twin in a Lua script
//! (`store/redis/scripts/`), named alike.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Mutex;

use async_trait::async_trait;

use super::{QueueStore, batch_result_ttl_ms};
use crate::domain::draw::draw_key;
use crate::domain::{
    Admission, AdmissionCheck, AdmissionStatus, Admitted, FLOW_SLOT_MS, Flow, LINE_LOG_KEEP,
    LineChanges, LineEvent, LineSnapshot, LineSummary, NamedAdmission, Place, PlaceClaim,
    PlaceState, QueueConfig, QueueId, QueueMode, QueueStats, QueueUpdate, RankIndex, RateSample,
    Refusal, RequestId, Restoration, RestoreView, UserId, WAITED_BOUNDS_S, WAITED_SLOT_MS,
    WAITED_WINDOW_MS, first_flow_slot, flow_span_ms, presence_after_gap, restore_decision,
    waited_bucket,
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
    /// Queues deleted and not created again: the mark that tells a
    /// deletion from a loss ([`QueueStore::queue_lost`]).
    deleted: HashSet<QueueId>,
}

#[derive(Debug, Default)]
struct Counters {
    enqueued: u64,
    admitted: u64,
    completed: u64,
    expired: u64,
    left: u64,
    abandoned: u64,
    cleared: u64,
}

/// Where the opening draw stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Draw {
    /// No opening has happened (none scheduled, or not yet).
    None,
    /// The opening happened; the pre-queue is frozen, its tickets reserved.
    Frozen,
    /// Pre-queued users are being given their draw keys.
    Hashing,
    /// Users are being placed in key order.
    Assigning,
    Done,
}

impl Draw {
    fn in_progress(self) -> bool {
        matches!(self, Self::Frozen | Self::Hashing | Self::Assigning)
    }
}

#[derive(Debug)]
struct QueueState {
    config: QueueConfig,
    /// Last ticket given or reserved.
    seq: u64,
    /// Waiting users by ticket; `tickets` is its inverse and `ranks` counts
    /// it. The three always hold the same set.
    waiting: BTreeMap<u64, UserId>,
    tickets: HashMap<UserId, u64>,
    ranks: RankIndex,
    /// Admitted users by expiry; `admitted` holds the same users.
    active: BTreeSet<(u64, UserId)>,
    admitted: HashMap<UserId, Admission>,
    counters: Counters,
    /// Admissions per second bucket (`now_ms / 1000`).
    rate: BTreeMap<u64, u64>,
    batches: HashMap<RequestId, (u64, Vec<Admitted>)>,
    /// `AdmitUsers` results by request id, with when each lapses.
    /// With the users they named, so a reused id is told apart.
    named: HashMap<RequestId, (u64, Vec<UserId>, Vec<NamedAdmission>)>,
    /// The rate's token bucket: milli-tokens and when it was last refilled;
    /// `None` until first used (it starts full).
    bucket: Option<(u64, u64)>,
    /// Pre-queued users by arrival; `prequeued` is its inverse.
    prequeue: BTreeMap<u64, UserId>,
    prequeued: HashMap<UserId, u64>,
    prequeue_seq: u64,
    /// Users drawn but not yet placed, by draw key; `pooled` is its inverse.
    pool: BTreeSet<(u64, UserId)>,
    pooled: HashMap<UserId, u64>,
    draw: Draw,
    /// Next ticket of the block reserved for the pre-queue.
    draw_next: u64,
    /// Last sign of life of users in line; `seen_by_time` orders it.
    seen: HashMap<UserId, u64>,
    seen_by_time: BTreeSet<(u64, UserId)>,
    /// Changes to the waiting set by sequence number, the last
    /// [`LINE_LOG_KEEP`] of them; `log_seq` is the last number given.
    log: BTreeMap<u64, LineEvent>,
    log_seq: u64,
    /// Users taken out of line by clearing, told so while the queue stays
    /// closed.
    cleared: HashSet<UserId>,
    /// Arrivals and abandonments per slot of `FLOW_SLOT_MS`, the last
    /// minute only.
    arrivals: BTreeMap<u64, u64>,
    abandons: BTreeMap<u64, u64>,
    /// Admissions from the line by (10-second slot, bucket of the time
    /// waited), the last five minutes only.
    waited: BTreeMap<(u64, usize), u64>,
    /// When old flow buckets were last dropped (seconds): every ten
    /// seconds, as the Redis prelude's `prune_flow` does, so a reader whose
    /// clock is behind finds the same buckets in both stores.
    flow_pruned_s: u64,
    /// When tickets were given: (highest ticket given in a second, that
    /// second), as the Redis `joined` sorted set orders them;
    /// `joined_second` indexes it by second.
    joined: BTreeSet<(u64, u64)>,
    joined_second: HashMap<u64, u64>,
    /// When a reaper's pass last ran (the latest clock of any caller): a
    /// gap in the passes is an outage ([`presence_after_gap`]).
    heard_ms: Option<u64>,
}

impl QueueState {
    fn new(config: QueueConfig) -> Self {
        Self {
            seq: config.adoption.map_or(0, |a| a.top),
            config,
            waiting: BTreeMap::new(),
            tickets: HashMap::new(),
            ranks: RankIndex::default(),
            active: BTreeSet::new(),
            admitted: HashMap::new(),
            counters: Counters::default(),
            rate: BTreeMap::new(),
            batches: HashMap::new(),
            named: HashMap::new(),
            bucket: None,
            prequeue: BTreeMap::new(),
            prequeued: HashMap::new(),
            prequeue_seq: 0,
            pool: BTreeSet::new(),
            pooled: HashMap::new(),
            draw: Draw::None,
            draw_next: 0,
            seen: HashMap::new(),
            seen_by_time: BTreeSet::new(),
            log: BTreeMap::new(),
            log_seq: 0,
            cleared: HashSet::new(),
            arrivals: BTreeMap::new(),
            abandons: BTreeMap::new(),
            waited: BTreeMap::new(),
            flow_pruned_s: 0,
            joined: BTreeSet::new(),
            joined_second: HashMap::new(),
            heard_ms: None,
        }
    }

    fn log_event(&mut self, event: LineEvent) {
        self.log_seq += 1;
        self.log.insert(self.log_seq, event);
        if self.log_seq > LINE_LOG_KEEP {
            let keep_from = self.log_seq - LINE_LOG_KEEP + 1;
            self.log = self.log.split_off(&keep_from);
        }
    }

    /// Counts `n` users joining at `now_ms` (see the prelude's
    /// `count_flow`).
    fn count_arrivals(&mut self, n: u64, now_ms: u64) {
        self.counters.enqueued += n;
        *self.arrivals.entry(now_ms / FLOW_SLOT_MS).or_default() += n;
        self.prune_flow(now_ms);
    }

    fn count_abandons(&mut self, n: u64, now_ms: u64) {
        self.counters.abandoned += n;
        if n > 0 {
            *self.abandons.entry(now_ms / FLOW_SLOT_MS).or_default() += n;
            self.prune_flow(now_ms);
        }
    }

    /// Records that the tickets up to the last given were given by this
    /// second (the prelude's `note_joined`: only ever raised).
    fn note_joined(&mut self, now_ms: u64) {
        let second = now_ms / 1000;
        match self.joined_second.get(&second) {
            Some(highest) if *highest >= self.seq => {}
            previous => {
                if let Some(highest) = previous {
                    self.joined.remove(&(*highest, second));
                }
                self.joined.insert((self.seq, second));
                self.joined_second.insert(second, self.seq);
            }
        }
    }

    /// Counts how long the users of `tickets` (ascending, admitted from the
    /// line now) waited, and forgets when tickets up to the last were given.
    fn count_waited(&mut self, tickets: &[u64], now_ms: u64) {
        let Some(&last) = tickets.last() else {
            return;
        };
        let slot = now_ms / WAITED_SLOT_MS;
        let mut milestones = self
            .joined
            .range((tickets[0], 0)..)
            .copied()
            .take(tickets.len())
            .peekable();
        for ticket in tickets {
            while milestones
                .next_if(|(highest, _)| highest < ticket)
                .is_some()
            {}
            let Some(&(_, second)) = milestones.peek() else {
                break;
            };
            let waited_s = now_ms.saturating_sub(second * 1000) / 1000;
            *self
                .waited
                .entry((slot, waited_bucket(waited_s)))
                .or_default() += 1;
        }
        let forget: Vec<(u64, u64)> = self.joined.range(..(last, 0)).copied().collect();
        for entry in forget {
            self.joined.remove(&entry);
            self.joined_second.remove(&entry.1);
        }
        self.prune_flow(now_ms);
    }

    /// Drops the flow buckets older than their windows, at most every ten
    /// seconds (the prelude's `prune_flow`).
    fn prune_flow(&mut self, now_ms: u64) {
        let second = now_ms / 1000;
        if second < self.flow_pruned_s + 10 {
            return;
        }
        let first = first_flow_slot(now_ms);
        self.arrivals.retain(|slot, _| *slot >= first);
        self.abandons.retain(|slot, _| *slot >= first);
        let oldest =
            (now_ms / WAITED_SLOT_MS).saturating_sub(WAITED_WINDOW_MS / WAITED_SLOT_MS - 1);
        self.waited.retain(|(s, _), _| *s >= oldest);
        self.flow_pruned_s = second;
    }

    /// What every operation does first: end the admissions whose time is
    /// up, and open the queue if its opening is due.
    fn prepare(&mut self, now_ms: u64) {
        while let Some((expires_at, _)) = self.active.first() {
            if *expires_at > now_ms {
                break;
            }
            if let Some((_, user)) = self.active.pop_first() {
                self.admitted.remove(&user);
                self.counters.expired += 1;
            }
        }
        self.open_if_due(now_ms);
    }

    /// At the opening, freeze the pre-queue and reserve its tickets. Only a
    /// queue with an opening ever has a pre-queue.
    fn open_if_due(&mut self, now_ms: u64) {
        if self.draw != Draw::None || self.config.opens_at_ms.is_none_or(|at| now_ms < at) {
            return;
        }
        let size = self.prequeue.len() as u64;
        self.draw_next = self.seq + 1;
        self.seq += size;
        if size > 0 {
            self.note_joined(now_ms);
        }
        self.draw = if size == 0 { Draw::Done } else { Draw::Frozen };
        self.config.draw_complete = size == 0;
    }

    fn in_line(&self) -> u64 {
        (self.waiting.len() + self.prequeue.len() + self.pool.len()) as u64
    }

    /// Records a sign of life; only forward, so a caller whose clock is
    /// behind another's never moves a newer sign back.
    fn see(&mut self, user: &UserId, now_ms: u64) {
        match self.seen.get(user) {
            Some(previous) if *previous >= now_ms => {}
            Some(previous) => {
                self.seen_by_time.remove(&(*previous, user.clone()));
                self.seen.insert(user.clone(), now_ms);
                self.seen_by_time.insert((now_ms, user.clone()));
            }
            None => {
                self.seen.insert(user.clone(), now_ms);
                self.seen_by_time.insert((now_ms, user.clone()));
            }
        }
    }

    fn unsee(&mut self, user: &UserId) {
        if let Some(previous) = self.seen.remove(user) {
            self.seen_by_time.remove(&(previous, user.clone()));
        }
    }

    /// Takes up to `wanted` whole tokens from the rate's bucket (see the
    /// Redis prelude's `take_tokens`); returns how many it took.
    fn take_tokens(&mut self, wanted: u64, now_ms: u64) -> u64 {
        let rate = u64::from(self.config.admit_per_second);
        let capacity = rate * 1000;
        let (mut tokens, mut stamp) = self.bucket.unwrap_or((capacity, now_ms));
        if now_ms > stamp {
            tokens = capacity.min(tokens.saturating_add((now_ms - stamp).saturating_mul(rate)));
            stamp = now_ms;
        }
        tokens = tokens.min(capacity);
        let taken = wanted.min(tokens / 1000);
        self.bucket = Some((tokens - taken * 1000, stamp));
        taken
    }

    /// Slots free under `max_active` (`u64::MAX` when there is no cap).
    fn free_slots(&self) -> u64 {
        match self.config.max_active {
            0 => u64::MAX,
            cap => u64::from(cap).saturating_sub(self.active.len() as u64),
        }
    }

    fn admit_user(&mut self, user: UserId, ticket: u64, now_ms: u64) -> Admission {
        let expires_at_ms = now_ms + self.config.admission_ttl.as_millis() as u64;
        let admission = Admission {
            ticket,
            admitted_at_ms: now_ms,
            expires_at_ms,
            queue_epoch_ms: self.config.created_at_ms,
        };
        self.unsee(&user);
        self.active.insert((expires_at_ms, user.clone()));
        self.admitted.insert(user, admission.clone());
        admission
    }

    /// Counts `n` admissions made at `now_ms` for the stats and the rate.
    fn record_admissions(&mut self, n: u64, now_ms: u64) {
        if n == 0 {
            return;
        }
        self.counters.admitted += n;
        *self.rate.entry(now_ms / 1000).or_default() += n;
        let first = RateSample::first_bucket(now_ms);
        self.rate.retain(|bucket, _| *bucket >= first);
    }

    /// Admits up to `room` waiting users, lowest tickets first.
    fn admit_next(&mut self, room: u64, now_ms: u64) -> Vec<Admitted> {
        let mut admitted: Vec<Admitted> = Vec::new();
        while (admitted.len() as u64) < room {
            let Some((ticket, user)) = self.waiting.pop_first() else {
                break;
            };
            self.tickets.remove(&user);
            self.ranks.remove(ticket);
            self.log_event(LineEvent::Left {
                ticket,
                admitted: true,
            });
            let admission = self.admit_user(user.clone(), ticket, now_ms);
            admitted.push(Admitted { user, admission });
        }
        self.record_admissions(admitted.len() as u64, now_ms);
        let tickets: Vec<u64> = admitted.iter().map(|a| a.admission.ticket).collect();
        self.count_waited(&tickets, now_ms);
        admitted
    }

    fn add_waiting(&mut self, user: UserId, ticket: u64) {
        self.insert_waiting(user.clone(), ticket);
        self.log_event(LineEvent::Joined { ticket, user });
    }

    /// Puts a user in line without logging it: the caller logs a run.
    fn insert_waiting(&mut self, user: UserId, ticket: u64) {
        self.waiting.insert(ticket, user.clone());
        self.tickets.insert(user, ticket);
        self.ranks.insert(ticket);
    }

    /// Counts and logs a run of newcomers (first ticket, count) put in line
    /// by enqueue_many, as enqueue_many.lua's end_run does.
    fn end_run(&mut self, run: Option<(u64, u64)>, now_ms: u64) {
        if let Some((first_ticket, count)) = run {
            self.count_arrivals(count, now_ms);
            self.log_event(LineEvent::JoinedRun {
                first_ticket,
                count,
            });
        }
    }

    fn remove_waiting(&mut self, user: &UserId) -> Option<u64> {
        let ticket = self.tickets.remove(user)?;
        self.waiting.remove(&ticket);
        self.ranks.remove(ticket);
        Some(ticket)
    }

    /// Takes a user out of the line wherever they stand in it.
    fn remove_from_line(&mut self, user: &UserId) -> bool {
        let left_waiting = self.remove_waiting(user);
        if let Some(ticket) = left_waiting {
            self.log_event(LineEvent::Left {
                ticket,
                admitted: false,
            });
        }
        let left_prequeue = left_waiting.is_none()
            && (self
                .prequeued
                .remove(user)
                .map(|arrival| self.prequeue.remove(&arrival))
                .is_some()
                || self
                    .pooled
                    .remove(user)
                    .map(|key| self.pool.remove(&(key, user.clone())))
                    .is_some());
        if left_prequeue {
            self.log_event(LineEvent::PreQueueLeft { user: user.clone() });
        }
        let removed = left_waiting.is_some() || left_prequeue;
        if removed {
            self.unsee(user);
        }
        removed
    }

    fn end_admission(&mut self, user: &UserId) -> bool {
        match self.admitted.remove(user) {
            Some(admission) => {
                self.active.remove(&(admission.expires_at_ms, user.clone()));
                true
            }
            None => false,
        }
    }

    fn rate_sample(&self, now_ms: u64) -> RateSample {
        let first = RateSample::first_bucket(now_ms);
        let mut buckets = self.rate.range(first..);
        let (admitted, span_ms) = match buckets.next() {
            None => (0, 0),
            Some((oldest, count)) => (
                count + buckets.map(|(_, c)| c).sum::<u64>(),
                RateSample::span_from(*oldest, now_ms),
            ),
        };
        RateSample {
            admitted,
            span_ms,
            recent: self
                .rate
                .range(RateSample::first_recent_bucket(now_ms)..)
                .map(|(_, c)| c)
                .sum(),
            abandoned: in_window(&self.abandons, now_ms),
            configured: self.config.admit_per_second,
        }
    }

    fn flow(&self, now_ms: u64) -> Flow {
        let slot = now_ms / WAITED_SLOT_MS;
        let oldest = slot.saturating_sub(WAITED_WINDOW_MS / WAITED_SLOT_MS - 1);
        let mut waited = vec![0; WAITED_BOUNDS_S.len()];
        for ((_, bucket), count) in self.waited.range((oldest, 0)..=(slot, usize::MAX)) {
            waited[*bucket] += count;
        }
        Flow {
            arrived: in_window(&self.arrivals, now_ms),
            span_ms: flow_span_ms(now_ms),
            waited,
        }
    }

    fn place(&self, state: PlaceState, ticket: u64, now_ms: u64) -> Place {
        Place {
            state,
            ticket,
            epoch_ms: self.config.created_at_ms,
            waiting_count: self.in_line(),
            mode: self.config.mode,
            rate: self.rate_sample(now_ms),
            signs: self.config.signs(),
        }
    }

    fn admitted_place(&self, admission: Admission, now_ms: u64) -> Place {
        let ticket = admission.ticket;
        self.place(PlaceState::Admitted(admission), ticket, now_ms)
    }

    fn prequeue_place(&self, now_ms: u64) -> Place {
        let opens_in_ms = match (self.draw, self.config.opens_at_ms) {
            (Draw::None, Some(opens_at)) => opens_at.saturating_sub(now_ms),
            _ => 0,
        };
        self.place(PlaceState::PreQueue { opens_in_ms }, 0, now_ms)
    }

    /// The place of a user; admits a waiting user on the spot in
    /// pass-through mode (unless the opening draw is still placing people).
    fn current_place(&mut self, user: &UserId, now_ms: u64) -> Option<Place> {
        if let Some(admission) = self.admitted.get(user) {
            return Some(self.admitted_place(admission.clone(), now_ms));
        }
        if self.prequeued.contains_key(user) || self.pooled.contains_key(user) {
            return Some(self.prequeue_place(now_ms));
        }
        let Some(&ticket) = self.tickets.get(user) else {
            // Cleared from the line of a queue still closed: told so, as
            // those waiting are.
            let cleared = self.config.mode == QueueMode::Closed && self.cleared.contains(user);
            return cleared.then(|| self.place(PlaceState::Closed, 0, now_ms));
        };
        Some(match self.config.mode {
            QueueMode::PassThrough if !self.draw.in_progress() => {
                self.remove_waiting(user);
                self.log_event(LineEvent::Left {
                    ticket,
                    admitted: true,
                });
                let admission = self.admit_user(user.clone(), ticket, now_ms);
                self.record_admissions(1, now_ms);
                self.admitted_place(admission, now_ms)
            }
            QueueMode::Closed => self.place(PlaceState::Closed, ticket, now_ms),
            _ => {
                let position = self.ranks.count_up_to(ticket);
                self.place(PlaceState::Waiting { position }, ticket, now_ms)
            }
        })
    }

    /// Drops the kept results of `AdmitBatch` and `AdmitUsers` whose time is
    /// up: both kinds, whichever call comes, as the Redis scripts share one
    /// hash and one expiry set for them.
    fn forget_lapsed_results(&mut self, now_ms: u64) {
        self.batches
            .retain(|_, (expires_at, _)| *expires_at > now_ms);
        self.named
            .retain(|_, (expires_at, _, _)| *expires_at > now_ms);
    }

    /// Admits one named user out of turn; the caller has run `prepare`.
    /// Twin of the Redis `admit_users` loop.
    fn admit_named(
        &mut self,
        user: &UserId,
        override_capacity: bool,
        now_ms: u64,
    ) -> NamedAdmission {
        if let Some(admission) = self.admitted.get(user) {
            return NamedAdmission::AlreadyAdmitted(admission.clone());
        }
        let capped = self.config.mode != QueueMode::PassThrough && !override_capacity;
        if capped && self.free_slots() == 0 {
            return NamedAdmission::NoCapacity;
        }
        let ticket = if let Some(ticket) = self.remove_waiting(user) {
            self.log_event(LineEvent::Left {
                ticket,
                admitted: true,
            });
            ticket
        } else {
            // Pre-queued (counted when they arrived) or not in line at all:
            // a ticket of their own, past every other.
            if !self.remove_from_line(user) {
                self.count_arrivals(1, now_ms);
            }
            self.seq += 1;
            self.seq
        };
        let admission = self.admit_user(user.clone(), ticket, now_ms);
        self.counters.admitted += 1;
        NamedAdmission::Admitted(admission)
    }

    /// Takes the first user out of line: the lowest ticket waiting, else
    /// the earliest pre-queued, else the first of the draw's pool.
    fn clear_one(&mut self) -> bool {
        let user = self
            .waiting
            .first_key_value()
            .map(|(_, u)| u.clone())
            .or_else(|| self.prequeue.first_key_value().map(|(_, u)| u.clone()))
            .or_else(|| self.pool.first().map(|(_, u)| u.clone()));
        match user {
            Some(user) => {
                let removed = self.remove_from_line(&user);
                if removed {
                    self.cleared.insert(user);
                }
                removed
            }
            None => false,
        }
    }

    /// The refusal of a closed queue, with its reason.
    fn closed(&self, queue: &QueueId) -> Error {
        Error::QueueClosed {
            queue: queue.to_string(),
            reason: self.config.closed_reason.as_deref().map(str::to_owned),
        }
    }

    /// One user's enqueue; the caller has run `prepare`. Twin of the
    /// Redis `enqueue_one`.
    fn enqueue_one(&mut self, queue: &QueueId, user: &UserId, now_ms: u64) -> Result<Place> {
        if let Some(admission) = self.admitted.get(user) {
            return Ok(self.admitted_place(admission.clone(), now_ms));
        }
        if self.config.mode == QueueMode::Closed {
            return Err(self.closed(queue));
        }
        if let Some(place) = self.current_place(user, now_ms) {
            if !place.is_final() {
                self.see(user, now_ms);
            }
            return Ok(place);
        }
        if self.draw == Draw::None
            && let Some(opens_at) = self.config.opens_at_ms
        {
            let window_opens =
                opens_at.saturating_sub(self.config.prequeue_window.as_millis() as u64);
            if now_ms < window_opens {
                return Err(Error::QueueNotOpen {
                    queue: queue.to_string(),
                    opens_at_ms: window_opens,
                });
            }
            self.prequeue_seq += 1;
            let arrival = self.prequeue_seq;
            self.prequeue.insert(arrival, user.clone());
            self.prequeued.insert(user.clone(), arrival);
            self.count_arrivals(1, now_ms);
            self.see(user, now_ms);
            return Ok(self.prequeue_place(now_ms));
        }
        self.seq += 1;
        let ticket = self.seq;
        self.count_arrivals(1, now_ms);
        let limited = self.config.max_active > 0 || self.config.admit_per_second > 0;
        let admit_now = !self.draw.in_progress()
            && match self.config.mode {
                QueueMode::PassThrough => true,
                QueueMode::Queueing
                    if limited && self.waiting.is_empty() && self.free_slots() > 0 =>
                {
                    self.config.admit_per_second == 0 || self.take_tokens(1, now_ms) == 1
                }
                _ => false,
            };
        if admit_now {
            let admission = self.admit_user(user.clone(), ticket, now_ms);
            self.record_admissions(1, now_ms);
            return Ok(self.admitted_place(admission, now_ms));
        }
        self.add_waiting(user.clone(), ticket);
        self.see(user, now_ms);
        let position = self.ranks.count_up_to(ticket);
        Ok(self.place(PlaceState::Waiting { position }, ticket, now_ms))
    }

    fn config(&self) -> QueueConfig {
        self.config.clone()
    }
}

/// The sum of the slots of `FLOW_SLOT_MS` within the rate window, up to
/// now's.
fn in_window(buckets: &BTreeMap<u64, u64>, now_ms: u64) -> u64 {
    let (first, last) = (first_flow_slot(now_ms), now_ms / FLOW_SLOT_MS);
    if first > last {
        return 0;
    }
    buckets.range(first..=last).map(|(_, c)| c).sum()
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
        inner.deleted.remove(&config.id);
        inner
            .queues
            .insert(config.id.clone(), QueueState::new(config.clone()));
        Ok(config.clone())
    }

    async fn queue_lost(&self, queue: &QueueId) -> Result<bool> {
        let inner = self.lock()?;
        Ok(!inner.queues.contains_key(queue) && !inner.deleted.contains(queue))
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
            if update.opens_at.is_some() && state.draw != Draw::None {
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
        inner.deleted.insert(queue.clone());
        match inner.queues.remove(queue) {
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
            let before = state.seq;
            // As enqueue_many.lua: consecutive newcomers joining the back
            // of a line with no pre-queue are one run, logged as one
            // change; anyone else goes through enqueue_one.
            let gathering = state.config.mode == QueueMode::Queueing
                && (state.config.opens_at_ms.is_none() || state.draw == Draw::Done);
            let limited = state.config.max_active > 0 || state.config.admit_per_second > 0;
            let mut named: HashSet<&UserId> = HashSet::new();
            let mut run: Option<(u64, u64)> = None;
            let mut places = Vec::with_capacity(users.len());
            for user in users {
                let newcomer = gathering
                    && !named.contains(user)
                    && !state.tickets.contains_key(user)
                    && !state.admitted.contains_key(user)
                    && (run.is_some() || state.in_line() > 0 || !limited);
                named.insert(user);
                if newcomer {
                    state.seq += 1;
                    let ticket = state.seq;
                    state.insert_waiting(user.clone(), ticket);
                    state.see(user, now_ms);
                    run.get_or_insert((ticket, 0)).1 += 1;
                    // The newest ticket: its position is the line's length.
                    let position = state.in_line();
                    places.push(Ok(state.place(
                        PlaceState::Waiting { position },
                        ticket,
                        now_ms,
                    )));
                } else {
                    state.end_run(run.take(), now_ms);
                    places.push(state.enqueue_one(queue, user, now_ms));
                }
            }
            state.end_run(run, now_ms);
            if state.seq != before {
                state.note_joined(now_ms);
            }
            Ok(places)
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
            Ok(users
                .iter()
                .map(|user| {
                    let place = state.current_place(user, now_ms);
                    if touch && place.as_ref().is_some_and(|p| !p.is_final()) {
                        state.see(user, now_ms);
                    }
                    place
                })
                .collect())
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
            let opening =
                state.config.opens_at_ms.is_some_and(|at| now_ms < at) || state.draw.in_progress();
            let holds = state.tickets.contains_key(user)
                || state.admitted.contains_key(user)
                || state.prequeued.contains_key(user)
                || state.pooled.contains_key(user)
                || state.cleared.contains(user);
            if holds {
                return Ok(Restoration::Holds);
            }
            if opening || state.waiting.contains_key(&claim.ticket) {
                return Ok(Restoration::Refused(Refusal::NotGiven));
            }
            let view = RestoreView {
                epoch_ms: state.config.created_at_ms,
                seq: state.seq,
                presence_since_ms: state.config.presence_since_ms,
                release_after_ms: state.config.release_after_ms(),
                adoption: state.config.adoption,
            };
            let restored = match restore_decision(&view, claim, now_ms) {
                Ok(restored) => restored,
                Err(refusal) => return Ok(Restoration::Refused(refusal)),
            };
            state.seq = restored.seq;
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
                if state.seen.contains_key(user) {
                    state.see(user, now_ms);
                }
            }
            Ok(())
        })
    }

    async fn reap(&self, queue: &QueueId, limit: u32, now_ms: u64) -> Result<u64> {
        self.with_queue(queue, |state| {
            let heard = state.heard_ms;
            state.heard_ms = Some(heard.map_or(now_ms, |h| h.max(now_ms)));
            if let Some(since) = presence_after_gap(heard, state.config.presence_since_ms, now_ms) {
                state.config.presence_since_ms = since;
                return Ok(0);
            }
            if state.config.mode == QueueMode::Closed {
                return Ok(0);
            }
            let cutoff = now_ms.saturating_sub(state.config.release_after_ms());
            if state.config.presence_since_ms >= cutoff {
                return Ok(0);
            }
            let silent: Vec<UserId> = state
                .seen_by_time
                .iter()
                .take_while(|(seen, _)| *seen < cutoff)
                .take(limit as usize)
                .map(|(_, user)| user.clone())
                .collect();
            let mut released = 0;
            for user in &silent {
                if state.remove_from_line(user) {
                    released += 1;
                } else {
                    // A sign of life of someone no longer in line: dropped,
                    // so it is neither counted again nor in the way.
                    state.unsee(user);
                }
            }
            state.count_abandons(released, now_ms);
            Ok(released)
        })
    }

    async fn line_snapshot(&self, queue: &QueueId, after: u64, limit: u32) -> Result<LineSnapshot> {
        self.with_queue(queue, |state| {
            Ok(LineSnapshot {
                epoch_ms: state.config.created_at_ms,
                seq: state.log_seq,
                tickets: state
                    .waiting
                    .range(after.saturating_add(1)..)
                    .take(limit as usize)
                    .map(|(ticket, _)| *ticket)
                    .collect(),
            })
        })
    }

    async fn line_changes(
        &self,
        queue: &QueueId,
        after: u64,
        limit: u32,
        now_ms: u64,
    ) -> Result<LineChanges> {
        self.with_queue(queue, |state| {
            state.prepare(now_ms);
            let oldest = state.log.keys().next().copied();
            let complete = after <= state.log_seq
                && (after == state.log_seq || oldest.is_some_and(|o| o <= after + 1));
            let events = state
                .log
                .range(after + 1..)
                .take(limit as usize)
                .map(|(seq, event)| (*seq, event.clone()))
                .collect();
            Ok(LineChanges {
                summary: LineSummary {
                    epoch_ms: state.config.created_at_ms,
                    seq: state.log_seq,
                    mode: state.config.mode,
                    waiting: state.waiting.len() as u64,
                    prequeued: (state.prequeue.len() + state.pool.len()) as u64,
                    opens_at_ms: state.config.opens_at_ms,
                    opened: state.draw != Draw::None,
                    rate: state.rate_sample(now_ms),
                    heartbeat_ms: state.config.heartbeat_timeout.as_millis() as u64,
                    signs: state.config.signs(),
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
            if state.draw == Draw::Frozen {
                state.config.draw_seed = Some(seed.to_owned());
                state.draw = Draw::Hashing;
            }
            match state.draw {
                Draw::Hashing => {
                    let seed = state.config.draw_seed.clone().unwrap_or_default();
                    for _ in 0..chunk {
                        let Some((_, user)) = state.prequeue.pop_first() else {
                            break;
                        };
                        state.prequeued.remove(&user);
                        let key = draw_key(&seed, &user);
                        state.pool.insert((key, user.clone()));
                        state.pooled.insert(user, key);
                    }
                    if state.prequeue.is_empty() {
                        state.draw = Draw::Assigning;
                    }
                }
                Draw::Assigning => {
                    for _ in 0..chunk {
                        let Some((_, user)) = state.pool.pop_first() else {
                            break;
                        };
                        state.pooled.remove(&user);
                        let ticket = state.draw_next;
                        state.draw_next += 1;
                        state.add_waiting(user, ticket);
                    }
                    if state.pool.is_empty() {
                        state.draw = Draw::Done;
                        state.config.draw_complete = true;
                    }
                }
                Draw::None | Draw::Frozen | Draw::Done => {}
            }
            Ok(!state.draw.in_progress())
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
            if let Some((_, previous)) = request.and_then(|r| state.batches.get(r)) {
                return Ok(previous.clone());
            }
            match state.config.mode {
                QueueMode::Paused => return Err(Error::QueuePaused(queue.to_string())),
                QueueMode::Closed => return Err(state.closed(queue)),
                QueueMode::Queueing | QueueMode::PassThrough => {}
            }
            state.prepare(now_ms);
            let mut room = u64::from(max_count);
            if state.draw.in_progress() {
                room = 0;
            } else if state.config.mode == QueueMode::Queueing {
                room = room.min(state.free_slots());
            }
            let admitted = state.admit_next(room, now_ms);
            if let Some(request) = request {
                state.batches.insert(
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
                _ if state.draw.in_progress() => 0,
                QueueMode::PassThrough => u64::from(max_count),
                QueueMode::Queueing if state.config.admit_per_second > 0 => {
                    let wanted = u64::from(max_count)
                        .min(state.waiting.len() as u64)
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
            if let Some((_, named, previous)) = state.named.get(request) {
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
            let before = state.seq;
            let results: Vec<NamedAdmission> = users
                .iter()
                .map(|user| state.admit_named(user, override_capacity, now_ms))
                .collect();
            if state.seq != before {
                state.note_joined(now_ms);
            }
            state.named.insert(
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
            let mut cleared = 0;
            while cleared < u64::from(limit) && state.clear_one() {
                cleared += 1;
            }
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
        let mut inner = self.lock()?;
        while let Some((until, _, _)) = inner.used_by_expiry.first() {
            if *until > now_ms {
                break;
            }
            if let Some((_, queue, token)) = inner.used_by_expiry.pop_first() {
                inner.used_tokens.remove(&(queue, token));
            }
        }
        let key = (queue.clone(), check.token_id.clone());
        if let Some(consume) = &check.consume
            && let Some((_, by)) = inner.used_tokens.get(&key)
        {
            return Ok(if *by == consume.request {
                AdmissionStatus::Held
            } else {
                AdmissionStatus::Used
            });
        }
        let held = inner.queues.get(queue).is_some_and(|state| {
            state.config.created_at_ms == check.queue_epoch_ms
                && state.admitted.get(&check.user).is_some_and(|a| {
                    a.ticket == check.ticket
                        && check.admitted_at_ms.is_none_or(|at| at == a.admitted_at_ms)
                        && a.expires_at_ms > now_ms
                })
        });
        if !held {
            return Ok(AdmissionStatus::Revoked);
        }
        if let Some(consume) = &check.consume {
            let until = consume.remember_until_ms.max(now_ms + 1);
            inner
                .used_by_expiry
                .insert((until, key.0.clone(), key.1.clone()));
            inner
                .used_tokens
                .insert(key, (until, consume.request.clone()));
        }
        Ok(AdmissionStatus::Held)
    }

    async fn stats(&self, queue: &QueueId, now_ms: u64) -> Result<QueueStats> {
        self.with_queue(queue, |state| {
            state.prepare(now_ms);
            let c = &state.counters;
            Ok(QueueStats {
                waiting: state.in_line(),
                active: state.active.len() as u64,
                enqueued: c.enqueued,
                admitted: c.admitted,
                completed: c.completed,
                expired: c.expired,
                left: c.left,
                abandoned: c.abandoned,
                prequeued: (state.prequeue.len() + state.pool.len()) as u64,
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
