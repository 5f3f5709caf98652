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

mod human;
mod keys;
mod limits;
mod page;
mod visitor;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use clap::Parser;
use serde_json::{Value, json};
use tokio_stream::Stream;
use tonic::transport::{Channel, Endpoint};
use tonic_types::StatusExt;
use waitroom::pb::queue_service_client::QueueServiceClient;
use waitroom::pb::{self, PlaceState, QueueMode, Verdict as PbVerdict};
use waitroom::tokens::Verdict;

use crate::human::{HumanCheck, NoCheck, Pass, ProofOfWork, Visit};
use crate::keys::Keys;
use crate::limits::{Limits, TrustedProxies};
use crate::page::Look;
use crate::visitor::{
    ADMISSION_COOKIE, CookieKey, HUMAN_COOKIE, VISITOR_COOKIE, cookie, set_cookie,
};

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
                .is_some_and(|pass| self.pass.valid(&pass, visitor, human::now_s()))
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
        .http2_keep_alive_interval(Duration::from_secs(30))
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
        },
    });
    let protection = Arc::new(Protection::new(&app.look));
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

/// What every response carries, and the check every POST passes.
struct Protection {
    csp: HeaderValue,
}

impl Protection {
    fn new(look: &page::Look) -> Self {
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
async fn protect(
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

/// What the page shows of a place: the JSON of events and `/status`.
fn view(place: &pb::Place) -> Value {
    let state = match place.state() {
        PlaceState::Waiting => "waiting",
        PlaceState::Admitted => "admitted",
        PlaceState::Closed => "closed",
        PlaceState::PreQueue => "pre_queue",
        PlaceState::Unspecified => "unknown",
    };
    let mode = match place.queue_mode() {
        QueueMode::Paused => "paused",
        QueueMode::Closed => "closed",
        QueueMode::PassThrough => "pass_through",
        _ => "queueing",
    };
    let seconds = |d: &Option<prost_types::Duration>| d.as_ref().map(|d| d.seconds.max(0) as u64);
    json!({
        "state": state,
        "ticket": place.ticket,
        "position": place.position,
        "ahead": place.position.saturating_sub(1),
        "waiting": place.waiting_count,
        "wait_s": seconds(&place.estimated_wait),
        "wait_low_s": seconds(&place.estimated_wait_low),
        "wait_high_s": seconds(&place.estimated_wait_high),
        "mode": mode,
        "opens_in_s": seconds(&place.opens_in).unwrap_or(0),
        "notice": place.notice,
        "closed_reason": place.closed_reason,
    })
}

/// The waiting page: joins the line (or finds the place held) and shows it.
async fn wait(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let (id, mut set) = visitor(&app, &headers);
    let sent = known_receipt(&app, &headers)
        .map(|(_, r)| r)
        .unwrap_or_default();
    if app.human_check_due(&id, &headers) {
        let visit = Visit {
            visitor: &id,
            address: app.proxies.client(peer.ip(), &headers),
            headers: &headers,
        };
        let fields = app.human.challenge(&visit);
        let page = page::challenge(&app.look, &fields, false);
        return with_cookie(app.page(StatusCode::OK, page), set);
    }
    // Only a new visitor spends a join: a known visitor's refreshes (and
    // the busy page's own) keep their place without counting.
    if set.is_some()
        && let Err(retry) = app.limits.join(app.proxies.client(peer.ip(), &headers))
    {
        let page = app.message(
            StatusCode::TOO_MANY_REQUESTS,
            "Busy",
            &format!("Many people are arriving from your network at once. This page tries again in {retry} seconds."),
            Some(u32::try_from(retry).unwrap_or(u32::MAX)),
        );
        return with_retry_after(page, retry);
    }
    let request = |receipt: &str| pb::EnqueueRequest {
        queue_id: app.queue.clone(),
        user_id: id.clone(),
        receipt: receipt.to_owned(),
    };
    let answer = match app.client().enqueue(request(&sent)).await {
        Err(status) if !sent.is_empty() && receipt_refused(&status) => {
            app.client().enqueue(request("")).await
        }
        answer => answer,
    };
    let response = match answer {
        Ok(answer) => match answer.into_inner().place {
            Some(place) if place.state() == PlaceState::Admitted => {
                Redirect::to("/admit").into_response()
            }
            Some(place) => {
                set = keep_receipt(&app, &id, &sent, &place).or(set);
                app.page(StatusCode::OK, page::waiting(&app.look, &view(&place)))
            }
            None => app.message(
                StatusCode::BAD_GATEWAY,
                "Something went wrong",
                "Please refresh.",
                Some(5),
            ),
        },
        Err(status) => refusal(&app, &status),
    };
    with_cookie(response, set)
}

/// A page for a refused join, by the reason waitroom gave.
fn refusal(app: &App, status: &tonic::Status) -> Response {
    let reason = status
        .get_error_details()
        .error_info()
        .map(|i| i.reason.clone())
        .unwrap_or_default();
    match reason.as_str() {
        "QUEUE_CLOSED" => app.message(
            StatusCode::OK,
            "Sold out",
            "This sale has ended. Thank you for your interest.",
            None,
        ),
        "QUEUE_NOT_OPEN" => app.message(
            StatusCode::OK,
            "Not open yet",
            "The waiting room for this sale is not open yet. This page tries again every 30 seconds.",
            Some(30),
        ),
        _ => app.message(
            StatusCode::SERVICE_UNAVAILABLE,
            "Busy",
            "The waiting room is busy. This page tries again in a few seconds; you keep your place.",
            Some(5),
        ),
    }
}

/// Live updates: one `WatchRank` stream per open page, as Server-Sent
/// Events. A stream waitroom ends with UNAVAILABLE (it moved the stream to
/// another replica, or is stopping) is opened again after the delay it
/// advises, without the browser noticing. When the browser goes away the
/// response is dropped, and with it the gRPC stream.
async fn events(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let Some((id, receipt)) = known_receipt(&app, &headers) else {
        return (StatusCode::UNAUTHORIZED, "no visitor").into_response();
    };
    let Some(guard) = app
        .limits
        .open_stream(app.proxies.client(peer.ip(), &headers))
    else {
        return too_many(
            10,
            "Too many open pages from your address; you keep your place.",
        );
    };
    let stream = place_events(app, id, receipt, guard);
    Sse::new(stream)
        // A comment every 15 s, so proxies do not cut an idle stream.
        .keep_alive(
            KeepAlive::new()
                .interval(Duration::from_secs(15))
                .text("keep-alive"),
        )
        .into_response()
}

/// The page's stream keeps the receipt of the last place it sent, and
/// opens the next `WatchRank` with it.
fn place_events(
    app: Arc<App>,
    id: String,
    mut receipt: String,
    guard: limits::StreamGuard,
) -> impl Stream<Item = Result<Event, Infallible>> {
    async_stream(move |tx| async move {
        let _guard = guard;
        let mut sent = 0u64;
        let mut said_reconnecting = false;
        loop {
            let opened = app
                .client()
                .watch_rank(pb::WatchRankRequest {
                    queue_id: app.queue.clone(),
                    user_id: id.clone(),
                    receipt: receipt.clone(),
                })
                .await;
            let end = match opened {
                Ok(response) => {
                    let mut stream = response.into_inner();
                    loop {
                        match stream.message().await {
                            Ok(Some(message)) => {
                                let Some(place) = message.place else { continue };
                                receipt.clone_from(&place.receipt);
                                said_reconnecting = false;
                                sent += 1;
                                let event = Event::default()
                                    .event("place")
                                    .id(format!("{}-{sent}", place.ticket))
                                    .retry(Duration::from_secs(2))
                                    .data(view(&place).to_string());
                                if tx.send(event).await.is_err() {
                                    return;
                                }
                            }
                            // Admitted or closed: the last place was sent.
                            Ok(None) => return,
                            Err(status) => break status,
                        }
                    }
                }
                Err(status) => status,
            };
            if receipt_refused(&end) {
                receipt.clear();
                continue;
            }
            match end.code() {
                tonic::Code::NotFound => {
                    let gone = Event::default().event("place").data(r#"{"state":"gone"}"#);
                    let _ = tx.send(gone).await;
                    return;
                }
                tonic::Code::Unavailable
                | tonic::Code::ResourceExhausted
                | tonic::Code::Cancelled
                | tonic::Code::Internal => {
                    // The page says it is reconnecting until the next place.
                    if !said_reconnecting {
                        let event = Event::default().event("reconnecting").data("{}");
                        if tx.send(event).await.is_err() {
                            return;
                        }
                        said_reconnecting = true;
                    }
                    let delay = end
                        .get_error_details()
                        .retry_info()
                        .and_then(|r| r.retry_delay)
                        .unwrap_or(Duration::from_secs(1));
                    tokio::time::sleep(delay).await;
                    if tx.is_closed() {
                        return;
                    }
                }
                _ => return,
            }
        }
    })
}

/// A stream fed by a task, ended when the task ends; the task sees the
/// stream's end (the browser gone) as a closed channel.
fn async_stream<F, Fut>(task: F) -> impl Stream<Item = Result<Event, Infallible>>
where
    F: FnOnce(tokio::sync::mpsc::Sender<Event>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let handle = tokio::spawn(task(tx));
    let abort = handle.abort_handle();
    tokio_stream::StreamExt::map(
        DropGuard {
            inner: tokio_stream::wrappers::ReceiverStream::new(rx),
            abort,
        },
        Ok,
    )
}

pin_project_lite::pin_project! {
    /// Aborts the feeding task (and drops its gRPC stream) when the
    /// response is dropped.
    struct DropGuard<S> {
        #[pin]
        inner: S,
        abort: tokio::task::AbortHandle,
    }
    impl<S> PinnedDrop for DropGuard<S> {
        fn drop(this: Pin<&mut Self>) {
            this.abort.abort();
        }
    }
}

impl<S: Stream> Stream for DropGuard<S> {
    type Item = S::Item;
    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.project().inner.poll_next(cx)
    }
}

/// The place as JSON, for pages that poll; with the interval to poll at.
async fn status(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    let Some((id, sent)) = known_receipt(&app, &headers) else {
        return json_response(StatusCode::UNAUTHORIZED, &json!({"state": "gone"}));
    };
    match rank(&app, id.clone(), &sent).await {
        Ok(answer) => {
            let Some(place) = answer.into_inner().place else {
                return StatusCode::BAD_GATEWAY.into_response();
            };
            let mut view = view(&place);
            // Near the front, more often: a poll is also the sign of life
            // that keeps the place.
            view["poll_ms"] = json!(if place.position <= 50 { 1000 } else { 3000 });
            with_cookie(
                json_response(StatusCode::OK, &view),
                keep_receipt(&app, &id, &sent, &place),
            )
        }
        Err(status) if status.code() == tonic::Code::NotFound => {
            json_response(StatusCode::OK, &json!({"state": "gone"}))
        }
        Err(_) => json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"state": "waiting", "retry": true, "poll_ms": 3000}),
        ),
    }
}

