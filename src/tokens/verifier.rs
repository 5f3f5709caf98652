//! Checking admission tokens, online in the service or offline in a booking
//! service that only has the JWKS.
//!
//! ```no_run
//! use waitroom::tokens::{Verdict, Verifier};
//! # fn jwks() -> String { String::new() }
//! # let (token, now_s) = ("", 0);
//! let verifier = Verifier::from_jwks(&jwks(), "waitroom").expect("a JWKS");
//! let check = verifier.verify(token, "sale", now_s);
//! if check.verdict == Verdict::Valid {
//!     let claims = check.claims.expect("claims of a valid token");
//!     // insert claims.jti under a unique constraint, then sell.
//! }
//! ```
//!
//! The checks, in order: three base64url parts; a header whose `alg` is
//! `EdDSA` or `Ed25519` (RFC 9864) and nothing else, without `crit`
//! extensions, and whose `kid` names a published Ed25519 key; the
//! signature over the first two parts with that key; the issuer; then the
//! queue (`aud`), the issue time (not in the future beyond the leeway) and
//! the expiry (with the leeway).

use std::collections::HashMap;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;

use super::AdmissionClaims;

/// What a token is worth.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Valid,
    Expired,
    /// Malformed, forged, tampered with, of another issuer, signed with an
    /// unknown key or another algorithm, or not valid yet.
    Invalid,
    /// Genuine but consumed before (decided by the service, not the token).
    AlreadyUsed,
    WrongQueue,
    /// Genuine, but the admission it names is no longer held: completed,
    /// left, or deleted with its queue (decided by the service; an offline
    /// verifier cannot know it).
    Revoked,
}

/// A verdict, with the claims when the signature is genuine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verification {
    pub verdict: Verdict,
    pub claims: Option<AdmissionClaims>,
}

impl Verification {
    fn invalid() -> Self {
        Self {
            verdict: Verdict::Invalid,
            claims: None,
        }
    }
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    kid: Option<String>,
    crit: Option<serde_json::Value>,
}

/// Checks admission tokens against a set of public keys.
#[derive(Clone)]
pub struct Verifier {
    keys: HashMap<String, DecodingKey>,
    issuer: String,
    leeway_s: u64,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("kids", &self.keys.keys().collect::<Vec<_>>())
            .field("issuer", &self.issuer)
            .field("leeway_s", &self.leeway_s)
            .finish()
    }
}

impl Verifier {
    /// Default tolerance for clock differences between issuer and verifier.
    pub const DEFAULT_LEEWAY_S: u64 = 5;

    /// Builds a verifier from a JWKS document (as served by `GetSigningKeys`
    /// or `/.well-known/jwks.json`) and the issuer tokens must name.
    pub fn from_jwks(jwks_json: &str, issuer: &str) -> Result<Self, String> {
        let set: JwkSet =
            serde_json::from_str(jwks_json).map_err(|e| format!("not a JWKS document: {e}"))?;
        Self::from_jwk_set(&set, issuer)
    }

    pub(super) fn from_jwk_set(set: &JwkSet, issuer: &str) -> Result<Self, String> {
        let mut keys = HashMap::new();
        for jwk in &set.keys {
            // Only Ed25519 keys with an id can have signed our tokens; others
            // in a shared JWKS are ignored rather than trusted.
            let (Some(kid), AlgorithmParameters::OctetKeyPair(params)) =
                (&jwk.common.key_id, &jwk.algorithm)
            else {
                continue;
            };
            if params.curve != EllipticCurve::Ed25519 {
                continue;
            }
            let key = DecodingKey::from_ed_components(&params.x)
                .map_err(|e| format!("key {kid}: {e}"))?;
            keys.insert(kid.clone(), key);
        }
        if keys.is_empty() {
            return Err("the JWKS has no Ed25519 key with a key id".into());
        }
        Ok(Self {
            keys,
            issuer: issuer.to_owned(),
            leeway_s: Self::DEFAULT_LEEWAY_S,
        })
    }

    /// The tolerance for clock differences, in seconds: a token is accepted
    /// until `exp` plus this.
    pub fn leeway_s(&self) -> u64 {
        self.leeway_s
    }

    /// Sets the tolerance for clock differences, in seconds.
    pub fn with_leeway(mut self, leeway_s: u64) -> Self {
        self.leeway_s = leeway_s;
        self
    }

    /// Checks a token for `queue` at `now_s` (seconds since the Unix epoch).
    pub fn verify(&self, token: &str, queue: &str, now_s: u64) -> Verification {
        let Some(claims) = self.genuine_claims(token) else {
            return Verification::invalid();
        };
        let verdict = if claims.iss != self.issuer {
            return Verification::invalid();
        } else if claims.aud != queue {
            Verdict::WrongQueue
        } else if claims.iat > now_s.saturating_add(self.leeway_s) {
            Verdict::Invalid
        } else if now_s >= claims.exp.saturating_add(self.leeway_s) {
            Verdict::Expired
        } else {
            Verdict::Valid
        };
        Verification {
            verdict,
            claims: Some(claims),
        }
    }

    /// The claims of a token whose header and signature check out.
    fn genuine_claims(&self, token: &str) -> Option<AdmissionClaims> {
        let mut parts = token.split('.');
        let (header_b64, payload_b64, signature_b64) =
            (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let header: Header =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header_b64).ok()?).ok()?;
        if !matches!(header.alg.as_str(), "EdDSA" | "Ed25519") || header.crit.is_some() {
            return None;
        }
        let key = self.keys.get(header.kid.as_deref()?)?;
        let signed = &token[..header_b64.len() + 1 + payload_b64.len()];
        // The signature is checked by the JOSE crate with the algorithm
        // pinned; what the header said only selected the key.
        let genuine =
            jsonwebtoken::crypto::verify(signature_b64, signed.as_bytes(), key, Algorithm::EdDSA)
                .ok()?;
        if !genuine {
            return None;
        }
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload_b64).ok()?).ok()
    }
}
