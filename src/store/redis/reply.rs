//! Reading what the scripts answer.

use redis::Value;

use crate::domain::{
    Admission, Admitted, LineEvent, NamedAdmission, Place, PlaceState, QueueId, QueueMode,
    RateSample, Signs, UserId,
};
use crate::{Error, Result};

/// Whether a script's answer (or an item of it) is a list headed by `tag`:
/// `{'lease', ...}`, `{'no_queue'}` and the like.
pub(super) fn tagged(value: &Value, tag: &[u8]) -> bool {
    matches!(value, Value::Array(items)
        if matches!(items.first(), Some(Value::BulkString(kind)) if kind == tag))
}

pub(super) fn bad_reply(what: &str) -> Error {
    Error::Internal(format!("unexpected reply from Redis: {what}"))
}

/// Reads the values of a script's reply array.
pub(super) struct Reply(std::vec::IntoIter<Value>);

impl Reply {
    /// A script's answer, as every script gives it: `{'ok', value...}`, the
    /// values then read in order; or `{status}`, the reason it did not act,
    /// which becomes the matching error.
    pub(super) fn of(value: Value, queue: &QueueId) -> Result<Self> {
        let mut reply = Self::new(value)?;
        match reply.string()?.as_str() {
            "ok" => Ok(reply),
            status => Err(refusal(status, &mut reply, queue)),
        }
    }

    /// The values not read yet.
    pub(super) fn into_values(self) -> Vec<Value> {
        self.0.collect()
    }

    pub(super) fn flag(&mut self) -> Result<bool> {
        Ok(self.u64()? == 1)
    }

    pub(super) fn new(value: Value) -> Result<Self> {
        match value {
            Value::Array(items) => Ok(Self(items.into_iter())),
            _ => Err(bad_reply("expected an array")),
        }
    }

    pub(super) fn next_value(&mut self) -> Result<Value> {
        self.0.next().ok_or_else(|| bad_reply("array too short"))
    }

    pub(super) fn string(&mut self) -> Result<String> {
        match self.next_value()? {
            Value::BulkString(bytes) => {
                String::from_utf8(bytes).map_err(|_| bad_reply("string is not UTF-8"))
            }
            Value::SimpleString(s) => Ok(s),
            _ => Err(bad_reply("expected a string")),
        }
    }

    /// An optional text: empty means none.
    pub(super) fn text(&mut self) -> Result<Option<std::sync::Arc<str>>> {
        let text = self.string()?;
        Ok((!text.is_empty()).then(|| std::sync::Arc::from(text)))
    }

    pub(super) fn u64(&mut self) -> Result<u64> {
        match self.next_value()? {
            Value::Int(n) => u64::try_from(n).map_err(|_| bad_reply("negative number")),
            Value::BulkString(bytes) => std::str::from_utf8(&bytes)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| bad_reply("expected a number")),
            _ => Err(bad_reply("expected a number")),
        }
    }

    /// The tail a place and a line summary share: notice, closing reason,
    /// then the rate sample's recent admissions, abandonments and
    /// configured rate (its admissions and span come earlier).
    pub(super) fn signs_and_rate(
        &mut self,
        admitted: u64,
        span_ms: u64,
    ) -> Result<(Signs, RateSample)> {
        let signs = Signs {
            notice: self.text()?,
            closed_reason: self.text()?,
        };
        let rate = RateSample {
            admitted,
            span_ms,
            recent: self.u64()?,
            abandoned: self.u64()?,
            configured: self.u32()?,
        };
        Ok((signs, rate))
    }

    pub(super) fn u32(&mut self) -> Result<u32> {
        u32::try_from(self.u64()?).map_err(|_| bad_reply("number out of range"))
    }

    pub(super) fn remaining(&self) -> usize {
        self.0.len()
    }
}

