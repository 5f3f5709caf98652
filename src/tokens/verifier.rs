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

use std::collections::HashMap;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

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

/// Checks admission tokens against a set of public keys.
#[derive(Clone)]
pub struct Verifier {
    keys: HashMap<String, DecodingKey>,
    validation: Validation,
    leeway_s: u64,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("kids", &self.keys.keys().collect::<Vec<_>>())
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
            let (Some(kid), jsonwebtoken::jwk::AlgorithmParameters::OctetKeyPair(params)) =
                (&jwk.common.key_id, &jwk.algorithm)
            else {
                continue;
            };
            if params.curve != jsonwebtoken::jwk::EllipticCurve::Ed25519 {
                continue;
            }
            let key = DecodingKey::from_ed_components(&params.x)
                .map_err(|e| format!("key {kid}: {e}"))?;
            keys.insert(kid.clone(), key);
        }
        if keys.is_empty() {
            return Err("the JWKS has no Ed25519 key with a key id".into());
        }
        // The algorithm is pinned; expiry and audience are checked here
        // against the caller's clock and queue, to tell the verdicts apart.
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_issuer(&[issuer]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.validate_exp = false;
        validation.validate_aud = false;
        validation.validate_nbf = false;
        Ok(Self {
            keys,
            validation,
            leeway_s: Self::DEFAULT_LEEWAY_S,
        })
    }

    /// Sets the tolerance for clock differences, in seconds.
    pub fn with_leeway(mut self, leeway_s: u64) -> Self {
        self.leeway_s = leeway_s;
        self
    }

    /// Checks a token for `queue` at `now_s` (seconds since the Unix epoch).
    pub fn verify(&self, token: &str, queue: &str, now_s: u64) -> Verification {
        let Ok(header) = jsonwebtoken::decode_header(token) else {
            return Verification::invalid();
        };
        if header.alg != Algorithm::EdDSA {
            return Verification::invalid();
        }
        let Some(key) = header.kid.as_deref().and_then(|kid| self.keys.get(kid)) else {
            return Verification::invalid();
        };
        let Ok(data) = jsonwebtoken::decode::<AdmissionClaims>(token, key, &self.validation) else {
            return Verification::invalid();
        };
        let claims = data.claims;
        let verdict = if claims.aud != queue {
            Verdict::WrongQueue
        } else if claims.iat > now_s + self.leeway_s {
            Verdict::Invalid
        } else if now_s >= claims.exp + self.leeway_s {
            Verdict::Expired
        } else {
            Verdict::Valid
        };
        Verification {
            verdict,
            claims: Some(claims),
        }
    }
}
