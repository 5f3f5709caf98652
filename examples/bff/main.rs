//! A reference BFF: the waiting page people see, in front of a stand-in
//! booking page, on waitroom.
//!
//! ```sh
//! cargo run --release                                   # waitroom, in one terminal
//! cargo run --release --example bff -- --waitroom http://127.0.0.1:50051 --queue sale
//! # then open http://127.0.0.1:3000/
//! ```
//!
//! - `/` sends a visitor to the waiting page (`/wait`), which puts them in
//!   line (`Enqueue`) under the id their signed visitor cookie holds.
//! - The page follows the place live over Server-Sent Events (`/events`,
//!   one `WatchRank` stream per open page), or by polling `/status`
//!   (`GetRank`) where that fails; without JavaScript it refreshes itself.
//! - Admitted, the page goes to `/admit`, which puts the admission token in
//!   an HttpOnly cookie (never in a URL) and sends the visitor to
//!   `/booking`. That page is served only with a valid admission, checked
//!   offline with the published keys; the stand-in purchase consumes the
//!   token online, once.
//!
//! Where a production BFF must do something differently, a comment at the
//! spot says so (search for "PRODUCTION").
//!
//! Layout: this file holds the settings, the wiring and what the handlers
//! share (the visitor's cookie, the receipt kept in it); `waiting.rs` the
//! waiting page, `events.rs` the live place (SSE and `/status`),
//! `booking.rs` the stand-in booking page, `human.rs` the check before
//! joining, `limits.rs` the per-address limits and trusted proxies,
//! `protect.rs` the headers and the cross-site check, `keys.rs` waitroom's
//! published keys, `visitor.rs` the signed cookies, `page.rs` the HTML,
//! CSS and script.

mod booking;
mod events;
mod human;
mod keys;
mod limits;
mod page;
mod protect;
mod visitor;
mod waiting;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use clap::Parser;
use serde_json::Value;
use tonic::transport::{Channel, Endpoint};
use tonic_types::StatusExt;
use waitroom::pb::queue_service_client::QueueServiceClient;
use waitroom::pb::{self};

use crate::booking::{admit, booking, purchase};
use crate::events::{events, status};
use crate::human::{HumanCheck, NoCheck, Pass, ProofOfWork, human_passed};
use crate::keys::Keys;
use crate::limits::{Limits, TrustedProxies};
use crate::page::Look;
use crate::protect::{Protection, protect};
use crate::visitor::{CookieKey, HUMAN_COOKIE, VISITOR_COOKIE, cookie, set_cookie};
use crate::waiting::wait;

#[derive(Parser)]
struct Args {
    /// waitroom's gRPC address.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    waitroom: String,
    /// Where waitroom publishes its keys; by default its HTTP port on the same host, 8080.
    #[arg(long)]
    jwks_url: Option<String>,
    /// The issuer tokens must name (waitroom's --token-issuer).
    #[arg(long, default_value = "waitroom")]
    issuer: String,
    /// The queue in front of the booking page.
    #[arg(long, default_value = "sale")]
    queue: String,
    /// Address to serve the pages on.
    #[arg(long, default_value = "127.0.0.1:3000")]
    listen: SocketAddr,
    /// Key (hex, 32 bytes or more) that signs visitor cookies; random when absent.
    #[arg(long, env = "BFF_COOKIE_KEY", hide_env_values = true)]
    cookie_key: Option<String>,
    /// Mark cookies Secure (set when the pages are served over TLS, directly or by a proxy in front).
    #[arg(long)]
    secure_cookies: bool,
    /// HTTP/2 connections to waitroom that carry every stream of this BFF: at least its open pages / waitroom's --max-streams-per-connection (20,000), so 4 carry 80,000.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// New visitors (a first visit of the waiting page) per client address per minute; a known visitor's refreshes are not counted.
    #[arg(long, default_value_t = 120)]
    joins_per_minute: u32,
    /// Proxies in front (CIDRs, comma-separated) whose Forwarded / X-Forwarded-For names the client: the rightmost address that is not one of them counts for the limits. Without it, the TCP peer counts and those headers are ignored.
    #[arg(long, value_delimiter = ',')]
    trusted_proxies: Vec<String>,
    /// Open event streams per client address.
    #[arg(long, default_value_t = 50)]
    streams_per_client: usize,
    /// The check before joining: `off`, or `pow` for the stand-in, a proof of work the page's script solves.
    #[arg(long, default_value = "off")]
    human_check: String,
    /// An origin the human check's widget loads from and talks to (a CAPTCHA provider's, e.g. https://challenges.cloudflare.com), allowed in the pages' Content-Security-Policy for scripts, frames and fetches; repeat or separate with commas.
    #[arg(long, value_delimiter = ',', value_parser = protect::https_origin)]
    challenge_origin: Vec<String>,
    /// Zero bits the proof of work asks for (each one doubles its cost).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=32))]
    pow_bits: u32,
    /// Title of the pages.
    #[arg(long, default_value = "Waiting room")]
    title: String,
    /// Accent colour of the pages: a CSS colour (#4f46e5, rgb(79 70 229), a colour name); anything else is refused at start.
    #[arg(long, default_value = "#4f46e5", value_parser = page::css_colour)]
    accent: String,
    /// URL of a logo shown in the header.
    #[arg(long)]
    logo: Option<String>,
    /// How often a page's event stream says it is alive (keeping proxies from cutting it, and telling the page its link works).
    #[arg(long, default_value = "15s", value_parser = at_least_a_second)]
    keepalive: Duration,
}

