//! Many open `WatchRank` streams: server memory per stream, Redis commands
//! per second with the streams open (which should not grow with them), and
//! how fast an admission reaches every watcher.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio_stream::StreamExt;
use waitroom::pb;
use waitroom::pb::queue_service_client::QueueServiceClient;

use crate::harness::{Service, Store, enqueue_receipts, enqueue_users};
use crate::load;

#[derive(clap::Args)]
pub struct Args {
    /// Numbers of watchers to measure, one run each (e.g. 1000,100000).
    #[arg(long, value_delimiter = ',', default_values_t = [100_000usize, 200_000])]
    watchers: Vec<usize>,
    /// Users in line besides the watchers, not watching: the rest of a
    /// sale's line, which the service's copy of the line holds too. In the
    /// plain run they join before the watchers (so the watchers' receipts
    /// are fresh when their streams open), in the flow behind them.
    #[arg(long, default_value_t = 1_000_000)]
    behind: usize,
    /// Connections the streams share.
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// Admissions whose delivery is timed.
    #[arg(long, default_value_t = 10)]
    admissions: usize,
    /// Instead: admit this many per second for `--seconds`, with the
    /// service's position pacing on, and time each admission to its own
    /// watcher while everyone else's positions move.
    #[arg(long)]
    flow: Option<u32>,
    /// How long the flow of admissions lasts.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// The service's --position-pace in the flow.
    #[arg(long, default_value = "1s")]
    pace: String,
    /// The service's --position-budget in the flow (position messages a
    /// second over all streams; 0: none).
    #[arg(long, default_value_t = 50_000)]
    budget: u64,
    /// The queue's heartbeat timeout from when the streams are open (an
    /// hour before, while everyone joins). Each instance writes its
    /// watchers' presence every third of it, so a short one puts those
    /// writes inside the measured seconds; the line behind, which never
    /// polls, is released a whole timeout after the change.
    #[arg(long, value_parser = humantime::parse_duration)]
    heartbeat: Option<Duration>,
    /// In the flow, admit through a second replica on the same Redis, so
    /// each admission reaches the replica holding the streams from
    /// another, as most do when several replicas serve a sale.
    #[arg(long)]
    admit_elsewhere: bool,
    /// Open the streams at this many a second, as a crowd opens its pages
    /// (0: all at once).
    #[arg(long, default_value_t = 0)]
    open_rate: u32,
    /// Open each stream with the receipt its `Enqueue` answered, as the
    /// reference BFF does.
    #[arg(long)]
    receipts: bool,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    if let Some(rate) = args.flow {
        for &watchers in &args.watchers {
            run_flow(watchers, rate, &args).await?;
        }
        return Ok(());
    }
    let mut idle_rates = Vec::new();
    for &watchers in &args.watchers {
        idle_rates.push((watchers, run_one(watchers, &args).await?));
    }
    if let (Some((few, a)), Some((many, b))) = (idle_rates.first(), idle_rates.last())
        && few != many
    {
        println!(
            "redis commands/s with {many} watchers vs {few}: {:.2}x",
            b / a.max(0.001)
        );
    }
    Ok(())
}

/// The service for these scenarios: no limit on streams or calls, and
/// position messages paced by `pace`.
/// The service for many streams, its positions paced at `pace` within
/// `budget` messages a second.
pub async fn start(pace: &str, budget: u64) -> anyhow::Result<Service> {
    start_on(Store::Redis, pace, budget).await
}

/// As [`start`], on `store`.
pub async fn start_on(store: Store, pace: &str, budget: u64) -> anyhow::Result<Service> {
    start_with(store, pace, budget, &[]).await
}

/// [`start_on`], with `extra` options besides.
pub async fn start_with(
    store: Store,
    pace: &str,
    budget: u64,
    extra: &[&str],
) -> anyhow::Result<Service> {
    let budget = budget.to_string();
    let mut options = service_args(pace, &budget).to_vec();
    options.extend_from_slice(extra);
    Service::start(store, &options).await
}

/// The streams stay where they were opened: with a second replica (see
/// `--admit-elsewhere`) the first would otherwise move some to it, and a
/// stream the bench does not reopen would miss its admission.
fn service_args<'a>(pace: &'a str, budget: &'a str) -> [&'a str; 10] {
    [
        "--max-streams",
        "1000000",
        "--max-calls",
        "1000000",
        "--position-pace",
        pace,
        "--position-budget",
        budget,
        "--balance-interval",
        "0s",
    ]
}

