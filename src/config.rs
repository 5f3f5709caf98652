//! Start-up configuration: flags with `WAITROOM_*` environment equivalents,
//! validated once before anything starts.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use crate::domain::{QueueConfig, QueueId, QueueMode, QueueUpdate};

#[derive(Clone, Debug, Parser)]
#[command(
    name = "waitroom",
    version,
    // A flag given again wins over the first: wrappers and charts append.
    args_override_self = true,
    about = "The queue authority behind a virtual waiting room: places in line, live positions, admission in order, signed admission tokens."
)]
pub struct Config {
    /// Address of the gRPC server (queue, admin, health and reflection services).
    #[arg(long, env = "WAITROOM_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,

    /// Redis URL (`redis://[:password@]host:port[/db]`, `rediss://` for TLS). Without it, queues live in this process only.
    #[arg(long, env = "WAITROOM_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,

    /// Redis password; overrides one in the URL, so a secret need not be part of it.
    #[arg(long, env = "WAITROOM_REDIS_PASSWORD", hide_env_values = true)]
    pub redis_password: Option<String>,

    /// The Redis URL names seed nodes of a Redis Cluster (comma-separated URLs).
    #[arg(long, env = "WAITROOM_REDIS_CLUSTER")]
    pub redis_cluster: bool,

