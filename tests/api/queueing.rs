//! Places in line: tickets, positions, idempotent enqueue, leaving, modes.

use std::collections::BTreeSet;

use waitroom::pb::{self, PlaceState, QueueMode};

use crate::helpers::*;

#[tokio::test]
async fn enqueue_gives_increasing_tickets_and_exact_positions() {
    let (app, _redis) = TestApp::on_redis().await;
    app.create_queue(queue("sale")).await;
    let mut client = app.client().await;
    for i in 1..=5u64 {
        let place = enqueue(&mut client, "sale", &format!("user-{i}")).await;
        assert_eq!(place.state(), PlaceState::Waiting);
        assert_eq!(place.position, i);
        assert_eq!(place.ticket, i);
        assert_eq!(place.waiting_count, i);
        assert_eq!(place.queue_mode(), QueueMode::Queueing);
        assert!(place.admission.is_none());
    }
}

#[tokio::test]
async fn enqueue_again_returns_the_same_place() {
    let (app, _redis) = TestApp::on_redis().await;
    app.create_queue(queue("sale")).await;
    let mut tab1 = app.client().await;
    let mut tab2 = app.client().await;
    let first = enqueue(&mut tab1, "sale", "alice").await;
    enqueue(&mut tab1, "sale", "bob").await;
    let again = enqueue(&mut tab2, "sale", "alice").await;
    assert_eq!(again.ticket, first.ticket);
    assert_eq!(again.position, 1);
    assert_eq!(again.waiting_count, 2);
}

#[tokio::test]
async fn leaving_moves_everyone_behind_up_and_a_returning_user_goes_to_the_end() {
    let (app, _redis) = TestApp::on_redis().await;
    app.create_queue(queue("sale")).await;
    let mut client = app.client().await;
    for user in ["a", "b", "c"] {
        enqueue(&mut client, "sale", user).await;
    }
    let left = leave(&mut client, "sale", "a").await;
    assert!(left);
    let again = leave(&mut client, "sale", "a").await;
    assert!(
        !again,
        "leaving twice is harmless and says nothing was left"
    );
    assert_eq!(rank(&mut client, "sale", "b").await.position, 1);
    assert_eq!(rank(&mut client, "sale", "c").await.position, 2);
    let back = enqueue(&mut client, "sale", "a").await;
    assert_eq!(back.position, 3);
    assert_eq!(back.ticket, 4);
}

#[tokio::test]
async fn thirty_two_concurrent_clients_enqueueing_2000_users_get_positions_1_to_2000() {
    let (app, _redis) = TestApp::on_redis().await;
    app.create_queue(queue("rush")).await;
    let mut tasks = Vec::new();
    for c in 0..32 {
        let mut client = app.client().await;
        tasks.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            for i in 0..(2000 / 32 + 1) {
                let n = c + 32 * i;
                if n >= 2000 {
                    break;
                }
                let place = enqueue(&mut client, "rush", &format!("u{n}")).await;
                seen.push((place.position, place.ticket));
            }
            seen
        }));
    }
    let mut positions = BTreeSet::new();
    let mut tickets = BTreeSet::new();
    for task in tasks {
        for (position, ticket) in task.await.unwrap() {
            assert_eq!(position, ticket, "nobody leaves, so position equals ticket");
            assert!(
                positions.insert(position),
                "position {position} given twice"
            );
            tickets.insert(ticket);
        }
    }
    assert_eq!(positions, (1..=2000).collect::<BTreeSet<u64>>());
    assert_eq!(tickets.len(), 2000);
    let mut client = app.client().await;
    assert_eq!(rank(&mut client, "rush", "u1999").await.waiting_count, 2000);
}

#[tokio::test]
async fn a_queue_with_a_free_slot_and_nobody_waiting_admits_at_once() {
    let (app, _redis) = TestApp::on_redis().await;
    app.create_queue(pb::Queue {
        max_active: 2,
        ..queue("small")
    })
    .await;
    let mut client = app.client().await;
    assert_eq!(
        enqueue(&mut client, "small", "a").await.state(),
        PlaceState::Admitted
    );
    let b = enqueue(&mut client, "small", "b").await;
    assert_eq!(b.state(), PlaceState::Admitted);
    assert!(!b.admission.as_ref().unwrap().token.is_empty());
    let c = enqueue(&mut client, "small", "c").await;
    assert_eq!(c.state(), PlaceState::Waiting);
    assert_eq!(c.position, 1);
    // The cap holds for AdmitBatch too.
    assert!(admit(&mut client, "small", 10).await.is_empty());
    complete(&mut client, "small", "a").await;
    let admitted = admit(&mut client, "small", 10).await;
    assert_eq!(admitted.len(), 1);
    assert_eq!(admitted[0].user_id, "c");
}