struct App {
    queue: String,
    clients: Vec<QueueServiceClient<Channel>>,
    next: AtomicUsize,
    keys: Arc<Keys>,
    cookie_key: CookieKey,
    secure: bool,
    limits: Arc<Limits>,
    proxies: TrustedProxies,
    human: Box<dyn HumanCheck>,
    /// Signs the pass a visitor gets from the human check.
    pass: Pass,
    look: Look,
}

impl App {
    /// Whether the visitor must pass the human check before joining: a
    /// check is on and they hold no pass issued to them that is still good.
    fn human_check_due(&self, visitor: &str, headers: &HeaderMap) -> bool {
        !self.human.is_off()
            && !cookie(headers, HUMAN_COOKIE, self.secure)
                .is_some_and(|pass| self.pass.valid(&pass, visitor, now_s()))
    }

    /// A client on one of the few connections, in turn.
    fn client(&self) -> QueueServiceClient<Channel> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        self.clients[n % self.clients.len()].clone()
    }

    fn page(&self, status: StatusCode, html: String) -> Response {
        (status, Html(html)).into_response()
    }

    fn message(
        &self,
        status: StatusCode,
        heading: &str,
        text: &str,
        refresh: Option<u32>,
    ) -> Response {
        self.page(status, page::message(&self.look, heading, text, refresh))
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let jwks_url = match &args.jwks_url {
        Some(url) => url.clone(),
        None => {
            let uri: axum::http::Uri = args.waitroom.parse()?;
            format!(
                "http://{}:8080/.well-known/jwks.json",
                uri.host().unwrap_or("127.0.0.1")
            )
        }
    };
    // Many streams on few connections, with the receive window
    // docs/operations.md recommends for thousands of streams on one.
    let endpoint = Endpoint::from_shared(args.waitroom.clone())?
        .initial_connection_window_size(Some(64 << 20))
        .initial_stream_window_size(Some(1 << 20))
        // A waitroom that stops answering (a stalled process, a cut that
        // sends no reset) is noticed within about fifteen seconds, so pages
        // say they are reconnecting instead of showing a stale place; a
        // busy one has ten seconds to answer a ping before its pages are
        // sent to reconnect.
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true)
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(10));
    let clients = (0..args.connections.max(1))
        .map(|_| QueueServiceClient::new(endpoint.connect_lazy()))
        .collect();
    let cookie_key = CookieKey::new(args.cookie_key.as_deref())?;
    let human: Box<dyn HumanCheck> = match args.human_check.as_str() {
        "off" => Box::new(NoCheck),
        "pow" => Box::new(ProofOfWork::new(cookie_key.bytes(), args.pow_bits)),
        other => anyhow::bail!("--human-check: off or pow, not {other:?}"),
    };
    let app = Arc::new(App {
        queue: args.queue.clone(),
        clients,
        next: AtomicUsize::new(0),
        keys: Keys::start(&jwks_url, &args.issuer),
        pass: Pass::new(cookie_key.bytes()),
        cookie_key,
        secure: args.secure_cookies,
        limits: Arc::new(Limits::new(args.joins_per_minute, args.streams_per_client)),
        proxies: TrustedProxies::parse(&args.trusted_proxies)?,
        human,
        look: Look {
            title: args.title.clone(),
            accent: args.accent.clone(),
            logo: args.logo.clone(),
            alive_ms: u64::try_from(args.keepalive.as_millis()).unwrap_or(u64::MAX),
        },
    });
    let protection = Arc::new(Protection::new(&app.look, &args.challenge_origin));
    let router = Router::new()
        .route("/", get(|| async { Redirect::to("/wait") }))
        .route("/wait", get(wait))
        .route("/events", get(events))
        .route("/status", get(status))
        .route("/admit", get(admit))
        .route("/booking", get(booking))
        .route("/booking/purchase", post(purchase))
        .route("/human", post(human_passed))
        .route("/readyz", get(ready))
        .route(
            "/static/app.js",
            get(|| async { static_file("text/javascript", page::JS) }),
        )
        .route(
            "/static/app.css",
            get(|| async { static_file("text/css", page::CSS) }),
        )
        .with_state(app)
        .layer(axum::middleware::from_fn_with_state(protection, protect));
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    println!(
        "bff: serving the waiting page of queue {:?} on http://{}/",
        args.queue,
        listener.local_addr()?
    );
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await?;
    Ok(())
}

