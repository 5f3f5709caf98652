//! Sale-day defects, each pinned by the test that found it: a shortened
//! heartbeat, consumed tokens that came back, revocation, token ids after
//! lost writes, edge values at the API, and a caller told "failed".

use std::time::Duration;

use tokio_stream::StreamExt;
use tonic::Code;
use waitroom::pb::{self, PlaceState, Verdict};

use crate::helpers::*;

async fn verdict(
    client: &mut waitroom::pb::queue_service_client::QueueServiceClient<tonic::transport::Channel>,
    queue: &str,
    token: &str,
    consume: bool,
) -> Verdict {
    verify(client, queue, token, consume).await.verdict()
}

fn token_of(admitted: &pb::AdmittedUser) -> String {
    admitted.admission.as_ref().unwrap().token.clone()
}

#[tokio::test]
async fn shortening_the_heartbeat_timeout_releases_nobody_whose_stream_stays_open() {
    let (one, two, _redis, clock) = two_replicas().await;
    one.create_queue(pb::Queue {
        heartbeat_timeout: secs(60),
        ..queue("sale")
    })
    .await;
    let mut on_two = two.client().await;
    enqueue(&mut on_two, "sale", "watcher").await;
    enqueue(&mut on_two, "sale", "silent").await;
    let mut stream = open(&two, "sale", "watcher").await;
    assert!(stream.next().await.is_some());
    // Fifteen seconds of an open stream: within the old timeout's rules,
    // nothing needed recording yet.
    clock.advance_ms(15_000);
    two.refreshed("sale").await;
    // The operator shortens the timeout through the other replica.
    let shortened = pb::Queue {
        heartbeat_timeout: secs(10),
        ..queue("sale")
    };
    update(&one, shortened, "heartbeat_timeout")
        .await
        .expect("update_queue");
    // Thirty seconds pass in steps: the stream's replica follows the new
    // timeout, and the silent user is released by it.
    for _ in 0..60 {
        clock.advance_ms(500);
        two.refreshed("sale").await;
    }
    wait_until("releasing the silent", Duration::from_secs(3), || async {
        one.stats("sale").await.abandoned_total == 1
    })
    .await;
    let place = rank(&mut on_two, "sale", "watcher").await;
    assert_eq!(place.state(), PlaceState::Waiting);
    assert_eq!(one.stats("sale").await.abandoned_total, 1);
    // The stream is still open: nothing ended it.
    let next = tokio::time::timeout(Duration::from_millis(300), stream.next()).await;
    assert!(
        !matches!(next, Ok(Some(Err(_))) | Ok(None)),
        "the stream ended: {next:?}"
    );
}

#[tokio::test]
async fn a_consumed_token_is_refused_for_as_long_as_the_verifier_accepts_it() {
    let (app, _redis) = TestApp::on_redis().await;
    app.create_queue(pb::Queue {
        admission_ttl: secs(1),
        ..queue("sale")
    })
    .await;
    let mut client = app.client().await;
    enqueue(&mut client, "sale", "alice").await;
    let token = token_of(&admit(&mut client, "sale", 1).await[0]);
    assert_eq!(
        verdict(&mut client, "sale", &token, true).await,
        Verdict::Valid
    );
    assert_eq!(
        verdict(&mut client, "sale", &token, true).await,
        Verdict::AlreadyUsed
    );
    // Past the expiry, inside the verifier's leeway, and past it.
    for _ in 0..14 {
        app.clock.advance_ms(500);
        let verdict = verdict(&mut client, "sale", &token, true).await;
        assert!(
            matches!(verdict, Verdict::AlreadyUsed | Verdict::Expired),
            "a replay was answered {verdict:?}"
        );
    }
}

#[tokio::test]
async fn a_token_consumed_later_with_a_shorter_life_does_not_shorten_the_memory_of_others() {
    let redis = TestRedis::start();
    let prefix = fresh_prefix();
    let app = TestApp::spawn(TestApp::redis_config(&redis.url(), &prefix)).await;
    app.create_queue(pb::Queue {
        admission_ttl: secs(1_000),
        ..queue("sale")
    })
    .await;
    let mut client = app.client().await;
    enqueue(&mut client, "sale", "carol").await;
    let carol = token_of(&admit(&mut client, "sale", 1).await[0]);
    let shorter = pb::Queue {
        admission_ttl: secs(1),
        ..queue("sale")
    };
    update(&app, shorter, "admission_ttl").await.unwrap();
    enqueue(&mut client, "sale", "alice").await;
    let alice = token_of(&admit(&mut client, "sale", 1).await[0]);
    assert_eq!(
        verdict(&mut client, "sale", &carol, true).await,
        Verdict::Valid
    );
    assert_eq!(
        verdict(&mut client, "sale", &alice, true).await,
        Verdict::Valid
    );
    // Redis forgets keys by its own clock: the used ids must outlive the
    // longest-lived token among them, not the one consumed last.
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let ttl: i64 = redis::cmd("PTTL")
        .arg(format!("{prefix}:{{sale}}:used"))
        .query(&mut conn)
        .unwrap();
    assert!(ttl > 990_000, "consumed ids kept for only {ttl} ms");
}

