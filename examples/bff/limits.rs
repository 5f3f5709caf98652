//! Protection the BFF owns: per client address, a limit on joins (a token
//! bucket) and on open event streams, answered `429 Too Many Requests` with
//! `Retry-After`; and the hook where a CAPTCHA or proof-of-work check goes.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::http::HeaderMap;

use crate::visitor::{HUMAN_COOKIE, cookie};

/// Joins per minute and open streams per client address.
pub struct Limits {
    joins_per_minute: f64,
    streams_per_client: usize,
    // PRODUCTION: behind a load balancer every request comes from its
    // address; take the client's from the header it sets (X-Forwarded-For,
    // the last hop you trust), and share the counts between BFF instances
    // (Redis) or limit at the edge instead.
    clients: Mutex<(HashMap<IpAddr, Client>, Instant)>,
}

struct Client {
    tokens: f64,
    at: Instant,
    streams: usize,
}

impl Limits {
    pub fn new(joins_per_minute: u32, streams_per_client: usize) -> Self {
        Self {
            joins_per_minute: f64::from(joins_per_minute),
            streams_per_client,
            clients: Mutex::new((HashMap::new(), Instant::now())),
        }
    }

    fn client<T>(&self, ip: IpAddr, f: impl FnOnce(&mut Client) -> T) -> T {
        let mut guard = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        let (clients, swept) = &mut *guard;
        // Forget idle clients, at most once a second, so the map stays
        // small without a sweep on every request.
        if clients.len() > 100_000 && swept.elapsed().as_secs() >= 1 {
            clients.retain(|_, c| c.streams > 0 || c.at.elapsed().as_secs() < 60);
            *swept = Instant::now();
        }
        let client = clients.entry(ip).or_insert(Client {
            tokens: self.joins_per_minute,
            at: Instant::now(),
            streams: 0,
        });
        f(client)
    }

    /// Takes a join from the address's bucket, or says how many seconds
    /// until the next one.
    pub fn join(&self, ip: IpAddr) -> Result<(), u64> {
        let rate = self.joins_per_minute / 60.0;
        let burst = self.joins_per_minute;
        self.client(ip, |c| {
            let now = Instant::now();
            c.tokens = (c.tokens + now.duration_since(c.at).as_secs_f64() * rate).min(burst);
            c.at = now;
            if c.tokens >= 1.0 {
                c.tokens -= 1.0;
                Ok(())
            } else {
                Err(((1.0 - c.tokens) / rate).ceil().max(1.0) as u64)
            }
        })
    }

    /// Counts an open stream of the address until the guard drops.
    pub fn open_stream(self: &Arc<Self>, ip: IpAddr) -> Option<StreamGuard> {
        let allowed = self.client(ip, |c| {
            if c.streams < self.streams_per_client {
                c.streams += 1;
                true
            } else {
                false
            }
        });
        allowed.then(|| StreamGuard {
            limits: Arc::clone(self),
            ip,
        })
    }
}

pub struct StreamGuard {
    limits: Arc<Limits>,
    ip: IpAddr,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.limits
            .client(self.ip, |c| c.streams = c.streams.saturating_sub(1));
    }
}

/// Where a CAPTCHA or proof-of-work check goes, before a visitor joins.
pub trait HumanCheck: Send + Sync {
    /// Whether the request carries proof of a human.
    fn passed(&self, headers: &HeaderMap) -> bool;
}

/// No check.
pub struct NoCheck;

impl HumanCheck for NoCheck {
    fn passed(&self, _: &HeaderMap) -> bool {
        true
    }
}

/// A stand-in a test switches on (`--human-check test`): the challenge page
/// has one button, which sets the proof cookie. PRODUCTION: verify the
/// CAPTCHA provider's response token with the provider, or check a
/// proof-of-work answer against a challenge you issued, and bind the proof
/// to the visitor with a signed cookie.
pub struct TestDouble;

impl HumanCheck for TestDouble {
    fn passed(&self, headers: &HeaderMap) -> bool {
        // Either name: this stand-in does not know whether cookies are
        // secure (a hand-made cookie passes it anyway).
        [true, false]
            .iter()
            .any(|secure| cookie(headers, HUMAN_COOKIE, *secure).as_deref() == Some("passed"))
    }
}
