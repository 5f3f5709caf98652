//! `waitroom.v1.QueueService`: what frontends and booking services call.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::auth::Role;
use super::connection::stream_connection;
use super::convert::{self, Stamp, admission_out, named_out, place_out, queue_out, timestamp_out};
use super::validate::{
    closed_reason_in, max_count_in, queue_and_user, queue_id, request_id, token_in, user_ids_in,
};
use crate::domain::{
    AdmissionCheck, AdmissionStatus, Clock, Consume, Place, PlaceClaim, QueueConfig, QueueId,
    QueueMode, QueueUpdate, Refusal, RequestId, Restoration, UserId,
};
use crate::pb;
use crate::pb::queue_service_server::QueueService;
use crate::store::QueueStore;
use crate::telemetry::metrics::{ReceiptLabels, VerdictLabels, metrics};
use crate::tokens::{AdmissionClaims, Keyring, Opened, Verdict, Verifier, admission_named};
use crate::watch::{LineBounds, PlaceReceiver, WatchHub, WatchedStore};
use crate::{Error, Result};

/// How much longer than any verifier accepts a token its consumed id is
/// remembered: replicas whose clocks run ahead drop ids by their own clock.
const USED_MARGIN_MS: u64 = 60_000;

/// The queue service. Cheap to clone.
#[derive(Clone)]
pub struct QueueApi {
    store: Arc<WatchedStore>,
    keyring: Arc<Keyring>,
    verifier: Arc<Verifier>,
    clock: Arc<dyn Clock>,
    hub: Arc<WatchHub>,
    /// Most streams open on this instance.
    max_streams: usize,
}

impl QueueApi {
    pub fn new(
        store: Arc<WatchedStore>,
        keyring: Arc<Keyring>,
        verifier: Arc<Verifier>,
        clock: Arc<dyn Clock>,
        hub: Arc<WatchHub>,
        max_streams: usize,
    ) -> Self {
        Self {
            store,
            keyring,
            verifier,
            clock,
            hub,
            max_streams,
        }
    }

    async fn verify(
        &self,
        request: pb::VerifyAdmissionRequest,
    ) -> Result<pb::VerifyAdmissionResponse> {
        let queue = queue_id("queue_id", &request.queue_id)?;
        token_in(&request.token)?;
        let request_id = request_id(&request.request_id)?;
        let now = self.clock.now_ms();
        let check = self
            .verifier
            .verify(&request.token, queue.as_str(), convert::seconds(now));
        let mut verdict = check.verdict;
        if verdict == Verdict::Valid
            && let Some(claims) = &check.claims
        {
            verdict = self
                .still_held(&queue, claims, request.consume, request_id, now)
                .await?;
        }
        metrics()
            .token_verifications
            .get_or_create(&VerdictLabels {
                verdict: verdict_name(verdict),
            })
            .inc();
        let mut response = pb::VerifyAdmissionResponse {
            verdict: verdict_out(verdict) as i32,
            ..Default::default()
        };
        // Claims are reported only when the signature is genuine.
        if let Some(claims) = check.claims
            && verdict != Verdict::Invalid
        {
            response.user_id = claims.sub;
            response.expires_at = Some(timestamp_out(claims.exp * 1000));
            response.token_id = claims.jti;
        }
        Ok(response)
    }

    /// What the store says of a genuine, unexpired token's admission.
    async fn still_held(
        &self,
        queue: &QueueId,
        claims: &AdmissionClaims,
        consume: bool,
        request: Option<RequestId>,
        now_ms: u64,
    ) -> Result<Verdict> {
        let (Some((queue_epoch_ms, ticket, admitted_at_ms)), Ok(user)) = (
            admission_named(queue.as_str(), &claims.jti),
            UserId::parse(&claims.sub),
        ) else {
            // Signed by us, but naming no admission this store could hold.
            return Ok(Verdict::Revoked);
        };
        let consume = consume.then(|| Consume {
            remember_until_ms: (claims.exp.saturating_add(self.verifier.leeway_s()))
                .saturating_mul(1000)
                .saturating_add(USED_MARGIN_MS),
            request: request.unwrap_or_else(RequestId::generate),
        });
        let check = AdmissionCheck {
            user,
            token_id: claims.jti.clone(),
            queue_epoch_ms,
            ticket,
            admitted_at_ms,
            consume,
        };
        Ok(
            match self.store.check_admission(queue, &check, now_ms).await? {
                AdmissionStatus::Held => Verdict::Valid,
                AdmissionStatus::Used => Verdict::AlreadyUsed,
                // Within the verifier's leeway past the expiry, the store
                // has already let the admission go: it expired.
                AdmissionStatus::Revoked if now_ms >= claims.exp.saturating_mul(1000) => {
                    Verdict::Expired
                }
                AdmissionStatus::Revoked => Verdict::Revoked,
            },
        )
    }
}

