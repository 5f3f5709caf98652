//! Requests into domain types: every field checked against its documented
//! range, `INVALID_ARGUMENT` naming the field and why, here and nowhere
//! else. Handlers call these first; past them, invalid values cannot exist.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::domain::{QueueConfig, QueueId, QueueMode, QueueUpdate, RequestId, UserId};
use crate::pb;
use crate::{Error, Result};

/// Longest token `VerifyAdmission` reads; real ones are under 400 bytes.
const MAX_TOKEN_BYTES: usize = 4096;

/// Most users one `AdmitBatch` may admit.
const MAX_ADMIT_BATCH: u32 = 10_000;

const DEFAULT_PAGE_SIZE: u32 = 100;
const MAX_PAGE_SIZE: u32 = 1000;

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

/// Most users one `AdmitUsers` names.
pub(super) const MAX_NAMED_USERS: usize = 1000;

/// The users of an `AdmitUsers`: 1 to [`MAX_NAMED_USERS`], each valid.
pub(super) fn user_ids_in(values: &[String]) -> Result<Vec<UserId>> {
    if values.is_empty() || values.len() > MAX_NAMED_USERS {
        return Err(Error::invalid(
            "user_ids",
            format!(
                "must name 1 to {MAX_NAMED_USERS} users, got {}",
                values.len()
            ),
        ));
    }
    values
        .iter()
        .enumerate()
        .map(|(i, value)| {
            UserId::parse(value).map_err(|reason| Error::invalid(format!("user_ids[{i}]"), reason))
        })
        .collect()
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

pub(super) fn token_in(token: &str) -> Result<()> {
    if token.is_empty() {
        return Err(Error::invalid("token", "must not be empty"));
    }
    if token.len() > MAX_TOKEN_BYTES {
        return Err(Error::invalid(
            "token",
            format!(
                "must be at most {MAX_TOKEN_BYTES} bytes, got {}",
                token.len()
            ),
        ));
    }
    Ok(())
}

pub(super) fn max_count_in(max_count: u32) -> Result<u32> {
    if max_count == 0 || max_count > MAX_ADMIT_BATCH {
        return Err(Error::invalid(
            "max_count",
            format!("must be between 1 and {MAX_ADMIT_BATCH}, got {max_count}"),
        ));
    }
    Ok(max_count)
}

pub(super) fn page_size_in(page_size: u32) -> Result<u32> {
    match page_size {
        0 => Ok(DEFAULT_PAGE_SIZE),
        n if n > MAX_PAGE_SIZE => Err(Error::invalid(
            "page_size",
            format!("must be at most {MAX_PAGE_SIZE}, got {n}"),
        )),
        n => Ok(n),
    }
}

/// A new queue's configuration from its message: defaults filled in, every
/// field checked.
pub(super) fn queue_config_in(queue: &pb::Queue, now_ms: u64) -> Result<QueueConfig> {
    let mut config = QueueConfig::new(queue_id("queue.id", &queue.id)?).created(now_ms);
    let update = QueueUpdate {
        mode: mode_in("queue.mode", queue.mode)?,
        max_active: Some(queue.max_active),
        admit_per_second: Some(queue.admit_per_second),
        admission_ttl: queue
            .admission_ttl
            .as_ref()
            .map(|d| duration_in("queue.admission_ttl", d))
            .transpose()?,
        heartbeat_timeout: queue
            .heartbeat_timeout
            .as_ref()
            .map(|d| duration_in("queue.heartbeat_timeout", d))
            .transpose()?,
        opens_at: queue
            .opens_at
            .as_ref()
            .map(|t| timestamp_in("queue.opens_at", t).map(Some))
            .transpose()?,
        prequeue_window: queue
            .prequeue_window
            .as_ref()
            .map(|d| duration_in("queue.prequeue_window", d))
            .transpose()?,
        notice: Some(notice_in(&queue.notice)?),
        closed_reason: Some(closed_reason_in(
            "queue.closed_reason",
            &queue.closed_reason,
        )?),
    };
    config.apply(&update);
    config.shards = queue.shards.max(1);
    config
        .check()
        .map_err(|(field, reason)| Error::invalid(format!("queue.{field}"), reason))?;
    Ok(config)
}

/// The change an `UpdateQueue` asks for. An empty mask means every field
/// set to a non-default value (AIP-134).
pub(super) fn queue_update_in(
    queue: &pb::Queue,
    mask: Option<&prost_types::FieldMask>,
    now_ms: u64,
) -> Result<QueueUpdate> {
    let paths: Vec<String> = match mask {
        Some(mask) if !mask.paths.is_empty() => mask.paths.clone(),
        _ => {
            let mut implied = Vec::new();
            if queue.mode != 0 {
                implied.push("mode".to_owned());
            }
            if queue.max_active != 0 {
                implied.push("max_active".to_owned());
            }
            if queue.admit_per_second != 0 {
                implied.push("admit_per_second".to_owned());
            }
            if queue.admission_ttl.is_some() {
                implied.push("admission_ttl".to_owned());
            }
            if queue.heartbeat_timeout.is_some() {
                implied.push("heartbeat_timeout".to_owned());
            }
            if queue.opens_at.is_some() {
                implied.push("opens_at".to_owned());
            }
            if queue.prequeue_window.is_some() {
                implied.push("prequeue_window".to_owned());
            }
            if !queue.notice.is_empty() {
                implied.push("notice".to_owned());
            }
            if !queue.closed_reason.is_empty() {
                implied.push("closed_reason".to_owned());
            }
            implied
        }
    };
    let mut update = QueueUpdate::default();
    for path in &paths {
        match path.as_str() {
            "mode" => {
                update.mode = Some(mode_in("queue.mode", queue.mode)?.ok_or_else(|| {
                    Error::invalid("queue.mode", "must be set when update_mask names it")
                })?);
            }
            "max_active" => update.max_active = Some(queue.max_active),
            "admit_per_second" => update.admit_per_second = Some(queue.admit_per_second),
            "admission_ttl" => {
                let ttl = queue.admission_ttl.as_ref().ok_or_else(|| {
                    Error::invalid(
                        "queue.admission_ttl",
                        "must be set when update_mask names it",
                    )
                })?;
                update.admission_ttl = Some(duration_in("queue.admission_ttl", ttl)?);
            }
            "heartbeat_timeout" => {
                let timeout = queue.heartbeat_timeout.as_ref().ok_or_else(|| {
                    Error::invalid(
                        "queue.heartbeat_timeout",
                        "must be set when update_mask names it",
                    )
                })?;
                update.heartbeat_timeout = Some(duration_in("queue.heartbeat_timeout", timeout)?);
            }
            "opens_at" => {
                // Named in the mask but absent: open now, drawing whoever is
                // pre-queued.
                let at = match &queue.opens_at {
                    Some(t) => timestamp_in("queue.opens_at", t)?,
                    None => now_ms,
                };
                update.opens_at = Some(Some(at));
            }
            "prequeue_window" => {
                let window = queue.prequeue_window.as_ref().ok_or_else(|| {
                    Error::invalid(
                        "queue.prequeue_window",
                        "must be set when update_mask names it",
                    )
                })?;
                update.prequeue_window = Some(duration_in("queue.prequeue_window", window)?);
            }
            // Named but empty: cleared.
            "notice" => update.notice = Some(notice_in(&queue.notice)?),
            "closed_reason" => {
                update.closed_reason = Some(closed_reason_in(
                    "queue.closed_reason",
                    &queue.closed_reason,
                )?)
            }
            "id" | "create_time" | "draw_seed" | "draw_complete" | "shards" => {
                return Err(Error::invalid(
                    "update_mask",
                    format!("{path:?} cannot be changed"),
                ));
            }
            other => {
                return Err(Error::invalid(
                    "update_mask",
                    format!("unknown field {other:?}"),
                ));
            }
        }
    }
    if paths.is_empty() {
        return Err(Error::invalid("update_mask", "names no field to change"));
    }
    // Check the new values against the documented ranges on a scratch copy.
    let mut scratch = QueueConfig::new(QueueId::parse("scratch").map_err(Error::Internal)?);
    scratch.apply(&update);
    scratch
        .check()
        .map_err(|(field, reason)| Error::invalid(format!("queue.{field}"), reason))?;
    Ok(update)
}

/// A queue's notice; empty means none.
pub(super) fn notice_in(notice: &str) -> Result<Option<Arc<str>>> {
    if notice.is_empty() {
        return Ok(None);
    }
    QueueConfig::check_notice(notice).map_err(|reason| Error::invalid("queue.notice", reason))?;
    Ok(Some(Arc::from(notice)))
}

/// A closing reason; empty means none.
pub(super) fn closed_reason_in(field: &str, reason: &str) -> Result<Option<Arc<str>>> {
    if reason.is_empty() {
        return Ok(None);
    }
    QueueConfig::check_closed_reason(reason).map_err(|why| Error::invalid(field, why))?;
    Ok(Some(Arc::from(reason)))
}

pub(super) fn page_token_in(token: &str) -> Result<Option<QueueId>> {
    if token.is_empty() {
        return Ok(None);
    }
    let invalid = || Error::invalid("page_token", "is not a token this service returned");
    let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid())?;
    let id = String::from_utf8(bytes).map_err(|_| invalid())?;
    QueueId::parse(&id).map(Some).map_err(|_| invalid())
}
