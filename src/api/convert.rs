//! From domain types to protobuf messages: what the API answers. (Requests
//! come in through `validate`.)

use std::time::{Duration, UNIX_EPOCH};

use crate::domain::per_second_over_window;
use crate::domain::{
    Admission, EstimateBasis, NamedAdmission, Place, PlaceClaim, PlaceState, QueueConfig, QueueId,
    QueueMode, QueueStats, UserId,
};
use crate::pb;
use crate::tokens::{AdmissionClaims, Keyring};
use crate::{Error, Result};

pub(super) fn duration_out(value: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: value.as_secs() as i64,
        nanos: value.subsec_nanos() as i32,
    }
}

pub(super) fn timestamp_out(ms: u64) -> prost_types::Timestamp {
    prost_types::Timestamp::from(UNIX_EPOCH + Duration::from_millis(ms))
}

pub(super) fn mode_out(mode: QueueMode) -> pb::QueueMode {
    match mode {
        QueueMode::Queueing => pb::QueueMode::Queueing,
        QueueMode::PassThrough => pb::QueueMode::PassThrough,
        QueueMode::Paused => pb::QueueMode::Paused,
        QueueMode::Closed => pb::QueueMode::Closed,
    }
}

fn text_out(value: &Option<std::sync::Arc<str>>) -> String {
    value.as_deref().unwrap_or_default().to_owned()
}

pub(super) fn queue_out(config: &QueueConfig) -> pb::Queue {
    pb::Queue {
        id: config.id.to_string(),
        mode: mode_out(config.mode) as i32,
        max_active: config.max_active,
        admit_per_second: config.admit_per_second,
        admission_ttl: Some(duration_out(config.admission_ttl)),
        heartbeat_timeout: Some(duration_out(config.heartbeat_timeout)),
        create_time: Some(timestamp_out(config.created_at_ms)),
        opens_at: config.opens_at_ms.map(timestamp_out),
        prequeue_window: Some(duration_out(config.prequeue_window)),
        draw_seed: config.draw_seed.clone().unwrap_or_default(),
        draw_complete: config.draw_complete,
        notice: text_out(&config.notice),
        closed_reason: text_out(&config.closed_reason),
        shards: config.shards,
    }
}

pub(super) fn stats_out(queue: &QueueId, stats: &QueueStats) -> pb::QueueStats {
    pb::QueueStats {
        queue_id: queue.to_string(),
        waiting_count: stats.waiting,
        active_count: stats.active,
        enqueued_total: stats.enqueued,
        admitted_total: stats.admitted,
        completed_total: stats.completed,
        expired_total: stats.expired,
        left_total: stats.left,
        admit_rate: stats.rate.per_second().unwrap_or(0.0),
        abandoned_total: stats.abandoned,
        prequeue_count: stats.prequeued,
        cleared_total: stats.cleared,
        arrival_rate: per_second_over_window(stats.flow.arrived, stats.flow.span_ms),
        abandon_rate: per_second_over_window(stats.rate.abandoned, stats.flow.span_ms),
        waited_p50: stats.flow.waited_quantile(0.5).map(duration_out),
        waited_p90: stats.flow.waited_quantile(0.9).map(duration_out),
        back_of_line_wait: stats
            .rate
            .estimate(stats.waiting + 1)
            .map(|e| duration_out(e.wait)),
    }
}

/// An admission with its signed token.
pub(super) fn admission_out(
    keyring: &Keyring,
    queue: &QueueId,
    user: &UserId,
    admission: &Admission,
) -> Result<pb::Admission> {
    let claims = AdmissionClaims::new(keyring.issuer(), queue, user, admission);
    let token = keyring.sign(&claims).map_err(Error::Internal)?;
    Ok(pb::Admission {
        token,
        expires_at: Some(timestamp_out(admission.expires_at_ms)),
    })
}

/// When a place is sent, and the line's bounds as this instance knows them:
/// what its receipt vouches for besides the place.
#[derive(Clone, Copy, Debug)]
pub(super) struct Stamp {
    pub(super) now_ms: u64,
    /// (head, top): see [`PlaceClaim`].
    pub(super) bounds: (u64, u64),
}

/// The receipt of a place in line: none for any other state.
fn receipt_out(
    keyring: &Keyring,
    queue: &QueueId,
    user: &UserId,
    place: &Place,
    stamp: Stamp,
) -> String {
    let in_line = matches!(place.state, PlaceState::Waiting { .. } | PlaceState::Closed);
    if !in_line || place.ticket == 0 {
        return String::new();
    }
    let (head, top) = stamp.bounds;
    let claim = PlaceClaim {
        epoch_ms: place.epoch_ms,
        ticket: place.ticket,
        head: head.min(place.ticket),
        top: top.max(place.ticket),
        issued_ms: stamp.now_ms,
    };
    keyring.receipts().issue(queue, user, &claim)
}

pub(super) fn place_out(
    keyring: &Keyring,
    queue: &QueueId,
    user: &UserId,
    place: &Place,
    stamp: Stamp,
) -> Result<pb::Place> {
    let mut opens_in = None;
    let (state, position, admission) = match &place.state {
        PlaceState::Waiting { position } => (pb::PlaceState::Waiting, *position, None),
        PlaceState::PreQueue { opens_in_ms } => {
            opens_in = Some(duration_out(Duration::from_millis(*opens_in_ms)));
            (pb::PlaceState::PreQueue, 0, None)
        }
        PlaceState::Admitted(admission) => (
            pb::PlaceState::Admitted,
            0,
            Some(admission_out(keyring, queue, user, admission)?),
        ),
        PlaceState::Closed => (pb::PlaceState::Closed, 0, None),
    };
    let estimate = place.estimate();
    Ok(pb::Place {
        state: state as i32,
        position,
        waiting_count: place.waiting_count,
        estimated_wait: place.estimated_wait().map(duration_out),
        admission,
        ticket: place.ticket,
        queue_mode: mode_out(place.mode) as i32,
        opens_in,
        notice: text_out(&place.signs.notice),
        closed_reason: text_out(&place.signs.closed_reason),
        estimated_wait_low: estimate.map(|e| duration_out(e.low)),
        estimated_wait_high: estimate.map(|e| duration_out(e.high)),
        estimate_basis: match estimate.map(|e| e.basis) {
            Some(EstimateBasis::Observed) => pb::EstimateBasis::Observed,
            Some(EstimateBasis::Configured) => pb::EstimateBasis::Configured,
            None => pb::EstimateBasis::Unspecified,
        } as i32,
        receipt: receipt_out(keyring, queue, user, place, stamp),
    })
}

/// What `AdmitUsers` did for one user, with the token of an admission.
pub(super) fn named_out(
    keyring: &Keyring,
    queue: &QueueId,
    user: &UserId,
    result: &NamedAdmission,
) -> Result<pb::UserAdmission> {
    let (outcome, admission) = match result {
        NamedAdmission::Admitted(a) => (pb::AdmitUserResult::Admitted, Some(a)),
        NamedAdmission::AlreadyAdmitted(a) => (pb::AdmitUserResult::AlreadyAdmitted, Some(a)),
        NamedAdmission::NoCapacity => (pb::AdmitUserResult::NoCapacity, None),
    };
    Ok(pb::UserAdmission {
        user_id: user.to_string(),
        result: outcome as i32,
        admission: admission
            .map(|a| admission_out(keyring, queue, user, a))
            .transpose()?,
        ticket: admission.map_or(0, |a| a.ticket),
    })
}

/// Seconds since the Unix epoch of a millisecond clock reading.
pub(super) fn seconds(now_ms: u64) -> u64 {
    now_ms / 1000
}
