//! Assembling the service: connect the store, load the keys, declare the
//! queues, bind the port, wire the gRPC services, and run until told to stop.
//! Used the same way by the binary and by the tests.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;
use tonic_health::server::HealthReporter;

use tower::util::MapResponseLayer;

use crate::api::{AdminApi, QueueApi, limits};
use crate::config::Config;
use crate::domain::{Clock, SystemClock};
use crate::pb::queue_admin_service_server::QueueAdminServiceServer;
use crate::pb::queue_service_server::QueueServiceServer;
use crate::store::{MemoryStore, QueueStore, RedisOptions, RedisStore};
use crate::tokens::{self, Keyring};
use crate::watch::WatchHub;
use crate::worker::QueueWorker;
use crate::{Error, http, pb};

/// How often readiness re-checks the store.
const READINESS_INTERVAL: Duration = Duration::from_secs(1);

/// A built service: the port is bound, the store answered, the queues
/// exist. Nothing is served until [`Application::run_until_stopped`].
pub struct Application {
    listener: TcpListener,
    local_addr: SocketAddr,
    http_listener: TcpListener,
    http_addr: SocketAddr,
    admit_interval: Duration,
    store: Arc<dyn QueueStore>,
    keyring: Arc<Keyring>,
    clock: Arc<dyn Clock>,
    watch_interval: Duration,
}

