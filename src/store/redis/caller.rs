//! Calling Redis: the connection (one Redis or a Cluster), every call
//! bounded by the timeout and held back by the breaker while Redis does
//! not answer, and the caller a queue's batching task uses.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{RedisError, Script, ScriptInvocation, Value};

use super::lua::Scripts;
use super::reply::{Reply, parse_enqueued, parse_place};
use crate::domain::{Place, QueueId, UserId};
use crate::telemetry::metrics::{StoreErrorLabels, StoreLabels, metrics};
use crate::{Error, Result};

/// Users per `places` script call, so one call never holds Redis for long.
const PLACES_CHUNK: usize = 500;

/// A connection to a single Redis (multiplexed, reconnecting by itself) or
/// to a Redis Cluster (following `MOVED`/`ASK` redirections and topology
/// changes). Every key a script touches shares the queue's hash tag, so each
/// call goes to the one node serving that queue's slot.
#[derive(Clone)]
pub(super) enum Connection {
    /// With the number of the connection made for the address, so a
    /// `READONLY` answer replaces this one and not a newer one.
    Single(ConnectionManager, u64),
    Cluster(ClusterConnection),
}

impl redis::aio::ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> redis::RedisFuture<'a, Value> {
        match self {
            Self::Single(conn, _) => conn.req_packed_command(cmd),
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
            Self::Single(conn, _) => conn.req_packed_commands(pipeline, offset, count),
            Self::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(conn, _) => conn.get_db(),
            Self::Cluster(conn) => conn.get_db(),
        }
    }
}

/// Where connections come from. Cheap to clone.
#[derive(Clone)]
pub(super) enum Connector {
    Single(Arc<Single>),
    /// Connects on first use: a cluster needs its slot map before the
    /// first command, and the service may start before Redis.
    /// The cluster, its connection once made, and a client of the first
    /// node given, for the subscription (a message published on any node
    /// reaches the subscribers of every node).
    Cluster(
        Arc<(
            ClusterClient,
            tokio::sync::OnceCell<ClusterConnection>,
            redis::Client,
        )>,
    ),
}

impl Connector {
    /// The connection to call on now.
    pub(super) async fn connection(
        &self,
        timeout: Duration,
        breaker: &Breaker,
    ) -> Result<Connection> {
        match self {
            Self::Single(single) => {
                let (conn, number) = single.connection(timeout).await?;
                Ok(Connection::Single(conn, number))
            }
            Self::Cluster(cluster) => {
                let (client, connection, _) = &**cluster;
                let conn = connection
                    .get_or_try_init(|| async {
                        bounded(
                            "connect",
                            timeout,
                            unprobed(breaker),
                            client.get_async_connection(),
                        )
                        .await
                    })
                    .await?;
                Ok(Connection::Cluster(conn.clone()))
            }
        }
    }

    /// A client for a subscription: of the fixed address, of the master
    /// the Sentinels name now, or of a cluster's first node.
    pub(super) async fn subscriber(
        &self,
        timeout: Duration,
    ) -> std::result::Result<redis::Client, String> {
        match self {
            Self::Single(single) => match &single.origin {
                Origin::Fixed(client) => Ok(client.clone()),
                Origin::Sentinels(sentinels) => sentinels.master(timeout).await,
            },
            Self::Cluster(cluster) => Ok(cluster.2.clone()),
        }
    }

    fn single(&self) -> Option<&Single> {
        match self {
            Self::Single(single) => Some(single),
            Self::Cluster(_) => None,
        }
    }
}

/// One Redis master, reached through an address that may move to another
/// server, or named by Sentinels.
///
/// - A fixed address (a Kubernetes Service that follows the master under
///   Sentinel): the multiplexed connection reconnects by itself when it
///   breaks, but after a failover the connection open to the old master is
///   still whole, and the demoted server answers every write with
///   `READONLY`; then a new connection is made, which reaches whatever
///   serves the address now.
/// - Sentinels: the master's address is asked of them before the first
///   call, and again when the master answers `READONLY` (demoted) or does
///   not answer at all (it may have died and been replaced), at most every
///   [`Single::REPLACE_EVERY`], until they name one that answers.
pub(super) struct Single {
    origin: Origin,
    config: ConnectionManagerConfig,
    current: std::sync::RwLock<Current>,
    /// Held while the Sentinels are asked, so one caller asks for all.
    asking: tokio::sync::Mutex<()>,
}

