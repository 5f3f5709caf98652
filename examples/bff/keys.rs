//! The keys admission tokens are checked with offline: the service's JWKS,
//! fetched in the background from the start (each try bounded, with
//! backoff, so a waitroom that is down or stalls does not keep the BFF from
//! serving), and again when a token names a key not in it (the service
//! rotated its keys), at most every ten seconds.

use std::sync::RwLock;
use std::time::{Duration, Instant};

use base64::Engine;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use waitroom::tokens::{Verdict, Verification, Verifier};

/// Longest wait for one fetch of the keys.
const FETCH_TIMEOUT: Duration = Duration::from_secs(3);

/// Most time between two tries while the keys have never arrived.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

type Current = (Verifier, Vec<String>, Instant);

pub struct Keys {
    url: String,
    issuer: String,
    /// The verifier, the key ids it knows, and when the keys were last
    /// fetched or tried; `None` until the first fetch succeeds.
    current: RwLock<Option<Current>>,
    /// Held by the one request fetching again; the others do not wait.
    fetching: tokio::sync::Mutex<()>,
}

impl Keys {
    /// Keys to be fetched from `url`, in the background from now on, until
    /// they arrive.
    pub fn start(url: &str, issuer: &str) -> std::sync::Arc<Self> {
        let keys = std::sync::Arc::new(Self {
            url: url.to_owned(),
            issuer: issuer.to_owned(),
            current: RwLock::new(None),
            fetching: tokio::sync::Mutex::new(()),
        });
        let fetcher = std::sync::Arc::clone(&keys);
        tokio::spawn(async move {
            let mut wait = Duration::from_millis(500);
            loop {
                match fetch(&fetcher.url, &fetcher.issuer).await {
                    Ok((verifier, kids)) => {
                        *fetcher.current.write().unwrap_or_else(|e| e.into_inner()) =
                            Some((verifier, kids, Instant::now()));
                        println!("bff: waitroom's keys arrived; the booking page is open");
                        return;
                    }
                    Err(error) => {
                        eprintln!(
                            "bff: fetching waitroom's keys failed ({error}); trying again in {wait:?}"
                        );
                        tokio::time::sleep(wait).await;
                        wait = (wait * 2).min(MAX_BACKOFF);
                    }
                }
            }
        });
        keys
    }

    /// Whether the keys have arrived: until then tokens cannot be checked,
    /// and the BFF is not ready.
    pub fn ready(&self) -> bool {
        self.read().is_some()
    }

    /// Checks a token; a token signed with a key not yet known makes the
    /// keys be fetched again first. `None` while the keys have not arrived.
    pub async fn verify(&self, token: &str, queue: &str, now_s: u64) -> Option<Verification> {
        let check = self.read().as_ref()?.0.verify(token, queue, now_s);
        Some(self.verify_known(token, queue, now_s, check).await)
    }

    async fn verify_known(
        &self,
        token: &str,
        queue: &str,
        now_s: u64,
        check: Verification,
    ) -> Verification {
        if check.verdict != Verdict::Invalid {
            return check;
        }
        let Some(kid) = kid_of(token) else {
            return check;
        };
        let (known, fetched_at) = match self.read().as_ref() {
            Some(current) => (current.1.contains(&kid), current.2),
            None => return check,
        };
        // A made-up kid is easy to send: fetch at most every ten seconds,
        // one request at a time, never waiting long.
        if known || fetched_at.elapsed() < Duration::from_secs(10) {
            return check;
        }
        let Ok(_fetching) = self.fetching.try_lock() else {
            return check;
        };
        if let Some(current) = self
            .current
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
        {
            current.2 = Instant::now();
        }
        match fetch(&self.url, &self.issuer).await {
            Ok((verifier, kids)) => {
                let check = verifier.verify(token, queue, now_s);
                *self.current.write().unwrap_or_else(|e| e.into_inner()) =
                    Some((verifier, kids, Instant::now()));
                check
            }
            Err(error) => {
                eprintln!("bff: refreshing the JWKS failed: {error}");
                check
            }
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Option<Current>> {
        self.current.read().unwrap_or_else(|e| e.into_inner())
    }
}

/// One fetch of the keys, bounded: an endpoint that accepts and never
/// answers costs a try, not the BFF.
async fn fetch(url: &str, issuer: &str) -> anyhow::Result<(Verifier, Vec<String>)> {
    tokio::time::timeout(FETCH_TIMEOUT, load(url, issuer))
        .await
        .unwrap_or_else(|_| Err(anyhow::anyhow!("no answer within {FETCH_TIMEOUT:?}")))
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
