//! Place receipts: what the service hands a waiting user with each place,
//! and takes back to answer from its copy of the line or to give a lost
//! place back ([`crate::domain::restore_decision`]).
//!
//! A receipt is `r1.<key>.<epoch>.<ticket>.<head>.<top>.<issued>.<mac>`:
//! the claim in decimal, in the clear (it tells the holder nothing they were
//! not shown), and an HMAC-SHA-256 over the queue, the user and everything
//! before the MAC. A MAC, not a signature: only replicas check receipts,
//! they share the key, and checking costs a microsecond where an Ed25519
//! verification costs fifty, which is what lets a crowd open its pages at
//! once. The key is derived from the token signing key (every replica has
//! it) and named by the first characters of that key's id, so a rotation of
//! the signing key rotates it too: a receipt of a key this replica does not
//! hold is set aside, not refused.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::domain::{PlaceClaim, QueueId, UserId};

type HmacSha256 = Hmac<Sha256>;

const VERSION: &str = "r1";

/// Characters of the signing key's id that name the receipt key.
const KEY_NAME_LEN: usize = 8;

/// Longest receipt accepted (a full one is about 110 characters).
pub const MAX_RECEIPT_LEN: usize = 256;

/// What a receipt brought back says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Opened {
    /// Genuine, for this queue and user.
    Claim(PlaceClaim),
    /// Made with a key this replica does not hold (rotated out, or not yet
    /// in): treated as if none had been sent.
    UnknownKey,
}

/// Issues and checks receipts with one key.
pub struct Receipts {
    name: String,
    /// Keyed once: each receipt starts from a copy.
    keyed: HmacSha256,
}

impl std::fmt::Debug for Receipts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receipts")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Receipts {
    /// The receipt key of a signing key (its secret bytes and its id).
    pub fn derived(signing_secret: &[u8; 32], key_id: &str) -> Self {
        let mut digest = Sha256::new();
        digest.update(b"waitroom place receipts v1\0");
        digest.update(signing_secret);
        // HMAC pads a key to its block with zeros: this is the HMAC of
        // the 32-byte digest, keyed without a fallible call.
        let mut block = [0u8; 64];
        block[..32].copy_from_slice(&digest.finalize());
        Self {
            name: key_id.chars().take(KEY_NAME_LEN).collect(),
            keyed: <HmacSha256 as hmac::digest::KeyInit>::new(&block.into()),
        }
    }

    fn mac(&self, queue: &QueueId, user: &UserId, body: &str) -> HmacSha256 {
        // Lengths first, so no two (queue, user) pairs run together alike.
        let mut mac = self.keyed.clone();
        mac.update(&(queue.as_str().len() as u32).to_be_bytes());
        mac.update(queue.as_str().as_bytes());
        mac.update(&(user.as_str().len() as u32).to_be_bytes());
        mac.update(user.as_str().as_bytes());
        mac.update(body.as_bytes());
        mac
    }

    pub fn issue(&self, queue: &QueueId, user: &UserId, claim: &PlaceClaim) -> String {
        let mut receipt = format!(
            "{VERSION}.{}.{}.{}.{}.{}.{}.",
            self.name, claim.epoch_ms, claim.ticket, claim.head, claim.top, claim.issued_ms
        );
        let tag = self.mac(queue, user, &receipt).finalize().into_bytes();
        URL_SAFE_NO_PAD.encode_string(tag, &mut receipt);
        receipt
    }

    /// Checks a receipt brought back by `user` of `queue`. `Err` says why
    /// it is refused: malformed, altered, or issued for another queue or
    /// user (which a MAC cannot tell apart).
    pub fn open(&self, queue: &QueueId, user: &UserId, receipt: &str) -> Result<Opened, String> {
        const NOT_OURS: &str = "is not a receipt this service issued for this queue and user: send the receipt of this user's last place, or none";
        if receipt.len() > MAX_RECEIPT_LEN {
            return Err(format!("is longer than {MAX_RECEIPT_LEN} characters"));
        }
        let Some(dot) = receipt.rfind('.') else {
            return Err(NOT_OURS.into());
        };
        let (body, tag) = receipt.split_at(dot + 1);
        let mut parts = body.split('.');
        if parts.next() != Some(VERSION) {
            return Err(NOT_OURS.into());
        }
        let name = parts.next().unwrap_or_default();
        let numbers: Vec<u64> = parts
            .take_while(|p| !p.is_empty())
            .map(str::parse)
            .collect::<Result<_, _>>()
            .map_err(|_| NOT_OURS.to_owned())?;
        let [epoch_ms, ticket, head, top, issued_ms] = numbers[..] else {
            return Err(NOT_OURS.into());
        };
        if name != self.name {
            return Ok(Opened::UnknownKey);
        }
        let tag = URL_SAFE_NO_PAD
            .decode(tag)
            .map_err(|_| NOT_OURS.to_owned())?;
        self.mac(queue, user, body)
            .verify_slice(&tag)
            .map_err(|_| NOT_OURS.to_owned())?;
        Ok(Opened::Claim(PlaceClaim {
            epoch_ms,
            ticket,
            head,
            top,
            issued_ms,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(queue: &str, user: &str) -> (QueueId, UserId) {
        (QueueId::parse(queue).unwrap(), UserId::parse(user).unwrap())
    }

    const CLAIM: PlaceClaim = PlaceClaim {
        epoch_ms: 1_764_000_000_000,
        ticket: 41,
        head: 30,
        top: 99,
        issued_ms: 1_764_000_100_000,
    };

    #[test]
    fn a_receipt_opens_to_its_claim_for_its_queue_and_user_only() {
        let receipts = Receipts::derived(&[7; 32], "abcdefghijkl");
        let (q, u) = ids("sale", "alice");
        let receipt = receipts.issue(&q, &u, &CLAIM);
        assert!(receipt.len() < 128, "{receipt}");
        assert_eq!(receipts.open(&q, &u, &receipt), Ok(Opened::Claim(CLAIM)));
        let (other_q, other_u) = ids("sale2", "bob");
        assert!(receipts.open(&other_q, &u, &receipt).is_err());
        assert!(receipts.open(&q, &other_u, &receipt).is_err());
    }

    #[test]
    fn any_change_to_a_receipt_is_refused() {
        let receipts = Receipts::derived(&[7; 32], "abcdefghijkl");
        let (q, u) = ids("sale", "alice");
        let receipt = receipts.issue(&q, &u, &CLAIM);
        let moved_up = receipt.replacen(".41.", ".2.", 1);
        assert!(receipts.open(&q, &u, &moved_up).is_err());
        for cut in [0, 3, receipt.len() - 1] {
            assert!(receipts.open(&q, &u, &receipt[..cut]).is_err(), "{cut}");
        }
        assert!(receipts.open(&q, &u, "r1.abcdefgh.1.2.3.4.5.x").is_err());
        assert!(receipts.open(&q, &u, &"9".repeat(300)).is_err());
    }

    #[test]
    fn a_receipt_of_another_key_is_set_aside() {
        let old = Receipts::derived(&[7; 32], "oldkey-id-xyz");
        let new = Receipts::derived(&[8; 32], "newkey-id-xyz");
        let (q, u) = ids("sale", "alice");
        let receipt = old.issue(&q, &u, &CLAIM);
        assert_eq!(new.open(&q, &u, &receipt), Ok(Opened::UnknownKey));
    }
}
