//! The Redis store: the production store, shared by every replica.
//!
//! # Data model
//!
//! A queue is twelve keys under one hash tag (see [`keys`]): its config, a
//! ticket sequence, a sorted set of waiting users scored by ticket, a sorted
//! set of admitted users scored by expiry, a hash of admission records,
//! counters, one-second admission buckets for the observed rate, the results
//! of recent `AdmitBatch` calls kept for retries, the pre-queue and the
//! opening draw's pool, and each waiting user's last sign of life.
//!
//! Each state transition is one Lua script (`scripts/*.lua`, each headed by
//! its KEYS, ARGV and return value), so it is atomic across replicas without
//! `WATCH`/`MULTI` retries. Scripts take the caller's clock as an argument
//! and are safe to run twice: a retry after a dropped connection finds the
//! work done. Every call is bounded by the configured timeout and any
//! failure to get an answer becomes [`Error::Unavailable`].

mod batch;
mod keys;

use batch::Op;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use redis::IntoConnectionInfo;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{FromRedisValue, RedisError, Script, ScriptInvocation, Value};

use super::QueueStore;
use crate::domain::{
    Admission, AdmissionCheck, AdmissionStatus, Admitted, LineChanges, LineEvent, LineSnapshot,
    LineSummary, Place, PlaceState, QueueConfig, QueueId, QueueMode, QueueStats, QueueUpdate,
    RateSample, RequestId, UserId,
};
use crate::telemetry::metrics::{StoreErrorLabels, StoreLabels, metrics};
use crate::{Error, Result};

/// Users per `places` script call, so one call never holds Redis for long.
const PLACES_CHUNK: usize = 500;

/// Users per `touch` script call.
const TOUCH_CHUNK: usize = 5000;

/// How to reach Redis.
#[derive(Clone, Debug)]
pub struct RedisOptions {
    /// `redis://[user:password@]host:port[/db]` or `rediss://` for TLS. For a
    /// cluster, one or more seed nodes separated by commas.
    pub url: String,
    /// A password that overrides the URL's, so a secret need not be part of
    /// the URL.
    pub password: Option<String>,
    /// The URL names nodes of a Redis Cluster.
    pub cluster: bool,
    /// Prefix of every key, so several deployments can share a Redis.
    pub prefix: String,
    /// Longest wait for any Redis answer before the call is `UNAVAILABLE`.
    pub timeout: Duration,
}

struct Scripts {
    create_queue: Script,
    update_queue: Script,
    delete_queue: Script,
    enqueue: Script,
    enqueue_many: Script,
    places: Script,
    leave: Script,
    admit: Script,
    admit_due: Script,
    complete: Script,
    stats: Script,
    check_admission: Script,
    touch: Script,
    reap: Script,
    draw_step: Script,
    line_changes: Script,
    line_snapshot: Script,
}

fn with_prelude_source(body: &str) -> String {
    format!("{}\n{body}", include_str!("scripts/prelude.lua"))
}

fn enqueue_source() -> String {
    with_prelude_source(&format!(
        "{}\n{}",
        include_str!("scripts/enqueue_one.lua"),
        include_str!("scripts/enqueue.lua")
    ))
}

fn enqueue_many_source() -> String {
    with_prelude_source(&format!(
        "{}\n{}",
        include_str!("scripts/enqueue_one.lua"),
        include_str!("scripts/enqueue_many.lua")
    ))
}

impl Scripts {
    fn load() -> Self {
        let with_prelude = |body: &str| Script::new(&with_prelude_source(body));
        Self {
            create_queue: with_prelude(include_str!("scripts/create_queue.lua")),
            update_queue: with_prelude(include_str!("scripts/update_queue.lua")),
            delete_queue: with_prelude(include_str!("scripts/delete_queue.lua")),
            enqueue: Script::new(&enqueue_source()),
            enqueue_many: Script::new(&enqueue_many_source()),
            places: with_prelude(include_str!("scripts/places.lua")),
            leave: with_prelude(include_str!("scripts/leave.lua")),
            admit: with_prelude(include_str!("scripts/admit.lua")),
            admit_due: with_prelude(include_str!("scripts/admit_due.lua")),
            complete: with_prelude(include_str!("scripts/complete.lua")),
            stats: with_prelude(include_str!("scripts/stats.lua")),
            check_admission: with_prelude(include_str!("scripts/check_admission.lua")),
            touch: with_prelude(include_str!("scripts/touch.lua")),
            reap: with_prelude(include_str!("scripts/reap.lua")),
            draw_step: with_prelude(include_str!("scripts/draw_step.lua")),
            line_changes: with_prelude(include_str!("scripts/line_changes.lua")),
            line_snapshot: with_prelude(include_str!("scripts/line_snapshot.lua")),
        }
    }
}

