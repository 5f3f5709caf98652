//! A failover behind a stable address, as Sentinel with a Service that
//! follows the master gives it: the replica is promoted, the old master
//! demoted, and the address leads to the new one, while the service's open
//! connection still reaches the old, which answers every write `READONLY`.

use std::time::{Duration, Instant};

use tonic::Code;
use waitroom::testkit::RedisServer;

use crate::ledger::{self, Outcome};
use crate::proxy::Proxy;
use crate::service::{Service, queue, scratch};
use crate::wait::{until, until_blocking, wait_until};

/// Runs a command on `server`.
pub fn cmd(server: &RedisServer, args: &[&str]) -> redis::Value {
    let mut conn = redis::Client::open(server.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let mut cmd = redis::cmd(args[0]);
    for arg in &args[1..] {
        cmd.arg(*arg);
    }
    cmd.query(&mut conn).unwrap()
}

/// Waits until the master's one replica has every write made so far: its
/// acknowledged offset reaches the master's. (`WAIT` on a connection that
/// wrote nothing proves nothing: it waits for that client's own writes.)
/// A replica that is still syncing (a full resync on a busy machine)
/// would otherwise be promoted without the data, which is another test's
/// loss, not this one's.
pub fn replica_has_everything(master: &RedisServer) {
    let written = replication_field(master, "master_repl_offset");
    until_blocking(
        "the replica has every write",
        Duration::from_secs(30),
        || {
            let info = info_replication(master);
            let acked = info
                .lines()
                .find(|line| line.starts_with("slave0:"))
                .and_then(|line| line.split(',').find_map(|f| f.strip_prefix("offset=")))
                .and_then(|n| n.trim().parse::<u64>().ok());
            if acked.is_some_and(|acked| acked >= written) {
                Ok(())
            } else {
                Err(format!("offset {written} not acknowledged: {info}"))
            }
        },
    );
}

/// `INFO replication` of `server`, as text.
pub fn info_replication(server: &RedisServer) -> String {
    match cmd(server, &["INFO", "replication"]) {
        redis::Value::BulkString(text) => String::from_utf8_lossy(&text).into_owned(),
        redis::Value::VerbatimString { text, .. } => text,
        other => format!("{other:?}"),
    }
}

fn replication_field(server: &RedisServer, field: &str) -> u64 {
    let info = info_replication(server);
    info.lines()
        .find_map(|line| line.strip_prefix(&format!("{field}:")))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in {info}"))
}

/// Whether `server`, a replica, is linked to its master.
pub fn replica_link_up(server: &RedisServer) -> bool {
    info_replication(server).contains("master_link_status:up")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_demoted_behind_a_stable_address_is_left_for_the_new_one() {
    let _serial = crate::one_at_a_time().await;
    let old = RedisServer::start().unwrap_or_else(|e| panic!("{e}"));
    let new = RedisServer::start().unwrap_or_else(|e| panic!("{e}"));
    let old_port = old.port.to_string();
    cmd(&new, &["REPLICAOF", "127.0.0.1", &old_port]);
    wait_until("replication started", Duration::from_secs(10), || {
        std::future::ready(replica_link_up(&new))
    })
    .await;
    let proxy = Proxy::start(format!("127.0.0.1:{}", old.port).parse().unwrap()).await;
    let dir = scratch("failover-address");
    let service = Service::start(&proxy.url(), "failover", &dir, &[]).await;
    service.create_queue(queue("sale")).await;
    let ledger = ledger::shared();
    let mut client = service.client();
    for n in 0..50 {
        ledger::enqueue(
            &mut client,
            &ledger,
            "sale",
            &format!("before-{n}"),
            Duration::from_secs(3),
        )
        .await;
    }
    // Everything written has reached the replica before it takes over.
    replica_has_everything(&old);
    cmd(&new, &["REPLICAOF", "NO", "ONE"]);
    let new_port = new.port.to_string();
    cmd(&old, &["REPLICAOF", "127.0.0.1", &new_port]);
    proxy.retarget(format!("127.0.0.1:{}", new.port).parse().unwrap());
    // Joins resume through the address, now the new master's.
    let resumed = until_joins_resume(&service, &ledger, Duration::from_secs(5), || {
        format!(
            "old: {}; new: {}",
            info_replication(&old),
            info_replication(&new)
        )
    })
    .await;
    println!("failover: joins resumed {resumed:?} after it");
    for m in 0..50 {
        ledger::enqueue(
            &mut client,
            &ledger,
            "sale",
            &format!("later-{m}"),
            Duration::from_secs(3),
        )
        .await;
    }
    ledger::drain(&mut client, &ledger, "sale", "failover").await;
    let ledger = ledger.lock().unwrap();
    ledger.assert_nobody_admitted_twice();
    ledger.assert_admitted_in_ticket_order();
    ledger.assert_every_acknowledged_admitted();
}

/// Joins until one is acknowledged; how long that took.
/// `state` describes the Redis servers, printed when a join gets an
/// answer no failover should give.
pub async fn until_joins_resume(
    service: &Service,
    ledger: &ledger::Shared,
    within: Duration,
    state: impl Fn() -> String,
) -> Duration {
    let started = Instant::now();
    let joined = std::sync::atomic::AtomicU32::new(0);
    until("joins resumed after the failover", within, || {
        let (mut client, state) = (service.client(), &state);
        let n = joined.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        async move {
            let user = format!("after-{n}");
            let outcome =
                ledger::enqueue(&mut client, ledger, "sale", &user, Duration::from_secs(3)).await;
            if outcome == Outcome::Ok {
                return Ok(());
            }
            assert_eq!(
                outcome,
                Outcome::Failed(Code::Unavailable),
                "join {user} {:?} after the fault; {}; service log: {}",
                started.elapsed(),
                state(),
                service.log_tail(40)
            );
            Err(format!(
                "joins still refused (log: {})",
                service.log.display()
            ))
        }
    })
    .await;
    started.elapsed()
}