pub(super) enum Origin {
    Fixed(redis::Client),
    Sentinels(Sentinels),
}

/// Where to ask for the master, and how to connect to it once named.
pub(super) struct Sentinels {
    pub(super) sentinels: Vec<redis::Client>,
    pub(super) master: String,
    /// The master's connection settings (password, database, TLS); its
    /// address is the Sentinels' answer.
    pub(super) node: redis::ConnectionInfo,
}

struct Current {
    /// `None` until the Sentinels named a master.
    conn: Option<ConnectionManager>,
    /// Connections made so far.
    number: u64,
    /// The Sentinels are to be asked again before the next call.
    stale: bool,
    /// When the Sentinels were last asked, answered or not.
    asked_at: Option<std::time::Instant>,
    replaced_at: Option<std::time::Instant>,
    warned_at: Option<std::time::Instant>,
}

impl Single {
    /// Least time between two replacements, so a burst of `READONLY`
    /// answers makes one new connection, not one each.
    const REPLACE_EVERY: Duration = Duration::from_millis(250);

    pub(super) fn new(origin: Origin, config: ConnectionManagerConfig) -> Result<Self> {
        let conn = match &origin {
            Origin::Fixed(client) => Some(
                ConnectionManager::new_lazy_with_config(client.clone(), config.clone())
                    .map_err(classify)?,
            ),
            Origin::Sentinels(_) => None,
        };
        Ok(Self {
            origin,
            config,
            current: std::sync::RwLock::new(Current {
                stale: conn.is_none(),
                conn,
                number: 0,
                asked_at: None,
                replaced_at: None,
                warned_at: None,
            }),
            asking: tokio::sync::Mutex::new(()),
        })
    }

    /// The connection to call on now: asks the Sentinels first when they
    /// are due to be asked (one caller does; the others go on with the
    /// connection there is, or fail when there is none).
    async fn connection(&self, timeout: Duration) -> Result<(ConnectionManager, u64)> {
        let (conn, number, stale) = {
            let current = self.current.read().unwrap_or_else(PoisonError::into_inner);
            // Asked at most every REPLACE_EVERY, answered or not.
            let due = current
                .asked_at
                .is_none_or(|at| at.elapsed() >= Self::REPLACE_EVERY);
            (current.conn.clone(), current.number, current.stale && due)
        };
        let Origin::Sentinels(sentinels) = &self.origin else {
            return conn.map(|c| (c, number)).ok_or_else(|| {
                Error::Internal("a Redis connection with a fixed address is missing".into())
            });
        };
        let none = || {
            Error::Unavailable(format!(
                "no Sentinel named a master for {:?} yet",
                sentinels.master
            ))
        };
        if !stale {
            return conn.map(|c| (c, number)).ok_or_else(none);
        }
        let Ok(_asking) = self.asking.try_lock() else {
            return conn.map(|c| (c, number)).ok_or_else(none);
        };
        self.current
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .asked_at = Some(std::time::Instant::now());
        // The Sentinels' answer, then the master's ROLE.
        match tokio::time::timeout(2 * timeout, sentinels.master(timeout)).await {
            Ok(Ok(client)) => {
                let fresh = ConnectionManager::new_lazy_with_config(client, self.config.clone())
                    .map_err(classify)?;
                let mut current = self.current.write().unwrap_or_else(PoisonError::into_inner);
                current.conn = Some(fresh.clone());
                current.number += 1;
                current.stale = false;
                current.replaced_at = Some(std::time::Instant::now());
                Ok((fresh, current.number))
            }
            Ok(Err(error)) => {
                self.warn(&error);
                conn.map(|c| (c, number)).ok_or(Error::Unavailable(error))
            }
            Err(_) => conn.map(|c| (c, number)).ok_or_else(none),
        }
    }