    /// The Redis URL names Sentinels (comma-separated URLs, with their own passwords if they need one), which are asked for the address of the master of this name, and asked again after a failover. `--redis-password` is the master's.
    #[arg(
        long,
        env = "WAITROOM_REDIS_SENTINEL_MASTER",
        conflicts_with = "redis_cluster"
    )]
    pub redis_sentinel_master: Option<String>,

    /// Password of the Sentinels (when they require one); overrides one in their URLs, so a secret need not be part of them.
    #[arg(
        long,
        env = "WAITROOM_REDIS_SENTINEL_PASSWORD",
        hide_env_values = true,
        requires = "redis_sentinel_master"
    )]
    pub redis_sentinel_password: Option<String>,

    /// Prefix of every Redis key, so several deployments can share one Redis.
    #[arg(long, env = "WAITROOM_REDIS_PREFIX", default_value = "wr")]
    pub redis_prefix: String,

    /// Longest wait for Redis before a call answers UNAVAILABLE (e.g. `500ms`, `2s`).
    #[arg(long, env = "WAITROOM_REDIS_TIMEOUT", default_value = "1s", value_parser = humantime::parse_duration)]
    pub redis_timeout: Duration,

    /// Serve queues created with `shards` above 1 over that many Redis slots (a preview: docs/design.md, "One sale over several Redis slots", says what a failover still costs). Without it, such a queue is refused.
    #[arg(long, env = "WAITROOM_REDIS_SUB_LINES", requires = "redis_url")]
    pub redis_sub_lines: bool,

    /// Ed25519 private key (PKCS#8 PEM) that signs admission tokens. Without it, a key is generated and tokens die with the process.
    #[arg(long, env = "WAITROOM_SIGNING_KEY")]
    pub signing_key: Option<PathBuf>,

    /// More Ed25519 keys to publish and accept but not sign with (key rotation): PEM files, public or private, or directories of `*.pem` files. Repeat the flag for more; in the environment, separate paths with `:`.
    #[arg(
        long = "verify-key",
        env = "WAITROOM_VERIFY_KEYS",
        value_delimiter = ':'
    )]
    pub verify_keys: Vec<PathBuf>,

    /// Address of the plain-HTTP port: `/.well-known/jwks.json` and `/healthz`.
    #[arg(long, env = "WAITROOM_HTTP_LISTEN", default_value = "127.0.0.1:8080")]
    pub http_listen: SocketAddr,

    /// The `iss` claim of admission tokens; verifiers must expect the same.
    #[arg(long, env = "WAITROOM_TOKEN_ISSUER", default_value = "waitroom")]
    pub token_issuer: String,

    /// A queue to create at start if it does not exist: `ID[:key=value,...]` with keys mode (queueing, pass_through, paused, closed), max_active, admit_per_second, admission_ttl, heartbeat_timeout, opens_at (RFC 3339), prequeue_window, shards (sub-lines, fixed at creation). Repeat the flag for more; in the environment, separate queues with `;`. An existing queue is left as it is.
    #[arg(long = "queue", env = "WAITROOM_QUEUES", value_delimiter = ';', value_parser = QueueSpec::parse)]
    pub queues: Vec<QueueSpec>,

    /// How often the copy of a watched or polled queue's line is refreshed
    /// from the store: what users are shown is as of the last refresh.
    #[arg(long, env = "WAITROOM_WATCH_INTERVAL", default_value = "250ms", value_parser = positive_duration)]
    pub watch_interval: Duration,

    /// Least time between two messages of a WatchRank stream that only move its position, waiting count or estimate (the latest is sent); changes of state (admitted, closed, paused, the opening) are never held back and go first. 0s sends every change at once.
    #[arg(long, env = "WAITROOM_POSITION_PACE", default_value = "1s", value_parser = humantime::parse_duration)]
    pub position_pace: Duration,

    /// Most messages a second that only move positions, over all of this replica's WatchRank streams: with more streams than that, each stream's position messages are paced at streams / budget seconds instead, rounded up to whole paces (100,000 streams at 50,000 a second: one every 2 s), so changes of state are never delayed behind positions. 0: no budget.
    #[arg(long, env = "WAITROOM_POSITION_BUDGET", default_value_t = 50_000)]
    pub position_budget: u64,

    /// How often each replica's queue worker runs: automatic admission, the opening draw, releasing silent users.
    #[arg(long, env = "WAITROOM_ADMIT_INTERVAL", default_value = "100ms", value_parser = positive_duration)]
    pub admit_interval: Duration,

    /// After SIGTERM: how long readiness reports NOT_SERVING while the service keeps serving, so load balancers stop sending before streams are ended.
    #[arg(long, env = "WAITROOM_DRAIN_DELAY", default_value = "5s", value_parser = humantime::parse_duration)]
    pub drain_delay: Duration,

    /// After the drain delay: the longest wait for calls in flight before the process exits anyway.
    #[arg(long, env = "WAITROOM_SHUTDOWN_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub shutdown_timeout: Duration,

    /// Longest a unary call may take before it is cancelled.
    #[arg(long, env = "WAITROOM_REQUEST_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,

    /// Most WatchRank streams open on this instance; more are refused with RESOURCE_EXHAUSTED.
    #[arg(long, env = "WAITROOM_MAX_STREAMS", default_value_t = 200_000)]
    pub max_streams: usize,

    /// Most unary calls in flight on this instance; more are refused with RESOURCE_EXHAUSTED.
    #[arg(long, env = "WAITROOM_MAX_CALLS", default_value_t = 10_000)]
    pub max_calls: usize,

    /// HTTP/2 streams one connection may have open. Sized for a BFF, which multiplexes its open pages on a few connections (the reference BFF's 4 carry 80,000), and so that one client needs ten connections to take an instance's --max-streams.
    #[arg(
        long,
        env = "WAITROOM_MAX_STREAMS_PER_CONNECTION",
        default_value_t = 20_000
    )]
    pub max_streams_per_connection: u32,

    /// HTTP/2 keepalive ping interval; a peer silent for the keepalive timeout after a ping is dropped.
    #[arg(long, env = "WAITROOM_KEEPALIVE_INTERVAL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub keepalive_interval: Duration,

    /// How long to wait for a keepalive ping's answer.
    #[arg(long, env = "WAITROOM_KEEPALIVE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub keepalive_timeout: Duration,

    /// Connections are asked to go away after about this long (GOAWAY, then their streams end with UNAVAILABLE and reconnect through the load balancer), each at its own moment within ±10%, so rollouts and scale-outs rebalance long-lived clients without a wave of reconnects.
    #[arg(long, env = "WAITROOM_MAX_CONNECTION_AGE", default_value = "10m", value_parser = humantime::parse_duration)]
    pub max_connection_age: Duration,

    /// A client that stops reading is let go after this long: a WatchRank stream whose next message has waited this long unread (flow control holds it) is ended by the hub, and a connection whose socket has taken no bytes for this long is closed. Positions coalesce meanwhile, so what waits is one message a stream.
    #[arg(long, env = "WAITROOM_STALL_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub stall_timeout: Duration,

    /// A connection that has not sent the 24 bytes that open HTTP/2 within this long, or over TLS has not finished its handshake, is closed: a client that connects and never speaks, or says hello and stops, would otherwise hold two file descriptors until its age.
    #[arg(long, env = "WAITROOM_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub handshake_timeout: Duration,

    /// How often each replica compares its open streams with its share (the replicas' streams, learned through the store, divided by the ready replicas) and, holding more, closes connections to move the excess; 0 turns balancing off.
    #[arg(long, env = "WAITROOM_BALANCE_INTERVAL", default_value = "5s", value_parser = humantime::parse_duration)]
    pub balance_interval: Duration,

    /// Most of its streams a replica moves per balance interval, as a fraction (0 to 1): paces the reconnects.
    #[arg(long, env = "WAITROOM_BALANCE_STEP", default_value_t = 0.1, value_parser = unit_fraction)]
    pub balance_step: f64,

    /// How far above its share a replica may be, as a fraction of the share, before it moves streams: stops churn around the even split.
    #[arg(long, env = "WAITROOM_BALANCE_TOLERANCE", default_value_t = 0.1, value_parser = unit_fraction)]
    pub balance_tolerance: f64,

    /// Server certificate chain (PEM) for TLS on the gRPC port.
    #[arg(long, env = "WAITROOM_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// Private key (PEM) of the server certificate.
    #[arg(long, env = "WAITROOM_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// CA certificates (PEM) client certificates must chain to: mutual TLS.
    #[arg(long, env = "WAITROOM_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,

    /// Directory with API keys per role: files `frontend`, `booking`, `operator`, one key per line. Without it, every caller may call everything.
    #[arg(long, env = "WAITROOM_API_KEYS")]
    pub api_keys: Option<PathBuf>,

    /// Log format.
    #[arg(long, env = "WAITROOM_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

