//! Service replicas sharing one Redis: one killed mid-batch (its callers
//! get no answer and retry elsewhere with the same request id), and a Redis
//! Cluster master failed over to its replica under traffic. Nobody is
//! admitted twice, nothing acknowledged is lost, and what online
//! verification accepts never exceeds `max_active`.

use std::time::Duration;

use waitroom::pb::{self, Verdict};
use waitroom::testkit::{RedisCluster, RedisServer};

use crate::ledger;
use crate::service::{Service, queue, scratch, within};
use crate::wait::wait_until;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_mid_batch_admits_nobody_twice_and_loses_nothing() {
    let _serial = crate::one_at_a_time().await;
    let redis = RedisServer::start().unwrap_or_else(|e| panic!("{e}"));
    let dir = scratch("replica-killed");
    let mut one = Service::start(&redis.url(), "replicas", &dir, &[]).await;
    let two = Service::start(&redis.url(), "replicas", &dir, &[]).await;
    one.create_queue(queue("sale")).await;
    let ledger = ledger::shared();
    let run = Duration::from_secs(4) * crate::scale() as u32;
    // Both admit; one is killed half-way, with batches in flight.
    let admitters = vec![one.client(), two.client()];
    ledger::traffic(
        vec![two.client()],
        admitters,
        &ledger,
        run,
        10,
        async move {
            tokio::time::sleep(run / 2).await;
            one.kill();
        },
    )
    .await;
    let mut client = two.client();
    ledger::drain(&mut client, &ledger, "sale", "replicas").await;
    let ledger = ledger.lock().unwrap();
    ledger.assert_nobody_admitted_twice();
    ledger.assert_only_joiners_admitted();
    ledger.assert_every_acknowledged_admitted();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn online_verification_never_accepts_more_than_max_active() {
    let _serial = crate::one_at_a_time().await;
    let redis = RedisServer::start().unwrap_or_else(|e| panic!("{e}"));
    let dir = scratch("max-active");
    let one = Service::start(&redis.url(), "max-active", &dir, &[]).await;
    let two = Service::start(&redis.url(), "max-active", &dir, &[]).await;
    one.create_queue(pb::Queue {
        max_active: 25,
        ..queue("sale")
    })
    .await;
    let ledger = ledger::shared();
    let (mut a, mut b) = (one.client(), two.client());
    // The first 25 go straight in; the rest wait.
    let mut admitted: Vec<(String, String)> = Vec::new();
    for n in 0..60 {
        let client = if n % 2 == 0 { &mut a } else { &mut b };
        let place = client
            .enqueue(pb::EnqueueRequest {
                queue_id: "sale".into(),
                user_id: format!("u{n}"),
                receipt: String::new(),
            })
            .await
            .unwrap()
            .into_inner()
            .place
            .unwrap();
        if let Some(admission) = place.admission {
            admitted.push((format!("u{n}"), admission.token));
        }
    }
    assert_eq!(admitted.len(), 25);
    // Some admitted users complete or leave, and both replicas admit more
    // in their place.
    for round in 0..6 {
        for (user, _) in admitted.iter().skip(round * 4).take(4) {
            if round % 2 == 0 {
                b.complete_admission(pb::CompleteAdmissionRequest {
                    queue_id: "sale".into(),
                    user_id: user.clone(),
                })
                .await
                .unwrap();
            } else {
                a.leave(pb::LeaveRequest {
                    queue_id: "sale".into(),
                    user_id: user.clone(),
                })
                .await
                .unwrap();
            }
        }
        for (i, client) in [&mut a, &mut b].into_iter().enumerate() {
            ledger::admit_until_answered(
                client,
                &ledger,
                "sale",
                3,
                &format!("r{round}-{i}"),
                Duration::from_secs(5),
            )
            .await;
        }
        admitted.extend(
            ledger
                .lock()
                .unwrap()
                .admissions()
                .into_iter()
                .map(|a| (a.user, a.token))
                .filter(|(user, _)| !admitted.iter().any(|(u, _)| u == user))
                .collect::<Vec<_>>(),
        );
    }
    assert!(admitted.len() > 40, "only {} admitted", admitted.len());
    let mut valid = 0;
    for (_, token) in &admitted {
        let verdict = a
            .verify_admission(within(
                pb::VerifyAdmissionRequest {
                    queue_id: "sale".into(),
                    token: token.clone(),
                    ..Default::default()
                },
                Duration::from_secs(3),
            ))
            .await
            .unwrap()
            .into_inner()
            .verdict();
        if verdict == Verdict::Valid {
            valid += 1;
        } else {
            assert_eq!(verdict, Verdict::Revoked);
        }
    }
    assert!(valid <= 25, "{valid} tokens accepted with max_active 25");
    assert_eq!(valid, 25, "the free slots were filled again");
    let mut users: Vec<&String> = admitted.iter().map(|(u, _)| u).collect();
    users.sort();
    users.dedup();
    assert_eq!(users.len(), admitted.len(), "someone was admitted twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_master_failed_over_under_traffic_loses_nothing() {
    let _serial = crate::one_at_a_time().await;
    let cluster = RedisCluster::start_with_replicas(1).unwrap_or_else(|e| panic!("{e}"));
    let dir = scratch("failover");
    let service = Service::start(&cluster.urls(), "failover", &dir, &["--redis-cluster"]).await;
    service.create_queue(queue("sale")).await;
    let (master, replica) = cluster
        .master_and_replica_of("failover:{sale}:config")
        .unwrap_or_else(|e| panic!("{e}"));
    let replica = replica.expect("the test cluster has a replica per master");
    let ledger = ledger::shared();
    let run = Duration::from_secs(6) * crate::scale() as u32;
    ledger::traffic(
        vec![service.client()],
        vec![service.client()],
        &ledger,
        run,
        10,
        async {
            tokio::time::sleep(run / 2).await;
            // A manual failover: the replica catches up, then takes over.
            let client = redis::Client::open(format!("redis://127.0.0.1:{replica}")).unwrap();
            let mut conn = client.get_connection().unwrap();
            let _: () = redis::cmd("CLUSTER")
                .arg("FAILOVER")
                .query(&mut conn)
                .unwrap();
            wait_until("the failover", Duration::from_secs(10), || {
                let role: Vec<redis::Value> = redis::cmd("ROLE").query(&mut conn).unwrap();
                std::future::ready(
                    matches!(role.first(), Some(redis::Value::BulkString(r)) if r == b"master"),
                )
            })
            .await;
        },
    )
    .await;
    let mut client = service.client();
    ledger::drain(&mut client, &ledger, "sale", "failover").await;
    let (now_master, _) = cluster
        .master_and_replica_of("failover:{sale}:config")
        .unwrap();
    assert_ne!(now_master, master, "the slot did not move");
    let ledger = ledger.lock().unwrap();
    ledger.assert_nobody_admitted_twice();
    ledger.assert_admitted_in_ticket_order();
    ledger.assert_only_joiners_admitted();
    ledger.assert_every_acknowledged_admitted();
}
