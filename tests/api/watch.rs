//! WatchRank: the current place first, then each change, then the end.

use std::time::Duration;

use tokio_stream::StreamExt;
use tonic::Streaming;
use waitroom::pb::{self, PlaceState, QueueMode};

use crate::helpers::*;

async fn next(stream: &mut Streaming<pb::WatchRankResponse>) -> pb::Place {
    tokio::time::timeout(Duration::from_secs(1), stream.next())
        .await
        .expect("an update within 1 s")
        .expect("the stream is open")
        .expect("an update, not an error")
        .place
        .expect("a place")
}

#[tokio::test]
async fn a_watcher_sees_its_place_then_each_move_then_its_admission() {
    let (app, _redis) = TestApp::on_redis().await;
    app.create_queue(queue("sale")).await;
    let mut client = app.client().await;
    for user in ["a", "b", "c"] {
        enqueue(&mut client, "sale", user).await;
    }
    let mut stream = open(&app, "sale", "c").await;
    let first = next(&mut stream).await;
    assert_eq!((first.state(), first.position), (PlaceState::Waiting, 3));

    admit(&mut client, "sale", 1).await;
    let moved = next(&mut stream).await;
    assert_eq!((moved.position, moved.waiting_count), (2, 2));

    admit(&mut client, "sale", 1).await;
    assert_eq!(next(&mut stream).await.position, 1);

    let admitted = admit(&mut client, "sale", 1).await;
    let last = next(&mut stream).await;
    assert_eq!(last.state(), PlaceState::Admitted);
    assert_eq!(
        last.admission.unwrap().token,
        admitted[0].admission.as_ref().unwrap().token
    );
    let end = tokio::time::timeout(Duration::from_secs(1), stream.next())
        .await
        .expect("the stream ends");
    assert!(end.is_none(), "nothing after the admission: {end:?}");
}

#[tokio::test]
async fn nothing_is_sent_when_nothing_changed() {
    let (app, _redis) = TestApp::on_redis().await;
    app.create_queue(queue("sale")).await;
    let mut client = app.client().await;
    enqueue(&mut client, "sale", "a").await;
    let mut stream = open(&app, "sale", "a").await;
    next(&mut stream).await;
    // The refresh interval is 50 ms: several refreshes pass with no change.
    let quiet = tokio::time::timeout(Duration::from_millis(400), stream.next()).await;
    assert!(quiet.is_err(), "unexpected message: {quiet:?}");
    enqueue(&mut client, "sale", "b").await;
    assert_eq!(next(&mut stream).await.waiting_count, 2);
}

#[tokio::test]
async fn an_admitted_user_gets_one_message_with_the_token_and_the_end() {
    let (app, _redis) = TestApp::on_redis().await;
    app.create_queue(pb::Queue {
        max_active: 1,
        ..queue("sale")
    })
    .await;
    let mut client = app.client().await;
    let place = enqueue(&mut client, "sale", "a").await;
    let mut stream = open(&app, "sale", "a").await;
    let first = next(&mut stream).await;
    assert_eq!(first.state(), PlaceState::Admitted);
    assert_eq!(first.admission, place.admission);
    assert!(stream.next().await.is_none());
}

#[tokio::test]
async fn closing_the_queue_tells_watchers_and_ends_their_streams() {
    let (app, _redis) = TestApp::on_redis().await;
    app.create_queue(queue("gig")).await;
    let mut client = app.client().await;
    enqueue(&mut client, "gig", "a").await;
    enqueue(&mut client, "gig", "b").await;
    let mut streams = vec![open(&app, "gig", "a").await, open(&app, "gig", "b").await];
    for stream in &mut streams {
        next(stream).await;
    }
    app.set_mode("gig", QueueMode::Closed).await;
    for stream in &mut streams {
        let closed = next(stream).await;
        assert_eq!(closed.state(), PlaceState::Closed);
        assert_eq!(closed.queue_mode(), QueueMode::Closed);
        assert!(stream.next().await.is_none());
    }
}

#[tokio::test]
async fn leaving_ends_the_stream_with_not_found() {
    let (app, _redis) = TestApp::on_redis().await;
    app.create_queue(queue("sale")).await;
    let mut client = app.client().await;
    enqueue(&mut client, "sale", "a").await;
    let mut stream = open(&app, "sale", "a").await;
    next(&mut stream).await;
    leave(&mut client, "sale", "a").await;
    let end = tokio::time::timeout(Duration::from_secs(1), stream.next())
        .await
        .expect("an answer within 1 s")
        .expect("a final status");
    assert_eq!(end.unwrap_err().code(), tonic::Code::NotFound);
}

#[tokio::test]
async fn several_streams_of_one_user_agree_and_a_dropped_one_costs_nothing() {
    let (app, _redis) = TestApp::on_redis().await;
    app.create_queue(queue("sale")).await;
    let mut client = app.client().await;
    for user in ["a", "b", "c"] {
        enqueue(&mut client, "sale", user).await;
    }
    let mut streams = Vec::new();
    for _ in 0..5 {
        streams.push(open(&app, "sale", "c").await);
    }
    let dropped = open(&app, "sale", "c").await;
    drop(dropped);
    for stream in &mut streams {
        assert_eq!(next(stream).await.position, 3);
    }
    admit(&mut client, "sale", 2).await;
    for stream in &mut streams {
        assert_eq!(next(stream).await.position, 1);
    }
}