fn verdict_name(verdict: Verdict) -> &'static str {
    match verdict {
        Verdict::Valid => "valid",
        Verdict::Expired => "expired",
        Verdict::Invalid => "invalid",
        Verdict::AlreadyUsed => "already_used",
        Verdict::WrongQueue => "wrong_queue",
        Verdict::Revoked => "revoked",
    }
}

fn verdict_out(verdict: Verdict) -> pb::Verdict {
    match verdict {
        Verdict::Valid => pb::Verdict::Valid,
        Verdict::Expired => pb::Verdict::Expired,
        Verdict::Invalid => pb::Verdict::Invalid,
        Verdict::AlreadyUsed => pb::Verdict::AlreadyUsed,
        Verdict::WrongQueue => pb::Verdict::WrongQueue,
        Verdict::Revoked => pb::Verdict::Revoked,
    }
}

impl QueueApi {
    /// The place's stamp for its receipt: now, and the line's bounds here.
    fn stamp(&self, queue: &QueueId) -> Stamp {
        Stamp {
            now_ms: self.clock.now_ms(),
            bounds: self.hub.line_bounds(queue).get(),
        }
    }

    /// The place a user holds, for a poll (`as_poller`) or a stream's
    /// first message: from this replica's copy when a receipt lets it
    /// answer, else from the store, else given back from the receipt.
    async fn held_place(
        &self,
        queue: &QueueId,
        user: &UserId,
        receipt: &str,
        as_poller: bool,
    ) -> Result<Place> {
        let claim = self.claim(queue, user, receipt)?;
        let now = self.clock.now_ms();
        let mut place = match &claim {
            Some(c) => self.answered_here(queue, user, c, as_poller, now).await,
            None => None,
        };
        if place.is_none() {
            place = match as_poller {
                true => self.store.place(queue, user, now).await?,
                false => self.store.first_place(queue, user, now).await?,
            };
        }
        if let (None, Some(claim)) = (&place, &claim) {
            place = self.restore(queue, user, claim).await?;
        }
        place.ok_or_else(|| Error::PlaceNotFound(queue.to_string()))
    }

    /// The receipt a call brought, checked: `None` when it brought none,
    /// or one of a key this instance does not hold (set aside).
    fn claim(&self, queue: &QueueId, user: &UserId, receipt: &str) -> Result<Option<PlaceClaim>> {
        if receipt.is_empty() {
            return Ok(None);
        }
        match self.keyring.receipts().open(queue, user, receipt) {
            Ok(Opened::Claim(claim)) => Ok(Some(claim)),
            Ok(Opened::UnknownKey) => {
                count_receipt("unknown_key");
                Ok(None)
            }
            Err(reason) => {
                count_receipt("refused");
                Err(Error::invalid("receipt", reason))
            }
        }
    }

    /// Brings a receipt back to the store for a user it may hold no place
    /// for: the place given back, or `None` (the user holds one, or the
    /// store decided this place itself). A lapsed receipt is refused.
    async fn restore(
        &self,
        queue: &QueueId,
        user: &UserId,
        claim: &PlaceClaim,
    ) -> Result<Option<Place>> {
        let outcome = self
            .store
            .restore(queue, user, claim, self.clock.now_ms())
            .await?;
        match outcome {
            Restoration::Restored(place) => {
                count_receipt("restored");
                tracing::info!(queue = %queue, ticket = place.ticket, "a place was given back from its receipt");
                Ok(Some(place))
            }
            Restoration::Holds | Restoration::Refused(Refusal::NotGiven) => Ok(None),
            Restoration::Refused(Refusal::Lapsed) => {
                count_receipt("lapsed");
                Err(Error::invalid(
                    "receipt",
                    "has lapsed: it was issued longer ago than the queue keeps a silent user's place; send the call without it",
                ))
            }
        }
    }
}

