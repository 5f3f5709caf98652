//! Signing keys from files, rotation without invalidating issued tokens,
//! the JWKS over plain HTTP, and the RFC 9864 algorithm name.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::pkcs8::{EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{Signer, SigningKey};
use waitroom::pb::{self, Verdict};
use waitroom::tokens::Verifier;

use crate::helpers::*;

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn write_private(dir: &std::path::Path, name: &str, key: &SigningKey) -> std::path::PathBuf {
    let path = dir.join(name);
    let pem = key.to_pkcs8_pem(Default::default()).unwrap();
    std::fs::write(&path, pem.as_bytes()).unwrap();
    path
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("waitroom-keys-{name}-{}", fresh_prefix()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn token_for(app: &TestApp, queue_id: &str, user: &str) -> String {
    let mut client = app.client().await;
    enqueue(&mut client, queue_id, user).await;
    admit(&mut client, queue_id, 1).await[0]
        .admission
        .clone()
        .unwrap()
        .token
}

async fn verdict(app: &TestApp, queue: &str, token: &str) -> Verdict {
    app.client()
        .await
        .verify_admission(pb::VerifyAdmissionRequest {
            queue_id: queue.into(),
            token: token.into(),
            consume: false,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .verdict()
}

fn kid_of(token: &str) -> String {
    let header: serde_json::Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(token.split('.').next().unwrap())
            .unwrap(),
    )
    .unwrap();
    header["kid"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn rotating_keys_publish_first_sign_later_keeps_issued_tokens_valid() {
    let redis = TestRedis::start();
    let prefix = fresh_prefix();
    let dir = temp_dir("rotation");
    let old_key = write_private(&dir, "old.pem", &key(1));
    let new_dir = temp_dir("published");
    write_private(&new_dir, "new.pem", &key(2));
    // A public key alone is enough to publish.
    std::fs::write(
        new_dir.join("old-public.pem"),
        key(1)
            .verifying_key()
            .to_public_key_pem(Default::default())
            .unwrap(),
    )
    .unwrap();

    // Step 1: sign with the old key, publish the new one.
    let mut config = TestApp::redis_config(&redis.url(), &prefix);
    config.signing_key = Some(old_key.clone());
    config.verify_keys = vec![new_dir.join("new.pem")];
    let step1 = TestApp::spawn(config.clone()).await;
    step1.create_queue(queue("sale")).await;
    let old_token = token_for(&step1, "sale", "alice").await;
    let jwks: serde_json::Value = serde_json::from_str(&step1.jwks).unwrap();
    assert_eq!(
        jwks["keys"].as_array().unwrap().len(),
        2,
        "the new key is published before it signs"
    );
    assert_eq!(
        jwks["keys"][0]["kid"].as_str().unwrap(),
        kid_of(&old_token),
        "the signing key comes first"
    );
    step1.stop().await;

    // Step 2: sign with the new key; the old one stays published.
    let mut config = TestApp::redis_config(&redis.url(), &prefix);
    config.signing_key = Some(new_dir.join("new.pem"));
    config.verify_keys = vec![dir.clone()];
    let step2 = TestApp::spawn(config).await;
    let new_token = token_for(&step2, "sale", "bob").await;
    assert_ne!(kid_of(&new_token), kid_of(&old_token));
    assert_eq!(
        verdict(&step2, "sale", &old_token).await,
        Verdict::Valid,
        "issued tokens stay valid"
    );
    assert_eq!(verdict(&step2, "sale", &new_token).await, Verdict::Valid);
    // The user admitted under the old key reads back a token of the new key
    // for the same admission: same id, both valid.
    let reread = rank(&mut step2.client().await, "sale", "alice")
        .await
        .admission
        .unwrap()
        .token;
    let claims = |t: &str| -> serde_json::Value {
        serde_json::from_slice(
            &URL_SAFE_NO_PAD
                .decode(t.split('.').nth(1).unwrap())
                .unwrap(),
        )
        .unwrap()
    };
    assert_eq!(claims(&reread)["jti"], claims(&old_token)["jti"]);

    // A booking service that fetched the JWKS over HTTP checks both offline.
    let (status, headers, body) = http_get(&step2, "/.well-known/jwks.json").await;
    assert!(status.contains("200"), "{status}");
    assert!(
        headers.contains("content-type: application/jwk-set+json"),
        "{headers}"
    );
    assert!(
        headers.contains("cache-control: public, max-age="),
        "{headers}"
    );
    let verifier = Verifier::from_jwks(&body, "waitroom").unwrap();
    let now_s = step2.clock_now_s();
    for token in [&old_token, &new_token] {
        assert_eq!(
            verifier.verify(token, "sale", now_s).verdict,
            waitroom::tokens::Verdict::Valid
        );
    }

    // Step 3: once the old tokens have expired, the old key is dropped.
    let mut config = TestApp::redis_config(&redis.url(), &prefix);
    config.signing_key = Some(new_dir.join("new.pem"));
    let step3 = TestApp::spawn(config).await;
    assert_eq!(verdict(&step3, "sale", &old_token).await, Verdict::Invalid);
    assert_eq!(verdict(&step3, "sale", &new_token).await, Verdict::Valid);
}

#[tokio::test]
async fn the_rfc_9864_algorithm_name_is_accepted_and_no_other() {
    let dir = temp_dir("alg");
    let signing = key(3);
    let mut config = TestApp::base_config();
    config.signing_key = Some(write_private(&dir, "k.pem", &signing));
    let app = TestApp::spawn(config).await;
    app.create_queue(queue("sale")).await;
    let token = token_for(&app, "sale", "alice").await;
    let mut parts = token.split('.');
    let (header, payload) = (parts.next().unwrap(), parts.next().unwrap());
    let mut header: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).unwrap()).unwrap();
    for (alg, expected) in [
        ("Ed25519", Verdict::Valid),
        ("EdDSA", Verdict::Valid),
        ("ES256", Verdict::Invalid),
        ("Ed448", Verdict::Invalid),
        ("none", Verdict::Invalid),
    ] {
        header["alg"] = serde_json::json!(alg);
        let signed = format!("{}.{payload}", URL_SAFE_NO_PAD.encode(header.to_string()));
        let signature = URL_SAFE_NO_PAD.encode(signing.sign(signed.as_bytes()).to_bytes());
        let resigned = format!("{signed}.{signature}");
        assert_eq!(
            verdict(&app, "sale", &resigned).await,
            expected,
            "alg {alg}"
        );
    }
    // An unknown critical extension must be understood to be accepted.
    header["alg"] = serde_json::json!("EdDSA");
    header["crit"] = serde_json::json!(["exp-policy"]);
    let signed = format!("{}.{payload}", URL_SAFE_NO_PAD.encode(header.to_string()));
    let signature = URL_SAFE_NO_PAD.encode(signing.sign(signed.as_bytes()).to_bytes());
    assert_eq!(
        verdict(&app, "sale", &format!("{signed}.{signature}")).await,
        Verdict::Invalid
    );
}

#[tokio::test]
async fn a_bad_key_file_stops_the_service_before_it_listens() {
    let dir = temp_dir("bad");
    let path = dir.join("broken.pem");
    std::fs::write(
        &path,
        "-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let mut config = TestApp::base_config();
    config.signing_key = Some(path);
    let error = waitroom::startup::Application::build(config)
        .await
        .err()
        .expect("a start-up error");
    assert!(format!("{error:#}").contains("broken.pem"), "{error:#}");
}
