//! Presence: silent users lose their places, watchers and pollers keep
//! them, a reconnect keeps them, and the wait estimate stays honest.

use std::time::{Duration, Instant};

use tokio_stream::StreamExt;
use waitroom::pb::{self, PlaceState, QueueMode};

use crate::helpers::*;

#[tokio::test]
async fn silent_users_lose_their_places_and_everyone_behind_moves_up() {
    let (app, _redis) = TestApp::on_redis().await;
    app.create_queue(pb::Queue {
        heartbeat_timeout: secs(10),
        ..queue("sale")
    })
    .await;
    let mut client = app.client().await;
    for user in ["silent-1", "polling", "silent-2", "last"] {
        enqueue(&mut client, "sale", user).await;
    }
    // Seven seconds on, two of them show life; the timeout and a quarter
    // (12.5 s) after their last sign, the other two are released.
    app.worked().await;
    app.pass_time(7_000).await;
    rank(&mut client, "sale", "polling").await;
    enqueue(&mut client, "sale", "last").await;
    app.pass_time(6_000).await;
    let mut c = app.client().await;
    wait_until("releasing the silent", Duration::from_secs(3), || async {
        app.stats("sale").await.abandoned_total == 2
    })
    .await;
    assert_eq!(rank(&mut c, "sale", "last").await.position, 2);
    assert_eq!(rank(&mut c, "sale", "polling").await.position, 1);
    let gone = c
        .get_rank(rank_request("sale", "silent-1"))
        .await
        .unwrap_err();
    assert_eq!(gone.code(), tonic::Code::NotFound);
    let stats = app.stats("sale").await;
    assert_eq!((stats.abandoned_total, stats.waiting_count), (2, 2));
    // Coming back after being released means the end of the line.
    let back = enqueue(&mut c, "sale", "silent-1").await;
    assert_eq!((back.position, back.ticket), (3, 5));
}

#[tokio::test]
async fn an_open_stream_keeps_a_place_and_a_reconnect_to_another_replica_keeps_it_too() {
    let (one, two, _redis, clock) = two_replicas().await;
    one.create_queue(pb::Queue {
        heartbeat_timeout: secs(6),
        ..queue("sale")
    })
    .await;
    let mut client = one.client().await;
    for user in ["ahead", "watcher", "behind"] {
        enqueue(&mut client, "sale", user).await;
    }
    let mut stream = open(&one, "sale", "watcher").await;
    assert_eq!(
        stream
            .next()
            .await
            .unwrap()
            .unwrap()
            .place
            .unwrap()
            .position,
        2
    );
    // Twenty seconds pass in steps; only the stream shows life.
    for _ in 0..40 {
        clock.advance_ms(500);
        one.refreshed("sale").await;
    }
    // (Looking at a place counts as a sign of life: watch the stats.)
    wait_until("releasing the silent", Duration::from_secs(3), || async {
        two.stats("sale").await.abandoned_total == 2
    })
    .await;
    let moved = tokio::time::timeout(Duration::from_secs(1), async {
        loop {
            let place = stream.next().await.unwrap().unwrap().place.unwrap();
            if place.position == 1 {
                return place;
            }
        }
    })
    .await
    .expect("the watcher moved up");
    assert_eq!((moved.ticket, moved.waiting_count), (2, 1));

    // The connection drops; the user reconnects to the other replica just
    // before the heartbeat timeout runs out, counted from the drop.
    drop(stream);
    // The stream's end is recorded as a last sign of life before it is
    // let go.
    wait_until(
        "the dropped stream let go",
        Duration::from_secs(3),
        || async { one.hub.watcher_count() == 0 },
    )
    .await;
    clock.advance_ms(5_500);
    let mut again = open(&two, "sale", "watcher").await;
    let place = again.next().await.unwrap().unwrap().place.unwrap();
    assert_eq!(
        (place.state(), place.ticket, place.position),
        (PlaceState::Waiting, 2, 1)
    );
    assert_eq!(one.stats("sale").await.abandoned_total, 2);
}

