//! Protection: tens of thousands of streams on a few connections, limits
//! that refuse instead of collapsing, API keys per role, TLS and mutual TLS.

use std::time::{Duration, Instant};

use tokio_stream::StreamExt;
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use waitroom::pb;
use waitroom::pb::queue_admin_service_client::QueueAdminServiceClient;
use waitroom::pb::queue_service_client::QueueServiceClient;

use crate::helpers::*;

#[tokio::test]
async fn twenty_thousand_streams_on_four_connections_all_get_a_burst_of_updates() {
    let app = TestApp::on_memory().await;
    app.create_queue(queue("crowd")).await;
    let streams = 20_000;
    let mut client = app.client().await;
    for i in 0..streams {
        enqueue(&mut client, "crowd", &format!("u{i:05}")).await;
    }
    let channels = [
        app.channel().await,
        app.channel().await,
        app.channel().await,
        app.channel().await,
    ];
    let mut opened = Vec::new();
    for i in 0..streams {
        let mut client = QueueServiceClient::new(channels[i % 4].clone());
        opened.push(tokio::spawn(async move {
            let mut stream = client
                .watch_rank(watch_request("crowd", &format!("u{i:05}")))
                .await?
                .into_inner();
            let first = stream
                .next()
                .await
                .expect("a first place")?
                .place
                .unwrap_or_default();
            Ok::<_, tonic::Status>((stream, first.position))
        }));
    }
    let mut open = Vec::new();
    for task in opened {
        open.push(task.await.unwrap().expect("every stream opens"));
    }
    // One admission moves all 20,000 at once: a burst of 20,000 updates.
    let started = Instant::now();
    admit(&mut client, "crowd", 1).await;
    let mut readers = Vec::new();
    for (mut stream, first) in open {
        readers.push(tokio::spawn(async move {
            let update = tokio::time::timeout(Duration::from_secs(10), stream.next())
                .await
                .expect("an update")
                .expect("the stream is open")?;
            let position = update.place.unwrap_or_default().position;
            Ok::<_, tonic::Status>((first, position, stream))
        }));
    }
    let mut kept = Vec::new();
    for reader in readers {
        let (first, now, stream) = reader.await.unwrap().expect("no connection error");
        if first > 1 {
            assert_eq!(now, first - 1);
        }
        kept.push(stream);
    }
    eprintln!(
        "burst of {streams} updates delivered in {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn streams_and_calls_beyond_the_limits_are_resource_exhausted() {
    let mut config = TestApp::base_config();
    config.max_streams = 3;
    let app = TestApp::spawn(config).await;
    app.create_queue(queue("small")).await;
    let mut client = app.client().await;
    let mut streams = Vec::new();
    for i in 0..3 {
        enqueue(&mut client, "small", &format!("u{i}")).await;
        let mut stream = client
            .watch_rank(watch_request("small", &format!("u{i}")))
            .await
            .unwrap()
            .into_inner();
        stream.next().await.unwrap().unwrap();
        streams.push(stream);
    }
    let refused = client
        .watch_rank(watch_request("small", "u0"))
        .await
        .unwrap_err();
    assert_eq!(
        (refused.code(), reason(&refused).as_str()),
        (Code::ResourceExhausted, "RESOURCE_EXHAUSTED")
    );
    // Everyone else is still served.
    enqueue(&mut client, "small", "after").await;
    drop(streams.pop());
    wait_until(
        "a closed stream's slot back",
        Duration::from_secs(2),
        || {
            let mut client = client.clone();
            async move {
                client
                    .watch_rank(watch_request("small", "u2"))
                    .await
                    .is_ok()
            }
        },
    )
    .await;

    // Calls that wait on Redis overlap; with room for one at a time, a
    // burst of 300 must see refusals.
    let redis = TestRedis::start();
    let mut config = TestApp::redis_config(&redis.url(), &fresh_prefix());
    config.max_calls = 1;
    let app = TestApp::spawn(config).await;
    app.create_queue(queue("busy")).await;
    let mut calls = Vec::new();
    for i in 0..300 {
        let mut client = app.client().await;
        calls.push(tokio::spawn(async move {
            client
                .enqueue(enqueue_request("busy", &format!("u{i}")))
                .await
                .map(|_| ())
        }));
    }
    let mut refused = 0;
    for call in calls {
        match call.await.unwrap() {
            Ok(()) => {}
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                assert_eq!(reason(&status), "RESOURCE_EXHAUSTED");
                refused += 1;
            }
        }
    }
    assert!(refused > 0, "300 calls at once never exceeded 1 in flight");
    assert!(refused < 300, "some calls were served");
}

