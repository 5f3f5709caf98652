//! The keys admission tokens are checked with offline: the service's JWKS,
//! fetched once at start and again when a token names a key not in it (the
//! service rotated its keys), at most every ten seconds.

use std::sync::RwLock;
use std::time::{Duration, Instant};

use base64::Engine;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use waitroom::tokens::{Verdict, Verification, Verifier};

pub struct Keys {
    url: String,
    issuer: String,
    /// The verifier, the key ids it knows, and when the keys were last
    /// fetched or tried.
    current: RwLock<(Verifier, Vec<String>, Instant)>,
    /// Held by the one request fetching again; the others do not wait.
    fetching: tokio::sync::Mutex<()>,
}

impl Keys {
    pub async fn fetch(url: &str, issuer: &str) -> anyhow::Result<Self> {
        let (verifier, kids) = load(url, issuer).await?;
        Ok(Self {
            url: url.to_owned(),
            issuer: issuer.to_owned(),
            current: RwLock::new((verifier, kids, Instant::now())),
            fetching: tokio::sync::Mutex::new(()),
        })
    }

    /// Checks a token; a token signed with a key not yet known makes the
    /// keys be fetched again first.
    pub async fn verify(&self, token: &str, queue: &str, now_s: u64) -> Verification {
        let check = self.read().0.verify(token, queue, now_s);
        if check.verdict != Verdict::Invalid {
            return check;
        }
        let Some(kid) = kid_of(token) else {
            return check;
        };
        let (known, fetched_at) = {
            let current = self.read();
            (current.1.contains(&kid), current.2)
        };
        // A made-up kid is easy to send: fetch at most every ten seconds,
        // one request at a time, never waiting long.
        if known || fetched_at.elapsed() < Duration::from_secs(10) {
            return check;
        }
        let Ok(_fetching) = self.fetching.try_lock() else {
            return check;
        };
        self.current.write().unwrap_or_else(|e| e.into_inner()).2 = Instant::now();
        let fetched = tokio::time::timeout(Duration::from_secs(3), load(&self.url, &self.issuer))
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("no answer within 3 s")));
        match fetched {
            Ok((verifier, kids)) => {
                let check = verifier.verify(token, queue, now_s);
                *self.current.write().unwrap_or_else(|e| e.into_inner()) =
                    (verifier, kids, Instant::now());
                check
            }
            Err(error) => {
                eprintln!("bff: refreshing the JWKS failed: {error}");
                check
            }
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, (Verifier, Vec<String>, Instant)> {
        self.current.read().unwrap_or_else(|e| e.into_inner())
    }
}

async fn load(url: &str, issuer: &str) -> anyhow::Result<(Verifier, Vec<String>)> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<axum::body::Bytes>>();
    let response = client.get(url.parse()?).await?;
    anyhow::ensure!(
        response.status().is_success(),
        "JWKS: {}",
        response.status()
    );
    let jwks = String::from_utf8(response.into_body().collect().await?.to_bytes().to_vec())?;
    let kids = serde_json::from_str::<serde_json::Value>(&jwks)?["keys"]
        .as_array()
        .map(|keys| {
            keys.iter()
                .filter_map(|k| k["kid"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let verifier = Verifier::from_jwks(&jwks, issuer).map_err(anyhow::Error::msg)?;
    Ok((verifier, kids))
}

/// The `kid` a compact JWS's header names.
fn kid_of(token: &str) -> Option<String> {
    let header = token.split('.').next()?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .ok()?;
    let header: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    header["kid"].as_str().map(str::to_owned)
}