impl Config {
    /// The defaults, as if started with no flags and no environment. For
    /// tests and embedding.
    pub fn defaults() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            redis_url: None,
            redis_password: None,
            redis_cluster: false,
            redis_sentinel_master: None,
            redis_sentinel_password: None,
            redis_prefix: "wr".into(),
            redis_timeout: Duration::from_secs(1),
            redis_sub_lines: false,
            signing_key: None,
            verify_keys: Vec::new(),
            http_listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            token_issuer: "waitroom".into(),
            queues: Vec::new(),
            watch_interval: Duration::from_millis(250),
            position_pace: Duration::from_secs(1),
            position_budget: 50_000,
            admit_interval: Duration::from_millis(100),
            drain_delay: Duration::from_secs(5),
            shutdown_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(10),
            max_streams: 200_000,
            max_calls: 10_000,
            max_streams_per_connection: 20_000,
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(10),
            max_connection_age: Duration::from_secs(600),
            handshake_timeout: Duration::from_secs(10),
            stall_timeout: Duration::from_secs(30),
            balance_interval: Duration::from_secs(5),
            balance_step: 0.1,
            balance_tolerance: 0.1,
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            api_keys: None,
            log_format: LogFormat::Text,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// A queue declared at start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueSpec {
    pub id: QueueId,
    pub settings: QueueUpdate,
    /// Sub-lines the queue is spread over; fixed at creation, so only a
    /// queue this creates (or re-makes) takes it.
    pub shards: u32,
}