impl QueueApi {
    /// The place a receipt's holder has in this replica's copy, counted.
    async fn answered_here(
        &self,
        queue: &QueueId,
        user: &UserId,
        claim: &PlaceClaim,
        as_poller: bool,
        now_ms: u64,
    ) -> Option<Place> {
        let place = self
            .hub
            .receipt_place(queue, user, claim, as_poller, now_ms)
            .await;
        count_receipt(if place.is_some() {
            "answered_here"
        } else {
            "looked_up"
        });
        place
    }
}

fn count_receipt(outcome: &'static str) {
    metrics()
        .receipts
        .get_or_create(&ReceiptLabels { outcome })
        .inc();
}

/// A `WatchRank` response stream: the hub's places, as messages. A plain
/// type rather than a boxed adapter: an open stream lives long, and there
/// are many.
pub struct WatchStream {
    updates: PlaceReceiver,
    queue: QueueId,
    keyring: Arc<Keyring>,
    clock: Arc<dyn Clock>,
    bounds: Arc<LineBounds>,
}

impl Stream for WatchStream {
    type Item = Result<pb::WatchRankResponse, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        Pin::new(&mut this.updates).poll_next(cx).map(|update| {
            update.map(|update| {
                let stamp = Stamp {
                    now_ms: this.clock.now_ms(),
                    bounds: this.bounds.get(),
                };
                let place = place_out(
                    &this.keyring,
                    &this.queue,
                    this.updates.user(),
                    &update?,
                    stamp,
                )?;
                Ok(pb::WatchRankResponse { place: Some(place) })
            })
        })
    }
}

#[tonic::async_trait]
impl QueueService for QueueApi {
    async fn enqueue(
        &self,
        request: Request<pb::EnqueueRequest>,
    ) -> Result<Response<pb::EnqueueResponse>, Status> {
        let request = request.into_inner();
        let (queue, user) = queue_and_user(&request.queue_id, &request.user_id)?;
        let claim = self.claim(&queue, &user, &request.receipt)?;
        let now = self.clock.now_ms();
        // A receipt whose ticket this instance sees in line needs no
        // store call of its own: the enqueue answers the place held.
        let held = claim.is_some_and(|c| self.hub.has_in_line(&queue, &c));
        let restored = match claim {
            Some(claim) if !held => self.restore(&queue, &user, &claim).await?,
            _ => None,
        };
        let place = match restored {
            Some(place) => place,
            None => self.store.enqueue(&queue, &user, now).await?,
        };
        let place = place_out(&self.keyring, &queue, &user, &place, self.stamp(&queue))?;
        Ok(Response::new(pb::EnqueueResponse { place: Some(place) }))
    }

    async fn get_rank(
        &self,
        request: Request<pb::GetRankRequest>,
    ) -> Result<Response<pb::GetRankResponse>, Status> {
        let request = request.into_inner();
        let (queue, user) = queue_and_user(&request.queue_id, &request.user_id)?;
        let place = self
            .held_place(&queue, &user, &request.receipt, true)
            .await?;
        let place = place_out(&self.keyring, &queue, &user, &place, self.stamp(&queue))?;
        Ok(Response::new(pb::GetRankResponse { place: Some(place) }))
    }

    type WatchRankStream = WatchStream;

    async fn watch_rank(
        &self,
        request: Request<pb::WatchRankRequest>,
    ) -> Result<Response<Self::WatchRankStream>, Status> {
        let connection = stream_connection(&request);
        let request = request.into_inner();
        let (queue, user) = queue_and_user(&request.queue_id, &request.user_id)?;
        let permit = self.hub.reserve_stream(self.max_streams).ok_or_else(|| {
            Error::ResourceExhausted(format!(
                "this instance holds its maximum of {} open streams; retry on a new connection (another replica may have room)",
                self.max_streams
            ))
        })?;
        let first = self
            .held_place(&queue, &user, &request.receipt, false)
            .await?;
        let updates = self
            .hub
            .watch(permit, queue.clone(), user, first, connection);
        // Taken once the stream follows the queue: each message reads it.
        let bounds = self.hub.line_bounds(&queue);
        Ok(Response::new(WatchStream {
            updates,
            queue,
            keyring: Arc::clone(&self.keyring),
            clock: Arc::clone(&self.clock),
            bounds,
        }))
    }

