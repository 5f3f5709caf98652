//! Redis stalled (`SIGSTOP`) longer than the timeout under a stream of
//! joins: every caller is answered within the timeout, calls are not piled
//! up to run after their callers were told they failed, readiness follows
//! Redis both ways.

use std::time::{Duration, Instant};

use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use waitroom::pb;
use waitroom::testkit::RedisServer;

use crate::ledger::{self, Outcome};
use crate::service::{REDIS_TIMEOUT, Service, queue, scratch, within};
use crate::wait::every;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_redis_is_answered_in_time_and_little_runs_after_callers_were_told() {
    let _serial = crate::one_at_a_time().await;
    let redis = RedisServer::start().unwrap_or_else(|e| panic!("{e}"));
    let dir = scratch("stall");
    let service = Service::start(&redis.url(), "stall", &dir, &[]).await;
    service.create_queue(queue("sale")).await;
    let ledger = ledger::shared();
    let scale = crate::scale();
    let run = Duration::from_millis(4_500) * scale as u32;
    // Joins arrive at 320 a second whether or not earlier ones were
    // answered, as a crowd's do.
    let started = Instant::now();
    let clients: Vec<_> = (0..8)
        .map(|c| {
            let (client, ledger) = (service.client(), ledger.clone());
            tokio::spawn(async move {
                let mut calls = Vec::new();
                let mut n = 0;
                let mut beat = every(Duration::from_millis(25));
                while started.elapsed() < run {
                    beat.tick().await;
                    let (mut client, ledger) = (client.clone(), ledger.clone());
                    let user = format!("c{c}-{n}");
                    calls.push(tokio::spawn(async move {
                        ledger::enqueue(&mut client, &ledger, "sale", &user, Duration::from_secs(3))
                            .await
                    }));
                    n += 1;
                }
                for call in calls {
                    call.await.unwrap();
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    redis.pause().unwrap();
    let paused_at = Instant::now();
    let mut went_unready = false;
    let mut beat = every(Duration::from_millis(100));
    while paused_at.elapsed() < Duration::from_secs(2) * scale as u32 {
        beat.tick().await;
        went_unready |= service.readiness().await == Some(ServingStatus::NotServing);
    }
    redis.resume().unwrap();
    let back = service
        .wait_until(ServingStatus::Serving, Duration::from_secs(5))
        .await;
    for client in clients {
        client.await.unwrap();
    }
    assert!(
        went_unready,
        "readiness stayed SERVING while Redis was stalled"
    );
    assert!(
        back < Duration::from_secs(2),
        "ready again only after {back:?}"
    );

    let (acknowledged, failed) = {
        let ledger = ledger.lock().unwrap();
        ledger.assert_failures_answered_within(REDIS_TIMEOUT + Duration::from_millis(400));
        let failed: Vec<String> = ledger
            .enqueues
            .iter()
            .filter(|a| a.outcome == Outcome::Failed(Code::Unavailable))
            .map(|a| a.user.clone())
            .collect();
        (ledger.acknowledged(), failed)
    };
    assert!(
        failed.len() > 50,
        "the stall was not felt: {} failed",
        failed.len()
    );
    // Who is in line now: every acknowledged join, and how many of those
    // told it failed.
    let failed_count = failed.len();
    let client = service.client();
    let present = |user: String| {
        let mut client = client.clone();
        async move {
            match client
                .get_rank(within(
                    pb::GetRankRequest {
                        queue_id: "sale".into(),
                        user_id: user,
                        receipt: String::new(),
                    },
                    Duration::from_secs(3),
                ))
                .await
            {
                Ok(_) => true,
                Err(status) if status.code() == Code::NotFound => false,
                Err(status) => panic!("GetRank answered {status:?}"),
            }
        }
    };
    for user in &acknowledged {
        assert!(
            present(user.clone()).await,
            "{user} was acknowledged and lost"
        );
    }
    let mut ran_after = 0;
    for user in failed {
        if present(user).await {
            ran_after += 1;
        }
    }
    println!(
        "stall: {} joins, {} answered UNAVAILABLE, {ran_after} of those carried out later; ready again {back:?} after Redis returned",
        acknowledged.len() + failed_count,
        failed_count
    );
    // Only what was already sent when Redis stalled (one batch) may run
    // after its callers were answered; without the breaker, every batch of
    // the stall did (hundreds in this scenario).
    assert!(
        ran_after <= 40,
        "{ran_after} joins answered UNAVAILABLE were carried out afterwards"
    );
}
