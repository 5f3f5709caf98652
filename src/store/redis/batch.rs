//! Coalescing concurrent calls of one queue into one script call.
//!
//! A burst of arrivals is thousands of enqueues a second on one queue, and
//! the crowd refreshing its place as many lookups: each a script whose fixed
//! cost (dispatch, reading the config, ending expired admissions, the rate)
//! dwarfs the per-user work. Each queue with such calls in flight has a task
//! per kind of call that takes whatever requests are waiting and sends them
//! as one script call. Nothing waits on purpose: a lone request goes out at
//! once, and requests batch up only while an earlier call is in flight, so
//! latency does not grow when there is no crowd.
//!
//! When Redis is slow, requests must not pile up to be carried out long
//! after their callers were told they failed. Each request carries its
//! deadline (the store timeout from its arrival): its caller is answered
//! `UNAVAILABLE` then, whatever the task is doing, and the task drops, unsent,
//! every request whose deadline passed or whose caller went away. The
//! waiting requests of a queue are bounded; past the bound a caller is told
//! at once. Only a batch already sent when Redis stalled can still be
//! carried out after its callers were answered.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use redis::{Script, ScriptInvocation, Value};

use super::breaker::{Breaker, bounded, guard};
use super::lua::Scripts;
use super::reply::{Reply, parse_enqueued, parse_place};
use super::rounds::Coming;
use super::sub_lines::{Layout, Layouts, SubLineLink, routed};
use super::topology::Connector;
use crate::domain::shards::TAU_MS;
use crate::domain::{Place, QueueId, UserId};
use crate::{Error, Result};

/// Most users in one call, so one script never holds Redis for long.
const MAX_BATCH: usize = 256;

/// Most requests of one kind waiting for one queue's task. A burst beyond
/// it is answered `UNAVAILABLE` at once rather than queued behind a Redis
/// that cannot keep up.
const MAX_WAITING: usize = 20_000;

/// A queue's task ends after this long without requests (at once after a
/// call finds no such queue), so made-up queue ids leave nothing behind.
const IDLE: Duration = Duration::from_secs(5);

/// The calls that are coalesced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum Op {
    /// Enqueue (`enqueue_many`).
    Enqueue,
    /// A user looking up their own place: a sign of life (`places`).
    Place,
}

struct Pending {
    user: UserId,
    now_ms: u64,
    /// When the request reached the task's queue: its clock is moved on by
    /// the time it waited there.
    arrived: Instant,
    /// When the caller stops waiting (and is told `UNAVAILABLE`).
    deadline: Instant,
    reply: oneshot::Sender<Result<Option<Place>>>,
}

impl Pending {
    /// Nobody waits for the answer any more.
    fn abandoned(&self, now: Instant) -> bool {
        self.reply.is_closed() || now >= self.deadline
    }
}

/// A batching task's key: the queue, the kind of call, and the sub-line
/// of the users it takes (0 for a queue in one slot).
pub(super) type Lane = (QueueId, Op, usize);

type Senders = Arc<Mutex<HashMap<Lane, mpsc::Sender<Pending>>>>;

#[derive(Default)]
pub(super) struct Batcher {
    queues: Senders,
}

impl Batcher {
    /// Queues (and kinds of call) with a batching task now.
    #[cfg(test)]
    pub(super) fn tasks(&self) -> usize {
        self.queues.lock().map_or(0, |q| q.len())
    }

    /// Runs a call for one user through the batching task of `key` (a
    /// queue, the kind of call, and the user's sub-line); `caller` is built
    /// only when there is no task yet, not on every call.
    ///
    /// Each sub-line of a queue has a task of its own, so its users are
    /// coalesced into calls as large as one slot's would be, rather than
    /// one call of the queue split K ways. The sub-line is only a lane:
    /// whatever users a call holds, the store sends each to its own
    /// sub-line, so a user routed by a layout read before the queue was
    /// made again is still served right.
    pub(super) async fn call<F, Fut>(
        &self,
        key: Lane,
        caller: F,
        user: &UserId,
        now_ms: u64,
        timeout: Duration,
    ) -> Result<Option<Place>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<QueueCaller>>,
    {
        let deadline = Instant::now() + timeout;
        let (reply, answer) = oneshot::channel();
        let pending = Pending {
            user: user.clone(),
            now_ms,
            arrived: Instant::now(),
            deadline,
            reply,
        };
        if let Some(pending) = self.send(&key, pending, None)? {
            let caller = caller().await?;
            if self.send(&key, pending, Some(caller))?.is_some() {
                return Err(Error::Internal("the batching task stopped".into()));
            }
        }
        match tokio::time::timeout_at(deadline, answer).await {
            Ok(Ok(answer)) => answer,
            // The task ended without an answer (the runtime is stopping):
            // the call was not sent.
            Ok(Err(_)) | Err(_) => Err(unanswered(timeout)),
        }
    }

