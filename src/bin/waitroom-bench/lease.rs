//! What a head's lease costs when a replica of the head must have it
//! before its block is used (`docs/design.md`, "One sale over several
//! Redis slots", Failover): `INCRBY` alone against `INCRBY` then `WAIT 1`
//! in the same round trip, one lease at a time as a sub-line asks for
//! them, on a head with one replica. Then the replica is stalled
//! (`SIGSTOP`) to show a lease nobody acknowledged is answered as such
//! after the wait, to be dropped unused. Printed: each kind's latency
//! (p50, p99, max) and what it adds per join with blocks of 64, 256 and
//! 1,024 tickets.

use std::time::{Duration, Instant};

use waitroom::testkit::{RedisServer, free_port};

#[derive(clap::Args)]
pub struct Args {
    /// Leases of each kind.
    #[arg(long, default_value_t = 20_000)]
    leases: usize,
    /// How long a lease waits for the replica before it is dropped (ms).
    #[arg(long, default_value_t = 50)]
    wait_ms: u64,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let head = RedisServer::start().map_err(anyhow::Error::msg)?;
    let port = free_port().map_err(anyhow::Error::msg)?;
    let head_port = head.port.to_string();
    let replica = RedisServer::start_with(port, &["--replicaof", "127.0.0.1", &head_port])
        .map_err(anyhow::Error::msg)?;
    let mut conn = redis::Client::open(head.url())?.get_connection()?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let info: String = redis::cmd("INFO").arg("replication").query(&mut conn)?;
        if info.contains("connected_slaves:1") && info.contains("state=online") {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "the replica did not come online");
        std::thread::sleep(Duration::from_millis(50));
    }

    let plain = leases(&mut conn, args.leases, None)?;
    let waited = leases(&mut conn, args.leases, Some(args.wait_ms))?;
    replica.pause().map_err(anyhow::Error::msg)?;
    let stalled = leases(&mut conn, 3, Some(args.wait_ms));
    replica.resume().map_err(anyhow::Error::msg)?;
    let stalled = stalled?;

    println!(
        "scenario           lease ({} leases of each kind, one at a time, head with one replica)",
        args.leases
    );
    for (name, measured) in [("INCRBY", &plain), ("INCRBY + WAIT 1", &waited)] {
        let acknowledged = match measured.acknowledged {
            Some(n) => format!("{n} of {}", measured.latencies_us.len()),
            None => "not asked".to_owned(),
        };
        println!(
            "{name:<18} p50 {:>7.1} us   p99 {:>7.1} us   max {:>8.1} us   acknowledged {acknowledged}   per join at blocks of 64 / 256 / 1024: {:.2} / {:.2} / {:.2} us",
            measured.quantile(0.5),
            measured.quantile(0.99),
            measured.quantile(1.0),
            measured.quantile(0.5) / 64.0,
            measured.quantile(0.5) / 256.0,
            measured.quantile(0.5) / 1024.0,
        );
    }
    println!(
        "replica stalled    {} of {} leases acknowledged, each answered after {:.1} ms (then dropped unused)",
        stalled.acknowledged.unwrap_or(0),
        stalled.latencies_us.len(),
        stalled.quantile(0.5) / 1000.0
    );
    Ok(())
}

struct Leases {
    /// Ascending.
    latencies_us: Vec<f64>,
    /// Leases a replica acknowledged; `None` when none was asked to.
    acknowledged: Option<usize>,
}

impl Leases {
    fn quantile(&self, q: f64) -> f64 {
        let at = ((self.latencies_us.len() as f64 - 1.0) * q).round() as usize;
        self.latencies_us.get(at).copied().unwrap_or(0.0)
    }
}

/// `count` leases of 256 tickets, each `INCRBY` and, with a wait, `WAIT 1`
/// in the same round trip.
fn leases(
    conn: &mut redis::Connection,
    count: usize,
    wait_ms: Option<u64>,
) -> anyhow::Result<Leases> {
    let mut measured = Leases {
        latencies_us: Vec::with_capacity(count),
        acknowledged: wait_ms.map(|_| 0),
    };
    let mut pipe = redis::pipe();
    pipe.cmd("INCRBY").arg("wr:{sale}:seq").arg(256);
    if let Some(ms) = wait_ms {
        pipe.cmd("WAIT").arg(1).arg(ms);
    }
    for _ in 0..count {
        let started = Instant::now();
        // The new sequence, then with a wait the replicas that have it.
        let reply: Vec<u64> = pipe.query(conn)?;
        measured
            .latencies_us
            .push(started.elapsed().as_secs_f64() * 1e6);
        if let Some(n) = &mut measured.acknowledged {
            *n += usize::from(reply.get(1).is_some_and(|&acked| acked >= 1));
        }
    }
    measured.latencies_us.sort_by(f64::total_cmp);
    Ok(measured)
}
