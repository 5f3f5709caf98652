//! Calling Redis on the store's behalf: a script on a queue's keys, a
//! command, each bounded by the timeout and held back by the breaker.

use std::sync::Arc;

use redis::{FromRedisValue, Script, ScriptInvocation, Value};

use super::RedisStore;
use super::batch::QueueCaller;
use super::breaker::{bounded, guard};
use super::reply::Reply;
use super::sub_lines::SubLineLink;
use super::topology::Connection;
use crate::Result;
use crate::domain::{QueueId, UserId};

impl RedisStore {
    /// Runs a script on a queue's keys with `now` as first argument.
    pub(super) fn invocation<'a>(
        &self,
        script: &'a Script,
        queue: &QueueId,
        now_ms: u64,
    ) -> ScriptInvocation<'a> {
        let mut invocation = script.prepare_invoke();
        for key in self.keys(queue) {
            invocation.key(key);
        }
        invocation.arg(now_ms);
        invocation
    }

    /// A caller of the queue's scripts for a batching task.
    pub(super) async fn caller(&self, queue: &QueueId) -> Result<QueueCaller> {
        Ok(QueueCaller {
            queue: queue.clone(),
            connector: self.connector.clone(),
            keys: self.keys(queue),
            scripts: Arc::clone(&self.scripts),
            timeout: self.timeout,
            breaker: Arc::clone(&self.breaker),
            prefix: self.prefix.clone(),
            layouts: Arc::clone(&self.layouts),
            rounds: Arc::clone(&self.rounds),
            blocks: Arc::clone(&self.blocks),
            resyncs: Arc::clone(&self.resyncs),
        })
    }

    /// The batching lane of a user's calls: their sub-line, when the
    /// queue's layout was last read as kept over sub-lines.
    pub(super) fn lane(&self, queue: &QueueId, user: &UserId) -> usize {
        self.layouts
            .last(queue)
            .map_or(0, |layout| layout.sub_line(user))
    }

    /// What calls on the queue's sub-lines need.
    pub(super) fn link<'a>(&'a self, queue: &'a QueueId) -> SubLineLink<'a> {
        SubLineLink {
            queue,
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

    /// The connection to call on now, connecting a cluster on first use.
    pub(super) async fn connection(&self) -> Result<Connection> {
        self.connector.connection(self.timeout, &self.breaker).await
    }

    /// Runs a script of `queue`; its answer, read by [`Reply::of`].
    pub(super) async fn run(
        &self,
        operation: &'static str,
        queue: &QueueId,
        invocation: &ScriptInvocation<'_>,
    ) -> Result<Reply> {
        let mut conn = self.connection().await?;
        let value: Value = bounded(
            operation,
            self.timeout,
            guard(&self.breaker, &self.connector, &conn, Some(queue.as_str())),
            invocation.invoke_async(&mut conn),
        )
        .await?;
        Reply::of(value, queue)
    }

    pub(super) async fn command<T: FromRedisValue>(
        &self,
        operation: &'static str,
        cmd: &redis::Cmd,
    ) -> Result<T> {
        let mut conn = self.connection().await?;
        bounded(
            operation,
            self.timeout,
            guard(&self.breaker, &self.connector, &conn, None),
            cmd.query_async(&mut conn),
        )
        .await
    }
}
