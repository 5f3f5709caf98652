//! Assembling the service: check the configuration, load the keys, bind the
//! ports, wire the gRPC services with their layers, and run until told to
//! stop. Used the same way by the binary and by the tests.
//!
//! Start-up fails fast on what is wrong for good (a bad Redis URL, key file,
//! certificate or key directory) before any port opens. Redis itself may
//! come later: readiness stays `NOT_SERVING` until it answers and the
//! declared queues exist, and follows it from then on.
//!
//! - `secrets`: keys, certificates and API keys, read before any port opens;
//! - `readiness`: health that follows the store, and the declared queues;
//! - `shutdown`: the stop sequence (drain, end streams, bounded finish) and
//!   the signals that start it;
//! - `connections`: the gRPC port served a connection at a time, so each
//!   can be told to go away on its own (its age, the balancer, the stop);
//! - here: building, and wiring the services, layers and ports.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::Context;
use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Server, ServerTlsConfig};
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::server::HealthReporter;
use tower::util::MapResponseLayer;

use crate::api::auth::{ApiKeys, AuthLayer};
use crate::api::limits::{self, CallLimitLayer};
use crate::api::{AdminApi, QueueApi};
use crate::config::Config;
use crate::domain::{Clock, SystemClock};
use crate::pb::queue_admin_service_server::QueueAdminServiceServer;
use crate::pb::queue_service_server::QueueServiceServer;
use crate::store::{MemoryStore, QueueStore, RedisOptions, RedisStore};
use crate::telemetry::grpc::ObserveLayer;
use crate::tokens::Keyring;
use crate::watch::{Balancer, Balancing, WatchHub, WatchedStore};
use crate::worker::QueueWorker;
use crate::{http, pb};

mod connections;
mod readiness;
mod secrets;
mod shutdown;

use self::connections::{Accepting, ServeOne};
use self::readiness::{set_ready, track_readiness};
use self::shutdown::Drain;
pub use self::shutdown::shutdown_signal;

/// A built service: configuration checked, keys loaded, ports bound.
/// Nothing is served until [`Application::run_until_stopped`].
pub struct Application {
    /// Follows the lines of watched and polled queues; built here so it
    /// can be handed out before the service runs.
    hub: Arc<WatchHub>,
    /// Cancelled when open streams are to end.
    streams_end: CancellationToken,
    /// The queue worker's count of passes, once it runs.
    worker_passes: Arc<std::sync::OnceLock<Arc<std::sync::atomic::AtomicU64>>>,
    config: Config,
    listener: TcpListener,
    local_addr: SocketAddr,
    /// Taken when the HTTP port starts serving.
    http_listener: Option<TcpListener>,
    http_addr: SocketAddr,
    store: Arc<dyn QueueStore>,
    keyring: Arc<Keyring>,
    api_keys: Option<Arc<ApiKeys>>,
    tls: Option<ServerTlsConfig>,
    clock: Arc<dyn Clock>,
}

