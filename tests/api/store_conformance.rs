//! The same scenarios against both stores: the memory store is the
//! specification, the Redis store must behave identically.

use std::time::Duration;

use waitroom::Error;
use waitroom::domain::{
    AdmissionCheck, AdmissionStatus, Consume, PlaceState, QueueConfig, QueueId, QueueMode,
    QueueUpdate, RequestId, UserId,
};
use waitroom::store::QueueStore;
use waitroom::tokens::token_id;

const T0: u64 = 1_800_000_000_000;

fn q(id: &str) -> QueueId {
    QueueId::parse(id).unwrap()
}

fn u(id: &str) -> UserId {
    UserId::parse(id).unwrap()
}

async fn create(store: &dyn QueueStore, id: &str, max_active: u32) -> QueueConfig {
    let mut config = QueueConfig::new(q(id));
    config.max_active = max_active;
    config.admission_ttl = Duration::from_secs(60);
    config.created_at_ms = T0;
    store.create_queue(&config).await.unwrap()
}

async fn position(store: &dyn QueueStore, queue: &str, user: &str, now: u64) -> Option<u64> {
    match store.place(&q(queue), &u(user), now).await.unwrap()?.state {
        PlaceState::Waiting { position } => Some(position),
        _ => Some(0),
    }
}

async fn fifo_positions_and_idempotent_enqueue(store: &dyn QueueStore) {
    create(store, "s", 0).await;
    for (i, user) in ["a", "b", "c", "d"].iter().enumerate() {
        let place = store.enqueue(&q("s"), &u(user), T0).await.unwrap();
        assert_eq!(place.ticket, i as u64 + 1);
        assert_eq!(
            place.state,
            PlaceState::Waiting {
                position: i as u64 + 1
            }
        );
    }
    let again = store.enqueue(&q("s"), &u("b"), T0).await.unwrap();
    assert_eq!((again.ticket, again.waiting_count), (2, 4));
    assert!(store.leave(&q("s"), &u("a"), T0).await.unwrap());
    assert!(!store.leave(&q("s"), &u("a"), T0).await.unwrap());
    assert_eq!(position(store, "s", "d", T0).await, Some(3));
    let back = store.enqueue(&q("s"), &u("a"), T0).await.unwrap();
    assert_eq!(
        (back.ticket, back.state),
        (5, PlaceState::Waiting { position: 4 })
    );
    assert_eq!(position(store, "s", "zed", T0).await, None);
}

async fn admission_order_cap_completion_and_expiry(store: &dyn QueueStore) {
    create(store, "s", 2).await;
    // Two free slots and nobody waiting: the first two are let in at once.
    for user in ["a", "b"] {
        let place = store.enqueue(&q("s"), &u(user), T0).await.unwrap();
        assert!(
            matches!(place.state, PlaceState::Admitted(ref a) if a.expires_at_ms == T0 + 60_000)
        );
    }
    for user in ["c", "d"] {
        let place = store.enqueue(&q("s"), &u(user), T0).await.unwrap();
        assert!(matches!(place.state, PlaceState::Waiting { .. }));
    }
    assert!(
        store.admit(&q("s"), 10, None, T0).await.unwrap().is_empty(),
        "the cap holds"
    );
    assert!(store.complete(&q("s"), &u("a"), T0 + 1).await.unwrap());
    assert!(!store.complete(&q("s"), &u("a"), T0 + 1).await.unwrap());
    let admitted = store.admit(&q("s"), 10, None, T0 + 2).await.unwrap();
    assert_eq!(
        admitted.iter().map(|a| a.user.as_str()).collect::<Vec<_>>(),
        ["c"]
    );
    assert_eq!(admitted[0].admission.ticket, 3);
    // b's admission ends at T0 + 60 s, freeing its slot for d.
    assert!(
        store
            .admit(&q("s"), 10, None, T0 + 59_999)
            .await
            .unwrap()
            .is_empty()
    );
    let admitted = store.admit(&q("s"), 10, None, T0 + 60_000).await.unwrap();
    assert_eq!(admitted[0].user.as_str(), "d");
    assert_eq!(position(store, "s", "b", T0 + 60_000).await, None);
    let stats = store.stats(&q("s"), T0 + 60_000).await.unwrap();
    assert_eq!(
        (
            stats.waiting,
            stats.active,
            stats.enqueued,
            stats.admitted,
            stats.completed,
            stats.expired
        ),
        (0, 2, 4, 4, 1, 1)
    );
}

