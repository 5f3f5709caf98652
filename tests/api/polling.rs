//! `GetRank` polled by a crowd: answered from the instance's copy of the
//! line, exact within the refresh interval, the instance's own writes seen
//! at once, and every poll still a sign of life.

use std::time::Duration;

use waitroom::pb::{PlaceState, QueueMode};

use crate::helpers::*;

#[tokio::test]
async fn a_crowd_polling_its_place_costs_the_store_no_lookup_per_poll() {
    let (app, redis) = TestApp::on_redis().await;
    app.create_queue(queue("poll")).await;
    let mut client = app.client().await;
    let users: Vec<String> = (0..20).map(|i| format!("u{i:02}")).collect();
    for user in &users {
        enqueue(&mut client, "poll", user).await;
        rank(&mut client, "poll", user).await;
    }
    // The instance follows the queue's line from its next refresh on.
    app.refreshed("poll").await;
    let from_copy = || async {
        let (_, _, text) = http_get(&app, "/metrics").await;
        text.lines()
            .find_map(|l| l.strip_prefix("waitroom_rank_lookups_total{answered_by=\"copy\"} "))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let copy_before = from_copy().await;
    let before = redis.commands_processed();
    for _ in 0..10 {
        for (i, user) in users.iter().enumerate() {
            let place = rank(&mut client, "poll", user).await;
            assert_eq!(
                (place.state(), place.position, place.waiting_count),
                (PlaceState::Waiting, i as u64 + 1, 20),
                "{user}"
            );
        }
    }
    let used = redis.commands_processed() - before;
    // 200 polls; what the store sees is the instance's refreshes (a read
    // of the log, a write of the pollers' presence) every 50 ms.
    assert!(used < 100, "{used} Redis commands for 200 polls");
    // Metrics are per process (tests beside this one may add to them).
    let counted = from_copy().await - copy_before;
    assert!(
        counted >= 100.0,
        "{counted} polls counted as answered from the copy"
    );
}

#[tokio::test]
async fn a_poller_sees_this_instances_writes_at_once_and_other_replicas_within_the_interval() {
    let (one, two, _redis, _clock) = two_replicas().await;
    one.create_queue(queue("poll")).await;
    let mut a = one.client().await;
    let mut b = two.client().await;
    for user in ["a", "b", "c", "d", "e"] {
        enqueue(&mut a, "poll", user).await;
    }
    for user in ["c", "d", "e"] {
        rank(&mut a, "poll", user).await;
    }
    one.refreshed("poll").await;
    assert_eq!(rank(&mut a, "poll", "c").await.position, 3);

    // Written through this instance: seen by the very next poll.
    admit(&mut a, "poll", 1).await;
    assert_eq!(rank(&mut a, "poll", "c").await.position, 2);
    assert!(leave(&mut a, "poll", "c").await);
    let gone = a.get_rank(rank_request("poll", "c")).await.unwrap_err();
    assert_eq!(gone.code(), tonic::Code::NotFound);
    admit(&mut a, "poll", 1).await;
    let place = rank(&mut a, "poll", "d").await;
    assert_eq!((place.state(), place.position), (PlaceState::Waiting, 1));

    // Written through another replica: seen within the refresh interval.
    admit(&mut b, "poll", 1).await;
    wait_until("d sees its admission", Duration::from_secs(2), || {
        let mut a = a.clone();
        async move { rank(&mut a, "poll", "d").await.state() == PlaceState::Admitted }
    })
    .await;
    // d may have been answered by the store (its last answer was newer
    // than this instance's copy), e by the copy: within the interval too.
    wait_until("e moves up", Duration::from_secs(2), || {
        let mut a = a.clone();
        async move { rank(&mut a, "poll", "e").await.position == 1 }
    })
    .await;
    two.set_mode("poll", QueueMode::PassThrough).await;
    wait_until("e is let through", Duration::from_secs(2), || {
        let mut a = a.clone();
        async move { rank(&mut a, "poll", "e").await.state() == PlaceState::Admitted }
    })
    .await;
}

#[tokio::test]
async fn a_poll_answered_from_the_copy_keeps_the_place_for_a_whole_timeout() {
    let (app, _redis) = TestApp::on_redis().await;
    app.create_queue(waitroom::pb::Queue {
        heartbeat_timeout: secs(5),
        ..queue("poll")
    })
    .await;
    let mut client = app.client().await;
    for user in ["silent", "poller"] {
        enqueue(&mut client, "poll", user).await;
    }
    // The reaper's first pass: presence counts from it.
    app.worked().await;
    rank(&mut client, "poll", "poller").await;
    // Polled at 1 s and 2 s, from the copy; then nothing.
    for _ in 0..2 {
        app.clock.advance_ms(1000);
        app.refreshed("poll").await;
        assert_eq!(
            rank(&mut client, "poll", "poller").await.state(),
            PlaceState::Waiting
        );
    }
    app.refreshed("poll").await;
    // Released after the timeout and a quarter more (6.25 s): at 6.5 s the
    // silent user is, the poller (last seen at 2 s) is not; at 8.5 s it is.
    app.pass_time(4500).await;
    wait_until(
        "the silent user is released",
        Duration::from_secs(3),
        || async { app.stats("poll").await.abandoned_total >= 1 },
    )
    .await;
    app.worked().await;
    let stats = app.stats("poll").await;
    assert_eq!((stats.abandoned_total, stats.waiting_count), (1, 1));
    app.pass_time(2000).await;
    wait_until("the poller is released", Duration::from_secs(3), || async {
        app.stats("poll").await.abandoned_total == 2
    })
    .await;
}

#[tokio::test]
async fn a_poller_who_enqueues_again_through_this_instance_is_shown_the_new_ticket_at_once() {
    let (one, two, _redis, _clock) = two_replicas().await;
    one.create_queue(queue("poll")).await;
    let mut a = one.client().await;
    let mut b = two.client().await;
    for user in ["a", "b", "u", "c"] {
        enqueue(&mut a, "poll", user).await;
    }
    rank(&mut a, "poll", "u").await;
    one.refreshed("poll").await;
    assert_eq!(rank(&mut a, "poll", "u").await.ticket, 3);
    // Left through the other replica, back through this one.
    assert!(leave(&mut b, "poll", "u").await);
    let back = enqueue(&mut a, "poll", "u").await;
    let shown = rank(&mut a, "poll", "u").await;
    assert_eq!((shown.ticket, shown.position), (back.ticket, back.position));
    assert_eq!((shown.ticket, shown.position), (5, 4));
}

#[tokio::test]
async fn a_queue_created_again_is_a_new_line_for_its_pollers() {
    let (one, two, _redis, clock) = two_replicas().await;
    one.create_queue(queue("poll")).await;
    let mut a = one.client().await;
    let mut b = two.client().await;
    for user in ["a", "b", "u"] {
        enqueue(&mut a, "poll", user).await;
    }
    rank(&mut a, "poll", "u").await;
    one.refreshed("poll").await;
    assert_eq!(rank(&mut a, "poll", "u").await.position, 3);
    // Deleted and created again through the other replica, with as many
    // newcomers as there were changes logged before: ticket 3 is someone
    // else's now.
    let mut admin = two.admin().await;
    admin
        .delete_queue(waitroom::pb::DeleteQueueRequest {
            queue_id: "poll".into(),
        })
        .await
        .unwrap();
    clock.advance_ms(1000);
    two.create_queue(queue("poll")).await;
    for i in 0..6 {
        enqueue(&mut b, "poll", &format!("new-{i}")).await;
    }
    // Replica one has heard of it: its copy of the old line is let go, or
    // has read the line since.
    let id = waitroom::domain::QueueId::parse("poll").unwrap();
    let before = one.hub.refreshes(&id);
    wait_until("replica one caught up", Duration::from_secs(10), || {
        let now = one.hub.refreshes(&id);
        std::future::ready(now == 0 || now >= before + 2)
    })
    .await;
    let gone = a.get_rank(rank_request("poll", "u")).await.unwrap_err();
    assert_eq!(gone.code(), tonic::Code::NotFound);
    assert_eq!(rank(&mut a, "poll", "new-2").await.position, 3);
}

#[tokio::test]
async fn a_pollers_position_never_rises_under_churn_through_both_replicas() {
    let (one, two, _redis, _clock) = two_replicas().await;
    one.create_queue(queue("poll")).await;
    let mut a = one.client().await;
    let mut b = two.client().await;
    for i in 0..40 {
        enqueue(&mut a, "poll", &format!("u{i:02}")).await;
    }
    // Admissions and leaves through the other replica, while this one is
    // polled and admits now and then itself.
    let churn = tokio::spawn(async move {
        let mut beat = every(Duration::from_millis(15));
        for round in 0..10 {
            admit(&mut b, "poll", 1).await;
            assert!(leave(&mut b, "poll", &format!("u{:02}", 20 + round)).await);
            beat.tick().await;
        }
    });
    let (mut last, mut polls, mut admitted_here) = (u64::MAX, 0, 0);
    while !churn.is_finished() {
        let place = rank(&mut a, "poll", "u39").await;
        assert_eq!(place.state(), PlaceState::Waiting);
        assert!(
            place.position <= last,
            "position rose from {last} to {}",
            place.position
        );
        last = place.position;
        polls += 1;
        if polls % 5 == 0 && admitted_here < 5 {
            admit(&mut a, "poll", 1).await;
            admitted_here += 1;
        }
    }
    churn.await.unwrap();
    // Within the interval the copy agrees with the store (asked through the
    // other replica, which never answered this user from a copy).
    let mut b = two.client().await;
    let truth = rank(&mut b, "poll", "u39").await.position;
    assert_eq!(truth, 40 - 10 - 10 - admitted_here);
    wait_until(
        "the copy agrees with the store",
        Duration::from_secs(2),
        || {
            let mut a = a.clone();
            async move { rank(&mut a, "poll", "u39").await.position == truth }
        },
    )
    .await;
}