async fn run_one(watchers: usize, args: &Args) -> anyhow::Result<f64> {
    // Every change at once: each admission is timed to every stream.
    let service = start("0s", 0).await?;
    let redis_url = service.redis().map(|r| r.url()).unwrap_or_default();
    service
        .create_queue(pb::Queue {
            id: "watch".into(),
            ..Default::default()
        })
        .await?;
    let channels = Arc::new(service.channels(args.connections).await?);
    // The users to admit join first, so each admission moves every
    // watcher up one place and no watcher is admitted.
    let ahead = args.admissions;
    enqueue_users(&channels, 64, "watch", ahead, |n| format!("ahead-{n:07}")).await?;
    // The rest of the line joins next and the watchers last, as pages that
    // open their streams right after joining: each opening brings a
    // receipt a few seconds old, not one from before a million joined.
    enqueue_users(&channels, 64, "watch", args.behind, |n| {
        format!("behind-{n:07}")
    })
    .await?;
    let receipts = if args.receipts {
        enqueue_receipts(&channels, 64, "watch", watchers, |n| format!("w{n:07}")).await?
    } else {
        enqueue_users(&channels, 64, "watch", watchers, |n| format!("w{n:07}")).await?;
        vec![String::new(); watchers]
    };
    let receipts = Arc::new(receipts);
    let rss_before = service.rss_bytes()?;

    // Each stream records when it got the round's update in its own slot
    // and counts itself in; the generator reads the slots once the round is
    // complete. (A channel message and a timer per update would make the
    // load generator, which shares the two cores, the bottleneck.)
    let base = Instant::now();
    let round = Arc::new(Round::new(watchers));
    let opened = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let commands_before_open = load::redis_commands(&redis_url)?;
    let started = Instant::now();
    for w in 0..watchers {
        if args.open_rate > 0 && w % 100 == 0 {
            let due = Duration::from_secs_f64(w as f64 / f64::from(args.open_rate));
            tokio::time::sleep_until((started + due).into()).await;
        }
        let mut client = QueueServiceClient::new(channels[w % channels.len()].clone());
        let (round, opened, refused) = (
            Arc::clone(&round),
            Arc::clone(&opened),
            Arc::clone(&refused),
        );
        let receipts = Arc::clone(&receipts);
        tokio::spawn(async move {
            let Some(mut stream) = open_stream(&mut client, w, &receipts[w], &refused).await else {
                return;
            };
            opened.fetch_add(1, Ordering::Relaxed);
            while let Some(Ok(_)) = stream.next().await {
                round.arrived(w, base.elapsed().as_micros() as u64);
            }
        });
    }
    while opened.load(Ordering::Relaxed) < watchers as u64 {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(300),
            "streams did not open"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let open_time = started.elapsed();
    let open_commands = load::redis_commands(&redis_url)? - commands_before_open;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_after = service.rss_bytes()?;

    let idle_before = load::redis_commands(&redis_url)?;
    let (cpu_before, redis_cpu_before) = (service.cpu_time()?, load::redis_cpu(&redis_url)?);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let idle = (load::redis_commands(&redis_url)? - idle_before) as f64 / 5.0;
    let idle_cores = (service.cpu_time()? - cpu_before).as_secs_f64() / 5.0;
    let redis_idle_cores = (load::redis_cpu(&redis_url)? - redis_cpu_before).as_secs_f64() / 5.0;
    let (admitting_from, admitting_cpu) = (Instant::now(), service.cpu_time()?);

    let admitter = QueueServiceClient::new(channels[0].clone());
    let (latency, delivered) = round
        .time_admissions(
            admitter,
            "watch",
            args.admissions,
            base,
            Duration::from_secs(5),
        )
        .await?;
    let admitting_secs = admitting_from.elapsed().as_secs_f64();
    let admitting_cpu = (service.cpu_time()? - admitting_cpu).as_secs_f64();
    let admitting_cores = admitting_cpu / admitting_secs;
    let ms = |q: f64| latency.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "scenario           watch ({watchers} streams on {} connections, {} others in line)",
        args.connections, args.behind
    );
    println!(
        "streams opened in  {:.1} s ({}, {}): {} refused UNAVAILABLE at first ({:.2} %), {:.3} Redis commands per open",
        open_time.as_secs_f64(),
        match args.open_rate {
            0 => "all at once".to_owned(),
            rate => format!("{rate} a second"),
        },
        if args.receipts {
            "with receipts"
        } else {
            "without receipts"
        },
        refused.load(Ordering::Relaxed),
        100.0 * refused.load(Ordering::Relaxed) as f64 / watchers as f64,
        open_commands as f64 / watchers as f64
    );
    println!(
        "server memory      {:.0} bytes per stream (RSS {:.1} -> {:.1} MiB)",
        rss_after.saturating_sub(rss_before) as f64 / watchers as f64,
        rss_before as f64 / 1048576.0,
        rss_after as f64 / 1048576.0
    );
    println!("redis when idle    {idle:.1} commands/s");
    println!(
        "service cpu        {idle_cores:.2} cores with the streams idle, {admitting_cores:.2} while admitting ({:.0} updates/s, {:.1} us per update sent); redis {redis_idle_cores:.3} cores idle",
        delivered as f64 / admitting_secs,
        admitting_cpu * 1e6 / delivered.max(1) as f64
    );
    println!(
        "admission reached  {delivered} of {} stream updates: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        watchers * args.admissions,
        ms(0.5),
        ms(0.99),
        latency.max() as f64 / 1000.0
    );
    Ok(idle)
}

