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

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::QueueCaller;
use crate::domain::{Place, QueueId, UserId};
use crate::{Error, Result};

/// Most users in one call, so one script never holds Redis for long.
const MAX_BATCH: usize = 256;

/// A queue's task ends after this long without requests.
const IDLE: Duration = Duration::from_secs(30);

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
    reply: oneshot::Sender<Result<Option<Place>>>,
}

type Senders = Arc<Mutex<HashMap<(QueueId, Op), mpsc::UnboundedSender<Pending>>>>;

#[derive(Default)]
pub(super) struct Batcher {
    queues: Senders,
}

impl Batcher {
    /// Runs `op` for one user through the queue's batching task; `caller`
    /// is built only when the queue has no task yet, not on every call.
    pub(super) async fn call<F, Fut>(
        &self,
        op: Op,
        caller: F,
        queue: &QueueId,
        user: &UserId,
        now_ms: u64,
    ) -> Result<Option<Place>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<QueueCaller>>,
    {
        let (reply, answer) = oneshot::channel();
        let pending = Pending {
            user: user.clone(),
            now_ms,
            reply,
        };
        let key = (queue.clone(), op);
        if let Some(pending) = self.send(&key, pending, None)? {
            let caller = caller().await?;
            if self.send(&key, pending, Some(caller))?.is_some() {
                return Err(Error::Internal("the batching task stopped".into()));
            }
        }
        answer
            .await
            .map_err(|_| Error::Internal("the batched call was dropped".into()))?
    }

    /// Hands a request to the live task; with no live task, starts one with
    /// `caller` if given, or gives the request back.
    fn send(
        &self,
        key: &(QueueId, Op),
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
                let (tx, rx) = mpsc::unbounded_channel();
                tokio::spawn(run(caller, Arc::clone(&self.queues), key.clone(), rx));
                queues.insert(key.clone(), tx.clone());
                tx
            }
            (_, None) => return Ok(Some(pending)),
        };
        Ok(sender.send(pending).err().map(|e| e.0))
    }
}

async fn run(
    caller: QueueCaller,
    queues: Senders,
    key: (QueueId, Op),
    mut rx: mpsc::UnboundedReceiver<Pending>,
) {
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
        let mut users = vec![first.user];
        let mut replies = vec![first.reply];
        // Requests of one batch arrived within one call's time of each
        // other; the latest clock reading stands for all of them.
        let mut now_ms = first.now_ms;
        while users.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(next) => {
                    users.push(next.user);
                    replies.push(next.reply);
                    now_ms = now_ms.max(next.now_ms);
                }
                Err(_) => break,
            }
        }
        let answers: Result<Vec<Result<Option<Place>>>> = match key.1 {
            Op::Enqueue => caller
                .enqueue_many(&users, now_ms)
                .await
                .map(|answers| answers.into_iter().map(|a| a.map(Some)).collect()),
            Op::Place => caller
                .places(&users, true, now_ms)
                .await
                .map(|places| places.into_iter().map(Ok).collect()),
        };
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
            }
            Err(error) => {
                for reply in replies {
                    let _ = reply.send(Err(error.clone()));
                }
            }
        }
    }
}
