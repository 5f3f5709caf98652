//! Rendering answers for people (aligned tables) and scripts (JSON).

use std::time::{Duration, UNIX_EPOCH};

use serde_json::{Value, json};
use waitroom::pb;

pub fn duration(d: Option<&prost_types::Duration>) -> Option<Duration> {
    d.map(|d| Duration::new(d.seconds.max(0) as u64, d.nanos.max(0) as u32))
}

/// A figure that may not be known: "none" then, never a made-up zero.
fn known_duration_text(d: Option<&prost_types::Duration>) -> String {
    duration(d).map_or("none (no rate yet)".into(), |d| {
        humantime::format_duration(d).to_string()
    })
}

fn duration_text(d: Option<&prost_types::Duration>) -> String {
    duration(d).map_or("-".into(), |d| humantime::format_duration(d).to_string())
}

fn timestamp_text(t: Option<&prost_types::Timestamp>) -> String {
    t.map_or("-".into(), |t| {
        humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(t.seconds.max(0) as u64))
            .to_string()
    })
}

pub fn mode_name(mode: pb::QueueMode) -> &'static str {
    match mode {
        pb::QueueMode::Unspecified => "unspecified",
        pb::QueueMode::Queueing => "queueing",
        pb::QueueMode::PassThrough => "pass_through",
        pb::QueueMode::Paused => "paused",
        pb::QueueMode::Closed => "closed",
    }
}

pub fn state_name(state: pb::PlaceState) -> &'static str {
    match state {
        pb::PlaceState::Unspecified => "unspecified",
        pb::PlaceState::Waiting => "waiting",
        pb::PlaceState::Admitted => "admitted",
        pb::PlaceState::Closed => "closed",
        pb::PlaceState::PreQueue => "pre_queue",
    }
}

pub fn queue_json(q: &pb::Queue) -> Value {
    json!({
        "id": q.id,
        "mode": mode_name(q.mode()),
        "max_active": q.max_active,
        "admit_per_second": q.admit_per_second,
        "admission_ttl_seconds": duration(q.admission_ttl.as_ref()).map(|d| d.as_secs_f64()),
        "heartbeat_timeout_seconds": duration(q.heartbeat_timeout.as_ref()).map(|d| d.as_secs_f64()),
        "create_time": timestamp_text(q.create_time.as_ref()),
        "opens_at": q.opens_at.as_ref().map(|t| timestamp_text(Some(t))),
        "prequeue_window_seconds": duration(q.prequeue_window.as_ref()).map(|d| d.as_secs_f64()),
        "draw_seed": q.draw_seed,
        "draw_complete": q.draw_complete,
        "notice": q.notice,
        "closed_reason": q.closed_reason,
        "shards": q.shards,
    })
}

pub fn queue_rows(q: &pb::Queue) -> Vec<(&'static str, String)> {
    vec![
        ("id", q.id.clone()),
        ("mode", mode_name(q.mode()).into()),
        ("max_active", cap(q.max_active)),
        (
            "admit_per_second",
            if q.admit_per_second == 0 {
                "manual".into()
            } else {
                q.admit_per_second.to_string()
            },
        ),
        ("admission_ttl", duration_text(q.admission_ttl.as_ref())),
        (
            "heartbeat_timeout",
            duration_text(q.heartbeat_timeout.as_ref()),
        ),
        ("created", timestamp_text(q.create_time.as_ref())),
        ("opens_at", timestamp_text(q.opens_at.as_ref())),
        (
            "draw_seed",
            if q.draw_seed.is_empty() {
                "-".into()
            } else {
                q.draw_seed.clone()
            },
        ),
        ("notice", or_dash(&q.notice)),
        ("closed_reason", or_dash(&q.closed_reason)),
        ("shards", q.shards.to_string()),
    ]
}

fn or_dash(text: &str) -> String {
    if text.is_empty() {
        "-".into()
    } else {
        text.to_owned()
    }
}