impl Application {
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        Self::build_with_clock(config, Arc::new(SystemClock)).await
    }

    /// Builds with an injected clock, so tests can move time.
    pub async fn build_with_clock(config: Config, clock: Arc<dyn Clock>) -> anyhow::Result<Self> {
        let store = open_store(&config)?;
        let keyring = Arc::new(secrets::load_keyring(&config)?);
        let tls = secrets::load_tls(&config)?;
        let api_keys = secrets::load_api_keys(&config)?.map(Arc::new);
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("binding {}", config.listen))?;
        let local_addr = listener.local_addr()?;
        let http_listener = TcpListener::bind(config.http_listen)
            .await
            .with_context(|| format!("binding {} (--http-listen)", config.http_listen))?;
        let http_addr = http_listener.local_addr()?;
        let streams_end = CancellationToken::new();
        let hub = WatchHub::new(
            Arc::clone(&store),
            Arc::clone(&clock),
            config.watch_interval,
            streams_end.clone(),
        );
        hub.set_position_pace(config.position_pace);
        hub.set_position_budget(config.position_budget);
        hub.set_stall_timeout(config.stall_timeout);
        Ok(Self {
            hub,
            streams_end,
            worker_passes: Arc::default(),
            config,
            listener,
            local_addr,
            http_listener: Some(http_listener),
            http_addr,
            store,
            keyring,
            api_keys,
            tls,
            clock,
        })
    }

    /// The bound address; with port 0 in the config, the port chosen.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The bound address of the plain-HTTP port.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// This instance's watch hub, for tests and embedders that need to
    /// know when it has caught up (see [`WatchHub::refreshes`]).
    pub fn watch_hub(&self) -> Arc<WatchHub> {
        Arc::clone(&self.hub)
    }

    /// How many passes over every queue this instance's queue worker has
    /// completed (0 until it runs), for tests that wait for the worker to
    /// act on a moved clock rather than sleep.
    pub fn worker_passes(&self) -> impl Fn() -> u64 + Send + Sync + 'static {
        let passes = Arc::clone(&self.worker_passes);
        move || {
            passes
                .get()
                .map_or(0, |p| p.load(std::sync::atomic::Ordering::Acquire))
        }
    }

    /// The public keys tokens are verified with.
    pub fn jwks_json(&self) -> &str {
        self.keyring.jwks_json()
    }

    /// Serves until `stop` resolves, then shuts down gracefully: readiness
    /// turns `NOT_SERVING` at once while calls are still served for the
    /// drain delay (so load balancers stop sending), then open streams end
    /// with `UNAVAILABLE` (clients reconnect elsewhere; places are kept),
    /// calls in flight finish, and after at most the shutdown timeout it
    /// returns, whatever the clients do.
    pub async fn run_until_stopped(
        self,
        stop: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let background = CancellationToken::new();
        // Everything but the hub itself goes through the watched store, so
        // the hub hears of every write made here.
        let watched = Arc::new(WatchedStore::new(
            Arc::clone(&self.store),
            Arc::clone(&self.hub),
        ));
        let store: Arc<dyn QueueStore> = Arc::clone(&watched) as Arc<dyn QueueStore>;
        let (health, health_service) = tonic_health::server::health_reporter();
        let ready = Arc::new(AtomicBool::new(false));
        set_ready(&health, &ready, false).await;
        let draining = CancellationToken::new();
        let queues_changed = Arc::new(Notify::new());
        let parts = Running {
            store,
            ready,
            draining,
            queues_changed,
            background,
        };
        let mut this = self;
        this.spawn_background(&parts, &health);
        this.serve_http(&parts);
        let serve_one = this.grpc_service(watched, &parts, health_service)?;
        let drain = Drain {
            health,
            ready: Arc::clone(&parts.ready),
            draining: parts.draining.clone(),
            streams_end: this.streams_end.clone(),
            drain_delay: this.config.drain_delay,
            shutdown_timeout: this.config.shutdown_timeout,
        };
        let result = this.serve_grpc(serve_one, drain, stop).await;
        parts.background.cancel();
        result
    }

    /// The loops every replica runs beside serving: the queue worker
    /// (admissions, releases), the balancer, the announcements of other
    /// replicas' writes, and readiness.
    fn spawn_background(&self, parts: &Running, health: &HealthReporter) {
        let (config, hub, store) = (&self.config, &self.hub, &parts.store);
        let worker = QueueWorker::new(
            Arc::clone(store),
            Arc::clone(&self.clock),
            config.admit_interval,
            Arc::clone(&parts.queues_changed),
            Arc::clone(&parts.ready),
        );
        let _ = self.worker_passes.set(worker.passes());
        tokio::spawn(worker.run(parts.background.clone()));
        let balancer = Balancer {
            balancing: Balancing {
                interval: config.balance_interval,
                step: config.balance_step,
                tolerance: config.balance_tolerance,
            },
            hub: Arc::clone(hub),
            store: Arc::clone(store),
            clock: Arc::clone(&self.clock),
            connections: hub.connections(),
            ready: Arc::clone(&parts.ready),
            draining: parts.draining.clone(),
        };
        tokio::spawn(balancer.run(parts.background.clone()));
        let heard_hub = Arc::clone(hub);
        let heard: crate::store::Announced =
            Arc::new(move |queue| heard_hub.heard_elsewhere(queue));
        let (hearing, stop) = (Arc::clone(store), parts.background.clone());
        tokio::spawn(async move { hearing.hear_announcements(heard, stop).await });
        tokio::spawn(track_readiness(
            health.clone(),
            Arc::clone(&parts.ready),
            Arc::clone(store),
            Arc::clone(&self.clock),
            Arc::clone(hub),
            config.queues.clone(),
            parts.draining.clone(),
        ));
    }

    /// The plain-HTTP port: JWKS, metrics, liveness and readiness.
    fn serve_http(&mut self, parts: &Running) {
        let Some(listener) = self.http_listener.take() else {
            return;
        };
        let http_stop = parts.background.clone();
        let http = axum::serve(
            listener.tap_io(|tcp| {
                let _ = tcp.set_nodelay(true);
            }),
            http::router(
                Arc::clone(&self.keyring),
                Arc::clone(&parts.store),
                Arc::clone(&self.hub),
                Arc::clone(&self.clock),
                Arc::clone(&parts.ready),
            ),
        )
        .with_graceful_shutdown(async move { http_stop.cancelled().await });
        tokio::spawn(async move {
            if let Err(error) = http.await {
                tracing::error!(%error, "the HTTP port failed");
            }
        });
        tracing::info!(address = %self.http_addr, "serving HTTP (JWKS, metrics, health)");
    }

    /// The gRPC services with their layers, as one connection at a time is
    /// served with them.
    fn grpc_service(
        &mut self,
        watched: Arc<WatchedStore>,
        parts: &Running,
        health_service: HealthServer<impl Health>,
    ) -> anyhow::Result<ServeOne> {
        let (queue_api, admin_api) = self.apis(watched, parts)?;
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            // The error details every failure carries (`google.rpc.ErrorInfo`,
            // `BadRequest`, `RetryInfo`), so grpcurl shows them decoded rather
            // than as base64.
            .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .context("building the reflection service")?;
        let mut server = grpc_server(&self.config);
        if let Some(tls) = self.tls.take() {
            server = server.tls_config(tls).context("configuring TLS")?;
        }
        let auth = tower::util::option_layer(self.api_keys.take().map(AuthLayer::new));
        let router = server
            .layer(ObserveLayer)
            .layer(MapResponseLayer::new(
                limits::oversized_is_resource_exhausted,
            ))
            .layer(auth)
            .layer(CallLimitLayer::new(self.config.max_calls))
            .add_service(health_service)
            .add_service(reflection)
            .add_service(
                QueueServiceServer::new(queue_api)
                    .max_decoding_message_size(limits::MAX_REQUEST_BYTES),
            )
            .add_service(
                QueueAdminServiceServer::new(admin_api)
                    .max_decoding_message_size(limits::MAX_REQUEST_BYTES),
            );
        Ok(Arc::new(move |conn, go| {
            let router = router.clone();
            Box::pin(async move {
                // One connection, then nothing until it is to go away: the
                // end of the stream would start tonic's shutdown at once.
                let incoming = tokio_stream::once(Ok::<_, std::io::Error>(conn))
                    .chain(tokio_stream::pending());
                router.serve_with_incoming_shutdown(incoming, go).await
            })
        }))
    }

    /// The two APIs, on the watched store.
    fn apis(
        &self,
        watched: Arc<WatchedStore>,
        parts: &Running,
    ) -> anyhow::Result<(QueueApi, AdminApi)> {
        let verifier = Arc::new(self.keyring.verifier().map_err(anyhow::Error::msg)?);
        crate::telemetry::metrics::metrics()
            .max_streams
            .set(i64::try_from(self.config.max_streams).unwrap_or(i64::MAX));
        let queue_api = QueueApi::new(
            watched,
            Arc::clone(&self.keyring),
            verifier,
            Arc::clone(&self.clock),
            Arc::clone(&self.hub),
            self.config.max_streams,
        );
        let admin_api = AdminApi::new(
            Arc::clone(&parts.store),
            Arc::clone(&self.clock),
            Arc::clone(&parts.queues_changed),
        );
        Ok((queue_api, admin_api))
    }

    /// Serves gRPC, one connection at a time (see `connections.rs`), until
    /// `stop` and the drain that follows it.
    async fn serve_grpc(
        self,
        serve_one: ServeOne,
        drain: Drain,
        stop: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        tracing::info!(address = %self.local_addr, "serving gRPC");
        let (shutdown, finish) = shutdown::sequence(stop, drain);
        let stopping = CancellationToken::new();
        let stopped = stopping.clone();
        tokio::spawn(async move {
            shutdown.await;
            stopped.cancel();
        });
        let config = &self.config;
        let accepting = Accepting {
            listener: self.listener,
            serve_one,
            connections: self.hub.connections(),
            hub: Arc::clone(&self.hub),
            max_age: config.max_connection_age,
            grace: config.shutdown_timeout,
            handshake: config.handshake_timeout,
            tls: config.tls_cert.is_some(),
            stall: config.stall_timeout,
        };
        let serving = tokio::spawn(accepting.run(stopping));
        finish.wait(serving).await
    }
}

