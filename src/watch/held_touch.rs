//! A memory store whose presence writes (`touch`) wait while held: for the
//! tests of what must not wait behind them.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use async_trait::async_trait;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::Result;
use crate::domain::{
    AdmissionCheck, AdmissionStatus, Admitted, LineChanges, LineSnapshot, NamedAdmission, Place,
    PlaceClaim, QueueConfig, QueueId, QueueStats, QueueUpdate, RequestId, Restoration, UserId,
};
use crate::store::{MemoryStore, QueueStore};

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

#[async_trait]
impl QueueStore for HeldTouches {
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

    async fn announce(&self, queue: &QueueId) {
        self.inner.announce(queue).await;
    }

    async fn hear_announcements(&self, heard: crate::store::Announced, stop: CancellationToken) {
        self.inner.hear_announcements(heard, stop).await;
    }

    async fn create_queue(&self, config: &QueueConfig) -> Result<QueueConfig> {
        self.inner.create_queue(config).await
    }

    async fn get_queue(&self, queue: &QueueId) -> Result<QueueConfig> {
        self.inner.get_queue(queue).await
    }

    async fn list_queues(&self, after: Option<&QueueId>, limit: usize) -> Result<Vec<QueueConfig>> {
        self.inner.list_queues(after, limit).await
    }

    async fn update_queue(
        &self,
        queue: &QueueId,
        update: &QueueUpdate,
        now_ms: u64,
    ) -> Result<QueueConfig> {
        self.inner.update_queue(queue, update, now_ms).await
    }

    async fn delete_queue(&self, queue: &QueueId) -> Result<()> {
        self.inner.delete_queue(queue).await
    }

    async fn queue_lost(&self, queue: &QueueId) -> Result<bool> {
        self.inner.queue_lost(queue).await
    }

    async fn restore(
        &self,
        queue: &QueueId,
        user: &UserId,
        claim: &PlaceClaim,
        now_ms: u64,
    ) -> Result<Restoration> {
        self.inner.restore(queue, user, claim, now_ms).await
    }

    async fn enqueue(&self, queue: &QueueId, user: &UserId, now_ms: u64) -> Result<Place> {
        self.inner.enqueue(queue, user, now_ms).await
    }

    async fn enqueue_many(
        &self,
        queue: &QueueId,
        users: &[UserId],
        now_ms: u64,
    ) -> Result<Vec<Result<Place>>> {
        self.inner.enqueue_many(queue, users, now_ms).await
    }

    async fn places(
        &self,
        queue: &QueueId,
        users: &[UserId],
        touch: bool,
        now_ms: u64,
    ) -> Result<Vec<Option<Place>>> {
        self.inner.places(queue, users, touch, now_ms).await
    }

    async fn place(&self, queue: &QueueId, user: &UserId, now_ms: u64) -> Result<Option<Place>> {
        self.inner.place(queue, user, now_ms).await
    }

    async fn reap(&self, queue: &QueueId, limit: u32, now_ms: u64) -> Result<u64> {
        self.inner.reap(queue, limit, now_ms).await
    }

    async fn line_snapshot(&self, queue: &QueueId, after: u64, limit: u32) -> Result<LineSnapshot> {
        self.inner.line_snapshot(queue, after, limit).await
    }

    async fn line_changes(
        &self,
        queue: &QueueId,
        after: u64,
        limit: u32,
        now_ms: u64,
    ) -> Result<LineChanges> {
        self.inner.line_changes(queue, after, limit, now_ms).await
    }

    async fn draw_step(
        &self,
        queue: &QueueId,
        seed: &str,
        chunk: u32,
        now_ms: u64,
    ) -> Result<bool> {
        self.inner.draw_step(queue, seed, chunk, now_ms).await
    }

    async fn leave(&self, queue: &QueueId, user: &UserId, now_ms: u64) -> Result<bool> {
        self.inner.leave(queue, user, now_ms).await
    }

    async fn admit(
        &self,
        queue: &QueueId,
        max_count: u32,
        request: Option<&RequestId>,
        now_ms: u64,
    ) -> Result<Vec<Admitted>> {
        self.inner.admit(queue, max_count, request, now_ms).await
    }

    async fn admit_due(
        &self,
        queue: &QueueId,
        max_count: u32,
        now_ms: u64,
    ) -> Result<Vec<Admitted>> {
        self.inner.admit_due(queue, max_count, now_ms).await
    }

    async fn admit_users(
        &self,
        queue: &QueueId,
        users: &[UserId],
        request: &RequestId,
        override_capacity: bool,
        now_ms: u64,
    ) -> Result<Vec<NamedAdmission>> {
        self.inner
            .admit_users(queue, users, request, override_capacity, now_ms)
            .await
    }

    async fn clear_step(&self, queue: &QueueId, limit: u32, now_ms: u64) -> Result<u64> {
        self.inner.clear_step(queue, limit, now_ms).await
    }

    async fn complete(&self, queue: &QueueId, user: &UserId, now_ms: u64) -> Result<bool> {
        self.inner.complete(queue, user, now_ms).await
    }

    async fn check_admission(
        &self,
        queue: &QueueId,
        check: &AdmissionCheck,
        now_ms: u64,
    ) -> Result<AdmissionStatus> {
        self.inner.check_admission(queue, check, now_ms).await
    }

    async fn stats(&self, queue: &QueueId, now_ms: u64) -> Result<QueueStats> {
        self.inner.stats(queue, now_ms).await
    }

    async fn ping(&self) -> Result<()> {
        self.inner.ping().await
    }

    async fn setup_problem(&self) -> Result<Option<String>> {
        self.inner.setup_problem().await
    }

    async fn share_load(
        &self,
        instance: &str,
        streams: Option<u64>,
        ttl_ms: u64,
        now_ms: u64,
    ) -> Result<Vec<u64>> {
        self.inner
            .share_load(instance, streams, ttl_ms, now_ms)
            .await
    }
}
