//! Every row of the contract's error table: the code, the `ErrorInfo`
//! reason and, for bad input, the field.

use std::time::{Duration, Instant};

use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use waitroom::pb;

use crate::helpers::*;

#[tokio::test]
async fn bad_queue_and_user_ids_are_invalid_arguments_naming_the_field() {
    let (app, _redis) = TestApp::on_redis().await;
    app.create_queue(queue("sale")).await;
    let mut client = app.client().await;
    let long_queue = "q".repeat(65);
    let long_user = "u".repeat(129);
    let cases = [
        ("", "alice", "queue_id"),
        (long_queue.as_str(), "alice", "queue_id"),
        ("sale!", "alice", "queue_id"),
        ("sa le", "alice", "queue_id"),
        ("sale", "", "user_id"),
        ("sale", long_user.as_str(), "user_id"),
        ("sale", "ali\u{0}ce", "user_id"),
        ("sale", "ali\nce", "user_id"),
    ];
    for (queue_id, user_id, field) in cases {
        let status = client
            .enqueue(enqueue_request(queue_id, user_id))
            .await
            .unwrap_err();
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "{queue_id:?}/{user_id:?}"
        );
        assert_eq!(reason(&status), "INVALID_ARGUMENT");
        assert_eq!(bad_field(&status), field);
        assert!(
            status.message().starts_with(field),
            "message says which field: {}",
            status.message()
        );
        let status = client
            .get_rank(rank_request(queue_id, user_id))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        let status = client
            .leave(pb::LeaveRequest {
                queue_id: queue_id.into(),
                user_id: user_id.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        let status = client
            .watch_rank(watch_request(queue_id, user_id))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        let status = client
            .complete_admission(pb::CompleteAdmissionRequest {
                queue_id: queue_id.into(),
                user_id: user_id.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
    }
    // 128 bytes exactly is fine, counted in bytes not characters.
    enqueue(&mut client, "sale", &"u".repeat(128)).await;
    let status = client
        .enqueue(enqueue_request("sale", &"é".repeat(65)))
        .await
        .unwrap_err();
    assert_eq!(bad_field(&status), "user_id");
}

#[tokio::test]
async fn max_count_must_be_between_1_and_10000() {
    let (app, _redis) = TestApp::on_redis().await;
    app.create_queue(queue("sale")).await;
    let mut client = app.client().await;
    for bad in [0, 10_001, u32::MAX] {
        let status = client
            .admit_batch(admit_request("sale", bad))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(bad_field(&status), "max_count");
    }
    assert!(admit(&mut client, "sale", 10_000).await.is_empty());
    let status = client
        .admit_batch(pb::AdmitBatchRequest {
            request_id: "no spaces".into(),
            ..admit_request("sale", 1)
        })
        .await
        .unwrap_err();
    assert_eq!(bad_field(&status), "request_id");
}

#[tokio::test]
async fn unknown_queues_and_strangers_are_not_found() {
    let (app, _redis) = TestApp::on_redis().await;
    app.create_queue(queue("sale")).await;
    let mut client = app.client().await;
    let status = client
        .enqueue(enqueue_request("nope", "alice"))
        .await
        .unwrap_err();
    assert_eq!(
        (status.code(), reason(&status).as_str()),
        (Code::NotFound, "QUEUE_NOT_FOUND")
    );
    let status = client
        .get_rank(rank_request("nope", "alice"))
        .await
        .unwrap_err();
    assert_eq!(reason(&status), "QUEUE_NOT_FOUND");
    let status = client
        .admit_batch(admit_request("nope", 1))
        .await
        .unwrap_err();
    assert_eq!(reason(&status), "QUEUE_NOT_FOUND");
    let status = client
        .leave(pb::LeaveRequest {
            queue_id: "nope".into(),
            user_id: "alice".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(reason(&status), "QUEUE_NOT_FOUND");
    let status = client
        .get_rank(rank_request("sale", "stranger"))
        .await
        .unwrap_err();
    assert_eq!(
        (status.code(), reason(&status).as_str()),
        (Code::NotFound, "PLACE_NOT_FOUND")
    );
    let status = client
        .watch_rank(watch_request("sale", "stranger"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
}

#[tokio::test]
async fn bad_tokens_in_the_request_are_invalid_arguments() {
    let (app, _redis) = TestApp::on_redis().await;
    let mut client = app.client().await;
    for (token, field) in [("", "token"), (&*"x".repeat(5000), "token")] {
        let status = client
            .verify_admission(pb::VerifyAdmissionRequest {
                queue_id: "sale".into(),
                token: token.into(),
                consume: false,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(bad_field(&status), field);
    }
}

#[tokio::test]
async fn an_oversized_message_is_resource_exhausted_and_the_service_keeps_serving() {
    let (app, _redis) = TestApp::on_redis().await;
    app.create_queue(queue("sale")).await;
    let mut client = app.client().await;
    let status = client
        .enqueue(enqueue_request("sale", &"u".repeat(100 * 1024)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(reason(&status), "RESOURCE_EXHAUSTED");
    enqueue(&mut client, "sale", "alice").await;
}

#[tokio::test]
async fn redis_loss_is_unavailable_within_the_timeout_and_recovers_by_itself() {
    let (app, mut redis) = TestApp::on_redis().await;
    app.create_queue(queue("sale")).await;
    let mut client = app.client().await;
    let mut health = HealthClient::new(app.channel().await);
    let readiness = HealthCheckRequest {
        service: "waitroom.v1.QueueService".into(),
    };
    enqueue(&mut client, "sale", "alice").await;
    let port = redis.port();
    redis.stop();

    for _ in 0..3 {
        let started = Instant::now();
        let status = client
            .enqueue(enqueue_request("sale", "bob"))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert_eq!(reason(&status), "STORE_UNAVAILABLE");
        // The configured timeout is 500 ms.
        assert!(
            started.elapsed() < Duration::from_millis(1500),
            "took {:?}",
            started.elapsed()
        );
    }
    until("readiness NOT_SERVING", Duration::from_secs(5), || {
        let (mut health, readiness) = (health.clone(), readiness.clone());
        async move {
            match health
                .check(readiness)
                .await
                .map(|r| r.into_inner().status())
            {
                Ok(ServingStatus::NotServing) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        }
    })
    .await;
    let liveness = health
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        liveness.status(),
        ServingStatus::Serving,
        "liveness never depends on Redis"
    );

    // The same port, an empty Redis: the service reconnects by itself.
    let _redis = TestRedis::start_on(port);
    until("a recovery", Duration::from_secs(10), || {
        let (mut health, readiness, mut client) =
            (health.clone(), readiness.clone(), client.clone());
        async move {
            let status = health.check(readiness).await.unwrap().into_inner().status();
            let call = client.enqueue(enqueue_request("sale", "bob")).await;
            if status == ServingStatus::Serving
                && call.as_ref().err().map(|s| s.code()) == Some(Code::NotFound)
            {
                Ok(())
            } else {
                Err(format!("{status:?} {call:?}"))
            }
        }
    })
    .await;
}
