//! The join path of one queue spread over K sub-lines (`docs/design.md`,
//! "One sale over several Redis slots"), measured before the store has it:
//! what each sub-line's Redis core and the head's would spend per join.
//!
//! Each K has K `redis-server`s for its sub-lines and one for its head.
//! A round is what a replica's coalescing makes of `--batch` concurrent
//! joiners: the batch split by a hash of the user id over the K sub-lines,
//! each part one call of the service's enqueue script (`enqueue_many.lua`)
//! on its sub-line's server, pipelined `--depth` rounds to a round trip; a
//! sub-line leases a block of `--block` tickets from the head (`INCRBY`)
//! for every `--block` joins it takes. Today's script numbers tickets
//! itself rather than from a block; taking them from a block passed in
//! costs it no more.
//!
//! The K values take turns a second at a time, so a machine whose speed
//! drifts slows them alike. Printed for each K: joins a second (this
//! machine's two cores are shared by every server and the load, so this
//! is not the ceiling), the busiest sub-line's Redis CPU per join of the
//! whole queue and the ceiling that sets (one second over it), Redis CPU
//! summed over the sub-lines per join, the head's, and each as a ratio of
//! K = 1's.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use waitroom::domain::{QueueConfig, QueueId, UserId};
use waitroom::store::{QueueStore, RedisStore};
use waitroom::testkit::{RedisCluster, RedisServer};

use crate::ceiling::ScriptCall;
use crate::{harness, load};

#[derive(clap::Args, Clone)]
pub struct Args {
    /// Sub-line counts to compare; the first is the baseline.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 2, 4])]
    shards: Vec<usize>,
    /// Users a round: a replica's coalesced batch, before the split.
    #[arg(long, default_value_t = 256)]
    batch: usize,
    /// Rounds a connection sends per round trip.
    #[arg(long, default_value_t = 16)]
    depth: usize,
    /// Connections sending rounds, each from a thread of its own.
    #[arg(long, default_value_t = 2)]
    connections: usize,
    /// Tickets a sub-line leases from the head at a time.
    #[arg(long, default_value_t = 256)]
    block: u64,
    /// Users in line before the measurements, over all sub-lines.
    #[arg(long, default_value_t = 200_000)]
    line: usize,
    /// Seconds per K.
    #[arg(long, default_value_t = 3)]
    seconds: u64,
    /// Through the Redis store instead: concurrent joiners calling its
    /// enqueue (coalesced by its batching), one `redis-server` holding the
    /// head and every sub-line; Redis CPU and commands per join.
    #[arg(long)]
    store: bool,
    /// Concurrent joiners, with `--store`.
    #[arg(long, default_value_t = 512)]
    joiners: usize,
    /// With `--store`: a Redis Cluster of K + 1 masters (at least three)
    /// for each K instead of one `redis-server`, so the busiest node's CPU
    /// a join shows, besides the sum.
    #[arg(long, requires = "store")]
    cluster: bool,
    /// With `--cluster`: each node's costliest commands over the run (the
    /// commands a script calls counted apart, as Redis 7 counts them).
    #[arg(long, requires = "cluster")]
    profile: bool,
}

/// One K: its head, its sub-lines, and what it has measured.
struct Layout {
    shards: usize,
    head: RedisServer,
    lines: Vec<(RedisServer, ScriptCall)>,
    joins: u64,
    wall: Duration,
    /// Per sub-line, then the head.
    cpu: Vec<Duration>,
}

impl Layout {
    async fn start(shards: usize, args: &Args) -> anyhow::Result<Self> {
        let head = RedisServer::start().map_err(anyhow::Error::msg)?;
        let mut lines = Vec::new();
        for shard in 0..shards {
            let redis = RedisServer::start().map_err(anyhow::Error::msg)?;
            // The same line in all, spread as the hash spreads it.
            let call =
                ScriptCall::prepare(&redis.url(), &format!("sale.{shard}"), args.line / shards)
                    .await?;
            lines.push((redis, call));
        }
        Ok(Self {
            shards,
            head,
            lines,
            joins: 0,
            wall: Duration::ZERO,
            cpu: vec![Duration::ZERO; shards + 1],
        })
    }

    fn cpu_now(&self) -> anyhow::Result<Vec<Duration>> {
        let mut cpu = Vec::new();
        for (redis, _) in &self.lines {
            cpu.push(load::redis_cpu(&redis.url())?);
        }
        cpu.push(load::redis_cpu(&self.head.url())?);
        Ok(cpu)
    }

