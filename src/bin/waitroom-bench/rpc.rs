//! `enqueue` and `get-rank` against two baselines measured in the same run
//! with the same clients: the trivial RPC (a health check served by the
//! service's own gRPC stack and layers) and a bare tonic server with no
//! layers at all (a health handler in this process), so the cost of the
//! service's own layers shows. `get-rank` polls a crowd of distinct users
//! (100,000 by default) who all polled once before the measurement, in
//! random order. For
//! `enqueue`, also the enqueue script alone under `redis-benchmark`, and the
//! latency at half the maximum throughput.

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use waitroom::domain::QueueId;
use waitroom::pb;
use waitroom::pb::queue_service_client::QueueServiceClient;
use waitroom::store::RedisStore;

use crate::harness::{Service, Store, enqueue_users, process_cpu_time};

use crate::load::{self, Measured};

#[derive(clap::Args, Clone)]
pub struct Args {
    /// Concurrent clients (each its own HTTP/2 stream; connections shared).
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Connections the clients share.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    #[arg(long, value_enum, default_value_t = Store::Redis)]
    store: Store,
    /// `get-rank`: distinct users in line, polling in random order.
    #[arg(long, default_value_t = 100_000)]
    pollers: u64,
    /// The queue's heartbeat timeout. A poll is answered from the instance's
    /// copy while the user's recorded sign of life is younger than half of
    /// it: a crowd so large that each user polls this instance less often
    /// than that is looked up in the store.
    #[arg(long, default_value = "2m", value_parser = humantime::parse_duration)]
    heartbeat: Duration,
    /// The queue's sub-lines (`Queue.shards`); above 1 the service runs
    /// with `--redis-sub-lines`.
    #[arg(long, default_value_t = 1)]
    shards: u32,
}

#[derive(Clone, Copy)]
pub enum Rpc {
    Enqueue,
    GetRank,
}

async fn baseline(channels: &Arc<Vec<Channel>>, args: &Args, duration: Duration) -> Measured {
    let channels = Arc::clone(channels);
    load::run(args.clients, duration, None, move |c, _| {
        let mut health = HealthClient::new(channels[c % channels.len()].clone());
        async move {
            health
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .is_ok()
        }
    })
    .await
}

/// A tonic server with nothing but a health service: no limits, auth,
/// metrics or tracing layers. Its address.
async fn bare_server() -> anyhow::Result<std::net::SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (_reporter, health) = tonic_health::server::health_reporter();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(health)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    Ok(addr)
}