#[tokio::test]
async fn online_verification_refuses_an_admission_that_was_left_or_completed() {
    for (app, _redis) in [(TestApp::on_memory().await, None), {
        let (app, redis) = TestApp::on_redis().await;
        (app, Some(redis))
    }] {
        app.create_queue(pb::Queue {
            max_active: 1,
            ..queue("sale")
        })
        .await;
        let mut client = app.client().await;
        enqueue(&mut client, "sale", "alice").await;
        enqueue(&mut client, "sale", "bob").await;
        let alice = rank(&mut client, "sale", "alice").await;
        let alice = alice.admission.unwrap().token;
        assert!(leave(&mut client, "sale", "alice").await);
        let bob = admit(&mut client, "sale", 1).await;
        let bob = token_of(&bob[0]);
        // max_active is 1: only bob's admission is held.
        assert_eq!(
            verdict(&mut client, "sale", &alice, true).await,
            Verdict::Revoked
        );
        assert_eq!(
            verdict(&mut client, "sale", &alice, false).await,
            Verdict::Revoked
        );
        assert_eq!(
            verdict(&mut client, "sale", &bob, false).await,
            Verdict::Valid
        );
        assert!(complete(&mut client, "sale", "bob").await);
        assert_eq!(
            verdict(&mut client, "sale", &bob, true).await,
            Verdict::Revoked
        );
        // Deleted with its queue.
        enqueue(&mut client, "sale", "carol").await;
        let carol = rank(&mut client, "sale", "carol").await;
        let carol = carol.admission.unwrap().token;
        app.admin()
            .await
            .delete_queue(pb::DeleteQueueRequest {
                queue_id: "sale".into(),
            })
            .await
            .unwrap();
        assert_eq!(
            verdict(&mut client, "sale", &carol, false).await,
            Verdict::Revoked
        );
    }
}

/// The keys of a queue, as `DUMP` gives them, to put back as a failover to
/// a replica that missed the last writes would.
fn dump_all(conn: &mut redis::Connection, pattern: &str) -> Vec<(String, Vec<u8>)> {
    let keys: Vec<String> = redis::cmd("KEYS").arg(pattern).query(conn).unwrap();
    keys.into_iter()
        .map(|key| {
            let dumped: Vec<u8> = redis::cmd("DUMP").arg(&key).query(conn).unwrap();
            (key, dumped)
        })
        .collect()
}

#[tokio::test]
async fn a_ticket_given_again_after_lost_writes_gets_a_token_id_of_its_own() {
    let redis = TestRedis::start();
    let prefix = fresh_prefix();
    let app = TestApp::spawn(TestApp::redis_config(&redis.url(), &prefix)).await;
    app.create_queue(queue("sale")).await;
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let pattern = format!("{prefix}:{{sale}}:*");
    let before = dump_all(&mut conn, &pattern);
    let mut client = app.client().await;
    enqueue(&mut client, "sale", "alice").await;
    let alice = admit(&mut client, "sale", 1).await;
    // Redis loses everything since `before`: alice's ticket and admission.
    let now: Vec<String> = redis::cmd("KEYS").arg(&pattern).query(&mut conn).unwrap();
    for key in now {
        let _: i64 = redis::cmd("DEL").arg(&key).query(&mut conn).unwrap();
    }
    for (key, dumped) in before {
        let _: () = redis::cmd("RESTORE")
            .arg(&key)
            .arg(0)
            .arg(dumped)
            .arg("REPLACE")
            .query(&mut conn)
            .unwrap();
    }
    enqueue(&mut client, "sale", "bob").await;
    let bob = admit(&mut client, "sale", 1).await;
    assert_eq!(bob[0].ticket, alice[0].ticket, "the ticket was given again");
    let jti = |token: &str| {
        let verifier = waitroom::tokens::Verifier::from_jwks(&app.jwks, "waitroom").unwrap();
        verifier
            .verify(token, "sale", now_ms() / 1000)
            .claims
            .unwrap()
            .jti
    };
    assert_ne!(jti(&token_of(&alice[0])), jti(&token_of(&bob[0])));
}

