//! The check before joining: where a CAPTCHA or a proof of work goes.
//!
//! The BFF owns the pass; the check owns the challenge. A visitor without
//! a pass is shown [`HumanCheck::challenge`] inside a form posted to
//! `/human`; the form's fields go to [`HumanCheck::verify`], and a visitor
//! it accepts gets a pass: an HMAC over their visitor id and an expiry
//! (see [`Pass`]), so a pass cannot be made by hand, moved to another
//! visitor, or kept past its time.
//!
//! PRODUCTION: a CAPTCHA (Turnstile, hCaptcha, reCAPTCHA) is a
//! `HumanCheck` whose `challenge` is the provider's widget and whose
//! `verify` sends the widget's response token, the visitor's address and
//! the secret to the provider's verify endpoint; docs/deploy.md says more.

use std::net::IpAddr;
use std::time::Duration;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::visitor::{HUMAN_COOKIE, hex, set_cookie, unhex};
use crate::{App, known_visitor, now_s, page, with_cookie};

/// The request a check judges: who, from where, with what headers.
pub struct Visit<'a> {
    /// The signed visitor id (the `user_id` sent to waitroom).
    pub visitor: &'a str,
    /// The client's address (after --trusted-proxies).
    pub address: IpAddr,
    /// For checks that read the request (a provider's token sent in a
    /// header, the `User-Agent` a provider scores); the stand-in does not.
    #[allow(dead_code)]
    pub headers: &'a HeaderMap,
}

#[async_trait::async_trait]
pub trait HumanCheck: Send + Sync {
    /// HTML put inside the challenge's form (before its button): hidden
    /// fields, a provider's widget. Text in it is the check's to escape.
    fn challenge(&self, visit: &Visit<'_>) -> String;

    /// Whether the posted form's fields prove a human; may ask a provider.
    async fn verify(&self, visit: &Visit<'_>, form: &[(String, String)]) -> bool;

    /// No check at all: nobody is shown a challenge.
    fn is_off(&self) -> bool {
        false
    }
}

/// How long a pass lasts: joining within it needs no new check.
pub const PASS_LIFETIME: Duration = Duration::from_secs(3600);

/// Makes and checks passes: `<expiry>.<hmac(visitor, expiry)>`.
#[derive(Clone)]
pub struct Pass(Vec<u8>);

impl Pass {
    /// Passes under a key derived from the cookie key, so one secret signs
    /// both and a pass is never a valid visitor cookie.
    pub fn new(cookie_key: &[u8]) -> Self {
        Self(derive(cookie_key, b"waitroom-bff human pass"))
    }

    fn mac(&self, visitor: &str, expires_s: u64) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes keys of any size");
        mac.update(format!("{visitor}\n{expires_s}").as_bytes());
        mac
    }

    /// A pass for `visitor`, good until `now_s + PASS_LIFETIME`.
    pub fn issue(&self, visitor: &str, now_s: u64) -> String {
        let expires_s = now_s + PASS_LIFETIME.as_secs();
        let tag = self.mac(visitor, expires_s).finalize().into_bytes();
        format!("{expires_s}.{}", hex(&tag))
    }

    /// Whether `pass` was issued to `visitor` and has not expired.
    pub fn valid(&self, pass: &str, visitor: &str, now_s: u64) -> bool {
        let Some((expires, tag)) = pass.split_once('.') else {
            return false;
        };
        let (Ok(expires_s), Some(tag)) = (expires.parse::<u64>(), unhex(tag)) else {
            return false;
        };
        // Constant-time comparison: a forger learns nothing from timing.
        now_s < expires_s && self.mac(visitor, expires_s).verify_slice(&tag).is_ok()
    }
}

/// No check: every visitor passes.
pub struct NoCheck;

#[async_trait::async_trait]
impl HumanCheck for NoCheck {
    fn challenge(&self, _: &Visit<'_>) -> String {
        String::new()
    }

    async fn verify(&self, _: &Visit<'_>, _: &[(String, String)]) -> bool {
        true
    }

    fn is_off(&self) -> bool {
        true
    }
}

/// A small proof of work (`--human-check pow`), solved by the page's
/// script: find `answer` such that SHA-256 of `challenge:answer` starts
/// with `bits` zero bits. The challenge is `<issued>.<hmac(visitor,
/// issued)>`, so it needs no state here, is bound to the visitor and the
/// address it was shown to, and is good for [`ProofOfWork::SOLVE_WITHIN`].
///
/// It proves the shape a real check takes (a challenge bound to the
/// visitor, verified on the server); it costs a bot with a fast hasher
/// little. PRODUCTION: a CAPTCHA, or a proof of work tuned so that a
/// phone solves it in about a second.
pub struct ProofOfWork {
    key: Vec<u8>,
    bits: u32,
}

impl ProofOfWork {
    pub const SOLVE_WITHIN: Duration = Duration::from_secs(600);

    pub fn new(cookie_key: &[u8], bits: u32) -> Self {
        Self {
            key: derive(cookie_key, b"waitroom-bff proof of work"),
            bits,
        }
    }

    fn tag(&self, visit: &Visit<'_>, issued_s: u64) -> String {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes keys of any size");
        mac.update(format!("{}\n{}\n{issued_s}", visit.visitor, visit.address).as_bytes());
        hex(&mac.finalize().into_bytes()[..16])
    }

