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

use crate::domain::Clock;
use crate::store::QueueStore;
use crate::telemetry::metrics::metrics;
use crate::tokens::Keyring;
use crate::watch::WatchHub;

/// Booking services may cache the keys this long. Rotation publishes a new
/// key well before it signs anything, so a cached copy is never too old.
const JWKS_MAX_AGE_S: u32 = 300;

/// Queues whose figures one scrape reports at most.
const MAX_SCRAPED_QUEUES: usize = 1000;

pub fn router(
    keyring: Arc<Keyring>,
    store: Arc<dyn QueueStore>,
    hub: Arc<WatchHub>,
    clock: Arc<dyn Clock>,
    ready: Arc<AtomicBool>,
) -> Router {
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
                let (store, hub, clock) =
                    (Arc::clone(&store), Arc::clone(&hub), Arc::clone(&clock));
                async move { scrape(store.as_ref(), &hub, clock.now_ms()).await }
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

/// Reads every queue's figures from the store, then encodes all metrics.
/// A store that does not answer leaves the queue figures out, not the rest.
async fn scrape(store: &dyn QueueStore, hub: &WatchHub, now_ms: u64) -> axum::response::Response {
    let m = metrics();
    m.open_watchers.set(hub.watcher_count() as i64);
    let watchers = hub.watchers_by_queue();
    let mut queues = Vec::new();
    if let Ok(configs) = store.list_queues(None, MAX_SCRAPED_QUEUES).await {
        for config in configs {
            if let Ok(stats) = store.stats(&config.id, now_ms).await {
                let here = watchers.get(&config.id).copied().unwrap_or(0);
                queues.push((config.id, stats, here));
            }
        }
    }
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