pub async fn run(rpc: Rpc, args: Args) -> anyhow::Result<()> {
    let mut extra = vec!["--max-calls", "1000000"];
    if args.shards > 1 {
        extra.push("--redis-sub-lines");
    }
    let service = Service::start(args.store, &extra).await?;
    service
        .create_queue(pb::Queue {
            id: "bench".into(),
            shards: args.shards,
            heartbeat_timeout: Some(prost_types::Duration {
                seconds: args.heartbeat.as_secs() as i64,
                nanos: 0,
            }),
            ..Default::default()
        })
        .await?;
    let channels = Arc::new(service.channels(args.connections).await?);
    let duration = Duration::from_secs(args.seconds);
    let bare_addr = bare_server().await?;
    let mut bare_channels = Vec::new();
    for _ in 0..args.connections {
        bare_channels.push(
            Channel::from_shared(format!("http://{bare_addr}"))?
                .connect()
                .await?,
        );
    }
    let bare_channels = Arc::new(bare_channels);

    // Warm up connections and the scripts' cache.
    let _ = baseline(&channels, &args, Duration::from_secs(1)).await;
    let _ = baseline(&bare_channels, &args, Duration::from_secs(1)).await;

    let mut poller_bytes = None;
    if let Rpc::GetRank = rpc {
        enqueue_users(
            &channels,
            args.clients,
            "bench",
            args.pollers as usize,
            |n| format!("p{n}"),
        )
        .await?;
        // A crowd already polling: each user's first lookup went to the
        // store, later ones find the instance following the queue.
        let before = service.rss_bytes()?;
        let pollers = args.pollers;
        let first = Arc::clone(&channels);
        crate::harness::spread(args.clients, pollers as usize, move |n| {
            let mut client = QueueServiceClient::new(first[n % first.len()].clone());
            async move {
                client
                    .get_rank(pb::GetRankRequest {
                        queue_id: "bench".into(),
                        user_id: format!("p{n}"),
                        receipt: String::new(),
                    })
                    .await?;
                Ok(())
            }
        })
        .await?;
        poller_bytes = Some(service.rss_bytes()?.saturating_sub(before) as f64 / pollers as f64);
    }

    // The baseline and the RPC take turns, a second each, so a machine
    // whose speed drifts (a busy neighbour) slows both alike and the ratio
    // holds.
    let redis_url = service.redis().map(|r| r.url());
    let commands = || match &redis_url {
        Some(url) => load::redis_commands(url),
        None => Ok(0),
    };
    let memory = || match &redis_url {
        Some(url) => load::redis_memory(url),
        None => Ok(0),
    };
    let memory_before = memory()?;
    let (mut trivial, mut measured) = (Measured::empty(), Measured::empty());
    let mut bare = Measured::empty();
    let (mut trivial_cpu, mut measured_cpu) = (Cpu::zero(), Cpu::zero());
    let mut measured_commands = 0;
    let mut measured_scripts = 0;
    let scripts = || match &redis_url {
        Some(url) => load::redis_script_calls(url),
        None => Ok(0),
    };
    for _ in 0..args.seconds.max(1) {
        bare.merge(&baseline(&bare_channels, &args, Duration::from_secs(1)).await);
        let before = Cpu::read(&service)?;
        trivial.merge(&baseline(&channels, &args, Duration::from_secs(1)).await);
        trivial_cpu.add(&Cpu::read(&service)?, &before);
        let (commands_before, scripts_before) = (commands()?, scripts()?);
        let before = Cpu::read(&service)?;
        measured.merge(&run_rpc(rpc, &channels, &args, None, Duration::from_secs(1)).await);
        measured_cpu.add(&Cpu::read(&service)?, &before);
        measured_commands += commands()? - commands_before;
        measured_scripts += scripts()? - scripts_before;
    }
    let trivial_cpu = trivial_cpu.per_call(trivial.calls);
    let measured_cpu = measured_cpu.per_call(measured.calls);
    let commands = measured_commands as f64 / measured.elapsed.as_secs_f64();
    let name = match rpc {
        Rpc::Enqueue => "Enqueue",
        Rpc::GetRank => "GetRank",
    };
    println!(
        "scenario           {} ({:?} store, {} sub-line(s), {} clients on {} connections, {} s{})",
        name.to_lowercase(),
        args.store,
        args.shards,
        args.clients,
        args.connections,
        args.seconds,
        match rpc {
            Rpc::GetRank => format!(
                ", {} distinct pollers, heartbeat {}",
                args.pollers,
                humantime::format_duration(args.heartbeat)
            ),
            Rpc::Enqueue => String::new(),
        }
    );
    println!("{}", bare.line("bare tonic"));
    println!("{}", trivial.line("trivial RPC"));
    println!("{}", measured.line(name));
    println!(
        "ratio              {:.2} of the trivial RPC's throughput, {:.2} of bare tonic's (the trivial RPC is {:.2} of it)",
        measured.per_second() / trivial.per_second(),
        measured.per_second() / bare.per_second(),
        trivial.per_second() / bare.per_second()
    );
    if let Some(bytes) = poller_bytes {
        println!("poller memory      {bytes:.0} bytes of service memory per poller it remembers");
    }
    if redis_url.is_some() {
        println!(
            "redis              {commands:.0} commands/s ({:.2} per call)",
            commands / measured.per_second()
        );
        if let Rpc::Enqueue = rpc {
            // Every measured call enqueued a user who stays in line.
            let grown = memory()?.saturating_sub(memory_before);
            println!(
                "redis memory       {:.0} bytes per waiting user ({:.1} MiB for {} users)",
                grown as f64 / measured.calls as f64,
                grown as f64 / 1048576.0,
                measured.calls
            );
        }
    }
    println!("cpu per call       {}", trivial_cpu.line("trivial RPC"));
    println!("                   {}", measured_cpu.line(name));
    if let Rpc::Enqueue = rpc {
        let half = measured.per_second() / 2.0;
        let paced = run_rpc(rpc, &channels, &args, Some(half), duration).await;
        println!("{}", paced.line("Enqueue at half"));
        if let Some(redis) = service.redis() {
            match redis_benchmark(&redis.url(), redis.port, args.clients).await {
                Ok(rate) => println!(
                    "redis-benchmark    {rate:.0} enqueue scripts/s ({} connections); waitroom does {:.2} of it",
                    args.clients,
                    measured.per_second() / rate
                ),
                Err(error) => println!("redis-benchmark    not run: {error}"),
            }
            let users = measured.calls.clamp(10_000, 200_000);
            // As many users to a ZADD as the service put in a script call
            // (the queue worker's few scripts a second count too, so a
            // little fewer).
            let batch = (measured.calls as f64 / measured_scripts.max(1) as f64)
                .round()
                .clamp(1.0, 256.0) as usize;
            match redis_floor(&redis.url(), users, batch) {
                Ok(floor) => println!(
                    "redis floor        {floor:.1} us of Redis CPU per user for the two sorted-set inserts a join needs, {batch} users to a ZADD; an Enqueue costs {:.2}x that",
                    measured_cpu.redis / floor
                ),
                Err(error) => println!("redis floor        not measured: {error}"),
            }
        }
    }
    Ok(())
}

