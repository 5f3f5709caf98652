//! A queue's state and its transitions: the line, admissions, the
//! opening, presence. Each transition has its twin in a Lua script of the
//! Redis store (`store/redis/scripts/`), named alike.

use super::opening::{Draw, Opening};
use super::presence::Presence;
use crate::domain::shards::{SubLines, sub_line_of};
use crate::domain::{
    Admission, Admitted, LINE_LOG_KEEP, LineEvent, NamedAdmission, Place, PlaceState, QueueConfig,
    QueueId, QueueMode, RankIndex, RateSample, RequestId, UserId,
};
use crate::{Error, Result};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

#[derive(Debug, Default)]
pub(super) struct Counters {
    pub(super) enqueued: u64,
    pub(super) admitted: u64,
    pub(super) completed: u64,
    pub(super) expired: u64,
    pub(super) left: u64,
    pub(super) abandoned: u64,
    pub(super) cleared: u64,
}

/// A queue's state, in the parts the Redis twin keeps in keys of their own
/// (`store/redis/keys.rs`).
#[derive(Debug)]
pub(super) struct QueueState {
    pub(super) config: QueueConfig,
    pub(super) counters: Counters,
    pub(super) line: Line,
    pub(super) admissions: Admissions,
    pub(super) opening: Opening,
    pub(super) presence: Presence,
    pub(super) flow: FlowBuckets,
    /// Users taken out of line by clearing, told so while the queue stays
    /// closed.
    pub(super) cleared: HashSet<UserId>,
}

/// The line: who waits with which ticket, and its log of changes.
#[derive(Debug, Default)]
pub(super) struct Line {
    /// Last ticket given or reserved.
    pub(super) seq: u64,
    /// Tickets given so far: how a call tells it gave any, as a ticket
    /// from a sub-line's open block moves no sequence.
    pub(super) given: u64,
    /// Waiting users by ticket; `tickets` is its inverse and `ranks` counts
    /// it. The three always hold the same set.
    pub(super) waiting: BTreeMap<u64, UserId>,
    pub(super) tickets: HashMap<UserId, u64>,
    /// With more than one sub-line, each one's waiting tickets (the same
    /// set split by user), kept apart as each slot will keep its own, so
    /// a sub-line's snapshot reads only its own.
    pub(super) by_sub_line: Vec<BTreeSet<u64>>,
    pub(super) ranks: RankIndex,
    /// Each sub-line's log of changes to its part of the waiting set (one
    /// for a queue of one sub-line).
    pub(super) logs: Vec<Log>,
    /// Tickets of the lost line a re-made queue gave back from receipts:
    /// each once, whatever became of it here since.
    pub(super) given_back: HashSet<u64>,
    /// With more than one sub-line, their blocks and the head's leases:
    /// where new tickets come from and how far admission may reach.
    pub(super) sub_lines: Option<SubLines>,
}

/// Changes to a sub-line's waiting set by sequence number, the last
/// [`LINE_LOG_KEEP`] of them; `seq` is the last number given.
#[derive(Debug, Default)]
pub(super) struct Log {
    pub(super) events: BTreeMap<u64, LineEvent>,
    pub(super) seq: u64,
}

/// Who holds an admission, the rate's figures and bucket, and the results
/// kept for retries.
#[derive(Debug, Default)]
pub(super) struct Admissions {
    /// Admitted users by expiry; `admitted` holds the same users.
    pub(super) active: BTreeSet<(u64, UserId)>,
    pub(super) admitted: HashMap<UserId, Admission>,
    /// Admissions per second bucket (`now_ms / 1000`).
    pub(super) rate: BTreeMap<u64, u64>,
    pub(super) batches: HashMap<RequestId, (u64, Vec<Admitted>)>,
    /// `AdmitUsers` results by request id, with when each lapses.
    /// With the users they named, so a reused id is told apart.
    pub(super) named: HashMap<RequestId, (u64, Vec<UserId>, Vec<NamedAdmission>)>,
    /// The rate's token bucket: milli-tokens and when it was last refilled;
    /// `None` until first used (it starts full).
    pub(super) bucket: Option<(u64, u64)>,
}