    /// Hands a request to the live task; with no live task, starts one with
    /// `caller` if given, or gives the request back.
    fn send(
        &self,
        key: &Lane,
        pending: Pending,
        caller: Option<QueueCaller>,
    ) -> Result<Option<Pending>> {
        let mut queues = self
            .queues
            .lock()
            .map_err(|_| Error::Internal("batcher lock poisoned".into()))?;
        let sender = match (queues.get(key), caller) {
            (Some(sender), _) if !sender.is_closed() => sender.clone(),
            (_, Some(caller)) => {
                let (tx, rx) = mpsc::channel(MAX_WAITING);
                let caller = Arc::new(caller);
                tokio::spawn(run(caller, Arc::clone(&self.queues), key.clone(), rx));
                queues.insert(key.clone(), tx.clone());
                tx
            }
            (_, None) => return Ok(Some(pending)),
        };
        match sender.try_send(pending) {
            Ok(()) => Ok(None),
            Err(mpsc::error::TrySendError::Full(_)) => Err(Error::Unavailable(format!(
                "{MAX_WAITING} calls of this queue are already waiting for Redis"
            ))),
            Err(mpsc::error::TrySendError::Closed(pending)) => Ok(Some(pending)),
        }
    }
}

fn unanswered(timeout: Duration) -> Error {
    Error::Unavailable(format!("no answer from Redis within {timeout:?}"))
}

/// Tells the queue's round, however a join lane's task ends, that the lane
/// has nothing waiting.
struct Idle<'a>(&'a QueueCaller, &'a Lane);

impl Drop for Idle<'_> {
    fn drop(&mut self) {
        after_call(self.0, self.1, false);
    }
}

/// Tells the queue's round whether a read may wait for a join lane's next
/// call (`rounds.rs`, `Rounds::lane_after`): lookups carry no read.
pub(super) fn after_call(caller: &QueueCaller, key: &Lane, more: bool) {
    if key.1 == Op::Enqueue {
        caller.rounds.lane_after(&key.0, key.2, more);
    }
}

