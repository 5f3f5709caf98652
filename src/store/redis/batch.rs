//! Coalescing concurrent enqueues of one queue into one script call.
//!
//! A burst of arrivals is thousands of enqueues a second on one queue, each
//! a script whose fixed cost (dispatch, reading the config, ending expired
//! admissions, the rate) dwarfs the per-user work. Each queue with enqueues
//! in flight has a task that takes whatever requests are waiting and sends
//! them as one `enqueue_many`. Nothing waits on purpose: a lone request
//! goes out at once, and requests batch up only while an earlier call is
//! in flight, so latency does not grow when there is no crowd.

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

struct Pending {
    user: UserId,
    now_ms: u64,
    reply: oneshot::Sender<Result<Place>>,
}

type Senders = Arc<Mutex<HashMap<QueueId, mpsc::UnboundedSender<Pending>>>>;

#[derive(Default)]
pub(super) struct EnqueueBatcher {
    queues: Senders,
}

impl EnqueueBatcher {
    /// Enqueues through the queue's batching task, started with `caller`
    /// when the queue has none.
    pub(super) async fn enqueue(
        &self,
        caller: impl FnOnce() -> QueueCaller,
        queue: &QueueId,
        user: &UserId,
        now_ms: u64,
    ) -> Result<Place> {
        let (reply, answer) = oneshot::channel();
        let pending = Pending {
            user: user.clone(),
            now_ms,
            reply,
        };
        {
            let mut queues = self
                .queues
                .lock()
                .map_err(|_| Error::Internal("enqueue batcher lock poisoned".into()))?;
            let mut caller = Some(caller);
            let mut start = |queues: &Senders| {
                let (tx, rx) = mpsc::unbounded_channel();
                if let Some(caller) = caller.take() {
                    tokio::spawn(run(caller(), Arc::clone(queues), queue.clone(), rx));
                }
                tx
            };
            let sender = match queues.get(queue) {
                Some(sender) if !sender.is_closed() => sender.clone(),
                _ => {
                    let sender = start(&self.queues);
                    queues.insert(queue.clone(), sender.clone());
                    sender
                }
            };
            sender
                .send(pending)
                .map_err(|_| Error::Internal("the enqueue batcher stopped".into()))?;
        }
        answer
            .await
            .map_err(|_| Error::Internal("the enqueue batch was dropped".into()))?
    }
}

async fn run(
    caller: QueueCaller,
    queues: Senders,
    queue: QueueId,
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
                        senders.remove(&queue);
                        return;
                    }
                }
            }
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        // Requests of one batch arrived within one call's time of each
        // other; the latest clock reading stands for all of them.
        let now_ms = batch.iter().map(|p| p.now_ms).max().unwrap_or(0);
        if batch.len() == 1 {
            if let Some(pending) = batch.pop() {
                let answer = caller.enqueue(&pending.user, now_ms).await;
                let _ = pending.reply.send(answer);
            }
            continue;
        }
        let users: Vec<UserId> = batch.iter().map(|p| p.user.clone()).collect();
        match caller.enqueue_many(&users, now_ms).await {
            Ok(answers) => {
                for (pending, answer) in batch.into_iter().zip(answers) {
                    let _ = pending.reply.send(answer);
                }
            }
            Err(error) => {
                for pending in batch {
                    let _ = pending.reply.send(Err(error.clone()));
                }
            }
        }
    }
}
