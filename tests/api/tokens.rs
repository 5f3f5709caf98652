//! Admission tokens: genuine ones verify online and offline; forged,
//! tampered, expired, early, foreign and replayed ones never do.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use tonic::transport::Channel;
use waitroom::pb::queue_service_client::QueueServiceClient;
use waitroom::pb::{self, Verdict};
use waitroom::tokens::{AdmissionClaims, Keyring, Verifier};

use crate::helpers::*;

async fn admitted_token(
    app: &TestApp,
    client: &mut QueueServiceClient<Channel>,
    queue_id: &str,
    user: &str,
) -> String {
    app.create_queue(queue(queue_id)).await;
    enqueue(client, queue_id, user).await;
    admit(client, queue_id, 1).await[0]
        .admission
        .as_ref()
        .unwrap()
        .token
        .clone()
}

fn claims_of(token: &str) -> serde_json::Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

fn header_of(token: &str) -> serde_json::Value {
    let header = token.split('.').next().unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).unwrap()).unwrap()
}

#[tokio::test]
async fn a_genuine_token_is_valid_and_names_the_user_queue_and_times() {
    let (app, _redis) = TestApp::on_redis().await;
    let mut client = app.client().await;
    let token = admitted_token(&app, &mut client, "sale", "alice").await;
    let header = header_of(&token);
    assert_eq!(header["alg"], "EdDSA");
    assert_eq!(header["typ"], "JWT");
    let claims = claims_of(&token);
    assert_eq!(claims["iss"], "waitroom");
    assert_eq!(claims["aud"], "sale");
    assert_eq!(claims["sub"], "alice");
    let jti = claims["jti"].as_str().unwrap();
    let parts: Vec<&str> = jti.split('.').collect();
    assert_eq!(
        (parts.len(), parts[0], parts[2]),
        (5, "sale", "1"),
        "jti from queue, epoch, ticket, admission time and user: {jti}"
    );
    assert_eq!(
        parts[3].parse::<u64>().unwrap() / 1000,
        claims["iat"].as_u64().unwrap()
    );
    assert_eq!(
        claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
        600
    );
    let verdict = verify(&mut client, "sale", &token, false).await;
    assert_eq!(verdict.verdict(), Verdict::Valid);
    assert_eq!(verdict.user_id, "alice");
    assert_eq!(verdict.token_id, claims["jti"].as_str().unwrap());
    assert_eq!(
        verdict.expires_at.unwrap().seconds as u64,
        claims["exp"].as_u64().unwrap()
    );
}

#[tokio::test]
async fn a_booking_service_verifies_offline_with_the_published_keys() {
    let (app, _redis) = TestApp::on_redis().await;
    let mut client = app.client().await;
    let token = admitted_token(&app, &mut client, "sale", "alice").await;
    let jwks = client
        .get_signing_keys(pb::GetSigningKeysRequest {})
        .await
        .unwrap()
        .into_inner()
        .jwks_json;
    let document: serde_json::Value = serde_json::from_str(&jwks).unwrap();
    let key = &document["keys"][0];
    assert_eq!(
        (key["kty"].as_str(), key["crv"].as_str()),
        (Some("OKP"), Some("Ed25519"))
    );
    assert_eq!(key["kid"], header_of(&token)["kid"]);
    let verifier = Verifier::from_jwks(&jwks, "waitroom").unwrap();
    let now_s = app.clock_now_s();
    let check = verifier.verify(&token, "sale", now_s);
    assert_eq!(check.verdict, waitroom::tokens::Verdict::Valid);
    assert_eq!(check.claims.unwrap().sub, "alice");
    let other_issuer = Verifier::from_jwks(&jwks, "someone-else").unwrap();
    assert_eq!(
        other_issuer.verify(&token, "sale", now_s).verdict,
        waitroom::tokens::Verdict::Invalid
    );
}

#[tokio::test]
async fn consuming_accepts_a_token_once() {
    let (app, _redis) = TestApp::on_redis().await;
    let mut client = app.client().await;
    let token = admitted_token(&app, &mut client, "sale", "alice").await;
    assert_eq!(
        verify(&mut client, "sale", &token, false).await.verdict(),
        Verdict::Valid
    );
    assert_eq!(
        verify(&mut client, "sale", &token, true).await.verdict(),
        Verdict::Valid
    );
    assert_eq!(
        verify(&mut client, "sale", &token, true).await.verdict(),
        Verdict::AlreadyUsed
    );
    // A second replica sharing the Redis sees the same consumption.
    assert_eq!(
        verify(&mut app.client().await, "sale", &token, true)
            .await
            .verdict(),
        Verdict::AlreadyUsed
    );
}