async fn modes(store: &dyn QueueStore) {
    create(store, "s", 0).await;
    store.enqueue(&q("s"), &u("a"), T0).await.unwrap();
    let set = |mode| QueueUpdate {
        mode: Some(mode),
        ..Default::default()
    };
    store
        .update_queue(&q("s"), &set(QueueMode::Paused), T0)
        .await
        .unwrap();
    assert!(matches!(
        store.admit(&q("s"), 1, None, T0).await,
        Err(Error::QueuePaused(_))
    ));
    assert_eq!(position(store, "s", "b", T0).await, None);
    store.enqueue(&q("s"), &u("b"), T0).await.unwrap();
    store
        .update_queue(&q("s"), &set(QueueMode::Closed), T0)
        .await
        .unwrap();
    assert!(matches!(
        store.enqueue(&q("s"), &u("c"), T0).await,
        Err(Error::QueueClosed { reason: None, .. })
    ));
    assert!(matches!(
        store.enqueue(&q("s"), &u("a"), T0).await,
        Err(Error::QueueClosed { reason: None, .. })
    ));
    // Turned away with the reason those in line are told.
    store
        .update_queue(
            &q("s"),
            &QueueUpdate {
                closed_reason: Some(Some("CANCELLED".into())),
                ..Default::default()
            },
            T0,
        )
        .await
        .unwrap();
    for refused in [
        store.enqueue(&q("s"), &u("c"), T0).await.map(drop),
        store.admit(&q("s"), 1, None, T0).await.map(drop),
        store
            .admit_users(
                &q("s"),
                &[u("a")],
                &RequestId::parse("r-c").unwrap(),
                false,
                T0,
            )
            .await
            .map(drop),
    ] {
        assert!(
            matches!(&refused, Err(Error::QueueClosed { reason: Some(r), .. }) if r == "CANCELLED"),
            "{refused:?}"
        );
    }
    let closed = store.place(&q("s"), &u("b"), T0).await.unwrap().unwrap();
    assert_eq!(
        (closed.state, closed.mode),
        (PlaceState::Closed, QueueMode::Closed)
    );
    store
        .update_queue(&q("s"), &set(QueueMode::PassThrough), T0)
        .await
        .unwrap();
    let c = store.enqueue(&q("s"), &u("c"), T0).await.unwrap();
    assert!(matches!(c.state, PlaceState::Admitted(_)));
    let b = store.place(&q("s"), &u("b"), T0).await.unwrap().unwrap();
    assert!(matches!(b.state, PlaceState::Admitted(ref a) if a.ticket == 2));
}

