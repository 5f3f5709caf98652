//! Scheduled openings: early arrivals are pre-queued, put in a random order
//! at the opening, ahead of later arrivals; the draw can be audited.

use std::time::Duration;

use tokio_stream::StreamExt;
use waitroom::domain::UserId;
use waitroom::domain::draw::draw_order;
use waitroom::pb::{self, PlaceState};

use crate::helpers::*;

fn at(ms: u64) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp {
        seconds: (ms / 1000) as i64,
        nanos: ((ms % 1000) * 1_000_000) as i32,
    })
}

/// Moves a queue's opening to `ms`.
async fn move_opening(app: &TestApp, id: &str, ms: u64) -> Result<pb::Queue, tonic::Status> {
    let request = pb::UpdateQueueRequest {
        queue: Some(pb::Queue {
            opens_at: at(ms),
            ..queue(id)
        }),
        update_mask: Some(prost_types::FieldMask {
            paths: vec!["opens_at".into()],
        }),
    };
    let response = app.admin().await.update_queue(request).await?;
    response
        .into_inner()
        .queue
        .ok_or_else(|| tonic::Status::internal("no queue in the response"))
}

/// The service on its own Redis, serving queues over sub-lines.
async fn on_redis_with_sub_lines() -> (TestApp, TestRedis) {
    let redis = TestRedis::start();
    let mut config = TestApp::redis_config(&redis.url(), &fresh_prefix());
    config.redis_sub_lines = true;
    (TestApp::spawn(config).await, redis)
}

#[tokio::test]
async fn early_arrivals_are_drawn_into_a_random_order_ahead_of_later_ones() {
    let (app, _redis) = TestApp::on_redis().await;
    early_arrivals_drawn(app, 1).await;
}

/// Over sub-lines the draw is one draw: the same order, the same tickets.
#[tokio::test]
async fn early_arrivals_over_sub_lines_are_drawn_into_one_random_order_ahead_of_later_ones() {
    let (app, _redis) = on_redis_with_sub_lines().await;
    early_arrivals_drawn(app, 4).await;
}

async fn early_arrivals_drawn(app: TestApp, shards: u32) {
    let opens_at = (app.clock_now_s() + 60) * 1000;
    app.create_queue(pb::Queue {
        opens_at: at(opens_at),
        prequeue_window: secs(30),
        max_active: 10,
        shards,
        ..queue("drop")
    })
    .await;
    let mut client = app.client().await;

    // Too early: the pre-queue opens 30 s before the opening.
    let refused = client
        .enqueue(enqueue_request("drop", "eager"))
        .await
        .unwrap_err();
    assert_eq!(
        (refused.code(), reason(&refused).as_str()),
        (tonic::Code::FailedPrecondition, "QUEUE_NOT_OPEN")
    );

    app.clock.set_ms(opens_at - 20_000);
    let users: Vec<String> = (0..200).map(|i| format!("early-{i:03}")).collect();
    for user in &users {
        let place = enqueue(&mut client, "drop", user).await;
        assert_eq!(place.state(), PlaceState::PreQueue);
        assert_eq!((place.position, place.ticket), (0, 0));
        assert_eq!(place.opens_in, secs(20));
    }
    assert_eq!(
        rank(&mut client, "drop", "early-000").await.waiting_count,
        200
    );
    assert!(
        app.get_queue("drop").await.draw_seed.is_empty(),
        "no seed before the opening"
    );

    // The opening: the first arrival after it lines up behind everyone
    // pre-queued, whatever the draw takes.
    app.clock.set_ms(opens_at);
    let late = enqueue(&mut client, "drop", "late").await;
    assert_eq!((late.state(), late.ticket), (PlaceState::Waiting, 201));
    wait_until("the draw complete", Duration::from_secs(5), || async {
        app.get_queue("drop").await.draw_complete
    })
    .await;
    let mut positions = Vec::new();
    for user in &users {
        let place = rank(&mut client, "drop", user).await;
        assert_eq!(place.state(), PlaceState::Waiting);
        assert_eq!(
            place.position, place.ticket,
            "nobody admitted yet, tickets 1..200"
        );
        positions.push((place.position, user.clone()));
    }
    positions.sort();
    assert_eq!(
        positions.iter().map(|(p, _)| *p).collect::<Vec<_>>(),
        (1..=200).collect::<Vec<u64>>(),
        "a permutation of 1..200"
    );
    assert_eq!(rank(&mut client, "drop", "late").await.position, 201);
    let drawn: Vec<String> = positions.into_iter().map(|(_, u)| u).collect();
    assert_ne!(drawn, users, "arriving first buys nothing");

    // Anyone can recompute the order from the published seed.
    let seed = app.get_queue("drop").await.draw_seed;
    assert_eq!(seed.len(), 16);
    let ids: Vec<UserId> = users.iter().map(|u| UserId::parse(u).unwrap()).collect();
    let recomputed: Vec<String> = draw_order(&seed, &ids)
        .iter()
        .map(|u| u.to_string())
        .collect();
    assert_eq!(drawn, recomputed);

    // And admission goes by the drawn order.
    let admitted = admit(&mut client, "drop", 3).await;
    assert_eq!(
        admitted
            .iter()
            .map(|a| a.user_id.clone())
            .collect::<Vec<_>>(),
        drawn[..3]
    );
}

