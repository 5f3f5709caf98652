//! What every response carries (a Content-Security-Policy with no inline
//! script, no framing, no sniffing, no caching of pages), and the check
//! every POST passes: nothing sent from another site's page.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::page;

/// What every response carries, and the check every POST passes.
pub(crate) struct Protection {
    csp: HeaderValue,
}

impl Protection {
    pub(crate) fn new(look: &page::Look) -> Self {
        use base64::Engine;
        use sha2::Digest;
        let digest = sha2::Sha256::digest(page::accent_style(look).as_bytes());
        let style = base64::engine::general_purpose::STANDARD.encode(digest);
        // Scripts only from this origin (the page's is /static/app.js),
        // the one inline style by its digest, no framing, forms and
        // fetches to this origin only. A logo may come from elsewhere.
        let csp = format!(
            "default-src 'none'; script-src 'self'; style-src 'self' 'sha256-{style}'; img-src 'self' https: data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
        );
        Self {
            csp: HeaderValue::from_str(&csp)
                .unwrap_or_else(|_| HeaderValue::from_static("default-src 'self'")),
        }
    }
}

/// Protective headers on every response, and no POST from another site:
/// a browser says where a request comes from (`Sec-Fetch-Site`, or
/// `Origin`), and a purchase or a human check made from another site's
/// page is refused. A client that sends neither (not a browser) is let
/// through.
pub(crate) async fn protect(
    State(protection): State<Arc<Protection>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let cross_site = request.method() == axum::http::Method::POST && {
        let headers = request.headers();
        let fetch_site = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok());
        let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
        let origin_host = headers
            .get(header::ORIGIN)
            .and_then(|v| v.to_str().ok())
            .map(|o| o.split_once("://").map_or(o, |(_, rest)| rest));
        match (fetch_site, origin_host) {
            (Some(site), _) => !matches!(site, "same-origin" | "none"),
            (None, Some(origin)) => Some(origin) != host,
            (None, None) => false,
        }
    };
    let mut response = if cross_site {
        (
            StatusCode::FORBIDDEN,
            "Refused: this form may only be sent from this site's own pages.",
        )
            .into_response()
    } else {
        next.run(request).await
    };
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_SECURITY_POLICY, protection.csp.clone());
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    // Pages show a place, an admission or a purchase: never from a cache.
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}