async fn run(
    caller: Arc<QueueCaller>,
    queues: Senders,
    key: Lane,
    mut rx: mpsc::Receiver<Pending>,
) {
    let _idle = Idle(&caller, &key);
    // When the task's last call ended.
    let mut last_ended: Option<Instant> = None;
    loop {
        let first = match tokio::time::timeout(IDLE, rx.recv()).await {
            Ok(Some(first)) => first,
            Ok(None) => return,
            Err(_) => {
                // Idle: leave, unless a request arrived meanwhile. Senders
                // are handed out under the same lock, so none is lost.
                let Ok(mut senders) = queues.lock() else {
                    return;
                };
                match rx.try_recv() {
                    Ok(first) => first,
                    Err(_) => {
                        senders.remove(&key);
                        return;
                    }
                }
            }
        };
        let mut users = Vec::new();
        let mut replies = Vec::new();
        // A batch is stamped when it is sent: each request's clock moved on
        // by the time it waited behind the task's previous call, the latest
        // standing for all of them. Stamped with its requests' own
        // readings, a batch that waited behind a slow call would run as of
        // then, and over sub-lines take tickets from a block that closed
        // meanwhile, below an admission planned since. A request that came
        // after that call ended waited for nothing but the task to wake,
        // and keeps its reading, so one caller after another sees its own
        // clock, as a store without batching would; so does one that
        // waited less than τ.
        let mut now_ms = 0;
        let mut next = Some(first);
        let now = Instant::now();
        while let Some(pending) = next.take() {
            if pending.abandoned(now) {
                // Not sent. Its caller is told, if it is still there (its
                // own timer may fire a moment after this one).
                let _ = pending.reply.send(Err(unanswered(caller.timeout)));
            } else {
                users.push(pending.user);
                replies.push(pending.reply);
                let waited = match last_ended {
                    Some(ended) if pending.arrived < ended => {
                        now.saturating_duration_since(pending.arrived).as_millis() as u64
                    }
                    _ => 0,
                };
                // A wait shorter than τ closes no block the request could
                // not have found closed anyway; a caller's clock is kept
                // as read then.
                let waited = if waited >= TAU_MS { waited } else { 0 };
                now_ms = now_ms.max(pending.now_ms.saturating_add(waited));
            }
            if users.len() < MAX_BATCH {
                next = rx.try_recv().ok();
            }
        }
        if users.is_empty() {
            if rx.is_empty() {
                after_call(&caller, &key, false);
            }
            continue;
        }
        let answers: Result<Vec<Result<Option<Place>>>> = match key.1 {
            Op::Enqueue => match caller.join_many(&users, now_ms, Some(key.2)).await {
                // Over sub-lines the places are read in the queue's next
                // round, and the lane's next call waits for that read as
                // it always did, so calls stay as full; but a read that
                // comes to ride on the next call (`rounds.rs`) has it sent
                // at once when a full call is waiting, which is as full
                // sent now as later.
                Ok(joined @ Joined::ToRead { .. }) => {
                    let reader = Arc::clone(&caller);
                    let mut read = tokio::spawn(async move {
                        let answers = reader.read_joined(joined, now_ms).await;
                        answer(replies, answers.map(some));
                    });
                    after_call(&caller, &key, true);
                    caller
                        .rounds
                        .rider_or(&key.0, key.2, &mut read, || rx.len() >= MAX_BATCH)
                        .await;
                    // Requests that came meanwhile waited behind the read.
                    last_ended = Some(Instant::now());
                    after_call(&caller, &key, rx.len() >= MAX_BATCH);
                    continue;
                }
                Ok(joined) => caller.read_joined(joined, now_ms).await.map(some),
                Err(error) => Err(error),
            },
            Op::Place => caller
                .places(&users, true, now_ms)
                .await
                .map(|places| places.into_iter().map(Ok).collect()),
        };
        // Before any reply: a caller answered comes after the call ended.
        last_ended = Some(Instant::now());
        if rx.is_empty() {
            after_call(&caller, &key, false);
        }
        // No such queue (a made-up id, or deleted): nothing to keep a task
        // for, unless requests came meanwhile (the queue may have been
        // created since; they are sent as usual).
        if answer(replies, answers)
            && let Ok(mut senders) = queues.lock()
            && rx.is_empty()
        {
            senders.remove(&key);
            return;
        }
    }
}

fn some(answers: Vec<Result<Place>>) -> Vec<Result<Option<Place>>> {
    answers.into_iter().map(|a| a.map(Some)).collect()
}

type Replies = Vec<oneshot::Sender<Result<Option<Place>>>>;

/// Answers a batch's callers, each with their own answer or all with the
/// call's error: whether that error was that the queue does not exist.
fn answer(replies: Replies, answers: Result<Vec<Result<Option<Place>>>>) -> bool {
    let answers = answers.and_then(|answers| {
        if answers.len() == replies.len() {
            Ok(answers)
        } else {
            Err(Error::Internal(format!(
                "Redis answered {} of {} batched calls",
                answers.len(),
                replies.len()
            )))
        }
    });
    match answers {
        Ok(answers) => {
            for (reply, answer) in replies.into_iter().zip(answers) {
                let _ = reply.send(answer);
            }
            false
        }
        Err(error) => {
            let gone = matches!(error, Error::QueueNotFound(_));
            for reply in replies {
                let _ = reply.send(Err(error.clone()));
            }
            gone
        }
    }
}

/// What a lane's join call did: answered in full (one slot), or joined
/// over sub-lines with the places still to read.
pub(super) enum Joined {
    Answered(Vec<Result<Place>>),
    ToRead {
        layout: Arc<Layout>,
        places: Vec<(Result<Place>, u64)>,
        coming: Coming,
    },
}

/// Users per `places` script call, so one call never holds Redis for long.
pub(super) const PLACES_CHUNK: usize = 500;

/// What a queue's batching task needs to call Redis on its own.
pub(super) struct QueueCaller {
    pub(super) queue: QueueId,
    pub(super) connector: Connector,
    pub(super) keys: [String; super::keys::QUEUE_KEYS],
    pub(super) scripts: Arc<Scripts>,
    pub(super) timeout: Duration,
    pub(super) breaker: Arc<Breaker>,
    pub(super) prefix: String,
    pub(super) layouts: Arc<Layouts>,
    pub(super) rounds: Arc<super::rounds::Rounds>,
    pub(super) blocks: Arc<super::sub_lines::Blocks>,
    pub(super) resyncs: Arc<tokio::sync::Mutex<()>>,
}