/// Redis's own cost of what a join cannot do without: putting a user in the
/// waiting set and the presence set, `batch` users to a `ZADD`, pipelined,
/// in sets as large as the line. Microseconds of Redis CPU per user.
fn redis_floor(url: &str, users: u64, batch: usize) -> anyhow::Result<f64> {
    let mut conn = redis::Client::open(url)?.get_connection()?;
    let (waiting, seen) = ("floor:{bench}:waiting", "floor:{bench}:seen");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as u64;
    let fill = |conn: &mut redis::Connection, from: u64, to: u64| -> anyhow::Result<()> {
        let mut pipe = redis::pipe();
        for first in (from..to).step_by(batch) {
            let last = (first + batch as u64).min(to);
            let members: Vec<(u64, String)> = (first..last)
                .map(|n| (n, format!("floor-{n:08}")))
                .collect();
            pipe.zadd_multiple(waiting, &members).ignore();
            let seen_members: Vec<(u64, &String)> = members.iter().map(|(_, m)| (now, m)).collect();
            pipe.zadd_multiple(seen, &seen_members).ignore();
            if pipe.len() >= 200 {
                pipe.query::<()>(conn)?;
                pipe = redis::pipe();
            }
        }
        pipe.query::<()>(conn)?;
        Ok(())
    };
    // The sets as long as the measured line first, as in the run.
    fill(&mut conn, 0, users)?;
    let before = load::redis_cpu(url)?;
    fill(&mut conn, users, 2 * users)?;
    let used = load::redis_cpu(url)?.saturating_sub(before);
    redis::cmd("DEL")
        .arg(waiting)
        .arg(seen)
        .query::<()>(&mut conn)?;
    Ok(used.as_secs_f64() * 1e6 / users as f64)
}

async fn run_rpc(
    rpc: Rpc,
    channels: &Arc<Vec<Channel>>,
    args: &Args,
    per_second: Option<f64>,
    duration: Duration,
) -> Measured {
    let channels = Arc::clone(channels);
    let round = rand_round();
    let pollers = args.pollers.max(1);
    load::run(args.clients, duration, per_second, move |c, n| {
        let mut client = QueueServiceClient::new(channels[c % channels.len()].clone());
        async move {
            match rpc {
                Rpc::Enqueue => client
                    .enqueue(pb::EnqueueRequest {
                        queue_id: "bench".into(),
                        user_id: format!("r{round}-c{c}-{n}"),
                        receipt: String::new(),
                    })
                    .await
                    .is_ok(),
                Rpc::GetRank => client
                    .get_rank(pb::GetRankRequest {
                        queue_id: "bench".into(),
                        // A crowd's polls come in no order, so neither the line's
                        // index nor the map of pollers is read in turn, which
                        // would keep the next ones in cache.
                        user_id: format!("p{}", load::scatter(round, c, n) % pollers),
                        receipt: String::new(),
                    })
                    .await
                    .is_ok(),
            }
        }
    })
    .await
}

