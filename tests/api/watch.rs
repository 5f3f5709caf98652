//! WatchRank: the current place first, then each change, then the end.

use std::time::Duration;

use tokio_stream::StreamExt;
use tonic::Streaming;
use waitroom::pb::{self, PlaceState, QueueMode};

use crate::helpers::*;

async fn open(app: &TestApp, queue: &str, user: &str) -> Streaming<pb::WatchRankResponse> {
    app.client()
        .await
        .watch_rank(pb::WatchRankRequest {
            queue_id: queue.into(),
            user_id: user.into(),
        })
        .await
        .expect("watch_rank")
        .into_inner()
}

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