fn write(dir: &std::path::Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("waitroom-{name}-{}", fresh_prefix()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

const FRONTEND: &str = "frontend-key-0123456789";
const BOOKING: &str = "booking-key-0123456789";
const OPERATOR: &str = "operator-key-0123456789";

fn with_key<T>(message: T, key: Option<&str>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(key) = key {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {key}").parse().unwrap());
    }
    request
}

/// The code of one call of each RPC with a given key.
async fn codes(channel: &Channel, key: Option<&str>) -> Vec<(&'static str, Code)> {
    let mut q = QueueServiceClient::new(channel.clone());
    let mut a = QueueAdminServiceClient::new(channel.clone());
    // Every refusal speaks the same language: its ErrorInfo names it.
    let code = |r: Result<(), tonic::Status>| {
        r.err().map_or(Code::Ok, |s| {
            match s.code() {
                Code::Unauthenticated => assert_eq!(reason(&s), "UNAUTHENTICATED"),
                Code::PermissionDenied => assert_eq!(reason(&s), "PERMISSION_DENIED"),
                _ => {}
            }
            s.code()
        })
    };
    vec![
        (
            "Enqueue",
            code(
                q.enqueue(with_key(enqueue_request("sale", "u"), key))
                    .await
                    .map(|_| ()),
            ),
        ),
        (
            "GetRank",
            code(
                q.get_rank(with_key(rank_request("sale", "u"), key))
                    .await
                    .map(|_| ()),
            ),
        ),
        (
            "WatchRank",
            code(
                q.watch_rank(with_key(watch_request("sale", "u"), key))
                    .await
                    .map(|_| ()),
            ),
        ),
        (
            "Leave",
            code(
                q.leave(with_key(
                    pb::LeaveRequest {
                        queue_id: "sale".into(),
                        user_id: "x".into(),
                    },
                    key,
                ))
                .await
                .map(|_| ()),
            ),
        ),
        (
            "AdmitBatch",
            code(
                q.admit_batch(with_key(admit_request("sale", 1), key))
                    .await
                    .map(|_| ()),
            ),
        ),
        (
            "AdmitUsers",
            code(
                q.admit_users(with_key(
                    pb::AdmitUsersRequest {
                        queue_id: "sale".into(),
                        user_ids: vec!["named".into()],
                        ..Default::default()
                    },
                    key,
                ))
                .await
                .map(|_| ()),
            ),
        ),
        (
            "AdmitUsers over capacity",
            code(
                q.admit_users(with_key(
                    pb::AdmitUsersRequest {
                        queue_id: "sale".into(),
                        user_ids: vec!["named".into()],
                        override_capacity: true,
                        ..Default::default()
                    },
                    key,
                ))
                .await
                .map(|_| ()),
            ),
        ),
        (
            "VerifyAdmission",
            code(
                q.verify_admission(with_key(
                    pb::VerifyAdmissionRequest {
                        queue_id: "sale".into(),
                        token: "t".into(),
                        consume: false,
                        ..Default::default()
                    },
                    key,
                ))
                .await
                .map(|_| ()),
            ),
        ),
        (
            "CompleteAdmission",
            code(
                q.complete_admission(with_key(
                    pb::CompleteAdmissionRequest {
                        queue_id: "sale".into(),
                        user_id: "x".into(),
                    },
                    key,
                ))
                .await
                .map(|_| ()),
            ),
        ),
        (
            "GetSigningKeys",
            code(
                q.get_signing_keys(with_key(pb::GetSigningKeysRequest {}, key))
                    .await
                    .map(|_| ()),
            ),
        ),
        (
            "GetQueue",
            code(
                a.get_queue(with_key(
                    pb::GetQueueRequest {
                        queue_id: "sale".into(),
                    },
                    key,
                ))
                .await
                .map(|_| ()),
            ),
        ),
        (
            "ListQueues",
            code(
                a.list_queues(with_key(pb::ListQueuesRequest::default(), key))
                    .await
                    .map(|_| ()),
            ),
        ),
        (
            "GetQueueStats",
            code(
                a.get_queue_stats(with_key(
                    pb::GetQueueStatsRequest {
                        queue_id: "sale".into(),
                    },
                    key,
                ))
                .await
                .map(|_| ()),
            ),
        ),
        // Last: it closes the queue the calls above use.
        (
            "CloseQueue",
            code(
                q.close_queue(with_key(
                    pb::CloseQueueRequest {
                        queue_id: "sale".into(),
                        reason: "SOLD_OUT".into(),
                    },
                    key,
                ))
                .await
                .map(|_| ()),
            ),
        ),
    ]
}

#[tokio::test]
async fn each_role_may_call_its_own_rpcs_and_no_others() {
    let dir = temp_dir("keys");
    write(&dir, "frontend", &format!("# the BFF\n{FRONTEND}\n"));
    write(&dir, "booking", BOOKING);
    write(&dir, "operator", OPERATOR);
    let (_redis, app) = {
        let redis = TestRedis::start();
        let mut config = TestApp::redis_config(&redis.url(), &fresh_prefix());
        config.api_keys = Some(dir);
        config.queues = vec![waitroom::config::QueueSpec::parse("sale").unwrap()];
        (redis, TestApp::spawn(config).await)
    };
    let channel = app.channel().await;
    let frontend = ["Enqueue", "GetRank", "WatchRank", "Leave"];
    let booking = [
        "VerifyAdmission",
        "CompleteAdmission",
        "GetSigningKeys",
        "AdmitUsers",
        "CloseQueue",
    ];
    for (key, allowed) in [
        (Some(FRONTEND), frontend.to_vec()),
        (Some(BOOKING), booking.to_vec()),
        (
            Some(OPERATOR),
            frontend
                .iter()
                .chain(&booking)
                .copied()
                .chain([
                    "AdmitBatch",
                    "AdmitUsers over capacity",
                    "GetQueue",
                    "ListQueues",
                    "GetQueueStats",
                ])
                .collect(),
        ),
    ] {
        for (rpc, code) in codes(&channel, key).await {
            if allowed.contains(&rpc) {
                assert!(
                    !matches!(code, Code::Unauthenticated | Code::PermissionDenied),
                    "{key:?} refused {rpc}: {code:?}"
                );
            } else {
                assert_eq!(code, Code::PermissionDenied, "{key:?} calling {rpc}");
            }
        }
    }
    for key in [None, Some("wrong-key-0123456789"), Some("")] {
        for (rpc, code) in codes(&channel, key).await {
            assert_eq!(code, Code::Unauthenticated, "{key:?} calling {rpc}");
        }
    }
    // Probes need no key.
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap();
}

struct Pki {
    ca: String,
    server: (String, String),
    client: (String, String),
    stranger: (String, String),
}

fn pki() -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf = |names: Vec<String>, issuer: &Issuer<'_, KeyPair>| {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, issuer)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let server = leaf(vec!["localhost".into()], &issuer);
    let client = leaf(vec!["booking.internal".into()], &issuer);
    let other_key = KeyPair::generate().unwrap();
    let mut other_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    other_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let other_issuer = Issuer::new(other_params, other_key);
    let stranger = leaf(vec!["mallory".into()], &other_issuer);
    Pki {
        ca: ca.pem(),
        server,
        client,
        stranger,
    }
}

async fn tls_channel(
    app: &TestApp,
    pki: &Pki,
    identity: Option<&(String, String)>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&pki.ca))
        .domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Channel::from_shared(format!("https://localhost:{}", app.addr.port()))
        .unwrap()
        .tls_config(tls)?
        .connect()
        .await
}

