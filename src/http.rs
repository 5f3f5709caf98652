//! The plain-HTTP port (`--http-listen`): the published keys at
//! `/.well-known/jwks.json` for booking services in any language, Prometheus
//! metrics at `/metrics`, and health for probes that cannot speak gRPC
//! (a TLS-only gRPC port): liveness at `/healthz`, readiness at `/readyz`,
//! the same as the gRPC health services report.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

use crate::domain::{Clock, QueueId, QueueMode, QueueStats};
use crate::store::QueueStore;
use crate::telemetry::metrics::{QueueFigures, metrics};
use crate::tokens::Keyring;
use crate::watch::WatchHub;

/// Booking services may cache the keys this long. Rotation publishes a new
/// key well before it signs anything, so a cached copy is never too old.
const JWKS_MAX_AGE_S: u32 = 300;

/// Queues whose figures one scrape reports at most.
const MAX_SCRAPED_QUEUES: usize = 1000;

/// How long the queues' figures read from the store serve later scrapes: a
/// read is one store call per queue, so scrapes (several Prometheus
/// servers, or anyone who can reach the port) cost the store at most one
/// read per this interval, however often they come.
const FIGURES_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(5);

/// The queues' figures last read, and when.
type Figures =
    tokio::sync::Mutex<Option<(std::time::Instant, Vec<(QueueId, QueueMode, QueueStats)>)>>;

pub fn router(
    keyring: Arc<Keyring>,
    store: Arc<dyn QueueStore>,
    hub: Arc<WatchHub>,
    clock: Arc<dyn Clock>,
    ready: Arc<AtomicBool>,
) -> Router {
    let figures: Arc<Figures> = Arc::default();
    Router::new()
        .route(
            "/readyz",
            get(move || {
                let ready = ready.load(Ordering::Relaxed);
                async move {
                    if ready {
                        (axum::http::StatusCode::OK, "ready\n")
                    } else {
                        (axum::http::StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
                    }
                }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                let (store, hub, clock, figures) = (
                    Arc::clone(&store),
                    Arc::clone(&hub),
                    Arc::clone(&clock),
                    Arc::clone(&figures),
                );
                async move { scrape(store.as_ref(), &hub, clock.as_ref(), &figures).await }
            }),
        )
        .route(
            "/.well-known/jwks.json",
            get(move || {
                let keyring = Arc::clone(&keyring);
                async move {
                    (
                        [
                            (header::CONTENT_TYPE, "application/jwk-set+json".to_owned()),
                            (
                                header::CACHE_CONTROL,
                                format!("public, max-age={JWKS_MAX_AGE_S}"),
                            ),
                        ],
                        keyring.jwks_json().to_owned(),
                    )
                        .into_response()
                }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
}

/// Reads every queue's figures from the store (at most once per
/// [`FIGURES_MAX_AGE`]; concurrent scrapes share one read), then encodes
/// all metrics. A store that does not answer leaves the queue figures out,
/// not the rest.
async fn scrape(
    store: &dyn QueueStore,
    hub: &WatchHub,
    clock: &dyn Clock,
    figures: &Figures,
) -> axum::response::Response {
    let m = metrics();
    m.open_watchers.set(hub.watcher_count() as i64);
    m.open_connections.set(hub.connections().count() as i64);
    let watchers = hub.watchers_by_queue();
    let mut figures = figures.lock().await;
    let fresh = figures
        .as_ref()
        .is_some_and(|(read_at, _)| read_at.elapsed() < FIGURES_MAX_AGE);
    if !fresh {
        let now_ms = clock.now_ms();
        let mut read = Vec::new();
        if let Ok(configs) = store.list_queues(None, MAX_SCRAPED_QUEUES).await {
            for config in configs {
                if let Ok(stats) = store.stats(&config.id, now_ms).await {
                    read.push((config.id, config.mode, stats));
                }
            }
        }
        *figures = Some((std::time::Instant::now(), read));
    }
    let queues = figures
        .as_ref()
        .map(|(_, read)| {
            read.iter()
                .map(|(queue, mode, stats)| QueueFigures {
                    queue: queue.clone(),
                    mode: *mode,
                    stats: stats.clone(),
                    watchers_here: watchers.get(queue).copied().unwrap_or(0),
                })
                .collect()
        })
        .unwrap_or_default();
    drop(figures);
    m.set_queues(queues);
    match m.encode() {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(_) => axum::http::StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}