    /// Connection `number` was answered `READONLY` (or `NOREPLICAS`):
    /// connect afresh (ask the Sentinels again), unless that connection was
    /// replaced already.
    /// An address that leads to a replica for good (a misconfiguration) is
    /// retried every [`Single::REPLACE_EVERY`] and said once a minute.
    fn replace(&self, number: u64) {
        let mut current = self.current.write().unwrap_or_else(PoisonError::into_inner);
        if current.number != number
            || current
                .replaced_at
                .is_some_and(|at| at.elapsed() < Self::REPLACE_EVERY)
        {
            return;
        }
        let now = std::time::Instant::now();
        if current
            .warned_at
            .is_none_or(|at| at.elapsed() >= Duration::from_secs(60))
        {
            tracing::warn!("Redis answered READONLY: reconnecting to reach the master");
            current.warned_at = Some(now);
        }
        match &self.origin {
            Origin::Fixed(client) => {
                match ConnectionManager::new_lazy_with_config(client.clone(), self.config.clone()) {
                    Ok(fresh) => {
                        current.conn = Some(fresh);
                        current.number += 1;
                        current.replaced_at = Some(now);
                    }
                    Err(error) => tracing::warn!(%error, "cannot reconnect to Redis"),
                }
            }
            Origin::Sentinels(_) => current.stale = true,
        }
    }

    /// Connection `number` got no answer: under Sentinel the master may
    /// have died, so the Sentinels are asked again (a fixed address is
    /// reconnected to by the connection itself).
    fn unanswered(&self, number: u64) {
        if matches!(self.origin, Origin::Fixed(_)) {
            return;
        }
        let mut current = self.current.write().unwrap_or_else(PoisonError::into_inner);
        if current.number == number
            && current
                .replaced_at
                .is_none_or(|at| at.elapsed() >= Self::REPLACE_EVERY)
        {
            current.stale = true;
        }
    }

    fn warn(&self, error: &str) {
        let mut current = self.current.write().unwrap_or_else(PoisonError::into_inner);
        if current
            .warned_at
            .is_none_or(|at| at.elapsed() >= Duration::from_secs(60))
        {
            tracing::warn!(%error, "cannot learn the Redis master from Sentinel");
            current.warned_at = Some(std::time::Instant::now());
        }
    }
}

impl Sentinels {
    /// A client for the master the Sentinels name, asked of all of them at
    /// once (one that does not answer holds up nobody), checked to be a
    /// master (`ROLE`): a Sentinel cut off from the others may still name
    /// the old one.
    async fn master(&self, timeout: Duration) -> std::result::Result<redis::Client, String> {
        let mut asks = tokio::task::JoinSet::new();
        for sentinel in &self.sentinels {
            let (sentinel, master) = (sentinel.clone(), self.master.clone());
            asks.spawn(async move {
                let ask = async {
                    let mut conn = sentinel.get_multiplexed_async_connection().await?;
                    redis::cmd("SENTINEL")
                        .arg("get-master-addr-by-name")
                        .arg(&master)
                        .query_async::<Option<(String, String)>>(&mut conn)
                        .await
                };
                tokio::time::timeout(timeout, ask).await
            });
        }
        let mut last = String::from("no Sentinel configured");
        let mut tried = std::collections::HashSet::new();
        while let Some(answer) = asks.join_next().await {
            match answer {
                Ok(Ok(Ok(Some((host, port))))) => {
                    if !tried.insert((host.clone(), port.clone())) {
                        continue;
                    }
                    match self.client_if_master(host, &port, timeout).await {
                        Ok(client) => return Ok(client),
                        Err(error) => last = error,
                    }
                }
                Ok(Ok(Ok(None))) => {
                    last = format!("a Sentinel knows no master named {:?}", self.master);
                }
                Ok(Ok(Err(error))) => last = format!("a Sentinel failed: {error}"),
                Ok(Err(_)) => last = format!("a Sentinel did not answer within {timeout:?}"),
                Err(error) => last = format!("asking a Sentinel failed: {error}"),
            }
        }
        Err(last)
    }

    /// A client for the server a Sentinel named, if it says it is a master.
    async fn client_if_master(
        &self,
        host: String,
        port: &str,
        timeout: Duration,
    ) -> std::result::Result<redis::Client, String> {
        let port: u16 = port
            .parse()
            .map_err(|_| format!("a Sentinel named port {port:?}"))?;
        let addr = match self.node.addr() {
            redis::ConnectionAddr::TcpTls {
                insecure,
                tls_params,
                ..
            } => redis::ConnectionAddr::TcpTls {
                host: host.clone(),
                port,
                insecure: *insecure,
                tls_params: tls_params.clone(),
            },
            _ => redis::ConnectionAddr::Tcp(host.clone(), port),
        };
        let client =
            redis::Client::open(self.node.clone().set_addr(addr)).map_err(|e| e.to_string())?;
        let role = async {
            let mut conn = client.get_multiplexed_async_connection().await?;
            redis::cmd("ROLE").query_async::<Value>(&mut conn).await
        };
        match tokio::time::timeout(timeout, role).await {
            Ok(Ok(Value::Array(role))) if matches!(role.first(), Some(Value::BulkString(r)) if r == b"master") => {
                Ok(client)
            }
            Ok(Ok(_)) => Err(format!(
                "a Sentinel named {host}:{port}, which is not a master (yet)"
            )),
            Ok(Err(error)) => Err(format!(
                "the master a Sentinel named, {host}:{port}: {error}"
            )),
            Err(_) => Err(format!(
                "the master a Sentinel named, {host}:{port}, did not answer within {timeout:?}"
            )),
        }
    }
}

