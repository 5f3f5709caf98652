//! Several service instances sharing one Redis act as one queue.

use std::collections::BTreeSet;
use std::time::Duration;

use tokio_stream::StreamExt;
use waitroom::pb;

use crate::helpers::*;

#[tokio::test]
async fn two_instances_admitting_concurrently_admit_nobody_twice_and_skip_nobody() {
    let redis = TestRedis::start();
    let prefix = fresh_prefix();
    let one = TestApp::spawn(TestApp::redis_config(&redis.url(), &prefix)).await;
    let two = TestApp::spawn(TestApp::redis_config(&redis.url(), &prefix)).await;
    one.create_queue(queue("sale")).await;
    let users = 3000u64;
    let mut enqueuers = Vec::new();
    for (i, app) in [&one, &two].into_iter().enumerate() {
        let mut client = app.client().await;
        enqueuers.push(tokio::spawn(async move {
            for n in (i as u64..users).step_by(2) {
                enqueue(&mut client, "sale", &format!("u{n}")).await;
            }
        }));
    }
    for task in enqueuers {
        task.await.unwrap();
    }
    let mut admitters = Vec::new();
    for app in [&one, &two, &one, &two] {
        let mut client = app.client().await;
        admitters.push(tokio::spawn(async move {
            let mut got = Vec::new();
            loop {
                let batch = admit(&mut client, "sale", 37).await;
                if batch.is_empty() {
                    return got;
                }
                got.extend(batch.into_iter().map(|a| (a.ticket, a.user_id)));
            }
        }));
    }
    let mut tickets = BTreeSet::new();
    let mut names = BTreeSet::new();
    for task in admitters {
        let got = task.await.unwrap();
        // Each admitter's own admissions come in ticket order.
        assert!(got.windows(2).all(|w| w[0].0 < w[1].0));
        for (ticket, user) in got {
            assert!(tickets.insert(ticket), "ticket {ticket} admitted twice");
            assert!(names.insert(user.clone()), "{user} admitted twice");
        }
    }
    assert_eq!(
        tickets,
        (1..=users).collect::<BTreeSet<_>>(),
        "nobody skipped"
    );
    assert_eq!(names.len() as u64, users);
}

#[tokio::test]
async fn a_user_keeps_one_place_across_instances() {
    let redis = TestRedis::start();
    let prefix = fresh_prefix();
    let one = TestApp::spawn(TestApp::redis_config(&redis.url(), &prefix)).await;
    let two = TestApp::spawn(TestApp::redis_config(&redis.url(), &prefix)).await;
    one.create_queue(queue("sale")).await;
    let mut a = one.client().await;
    let mut b = two.client().await;
    enqueue(&mut a, "sale", "first").await;
    let here = enqueue(&mut a, "sale", "alice").await;
    let there = enqueue(&mut b, "sale", "alice").await;
    assert_eq!((here.ticket, here.position), (there.ticket, there.position));
    let rank_there = rank(&mut b, "sale", "alice").await;
    assert_eq!(rank_there.position, 2);
    assert!(leave(&mut b, "sale", "first").await);
    assert_eq!(rank(&mut a, "sale", "alice").await.position, 1);
}

/// An admission made through one replica reaches a watcher held by another
/// at once, not at that replica's next refresh: the admitting replica
/// announces it. The refresh interval here is a minute, so only the
/// announcement can bring it within the test's seconds; a watcher whose
/// replica missed it would still get it at the interval.
#[tokio::test]
async fn an_admission_through_one_replica_reaches_a_watcher_on_another_at_once() {
    let redis = TestRedis::start();
    let prefix = fresh_prefix();
    let config = || {
        let mut config = TestApp::redis_config(&redis.url(), &prefix);
        config.watch_interval = Duration::from_secs(60);
        config
    };
    let one = TestApp::spawn(config()).await;
    let two = TestApp::spawn(config()).await;
    one.create_queue(queue("told")).await;
    let mut client = one.client().await;
    for user in ["a", "b"] {
        enqueue(&mut client, "told", user).await;
    }
    let mut watching = open(&two, "told", "a").await;
    let first = watching.next().await.unwrap().unwrap().place.unwrap();
    assert_eq!(first.state(), pb::PlaceState::Waiting);
    // A message published before replica two subscribes is missed: admit
    // once both replicas listen on the deployment's channel.
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let channel = format!("{prefix}:announce");
    wait_until("both replicas subscribed", Duration::from_secs(10), || {
        let (_, listening): (String, u64) = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(&channel)
            .query(&mut conn)
            .unwrap();
        std::future::ready(listening >= 2)
    })
    .await;
    assert_eq!(admit(&mut client, "told", 1).await.len(), 1);
    let admitted = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(Ok(message)) = watching.next().await {
            if message
                .place
                .is_some_and(|p| p.state() == pb::PlaceState::Admitted)
            {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(
        admitted,
        Ok(true),
        "the admission made through the other replica did not arrive within 10 s"
    );
}
