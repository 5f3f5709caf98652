//! The signing key and the published public keys.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::pkcs8::DecodePrivateKey;
use ed25519_dalek::{Signer, SigningKey};
use jsonwebtoken::jwk::{
    AlgorithmParameters, CommonParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm,
    OctetKeyPairParameters, OctetKeyPairType, PublicKeyUse, ThumbprintHash,
};

use super::{ALGORITHM, AdmissionClaims, Verifier};

/// Signs admission tokens and publishes the key to check them.
pub struct Keyring {
    issuer: String,
    key: SigningKey,
    kid: String,
    /// `base64url(header) + "."`, the same for every token of this key.
    header_prefix: String,
    jwks: JwkSet,
    jwks_json: String,
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
    /// -algorithm ed25519`).
    pub fn from_pem(issuer: &str, pem: &str) -> Result<Self, String> {
        let key = SigningKey::from_pkcs8_pem(pem)
            .map_err(|e| format!("not an Ed25519 private key in PKCS#8 PEM: {e}"))?;
        Self::new(issuer, key)
    }

    /// A fresh random key, for a single process whose tokens need not
    /// outlive it.
    pub fn generate(issuer: &str) -> Result<Self, String> {
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret).map_err(|e| format!("no randomness for a key: {e}"))?;
        Self::new(issuer, SigningKey::from_bytes(&secret))
    }

    fn new(issuer: &str, key: SigningKey) -> Result<Self, String> {
        let mut jwk = Jwk {
            common: CommonParameters {
                public_key_use: Some(PublicKeyUse::Signature),
                key_algorithm: Some(KeyAlgorithm::EdDSA),
                ..Default::default()
            },
            algorithm: AlgorithmParameters::OctetKeyPair(OctetKeyPairParameters {
                key_type: OctetKeyPairType::OctetKeyPair,
                curve: EllipticCurve::Ed25519,
                x: URL_SAFE_NO_PAD.encode(key.verifying_key().as_bytes()),
            }),
        };
        let kid = jwk
            .thumbprint(ThumbprintHash::SHA256)
            .map_err(|e| format!("cannot compute the key id: {e}"))?;
        jwk.common.key_id = Some(kid.clone());
        let jwks = JwkSet { keys: vec![jwk] };
        let jwks_json =
            serde_json::to_string(&jwks).map_err(|e| format!("cannot encode the JWKS: {e}"))?;
        let header = serde_json::json!({ "alg": ALGORITHM, "typ": "JWT", "kid": kid });
        let header_prefix = format!("{}.", URL_SAFE_NO_PAD.encode(header.to_string()));
        Ok(Self {
            issuer: issuer.to_owned(),
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

    /// The public keys as a JSON Web Key Set.
    pub fn jwks_json(&self) -> &str {
        &self.jwks_json
    }

    /// A verifier that trusts exactly this keyring's public keys.
    pub fn verifier(&self) -> Result<Verifier, String> {
        Verifier::from_jwk_set(&self.jwks, &self.issuer)
    }
}
