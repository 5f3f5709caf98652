//! The opening draw of a large pre-queue: how long each chunked script call
//! holds Redis, measured by Redis itself (`SLOWLOG` with a zero threshold),
//! beside a plain `ZADD` of one member measured the same way.

use std::sync::Arc;
use std::time::{Duration, Instant};

use waitroom::domain::draw::{DRAW_CHUNK, new_seed};
use waitroom::domain::{QueueConfig, QueueId, UserId};
use waitroom::store::{QueueStore, RedisOptions, RedisStore};
use waitroom::testkit::RedisServer;

use crate::harness::spread;

#[derive(clap::Args)]
pub struct Args {
    /// Users pre-queued before the opening.
    #[arg(long, default_value_t = 200_000)]
    users: usize,
    /// Users per draw step.
    #[arg(long, default_value_t = DRAW_CHUNK)]
    chunk: u32,
    /// Sub-lines the queue is kept over (on the one Redis): each holds
    /// its own pre-queue, and the draw merges their pools.
    #[arg(long, default_value_t = 1)]
    shards: u32,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let redis = RedisServer::start().map_err(anyhow::Error::msg)?;
    let store = Arc::new(
        RedisStore::connect(&RedisOptions {
            url: redis.url(),
            password: None,
            cluster: false,
            prefix: "bench".into(),
            timeout: Duration::from_secs(30),
            sentinel_master: None,
            sentinel_password: None,
        })
        .await?
        .with_sub_lines(),
    );
    let queue = QueueId::parse("opening").map_err(anyhow::Error::msg)?;
    let t0 = 1_800_000_000_000u64;
    let mut config = QueueConfig::new(queue.clone()).created(t0);
    config.opens_at_ms = Some(t0 + 3_600_000);
    config.shards = args.shards;
    store.create_queue(&config).await?;

    let started = Instant::now();
    let (fill_store, fill_queue) = (Arc::clone(&store), queue.clone());
    spread(32, args.users, move |i| {
        let (store, queue) = (Arc::clone(&fill_store), fill_queue.clone());
        async move {
            let user = UserId::parse(&format!("fan-{i:07}")).map_err(anyhow::Error::msg)?;
            store.enqueue(&queue, &user, t0 + 60_000).await?;
            Ok(())
        }
    })
    .await?;
    let fill = started.elapsed();

    let client = redis::Client::open(redis.url())?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    redis::cmd("CONFIG")
        .arg("SET")
        .arg("slowlog-log-slower-than")
        .arg(0)
        .query_async::<()>(&mut conn)
        .await?;
    redis::cmd("CONFIG")
        .arg("SET")
        .arg("slowlog-max-len")
        .arg(100_000)
        .query_async::<()>(&mut conn)
        .await?;
    for _ in 0..1000 {
        redis::cmd("ZADD")
            .arg("bench:baseline")
            .arg(1)
            .arg("member")
            .query_async::<i64>(&mut conn)
            .await?;
    }
    let baseline = slowlog_micros(&mut conn, "ZADD").await?;
    redis::cmd("SLOWLOG")
        .arg("RESET")
        .query_async::<()>(&mut conn)
        .await?;

    let seed = new_seed().map_err(anyhow::Error::msg)?;
    let opens_at = t0 + 3_600_000;
    // The log is read and emptied after each step, out of the timed
    // steps: the commands a script calls are logged too (Redis 7), a few
    // for every user placed.
    let mut draw = Duration::ZERO;
    let mut steps: u32 = 0;
    let mut scripts = Vec::new();
    loop {
        let started = Instant::now();
        let done = store.draw_step(&queue, &seed, args.chunk, opens_at).await?;
        draw += started.elapsed();
        steps += 1;
        scripts.extend(slowlog_micros(&mut conn, "EVALSHA").await?);
        redis::cmd("SLOWLOG")
            .arg("RESET")
            .query_async::<()>(&mut conn)
            .await?;
        if done {
            break;
        }
    }
    scripts.sort_unstable();
    let stats = store.stats(&queue, opens_at).await?;
    anyhow::ensure!(stats.prequeued == 0, "{} still pre-queued", stats.prequeued);

    let baseline_mean = baseline.iter().sum::<u64>() as f64 / baseline.len().max(1) as f64;
    let max = scripts.last().copied().unwrap_or(0);
    let mean = scripts.iter().sum::<u64>() as f64 / scripts.len().max(1) as f64;
    println!(
        "scenario          draw ({} pre-queued, {} per step, {} sub-line(s))",
        args.users, args.chunk, args.shards
    );
    println!("pre-queue filled  {:.2} s", fill.as_secs_f64());
    println!(
        "draw              {steps} steps, {:.2} s in all",
        draw.as_secs_f64()
    );
    println!(
        "script time       mean {:.1} ms, max {:.1} ms per script call (Redis SLOWLOG)",
        mean / 1000.0,
        max as f64 / 1000.0
    );
    println!("baseline          ZADD of one member: {baseline_mean:.1} us (same SLOWLOG)");
    println!(
        "longest hold      {:.0} ZADDs' worth",
        max as f64 / baseline_mean.max(0.1)
    );
    println!(
        "script calls      {} ({:.1} a step)",
        scripts.len(),
        scripts.len() as f64 / f64::from(steps.max(1))
    );
    println!(
        "placed            {} waiting, tickets 1..{}",
        stats.waiting, stats.waiting
    );
    Ok(())
}

/// Durations (µs) of the logged calls of one command.
async fn slowlog_micros(
    conn: &mut redis::aio::MultiplexedConnection,
    command: &str,
) -> anyhow::Result<Vec<u64>> {
    let entries: Vec<redis::Value> = redis::cmd("SLOWLOG")
        .arg("GET")
        .arg(-1)
        .query_async(conn)
        .await?;
    Ok(crate::load::logged_calls(entries)
        .into_iter()
        .filter(|(_, call)| {
            matches!(call.first(), Some(redis::Value::BulkString(b)) if b.eq_ignore_ascii_case(command.as_bytes()))
        })
        .map(|(usec, _)| usec)
        .collect())
}
