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
    /// `challenge_origins`: where a human check's widget comes from
    /// ([`https_origin`]), allowed for scripts, frames and fetches only.
    pub(crate) fn new(look: &page::Look, challenge_origins: &[String]) -> Self {
        use base64::Engine;
        use sha2::Digest;
        let digest = sha2::Sha256::digest(page::accent_style(look).as_bytes());
        let style = base64::engine::general_purpose::STANDARD.encode(digest);
        // Scripts only from this origin (the page's is /static/app.js),
        // the one inline style by its digest, no framing, forms and
        // fetches to this origin only. A logo may come from elsewhere.
        let widget: String = challenge_origins.iter().map(|o| format!(" {o}")).collect();
        let frames = match widget.is_empty() {
            true => String::new(),
            false => format!(" frame-src{widget};"),
        };
        let csp = format!(
            "default-src 'none'; script-src 'self'{widget}; style-src 'self' 'sha256-{style}'; img-src 'self' https: data:; connect-src 'self'{widget};{frames} form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
        );
        Self {
            csp: HeaderValue::from_str(&csp)
                .unwrap_or_else(|_| HeaderValue::from_static("default-src 'self'")),
        }
    }
}

/// `https://host[:port]` and nothing else: an origin put into the pages'
/// Content-Security-Policy, so no path, wildcard, quote or separator can
/// widen it.
pub(crate) fn https_origin(value: &str) -> Result<String, String> {
    let host = value.strip_prefix("https://").unwrap_or("");
    let (name, port) = host.rsplit_once(':').unwrap_or((host, ""));
    let name_ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty() && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    let port_ok = !host.ends_with(':')
        && (port.is_empty()
            || (port.len() <= 5
                && port.bytes().all(|b| b.is_ascii_digit())
                && port.parse::<u16>().is_ok_and(|p| p > 0)));
    match name_ok && port_ok {
        true => Ok(value.to_ascii_lowercase()),
        false => Err(format!(
            "{value:?} is not an https origin: use https://host or https://host:port, without a path"
        )),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_https_origin_goes_into_the_policy() {
        for good in [
            "https://challenges.cloudflare.com",
            "https://hcaptcha.com:8443",
        ] {
            assert_eq!(https_origin(good).as_deref(), Ok(good));
        }
        for bad in [
            "http://challenges.cloudflare.com",
            "https://evil.example; script-src *",
            "https://*.example.com",
            "https://example.com/path",
            "https://example.com:0",
            "https://example.com:",
            "https://example.com:+443",
            "https://",
            "'unsafe-inline'",
        ] {
            assert!(https_origin(bad).is_err(), "{bad}");
        }
    }
}