/// Ready once waitroom's keys have arrived: before, the booking page cannot
/// check an admission (the waiting page works, and says so).
async fn ready(State(app): State<Arc<App>>) -> Response {
    match app.keys.ready() {
        true => (StatusCode::OK, "ready\n").into_response(),
        false => (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: waitroom's keys have not arrived yet\n",
        )
            .into_response(),
    }
}

/// The page shown while waitroom's keys have not arrived.
fn keys_pending(app: &App) -> Response {
    app.message(
        StatusCode::SERVICE_UNAVAILABLE,
        "Busy",
        "The waiting room is starting. This page tries again in a few seconds; you keep your place.",
        Some(5),
    )
}

/// A JSON answer.
fn json_response(status: StatusCode, value: &Value) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        value.to_string(),
    )
        .into_response()
}

fn static_file(kind: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        body,
    )
        .into_response()
}

/// A duration of a second or more (a keepalive of less would be a flood).
fn at_least_a_second(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text) {
        Ok(d) if d >= Duration::from_secs(1) => Ok(d),
        Ok(_) => Err(format!("{text:?} is under a second")),
        Err(e) => Err(e.to_string()),
    }
}

/// The visitor's id, and the cookie to set when it is new (no cookie, or
/// one this BFF did not sign: a tampered or foreign cookie never names
/// someone else's place).
fn visitor(app: &App, headers: &HeaderMap) -> (String, Option<String>) {
    if let Some(id) = known_visitor(app, headers) {
        return (id, None);
    }
    let id = visitor::new_visitor_id();
    let set = visitor_cookie(app, &id, "");
    (id, Some(set))
}

fn visitor_cookie(app: &App, id: &str, receipt: &str) -> String {
    set_cookie(
        VISITOR_COOKIE,
        &app.cookie_key.sign(id, receipt),
        "/",
        30 * 24 * 3600,
        app.secure,
    )
}

/// The visitor id of a genuine visitor cookie, if the request has one.
fn known_visitor(app: &App, headers: &HeaderMap) -> Option<String> {
    known_receipt(app, headers).map(|(id, _)| id)
}

/// The visitor id and the receipt of their last place (empty for none).
fn known_receipt(app: &App, headers: &HeaderMap) -> Option<(String, String)> {
    cookie(headers, VISITOR_COOKIE, app.secure).and_then(|v| app.cookie_key.open(&v))
}

/// The cookie that keeps the receipt of the place just shown, when it is
/// another than the one the visitor sent.
fn keep_receipt(app: &App, id: &str, sent: &str, place: &pb::Place) -> Option<String> {
    (place.receipt != sent).then(|| visitor_cookie(app, id, &place.receipt))
}

/// Refused for its receipt (lapsed, or signed with a key waitroom no longer
/// trusts for this visitor): the call is made again without it.
fn receipt_refused(status: &tonic::Status) -> bool {
    status.code() == tonic::Code::InvalidArgument
        && status
            .get_error_details()
            .bad_request()
            .is_some_and(|b| b.field_violations.iter().any(|v| v.field == "receipt"))
}

/// The visitor's place, as `GetRank` answers, with the receipt of their
/// last place (and again without it if it is refused).
async fn rank(
    app: &App,
    id: String,
    receipt: &str,
) -> Result<tonic::Response<pb::GetRankResponse>, tonic::Status> {
    let request = |receipt: &str| pb::GetRankRequest {
        queue_id: app.queue.clone(),
        user_id: id.clone(),
        receipt: receipt.to_owned(),
    };
    match app.client().get_rank(request(receipt)).await {
        Err(status) if !receipt.is_empty() && receipt_refused(&status) => {
            app.client().get_rank(request("")).await
        }
        answer => answer,
    }
}

fn with_cookie(mut response: Response, set: Option<String>) -> Response {
    if let Some(set) = set.and_then(|s| HeaderValue::from_str(&s).ok()) {
        response.headers_mut().append(header::SET_COOKIE, set);
    }
    response
}

fn with_retry_after(mut response: Response, retry_after_s: u64) -> Response {
    if let Ok(value) = HeaderValue::from_str(&retry_after_s.to_string()) {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

fn too_many(retry_after_s: u64, text: &str) -> Response {
    (
        StatusCode::TOO_MANY_REQUESTS,
        [(header::RETRY_AFTER, retry_after_s.to_string())],
        text.to_owned(),
    )
        .into_response()
}

/// The wall clock in seconds, as tokens and passes count it.
fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_keepalive_is_a_second_or_more() {
        assert_eq!(at_least_a_second("15s"), Ok(Duration::from_secs(15)));
        assert_eq!(at_least_a_second("1s"), Ok(Duration::from_secs(1)));
        assert!(at_least_a_second("0s").is_err());
        assert!(at_least_a_second("500ms").is_err());
        assert!(at_least_a_second("soon").is_err());
    }
}