/// Opens watcher `w`'s stream and takes its first place. A refusal of the
/// burst (UNAVAILABLE: the queue's calls to Redis are backed up) is
/// retried, as a client should; `None` on any other error.
async fn open_stream(
    client: &mut QueueServiceClient<tonic::transport::Channel>,
    w: usize,
    receipt: &str,
    refused: &AtomicU64,
) -> Option<tonic::Streaming<pb::WatchRankResponse>> {
    let mut first = true;
    loop {
        match client
            .watch_rank(pb::WatchRankRequest {
                queue_id: "watch".into(),
                user_id: format!("w{w:07}"),
                receipt: receipt.to_owned(),
            })
            .await
        {
            Ok(response) => {
                let mut stream = response.into_inner();
                return stream.next().await.map(|_| stream);
            }
            Err(status) if status.code() == tonic::Code::Unavailable => {
                if std::mem::take(&mut first) {
                    refused.fetch_add(1, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(200 + (w % 800) as u64)).await;
            }
            Err(_) => return None,
        }
    }
}

/// Admissions flowing at `rate` a second into a line of `watchers`, all
/// watching: the time from each `AdmitBatch` call to the admission's
/// message on the admitted user's stream, and the messages all streams got.
async fn run_flow(watchers: usize, rate: u32, args: &Args) -> anyhow::Result<()> {
    let service = start(&args.pace, args.budget).await?;
    // The watchers join one at a time (below), and a million behind them
    // take a while more: with the default heartbeat timeout the first
    // watchers would be released before their streams open, and the line
    // behind, which never polls here, while the admissions flow.
    service.create_queue(heard_for_an_hour("watch")).await?;
    let channels = Arc::new(service.channels(args.connections).await?);
    // One caller, so tickets follow the names: admission in ticket order
    // then admits the watchers in index order, and each admission is
    // timed from the call that made it.
    enqueue_users(&channels, 1, "watch", watchers, |n| format!("w{n:07}")).await?;
    enqueue_users(&channels, 64, "watch", args.behind, |n| {
        format!("behind-{n:07}")
    })
    .await?;
    let base = Instant::now();
    // When the call that admits watcher `w` began (micros since base).
    let called_at: Arc<Vec<AtomicU64>> =
        Arc::new((0..watchers).map(|_| AtomicU64::new(u64::MAX)).collect());
    let delivered: Arc<Vec<AtomicU64>> =
        Arc::new((0..watchers).map(|_| AtomicU64::new(u64::MAX)).collect());
    let messages = Arc::new(AtomicU64::new(0));
    let opened = Arc::new(AtomicU64::new(0));
    for w in 0..watchers {
        let mut client = QueueServiceClient::new(channels[w % channels.len()].clone());
        let (called_at, delivered, messages, opened) = (
            Arc::clone(&called_at),
            Arc::clone(&delivered),
            Arc::clone(&messages),
            Arc::clone(&opened),
        );
        tokio::spawn(async move {
            let Some(mut stream) = open_stream(&mut client, w, "", &AtomicU64::new(0)).await else {
                return;
            };
            opened.fetch_add(1, Ordering::Relaxed);
            while let Some(Ok(message)) = stream.next().await {
                messages.fetch_add(1, Ordering::Relaxed);
                let admitted = message
                    .place
                    .is_some_and(|p| p.state() == pb::PlaceState::Admitted);
                if admitted {
                    let at = base.elapsed().as_micros() as u64;
                    let called = called_at[w].load(Ordering::Acquire);
                    delivered[w].store(at.saturating_sub(called).max(1), Ordering::Release);
                }
            }
        });
    }
    let started = Instant::now();
    while opened.load(Ordering::Relaxed) < watchers as u64 {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(300),
            "streams did not open"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if let Some(heartbeat) = args.heartbeat {
        service
            .admin()
            .await?
            .update_queue(pb::UpdateQueueRequest {
                queue: Some(pb::Queue {
                    id: "watch".into(),
                    heartbeat_timeout: Some(prost_types::Duration {
                        seconds: heartbeat.as_secs() as i64,
                        nanos: 0,
                    }),
                    ..Default::default()
                }),
                update_mask: None,
            })
            .await?;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let messages_before = messages.load(Ordering::Relaxed);

    // Batches every 50 ms; admission is in ticket order, so the next batch
    // admits the next watchers.
    let per_batch = (rate as usize / 20).max(1);
    let beside = if args.admit_elsewhere {
        let budget = args.budget.to_string();
        Some(Service::start_beside(&service, &service_args(&args.pace, &budget)).await?)
    } else {
        None
    };
    let mut admitter = match &beside {
        Some(other) => QueueServiceClient::new(other.channel().await?),
        None => QueueServiceClient::new(channels[0].clone()),
    };
    let mut next = 0usize;
    let mut ticks = tokio::time::interval(Duration::from_millis(50));
    // On stderr, so a profiler can be started at the right moment.
    eprintln!("streams open; admissions flowing for {} s", args.seconds);
    let redis_url = service.redis().map(|r| r.url()).unwrap_or_default();
    let (service_cpu, redis_cpu) = (service.cpu_time()?, load::redis_cpu(&redis_url)?);
    let flowing = Instant::now();
    let flow_start = base.elapsed().as_micros() as u64;
    while flowing.elapsed() < Duration::from_secs(args.seconds) && next < watchers {
        ticks.tick().await;
        let count = per_batch.min(watchers - next);
        let now = base.elapsed().as_micros() as u64;
        for slot in &called_at[next..next + count] {
            slot.store(now, Ordering::Release);
        }
        let admitted = admitter
            .admit_batch(pb::AdmitBatchRequest {
                queue_id: "watch".into(),
                max_count: count as u32,
                request_id: String::new(),
            })
            .await?
            .into_inner()
            .admitted
            .len();
        next += admitted;
    }
    let flow_time = flowing.elapsed();
    // Long enough for the slowest delivery to count.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let sent = messages.load(Ordering::Relaxed) - messages_before;
    let service_cpu = service.cpu_time()?.saturating_sub(service_cpu);
    let redis_cpu = load::redis_cpu(&redis_url)?.saturating_sub(redis_cpu);
    let mut latency = load::histogram();
    // By the second of the flow the admission was made in: a stall that
    // comes back (a periodic write, a pacing burst) shows as slow seconds.
    let mut by_second: Vec<hdrhistogram::Histogram<u64>> = Vec::new();
    let mut missing = 0;
    let mut first_missing = None;
    for (w, slot) in delivered[..next].iter().enumerate() {
        match slot.load(Ordering::Acquire) {
            u64::MAX => {
                missing += 1;
                first_missing.get_or_insert(w);
            }
            micros => {
                let _ = latency.record(micros);
                let second = (called_at[w]
                    .load(Ordering::Acquire)
                    .saturating_sub(flow_start)
                    / 1_000_000) as usize;
                while by_second.len() <= second {
                    by_second.push(load::histogram());
                }
                let _ = by_second[second].record(micros);
            }
        }
    }
    let ms = |q: f64| latency.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "scenario           watch flow ({watchers} streams on {} connections, {} waiting behind them, {rate} admitted/s for {} s, position pace {}, budget {}/s, heartbeat {})",
        args.connections,
        args.behind,
        args.seconds,
        args.pace,
        args.budget,
        args.heartbeat
            .map_or("1h".to_owned(), |h| humantime::format_duration(h)
                .to_string())
    );
    if args.admit_elsewhere {
        println!("admitted through  another replica on the same Redis");
    }
    println!(
        "admitted           {next} ({:.0}/s); {missing} admissions not seen on their stream (first: watcher {first_missing:?})",
        next as f64 / flow_time.as_secs_f64()
    );
    println!(
        "admission to its watcher: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        ms(0.5),
        ms(0.99),
        latency.max() as f64 / 1000.0
    );
    let p99s: Vec<f64> = by_second
        .iter()
        .map(|h| h.value_at_quantile(0.99) as f64 / 1000.0)
        .collect();
    if let Some((slowest, p99)) = p99s.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)) {
        println!(
            "by second          p99 over 100 ms in {} of {} seconds; slowest second {slowest}: p99 {p99:.0} ms",
            p99s.iter().filter(|p| **p > 100.0).count(),
            p99s.len()
        );
    }
    println!(
        "stream messages    {:.0}/s in all ({:.2} per stream per second)",
        sent as f64 / (flow_time.as_secs_f64() + 10.0),
        sent as f64 / (flow_time.as_secs_f64() + 10.0) / watchers as f64
    );
    let span = flow_time.as_secs_f64() + 10.0;
    println!(
        "cpu                service {:.2} cores, {:.1} us per stream message; redis {:.3} cores, {:.1} us per admission",
        service_cpu.as_secs_f64() / span,
        service_cpu.as_secs_f64() * 1e6 / sent.max(1) as f64,
        redis_cpu.as_secs_f64() / span,
        redis_cpu.as_secs_f64() * 1e6 / next.max(1) as f64
    );
    Ok(())
}