#[tokio::test]
async fn the_opening_can_be_moved_until_it_happens() {
    let (app, _redis) = TestApp::on_redis().await;
    let now = app.clock_now_s() * 1000;
    app.create_queue(pb::Queue {
        opens_at: at(now + 10_000),
        ..queue("drop")
    })
    .await;
    let moved = move_opening(&app, "drop", now + 20_000).await.unwrap();
    assert_eq!(moved.opens_at, at(now + 20_000));
    app.clock.set_ms(now + 20_000);
    let mut client = app.client().await;
    enqueue(&mut client, "drop", "first").await;
    let refused = move_opening(&app, "drop", now + 60_000).await.unwrap_err();
    assert_eq!(
        (refused.code(), reason(&refused).as_str()),
        (tonic::Code::FailedPrecondition, "OPENING_PASSED")
    );
}

#[tokio::test]
async fn pre_queued_watchers_follow_the_draw_to_their_place() {
    let (app, _redis) = TestApp::on_redis().await;
    watchers_follow_the_draw(app, 1).await;
}

#[tokio::test]
async fn pre_queued_watchers_over_sub_lines_follow_the_draw_to_their_place() {
    let (app, _redis) = on_redis_with_sub_lines().await;
    watchers_follow_the_draw(app, 3).await;
}

async fn watchers_follow_the_draw(app: TestApp, shards: u32) {
    let opens_at = (app.clock_now_s() + 60) * 1000;
    app.create_queue(pb::Queue {
        opens_at: at(opens_at),
        prequeue_window: secs(30),
        max_active: 10,
        shards,
        ..queue("drop")
    })
    .await;
    let mut client = app.client().await;
    app.clock.set_ms(opens_at - 10_000);
    for i in 0..50 {
        enqueue(&mut client, "drop", &format!("early-{i:02}")).await;
    }
    let mut streams = Vec::new();
    for i in 0..6 {
        let user = format!("early-{i:02}");
        let mut stream = client
            .watch_rank(watch_request("drop", &user))
            .await
            .expect("watch_rank")
            .into_inner();
        let first = stream.next().await.unwrap().unwrap().place.unwrap();
        assert_eq!(first.state(), PlaceState::PreQueue);
        streams.push((user, stream));
    }
    // One leaves the pre-queue: their stream ends with NOT_FOUND.
    let (_, mut gone) = streams.pop().unwrap();
    assert!(leave(&mut client, "drop", "early-05").await);
    let end = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match gone.next().await {
                Some(Ok(_)) => continue,
                other => break other,
            }
        }
    })
    .await
    .expect("the stream of a user who left ends");
    assert_eq!(end.unwrap().unwrap_err().code(), tonic::Code::NotFound);

    app.clock.set_ms(opens_at);
    wait_until("the draw completes", Duration::from_secs(5), || async {
        app.get_queue("drop").await.draw_complete
    })
    .await;
    for (user, stream) in &mut streams {
        let shown = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                let place = stream.next().await.unwrap().unwrap().place.unwrap();
                if place.state() == PlaceState::Waiting {
                    break place;
                }
            }
        })
        .await
        .expect("a waiting place after the draw");
        let truth = rank(&mut client, "drop", user).await;
        assert_eq!(
            (shown.ticket, shown.position, shown.waiting_count),
            (truth.ticket, truth.position, truth.waiting_count),
            "{user}"
        );
        assert!(shown.ticket >= 1 && shown.ticket <= 50, "{user}");
    }
}

#[tokio::test]
async fn a_pre_queued_watcher_hears_of_a_moved_opening_but_not_of_each_tick_of_the_countdown() {
    let (app, _redis) = TestApp::on_redis().await;
    let opens_at = (app.clock_now_s() + 60) * 1000;
    app.create_queue(pb::Queue {
        opens_at: at(opens_at),
        prequeue_window: secs(30),
        ..queue("drop")
    })
    .await;
    app.clock.set_ms(opens_at - 10_000);
    let mut client = app.client().await;
    enqueue(&mut client, "drop", "early").await;
    let mut stream = client
        .watch_rank(watch_request("drop", "early"))
        .await
        .expect("watch_rank")
        .into_inner();
    let first = stream.next().await.unwrap().unwrap().place.unwrap();
    assert_eq!(
        (first.state(), first.opens_in),
        (PlaceState::PreQueue, secs(10))
    );
    // A second passes over many refreshes: nothing the client cannot count
    // down itself.
    for step in 1..=5 {
        app.clock.set_ms(opens_at - 10_000 + step * 200);
        app.refreshed("drop").await;
    }
    let quiet = tokio::time::timeout(Duration::from_millis(300), stream.next()).await;
    assert!(
        quiet.is_err(),
        "a message for the countdown alone: {quiet:?}"
    );

    move_opening(&app, "drop", opens_at + 20_000).await.unwrap();
    let moved = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("the moved opening reaches the watcher")
        .unwrap()
        .unwrap()
        .place
        .unwrap();
    assert_eq!(
        (moved.state(), moved.opens_in),
        (PlaceState::PreQueue, secs(29))
    );
}
