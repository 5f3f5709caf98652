//! Shown positions against the line itself, at a crowd's size: every
//! watcher's stream is followed while joins, leaves and admissions run;
//! then the churn stops, the paced positions settle, and each watcher's
//! last shown position is compared with an exact count: read from Redis
//! (every sub-line's waiting set, merged by ticket), or on the memory store
//! counted from every answer the bench got (each watcher's ticket, who was
//! admitted, who left). Counted: positions
//! that differ, by how much, positions that rose while the user waited
//! (joins go behind everyone, so a position never rises), admissions never
//! shown, and joins given a ticket below one that was answered more than τ
//! before they were sent.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio_stream::StreamExt;
use waitroom::pb;
use waitroom::pb::queue_service_client::QueueServiceClient;

use tonic::transport::Channel;

use crate::harness::{Answer, Store, enqueue_answers};
use crate::load::{self, Measured};
use waitroom::domain::shards::TAU_MS;

#[derive(clap::Args)]
pub struct Args {
    /// Users in line, each watching their place.
    #[arg(long, default_value_t = 100_000)]
    watchers: usize,
    /// How long the churn runs.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Newcomers a second, behind everyone.
    #[arg(long, default_value_t = 2_000)]
    joins: u32,
    /// Admissions a second (`AdmitBatch`).
    #[arg(long, default_value_t = 1_000)]
    admissions: u32,
    /// Watchers leaving a second, anywhere in line.
    #[arg(long, default_value_t = 200)]
    leaves: u32,
    /// The service's --position-pace.
    #[arg(long, default_value = "1s")]
    pace: String,
    /// The service's --position-budget (position messages a second over
    /// all streams; 0: none).
    #[arg(long, default_value_t = 50_000)]
    budget: u64,
    /// Sub-lines of the queue (`Queue.shards`). Above 1 on the Redis store,
    /// the service runs with `--redis-sub-lines`, one `redis-server`
    /// holding the head and every sub-line.
    #[arg(long, default_value_t = 1)]
    shards: u32,
    /// Runs the service on the memory store, also with one sub-line.
    #[arg(long)]
    memory: bool,
    /// How long the positions settle after the churn, before the count.
    #[arg(long, default_value = "6s", value_parser = humantime::parse_duration)]
    settle: Duration,
    /// Connections the streams share.
    #[arg(long, default_value_t = 8)]
    connections: usize,
}

/// What one watcher was shown.
#[derive(Default)]
struct Shown {
    /// The last position shown while waiting; 0 once admitted or never.
    position: AtomicU64,
    rises: AtomicU64,
    admitted: AtomicBool,
    /// Left the line on purpose (not counted).
    left: AtomicBool,
    /// The stream ended otherwise.
    ended: AtomicBool,
    opened: AtomicBool,
    /// When it was last sent anything (ms of the bench's clock).
    last_at_ms: AtomicU64,
    /// An `AdmitBatch` answer named it.
    admitted_by_call: AtomicBool,
}

/// The bench's clock, for when messages came.
fn clock_ms() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

const QUEUE: &str = "positions";