/// HTTP/2 settings for many streams on few connections: windows large
/// enough that a burst of updates on thousands of streams is not held up by
/// flow control, and room for the resets a client tearing down thousands of
/// streams sends at once.
fn grpc_server(config: &Config) -> Server {
    Server::builder()
        .timeout(config.request_timeout)
        .max_concurrent_streams(config.max_streams_per_connection)
        .http2_keepalive_interval(Some(config.keepalive_interval))
        .http2_keepalive_timeout(Some(config.keepalive_timeout))
        .initial_connection_window_size(16 << 20)
        .initial_stream_window_size(1 << 20)
        .http2_max_pending_accept_reset_streams(Some(10_000))
        .http2_max_local_error_reset_streams(Some(10_000))
}

/// What the running service's parts share.
struct Running {
    /// The store as everything but the hub sees it (the hub hears of its
    /// writes).
    store: Arc<dyn QueueStore>,
    ready: Arc<AtomicBool>,
    draining: CancellationToken,
    /// Told when queues are created or deleted, so the worker looks again.
    queues_changed: Arc<Notify>,
    /// Cancelled when the service has stopped: the background loops end.
    background: CancellationToken,
}

/// A declared queue the Redis store would refuse stops the start with
/// the reason, rather than leaving the service unready for good.
fn declared_over_sub_lines(config: &Config) -> anyhow::Result<()> {
    for spec in config.queues.iter().filter(|q| q.shards > 1) {
        if !config.redis_sub_lines {
            anyhow::bail!(
                "--queue {}: shards={} is served on Redis only with --redis-sub-lines (a preview)",
                spec.id,
                spec.shards
            );
        }
    }
    Ok(())
}

fn open_store(config: &Config) -> anyhow::Result<Arc<dyn QueueStore>> {
    match &config.redis_url {
        Some(url) => {
            let options = RedisOptions {
                url: url.clone(),
                password: config.redis_password.clone(),
                cluster: config.redis_cluster,
                prefix: config.redis_prefix.clone(),
                timeout: config.redis_timeout,
                sentinel_master: config.redis_sentinel_master.clone(),
                sentinel_password: config.redis_sentinel_password.clone(),
            };
            declared_over_sub_lines(config)?;
            let mut store = RedisStore::connect_lazily(&options)
                .map_err(|e| anyhow::anyhow!("{e}"))
                .context("--redis-url")?;
            if config.redis_sub_lines {
                store = store.with_sub_lines();
            }
            tracing::info!(
                prefix = %config.redis_prefix,
                cluster = config.redis_cluster,
                sentinel_master = config.redis_sentinel_master.as_deref(),
                sub_lines = config.redis_sub_lines,
                "using the Redis store"
            );
            Ok(Arc::new(store))
        }
        None => {
            tracing::warn!(
                "no --redis-url: queues live in this process only and are lost when it stops; \
                 replicas do not share them"
            );
            Ok(Arc::new(MemoryStore::new()))
        }
    }
}
