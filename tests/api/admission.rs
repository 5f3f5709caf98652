//! Letting users through: order, the tokens they get, retries, estimates.

use waitroom::pb::{self, PlaceState};

use crate::helpers::*;

#[tokio::test]
async fn admit_batch_admits_strictly_by_ticket_and_says_exactly_who() {
    let (app, _redis) = TestApp::on_redis().await;
    app.create_queue(queue("sale")).await;
    let mut client = app.client().await;
    for i in 0..10 {
        enqueue(&mut client, "sale", &format!("u{i}")).await;
    }
    leave(&mut client, "sale", "u2").await;
    let first = admit(&mut client, "sale", 4).await;
    let users: Vec<&str> = first.iter().map(|a| a.user_id.as_str()).collect();
    assert_eq!(users, ["u0", "u1", "u3", "u4"]);
    assert_eq!(
        first.iter().map(|a| a.ticket).collect::<Vec<_>>(),
        [1, 2, 4, 5]
    );
    for admitted in &first {
        let admission = admitted.admission.as_ref().unwrap();
        assert_eq!(admission.token.split('.').count(), 3, "a compact JWS");
        assert!(admission.expires_at.is_some());
    }
    let rest = admit(&mut client, "sale", 100).await;
    assert_eq!(rest.len(), 5);
    assert_eq!(rest[0].user_id, "u5");
    assert!(admit(&mut client, "sale", 100).await.is_empty());
}

#[tokio::test]
async fn an_admitted_user_reads_back_the_same_token_everywhere() {
    let (app, _redis) = TestApp::on_redis().await;
    app.create_queue(queue("sale")).await;
    let mut client = app.client().await;
    enqueue(&mut client, "sale", "alice").await;
    let admitted = admit(&mut client, "sale", 1).await;
    let token = admitted[0].admission.as_ref().unwrap().token.clone();
    let by_rank = rank(&mut client, "sale", "alice").await;
    assert_eq!(by_rank.state(), PlaceState::Admitted);
    assert_eq!(by_rank.position, 0);
    assert_eq!(
        by_rank.estimated_wait,
        Some(prost_types::Duration::default())
    );
    assert_eq!(by_rank.admission.as_ref().unwrap().token, token);
    let by_enqueue = enqueue(&mut client, "sale", "alice").await;
    assert_eq!(by_enqueue.admission.unwrap().token, token);
}

#[tokio::test]
async fn a_retried_admit_batch_with_a_request_id_admits_nobody_else() {
    let (app, _redis) = TestApp::on_redis().await;
    app.create_queue(queue("sale")).await;
    let mut client = app.client().await;
    for i in 0..6 {
        enqueue(&mut client, "sale", &format!("u{i}")).await;
    }
    let request = pb::AdmitBatchRequest {
        queue_id: "sale".into(),
        max_count: 2,
        request_id: "batch-0001".into(),
    };
    let first = client
        .admit_batch(request.clone())
        .await
        .unwrap()
        .into_inner();
    let retry = client.admit_batch(request).await.unwrap().into_inner();
    assert_eq!(first, retry);
    assert_eq!(rank(&mut client, "sale", "u2").await.position, 1);
    let next = admit(&mut client, "sale", 1).await;
    assert_eq!(next[0].user_id, "u2");
}

#[tokio::test]
async fn completing_frees_the_slot_and_is_counted() {
    let (app, _redis) = TestApp::on_redis().await;
    app.create_queue(pb::Queue {
        max_active: 1,
        ..queue("one")
    })
    .await;
    let mut client = app.client().await;
    enqueue(&mut client, "one", "a").await;
    enqueue(&mut client, "one", "b").await;
    assert!(complete(&mut client, "one", "a").await);
    assert!(
        !complete(&mut client, "one", "a").await,
        "completing twice is harmless"
    );
    assert_eq!(admit(&mut client, "one", 1).await[0].user_id, "b");
    let stats = app.stats("one").await;
    assert_eq!(
        (
            stats.enqueued_total,
            stats.admitted_total,
            stats.completed_total,
            stats.active_count,
            stats.waiting_count
        ),
        (2, 2, 1, 1, 0)
    );
}

#[tokio::test]
async fn the_estimate_is_absent_until_admissions_are_observed_then_follows_their_rate() {
    let (app, _redis) = TestApp::on_redis().await;
    app.create_queue(queue("eta")).await;
    let mut client = app.client().await;
    for i in 0..200 {
        enqueue(&mut client, "eta", &format!("u{i}")).await;
    }
    assert_eq!(rank(&mut client, "eta", "u199").await.estimated_wait, None);
    // Ten admissions a second for ten seconds.
    for _ in 0..10 {
        assert_eq!(admit(&mut client, "eta", 10).await.len(), 10);
        app.clock.advance_ms(1000);
    }
    let place = rank(&mut client, "eta", "u199").await;
    assert_eq!(place.position, 100);
    // About 10 per second observed, 100 ahead: about 10 s, rounded up.
    let wait = place
        .estimated_wait
        .expect("an estimate once admissions were seen");
    assert!((10..=12).contains(&wait.seconds), "estimate {wait:?}");
    let stats = app.stats("eta").await;
    assert!(
        (8.5..=10.5).contains(&stats.admit_rate),
        "rate {}",
        stats.admit_rate
    );
}
