//! A memory store whose presence writes (`touch`) wait while held: for the
//! tests of what must not wait behind them.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tokio::sync::Notify;

use crate::Result;
use crate::domain::{QueueId, UserId};
use crate::store::MemoryStore;

pub(super) struct HeldTouches {
    pub(super) inner: Arc<MemoryStore>,
    held: AtomicBool,
    released: Notify,
    /// Touches now waiting.
    pub(super) waiting: AtomicUsize,
}

impl HeldTouches {
    pub(super) fn new(inner: Arc<MemoryStore>) -> Self {
        Self {
            inner,
            held: AtomicBool::new(false),
            released: Notify::new(),
            waiting: AtomicUsize::new(0),
        }
    }

    pub(super) fn hold(&self) {
        self.held.store(true, Ordering::SeqCst);
    }

    pub(super) fn release(&self) {
        self.held.store(false, Ordering::SeqCst);
        self.released.notify_waiters();
    }
}

crate::store::queue_store_over!(
    HeldTouches,
    inner,
    [
        announce,
        hear_announcements,
        create_queue,
        get_queue,
        list_queues,
        update_queue,
        delete_queue,
        queue_lost,
        remake_from_parts,
        restore,
        enqueue,
        enqueue_many,
        places,
        place,
        reap,
        line_snapshot,
        line_changes,
        draw_step,
        leave,
        admit,
        admit_due,
        admit_users,
        clear_step,
        complete,
        check_admission,
        stats,
        ping,
        setup_problem,
        share_load,
    ],
    {
        async fn touch(&self, queue: &QueueId, users: &[UserId], now_ms: u64) -> Result<()> {
            self.waiting.fetch_add(1, Ordering::SeqCst);
            while self.held.load(Ordering::SeqCst) {
                let released = self.released.notified();
                if !self.held.load(Ordering::SeqCst) {
                    break;
                }
                released.await;
            }
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            self.inner.touch(queue, users, now_ms).await
        }
    }
);