/// A script's refusal: its status, and what follows it (a closed queue's
/// reason, empty for none).
fn refusal(status: &str, rest: &mut Reply, queue: &QueueId) -> Error {
    if status == "closed" {
        return Error::QueueClosed {
            queue: queue.to_string(),
            reason: rest.string().ok().filter(|r| !r.is_empty()),
        };
    }
    status_error(status, queue)
}

fn status_error(status: &str, queue: &QueueId) -> Error {
    match status {
        "no_queue" => Error::QueueNotFound(queue.to_string()),
        "paused" => Error::QueuePaused(queue.to_string()),
        "opening_passed" => Error::OpeningPassed(queue.to_string()),
        "exists" => Error::QueueAlreadyExists(queue.to_string()),
        "request_reused" => Error::invalid(
            "request_id",
            "was used by an earlier AdmitUsers naming other users: a retry names the same users",
        ),
        other => bad_reply(other),
    }
}

/// Reads a place written by the prelude's `place()`; `None` for `{'none'}`.
pub(super) fn parse_place(value: Value, queue: &QueueId) -> Result<Option<Place>> {
    let mut reply = Reply::new(value)?;
    let kind = reply.string()?;
    if kind == "none" {
        return Ok(None);
    }
    if kind == "not_open" {
        return Err(Error::QueueNotOpen {
            queue: queue.to_string(),
            opens_at_ms: reply.u64()?,
        });
    }
    // A refusal is its status alone, or a closed queue's with its reason;
    // a place carries many values.
    if reply.remaining() <= 1 {
        return Err(refusal(&kind, &mut reply, queue));
    }
    let ticket = reply.u64()?;
    let waiting_count = reply.u64()?;
    let position = reply.u64()?;
    let admitted_at_ms = reply.u64()?;
    let expires_at_ms = reply.u64()?;
    let queue_epoch_ms = reply.u64()?;
    let mode = parse_mode(&reply.string()?)?;
    let (admitted, span_ms) = (reply.u64()?, reply.u64()?);
    let opens_in_ms = reply.u64()?;
    let (signs, rate) = reply.signs_and_rate(admitted, span_ms)?;
    let state = match kind.as_str() {
        "waiting" => PlaceState::Waiting { position },
        "closed" => PlaceState::Closed,
        "pre_queue" => PlaceState::PreQueue { opens_in_ms },
        "admitted" => PlaceState::Admitted(Admission {
            ticket,
            admitted_at_ms,
            expires_at_ms,
            queue_epoch_ms,
        }),
        other => return Err(bad_reply(other)),
    };
    Ok(Some(Place {
        state,
        ticket,
        epoch_ms: queue_epoch_ms,
        waiting_count,
        mode,
        rate,
        signs,
    }))
}

/// Reads the answers of `enqueue_many.lua`, one place (or refusal) per user
/// in order: an answer of `enqueue_one`, or a `joined` run of newcomers
/// standing for several users.
pub(super) fn parse_enqueued(
    items: Vec<Value>,
    users: usize,
    queue: &QueueId,
) -> Result<Vec<Result<Place>>> {
    let places = parse_enqueued_runs(items, users, queue)?;
    if places.len() != users {
        return Err(bad_reply("enqueue answered for fewer users than asked"));
    }
    Ok(places.into_iter().map(|(place, _)| place).collect())
}

