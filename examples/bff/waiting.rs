//! The waiting page: joining the line (or finding the place held) and
//! showing it, and the JSON a place is shown from.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use serde_json::{Value, json};
use tonic_types::StatusExt;
use waitroom::pb;
use waitroom::pb::{PlaceState, QueueMode};

use crate::App;
use crate::human::Visit;
use crate::{
    keep_receipt, known_receipt, page, receipt_refused, visitor, with_cookie, with_retry_after,
};

/// What the page shows of a place: the JSON of events and `/status`.
pub(crate) fn view(place: &pb::Place) -> Value {
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
pub(crate) async fn wait(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let (id, mut set) = visitor(&app, &headers);
    let sent = known_receipt(&app, &headers)
        .map(|(_, r)| r)
        .unwrap_or_default();
    // Only a new visitor spends a join, before any check: a known visitor's
    // refreshes (and the busy page's own) keep their place without
    // counting, and one who passed the check comes back known, so a
    // script's visitors are each counted once, challenged or not.
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
        Err(status) => refusal(&app, &status, !sent.is_empty()),
    };
    with_cookie(response, set)
}

/// A page for a refused join, by the reason waitroom gave; `holds_place`
/// when the visitor was shown a place before (a newcomer has none to keep).
pub(crate) fn refusal(app: &App, status: &tonic::Status, holds_place: bool) -> Response {
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
            match holds_place {
                true => "The waiting room is busy. This page tries again in a few seconds; you keep your place.",
                false => "The waiting room is busy. This page tries again in a few seconds and puts you in line as soon as it can.",
            },
            Some(5),
        ),
    }
}
