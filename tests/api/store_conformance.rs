//! The same scenarios against both stores: the memory store is the
//! specification, the Redis store must behave identically.

use std::time::Duration;

use waitroom::Error;
use waitroom::domain::{
    AdmissionCheck, AdmissionStatus, Adoption, Consume, PlaceClaim, PlaceState, QueueConfig,
    QueueId, QueueMode, QueueUpdate, Refusal, RequestId, Restoration, UserId,
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

fn claim(epoch_ms: u64, ticket: u64, issued_ms: u64) -> PlaceClaim {
    PlaceClaim {
        epoch_ms,
        ticket,
        head: 0,
        top: 0,
        issued_ms,
    }
}

fn restored_ticket(outcome: Restoration) -> u64 {
    match outcome {
        Restoration::Restored(place) => place.ticket,
        other => panic!("not given back: {other:?}"),
    }
}

/// In the queue a receipt was issued for, only a join the store lost (a
/// ticket above every ticket it gave) is given back; whoever held a lower
/// ticket was admitted, left, cleared or released, and stays so.
async fn a_receipt_gives_back_only_a_join_the_store_lost(store: &dyn QueueStore) {
    let config = create(store, "s", 1).await;
    let epoch = config.created_at_ms;
    // a is admitted at once (a free slot), b and c wait; c leaves.
    for user in ["a", "b", "c"] {
        store.enqueue(&q("s"), &u(user), T0).await.unwrap();
    }
    store.leave(&q("s"), &u("c"), T0).await.unwrap();
    let now = T0 + 1_000;
    assert_eq!(
        store
            .restore(&q("s"), &u("b"), &claim(epoch, 2, T0), now)
            .await
            .unwrap(),
        Restoration::Holds
    );
    assert_eq!(
        store
            .restore(&q("s"), &u("a"), &claim(epoch, 1, T0), now)
            .await
            .unwrap(),
        Restoration::Holds,
        "an admitted user holds their admission"
    );
    assert!(store.complete(&q("s"), &u("a"), now).await.unwrap());
    for (user, ticket) in [("a", 1), ("c", 3)] {
        assert_eq!(
            store
                .restore(&q("s"), &u(user), &claim(epoch, ticket, T0), now)
                .await
                .unwrap(),
            Restoration::Refused(Refusal::NotGiven),
            "{user} was admitted or left"
        );
    }
    // Ticket 7 was given by a primary that failed over before its replica
    // heard of it: given back, and the next newcomer is numbered after it.
    let back = store
        .restore(&q("s"), &u("g"), &claim(epoch, 7, T0), now)
        .await
        .unwrap();
    assert_eq!(restored_ticket(back), 7);
    assert_eq!(position(store, "s", "g", now).await, Some(2));
    assert_eq!(
        store.enqueue(&q("s"), &u("h"), now).await.unwrap().ticket,
        8
    );
    // A receipt lapses when its holder would have been released: after the
    // release time, not at it.
    let edge = T0 + config.release_after_ms();
    let at_edge = store
        .restore(&q("s"), &u("j"), &claim(epoch, 10, T0), edge)
        .await
        .unwrap();
    assert_eq!(restored_ticket(at_edge), 10);
    let late = edge + 1;
    assert_eq!(
        store
            .restore(&q("s"), &u("i"), &claim(epoch, 9, T0), late)
            .await
            .unwrap(),
        Restoration::Refused(Refusal::Lapsed)
    );
    // A queue deleted and created again is another queue.
    store.delete_queue(&q("s")).await.unwrap();
    let mut again = QueueConfig::new(q("s"));
    again.created_at_ms = T0 + 500;
    store.create_queue(&again).await.unwrap();
    assert_eq!(
        store
            .restore(&q("s"), &u("b"), &claim(epoch, 20, T0 + 600), now)
            .await
            .unwrap(),
        Restoration::Refused(Refusal::NotGiven)
    );
}

/// Queue `s`, made at `T0` again after the store lost the queue made a
/// minute before: its line's head was 10, its last ticket 1,000. Returns
/// the config and the lost queue's epoch.
async fn re_made(store: &dyn QueueStore) -> (QueueConfig, u64) {
    let lost_epoch = T0 - 60_000;
    let mut config = QueueConfig::new(q("s"));
    config.created_at_ms = T0;
    config.presence_since_ms = T0;
    config.adoption = Some(Adoption {
        epoch_ms: lost_epoch,
        head: 10,
        top: 1_000,
    });
    store.create_queue(&config).await.unwrap();
    (config, lost_epoch)
}

/// A queue re-made after the store lost it gives newcomers tickets after
/// the lost line's, and gives back the lost line's places in their old
/// order as their holders return, in any order; nobody below the head
/// (admitted before the loss), nobody of another lineage, no ticket twice.
async fn a_re_made_queue_takes_back_the_lost_line_in_its_order(store: &dyn QueueStore) {
    let (config, lost_epoch) = re_made(store).await;
    assert_eq!(
        store.get_queue(&q("s")).await.unwrap().adoption,
        config.adoption
    );
    let now = T0 + 2_000;
    assert_eq!(
        store.enqueue(&q("s"), &u("new"), now).await.unwrap().ticket,
        1_001
    );
    let issued = T0 - 1_000;
    for (user, ticket) in [("e", 50), ("c", 30), ("d", 40)] {
        let claim = claim(lost_epoch, ticket, issued);
        let back = store.restore(&q("s"), &u(user), &claim, now).await.unwrap();
        assert_eq!(restored_ticket(back), ticket);
    }
    for (user, expected) in [("c", 1), ("d", 2), ("e", 3), ("new", 4)] {
        assert_eq!(
            position(store, "s", user, now).await,
            Some(expected),
            "{user}"
        );
    }
    let refused = [
        ("admitted-before", claim(lost_epoch, 9, issued)),
        ("other-lineage", claim(lost_epoch - 1, 60, issued)),
        ("same-ticket", claim(lost_epoch, 30, issued)),
    ];
    for (user, claim) in refused {
        assert_eq!(
            store.restore(&q("s"), &u(user), &claim, now).await.unwrap(),
            Restoration::Refused(Refusal::NotGiven),
            "{user}"
        );
    }
    // A receipt that saw the head further on raises it for everyone after.
    let seen_later = PlaceClaim {
        head: 45,
        ..claim(lost_epoch, 45, issued)
    };
    assert_eq!(
        restored_ticket(
            store
                .restore(&q("s"), &u("f"), &seen_later, now)
                .await
                .unwrap()
        ),
        45
    );
    assert_eq!(
        store
            .restore(&q("s"), &u("g"), &claim(lost_epoch, 44, issued), now)
            .await
            .unwrap(),
        Restoration::Refused(Refusal::NotGiven)
    );
    assert_eq!(
        store
            .get_queue(&q("s"))
            .await
            .unwrap()
            .adoption
            .map(|a| a.head),
        Some(45)
    );
}

/// A re-made queue gives a lost place back once: someone given their place
/// back and then admitted and done, or gone, does not get it again from
/// the same old receipt.
async fn a_lost_place_is_given_back_once(store: &dyn QueueStore) {
    let (_, lost_epoch) = re_made(store).await;
    let (now, issued) = (T0 + 2_000, T0 - 1_000);
    for (user, ticket) in [("a", 20), ("b", 30)] {
        let back = store
            .restore(&q("s"), &u(user), &claim(lost_epoch, ticket, issued), now)
            .await
            .unwrap();
        assert_eq!(restored_ticket(back), ticket);
    }
    let admitted = store.admit(&q("s"), 1, None, now).await.unwrap();
    assert_eq!(admitted.len(), 1);
    assert_eq!(admitted[0].user, u("a"));
    assert!(store.complete(&q("s"), &u("a"), now).await.unwrap());
    assert!(store.leave(&q("s"), &u("b"), now).await.unwrap());
    for (user, ticket) in [("a", 20), ("b", 30)] {
        assert_eq!(
            store
                .restore(
                    &q("s"),
                    &u(user),
                    &claim(lost_epoch, ticket, issued),
                    now + 1
                )
                .await
                .unwrap(),
            Restoration::Refused(Refusal::NotGiven),
            "{user} given their lost place a second time"
        );
    }
    assert_eq!(position(store, "s", "a", now + 1).await, None);
    assert_eq!(position(store, "s", "b", now + 1).await, None);
}

/// A deletion leaves a mark; a queue gone without it was lost.
async fn a_deleted_queue_is_told_from_a_lost_one(store: &dyn QueueStore) {
    assert!(
        store.queue_lost(&q("s")).await.unwrap(),
        "never made: nothing says it was deleted"
    );
    create(store, "s", 0).await;
    assert!(!store.queue_lost(&q("s")).await.unwrap());
    store.delete_queue(&q("s")).await.unwrap();
    assert!(!store.queue_lost(&q("s")).await.unwrap());
    create(store, "s", 0).await;
    assert!(!store.queue_lost(&q("s")).await.unwrap());
    // An operator's delete of a queue already gone marks it too.
    assert!(matches!(
        store.delete_queue(&q("t")).await,
        Err(Error::QueueNotFound(_))
    ));
    assert!(!store.queue_lost(&q("t")).await.unwrap());
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
    a_receipt_gives_back_only_a_join_the_store_lost,
    a_re_made_queue_takes_back_the_lost_line_in_its_order,
    a_lost_place_is_given_back_once,
    a_deleted_queue_is_told_from_a_lost_one,
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
        a_re_made_queue_takes_back_the_lost_line_in_its_order,
        a_lost_place_is_given_back_once,
    );
}