async fn retried_batches_and_consumed_tokens(store: &dyn QueueStore) {
    create(store, "s", 0).await;
    for user in ["a", "b", "c"] {
        store.enqueue(&q("s"), &u(user), T0).await.unwrap();
    }
    let id = RequestId::parse("r-1").unwrap();
    let first = store.admit(&q("s"), 2, Some(&id), T0).await.unwrap();
    let retry = store.admit(&q("s"), 2, Some(&id), T0 + 10).await.unwrap();
    assert_eq!(first, retry);
    assert_eq!(position(store, "s", "c", T0).await, Some(1));
    let a = &first[0];
    let check = |consume: Option<(&str, u64)>| AdmissionCheck {
        user: a.user.clone(),
        token_id: token_id(&q("s"), &a.user, &a.admission),
        queue_epoch_ms: a.admission.queue_epoch_ms,
        ticket: a.admission.ticket,
        admitted_at_ms: Some(a.admission.admitted_at_ms),
        consume: consume.map(|(request, until)| Consume {
            remember_until_ms: until,
            request: RequestId::parse(request).unwrap(),
        }),
    };
    let status = async |check: AdmissionCheck, queue: &str, now: u64| {
        store.check_admission(&q(queue), &check, now).await.unwrap()
    };
    assert_eq!(status(check(None), "s", T0).await, AdmissionStatus::Held);
    let long = T0 + 1_000_000;
    assert_eq!(
        status(check(Some(("c-1", long))), "s", T0).await,
        AdmissionStatus::Held
    );
    // The consuming request retried is told the same; anyone else is not.
    assert_eq!(
        status(check(Some(("c-1", long))), "s", T0 + 1).await,
        AdmissionStatus::Held
    );
    assert_eq!(
        status(check(Some(("c-2", long))), "s", T0 + 1).await,
        AdmissionStatus::Used
    );
    // Another admission of the same user that expires soon, consumed, does
    // not shorten how long the first is remembered.
    let b = &first[1];
    let short = AdmissionCheck {
        user: b.user.clone(),
        token_id: token_id(&q("s"), &b.user, &b.admission),
        queue_epoch_ms: b.admission.queue_epoch_ms,
        ticket: b.admission.ticket,
        admitted_at_ms: Some(b.admission.admitted_at_ms),
        consume: Some(Consume {
            remember_until_ms: T0 + 1_000,
            request: RequestId::parse("c-3").unwrap(),
        }),
    };
    assert_eq!(status(short, "s", T0 + 2).await, AdmissionStatus::Held);
    assert_eq!(
        status(check(Some(("c-2", long))), "s", T0 + 500_000).await,
        AdmissionStatus::Used
    );
    // Another queue holds no such admission.
    assert_eq!(
        status(check(Some(("c-1", long))), "other", T0).await,
        AdmissionStatus::Revoked
    );
    // Completed: revoked for a check, still used for a consume.
    assert!(store.complete(&q("s"), &a.user, T0 + 3).await.unwrap());
    assert_eq!(
        status(check(None), "s", T0 + 4).await,
        AdmissionStatus::Revoked
    );
    assert_eq!(
        status(check(Some(("c-2", long))), "s", T0 + 4).await,
        AdmissionStatus::Used
    );
    // Left: revoked, and a consume of it is refused.
    assert!(store.leave(&q("s"), &b.user, T0 + 5).await.unwrap());
    let mut left = check(Some(("c-4", long)));
    left.user = b.user.clone();
    left.token_id = token_id(&q("s"), &b.user, &b.admission);
    left.ticket = b.admission.ticket;
    left.admitted_at_ms = Some(b.admission.admitted_at_ms);
    assert_eq!(
        status(left, "s", T0 + 2_000).await,
        AdmissionStatus::Revoked
    );
}

async fn queue_lifecycle(store: &dyn QueueStore) {
    for id in ["b", "a", "c"] {
        create(store, id, 1).await;
    }
    assert!(matches!(
        store.create_queue(&QueueConfig::new(q("a"))).await,
        Err(Error::QueueAlreadyExists(_))
    ));
    let all = store.list_queues(None, 10).await.unwrap();
    assert_eq!(
        all.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(),
        ["a", "b", "c"]
    );
    let rest = store.list_queues(Some(&q("a")), 1).await.unwrap();
    assert_eq!(
        rest.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(),
        ["b"]
    );
    let updated = store
        .update_queue(
            &q("b"),
            &QueueUpdate {
                max_active: Some(9),
                ..Default::default()
            },
            T0,
        )
        .await
        .unwrap();
    assert_eq!(updated.max_active, 9);
    assert_eq!(store.get_queue(&q("b")).await.unwrap(), updated);
    store.delete_queue(&q("b")).await.unwrap();
    assert!(matches!(
        store.get_queue(&q("b")).await,
        Err(Error::QueueNotFound(_))
    ));
    assert!(matches!(
        store.delete_queue(&q("b")).await,
        Err(Error::QueueNotFound(_))
    ));
    assert!(matches!(
        store.enqueue(&q("b"), &u("x"), T0).await,
        Err(Error::QueueNotFound(_))
    ));
    assert_eq!(store.list_queues(None, 10).await.unwrap().len(), 2);
}

