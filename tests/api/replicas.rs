//! Several service instances sharing one Redis act as one queue.

use std::collections::BTreeSet;

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
