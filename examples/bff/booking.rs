//! The stand-in booking page: the admission taken into a cookie, checked
//! offline with the published keys, and consumed online once by the
//! purchase.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use waitroom::pb;
use waitroom::pb::{PlaceState, Verdict as PbVerdict};
use waitroom::tokens::Verdict;

use crate::visitor::{ADMISSION_COOKIE, cookie, set_cookie};
use crate::with_cookie;
use crate::{App, keys_pending, known_visitor, now_s, page, rank, visitor};

/// Admitted: the token goes into an HttpOnly cookie for `/booking`.
pub(crate) async fn admit(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
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

/// The visitor's admission, checked offline: genuine, unexpired, of this
/// queue, and this visitor's.
pub(crate) async fn admission(
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

pub(crate) async fn booking(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
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
pub(crate) async fn used(app: &App, token: &str) -> bool {
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
pub(crate) async fn purchase(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    form: String,
) -> Response {
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
