//! What start-up reads from files and must refuse before any port opens:
//! the signing and verification keys, TLS certificates, API keys.

use anyhow::Context;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

use crate::api::auth::ApiKeys;
use crate::config::Config;
use crate::tokens::{self, Keyring};

/// The API keys per role, when `--api-keys` names a directory; without it
/// anyone who can reach the port may call everything, which is said loudly.
pub(super) fn load_api_keys(config: &Config) -> anyhow::Result<Option<ApiKeys>> {
    match &config.api_keys {
        Some(dir) => {
            let keys = ApiKeys::load(dir)
                .map_err(anyhow::Error::msg)
                .context("loading API keys (--api-keys)")?;
            tracing::info!(roles = ?keys.roles(), "API keys required");
            Ok(Some(keys))
        }
        None => {
            tracing::warn!(
                "AUTHENTICATION IS OFF: no --api-keys, so anyone who can reach the gRPC port \
                 may admit users, change queues and read tokens"
            );
            Ok(None)
        }
    }
}

pub(super) fn load_tls(config: &Config) -> anyhow::Result<Option<ServerTlsConfig>> {
    let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) else {
        return Ok(None);
    };
    let read = |path: &std::path::Path| {
        std::fs::read(path).with_context(|| format!("reading {}", path.display()))
    };
    // A client that says hello and then stops is let go at the handshake
    // deadline, as one that never speaks is on a plain port.
    let mut tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(read(cert)?, read(key)?))
        .timeout(config.handshake_timeout);
    if let Some(ca) = &config.tls_client_ca {
        tls = tls.client_ca_root(Certificate::from_pem(read(ca)?));
        tracing::info!("TLS with client certificates required (mutual TLS)");
    } else {
        tracing::info!("TLS on the gRPC port");
    }
    Ok(Some(tls))
}

pub(super) fn load_keyring(config: &Config) -> anyhow::Result<Keyring> {
    let mut trusted = Vec::new();
    for path in pem_files(&config.verify_keys)? {
        let pem = std::fs::read_to_string(&path)
            .with_context(|| format!("reading the verification key {}", path.display()))?;
        trusted.push(
            tokens::verifying_key_from_pem(&pem)
                .map_err(anyhow::Error::msg)
                .with_context(|| format!("loading the verification key {}", path.display()))?,
        );
    }
    match &config.signing_key {
        Some(path) => {
            let pem = std::fs::read_to_string(path)
                .with_context(|| format!("reading the signing key {}", path.display()))?;
            let key = tokens::signing_key_from_pem(&pem)
                .map_err(anyhow::Error::msg)
                .with_context(|| format!("loading the signing key {}", path.display()))?;
            let keyring =
                Keyring::new(&config.token_issuer, key, &trusted).map_err(anyhow::Error::msg)?;
            tracing::info!(
                kid = keyring.key_id(),
                published = ?keyring.published_key_ids(),
                "signing admission tokens"
            );
            Ok(keyring)
        }
        None => {
            if !trusted.is_empty() {
                anyhow::bail!(
                    "--verify-key needs --signing-key: a generated key cannot be rotated"
                );
            }
            let keyring = Keyring::generate(&config.token_issuer).map_err(anyhow::Error::msg)?;
            tracing::warn!(
                kid = keyring.key_id(),
                "no --signing-key: tokens are signed with a key generated for this process; \
                 they cannot be verified after a restart or by another replica's keys"
            );
            Ok(keyring)
        }
    }
}

/// The files named: each path is a PEM file, or a directory whose `*.pem`
/// files are taken in name order (a mounted Kubernetes Secret).
fn pem_files(paths: &[std::path::PathBuf]) -> anyhow::Result<Vec<std::path::PathBuf>> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            let mut found: Vec<_> = std::fs::read_dir(path)
                .with_context(|| format!("reading the key directory {}", path.display()))?
                .filter_map(|entry| entry.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "pem") && p.is_file())
                .collect();
            found.sort();
            files.extend(found);
        } else {
            files.push(path.clone());
        }
    }
    Ok(files)
}