/// A connection to a single Redis (multiplexed, reconnecting by itself) or
/// to a Redis Cluster (following `MOVED`/`ASK` redirections and topology
/// changes). Every key a script touches shares the queue's hash tag, so each
/// call goes to the one node serving that queue's slot.
#[derive(Clone)]
enum Connection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl redis::aio::ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> redis::RedisFuture<'a, Value> {
        match self {
            Self::Single(conn) => conn.req_packed_command(cmd),
            Self::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(conn) => conn.req_packed_commands(pipeline, offset, count),
            Self::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(conn) => conn.get_db(),
            Self::Cluster(conn) => conn.get_db(),
        }
    }
}

/// Connects on first use; a cluster needs its slot map before the first
/// command, and the service may start before Redis.
enum Connector {
    Ready(Connection),
    Cluster {
        client: Box<ClusterClient>,
        connection: tokio::sync::OnceCell<ClusterConnection>,
    },
}

/// The Redis store. Cheap to share: one multiplexed connection that
/// reconnects by itself.
pub struct RedisStore {
    connector: Connector,
    prefix: String,
    timeout: Duration,
    scripts: Arc<Scripts>,
    batcher: batch::Batcher,
    breaker: Arc<Breaker>,
}

/// What a queue's batching task needs to call Redis on its own.
pub(super) struct QueueCaller {
    queue: QueueId,
    conn: Connection,
    keys: [String; 13],
    scripts: Arc<Scripts>,
    timeout: Duration,
    breaker: Arc<Breaker>,
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
        let mut conn = self.conn.clone();
        let value: Value = bounded(
            operation,
            self.timeout,
            guard(&self.breaker, &self.conn, Some(&self.queue)),
            invocation.invoke_async(&mut conn),
        )
        .await?;
        let Value::Array(items) = value else {
            return Err(bad_reply(&format!("{operation}: expected an array")));
        };
        if let Some(Value::BulkString(status)) = items.first() {
            return Err(status_error(&String::from_utf8_lossy(status), &self.queue));
        }
        Ok(items)
    }

    async fn enqueue_many(&self, users: &[UserId], now_ms: u64) -> Result<Vec<Result<Place>>> {
        let mut invocation = self.invocation(&self.scripts.enqueue_many, now_ms);
        for user in users {
            invocation.arg(user.as_str());
        }
        let items = self.per_user("enqueue", &invocation).await?;
        Ok(items
            .into_iter()
            .map(|item| {
                parse_place(item, &self.queue)
                    .and_then(|p| p.ok_or_else(|| bad_reply("enqueue returned no place")))
            })
            .collect())
    }

    async fn places(
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

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Connects and checks that Redis answers.
    pub async fn connect(options: &RedisOptions) -> Result<Self> {
        let store = Self::connect_lazily(options)?;
        store.ping().await?;
        Ok(store)
    }

    /// Checks the URL now and connects on first use, reconnecting by itself
    /// whenever the connection is lost: a service may start before its
    /// Redis and ride out a Redis restart.
    pub fn connect_lazily(options: &RedisOptions) -> Result<Self> {
        let invalid = |e: RedisError| Error::invalid("redis_url", e.to_string());
        let connector = if options.cluster {
            let nodes: Vec<&str> = options.url.split(',').map(str::trim).collect();
            let mut builder = ClusterClient::builder(nodes)
                .connection_timeout(options.timeout)
                .response_timeout(options.timeout)
                .retries(3);
            if let Some(password) = &options.password {
                builder = builder.password(password);
            }
            Connector::Cluster {
                client: Box::new(builder.build().map_err(invalid)?),
                connection: tokio::sync::OnceCell::new(),
            }
        } else {
            let mut info = options
                .url
                .as_str()
                .into_connection_info()
                .map_err(invalid)?;
            if let Some(password) = &options.password {
                let settings = info.redis_settings().clone().set_password(password);
                info = info.set_redis_settings(settings);
            }
            let client = redis::Client::open(info).map_err(invalid)?;
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(options.timeout))
                .set_response_timeout(Some(options.timeout))
                .set_number_of_retries(2)
                .set_max_delay(Duration::from_secs(1));
            let conn = ConnectionManager::new_lazy_with_config(client, config).map_err(classify)?;
            Connector::Ready(Connection::Single(conn))
        };
        Ok(Self {
            connector,
            prefix: options.prefix.clone(),
            timeout: options.timeout,
            scripts: Arc::new(Scripts::load()),
            batcher: batch::Batcher::default(),
            breaker: Arc::default(),
        })
    }

    fn keys(&self, queue: &QueueId) -> [String; 13] {
        keys::queue_keys(&self.prefix, queue)
    }

    /// Runs a script on a queue's keys with `now` as first argument.
    fn invocation<'a>(
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

    /// The enqueue script, loaded, and the full `EVALSHA` command line for
    /// one user at `now_ms` (with `user` where the user goes): what
    /// `redis-benchmark` runs as the Redis-side baseline of an enqueue.
    pub async fn enqueue_command_line(
        &self,
        queue: &QueueId,
        user: &str,
        now_ms: u64,
    ) -> Result<Vec<String>> {
        let script = &self.scripts.enqueue;
        let sha: String = self
            .command(
                "script_load",
                redis::cmd("SCRIPT").arg("LOAD").arg(enqueue_source()),
            )
            .await?;
        if sha != script.get_hash() {
            return Err(Error::Internal("script hash mismatch".into()));
        }
        let keys = self.keys(queue);
        let mut line = vec!["EVALSHA".to_owned(), sha, keys.len().to_string()];
        line.extend(keys);
        line.push(now_ms.to_string());
        line.push(user.to_owned());
        Ok(line)
    }

    /// A caller of the queue's scripts for a batching task.
    async fn caller(&self, queue: &QueueId) -> Result<QueueCaller> {
        Ok(QueueCaller {
            queue: queue.clone(),
            conn: self.connection().await?,
            keys: self.keys(queue),
            scripts: Arc::clone(&self.scripts),
            timeout: self.timeout,
            breaker: Arc::clone(&self.breaker),
        })
    }

    /// The connection, connecting a cluster on first use.
    async fn connection(&self) -> Result<Connection> {
        match &self.connector {
            Connector::Ready(conn) => Ok(conn.clone()),
            Connector::Cluster { client, connection } => {
                let conn = connection
                    .get_or_try_init(|| async {
                        bounded(
                            "connect",
                            self.timeout,
                            Guard {
                                breaker: &self.breaker,
                                scope: "",
                                ping: None,
                            },
                            client.get_async_connection(),
                        )
                        .await
                    })
                    .await?;
                Ok(Connection::Cluster(conn.clone()))
            }
        }
    }

    /// Runs a script of `queue`.
    async fn run<T: FromRedisValue>(
        &self,
        operation: &'static str,
        queue: &QueueId,
        invocation: &ScriptInvocation<'_>,
    ) -> Result<T> {
        let mut conn = self.connection().await?;
        bounded(
            operation,
            self.timeout,
            guard(&self.breaker, &conn, Some(queue)),
            invocation.invoke_async(&mut conn),
        )
        .await
    }

    async fn command<T: FromRedisValue>(
        &self,
        operation: &'static str,
        cmd: &redis::Cmd,
    ) -> Result<T> {
        let mut conn = self.connection().await?;
        bounded(
            operation,
            self.timeout,
            guard(&self.breaker, &conn, None),
            cmd.query_async(&mut conn),
        )
        .await
    }
}