/// The sale's recent figures in time buckets (see `flow.rs`).
#[derive(Debug, Default)]
pub(super) struct FlowBuckets {
    /// Arrivals and abandonments per slot of `FLOW_SLOT_MS`, the last
    /// minute only.
    pub(super) arrivals: BTreeMap<u64, u64>,
    pub(super) abandons: BTreeMap<u64, u64>,
    /// Admissions from the line by (10-second slot, bucket of the time
    /// waited), the last five minutes only.
    pub(super) waited: BTreeMap<(u64, usize), u64>,
    /// When old flow buckets were last dropped (seconds): every ten
    /// seconds, as the Redis prelude's `prune_flow` does, so a reader whose
    /// clock is behind finds the same buckets in both stores.
    pub(super) flow_pruned_s: u64,
    /// When tickets were given: (sub-line, highest ticket given in a
    /// second, that second), as each Redis `joined` sorted set orders
    /// them; `joined_second` indexes it by sub-line and second.
    pub(super) joined: BTreeSet<(usize, u64, u64)>,
    pub(super) joined_second: HashMap<(usize, u64), u64>,
}

impl QueueState {
    pub(super) fn new(config: QueueConfig) -> Self {
        let presence = Presence::new(config.shards, config.presence_since_ms);
        Self {
            line: Line {
                seq: config.adoption.map_or(0, |a| a.top),
                sub_lines: (config.shards > 1).then(|| SubLines::new(config.shards)),
                logs: (0..config.shards.max(1)).map(|_| Log::default()).collect(),
                by_sub_line: match config.shards {
                    0 | 1 => Vec::new(),
                    shards => vec![BTreeSet::new(); shards as usize],
                },
                ..Line::default()
            },
            config,
            counters: Counters::default(),
            admissions: Admissions::default(),
            opening: Opening {
                prequeue: BTreeMap::new(),
                prequeued: HashMap::new(),
                prequeue_seq: 0,
                pool: BTreeSet::new(),
                pooled: HashMap::new(),
                draw: Draw::None,
                draw_next: 0,
            },
            presence,
            flow: FlowBuckets::default(),
            cleared: HashSet::new(),
        }
    }

    /// The sub-line holding `user`'s place (0 for a queue of one).
    pub(super) fn sub_line(&self, user: &UserId) -> usize {
        match self.line.logs.len() {
            1 => 0,
            shards => sub_line_of(user.as_str(), shards as u32) as usize,
        }
    }

    /// Sub-line `sub_line`'s log.
    pub(super) fn log(&self, sub_line: u32) -> Result<&Log> {
        self.line.logs.get(sub_line as usize).ok_or_else(|| {
            Error::Internal(format!(
                "sub-line {sub_line} asked of a queue of {}",
                self.line.logs.len()
            ))
        })
    }

    /// Logs a change in `user`'s sub-line's log.
    pub(super) fn log_event(&mut self, user: &UserId, event: LineEvent) {
        let at = self.sub_line(user);
        self.log_in(at, event);
    }

    pub(super) fn log_in(&mut self, sub_line: usize, event: LineEvent) {
        let Some(log) = self.line.logs.get_mut(sub_line) else {
            return;
        };
        log.seq += 1;
        log.events.insert(log.seq, event);
        if log.seq > LINE_LOG_KEEP {
            let keep_from = log.seq - LINE_LOG_KEEP + 1;
            log.events = log.events.split_off(&keep_from);
        }
    }

    /// What every operation does first: end the admissions whose time is
    /// up, and open the queue if its opening is due.
    pub(super) fn prepare(&mut self, now_ms: u64) {
        while let Some((expires_at, _)) = self.admissions.active.first() {
            if *expires_at > now_ms {
                break;
            }
            if let Some((_, user)) = self.admissions.active.pop_first() {
                self.admissions.admitted.remove(&user);
                self.counters.expired += 1;
            }
        }
        self.open_if_due(now_ms);
    }

    pub(super) fn in_line(&self) -> u64 {
        (self.line.waiting.len() + self.opening.prequeue.len() + self.opening.pool.len()) as u64
    }

    /// Takes up to `wanted` whole tokens from the rate's bucket (see the
    /// Redis prelude's `take_tokens`); returns how many it took.
    pub(super) fn take_tokens(&mut self, wanted: u64, now_ms: u64) -> u64 {
        let rate = u64::from(self.config.admit_per_second);
        let capacity = rate * 1000;
        let (mut tokens, mut stamp) = self.admissions.bucket.unwrap_or((capacity, now_ms));
        if now_ms > stamp {
            tokens = capacity.min(tokens.saturating_add((now_ms - stamp).saturating_mul(rate)));
            stamp = now_ms;
        }
        tokens = tokens.min(capacity);
        let taken = wanted.min(tokens / 1000);
        self.admissions.bucket = Some((tokens - taken * 1000, stamp));
        taken
    }