/// Redis commands per second while `watchers` streams are open and nothing
/// changes.
async fn idle_commands_per_second(watchers: usize) -> f64 {
    let (app, redis) = TestApp::on_redis().await;
    app.create_queue(queue("idle")).await;
    let mut client = app.client().await;
    let mut streams = Vec::new();
    for i in 0..watchers {
        let user = format!("u{i:05}");
        enqueue(&mut client, "idle", &user).await;
        let mut stream = open(&app, "idle", &user).await;
        next(&mut stream).await;
        streams.push(stream);
    }
    // Past the openings: a refresh of the line and a worker pass since.
    app.refreshed("idle").await;
    app.worked().await;
    let before = redis.commands_processed();
    // The measure: two seconds of nothing happening.
    tokio::time::sleep(Duration::from_secs(2)).await;
    (redis.commands_processed() - before) as f64 / 2.0
}

#[tokio::test]
async fn the_redis_work_of_watching_does_not_grow_with_the_watchers() {
    let few = idle_commands_per_second(10).await;
    let many = idle_commands_per_second(1000).await;
    assert!(
        many <= few * 1.2 + 5.0,
        "{few} commands/s with 10 watchers, {many} with 1,000"
    );
}

#[tokio::test]
async fn positions_computed_from_the_log_match_the_store_under_churn() {
    let redis = TestRedis::start();
    let prefix = fresh_prefix();
    let one = TestApp::spawn(TestApp::redis_config(&redis.url(), &prefix)).await;
    let two = TestApp::spawn(TestApp::redis_config(&redis.url(), &prefix)).await;
    one.create_queue(queue("churn")).await;
    let mut a = one.client().await;
    let mut b = two.client().await;
    for i in 0..60 {
        enqueue(&mut a, "churn", &format!("u{i:02}")).await;
    }
    let mut streams = Vec::new();
    for i in (0..60).step_by(3) {
        let app = if i % 2 == 0 { &one } else { &two };
        let user = format!("u{i:02}");
        let mut stream = open(app, "churn", &user).await;
        next(&mut stream).await;
        streams.push((user, stream));
    }
    // Churn from both replicas: arrivals, leaves, admissions.
    for round in 0..5 {
        for i in 0..6 {
            enqueue(&mut b, "churn", &format!("late-{round}-{i}")).await;
        }
        leave(&mut a, "churn", &format!("u{:02}", 1 + round * 3)).await;
        leave(&mut b, "churn", &format!("late-{round}-0")).await;
        admit(&mut b, "churn", 2).await;
    }
    one.refreshed("churn").await;
    two.refreshed("churn").await;
    for (user, stream) in &mut streams {
        // The last message a stream got is the place now. Every watcher's
        // view changed (the count did, or the admission came), so each
        // stream has something after its first place.
        let mut last = None;
        while let Ok(Some(update)) =
            tokio::time::timeout(Duration::from_millis(50), stream.next()).await
        {
            let update =
                update.unwrap_or_else(|status| panic!("{user}: stream failed: {status:?}"));
            last = update.place;
        }
        let seen = last.unwrap_or_else(|| panic!("{user}: no update after the churn"));
        // The store's answer; a call that meets a loaded machine's Redis
        // timeout is asked again, as a client would.
        let truth = until("an answer from the store", Duration::from_secs(2), || {
            let (mut a, user) = (a.clone(), user.clone());
            async move {
                match a.get_rank(rank_request("churn", &user)).await {
                    Err(status) if status.code() == tonic::Code::Unavailable => {
                        Err(format!("{status:?}"))
                    }
                    answer => Ok(answer),
                }
            }
        })
        .await;
        match truth {
            Ok(truth) if seen.state() == PlaceState::Admitted => {
                // The stream ended with the admission; only that must agree.
                let truth = truth.into_inner().place.unwrap();
                assert_eq!(
                    (truth.state(), truth.ticket),
                    (PlaceState::Admitted, seen.ticket),
                    "{user}"
                );
            }
            Ok(truth) => {
                let truth = truth.into_inner().place.unwrap();
                assert_eq!(
                    (seen.state, seen.position, seen.waiting_count, seen.ticket),
                    (
                        truth.state,
                        truth.position,
                        truth.waiting_count,
                        truth.ticket
                    ),
                    "{user}"
                );
            }
            Err(status) => {
                panic!("{user}: stream shows {seen:?}, store says {status:?}")
            }
        }
    }
}

/// Admissions in quick batches, then none: every admitted watcher is told,
/// the last batch's too.
#[tokio::test]
async fn every_admitted_watcher_is_told_including_the_last_batch() {
    let (app, _redis) = TestApp::on_redis().await;
    app.create_queue(queue("flow")).await;
    let mut client = app.client().await;
    let users = 400;
    for i in 0..users {
        enqueue(&mut client, "flow", &format!("u{i:04}")).await;
    }
    let mut tasks = Vec::new();
    for i in 0..users {
        let mut stream = open(&app, "flow", &format!("u{i:04}")).await;
        tasks.push(tokio::spawn(async move {
            let mut last = None;
            while let Ok(Some(message)) = stream.message().await {
                last = message.place.map(|p| p.state());
            }
            last
        }));
    }
    app.refreshed("flow").await;
    let mut admitted = 0;
    let mut beat = every(std::time::Duration::from_millis(20));
    for _ in 0..12 {
        beat.tick().await;
        admitted += admit(&mut client, "flow", 25).await.len();
    }
    assert_eq!(admitted, 300);
    let mut told = 0;
    for (i, task) in tasks.into_iter().enumerate().take(admitted) {
        let last = tokio::time::timeout(std::time::Duration::from_secs(5), task)
            .await
            .unwrap_or_else(|_| panic!("watcher {i} was never told of its admission"))
            .unwrap();
        assert_eq!(last, Some(pb::PlaceState::Admitted), "watcher {i}");
        told += 1;
    }
    assert_eq!(told, 300);
}