    /// One second of rounds from `args.connections` threads.
    fn drive(&mut self, args: &Args, turn: u64) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(1);
        let joined = AtomicU64::new(0);
        let before = self.cpu_now()?;
        let started = Instant::now();
        let part = args.batch.div_ceil(self.shards);
        let lines: Vec<(String, &ScriptCall)> = self
            .lines
            .iter()
            .map(|(redis, call)| (redis.url(), call))
            .collect();
        let (head, counted) = (self.head.url(), &joined);
        let (depth, block) = (args.depth, args.block);
        load::on_threads(args.connections, |c| {
            let mut conns = lines
                .iter()
                .map(|(url, _)| redis::Client::open(url.as_str())?.get_connection())
                .collect::<Result<Vec<_>, _>>()?;
            let mut head = redis::Client::open(head.as_str())?.get_connection()?;
            let tag = format!("t{turn}-c{c}");
            // Joins each sub-line took since its last lease.
            let mut unleased = vec![0u64; lines.len()];
            let mut round = 0;
            while Instant::now() < deadline {
                for (shard, ((_, call), conn)) in lines.iter().zip(&mut conns).enumerate() {
                    let tag = format!("{tag}-s{shard}");
                    call.pipelined(conn, &tag, round * depth, depth, part)?;
                    unleased[shard] += (depth * part) as u64;
                    let leases = unleased[shard] / block;
                    if leases > 0 {
                        let mut pipe = redis::pipe();
                        for _ in 0..leases {
                            pipe.cmd("INCRBY").arg("wr:{sale}:seq").arg(block).ignore();
                        }
                        pipe.query::<()>(&mut head)?;
                        unleased[shard] %= block;
                    }
                }
                counted.fetch_add((depth * part * lines.len()) as u64, Ordering::Relaxed);
                round += 1;
            }
            Ok(())
        })?;
        self.wall += started.elapsed();
        let after = self.cpu_now()?;
        for (total, (after, before)) in self.cpu.iter_mut().zip(after.iter().zip(&before)) {
            *total += after.saturating_sub(*before);
        }
        self.joins += joined.load(Ordering::Relaxed);
        Ok(())
    }

    /// Redis CPU per join of the whole queue, in microseconds: the busiest
    /// sub-line's, summed over the sub-lines, and the head's.
    fn per_join_us(&self) -> (f64, f64, f64) {
        let us = |cpu: Duration| cpu.as_secs_f64() * 1e6 / self.joins.max(1) as f64;
        let lines = &self.cpu[..self.shards];
        let busiest = lines.iter().copied().max().unwrap_or_default();
        let summed = lines.iter().sum::<Duration>();
        (us(busiest), us(summed), us(self.cpu[self.shards]))
    }
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    if args.store {
        return through_store(&args).await;
    }
    println!(
        "scenario           shards (the join path over K sub-lines and a head: {} users a round split by hash, {} rounds a round trip, blocks of {}, {} s each, a line of {} first)",
        args.batch, args.depth, args.block, args.seconds, args.line
    );
    let mut layouts = Vec::new();
    for &shards in &args.shards {
        layouts.push(Layout::start(shards.max(1), &args).await?);
    }
    for turn in 0..args.seconds.max(1) {
        for layout in &mut layouts {
            layout.drive(&args, turn)?;
        }
    }
    let Some(base) = layouts.first().map(Layout::per_join_us) else {
        return Ok(());
    };
    for layout in &layouts {
        let (busiest, summed, head) = layout.per_join_us();
        println!(
            "  K = {:>2}  {:>4} users a call  {:>8.0} joins/s here   busiest sub-line {:>5.2} us a join ({:.2} of K = {}; ceiling {:>9.0} joins/s)   summed {:>5.2} us ({:.2}x)   head {:>5.3} us a join ({:.2} % of a core at 100,000 joins/s)",
            layout.shards,
            args.batch.div_ceil(layout.shards),
            layout.joins as f64 / layout.wall.as_secs_f64(),
            busiest,
            busiest / base.0,
            layouts[0].shards,
            1e6 / busiest,
            summed,
            summed / base.1,
            head,
            head * 100_000.0 / 1e6 * 100.0,
        );
    }
    Ok(())
}

/// Where one K's keys live: one server, or a Cluster's masters.
enum Servers {
    One(RedisServer),
    Cluster(RedisCluster),
}

