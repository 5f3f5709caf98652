//! An online check of an admission: is the admission a genuine token names
//! still held, and (when consuming) has the token been used before.

use super::{RequestId, UserId};

/// The admission a genuine token was signed for, checked against the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdmissionCheck {
    /// The token's subject.
    pub user: UserId,
    /// The token's unique id (`jti`).
    pub token_id: String,
    /// The queue creation, ticket and admission time the token names; a
    /// record of the user that differs in any of them is another admission.
    /// Tokens signed before ids named the admission time name none.
    pub queue_epoch_ms: u64,
    pub ticket: u64,
    pub admitted_at_ms: Option<u64>,
    /// Marks the token used, when set.
    pub consume: Option<Consume>,
}

/// Marks a token used: remembered until `remember_until_ms` (by the callers'
/// clock), which must be no earlier than the last moment any verifier
/// accepts the token, or a replay after it would pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Consume {
    pub remember_until_ms: u64,
    /// The call that consumes. The same request consuming again (a retry
    /// after a lost answer) is told the token is held, not used.
    pub request: RequestId,
}

/// What the store says of a checked admission.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdmissionStatus {
    /// Held now (and, when consuming, consumed by this request).
    Held,
    /// Consumed before by another request.
    Used,
    /// Not held: completed, left, expired, or its queue deleted or created
    /// again.
    Revoked,
}
