//! A booking service checking admission tokens offline.
//!
//! It fetches the published keys once from the service's HTTP port
//! (`/.well-known/jwks.json`), then checks every token it is shown without
//! calling waitroom again, and sells at most once per token id, as a
//! booking database's unique constraint on `jti` would.
//!
//! ```sh
//! cargo run --release --example booking -- --queue tour TOKEN...
//! ```

use std::collections::HashSet;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::Parser;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use waitroom::tokens::{Verdict, Verifier};

#[derive(Parser)]
struct Args {
    /// Where the service publishes its keys.
    #[arg(long, default_value = "http://127.0.0.1:8080/.well-known/jwks.json")]
    jwks_url: String,
    /// The issuer tokens must name (the service's --token-issuer).
    #[arg(long, default_value = "waitroom")]
    issuer: String,
    /// The queue this booking flow sits behind.
    #[arg(long)]
    queue: String,
    /// Tokens to check, as users present them.
    tokens: Vec<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<axum::body::Bytes>>();
    let url = &args.jwks_url;
    let uri = url
        .parse()
        .map_err(|e| anyhow::anyhow!("--jwks-url {url:?} is not a URL: {e}"))?;
    let response = client.get(uri).await.map_err(|e| {
        anyhow::anyhow!(
            "fetching the keys from {url}: {e} (is waitroom's HTTP port there? see --jwks-url)"
        )
    })?;
    anyhow::ensure!(
        response.status().is_success(),
        "fetching the keys from {url}: {}",
        response.status()
    );
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| anyhow::anyhow!("reading the keys from {url}: {e}"))?;
    let jwks = String::from_utf8(body.to_bytes().to_vec())?;
    let verifier = Verifier::from_jwks(&jwks, &args.issuer).map_err(anyhow::Error::msg)?;
    println!("loaded the published keys; checking offline from here on");

    // Stands in for the booking database's UNIQUE constraint on jti.
    let mut sold = HashSet::new();
    for token in &args.tokens {
        let now_s = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
        let check = verifier.verify(token, &args.queue, now_s);
        match (check.verdict, check.claims) {
            (Verdict::Valid, Some(claims)) if sold.insert(claims.jti.clone()) => {
                println!("SELL to {} (admission {})", claims.sub, claims.jti);
            }
            (Verdict::Valid, Some(claims)) => {
                println!("REFUSE: admission {} was already used", claims.jti);
            }
            (verdict, _) => println!("REFUSE: {verdict:?}"),
        }
    }
    Ok(())
}