impl Servers {
    fn urls(&self) -> Vec<String> {
        match self {
            Self::One(redis) => vec![redis.url()],
            Self::Cluster(cluster) => cluster.nodes.iter().map(RedisServer::url).collect(),
        }
    }
}

/// One K through the store: its servers, its store, and what it measured.
struct StoreRun {
    shards: u32,
    servers: Servers,
    store: Arc<RedisStore>,
    joins: u64,
    wall: Duration,
    /// Redis CPU by server, in the order of `servers.urls()`.
    cpu: Vec<Duration>,
    /// Of it, in the kernel.
    sys: Vec<Duration>,
    commands: u64,
    scripts: u64,
    /// Commands and script calls by server, in the same order.
    by_node: Vec<(u64, u64)>,
}

/// `--store`: the sub-lines as the Redis store serves them today, joins
/// coalesced per queue and split by sub-line, every place then read over
/// all sub-lines and the head. On one server only the sum shows, not the
/// busiest sub-line.
async fn through_store(args: &Args) -> anyhow::Result<()> {
    println!(
        "scenario           shards --store (the Redis store's joins over K sub-lines on {}: {} joiners, {} s each)",
        match args.cluster {
            true => "a Cluster of K + 1 masters, at least three",
            false => "one redis-server",
        },
        args.joiners,
        args.seconds
    );
    let mut runs = Vec::new();
    for &shards in &args.shards {
        let servers = match args.cluster {
            true => Servers::Cluster(
                RedisCluster::start_masters(shards + 1).map_err(anyhow::Error::msg)?,
            ),
            false => Servers::One(RedisServer::start().map_err(anyhow::Error::msg)?),
        };
        let store = match &servers {
            Servers::One(redis) => harness::redis_store(&redis.url()).await?,
            Servers::Cluster(cluster) => {
                RedisStore::connect(&waitroom::store::RedisOptions {
                    url: cluster.urls(),
                    password: None,
                    cluster: true,
                    prefix: "wr".into(),
                    timeout: Duration::from_secs(5),
                    sentinel_master: None,
                    sentinel_password: None,
                })
                .await?
            }
        };
        let store = Arc::new(store.with_sub_lines());
        let mut config =
            QueueConfig::new(QueueId::parse("sale").map_err(anyhow::Error::msg)?).created(now_ms());
        config.shards = shards.max(1) as u32;
        store.create_queue(&config).await?;
        let nodes = servers.urls().len();
        runs.push(StoreRun {
            shards: config.shards,
            servers,
            store,
            joins: 0,
            wall: Duration::ZERO,
            cpu: vec![Duration::ZERO; nodes],
            sys: vec![Duration::ZERO; nodes],
            commands: 0,
            scripts: 0,
            by_node: vec![(0, 0); nodes],
        });
    }
    for turn in 0..args.seconds.max(1) {
        for run in &mut runs {
            let urls = run.servers.urls();
            let read = |what: fn(&str) -> anyhow::Result<u64>| -> anyhow::Result<u64> {
                urls.iter().map(|url| what(url)).sum()
            };
            let cpu: Vec<Duration> = urls
                .iter()
                .map(|url| load::redis_cpu(url))
                .collect::<anyhow::Result<_>>()?;
            let sys: Vec<Duration> = urls
                .iter()
                .map(|url| load::redis_cpu_sys(url))
                .collect::<anyhow::Result<_>>()?;
            let (commands, scripts) =
                (read(load::redis_commands)?, read(load::redis_script_calls)?);
            let calls_by_node = |urls: &[String]| -> anyhow::Result<Vec<(u64, u64)>> {
                urls.iter()
                    .map(|url| Ok((load::redis_commands(url)?, load::redis_script_calls(url)?)))
                    .collect()
            };
            let by_node = calls_by_node(&urls)?;
            let (joins, wall) = join_for_a_second(&run.store, args.joiners, turn).await?;
            run.wall += wall;
            run.joins += joins;
            for ((total, url), before) in run.cpu.iter_mut().zip(&urls).zip(&cpu) {
                *total += load::redis_cpu(url)?.saturating_sub(*before);
            }
            for ((total, url), before) in run.sys.iter_mut().zip(&urls).zip(&sys) {
                *total += load::redis_cpu_sys(url)?.saturating_sub(*before);
            }
            run.commands += read(load::redis_commands)?.saturating_sub(commands);
            run.scripts += read(load::redis_script_calls)?.saturating_sub(scripts);
            for ((total, now), before) in run
                .by_node
                .iter_mut()
                .zip(calls_by_node(&urls)?)
                .zip(&by_node)
            {
                total.0 += now.0.saturating_sub(before.0);
                total.1 += now.1.saturating_sub(before.1);
            }
        }
    }
    let us_a_join =
        |cpu: Duration, run: &StoreRun| cpu.as_secs_f64() * 1e6 / run.joins.max(1) as f64;
    let per_join = |run: &StoreRun| us_a_join(run.cpu.iter().sum(), run);
    let busiest =
        |run: &StoreRun| us_a_join(run.cpu.iter().copied().max().unwrap_or_default(), run);
    let (Some(base), Some(base_busiest)) = (runs.first().map(per_join), runs.first().map(busiest))
    else {
        return Ok(());
    };
    for run in &runs {
        println!(
            "  K = {:>2}  {:>8.0} joins/s   Redis {:>5.2} us a join ({:.2}x K = {})   {:>5.2} commands, {:.3} script calls a join",
            run.shards,
            run.joins as f64 / run.wall.as_secs_f64(),
            per_join(run),
            per_join(run) / base,
            runs[0].shards,
            run.commands as f64 / run.joins.max(1) as f64,
            run.scripts as f64 / run.joins.max(1) as f64,
        );
        if args.cluster {
            println!(
                "          busiest node {:>5.2} us a join ({:.2}x K = {}'s busiest): a ceiling of {:.0} joins/s; by node {:?}",
                busiest(run),
                busiest(run) / base_busiest,
                runs[0].shards,
                1e6 / busiest(run).max(f64::MIN_POSITIVE),
                run.cpu
                    .iter()
                    .map(|cpu| (us_a_join(*cpu, run) * 100.0).round() / 100.0)
                    .collect::<Vec<f64>>(),
            );
            println!(
                "          of it in the kernel (reading and writing the network) by node {:?}",
                run.sys
                    .iter()
                    .map(|cpu| (us_a_join(*cpu, run) * 100.0).round() / 100.0)
                    .collect::<Vec<f64>>(),
            );
            let a_join = |n: u64| (n as f64 / run.joins.max(1) as f64 * 1000.0).round() / 1000.0;
            println!(
                "          by node: commands a join {:?}, script calls a join {:?}",
                run.by_node
                    .iter()
                    .map(|(c, _)| a_join(*c))
                    .collect::<Vec<f64>>(),
                run.by_node
                    .iter()
                    .map(|(_, s)| a_join(*s))
                    .collect::<Vec<f64>>(),
            );
            if args.profile {
                for (node, url) in run.servers.urls().iter().enumerate() {
                    println!(
                        "          node {node}: {}",
                        costliest(url, run.joins)?.join(", ")
                    );
                }
                let (joins, by_node) = scripts_profile(run, args).await?;
                for (node, scripts) in by_node.iter().enumerate() {
                    let mut costs: Vec<_> = scripts.iter().collect();
                    costs.sort_by_key(|(_, cost)| std::cmp::Reverse(cost.1));
                    let costs: Vec<String> = costs
                        .iter()
                        .take(5)
                        .map(|(name, (calls, usec, words))| {
                            format!(
                                "{name} {:.3} us a join ({:.4} calls a join, {:.1} us and {:.0} words a call)",
                                *usec as f64 / joins.max(1) as f64,
                                *calls as f64 / joins.max(1) as f64,
                                *usec as f64 / (*calls).max(1) as f64,
                                *words as f64 / (*calls).max(1) as f64
                            )
                        })
                        .collect();
                    println!("          node {node} scripts: {}", costs.join(", "));
                }
            }
        }
    }
    Ok(())
}