#[tokio::test]
async fn times_and_durations_outside_their_documented_ranges_are_invalid_arguments() {
    let app = TestApp::on_memory().await;
    app.create_queue(queue("sale")).await;
    let mut admin = app.admin().await;
    let timestamp = |seconds, nanos| prost_types::Timestamp { seconds, nanos };
    let duration = |seconds, nanos| prost_types::Duration { seconds, nanos };
    let opens_at = [
        timestamp(0, 0),
        timestamp(1 << 61, 0),
        timestamp(10_000_000_000_000_000, 0),
        timestamp(-1, 0),
        timestamp(1_900_000_000, 1_000_000_000),
        timestamp(1_900_000_000, -1),
        timestamp(7_258_118_400, 0),
    ];
    for at in opens_at {
        let moved = pb::Queue {
            opens_at: Some(at),
            ..queue("sale")
        };
        let status = update(&app, moved, "opens_at")
            .await
            .expect_err("an opening out of range was accepted");
        assert_eq!(status.code(), Code::InvalidArgument, "{at:?}");
        assert_eq!(bad_field(&status), "queue.opens_at", "{at:?}");
        let status = admin
            .create_queue(pb::CreateQueueRequest {
                queue: Some(pb::Queue {
                    opens_at: Some(at),
                    ..queue("other")
                }),
            })
            .await
            .expect_err("an opening out of range was accepted");
        assert_eq!(status.code(), Code::InvalidArgument, "{at:?}");
    }
    // Seconds whose milliseconds wrap around 2^64 must not land in range.
    for ttl in [
        duration(1 << 61, 0),
        duration(18_446_744_073_709_552, 0),
        duration(i64::MAX, 0),
        duration(60, 1_000_000_000),
        duration(0, -1),
    ] {
        let changed = pb::Queue {
            admission_ttl: Some(ttl),
            ..queue("sale")
        };
        let status = update(&app, changed, "admission_ttl")
            .await
            .expect_err("a duration out of range was accepted");
        assert_eq!(status.code(), Code::InvalidArgument, "{ttl:?}");
        assert_eq!(bad_field(&status), "queue.admission_ttl", "{ttl:?}");
    }
    // The queue is as it was.
    let queue = app.get_queue("sale").await;
    assert_eq!(queue.opens_at, None);
    assert_eq!(queue.admission_ttl, secs(600));
}

#[tokio::test]
async fn streams_opened_at_once_never_pass_the_instance_limit() {
    let redis = TestRedis::start();
    let mut config = TestApp::redis_config(&redis.url(), &fresh_prefix());
    config.max_streams = 5;
    let app = TestApp::spawn(config).await;
    app.create_queue(queue("sale")).await;
    let mut client = app.client().await;
    for i in 0..40 {
        enqueue(&mut client, "sale", &format!("user-{i}")).await;
    }
    let opening: Vec<_> = (0..40)
        .map(|i| {
            let mut client = client.clone();
            tokio::spawn(async move {
                client
                    .watch_rank(watch_request("sale", &format!("user-{i}")))
                    .await
                    .map(|response| response.into_inner())
            })
        })
        .collect();
    let mut open = Vec::new();
    for call in opening {
        match call.await.unwrap() {
            Ok(stream) => open.push(stream),
            Err(status) => assert_eq!(status.code(), Code::ResourceExhausted),
        }
    }
    assert_eq!(open.len(), 5, "{} streams opened", open.len());
}

/// The line behind the long-line test: 200,000 by default (a single read
/// of it holds Redis for over 100 ms); `WAITROOM_LONG_LINE=1000000` for the
/// size of a real sale.
fn long_line() -> usize {
    std::env::var("WAITROOM_LONG_LINE")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(200_000)
}

