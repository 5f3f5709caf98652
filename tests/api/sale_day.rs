//! The controls people running a sale reach for: named admissions, closing
//! with a reason, clearing the line, a notice to everyone waiting. Each on
//! both stores, and on Redis across two replicas (one acts, the other's
//! watchers and pollers are told).

use std::time::Duration;

use tokio_stream::StreamExt;
use tonic::Code;
use waitroom::pb::{self, AdmitUserResult, PlaceState, QueueMode};

use crate::helpers::*;

/// The replica that acts and the one whose clients must be told; on the
/// memory store both are the one instance.
struct Pair {
    one: TestApp,
    two: Option<TestApp>,
    _redis: Option<TestRedis>,
}

impl Pair {
    async fn on_memory() -> Self {
        Self {
            one: TestApp::on_memory().await,
            two: None,
            _redis: None,
        }
    }

    async fn on_two_replicas() -> Self {
        let (one, two, redis, _clock) = two_replicas().await;
        Self {
            one,
            two: Some(two),
            _redis: Some(redis),
        }
    }

    fn other(&self) -> &TestApp {
        self.two.as_ref().unwrap_or(&self.one)
    }
}

fn admit_users_request(queue: &str, users: &[&str], request: &str) -> pb::AdmitUsersRequest {
    pb::AdmitUsersRequest {
        queue_id: queue.into(),
        user_ids: users.iter().map(|u| u.to_string()).collect(),
        request_id: request.into(),
        override_capacity: false,
    }
}

/// The next message of a stream within a few seconds.
async fn next_place(stream: &mut tonic::Streaming<pb::WatchRankResponse>) -> pb::Place {
    tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("a message within 5 s")
        .expect("the stream still open")
        .expect("a place, not an error")
        .place
        .expect("a place")
}

/// Reads a stream until a message satisfies `check`.
async fn until_place(
    stream: &mut tonic::Streaming<pb::WatchRankResponse>,
    check: impl Fn(&pb::Place) -> bool,
) -> pb::Place {
    loop {
        let place = next_place(stream).await;
        if check(&place) {
            return place;
        }
    }
}

