//! A sale: a burst of arrivals, one in ten of them watching their place,
//! while the service admits at a steady configured rate. With
//! `--replicas 2`, two service processes share one Redis and the arrivals
//! alternate between them: the figures per replica and Redis's CPU per
//! operation show what a replica adds.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio_stream::StreamExt;
use waitroom::pb;
use waitroom::pb::queue_service_client::QueueServiceClient;

use crate::harness::{Service, Store, spread};
use crate::load;

#[derive(clap::Args)]
pub struct Args {
    /// Arrivals in the burst.
    #[arg(long, default_value_t = 20_000)]
    arrivals: usize,
    /// One arrival in this many keeps a WatchRank stream open.
    #[arg(long, default_value_t = 10)]
    watch_one_in: usize,
    /// Automatic admissions per second.
    #[arg(long, default_value_t = 500)]
    admit_per_second: u32,
    /// Seconds the sale runs.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Concurrent arriving clients.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Service processes sharing the one Redis.
    #[arg(long, default_value_t = 1)]
    replicas: usize,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let flags = ["--max-calls", "1000000", "--max-streams", "1000000"];
    let service = Service::start(Store::Redis, &flags).await?;
    let mut replicas = vec![];
    for _ in 1..args.replicas.max(1) {
        replicas.push(Service::start_beside(&service, &flags).await?);
    }
    let redis_url = service.redis().map(|r| r.url()).unwrap_or_default();
    service
        .create_queue(pb::Queue {
            id: "sale".into(),
            admit_per_second: args.admit_per_second,
            ..Default::default()
        })
        .await?;
    let all: Vec<&Service> = std::iter::once(&service).chain(replicas.iter()).collect();
    let count = all.len();
    // Connections of replica r at r, r + count, ...: arrival n goes to
    // replica n % count.
    let mut by_replica = Vec::new();
    for one in &all {
        by_replica.push(one.channels(8).await?);
    }
    let channels: Arc<Vec<_>> = Arc::new(
        (0..8)
            .flat_map(|i| by_replica.iter().map(move |c| c[i].clone()))
            .collect(),
    );
    let updates = Arc::new(AtomicU64::new(0));
    let admitted_seen = Arc::new(AtomicU64::new(0));
    let cpu_before: Vec<Duration> = all.iter().map(|s| s.cpu_time()).collect::<Result<_, _>>()?;
    let redis_cpu_before = load::redis_cpu(&redis_url)?;
    let commands_before = load::redis_commands(&redis_url)?;
    let started = Instant::now();
    let latency = Arc::new(std::sync::Mutex::new(load::histogram()));
    {
        let (channels, updates, admitted_seen, latency) = (
            Arc::clone(&channels),
            Arc::clone(&updates),
            Arc::clone(&admitted_seen),
            Arc::clone(&latency),
        );
        let watch_one_in = args.watch_one_in;
        spread(args.clients, args.arrivals, move |n| {
            let channel = channels[n % channels.len()].clone();
            let (updates, admitted_seen, latency) = (
                Arc::clone(&updates),
                Arc::clone(&admitted_seen),
                Arc::clone(&latency),
            );
            async move {
                let user = format!("fan-{n:07}");
                let mut client = QueueServiceClient::new(channel);
                let sent = Instant::now();
                client
                    .enqueue(pb::EnqueueRequest {
                        queue_id: "sale".into(),
                        user_id: user.clone(),
                        receipt: String::new(),
                    })
                    .await?;
                if let Ok(mut histogram) = latency.lock() {
                    let _ = histogram.record(sent.elapsed().as_micros().max(1) as u64);
                }
                if n % watch_one_in == 0 {
                    tokio::spawn(async move {
                        if let Ok(response) = client
                            .watch_rank(pb::WatchRankRequest {
                                queue_id: "sale".into(),
                                user_id: user,
                                receipt: String::new(),
                            })
                            .await
                        {
                            let mut stream = response.into_inner();
                            while let Some(Ok(update)) = stream.next().await {
                                updates.fetch_add(1, Ordering::Relaxed);
                                if update
                                    .place
                                    .is_some_and(|p| p.state() == pb::PlaceState::Admitted)
                                {
                                    admitted_seen.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                        }
                    });
                }
                Ok(())
            }
        })
        .await?;
    }
    let burst_time = started.elapsed();
    // The sale goes on: admission at the configured rate, watchers moving.
    let rest = Duration::from_secs(args.seconds).saturating_sub(burst_time);
    tokio::time::sleep(rest).await;
    let elapsed = started.elapsed();
    let cpu: Vec<Duration> = all
        .iter()
        .zip(&cpu_before)
        .map(|(s, before)| s.cpu_time().map(|now| now.saturating_sub(*before)))
        .collect::<Result<_, _>>()?;
    let redis_cpu = load::redis_cpu(&redis_url)?.saturating_sub(redis_cpu_before);
    let commands =
        (load::redis_commands(&redis_url)? - commands_before) as f64 / elapsed.as_secs_f64();
    let stats = service
        .admin()
        .await?
        .get_queue_stats(pb::GetQueueStatsRequest {
            queue_id: "sale".into(),
        })
        .await?
        .into_inner()
        .stats
        .unwrap_or_default();
    let arrivals = args.arrivals;
    let burst = latency
        .lock()
        .map(|h| h.clone())
        .unwrap_or_else(|_| load::histogram());
    println!(
        "scenario           mixed ({arrivals} arrivals, 1 in {} watching, {}/s admitted, {} s, {count} replica(s) on one Redis)",
        args.watch_one_in, args.admit_per_second, args.seconds
    );
    println!(
        "arrivals           {:.1} s for the burst ({:.0}/s): p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms per enqueue",
        burst_time.as_secs_f64(),
        arrivals as f64 / burst_time.as_secs_f64(),
        burst.value_at_quantile(0.5) as f64 / 1000.0,
        burst.value_at_quantile(0.99) as f64 / 1000.0,
        burst.value_at_quantile(0.999) as f64 / 1000.0
    );
    println!(
        "admitted           {} ({:.0}/s observed; {} watchers saw their admission)",
        stats.admitted_total,
        stats.admitted_total as f64 / elapsed.as_secs_f64(),
        admitted_seen.load(Ordering::Relaxed)
    );
    println!("stream updates     {}", updates.load(Ordering::Relaxed));
    for (r, used) in cpu.iter().enumerate() {
        println!(
            "replica {r}          {:.1} s of CPU in {:.1} s; {} arrivals, {:.0} us of its CPU per arrival",
            used.as_secs_f64(),
            elapsed.as_secs_f64(),
            arrivals.div_ceil(count),
            used.as_secs_f64() * 1e6 / arrivals.div_ceil(count) as f64
        );
    }
    let operations = arrivals as u64 + stats.admitted_total;
    println!(
        "redis              {commands:.0} commands/s; {:.1} s of CPU, {:.1} us per operation (arrival or admission)",
        redis_cpu.as_secs_f64(),
        redis_cpu.as_secs_f64() * 1e6 / operations.max(1) as f64
    );
    Ok(())
}