/// The test config serving TLS with the server's certificate from `pki`.
fn with_tls(pki: &Pki, dir: &std::path::Path) -> waitroom::config::Config {
    let mut config = TestApp::base_config();
    config.tls_cert = Some(write(dir, "server.pem", &pki.server.0));
    config.tls_key = Some(write(dir, "server.key", &pki.server.1));
    config
}

/// A service on a TLS port, which the plain readiness check cannot reach.
async fn start_tls(config: waitroom::config::Config) -> TestApp {
    TestApp::start(
        config,
        std::sync::Arc::new(waitroom::domain::ManualClock::new(now_ms())),
    )
    .await
}

#[tokio::test]
async fn tls_and_mutual_tls_protect_the_grpc_port() {
    let pki = pki();
    let dir = temp_dir("tls");
    let mut config = with_tls(&pki, &dir);
    let app = start_tls(config.clone()).await;
    let channel = tls_channel(&app, &pki, None)
        .await
        .expect("a TLS connection");
    QueueAdminServiceClient::new(channel)
        .create_queue(pb::CreateQueueRequest {
            queue: Some(queue("secure")),
        })
        .await
        .expect("a call over TLS");
    // Plain text is not accepted on a TLS port.
    let plain = QueueServiceClient::new(app.channel_unchecked())
        .enqueue(enqueue_request("secure", "a"))
        .await;
    assert!(plain.is_err());

    config.tls_client_ca = Some(write(&dir, "ca.pem", &pki.ca));
    let mutual = start_tls(config).await;
    let with_cert = tls_channel(&mutual, &pki, Some(&pki.client))
        .await
        .expect("a mutual TLS connection");
    QueueAdminServiceClient::new(with_cert)
        .list_queues(pb::ListQueuesRequest::default())
        .await
        .expect("a call with a client certificate");
    for identity in [None, Some(&pki.stranger)] {
        let refused = match tls_channel(&mutual, &pki, identity).await {
            Err(_) => true,
            Ok(channel) => QueueAdminServiceClient::new(channel)
                .list_queues(pb::ListQueuesRequest::default())
                .await
                .is_err(),
        };
        assert!(
            refused,
            "a client without a certificate of the CA got through"
        );
    }
}

