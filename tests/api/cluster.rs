//! The service on a three-master Redis Cluster: every key of a queue in one
//! slot, queues spread over the shards, and nobody lost or reordered while
//! a queue's slot moves to another shard under traffic.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use waitroom::pb;
use waitroom::testkit::RedisCluster;

use crate::helpers::*;

async fn on_cluster() -> (TestApp, Arc<RedisCluster>, String) {
    let cluster = Arc::new(RedisCluster::start().unwrap_or_else(|e| panic!("{e}")));
    let prefix = fresh_prefix();
    let mut config = TestApp::redis_config(&cluster.urls(), &prefix);
    config.redis_cluster = true;
    config.redis_timeout = Duration::from_secs(2);
    (TestApp::spawn(config).await, cluster, prefix)
}

fn connection(cluster: &RedisCluster, node: usize) -> redis::Connection {
    redis::Client::open(cluster.nodes[node].url())
        .unwrap()
        .get_connection()
        .unwrap()
}

fn keys_on(cluster: &RedisCluster, node: usize, pattern: &str) -> Vec<String> {
    let mut conn = connection(cluster, node);
    redis::cmd("KEYS").arg(pattern).query(&mut conn).unwrap()
}

#[tokio::test]
async fn queues_spread_over_the_shards_and_each_queue_lives_in_one_slot() {
    let (app, cluster, prefix) = on_cluster().await;
    let mut client = app.client().await;
    for q in 0..12 {
        let id = format!("q{q}");
        app.create_queue(queue(&id)).await;
        enqueue(&mut client, &id, "alice").await;
        let holders: Vec<usize> = (0..3)
            .filter(|n| !keys_on(&cluster, *n, &format!("{prefix}:{{{id}}}:*")).is_empty())
            .collect();
        assert_eq!(
            holders.len(),
            1,
            "queue {id} is split over nodes {holders:?}"
        );
    }
    for node in 0..3 {
        assert!(
            !keys_on(&cluster, node, &format!("{prefix}:{{q*")).is_empty(),
            "node {node} holds no queue"
        );
    }
    let listed = app
        .admin()
        .await
        .list_queues(pb::ListQueuesRequest {
            page_size: 5,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.queues.len(), 5);
}

/// Moves a slot from one master to another the way `redis-cli --cluster
/// reshard` does: IMPORTING/MIGRATING, MIGRATE key by key, then SETSLOT NODE.
fn migrate_slot(cluster: &RedisCluster, slot: u16, from: usize, to: usize) {
    let id = |n: usize| -> String {
        let mut conn = connection(cluster, n);
        redis::cmd("CLUSTER").arg("MYID").query(&mut conn).unwrap()
    };
    let (from_id, to_id) = (id(from), id(to));
    let mut source = connection(cluster, from);
    let mut target = connection(cluster, to);
    redis::cmd("CLUSTER")
        .arg("SETSLOT")
        .arg(slot)
        .arg("IMPORTING")
        .arg(&from_id)
        .query::<()>(&mut target)
        .unwrap();
    redis::cmd("CLUSTER")
        .arg("SETSLOT")
        .arg(slot)
        .arg("MIGRATING")
        .arg(&to_id)
        .query::<()>(&mut source)
        .unwrap();
    loop {
        let keys: Vec<String> = redis::cmd("CLUSTER")
            .arg("GETKEYSINSLOT")
            .arg(slot)
            .arg(2)
            .query(&mut source)
            .unwrap();
        if keys.is_empty() {
            break;
        }
        // Slowly, key by key, so traffic meets the slot half moved.
        redis::cmd("MIGRATE")
            .arg("127.0.0.1")
            .arg(cluster.nodes[to].port)
            .arg("")
            .arg(0)
            .arg(5000)
            .arg("KEYS")
            .arg(&keys)
            .query::<()>(&mut source)
            .unwrap();
        std::thread::sleep(Duration::from_millis(30));
    }
    for n in 0..3 {
        let mut conn = connection(cluster, n);
        redis::cmd("CLUSTER")
            .arg("SETSLOT")
            .arg(slot)
            .arg("NODE")
            .arg(&to_id)
            .query::<()>(&mut conn)
            .unwrap();
    }
}

#[tokio::test]
async fn a_queue_whose_slot_moves_under_traffic_loses_and_reorders_nobody() {
    let (app, cluster, prefix) = on_cluster().await;
    app.create_queue(queue("moving")).await;
    let mut client = app.client().await;
    for i in 0..100 {
        enqueue(&mut client, "moving", &format!("before-{i:03}")).await;
    }
    let slot: u16 = {
        let mut conn = connection(&cluster, 0);
        redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(format!("{prefix}:{{moving}}:waiting"))
            .query(&mut conn)
            .unwrap()
    };
    let from = (0..3)
        .find(|n| !keys_on(&cluster, *n, &format!("{prefix}:{{moving}}:*")).is_empty())
        .unwrap();
    let to = (from + 1) % 3;

    // Arrivals keep coming while the slot moves; a refused call (the slot
    // is half moved) is retried, as a frontend would.
    let arrivals = tokio::spawn({
        let client = app.client().await;
        async move {
            let retried = std::sync::atomic::AtomicU32::new(0);
            let mut beat = every(Duration::from_millis(5));
            for i in 0..150 {
                beat.tick().await;
                let user = format!("during-{i:03}");
                until("a join taken", Duration::from_secs(10), || {
                    let mut client = client.clone();
                    let (retried, user) = (&retried, user.clone());
                    async move {
                        match client.enqueue(enqueue_request("moving", &user)).await {
                            Ok(_) => Ok(()),
                            Err(status) if status.code() == tonic::Code::Unavailable => {
                                retried.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                Err(format!("{status:?}"))
                            }
                            Err(status) => panic!("{user}: {status:?}"),
                        }
                    }
                })
                .await;
            }
            retried.into_inner()
        }
    });
    let moving = Arc::clone(&cluster);
    tokio::task::spawn_blocking(move || migrate_slot(&moving, slot, from, to))
        .await
        .unwrap();
    let retried = arrivals.await.unwrap();
    assert!(keys_on(&cluster, from, &format!("{prefix}:{{moving}}:*")).is_empty());
    assert!(!keys_on(&cluster, to, &format!("{prefix}:{{moving}}:*")).is_empty());

    // Everyone is there, once, in arrival order.
    let mut tickets = BTreeSet::new();
    for (i, user) in (0..100)
        .map(|i| format!("before-{i:03}"))
        .chain((0..150).map(|i| format!("during-{i:03}")))
        .enumerate()
    {
        let place = rank(&mut client, "moving", &user).await;
        assert_eq!(place.position, i as u64 + 1, "{user}");
        assert!(tickets.insert(place.ticket));
    }
    assert_eq!(
        rank(&mut client, "moving", "during-149")
            .await
            .waiting_count,
        250
    );
    let admitted = admit(&mut client, "moving", 3).await;
    assert_eq!(admitted[0].user_id, "before-000");
    eprintln!("{retried} calls were retried while the slot moved");
}

/// A queue over as many sub-lines as the Cluster has masters puts one
/// sub-line on each (the slot map read when it is made; the plain tags
/// crowd two on one node for about half the names), and joins and
/// admissions over them work across the nodes.
#[tokio::test]
async fn a_queue_over_sub_lines_puts_one_on_each_master() {
    use waitroom::domain::{PlaceState, QueueConfig, QueueId, RequestId, UserId};
    use waitroom::store::{QueueStore, RedisOptions, RedisStore};

    let cluster = RedisCluster::start().unwrap_or_else(|e| panic!("{e}"));
    let prefix = fresh_prefix();
    let store = RedisStore::connect(&RedisOptions {
        url: cluster.urls(),
        password: None,
        cluster: true,
        prefix: prefix.clone(),
        timeout: Duration::from_secs(2),
        sentinel_master: None,
        sentinel_password: None,
    })
    .await
    .unwrap()
    .with_sub_lines();
    let masters = cluster.nodes.len();
    for name in 0..10 {
        let queue = QueueId::parse(&format!("sale{name}")).unwrap();
        let mut config = QueueConfig::new(queue.clone()).created(1_800_000_000_000);
        config.shards = masters as u32;
        store.create_queue(&config).await.unwrap();
        for node in 0..masters {
            let copies = keys_on(
                &cluster,
                node,
                &format!("{prefix}:{{{queue}/{masters}~*}}:config"),
            );
            assert_eq!(copies.len(), 1, "{queue} on node {node}: {copies:?}");
        }
        let users: Vec<UserId> = (0..12)
            .map(|n| UserId::parse(&format!("v{n}")).unwrap())
            .collect();
        let places = store
            .enqueue_many(&queue, &users, 1_800_000_000_000)
            .await
            .unwrap();
        assert!(places.iter().all(|p| matches!(
            p,
            Ok(place) if matches!(place.state, PlaceState::Waiting { .. })
        )));
        let admitted = store
            .admit(
                &queue,
                12,
                Some(&RequestId::parse("all").unwrap()),
                1_800_000_001_000,
            )
            .await
            .unwrap();
        assert_eq!(admitted.len(), 12, "{queue}");
        let mut tickets: Vec<u64> = admitted.iter().map(|a| a.admission.ticket).collect();
        let in_order = tickets.clone();
        tickets.sort_unstable();
        assert_eq!(tickets, in_order, "admitted in ticket order");
    }
}
