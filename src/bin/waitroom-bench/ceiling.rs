//! One queue's ceiling: how many joins a second one Redis core takes, since
//! a queue lives in one Cluster slot and so on one core.
//!
//! Two ways, in one run:
//!
//! - the service's enqueue script alone (`enqueue_many.lua`, the one the
//!   service runs), driven with pipelined `EVALSHA`s from a few connections
//!   at several batch sizes (users a call) into a line already long, until
//!   Redis's core is busy: joins a second, how busy the core was, Redis CPU
//!   per join, and the ceiling that gives (one second of CPU over the CPU
//!   per join);
//! - through the service, at rising numbers of concurrent joiners: joins a
//!   second, the batches the service's coalescing reached (users per script
//!   call), and the same Redis figures.
//!
//! Redis CPU is read from `INFO` (`used_cpu_sys` + `used_cpu_user`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use waitroom::domain::{Clock, QueueConfig, QueueId, SystemClock};
use waitroom::pb;
use waitroom::pb::queue_service_client::QueueServiceClient;
use waitroom::store::{QueueStore, RedisStore};
use waitroom::testkit::RedisServer;

use crate::harness::{Service, Store};
use crate::load;

#[derive(clap::Args, Clone)]
pub struct Args {
    /// Users a script call, for the script alone.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 16, 64, 256, 512])]
    batches: Vec<usize>,
    /// Connections pipelining the script, each from a thread of its own.
    #[arg(long, default_value_t = 2)]
    connections: usize,
    /// Script calls a connection sends per round trip.
    #[arg(long, default_value_t = 16)]
    depth: usize,
    /// Users in line before the measurements.
    #[arg(long, default_value_t = 200_000)]
    line: usize,
    /// Concurrent joiners through the service.
    #[arg(long, value_delimiter = ',', default_values_t = [64usize, 256, 1024, 2048])]
    joiners: Vec<usize>,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 3)]
    seconds: u64,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    println!(
        "scenario           ceiling (one queue, one Redis core; {} s each, a line of {} first)",
        args.seconds, args.line
    );
    script_alone(&args).await?;
    through_the_service(&args).await
}

/// What one measurement cost Redis.
struct RedisShare {
    joins_per_second: f64,
    /// Of one core, over the wall time.
    busy: f64,
    cpu_per_join_us: f64,
}

impl RedisShare {
    fn of(joins: u64, wall: Duration, cpu: Duration) -> Self {
        Self {
            joins_per_second: joins as f64 / wall.as_secs_f64(),
            busy: cpu.as_secs_f64() / wall.as_secs_f64(),
            cpu_per_join_us: cpu.as_secs_f64() * 1e6 / joins.max(1) as f64,
        }
    }

    fn line(&self) -> String {
        format!(
            "{:>9.0} joins/s   redis core {:>4.0} % busy   {:>5.2} us of Redis CPU a join   ceiling {:>9.0} joins/s",
            self.joins_per_second,
            self.busy * 100.0,
            self.cpu_per_join_us,
            1e6 / self.cpu_per_join_us
        )
    }
}

async fn script_alone(args: &Args) -> anyhow::Result<()> {
    let redis = RedisServer::start().map_err(anyhow::Error::msg)?;
    let url = redis.url();
    // A queue of its own for each batch size, its line as long as a sale's
    // and the same for each, so no measurement meets sets another grew.
    let mut calls = Vec::new();
    for &batch in &args.batches {
        let call = ScriptCall::prepare(&url, &format!("ceiling-{batch}"), args.line).await?;
        calls.push((batch, call, 0u64, Duration::ZERO, Duration::ZERO));
    }
    println!(
        "the enqueue script alone, pipelined ({} connections, {} calls a round trip):",
        args.connections, args.depth
    );
    // The batch sizes take turns, a second each, so a machine whose speed
    // drifts slows them alike.
    for _ in 0..args.seconds.max(1) {
        for (batch, call, joins, wall, cpu) in &mut calls {
            let (batch, depth) = (*batch, args.depth);
            let deadline = Instant::now() + Duration::from_secs(1);
            let joined = AtomicU64::new(0);
            let (cpu_before, started) = (load::redis_cpu(&url)?, Instant::now());
            let (call, counted, to) = (&*call, &joined, url.as_str());
            load::on_threads(args.connections, |c| {
                let mut conn = redis::Client::open(to)?.get_connection()?;
                let tag = format!("c{c}-{}", SystemClock.now_ms());
                let mut round = 0;
                while Instant::now() < deadline {
                    call.pipelined(&mut conn, &tag, round * depth, depth, batch)?;
                    counted.fetch_add((depth * batch) as u64, Ordering::Relaxed);
                    round += 1;
                }
                Ok(())
            })?;
            *wall += started.elapsed();
            *cpu += load::redis_cpu(&url)?.saturating_sub(cpu_before);
            *joins += joined.load(Ordering::Relaxed);
        }
    }
    for (batch, _, joins, wall, cpu) in &calls {
        let share = RedisShare::of(*joins, *wall, *cpu);
        println!("  {batch:>4} users a call  {}", share.line());
    }
    Ok(())
}

