//! The claims of an admission token.

use serde::{Deserialize, Serialize};

use crate::domain::{Admission, QueueId, UserId};

/// Claims of an admission token. Field order is the serialisation order, so
/// one admission always serialises, and signs, the same way.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdmissionClaims {
    /// Who issued the token (the service's configured issuer).
    pub iss: String,
    /// The queue the token admits to.
    pub aud: String,
    /// The admitted user.
    pub sub: String,
    /// Unique id of the admission: queue, queue epoch and ticket. Booking
    /// services should keep a unique constraint on it.
    pub jti: String,
    /// Issued at, seconds since the Unix epoch.
    pub iat: u64,
    /// Expires at, seconds since the Unix epoch.
    pub exp: u64,
}

impl AdmissionClaims {
    pub fn new(issuer: &str, queue: &QueueId, user: &UserId, admission: &Admission) -> Self {
        Self {
            iss: issuer.to_owned(),
            aud: queue.to_string(),
            sub: user.to_string(),
            jti: token_id(queue, admission),
            iat: admission.admitted_at_ms / 1000,
            exp: admission.expires_at_ms / 1000,
        }
    }
}

/// The token id of an admission. The same admission always has the same id,
/// whichever replica signs it, and no two admissions share one: a ticket is
/// never given twice within a queue's life, and the epoch tells apart a
/// queue deleted and created again under the same id.
pub fn token_id(queue: &QueueId, admission: &Admission) -> String {
    format!("{queue}.{}.{}", admission.queue_epoch_ms, admission.ticket)
}
