//! Who the visitor is: a random id in a cookie signed with HMAC-SHA-256, so
//! a visitor cannot claim another's id (and with it their place). The id is
//! the `user_id` sent to waitroom. The cookie also keeps the receipt of the
//! visitor's last place, sent back with every call: it lets waitroom answer
//! without asking Redis, and give the place back if Redis lost it.

use hmac::{Hmac, Mac};
use sha2::Sha256;

pub const VISITOR_COOKIE: &str = "wr_visitor";
pub const ADMISSION_COOKIE: &str = "wr_admission";
pub const HUMAN_COOKIE: &str = "wr_human";

/// Signs and checks visitor ids.
#[derive(Clone)]
pub struct CookieKey(Vec<u8>);

impl CookieKey {
    /// A key from hex (`--cookie-key`), or a random one. PRODUCTION: every
    /// instance of the BFF must share one key, kept in a secret store, and
    /// keep it across restarts; a random key per process gives every
    /// visitor a new id (and a new place at the back) when the process
    /// restarts or when a request reaches another instance.
    pub fn new(hex: Option<&str>) -> anyhow::Result<Self> {
        match hex {
            Some(hex) => {
                let bytes = (0..hex.len())
                    .step_by(2)
                    .map(|i| u8::from_str_radix(hex.get(i..i + 2).unwrap_or("x"), 16))
                    .collect::<Result<Vec<u8>, _>>()
                    .map_err(|_| anyhow::anyhow!("--cookie-key must be hex"))?;
                anyhow::ensure!(
                    bytes.len() >= 32,
                    "--cookie-key must be at least 32 bytes (64 hex digits)"
                );
                Ok(Self(bytes))
            }
            None => {
                let mut bytes = vec![0u8; 32];
                getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
                Ok(Self(bytes))
            }
        }
    }

    /// The key's bytes, from which the human check's keys are derived.
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }

    fn mac(&self, id: &str) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes keys of any size");
        mac.update(id.as_bytes());
        hex(&mac.finalize().into_bytes())
    }

    /// The cookie value for a visitor id and the receipt of their last
    /// place (empty for none). Receipts hold only `[A-Za-z0-9._-]`, ids
    /// no `~`.
    pub fn sign(&self, id: &str, receipt: &str) -> String {
        let payload = match receipt {
            "" => id.to_owned(),
            receipt => format!("{id}~{receipt}"),
        };
        format!("{payload}.{}", self.mac(&payload))
    }

    /// The visitor id and last receipt (empty for none) a cookie value
    /// holds, if this key signed it.
    pub fn open(&self, value: &str) -> Option<(String, String)> {
        let (payload, tag) = value.rsplit_once('.')?;
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).ok()?;
        mac.update(payload.as_bytes());
        let tag = unhex(tag)?;
        // Constant-time comparison: a forger learns nothing from timing.
        mac.verify_slice(&tag).ok()?;
        let (id, receipt) = payload.split_once('~').unwrap_or((payload, ""));
        Some((id.to_owned(), receipt.to_owned()))
    }
}

/// A fresh visitor id: 128 random bits.
pub fn new_visitor_id() -> String {
    let mut bytes = [0u8; 16];
    let _ = getrandom::fill(&mut bytes);
    format!("v-{}", hex(&bytes))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Bytes from hex; `None` for anything else (odd length, other characters).
pub(crate) fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || !text.is_ascii() {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

/// A cookie's name as set and read: with `__Host-` in front when cookies
/// are secure, which browsers accept only from this host, over TLS, for
/// the whole site, so a sibling subdomain cannot plant a visitor id.
pub fn cookie_name(name: &str, secure: bool) -> String {
    match secure {
        true => format!("__Host-{name}"),
        false => name.to_owned(),
    }
}

/// A cookie's value from a request's `Cookie` headers (by its name as
/// [`cookie_name`] gives it).
pub fn cookie(headers: &axum::http::HeaderMap, name: &str, secure: bool) -> Option<String> {
    let name = cookie_name(name, secure);
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

/// A `Set-Cookie` value: HttpOnly and SameSite=Lax always; when the page
/// is served over TLS (`secure`), Secure and a `__Host-` name, which must
/// be for the whole site (the path given is then `/`). So the cookie
/// never travels in the clear, scripts on the page cannot read it, and no
/// other host can set it.
pub fn set_cookie(name: &str, value: &str, path: &str, max_age_s: u64, secure: bool) -> String {
    let (name, path) = (cookie_name(name, secure), if secure { "/" } else { path });
    format!(
        "{name}={value}; Path={path}; Max-Age={max_age_s}; HttpOnly; SameSite=Lax{}",
        if secure { "; Secure" } else { "" }
    )
}