    async fn leave(
        &self,
        request: Request<pb::LeaveRequest>,
    ) -> Result<Response<pb::LeaveResponse>, Status> {
        let request = request.into_inner();
        let (queue, user) = queue_and_user(&request.queue_id, &request.user_id)?;
        let left = self.store.leave(&queue, &user, self.clock.now_ms()).await?;
        Ok(Response::new(pb::LeaveResponse { left }))
    }

    async fn admit_batch(
        &self,
        request: Request<pb::AdmitBatchRequest>,
    ) -> Result<Response<pb::AdmitBatchResponse>, Status> {
        let request = request.into_inner();
        let queue = queue_id("queue_id", &request.queue_id)?;
        max_count_in(request.max_count)?;
        // Without the caller's id, one of our own: a Redis client that sends
        // the script again after a dropped connection then gets the first
        // run's result instead of admitting a second batch.
        let request_id = request_id(&request.request_id)?.unwrap_or_else(RequestId::generate);
        let admitted = self
            .store
            .admit(
                &queue,
                request.max_count,
                Some(&request_id),
                self.clock.now_ms(),
            )
            .await?;
        let admitted = admitted
            .iter()
            .map(|a| {
                Ok(pb::AdmittedUser {
                    user_id: a.user.to_string(),
                    admission: Some(admission_out(&self.keyring, &queue, &a.user, &a.admission)?),
                    ticket: a.admission.ticket,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Response::new(pb::AdmitBatchResponse { admitted }))
    }

    async fn admit_users(
        &self,
        request: Request<pb::AdmitUsersRequest>,
    ) -> Result<Response<pb::AdmitUsersResponse>, Status> {
        // No role: API keys are off, and every caller may do everything.
        let role = request.extensions().get::<Role>().copied();
        let request = request.into_inner();
        let queue = queue_id("queue_id", &request.queue_id)?;
        let users = user_ids_in(&request.user_ids)?;
        let request_id = request_id(&request.request_id)?.unwrap_or_else(RequestId::generate);
        if request.override_capacity && role.is_some_and(|r| r != Role::Operator) {
            return Err(Error::PermissionDenied(
                "override_capacity is for the operator role; without it, admissions stay within max_active".into(),
            )
            .into());
        }
        let results = self
            .store
            .admit_users(
                &queue,
                &users,
                &request_id,
                request.override_capacity,
                self.clock.now_ms(),
            )
            .await?;
        let results = users
            .iter()
            .zip(&results)
            .map(|(user, result)| named_out(&self.keyring, &queue, user, result))
            .collect::<Result<Vec<_>>>()?;
        Ok(Response::new(pb::AdmitUsersResponse { results }))
    }

    async fn close_queue(
        &self,
        request: Request<pb::CloseQueueRequest>,
    ) -> Result<Response<pb::CloseQueueResponse>, Status> {
        let request = request.into_inner();
        let queue = queue_id("queue_id", &request.queue_id)?;
        let reason = closed_reason_in("reason", &request.reason)?
            .unwrap_or_else(|| QueueConfig::SOLD_OUT.into());
        let update = QueueUpdate {
            mode: Some(QueueMode::Closed),
            closed_reason: Some(Some(reason)),
            ..QueueUpdate::default()
        };
        let config = self
            .store
            .update_queue(&queue, &update, self.clock.now_ms())
            .await?;
        Ok(Response::new(pb::CloseQueueResponse {
            queue: Some(queue_out(&config)),
        }))
    }

    async fn verify_admission(
        &self,
        request: Request<pb::VerifyAdmissionRequest>,
    ) -> Result<Response<pb::VerifyAdmissionResponse>, Status> {
        Ok(Response::new(self.verify(request.into_inner()).await?))
    }

    async fn complete_admission(
        &self,
        request: Request<pb::CompleteAdmissionRequest>,
    ) -> Result<Response<pb::CompleteAdmissionResponse>, Status> {
        let request = request.into_inner();
        let (queue, user) = queue_and_user(&request.queue_id, &request.user_id)?;
        let completed = self
            .store
            .complete(&queue, &user, self.clock.now_ms())
            .await?;
        Ok(Response::new(pb::CompleteAdmissionResponse { completed }))
    }

    async fn get_signing_keys(
        &self,
        _request: Request<pb::GetSigningKeysRequest>,
    ) -> Result<Response<pb::GetSigningKeysResponse>, Status> {
        Ok(Response::new(pb::GetSigningKeysResponse {
            jwks_json: self.keyring.jwks_json().to_owned(),
        }))
    }
}
