//! Where queues live. One trait, two stores with one meaning:
//!
//! - [`RedisStore`], the production store: every transition is one Lua
//!   script, so any number of replicas can share a queue.
//! - [`MemoryStore`], the zero-setup store for a single process and the
//!   executable specification: the conformance and property tests hold the
//!   Redis store to its answers.
//!
//! Semantics both implement:
//!
//! - A ticket is a per-queue sequence number given at the first enqueue;
//!   position is the number of waiting users with a lower ticket, plus one.
//! - Admission takes the lowest tickets first. An admission lasts until its
//!   expiry (then it is counted as expired and frees its slot) or until it is
//!   completed or the user leaves.
//! - `QUEUEING`: a newcomer is admitted at once when the queue is limited
//!   (`max_active > 0` or `admit_per_second > 0`), nobody waits, a slot is
//!   free and, with a rate, the rate's token bucket has a token; otherwise
//!   they wait. Automatic admission follows `admit_per_second` through one
//!   token bucket per queue (one second of burst) shared by all replicas;
//!   `AdmitBatch` respects `max_active` but not the rate. `PASS_THROUGH`: everyone
//!   is admitted at once, including those already waiting the next time they
//!   are looked at. `PAUSED`: joins are accepted, admission is refused.
//!   `CLOSED`: joins are refused, waiting users see the closed state, places
//!   are kept.
//! - Scheduled opening: before `opens_at` (within the pre-queue window)
//!   arrivals are pre-queued, without a ticket. The first call at or after
//!   `opens_at` freezes the pre-queue and reserves a block of tickets for
//!   it; later arrivals get tickets after the block. `draw_step` then
//!   places the pre-queued users in the drawn order ([`crate::domain::draw`])
//!   a chunk per call; nobody is admitted until the draw is complete.
//! - Presence: enqueue, a place lookup with `touch`, and [`QueueStore::touch`]
//!   record a sign of life for users in line. `reap` releases those silent
//!   for longer than the heartbeat timeout and a quarter more
//!   ([`crate::domain::QueueConfig::release_after_ms`]; not while the queue is closed,
//!   and counting presence only from the last reopening, or from just after
//!   the first pass that follows a gap in the passes:
//!   [`crate::domain::presence_after_gap`]).
//! - Time is always the caller's `now_ms`, never the store's own clock.
//!
//! A store built over another (the hub's watched store, the tests' held
//! ones) passes calls on through the one macro in `forward.rs`.

mod forward;
mod memory;
mod redis;

use std::sync::Arc;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

pub use self::memory::MemoryStore;
#[cfg(feature = "testkit")]
pub use self::redis::{ENQUEUE_ONE, script_names};
pub use self::redis::{RedisOptions, RedisStore};
use crate::Result;
use crate::domain::{
    AdmissionCheck, AdmissionStatus, Admitted, LineChanges, LineSnapshot, NamedAdmission, Place,
    PlaceClaim, QueueConfig, QueueId, QueueStats, QueueUpdate, RequestId, Restoration, UserId,
};
pub(crate) use forward::queue_store_over;

/// How long an `AdmitBatch` result is kept for a retry with the same
/// request id.
pub const BATCH_RESULT_TTL_MS: u64 = 600_000;

/// How long the result of a batch whose id the service made up is kept: it
/// only has to outlive a Redis client's own resend, and admission services
/// that send no id would otherwise keep ten minutes of results in Redis.
pub const GENERATED_BATCH_RESULT_TTL_MS: u64 = 60_000;

/// How long the result of the batch with this id is kept.
pub fn batch_result_ttl_ms(request: &RequestId) -> u64 {
    if request.is_generated() {
        GENERATED_BATCH_RESULT_TTL_MS
    } else {
        BATCH_RESULT_TTL_MS
    }
}

