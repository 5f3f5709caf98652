//! Listing queues: the index of ids (a set that spans queues, so no script
//! touches it), read a page at a time.

use std::collections::HashMap;

use super::RedisStore;
use super::breaker::{bounded, guard};
use super::fields::parse_config;
use super::keys;
use super::topology::Connector;
use crate::Result;
use crate::domain::{QueueConfig, QueueId};

impl RedisStore {
    /// A page of queues after `after`, read from the index of ids, the
    /// configs of a page in one round trip on a single Redis.
    pub(super) async fn list_page(
        &self,
        after: Option<&QueueId>,
        limit: usize,
    ) -> Result<Vec<QueueConfig>> {
        let ids: Vec<String> = self
            .command(
                "list_queues",
                redis::cmd("SMEMBERS").arg(keys::index_key(&self.prefix)),
            )
            .await?;
        let mut ids: Vec<QueueId> = ids
            .iter()
            .filter_map(|id| QueueId::parse(id).ok())
            .filter(|id| after.is_none_or(|after| id > after))
            .collect();
        ids.sort();
        let mut queues = Vec::with_capacity(limit.min(ids.len()));
        // Ids whose config is gone (a delete in progress) are skipped, so
        // read a little past the page until it is full.
        for chunk in ids.chunks(limit.max(1)) {
            let configs: Vec<HashMap<String, String>> = match &self.connector {
                // One round trip for the page.
                Connector::Single(_) => {
                    let mut pipe = redis::pipe();
                    for id in chunk {
                        pipe.cmd("HGETALL").arg(&self.keys(id)[0]);
                    }
                    let mut conn = self.connection().await?;
                    bounded(
                        "list_queues",
                        self.timeout,
                        guard(&self.breaker, &self.connector, &conn, None),
                        pipe.query_async(&mut conn),
                    )
                    .await?
                }
                // Each queue's config lives in its own slot.
                _ => {
                    let mut configs = Vec::with_capacity(chunk.len());
                    for id in chunk {
                        configs.push(
                            self.command(
                                "list_queues",
                                redis::cmd("HGETALL").arg(&self.keys(id)[0]),
                            )
                            .await?,
                        );
                    }
                    configs
                }
            };
            for (id, fields) in chunk.iter().zip(configs) {
                if let Some(config) = parse_config(id, fields)? {
                    queues.push(config);
                    if queues.len() == limit {
                        return Ok(queues);
                    }
                }
            }
        }
        Ok(queues)
    }
}