#[tokio::test]
async fn a_long_line_is_followed_without_holding_redis_and_others_are_served_meanwhile() {
    use waitroom::domain::{QueueId, UserId};
    use waitroom::store::QueueStore;

    let redis = TestRedis::start();
    let prefix = fresh_prefix();
    let app = TestApp::spawn(TestApp::redis_config(&redis.url(), &prefix)).await;
    app.create_queue(pb::Queue {
        heartbeat_timeout: secs(3600),
        ..queue("long")
    })
    .await;
    app.create_queue(queue("other")).await;
    // Fill the line through the store directly, a thousand users a call.
    let store = waitroom::store::RedisStore::connect(&waitroom::store::RedisOptions {
        url: redis.url(),
        password: None,
        cluster: false,
        prefix: prefix.clone(),
        timeout: Duration::from_secs(5),
        sentinel_master: None,
        sentinel_password: None,
    })
    .await
    .unwrap();
    let long = QueueId::parse("long").unwrap();
    let n = long_line();
    for first in (0..n).step_by(1000) {
        let users: Vec<UserId> = (first..(first + 1000).min(n))
            .map(|i| UserId::parse(&format!("u{i}")).unwrap())
            .collect();
        store.enqueue_many(&long, &users, now_ms()).await.unwrap();
    }
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("slowlog-log-slower-than")
        // Chunks take a few milliseconds; the margin is for a Redis the
        // machine's scheduler pauses mid-call while the suite runs (67 ms
        // once on a loaded day). The old single read of the line took
        // 179 ms on a fast one.
        .arg(100_000)
        .query(&mut conn)
        .unwrap();
    let _: () = redis::cmd("SLOWLOG").arg("RESET").query(&mut conn).unwrap();
    // A watcher at the back makes this instance follow the whole line.
    let last = format!("u{}", n - 1);
    let mut stream = open(&app, "long", &last).await;
    let first = stream.next().await.unwrap().unwrap().place.unwrap();
    assert_eq!(first.position, n as u64);
    // Meanwhile another queue is served promptly.
    let mut client = app.client().await;
    let mut worst = Duration::ZERO;
    let mut beat = every(Duration::from_millis(25));
    for i in 0..40 {
        beat.tick().await;
        let started = std::time::Instant::now();
        enqueue(&mut client, "other", &format!("o{i}")).await;
        worst = worst.max(started.elapsed());
    }
    // The copy follows: admitting the front moves the watcher.
    admit(&mut client, "long", 10).await;
    let moved = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("the watcher of a long line was not told it moved")
        .unwrap()
        .unwrap()
        .place
        .unwrap();
    assert_eq!(moved.position, n as u64 - 10);
    let slow: Vec<redis::Value> = redis::cmd("SLOWLOG")
        .arg("GET")
        .arg(10)
        .query(&mut conn)
        .unwrap();
    assert!(slow.is_empty(), "calls held Redis over 100 ms: {slow:?}");
    assert!(
        worst < Duration::from_millis(250),
        "an enqueue took {worst:?}"
    );
}

#[tokio::test]
async fn a_consume_retried_with_its_request_id_is_valid_again_and_nobody_else_is() {
    let (app, _redis) = TestApp::on_redis().await;
    app.create_queue(queue("sale")).await;
    let mut client = app.client().await;
    enqueue(&mut client, "sale", "alice").await;
    let token = token_of(&admit(&mut client, "sale", 1).await[0]);
    let consume = |request_id: &str| {
        let mut client = client.clone();
        let (token, request_id) = (token.clone(), request_id.to_owned());
        async move {
            client
                .verify_admission(pb::VerifyAdmissionRequest {
                    queue_id: "sale".into(),
                    token,
                    consume: true,
                    request_id,
                })
                .await
                .unwrap()
                .into_inner()
                .verdict()
        }
    };
    assert_eq!(consume("buy-1").await, Verdict::Valid);
    // The answer was lost; the booking service retries with the same id.
    assert_eq!(consume("buy-1").await, Verdict::Valid);
    assert_eq!(consume("buy-2").await, Verdict::AlreadyUsed);
    assert_eq!(consume("").await, Verdict::AlreadyUsed);
}

#[tokio::test]
async fn scrapes_read_the_queues_from_redis_at_most_once_in_a_while() {
    let (app, redis) = TestApp::on_redis().await;
    app.create_queue(queue("sale")).await;
    app.create_queue(queue("other")).await;
    let listings = || redis.calls("smembers");
    let before = listings();
    for _ in 0..20 {
        let (status, _, text) = http_get(&app, "/metrics").await;
        assert!(status.contains("200"), "{status}");
        assert!(text.contains(r#"queue="other""#));
    }
    // The queue worker lists the queues now and then as well.
    let listed = listings() - before;
    assert!(listed <= 3, "20 scrapes listed the queues {listed} times");
}

#[tokio::test]
async fn a_redis_that_may_evict_keys_keeps_the_service_unready_until_it_may_not() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;

    let (app, redis) = TestApp::on_evicting_redis().await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(app.channel().await);
    let readiness = || HealthCheckRequest {
        service: "waitroom.v1.QueueService".into(),
    };
    // Several readiness checks, each an `INFO memory`, see the policy: it
    // stays unready.
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let mut asked = 0;
    let mut infos = || {
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query(&mut conn)
            .unwrap();
        // Less this test's own, counted from the one before.
        let all = info
            .lines()
            .find_map(|l| l.strip_prefix("cmdstat_info:calls="))
            .and_then(|v| v.split(',').next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        let theirs = all - asked;
        asked += 1;
        theirs
    };
    wait_until("three readiness checks", Duration::from_secs(10), || {
        std::future::ready(infos() >= 3)
    })
    .await;
    let status = health
        .check(readiness())
        .await
        .unwrap()
        .into_inner()
        .status();
    assert_eq!(status, ServingStatus::NotServing);
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory-policy")
        .arg("noeviction")
        .query(&mut conn)
        .unwrap();
    app.wait_until_ready().await;
}
