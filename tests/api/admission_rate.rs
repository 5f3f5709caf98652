//! Automatic admission: rate and capacity hold across replicas, and
//! capacity comes back as admissions end.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use waitroom::pb::{self, PlaceState};

use crate::helpers::*;

#[tokio::test]
async fn two_replicas_together_admit_at_the_configured_rate_not_twice_it() {
    let (one, two, _redis, clock) = two_replicas().await;
    one.create_queue(pb::Queue {
        admit_per_second: 50,
        ..queue("sale")
    })
    .await;
    // Nobody is admitted straight away once a line has formed, so form one
    // while the clock stands still: the first 50 take the first second's
    // tokens, everyone after waits.
    let mut client = one.client().await;
    for i in 0..4000 {
        enqueue(&mut client, "sale", &format!("u{i}")).await;
    }
    // The clock moves a second at a time (what the bucket holds), and each
    // step waits until both admitters have acted on it, so the bucket never
    // overflows.
    for _ in 0..60 {
        clock.advance_ms(1000);
        one.worked().await;
        two.worked().await;
    }
    one.worked().await;
    two.worked().await;
    let stats = two.stats("sale").await;
    // 60 s at 50 per second, plus the one second of burst the bucket
    // starts with.
    let admitted = stats.admitted_total as f64;
    assert!(
        (admitted - 3000.0).abs() / 3000.0 <= 0.05,
        "admitted {admitted} in 60 s"
    );
    assert!(
        stats.admitted_total <= 3050,
        "admitted {}",
        stats.admitted_total
    );
    assert!(
        (45.0..=55.0).contains(&stats.admit_rate),
        "observed rate {}",
        stats.admit_rate
    );
    assert_eq!(stats.admitted_total + stats.waiting_count, 4000);
}

#[tokio::test]
async fn max_active_is_never_exceeded_under_admit_complete_and_expiry_churn() {
    let (one, two, _redis, clock) = two_replicas().await;
    one.create_queue(pb::Queue {
        max_active: 5,
        admit_per_second: 1000,
        admission_ttl: secs(2),
        ..queue("tight")
    })
    .await;
    let mut client = one.client().await;
    for i in 0..600 {
        enqueue(&mut client, "tight", &format!("u{i}")).await;
    }
    let done = Arc::new(AtomicBool::new(false));
    let mut churn = Vec::new();
    for (n, app) in [&one, &two, &one, &two].into_iter().enumerate() {
        let mut client = app.client().await;
        let done = Arc::clone(&done);
        churn.push(tokio::spawn(async move {
            let mut i = n;
            while !done.load(Ordering::Relaxed) {
                // Manual batches race the automatic admitters ...
                let _ = client.admit_batch(admit_request("tight", 3)).await;
                // ... and completions free slots at random moments.
                let _ = client
                    .complete_admission(pb::CompleteAdmissionRequest {
                        queue_id: "tight".into(),
                        user_id: format!("u{i}"),
                    })
                    .await;
                i = (i + 7) % 600;
            }
        }));
    }
    let mut admin = one.admin().await;
    let started = Instant::now();
    let mut peak = 0;
    while started.elapsed() < Duration::from_secs(3) {
        // Expiries too: the clock jumps past admissions' TTL now and then.
        clock.advance_ms(300);
        let stats = admin
            .get_queue_stats(pb::GetQueueStatsRequest {
                queue_id: "tight".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .stats
            .unwrap();
        assert!(
            stats.active_count <= 5,
            "{} active with max_active 5",
            stats.active_count
        );
        peak = peak.max(stats.active_count);
    }
    done.store(true, Ordering::Relaxed);
    for task in churn {
        task.await.unwrap();
    }
    let stats = one.stats("tight").await;
    assert!(stats.active_count <= 5);
    assert_eq!(peak, 5, "the cap was reached");
    assert!(
        stats.completed_total > 0 && stats.expired_total > 0,
        "{stats:?}"
    );
    assert_eq!(
        stats.admitted_total,
        stats.completed_total + stats.expired_total + stats.active_count,
        "every admission ended exactly one way or is still active"
    );
}

#[tokio::test]
async fn a_completed_or_expired_admission_frees_its_slot_for_the_next_user_on_the_next_tick() {
    let (app, _redis) = TestApp::on_redis().await;
    app.create_queue(pb::Queue {
        max_active: 1,
        admit_per_second: 100,
        admission_ttl: secs(60),
        ..queue("one")
    })
    .await;
    let mut client = app.client().await;
    assert_eq!(
        enqueue(&mut client, "one", "a").await.state(),
        PlaceState::Admitted
    );
    assert_eq!(
        enqueue(&mut client, "one", "b").await.state(),
        PlaceState::Waiting
    );
    assert_eq!(
        enqueue(&mut client, "one", "c").await.state(),
        PlaceState::Waiting
    );
    app.worked().await;
    assert_eq!(
        rank(&mut client, "one", "b").await.state(),
        PlaceState::Waiting,
        "no free slot"
    );

    assert!(complete(&mut client, "one", "a").await);
    wait_for_admission(&mut client, "one", "b").await;

    app.clock.advance_ms(60_000);
    wait_for_admission(&mut client, "one", "c").await;
    let stats = app.stats("one").await;
    assert_eq!(
        (
            stats.completed_total,
            stats.expired_total,
            stats.active_count
        ),
        (1, 1, 1)
    );
}

async fn wait_for_admission(
    client: &mut pb::queue_service_client::QueueServiceClient<tonic::transport::Channel>,
    queue: &str,
    user: &str,
) {
    let what = format!("admitting {user}");
    wait_until(&what, Duration::from_secs(1), || {
        let mut client = client.clone();
        async move { rank(&mut client, queue, user).await.state() == PlaceState::Admitted }
    })
    .await;
}

#[tokio::test]
async fn with_a_rate_a_newcomer_goes_straight_in_only_while_tokens_last() {
    let (app, _redis) = TestApp::on_redis().await;
    // Freeze automatic admission's clock: tokens come only from the
    // bucket's initial second.
    app.create_queue(pb::Queue {
        admit_per_second: 3,
        ..queue("trickle")
    })
    .await;
    let mut client = app.client().await;
    let states: Vec<PlaceState> = {
        let mut states = Vec::new();
        for user in ["a", "b", "c", "d"] {
            states.push(enqueue(&mut client, "trickle", user).await.state());
        }
        states
    };
    assert_eq!(
        states,
        [
            PlaceState::Admitted,
            PlaceState::Admitted,
            PlaceState::Admitted,
            PlaceState::Waiting
        ]
    );
    app.clock.advance_ms(334);
    wait_for_admission(&mut client, "trickle", "d").await;
}