impl QueueCaller {
    fn invocation<'a>(&self, script: &'a Script, now_ms: u64) -> ScriptInvocation<'a> {
        let mut invocation = script.prepare_invoke();
        for key in &self.keys {
            invocation.key(key);
        }
        invocation.arg(now_ms);
        invocation
    }

    /// Runs a script that answers one item per user (after the users in
    /// `invocation`), or a status for the whole queue.
    async fn per_user(
        &self,
        operation: &'static str,
        invocation: &ScriptInvocation<'_>,
    ) -> Result<Vec<Value>> {
        let mut conn = self
            .connector
            .connection(self.timeout, &self.breaker)
            .await?;
        let value: Value = bounded(
            operation,
            self.timeout,
            guard(
                &self.breaker,
                &self.connector,
                &conn,
                Some(self.queue.as_str()),
            ),
            invocation.invoke_async(&mut conn),
        )
        .await?;
        Ok(Reply::of(value, &self.queue)?.into_values())
    }

    fn link(&self) -> SubLineLink<'_> {
        SubLineLink {
            queue: &self.queue,
            prefix: &self.prefix,
            connector: &self.connector,
            scripts: &self.scripts,
            timeout: self.timeout,
            breaker: &self.breaker,
            layouts: &self.layouts,
            rounds: &self.rounds,
            blocks: &self.blocks,
            resyncs: &self.resyncs,
        }
    }

    /// Joins `users`, on the queue's one slot or over its sub-lines.
    pub(super) async fn enqueue_many(
        &self,
        users: &[UserId],
        now_ms: u64,
    ) -> Result<Vec<Result<Place>>> {
        let joined = self.join_many(users, now_ms, None).await?;
        self.read_joined(joined, now_ms).await
    }

    /// The joins of [`Self::enqueue_many`], the places over sub-lines
    /// still to read; made by the lane of sub-line `lane`, if by one.
    async fn join_many(
        &self,
        users: &[UserId],
        now_ms: u64,
        lane: Option<usize>,
    ) -> Result<Joined> {
        let link = &self.link();
        routed(
            link,
            || async {
                self.enqueue_one_slot(users, now_ms)
                    .await
                    .map(Joined::Answered)
            },
            |layout| async move {
                let (places, coming) = link.join_many(&layout, users, now_ms, lane).await?;
                Ok(Joined::ToRead {
                    layout,
                    places,
                    coming,
                })
            },
        )
        .await
    }

    /// The places of joins, read over sub-lines where they still are to be.
    async fn read_joined(&self, joined: Joined, now_ms: u64) -> Result<Vec<Result<Place>>> {
        let (layout, places, coming) = match joined {
            Joined::Answered(answers) => return Ok(answers),
            Joined::ToRead {
                layout,
                places,
                coming,
            } => (layout, places, coming),
        };
        let read = self
            .link()
            .read_joined(&layout, places, now_ms, coming)
            .await;
        if matches!(read, Err(Error::QueueNotFound(_))) {
            // Deleted since the joins: the layout is read again next time.
            self.layouts.forget(&self.queue);
            self.blocks.forget(&self.queue);
        }
        read
    }

    /// Looks up places, on the queue's one slot or over its sub-lines.
    pub(super) async fn places(
        &self,
        users: &[UserId],
        touch: bool,
        now_ms: u64,
    ) -> Result<Vec<Option<Place>>> {
        let link = &self.link();
        routed(
            link,
            || self.places_one_slot(users, touch, now_ms),
            |layout| async move { link.places(&layout, users, touch, now_ms).await },
        )
        .await
    }

    async fn enqueue_one_slot(&self, users: &[UserId], now_ms: u64) -> Result<Vec<Result<Place>>> {
        let mut invocation = self.invocation(&self.scripts.enqueue_many, now_ms);
        for user in users {
            invocation.arg(user.as_str());
        }
        let items = self.per_user("enqueue", &invocation).await?;
        parse_enqueued(items, users.len(), &self.queue)
    }

    async fn places_one_slot(
        &self,
        users: &[UserId],
        touch: bool,
        now_ms: u64,
    ) -> Result<Vec<Option<Place>>> {
        let mut places = Vec::with_capacity(users.len());
        for chunk in users.chunks(PLACES_CHUNK) {
            let mut invocation = self.invocation(&self.scripts.places, now_ms);
            invocation.arg(if touch { 1 } else { 0 });
            for user in chunk {
                invocation.arg(user.as_str());
            }
            for item in self.per_user("places", &invocation).await? {
                places.push(parse_place(item, &self.queue)?);
            }
        }
        Ok(places)
    }
}