    /// Slots free under `max_active` (`u64::MAX` when there is no cap).
    pub(super) fn free_slots(&self) -> u64 {
        match self.config.max_active {
            0 => u64::MAX,
            cap => u64::from(cap).saturating_sub(self.admissions.active.len() as u64),
        }
    }

    pub(super) fn admit_user(&mut self, user: UserId, ticket: u64, now_ms: u64) -> Admission {
        let expires_at_ms = now_ms + self.config.admission_ttl.as_millis() as u64;
        let admission = Admission {
            ticket,
            admitted_at_ms: now_ms,
            expires_at_ms,
            queue_epoch_ms: self.config.created_at_ms,
        };
        self.unsee(&user);
        self.admissions.active.insert((expires_at_ms, user.clone()));
        self.admissions.admitted.insert(user, admission.clone());
        admission
    }

    /// Counts `n` admissions made at `now_ms` for the stats and the rate.
    pub(super) fn record_admissions(&mut self, n: u64, now_ms: u64) {
        if n == 0 {
            return;
        }
        self.counters.admitted += n;
        *self.admissions.rate.entry(now_ms / 1000).or_default() += n;
        let first = RateSample::first_bucket(now_ms);
        self.admissions.rate.retain(|bucket, _| *bucket >= first);
    }

    /// A new ticket for `user`: the next of the sequence, or with
    /// sub-lines, the next of their sub-line's block, leased if need be for
    /// the `wanted` users of the call still to serve on it (see
    /// `domain::shards::next_block_size`).
    pub(super) fn new_ticket(&mut self, user: &UserId, now_ms: u64, wanted: u64) -> u64 {
        self.line.given += 1;
        match &mut self.line.sub_lines {
            Some(sub_lines) => sub_lines.ticket(user.as_str(), &mut self.line.seq, now_ms, wanted),
            None => {
                self.line.seq += 1;
                self.line.seq
            }
        }
    }