impl Application {
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        Self::build_with_clock(config, Arc::new(SystemClock)).await
    }

    /// Builds with an injected clock, so tests can move time.
    pub async fn build_with_clock(config: Config, clock: Arc<dyn Clock>) -> anyhow::Result<Self> {
        let store = connect_store(&config).await?;
        let keyring = Arc::new(load_keyring(&config)?);
        for spec in &config.queues {
            match store.create_queue(&spec.config(clock.now_ms())).await {
                Ok(_) => tracing::info!(queue = %spec.id, "declared queue created"),
                Err(Error::QueueAlreadyExists(_)) => tracing::info!(
                    queue = %spec.id,
                    "declared queue exists; its current settings are kept"
                ),
                Err(e) => return Err(e).context(format!("creating declared queue {}", spec.id)),
            }
        }
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("binding {}", config.listen))?;
        let local_addr = listener.local_addr()?;
        let http_listener = TcpListener::bind(config.http_listen)
            .await
            .with_context(|| format!("binding {} (--http-listen)", config.http_listen))?;
        let http_addr = http_listener.local_addr()?;
        Ok(Self {
            listener,
            local_addr,
            http_listener,
            http_addr,
            admit_interval: config.admit_interval,
            store,
            keyring,
            clock,
            watch_interval: config.watch_interval,
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

    /// The public keys tokens are verified with.
    pub fn jwks_json(&self) -> &str {
        self.keyring.jwks_json()
    }

    /// Serves until `stop` resolves, then ends open streams (clients are told
    /// to reconnect) and lets in-flight calls finish.
    pub async fn run_until_stopped(
        self,
        stop: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let shutdown = CancellationToken::new();
        let hub = WatchHub::new(
            Arc::clone(&self.store),
            Arc::clone(&self.clock),
            self.watch_interval,
            shutdown.clone(),
        );
        let verifier = Arc::new(self.keyring.verifier().map_err(anyhow::Error::msg)?);
        let queue_api = QueueApi::new(
            Arc::clone(&self.store),
            Arc::clone(&self.keyring),
            verifier,
            Arc::clone(&self.clock),
            Arc::clone(&hub),
        );
        let queues_changed = Arc::new(Notify::new());
        let admin_api = AdminApi::new(
            Arc::clone(&self.store),
            Arc::clone(&self.clock),
            Arc::clone(&hub),
            Arc::clone(&queues_changed),
        );
        let worker = QueueWorker::new(
            Arc::clone(&self.store),
            Arc::clone(&self.clock),
            hub,
            self.admit_interval,
            queues_changed,
        );
        tokio::spawn(worker.run(shutdown.clone()));
        let http_stop = shutdown.clone();
        let http = axum::serve(
            self.http_listener.tap_io(|tcp| {
                let _ = tcp.set_nodelay(true);
            }),
            http::router(Arc::clone(&self.keyring)),
        )
        .with_graceful_shutdown(async move { http_stop.cancelled().await });
        tokio::spawn(async move {
            if let Err(error) = http.await {
                tracing::error!(%error, "the HTTP port failed");
            }
        });
        tracing::info!(address = %self.http_addr, "serving HTTP (JWKS, health)");

        let (health, health_service) = tonic_health::server::health_reporter();
        tokio::spawn(track_readiness(
            health,
            Arc::clone(&self.store),
            shutdown.clone(),
        ));
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .context("building the reflection service")?;

        tracing::info!(address = %self.local_addr, "serving gRPC");
        let stopping = shutdown.clone();
        let result = Server::builder()
            .layer(MapResponseLayer::new(
                limits::oversized_is_resource_exhausted,
            ))
            .add_service(health_service)
            .add_service(reflection)
            .add_service(
                QueueServiceServer::new(queue_api)
                    .max_decoding_message_size(limits::MAX_REQUEST_BYTES),
            )
            .add_service(
                QueueAdminServiceServer::new(admin_api)
                    .max_decoding_message_size(limits::MAX_REQUEST_BYTES),
            )
            .serve_with_incoming_shutdown(incoming(self.listener), async move {
                stop.await;
                tracing::info!("stopping: ending streams, finishing calls in flight");
                stopping.cancel();
            })
            .await;
        shutdown.cancel();
        result.context("serving gRPC")
    }
}

/// Accepted connections, with Nagle's algorithm off: a response written as a
/// headers frame and a data frame would otherwise wait for the client's
/// delayed ACK (40 ms) between the two.
fn incoming(
    listener: TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use tokio_stream::StreamExt;
    TcpListenerStream::new(listener).map(|accepted| {
        let stream = accepted?;
        stream.set_nodelay(true)?;
        Ok(stream)
    })
}

async fn connect_store(config: &Config) -> anyhow::Result<Arc<dyn QueueStore>> {
    match &config.redis_url {
        Some(url) => {
            let options = RedisOptions {
                url: url.clone(),
                prefix: config.redis_prefix.clone(),
                timeout: config.redis_timeout,
            };
            let store = RedisStore::connect(&options)
                .await
                .context("connecting to Redis (--redis-url)")?;
            tracing::info!(prefix = %config.redis_prefix, "using the Redis store");
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

fn load_keyring(config: &Config) -> anyhow::Result<Keyring> {
    let mut trusted = Vec::new();
    for path in pem_files(&config.verify_keys)? {
        let pem = std::fs::read_to_string(&path)
            .with_context(|| format!("reading the verification key {}", path.display()))?;
        trusted.push(
            tokens::verifying_key_from_pem(&pem)
                .map_err(anyhow::Error::msg)
                .with_context(|| format!("loading the verification key {}", path.display()))?,
        );
    }
    match &config.signing_key {
        Some(path) => {
            let pem = std::fs::read_to_string(path)
                .with_context(|| format!("reading the signing key {}", path.display()))?;
            let key = tokens::signing_key_from_pem(&pem)
                .map_err(anyhow::Error::msg)
                .with_context(|| format!("loading the signing key {}", path.display()))?;
            let keyring =
                Keyring::new(&config.token_issuer, key, &trusted).map_err(anyhow::Error::msg)?;
            tracing::info!(
                kid = keyring.key_id(),
                published = ?keyring.published_key_ids(),
                "signing admission tokens"
            );
            Ok(keyring)
        }
        None => {
            if !trusted.is_empty() {
                anyhow::bail!(
                    "--verify-key needs --signing-key: a generated key cannot be rotated"
                );
            }
            let keyring = Keyring::generate(&config.token_issuer).map_err(anyhow::Error::msg)?;
            tracing::warn!(
                kid = keyring.key_id(),
                "no --signing-key: tokens are signed with a key generated for this process; \
                 they cannot be verified after a restart or by another replica's keys"
            );
            Ok(keyring)
        }
    }
}

/// The files named: each path is a PEM file, or a directory whose `*.pem`
/// files are taken in name order (a mounted Kubernetes Secret).
fn pem_files(paths: &[std::path::PathBuf]) -> anyhow::Result<Vec<std::path::PathBuf>> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            let mut found: Vec<_> = std::fs::read_dir(path)
                .with_context(|| format!("reading the key directory {}", path.display()))?
                .filter_map(|entry| entry.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "pem") && p.is_file())
                .collect();
            found.sort();
            files.extend(found);
        } else {
            files.push(path.clone());
        }
    }
    Ok(files)
}

/// Readiness follows the store: `waitroom.v1.QueueService` (and the admin
/// service) are SERVING while the store answers. The overall `""` service,
/// liveness, stays SERVING: a store outage must not restart the process.
async fn track_readiness(
    health: HealthReporter,
    store: Arc<dyn QueueStore>,
    shutdown: CancellationToken,
) {
    let mut ready = None;
    loop {
        let now_ready = store.ping().await.is_ok();
        if ready != Some(now_ready) {
            if now_ready {
                health.set_serving::<QueueServiceServer<QueueApi>>().await;
                health
                    .set_serving::<QueueAdminServiceServer<AdminApi>>()
                    .await;
                tracing::info!("ready: the store answers");
            } else {
                health
                    .set_not_serving::<QueueServiceServer<QueueApi>>()
                    .await;
                health
                    .set_not_serving::<QueueAdminServiceServer<AdminApi>>()
                    .await;
                tracing::warn!("not ready: the store does not answer");
            }
            ready = Some(now_ready);
        }
        tokio::select! {
            _ = tokio::time::sleep(READINESS_INTERVAL) => {}
            _ = shutdown.cancelled() => {
                health.set_not_serving::<QueueServiceServer<QueueApi>>().await;
                return;
            }
        }
    }
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = terminate => {}
    }
}
