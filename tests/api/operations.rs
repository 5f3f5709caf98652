//! Operating the service: metrics after real traffic, readiness that
//! follows Redis from the start, and a graceful, bounded shutdown.

use std::time::{Duration, Instant};

use tokio_stream::StreamExt;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use waitroom::domain::ManualClock;
use waitroom::pb;

use crate::helpers::*;

/// The value of one sample line of a Prometheus exposition.
fn sample(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines()
        .find(|line| {
            line.starts_with(name_and_labels) && line[name_and_labels.len()..].starts_with(' ')
        })
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn metrics_report_real_values_after_traffic() {
    let (app, _redis) = TestApp::on_redis().await;
    // Metrics are per process, shared by the tests running beside this one:
    // a queue of its own keeps the per-queue figures exact.
    app.create_queue(pb::Queue {
        max_active: 2,
        ..queue("metered")
    })
    .await;
    let mut client = app.client().await;
    for user in ["a", "b", "c", "d", "e"] {
        enqueue(&mut client, "metered", user).await;
    }
    let missing = client
        .get_rank(rank_request("metered", "nobody"))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
    let token = rank(&mut client, "metered", "a")
        .await
        .admission
        .unwrap()
        .token;
    client
        .verify_admission(pb::VerifyAdmissionRequest {
            queue_id: "metered".into(),
            token,
            consume: false,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut stream = client
        .watch_rank(watch_request("metered", "e"))
        .await
        .unwrap()
        .into_inner();
    stream.next().await.unwrap().unwrap();

    let (status, headers, text) = http_get(&app, "/metrics").await;
    assert!(status.contains("200"), "{status}");
    assert!(
        headers.contains("content-type: application/openmetrics-text"),
        "{headers}"
    );
    let enqueues = sample(
        &text,
        r#"grpc_server_handled_total{grpc_type="unary",grpc_service="waitroom.v1.QueueService",grpc_method="Enqueue",grpc_code="OK"}"#,
    )
    .expect("handled Enqueue OK");
    assert!(enqueues >= 5.0, "{enqueues}");
    assert!(
        sample(
            &text,
            r#"grpc_server_handled_total{grpc_type="unary",grpc_service="waitroom.v1.QueueService",grpc_method="GetRank",grpc_code="NotFound"}"#
        )
        .unwrap_or(0.0)
            >= 1.0
    );
    assert!(
        sample(
            &text,
            r#"grpc_server_started_total{grpc_type="server_stream",grpc_service="waitroom.v1.QueueService",grpc_method="WatchRank"}"#
        )
        .unwrap_or(0.0)
            >= 1.0
    );
    assert!(
        sample(
            &text,
            r#"grpc_server_handling_seconds_count{grpc_type="unary",grpc_service="waitroom.v1.QueueService",grpc_method="Enqueue"}"#
        )
        .unwrap_or(0.0)
            >= 5.0
    );
    assert_eq!(
        sample(&text, r#"waitroom_queue_waiting{queue="metered"}"#),
        Some(3.0)
    );
    assert_eq!(
        sample(&text, r#"waitroom_queue_active{queue="metered"}"#),
        Some(2.0)
    );
    assert_eq!(
        sample(&text, r#"waitroom_queue_enqueued_total{queue="metered"}"#),
        Some(5.0)
    );
    assert_eq!(
        sample(&text, r#"waitroom_queue_admitted_total{queue="metered"}"#),
        Some(2.0)
    );
    assert_eq!(
        sample(&text, r#"waitroom_queue_watchers{queue="metered"}"#),
        Some(1.0)
    );
    assert!(
        sample(
            &text,
            r#"waitroom_token_verifications_total{verdict="valid"}"#
        )
        .unwrap_or(0.0)
            >= 1.0
    );
    assert!(
        sample(
            &text,
            r#"waitroom_store_call_seconds_count{operation="enqueue"}"#
        )
        .unwrap_or(0.0)
            >= 5.0
    );
    assert!(sample(&text, "waitroom_open_watchers").unwrap_or(0.0) >= 1.0);
}

#[tokio::test]
async fn readiness_waits_for_redis_at_start_and_liveness_does_not() {
    // Where Redis will be, for now a socket that hangs up on every
    // connection: it counts the service's attempts to reach Redis.
    let early = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = early.local_addr().unwrap().port();
    early.set_nonblocking(true).unwrap();
    let early = tokio::net::TcpListener::from_std(early).unwrap();
    let attempts = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let hanging_up = tokio::spawn({
        let attempts = std::sync::Arc::clone(&attempts);
        async move {
            while let Ok((socket, _)) = early.accept().await {
                attempts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                drop(socket);
            }
        }
    });
    let mut config = TestApp::redis_config(&format!("redis://127.0.0.1:{port}"), &fresh_prefix());
    config.queues = vec![waitroom::config::QueueSpec::parse("declared").unwrap()];
    let app = TestApp::start(config, std::sync::Arc::new(ManualClock::new(now_ms()))).await;
    let mut health = HealthClient::new(app.channel().await);
    let check = |service: &str| HealthCheckRequest {
        service: service.into(),
    };
    wait_until("the service tried Redis", Duration::from_secs(10), || {
        std::future::ready(attempts.load(std::sync::atomic::Ordering::Relaxed) >= 2)
    })
    .await;
    let ready = health
        .check(check("waitroom.v1.QueueService"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ready.status(), ServingStatus::NotServing, "no Redis yet");
    let live = health.check(check("")).await.unwrap().into_inner();
    assert_eq!(live.status(), ServingStatus::Serving);
    let refused = app
        .client()
        .await
        .enqueue(enqueue_request("declared", "a"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable);

    hanging_up.abort();
    let _ = hanging_up.await;
    let _redis = TestRedis::start_on(port);
    app.wait_until_ready().await;
    assert!(http_get(&app, "/readyz").await.0.contains("200"));
    // Ready means the declared queues exist too.
    assert_eq!(
        enqueue(&mut app.client().await, "declared", "a")
            .await
            .position,
        1
    );
}

/// Streams opened while the instance drains (readiness off, still
/// serving) end like the others: told to reconnect, never with the `OK`
/// that means admitted or closed.
#[tokio::test]
async fn streams_opened_during_the_drain_end_with_a_reconnect_never_ok() {
    let mut config = TestApp::base_config();
    config.drain_delay = Duration::from_millis(400);
    let app = TestApp::spawn(config).await;
    app.create_queue(queue("drain")).await;
    let mut client = app.client().await;
    for i in 0..50 {
        enqueue(&mut client, "drain", &format!("u{i}")).await;
    }
    let stopped = tokio::spawn(app.stop());
    let mut tasks = Vec::new();
    let started = Instant::now();
    let mut i = 0;
    let mut beat = every(Duration::from_millis(5));
    while !stopped.is_finished() && started.elapsed() < Duration::from_secs(10) {
        beat.tick().await;
        let mut client = client.clone();
        let user = format!("u{}", i % 50);
        i += 1;
        tasks.push(tokio::spawn(async move {
            let mut stream = match client.watch_rank(watch_request("drain", &user)).await {
                Ok(response) => response.into_inner(),
                // Refused once the port closed: nothing was said.
                Err(status) => return (status.code(), "not opened".to_owned()),
            };
            match stream.next().await {
                Some(Ok(_)) => {}
                Some(Err(status)) => return (status.code(), reason(&status)),
                None => return (tonic::Code::Ok, "ended before a place".to_owned()),
            }
            match stream.next().await {
                Some(Err(status)) => (status.code(), reason(&status)),
                other => panic!("a stream opened during the drain ended with {other:?}"),
            }
        }));
    }
    stopped.await.unwrap();
    let mut told = 0;
    for task in tasks {
        let (code, reason) = task.await.unwrap();
        assert_ne!(code, tonic::Code::Ok, "{reason}");
        if reason == "RECONNECT" {
            told += 1;
        }
    }
    assert!(
        told >= 20,
        "only {told} streams were opened and told to reconnect"
    );
}

/// A connection the client closes is let go at once: its task, socket and
/// entry do not wait for the connection's age.
#[tokio::test]
async fn connections_closed_by_their_clients_are_let_go_at_once() {
    let app = TestApp::on_memory().await;
    let open = || async {
        let (_, _, text) = http_get(&app, "/metrics").await;
        sample(&text, "waitroom_open_connections").unwrap_or(-1.0)
    };
    let before = open().await;
    let mut sockets = Vec::new();
    for _ in 0..20 {
        sockets.push(tokio::net::TcpStream::connect(app.addr).await.unwrap());
    }
    let channel = app.channel_unchecked();
    let mut client = pb::queue_service_client::QueueServiceClient::new(channel.clone());
    app.create_queue(queue("closing")).await;
    enqueue(&mut client, "closing", "a").await;
    until(
        "the connections counted",
        Duration::from_secs(5),
        || async {
            let now = open().await;
            if now >= before + 20.0 {
                Ok(())
            } else {
                Err(format!("{now} from {before}"))
            }
        },
    )
    .await;
    drop(sockets);
    drop(client);
    drop(channel);
    until("the connections let go", Duration::from_secs(5), || async {
        let still = open().await - before;
        if still <= 1.0 {
            Ok(())
        } else {
            Err(format!("{still} still open"))
        }
    })
    .await;
}

/// A connection that reaches its age is asked to go: its streams end with
/// a reconnect, and the client goes on, on a new connection, with its
/// place.
#[tokio::test]
async fn a_connection_at_its_age_is_let_go_and_its_streams_reconnect_with_their_places() {
    let mut config = TestApp::base_config();
    config.max_connection_age = Duration::from_secs(1);
    let app = TestApp::spawn(config).await;
    app.create_queue(queue("aged")).await;
    let mut client = app.client().await;
    let ticket = enqueue(&mut client, "aged", "a").await.ticket;
    let mut stream = client
        .watch_rank(watch_request("aged", "a"))
        .await
        .unwrap()
        .into_inner();
    let opened = Instant::now();
    assert_eq!(
        stream.next().await.unwrap().unwrap().place.unwrap().ticket,
        ticket
    );
    let end = loop {
        match tokio::time::timeout(Duration::from_secs(5), stream.next()).await {
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(status))) => break status,
            other => panic!("expected the stream to be ended, got {other:?}"),
        }
    };
    let aged = opened.elapsed();
    assert_eq!(end.code(), tonic::Code::Unavailable);
    assert_eq!(reason(&end), "RECONNECT");
    let retry = tonic_types::StatusExt::get_error_details(&end)
        .retry_info()
        .and_then(|r| r.retry_delay)
        .expect("retry advice");
    assert!((Duration::from_millis(500)..=Duration::from_millis(1500)).contains(&retry));
    assert!(
        (Duration::from_millis(800)..Duration::from_secs(3)).contains(&aged),
        "ended after {aged:?}"
    );
    // The same client goes on (on a new connection) with the same place.
    let mut again = client
        .watch_rank(watch_request("aged", "a"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        again.next().await.unwrap().unwrap().place.unwrap().ticket,
        ticket
    );
    assert_eq!(enqueue(&mut client, "aged", "a").await.ticket, ticket);
}

#[tokio::test]
async fn shutdown_with_ten_thousand_open_streams_ends_them_all_and_exits_within_its_bound() {
    let mut config = TestApp::base_config();
    config.drain_delay = Duration::from_millis(300);
    config.shutdown_timeout = Duration::from_secs(5);
    let app = TestApp::spawn(config).await;
    app.create_queue(queue("big")).await;
    let channels = [
        app.channel().await,
        app.channel().await,
        app.channel().await,
        app.channel().await,
    ];
    let mut client = app.client().await;
    let streams = 10_000;
    for i in 0..streams {
        enqueue(&mut client, "big", &format!("u{i}")).await;
    }
    let mut tasks = Vec::new();
    for i in 0..streams {
        let mut client = pb::queue_service_client::QueueServiceClient::new(channels[i % 4].clone());
        tasks.push(tokio::spawn(async move {
            let mut stream = client
                .watch_rank(watch_request("big", &format!("u{i}")))
                .await?
                .into_inner();
            stream.next().await.expect("a first place")?;
            match stream.next().await {
                Some(Err(status)) => Ok((status.code(), reason(&status))),
                other => panic!("expected a closing status, got {other:?}"),
            }
        }));
    }
    // Wait until every stream is open on the server.
    wait_until("every stream open", Duration::from_secs(60), || async {
        let (_, _, text) = http_get(&app, "/metrics").await;
        sample(&text, r#"waitroom_queue_watchers{queue="big"}"#) == Some(streams as f64)
    })
    .await;
    let health = HealthClient::new(app.channel().await);
    let stopping = Instant::now();
    let app_stopped = tokio::spawn(app.stop());
    // Draining: readiness goes off while the streams still run.
    until(
        "readiness off in the drain",
        Duration::from_millis(300),
        || {
            let mut health = health.clone();
            async move {
                let ready = health
                    .check(HealthCheckRequest {
                        service: "waitroom.v1.QueueService".into(),
                    })
                    .await
                    .unwrap()
                    .into_inner();
                match ready.status() {
                    ServingStatus::NotServing => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            }
        },
    )
    .await;
    app_stopped.await.unwrap();
    let took = stopping.elapsed();
    for task in tasks {
        let end: Result<(tonic::Code, String), tonic::Status> = task.await.unwrap();
        assert_eq!(
            end.unwrap(),
            (tonic::Code::Unavailable, "RECONNECT".to_owned()),
            "told to reconnect"
        );
    }
    // The drain delay, then the streams end and the process is done.
    assert!(took >= Duration::from_millis(300), "{took:?}");
    assert!(took < Duration::from_secs(5), "shutdown took {took:?}");
    eprintln!("shutdown with {streams} open streams took {took:?}");
}

#[test]
fn cargo_run_starts_the_service_as_the_readme_says() {
    let manifest = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"));
    assert!(
        manifest
            .lines()
            .any(|line| line.trim() == r#"default-run = "waitroom""#),
        "with several binaries, `cargo run` needs default-run to start the service"
    );
}

/// Every metric the chart's dashboard and alerts query is in a scrape of a
/// running service after real traffic: a renamed metric fails here, not on
/// a sale day with an empty panel or an alert that never fires.
#[tokio::test]
async fn every_metric_the_dashboard_and_alerts_query_is_scraped_after_traffic() {
    let (app, _redis) = TestApp::on_redis().await;
    app.create_queue(queue("watched-sale")).await;
    let mut client = app.client().await;
    for user in ["a", "b", "c", "d", "e"] {
        enqueue(&mut client, "watched-sale", user).await;
    }
    admit(&mut client, "watched-sale", 2).await;
    leave(&mut client, "watched-sale", "e").await;
    let mut stream = client
        .watch_rank(watch_request("watched-sale", "d"))
        .await
        .unwrap()
        .into_inner();
    stream.next().await.unwrap().unwrap();
    let (_, _, up) = http_get(&app, "/metrics").await;
    assert_eq!(sample(&up, "waitroom_ready"), Some(1.0));
    // And a store that fails: what the error panel and alert count.
    let mut redis = _redis;
    redis.stop();
    let refused = client
        .enqueue(enqueue_request("watched-sale", "f"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable);
    let (_, _, down) = http_get(&app, "/metrics").await;
    let text = format!("{up}\n{down}");

    let chart = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("helm/waitroom");
    let queried = [
        chart.join("dashboards/waitroom.json"),
        chart.join("templates/prometheusrule.yaml"),
    ]
    .iter()
    .map(|path| std::fs::read_to_string(path).unwrap())
    .collect::<Vec<_>>()
    .join("\n");
    let mut names: Vec<&str> = queried
        .match_indices("waitroom_")
        .chain(queried.match_indices("grpc_server_"))
        .map(|(at, _)| {
            let rest = &queried[at..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            &rest[..end]
        })
        .filter(|name| !name.ends_with('_'))
        .collect();
    names.sort_unstable();
    names.dedup();
    assert!(names.len() >= 15, "{names:?}");
    for name in names {
        let sampled = text
            .lines()
            .any(|line| line.starts_with(name) && line[name.len()..].starts_with(['{', ' ']));
        // A counter or histogram with nothing counted yet (no store error
        // in this test) is declared, its samples to come.
        let base = ["_total", "_bucket", "_count", "_sum"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .unwrap_or(name);
        let declared = text.contains(&format!("# TYPE {base} "));
        assert!(
            sampled || declared,
            "{name} is queried by the chart but not in a scrape"
        );
    }
    for figure in [
        "waitroom_queue_waited_p50_seconds",
        "waitroom_queue_back_of_line_wait_seconds",
        "waitroom_queue_admission_rate",
    ] {
        assert!(
            sample(&up, &format!(r#"{figure}{{queue="watched-sale"}}"#)).is_some(),
            "{figure} has no sample for the queue"
        );
    }
}

/// Reflection serves the error details' types too, so a generic client
/// (`buf curl`, grpcurl) decodes `ErrorInfo` instead of showing base64.
#[tokio::test]
async fn reflection_lists_the_error_details_types() {
    use prost::Message;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let app = TestApp::on_memory().await;
    let mut client = ServerReflectionClient::new(app.channel().await);
    for symbol in [
        "google.rpc.ErrorInfo",
        "google.rpc.BadRequest",
        "google.rpc.RetryInfo",
        "waitroom.v1.QueueService",
    ] {
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::FileContainingSymbol(symbol.into())),
        };
        let mut answers = client
            .server_reflection_info(tokio_stream::iter([request]))
            .await
            .unwrap()
            .into_inner();
        let answer = answers.message().await.unwrap().expect("an answer");
        let Some(MessageResponse::FileDescriptorResponse(files)) = answer.message_response else {
            panic!("{symbol}: {:?}", answer.message_response);
        };
        let names: Vec<String> = files
            .file_descriptor_proto
            .iter()
            .map(|bytes| prost_types::FileDescriptorProto::decode(bytes.as_slice()).unwrap())
            .filter_map(|file| file.name)
            .collect();
        assert!(!names.is_empty(), "{symbol}");
        if symbol.starts_with("google.rpc") {
            assert!(
                names.iter().any(|n| n.ends_with("error_details.proto")),
                "{names:?}"
            );
        }
    }
    app.stop().await;
}
