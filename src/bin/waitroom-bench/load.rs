//! Closed-loop and paced load with latency histograms, and the Redis-side
//! counters a scenario reports.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// What a load run measured.
pub struct Measured {
    pub calls: u64,
    pub errors: u64,
    pub elapsed: Duration,
    /// Microseconds.
    pub latency: Histogram<u64>,
}

impl Measured {
    pub fn empty() -> Self {
        Self {
            calls: 0,
            errors: 0,
            elapsed: Duration::ZERO,
            latency: histogram(),
        }
    }

    /// Adds another measurement of the same thing (another time slice).
    pub fn merge(&mut self, other: &Self) {
        self.calls += other.calls;
        self.errors += other.errors;
        self.elapsed += other.elapsed;
        // Both histograms have the same bounds, so adding cannot fail.
        let _ = self.latency.add(&other.latency);
    }

    pub fn per_second(&self) -> f64 {
        self.calls as f64 / self.elapsed.as_secs_f64()
    }

    pub fn line(&self, name: &str) -> String {
        let ms = |q: f64| self.latency.value_at_quantile(q) as f64 / 1000.0;
        format!(
            "{name:<18} {:>9.0} calls/s   p50 {:>6.2} ms   p99 {:>6.2} ms   p99.9 {:>6.2} ms   errors {}",
            self.per_second(),
            ms(0.5),
            ms(0.99),
            ms(0.999),
            self.errors
        )
    }
}

/// A number of no order for a client's `n`th call in `round` (splitmix64),
/// to pick users at random without a generator shared by the clients.
pub fn scatter(round: u64, client: usize, n: u64) -> u64 {
    let mut z = round ^ ((client as u64) << 40) ^ n;
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds")
}

/// Runs `call(client, n)` from `clients` tasks for `duration`, each as fast
/// as it can (closed loop) or, with `per_second`, paced to that total rate.
pub async fn run<F, Fut>(
    clients: usize,
    duration: Duration,
    per_second: Option<f64>,
    call: F,
) -> Measured
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = bool> + Send,
{
    let call = Arc::new(call);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for client in 0..clients {
        let call = Arc::clone(&call);
        tasks.push(tokio::spawn(async move {
            let mut latency = histogram();
            let (mut calls, mut errors) = (0u64, 0u64);
            let interval = per_second.map(|r| Duration::from_secs_f64(clients as f64 / r));
            // Paced clients start spread over one interval: started in step
            // they would arrive in bursts of `clients` calls at once, and
            // the latency would be that of the burst, not of the rate.
            let mut next = started
                + interval.map_or(Duration::ZERO, |i| {
                    i.mul_f64(client as f64 / clients as f64)
                });
            while started.elapsed() < duration {
                if let Some(interval) = interval {
                    next += interval;
                    let now = Instant::now();
                    if next > now {
                        tokio::time::sleep(next - now).await;
                    }
                }
                let sent = Instant::now();
                if call(client, calls).await {
                    calls += 1;
                } else {
                    errors += 1;
                }
                let _ = latency.record(sent.elapsed().as_micros().max(1) as u64);
            }
            (calls, errors, latency)
        }));
    }
    let mut measured = Measured {
        calls: 0,
        errors: 0,
        elapsed: Duration::ZERO,
        latency: histogram(),
    };
    for task in tasks {
        if let Ok((calls, errors, latency)) = task.await {
            measured.calls += calls;
            measured.errors += errors;
            let _ = measured.latency.add(latency);
        }
    }
    measured.elapsed = started.elapsed();
    measured
}

/// Commands Redis has processed so far.
pub fn redis_commands(url: &str) -> anyhow::Result<u64> {
    let info = redis_info(url, "stats")?;
    info_field(&info, "total_commands_processed")
        .map(|v| v as u64)
        .ok_or_else(|| anyhow::anyhow!("no total_commands_processed in INFO"))
}

/// Scripts Redis has run so far (`EVALSHA` calls).
pub fn redis_script_calls(url: &str) -> anyhow::Result<u64> {
    let info = redis_info(url, "commandstats")?;
    Ok(info
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_evalsha:calls="))
        .and_then(|v| v.split(',').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0))
}

/// CPU time Redis has used so far (user + system, its own account).
pub fn redis_cpu(url: &str) -> anyhow::Result<Duration> {
    let info = redis_info(url, "cpu")?;
    let field = |name| info_field(&info, name).unwrap_or(0.0);
    Ok(Duration::from_secs_f64(
        field("used_cpu_user") + field("used_cpu_sys"),
    ))
}

/// CPU time Redis has spent in the kernel so far (`used_cpu_sys`): its
/// reads and writes of the network, and its waits.
pub fn redis_cpu_sys(url: &str) -> anyhow::Result<Duration> {
    let info = redis_info(url, "cpu")?;
    Ok(Duration::from_secs_f64(
        info_field(&info, "used_cpu_sys").unwrap_or(0.0),
    ))
}

/// The calls in Redis's log (the answer of `SLOWLOG GET`): each one's
/// microseconds and its words as logged.
pub fn logged_calls(entries: Vec<redis::Value>) -> Vec<(u64, Vec<redis::Value>)> {
    entries
        .into_iter()
        .filter_map(|entry| {
            let redis::Value::Array(fields) = entry else {
                return None;
            };
            // Id, time, microseconds, words, client address, client name.
            let mut fields = fields.into_iter().skip(2);
            match (fields.next()?, fields.next()?) {
                (redis::Value::Int(usec), redis::Value::Array(call)) => Some((usec as u64, call)),
                _ => None,
            }
        })
        .collect()
}

/// Bytes Redis holds for data (`used_memory`).
pub fn redis_memory(url: &str) -> anyhow::Result<u64> {
    let info = redis_info(url, "memory")?;
    info_field(&info, "used_memory")
        .map(|m| m as u64)
        .ok_or_else(|| anyhow::anyhow!("no used_memory in INFO"))
}

pub fn redis_info(url: &str, section: &str) -> anyhow::Result<String> {
    let mut conn = redis::Client::open(url)?.get_connection()?;
    Ok(redis::cmd("INFO").arg(section).query(&mut conn)?)
}

fn info_field(info: &str, name: &str) -> Option<f64> {
    info.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .and_then(|v| v.trim().parse().ok())
}

/// Runs `each` with each number below `threads` on a thread of its own, as
/// a connection's load, and waits for them all.
pub fn on_threads<F>(threads: usize, each: F) -> anyhow::Result<()>
where
    F: Fn(usize) -> anyhow::Result<()> + Sync,
{
    std::thread::scope(|scope| {
        let each = &each;
        let running: Vec<_> = (0..threads).map(|n| scope.spawn(move || each(n))).collect();
        for thread in running {
            thread
                .join()
                .map_err(|_| anyhow::anyhow!("a load thread panicked"))??;
        }
        Ok(())
    })
}
