//! Where calls go: one Redis, a Cluster, or the master Sentinels name,
//! with a new connection when the master is replaced (`READONLY`, or no
//! answer under Sentinel).

use std::sync::{Arc, PoisonError};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{IntoConnectionInfo, RedisError, Value};

use super::RedisOptions;
use super::breaker::{Breaker, bounded, classify, unprobed};
use crate::{Error, Result};

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

    pub(super) fn single(&self) -> Option<&Single> {
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
    pub(super) fn replace(&self, number: u64) {
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
    pub(super) fn unanswered(&self, number: u64) {
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

impl Connector {
    /// The connection `options` describe: a Cluster, Sentinels to ask for
    /// the master, or one address. The URL is checked now; nothing is
    /// connected until the first call.
    pub(super) fn from_options(options: &RedisOptions) -> Result<Self> {
        let invalid = |e: RedisError| Error::invalid("redis_url", e.to_string());
        let connector = if options.cluster {
            let nodes: Vec<&str> = options.url.split(',').map(str::trim).collect();
            let mut builder = ClusterClient::builder(nodes.clone())
                .connection_timeout(options.timeout)
                .response_timeout(options.timeout)
                .retries(3);
            if let Some(password) = &options.password {
                builder = builder.password(password);
            }
            let mut first = nodes
                .first()
                .copied()
                .unwrap_or_default()
                .into_connection_info()
                .map_err(invalid)?;
            if let Some(password) = &options.password {
                let settings = first.redis_settings().clone().set_password(password);
                first = first.set_redis_settings(settings);
            }
            Connector::Cluster(Arc::new((
                builder.build().map_err(invalid)?,
                tokio::sync::OnceCell::new(),
                redis::Client::open(first).map_err(invalid)?,
            )))
        } else {
            let with_password = |url: &str| -> Result<redis::ConnectionInfo> {
                let mut info = url.trim().into_connection_info().map_err(invalid)?;
                if let Some(password) = &options.password {
                    let settings = info.redis_settings().clone().set_password(password);
                    info = info.set_redis_settings(settings);
                }
                Ok(info)
            };
            let origin = match &options.sentinel_master {
                None => Origin::Fixed(
                    redis::Client::open(with_password(&options.url)?).map_err(invalid)?,
                ),
                Some(master) => {
                    // The URLs are the Sentinels' (their own passwords in
                    // them); the password given is the master's.
                    let mut sentinels = Vec::new();
                    for url in options.url.split(',') {
                        let mut info = url.trim().into_connection_info().map_err(invalid)?;
                        if let Some(password) = &options.sentinel_password {
                            let settings = info.redis_settings().clone().set_password(password);
                            info = info.set_redis_settings(settings);
                        }
                        sentinels.push(redis::Client::open(info).map_err(invalid)?);
                    }
                    // TLS as for the first Sentinel; no credentials of
                    // theirs.
                    let first = options.url.split(',').next().unwrap_or_default();
                    let mut settings = redis::RedisConnectionInfo::default();
                    if let Some(password) = &options.password {
                        settings = settings.set_password(password);
                    }
                    let node = first
                        .trim()
                        .into_connection_info()
                        .map_err(invalid)?
                        .set_redis_settings(settings);
                    Origin::Sentinels(Sentinels {
                        sentinels,
                        master: master.clone(),
                        node,
                    })
                }
            };
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(options.timeout))
                .set_response_timeout(Some(options.timeout))
                .set_number_of_retries(2)
                .set_max_delay(Duration::from_secs(1));
            Connector::Single(Arc::new(Single::new(origin, config)?))
        };
        Ok(connector)
    }
}
