//! The crate's one error type and its one mapping to a gRPC status.
//!
//! Variants are named by what the caller can do about them. Every status
//! carries a `google.rpc.ErrorInfo` (domain [`ERROR_DOMAIN`], a stable
//! `reason`); invalid arguments add a `BadRequest` naming the field, and
//! `Unavailable` and `Reconnect` add `RetryInfo`. Internal causes are logged here, once, and
//! returned opaque.

use std::collections::HashMap;
use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// The `ErrorInfo.domain` of every error this service returns.
pub const ERROR_DOMAIN: &str = "waitroom.dev";

#[derive(Clone, Debug, thiserror::Error)]
pub enum Error {
    #[error("{field}: {reason}")]
    InvalidArgument { field: String, reason: String },
    /// The request could not be decoded: not a protobuf message of the
    /// call, or a string field that is not UTF-8. `INVALID_ARGUMENT`.
    #[error("the request is not a valid message of this call: {0}")]
    MalformedRequest(String),
    #[error("queue {0:?} does not exist")]
    QueueNotFound(String),
    #[error("the user is neither waiting nor admitted in queue {0:?}")]
    PlaceNotFound(String),
    #[error("queue {0:?} already exists")]
    QueueAlreadyExists(String),
    /// With the operator's reason (`SOLD_OUT`, `CANCELLED`, their own), so
    /// a page turned away at the door says the same as those in line are
    /// told.
    #[error(
        "queue {queue:?} is closed{}: nobody may join",
        .reason.as_deref().map(|r| format!(" ({r})")).unwrap_or_default()
    )]
    QueueClosed {
        queue: String,
        reason: Option<String>,
    },
    #[error("queue {0:?} is paused: nobody is admitted until it resumes")]
    QueuePaused(String),
    #[error(
        "queue {queue:?} does not take arrivals yet: its pre-queue opens at {opens_at_ms} ms since the epoch"
    )]
    QueueNotOpen { queue: String, opens_at_ms: u64 },
    #[error("queue {0:?} has already opened: its opening can no longer be moved")]
    OpeningPassed(String),
    /// No API key, or one this service does not know.
    #[error("{0}")]
    Unauthenticated(String),
    /// The key's role may not make this call.
    #[error("{0}")]
    PermissionDenied(String),
    /// A limit of this instance was reached; the caller may retry later or
    /// elsewhere.
    #[error("{0}")]
    ResourceExhausted(String),
    /// The store did not answer in time or at all. The call may or may not
    /// have taken effect; every call is safe to retry.
    #[error("queue store unavailable: {0}")]
    Unavailable(String),
    /// This server ends the stream for its own reasons (it is stopping, or
    /// handing watchers to other replicas): the client should reconnect,
    /// on a new connection, and keeps its place. `UNAVAILABLE` too.
    #[error("{0}; reconnect to keep watching: the place is kept")]
    Reconnect(String),
    #[error("internal error: {0}")]
    Internal(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// The `ErrorInfo.reason`, stable for clients to match on.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::InvalidArgument { .. } => "INVALID_ARGUMENT",
            Self::MalformedRequest(_) => "MALFORMED_REQUEST",
            Self::QueueNotFound(_) => "QUEUE_NOT_FOUND",
            Self::PlaceNotFound(_) => "PLACE_NOT_FOUND",
            Self::QueueAlreadyExists(_) => "QUEUE_ALREADY_EXISTS",
            Self::QueueClosed { .. } => "QUEUE_CLOSED",
            Self::QueuePaused(_) => "QUEUE_PAUSED",
            Self::QueueNotOpen { .. } => "QUEUE_NOT_OPEN",
            Self::OpeningPassed(_) => "OPENING_PASSED",
            Self::Unauthenticated(_) => "UNAUTHENTICATED",
            Self::PermissionDenied(_) => "PERMISSION_DENIED",
            Self::ResourceExhausted(_) => "RESOURCE_EXHAUSTED",
            Self::Unavailable(_) => "STORE_UNAVAILABLE",
            Self::Reconnect(_) => "RECONNECT",
            Self::Internal(_) => "INTERNAL",
        }
    }

    pub fn code(&self) -> Code {
        match self {
            Self::InvalidArgument { .. } | Self::MalformedRequest(_) => Code::InvalidArgument,
            Self::QueueNotFound(_) | Self::PlaceNotFound(_) => Code::NotFound,
            Self::QueueAlreadyExists(_) => Code::AlreadyExists,
            Self::QueueClosed { .. }
            | Self::QueuePaused(_)
            | Self::QueueNotOpen { .. }
            | Self::OpeningPassed(_) => Code::FailedPrecondition,
            Self::Unauthenticated(_) => Code::Unauthenticated,
            Self::PermissionDenied(_) => Code::PermissionDenied,
            Self::ResourceExhausted(_) => Code::ResourceExhausted,
            Self::Unavailable(_) | Self::Reconnect(_) => Code::Unavailable,
            Self::Internal(_) => Code::Internal,
        }
    }
}

impl From<Error> for Status {
    fn from(error: Error) -> Self {
        let metadata: HashMap<String, String> = match &error {
            Error::QueueClosed {
                reason: Some(reason),
                ..
            } => HashMap::from([("closed_reason".to_owned(), reason.clone())]),
            _ => HashMap::new(),
        };
        let mut details = ErrorDetails::with_error_info(error.reason(), ERROR_DOMAIN, metadata);
        let message = match &error {
            Error::InvalidArgument { field, reason } => {
                details.add_bad_request_violation(field.clone(), reason.clone());
                error.to_string()
            }
            Error::Unavailable(cause) => {
                warn_unavailable(cause);
                details.set_retry_info(Some(Duration::from_secs(1)));
                // True of every call: one sent before Redis stalled may
                // still be carried out. Every write is safe to repeat
                // (by its data, or by its request id).
                "queue store unavailable; the call may or may not have taken effect: \
                 retry it (with the same request_id where it takes one)"
                    .to_owned()
            }
            Error::Reconnect(_) => {
                // Spread out, so the streams a replica lets go do not all
                // come back in the same instant.
                details.set_retry_info(Some(reconnect_delay()));
                error.to_string()
            }
            Error::Internal(cause) => {
                tracing::error!(%cause, "internal error");
                "internal error".to_owned()
            }
            _ => error.to_string(),
        };
        Status::with_error_details(error.code(), message, details)
    }
}

/// How long a client told to reconnect waits first: 0.5 to 1.5 s, drawn
/// for each answer.
fn reconnect_delay() -> Duration {
    let mut byte = [0u8; 2];
    let spread = match getrandom::fill(&mut byte) {
        Ok(()) => u64::from(u16::from_le_bytes(byte)) * 1000 / u64::from(u16::MAX),
        Err(_) => 500,
    };
    Duration::from_millis(500 + spread)
}

/// Logs an unavailable store at most once a second, with the number of such
/// answers since the last line: an outage under load is thousands a second.
fn warn_unavailable(cause: &str) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static STARTED: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    static NEXT_MS: AtomicU64 = AtomicU64::new(0);
    static SINCE: AtomicU64 = AtomicU64::new(0);
    let now_ms = STARTED
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as u64;
    let answers = SINCE.fetch_add(1, Ordering::Relaxed) + 1;
    let next = NEXT_MS.load(Ordering::Relaxed);
    if now_ms >= next
        && NEXT_MS
            .compare_exchange(next, now_ms + 1000, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        SINCE.fetch_sub(answers, Ordering::Relaxed);
        tracing::warn!(%cause, answers, "queue store unavailable");
    }
}