/// Stops sending calls to a Redis that does not answer. A call sent to a
/// stalled Redis waits in its socket and runs when Redis comes back, long
/// after its caller was told it failed; so once a call finds Redis
/// unreachable (no reply at all: a timeout, a broken connection; an error
/// reply is an answer), calls fail at once, unsent, until Redis answers
/// again. A call arriving [`Breaker::PROBE_EVERY`] after the last probe
/// probes: with a `PING` on a single Redis (and goes ahead if answered).
///
/// On a Cluster each queue's calls trip and probe on their own (a `PING`
/// there asks every primary, so the call itself is the probe): one shard
/// down leaves the queues of the others alone.
#[derive(Debug, Default)]
pub(super) struct Breaker {
    /// By scope (`""` for a single Redis and calls not of one queue, the
    /// queue's id on a Cluster): when the last probe was sent. Absent while
    /// Redis answers.
    tripped: Mutex<HashMap<String, std::time::Instant>>,
}

/// What a call does, as the breaker stands.
enum Pass {
    Send,
    Probe,
    Refuse,
}

/// Where a call goes, for the breaker: its scope, and the connection a
/// probe may `PING` through (`None`: the call itself probes).
pub(super) struct Guard<'a> {
    breaker: &'a Breaker,
    scope: &'a str,
    ping: Option<Connection>,
}

impl Breaker {
    const PROBE_EVERY: Duration = Duration::from_millis(250);

    /// Scopes tripped at once beyond which more fall back to the shared one:
    /// made-up queue ids on a dead shard must not grow the map.
    const MAX_SCOPES: usize = 10_000;

    fn pass(&self, scope: &str) -> Pass {
        let mut tripped = self.tripped.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(last) = tripped.get_mut(scope) else {
            return Pass::Send;
        };
        if last.elapsed() >= Self::PROBE_EVERY {
            *last = std::time::Instant::now();
            Pass::Probe
        } else {
            Pass::Refuse
        }
    }

    fn answered(&self, scope: &str) {
        let mut tripped = self.tripped.lock().unwrap_or_else(PoisonError::into_inner);
        if !tripped.is_empty() {
            tripped.remove(scope);
        }
    }

    fn unreachable(&self, scope: &str) {
        let mut tripped = self.tripped.lock().unwrap_or_else(PoisonError::into_inner);
        let scope = if tripped.len() < Self::MAX_SCOPES || tripped.contains_key(scope) {
            scope
        } else {
            ""
        };
        tripped
            .entry(scope.to_owned())
            .or_insert_with(std::time::Instant::now);
    }
}