/// The answers of `enqueue_many.lua` for the first of at most `users`,
/// each with how far into its run of newcomers it came (0 for the first
/// of a run, and for an answer of its own): the run's tickets are
/// consecutive, so the `k`-th of a run is `k` places behind its first.
pub(super) fn parse_enqueued_runs(
    items: Vec<Value>,
    users: usize,
    queue: &QueueId,
) -> Result<Vec<(Result<Place>, u64)>> {
    let mut places = Vec::with_capacity(users);
    for item in items {
        if !tagged(&item, b"joined") {
            places.push((
                parse_place(item, queue)
                    .and_then(|p| p.ok_or_else(|| bad_reply("enqueue returned no place"))),
                0,
            ));
            continue;
        }
        let mut reply = Reply::new(item)?;
        reply.string()?;
        let n = reply.u64()?;
        let (first_ticket, first_position) = (reply.u64()?, reply.u64()?);
        let epoch_ms = reply.u64()?;
        let mode = parse_mode(&reply.string()?)?;
        let (admitted, span_ms) = (reply.u64()?, reply.u64()?);
        let (signs, rate) = reply.signs_and_rate(admitted, span_ms)?;
        // Checked before anything is kept, so a wrong count cannot make a
        // large vector.
        if places.len() as u64 + n > users as u64 {
            return Err(bad_reply("enqueue answered for more users than asked"));
        }
        for k in 0..n {
            let position = first_position + k;
            places.push((
                Ok(Place {
                    state: PlaceState::Waiting { position },
                    ticket: first_ticket + k,
                    epoch_ms,
                    waiting_count: position,
                    mode,
                    rate,
                    signs: signs.clone(),
                }),
                k,
            ));
        }
    }
    Ok(places)
}

/// Reads the reply of `admit.lua` and `admit_due.lua`.
pub(super) fn parse_admitted(mut reply: Reply) -> Result<Vec<Admitted>> {
    let queue_epoch_ms = reply.u64()?;
    let mut admitted = Vec::with_capacity(reply.remaining() / 4);
    while reply.remaining() > 0 {
        let user = UserId::parse(&reply.string()?).map_err(|e| bad_reply(&e))?;
        admitted.push(Admitted {
            user,
            admission: Admission {
                ticket: reply.u64()?,
                admitted_at_ms: reply.u64()?,
                expires_at_ms: reply.u64()?,
                queue_epoch_ms,
            },
        });
    }
    Ok(admitted)
}

/// Reads the reply of `admit_users.lua`.
pub(super) fn parse_named(mut reply: Reply) -> Result<Vec<NamedAdmission>> {
    let queue_epoch_ms = reply.u64()?;
    let mut results = Vec::with_capacity(reply.remaining());
    while reply.remaining() > 0 {
        let mut result = Reply::new(reply.next_value()?)?;
        let kind = result.string()?;
        let admission = Admission {
            ticket: result.u64()?,
            admitted_at_ms: result.u64()?,
            expires_at_ms: result.u64()?,
            queue_epoch_ms,
        };
        results.push(match kind.as_str() {
            "admitted" => NamedAdmission::Admitted(admission),
            "already" => NamedAdmission::AlreadyAdmitted(admission),
            "no_capacity" => NamedAdmission::NoCapacity,
            other => return Err(bad_reply(other)),
        });
    }
    Ok(results)
}

/// Reads a log entry `seq|j|ticket|user` or `seq|l|ticket|admitted`.
pub(super) fn parse_line_entry(entry: &str) -> Result<(u64, LineEvent)> {
    let bad = || bad_reply("line log entry");
    let mut parts = entry.splitn(4, '|');
    let seq = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
    let kind = parts.next().ok_or_else(bad)?;
    let ticket = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
    let detail = parts.next().ok_or_else(bad)?;
    let event = match kind {
        "j" => LineEvent::Joined {
            ticket,
            user: UserId::parse(detail).map_err(|_| bad())?,
        },
        "J" => LineEvent::JoinedRun {
            first_ticket: ticket,
            count: detail.parse().map_err(|_| bad())?,
        },
        "l" => LineEvent::Left {
            ticket,
            admitted: detail == "1",
        },
        "p" => LineEvent::PreQueueLeft {
            user: UserId::parse(detail).map_err(|_| bad())?,
        },
        _ => return Err(bad()),
    };
    Ok((seq, event))
}

pub(super) fn parse_mode(value: &str) -> Result<QueueMode> {
    QueueMode::parse(value).ok_or_else(|| bad_reply("unknown queue mode"))
}
