//! Admission tokens: what a booking service checks to know a user really was
//! let through.
//!
//! A token is a compact JWS signed with Ed25519 (`alg` `EdDSA`, `kid` the
//! key's RFC 7638 thumbprint) whose claims name the issuer (`iss`), the
//! queue (`aud`), the user (`sub`), a unique id (`jti`, derived from the
//! queue, the user's ticket and the admission's time, so an admission read
//! again yields the same id) and the issue and expiry times. Ed25519 signatures are
//! deterministic, so the same admission always yields the same token: a
//! dropped stream or a second replica hands out exactly the token the user
//! already had.
//!
//! [`Keyring`] (`keyring`) signs and publishes the public keys as a JWKS;
//! [`Verifier`] (`verifier`), built from that JWKS alone, is what a booking
//! service embeds to check tokens offline; `claims` holds what a token
//! says. Place receipts, the MAC a waiting user gets with each place, are
//! in `receipt`.

mod claims;
mod keyring;
mod receipt;
mod verifier;

pub use claims::{AdmissionClaims, admission_named, token_id};
pub use keyring::{Keyring, signing_key_from_pem, verifying_key_from_pem};
pub use receipt::{MAX_RECEIPT_LEN, Opened, Receipts};
pub use verifier::{Verdict, Verification, Verifier};

/// The signature algorithm issued. Verification also accepts its RFC 9864
/// name, `Ed25519`, and nothing else.
pub const ALGORITHM: &str = "EdDSA";
