//! The admin service: creating, reading, listing, changing and deleting
//! queues, and their figures.

use tonic::Code;
use waitroom::pb::{self, QueueMode};

use crate::helpers::*;

#[tokio::test]
async fn create_fills_in_defaults_and_refuses_duplicates_and_bad_settings() {
    let (app, _redis) = TestApp::on_redis().await;
    let mut admin = app.admin().await;
    let created = app.create_queue(queue("sale")).await;
    assert_eq!(created.mode(), QueueMode::Queueing);
    assert_eq!(created.admission_ttl, secs(600));
    assert_eq!(created.heartbeat_timeout, secs(120));
    assert!(created.create_time.is_some());
    let status = admin
        .create_queue(pb::CreateQueueRequest {
            queue: Some(queue("sale")),
        })
        .await
        .unwrap_err();
    assert_eq!(
        (status.code(), reason(&status).as_str()),
        (Code::AlreadyExists, "QUEUE_ALREADY_EXISTS")
    );
    for (bad, field) in [
        (queue("bad id"), "queue.id"),
        (
            pb::Queue {
                admission_ttl: secs(0),
                ..queue("q1")
            },
            "queue.admission_ttl",
        ),
        (
            pb::Queue {
                admission_ttl: secs(100_000),
                ..queue("q2")
            },
            "queue.admission_ttl",
        ),
        (
            pb::Queue {
                heartbeat_timeout: secs(1),
                ..queue("q3")
            },
            "queue.heartbeat_timeout",
        ),
        (
            pb::Queue {
                heartbeat_timeout: secs(-5),
                ..queue("q4")
            },
            "queue.heartbeat_timeout",
        ),
        (
            pb::Queue {
                mode: 42,
                ..queue("q5")
            },
            "queue.mode",
        ),
    ] {
        let status = admin
            .create_queue(pb::CreateQueueRequest { queue: Some(bad) })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(bad_field(&status), field);
    }
    let status = admin
        .create_queue(pb::CreateQueueRequest { queue: None })
        .await
        .unwrap_err();
    assert_eq!(bad_field(&status), "queue");
}

#[tokio::test]
async fn get_list_and_delete_queues() {
    let (app, _redis) = TestApp::on_redis().await;
    let mut admin = app.admin().await;
    for id in ["c", "a", "e", "b", "d"] {
        app.create_queue(pb::Queue {
            max_active: 7,
            ..queue(id)
        })
        .await;
    }
    let got = app.get_queue("c").await;
    assert_eq!((got.id.as_str(), got.max_active), ("c", 7));

    let mut ids = Vec::new();
    let mut token = String::new();
    loop {
        let page = admin
            .list_queues(pb::ListQueuesRequest {
                page_size: 2,
                page_token: token,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.queues.len() <= 2);
        ids.extend(page.queues.into_iter().map(|q| q.id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(ids, ["a", "b", "c", "d", "e"]);
    let status = admin
        .list_queues(pb::ListQueuesRequest {
            page_size: 1001,
            page_token: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad_field(&status), "page_size");
    let status = admin
        .list_queues(pb::ListQueuesRequest {
            page_size: 0,
            page_token: "%%%".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad_field(&status), "page_token");

    let mut client = app.client().await;
    enqueue(&mut client, "c", "alice").await;
    admin
        .delete_queue(pb::DeleteQueueRequest {
            queue_id: "c".into(),
        })
        .await
        .unwrap();
    let status = admin
        .get_queue(pb::GetQueueRequest {
            queue_id: "c".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let status = admin
        .delete_queue(pb::DeleteQueueRequest {
            queue_id: "c".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let status = client
        .get_rank(rank_request("c", "alice"))
        .await
        .unwrap_err();
    assert_eq!(reason(&status), "QUEUE_NOT_FOUND");
    // A queue created again under the same id starts afresh.
    app.create_queue(queue("c")).await;
    assert_eq!(enqueue(&mut client, "c", "bob").await.ticket, 1);
}

#[tokio::test]
async fn update_changes_exactly_the_masked_fields() {
    let (app, _redis) = TestApp::on_redis().await;
    let mut admin = app.admin().await;
    app.create_queue(pb::Queue {
        max_active: 5,
        admit_per_second: 3,
        ..queue("sale")
    })
    .await;
    let updated = admin
        .update_queue(pb::UpdateQueueRequest {
            queue: Some(pb::Queue {
                max_active: 0,
                admit_per_second: 9,
                mode: QueueMode::Paused as i32,
                ..queue("sale")
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["max_active".into(), "mode".into()],
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .queue
        .unwrap();
    assert_eq!(
        (updated.max_active, updated.admit_per_second, updated.mode()),
        (0, 3, QueueMode::Paused)
    );
    // No mask: the fields set to non-default values.
    let updated = admin
        .update_queue(pb::UpdateQueueRequest {
            queue: Some(pb::Queue {
                admission_ttl: secs(60),
                ..queue("sale")
            }),
            update_mask: None,
        })
        .await
        .unwrap()
        .into_inner()
        .queue
        .unwrap();
    assert_eq!(
        (updated.admission_ttl, updated.mode()),
        (secs(60), QueueMode::Paused)
    );
    for (paths, field) in [
        (vec!["colour"], "update_mask"),
        (vec!["id"], "update_mask"),
        (vec!["mode"], "queue.mode"),
        (vec!["admission_ttl"], "queue.admission_ttl"),
    ] {
        let status = admin
            .update_queue(pb::UpdateQueueRequest {
                queue: Some(queue("sale")),
                update_mask: Some(prost_types::FieldMask {
                    paths: paths.into_iter().map(String::from).collect(),
                }),
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(bad_field(&status), field);
    }
    let status = admin
        .update_queue(pb::UpdateQueueRequest {
            queue: Some(pb::Queue {
                max_active: 1,
                ..queue("nope")
            }),
            update_mask: None,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
}

#[tokio::test]
async fn queues_declared_at_start_are_created_and_existing_ones_kept() {
    let redis = TestRedis::start();
    let prefix = fresh_prefix();
    let mut config = TestApp::redis_config(&redis.url(), &prefix);
    config.queues =
        vec![waitroom::config::QueueSpec::parse("declared:max_active=3,mode=paused").unwrap()];
    let first = TestApp::spawn(config.clone()).await;
    let got = first.get_queue("declared").await;
    assert_eq!((got.max_active, got.mode()), (3, QueueMode::Paused));
    first.set_mode("declared", QueueMode::Closed).await;
    first.stop().await;
    // A restart must not undo the operator's switch.
    let second = TestApp::spawn(config).await;
    let got = second.get_queue("declared").await;
    assert_eq!(got.mode(), QueueMode::Closed);
}