/// What a queue's batching task needs to call Redis on its own.
pub(super) struct QueueCaller {
    pub(super) queue: QueueId,
    pub(super) connector: Connector,
    pub(super) keys: [String; 16],
    pub(super) scripts: Arc<Scripts>,
    pub(super) timeout: Duration,
    pub(super) breaker: Arc<Breaker>,
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
        let mut conn = self
            .connector
            .connection(self.timeout, &self.breaker)
            .await?;
        let value: Value = bounded(
            operation,
            self.timeout,
            guard(&self.breaker, &self.connector, &conn, Some(&self.queue)),
            invocation.invoke_async(&mut conn),
        )
        .await?;
        Ok(Reply::of(value, &self.queue)?.into_values())
    }

    pub(super) async fn enqueue_many(
        &self,
        users: &[UserId],
        now_ms: u64,
    ) -> Result<Vec<Result<Place>>> {
        let mut invocation = self.invocation(&self.scripts.enqueue_many, now_ms);
        for user in users {
            invocation.arg(user.as_str());
        }
        let items = self.per_user("enqueue", &invocation).await?;
        parse_enqueued(items, users.len(), &self.queue)
    }

    pub(super) async fn places(
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
pub(super) enum Pass {
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
    /// Replaced when the server answers `READONLY` (with the number of the
    /// connection the call went on).
    single: Option<(&'a Single, u64)>,
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
                    _ => {
                        if let Some((single, number)) = self.single {
                            single.unanswered(number);
                        }
                        Err(refused())
                    }
                }
            }
        }
    }
}

/// The guard of a call made before there is a connection to probe with.
pub(super) fn unprobed(breaker: &Breaker) -> Guard<'_> {
    Guard {
        breaker,
        scope: "",
        ping: None,
        single: None,
    }
}

/// The guard of a call on `conn`, of `queue` when it is a queue's.
pub(super) fn guard<'a>(
    breaker: &'a Breaker,
    connector: &'a Connector,
    conn: &Connection,
    queue: Option<&'a QueueId>,
) -> Guard<'a> {
    match (conn, queue) {
        (Connection::Cluster(_), Some(queue)) => Guard {
            breaker,
            scope: queue.as_str(),
            ping: None,
            single: None,
        },
        _ => Guard {
            breaker,
            scope: "",
            ping: Some(conn.clone()),
            single: match conn {
                Connection::Single(_, number) => connector.single().map(|s| (s, *number)),
                Connection::Cluster(_) => None,
            },
        },
    }
}

/// One Redis round trip, bounded by the timeout and measured, unless the
/// breaker holds it back (see [`Breaker`]).
pub(super) async fn bounded<T>(
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
                // A replica (a demoted master), or a master whose replica
                // left it (`min-replicas-to-write`; perhaps promoted): the
                // master may be elsewhere now.
                let demoted = error.kind()
                    == redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly)
                    || error.code() == Some("NOREPLICAS");
                if demoted && let Some((single, number)) = guard.single {
                    single.replace(number);
                }
            } else {
                guard.breaker.unreachable(guard.scope);
                if let Some((single, number)) = guard.single {
                    single.unanswered(number);
                }
            }
            Err(classify(error))
        }
        Err(_) => {
            guard.breaker.unreachable(guard.scope);
            if let Some((single, number)) = guard.single {
                single.unanswered(number);
            }
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
pub(super) fn classify(error: RedisError) -> Error {
    use redis::ErrorKind;
    match error.kind() {
        ErrorKind::Parse | ErrorKind::UnexpectedReturnType => Error::Internal(error.to_string()),
        ErrorKind::Server(_) if error.code() == Some("ERR") => Error::Internal(error.to_string()),
        _ => Error::Unavailable(error.to_string()),
    }
}