impl Guard<'_> {
    /// Whether the call may be sent now; probes with a `PING` when one is
    /// due. Returns the time the call has left of `timeout`.
    async fn let_through(&self, timeout: Duration) -> Result<Duration> {
        let refused =
            || Error::Unavailable("Redis did not answer recently; the call was not sent".into());
        match self.breaker.pass(self.scope) {
            Pass::Send => Ok(timeout),
            Pass::Refuse => Err(refused()),
            Pass::Probe => {
                let Some(mut conn) = self.ping.clone() else {
                    return Ok(timeout);
                };
                let started = std::time::Instant::now();
                let ping = redis::cmd("PING");
                match tokio::time::timeout(timeout, ping.query_async::<String>(&mut conn)).await {
                    Ok(Ok(_)) => {
                        self.breaker.answered(self.scope);
                        Ok(timeout.saturating_sub(started.elapsed()))
                    }
                    _ => Err(refused()),
                }
            }
        }
    }
}

/// The guard of a call on `conn`, of `queue` when it is a queue's.
fn guard<'a>(breaker: &'a Breaker, conn: &Connection, queue: Option<&'a QueueId>) -> Guard<'a> {
    match (conn, queue) {
        (Connection::Cluster(_), Some(queue)) => Guard {
            breaker,
            scope: queue.as_str(),
            ping: None,
        },
        _ => Guard {
            breaker,
            scope: "",
            ping: Some(conn.clone()),
        },
    }
}

/// One Redis round trip, bounded by the timeout and measured, unless the
/// breaker holds it back (see [`Breaker`]).
async fn bounded<T>(
    operation: &'static str,
    timeout: Duration,
    guard: Guard<'_>,
    call: impl Future<Output = redis::RedisResult<T>>,
) -> Result<T> {
    let left = match guard.let_through(timeout).await {
        Ok(left) => left,
        Err(error) => {
            metrics()
                .store_errors
                .get_or_create(&StoreErrorLabels {
                    operation,
                    kind: "unavailable",
                })
                .inc();
            return Err(error);
        }
    };
    let started = std::time::Instant::now();
    let result = match tokio::time::timeout(left, call).await {
        Ok(Ok(value)) => {
            guard.breaker.answered(guard.scope);
            Ok(value)
        }
        Ok(Err(error)) => {
            // An error reply (READONLY, BUSY, LOADING...) is an answer:
            // Redis is there and did not run the call.
            if matches!(error.kind(), redis::ErrorKind::Server(_)) {
                guard.breaker.answered(guard.scope);
            } else {
                guard.breaker.unreachable(guard.scope);
            }
            Err(classify(error))
        }
        Err(_) => {
            guard.breaker.unreachable(guard.scope);
            Err(Error::Unavailable(format!(
                "no answer from Redis within {timeout:?}"
            )))
        }
    };
    let m = metrics();
    m.store_seconds
        .get_or_create(&StoreLabels { operation })
        .observe(started.elapsed().as_secs_f64());
    if let Err(error) = &result {
        let kind = match error {
            Error::Unavailable(_) => "unavailable",
            _ => "internal",
        };
        m.store_errors
            .get_or_create(&StoreErrorLabels { operation, kind })
            .inc();
    }
    result
}

/// Failures to get an answer are `Unavailable` (retry); answers we cannot
/// read, or a script's own error, are bugs and `Internal`.
fn classify(error: RedisError) -> Error {
    use redis::ErrorKind;
    match error.kind() {
        ErrorKind::Parse | ErrorKind::UnexpectedReturnType => Error::Internal(error.to_string()),
        ErrorKind::Server(_) if error.code() == Some("ERR") => Error::Internal(error.to_string()),
        _ => Error::Unavailable(error.to_string()),
    }
}

fn bad_reply(what: &str) -> Error {
    Error::Internal(format!("unexpected reply from Redis: {what}"))
}

/// Reads the values of a script's reply array.
struct Reply(std::vec::IntoIter<Value>);

impl Reply {
    fn new(value: Value) -> Result<Self> {
        match value {
            Value::Array(items) => Ok(Self(items.into_iter())),
            _ => Err(bad_reply("expected an array")),
        }
    }

    fn next_value(&mut self) -> Result<Value> {
        self.0.next().ok_or_else(|| bad_reply("array too short"))
    }

    fn string(&mut self) -> Result<String> {
        match self.next_value()? {
            Value::BulkString(bytes) => {
                String::from_utf8(bytes).map_err(|_| bad_reply("string is not UTF-8"))
            }
            Value::SimpleString(s) => Ok(s),
            _ => Err(bad_reply("expected a string")),
        }
    }

    fn u64(&mut self) -> Result<u64> {
        match self.next_value()? {
            Value::Int(n) => u64::try_from(n).map_err(|_| bad_reply("negative number")),
            Value::BulkString(bytes) => std::str::from_utf8(&bytes)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| bad_reply("expected a number")),
            _ => Err(bad_reply("expected a number")),
        }
    }

    fn remaining(&self) -> usize {
        self.0.len()
    }
}

