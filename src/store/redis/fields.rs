//! The config hash: the fields a new or changed queue writes, and the
//! configuration read back from them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::reply::{bad_reply, parse_mode};
use crate::Result;
use crate::domain::{Adoption, QueueConfig, QueueId, QueueUpdate};

pub(super) fn config_fields(config: &QueueConfig) -> Vec<(&'static str, String)> {
    let mut fields = vec![
        ("opens_at_ms", config.opens_at_ms.unwrap_or(0).to_string()),
        (
            "prequeue_window_ms",
            config.prequeue_window.as_millis().to_string(),
        ),
        ("presence_since_ms", config.presence_since_ms.to_string()),
        ("draw", "none".to_owned()),
        ("mode", config.mode.as_str().to_owned()),
        ("max_active", config.max_active.to_string()),
        ("admit_per_second", config.admit_per_second.to_string()),
        (
            "admission_ttl_ms",
            config.admission_ttl.as_millis().to_string(),
        ),
        (
            "heartbeat_timeout_ms",
            config.heartbeat_timeout.as_millis().to_string(),
        ),
        ("created_at_ms", config.created_at_ms.to_string()),
        ("notice", text(&config.notice)),
        ("closed_reason", text(&config.closed_reason)),
    ];
    if config.shards > 1 {
        fields.push(("shards", config.shards.to_string()));
    }
    if let Some(adoption) = config.adoption {
        fields.push(("adopt_epoch_ms", adoption.epoch_ms.to_string()));
        fields.push(("adopt_head", adoption.head.to_string()));
        fields.push(("adopt_top", adoption.top.to_string()));
    }
    fields
}

/// An optional text as the config hash keeps it: empty for none.
fn text(value: &Option<Arc<str>>) -> String {
    value.as_deref().unwrap_or_default().to_owned()
}

/// The config fields an update may change: a queue over sub-lines copies
/// them from its head to each sub-line (`copy_settings.lua`).
pub(super) const SETTINGS: [&str; 9] = [
    "mode",
    "max_active",
    "admit_per_second",
    "admission_ttl_ms",
    "heartbeat_timeout_ms",
    "opens_at_ms",
    "prequeue_window_ms",
    "notice",
    "closed_reason",
];

/// The fields an update writes; clearing an opening that has not happened
/// opens the queue at `now_ms`.
pub(super) fn update_fields(update: &QueueUpdate, now_ms: u64) -> Vec<(&'static str, String)> {
    let mut fields = Vec::new();
    if let Some(mode) = update.mode {
        fields.push(("mode", mode.as_str().to_owned()));
    }
    if let Some(max_active) = update.max_active {
        fields.push(("max_active", max_active.to_string()));
    }
    if let Some(rate) = update.admit_per_second {
        fields.push(("admit_per_second", rate.to_string()));
    }
    if let Some(ttl) = update.admission_ttl {
        fields.push(("admission_ttl_ms", ttl.as_millis().to_string()));
    }
    if let Some(timeout) = update.heartbeat_timeout {
        fields.push(("heartbeat_timeout_ms", timeout.as_millis().to_string()));
    }
    if let Some(opens_at) = update.opens_at {
        fields.push(("opens_at_ms", opens_at.unwrap_or(now_ms).to_string()));
    }
    if let Some(window) = update.prequeue_window {
        fields.push(("prequeue_window_ms", window.as_millis().to_string()));
    }
    if let Some(notice) = &update.notice {
        fields.push(("notice", text(notice)));
    }
    // The script drops the reason of a queue left open.
    if let Some(reason) = &update.closed_reason {
        fields.push(("closed_reason", text(reason)));
    }
    fields
}

/// Reads a config hash; `None` when it is empty (no such queue).
pub(super) fn parse_config(
    queue: &QueueId,
    fields: HashMap<String, String>,
) -> Result<Option<QueueConfig>> {
    if fields.is_empty() {
        return Ok(None);
    }
    let number = |name: &str| -> Result<u64> {
        fields
            .get(name)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| bad_reply(&format!("queue config field {name}")))
    };
    let optional_text = |name: &str| -> Option<Arc<str>> {
        fields
            .get(name)
            .filter(|v| !v.is_empty())
            .map(|v| Arc::from(v.as_str()))
    };
    let small = |name: &str| -> Result<u32> {
        u32::try_from(number(name)?).map_err(|_| bad_reply(&format!("queue config field {name}")))
    };
    Ok(Some(QueueConfig {
        id: queue.clone(),
        mode: parse_mode(fields.get("mode").map_or("", String::as_str))?,
        max_active: small("max_active")?,
        admit_per_second: small("admit_per_second")?,
        admission_ttl: Duration::from_millis(number("admission_ttl_ms")?),
        heartbeat_timeout: Duration::from_millis(number("heartbeat_timeout_ms")?),
        created_at_ms: number("created_at_ms")?,
        opens_at_ms: Some(number("opens_at_ms")?).filter(|at| *at > 0),
        prequeue_window: Duration::from_millis(number("prequeue_window_ms")?),
        draw_seed: fields.get("draw_seed").cloned(),
        draw_complete: fields.get("draw").is_some_and(|d| d == "done"),
        presence_since_ms: number("presence_since_ms")?,
        notice: optional_text("notice"),
        closed_reason: optional_text("closed_reason"),
        adoption: match fields.contains_key("adopt_epoch_ms") {
            true => Some(Adoption {
                epoch_ms: number("adopt_epoch_ms")?,
                head: number("adopt_head")?,
                top: number("adopt_top")?,
            }),
            false => None,
        },
        shards: match fields.contains_key("shards") {
            true => small("shards")?,
            false => 1,
        },
    }))
}