#[tokio::test]
async fn an_admission_holds_its_slot_until_its_ttl_passes() {
    let (app, _redis) = TestApp::on_redis().await;
    app.create_queue(pb::Queue {
        max_active: 1,
        admission_ttl: secs(30),
        ..queue("ttl")
    })
    .await;
    let mut client = app.client().await;
    assert_eq!(
        enqueue(&mut client, "ttl", "a").await.state(),
        PlaceState::Admitted
    );
    assert_eq!(
        enqueue(&mut client, "ttl", "b").await.state(),
        PlaceState::Waiting
    );
    app.clock.advance_ms(29_999);
    assert!(admit(&mut client, "ttl", 1).await.is_empty());
    app.clock.advance_ms(1);
    let admitted = admit(&mut client, "ttl", 1).await;
    assert_eq!(admitted[0].user_id, "b");
    let missing = client.get_rank(rank_request("ttl", "a")).await.unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
    let stats = app.stats("ttl").await;
    assert_eq!(stats.expired_total, 1);
    assert_eq!(stats.active_count, 1);
}

#[tokio::test]
async fn pass_through_admits_newcomers_and_those_already_waiting() {
    let (app, _redis) = TestApp::on_redis().await;
    app.create_queue(queue("flip")).await;
    let mut client = app.client().await;
    enqueue(&mut client, "flip", "early").await;
    app.set_mode("flip", QueueMode::PassThrough).await;
    let newcomer = enqueue(&mut client, "flip", "late").await;
    assert_eq!(newcomer.state(), PlaceState::Admitted);
    let early = rank(&mut client, "flip", "early").await;
    assert_eq!(early.state(), PlaceState::Admitted);
    assert_eq!(early.ticket, 1);
}

#[tokio::test]
async fn paused_accepts_joins_but_admits_nobody() {
    let (app, _redis) = TestApp::on_redis().await;
    app.create_queue(pb::Queue {
        max_active: 5,
        mode: QueueMode::Paused as i32,
        ..queue("hold")
    })
    .await;
    let mut client = app.client().await;
    let place = enqueue(&mut client, "hold", "a").await;
    assert_eq!(
        place.state(),
        PlaceState::Waiting,
        "paused never admits, even with free slots"
    );
    assert_eq!(place.queue_mode(), QueueMode::Paused);
    let refused = client
        .admit_batch(admit_request("hold", 1))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert_eq!(reason(&refused), "QUEUE_PAUSED");
    app.set_mode("hold", QueueMode::Queueing).await;
    assert_eq!(admit(&mut client, "hold", 1).await[0].user_id, "a");
}

#[tokio::test]
async fn closed_refuses_joins_shows_waiting_users_closed_and_reopening_keeps_places() {
    let (app, _redis) = TestApp::on_redis().await;
    app.create_queue(queue("gig")).await;
    let mut client = app.client().await;
    enqueue(&mut client, "gig", "a").await;
    enqueue(&mut client, "gig", "b").await;
    app.set_mode("gig", QueueMode::Closed).await;
    let refused = client
        .enqueue(enqueue_request("gig", "c"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert_eq!(reason(&refused), "QUEUE_CLOSED");
    let b = rank(&mut client, "gig", "b").await;
    assert_eq!(b.state(), PlaceState::Closed);
    assert_eq!(b.position, 0);
    let refused = client
        .admit_batch(admit_request("gig", 1))
        .await
        .unwrap_err();
    assert_eq!(reason(&refused), "QUEUE_CLOSED");
    app.set_mode("gig", QueueMode::Queueing).await;
    let b = rank(&mut client, "gig", "b").await;
    assert_eq!(
        (b.state(), b.position, b.ticket),
        (PlaceState::Waiting, 2, 2)
    );
}

#[tokio::test]
async fn the_in_memory_store_serves_the_same_api() {
    let app = TestApp::on_memory().await;
    app.create_queue(pb::Queue {
        max_active: 1,
        ..queue("local")
    })
    .await;
    let mut client = app.client().await;
    assert_eq!(
        enqueue(&mut client, "local", "a").await.state(),
        PlaceState::Admitted
    );
    assert_eq!(enqueue(&mut client, "local", "b").await.position, 1);
    assert!(complete(&mut client, "local", "a").await);
    assert_eq!(admit(&mut client, "local", 5).await[0].user_id, "b");
}
