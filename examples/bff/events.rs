//! The place live: one `WatchRank` stream per open page as Server-Sent
//! Events, and `/status` for pages that poll.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tokio_stream::Stream;
use tonic_types::StatusExt;
use waitroom::pb;

use crate::{
    App, json_response, keep_receipt, known_receipt, limits, rank, receipt_refused, too_many,
    with_cookie,
};

use crate::waiting::view;

/// Live updates: one `WatchRank` stream per open page, as Server-Sent
/// Events. A stream waitroom ends with UNAVAILABLE (it moved the stream to
/// another replica, or is stopping) is opened again after the delay it
/// advises, without the browser noticing. When the browser goes away the
/// response is dropped, and with it the gRPC stream.
pub(crate) async fn events(
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
    let alive = Duration::from_millis(app.look.alive_ms.max(1));
    let stream = place_events(app, id, receipt, guard);
    Sse::new(stream)
        // An event every --keepalive, so proxies do not cut an idle stream
        // and the page knows its link works.
        .keep_alive(
            KeepAlive::new()
                .interval(alive)
                .event(Event::default().event("alive").data("{}")),
        )
        .into_response()
}

/// The page's stream keeps the receipt of the last place it sent, and
/// opens the next `WatchRank` with it.
pub(crate) fn place_events(
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
                | tonic::Code::DeadlineExceeded
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
pub(crate) fn async_stream<F, Fut>(task: F) -> impl Stream<Item = Result<Event, Infallible>>
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
pub(crate) async fn status(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
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