fn status_error(status: &str, queue: &QueueId) -> Error {
    match status {
        "no_queue" => Error::QueueNotFound(queue.to_string()),
        "closed" => Error::QueueClosed(queue.to_string()),
        "paused" => Error::QueuePaused(queue.to_string()),
        "opening_passed" => Error::OpeningPassed(queue.to_string()),
        other => bad_reply(other),
    }
}

/// Reads a place written by the prelude's `place()`; `None` for `{'none'}`.
fn parse_place(value: Value, queue: &QueueId) -> Result<Option<Place>> {
    let mut reply = Reply::new(value)?;
    let kind = reply.string()?;
    if kind == "none" {
        return Ok(None);
    }
    if kind == "not_open" {
        return Err(Error::QueueNotOpen {
            queue: queue.to_string(),
            opens_at_ms: reply.u64()?,
        });
    }
    if reply.remaining() == 0 {
        return Err(status_error(&kind, queue));
    }
    let ticket = reply.u64()?;
    let waiting_count = reply.u64()?;
    let position = reply.u64()?;
    let admitted_at_ms = reply.u64()?;
    let expires_at_ms = reply.u64()?;
    let queue_epoch_ms = reply.u64()?;
    let mode = parse_mode(&reply.string()?)?;
    let rate = RateSample {
        admitted: reply.u64()?,
        span_ms: reply.u64()?,
    };
    let opens_in_ms = reply.u64()?;
    let state = match kind.as_str() {
        "waiting" => PlaceState::Waiting { position },
        "closed" => PlaceState::Closed,
        "pre_queue" => PlaceState::PreQueue { opens_in_ms },
        "admitted" => PlaceState::Admitted(Admission {
            ticket,
            admitted_at_ms,
            expires_at_ms,
            queue_epoch_ms,
        }),
        other => return Err(bad_reply(other)),
    };
    Ok(Some(Place {
        state,
        ticket,
        waiting_count,
        mode,
        rate,
    }))
}

/// Reads the reply of `admit.lua` and `admit_due.lua`.
fn parse_admitted(value: Value, queue: &QueueId) -> Result<Vec<Admitted>> {
    let mut reply = Reply::new(value)?;
    let status = reply.string()?;
    if status != "ok" {
        return Err(status_error(&status, queue));
    }
    let queue_epoch_ms = reply.u64()?;
    let mut admitted = Vec::with_capacity(reply.remaining() / 4);
    while reply.remaining() > 0 {
        let user = UserId::parse(&reply.string()?).map_err(|e| bad_reply(&e))?;
        admitted.push(Admitted {
            user,
            admission: Admission {
                ticket: reply.u64()?,
                admitted_at_ms: reply.u64()?,
                expires_at_ms: reply.u64()?,
                queue_epoch_ms,
            },
        });
    }
    Ok(admitted)
}

/// Reads a log entry `seq|j|ticket|user` or `seq|l|ticket|admitted`.
fn parse_line_entry(entry: &str) -> Result<(u64, LineEvent)> {
    let bad = || bad_reply("line log entry");
    let mut parts = entry.splitn(4, '|');
    let seq = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
    let kind = parts.next().ok_or_else(bad)?;
    let ticket = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
    let detail = parts.next().ok_or_else(bad)?;
    let event = match kind {
        "j" => LineEvent::Joined {
            ticket,
            user: UserId::parse(detail).map_err(|_| bad())?,
        },
        "l" => LineEvent::Left {
            ticket,
            admitted: detail == "1",
        },
        "p" => LineEvent::PreQueueLeft {
            user: UserId::parse(detail).map_err(|_| bad())?,
        },
        _ => return Err(bad()),
    };
    Ok((seq, event))
}

fn parse_mode(value: &str) -> Result<QueueMode> {
    QueueMode::parse(value).ok_or_else(|| bad_reply("unknown queue mode"))
}

fn config_fields(config: &QueueConfig) -> Vec<(&'static str, String)> {
    vec![
        ("opens_at_ms", config.opens_at_ms.unwrap_or(0).to_string()),
        (
            "prequeue_window_ms",
            config.prequeue_window.as_millis().to_string(),
        ),
        ("presence_since_ms", config.presence_since_ms.to_string()),
        ("draw", "none".to_owned()),
        ("mode", config.mode.as_str().to_owned()),
        ("max_active", config.max_active.to_string()),
        ("admit_per_second", config.admit_per_second.to_string()),
        (
            "admission_ttl_ms",
            config.admission_ttl.as_millis().to_string(),
        ),
        (
            "heartbeat_timeout_ms",
            config.heartbeat_timeout.as_millis().to_string(),
        ),
        ("created_at_ms", config.created_at_ms.to_string()),
    ]
}

