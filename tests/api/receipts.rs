//! Place receipts over gRPC: issued with every place in line, refused when
//! not genuine, answering polls and opening streams from a replica's copy
//! of the line, and giving back the places of a line the store lost.

use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::EncodePrivateKey;
use tokio_stream::StreamExt;
use tonic::Code;
use waitroom::config::{Config, QueueSpec};
use waitroom::pb::{self, PlaceState};

use crate::helpers::*;

/// A config whose signing key (and so receipt key) is `seed`'s: replicas
/// given the same seed check each other's receipts.
fn with_key(mut config: Config, seed: u8) -> Config {
    let dir = std::env::temp_dir().join(format!("waitroom-receipts-{}", fresh_prefix()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("signing.pem");
    let pem = SigningKey::from_bytes(&[seed; 32])
        .to_pkcs8_pem(Default::default())
        .unwrap();
    std::fs::write(&path, pem.as_bytes()).unwrap();
    config.signing_key = Some(path);
    config
}

async fn rank_with(
    app: &TestApp,
    queue: &str,
    user: &str,
    receipt: &str,
) -> Result<pb::Place, tonic::Status> {
    let request = pb::GetRankRequest {
        receipt: receipt.to_owned(),
        ..rank_request(queue, user)
    };
    Ok(app
        .client()
        .await
        .get_rank(request)
        .await?
        .into_inner()
        .place
        .expect("a place"))
}

async fn enqueue_with(
    app: &TestApp,
    queue: &str,
    user: &str,
    receipt: &str,
) -> Result<pb::Place, tonic::Status> {
    let request = pb::EnqueueRequest {
        receipt: receipt.to_owned(),
        ..enqueue_request(queue, user)
    };
    Ok(app
        .client()
        .await
        .enqueue(request)
        .await?
        .into_inner()
        .place
        .expect("a place"))
}

async fn watch_with(
    app: &TestApp,
    queue: &str,
    user: &str,
    receipt: &str,
) -> Result<tonic::Streaming<pb::WatchRankResponse>, tonic::Status> {
    let request = pb::WatchRankRequest {
        receipt: receipt.to_owned(),
        ..watch_request(queue, user)
    };
    Ok(app.client().await.watch_rank(request).await?.into_inner())
}

/// `0..n` in a random order (xorshift seeded by the clock).
fn shuffled(n: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    let mut seed = now_ms() | 1;
    for i in (1..order.len()).rev() {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        order.swap(i, (seed % (i as u64 + 1)) as usize);
    }
    order
}

/// Waits until `app` serves `queue`: declared, and made (or re-made).
async fn has_queue(app: &TestApp, queue: &str, what: &str, within: Duration) {
    wait_until(what, within, || async {
        app.admin()
            .await
            .get_queue(pb::GetQueueRequest {
                queue_id: queue.into(),
            })
            .await
            .is_ok()
    })
    .await;
}

#[tokio::test]
async fn every_place_in_line_carries_a_receipt_and_no_other_place_does() {
    let app = TestApp::on_memory().await;
    let mut q = queue("r");
    q.max_active = 1;
    app.create_queue(q).await;
    let mut client = app.client().await;
    let first = enqueue(&mut client, "r", "alice").await;
    assert_eq!(first.state(), PlaceState::Admitted);
    assert!(first.receipt.is_empty(), "an admission has no receipt");
    let waiting = enqueue(&mut client, "r", "bob").await;
    assert_eq!(waiting.state(), PlaceState::Waiting);
    assert!(
        !waiting.receipt.is_empty() && waiting.receipt.len() <= 256,
        "{}",
        waiting.receipt
    );
    let polled = rank_with(&app, "r", "bob", &waiting.receipt).await.unwrap();
    assert_eq!((polled.ticket, polled.position), (2, 1));
    assert!(!polled.receipt.is_empty());
    let mut stream = watch_with(&app, "r", "bob", &polled.receipt).await.unwrap();
    let streamed = stream.next().await.unwrap().unwrap().place.unwrap();
    assert_eq!(streamed.position, 1);
    assert!(!streamed.receipt.is_empty());
    app.stop().await;
}

#[tokio::test]
async fn a_receipt_tampered_with_or_of_another_queue_or_user_is_refused_and_changes_nothing() {
    let app = TestApp::on_memory().await;
    app.create_queue(queue("r")).await;
    app.create_queue(queue("other")).await;
    let mut client = app.client().await;
    let alice = enqueue(&mut client, "r", "alice").await.receipt;
    let elsewhere = enqueue(&mut client, "other", "alice").await.receipt;
    let tampered = alice.replacen(".1.", ".0.", 1);
    assert_ne!(tampered, alice);
    let cases = [
        ("bob", alice.as_str(), "another user's"),
        ("alice", elsewhere.as_str(), "another queue's"),
        ("alice", tampered.as_str(), "altered"),
        ("alice", "not a receipt", "made up"),
    ];
    for (user, receipt, what) in cases {
        for status in [
            rank_with(&app, "r", user, receipt).await.unwrap_err(),
            enqueue_with(&app, "r", user, receipt).await.unwrap_err(),
            watch_with(&app, "r", user, receipt).await.unwrap_err(),
        ] {
            assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
            assert_eq!(bad_field(&status), "receipt", "{what}");
        }
    }
    // Bob's refused enqueue gave him nothing.
    let status = client.get_rank(rank_request("r", "bob")).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(app.stats("r").await.waiting_count, 1);
    app.stop().await;
}

#[tokio::test]
async fn a_lapsed_receipt_is_refused_when_it_is_needed_and_a_key_no_longer_held_is_set_aside() {
    let redis = TestRedis::start();
    let prefix = fresh_prefix();
    let config = || TestApp::redis_config(&redis.url(), &prefix);
    let app = TestApp::spawn(with_key(config(), 1)).await;
    let mut q = queue("r");
    q.heartbeat_timeout = secs(5);
    app.create_queue(q).await;
    let mut client = app.client().await;
    let alice = enqueue(&mut client, "r", "alice").await.receipt;
    // Nobody hears from alice: released after the timeout and a quarter.
    app.pass_time(7_000).await;
    assert_eq!(app.stats("r").await.abandoned_total, 1);
    for status in [
        rank_with(&app, "r", "alice", &alice).await.unwrap_err(),
        enqueue_with(&app, "r", "alice", &alice).await.unwrap_err(),
        watch_with(&app, "r", "alice", &alice).await.unwrap_err(),
    ] {
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert_eq!(bad_field(&status), "receipt", "{status:?}");
        assert!(status.message().contains("lapsed"), "{status:?}");
    }
    assert_eq!(app.stats("r").await.waiting_count, 0);
    // Without it she joins again, at the back.
    assert_eq!(enqueue(&mut client, "r", "alice").await.ticket, 2);
    // A replica signing with another key sets her receipt aside: the call
    // is answered as if it carried none.
    let fresh = rank(&mut client, "r", "alice").await.receipt;
    let rotated = TestApp::spawn_with_clock(with_key(config(), 2), app.clock.clone()).await;
    let place = rank_with(&rotated, "r", "alice", &fresh).await.unwrap();
    assert_eq!(place.ticket, 2);
    rotated.stop().await;
    app.stop().await;
}

/// The Redis commands 100 polls and 100 stream openings of the visitors
/// from `from` on cost, with their receipts or without.
async fn store_commands(
    redis: &TestRedis,
    app: &TestApp,
    receipts: &[String],
    from: usize,
    with_receipts: bool,
) -> u64 {
    let receipt = |i: usize| {
        if with_receipts {
            receipts[i].as_str()
        } else {
            ""
        }
    };
    let before = redis.commands_processed();
    for i in from..from + 100 {
        let place = rank_with(app, "r", &format!("u{i}"), receipt(i))
            .await
            .unwrap();
        assert_eq!(place.position, i as u64 + 1);
    }
    let mut streams = Vec::new();
    for i in from + 100..from + 200 {
        let mut stream = watch_with(app, "r", &format!("u{i}"), receipt(i))
            .await
            .unwrap();
        let place = stream.next().await.unwrap().unwrap().place.unwrap();
        assert_eq!(place.position, i as u64 + 1);
        streams.push(stream);
    }
    redis.commands_processed() - before
}

/// Polls and stream openings that bring a receipt cost the store nothing:
/// the replica's copy of the line knows the ticket.
#[tokio::test]
async fn receipts_answer_polls_and_open_streams_without_a_store_lookup() {
    let redis = TestRedis::start();
    let prefix = fresh_prefix();
    let config = || with_key(TestApp::redis_config(&redis.url(), &prefix), 3);
    let (one, two) = (
        TestApp::spawn(config()).await,
        TestApp::spawn(config()).await,
    );
    one.create_queue(queue("r")).await;
    let mut client = one.client().await;
    let mut receipts = Vec::new();
    for i in 0..400 {
        receipts.push(enqueue(&mut client, "r", &format!("u{i}")).await.receipt);
    }
    // Replica two follows the line for a watcher of its own.
    let _follower = open(&two, "r", "u0").await;
    two.refreshed("r").await;
    let without = store_commands(&redis, &two, &receipts, 0, false).await;
    let with = store_commands(&redis, &two, &receipts, 200, true).await;
    assert!(
        with * 4 < without,
        "200 calls cost {with} Redis commands with receipts, {without} without"
    );
    one.stop().await;
    two.stop().await;
}

/// Redis comes back empty under two replicas: the declared queue is back
/// within two seconds of Redis answering, visitors who return with their
/// receipts in any order stand in their old order ahead of newcomers, and
/// nobody admitted before the loss is given a place again. A queue watched
/// here that nothing re-makes keeps the replica unready until an operator
/// acts.
#[tokio::test]
async fn after_redis_comes_back_empty_the_line_re_forms_in_its_old_order() {
    const VISITORS: usize = 1_000;
    const ADMITTED: u32 = 50;
    let mut redis = TestRedis::start();
    let (port, url) = (redis.port(), redis.url());
    let prefix = fresh_prefix();
    let config = || {
        let mut config = with_key(TestApp::redis_config(&url, &prefix), 4);
        config.queues = vec![QueueSpec::parse("sale:heartbeat_timeout=30s").unwrap()];
        config
    };
    let clock = std::sync::Arc::new(waitroom::domain::ManualClock::new(now_ms()));
    let one = TestApp::spawn_with_clock(config(), clock.clone()).await;
    let two = TestApp::spawn_with_clock(config(), clock.clone()).await;
    one.create_queue(queue("undeclared")).await;
    let mut c1 = one.client().await;
    let mut c2 = two.client().await;
    enqueue(&mut c2, "undeclared", "someone").await;
    let mut receipts = Vec::new();
    for i in 0..VISITORS {
        let client = if i % 2 == 0 { &mut c1 } else { &mut c2 };
        let place = enqueue(client, "sale", &format!("v{i}")).await;
        receipts.push((format!("v{i}"), place.ticket, place.receipt));
    }
    let admitted = admit(&mut c1, "sale", ADMITTED).await;
    assert_eq!(admitted.len(), ADMITTED as usize);
    // Both replicas follow both lines (a watcher each), so they know where
    // the line stood when it was lost.
    let _watchers = (
        open(&one, "sale", &receipts[VISITORS - 1].0).await,
        open(&two, "sale", &receipts[VISITORS - 2].0).await,
        open(&two, "undeclared", "someone").await,
    );
    one.refreshed("sale").await;
    two.refreshed("sale").await;
    two.refreshed("undeclared").await;

    let remade_before = waitroom::telemetry::metrics::metrics().queues_remade.get();
    redis.stop();
    // An outage both replicas saw.
    for app in [&one, &two] {
        wait_until("the outage seen", Duration::from_secs(5), || async {
            matches!(
                app.readiness().await,
                Ok(tonic_health::pb::health_check_response::ServingStatus::NotServing)
            )
        })
        .await;
    }
    clock.advance_ms(500);
    let _empty = TestRedis::start_on(port);
    let back = Instant::now();
    // A third replica starts as Redis comes back (a rollout): it saw
    // nothing of the line, and leaves the re-making to those that did.
    let three = tokio::spawn(TestApp::spawn_with_clock(config(), clock.clone()));
    has_queue(
        &one,
        "sale",
        "the declared queue re-made",
        Duration::from_secs(2),
    )
    .await;
    let remade_after = back.elapsed();
    // Counted once, by whichever replica re-made it (other tests in this
    // process may re-make queues of their own meanwhile).
    assert!(waitroom::telemetry::metrics::metrics().queues_remade.get() > remade_before);

    // The visitors come back in random order, each with the receipt of
    // their last place, through either replica.
    let order = shuffled(VISITORS);
    let mut newcomer_ticket = 0;
    for (n, i) in order.into_iter().enumerate() {
        let (user, ticket, receipt) = &receipts[i];
        let app = if n % 2 == 0 { &one } else { &two };
        if n == VISITORS / 2 {
            // Someone new arrives while the line re-forms: behind everyone.
            newcomer_ticket = enqueue_with(app, "sale", "newcomer", "")
                .await
                .unwrap()
                .ticket;
        }
        let answer = rank_with(app, "sale", user, receipt).await;
        if *ticket <= u64::from(ADMITTED) {
            let status = answer.unwrap_err();
            assert_eq!(
                status.code(),
                Code::NotFound,
                "{user} was admitted before the loss"
            );
        } else {
            assert_eq!(answer.unwrap().ticket, *ticket, "{user}");
        }
    }
    assert!(newcomer_ticket > VISITORS as u64, "{newcomer_ticket}");
    three.await.unwrap().stop().await;
    // Places given back through the other replica reach each copy with
    // its next refresh.
    one.refreshed("sale").await;
    let mut client = one.client().await;
    let mut last = 0;
    for (user, ticket, _) in receipts.iter().skip(ADMITTED as usize) {
        let place = rank(&mut client, "sale", user).await;
        assert_eq!(place.ticket, *ticket);
        assert_eq!(place.position, last + 1, "{user}");
        last = place.position;
    }
    assert_eq!(
        rank(&mut client, "sale", "newcomer").await.position,
        last + 1
    );

    // The undeclared queue nobody re-makes keeps replica two unready until
    // an operator creates it again.
    let (status, _, body) = http_get(&two, "/readyz").await;
    assert!(!status.contains(" 200 "), "{status} {body}");
    two.create_queue(queue("undeclared")).await;
    two.wait_until_ready().await;
    eprintln!("the declared queue was back {remade_after:?} after Redis answered");
    one.stop().await;
    two.stop().await;
}

/// Redis comes back empty while the service restarts too, so no replica
/// saw the lost line: the starting replica makes the declared queue ready
/// to take it back, and visitors who return with their receipts, in any
/// order, stand in their old order.
#[tokio::test]
async fn a_replica_starting_on_an_empty_redis_takes_the_lost_line_back_from_receipts() {
    let mut redis = TestRedis::start();
    let (port, url, prefix) = (redis.port(), redis.url(), fresh_prefix());
    let config = || {
        let mut config = with_key(TestApp::redis_config(&url, &prefix), 6);
        config.queues = vec![QueueSpec::parse("sale:heartbeat_timeout=30s").unwrap()];
        config
    };
    let one = TestApp::spawn(config()).await;
    let mut client = one.client().await;
    let mut receipts = Vec::new();
    for i in 0..20 {
        let place = enqueue(&mut client, "sale", &format!("v{i}")).await;
        assert!(!place.receipt.is_empty());
        receipts.push((format!("v{i}"), place.ticket, place.receipt));
    }
    one.stop().await;
    redis.stop();
    let _empty = TestRedis::start_on(port);
    let two = TestApp::spawn(config()).await;
    has_queue(
        &two,
        "sale",
        "the declared queue made",
        Duration::from_secs(5),
    )
    .await;
    for (user, ticket, receipt) in receipts.iter().rev() {
        let place = rank_with(&two, "sale", user, receipt)
            .await
            .unwrap_or_else(|status| panic!("{user}: {status:?}"));
        assert_eq!(place.ticket, *ticket, "{user}");
    }
    let mut client = two.client().await;
    for (n, (user, _, _)) in receipts.iter().enumerate() {
        assert_eq!(rank(&mut client, "sale", user).await.position, n as u64 + 1);
    }
    two.stop().await;
}

/// A queue declared over sub-lines (`shards=3`) is made over them, and when
/// its Redis comes back empty it is made again over as many: visitors who
/// return with their receipts in any order stand in their old order, those
/// admitted before the loss are not placed again, and a newcomer stands
/// behind everyone.
#[tokio::test]
async fn a_declared_queue_over_sub_lines_is_made_again_over_them_after_redis_comes_back_empty() {
    declared_over_sub_lines_lost().await;
}

/// When only the head is lost (its node back empty) while every sub-line
/// stands, the declared queue is made again from its sub-lines: the same
/// queue (its epoch, and its settings as an operator changed them since
/// the declaration), everyone in their place without a receipt, those
/// admitted still admitted, a newcomer behind everyone on a ticket nobody
/// holds, and admission going on from the front. A sub-line lost after
/// that still gives back only the places of those not admitted.
#[tokio::test]
async fn a_declared_queue_over_sub_lines_whose_head_alone_is_lost_is_made_again_from_its_sub_lines()
{
    const VISITORS: usize = DECLARED_VISITORS;
    let redis = TestRedis::start();
    let (url, prefix) = (redis.url(), fresh_prefix());
    let (app, mut visitors, admitted) = declared_sale_over_sub_lines(&url, &prefix, false).await;
    let mut client = app.client().await;
    app.admin()
        .await
        .update_queue(pb::UpdateQueueRequest {
            queue: Some(pb::Queue {
                notice: "Doors open at six".into(),
                ..queue("sale")
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["notice".into()],
            }),
        })
        .await
        .unwrap();
    let before = app.get_queue("sale").await;
    let _watcher = open(&app, "sale", &visitors[VISITORS - 1].0).await;
    app.refreshed("sale").await;

    let connect = || {
        redis::Client::open(url.as_str())
            .and_then(|client| client.get_connection())
            .unwrap()
    };
    // The operator's change had not reached one sub-line's copy when the
    // head was lost.
    let lagging = format!("{prefix}:{{sale/3~2}}:config");
    let _: () = redis::cmd("HSET")
        .arg(&lagging)
        .arg("notice")
        .arg("")
        .arg("settings_version")
        .arg(0)
        .query(&mut connect())
        .unwrap();
    let mut conn = connect();
    let mut lose = |pattern: String| {
        let keys: Vec<String> = redis::cmd("KEYS").arg(&pattern).query(&mut conn).unwrap();
        assert!(!keys.is_empty(), "{pattern}");
        let _: () = redis::cmd("DEL").arg(&keys).query(&mut conn).unwrap();
    };
    lose(format!("{prefix}:{{sale}}:*"));
    has_queue(&app, "sale", "the head made again", Duration::from_secs(5)).await;
    let after = app.get_queue("sale").await;
    assert_eq!(after.create_time, before.create_time, "the same queue");
    assert_eq!(
        (after.shards, after.notice.as_str()),
        (3, "Doors open at six")
    );
    let copied: String = redis::cmd("HGET")
        .arg(&lagging)
        .arg("notice")
        .query(&mut connect())
        .unwrap();
    assert_eq!(
        copied, "Doors open at six",
        "every sub-line takes the settings"
    );

    // Joins less than τ apart (this test's clock stood still) took
    // tickets from their sub-lines' blocks: the line is in ticket order.
    visitors.sort_by_key(|(_, ticket, _)| *ticket);
    rank(&mut client, "sale", &visitors[VISITORS - 1].0).await;
    app.refreshed("sale").await;
    let mut position = 0;
    for (user, ticket, _) in &visitors {
        let place = rank(&mut client, "sale", user).await;
        if admitted.contains(user) {
            assert_eq!(place.state(), PlaceState::Admitted, "{user}");
        } else {
            position += 1;
            assert_eq!(
                (place.state(), place.ticket, place.position),
                (PlaceState::Waiting, *ticket, position),
                "{user}"
            );
        }
    }

    // Those admitted before the head's loss stay so when their sub-line is
    // lost too: everything at or below the admission's cutoff was
    // admitted or gone.
    let first_admitted = visitors
        .iter()
        .find(|(user, _, _)| admitted.contains(user))
        .map(|(user, _, _)| user.clone())
        .unwrap();
    let sub_line = waitroom::domain::shards::sub_line_of(&first_admitted, 3);
    lose(format!("{prefix}:{{sale/3~{sub_line}}}:*"));
    // Until this replica's copy has read the loss, it answers the lost
    // places from what it read before.
    app.refreshed("sale").await;
    back_with_receipts(&app, &visitors, &admitted, |user| {
        waitroom::domain::shards::sub_line_of(user, 3) == sub_line
    })
    .await;

    let newcomer = enqueue(&mut client, "sale", "newcomer").await;
    assert!(
        newcomer.ticket > visitors[VISITORS - 1].1,
        "{}",
        newcomer.ticket
    );
    app.refreshed("sale").await;
    assert_eq!(
        rank(&mut client, "sale", "newcomer").await.position,
        position + 1
    );
    app.clock.advance_ms(1_000);
    let next: Vec<String> = admit(&mut client, "sale", 10)
        .await
        .into_iter()
        .map(|a| a.user_id)
        .collect();
    let front: Vec<String> = visitors
        .iter()
        .filter(|(user, _, _)| !admitted.contains(user))
        .take(10)
        .map(|(user, _, _)| user.clone())
        .collect();
    assert_eq!(next, front, "admission goes on from the front");
    app.stop().await;
}

/// A queue over sub-lines that nobody declared, whose head alone is lost:
/// the replicas that follow it make it again from its sub-lines, as it was,
/// rather than turning unready until an operator acts.
#[tokio::test]
async fn an_undeclared_queue_over_sub_lines_whose_head_alone_is_lost_is_made_again_from_them() {
    let redis = TestRedis::start();
    let (url, prefix) = (redis.url(), fresh_prefix());
    let mut config = with_key(TestApp::redis_config(&url, &prefix), 8);
    config.redis_sub_lines = true;
    let app = TestApp::spawn(config).await;
    app.create_queue(pb::Queue {
        shards: 3,
        ..queue("sale")
    })
    .await;
    let mut client = app.client().await;
    let mut visitors = Vec::new();
    for i in 0..60 {
        let place = enqueue(&mut client, "sale", &format!("v{i}")).await;
        visitors.push((format!("v{i}"), place.ticket));
    }
    let before = app.get_queue("sale").await;
    let _watcher = open(&app, "sale", &visitors[59].0).await;
    app.refreshed("sale").await;

    let mut conn = redis::Client::open(url.as_str())
        .and_then(|client| client.get_connection())
        .unwrap();
    let head: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:{{sale}}:*"))
        .query(&mut conn)
        .unwrap();
    let _: () = redis::cmd("DEL").arg(&head).query(&mut conn).unwrap();
    has_queue(&app, "sale", "the head made again", Duration::from_secs(5)).await;
    assert_eq!(app.get_queue("sale").await.create_time, before.create_time);
    assert_eq!(
        app.readiness().await.unwrap(),
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );
    visitors.sort_by_key(|(_, ticket)| *ticket);
    for (n, (user, ticket)) in visitors.iter().enumerate() {
        let place = rank(&mut client, "sale", user).await;
        assert_eq!(
            (place.ticket, place.position),
            (*ticket, n as u64 + 1),
            "{user}"
        );
    }
    app.stop().await;
}

/// Visitors in line at a sale declared over sub-lines, and of them admitted.
const DECLARED_VISITORS: usize = 300;
const DECLARED_ADMITTED: u32 = 30;

/// A replica on `url` whose declared sale is kept over three sub-lines
/// (`sale:shards=3`), with [`DECLARED_VISITORS`] in line (each with their
/// ticket and receipt, in joining order) and the first
/// [`DECLARED_ADMITTED`] admitted. `check_shards` asserts it was made
/// over three before anyone joins.
async fn declared_sale_over_sub_lines(
    url: &str,
    prefix: &str,
    check_shards: bool,
) -> (
    TestApp,
    Vec<(String, u64, String)>,
    std::collections::HashSet<String>,
) {
    let mut config = with_key(TestApp::redis_config(url, prefix), 8);
    config.redis_sub_lines = true;
    config.queues = vec![QueueSpec::parse("sale:shards=3,heartbeat_timeout=30s").unwrap()];
    let app = TestApp::spawn(config).await;
    has_queue(
        &app,
        "sale",
        "the declared queue made",
        Duration::from_secs(5),
    )
    .await;
    if check_shards {
        assert_eq!(app.get_queue("sale").await.shards, 3);
    }
    let mut client = app.client().await;
    let mut visitors = Vec::new();
    for i in 0..DECLARED_VISITORS {
        let place = enqueue(&mut client, "sale", &format!("v{i}")).await;
        visitors.push((format!("v{i}"), place.ticket, place.receipt));
    }
    // Past every block's τ, so admission may take the first tickets.
    app.clock.advance_ms(1_000);
    let admitted: std::collections::HashSet<String> = admit(&mut client, "sale", DECLARED_ADMITTED)
        .await
        .into_iter()
        .map(|a| a.user_id)
        .collect();
    assert_eq!(admitted.len(), DECLARED_ADMITTED as usize);
    (app, visitors, admitted)
}

/// The visitors `back` picks come back with their receipts, in random
/// order: those admitted before the loss are not placed again, everyone
/// else is given their ticket.
async fn back_with_receipts(
    app: &TestApp,
    visitors: &[(String, u64, String)],
    admitted: &std::collections::HashSet<String>,
    back: impl Fn(&str) -> bool,
) {
    for i in shuffled(visitors.len()) {
        let (user, ticket, receipt) = &visitors[i];
        if !back(user) {
            continue;
        }
        let answer = rank_with(app, "sale", user, receipt).await;
        if admitted.contains(user) {
            assert_eq!(
                answer.unwrap_err().code(),
                Code::NotFound,
                "{user} was admitted before the loss"
            );
        } else {
            let place = answer.unwrap_or_else(|status| panic!("{user}: {status:?}"));
            assert_eq!(place.ticket, *ticket, "{user}");
        }
    }
}

async fn declared_over_sub_lines_lost() {
    const VISITORS: usize = DECLARED_VISITORS;
    let mut redis = TestRedis::start();
    let (port, url, prefix) = (redis.port(), redis.url(), fresh_prefix());
    let (app, mut receipts, admitted) = declared_sale_over_sub_lines(&url, &prefix, true).await;
    let mut client = app.client().await;
    let _watcher = open(&app, "sale", &receipts[VISITORS - 1].0).await;
    app.refreshed("sale").await;

    redis.stop();
    wait_until("the outage seen", Duration::from_secs(5), || async {
        matches!(
            app.readiness().await,
            Ok(tonic_health::pb::health_check_response::ServingStatus::NotServing)
        )
    })
    .await;
    let _empty = TestRedis::start_on(port);
    has_queue(
        &app,
        "sale",
        "the declared queue re-made",
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(
        app.get_queue("sale").await.shards,
        3,
        "re-made over as many"
    );

    back_with_receipts(&app, &receipts, &admitted, |_| true).await;
    // Joins less than τ apart (this test's clock stands still) take
    // tickets from their sub-lines' blocks: the line is in ticket order.
    receipts.sort_by_key(|(_, ticket, _)| *ticket);
    let newcomer = enqueue_with(&app, "sale", "newcomer", "").await.unwrap();
    assert!(
        newcomer.ticket > receipts[VISITORS - 1].1,
        "{}",
        newcomer.ticket
    );
    app.refreshed("sale").await;
    let mut last = 0;
    for (user, _, _) in receipts
        .iter()
        .filter(|(user, _, _)| !admitted.contains(user))
    {
        let place = rank(&mut client, "sale", user).await;
        assert_eq!(place.position, last + 1, "{user}");
        last = place.position;
    }
    assert_eq!(
        rank(&mut client, "sale", "newcomer").await.position,
        last + 1
    );
    app.stop().await;
}

/// A declared queue the Redis store would refuse stops the start with the
/// reason, rather than leaving the service unready for good.
#[tokio::test]
async fn a_declared_queue_over_sub_lines_without_the_preview_stops_the_start() {
    let redis = TestRedis::start();
    for (spec, sub_lines, says) in [("sale:shards=2", false, "--redis-sub-lines")] {
        let mut config = TestApp::redis_config(&redis.url(), &fresh_prefix());
        config.redis_sub_lines = sub_lines;
        config.queues = vec![QueueSpec::parse(spec).unwrap()];
        let error = waitroom::startup::Application::build(config)
            .await
            .err()
            .expect("a start-up error");
        let message = format!("{error:#}");
        assert!(
            message.contains("--queue sale") && message.contains(says),
            "{message}"
        );
    }
}
