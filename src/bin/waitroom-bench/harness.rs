//! The service under test: the real `waitroom` binary in a process of its
//! own (so its CPU time and memory are its own), on loopback, with its own
//! `redis-server` for the Redis store.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::ValueEnum;
use tonic::transport::Channel;
use waitroom::pb::queue_admin_service_client::QueueAdminServiceClient;
use waitroom::pb::queue_service_client::QueueServiceClient;
use waitroom::store::{RedisOptions, RedisStore};
use waitroom::testkit::{RedisServer, free_port};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Store {
    Redis,
    Memory,
}

/// The service process and, for the Redis store, its redis-server.
pub struct Service {
    pub addr: std::net::SocketAddr,
    /// Its HTTP port (metrics, JWKS).
    pub http_port: u16,
    child: Child,
    _redis: Option<RedisServer>,
}

impl Service {
    /// Starts `waitroom` (found beside this binary) and waits until it
    /// answers.
    pub async fn start(store: Store, extra: &[&str]) -> anyhow::Result<Self> {
        let redis = match store {
            Store::Redis => Some(RedisServer::start().map_err(anyhow::Error::msg)?),
            Store::Memory => None,
        };
        let url = redis.as_ref().map(RedisServer::url);
        Self::start_with(redis, url, extra).await
    }

    /// Another replica on `first`'s Redis (which `first` keeps running).
    pub async fn start_beside(first: &Service, extra: &[&str]) -> anyhow::Result<Self> {
        let url = first.redis().map(RedisServer::url);
        anyhow::ensure!(url.is_some(), "replicas share a Redis store");
        Self::start_with(None, url, extra).await
    }

