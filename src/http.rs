//! The plain-HTTP port (`--http-listen`): the published keys at
//! `/.well-known/jwks.json` for booking services in any language, and a
//! liveness check at `/healthz`.

use std::sync::Arc;

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

use crate::tokens::Keyring;

/// Booking services may cache the keys this long. Rotation publishes a new
/// key well before it signs anything, so a cached copy is never too old.
const JWKS_MAX_AGE_S: u32 = 300;

pub fn router(keyring: Arc<Keyring>) -> Router {
    Router::new()
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