#[tokio::test]
async fn made_up_paths_and_queue_ids_do_not_grow_the_metrics() {
    let (app, _redis) = TestApp::on_redis().await;
    app.create_queue(queue("sale")).await;
    let mut client = app.client().await;
    enqueue(&mut client, "sale", "someone").await;
    let (_, _, before) = http_get(&app, "/metrics").await;
    let mut grpc = tonic::client::Grpc::new(app.channel().await);
    for i in 0..500 {
        grpc.ready().await.unwrap();
        let path = if i % 2 == 0 {
            format!("/made.up.Service{i}/Method{i}")
        } else {
            format!("/waitroom.v1.QueueService/Nope{i}")
        };
        let status = grpc
            .unary::<_, pb::GetRankResponse, _>(
                tonic::Request::new(rank_request("sale", "someone")),
                http::uri::PathAndQuery::try_from(path).unwrap(),
                tonic_prost::ProstCodec::default(),
            )
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unimplemented);
    }
    // Made-up queue ids: each answered, none kept.
    for i in 0..500 {
        let status = client
            .get_rank(rank_request(&format!("made-up-{i}"), "someone"))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::NotFound);
    }
    let (_, _, after) = http_get(&app, "/metrics").await;
    assert!(
        after.len() < before.len() + 4_000,
        "/metrics grew from {} to {} bytes",
        before.len(),
        after.len()
    );
    assert!(after.contains(r#"grpc_service="unknown""#), "{after}");
    assert!(!after.contains("made.up") && !after.contains("Nope") && !after.contains("made-up"));
}

/// A connection that never starts HTTP/2, or starts and stalls, is closed
/// at the handshake deadline instead of being held until its age; one that
/// speaks is served as ever.
#[tokio::test]
async fn a_connection_that_does_not_start_http2_in_time_is_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut config = TestApp::base_config();
    config.handshake_timeout = Duration::from_millis(300);
    let app = TestApp::spawn(config).await;
    for first in [&b""[..], b"PRI * HTTP/2.0\r\n"] {
        let mut tcp = tokio::net::TcpStream::connect(app.addr).await.unwrap();
        tcp.write_all(first).await.unwrap();
        let started = Instant::now();
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf)).await;
        let closed_after = started.elapsed();
        assert!(
            matches!(read, Ok(Ok(0)) | Ok(Err(_))),
            "sent {first:?}: still open after 5 s ({read:?})"
        );
        assert!(
            closed_after >= Duration::from_millis(250) && closed_after < Duration::from_secs(2),
            "sent {first:?}: closed after {closed_after:?}"
        );
    }
    // A real client is served.
    app.create_queue(queue("open")).await;
    let mut client = app.client().await;
    assert_eq!(enqueue(&mut client, "open", "a").await.ticket, 1);
    app.stop().await;
}

