//! `waitroom-bench`: measures the service where it runs, and in the same
//! run the baselines its targets are ratios of, so the figures hold on any
//! machine. Traffic goes to loopback only; every scenario is bounded.
//!
//! ```sh
//! cargo run --release --features testkit --bin waitroom-bench -- admit
//! ```
//!
//! Layout: a file per scenario (`admit`, `bff`, `ceiling`, `draw`,
//! `mixed`, `positions`, `rpc` for `enqueue` and `get-rank`, `shards`,
//! `soak`, `unread`, `watch`); `harness.rs` the service under test in a process of its own,
//! `load.rs` the load, its latencies and the Redis counters.

mod admit;
mod bff;
mod ceiling;
mod draw;
mod harness;
mod lease;
mod load;
mod mixed;
mod positions;
mod rpc;
mod shards;
mod soak;
mod unread;
mod watch;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "waitroom-bench", about = "Benchmarks of the waitroom service")]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// Admission with tokens, in batches, against the raw Ed25519 signing rate.
    Admit(admit::Args),
    /// The opening draw of a large pre-queue: how long each step holds Redis.
    Draw(draw::Args),
    /// Enqueue throughput and latency against a trivial RPC and redis-benchmark.
    Enqueue(rpc::Args),
    /// One queue's ceiling: joins a second one Redis core takes, the script
    /// alone and through the service.
    Ceiling(ceiling::Args),
    /// The join path of one queue over K sub-lines and a head: Redis CPU
    /// per join of the busiest sub-line, of all, and of the head.
    Shards(shards::Args),
    /// A head's lease with and without waiting for its replica (`WAIT 1`).
    Lease(lease::Args),
    /// Shown positions against an exact count, watchers following their
    /// places while joins, leaves and admissions run.
    Positions(positions::Args),
    /// GetRank throughput and latency against a trivial RPC.
    GetRank(rpc::Args),
    /// Many open WatchRank streams: memory per stream, Redis load, admission delivery.
    Watch(watch::Args),
    /// A sale: a burst of arrivals, some watching, steady automatic admission.
    Mixed(mixed::Args),
    /// A long sale at steady load: memory, streams and errors every 10 s.
    Soak(soak::Args),
    /// Waiting pages through the reference BFF: its memory per page, its gRPC connections, admission to page.
    Bff(bff::Args),
    /// A client that opens thousands of streams and stops reading: memory, and when they are let go.
    Unread(unread::Args),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().scenario {
        Scenario::Admit(args) => admit::run(args).await,
        Scenario::Draw(args) => draw::run(args).await,
        Scenario::Enqueue(args) => rpc::run(rpc::Rpc::Enqueue, args).await,
        Scenario::Ceiling(args) => ceiling::run(args).await,
        Scenario::Positions(args) => positions::run(args).await,
        Scenario::Shards(args) => shards::run(args).await,
        Scenario::Lease(args) => lease::run(args).await,
        Scenario::GetRank(args) => rpc::run(rpc::Rpc::GetRank, args).await,
        Scenario::Watch(args) => watch::run(args).await,
        Scenario::Mixed(args) => mixed::run(args).await,
        Scenario::Soak(args) => soak::run(args).await,
        Scenario::Bff(args) => bff::run(args).await,
        Scenario::Unread(args) => unread::run(args).await,
    }
}