fn watcher(w: usize) -> String {
    format!("w{w:07}")
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let on_memory = args.memory;
    let store = if on_memory {
        Store::Memory
    } else {
        Store::Redis
    };
    let extra: &[&str] = match args.shards {
        0 | 1 => &[],
        _ => &["--redis-sub-lines"],
    };
    let service = crate::watch::start_with(store, &args.pace, args.budget, extra).await?;
    service
        .create_queue(pb::Queue {
            shards: args.shards,
            ..crate::watch::heard_for_an_hour(QUEUE)
        })
        .await?;
    let channels = Arc::new(service.channels(args.connections).await?);
    let shown: Arc<Vec<Shown>> = Arc::new((0..args.watchers).map(|_| Shown::default()).collect());
    let lined_up = enqueue_answers(&channels, 256, QUEUE, args.watchers, watcher).await?;
    let inverted = inverted_joins(&lined_up, Duration::from_millis(TAU_MS));
    let inverted_at_all = inverted_joins(&lined_up, Duration::ZERO);

    let opened = Instant::now();
    for w in 0..args.watchers {
        let client = QueueServiceClient::new(channels[w % channels.len()].clone());
        tokio::spawn(follow(client, w, Arc::clone(&shown)));
    }
    while shown
        .iter()
        .filter(|s| s.opened.load(Ordering::Relaxed))
        .count()
        < args.watchers
    {
        anyhow::ensure!(
            opened.elapsed() < Duration::from_secs(120),
            "the streams did not open"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let opened = opened.elapsed();

    let churn = Duration::from_secs(args.seconds);
    let (joined, admitted, left) = tokio::join!(
        joins(&channels, args.joins, churn),
        admissions(&channels, &shown, args.admissions, churn),
        leaves(&channels, &shown, args.leaves, churn),
    );
    let (joined, join_errors, admitted, left) =
        (joined.calls, joined.errors, admitted.calls, left.calls);
    let churned_at = clock_ms();
    tokio::time::sleep(args.settle).await;

    let exact = match service.redis() {
        Some(redis) => exact_from_redis(&redis.url(), args.watchers)?,
        None => exact_from_answers(&shown, &lined_up),
    };

    let (mut checked, mut wrong, mut worst, mut unshown, mut ended) =
        (0u64, 0u64, 0u64, 0u64, 0u64);
    let mut rises = 0;
    let mut examples = Vec::new();
    for (w, (s, exact)) in shown.iter().zip(&exact).enumerate() {
        rises += s.rises.load(Ordering::Relaxed);
        if s.left.load(Ordering::Relaxed) {
            continue;
        }
        if s.ended.load(Ordering::Relaxed) && !s.admitted.load(Ordering::Relaxed) {
            ended += 1;
            continue;
        }
        checked += 1;
        match exact {
            Some(position) => {
                let seen = s.position.load(Ordering::Relaxed);
                if seen != *position {
                    if examples.len() < 5 {
                        let at = s.last_at_ms.load(Ordering::Relaxed) as i64 - churned_at as i64;
                        examples.push(format!(
                            "{}: shown {seen}, exact {position}, last message {at} ms after the churn",
                            watcher(w)
                        ));
                    }
                    wrong += 1;
                    worst = worst.max(seen.abs_diff(*position));
                }
            }
            None => {
                if !s.admitted.load(Ordering::Relaxed) {
                    unshown += 1;
                }
            }
        }
    }
    println!(
        "scenario           positions ({} watchers on {} connections, {} store, {} sub-line(s), pace {}, {} s of churn, {:?} to settle)",
        args.watchers,
        args.connections,
        if on_memory { "memory" } else { "Redis" },
        args.shards,
        args.pace,
        args.seconds,
        args.settle
    );
    println!(
        "join order         {inverted} of {} joins given a ticket below one answered more than {TAU_MS} ms before they were sent ({inverted_at_all} below one answered at any time before)",
        args.watchers
    );
    println!("streams opened in  {:.1} s", opened.as_secs_f64());
    println!(
        "churn              {joined} joined behind ({join_errors} refused), {admitted} admitted, {left} watchers left"
    );
    println!(
        "shown vs exact     {checked} watchers checked: {wrong} positions wrong (largest gap {worst}), {unshown} admissions not shown, {ended} streams ended otherwise"
    );
    if !examples.is_empty() {
        println!("wrong, for example {}", examples.join("; "));
    }
    println!("never rising       {rises} times a waiting watcher's position rose");
    Ok(())
}

/// Follows watcher `w`'s stream, noting what it shows.
async fn follow(
    mut client: QueueServiceClient<tonic::transport::Channel>,
    w: usize,
    shown: Arc<Vec<Shown>>,
) {
    let me = &shown[w];
    let mut stream = loop {
        match client
            .watch_rank(pb::WatchRankRequest {
                queue_id: QUEUE.into(),
                user_id: watcher(w),
                receipt: String::new(),
            })
            .await
        {
            Ok(response) => break response.into_inner(),
            Err(status) if status.code() == tonic::Code::Unavailable => {
                tokio::time::sleep(Duration::from_millis(200 + (w % 800) as u64)).await;
            }
            Err(_) => {
                me.ended.store(true, Ordering::Relaxed);
                me.opened.store(true, Ordering::Relaxed);
                return;
            }
        }
    };
    while let Some(Ok(update)) = stream.next().await {
        me.opened.store(true, Ordering::Relaxed);
        me.last_at_ms.store(clock_ms(), Ordering::Relaxed);
        let Some(place) = update.place else { continue };
        match place.state() {
            pb::PlaceState::Waiting => {
                let before = me.position.swap(place.position, Ordering::Relaxed);
                if before != 0 && place.position > before {
                    me.rises.fetch_add(1, Ordering::Relaxed);
                }
            }
            pb::PlaceState::Admitted => {
                me.position.store(0, Ordering::Relaxed);
                me.admitted.store(true, Ordering::Relaxed);
            }
            _ => {}
        }
    }
    me.ended.store(true, Ordering::Relaxed);
    me.opened.store(true, Ordering::Relaxed);
}

/// Newcomers at `per_second` for `lasting`, behind everyone.
async fn joins(channels: &Arc<Vec<Channel>>, per_second: u32, lasting: Duration) -> Measured {
    let channels = Arc::clone(channels);
    paced(64, per_second, lasting, move |c, n| {
        let mut client = QueueServiceClient::new(channels[c % channels.len()].clone());
        async move {
            client
                .enqueue(pb::EnqueueRequest {
                    queue_id: QUEUE.into(),
                    user_id: format!("j{c}-{n}"),
                    receipt: String::new(),
                })
                .await
                .is_ok()
        }
    })
    .await
}

/// One admission at a time at `per_second`; a call counts when it admitted
/// someone, who is noted.
async fn admissions(
    channels: &Arc<Vec<Channel>>,
    shown: &Arc<Vec<Shown>>,
    per_second: u32,
    lasting: Duration,
) -> Measured {
    let (channels, shown) = (Arc::clone(channels), Arc::clone(shown));
    paced(16, per_second, lasting, move |c, _| {
        let mut client = QueueServiceClient::new(channels[c % channels.len()].clone());
        let shown = Arc::clone(&shown);
        async move {
            let Ok(answer) = client
                .admit_batch(pb::AdmitBatchRequest {
                    queue_id: QUEUE.into(),
                    max_count: 1,
                    request_id: String::new(),
                })
                .await
            else {
                return false;
            };
            let admitted = answer.into_inner().admitted;
            for user in &admitted {
                let w = user
                    .user_id
                    .strip_prefix('w')
                    .and_then(|n| n.parse::<usize>().ok());
                if let Some(s) = w.and_then(|w| shown.get(w)) {
                    s.admitted_by_call.store(true, Ordering::Relaxed);
                }
            }
            !admitted.is_empty()
        }
    })
    .await
}

/// Joins given a ticket below that of a join answered more than `gap`
/// before they were sent: with a gap of τ, by the design's bound, none.
fn inverted_joins(joins: &[Answer], gap: Duration) -> u64 {
    let mut answered: Vec<(Instant, u64)> =
        joins.iter().map(|a| (a.answered, a.place.ticket)).collect();
    answered.sort_unstable();
    let mut sent: Vec<(Instant, u64)> = joins.iter().map(|a| (a.sent, a.place.ticket)).collect();
    sent.sort_unstable();
    let (mut highest, mut next, mut inverted) = (0u64, 0usize, 0u64);
    for (sent_at, ticket) in sent {
        while next < answered.len() && answered[next].0 + gap < sent_at {
            highest = highest.max(answered[next].1);
            next += 1;
        }
        if highest > ticket {
            inverted += 1;
        }
    }
    inverted
}

/// Each watcher's exact position, from Redis: the waiting sets of the
/// queue's one slot or of all its sub-lines (`{positions/K~k…}`), merged by
/// ticket, read while nothing changes them.
fn exact_from_redis(url: &str, watchers: usize) -> anyhow::Result<Vec<Option<u64>>> {
    let mut conn = redis::Client::open(url)?.get_connection()?;
    let mut keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("wr:{{{QUEUE}/*}}:waiting"))
        .query(&mut conn)?;
    if keys.is_empty() {
        keys.push(format!("wr:{{{QUEUE}}}:waiting"));
    }
    let mut line: Vec<(u64, String)> = Vec::new();
    for key in &keys {
        let held: Vec<(String, u64)> = redis::cmd("ZRANGE")
            .arg(key)
            .arg(0)
            .arg(-1)
            .arg("WITHSCORES")
            .query(&mut conn)?;
        line.extend(held.into_iter().map(|(user, ticket)| (ticket, user)));
    }
    line.sort_unstable();
    let positions: std::collections::HashMap<&str, u64> = line
        .iter()
        .enumerate()
        .map(|(i, (_, user))| (user.as_str(), i as u64 + 1))
        .collect();
    Ok((0..watchers)
        .map(|w| positions.get(watcher(w).as_str()).copied())
        .collect())
}

/// Each watcher's exact position, from the answers: the watchers still
/// waiting (neither admitted by an `AdmitBatch` answer nor gone by their
/// own `Leave`) with a lower ticket, plus one. Newcomers of the churn joined
/// long after every watcher, so they all stand behind.
fn exact_from_answers(shown: &[Shown], joins: &[Answer]) -> Vec<Option<u64>> {
    let gone =
        |s: &Shown| s.left.load(Ordering::Relaxed) || s.admitted_by_call.load(Ordering::Relaxed);
    let mut waiting: Vec<u64> = shown
        .iter()
        .zip(joins)
        .filter(|(s, _)| !gone(s))
        .map(|(_, join)| join.place.ticket)
        .collect();
    waiting.sort_unstable();
    shown
        .iter()
        .zip(joins)
        .map(|(s, join)| {
            let ticket = join.place.ticket;
            (!gone(s)).then(|| waiting.partition_point(|t| *t < ticket) as u64 + 1)
        })
        .collect()
}

/// Watchers anywhere in line leaving at `per_second`, marked as left
/// before they go.
async fn leaves(
    channels: &Arc<Vec<Channel>>,
    shown: &Arc<Vec<Shown>>,
    per_second: u32,
    lasting: Duration,
) -> Measured {
    let (channels, shown) = (Arc::clone(channels), Arc::clone(shown));
    paced(4, per_second, lasting, move |c, n| {
        let mut client = QueueServiceClient::new(channels[c % channels.len()].clone());
        let w = (load::scatter(0, c, n) % shown.len() as u64) as usize;
        shown[w].left.store(true, Ordering::Relaxed);
        async move {
            client
                .leave(pb::LeaveRequest {
                    queue_id: QUEUE.into(),
                    user_id: watcher(w),
                })
                .await
                .is_ok()
        }
    })
    .await
}

/// `call` at `per_second` for `lasting` from `clients` tasks; none for 0.
async fn paced<F, Fut>(clients: usize, per_second: u32, lasting: Duration, call: F) -> Measured
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    if per_second == 0 {
        return Measured::empty();
    }
    load::run(clients, lasting, Some(f64::from(per_second)), call).await
}
