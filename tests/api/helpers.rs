//! Starting real things: `redis-server` processes on free ports and the
//! service itself, on port 0, with an injected clock.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::Streaming;
use tonic::transport::Channel;
use waitroom::config::Config;
use waitroom::domain::{Clock, ManualClock};
use waitroom::pb;
use waitroom::pb::queue_admin_service_client::QueueAdminServiceClient;
use waitroom::pb::queue_service_client::QueueServiceClient;
use waitroom::startup::Application;
use waitroom::store::{RedisOptions, RedisStore};
use waitroom::testkit::RedisServer;

/// A `redis-server` of our own on a free loopback port, stopped on drop.
pub struct TestRedis(RedisServer);

impl TestRedis {
    /// Starts a server. Panics, failing the test, when Redis cannot be
    /// started: these tests never skip.
    pub fn start() -> Self {
        Self(RedisServer::start().unwrap_or_else(|e| panic!("{e}")))
    }

    /// Starts a server with extra `redis-server` arguments.
    pub fn start_with(extra: &[&str]) -> Self {
        let port = waitroom::testkit::free_port().unwrap_or_else(|e| panic!("{e}"));
        Self(RedisServer::start_with(port, extra).unwrap_or_else(|e| panic!("{e}")))
    }

    /// Starts a server on a given port (to restart one that was stopped).
    pub fn start_on(port: u16) -> Self {
        Self(RedisServer::start_on(port).unwrap_or_else(|e| panic!("{e}")))
    }

    pub fn port(&self) -> u16 {
        self.0.port
    }

