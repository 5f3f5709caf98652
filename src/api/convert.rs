//! Between protobuf messages and domain types: validation on the way in,
//! presentation on the way out.

use std::time::{Duration, UNIX_EPOCH};

use crate::domain::{
    Admission, Place, PlaceState, QueueConfig, QueueId, QueueMode, QueueStats, RequestId, UserId,
};
use crate::pb;
use crate::tokens::{AdmissionClaims, Keyring};
use crate::{Error, Result};

pub(super) fn queue_id(field: &str, value: &str) -> Result<QueueId> {
    QueueId::parse(value).map_err(|reason| Error::invalid(field, reason))
}

pub(super) fn user_id(value: &str) -> Result<UserId> {
    UserId::parse(value).map_err(|reason| Error::invalid("user_id", reason))
}

pub(super) fn request_id(value: &str) -> Result<Option<RequestId>> {
    if value.is_empty() {
        return Ok(None);
    }
    RequestId::parse(value)
        .map(Some)
        .map_err(|reason| Error::invalid("request_id", reason))
}

/// A queue id and user id pair, the key of most calls.
pub(super) fn queue_and_user(queue: &str, user: &str) -> Result<(QueueId, UserId)> {
    Ok((queue_id("queue_id", queue)?, user_id(user)?))
}

pub(super) fn duration_in(field: &str, value: &prost_types::Duration) -> Result<Duration> {
    if value.seconds < 0 || value.nanos < 0 {
        return Err(Error::invalid(field, "must not be negative"));
    }
    if value.nanos >= 1_000_000_000 {
        return Err(Error::invalid(
            field,
            format!("nanos must be below 1,000,000,000, got {}", value.nanos),
        ));
    }
    // Stores keep milliseconds; finer precision would not survive them.
    // Every duration the API takes has a documented range far below this,
    // checked by the caller; this bound only keeps the arithmetic exact.
    let ms = u64::try_from(value.seconds)
        .ok()
        .and_then(|s| s.checked_mul(1000))
        .and_then(|ms| ms.checked_add(value.nanos as u64 / 1_000_000))
        .filter(|ms| *ms <= MAX_DURATION_MS)
        .ok_or_else(|| Error::invalid(field, format!("{} s is out of range", value.seconds)))?;
    Ok(Duration::from_millis(ms))
}

/// Longest duration read at all (ten years); each field's own range is
/// narrower.
const MAX_DURATION_MS: u64 = 10 * 365 * 24 * 3600 * 1000;

pub(super) fn duration_out(value: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: value.as_secs() as i64,
        nanos: value.subsec_nanos() as i32,
    }
}

/// A time the API takes, in milliseconds since the Unix epoch: after the
/// epoch and before `QueueConfig::TIME_RANGE_MS` (2200-01-01), the
/// documented range. The zero `Timestamp` is refused rather than read as
/// "the epoch" or "none", which two stores once read differently.
pub(super) fn timestamp_in(field: &str, value: &prost_types::Timestamp) -> Result<u64> {
    if !(0..1_000_000_000).contains(&value.nanos) {
        return Err(Error::invalid(
            field,
            format!("nanos must be 0 to 999,999,999, got {}", value.nanos),
        ));
    }
    let (earliest, latest) = QueueConfig::TIME_RANGE_MS;
    u64::try_from(value.seconds)
        .ok()
        .and_then(|s| s.checked_mul(1000))
        .and_then(|ms| ms.checked_add(value.nanos as u64 / 1_000_000))
        .filter(|ms| (earliest..latest).contains(ms))
        .ok_or_else(|| {
            Error::invalid(
                field,
                format!(
                    "must be after 1970-01-01T00:00:00Z and before 2200-01-01T00:00:00Z, got {} s",
                    value.seconds
                ),
            )
        })
}

pub(super) fn timestamp_out(ms: u64) -> prost_types::Timestamp {
    prost_types::Timestamp::from(UNIX_EPOCH + Duration::from_millis(ms))
}

pub(super) fn mode_in(field: &str, value: i32) -> Result<Option<QueueMode>> {
    match pb::QueueMode::try_from(value) {
        Ok(pb::QueueMode::Unspecified) => Ok(None),
        Ok(pb::QueueMode::Queueing) => Ok(Some(QueueMode::Queueing)),
        Ok(pb::QueueMode::PassThrough) => Ok(Some(QueueMode::PassThrough)),
        Ok(pb::QueueMode::Paused) => Ok(Some(QueueMode::Paused)),
        Ok(pb::QueueMode::Closed) => Ok(Some(QueueMode::Closed)),
        Err(_) => Err(Error::invalid(field, format!("unknown mode {value}"))),
    }
}

pub(super) fn mode_out(mode: QueueMode) -> pb::QueueMode {
    match mode {
        QueueMode::Queueing => pb::QueueMode::Queueing,
        QueueMode::PassThrough => pb::QueueMode::PassThrough,
        QueueMode::Paused => pb::QueueMode::Paused,
        QueueMode::Closed => pb::QueueMode::Closed,
    }
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

pub(super) fn place_out(
    keyring: &Keyring,
    queue: &QueueId,
    user: &UserId,
    place: &Place,
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
    Ok(pb::Place {
        state: state as i32,
        position,
        waiting_count: place.waiting_count,
        estimated_wait: place.estimated_wait().map(duration_out),
        admission,
        ticket: place.ticket,
        queue_mode: mode_out(place.mode) as i32,
        opens_in,
    })
}

/// Seconds since the Unix epoch of a millisecond clock reading.
pub(super) fn seconds(now_ms: u64) -> u64 {
    now_ms / 1000
}