async fn a_late_sign_of_life_never_moves_a_newer_one_back(store: &dyn QueueStore) {
    let config = create(store, "s", 0).await;
    let timeout = config.release_after_ms();
    store.enqueue(&q("s"), &u("a"), T0 + 10_000).await.unwrap();
    // A batch of presence read at T0 arrives after the enqueue at T0 + 10 s,
    // and so does a lookup whose clock was read at T0.
    store.touch(&q("s"), &[u("a")], T0).await.unwrap();
    store.places(&q("s"), &[u("a")], true, T0).await.unwrap();
    let now = T0 + 10_000 + timeout - 1;
    // The reaper passes every second or two all along, as a ready replica's
    // does: no gap for the liveness rule to forgive.
    let mut pass = T0;
    while pass < now {
        assert_eq!(store.reap(&q("s"), 10, pass).await.unwrap(), 0);
        pass += 2_000;
    }
    assert_eq!(store.reap(&q("s"), 10, now).await.unwrap(), 0);
    assert_eq!(store.reap(&q("s"), 10, now + 2).await.unwrap(), 1);
}

async fn nobody_is_released_for_time_no_pass_could_hear_them(store: &dyn QueueStore) {
    use waitroom::domain::DEAF_AFTER_MS;
    let config = create(store, "s", 0).await;
    let timeout = config.release_after_ms();
    store.enqueue(&q("s"), &u("a"), T0).await.unwrap();
    store.enqueue(&q("s"), &u("b"), T0).await.unwrap();
    assert_eq!(store.reap(&q("s"), 10, T0).await.unwrap(), 0);
    // The store stops answering for three timeouts: no pass runs. The first
    // pass after it releases nobody, and presence counts from a little
    // after it.
    let back = T0 + 3 * timeout;
    assert_eq!(store.reap(&q("s"), 10, back).await.unwrap(), 0);
    let since = back + DEAF_AFTER_MS;
    assert_eq!(
        store.get_queue(&q("s")).await.unwrap().presence_since_ms,
        since
    );
    // One shows life again; the other stays silent and is released a whole
    // timeout (and its quarter) after presence counts again, not before.
    let mut pass = back;
    while pass + 1_000 < since + timeout {
        pass += 1_000;
        store.touch(&q("s"), &[u("a")], pass).await.unwrap();
        assert_eq!(store.reap(&q("s"), 10, pass).await.unwrap(), 0, "at {pass}");
    }
    assert_eq!(
        store.reap(&q("s"), 10, since + timeout + 1).await.unwrap(),
        1
    );
    assert!(
        store
            .place(&q("s"), &u("a"), since + timeout + 2)
            .await
            .unwrap()
            .is_some()
    );
    // Passes a little under the gap apart are no outage; a pass missing for
    // longer than DEAF_AFTER_MS is.
    let later = since + timeout + 1 + DEAF_AFTER_MS;
    assert_eq!(store.reap(&q("s"), 10, later).await.unwrap(), 0);
    assert_eq!(
        store.get_queue(&q("s")).await.unwrap().presence_since_ms,
        since
    );
    let after_gap = later + DEAF_AFTER_MS + 1;
    assert_eq!(store.reap(&q("s"), 10, after_gap).await.unwrap(), 0);
    assert_eq!(
        store.get_queue(&q("s")).await.unwrap().presence_since_ms,
        after_gap + DEAF_AFTER_MS
    );
}

