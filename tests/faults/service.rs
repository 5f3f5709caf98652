//! The service as an operator runs it: the release of this crate's own
//! `waitroom` binary, a process of its own, killed for real.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use waitroom::pb;
use waitroom::pb::queue_admin_service_client::QueueAdminServiceClient;
use waitroom::pb::queue_service_client::QueueServiceClient;
use waitroom::testkit::free_port;

/// The Redis timeout every service of the suite runs with.
pub const REDIS_TIMEOUT: Duration = Duration::from_millis(500);

/// One signing key for every replica of a test, so each verifies the
/// others' tokens.
pub fn shared_key(dir: &std::path::Path) -> PathBuf {
    use ed25519_dalek::pkcs8::EncodePrivateKey;
    let path = dir.join("signing-key.pem");
    if !path.exists() {
        let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
        let pem = key.to_pkcs8_pem(Default::default()).expect("a PEM key");
        std::fs::write(&path, pem.as_bytes()).expect("writing the key");
    }
    path
}

/// A scratch directory for one test.
pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("waitroom-faults-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    dir
}

pub struct Service {
    child: Child,
    pub addr: SocketAddr,
    /// The plain-HTTP port: metrics and health.
    pub http: SocketAddr,
    pub log: PathBuf,
}

impl Service {
    /// Starts `waitroom` on free ports against `redis_url` (comma-separated
    /// seeds with `cluster`) and waits until it is ready.
    pub async fn start(
        redis_url: &str,
        prefix: &str,
        dir: &std::path::Path,
        extra: &[&str],
    ) -> Self {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port().unwrap())
            .parse()
            .unwrap();
        let http: SocketAddr = format!("127.0.0.1:{}", free_port().unwrap())
            .parse()
            .unwrap();
        let log = dir.join(format!("service-{}.log", addr.port()));
        let file = std::fs::File::create(&log).expect("a log file");
        let child = Command::new(env!("CARGO_BIN_EXE_waitroom"))
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--http-listen")
            .arg(http.to_string())
            .args(["--redis-url", redis_url, "--redis-prefix", prefix])
            .arg("--redis-timeout")
            .arg(format!("{}ms", REDIS_TIMEOUT.as_millis()))
            .arg("--signing-key")
            .arg(shared_key(dir))
            .args(["--drain-delay", "0s", "--shutdown-timeout", "1s"])
            .args(extra)
            .env("RUST_LOG", "waitroom=warn")
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("starting the waitroom binary");
        let service = Self {
            child,
            addr,
            http,
            log,
        };
        service
            .wait_until(ServingStatus::Serving, Duration::from_secs(20))
            .await;
        service
    }

    pub fn channel(&self) -> Channel {
        Endpoint::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect_timeout(Duration::from_secs(1))
            .connect_lazy()
    }

    /// The last `lines` lines of the service's log.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    pub fn client(&self) -> QueueServiceClient<Channel> {
        QueueServiceClient::new(self.channel()).max_decoding_message_size(64 << 20)
    }

    pub fn admin(&self) -> QueueAdminServiceClient<Channel> {
        QueueAdminServiceClient::new(self.channel())
    }

    /// Readiness (`waitroom.v1.QueueService`), or `None` without an answer.
    pub async fn readiness(&self) -> Option<ServingStatus> {
        let mut health = HealthClient::new(self.channel());
        let mut request = tonic::Request::new(HealthCheckRequest {
            service: "waitroom.v1.QueueService".into(),
        });
        request.set_timeout(Duration::from_millis(500));
        let answer = health.check(request).await.ok()?;
        ServingStatus::try_from(answer.into_inner().status).ok()
    }

    pub async fn wait_until(&self, status: ServingStatus, limit: Duration) -> Duration {
        let started = Instant::now();
        crate::wait::until("the readiness wanted", limit, || async {
            match self.readiness().await {
                Some(now) if now == status => Ok(()),
                now => Err(format!(
                    "{now:?}, not {status:?} (log: {})",
                    self.log.display()
                )),
            }
        })
        .await;
        started.elapsed()
    }

    /// Creates the queue as an operator would: a store that answers
    /// `UNAVAILABLE` at once after the service turned ready (a replica's
    /// acknowledgement late, so the master refuses writes for a moment) is
    /// asked again; a retry finding the queue made by the first try is done.
    pub async fn create_queue(&self, queue: pb::Queue) {
        let mut tried = false;
        crate::wait::until("create_queue", Duration::from_secs(20), || {
            let request = pb::CreateQueueRequest {
                queue: Some(queue.clone()),
            };
            let again = std::mem::replace(&mut tried, true);
            async move {
                match self.admin().create_queue(request).await {
                    Ok(_) => Ok(()),
                    Err(status) if again && status.code() == tonic::Code::AlreadyExists => Ok(()),
                    Err(status) if status.code() == tonic::Code::Unavailable => {
                        Err(format!("{status:?}"))
                    }
                    Err(status) => panic!("create_queue: {status:?}"),
                }
            }
        })
        .await;
    }

    /// The queue's figures, as the admin service reports them.
    pub async fn stats(&self, queue: &str) -> pb::QueueStats {
        self.admin()
            .get_queue_stats(pb::GetQueueStatsRequest {
                queue_id: queue.into(),
            })
            .await
            .expect("get_queue_stats")
            .into_inner()
            .stats
            .expect("stats in the answer")
    }

    /// A figure of this process's `/metrics` without labels, e.g.
    /// `waitroom_open_watchers`; `None` without an answer.
    pub async fn metric(&self, name: &str) -> Option<f64> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tcp = tokio::net::TcpStream::connect(self.http).await.ok()?;
        tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut body = String::new();
        tcp.read_to_string(&mut body).await.ok()?;
        body.lines().find_map(|line| {
            line.strip_prefix(name)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
    }

    /// Kills the process (`SIGKILL`): calls in flight get no answer.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A queue with the defaults and the given id.
pub fn queue(id: &str) -> pb::Queue {
    pb::Queue {
        id: id.into(),
        ..Default::default()
    }
}

/// A request with a deadline: a hang shows as `DEADLINE_EXCEEDED`.
pub fn within<T>(message: T, deadline: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(deadline);
    request
}
