//! Announcements between instances over Redis pub/sub: an instance that
//! admits, or changes a queue's configuration, publishes the queue's id,
//! and every other instance's watch hub reads that queue's line at once
//! instead of at its next refresh. Without them an admission made through
//! one replica reached the watchers held by another only at that replica's
//! next refresh, up to the refresh interval later.
//!
//! Best effort on both sides: a message lost (no subscriber connected, a
//! reconnect under way) costs only the wait for the next refresh.

use std::time::Duration;

use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;

use super::RedisStore;
use crate::domain::QueueId;
use crate::store::Announced;

/// A subscription is made afresh this often: a connection cut off without
/// a word (a partitioned or stalled master, a failover the subscriber did
/// not see) would otherwise hear nothing for good.
const RESUBSCRIBE_EVERY: Duration = Duration::from_secs(60);

/// Wait after a failed subscription before the next.
const RETRY_AFTER: Duration = Duration::from_secs(1);

impl RedisStore {
    /// The channel of a deployment (its key prefix): one for all queues.
    pub(super) fn announce_channel(&self) -> String {
        format!("{}:announce", self.prefix)
    }

    /// A message names the sending instance and the queue.
    pub(super) fn announcement(&self, queue: &QueueId) -> String {
        format!("{} {queue}", self.instance)
    }

    pub(super) async fn publish(&self, queue: &QueueId) {
        let published = self
            .command::<i64>(
                "announce",
                redis::cmd("PUBLISH")
                    .arg(self.announce_channel())
                    .arg(self.announcement(queue)),
            )
            .await;
        if let Err(error) = published {
            tracing::debug!(%error, queue = %queue, "announcing a change failed");
        }
    }

    pub(super) async fn subscribe(&self, heard: Announced, stop: CancellationToken) {
        let channel = self.announce_channel();
        while !stop.is_cancelled() {
            if let Err(error) = self.hear_for_a_while(&channel, &heard, &stop).await {
                tracing::debug!(%error, "listening for other instances' changes failed");
                tokio::select! {
                    _ = tokio::time::sleep(RETRY_AFTER) => {}
                    _ = stop.cancelled() => return,
                }
            }
        }
    }

    /// One subscription, for at most [`RESUBSCRIBE_EVERY`].
    async fn hear_for_a_while(
        &self,
        channel: &str,
        heard: &Announced,
        stop: &CancellationToken,
    ) -> std::result::Result<(), String> {
        let client = self.connector.subscriber(self.timeout).await?;
        let mut pubsub = tokio::time::timeout(self.timeout, async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(channel).await?;
            Ok::<_, redis::RedisError>(pubsub)
        })
        .await
        .map_err(|_| format!("no answer within {:?}", self.timeout))?
        .map_err(|e| e.to_string())?;
        let mut messages = pubsub.on_message();
        let until = tokio::time::sleep(RESUBSCRIBE_EVERY);
        tokio::pin!(until);
        let own = format!("{} ", self.instance);
        loop {
            tokio::select! {
                message = messages.next() => {
                    let Some(message) = message else {
                        return Err("the subscription ended".into());
                    };
                    let Ok(payload) = message.get_payload::<String>() else {
                        continue;
                    };
                    // Its own changes this instance heard of already.
                    if payload.starts_with(&own) {
                        continue;
                    }
                    if let Some(queue) = payload
                        .split_once(' ')
                        .and_then(|(_, queue)| QueueId::parse(queue).ok())
                    {
                        heard(&queue);
                    }
                }
                _ = &mut until => return Ok(()),
                _ = stop.cancelled() => return Ok(()),
            }
        }
    }
}