/// Joins of distinct users by `joiners` concurrent joiners for a second:
/// how many, over how long.
async fn join_for_a_second(
    store: &Arc<RedisStore>,
    joiners: usize,
    turn: u64,
) -> anyhow::Result<(u64, Duration)> {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(1);
    let joined = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for joiner in 0..joiners {
        let (store, joined) = (Arc::clone(store), Arc::clone(&joined));
        tasks.push(tokio::spawn(async move {
            let queue = QueueId::parse("sale").map_err(anyhow::Error::msg)?;
            let mut n = 0u64;
            while Instant::now() < deadline {
                let user =
                    UserId::parse(&format!("t{turn}-j{joiner}-{n}")).map_err(anyhow::Error::msg)?;
                store.enqueue(&queue, &user, now_ms()).await?;
                joined.fetch_add(1, Ordering::Relaxed);
                n += 1;
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok((joined.load(Ordering::Relaxed), started.elapsed()))
}

/// One more second of joins, not counted in the figures, with every node
/// logging every call (`SLOWLOG` at a zero threshold, which costs time of
/// its own): each node's script calls and their time, by script, and the
/// joins of that second.
async fn scripts_profile(
    run: &StoreRun,
    args: &Args,
) -> anyhow::Result<(u64, Vec<HashMap<&'static str, (u64, u64, u64)>>)> {
    let names: HashMap<String, &'static str> =
        waitroom::store::script_names().into_iter().collect();
    let set = |conn: &mut redis::Connection, field: &str, value: i64| -> anyhow::Result<()> {
        redis::cmd("CONFIG")
            .arg("SET")
            .arg(field)
            .arg(value)
            .query::<()>(conn)?;
        Ok(())
    };
    let mut conns = Vec::new();
    for url in run.servers.urls() {
        let mut conn = redis::Client::open(url.as_str())?.get_connection()?;
        set(&mut conn, "slowlog-max-len", 1_000_000)?;
        set(&mut conn, "slowlog-log-slower-than", 0)?;
        redis::cmd("SLOWLOG").arg("RESET").query::<()>(&mut conn)?;
        conns.push(conn);
    }
    let (joins, _) = join_for_a_second(&run.store, args.joiners, args.seconds + 1).await?;
    let mut by_node = Vec::new();
    for conn in &mut conns {
        set(conn, "slowlog-log-slower-than", 10_000)?;
        let entries: Vec<redis::Value> = redis::cmd("SLOWLOG").arg("GET").arg(-1).query(conn)?;
        redis::cmd("SLOWLOG").arg("RESET").query::<()>(conn)?;
        let mut scripts: HashMap<&'static str, (u64, u64, u64)> = HashMap::new();
        for (usec, call) in load::logged_calls(entries) {
            let (Some(redis::Value::BulkString(command)), Some(redis::Value::BulkString(sha))) =
                (call.first(), call.get(1))
            else {
                continue;
            };
            if !command.eq_ignore_ascii_case(b"evalsha") {
                continue;
            }
            let mut name = names
                .get(String::from_utf8_lossy(sha).as_ref())
                .copied()
                .unwrap_or("(another script)");
            // A join's call that brings the block it leased, after a
            // 'lease' or ahead of it.
            let numkeys = match call.get(2) {
                Some(redis::Value::BulkString(n)) => {
                    String::from_utf8_lossy(n).parse::<usize>().unwrap_or(0)
                }
                _ => 0,
            };
            if name == "enqueue_many"
                && matches!(call.get(3 + numkeys + 1), Some(redis::Value::BulkString(b)) if b == b"\x01" || b == b"\x03")
            {
                name = "enqueue_many with a block";
            }
            // The log keeps 32 arguments of a call, the last saying how
            // many more there were.
            let more = match call.last() {
                Some(redis::Value::BulkString(last)) if call.len() == 32 => {
                    let last = String::from_utf8_lossy(last);
                    last.strip_prefix("... (")
                        .and_then(|more| more.strip_suffix(" more arguments)"))
                        .and_then(|n| n.parse::<u64>().ok())
                        // The word stands for those it replaced.
                        .map_or(0, |n| n.saturating_sub(1))
                }
                _ => 0,
            };
            let cost = scripts.entry(name).or_default();
            cost.0 += 1;
            cost.1 += usec;
            cost.2 += call.len() as u64 + more;
        }
        by_node.push(scripts);
    }
    Ok((joins, by_node))
}

/// A node's four costliest commands since it started: each with its
/// microseconds a join (over `joins`) and a call.
fn costliest(url: &str, joins: u64) -> anyhow::Result<Vec<String>> {
    let info = load::redis_info(url, "commandstats")?;
    let mut costs: Vec<(f64, String)> = info
        .lines()
        .filter_map(|line| {
            let (name, fields) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let field = |key: &str| {
                fields
                    .split(',')
                    .find_map(|f| f.strip_prefix(key))
                    .and_then(|v| v.parse::<f64>().ok())
            };
            let (calls, usec) = (field("calls=")?, field("usec=")?);
            Some((
                usec,
                format!(
                    "{name} {:.3} us a join ({:.1} us a call)",
                    usec / joins.max(1) as f64,
                    usec / calls.max(1.0)
                ),
            ))
        })
        .collect();
    costs.sort_by(|a, b| b.0.total_cmp(&a.0));
    Ok(costs.into_iter().take(4).map(|(_, text)| text).collect())
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