    /// How many times the server has run `command` (`INFO commandstats`).
    pub fn calls(&self, command: &str) -> u64 {
        self.0.calls(command).unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn url(&self) -> String {
        self.0.url()
    }

    /// Stops the server now (to test outages).
    pub fn stop(&mut self) {
        self.0.stop();
    }

    /// Commands the server has processed since it started.
    pub fn commands_processed(&self) -> u64 {
        let mut conn = redis::Client::open(self.url())
            .and_then(|client| client.get_connection())
            .expect("connecting to the test Redis");
        let info: String = redis::cmd("INFO")
            .arg("stats")
            .query(&mut conn)
            .expect("INFO stats");
        info.lines()
            .find_map(|l| l.strip_prefix("total_commands_processed:"))
            .and_then(|v| v.trim().parse().ok())
            .expect("total_commands_processed in INFO stats")
    }

    /// A Redis store with a fresh key prefix.
    pub async fn store(&self) -> RedisStore {
        self.store_with_prefix(&fresh_prefix()).await
    }

    /// A Redis store with the given key prefix: a second one of a prefix
    /// is another replica of the same deployment.
    pub async fn store_with_prefix(&self, prefix: &str) -> RedisStore {
        RedisStore::connect(&RedisOptions {
            url: self.url(),
            password: None,
            cluster: false,
            prefix: prefix.to_owned(),
            timeout: Duration::from_secs(2),
            sentinel_master: None,
            sentinel_password: None,
        })
        .await
        .expect("connecting to the test Redis")
    }
}

pub fn fresh_prefix() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "t{}x{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A running service.
pub struct TestApp {
    /// The instance's watch hub, to wait for its refreshes.
    pub hub: Arc<waitroom::watch::WatchHub>,
    /// The queue worker's completed passes.
    worker_passes: Box<dyn Fn() -> u64 + Send + Sync>,
    pub addr: std::net::SocketAddr,
    pub http_addr: std::net::SocketAddr,
    pub clock: Arc<ManualClock>,
    pub jwks: String,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TestApp {
    /// The service on its own new Redis.
    pub async fn on_redis() -> (Self, TestRedis) {
        let redis = TestRedis::start();
        let app = Self::spawn(Self::redis_config(&redis.url(), &fresh_prefix())).await;
        (app, redis)
    }

    /// The service, not waited for, on a Redis that may evict keys (so it
    /// stays unready while that Redis answers every call).
    pub async fn on_evicting_redis() -> (Self, TestRedis) {
        let redis =
            TestRedis::start_with(&["--maxmemory", "256mb", "--maxmemory-policy", "allkeys-lru"]);
        let app = Self::start(
            Self::redis_config(&redis.url(), &fresh_prefix()),
            Arc::new(ManualClock::new(now_ms())),
        )
        .await;
        (app, redis)
    }

    /// The service on the in-memory store.
    pub async fn on_memory() -> Self {
        Self::spawn(Self::base_config()).await
    }

    pub fn base_config() -> Config {
        let mut config = Config::defaults();
        config.listen = "127.0.0.1:0".parse().expect("an address");
        config.http_listen = "127.0.0.1:0".parse().expect("an address");
        config.watch_interval = Duration::from_millis(50);
        config.admit_interval = Duration::from_millis(10);
        config.drain_delay = Duration::ZERO;
        config.shutdown_timeout = Duration::from_secs(2);
        // Replicas of a test move no streams between them unless the test
        // asks.
        config.balance_interval = Duration::ZERO;
        // Every change at once, so tests see each position; the pacing has
        // tests of its own.
        config.position_pace = Duration::ZERO;
        config
    }

    pub fn redis_config(url: &str, prefix: &str) -> Config {
        let mut config = Self::base_config();
        config.redis_url = Some(url.to_owned());
        config.redis_prefix = prefix.to_owned();
        config.redis_timeout = Duration::from_millis(500);
        config
    }

    pub async fn spawn(config: Config) -> Self {
        Self::spawn_with_clock(config, Arc::new(ManualClock::new(now_ms()))).await
    }

    /// Starts the service and waits until it reports ready, as a load
    /// balancer would before sending traffic.
    pub async fn spawn_with_clock(config: Config, clock: Arc<ManualClock>) -> Self {
        let app = Self::start(config, clock).await;
        app.wait_until_ready().await;
        app
    }

    /// Waits until readiness (`waitroom.v1.QueueService`) is SERVING.
    /// The queue service's readiness, as a probe sees it.
    pub async fn readiness(
        &self,
    ) -> Result<tonic_health::pb::health_check_response::ServingStatus, tonic::Status> {
        let mut health = tonic_health::pb::health_client::HealthClient::new(self.channel().await);
        health
            .check(tonic_health::pb::HealthCheckRequest {
                service: "waitroom.v1.QueueService".into(),
            })
            .await
            .map(|r| r.into_inner().status())
    }

    pub async fn wait_until_ready(&self) {
        use tonic_health::pb::health_check_response::ServingStatus;
        until("the service ready", Duration::from_secs(10), || async {
            match self.readiness().await {
                Ok(ServingStatus::Serving) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
        .await
    }

    /// Starts the service without waiting for readiness.
    pub async fn start(config: Config, clock: Arc<ManualClock>) -> Self {
        show_service_logs();
        let app = Application::build_with_clock(config, Arc::clone(&clock) as Arc<dyn Clock>)
            .await
            .expect("building the service");
        let addr = app.local_addr();
        let http_addr = app.http_addr();
        let jwks = app.jwks_json().to_owned();
        let hub = app.watch_hub();
        let worker_passes = Box::new(app.worker_passes());
        let (stop, stopped) = oneshot::channel::<()>();
        let handle = tokio::spawn(app.run_until_stopped(async {
            let _ = stopped.await;
        }));
        Self {
            hub,
            worker_passes,
            addr,
            http_addr,
            clock,
            jwks,
            stop: Some(stop),
            handle: Some(handle),
        }
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .expect("a URI")
            .connect()
            .await
            .expect("connecting to the service")
    }

    /// A plain-text channel that connects on first use, for ports that may
    /// refuse it.
    pub fn channel_unchecked(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .expect("a URI")
            .connect_lazy()
    }

    pub async fn client(&self) -> QueueServiceClient<Channel> {
        QueueServiceClient::new(self.channel().await)
    }

    pub async fn admin(&self) -> QueueAdminServiceClient<Channel> {
        QueueAdminServiceClient::new(self.channel().await)
    }

    /// Creates a queue with the given settings over the admin API.
    pub async fn create_queue(&self, queue: pb::Queue) -> pb::Queue {
        self.admin()
            .await
            .create_queue(pb::CreateQueueRequest { queue: Some(queue) })
            .await
            .expect("creating a queue")
            .into_inner()
            .queue
            .expect("the created queue")
    }

    /// Stops the service and waits for it to finish.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(handle) = self.handle.take() {
            let _ = handle.await;
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

pub fn queue(id: &str) -> pb::Queue {
    pb::Queue {
        id: id.to_owned(),
        ..Default::default()
    }
}

pub fn enqueue_request(queue: &str, user: &str) -> pb::EnqueueRequest {
    pb::EnqueueRequest {
        queue_id: queue.to_owned(),
        user_id: user.to_owned(),
        receipt: String::new(),
    }
}

pub fn rank_request(queue: &str, user: &str) -> pb::GetRankRequest {
    pb::GetRankRequest {
        queue_id: queue.to_owned(),
        user_id: user.to_owned(),
        receipt: String::new(),
    }
}

pub fn watch_request(queue: &str, user: &str) -> pb::WatchRankRequest {
    pb::WatchRankRequest {
        queue_id: queue.to_owned(),
        user_id: user.to_owned(),
        receipt: String::new(),
    }
}

/// A user's open `WatchRank` stream.
pub async fn open(app: &TestApp, queue: &str, user: &str) -> Streaming<pb::WatchRankResponse> {
    app.client()
        .await
        .watch_rank(watch_request(queue, user))
        .await
        .expect("watch_rank")
        .into_inner()
}

pub fn admit_request(queue: &str, max_count: u32) -> pb::AdmitBatchRequest {
    pb::AdmitBatchRequest {
        queue_id: queue.to_owned(),
        max_count,
        request_id: String::new(),
    }
}

/// The place of an enqueue response.
pub async fn enqueue(
    client: &mut QueueServiceClient<Channel>,
    queue: &str,
    user: &str,
) -> pb::Place {
    client
        .enqueue(enqueue_request(queue, user))
        .await
        .unwrap_or_else(|s| panic!("enqueue {user}: {s:?}"))
        .into_inner()
        .place
        .expect("a place")
}

pub async fn rank(client: &mut QueueServiceClient<Channel>, queue: &str, user: &str) -> pb::Place {
    client
        .get_rank(rank_request(queue, user))
        .await
        .unwrap_or_else(|s| panic!("get_rank {user}: {s:?}"))
        .into_inner()
        .place
        .expect("a place")
}

pub async fn admit(
    client: &mut QueueServiceClient<Channel>,
    queue: &str,
    n: u32,
) -> Vec<pb::AdmittedUser> {
    client
        .admit_batch(admit_request(queue, n))
        .await
        .unwrap_or_else(|s| panic!("admit_batch: {s:?}"))
        .into_inner()
        .admitted
}

/// The `ErrorInfo.reason` of a status.
pub fn reason(status: &tonic::Status) -> String {
    use tonic_types::StatusExt;
    status
        .get_details_error_info()
        .map(|info| info.reason)
        .unwrap_or_default()
}

/// The field a `BadRequest` detail names.
pub fn bad_field(status: &tonic::Status) -> String {
    use tonic_types::StatusExt;
    status
        .get_details_bad_request()
        .and_then(|b| b.field_violations.first().map(|v| v.field.clone()))
        .unwrap_or_default()
}

pub async fn leave(client: &mut QueueServiceClient<Channel>, queue: &str, user: &str) -> bool {
    client
        .leave(pb::LeaveRequest {
            queue_id: queue.to_owned(),
            user_id: user.to_owned(),
        })
        .await
        .unwrap_or_else(|s| panic!("leave {user}: {s:?}"))
        .into_inner()
        .left
}

pub async fn complete(client: &mut QueueServiceClient<Channel>, queue: &str, user: &str) -> bool {
    client
        .complete_admission(pb::CompleteAdmissionRequest {
            queue_id: queue.to_owned(),
            user_id: user.to_owned(),
        })
        .await
        .unwrap_or_else(|s| panic!("complete_admission {user}: {s:?}"))
        .into_inner()
        .completed
}

impl TestApp {
    /// Waits until this instance's copy of `queue`'s line was refreshed by
    /// a read begun after this call: what its streams and polls show is as
    /// of now at least. Instead of sleeping for an interval.
    pub async fn refreshed(&self, queue: &str) {
        let queue = waitroom::domain::QueueId::parse(queue).expect("a queue id");
        let start = self.hub.refreshes(&queue);
        wait_until("a refresh of the line", Duration::from_secs(10), || {
            let now = self.hub.refreshes(&queue);
            async move { now >= start + 2 }
        })
        .await;
    }

    /// Waits until the queue worker has made a pass begun after this call:
    /// admission, the draw and releases have acted on the clock as it is
    /// now. Instead of sleeping for an interval.
    pub async fn worked(&self) {
        let start = (self.worker_passes)();
        wait_until(
            "a pass of the queue worker",
            Duration::from_secs(10),
            || {
                let now = (self.worker_passes)();
                async move { now >= start + 2 }
            },
        )
        .await;
    }

    /// Moves the clock on by `ms` a second at a time, with a pass of the
    /// queue worker after each second, as time passes for a replica that
    /// stays up: a longer jump is a gap in the reaper's passes, which the
    /// liveness rule takes for an outage.
    pub async fn pass_time(&self, ms: u64) {
        // Whole seconds, then the rest (1 to 2 s) in one step, so the last
        // pass lands at the time asked for (the worker reaps a queue once a
        // second of the clock).
        let mut left = ms;
        while left > 0 {
            let step = if left > 2_000 { 1_000 } else { left };
            self.clock.advance_ms(step);
            self.worked().await;
            left -= step;
        }
    }

    pub async fn stats(&self, queue: &str) -> pb::QueueStats {
        self.admin()
            .await
            .get_queue_stats(pb::GetQueueStatsRequest {
                queue_id: queue.to_owned(),
            })
            .await
            .expect("get_queue_stats")
            .into_inner()
            .stats
            .expect("stats")
    }

    pub async fn get_queue(&self, queue: &str) -> pb::Queue {
        self.admin()
            .await
            .get_queue(pb::GetQueueRequest {
                queue_id: queue.to_owned(),
            })
            .await
            .expect("get_queue")
            .into_inner()
            .queue
            .expect("a queue")
    }

    /// Flips a queue's mode, as an operator would.
    pub async fn set_mode(&self, queue: &str, mode: pb::QueueMode) {
        self.admin()
            .await
            .update_queue(pb::UpdateQueueRequest {
                queue: Some(pb::Queue {
                    id: queue.to_owned(),
                    mode: mode as i32,
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["mode".into()],
                }),
            })
            .await
            .expect("update_queue");
    }
}

/// Changes one field of a queue (`queue` carries the new value, `path`
/// names it), as an operator does.
pub async fn update(
    app: &TestApp,
    queue: pb::Queue,
    path: &str,
) -> Result<pb::Queue, tonic::Status> {
    app.admin()
        .await
        .update_queue(pb::UpdateQueueRequest {
            queue: Some(queue),
            update_mask: Some(prost_types::FieldMask {
                paths: vec![path.into()],
            }),
        })
        .await
        .map(|answer| answer.into_inner().queue.unwrap_or_default())
}

/// A plain HTTP/1.1 GET on the service's HTTP port: (status line, headers, body).
pub async fn http_get(app: &TestApp, path: &str) -> (String, String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(app.http_addr)
        .await
        .expect("connecting to the HTTP port");
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("sending the request");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .expect("reading the response");
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let (status, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    (
        status.to_owned(),
        headers.to_ascii_lowercase(),
        body.to_owned(),
    )
}

pub use crate::wait::{every, until, wait_until};

/// The services' warnings and errors (an internal error's cause is only
/// logged) go to the test's output, shown when a test fails.
fn show_service_logs() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "waitroom=error".into()),
            )
            .with_test_writer()
            .try_init();
    });
}

/// Two replicas on one Redis and one clock.
pub async fn two_replicas() -> (TestApp, TestApp, TestRedis, Arc<ManualClock>) {
    let redis = TestRedis::start();
    let prefix = fresh_prefix();
    let clock = Arc::new(ManualClock::new(now_ms()));
    let one = TestApp::spawn_with_clock(
        TestApp::redis_config(&redis.url(), &prefix),
        Arc::clone(&clock),
    )
    .await;
    let two = TestApp::spawn_with_clock(
        TestApp::redis_config(&redis.url(), &prefix),
        Arc::clone(&clock),
    )
    .await;
    (one, two, redis, clock)
}

/// A whole number of seconds, as the API takes durations.
pub fn secs(seconds: i64) -> Option<prost_types::Duration> {
    Some(prost_types::Duration { seconds, nanos: 0 })
}

/// Verifies a token online, consuming it when asked.
pub async fn verify(
    client: &mut QueueServiceClient<Channel>,
    queue: &str,
    token: &str,
    consume: bool,
) -> pb::VerifyAdmissionResponse {
    client
        .verify_admission(pb::VerifyAdmissionRequest {
            queue_id: queue.into(),
            token: token.into(),
            consume,
            ..Default::default()
        })
        .await
        .expect("verify_admission")
        .into_inner()
}