/// Admitted: the token goes into an HttpOnly cookie for `/booking`.
async fn admit(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    let Some(id) = known_visitor(&app, &headers) else {
        return Redirect::to("/wait").into_response();
    };
    let admission = rank(&app, id, "")
        .await
        .ok()
        .and_then(|a| a.into_inner().place)
        .filter(|p| p.state() == PlaceState::Admitted)
        .and_then(|p| p.admission);
    let Some(admission) = admission else {
        return Redirect::to("/wait").into_response();
    };
    let expires = admission
        .expires_at
        .map(|t| t.seconds.max(0) as u64)
        .unwrap_or(0);
    let max_age = expires.saturating_sub(now_s()).max(1);
    with_cookie(
        Redirect::to("/booking").into_response(),
        Some(set_cookie(
            ADMISSION_COOKIE,
            &admission.token,
            "/booking",
            max_age,
            app.secure,
        )),
    )
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The visitor's admission, checked offline: genuine, unexpired, of this
/// queue, and this visitor's.
async fn admission(
    app: &App,
    headers: &HeaderMap,
) -> Option<(String, waitroom::tokens::AdmissionClaims)> {
    let visitor = known_visitor(app, headers)?;
    let token = cookie(headers, ADMISSION_COOKIE, app.secure)?;
    let check = app.keys.verify(&token, &app.queue, now_s()).await?;
    match (check.verdict, check.claims) {
        (Verdict::Valid, Some(claims)) if claims.sub == visitor => Some((token, claims)),
        _ => None,
    }
}

async fn booking(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    if !app.keys.ready() {
        return keys_pending(&app);
    }
    match admission(&app, &headers).await {
        // Already used for the purchase (a visitor back on the page, or
        // the token shown again): the purchase is done, it is not their
        // turn again.
        Some((token, _)) if used(&app, &token).await => app.message(
            StatusCode::OK,
            "Purchase complete",
            "This admission has been used: your purchase is done. Thank you!",
            None,
        ),
        Some((_, claims)) => app.page(
            StatusCode::OK,
            // The form carries an id of this purchase attempt: sent twice
            // (a double click, a retry) it is one purchase; a token shown
            // again in a new attempt is refused as used.
            page::booking(
                &app.look,
                &claims.sub,
                claims.exp.saturating_sub(now_s()),
                &visitor::new_visitor_id().replace("v-", ""),
            ),
        ),
        None => app.message(
            StatusCode::FORBIDDEN,
            "No admission",
            "The booking page needs an admission from the waiting room. Join the line at the start page.",
            None,
        ),
    }
}

/// Whether waitroom says the admission was used: checked online, without
/// consuming, it is revoked once completed, which here only the purchase
/// does (a booking service whose visitors can also give up an admission
/// tells the two apart by its own orders). Not when waitroom cannot say.
async fn used(app: &App, token: &str) -> bool {
    let verdict = app
        .client()
        .verify_admission(pb::VerifyAdmissionRequest {
            queue_id: app.queue.clone(),
            token: token.to_owned(),
            consume: false,
            request_id: String::new(),
        })
        .await
        .map(|v| v.into_inner().verdict());
    matches!(verdict, Ok(PbVerdict::AlreadyUsed | PbVerdict::Revoked))
}

/// The stand-in purchase: the token is consumed online, once; the same
/// attempt sent again is answered as the first (its id is the request id).
async fn purchase(State(app): State<Arc<App>>, headers: HeaderMap, form: String) -> Response {
    if !app.keys.ready() {
        return keys_pending(&app);
    }
    let Some((token, claims)) = admission(&app, &headers).await else {
        return app.message(
            StatusCode::FORBIDDEN,
            "No admission",
            "There is no admission to buy with.",
            None,
        );
    };
    let attempt = form
        .split('&')
        .find_map(|pair| pair.strip_prefix("attempt="))
        .map(str::to_owned)
        .unwrap_or_else(|| visitor::new_visitor_id().replace("v-", ""));
    let request_id: String = format!("bff-{attempt}")
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-'))
        .take(128)
        .collect();
    let mut client = app.client();
    let verdict = client
        .verify_admission(pb::VerifyAdmissionRequest {
            queue_id: app.queue.clone(),
            token,
            consume: true,
            request_id,
        })
        .await
        .map(|v| v.into_inner().verdict());
    let clear = set_cookie(ADMISSION_COOKIE, "", "/booking", 0, app.secure);
    match verdict {
        Ok(PbVerdict::Valid) => {
            // The slot is free for the next in line at once.
            // PRODUCTION: record the order first, keyed by the token's jti
            // (a unique constraint), then complete the admission.
            let _ = client
                .complete_admission(pb::CompleteAdmissionRequest {
                    queue_id: app.queue.clone(),
                    user_id: claims.sub.clone(),
                })
                .await;
            with_cookie(
                app.message(StatusCode::OK, "Purchase complete", "Thank you! Your order is confirmed.", None),
                Some(clear),
            )
        }
        Ok(_) => with_cookie(
            app.message(
                StatusCode::CONFLICT,
                "Admission already used",
                "This admission has already been used for a purchase.",
                None,
            ),
            Some(clear),
        ),
        Err(_) => app.message(
            StatusCode::SERVICE_UNAVAILABLE,
            "Try again",
            "The purchase could not be confirmed just now; your admission is still yours. Try again.",
            None,
        ),
    }
}

/// The check's form posted: a visitor it accepts gets a pass for their
/// visitor id; one it refuses sees a fresh challenge. Without a visitor
/// cookie there is no one to give a pass to: back to the waiting page,
/// which gives one.
async fn human_passed(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let Some(id) = known_visitor(&app, &headers) else {
        return Redirect::to("/wait").into_response();
    };
    let form: Vec<(String, String)> = form_urlencoded::parse(body.as_bytes())
        .into_owned()
        .collect();
    let visit = Visit {
        visitor: &id,
        address: app.proxies.client(peer.ip(), &headers),
        headers: &headers,
    };
    if !app.human.verify(&visit, &form).await {
        let fields = app.human.challenge(&visit);
        let page = page::challenge(&app.look, &fields, true);
        return app.page(StatusCode::FORBIDDEN, page);
    }
    let pass = app.pass.issue(&id, human::now_s());
    with_cookie(
        Redirect::to("/wait").into_response(),
        Some(set_cookie(
            HUMAN_COOKIE,
            &pass,
            "/",
            human::PASS_LIFETIME.as_secs(),
            app.secure,
        )),
    )
}
