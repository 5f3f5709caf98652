//! Redis killed (`SIGKILL`) and restarted from its AOF in the middle of
//! admission, while people keep joining: with `appendfsync always` nothing
//! acknowledged is lost; with `everysec`, only what was acknowledged in the
//! last moments before the kill.

use std::time::{Duration, Instant};

use waitroom::testkit::{RedisServer, free_port};

use crate::ledger::{self, Outcome};
use crate::service::{Service, queue, scratch};

struct Run {
    ledger: ledger::Shared,
    killed_at: Instant,
    service: Service,
    _redis: RedisServer,
}

/// Joins flow and one admitter admits batches of 20 (retrying each with its
/// request id until answered); Redis is killed and restarted mid-way.
async fn kill_mid_admission(fsync: &str) -> Run {
    let dir = scratch(&format!("restart-{fsync}"));
    let mut redis = RedisServer::start_with(
        free_port().unwrap(),
        &["--appendonly", "yes", "--appendfsync", fsync],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let service = Service::start(&redis.url(), "restart", &dir, &[]).await;
    service.create_queue(queue("sale")).await;
    let ledger = ledger::shared();
    let scale = crate::scale();
    let mut client = service.client();
    for n in 0..300 * scale {
        ledger::enqueue(
            &mut client,
            &ledger,
            "sale",
            &format!("early-{n}"),
            Duration::from_secs(3),
        )
        .await;
    }
    let run = Duration::from_secs(3) * scale as u32;
    let mut killed_at = Instant::now();
    let clients = (
        (0..4).map(|_| service.client()).collect(),
        vec![service.client()],
    );
    ledger::traffic(clients.0, clients.1, &ledger, run, 20, async {
        tokio::time::sleep(run / 3).await;
        killed_at = Instant::now();
        redis.restart().unwrap_or_else(|e| panic!("{e}"));
    })
    .await;
    ledger::drain(&mut client, &ledger, "sale", "restart").await;
    Run {
        ledger,
        killed_at,
        service,
        _redis: redis,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_mid_admission_with_fsync_always_loses_nothing_acknowledged() {
    let _serial = crate::one_at_a_time().await;
    let run = kill_mid_admission("always").await;
    let ledger = run.ledger.lock().unwrap();
    assert!(
        ledger.enqueues.iter().any(|a| a.outcome != Outcome::Ok),
        "the kill was not felt (log: {})",
        run.service.log.display()
    );
    ledger.assert_nobody_admitted_twice();
    ledger.assert_admitted_in_ticket_order();
    ledger.assert_only_joiners_admitted();
    ledger.assert_every_acknowledged_admitted();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_mid_admission_with_fsync_everysec_loses_only_the_last_moments() {
    let _serial = crate::one_at_a_time().await;
    let run = kill_mid_admission("everysec").await;
    let ledger = run.ledger.lock().unwrap();
    ledger.assert_only_joiners_admitted();
    // An admission lost with the last writes lets its user be admitted
    // again: only one answered in the moments before the kill.
    let in_window =
        |at: Instant| at + Duration::from_secs(2) >= run.killed_at && at <= run.killed_at;
    let mut first: std::collections::HashMap<String, Instant> = Default::default();
    for admission in ledger.admissions() {
        if let Some(at) = first.insert(admission.user.clone(), admission.at) {
            assert!(
                in_window(at),
                "{} admitted twice, first {:?} before the kill",
                admission.user,
                run.killed_at.saturating_duration_since(at)
            );
        }
    }
    let admitted: std::collections::HashSet<String> =
        ledger.admissions().into_iter().map(|a| a.user).collect();
    let lost = ledger
        .enqueues
        .iter()
        .filter(|a| a.outcome == Outcome::Ok && !admitted.contains(&a.user))
        .count();
    println!(
        "everysec: {} joins acknowledged, {lost} lost with the kill",
        ledger.acknowledged().len()
    );
    // What an fsync once a second may lose: acknowledged in the two seconds
    // before the kill (the fsync runs about every second, and a slow one
    // may defer the next).
    for answer in &ledger.enqueues {
        if answer.outcome == Outcome::Ok && !admitted.contains(&answer.user) {
            assert!(
                in_window(answer.at),
                "{} acknowledged {:?} before the kill, then lost",
                answer.user,
                run.killed_at.saturating_duration_since(answer.at)
            );
        }
    }
}