pub fn named_json(r: &pb::UserAdmission) -> Value {
    json!({
        "user_id": r.user_id,
        "result": result_name(r.result()),
        "ticket": r.ticket,
        "token": r.admission.as_ref().map(|a| a.token.clone()),
        "expires_at": r.admission.as_ref().map(|a| timestamp_text(a.expires_at.as_ref())),
    })
}

pub fn named_row(r: &pb::UserAdmission) -> Vec<String> {
    vec![
        r.user_id.clone(),
        result_name(r.result()).to_owned(),
        if r.ticket == 0 {
            "-".into()
        } else {
            r.ticket.to_string()
        },
        r.admission
            .as_ref()
            .map_or("-".into(), |a| timestamp_text(a.expires_at.as_ref())),
    ]
}

fn result_name(result: pb::AdmitUserResult) -> &'static str {
    match result {
        pb::AdmitUserResult::Admitted => "admitted",
        pb::AdmitUserResult::AlreadyAdmitted => "already admitted",
        pb::AdmitUserResult::NoCapacity => "no capacity",
        pb::AdmitUserResult::Unspecified => "unknown",
    }
}

fn cap(n: u32) -> String {
    if n == 0 {
        "no cap".into()
    } else {
        n.to_string()
    }
}

pub fn stats_json(s: &pb::QueueStats) -> Value {
    json!({
        "queue_id": s.queue_id,
        "waiting": s.waiting_count,
        "active": s.active_count,
        "prequeued": s.prequeue_count,
        "enqueued_total": s.enqueued_total,
        "admitted_total": s.admitted_total,
        "completed_total": s.completed_total,
        "expired_total": s.expired_total,
        "abandoned_total": s.abandoned_total,
        "left_total": s.left_total,
        "cleared_total": s.cleared_total,
        "admit_rate": s.admit_rate,
        "arrival_rate": s.arrival_rate,
        "abandon_rate": s.abandon_rate,
        "waited_p50_seconds": duration(s.waited_p50.as_ref()).map(|d| d.as_secs_f64()),
        "waited_p90_seconds": duration(s.waited_p90.as_ref()).map(|d| d.as_secs_f64()),
        "back_of_line_wait_seconds": duration(s.back_of_line_wait.as_ref()).map(|d| d.as_secs_f64()),
    })
}

pub fn stats_rows(s: &pb::QueueStats) -> Vec<(&'static str, String)> {
    vec![
        ("queue", s.queue_id.clone()),
        ("waiting", s.waiting_count.to_string()),
        ("active", s.active_count.to_string()),
        ("pre-queued", s.prequeue_count.to_string()),
        ("admit rate", format!("{:.1}/s", s.admit_rate)),
        ("arrival rate", format!("{:.1}/s", s.arrival_rate)),
        ("abandon rate", format!("{:.1}/s", s.abandon_rate)),
        ("waited p50", duration_text(s.waited_p50.as_ref())),
        ("waited p90", duration_text(s.waited_p90.as_ref())),
        (
            "wait at back",
            // Nobody waiting: there is no back of the line to wait at.
            match s.waiting_count {
                0 => "none (nobody waiting)".into(),
                _ => known_duration_text(s.back_of_line_wait.as_ref()),
            },
        ),
        ("enqueued", s.enqueued_total.to_string()),
        ("admitted", s.admitted_total.to_string()),
        ("completed", s.completed_total.to_string()),
        ("expired", s.expired_total.to_string()),
        ("abandoned", s.abandoned_total.to_string()),
        ("left", s.left_total.to_string()),
        ("cleared", s.cleared_total.to_string()),
    ]
}

