//! Shown positions against the line itself, at a crowd's size: every
//! watcher's stream is followed while joins, leaves and admissions run;
//! then the churn stops, the paced positions settle, and each watcher's
//! last shown position is compared with an exact count read from Redis
//! (`ZRANK` of the waiting set). Counted: positions that differ, by how
//! much, positions that rose while the user waited (joins go behind
//! everyone, so a position never rises), and admissions never shown.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio_stream::StreamExt;
use waitroom::pb;
use waitroom::pb::queue_service_client::QueueServiceClient;

use tonic::transport::Channel;

use crate::harness::enqueue_users;
use crate::load::{self, Measured};

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
    let service = crate::watch::start(&args.pace, args.budget).await?;
    service
        .create_queue(crate::watch::heard_for_an_hour(QUEUE))
        .await?;
    let channels = Arc::new(service.channels(args.connections).await?);
    enqueue_users(&channels, 256, QUEUE, args.watchers, watcher).await?;

    let shown: Arc<Vec<Shown>> = Arc::new((0..args.watchers).map(|_| Shown::default()).collect());
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
        admissions(&channels, args.admissions, churn),
        leaves(&channels, &shown, args.leaves, churn),
    );
    let (joined, join_errors, admitted, left) =
        (joined.calls, joined.errors, admitted.calls, left.calls);
    let churned_at = clock_ms();
    tokio::time::sleep(args.settle).await;

    // The exact count, from the line itself.
    let url = service
        .redis()
        .map(|r| r.url())
        .ok_or_else(|| anyhow::anyhow!("the service has no Redis"))?;
    let mut conn = redis::Client::open(url.as_str())?.get_connection()?;
    let key = format!("wr:{{{QUEUE}}}:waiting");
    let mut exact: Vec<Option<u64>> = Vec::with_capacity(args.watchers);
    for first in (0..args.watchers).step_by(10_000) {
        let mut pipe = redis::pipe();
        for w in first..(first + 10_000).min(args.watchers) {
            pipe.cmd("ZRANK").arg(&key).arg(watcher(w));
        }
        let ranks: Vec<Option<u64>> = pipe.query(&mut conn)?;
        exact.extend(ranks.into_iter().map(|r| r.map(|r| r + 1)));
    }

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
        "scenario           positions ({} watchers on {} connections, pace {}, {} s of churn, {:?} to settle)",
        args.watchers, args.connections, args.pace, args.seconds, args.settle
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
/// someone.
async fn admissions(channels: &Arc<Vec<Channel>>, per_second: u32, lasting: Duration) -> Measured {
    let channels = Arc::clone(channels);
    paced(16, per_second, lasting, move |c, _| {
        let mut client = QueueServiceClient::new(channels[c % channels.len()].clone());
        async move {
            client
                .admit_batch(pb::AdmitBatchRequest {
                    queue_id: QUEUE.into(),
                    max_count: 1,
                    request_id: String::new(),
                })
                .await
                .is_ok_and(|r| !r.into_inner().admitted.is_empty())
        }
    })
    .await
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
