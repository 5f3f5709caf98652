//! Protection the BFF owns: per client address, a limit on joins (a token
//! bucket) and on open event streams, answered `429 Too Many Requests` with
//! `Retry-After`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::http::HeaderMap;

/// Joins per minute and open streams per client address.
pub struct Limits {
    joins_per_minute: f64,
    streams_per_client: usize,
    // PRODUCTION: share the counts between BFF instances (Redis) or limit
    // at the edge instead; behind a proxy, name it in --trusted-proxies.
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

/// The proxies in front of the BFF (`--trusted-proxies`, CIDRs) whose
/// `Forwarded` / `X-Forwarded-For` is believed. Behind an ingress every
/// request comes from its address, so without them a whole site would
/// share one address's limits; headers from anyone else are ignored, so a
/// client cannot name itself another address.
#[derive(Clone, Debug, Default)]
pub struct TrustedProxies(Vec<(IpAddr, u8)>);

impl TrustedProxies {
    /// `10.0.0.0/8,192.168.1.7` (a bare address is a /32 or /128).
    pub fn parse(cidrs: &[String]) -> anyhow::Result<Self> {
        let mut nets = Vec::new();
        for cidr in cidrs.iter().map(|c| c.trim()).filter(|c| !c.is_empty()) {
            let (addr, bits) = cidr.split_once('/').unwrap_or((cidr, ""));
            let addr: IpAddr = addr.parse().map_err(|_| {
                anyhow::anyhow!("--trusted-proxies: {cidr:?} is not an address or CIDR")
            })?;
            let max = if addr.is_ipv4() { 32 } else { 128 };
            let bits = match bits {
                "" => max,
                bits => bits
                    .parse::<u8>()
                    .ok()
                    .filter(|b| *b <= max)
                    .ok_or_else(|| {
                        anyhow::anyhow!("--trusted-proxies: {cidr:?} has a bad prefix length")
                    })?,
            };
            nets.push((addr, bits));
        }
        Ok(Self(nets))
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|(net, bits)| match (net, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(*bits)).unwrap_or(0);
                u32::from(*net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(*bits)).unwrap_or(0);
                u128::from(*net) & mask == u128::from(ip) & mask
            }
            _ => false,
        })
    }

    /// The client's address: the TCP peer, unless it is a trusted proxy;
    /// then the rightmost address of the forwarding chain that is not a
    /// trusted proxy (the one the nearest trusted proxy saw connect).
    /// `Forwarded` is read when present, else `X-Forwarded-For`; a chain
    /// entry that is no address stops the walk at the proxy before it.
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if !self.trusts(peer) {
            return peer;
        }
        let joined = |name: &str| {
            headers
                .get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect::<Vec<_>>()
                .join(",")
        };
        let forwarded = joined("forwarded");
        let chain: Vec<Option<IpAddr>> = if forwarded.is_empty() {
            joined("x-forwarded-for")
                .split(',')
                .map(|a| address(a.trim()))
                .collect()
        } else {
            forwarded
                .split(',')
                .map(|element| {
                    element
                        .split(';')
                        .find_map(|pair| {
                            let (key, value) = pair.trim().split_once('=')?;
                            key.eq_ignore_ascii_case("for")
                                .then(|| value.trim().trim_matches('"'))
                        })
                        .and_then(address)
                })
                .collect()
        };
        let mut client = peer;
        for hop in chain.iter().rev() {
            match hop {
                Some(ip) if self.trusts(*ip) => client = *ip,
                Some(ip) => return *ip,
                None => return client,
            }
        }
        client
    }
}

/// An address as forwarding headers write it: `1.2.3.4`, `1.2.3.4:5678`,
/// `[2001:db8::1]:443` or `2001:db8::1`.
fn address(text: &str) -> Option<IpAddr> {
    if let Ok(ip) = text.parse() {
        return Some(ip);
    }
    if let Some(rest) = text.strip_prefix('[') {
        return rest.split_once(']')?.0.parse().ok();
    }
    text.rsplit_once(':')?.0.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proxies(cidrs: &[&str]) -> TrustedProxies {
        TrustedProxies::parse(&cidrs.iter().map(|c| c.to_string()).collect::<Vec<_>>()).unwrap()
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, value.parse().unwrap());
        }
        map
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn a_peer_outside_the_trusted_list_is_the_client_whatever_it_forwards() {
        let trusted = proxies(&["10.0.0.0/8"]);
        let forged = headers(&[("x-forwarded-for", "1.2.3.4"), ("forwarded", "for=5.6.7.8")]);
        assert_eq!(
            trusted.client(ip("192.168.1.9"), &forged),
            ip("192.168.1.9")
        );
        assert_eq!(proxies(&[]).client(ip("10.1.1.1"), &forged), ip("10.1.1.1"));
    }

    #[test]
    fn the_rightmost_untrusted_hop_is_the_client() {
        let trusted = proxies(&["10.0.0.0/8", "2001:db8::/32"]);
        // The left end is whatever the client wrote: never believed past
        // an untrusted hop.
        let chain = headers(&[("x-forwarded-for", "6.6.6.6, 1.2.3.4, 10.0.0.7")]);
        assert_eq!(trusted.client(ip("10.0.0.1"), &chain), ip("1.2.3.4"));
        let forwarded = headers(&[(
            "forwarded",
            "for=6.6.6.6, for=\"[2001:db9::1]:443\";proto=https, for=\"[2001:db8::2]\"",
        )]);
        assert_eq!(
            trusted.client(ip("10.0.0.1"), &forwarded),
            ip("2001:db9::1")
        );
        // A hop that is no address stops the walk at the proxy before it.
        let garbled = headers(&[("x-forwarded-for", "1.2.3.4, unknown, 10.0.0.7")]);
        assert_eq!(trusted.client(ip("10.0.0.1"), &garbled), ip("10.0.0.7"));
    }

    #[test]
    fn prefixes_are_checked() {
        assert!(TrustedProxies::parse(&["10.0.0.0/33".into()]).is_err());
        assert!(TrustedProxies::parse(&["nonsense".into()]).is_err());
        let trusted = proxies(&["192.168.0.0/16"]);
        assert!(trusted.trusts(ip("192.168.200.1")));
        assert!(!trusted.trusts(ip("192.169.0.1")));
        assert!(!trusted.trusts(ip("::ffff:192.168.0.1")));
    }
}
