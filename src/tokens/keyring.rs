//! The signing key and the published public keys.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey};
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use jsonwebtoken::jwk::{
    AlgorithmParameters, CommonParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm,
    OctetKeyPairParameters, OctetKeyPairType, PublicKeyUse, ThumbprintHash,
};

use super::{ALGORITHM, AdmissionClaims, Receipts, Verifier};

/// Signs admission tokens with one key and publishes that key and any
/// others still trusted. Rotation is publish first, sign later: a new key
/// is published (as a verification key) on every replica before any replica
/// signs with it, and an old one stays published until its last token has
/// expired.
pub struct Keyring {
    issuer: String,
    key: SigningKey,
    kid: String,
    /// `base64url(header) + "."`, the same for every token of this key.
    header_prefix: String,
    jwks: JwkSet,
    jwks_json: String,
    receipts: Receipts,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("issuer", &self.issuer)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl Keyring {
    /// Loads an Ed25519 private key in PKCS#8 PEM (`openssl genpkey
    /// -algorithm ed25519`) to sign with.
    pub fn from_pem(issuer: &str, pem: &str) -> Result<Self, String> {
        Self::new(issuer, signing_key_from_pem(pem)?, &[])
    }

    /// A fresh random key, for a single process whose tokens need not
    /// outlive it.
    pub fn generate(issuer: &str) -> Result<Self, String> {
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret).map_err(|e| format!("no randomness for a key: {e}"))?;
        Self::new(issuer, SigningKey::from_bytes(&secret), &[])
    }

    /// Signs with `key` and also publishes `trusted` (keys being rotated in
    /// or out); the JWKS lists the signing key first.
    pub fn new(issuer: &str, key: SigningKey, trusted: &[VerifyingKey]) -> Result<Self, String> {
        let mut keys = vec![public_jwk(&key.verifying_key())?];
        for public in trusted {
            let jwk = public_jwk(public)?;
            if !keys.iter().any(|k| k.common.key_id == jwk.common.key_id) {
                keys.push(jwk);
            }
        }
        let kid = keys[0].common.key_id.clone().unwrap_or_default();
        let jwks = JwkSet { keys };
        let jwks_json =
            serde_json::to_string(&jwks).map_err(|e| format!("cannot encode the JWKS: {e}"))?;
        let header = serde_json::json!({ "alg": ALGORITHM, "typ": "JWT", "kid": kid });
        let header_prefix = format!("{}.", URL_SAFE_NO_PAD.encode(header.to_string()));
        Ok(Self {
            issuer: issuer.to_owned(),
            receipts: Receipts::derived(&key.to_bytes(), &kid),
            key,
            kid,
            header_prefix,
            jwks,
            jwks_json,
        })
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The id of the signing key, as in the tokens' `kid` header.
    pub fn key_id(&self) -> &str {
        &self.kid
    }

    /// Signs claims as a compact JWS. The key is parsed once, at start: the
    /// JWT crates re-derive it on every call, which halves signing speed.
    pub fn sign(&self, claims: &AdmissionClaims) -> Result<String, String> {
        let payload =
            serde_json::to_vec(claims).map_err(|e| format!("cannot encode claims: {e}"))?;
        let mut token = self.header_prefix.clone();
        URL_SAFE_NO_PAD.encode_string(payload, &mut token);
        let signature = self.key.sign(token.as_bytes());
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(signature.to_bytes(), &mut token);
        Ok(token)
    }

    /// Place receipts, under a key derived from the signing key.
    pub fn receipts(&self) -> &Receipts {
        &self.receipts
    }

    /// The public keys as a JSON Web Key Set.
    pub fn jwks_json(&self) -> &str {
        &self.jwks_json
    }

    /// Ids of every published key, the signing key's first.
    pub fn published_key_ids(&self) -> Vec<&str> {
        self.jwks
            .keys
            .iter()
            .filter_map(|k| k.common.key_id.as_deref())
            .collect()
    }

    /// A verifier that trusts exactly this keyring's public keys.
    pub fn verifier(&self) -> Result<Verifier, String> {
        Verifier::from_jwk_set(&self.jwks, &self.issuer)
    }
}

/// An Ed25519 private key from PKCS#8 PEM.
pub fn signing_key_from_pem(pem: &str) -> Result<SigningKey, String> {
    SigningKey::from_pkcs8_pem(pem)
        .map_err(|e| format!("not an Ed25519 private key in PKCS#8 PEM: {e}"))
}

/// The public half of an Ed25519 key given as PEM: a public key
/// (`-----BEGIN PUBLIC KEY-----`) or a private key, so a Secret holding the
/// previous private key works as well.
pub fn verifying_key_from_pem(pem: &str) -> Result<VerifyingKey, String> {
    if let Ok(public) = VerifyingKey::from_public_key_pem(pem) {
        return Ok(public);
    }
    signing_key_from_pem(pem)
        .map(|key| key.verifying_key())
        .map_err(|_| "not an Ed25519 public or private key in PEM".to_owned())
}

/// A published key: `kid` is its RFC 7638 thumbprint, so every replica
/// names the same key the same way without configuration.
fn public_jwk(key: &VerifyingKey) -> Result<Jwk, String> {
    let mut jwk = Jwk {
        common: CommonParameters {
            public_key_use: Some(PublicKeyUse::Signature),
            key_algorithm: Some(KeyAlgorithm::EdDSA),
            ..Default::default()
        },
        algorithm: AlgorithmParameters::OctetKeyPair(OctetKeyPairParameters {
            key_type: OctetKeyPairType::OctetKeyPair,
            curve: EllipticCurve::Ed25519,
            x: URL_SAFE_NO_PAD.encode(key.as_bytes()),
        }),
    };
    let kid = jwk
        .thumbprint(ThumbprintHash::SHA256)
        .map_err(|e| format!("cannot compute the key id: {e}"))?;
    jwk.common.key_id = Some(kid);
    Ok(jwk)
}
