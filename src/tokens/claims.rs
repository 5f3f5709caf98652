//! The claims of an admission token.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
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
    /// Unique id of the admission (see [`token_id`]). Booking services
    /// should keep a unique constraint on it.
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
            jti: token_id(queue, user, admission),
            iat: admission.admitted_at_ms / 1000,
            exp: admission.expires_at_ms / 1000,
        }
    }
}

/// The token id of an admission: `{queue}.{epoch}.{ticket}.{admitted_at}.{user}`
/// where the epoch is the queue's creation time, `admitted_at` the
/// admission's time in milliseconds and `user` the first 48 bits of the
/// user id's SHA-256, base64url.
///
/// The same admission always has the same id, whichever replica signs it.
/// No two admissions share one, even when Redis loses acknowledged writes
/// (an `everysec` AOF, a failover) and gives a ticket a second time: the
/// second admission of that ticket is at another moment, and almost surely
/// of another user.
pub fn token_id(queue: &QueueId, user: &UserId, admission: &Admission) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(user.as_str().as_bytes());
    format!(
        "{queue}.{}.{}.{}.{}",
        admission.queue_epoch_ms,
        admission.ticket,
        admission.admitted_at_ms,
        URL_SAFE_NO_PAD.encode(&digest[..6])
    )
}

/// The queue creation, ticket and admission time a token id of `queue`
/// names; `None` for an id not made by [`token_id`]. Ids of the earlier
/// shape `{queue}.{epoch}.{ticket}` (tokens signed before admission times
/// were part of the id) name no admission time.
pub fn admission_named(queue: &str, token_id: &str) -> Option<(u64, u64, Option<u64>)> {
    let rest = token_id.strip_prefix(queue)?.strip_prefix('.')?;
    let parts: Vec<&str> = rest.split('.').collect();
    let epoch = parts.first()?.parse().ok()?;
    let ticket = parts.get(1)?.parse().ok()?;
    match parts.len() {
        2 => Some((epoch, ticket, None)),
        4 => Some((epoch, ticket, Some(parts[2].parse().ok()?))),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_id_names_its_admission_and_differs_for_another_user_or_moment() {
        let queue = QueueId::parse("sale.2026").unwrap();
        let alice = UserId::parse("alice").unwrap();
        let bob = UserId::parse("bob").unwrap();
        let admission = Admission {
            ticket: 7,
            admitted_at_ms: 1_800_000_000_123,
            expires_at_ms: 1_800_000_600_123,
            queue_epoch_ms: 1_700_000_000_000,
        };
        let id = token_id(&queue, &alice, &admission);
        assert_eq!(
            admission_named("sale.2026", &id),
            Some((1_700_000_000_000, 7, Some(1_800_000_000_123)))
        );
        assert_eq!(admission_named("sale", &id), None);
        assert_ne!(id, token_id(&queue, &bob, &admission));
        let later = Admission {
            admitted_at_ms: admission.admitted_at_ms + 1,
            ..admission.clone()
        };
        assert_ne!(id, token_id(&queue, &alice, &later));
        assert_eq!(
            admission_named("sale.2026", "sale.2026.1.2"),
            Some((1, 2, None))
        );
        assert_eq!(admission_named("sale.2026", "sale.2026.1.2.3"), None);
    }
}