/// The arrivals of one admission's updates: when each stream got it.
pub(crate) struct Round {
    started_at: AtomicU64,
    count: AtomicU64,
    /// Micros since the base instant; `u64::MAX` for none this round.
    arrived_at: Vec<AtomicU64>,
}

impl Round {
    /// Admits one user `admissions` times, a round each, and times each
    /// round's updates from the call, until every stream counted itself in
    /// or `patience` passed: the histogram (micros) and the updates timed.
    pub(crate) async fn time_admissions(
        &self,
        mut admitter: QueueServiceClient<tonic::transport::Channel>,
        queue: &str,
        admissions: usize,
        base: Instant,
        patience: Duration,
    ) -> anyhow::Result<(hdrhistogram::Histogram<u64>, u64)> {
        let streams = self.arrived_at.len() as u64;
        let mut latency = load::histogram();
        let mut delivered = 0u64;
        for _ in 0..admissions {
            let started_at = base.elapsed().as_micros() as u64;
            self.start(started_at);
            admitter
                .admit_batch(pb::AdmitBatchRequest {
                    queue_id: queue.into(),
                    max_count: 1,
                    request_id: String::new(),
                })
                .await?;
            let deadline = Instant::now() + patience;
            while self.count() < streams && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            // Stop counting this round before reading it.
            self.start(u64::MAX);
            for arrived in self.arrivals() {
                let _ = latency.record(arrived.saturating_sub(started_at).max(1));
                delivered += 1;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        Ok((latency, delivered))
    }

    pub(crate) fn new(streams: usize) -> Self {
        Self {
            started_at: AtomicU64::new(u64::MAX),
            count: AtomicU64::new(0),
            arrived_at: (0..streams).map(|_| AtomicU64::new(u64::MAX)).collect(),
        }
    }

    /// Starts a round at `micros` (`u64::MAX`: between rounds).
    pub(crate) fn start(&self, micros: u64) {
        if micros != u64::MAX {
            for slot in &self.arrived_at {
                slot.store(u64::MAX, Ordering::Relaxed);
            }
            self.count.store(0, Ordering::Relaxed);
        }
        self.started_at.store(micros, Ordering::Release);
    }

    /// Stream `w` got an update at `micros`; only its first of a round counts.
    pub(crate) fn arrived(&self, w: usize, micros: u64) {
        let started_at = self.started_at.load(Ordering::Acquire);
        if started_at == u64::MAX || micros < started_at {
            return;
        }
        if let Some(slot) = self.arrived_at.get(w)
            && slot
                .compare_exchange(u64::MAX, micros, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.count.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    pub(crate) fn arrivals(&self) -> impl Iterator<Item = u64> + '_ {
        self.arrived_at
            .iter()
            .map(|slot| slot.load(Ordering::Relaxed))
            .filter(|&micros| micros != u64::MAX)
    }
}

/// A queue whose silent users are kept an hour: a run's watchers and the
/// line behind them stay whoever polls or not.
pub(crate) fn heard_for_an_hour(id: &str) -> pb::Queue {
    pb::Queue {
        id: id.into(),
        heartbeat_timeout: Some(prost_types::Duration {
            seconds: 3600,
            nanos: 0,
        }),
        ..Default::default()
    }
}