    /// The challenge for `visit` issued at `issued_s`.
    pub fn challenge_at(&self, visit: &Visit<'_>, issued_s: u64) -> String {
        format!("{issued_s}.{}", self.tag(visit, issued_s))
    }

    /// Whether `answer` solves `challenge`, issued to `visit`, at `now_s`.
    pub fn solved(&self, visit: &Visit<'_>, challenge: &str, answer: &str, now_s: u64) -> bool {
        let Some((issued, tag)) = challenge.split_once('.') else {
            return false;
        };
        let Ok(issued_s) = issued.parse::<u64>() else {
            return false;
        };
        let fresh = issued_s <= now_s && now_s - issued_s < Self::SOLVE_WITHIN.as_secs();
        let ours: bool = tag
            .as_bytes()
            .ct_eq(self.tag(visit, issued_s).as_bytes())
            .into();
        fresh && ours && answer.len() <= 20 && leading_zero_bits(challenge, answer) >= self.bits
    }
}

#[async_trait::async_trait]
impl HumanCheck for ProofOfWork {
    fn challenge(&self, visit: &Visit<'_>) -> String {
        // Only [0-9a-f.] in the challenge: nothing to escape.
        format!(
            r#"<input type="hidden" name="challenge" value="{}" data-bits="{}"><input type="hidden" name="answer" value="">"#,
            self.challenge_at(visit, now_s()),
            self.bits
        )
    }

    async fn verify(&self, visit: &Visit<'_>, form: &[(String, String)]) -> bool {
        let field = |name: &str| {
            form.iter()
                .find(|(k, _)| k == name)
                .map_or("", |(_, v)| v.as_str())
        };
        self.solved(visit, field("challenge"), field("answer"), now_s())
    }
}

/// Zero bits at the start of SHA-256(`challenge:answer`).
pub fn leading_zero_bits(challenge: &str, answer: &str) -> u32 {
    let digest = Sha256::digest(format!("{challenge}:{answer}").as_bytes());
    let mut bits = 0;
    for byte in digest {
        bits += byte.leading_zeros();
        if byte != 0 {
            break;
        }
    }
    bits
}

fn derive(key: &[u8], purpose: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any size");
    mac.update(purpose);
    mac.finalize().into_bytes().to_vec()
}

/// The check's form posted: a visitor it accepts gets a pass for their
/// visitor id; one it refuses sees a fresh challenge. Without a visitor
/// cookie there is no one to give a pass to: back to the waiting page,
/// which gives one.
pub(crate) async fn human_passed(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let Some(id) = known_visitor(&app, &headers) else {
        return Redirect::to("/wait").into_response();
    };
    let form: Vec<(String, String)> = form_urlencoded::parse(body.as_bytes())
        .into_owned()
        .collect();
    let visit = Visit {
        visitor: &id,
        address: app.proxies.client(peer.ip(), &headers),
        headers: &headers,
    };
    if !app.human.verify(&visit, &form).await {
        let fields = app.human.challenge(&visit);
        let page = page::challenge(&app.look, &fields, true);
        return app.page(StatusCode::FORBIDDEN, page);
    }
    let pass = app.pass.issue(&id, now_s());
    with_cookie(
        Redirect::to("/wait").into_response(),
        Some(set_cookie(
            HUMAN_COOKIE,
            &pass,
            "/",
            PASS_LIFETIME.as_secs(),
            app.secure,
        )),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn visit<'a>(visitor: &'a str, headers: &'a HeaderMap) -> Visit<'a> {
        Visit {
            visitor,
            address: "192.0.2.7".parse().unwrap(),
            headers,
        }
    }

    #[test]
    fn a_pass_is_good_only_for_its_visitor_and_until_it_expires() {
        let pass = Pass::new(&[7; 32]);
        let issued = pass.issue("v-a", 1_000);
        assert!(pass.valid(&issued, "v-a", 1_000));
        assert!(!pass.valid(&issued, "v-b", 1_000));
        assert!(!pass.valid(&issued, "v-a", 1_000 + PASS_LIFETIME.as_secs()));
        assert!(!pass.valid("passed", "v-a", 1_000));
        assert!(!Pass::new(&[8; 32]).valid(&issued, "v-a", 1_000));
        let (expiry, tag) = issued.split_once('.').unwrap();
        let later = format!("{}.{tag}", expiry.parse::<u64>().unwrap() + 3600);
        assert!(!pass.valid(&later, "v-a", 1_000));
    }

    #[test]
    fn a_proof_of_work_counts_only_when_solved_for_this_visitor_in_time() {
        let headers = HeaderMap::new();
        let check = ProofOfWork::new(&[7; 32], 8);
        let a = visit("v-a", &headers);
        let challenge = check.challenge_at(&a, 5_000);
        let answer = (0u64..)
            .find(|n| leading_zero_bits(&challenge, &n.to_string()) >= 8)
            .unwrap()
            .to_string();
        assert!(check.solved(&a, &challenge, &answer, 5_001));
        assert!(!check.solved(&visit("v-b", &headers), &challenge, &answer, 5_001));
        assert!(!check.solved(&a, &challenge, &answer, 5_000 + 600));
        let unsolved = (0u64..)
            .find(|n| leading_zero_bits(&challenge, &n.to_string()) < 8)
            .unwrap()
            .to_string();
        assert!(!check.solved(&a, &challenge, &unsolved, 5_001));
        let made_up = format!("5000.{}", "0".repeat(32));
        assert!(!check.solved(&a, &made_up, &answer, 5_001));
    }
}
