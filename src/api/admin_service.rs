//! `waitroom.v1.QueueAdminService`: queue configuration for operators.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use tokio::sync::Notify;
use tonic::{Request, Response, Status};

use super::convert::{duration_in, mode_in, queue_id, queue_out, stats_out, timestamp_in};
use crate::domain::{Clock, QueueConfig, QueueId, QueueUpdate};
use crate::pb;
use crate::pb::queue_admin_service_server::QueueAdminService;
use crate::store::QueueStore;
use crate::{Error, Result};

const DEFAULT_PAGE_SIZE: u32 = 100;
const MAX_PAGE_SIZE: u32 = 1000;

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

/// A new queue's configuration from its message: defaults filled in, every
/// field checked.
pub fn queue_config_in(queue: &pb::Queue, now_ms: u64) -> Result<QueueConfig> {
    let mut config = QueueConfig::new(queue_id("queue.id", &queue.id)?).created(now_ms);
    let update = QueueUpdate {
        mode: mode_in("queue.mode", queue.mode)?,
        max_active: Some(queue.max_active),
        admit_per_second: Some(queue.admit_per_second),
        admission_ttl: queue
            .admission_ttl
            .as_ref()
            .map(|d| duration_in("queue.admission_ttl", d))
            .transpose()?,
        heartbeat_timeout: queue
            .heartbeat_timeout
            .as_ref()
            .map(|d| duration_in("queue.heartbeat_timeout", d))
            .transpose()?,
        opens_at: queue
            .opens_at
            .as_ref()
            .map(|t| timestamp_in("queue.opens_at", t).map(Some))
            .transpose()?,
        prequeue_window: queue
            .prequeue_window
            .as_ref()
            .map(|d| duration_in("queue.prequeue_window", d))
            .transpose()?,
    };
    config.apply(&update);
    config
        .check()
        .map_err(|(field, reason)| Error::invalid(format!("queue.{field}"), reason))?;
    Ok(config)
}

/// The change an `UpdateQueue` asks for. An empty mask means every field
/// set to a non-default value (AIP-134).
fn queue_update_in(
    queue: &pb::Queue,
    mask: Option<&prost_types::FieldMask>,
    now_ms: u64,
) -> Result<QueueUpdate> {
    let paths: Vec<String> = match mask {
        Some(mask) if !mask.paths.is_empty() => mask.paths.clone(),
        _ => {
            let mut implied = Vec::new();
            if queue.mode != 0 {
                implied.push("mode".to_owned());
            }
            if queue.max_active != 0 {
                implied.push("max_active".to_owned());
            }
            if queue.admit_per_second != 0 {
                implied.push("admit_per_second".to_owned());
            }
            if queue.admission_ttl.is_some() {
                implied.push("admission_ttl".to_owned());
            }
            if queue.heartbeat_timeout.is_some() {
                implied.push("heartbeat_timeout".to_owned());
            }
            if queue.opens_at.is_some() {
                implied.push("opens_at".to_owned());
            }
            if queue.prequeue_window.is_some() {
                implied.push("prequeue_window".to_owned());
            }
            implied
        }
    };
    let mut update = QueueUpdate::default();
    for path in &paths {
        match path.as_str() {
            "mode" => {
                update.mode = Some(mode_in("queue.mode", queue.mode)?.ok_or_else(|| {
                    Error::invalid("queue.mode", "must be set when update_mask names it")
                })?);
            }
            "max_active" => update.max_active = Some(queue.max_active),
            "admit_per_second" => update.admit_per_second = Some(queue.admit_per_second),
            "admission_ttl" => {
                let ttl = queue.admission_ttl.as_ref().ok_or_else(|| {
                    Error::invalid(
                        "queue.admission_ttl",
                        "must be set when update_mask names it",
                    )
                })?;
                update.admission_ttl = Some(duration_in("queue.admission_ttl", ttl)?);
            }
            "heartbeat_timeout" => {
                let timeout = queue.heartbeat_timeout.as_ref().ok_or_else(|| {
                    Error::invalid(
                        "queue.heartbeat_timeout",
                        "must be set when update_mask names it",
                    )
                })?;
                update.heartbeat_timeout = Some(duration_in("queue.heartbeat_timeout", timeout)?);
            }
            "opens_at" => {
                // Named in the mask but absent: open now, drawing whoever is
                // pre-queued.
                let at = match &queue.opens_at {
                    Some(t) => timestamp_in("queue.opens_at", t)?,
                    None => now_ms,
                };
                update.opens_at = Some(Some(at));
            }
            "prequeue_window" => {
                let window = queue.prequeue_window.as_ref().ok_or_else(|| {
                    Error::invalid(
                        "queue.prequeue_window",
                        "must be set when update_mask names it",
                    )
                })?;
                update.prequeue_window = Some(duration_in("queue.prequeue_window", window)?);
            }
            "id" | "create_time" | "draw_seed" | "draw_complete" => {
                return Err(Error::invalid(
                    "update_mask",
                    format!("{path:?} cannot be changed"),
                ));
            }
            other => {
                return Err(Error::invalid(
                    "update_mask",
                    format!("unknown field {other:?}"),
                ));
            }
        }
    }
    if paths.is_empty() {
        return Err(Error::invalid("update_mask", "names no field to change"));
    }
    // Check the new values against the documented ranges on a scratch copy.
    let mut scratch = QueueConfig::new(QueueId::parse("scratch").map_err(Error::Internal)?);
    scratch.apply(&update);
    scratch
        .check()
        .map_err(|(field, reason)| Error::invalid(format!("queue.{field}"), reason))?;
    Ok(update)
}

fn page_token_in(token: &str) -> Result<Option<QueueId>> {
    if token.is_empty() {
        return Ok(None);
    }
    let invalid = || Error::invalid("page_token", "is not a token this service returned");
    let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid())?;
    let id = String::from_utf8(bytes).map_err(|_| invalid())?;
    QueueId::parse(&id).map(Some).map_err(|_| invalid())
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
        let page_size = match request.page_size {
            0 => DEFAULT_PAGE_SIZE,
            n if n > MAX_PAGE_SIZE => {
                return Err(Error::invalid(
                    "page_size",
                    format!("must be at most {MAX_PAGE_SIZE}, got {n}"),
                )
                .into());
            }
            n => n,
        };
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
