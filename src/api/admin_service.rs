//! `waitroom.v1.QueueAdminService`: queue configuration for operators.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use tokio::sync::Notify;
use tonic::{Request, Response, Status};

use super::convert::{queue_out, stats_out};
use super::validate::{
    closed_reason_in, page_size_in, page_token_in, queue_config_in, queue_id, queue_update_in,
};
use crate::domain::{Clock, QueueConfig, QueueMode, QueueUpdate};
use crate::pb;
use crate::pb::queue_admin_service_server::QueueAdminService;
use crate::store::QueueStore;
use crate::{Error, Result};

/// Users one step of clearing takes out of line: one Redis call stays
/// within a few milliseconds however long the line.
const CLEAR_CHUNK: u32 = 500;

/// The admin service. Cheap to clone.
#[derive(Clone)]
pub struct AdminApi {
    store: Arc<dyn QueueStore>,
    clock: Arc<dyn Clock>,
    /// Wakes this instance's queue worker to re-read the queues.
    queues_changed: Arc<Notify>,
}

impl AdminApi {
    pub fn new(
        store: Arc<dyn QueueStore>,
        clock: Arc<dyn Clock>,
        queues_changed: Arc<Notify>,
    ) -> Self {
        Self {
            store,
            clock,
            queues_changed,
        }
    }

    /// The queues changed: this instance's queue worker reads them again now.
    fn changed(&self) {
        self.queues_changed.notify_one();
    }
}

#[tonic::async_trait]
impl QueueAdminService for AdminApi {
    async fn create_queue(
        &self,
        request: Request<pb::CreateQueueRequest>,
    ) -> Result<Response<pb::CreateQueueResponse>, Status> {
        let request = request.into_inner();
        let queue = request
            .queue
            .ok_or_else(|| Error::invalid("queue", "is required"))?;
        let config = queue_config_in(&queue, self.clock.now_ms())?;
        let created = self.store.create_queue(&config).await?;
        tracing::info!(queue = %created.id, mode = created.mode.as_str(), "queue created");
        self.changed();
        Ok(Response::new(pb::CreateQueueResponse {
            queue: Some(queue_out(&created)),
        }))
    }

    async fn get_queue(
        &self,
        request: Request<pb::GetQueueRequest>,
    ) -> Result<Response<pb::GetQueueResponse>, Status> {
        let queue = queue_id("queue_id", &request.into_inner().queue_id)?;
        let config = self.store.get_queue(&queue).await?;
        Ok(Response::new(pb::GetQueueResponse {
            queue: Some(queue_out(&config)),
        }))
    }

    async fn list_queues(
        &self,
        request: Request<pb::ListQueuesRequest>,
    ) -> Result<Response<pb::ListQueuesResponse>, Status> {
        let request = request.into_inner();
        let page_size = page_size_in(request.page_size)?;
        let after = page_token_in(&request.page_token)?;
        // One more than the page tells whether another page follows.
        let mut queues = self
            .store
            .list_queues(after.as_ref(), page_size as usize + 1)
            .await?;
        let next_page_token = if queues.len() > page_size as usize {
            queues.truncate(page_size as usize);
            queues
                .last()
                .map(|q| URL_SAFE_NO_PAD.encode(q.id.as_str()))
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(pb::ListQueuesResponse {
            queues: queues.iter().map(queue_out).collect(),
            next_page_token,
        }))
    }

    async fn update_queue(
        &self,
        request: Request<pb::UpdateQueueRequest>,
    ) -> Result<Response<pb::UpdateQueueResponse>, Status> {
        let request = request.into_inner();
        let queue = request
            .queue
            .ok_or_else(|| Error::invalid("queue", "is required"))?;
        let id = queue_id("queue.id", &queue.id)?;
        let now = self.clock.now_ms();
        let update = queue_update_in(&queue, request.update_mask.as_ref(), now)?;
        let updated = self.store.update_queue(&id, &update, now).await?;
        tracing::info!(queue = %id, mode = updated.mode.as_str(), "queue updated");
        self.changed();
        Ok(Response::new(pb::UpdateQueueResponse {
            queue: Some(queue_out(&updated)),
        }))
    }

    async fn delete_queue(
        &self,
        request: Request<pb::DeleteQueueRequest>,
    ) -> Result<Response<pb::DeleteQueueResponse>, Status> {
        let queue = queue_id("queue_id", &request.into_inner().queue_id)?;
        self.store.delete_queue(&queue).await?;
        tracing::info!(queue = %queue, "queue deleted");
        self.changed();
        Ok(Response::new(pb::DeleteQueueResponse {}))
    }

    async fn clear_queue(
        &self,
        request: Request<pb::ClearQueueRequest>,
    ) -> Result<Response<pb::ClearQueueResponse>, Status> {
        let request = request.into_inner();
        let queue = queue_id("queue_id", &request.queue_id)?;
        let reason = closed_reason_in("reason", &request.reason)?
            .unwrap_or_else(|| QueueConfig::CANCELLED.into());
        // Closed first, so nobody joins while the line empties and everyone
        // in it is shown the closed queue and its reason.
        let close = QueueUpdate {
            mode: Some(QueueMode::Closed),
            closed_reason: Some(Some(reason)),
            ..QueueUpdate::default()
        };
        self.store
            .update_queue(&queue, &close, self.clock.now_ms())
            .await?;
        self.changed();
        let mut cleared_count = 0;
        loop {
            let cleared = self
                .store
                .clear_step(&queue, CLEAR_CHUNK, self.clock.now_ms())
                .await?;
            cleared_count += cleared;
            if cleared < u64::from(CLEAR_CHUNK) {
                break;
            }
        }
        tracing::info!(queue = %queue, cleared = cleared_count, "queue cleared");
        Ok(Response::new(pb::ClearQueueResponse { cleared_count }))
    }

    async fn get_queue_stats(
        &self,
        request: Request<pb::GetQueueStatsRequest>,
    ) -> Result<Response<pb::GetQueueStatsResponse>, Status> {
        let queue = queue_id("queue_id", &request.into_inner().queue_id)?;
        let stats = self.store.stats(&queue, self.clock.now_ms()).await?;
        Ok(Response::new(pb::GetQueueStatsResponse {
            stats: Some(stats_out(&queue, &stats)),
        }))
    }
}