/// Over TLS, a client that says hello and then stops is let go at the
/// same deadline: the TLS handshake has none of its own. A stand-in
/// between a real TLS client and the port passes on the client's first
/// flight only; the server's answers all go through.
#[tokio::test]
async fn a_tls_client_that_stops_mid_handshake_is_closed_at_the_deadline() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let pki = pki();
    let mut config = with_tls(&pki, &temp_dir("tls-stall"));
    // Long enough for a debug build's TLS handshake on a busy machine.
    config.handshake_timeout = Duration::from_millis(1500);
    let app = start_tls(config).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let upstream = app.addr;
    let closed = tokio::spawn(async move {
        let (client, _) = listener.accept().await.unwrap();
        let server = tokio::net::TcpStream::connect(upstream).await.unwrap();
        let (mut from_client, mut to_client) = client.into_split();
        let (mut from_server, mut to_server) = server.into_split();
        let mut hello = vec![0u8; 16 * 1024];
        let n = from_client.read(&mut hello).await.unwrap();
        to_server.write_all(&hello[..n]).await.unwrap();
        hello.truncate(n);
        let started = Instant::now();
        // The rest of the client's handshake is held back for good.
        let _held = tokio::spawn(async move {
            let mut sink = vec![0u8; 16 * 1024];
            while matches!(from_client.read(&mut sink).await, Ok(n) if n > 0) {}
        });
        let mut answer = vec![0u8; 16 * 1024];
        loop {
            match from_server.read(&mut answer).await {
                Ok(0) | Err(_) => return (started.elapsed(), hello),
                Ok(n) => {
                    let _ = to_client.write_all(&answer[..n]).await;
                }
            }
        }
    });
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&pki.ca))
        .domain_name("localhost");
    tls = tls.assume_http2(true);
    let client = tokio::spawn(async move {
        Channel::from_shared(format!("https://localhost:{port}"))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect()
            .await
    });
    let (after, hello) = tokio::time::timeout(Duration::from_secs(8), closed)
        .await
        .expect("the server still holds the connection after 8 s")
        .unwrap();
    assert!(
        after >= Duration::from_millis(1200) && after < Duration::from_secs(5),
        "closed {after:?} after the hello"
    );
    client.abort();
    // The same hello, then the header of an application data record whose
    // body never comes: no more a finished handshake than the hello alone.
    let mut tcp = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    tcp.write_all(&hello).await.unwrap();
    tcp.write_all(&[23, 3, 3, 0x40, 0]).await.unwrap();
    let started = Instant::now();
    let mut sink = vec![0u8; 16 * 1024];
    let held = tokio::time::timeout(Duration::from_secs(8), async {
        while matches!(tcp.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
    assert!(
        held.is_ok(),
        "a record header with no body held the connection 5 s"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    // One that connects and never speaks is let go at the same deadline.
    let mut silent = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let started = Instant::now();
    let read = tokio::time::timeout(Duration::from_secs(8), silent.read(&mut sink)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}");
    let after = started.elapsed();
    assert!(
        after >= Duration::from_millis(1200) && after < Duration::from_secs(5),
        "a silent client closed after {after:?}"
    );
    // A client that finishes its handshake is served past the deadline, on
    // the same connection: a stream opened before it still hears the line.
    let channel = tls_channel(&app, &pki, None)
        .await
        .expect("a TLS connection");
    QueueAdminServiceClient::new(channel.clone())
        .create_queue(pb::CreateQueueRequest {
            queue: Some(pb::Queue {
                max_active: 1,
                ..queue("after")
            }),
        })
        .await
        .unwrap();
    let mut client = QueueServiceClient::new(channel);
    enqueue(&mut client, "after", "first").await;
    enqueue(&mut client, "after", "second").await;
    let mut stream = client
        .watch_rank(watch_request("after", "second"))
        .await
        .unwrap()
        .into_inner();
    assert!(stream.message().await.unwrap().is_some());
    tokio::time::sleep(Duration::from_secs(2)).await;
    enqueue(&mut client, "after", "third").await;
    let place = stream
        .message()
        .await
        .expect("the stream outlived the deadline")
        .and_then(|m| m.place)
        .expect("a place");
    assert_eq!(place.waiting_count, 2);
    app.stop().await;
}

/// Opens `n` `WatchRank` streams of users `{prefix}{i}` on `channel` and
/// returns them unread (their first message may or may not have come).
async fn open_unread(
    channel: &Channel,
    queue: &str,
    prefix: &str,
    n: usize,
) -> Vec<tonic::Streaming<pb::WatchRankResponse>> {
    let mut opening = tokio::task::JoinSet::new();
    for i in 0..n {
        let mut client = QueueServiceClient::new(channel.clone());
        let request = watch_request(queue, &format!("{prefix}{i:05}"));
        opening.spawn(async move { client.watch_rank(request).await.map(|r| r.into_inner()) });
    }
    let mut streams = Vec::with_capacity(n);
    while let Some(opened) = opening.join_next().await {
        streams.push(opened.unwrap().expect("a stream opens"));
    }
    streams
}

/// How long it took until `done`.
async fn elapsed_until(what: &str, within: Duration, mut done: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    wait_until(what, within, || std::future::ready(done())).await;
    started.elapsed()
}

/// A client that opens 5,000 streams and reads none of them: once the
/// line moves, each stream's next message waits behind flow control, and
/// after the stall time the hub lets every one go; a client that reads
/// is not touched.
#[tokio::test]
async fn streams_whose_client_stops_reading_them_are_let_go_after_the_stall_time() {
    let mut config = TestApp::base_config();
    config.stall_timeout = Duration::from_secs(1);
    // Positions paced, as by default: a paced message refused lets go too.
    config.position_pace = Duration::from_millis(100);
    let app = TestApp::spawn(config).await;
    app.create_queue(queue("unread")).await;
    let mut client = app.client().await;
    let unread = 5_000;
    for i in 0..unread {
        enqueue(&mut client, "unread", &format!("u{i:05}")).await;
    }
    enqueue(&mut client, "unread", "reader").await;
    // A window of 16 bytes: no message fits until the client reads.
    let stingy = Channel::from_shared(format!("http://{}", app.addr))
        .unwrap()
        .initial_stream_window_size(Some(16))
        .connect()
        .await
        .unwrap();
    let held = open_unread(&stingy, "unread", "u", unread).await;
    let mut reader = open(&app, "unread", "reader").await;
    assert_eq!(app.hub.watcher_count(), unread + 1);
    // The line moves every 200 ms, and the reader reads.
    let moving = {
        let (mut client, clock) = (client.clone(), std::sync::Arc::clone(&app.clock));
        tokio::spawn(async move {
            let mut beat = every(Duration::from_millis(200));
            loop {
                beat.tick().await;
                admit(&mut client, "unread", 1).await;
                // The hub's clock, which paces positions, keeps time.
                clock.advance_ms(200);
            }
        })
    };
    let read = tokio::spawn(async move {
        let mut last = 0;
        while let Some(Ok(update)) = reader.next().await {
            last = update.place.map_or(0, |p| p.position);
        }
        last
    });
    let took = elapsed_until("the unread streams let go", Duration::from_secs(10), || {
        app.hub.watcher_count() == 1
    })
    .await;
    println!(
        "{unread} unread streams let go {took:?} after the line began to move (stall time 1 s)"
    );
    assert!(took >= Duration::from_millis(900), "{took:?}");
    // The reader is still followed: admitted at its turn.
    moving.abort();
    assert_eq!(app.hub.watcher_count(), 1);
    assert!(!read.is_finished());
    drop(held);
    read.abort();
    app.stop().await;
}

/// Reads that never complete: a socket whose client stopped reading.
struct PausedReads {
    tcp: tokio::net::TcpStream,
    paused: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl tokio::io::AsyncRead for PausedReads {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.paused.load(std::sync::atomic::Ordering::Relaxed) {
            return std::task::Poll::Pending;
        }
        std::pin::Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for PausedReads {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

/// A client that stops reading its socket altogether, with windows large
/// enough that flow control never holds the server back: the socket
/// fills, and after the stall time the server closes the connection,
/// ending its streams. Keepalive is off, so the stall alone does it.
#[tokio::test]
async fn a_connection_whose_client_stops_reading_its_socket_is_closed_after_the_stall_time() {
    let mut config = TestApp::base_config();
    config.stall_timeout = Duration::from_secs(1);
    config.keepalive_interval = Duration::from_secs(3600);
    let app = TestApp::spawn(config).await;
    app.create_queue(queue("deaf")).await;
    let mut client = app.client().await;
    let streams = 2_000;
    for i in 0..streams {
        enqueue(&mut client, "deaf", &format!("d{i:05}")).await;
    }
    let paused = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let addr = app.addr;
    let pause = std::sync::Arc::clone(&paused);
    // The channel connects again once it notices: count its connections.
    let made = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let making = std::sync::Arc::clone(&made);
    let deaf = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .initial_connection_window_size(Some(1 << 30))
        .initial_stream_window_size(Some(1 << 24))
        .connect_with_connector(tower::service_fn(move |_: http::Uri| {
            let paused = std::sync::Arc::clone(&pause);
            making.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            async move {
                let tcp = tokio::net::TcpStream::connect(addr).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(PausedReads { tcp, paused }))
            }
        }))
        .await
        .unwrap();
    let held = open_unread(&deaf, "deaf", "d", streams).await;
    let open = app.hub.connections().count();
    let mut admin = app.admin().await;
    // Counted once accepted, a moment after the client connected.
    let connections = open + 1;
    elapsed_until(
        "the admin connection counted",
        Duration::from_secs(5),
        || app.hub.connections().count() == connections,
    )
    .await;
    let before = made.load(std::sync::atomic::Ordering::Relaxed);
    paused.store(true, std::sync::atomic::Ordering::Relaxed);
    // Long notices to every stream, until the socket takes no more.
    let notice = "n".repeat(280);
    let started = Instant::now();
    let mut changes = 0;
    let mut beat = every(Duration::from_millis(100));
    while app.hub.watcher_count() > 0 {
        beat.tick().await;
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{} streams still open after {changes} notices",
            app.hub.watcher_count()
        );
        admin
            .update_queue(pb::UpdateQueueRequest {
                queue: Some(pb::Queue {
                    notice: format!("{changes} {notice}")[..280].to_owned(),
                    ..queue("deaf")
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["notice".into()],
                }),
            })
            .await
            .unwrap();
        changes += 1;
    }
    println!(
        "a socket that took no bytes closed with its {streams} streams {:?} after the client stopped reading ({changes} notices sent)",
        started.elapsed()
    );
    let (_, _, text) = http_get(&app, "/metrics").await;
    assert!(
        text.contains("waitroom_stalled_total{what=\"connection\"}"),
        "{text}"
    );
    elapsed_until("the connection closed", Duration::from_secs(5), || {
        let again = made.load(std::sync::atomic::Ordering::Relaxed) - before;
        app.hub.connections().count() < connections + again
    })
    .await;
    drop(held);
    app.stop().await;
}