pub fn place_json(p: &pb::Place) -> Value {
    json!({
        "state": state_name(p.state()),
        "ticket": p.ticket,
        "position": p.position,
        "waiting_count": p.waiting_count,
        "estimated_wait_seconds": duration(p.estimated_wait.as_ref()).map(|d| d.as_secs_f64()),
        "estimated_wait_low_seconds": duration(p.estimated_wait_low.as_ref()).map(|d| d.as_secs_f64()),
        "estimated_wait_high_seconds": duration(p.estimated_wait_high.as_ref()).map(|d| d.as_secs_f64()),
        "estimate_basis": match p.estimate_basis() {
            pb::EstimateBasis::Observed => Some("observed"),
            pb::EstimateBasis::Configured => Some("configured"),
            pb::EstimateBasis::Unspecified => None,
        },
        "queue_mode": mode_name(p.queue_mode()),
        "opens_in_seconds": duration(p.opens_in.as_ref()).map(|d| d.as_secs_f64()),
        "token": p.admission.as_ref().map(|a| a.token.clone()),
        "notice": p.notice,
        "closed_reason": p.closed_reason,
    })
}

pub fn place_rows(p: &pb::Place) -> Vec<(&'static str, String)> {
    let mut rows = vec![
        ("state", state_name(p.state()).into()),
        ("ticket", p.ticket.to_string()),
        ("position", p.position.to_string()),
        ("in line", p.waiting_count.to_string()),
        ("estimated wait", duration_text(p.estimated_wait.as_ref())),
        (
            "wait range",
            format!(
                "{} to {}",
                duration_text(p.estimated_wait_low.as_ref()),
                duration_text(p.estimated_wait_high.as_ref())
            ),
        ),
        ("queue mode", mode_name(p.queue_mode()).into()),
    ];
    if !p.notice.is_empty() {
        rows.push(("notice", p.notice.clone()));
    }
    if !p.closed_reason.is_empty() {
        rows.push(("closed reason", p.closed_reason.clone()));
    }
    if let Some(admission) = &p.admission {
        rows.push(("token", admission.token.clone()));
    }
    rows
}

/// `key  value` lines, keys aligned.
pub fn print_rows(rows: &[(&str, String)]) {
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (key, value) in rows {
        println!("{key:<width$}  {value}");
    }
}

/// A table with a header row, columns aligned.
pub fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.len());
        }
    }
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    println!("{}", line(header.iter().map(|h| h.to_string()).collect()));
    for row in rows {
        println!("{}", line(row.clone()));
    }
}

/// One line of a live watch: position, a bar of the way done, the wait.
pub fn progress_line(place: &pb::Place, first_position: u64) -> String {
    // Without a basis (nobody admitted lately and no configured rate) the
    // wait is not known, and it says so rather than count up.
    let wait = match (
        place.estimate_basis(),
        duration(place.estimated_wait.as_ref()),
    ) {
        (pb::EstimateBasis::Unspecified, _) | (_, None) => "wait not known".into(),
        (_, Some(d)) => format!("~{}", humantime::format_duration(d)),
    };
    match place.state() {
        pb::PlaceState::Waiting => {
            let done = if first_position <= 1 {
                0.0
            } else {
                (first_position - place.position.min(first_position)) as f64
                    / (first_position - 1) as f64
            };
            let filled = (done * 24.0).round() as usize;
            let paused = if place.queue_mode() == pb::QueueMode::Paused {
                "  (admission paused)"
            } else {
                ""
            };
            format!(
                "position {:>7} of {:<7} [{}{}] {wait}{paused}",
                place.position,
                place.waiting_count,
                "#".repeat(filled),
                "-".repeat(24 - filled)
            )
        }
        pb::PlaceState::PreQueue => format!(
            "pre-queued, opens in {}",
            duration(place.opens_in.as_ref())
                .map_or("-".into(), |d| humantime::format_duration(d).to_string())
        ),
        pb::PlaceState::Admitted => "admitted".into(),
        pb::PlaceState::Closed => "the queue has closed".into(),
        pb::PlaceState::Unspecified => "unknown".into(),
    }
}