#[tokio::test]
async fn ten_streams_of_one_user_on_two_replicas_show_the_same_place() {
    let (one, two, _redis, _clock) = two_replicas().await;
    one.create_queue(queue("sale")).await;
    let mut client = one.client().await;
    for i in 0..5 {
        enqueue(&mut client, "sale", &format!("u{i}")).await;
    }
    // The same user opens ten tabs, half of them landing on each replica.
    let mut streams = Vec::new();
    for i in 0..10 {
        let app = if i % 2 == 0 { &one } else { &two };
        let place = enqueue(&mut app.client().await, "sale", "me").await;
        assert_eq!(place.ticket, 6, "one place, however many tabs");
        streams.push(open(app, "sale", "me").await);
    }
    for stream in &mut streams {
        assert_eq!(
            stream
                .next()
                .await
                .unwrap()
                .unwrap()
                .place
                .unwrap()
                .position,
            6
        );
    }
    admit(&mut client, "sale", 3).await;
    for stream in &mut streams {
        let place = tokio::time::timeout(Duration::from_secs(1), stream.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
            .place
            .unwrap();
        assert_eq!(
            (place.ticket, place.position, place.waiting_count),
            (6, 3, 3)
        );
    }
    assert_eq!(one.stats("sale").await.enqueued_total, 6);
}

#[tokio::test]
async fn closing_reaches_every_watcher_on_every_replica_within_a_second() {
    let redis = TestRedis::start();
    let prefix = fresh_prefix();
    let mut config = TestApp::redis_config(&redis.url(), &prefix);
    // The production refresh interval, not the tests' faster one.
    config.watch_interval = Duration::from_millis(250);
    let one = TestApp::spawn(config.clone()).await;
    let two = TestApp::spawn(config).await;
    one.create_queue(queue("gig")).await;
    let mut streams = Vec::new();
    for i in 0..20 {
        let app = if i % 2 == 0 { &one } else { &two };
        let user = format!("fan-{i}");
        enqueue(&mut app.client().await, "gig", &user).await;
        let mut stream = open(app, "gig", &user).await;
        stream.next().await.unwrap().unwrap();
        streams.push(stream);
    }
    let started = Instant::now();
    one.set_mode("gig", QueueMode::Closed).await;
    for stream in &mut streams {
        let closed = loop {
            let place = tokio::time::timeout(Duration::from_secs(1), stream.next())
                .await
                .expect("told within a second")
                .unwrap()
                .unwrap()
                .place
                .unwrap();
            if place.state() == PlaceState::Closed {
                break place;
            }
        };
        assert_eq!(closed.queue_mode(), QueueMode::Closed);
        assert!(
            stream.next().await.is_none(),
            "the stream ends after CLOSED"
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn reopening_a_closed_queue_keeps_everyone_and_gives_them_time_to_come_back() {
    let (app, _redis) = TestApp::on_redis().await;
    app.create_queue(pb::Queue {
        heartbeat_timeout: secs(10),
        ..queue("gig")
    })
    .await;
    let mut client = app.client().await;
    for user in ["a", "b"] {
        enqueue(&mut client, "gig", user).await;
    }
    app.set_mode("gig", QueueMode::Closed).await;
    // Closed for an hour: nobody is released meanwhile.
    app.clock.advance_ms(3_600_000);
    app.worked().await;
    app.set_mode("gig", QueueMode::Paused).await;
    let paused = rank(&mut client, "gig", "b").await;
    assert_eq!(
        (paused.state(), paused.position, paused.queue_mode()),
        (PlaceState::Waiting, 2, QueueMode::Paused)
    );
    // The reopening restarted the clock: a, silent, is released only after
    // a full heartbeat timeout (and a quarter more); b looked at the place
    // and stays.
    app.pass_time(9_000).await;
    // (Looking at a's place would count as a's sign of life.)
    assert_eq!(rank(&mut client, "gig", "b").await.position, 2);
    app.pass_time(4_000).await;
    wait_until("releasing a", Duration::from_secs(3), || async {
        app.stats("gig").await.abandoned_total == 1
    })
    .await;
    assert_eq!(rank(&mut client, "gig", "b").await.position, 1);
}

#[tokio::test]
async fn the_estimate_follows_a_changed_admission_rate_and_never_jumps_up_while_it_is_steady() {
    let (app, _redis) = TestApp::on_redis().await;
    app.create_queue(queue("eta")).await;
    let mut client = app.client().await;
    for i in 0..3000 {
        enqueue(&mut client, "eta", &format!("u{i:04}")).await;
    }
    // Sixty seconds at 10 a second, in ten steps a second.
    let mut last = None;
    for step in 0..600 {
        admit(&mut client, "eta", 1).await;
        app.clock.advance_ms(100);
        if step >= 100 && step % 10 == 0 {
            let wait = rank(&mut client, "eta", "u2999")
                .await
                .estimated_wait
                .unwrap()
                .seconds;
            if let Some(previous) = last {
                assert!(
                    wait <= previous,
                    "estimate rose from {previous} s to {wait} s at a steady rate"
                );
            }
            last = Some(wait);
        }
    }
    let place = rank(&mut client, "eta", "u2999").await;
    let wait = place.estimated_wait.unwrap().seconds as f64;
    let expected = place.position as f64 / 10.0;
    assert!(
        (wait - expected).abs() <= 1.0 + expected * 0.02,
        "{wait} s for position {}",
        place.position
    );
    // The rate doubles; after a window the estimate follows.
    for _ in 0..600 {
        admit(&mut client, "eta", 2).await;
        app.clock.advance_ms(100);
    }
    let place = rank(&mut client, "eta", "u2999").await;
    let wait = place.estimated_wait.unwrap().seconds as f64;
    let expected = place.position as f64 / 20.0;
    assert!(
        (wait - expected).abs() <= 1.0 + expected * 0.02,
        "{wait} s for position {}",
        place.position
    );
}

#[tokio::test]
async fn a_replica_that_is_not_ready_releases_nobody_and_time_counts_again_after_it_is() {
    // A Redis that may evict keys keeps the replica unready while it still
    // answers every call.
    let (app, redis) = TestApp::on_evicting_redis().await;
    app.create_queue(pb::Queue {
        heartbeat_timeout: secs(5),
        ..queue("sale")
    })
    .await;
    enqueue(&mut app.client().await, "sale", "silent").await;
    // Twice the timeout and its quarter with the worker passing all along:
    // nobody could reach this replica, so nobody is released.
    app.pass_time(13_000).await;
    assert_eq!(app.stats("sale").await.abandoned_total, 0);

    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory-policy")
        .arg("noeviction")
        .query(&mut conn)
        .unwrap();
    app.wait_until_ready().await;
    // Ready again: silence counts from just after the first pass, so the
    // silent user is released a whole timeout and its quarter later, not
    // at once.
    app.pass_time(1_000).await;
    assert_eq!(app.stats("sale").await.abandoned_total, 0);
    let rule = waitroom::domain::DEAF_AFTER_MS + 6_250;
    app.pass_time(rule - 1_500).await;
    assert_eq!(app.stats("sale").await.abandoned_total, 0);
    app.pass_time(2_000).await;
    assert_eq!(app.stats("sale").await.abandoned_total, 1);
}