impl QueueSpec {
    /// Parses `ID[:key=value,...]`.
    pub fn parse(spec: &str) -> Result<Self, String> {
        let (id, settings) = spec.split_once(':').unwrap_or((spec, ""));
        let id = QueueId::parse(id.trim()).map_err(|e| format!("queue id {id:?}: {e}"))?;
        let mut update = QueueUpdate::default();
        let mut shards = 1;
        for pair in settings.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| format!("{pair:?} is not key=value"))?;
            let number = |v: &str| {
                v.parse::<u32>()
                    .map_err(|_| format!("{key}: {v:?} is not a whole number"))
            };
            let duration =
                |v: &str| humantime::parse_duration(v).map_err(|e| format!("{key}: {v:?}: {e}"));
            match key {
                "mode" => {
                    update.mode = Some(QueueMode::parse(value).ok_or_else(|| {
                        format!(
                            "mode: {value:?} is not one of queueing, pass_through, paused, closed"
                        )
                    })?)
                }
                "max_active" => update.max_active = Some(number(value)?),
                "admit_per_second" => update.admit_per_second = Some(number(value)?),
                "admission_ttl" => update.admission_ttl = Some(duration(value)?),
                "heartbeat_timeout" => update.heartbeat_timeout = Some(duration(value)?),
                "prequeue_window" => update.prequeue_window = Some(duration(value)?),
                "shards" => shards = number(value)?,
                "opens_at" => {
                    let at = humantime::parse_rfc3339_weak(value).map_err(|e| {
                        format!(
                            "opens_at: {value:?}: {e} (use RFC 3339, e.g. 2026-12-01T18:00:00Z)"
                        )
                    })?;
                    let ms = at
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_err(|_| format!("opens_at: {value:?} is before 1970"))?
                        .as_millis() as u64;
                    update.opens_at = Some(Some(ms));
                }
                other => return Err(format!("unknown queue setting {other:?}")),
            }
        }
        let spec = Self {
            id,
            settings: update,
            shards,
        };
        spec.config(0)
            .check()
            .map_err(|(f, e)| format!("{f}: {e}"))?;
        Ok(spec)
    }

    /// The queue this declares, created at `now_ms`.
    pub fn config(&self, now_ms: u64) -> QueueConfig {
        let mut config = QueueConfig::new(self.id.clone()).created(now_ms);
        config.apply(&self.settings);
        config.shards = self.shards;
        config
    }
}

/// A duration above zero: a period of zero would have a task spin.
fn positive_duration(value: &str) -> Result<Duration, String> {
    match humantime::parse_duration(value) {
        Ok(d) if d.is_zero() => Err("must be more than zero".into()),
        Ok(d) => Ok(d),
        Err(e) => Err(e.to_string()),
    }
}

fn unit_fraction(value: &str) -> Result<f64, String> {
    match value.parse::<f64>() {
        Ok(f) if (0.0..=1.0).contains(&f) => Ok(f),
        Ok(_) => Err("must be between 0 and 1".into()),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flag_given_again_wins_over_the_first() {
        let config = Config::try_parse_from([
            "waitroom",
            "--shutdown-timeout",
            "1s",
            "--shutdown-timeout",
            "10s",
        ])
        .unwrap();
        assert_eq!(config.shutdown_timeout, Duration::from_secs(10));
    }

    #[test]
    fn periods_must_be_more_than_zero() {
        assert_eq!(positive_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(positive_duration("0ms").is_err());
        assert!(positive_duration("soon").is_err());
    }

    #[test]
    fn queue_specs_parse_ids_and_settings() {
        let spec = QueueSpec::parse(
            "sale:max_active=100, admit_per_second=50,admission_ttl=5m,mode=paused",
        )
        .unwrap();
        let config = spec.config(7);
        assert_eq!(config.id.as_str(), "sale");
        assert_eq!(config.max_active, 100);
        assert_eq!(config.admit_per_second, 50);
        assert_eq!(config.admission_ttl, Duration::from_secs(300));
        assert_eq!(config.mode, QueueMode::Paused);
        assert_eq!(config.created_at_ms, 7);
        assert_eq!(QueueSpec::parse("plain").unwrap().config(0).max_active, 0);
        assert_eq!(QueueSpec::parse("plain").unwrap().config(0).shards, 1);
        assert_eq!(
            QueueSpec::parse("wide:shards=4").unwrap().config(0).shards,
            4
        );
    }

    #[test]
    fn queue_specs_refuse_what_they_cannot_honour() {
        for bad in [
            "",
            "a b",
            "q:max_active=-1",
            "q:colour=red",
            "q:mode=open",
            "q:admission_ttl=0s",
            "q:x",
            "q:shards=0",
            "q:shards=17",
        ] {
            assert!(QueueSpec::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
