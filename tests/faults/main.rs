//! The fault suite: real `redis-server` processes and real `waitroom`
//! processes, with faults injected (Redis stalled, killed and restarted,
//! connections cut and delayed, a cluster master failed over, a service
//! replica killed mid-batch, replicas added under 20,000 watchers), and the invariants checked against a log of
//! every answer the clients got. `docs/reliability.md` states what each
//! Redis setup promises and points here for the evidence.
//!
//! `WAITROOM_FAULT_SCALE` (default 1) multiplies the load and the length of
//! each scenario for a longer hunt.

mod ledger;
mod proxy;
mod service;
#[path = "../support/wait.rs"]
mod wait;

mod failover;
mod network;
mod outage;
mod rebalance;
mod replicas;
mod restart;
mod sentinel;
mod stall;
mod sub_lines;

/// How much longer and busier than in CI the scenarios run.
pub fn scale() -> usize {
    std::env::var("WAITROOM_FAULT_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|s| *s > 0)
        .unwrap_or(1)
}

/// Scenarios run one at a time: each measures how long answers take under a
/// fault, and two at once on a small machine would measure each other.
pub async fn one_at_a_time() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}
