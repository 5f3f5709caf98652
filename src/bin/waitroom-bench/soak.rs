//! A long sale at steady load, to find leaks and slow drifts: many open
//! `WatchRank` streams (an admitted watcher is replaced by a new one), a
//! steady mix of calls, and automatic admission, for minutes. Every ten
//! seconds it prints the service's memory, the streams open and the errors
//! so far; at the end, memory must be within 10 % of where it was after the
//! warm-up, or the run fails.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_stream::StreamExt;
use tonic::transport::Channel;
use waitroom::pb;
use waitroom::pb::queue_admin_service_client::QueueAdminServiceClient;
use waitroom::pb::queue_service_client::QueueServiceClient;

use crate::harness::{Service, Store, enqueue_users};

#[derive(clap::Args)]
pub struct Args {
    /// Streams kept open.
    #[arg(long, default_value_t = 100_000)]
    watchers: usize,
    /// Calls per second besides the streams (GetRank, Enqueue, Leave,
    /// VerifyAdmission, GetQueueStats).
    #[arg(long, default_value_t = 10_000)]
    rate: u64,
    /// Automatic admissions per second.
    #[arg(long, default_value_t = 1_000)]
    admit_per_second: u32,
    /// Minutes the load runs, warm-up included.
    #[arg(long, default_value_t = 10)]
    minutes: u64,
    /// Seconds of warm-up before the memory baseline is taken; by default
    /// the time the line takes to turn over once (every first watcher
    /// admitted and replaced), plus a minute for the arrivals' heartbeat
    /// and the allocator to settle.
    #[arg(long)]
    warmup: Option<u64>,
    /// Connections the clients share.
    #[arg(long, default_value_t = 16)]
    connections: usize,
}

/// What the clients saw, shared by every task.
#[derive(Default)]
struct Tally {
    calls: AtomicU64,
    streams_open: AtomicU64,
    streams_ended: AtomicU64,
    /// Errors by call and code.
    errors: Mutex<BTreeMap<(&'static str, String), u64>>,
    next_watcher: AtomicU64,
}

impl Tally {
    fn error(&self, call: &'static str, status: &tonic::Status) {
        if let Ok(mut errors) = self.errors.lock() {
            *errors
                .entry((call, format!("{:?}", status.code())))
                .or_default() += 1;
        }
    }

    fn error_count(&self) -> u64 {
        self.errors.lock().map_or(0, |e| e.values().sum())
    }
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let service = Service::start(
        Store::Redis,
        &["--max-streams", "1000000", "--max-calls", "1000000"],
    )
    .await?;
    service
        .create_queue(pb::Queue {
            id: "soak".into(),
            admit_per_second: args.admit_per_second,
            // Arrivals who neither watch nor poll are released after this,
            // so the line reaches its steady length within the warm-up.
            heartbeat_timeout: Some(prost_types::Duration {
                seconds: 20,
                nanos: 0,
            }),
            ..Default::default()
        })
        .await?;
    let channels = Arc::new(service.channels(args.connections).await?);
    let tally = Arc::new(Tally::default());
    println!(
        "scenario           soak ({} streams, {} calls/s, {} admitted/s, {} min)",
        args.watchers, args.rate, args.admit_per_second, args.minutes
    );
    enqueue_users(&channels, 64, "soak", args.watchers, |n| format!("w{n:08}")).await?;
    tally
        .next_watcher
        .store(args.watchers as u64, Ordering::Relaxed);
    for w in 0..args.watchers as u64 {
        spawn_watcher(&channels, &tally, w);
    }
    let started = Instant::now();
    let end = started + Duration::from_secs(args.minutes * 60);
    // The mix, paced in ticks of 10 ms.
    let load = {
        let (channels, tally) = (Arc::clone(&channels), Arc::clone(&tally));
        let (rate, watchers) = (args.rate, args.watchers as u64);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(Duration::from_millis(10));
            let mut n: u64 = 0;
            while Instant::now() < end {
                ticks.tick().await;
                for _ in 0..rate / 100 {
                    n += 1;
                    let channel = channels[(n as usize) % channels.len()].clone();
                    let tally = Arc::clone(&tally);
                    // Polls go to watchers in line now: the latest ones.
                    let newest = tally.next_watcher.load(Ordering::Relaxed);
                    let polled = newest.saturating_sub(1 + (n * 7919) % watchers);
                    tokio::spawn(one_call(channel, tally, n, polled));
                }
            }
        })
    };
    let warmup = args
        .warmup
        .unwrap_or(args.watchers as u64 / u64::from(args.admit_per_second.max(1)) + 60);
    println!("warm-up            {warmup} s");
    let mut baseline = None;
    let mut last = (0u64, Instant::now());
    println!("   t (s)   rss (MiB)   streams open   calls/s   errors");
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_secs(10)).await;
        let rss = service.rss_bytes()? as f64 / (1 << 20) as f64;
        let calls = tally.calls.load(Ordering::Relaxed);
        let rate = (calls - last.0) as f64 / last.1.elapsed().as_secs_f64();
        last = (calls, Instant::now());
        println!(
            "{:>8.0} {:>11.1} {:>14} {:>9.0} {:>8}",
            started.elapsed().as_secs_f64(),
            rss,
            tally.streams_open.load(Ordering::Relaxed),
            rate,
            tally.error_count()
        );
        if baseline.is_none() && started.elapsed() >= Duration::from_secs(warmup) {
            baseline = Some(rss);
        }
    }
    load.await?;
    let rss = service.rss_bytes()? as f64 / (1 << 20) as f64;
    let baseline = baseline.unwrap_or(rss);
    println!("errors by call and code:");
    for ((call, code), count) in tally.errors.lock().map(|e| e.clone()).unwrap_or_default() {
        println!("  {call:<16} {code:<20} {count}");
    }
    println!(
        "rss after warm-up  {baseline:.1} MiB; at the end {rss:.1} MiB ({:+.1} %)",
        (rss / baseline - 1.0) * 100.0
    );
    println!(
        "streams ended      {} (admitted, then replaced)",
        tally.streams_ended.load(Ordering::Relaxed)
    );
    anyhow::ensure!(
        rss <= baseline * 1.10,
        "memory grew more than 10 % after the warm-up"
    );
    Ok(())
}