macro_rules! conformance {
    ($($scenario:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test]
                async fn $scenario() {
                    super::$scenario(&waitroom::store::MemoryStore::new()).await;
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test]
                async fn $scenario() {
                    let redis = crate::helpers::TestRedis::start();
                    super::$scenario(&redis.store().await).await;
                }
            )*
        }
    };
}

/// Replicas learn each other's open streams; a report lapses once older
/// than the time to live (one exactly that old still counts).
async fn replicas_share_their_load(store: &dyn QueueStore) {
    let ttl = 3_000;
    let share = |instance: &'static str, streams: Option<u64>, now: u64| async move {
        store.share_load(instance, streams, ttl, now).await.unwrap()
    };
    assert_eq!(share("a", Some(100), T0).await, vec![100]);
    assert_eq!(share("b", Some(0), T0 + 1).await, vec![100, 0]);
    assert_eq!(share("c", Some(50), T0 + 2).await, vec![100, 0, 50]);
    assert_eq!(share("a", Some(80), T0 + 3).await, vec![80, 0, 50]);
    // A draining replica leaves at once.
    assert_eq!(share("a", None, T0 + 4).await, vec![0, 50]);
    assert_eq!(share("b", Some(7), T0 + 3_002).await, vec![7, 50]);
    assert_eq!(share("b", Some(7), T0 + 3_003).await, vec![7]);
    assert_eq!(share("c", None, T0 + 3_004).await, vec![7]);
}

/// A reader whose clock is a second behind the last writer's counts the
/// arrivals of the window by its own clock, in both stores alike: old
/// buckets are dropped on one schedule (every ten seconds), not whenever a
/// store happens to write.
async fn a_reader_behind_counts_the_arrivals_of_its_own_window(store: &dyn QueueStore) {
    create(store, "s", 0).await;
    for (user, at) in [("a", 45_000), ("b", 95_000), ("c", 100_000)] {
        store.enqueue(&q("s"), &u(user), T0 + at).await.unwrap();
    }
    // At 99 s the window starts at the 40 s slot: a (45 s) and b (95 s).
    let stats = store.stats(&q("s"), T0 + 99_000).await.unwrap();
    assert_eq!(stats.flow.arrived, 2);
}

conformance!(
    a_reader_behind_counts_the_arrivals_of_its_own_window,
    fifo_positions_and_idempotent_enqueue,
    admission_order_cap_completion_and_expiry,
    modes,
    retried_batches_and_consumed_tokens,
    queue_lifecycle,
    a_late_sign_of_life_never_moves_a_newer_one_back,
    nobody_is_released_for_time_no_pass_could_hear_them,
    replicas_share_their_load,
);

/// The same scenarios on a three-master Redis Cluster.
mod cluster {
    use std::time::Duration;

    use waitroom::store::{RedisOptions, RedisStore};
    use waitroom::testkit::RedisCluster;

    async fn store(cluster: &RedisCluster) -> RedisStore {
        RedisStore::connect(&RedisOptions {
            url: cluster.urls(),
            password: None,
            cluster: true,
            prefix: crate::helpers::fresh_prefix(),
            timeout: Duration::from_secs(2),
            sentinel_master: None,
            sentinel_password: None,
        })
        .await
        .expect("connecting to the test cluster")
    }

    macro_rules! on_cluster {
        ($($scenario:ident),* $(,)?) => {
            $(
                #[tokio::test]
                async fn $scenario() {
                    let cluster = RedisCluster::start().unwrap_or_else(|e| panic!("{e}"));
                    super::$scenario(&store(&cluster).await).await;
                }
            )*
        };
    }

    on_cluster!(
        fifo_positions_and_idempotent_enqueue,
        admission_order_cap_completion_and_expiry,
        modes,
        retried_batches_and_consumed_tokens,
        queue_lifecycle,
        a_late_sign_of_life_never_moves_a_newer_one_back,
        nobody_is_released_for_time_no_pass_could_hear_them,
        replicas_share_their_load,
    );
}