async fn named_people_are_admitted_out_of_turn_once(pair: Pair) {
    let queue = "named";
    pair.one.create_queue(queue_with(queue)).await;
    let mut one = pair.one.client().await;
    let mut two = pair.other().client().await;
    for user in ["a", "b", "c", "d"] {
        enqueue(&mut one, queue, user).await;
    }
    // Capped once the line has formed (a capped queue with room admits a
    // newcomer at once).
    update(
        &pair.one,
        pb::Queue {
            max_active: 2,
            ..queue_with(queue)
        },
        "max_active",
    )
    .await
    .unwrap();
    let mut watching_c = open(pair.other(), queue, "c").await;
    assert_eq!(next_place(&mut watching_c).await.position, 3);

    // The support desk lets "c" in, and someone who never queued.
    let first = one
        .admit_users(admit_users_request(queue, &["c", "walk-in"], "desk-1"))
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_eq!(first.len(), 2);
    assert!(
        first
            .iter()
            .all(|r| r.result() == AdmitUserResult::Admitted)
    );
    assert_eq!(first[0].ticket, 3, "a waiting user keeps their ticket");
    assert_eq!(first[1].ticket, 5, "a walk-in gets a ticket of their own");
    for result in &first {
        let token = &result.admission.as_ref().expect("an admission").token;
        assert_eq!(
            verify(&mut one, queue, token, false).await.verdict(),
            pb::Verdict::Valid
        );
    }
    // The watcher on the other replica is told at once.
    let told = until_place(&mut watching_c, |p| p.state() != PlaceState::Waiting).await;
    assert_eq!(told.state(), PlaceState::Admitted);
    // Those behind moved up; those ahead kept their places.
    assert_eq!(rank(&mut two, queue, "a").await.position, 1);
    assert_eq!(rank(&mut two, queue, "d").await.position, 3);

    // A retry with the same id, on the other replica, admits nobody else.
    let retried = two
        .admit_users(admit_users_request(queue, &["c", "walk-in"], "desk-1"))
        .await
        .unwrap()
        .into_inner()
        .results;
    // Each replica signs with its own key here: the same admissions, told
    // apart by everything but the signature.
    let without_tokens = |results: &[pb::UserAdmission]| {
        results
            .iter()
            .map(|r| {
                let admission = r.admission.as_ref().expect("an admission");
                (
                    r.user_id.clone(),
                    r.result(),
                    r.ticket,
                    admission.expires_at,
                )
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(without_tokens(&retried), without_tokens(&first));
    // The same id naming someone else is refused: a retry names the same
    // users, and nobody is given another's admission.
    let reused = two
        .admit_users(admit_users_request(queue, &["d"], "desk-1"))
        .await
        .unwrap_err();
    assert_eq!(
        (reused.code(), bad_field(&reused).as_str()),
        (Code::InvalidArgument, "request_id")
    );

    // The two slots are taken: the next named user waits for one, unless
    // the operator overrides the capacity.
    let full = two
        .admit_users(admit_users_request(queue, &["a", "c"], "desk-2"))
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_eq!(full[0].result(), AdmitUserResult::NoCapacity);
    assert!(full[0].admission.is_none());
    assert_eq!(full[1].result(), AdmitUserResult::AlreadyAdmitted);
    assert_eq!(full[1].ticket, first[0].ticket);
    let over = two
        .admit_users(pb::AdmitUsersRequest {
            override_capacity: true,
            ..admit_users_request(queue, &["a"], "desk-3")
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_eq!(over[0].result(), AdmitUserResult::Admitted);
    let stats = pair.one.stats(queue).await;
    assert_eq!((stats.waiting_count, stats.active_count), (2, 3));
    assert_eq!((stats.admitted_total, stats.enqueued_total), (3, 5));
    // The sale's figures come from the store: every replica tells the same.
    assert_eq!(pair.other().stats(queue).await, stats);
    assert!(stats.arrival_rate > 0.0);

    // Bad input names the field.
    for (request, field) in [
        (admit_users_request(queue, &[], ""), "user_ids"),
        (admit_users_request(queue, &["ok", ""], ""), "user_ids[1]"),
        (admit_users_request(queue, &["ok"], "bad id"), "request_id"),
        (admit_users_request("bad queue", &["ok"], ""), "queue_id"),
    ] {
        let status = one.admit_users(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(bad_field(&status), field);
    }
    let too_many: Vec<String> = (0..1001).map(|n| format!("u{n}")).collect();
    let too_many: Vec<&str> = too_many.iter().map(String::as_str).collect();
    let status = one
        .admit_users(admit_users_request(queue, &too_many, ""))
        .await
        .unwrap_err();
    assert_eq!(bad_field(&status), "user_ids");
    pair.one.set_mode(queue, QueueMode::Closed).await;
    let status = one
        .admit_users(admit_users_request(queue, &["d"], ""))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
}

#[tokio::test]
async fn named_people_are_admitted_out_of_turn_once_on_memory() {
    named_people_are_admitted_out_of_turn_once(Pair::on_memory().await).await;
}

#[tokio::test]
async fn named_people_are_admitted_out_of_turn_once_across_replicas() {
    named_people_are_admitted_out_of_turn_once(Pair::on_two_replicas().await).await;
}

async fn a_sale_ends_with_its_reason_shown_to_everyone(pair: Pair) {
    let queue = "ending";
    pair.one.create_queue(queue_with(queue)).await;
    let mut one = pair.one.client().await;
    let mut two = pair.other().client().await;
    for user in ["a", "b"] {
        enqueue(&mut one, queue, user).await;
    }
    let mut watching = open(pair.other(), queue, "a").await;
    next_place(&mut watching).await;

    let closed = one
        .close_queue(pb::CloseQueueRequest {
            queue_id: queue.into(),
            reason: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .queue
        .unwrap();
    assert_eq!(
        (closed.mode(), closed.closed_reason.as_str()),
        (QueueMode::Closed, "SOLD_OUT")
    );
    let told = until_place(&mut watching, |p| p.state() == PlaceState::Closed).await;
    assert_eq!(told.closed_reason, "SOLD_OUT");
    let polled = rank(&mut two, queue, "b").await;
    assert_eq!(
        (polled.state(), polled.closed_reason.as_str()),
        (PlaceState::Closed, "SOLD_OUT")
    );
    let status = two
        .enqueue(enqueue_request(queue, "late"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    // A page turned away at the door can say why, as those in line are told.
    let info = {
        use tonic_types::StatusExt;
        status.get_details_error_info().unwrap()
    };
    assert_eq!(
        (
            info.reason.as_str(),
            info.metadata.get("closed_reason").map(String::as_str)
        ),
        ("QUEUE_CLOSED", Some("SOLD_OUT"))
    );
    assert!(
        status.message().contains("SOLD_OUT"),
        "{}",
        status.message()
    );

    // An operator's own reason replaces it; a malformed one is refused.
    one.close_queue(pb::CloseQueueRequest {
        queue_id: queue.into(),
        reason: "VENUE_CHANGE".into(),
    })
    .await
    .unwrap();
    assert_eq!(
        rank(&mut two, queue, "b").await.closed_reason,
        "VENUE_CHANGE"
    );
    let status = one
        .close_queue(pb::CloseQueueRequest {
            queue_id: queue.into(),
            reason: "sold out!".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad_field(&status), "reason");

    // Reopening keeps the places and drops the reason.
    pair.one.set_mode(queue, QueueMode::Queueing).await;
    let place = rank(&mut two, queue, "b").await;
    assert_eq!(
        (place.state(), place.position, place.closed_reason.as_str()),
        (PlaceState::Waiting, 2, "")
    );
    assert_eq!(pair.other().get_queue(queue).await.closed_reason, "");
}

#[tokio::test]
async fn a_sale_ends_with_its_reason_shown_to_everyone_on_memory() {
    a_sale_ends_with_its_reason_shown_to_everyone(Pair::on_memory().await).await;
}

#[tokio::test]
async fn a_sale_ends_with_its_reason_shown_to_everyone_across_replicas() {
    a_sale_ends_with_its_reason_shown_to_everyone(Pair::on_two_replicas().await).await;
}

async fn clearing_empties_the_line_and_tells_each_person(pair: Pair) {
    let queue = "clearing";
    pair.one
        .create_queue(pb::Queue {
            max_active: 1,
            ..queue_with(queue)
        })
        .await;
    let mut one = pair.one.client().await;
    let mut two = pair.other().client().await;
    // More than one step of clearing, and one person already admitted
    // (the first, to the free slot).
    let users: Vec<String> = (0..1_203).map(|n| format!("u{n}")).collect();
    let mut admission = None;
    for user in &users {
        let place = enqueue(&mut one, queue, user).await;
        admission = admission.or(place.admission);
    }
    let mut watching = open(pair.other(), queue, "u7").await;
    next_place(&mut watching).await;

    let cleared = pair
        .one
        .admin()
        .await
        .clear_queue(pb::ClearQueueRequest {
            queue_id: queue.into(),
            reason: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .cleared_count;
    assert_eq!(cleared, 1_202);
    let told = until_place(&mut watching, |p| p.state() != PlaceState::Waiting).await;
    assert_eq!(
        (told.state(), told.closed_reason.as_str()),
        (PlaceState::Closed, "CANCELLED")
    );
    // Someone cleared who polls only now is told the same.
    let polled = rank(&mut two, queue, "u9").await;
    assert_eq!(
        (polled.state(), polled.closed_reason.as_str(), polled.ticket),
        (PlaceState::Closed, "CANCELLED", 0)
    );
    // The admission given before stands.
    let token = &admission.expect("the first admitted").token;
    assert_eq!(
        verify(&mut one, queue, token, false).await.verdict(),
        pb::Verdict::Valid
    );
    let stats = pair.other().stats(queue).await;
    assert_eq!(
        (stats.waiting_count, stats.cleared_total, stats.active_count),
        (0, 1_202, 1)
    );
    let config = pair.other().get_queue(queue).await;
    assert_eq!(
        (config.mode(), config.closed_reason.as_str()),
        (QueueMode::Closed, "CANCELLED")
    );
    // Reopened, the line starts afresh: someone cleared is no longer told
    // anything, and joins at the end.
    pair.one.set_mode(queue, QueueMode::Queueing).await;
    let status = two.get_rank(rank_request(queue, "u9")).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(enqueue(&mut two, queue, "u5").await.position, 1);
}

#[tokio::test]
async fn clearing_empties_the_line_and_tells_each_person_on_memory() {
    clearing_empties_the_line_and_tells_each_person(Pair::on_memory().await).await;
}

#[tokio::test]
async fn clearing_empties_the_line_and_tells_each_person_across_replicas() {
    clearing_empties_the_line_and_tells_each_person(Pair::on_two_replicas().await).await;
}

async fn set_notice(app: &TestApp, queue: &str, notice: &str) -> Result<pb::Queue, tonic::Status> {
    let queue = pb::Queue {
        notice: notice.into(),
        ..queue_with(queue)
    };
    update(app, queue, "notice").await
}

async fn a_notice_reaches_everyone_waiting(pair: Pair) {
    let queue = "noticed";
    pair.one.create_queue(queue_with(queue)).await;
    let mut one = pair.one.client().await;
    let mut two = pair.other().client().await;
    for user in ["a", "b"] {
        enqueue(&mut one, queue, user).await;
    }
    let mut watching = open(pair.other(), queue, "b").await;
    assert_eq!(next_place(&mut watching).await.notice, "");

    let notice = "Sales resume at 10:30 — limit 4 tickets per person";
    assert_eq!(
        set_notice(&pair.one, queue, notice).await.unwrap().notice,
        notice
    );
    // Pushed to the open stream, with nothing else changed.
    let told = next_place(&mut watching).await;
    assert_eq!((told.notice.as_str(), told.position), (notice, 2));
    assert_eq!(rank(&mut two, queue, "a").await.notice, notice);
    assert_eq!(enqueue(&mut two, queue, "c").await.notice, notice);

    // At most 280 characters (not bytes), plain text on one line: nothing
    // that would reverse, hide or break the page's text.
    let longest = "é".repeat(280);
    set_notice(&pair.one, queue, &longest).await.unwrap();
    let bad = [
        ("é".repeat(281), "at most 280 characters"),
        ("two\nlines".to_owned(), "character 4 is U+000A"),
        ("Sold \u{202E}tuo".to_owned(), "character 6 is U+202E"),
        ("free\u{200B}seats".to_owned(), "character 5 is U+200B"),
        ("two\u{2028}lines".to_owned(), "character 4 is U+2028"),
    ];
    for (bad, why) in bad {
        let status = set_notice(&pair.one, queue, &bad).await.unwrap_err();
        assert_eq!(
            (status.code(), bad_field(&status).as_str()),
            (Code::InvalidArgument, "queue.notice")
        );
        assert!(status.message().contains(why), "{}", status.message());
    }
    // Named with an empty value: cleared, and the stream told.
    assert_eq!(set_notice(&pair.one, queue, "").await.unwrap().notice, "");
    until_place(&mut watching, |p| p.notice.is_empty()).await;
}

#[tokio::test]
async fn a_notice_reaches_everyone_waiting_on_memory() {
    a_notice_reaches_everyone_waiting(Pair::on_memory().await).await;
}

#[tokio::test]
async fn a_notice_reaches_everyone_waiting_across_replicas() {
    a_notice_reaches_everyone_waiting(Pair::on_two_replicas().await).await;
}

/// The helpers' `queue`, for where a local is named `queue`.
fn queue_with(id: &str) -> pb::Queue {
    queue(id)
}