/// The service's enqueue script, loaded, and a queue's keys.
pub(crate) struct ScriptCall {
    pub(crate) sha: String,
    pub(crate) keys: Vec<String>,
}

impl ScriptCall {
    /// The script loaded on the Redis at `url`, for a queue `queue` made
    /// there with `line` users already waiting.
    pub(crate) async fn prepare(url: &str, queue: &str, line: usize) -> anyhow::Result<Self> {
        let store = crate::harness::redis_store(url).await?;
        let mut conn = redis::Client::open(url)?.get_connection()?;
        let sha: String = redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(RedisStore::enqueue_many_source())
            .query(&mut conn)?;
        let queue = QueueId::parse(queue).map_err(anyhow::Error::msg)?;
        let mut config = QueueConfig::new(queue.clone());
        config.created_at_ms = SystemClock.now_ms();
        store.create_queue(&config).await?;
        let call = Self {
            sha,
            keys: store.queue_keys(&queue).to_vec(),
        };
        for first in (0..line.div_ceil(256)).step_by(64) {
            call.pipelined(&mut conn, "line", first, 64, 256)?;
        }
        Ok(call)
    }

    /// `calls` calls of `batch` new users each, in one round trip; the
    /// users are named from `tag` and the call numbers from `first`.
    pub(crate) fn pipelined(
        &self,
        conn: &mut redis::Connection,
        tag: &str,
        first: usize,
        calls: usize,
        batch: usize,
    ) -> anyhow::Result<()> {
        let now = SystemClock.now_ms().to_string();
        let mut pipe = redis::pipe();
        for call in first..first + calls {
            let command = pipe
                .cmd("EVALSHA")
                .arg(&self.sha)
                .arg(self.keys.len())
                .arg(&self.keys)
                .arg(&now);
            for user in 0..batch {
                command.arg(format!("{tag}-{call}-{user}"));
            }
            command.ignore();
        }
        pipe.query::<()>(conn)?;
        Ok(())
    }
}

async fn through_the_service(args: &Args) -> anyhow::Result<()> {
    let service = Service::start(Store::Redis, &["--max-calls", "1000000"]).await?;
    service
        .create_queue(pb::Queue {
            id: "ceiling".into(),
            ..Default::default()
        })
        .await?;
    let url = service
        .redis()
        .map(RedisServer::url)
        .ok_or_else(|| anyhow::anyhow!("the service has no Redis"))?;
    let channels = Arc::new(service.channels(4).await?);
    crate::harness::enqueue_users(&channels, 256, "ceiling", args.line, |n| {
        format!("line-{n}")
    })
    .await?;
    println!("through the service (4 connections):");
    for (round, &joiners) in args.joiners.iter().enumerate() {
        let (cpu_before, scripts_before) =
            (load::redis_cpu(&url)?, load::redis_script_calls(&url)?);
        let service_before = service.cpu_time()?;
        let started = Instant::now();
        let channels = Arc::clone(&channels);
        let measured = load::run(
            joiners,
            Duration::from_secs(args.seconds),
            None,
            move |c, n| {
                let mut client = QueueServiceClient::new(channels[c % channels.len()].clone());
                async move {
                    client
                        .enqueue(pb::EnqueueRequest {
                            queue_id: "ceiling".into(),
                            user_id: format!("j{round}-{c}-{n}"),
                            receipt: String::new(),
                        })
                        .await
                        .is_ok()
                }
            },
        )
        .await;
        let wall = started.elapsed();
        let scripts = load::redis_script_calls(&url)?.saturating_sub(scripts_before);
        let service_busy = service
            .cpu_time()?
            .saturating_sub(service_before)
            .as_secs_f64()
            / wall.as_secs_f64();
        let cpu = load::redis_cpu(&url)?.saturating_sub(cpu_before);
        let share = RedisShare::of(measured.calls, wall, cpu);
        println!(
            "  {joiners:>4} joiners  {}   {:>5.1} users a call   service {:>4.0} % of a core   errors {}",
            share.line(),
            measured.calls as f64 / scripts.max(1) as f64,
            service_busy * 100.0,
            measured.errors
        );
    }
    Ok(())
}