/// The fields an update writes; clearing an opening that has not happened
/// opens the queue at `now_ms`.
fn update_fields(update: &QueueUpdate, now_ms: u64) -> Vec<(&'static str, String)> {
    let mut fields = Vec::new();
    if let Some(mode) = update.mode {
        fields.push(("mode", mode.as_str().to_owned()));
    }
    if let Some(max_active) = update.max_active {
        fields.push(("max_active", max_active.to_string()));
    }
    if let Some(rate) = update.admit_per_second {
        fields.push(("admit_per_second", rate.to_string()));
    }
    if let Some(ttl) = update.admission_ttl {
        fields.push(("admission_ttl_ms", ttl.as_millis().to_string()));
    }
    if let Some(timeout) = update.heartbeat_timeout {
        fields.push(("heartbeat_timeout_ms", timeout.as_millis().to_string()));
    }
    if let Some(opens_at) = update.opens_at {
        fields.push(("opens_at_ms", opens_at.unwrap_or(now_ms).to_string()));
    }
    if let Some(window) = update.prequeue_window {
        fields.push(("prequeue_window_ms", window.as_millis().to_string()));
    }
    fields
}

/// Reads a config hash; `None` when it is empty (no such queue).
fn parse_config(queue: &QueueId, fields: HashMap<String, String>) -> Result<Option<QueueConfig>> {
    if fields.is_empty() {
        return Ok(None);
    }
    let number = |name: &str| -> Result<u64> {
        fields
            .get(name)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| bad_reply(&format!("queue config field {name}")))
    };
    let small = |name: &str| -> Result<u32> {
        u32::try_from(number(name)?).map_err(|_| bad_reply(&format!("queue config field {name}")))
    };
    Ok(Some(QueueConfig {
        id: queue.clone(),
        mode: parse_mode(fields.get("mode").map_or("", String::as_str))?,
        max_active: small("max_active")?,
        admit_per_second: small("admit_per_second")?,
        admission_ttl: Duration::from_millis(number("admission_ttl_ms")?),
        heartbeat_timeout: Duration::from_millis(number("heartbeat_timeout_ms")?),
        created_at_ms: number("created_at_ms")?,
        opens_at_ms: Some(number("opens_at_ms")?).filter(|at| *at > 0),
        prequeue_window: Duration::from_millis(number("prequeue_window_ms")?),
        draw_seed: fields.get("draw_seed").cloned(),
        draw_complete: fields.get("draw").is_some_and(|d| d == "done"),
        presence_since_ms: number("presence_since_ms")?,
    }))
}

#[async_trait]
impl QueueStore for RedisStore {
    async fn create_queue(&self, config: &QueueConfig) -> Result<QueueConfig> {
        self.command::<i64>(
            "index_add",
            redis::cmd("SADD")
                .arg(keys::index_key(&self.prefix))
                .arg(config.id.as_str()),
        )
        .await?;
        let mut invocation =
            self.invocation(&self.scripts.create_queue, &config.id, config.created_at_ms);
        for (field, value) in config_fields(config) {
            invocation.arg(field).arg(value);
        }
        match self
            .run::<i64>("create_queue", &config.id, &invocation)
            .await?
        {
            1 => Ok(config.clone()),
            _ => Err(Error::QueueAlreadyExists(config.id.to_string())),
        }
    }

    async fn get_queue(&self, queue: &QueueId) -> Result<QueueConfig> {
        let fields: HashMap<String, String> = self
            .command("get_queue", redis::cmd("HGETALL").arg(&self.keys(queue)[0]))
            .await?;
        parse_config(queue, fields)?.ok_or_else(|| Error::QueueNotFound(queue.to_string()))
    }