/// The queue store. Every method is one atomic transition. No method has a
/// default: a wrapper (the hub's [`crate::watch::WatchedStore`]) must say
/// for each what it changes.
#[async_trait]
pub trait QueueStore: Send + Sync + 'static {
    /// Creates a queue; its `created_at_ms` must be set by the caller. A
    /// queue re-made after a loss (`adoption` set) gives its first ticket
    /// after the adoption's `top`, unless the store lost only part of it
    /// and makes it again from the rest (a queue over sub-lines whose head
    /// alone was lost): the queue it answers then is the one kept, of its
    /// own epoch.
    async fn create_queue(&self, config: &QueueConfig) -> Result<QueueConfig>;

    /// True when the queue is gone without a [`QueueStore::delete_queue`]:
    /// neither it nor the mark a deletion leaves exists. How the service
    /// tells a queue the store lost from one an operator deleted.
    async fn queue_lost(&self, queue: &QueueId) -> Result<bool>;

    /// Makes a lost queue again from what the store still holds of it,
    /// when it lost only part of it: a queue over sub-lines whose head
    /// alone was lost, found by its sub-lines, is made again as it was (its
    /// epoch, its settings, everyone in their place). `epoch_ms` is the
    /// lost queue's, as the caller knew it: parts of another queue of the
    /// same name (an earlier one, deleted) are never made again. `None`
    /// when nothing of it is left to make it from, or it is not lost. How a
    /// queue nobody declared comes back without an operator.
    async fn remake_from_parts(
        &self,
        queue: &QueueId,
        epoch_ms: u64,
        now_ms: u64,
    ) -> Result<Option<QueueConfig>>;

    async fn get_queue(&self, queue: &QueueId) -> Result<QueueConfig>;

    /// Queues with an id greater than `after`, in id order, at most `limit`.
    async fn list_queues(&self, after: Option<&QueueId>, limit: usize) -> Result<Vec<QueueConfig>>;

    /// Changes a queue. Moving or clearing the opening once it has happened
    /// is refused; clearing it before opens the queue now.
    async fn update_queue(
        &self,
        queue: &QueueId,
        update: &QueueUpdate,
        now_ms: u64,
    ) -> Result<QueueConfig>;

    /// Deletes a queue and everyone in it, leaving a mark that it was
    /// deleted (until it is created again). Consumed token ids are kept
    /// until the tokens expire.
    async fn delete_queue(&self, queue: &QueueId) -> Result<()>;

    /// Gives the user a ticket, or returns the place they hold.
    async fn enqueue(&self, queue: &QueueId, user: &UserId, now_ms: u64) -> Result<Place>;

    /// Enqueues several users of one queue in one atomic step, each exactly
    /// as [`QueueStore::enqueue`] would, in order. The outer error is the
    /// queue's (it does not exist, the store is unavailable); the inner ones
    /// are each user's.
    async fn enqueue_many(
        &self,
        queue: &QueueId,
        users: &[UserId],
        now_ms: u64,
    ) -> Result<Vec<Result<Place>>>;

    /// The places of several users of one queue; `None` for a user neither
    /// in line nor admitted. With `touch`, the lookup is a sign of life of
    /// those in line.
    async fn places(
        &self,
        queue: &QueueId,
        users: &[UserId],
        touch: bool,
        now_ms: u64,
    ) -> Result<Vec<Option<Place>>>;

    /// The place of one user, looked up by the user (a sign of life).
    async fn place(&self, queue: &QueueId, user: &UserId, now_ms: u64) -> Result<Option<Place>>;

    /// Gives a user who holds no place (nor was cleared from a closed queue)
    /// the place a receipt vouches for, when
    /// [`crate::domain::restore_decision`] allows it and nobody else holds
    /// its ticket: the place as [`QueueStore::place`] would then answer it
    /// (a sign of life). Nothing is given back while an opening is under
    /// way (pre-queue or draw).
    async fn restore(
        &self,
        queue: &QueueId,
        user: &UserId,
        claim: &PlaceClaim,
        now_ms: u64,
    ) -> Result<Restoration>;

    /// Records a sign of life for those of `users` still in line: one write
    /// for all the streams of one queue on one instance.
    async fn touch(&self, queue: &QueueId, users: &[UserId], now_ms: u64) -> Result<()>;

    /// Releases up to `limit` users in line who showed no sign of life
    /// within the heartbeat timeout; returns how many. Idempotent, safe on
    /// every replica at once.
    async fn reap(&self, queue: &QueueId, limit: u32, now_ms: u64) -> Result<u64>;

    /// Up to `limit` waiting tickets of sub-line `sub_line` (0 for a queue
    /// of one) above `after`, in order: a chunk of the line for an instance
    /// starting to follow it ([`crate::domain::LineSnapshot`] says how
    /// chunks join). One call's work is bounded by `limit`, however long
    /// the line.
    async fn line_snapshot(
        &self,
        queue: &QueueId,
        sub_line: u32,
        after: u64,
        limit: u32,
    ) -> Result<LineSnapshot>;

    /// Up to `limit` changes to sub-line `sub_line`'s waiting set after
    /// `after` in its log (each sub-line keeps its own, as its own slot
    /// will), and the queue's summary. One read however many users are
    /// watched.
    async fn line_changes(
        &self,
        queue: &QueueId,
        sub_line: u32,
        after: u64,
        limit: u32,
        now_ms: u64,
    ) -> Result<LineChanges>;

    /// Does one chunk of the opening draw with `seed` (used only by the step
    /// that starts it). True once the draw is complete or there is none.
    async fn draw_step(&self, queue: &QueueId, seed: &str, chunk: u32, now_ms: u64)
    -> Result<bool>;

    /// Gives up a user's place or admission. True if there was one.
    async fn leave(&self, queue: &QueueId, user: &UserId, now_ms: u64) -> Result<bool>;

    /// Admits up to `max_count` waiting users in ticket order, within
    /// `max_active`. With a request id, a repeat within
    /// [`BATCH_RESULT_TTL_MS`] returns the first result and admits nobody.
    async fn admit(
        &self,
        queue: &QueueId,
        max_count: u32,
        request: Option<&RequestId>,
        now_ms: u64,
    ) -> Result<Vec<Admitted>>;

    /// The automatic admitter's step: admits what the rate's token bucket,
    /// the free slots and the line allow (at most `max_count`); drains the
    /// line in pass-through mode. Replicas share the bucket.
    async fn admit_due(
        &self,
        queue: &QueueId,
        max_count: u32,
        now_ms: u64,
    ) -> Result<Vec<Admitted>>;

    /// Admits named users out of turn, in order: those waiting or
    /// pre-queued leave the line, others get a new ticket. Within
    /// `max_active` (but for pass-through) unless `override_capacity`;
    /// refused while closed. Counted as admissions, but not in the rate the
    /// line's estimates come from. A repeat of `request` within
    /// [`BATCH_RESULT_TTL_MS`] returns the first result and admits nobody.
    async fn admit_users(
        &self,
        queue: &QueueId,
        users: &[UserId],
        request: &RequestId,
        override_capacity: bool,
        now_ms: u64,
    ) -> Result<Vec<NamedAdmission>>;

    /// Takes up to `limit` users out of line (waiting by ticket, then
    /// pre-queued), counted as cleared; returns how many. Zero once the
    /// line is empty.
    async fn clear_step(&self, queue: &QueueId, limit: u32, now_ms: u64) -> Result<u64>;

    /// Ends a user's admission. True if there was an active one.
    async fn complete(&self, queue: &QueueId, user: &UserId, now_ms: u64) -> Result<bool>;

    /// Checks that the admission a genuine token names is still held and,
    /// with [`AdmissionCheck::consume`], marks the token used until the
    /// time it gives (by the caller's clock). A used token stays used when
    /// its queue is deleted; an admission of a deleted queue is revoked.
    async fn check_admission(
        &self,
        queue: &QueueId,
        check: &AdmissionCheck,
        now_ms: u64,
    ) -> Result<AdmissionStatus>;

    async fn stats(&self, queue: &QueueId, now_ms: u64) -> Result<QueueStats>;

    /// Succeeds when the store answers.
    async fn ping(&self) -> Result<()>;

    /// What in the store's setup would lose what it is given, if anything:
    /// a Redis that may evict keys under memory pressure drops places and
    /// consumed tokens without a word. The service is not ready while there
    /// is such a problem.
    async fn setup_problem(&self) -> Result<Option<String>>;

    /// Records that service instance `instance` holds `streams` open
    /// streams (`None`: it takes no part any more, it is draining), and
    /// returns the streams of every instance that reported within
    /// `ttl_ms`, in instance order, this one included. How replicas learn
    /// their share of the watchers.
    async fn share_load(
        &self,
        instance: &str,
        streams: Option<u64>,
        ttl_ms: u64,
        now_ms: u64,
    ) -> Result<Vec<u64>>;

    /// Tells the other instances that `queue` changed in a way its watchers
    /// must hear of at once (admissions, its configuration), so they read
    /// its line now rather than at their next refresh. Best effort: the
    /// refresh interval brings every change anyway. A store of one process
    /// has nobody to tell.
    async fn announce(&self, queue: &QueueId);

    /// Calls `heard` with each queue another instance announced (see
    /// [`QueueStore::announce`]) until `stop`.
    async fn hear_announcements(&self, heard: Announced, stop: CancellationToken);
}

/// What an instance does with another's announcement of a queue.
pub type Announced = Arc<dyn Fn(&QueueId) + Send + Sync>;

/// Instances' reports by instance: (streams, reported at ms). Keeps those
/// reported within `ttl_ms` and answers as [`QueueStore::share_load`]; the
/// memory store's whole implementation and the Redis script's meaning.
pub(crate) fn share_of(
    reports: &mut std::collections::BTreeMap<String, (u64, u64)>,
    instance: &str,
    streams: Option<u64>,
    ttl_ms: u64,
    now_ms: u64,
) -> Vec<u64> {
    match streams {
        Some(streams) => {
            reports.insert(instance.to_owned(), (streams, now_ms));
        }
        None => {
            reports.remove(instance);
        }
    }
    reports.retain(|_, (_, at)| now_ms.saturating_sub(*at) <= ttl_ms);
    reports.values().map(|(streams, _)| *streams).collect()
}