    /// Over sub-lines one call is one step: its places' positions, the
    /// line's length and the rate are read after it, as the Redis store
    /// reads them from every sub-line once the call is done. In one slot
    /// each place stays as it was when its user was served.
    pub(super) fn read_after_call<'p>(
        &mut self,
        places: impl Iterator<Item = &'p mut Place>,
        now_ms: u64,
    ) {
        if self.line.sub_lines.is_none() {
            return;
        }
        let in_line = self.in_line();
        let rate = self.rate_sample(now_ms);
        for place in places {
            if let PlaceState::Waiting { position } = &mut place.state {
                *position = self.line.ranks.count_up_to(place.ticket);
            }
            place.waiting_count = in_line;
            place.rate = rate;
        }
    }

    /// Records when the tickets a call gave were given: in one slot up to
    /// the sequence, over sub-lines up to the highest given by each
    /// sub-line that gave any since `before` (`last_given`), as each
    /// sub-line's script in Redis notes its own.
    pub(super) fn note_joined_after_call(&mut self, before: &[(usize, u64)], now_ms: u64) {
        let given: Vec<(usize, u64)> = match &self.line.sub_lines {
            None => return self.note_joined(now_ms),
            Some(sub_lines) => sub_lines.last_given(),
        };
        for (at, highest) in given {
            if !before.contains(&(at, highest)) {
                self.note_joined_in(at, highest, now_ms);
            }
        }
    }

    /// Each sub-line's highest ticket given so far (none in one slot), to
    /// tell after a call which gave tickets.
    pub(super) fn last_given(&self) -> Vec<(usize, u64)> {
        self.line
            .sub_lines
            .as_ref()
            .map_or_else(Vec::new, SubLines::last_given)
    }

    /// Whether `ticket`, just given to `user`, is the first of a block: a
    /// run of newcomers logged as one change is one block's tickets, as a
    /// sub-line in Redis asks for a lease between two blocks.
    pub(super) fn starts_block(&self, user: &UserId, ticket: u64) -> bool {
        self.line
            .sub_lines
            .as_ref()
            .is_some_and(|s| s.block_first(user.as_str()) == Some(ticket))
    }

    /// Moves the ticket sequence other than by a block's lease (the
    /// opening's reserved block, a place given back from a receipt). Every
    /// block leased before gives no ticket from then on: one may hold the
    /// ticket given back, or lie below the opening's block.
    pub(super) fn move_seq(&mut self, seq: u64) {
        self.line.seq = seq;
        if let Some(sub_lines) = &mut self.line.sub_lines {
            sub_lines.close_blocks();
        }
    }

    /// Whether newcomers may be admitted as they join. Not with sub-lines:
    /// a join sees its own sub-line only, not who waits on the others nor
    /// the head's count, so newcomers take a ticket and the admitter takes
    /// them in order.
    pub(super) fn admits_on_join(&self) -> bool {
        self.line.sub_lines.is_none()
    }

    /// The ticket admission may not reach at `now_ms`: with sub-lines the
    /// head's watermark, so nobody who joins later stands ahead of someone
    /// admitted; with one, none.
    fn admission_bound(&mut self, now_ms: u64) -> u64 {
        match &mut self.line.sub_lines {
            Some(sub_lines) => sub_lines.watermark(self.line.seq, now_ms),
            None => u64::MAX,
        }
    }

    /// How many waiting users admission may take at `now_ms`.
    pub(super) fn admissible(&mut self, now_ms: u64) -> u64 {
        let bound = self.admission_bound(now_ms);
        match bound {
            u64::MAX => self.line.waiting.len() as u64,
            _ => self.line.waiting.range(..bound).count() as u64,
        }
    }

    /// Admits up to `room` waiting users, lowest tickets first, none at or
    /// above [`Self::admission_bound`].
    pub(super) fn admit_next(&mut self, room: u64, now_ms: u64) -> Vec<Admitted> {
        let below = self.admission_bound(now_ms);
        let mut admitted: Vec<Admitted> = Vec::new();
        while (admitted.len() as u64) < room {
            if self
                .line
                .waiting
                .first_key_value()
                .is_none_or(|(t, _)| *t >= below)
            {
                break;
            }
            let Some((ticket, user)) = self.line.waiting.pop_first() else {
                break;
            };
            self.line.tickets.remove(&user);
            self.line.ranks.remove(ticket);
            self.sub_line_waiting(&user, |set| set.remove(&ticket));
            self.log_event(
                &user,
                LineEvent::Left {
                    ticket,
                    admitted: true,
                },
            );
            let admission = self.admit_user(user.clone(), ticket, now_ms);
            admitted.push(Admitted { user, admission });
        }
        self.record_admissions(admitted.len() as u64, now_ms);
        // Each sub-line's admitted by its own marks (one slot: all of them).
        let mut tickets: Vec<Vec<u64>> = vec![Vec::new(); self.line.logs.len()];
        for a in &admitted {
            tickets[self.sub_line(&a.user)].push(a.admission.ticket);
        }
        for (at, tickets) in tickets.iter().enumerate() {
            self.count_waited_in(at, tickets, now_ms);
        }
        admitted
    }

    pub(super) fn add_waiting(&mut self, user: UserId, ticket: u64) {
        self.insert_waiting(user.clone(), ticket);
        self.log_event(&user.clone(), LineEvent::Joined { ticket, user });
    }

    /// Puts a user in line without logging it: the caller logs a run.
    pub(super) fn insert_waiting(&mut self, user: UserId, ticket: u64) {
        self.line.waiting.insert(ticket, user.clone());
        self.sub_line_waiting(&user, |set| set.insert(ticket));
        self.line.tickets.insert(user, ticket);
        self.line.ranks.insert(ticket);
    }

    /// Changes `user`'s sub-line's set of waiting tickets, if the queue has
    /// several.
    fn sub_line_waiting(&mut self, user: &UserId, change: impl FnOnce(&mut BTreeSet<u64>) -> bool) {
        if self.line.by_sub_line.is_empty() {
            return;
        }
        let at = self.sub_line(user);
        if let Some(set) = self.line.by_sub_line.get_mut(at) {
            change(set);
        }
    }

    /// Up to `limit` waiting tickets of `sub_line` above `after`.
    pub(super) fn sub_line_tickets(&self, sub_line: u32, after: u64, limit: u32) -> Vec<u64> {
        let from = after.saturating_add(1);
        match self.line.by_sub_line.get(sub_line as usize) {
            Some(set) => set.range(from..).take(limit as usize).copied().collect(),
            None => self
                .line
                .waiting
                .range(from..)
                .take(limit as usize)
                .map(|(ticket, _)| *ticket)
                .collect(),
        }
    }

    /// Counts and logs a run of newcomers (first ticket, count, their
    /// sub-line) put in line by enqueue_many, as enqueue_many.lua's end_run
    /// does.
    pub(super) fn end_run(&mut self, run: Option<(u64, u64, usize)>, now_ms: u64) {
        if let Some((first_ticket, count, sub_line)) = run {
            self.count_arrivals(count, now_ms);
            self.log_in(
                sub_line,
                LineEvent::JoinedRun {
                    first_ticket,
                    count,
                },
            );
        }
    }

    pub(super) fn remove_waiting(&mut self, user: &UserId) -> Option<u64> {
        let ticket = self.line.tickets.remove(user)?;
        self.line.waiting.remove(&ticket);
        self.sub_line_waiting(user, |set| set.remove(&ticket));
        self.line.ranks.remove(ticket);
        Some(ticket)
    }

    /// Takes a user out of the line wherever they stand in it.
    pub(super) fn remove_from_line(&mut self, user: &UserId) -> bool {
        let left_waiting = self.remove_waiting(user);
        if let Some(ticket) = left_waiting {
            self.log_event(
                user,
                LineEvent::Left {
                    ticket,
                    admitted: false,
                },
            );
        }
        let left_prequeue = left_waiting.is_none()
            && (self
                .opening
                .prequeued
                .remove(user)
                .map(|arrival| self.opening.prequeue.remove(&arrival))
                .is_some()
                || self
                    .opening
                    .pooled
                    .remove(user)
                    .map(|key| self.opening.pool.remove(&(key, user.clone())))
                    .is_some());
        if left_prequeue {
            self.log_event(user, LineEvent::PreQueueLeft { user: user.clone() });
        }
        let removed = left_waiting.is_some() || left_prequeue;
        if removed {
            self.unsee(user);
        }
        removed
    }

    pub(super) fn end_admission(&mut self, user: &UserId) -> bool {
        match self.admissions.admitted.remove(user) {
            Some(admission) => {
                self.admissions
                    .active
                    .remove(&(admission.expires_at_ms, user.clone()));
                true
            }
            None => false,
        }
    }

    pub(super) fn place(&self, state: PlaceState, ticket: u64, now_ms: u64) -> Place {
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

    pub(super) fn admitted_place(&self, admission: Admission, now_ms: u64) -> Place {
        let ticket = admission.ticket;
        self.place(PlaceState::Admitted(admission), ticket, now_ms)
    }

    /// The place of a user; admits a waiting user on the spot in
    /// pass-through mode (unless the opening draw is still placing people).
    pub(super) fn current_place(&mut self, user: &UserId, now_ms: u64) -> Option<Place> {
        if let Some(admission) = self.admissions.admitted.get(user) {
            return Some(self.admitted_place(admission.clone(), now_ms));
        }
        if self.opening.prequeued.contains_key(user) || self.opening.pooled.contains_key(user) {
            return Some(self.prequeue_place(now_ms));
        }
        let Some(&ticket) = self.line.tickets.get(user) else {
            // Cleared from the line of a queue still closed: told so, as
            // those waiting are.
            let cleared = self.config.mode == QueueMode::Closed && self.cleared.contains(user);
            return cleared.then(|| self.place(PlaceState::Closed, 0, now_ms));
        };
        Some(match self.config.mode {
            QueueMode::PassThrough if !self.opening.draw.in_progress() => {
                self.remove_waiting(user);
                self.log_event(
                    user,
                    LineEvent::Left {
                        ticket,
                        admitted: true,
                    },
                );
                let admission = self.admit_user(user.clone(), ticket, now_ms);
                self.record_admissions(1, now_ms);
                self.admitted_place(admission, now_ms)
            }
            QueueMode::Closed => self.place(PlaceState::Closed, ticket, now_ms),
            _ => {
                let position = self.line.ranks.count_up_to(ticket);
                self.place(PlaceState::Waiting { position }, ticket, now_ms)
            }
        })
    }

    /// Drops the kept results of `AdmitBatch` and `AdmitUsers` whose time is
    /// up: both kinds, whichever call comes, as the Redis scripts share one
    /// hash and one expiry set for them.
    pub(super) fn forget_lapsed_results(&mut self, now_ms: u64) {
        self.admissions
            .batches
            .retain(|_, (expires_at, _)| *expires_at > now_ms);
        self.admissions
            .named
            .retain(|_, (expires_at, _, _)| *expires_at > now_ms);
    }

    /// Admits one named user out of turn; the caller has run `prepare`.
    /// Twin of the Redis `admit_users` loop.
    pub(super) fn admit_named(
        &mut self,
        user: &UserId,
        override_capacity: bool,
        now_ms: u64,
    ) -> NamedAdmission {
        if let Some(admission) = self.admissions.admitted.get(user) {
            return NamedAdmission::AlreadyAdmitted(admission.clone());
        }
        let capped = self.config.mode != QueueMode::PassThrough && !override_capacity;
        if capped && self.free_slots() == 0 {
            return NamedAdmission::NoCapacity;
        }
        let ticket = if let Some(ticket) = self.remove_waiting(user) {
            self.log_event(
                user,
                LineEvent::Left {
                    ticket,
                    admitted: true,
                },
            );
            ticket
        } else {
            // Pre-queued (counted when they arrived) or not in line at all:
            // a ticket of their own, past every other.
            if !self.remove_from_line(user) {
                self.count_arrivals(1, now_ms);
            }
            self.new_ticket(user, now_ms, 1)
        };
        let admission = self.admit_user(user.clone(), ticket, now_ms);
        self.counters.admitted += 1;
        NamedAdmission::Admitted(admission)
    }

    /// Takes up to `limit` users out of line, in the order of one slot:
    /// the waiting by ticket, then the pre-queued by arrival, then the
    /// draw's pool by key; over sub-lines sub-line by sub-line (0 first),
    /// each in that order, as the Redis store clears them. How many.
    pub(super) fn clear_some(&mut self, limit: u64) -> u64 {
        let in_order = |of: &dyn Fn(&UserId) -> bool| -> Vec<UserId> {
            let waiting = self.line.waiting.values();
            let prequeued = self.opening.prequeue.values();
            let pooled = self.opening.pool.iter().map(|(_, user)| user);
            waiting
                .chain(prequeued)
                .chain(pooled)
                .filter(|user| of(user))
                .take(limit as usize)
                .cloned()
                .collect()
        };
        let mut users = match self.line.by_sub_line.len() {
            0 => in_order(&|_| true),
            shards => (0..shards)
                .flat_map(|at| in_order(&|user| self.sub_line(user) == at))
                .collect(),
        };
        users.truncate(limit as usize);
        let mut cleared = 0;
        for user in users {
            if self.remove_from_line(&user) {
                self.cleared.insert(user);
                cleared += 1;
            }
        }
        cleared
    }

    /// The refusal of a closed queue, with its reason.
    pub(super) fn closed(&self, queue: &QueueId) -> Error {
        Error::QueueClosed {
            queue: queue.to_string(),
            reason: self.config.closed_reason.as_deref().map(str::to_owned),
        }
    }

    /// One user's enqueue, with `wanted` users of the call still to serve
    /// on their sub-line; the caller has run `prepare`. Twin of the Redis
    /// `enqueue_one`.
    pub(super) fn enqueue_one(
        &mut self,
        queue: &QueueId,
        user: &UserId,
        now_ms: u64,
        wanted: u64,
    ) -> Result<Place> {
        if let Some(admission) = self.admissions.admitted.get(user) {
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
        if self.opening.draw == Draw::None
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
            self.opening.prequeue_seq += 1;
            let arrival = self.opening.prequeue_seq;
            self.opening.prequeue.insert(arrival, user.clone());
            self.opening.prequeued.insert(user.clone(), arrival);
            self.count_arrivals(1, now_ms);
            self.see(user, now_ms);
            return Ok(self.prequeue_place(now_ms));
        }
        let ticket = self.new_ticket(user, now_ms, wanted);
        self.count_arrivals(1, now_ms);
        let limited = self.config.max_active > 0 || self.config.admit_per_second > 0;
        let admit_now = !self.opening.draw.in_progress()
            && match self.config.mode {
                QueueMode::PassThrough => true,
                QueueMode::Queueing
                    if limited
                        && self.admits_on_join()
                        && self.line.waiting.is_empty()
                        && self.free_slots() > 0 =>
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
        let position = self.line.ranks.count_up_to(ticket);
        Ok(self.place(PlaceState::Waiting { position }, ticket, now_ms))
    }

    pub(super) fn config(&self) -> QueueConfig {
        self.config.clone()
    }
}