/// Opens a stream for watcher `w` (already in line) and keeps reading it;
/// when it ends (admitted), a new watcher joins and takes its place.
fn spawn_watcher(channels: &Arc<Vec<Channel>>, tally: &Arc<Tally>, w: u64) {
    let (channels, tally) = (Arc::clone(channels), Arc::clone(tally));
    tokio::spawn(async move {
        let channel = channels[(w as usize) % channels.len()].clone();
        let mut client = QueueServiceClient::new(channel);
        let user = format!("w{w:08}");
        let opened = client
            .watch_rank(pb::WatchRankRequest {
                queue_id: "soak".into(),
                user_id: user.clone(),
                receipt: String::new(),
            })
            .await;
        match opened {
            Ok(stream) => {
                tally.streams_open.fetch_add(1, Ordering::Relaxed);
                let mut stream = stream.into_inner();
                while let Some(message) = stream.next().await {
                    if let Err(status) = message {
                        tally.error("WatchRank", &status);
                        break;
                    }
                }
                tally.streams_open.fetch_sub(1, Ordering::Relaxed);
                tally.streams_ended.fetch_add(1, Ordering::Relaxed);
            }
            Err(status) => tally.error("WatchRank", &status),
        }
        // The place is kept: another watcher joins.
        let next = tally.next_watcher.fetch_add(1, Ordering::Relaxed);
        let joined = client
            .enqueue(pb::EnqueueRequest {
                queue_id: "soak".into(),
                user_id: format!("w{next:08}"),
                receipt: String::new(),
            })
            .await;
        match joined {
            Ok(_) => spawn_watcher(&channels, &tally, next),
            Err(status) => tally.error("Enqueue", &status),
        }
    });
}

/// One call of the mix: mostly polls of watchers' places, refreshes and
/// arrivals, some leaves, token checks and stats.
async fn one_call(channel: Channel, tally: Arc<Tally>, n: u64, polled: u64) {
    let mut client = QueueServiceClient::new(channel.clone());
    let queue_id = "soak".to_owned();
    let result = match n % 20 {
        0..=11 => client
            .get_rank(pb::GetRankRequest {
                queue_id,
                user_id: format!("w{polled:08}"),
                receipt: String::new(),
            })
            .await
            .map(drop)
            // Admitted watchers are gone from the line: an answer too.
            .or_else(|s| {
                if s.code() == tonic::Code::NotFound {
                    Ok(())
                } else {
                    Err(s)
                }
            })
            .map_err(|s| ("GetRank", s)),
        12..=14 => client
            .enqueue(pb::EnqueueRequest {
                queue_id,
                user_id: format!("a{n}"),
                receipt: String::new(),
            })
            .await
            .map(drop)
            .map_err(|s| ("Enqueue", s)),
        15 => client
            .leave(pb::LeaveRequest {
                queue_id,
                // An arrival of the previous round of the mix.
                user_id: format!("a{}", n.saturating_sub(23)),
            })
            .await
            .map(drop)
            .map_err(|s| ("Leave", s)),
        16..=17 => client
            .verify_admission(pb::VerifyAdmissionRequest {
                queue_id,
                token: "not.a.token".into(),
                ..Default::default()
            })
            .await
            .map(drop)
            .map_err(|s| ("VerifyAdmission", s)),
        _ => QueueAdminServiceClient::new(channel)
            .get_queue_stats(pb::GetQueueStatsRequest { queue_id })
            .await
            .map(drop)
            .map_err(|s| ("GetQueueStats", s)),
    };
    tally.calls.fetch_add(1, Ordering::Relaxed);
    if let Err((call, status)) = result {
        tally.error(call, &status);
    }
}