/// Distinct user ids per measurement, so enqueues are new users.
fn rand_round() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// The enqueue script for one user, loaded, and the full `EVALSHA` command
/// line at `now_ms` (with `user` where the user goes): what
/// `redis-benchmark` runs as the Redis-side baseline of an enqueue.
fn enqueue_command_line(
    url: &str,
    store: &RedisStore,
    queue: &QueueId,
    user: &str,
    now_ms: u64,
) -> anyhow::Result<Vec<String>> {
    let source = RedisStore::script_source(&format!(
        "{}\n{}",
        waitroom::store::ENQUEUE_ONE,
        include_str!("enqueue.lua")
    ));
    let mut conn = redis::Client::open(url)?.get_connection()?;
    let sha: String = redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg(source)
        .query(&mut conn)?;
    let keys = store.queue_keys(queue);
    let mut line = vec!["EVALSHA".to_owned(), sha, keys.len().to_string()];
    line.extend(keys);
    line.push(now_ms.to_string());
    line.push(user.to_owned());
    Ok(line)
}

/// The enqueue script alone, driven by `redis-benchmark` with random users.
async fn redis_benchmark(url: &str, port: u16, clients: usize) -> anyhow::Result<f64> {
    let store = crate::harness::redis_store(url).await?;
    let queue = QueueId::parse("bench").map_err(anyhow::Error::msg)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as u64;
    let line = enqueue_command_line(url, &store, &queue, "rb:__rand_int__", now)?;
    let output = tokio::task::spawn_blocking(move || {
        Command::new("redis-benchmark")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-c",
                &clients.to_string(),
            ])
            .args(["-n", "200000", "-r", "1000000000", "--csv"])
            .args(&line)
            .output()
    })
    .await??;
    anyhow::ensure!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let csv = String::from_utf8_lossy(&output.stdout);
    // "test","rps",...
    csv.lines()
        .filter_map(|l| l.split(',').nth(1))
        .filter_map(|v| v.trim_matches('"').parse::<f64>().ok())
        .next()
        .ok_or_else(|| anyhow::anyhow!("no rate in redis-benchmark output: {csv}"))
}

/// CPU time used by the load generator, the service and Redis.
struct Cpu {
    client: Duration,
    service: Duration,
    redis: Duration,
}

/// CPU microseconds per call of each process over one measurement.
struct CpuPerCall {
    client: f64,
    service: f64,
    redis: f64,
}

impl Cpu {
    fn read(service: &Service) -> anyhow::Result<Self> {
        Ok(Self {
            client: process_cpu_time("self")?,
            service: service.cpu_time()?,
            redis: match service.redis() {
                Some(redis) => load::redis_cpu(&redis.url())?,
                None => Duration::ZERO,
            },
        })
    }

    fn zero() -> Self {
        Self {
            client: Duration::ZERO,
            service: Duration::ZERO,
            redis: Duration::ZERO,
        }
    }

    /// Adds the CPU time used between readings `before` and `now`.
    fn add(&mut self, now: &Self, before: &Self) {
        self.client += now.client.saturating_sub(before.client);
        self.service += now.service.saturating_sub(before.service);
        self.redis += now.redis.saturating_sub(before.redis);
    }

    fn per_call(&self, calls: u64) -> CpuPerCall {
        let per_call = |used: Duration| used.as_secs_f64() * 1e6 / calls.max(1) as f64;
        CpuPerCall {
            client: per_call(self.client),
            service: per_call(self.service),
            redis: per_call(self.redis),
        }
    }
}

impl CpuPerCall {
    fn line(&self, name: &str) -> String {
        format!(
            "{name:<12} load generator {:5.1} us   service {:5.1} us   redis {:5.1} us   total {:5.1} us",
            self.client,
            self.service,
            self.redis,
            self.client + self.service + self.redis
        )
    }
}