    async fn list_queues(&self, after: Option<&QueueId>, limit: usize) -> Result<Vec<QueueConfig>> {
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
                Connector::Ready(Connection::Single(_)) => {
                    let mut pipe = redis::pipe();
                    for id in chunk {
                        pipe.cmd("HGETALL").arg(&self.keys(id)[0]);
                    }
                    let mut conn = self.connection().await?;
                    bounded(
                        "list_queues",
                        self.timeout,
                        guard(&self.breaker, &conn, None),
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

    async fn update_queue(
        &self,
        queue: &QueueId,
        update: &QueueUpdate,
        now_ms: u64,
    ) -> Result<QueueConfig> {
        let mut invocation = self.invocation(&self.scripts.update_queue, queue, now_ms);
        for (field, value) in update_fields(update, now_ms) {
            invocation.arg(field).arg(value);
        }
        let reply: Vec<String> = self.run("update_queue", queue, &invocation).await?;
        if reply.len() == 1 {
            return Err(status_error(&reply[0], queue));
        }
        let fields: HashMap<String, String> = reply
            .chunks_exact(2)
            .map(|pair| (pair[0].clone(), pair[1].clone()))
            .collect();
        parse_config(queue, fields)?.ok_or_else(|| Error::QueueNotFound(queue.to_string()))
    }

    async fn delete_queue(&self, queue: &QueueId) -> Result<()> {
        let deleted: i64 = self
            .run(
                "delete_queue",
                queue,
                &self.invocation(&self.scripts.delete_queue, queue, 0),
            )
            .await?;
        self.command::<i64>(
            "index_remove",
            redis::cmd("SREM")
                .arg(keys::index_key(&self.prefix))
                .arg(queue.as_str()),
        )
        .await?;
        match deleted {
            1 => Ok(()),
            _ => Err(Error::QueueNotFound(queue.to_string())),
        }
    }

    async fn enqueue(&self, queue: &QueueId, user: &UserId, now_ms: u64) -> Result<Place> {
        self.batcher
            .call(
                Op::Enqueue,
                || self.caller(queue),
                queue,
                user,
                now_ms,
                self.timeout,
            )
            .await?
            .ok_or_else(|| bad_reply("enqueue returned no place"))
    }

    async fn enqueue_many(
        &self,
        queue: &QueueId,
        users: &[UserId],
        now_ms: u64,
    ) -> Result<Vec<Result<Place>>> {
        self.caller(queue).await?.enqueue_many(users, now_ms).await
    }

    async fn places(
        &self,
        queue: &QueueId,
        users: &[UserId],
        touch: bool,
        now_ms: u64,
    ) -> Result<Vec<Option<Place>>> {
        self.caller(queue).await?.places(users, touch, now_ms).await
    }

    async fn place(&self, queue: &QueueId, user: &UserId, now_ms: u64) -> Result<Option<Place>> {
        self.batcher
            .call(
                Op::Place,
                || self.caller(queue),
                queue,
                user,
                now_ms,
                self.timeout,
            )
            .await
    }

    async fn touch(&self, queue: &QueueId, users: &[UserId], now_ms: u64) -> Result<()> {
        for chunk in users.chunks(TOUCH_CHUNK) {
            let mut invocation = self.invocation(&self.scripts.touch, queue, now_ms);
            for user in chunk {
                invocation.arg(user.as_str());
            }
            self.run::<i64>("touch", queue, &invocation).await?;
        }
        Ok(())
    }

    async fn reap(&self, queue: &QueueId, limit: u32, now_ms: u64) -> Result<u64> {
        let mut invocation = self.invocation(&self.scripts.reap, queue, now_ms);
        invocation.arg(limit);
        match self.run::<i64>("reap", queue, &invocation).await? {
            -1 => Err(Error::QueueNotFound(queue.to_string())),
            n => Ok(n.max(0) as u64),
        }
    }

    async fn line_snapshot(&self, queue: &QueueId, after: u64, limit: u32) -> Result<LineSnapshot> {
        let mut invocation = self.invocation(&self.scripts.line_snapshot, queue, 0);
        invocation.arg(after).arg(limit);
        let mut reply = Reply::new(self.run("line_snapshot", queue, &invocation).await?)?;
        let status = reply.string()?;
        if status != "ok" {
            return Err(status_error(&status, queue));
        }
        let epoch_ms = reply.u64()?;
        let seq = reply.u64()?;
        let mut tickets = Vec::with_capacity(reply.remaining());
        while reply.remaining() > 0 {
            tickets.push(reply.u64()?);
        }
        Ok(LineSnapshot {
            epoch_ms,
            seq,
            tickets,
        })
    }

    async fn line_changes(
        &self,
        queue: &QueueId,
        after: u64,
        limit: u32,
        now_ms: u64,
    ) -> Result<LineChanges> {
        let mut invocation = self.invocation(&self.scripts.line_changes, queue, now_ms);
        invocation.arg(after).arg(limit);
        let mut reply = Reply::new(self.run("line_changes", queue, &invocation).await?)?;
        let status = reply.string()?;
        if status != "ok" {
            return Err(status_error(&status, queue));
        }
        let seq = reply.u64()?;
        let complete = reply.u64()? == 1;
        let mode = parse_mode(&reply.string()?)?;
        let waiting = reply.u64()?;
        let prequeued = reply.u64()?;
        let opens_at_ms = Some(reply.u64()?).filter(|at| *at > 0);
        let draw = reply.string()?;
        let rate = RateSample {
            admitted: reply.u64()?,
            span_ms: reply.u64()?,
        };
        let epoch_ms = reply.u64()?;
        let heartbeat_ms = reply.u64()?;
        let mut events = Vec::with_capacity(reply.remaining());
        while reply.remaining() > 0 {
            events.push(parse_line_entry(&reply.string()?)?);
        }
        Ok(LineChanges {
            summary: LineSummary {
                epoch_ms,
                seq,
                mode,
                waiting,
                prequeued,
                opens_at_ms,
                opened: draw != "none",
                rate,
                heartbeat_ms,
            },
            events,
            complete,
        })
    }

    async fn draw_step(
        &self,
        queue: &QueueId,
        seed: &str,
        chunk: u32,
        now_ms: u64,
    ) -> Result<bool> {
        let mut invocation = self.invocation(&self.scripts.draw_step, queue, now_ms);
        invocation.arg(seed).arg(chunk);
        match self.run::<i64>("draw_step", queue, &invocation).await? {
            -1 => Err(Error::QueueNotFound(queue.to_string())),
            n => Ok(n == 1),
        }
    }

    async fn leave(&self, queue: &QueueId, user: &UserId, now_ms: u64) -> Result<bool> {
        let mut invocation = self.invocation(&self.scripts.leave, queue, now_ms);
        invocation.arg(user.as_str());
        match self.run::<i64>("leave", queue, &invocation).await? {
            -1 => Err(Error::QueueNotFound(queue.to_string())),
            n => Ok(n == 1),
        }
    }

    async fn admit(
        &self,
        queue: &QueueId,
        max_count: u32,
        request: Option<&RequestId>,
        now_ms: u64,
    ) -> Result<Vec<Admitted>> {
        let mut invocation = self.invocation(&self.scripts.admit, queue, now_ms);
        invocation
            .arg(max_count)
            .arg(request.map_or("", RequestId::as_str))
            .arg(request.map_or(0, super::batch_result_ttl_ms));
        parse_admitted(self.run("admit", queue, &invocation).await?, queue)
    }

    async fn admit_due(
        &self,
        queue: &QueueId,
        max_count: u32,
        now_ms: u64,
    ) -> Result<Vec<Admitted>> {
        let mut invocation = self.invocation(&self.scripts.admit_due, queue, now_ms);
        invocation.arg(max_count);
        parse_admitted(self.run("admit_due", queue, &invocation).await?, queue)
    }

    async fn complete(&self, queue: &QueueId, user: &UserId, now_ms: u64) -> Result<bool> {
        let mut invocation = self.invocation(&self.scripts.complete, queue, now_ms);
        invocation.arg(user.as_str());
        match self.run::<i64>("complete", queue, &invocation).await? {
            -1 => Err(Error::QueueNotFound(queue.to_string())),
            n => Ok(n == 1),
        }
    }

    async fn check_admission(
        &self,
        queue: &QueueId,
        check: &AdmissionCheck,
        now_ms: u64,
    ) -> Result<AdmissionStatus> {
        let mut invocation = self.invocation(&self.scripts.check_admission, queue, now_ms);
        for key in keys::used_tokens_keys(&self.prefix, queue) {
            invocation.key(key);
        }
        invocation
            .arg(check.user.as_str())
            .arg(&check.token_id)
            .arg(check.queue_epoch_ms)
            .arg(check.ticket)
            .arg(
                check
                    .admitted_at_ms
                    .map_or(String::new(), |at| at.to_string()),
            );
        match &check.consume {
            Some(consume) => invocation
                .arg(1)
                .arg(consume.remember_until_ms)
                .arg(consume.request.as_str()),
            None => invocation.arg(0).arg(0).arg(""),
        };
        let status: String = self.run("check_admission", queue, &invocation).await?;
        match status.as_str() {
            "held" => Ok(AdmissionStatus::Held),
            "used" => Ok(AdmissionStatus::Used),
            "revoked" => Ok(AdmissionStatus::Revoked),
            other => Err(bad_reply(other)),
        }
    }

    async fn stats(&self, queue: &QueueId, now_ms: u64) -> Result<QueueStats> {
        let mut reply = Reply::new(
            self.run(
                "stats",
                queue,
                &self.invocation(&self.scripts.stats, queue, now_ms),
            )
            .await?,
        )?;
        let status = reply.string()?;
        if status != "ok" {
            return Err(status_error(&status, queue));
        }
        Ok(QueueStats {
            waiting: reply.u64()?,
            active: reply.u64()?,
            enqueued: reply.u64()?,
            admitted: reply.u64()?,
            completed: reply.u64()?,
            expired: reply.u64()?,
            left: reply.u64()?,
            abandoned: reply.u64()?,
            prequeued: reply.u64()?,
            rate: RateSample {
                admitted: reply.u64()?,
                span_ms: reply.u64()?,
            },
        })
    }

    async fn ping(&self) -> Result<()> {
        let _: String = self.command("ping", &redis::cmd("PING")).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lookups_of_queues_that_do_not_exist_leave_no_batching_task_behind() {
        let redis = crate::testkit::RedisServer::start().unwrap_or_else(|e| panic!("{e}"));
        let store = RedisStore::connect(&RedisOptions {
            url: redis.url(),
            password: None,
            cluster: false,
            prefix: "t".into(),
            timeout: Duration::from_secs(2),
        })
        .await
        .unwrap();
        let user = UserId::parse("someone").unwrap();
        for i in 0..2_000 {
            let queue = QueueId::parse(&format!("made-up-{i}")).unwrap();
            let answer = store.place(&queue, &user, 0).await;
            assert!(matches!(answer, Err(Error::QueueNotFound(_))), "{answer:?}");
        }
        for _ in 0..100 {
            if store.batcher.tasks() == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!(
            "{} batching tasks left for queues that do not exist",
            store.batcher.tasks()
        );
    }
}