    async fn start_with(
        redis: Option<RedisServer>,
        redis_url: Option<String>,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        let binary = server_binary()?;
        let port = free_port().map_err(anyhow::Error::msg)?;
        let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse()?;
        let http_port = free_port().map_err(anyhow::Error::msg)?;
        let mut command = Command::new(&binary);
        command
            .args([
                "--listen",
                &addr.to_string(),
                "--http-listen",
                &format!("127.0.0.1:{http_port}"),
                // Benchmarks put many streams on few connections on
                // purpose; the per-connection limit is not what they
                // measure.
                "--max-streams-per-connection",
                "1000000",
            ])
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        if let Some(url) = &redis_url {
            command.args(["--redis-url", url, "--redis-timeout", "5s"]);
        }
        let child = command
            .spawn()
            .map_err(|e| anyhow::anyhow!("starting {}: {e}", binary.display()))?;
        let service = Self {
            addr,
            http_port,
            child,
            _redis: redis,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while service.channel().await.is_err() {
            anyhow::ensure!(
                Instant::now() < deadline,
                "{} did not start",
                binary.display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(service)
    }

    pub async fn channel(&self) -> anyhow::Result<Channel> {
        // Large receive windows: admission responses carry hundreds of
        // kilobytes of tokens, more than HTTP/2's default 64 KiB window;
        // and with 12,500 streams on a connection, a connection window of
        // a few megabytes was seen to stall for good (docs/benchmarks.md).
        Ok(Channel::from_shared(format!("http://{}", self.addr))?
            .initial_stream_window_size(Some(4 << 20))
            .initial_connection_window_size(Some((1 << 31) - 1))
            .connect()
            .await?)
    }

    /// `n` connections to share among a scenario's clients.
    pub async fn channels(&self, n: usize) -> anyhow::Result<Vec<Channel>> {
        let mut channels = Vec::with_capacity(n);
        for _ in 0..n {
            channels.push(self.channel().await?);
        }
        Ok(channels)
    }

    pub async fn client(&self) -> anyhow::Result<QueueServiceClient<Channel>> {
        Ok(QueueServiceClient::new(self.channel().await?).max_decoding_message_size(64 << 20))
    }

    /// Creates a queue with the given settings.
    pub async fn create_queue(&self, queue: waitroom::pb::Queue) -> anyhow::Result<()> {
        self.admin()
            .await?
            .create_queue(waitroom::pb::CreateQueueRequest { queue: Some(queue) })
            .await?;
        Ok(())
    }

    pub async fn admin(&self) -> anyhow::Result<QueueAdminServiceClient<Channel>> {
        Ok(QueueAdminServiceClient::new(self.channel().await?))
    }

    /// The service's own Redis, for the Redis-side figures.
    pub fn redis(&self) -> Option<&RedisServer> {
        self._redis.as_ref()
    }

    /// CPU time the service process has used so far (user + system).
    pub fn cpu_time(&self) -> anyhow::Result<Duration> {
        process_cpu_time(&self.child.id().to_string())
    }

    /// A metric's value from the service's `/metrics` (the first sample
    /// whose line starts with `name`).
    pub async fn metric(&self, name: &str) -> anyhow::Result<f64> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", self.http_port)).await?;
        tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
            .await?;
        let mut text = String::new();
        tcp.read_to_string(&mut text).await?;
        text.lines()
            .find(|line| line.starts_with(name))
            .and_then(|line| line.rsplit(' ').next())
            .and_then(|value| value.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("no {name} in /metrics"))
    }

    /// Resident memory of the service process.
    pub fn rss_bytes(&self) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        let kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .ok_or_else(|| anyhow::anyhow!("no VmRSS"))?
            .parse::<u64>()?;
        Ok(kib * 1024)
    }
}

impl Drop for Service {
    /// Stops the service as Kubernetes would (SIGTERM, then SIGKILL), so a
    /// profiler wrapping it gets to write its report.
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn server_binary() -> anyhow::Result<PathBuf> {
    let here = std::env::current_exe()?;
    let binary = here.with_file_name("waitroom");
    anyhow::ensure!(
        binary.exists(),
        "{} not found: build it first (cargo build --release --bins --features testkit)",
        binary.display()
    );
    Ok(binary)
}

/// Runs `count` calls of `call` spread over `clients` concurrent clients.
pub async fn spread<F, Fut>(clients: usize, count: usize, call: F) -> anyhow::Result<()>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send,
{
    let call = Arc::new(call);
    let mut tasks = Vec::new();
    for c in 0..clients {
        let call = Arc::clone(&call);
        tasks.push(tokio::spawn(async move {
            let mut i = c;
            while i < count {
                call(i).await?;
                i += clients;
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(())
}

/// A store on the Redis at `url` under the service's own key prefix, for
/// scenarios that drive its scripts beside the service.
pub async fn redis_store(url: &str) -> anyhow::Result<RedisStore> {
    Ok(RedisStore::connect(&RedisOptions {
        url: url.to_owned(),
        password: None,
        cluster: false,
        prefix: "wr".into(),
        timeout: Duration::from_secs(5),
        sentinel_master: None,
        sentinel_password: None,
    })
    .await?)
}

/// Enqueues `count` users of `queue`, the `n`th named `user(n)`, from
/// `clients` concurrent callers sharing `channels`.
pub async fn enqueue_users<U>(
    channels: &Arc<Vec<Channel>>,
    clients: usize,
    queue: &'static str,
    count: usize,
    user: U,
) -> anyhow::Result<()>
where
    U: Fn(usize) -> String + Send + Sync + 'static,
{
    let channels = Arc::clone(channels);
    spread(clients, count, move |n| {
        let mut client = QueueServiceClient::new(channels[n % channels.len()].clone());
        let user_id = user(n);
        async move {
            client
                .enqueue(waitroom::pb::EnqueueRequest {
                    queue_id: queue.into(),
                    user_id,
                    receipt: String::new(),
                })
                .await?;
            Ok(())
        }
    })
    .await
}

/// As [`enqueue_users`], keeping each user's receipt (by `n`), as a page
/// keeps the one its `Enqueue` answered.
pub async fn enqueue_receipts<U>(
    channels: &Arc<Vec<Channel>>,
    clients: usize,
    queue: &'static str,
    count: usize,
    user: U,
) -> anyhow::Result<Vec<String>>
where
    U: Fn(usize) -> String + Send + Sync + 'static,
{
    let answers = enqueue_answers(channels, clients, queue, count, user).await?;
    Ok(answers.into_iter().map(|a| a.place.receipt).collect())
}

/// What one `Enqueue` answered, and when it was sent and answered.
#[derive(Clone)]
pub struct Answer {
    pub place: waitroom::pb::Place,
    pub sent: Instant,
    pub answered: Instant,
}

/// As [`enqueue_users`], keeping each user's answer (by `n`).
pub async fn enqueue_answers<U>(
    channels: &Arc<Vec<Channel>>,
    clients: usize,
    queue: &'static str,
    count: usize,
    user: U,
) -> anyhow::Result<Vec<Answer>>
where
    U: Fn(usize) -> String + Send + Sync + 'static,
{
    let channels = Arc::clone(channels);
    let answers: Arc<std::sync::Mutex<Vec<Option<Answer>>>> =
        Arc::new(std::sync::Mutex::new(vec![None; count]));
    let kept = Arc::clone(&answers);
    spread(clients, count, move |n| {
        let mut client = QueueServiceClient::new(channels[n % channels.len()].clone());
        let (user_id, kept) = (user(n), Arc::clone(&kept));
        async move {
            let sent = Instant::now();
            let place = client
                .enqueue(waitroom::pb::EnqueueRequest {
                    queue_id: queue.into(),
                    user_id,
                    receipt: String::new(),
                })
                .await?
                .into_inner()
                .place
                .unwrap_or_default();
            let answered = Instant::now();
            if let Ok(mut kept) = kept.lock() {
                kept[n] = Some(Answer {
                    place,
                    sent,
                    answered,
                });
            }
            Ok(())
        }
    })
    .await?;
    let answers = std::mem::take(&mut *answers.lock().map_err(|_| anyhow::anyhow!("poisoned"))?);
    answers
        .into_iter()
        .map(|a| a.ok_or_else(|| anyhow::anyhow!("an enqueue went unanswered")))
        .collect()
}

/// CPU time a process has used so far (user + system); `pid` may be "self".
pub fn process_cpu_time(pid: &str) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields of the line, in USER_HZ ticks (100 on Linux).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> anyhow::Result<u64> {
        Ok(fields
            .get(i)
            .ok_or_else(|| anyhow::anyhow!("short /proc stat"))?
            .parse()?)
    };
    Ok(Duration::from_millis((ticks(11)? + ticks(12)?) * 10))
}