#[tokio::test]
async fn a_token_for_one_queue_is_useless_for_another() {
    let (app, _redis) = TestApp::on_redis().await;
    let mut client = app.client().await;
    let token = admitted_token(&app, &mut client, "sale", "alice").await;
    app.create_queue(queue("other")).await;
    let verdict = verify(&mut client, "other", &token, true).await;
    assert_eq!(verdict.verdict(), Verdict::WrongQueue);
    assert_eq!(
        verify(&mut client, "sale", &token, true).await.verdict(),
        Verdict::Valid
    );
}

#[tokio::test]
async fn an_expired_or_not_yet_valid_token_is_refused() {
    let (app, _redis) = TestApp::on_redis().await;
    let mut client = app.client().await;
    let token = admitted_token(&app, &mut client, "sale", "alice").await;
    app.clock.advance_ms(600_000 + 5_000);
    assert_eq!(
        verify(&mut client, "sale", &token, false).await.verdict(),
        Verdict::Expired
    );
    assert_eq!(
        verify(&mut client, "sale", &token, true).await.verdict(),
        Verdict::Expired
    );
    // Issued "in the future" relative to the verifier's clock.
    app.clock.advance_ms(60_000);
    enqueue(&mut client, "sale", "bob").await;
    let early = admit(&mut client, "sale", 1).await[0]
        .admission
        .clone()
        .unwrap()
        .token;
    app.clock.set_ms(app.clock_now_s() * 1000 - 120_000);
    assert_eq!(
        verify(&mut client, "sale", &early, false).await.verdict(),
        Verdict::Invalid
    );
}

#[tokio::test]
async fn forged_tampered_and_garbage_tokens_are_invalid() {
    let (app, _redis) = TestApp::on_redis().await;
    let mut client = app.client().await;
    let token = admitted_token(&app, &mut client, "sale", "alice").await;
    let parts: Vec<&str> = token.split('.').collect();
    let header = header_of(&token);
    let kid = header["kid"].as_str().unwrap().to_owned();
    let mut claims = claims_of(&token);

    // alg "none" with no signature.
    let none_header = URL_SAFE_NO_PAD
        .encode(serde_json::json!({"alg": "none", "typ": "JWT", "kid": kid}).to_string());
    let alg_none = format!("{none_header}.{}.", parts[1]);

    // HS256 keyed with the public key, the classic algorithm confusion.
    let jwks: serde_json::Value = serde_json::from_str(&app.jwks).unwrap();
    let public_x = jwks["keys"][0]["x"].as_str().unwrap().to_owned();
    let mut hs_header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    hs_header.kid = Some(kid.clone());
    let hs256 = jsonwebtoken::encode(
        &hs_header,
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(public_x.as_bytes()),
    )
    .unwrap();
    let hs256_raw = jsonwebtoken::encode(
        &hs_header,
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(&URL_SAFE_NO_PAD.decode(&public_x).unwrap()),
    )
    .unwrap();

    // Payload changed to another user, signature kept.
    claims["sub"] = serde_json::json!("mallory");
    let tampered_payload = format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        parts[2]
    );

    // Signature with one bit flipped.
    let mut signature = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
    signature[0] ^= 1;
    let tampered_signature = format!(
        "{}.{}.{}",
        parts[0],
        parts[1],
        URL_SAFE_NO_PAD.encode(signature)
    );

    // Well-formed, signed by a key this service does not know.
    let stranger = Keyring::generate("waitroom").unwrap();
    let claims_for_stranger: AdmissionClaims = serde_json::from_value(claims_of(&token)).unwrap();
    let unknown_kid = stranger.sign(&claims_for_stranger).unwrap();

    for (name, forged) in [
        ("alg none", alg_none.as_str()),
        ("hs256 with the public key text", hs256.as_str()),
        ("hs256 with the public key bytes", hs256_raw.as_str()),
        ("tampered payload", tampered_payload.as_str()),
        ("tampered signature", tampered_signature.as_str()),
        ("unknown kid", unknown_kid.as_str()),
        ("garbage", "not-a-token"),
        ("three dots of garbage", "a.b.c"),
    ] {
        let verdict = verify(&mut client, "sale", forged, true).await;
        assert_eq!(verdict.verdict(), Verdict::Invalid, "{name}");
        assert!(
            verdict.user_id.is_empty(),
            "{name}: no claims from a forgery"
        );
    }
    assert_eq!(
        verify(&mut client, "sale", &token, true).await.verdict(),
        Verdict::Valid
    );
}

impl TestApp {
    pub fn clock_now_s(&self) -> u64 {
        use waitroom::domain::Clock;
        self.clock.now_ms() / 1000
    }
}
