//! A queue over several sub-lines (`Queue.shards`), on the memory store,
//! the specification the Redis store will be held to: one order fixed at
//! join, positions over all sub-lines, admission in that order and never
//! ahead of a ticket that may still be given.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestRunner};
use waitroom::Error;
use waitroom::domain::shards::{SKEW_MS, TAU_MS, sub_line_of};
use waitroom::domain::{PlaceState, QueueConfig, QueueId, RequestId, UserId};
use waitroom::store::{MemoryStore, QueueStore};

use crate::helpers::{TestRedis, fresh_prefix};

const T0: u64 = 1_800_000_000_000;

fn q() -> QueueId {
    QueueId::parse("sale").unwrap()
}

fn u(n: usize) -> UserId {
    UserId::parse(&format!("visitor-{n}")).unwrap()
}

async fn sharded(store: &dyn QueueStore, shards: u32, max_active: u32) {
    sharded_at_rate(store, shards, max_active, 0).await;
}

async fn sharded_at_rate(store: &dyn QueueStore, shards: u32, max_active: u32, rate: u32) {
    let config = sharded_config(shards, max_active, rate);
    store.create_queue(&config).await.unwrap();
}

/// A queue of `shards` sub-lines whose admissions and silent users last an
/// hour.
fn sharded_config(shards: u32, max_active: u32, rate: u32) -> QueueConfig {
    let mut config = QueueConfig::new(q()).created(T0);
    config.shards = shards;
    config.max_active = max_active;
    config.admit_per_second = rate;
    config.admission_ttl = Duration::from_secs(3600);
    config.heartbeat_timeout = Duration::from_secs(3600);
    config
}

/// The first `n` users of sub-line 0 of `shards`.
fn of_one_sub_line(shards: u32, n: usize) -> Vec<usize> {
    (0..)
        .filter(|&user| sub_line_of(u(user).as_str(), shards) == 0)
        .take(n)
        .collect()
}

fn position(state: &PlaceState) -> Option<u64> {
    match state {
        PlaceState::Waiting { position } => Some(*position),
        _ => None,
    }
}

#[tokio::test]
async fn joins_spread_over_the_sub_lines_keep_one_order_and_exact_positions() {
    let store = MemoryStore::new();
    sharded(&store, 4, 0).await;
    assert_eq!(store.get_queue(&q()).await.unwrap().shards, 4);
    // Bursts of 50 in the same millisecond, a burst every τ: within a
    // burst the sub-lines' blocks interleave, across bursts never.
    let mut tickets = Vec::new();
    let mut on_line = [0u32; 4];
    for burst in 0..20u64 {
        let now = T0 + burst * TAU_MS;
        let users: Vec<UserId> = (0..50).map(|i| u(burst as usize * 50 + i)).collect();
        let places = store.enqueue_many(&q(), &users, now).await.unwrap();
        let burst_tickets: Vec<u64> = places.iter().map(|p| p.as_ref().unwrap().ticket).collect();
        if let Some(last) = tickets.iter().max() {
            assert!(
                burst_tickets.iter().all(|t| t > last),
                "burst {burst} below an earlier one"
            );
        }
        tickets.extend(burst_tickets);
        for user in &users {
            on_line[sub_line_of(user.as_str(), 4) as usize] += 1;
        }
    }
    assert!(on_line.iter().all(|&n| n > 150), "{on_line:?}");
    let mut sorted = tickets.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), tickets.len(), "a ticket given twice");
    // Sub-lines take tickets from blocks: within a burst the numbers are
    // not in arrival order, and some are never used.
    assert_ne!(sorted, tickets);
    // Each position counts the waiting tickets below, over all sub-lines.
    let now = T0 + 1_000;
    for (i, ticket) in tickets.iter().enumerate() {
        let place = store.place(&q(), &u(i), now).await.unwrap().unwrap();
        assert_eq!(place.ticket, *ticket);
        let below = sorted.partition_point(|t| t < ticket) as u64;
        assert_eq!(position(&place.state), Some(below + 1));
        // A repeat enqueue finds the user on their sub-line.
        assert_eq!(
            store.enqueue(&q(), &u(i), now).await.unwrap().ticket,
            *ticket
        );
    }
}

#[tokio::test]
async fn admission_waits_for_the_blocks_that_may_still_give_lower_tickets() {
    let store = MemoryStore::new();
    sharded(&store, 3, 0).await;
    let users: Vec<UserId> = (0..30).map(u).collect();
    let places = store.enqueue_many(&q(), &users, T0).await.unwrap();
    let mut tickets: Vec<u64> = places.iter().map(|p| p.as_ref().unwrap().ticket).collect();
    tickets.sort_unstable();
    // Their blocks are open, or held back for the replicas' clock skew:
    // a ticket below theirs may still be given.
    let early = RequestId::parse("early").unwrap();
    let held = store
        .admit(&q(), 30, Some(&early), T0 + TAU_MS + SKEW_MS - 1)
        .await
        .unwrap();
    assert!(held.is_empty(), "{held:?}");
    let due = RequestId::parse("due").unwrap();
    let admitted = store
        .admit(&q(), 10, Some(&due), T0 + TAU_MS + SKEW_MS)
        .await
        .unwrap();
    let admitted: Vec<u64> = admitted.iter().map(|a| a.admission.ticket).collect();
    assert_eq!(admitted, tickets[..10]);
    // Nobody who joins afterwards stands ahead of those admitted.
    let late = store
        .enqueue(&q(), &u(99), T0 + TAU_MS + SKEW_MS)
        .await
        .unwrap();
    assert!(late.ticket > tickets[29]);
    assert_eq!(position(&late.state), Some(21));
}

#[tokio::test]
async fn a_newcomer_to_an_empty_sharded_line_is_admitted_by_the_admitter() {
    let store = MemoryStore::new();
    sharded_at_rate(&store, 2, 10, 100).await;
    // One sub-line cannot see the others' line nor the head's count, so a
    // newcomer is not admitted on joining as with one slot.
    let place = store.enqueue(&q(), &u(1), T0).await.unwrap();
    assert_eq!(position(&place.state), Some(1));
    assert!(store.admit_due(&q(), 10, T0 + 1).await.unwrap().is_empty());
    let admitted = store
        .admit_due(&q(), 10, T0 + TAU_MS + SKEW_MS)
        .await
        .unwrap();
    assert_eq!(admitted.len(), 1);
    assert_eq!(admitted[0].user, u(1));
    // Within max_active as with one slot.
    let users: Vec<UserId> = (2..30).map(u).collect();
    store.enqueue_many(&q(), &users, T0 + 100).await.unwrap();
    let admitted = store.admit_due(&q(), 100, T0 + 200).await.unwrap();
    assert_eq!(admitted.len(), 9);
}

#[tokio::test]
async fn a_sub_line_count_outside_1_to_16_is_refused_and_redis_serves_one_slot_only() {
    let mut config = QueueConfig::new(q()).created(T0);
    for (shards, ok) in [(0, false), (1, true), (16, true), (17, false)] {
        config.shards = shards;
        assert_eq!(config.check().is_ok(), ok, "{shards}");
    }
    let redis = TestRedis::start();
    let store = redis.store().await;
    config.shards = 2;
    match store.create_queue(&config).await {
        Err(Error::InvalidArgument { field, .. }) => assert_eq!(field, "queue.shards"),
        other => panic!("{other:?}"),
    }
    assert!(store.queue_lost(&q()).await.unwrap());
}

/// One step of the property test.
#[derive(Clone, Debug)]
enum Op {
    Wait(u64),
    Enqueue(usize),
    EnqueueMany(Vec<usize>),
    Leave(usize),
    Admit(u32),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => prop_oneof![0u64..3, Just(TAU_MS - 1), Just(TAU_MS), Just(SKEW_MS), 0u64..60]
            .prop_map(Op::Wait),
        4 => (0usize..60).prop_map(Op::Enqueue),
        2 => proptest::collection::vec(0usize..60, 1..12).prop_map(Op::EnqueueMany),
        1 => (0usize..60).prop_map(Op::Leave),
        2 => (0u32..8).prop_map(Op::Admit),
    ]
}

/// What the clients were told: who waits with which ticket, when each
/// ticket was given, and the highest ticket admitted so far.
#[derive(Default)]
struct Told {
    waiting: BTreeMap<u64, usize>,
    ticket_of: HashMap<usize, u64>,
    given_at: Vec<(u64, u64)>,
    admitted: HashMap<usize, u64>,
    highest_admitted: u64,
}

impl Told {
    fn joined(&mut self, user: usize, ticket: u64, now: u64) -> Result<(), TestCaseError> {
        match self.ticket_of.get(&user) {
            Some(&held) => prop_assert_eq!(held, ticket, "a repeat enqueue moved user {}", user),
            None => {
                prop_assert!(!self.admitted.contains_key(&user));
                prop_assert!(
                    ticket > self.highest_admitted,
                    "ticket {} given after {} was admitted",
                    ticket,
                    self.highest_admitted
                );
                prop_assert!(
                    self.given_at.iter().all(|(t, _)| *t != ticket),
                    "ticket {} twice",
                    ticket
                );
                self.given_at.push((ticket, now));
                self.waiting.insert(ticket, user);
                self.ticket_of.insert(user, ticket);
            }
        }
        Ok(())
    }

    fn position(&self, ticket: u64) -> u64 {
        self.waiting.range(..ticket).count() as u64 + 1
    }
}

async fn run(shards: u32, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let store = MemoryStore::new();
    sharded(&store, shards, 0).await;
    let mut told = Told::default();
    let mut now = T0;
    let mut requests = 0;
    for op in ops {
        match op {
            Op::Wait(ms) => now += ms,
            Op::Enqueue(user) => {
                let place = store.enqueue(&q(), &u(user), now).await.unwrap();
                if let Some(&ticket) = told.admitted.get(&user) {
                    prop_assert_eq!(place.ticket, ticket);
                    continue;
                }
                told.joined(user, place.ticket, now)?;
                prop_assert_eq!(position(&place.state), Some(told.position(place.ticket)));
            }
            Op::EnqueueMany(users) => {
                let ids: Vec<UserId> = users.iter().map(|&n| u(n)).collect();
                let places = store.enqueue_many(&q(), &ids, now).await.unwrap();
                let places: Vec<_> = places.into_iter().map(Result::unwrap).collect();
                for (&user, place) in users.iter().zip(&places) {
                    if !told.admitted.contains_key(&user) {
                        told.joined(user, place.ticket, now)?;
                    }
                }
                // The call's own answers, as the line stands after it.
                for place in &places {
                    if let Some(at) = position(&place.state) {
                        prop_assert_eq!(at, told.position(place.ticket));
                    }
                }
                // Every position in the batch as it stands after it.
                let places = store.places(&q(), &ids, false, now).await.unwrap();
                for place in places.into_iter().flatten() {
                    if let Some(at) = position(&place.state) {
                        prop_assert_eq!(at, told.position(place.ticket));
                    }
                }
            }
            Op::Leave(user) => {
                let left = store.leave(&q(), &u(user), now).await.unwrap();
                let held =
                    told.ticket_of.remove(&user).is_some() || told.admitted.remove(&user).is_some();
                prop_assert_eq!(left, held);
                told.waiting.retain(|_, waiting| *waiting != user);
            }
            Op::Admit(n) => {
                requests += 1;
                let request = RequestId::parse(&format!("r{requests}")).unwrap();
                let admitted = store.admit(&q(), n, Some(&request), now).await.unwrap();
                prop_assert!(admitted.len() <= n as usize);
                // The lowest waiting tickets, in order.
                let lowest: Vec<u64> = told.waiting.keys().take(admitted.len()).copied().collect();
                let tickets: Vec<u64> = admitted.iter().map(|a| a.admission.ticket).collect();
                prop_assert_eq!(&tickets, &lowest);
                for a in &admitted {
                    let user = told
                        .waiting
                        .remove(&a.admission.ticket)
                        .unwrap_or(usize::MAX);
                    prop_assert_eq!(u(user), a.user.clone());
                    told.ticket_of.remove(&user);
                    told.admitted.insert(user, a.admission.ticket);
                    told.highest_admitted = told.highest_admitted.max(a.admission.ticket);
                    // A ticket given within the skew allowed may still have
                    // a lower one coming: never admitted.
                    let given = told.given_at.iter().find(|(t, _)| *t == a.admission.ticket);
                    prop_assert!(given.is_some_and(|(_, at)| now >= at + SKEW_MS || shards == 1));
                }
                // Everyone whose ticket is older than τ and the skew is
                // admissible: an admission stops short of n only when the
                // rest is newer (and with one slot, never).
                if admitted.len() < n as usize {
                    for &ticket in told.waiting.keys() {
                        let at = told
                            .given_at
                            .iter()
                            .find(|(t, _)| *t == ticket)
                            .map(|(_, at)| *at);
                        prop_assert!(
                            shards > 1 && at.is_some_and(|at| now < at + TAU_MS + SKEW_MS),
                            "ticket {} (given at {:?}, now {}) left waiting",
                            ticket,
                            at,
                            now
                        );
                    }
                }
            }
        }
    }
    // Two tickets given at least τ apart are in the order of their joins.
    for (i, &(ticket, at)) in told.given_at.iter().enumerate() {
        for &(later_ticket, later_at) in &told.given_at[i + 1..] {
            if later_at >= at + TAU_MS {
                prop_assert!(
                    later_ticket > ticket,
                    "given {ticket} at {at}, {later_ticket} at {later_at}"
                );
            }
        }
    }
    Ok(())
}

#[test]
fn over_one_to_three_sub_lines_one_order_exact_positions_and_admission_in_it() {
    check(
        512,
        &(1u32..=3, proptest::collection::vec(op(), 1..150)),
        |(shards, ops)| run(shards, ops),
    );
}

/// Runs `cases` random cases of `strategy` through `case`, each on one
/// runtime; a failing case is shrunk and printed.
fn check<S, F, Fut>(cases: u32, strategy: &S, case: F)
where
    S: Strategy,
    F: Fn(S::Value) -> Fut,
    Fut: std::future::Future<Output = Result<(), TestCaseError>>,
{
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut runner = TestRunner::new(ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    runner
        .run(strategy, |value| runtime.block_on(case(value)))
        .unwrap();
}

#[tokio::test]
async fn over_grpc_a_sharded_queue_is_made_kept_and_served_in_one_order() {
    use tonic::Code;
    use waitroom::pb;

    use crate::helpers::{TestApp, admit, bad_field, enqueue, queue, rank};

    let app = TestApp::on_memory().await;
    let created = app
        .create_queue(pb::Queue {
            shards: 3,
            ..queue("big")
        })
        .await;
    assert_eq!(created.shards, 3);
    assert_eq!(app.create_queue(queue("plain")).await.shards, 1);
    let mut admin = app.admin().await;
    for shards in [17, u32::MAX] {
        let status = admin
            .create_queue(pb::CreateQueueRequest {
                queue: Some(pb::Queue {
                    shards,
                    ..queue("too-many")
                }),
            })
            .await
            .unwrap_err();
        assert_eq!(
            (status.code(), bad_field(&status).as_str()),
            (Code::InvalidArgument, "queue.shards")
        );
    }
    // Fixed for the queue's life: named in a mask it is refused; a queue
    // read and sent back whole (an empty mask) keeps it.
    let status = crate::helpers::update(
        &app,
        pb::Queue {
            shards: 1,
            ..queue("big")
        },
        "shards",
    )
    .await
    .unwrap_err();
    assert_eq!(bad_field(&status), "update_mask");
    let changed = admin
        .update_queue(pb::UpdateQueueRequest {
            queue: Some(pb::Queue {
                max_active: 50,
                ..created.clone()
            }),
            update_mask: None,
        })
        .await
        .unwrap()
        .into_inner()
        .queue
        .unwrap();
    assert_eq!((changed.shards, changed.max_active), (3, 50));

    let mut client = app.client().await;
    let mut tickets = Vec::new();
    for n in 0..30 {
        tickets.push(enqueue(&mut client, "big", &format!("v{n}")).await.ticket);
    }
    let mut sorted = tickets.clone();
    sorted.sort_unstable();
    for (n, ticket) in tickets.iter().enumerate() {
        let place = rank(&mut client, "big", &format!("v{n}")).await;
        let below = sorted.partition_point(|t| t < ticket) as u64;
        assert_eq!(place.position, below + 1, "v{n}");
    }
    // A watcher's positions come from the replica's copy of the line.
    let last = tickets
        .iter()
        .position(|t| t == sorted.last().unwrap())
        .unwrap();
    let mut stream = crate::helpers::open(&app, "big", &format!("v{last}")).await;
    let first = stream.message().await.unwrap().unwrap().place.unwrap();
    assert_eq!(first.position, 30);
    app.clock.advance_ms(TAU_MS + SKEW_MS);
    let admitted: Vec<u64> = admit(&mut client, "big", 10)
        .await
        .iter()
        .map(|a| a.ticket)
        .collect();
    assert_eq!(admitted, sorted[..10]);
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let place = stream.message().await.unwrap().unwrap().place.unwrap();
            if place.position != 30 {
                assert_eq!(place.position, 20);
                break;
            }
        }
    })
    .await
    .expect("the stream showed the admissions");
    app.stop().await;

    // A store that keeps a queue in one slot says so.
    let (app, _redis) = TestApp::on_redis().await;
    let status = app
        .admin()
        .await
        .create_queue(pb::CreateQueueRequest {
            queue: Some(pb::Queue {
                shards: 2,
                ..queue("big")
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(
        (status.code(), bad_field(&status).as_str()),
        (Code::InvalidArgument, "queue.shards")
    );
    app.stop().await;
}

/// A step of the wider property test: every way a ticket is given or taken.
#[derive(Clone, Debug)]
enum Step {
    Wait(u64),
    Enqueue(Vec<usize>),
    Leave(usize),
    Admit(u32),
    AdmitDue,
    AdmitUsers(Vec<usize>),
    Draw,
    Complete(usize),
    Mode(waitroom::domain::QueueMode),
    /// Two seconds pass and the reaper makes its pass: those silent past
    /// the heartbeat (5 s and a quarter) are released.
    Reap,
    /// Takes people out of line, as `ClearQueue` does.
    Clear(u32),
}

fn wider_step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => prop_oneof![0u64..3, Just(TAU_MS), Just(SKEW_MS), 0u64..80].prop_map(Step::Wait),
        4 => proptest::collection::vec(0usize..40, 1..6).prop_map(Step::Enqueue),
        1 => (0usize..40).prop_map(Step::Leave),
        2 => (0u32..6).prop_map(Step::Admit),
        2 => Just(Step::AdmitDue),
        1 => proptest::collection::vec(0usize..40, 1..3).prop_map(Step::AdmitUsers),
        2 => Just(Step::Draw),
        1 => (0usize..40).prop_map(Step::Complete),
        1 => prop_oneof![
            4 => Just(waitroom::domain::QueueMode::Queueing),
            1 => Just(waitroom::domain::QueueMode::PassThrough),
            1 => Just(waitroom::domain::QueueMode::Paused),
            1 => Just(waitroom::domain::QueueMode::Closed),
        ]
        .prop_map(Step::Mode),
        2 => Just(Step::Reap),
        1 => (1u32..4).prop_map(Step::Clear),
    ]
}

/// What every user's place says now: (tickets in line by user, admitted
/// tickets by user, pre-queued users).
async fn everyone(
    store: &MemoryStore,
    now: u64,
) -> (BTreeMap<usize, u64>, BTreeMap<usize, u64>, Vec<usize>) {
    let ids: Vec<UserId> = (0..40).map(u).collect();
    let places = store.places(&q(), &ids, false, now).await.unwrap();
    let (mut waiting, mut admitted, mut prequeued) = (BTreeMap::new(), BTreeMap::new(), Vec::new());
    for (user, place) in places.into_iter().enumerate() {
        match place.map(|p| (p.state, p.ticket)) {
            // In line: waiting, or holding the place in a closed queue.
            Some((PlaceState::Waiting { .. }, ticket))
            | Some((PlaceState::Closed, ticket @ 1..)) => {
                waiting.insert(user, ticket);
            }
            Some((PlaceState::Admitted(_), ticket)) => {
                admitted.insert(user, ticket);
            }
            Some((PlaceState::PreQueue { .. }, _)) => prequeued.push(user),
            _ => {}
        }
    }
    (waiting, admitted, prequeued)
}

async fn run_wider(
    shards: u32,
    max_active: u32,
    rate: u32,
    opening: bool,
    steps: Vec<Step>,
) -> Result<(), TestCaseError> {
    use waitroom::domain::{NamedAdmission, QueueUpdate};

    let store = MemoryStore::new();
    let mut config = sharded_config(shards, max_active, rate);
    config.heartbeat_timeout = Duration::from_secs(5);
    let opens_at = T0 + 100;
    if opening {
        config.opens_at_ms = Some(opens_at);
    }
    store.create_queue(&config).await.unwrap();
    let mut now = T0;
    let mut requests = 0;
    // Tickets seen so far, the highest an admission in order took, who was
    // drawn (pre-queued first) and who first got a ticket after the opening.
    let mut seen: HashMap<u64, usize> = HashMap::new();
    let mut highest_in_order = 0u64;
    let mut drawn: HashMap<usize, Option<u64>> = HashMap::new();
    let mut late: HashMap<usize, u64> = HashMap::new();
    for step in steps {
        let (before, held, _) = everyone(&store, now).await;
        let mut in_order: Vec<(UserId, u64)> = Vec::new();
        match step {
            Step::Wait(ms) => now += ms,
            Step::Enqueue(users) => {
                let ids: Vec<UserId> = users.iter().map(|&n| u(n)).collect();
                store.enqueue_many(&q(), &ids, now).await.unwrap();
            }
            Step::Leave(user) => {
                store.leave(&q(), &u(user), now).await.unwrap();
            }
            Step::Admit(n) => {
                requests += 1;
                let request = RequestId::parse(&format!("r{requests}")).unwrap();
                if let Ok(admitted) = store.admit(&q(), n, Some(&request), now).await {
                    in_order = admitted
                        .into_iter()
                        .map(|a| (a.user, a.admission.ticket))
                        .collect();
                }
            }
            Step::AdmitDue => {
                let admitted = store.admit_due(&q(), 100, now).await.unwrap();
                in_order = admitted
                    .into_iter()
                    .map(|a| (a.user, a.admission.ticket))
                    .collect();
            }
            Step::AdmitUsers(users) => {
                requests += 1;
                let request = RequestId::parse(&format!("r{requests}")).unwrap();
                let ids: Vec<UserId> = users.iter().map(|&n| u(n)).collect();
                if let Ok(answers) = store.admit_users(&q(), &ids, &request, false, now).await {
                    for (user, answer) in users.iter().zip(answers) {
                        if let NamedAdmission::Admitted(_) = answer {
                            prop_assert!(!held.contains_key(user), "user {} admitted twice", user);
                        }
                    }
                }
            }
            Step::Draw => {
                store.draw_step(&q(), "seed", 5, now).await.unwrap();
            }
            Step::Complete(user) => {
                store.complete(&q(), &u(user), now).await.unwrap();
            }
            Step::Mode(mode) => {
                let update = QueueUpdate {
                    mode: Some(mode),
                    ..QueueUpdate::default()
                };
                store.update_queue(&q(), &update, now).await.unwrap();
            }
            Step::Reap => {
                now += 2_000;
                store.reap(&q(), 100, now).await.unwrap();
            }
            Step::Clear(limit) => {
                store.clear_step(&q(), limit, now).await.unwrap();
            }
        }
        // An admission in order takes the lowest waiting tickets, none
        // held already.
        if !in_order.is_empty() {
            let mut lowest: Vec<u64> = before.values().copied().collect();
            lowest.sort_unstable();
            let tickets: Vec<u64> = in_order.iter().map(|(_, t)| *t).collect();
            prop_assert_eq!(&tickets[..], &lowest[..tickets.len().min(lowest.len())]);
            for (user, ticket) in &in_order {
                prop_assert!(
                    seen.get(ticket)
                        .is_some_and(|holder| before.contains_key(holder)),
                    "{} was not waiting",
                    user
                );
                highest_in_order = highest_in_order.max(*ticket);
            }
        }
        let (waiting, admitted, prequeued) = everyone(&store, now).await;
        // Pre-queued and still there, or placed: one who left before
        // being placed is drawn no more.
        drawn.retain(|user, ticket| {
            ticket.is_some()
                || prequeued.contains(user)
                || waiting.contains_key(user)
                || admitted.contains_key(user)
        });
        for user in prequeued {
            drawn.entry(user).or_insert(None);
        }
        let mut tickets: Vec<u64> = waiting.values().chain(admitted.values()).copied().collect();
        tickets.sort_unstable();
        let count = tickets.len();
        tickets.dedup();
        prop_assert_eq!(tickets.len(), count, "a ticket held twice");
        let given = waiting
            .iter()
            .map(|(u, t)| (*u, *t, true))
            .chain(admitted.iter().map(|(u, t)| (*u, *t, false)));
        for (user, ticket, in_line) in given {
            if seen.get(&ticket).is_none_or(|&holder| holder != user) {
                // A ticket given in this step: never below one already
                // admitted in order, unless drawn into the opening's block.
                let was_drawn = drawn.contains_key(&user);
                prop_assert!(
                    ticket > highest_in_order || was_drawn,
                    "user {} given {} after {} was admitted in order",
                    user,
                    ticket,
                    highest_in_order
                );
                seen.insert(ticket, user);
                match drawn.get_mut(&user) {
                    // Drawn into the opening's block; admitted by name
                    // instead, their ticket is past every other's.
                    Some(slot @ None) if in_line => *slot = Some(ticket),
                    Some(None) => {
                        drawn.remove(&user);
                    }
                    Some(Some(_)) => {}
                    None if opening && now >= opens_at && !late.contains_key(&user) => {
                        late.insert(user, ticket);
                    }
                    None => {}
                }
            }
        }
        // Positions count the waiting tickets below, over all sub-lines.
        let ids: Vec<UserId> = waiting.keys().map(|&n| u(n)).collect();
        let mut sorted: Vec<u64> = waiting.values().copied().collect();
        sorted.sort_unstable();
        for place in store
            .places(&q(), &ids, false, now)
            .await
            .unwrap()
            .into_iter()
            .flatten()
        {
            if let PlaceState::Waiting { position } = place.state {
                prop_assert_eq!(
                    position,
                    sorted.partition_point(|t| *t < place.ticket) as u64 + 1
                );
            }
        }
    }
    // Those who arrived after the opening stand behind everyone drawn.
    let highest_drawn = drawn.values().flatten().max();
    let lowest_late = late.values().min();
    if let (Some(drawn), Some(late)) = (highest_drawn, lowest_late) {
        prop_assert!(
            drawn < late,
            "drawn up to {drawn}, a later arrival given {late}"
        );
    }
    Ok(())
}

#[test]
fn every_way_a_ticket_is_given_or_taken_keeps_one_order_over_sub_lines() {
    check(
        384,
        &(
            1u32..=3,
            prop_oneof![Just(0u32), Just(3)],
            prop_oneof![Just(0u32), Just(50)],
            proptest::bool::ANY,
            proptest::collection::vec(wider_step(), 1..120),
        ),
        |(shards, max_active, rate, opening, steps)| {
            run_wider(shards, max_active, rate, opening, steps)
        },
    );
}

#[tokio::test]
async fn the_opening_closes_every_block_so_later_arrivals_stand_behind_the_drawn() {
    let store = MemoryStore::new();
    let mut config = sharded_config(2, 0, 0);
    let opens_at = T0 + 100;
    config.opens_at_ms = Some(opens_at);
    store.create_queue(&config).await.unwrap();
    // Three users of one sub-line, and one pre-queued.
    let same = of_one_sub_line(2, 3);
    store.enqueue(&q(), &u(1000), T0).await.unwrap();
    // Admitted by name just before the opening, the first two take
    // tickets from their sub-line's blocks: the second block has one left.
    let request = RequestId::parse("named").unwrap();
    let named = [u(same[0]), u(same[1])];
    store
        .admit_users(&q(), &named[..1], &request, true, opens_at - 2)
        .await
        .unwrap();
    let request = RequestId::parse("named-2").unwrap();
    store
        .admit_users(&q(), &named[1..], &request, true, opens_at - 2)
        .await
        .unwrap();
    // The opening reserves the pre-queue's block; a newcomer of that
    // sub-line at the opening must not take the ticket left below it.
    let late = store.enqueue(&q(), &u(same[2]), opens_at).await.unwrap();
    while !store.draw_step(&q(), "seed", 10, opens_at).await.unwrap() {}
    let drawn = store
        .place(&q(), &u(1000), opens_at)
        .await
        .unwrap()
        .unwrap();
    assert!(
        late.ticket > drawn.ticket,
        "arrived after the opening with {} below the drawn {}",
        late.ticket,
        drawn.ticket
    );
    assert_eq!(position(&drawn.state), Some(1));
}

#[tokio::test]
async fn the_rate_spends_its_tokens_only_on_those_admission_may_take() {
    let store = MemoryStore::new();
    sharded_at_rate(&store, 2, 0, 10).await;
    let users: Vec<UserId> = (0..10).map(u).collect();
    store.enqueue_many(&q(), &users, T0).await.unwrap();
    // Their blocks are held back: no token is spent on them.
    assert!(
        store
            .admit_due(&q(), 100, T0 + 10)
            .await
            .unwrap()
            .is_empty()
    );
    let admitted = store
        .admit_due(&q(), 100, T0 + TAU_MS + SKEW_MS)
        .await
        .unwrap();
    assert_eq!(admitted.len(), 10);
}

#[tokio::test]
async fn without_a_rate_a_newcomer_to_an_empty_line_waits_for_an_admit_batch() {
    let store = MemoryStore::new();
    sharded(&store, 2, 10).await;
    let place = store.enqueue(&q(), &u(1), T0).await.unwrap();
    assert_eq!(position(&place.state), Some(1));
    assert!(
        store
            .admit_due(&q(), 10, T0 + 100)
            .await
            .unwrap()
            .is_empty()
    );
    let admitted = store.admit(&q(), 10, None, T0 + 100).await.unwrap();
    assert_eq!(admitted.len(), 1);
    // Pass-through still lets everyone straight in.
    let update = waitroom::domain::QueueUpdate {
        mode: Some(waitroom::domain::QueueMode::PassThrough),
        ..Default::default()
    };
    store.update_queue(&q(), &update, T0 + 100).await.unwrap();
    let place = store.enqueue(&q(), &u(2), T0 + 100).await.unwrap();
    assert!(matches!(place.state, PlaceState::Admitted(_)), "{place:?}");
}

#[tokio::test]
async fn a_place_given_back_closes_the_blocks_so_its_ticket_is_not_given_again() {
    use waitroom::domain::{Adoption, PlaceClaim, Restoration};

    let store = MemoryStore::new();
    let mut config = sharded_config(2, 0, 0);
    config.adoption = Some(Adoption::default());
    store.create_queue(&config).await.unwrap();
    // Three users of one sub-line: the first block (one ticket) is used
    // up, the second (two) has one left, open for τ.
    let same = of_one_sub_line(2, 3);
    let first = store.enqueue(&q(), &u(same[0]), T0).await.unwrap().ticket;
    let second = store.enqueue(&q(), &u(same[1]), T0).await.unwrap().ticket;
    let left_over = second + 1;
    // A receipt of the lost line for that very ticket.
    let claim = PlaceClaim {
        epoch_ms: T0 - 60_000,
        ticket: left_over,
        head: 1,
        top: left_over + 10,
        issued_ms: T0 - 1_000,
    };
    let restored = store.restore(&q(), &u(1000), &claim, T0).await.unwrap();
    assert!(matches!(restored, Restoration::Restored(_)), "{restored:?}");
    let third = store.enqueue(&q(), &u(same[2]), T0 + 1).await.unwrap();
    assert!(
        ![first, second, left_over].contains(&third.ticket),
        "{third:?}"
    );
    let returned = store.place(&q(), &u(1000), T0 + 1).await.unwrap().unwrap();
    assert_eq!(returned.ticket, left_over);
    assert_eq!(position(&returned.state), Some(3));
    assert_eq!(position(&third.state), Some(4));
}

#[tokio::test]
async fn each_sub_line_logs_and_snapshots_its_own_part_of_the_line() {
    let store = MemoryStore::new();
    sharded(&store, 3, 0).await;
    let users: Vec<UserId> = (0..300).map(u).collect();
    for chunk in users.chunks(50) {
        store.enqueue_many(&q(), chunk, T0).await.unwrap();
    }
    for n in (0..300).step_by(7) {
        store.leave(&q(), &u(n), T0 + 10).await.unwrap();
    }
    let later = T0 + TAU_MS + SKEW_MS;
    store.admit(&q(), 40, None, later).await.unwrap();
    let places = store.places(&q(), &users, false, later).await.unwrap();
    let mut owner: HashMap<u64, usize> = HashMap::new();
    let mut waiting: Vec<u64> = Vec::new();
    for (n, place) in places.iter().enumerate() {
        if let Some(place) = place.as_ref().filter(|p| position(&p.state).is_some()) {
            owner.insert(place.ticket, n);
            waiting.push(place.ticket);
        }
    }
    waiting.sort_unstable();
    let mut union = Vec::new();
    for sub_line in 0..3u32 {
        let snapshot = store
            .line_snapshot(&q(), sub_line, 0, 10_000)
            .await
            .unwrap();
        assert_eq!(snapshot.shards, 3);
        // Replaying the sub-line's whole log gives its snapshot.
        let changes = store
            .line_changes(&q(), sub_line, 0, 100_000, later)
            .await
            .unwrap();
        assert!(changes.complete);
        assert_eq!(changes.summary.seq, snapshot.seq);
        let mut replayed = std::collections::BTreeSet::new();
        for (_, event) in changes.events {
            match event {
                waitroom::domain::LineEvent::Joined { ticket, .. } => {
                    replayed.insert(ticket);
                }
                waitroom::domain::LineEvent::JoinedRun {
                    first_ticket,
                    count,
                } => {
                    replayed.extend(first_ticket..first_ticket + count);
                }
                waitroom::domain::LineEvent::Left { ticket, .. } => {
                    assert!(
                        replayed.remove(&ticket),
                        "{ticket} left sub-line {sub_line} unseen"
                    );
                }
                waitroom::domain::LineEvent::PreQueueLeft { .. } => {}
            }
        }
        assert_eq!(replayed.into_iter().collect::<Vec<_>>(), snapshot.tickets);
        for ticket in &snapshot.tickets {
            let holder = owner[ticket];
            assert_eq!(sub_line_of(u(holder).as_str(), 3), sub_line);
        }
        union.extend(snapshot.tickets);
    }
    union.sort_unstable();
    assert_eq!(union, waiting);
}

#[tokio::test]
async fn a_replica_s_copy_follows_every_sub_line_s_log() {
    use waitroom::pb;

    use crate::helpers::{TestApp, enqueue, leave, open, queue};

    let app = TestApp::on_memory().await;
    app.create_queue(pb::Queue {
        shards: 3,
        ..queue("big")
    })
    .await;
    let mut client = app.client().await;
    let mut tickets = HashMap::new();
    for n in 0..200 {
        tickets.insert(
            n,
            enqueue(&mut client, "big", &format!("v{n}")).await.ticket,
        );
    }
    // Watchers spread over every sub-line, followed by one copy.
    let watched: Vec<usize> = (150..200).collect();
    let mut streams = Vec::new();
    for &n in &watched {
        let mut stream = open(&app, "big", &format!("v{n}")).await;
        stream.message().await.unwrap().unwrap();
        streams.push((n, stream));
    }
    // Leaves on every sub-line, then admissions.
    for n in (0..150).step_by(3) {
        assert!(leave(&mut client, "big", &format!("v{n}")).await);
        tickets.remove(&n);
    }
    app.clock.advance_ms(TAU_MS + SKEW_MS);
    let admitted = crate::helpers::admit(&mut client, "big", 40).await;
    for a in &admitted {
        let n: usize = a.user_id[1..].parse().unwrap();
        tickets.remove(&n);
    }
    let mut waiting: Vec<u64> = tickets.values().copied().collect();
    waiting.sort_unstable();
    for (n, mut stream) in streams {
        let exact = waiting.partition_point(|t| *t < tickets[&n]) as u64 + 1;
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let place = stream.message().await.unwrap().unwrap().place.unwrap();
                if place.position == exact {
                    break;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("v{n} was never shown position {exact}"));
    }
    app.stop().await;
}

#[tokio::test]
async fn a_sale_over_four_sub_lines_admits_everyone_once_in_ticket_order_through_the_service() {
    sale_over_four_sub_lines(crate::helpers::TestApp::on_memory().await, TAU_MS * 2).await;
}

/// The same through a service whose Redis store serves sub-lines
/// (`--redis-sub-lines`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sale_over_four_sub_lines_on_redis_admits_everyone_once_in_ticket_order() {
    use crate::helpers::{TestApp, TestRedis, fresh_prefix};

    let redis = TestRedis::start();
    let mut config = TestApp::redis_config(&redis.url(), &fresh_prefix());
    config.redis_sub_lines = true;
    // The Redis store stamps a batch that waited behind a slow call with
    // the time it waited (real time, on top of this test's manual clock),
    // so waves a real few milliseconds long stand further apart.
    sale_over_four_sub_lines(TestApp::spawn(config).await, 200).await;
}

/// Waves of joins `gap_ms` apart by the service's clock keep their order.
async fn sale_over_four_sub_lines(app: crate::helpers::TestApp, gap_ms: u64) {
    use waitroom::pb;

    use crate::helpers::{queue, rank};

    app.create_queue(pb::Queue {
        shards: 4,
        admit_per_second: 100,
        ..queue("sale")
    })
    .await;
    // Waves of concurrent joins from eight clients, a few ms apart: blocks
    // of the four sub-lines interleave within a wave, never across.
    let mut joined: Vec<(usize, u64, u64)> = Vec::new();
    for wave in 0..5u64 {
        let mut tasks = Vec::new();
        for client in 0..8usize {
            let channel = app.channel().await;
            tasks.push(tokio::spawn(async move {
                let mut client_api =
                    waitroom::pb::queue_service_client::QueueServiceClient::new(channel);
                let mut got = Vec::new();
                for i in 0..10 {
                    let n = wave as usize * 80 + client * 10 + i;
                    let place =
                        crate::helpers::enqueue(&mut client_api, "sale", &format!("v{n}")).await;
                    got.push((n, place.ticket));
                }
                got
            }));
        }
        let now = waitroom::domain::Clock::now_ms(app.clock.as_ref());
        for task in tasks {
            joined.extend(task.await.unwrap().into_iter().map(|(n, t)| (n, t, now)));
        }
        app.clock.advance_ms(gap_ms);
    }
    let mut tickets: Vec<u64> = joined.iter().map(|(_, t, _)| *t).collect();
    tickets.sort_unstable();
    tickets.dedup();
    assert_eq!(tickets.len(), 400, "a ticket given twice");
    for &(_, ticket, at) in &joined {
        for &(_, later_ticket, later_at) in &joined {
            if later_at >= at + TAU_MS {
                assert!(
                    later_ticket > ticket,
                    "wave order broken: {ticket} then {later_ticket}"
                );
            }
        }
    }
    // The rate's admitter lets everyone in, 100 a second.
    app.pass_time(6_000).await;
    let mut client = app.client().await;
    let mut admitted: Vec<(u64, i64, i32)> = Vec::new();
    for &(n, ticket, _) in &joined {
        let place = rank(&mut client, "sale", &format!("v{n}")).await;
        assert_eq!(place.state(), pb::PlaceState::Admitted, "v{n} not admitted");
        assert_eq!(place.ticket, ticket);
        let expires = place.admission.and_then(|a| a.expires_at).unwrap();
        admitted.push((ticket, expires.seconds, expires.nanos));
    }
    // Nobody admitted ahead of a lower ticket.
    admitted.sort_unstable();
    for pair in admitted.windows(2) {
        assert!(
            (pair[0].1, pair[0].2) <= (pair[1].1, pair[1].2),
            "{} admitted after {}",
            pair[0].0,
            pair[1].0
        );
    }
    let stats = app.stats("sale").await;
    assert_eq!((stats.admitted_total, stats.waiting_count), (400, 0));
    app.stop().await;
}

/// Two replicas of one Redis: one re-makes the queue with another number
/// of sub-lines, and the other, which knew the old layout (or none), keeps
/// serving it rightly: a one-slot call on a head is refused and sent to the
/// sub-lines, and a known layout whose sub-lines are gone is forgotten
/// (from 4 to 8 too, whose first four sub-lines would exist under tags
/// that did not name the number).
#[tokio::test]
async fn a_replica_follows_a_queue_made_again_with_another_number_of_sub_lines() {
    let redis = TestRedis::start();
    let prefix = fresh_prefix();
    let one = redis.store_with_prefix(&prefix).await.with_sub_lines();
    let other = redis.store_with_prefix(&prefix).await.with_sub_lines();
    let mut visitor = 0;
    for shards in [1, 3, 1, 2, 2, 4, 8] {
        let _ = one.delete_queue(&q()).await;
        one.create_queue(&sharded_config(shards, 0, 0))
            .await
            .unwrap();
        let users: Vec<UserId> = (visitor..visitor + 6).map(u).collect();
        visitor += 6;
        let mut places: Vec<_> = other
            .enqueue_many(&q(), &users, T0)
            .await
            .unwrap()
            .into_iter()
            .map(Result::unwrap)
            .collect();
        // One call's users stand in ticket order, the call's order being
        // none of the line's over sub-lines.
        places.sort_by_key(|place| place.ticket);
        for (k, place) in places.into_iter().enumerate() {
            assert_eq!(
                place.state,
                PlaceState::Waiting {
                    position: k as u64 + 1
                },
                "{shards} sub-lines"
            );
            // Over sub-lines the line's length is read after the call;
            // in one slot, as each joined.
            let length = if shards == 1 { k as u64 + 1 } else { 6 };
            assert_eq!(place.waiting_count, length, "{shards} sub-lines");
        }
        // Each sub-line holds its own users, and the head none.
        let mut held = 0;
        for sub_line in 0..shards {
            let snapshot = one.line_snapshot(&q(), sub_line, 0, 100).await.unwrap();
            assert_eq!(snapshot.shards, shards);
            held += snapshot.tickets.len();
        }
        assert_eq!(held, 6, "{shards} sub-lines");
        // Each found where the layout of today puts them.
        for user in &users {
            let place = one.place(&q(), user, T0).await.unwrap();
            assert!(place.is_some(), "{user:?} over {shards} sub-lines");
        }
        assert!(other.leave(&q(), &users[0], T0).await.unwrap());
        let left = one.place(&q(), &users[1], T0).await.unwrap().unwrap();
        assert_eq!(left.waiting_count, 5, "{shards} sub-lines");
    }
}

/// An admitter that stops after journalling its admission at the head
/// leaves an entry the next admission finishes first: the planned users
/// are admitted once, the next admission takes the next users, and the
/// stopped request, retried, is answered what its entry took.
#[tokio::test]
async fn an_admission_left_journalled_is_finished_by_the_next_before_its_own() {
    let redis = TestRedis::start();
    let store = redis.store().await.with_sub_lines();
    store.create_queue(&sharded_config(3, 0, 0)).await.unwrap();
    let users: Vec<UserId> = (0..9).map(u).collect();
    let mut tickets: Vec<(u64, UserId)> = Vec::new();
    for user in &users {
        let place = store.enqueue(&q(), user, T0).await.unwrap();
        tickets.push((place.ticket, user.clone()));
    }
    tickets.sort();
    let after = T0 + TAU_MS + SKEW_MS;
    let stopped = RequestId::parse("stopped").unwrap();
    store
        .plan_admission_and_stop(&q(), 3, &stopped, after)
        .await
        .unwrap();
    // Nobody is admitted yet: the entry waits at the head.
    for (_, user) in &tickets {
        let place = store.place(&q(), user, after).await.unwrap().unwrap();
        assert!(
            matches!(place.state, PlaceState::Waiting { .. }),
            "{place:?}"
        );
    }
    let next = RequestId::parse("next").unwrap();
    let admitted = store.admit(&q(), 2, Some(&next), after).await.unwrap();
    let names = |admitted: &[waitroom::domain::Admitted]| -> Vec<UserId> {
        admitted.iter().map(|a| a.user.clone()).collect()
    };
    let expected: Vec<UserId> = tickets[3..5].iter().map(|(_, u)| u.clone()).collect();
    assert_eq!(
        names(&admitted),
        expected,
        "the next two after the planned three"
    );
    let retried = store.admit(&q(), 3, Some(&stopped), after).await.unwrap();
    let planned: Vec<UserId> = tickets[..3].iter().map(|(_, u)| u.clone()).collect();
    assert_eq!(names(&retried), planned, "the stopped request's own three");
    for (_, user) in &tickets[..5] {
        let place = store.place(&q(), user, after).await.unwrap().unwrap();
        assert!(matches!(place.state, PlaceState::Admitted(_)), "{place:?}");
    }
    let waiting = store
        .place(&q(), &tickets[5].1, after)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(waiting.state, PlaceState::Waiting { position: 1 });
}

/// The same for `AdmitUsers`: an entry naming users, left journalled, is
/// finished by the next admission before its own, and the stopped
/// request, retried, gets what its entry did.
#[tokio::test]
async fn named_users_left_journalled_are_admitted_by_the_next_admission_first() {
    let redis = TestRedis::start();
    let store = redis.store().await.with_sub_lines();
    store.create_queue(&sharded_config(3, 0, 0)).await.unwrap();
    let waiting: Vec<UserId> = (0..4).map(u).collect();
    for user in &waiting {
        store.enqueue(&q(), user, T0).await.unwrap();
    }
    // One waiting, one not in line at all: a ticket of their own.
    let named = vec![waiting[3].clone(), u(100)];
    let stopped = RequestId::parse("named").unwrap();
    let after = T0 + TAU_MS + SKEW_MS;
    store
        .plan_admit_users_and_stop(&q(), &named, &stopped, after)
        .await
        .unwrap();
    let place = store.place(&q(), &named[0], after).await.unwrap().unwrap();
    assert!(
        matches!(place.state, PlaceState::Waiting { .. }),
        "{place:?}"
    );
    // The next admission from the line finishes the entry first: the
    // named are admitted, and it takes the lowest of the others.
    let batch = store
        .admit(&q(), 1, Some(&RequestId::parse("batch").unwrap()), after)
        .await
        .unwrap();
    assert_eq!(batch.len(), 1);
    assert!(!named.contains(&batch[0].user), "{batch:?}");
    for user in &named {
        let place = store.place(&q(), user, after).await.unwrap().unwrap();
        assert!(matches!(place.state, PlaceState::Admitted(_)), "{place:?}");
    }
    let retried = store
        .admit_users(&q(), &named, &stopped, false, after)
        .await
        .unwrap();
    assert_eq!(retried.len(), 2);
    assert!(
        retried
            .iter()
            .all(|r| matches!(r, waitroom::domain::NamedAdmission::Admitted(_))),
        "{retried:?}"
    );
}

/// A queue paused while an `AdmitBatch` is between its begin and its plan
/// admits nobody: the plan reads the settings as they are then, so neither
/// the pause nor `max_active` is skipped.
#[tokio::test]
async fn a_pause_during_an_admission_over_sub_lines_admits_nobody() {
    let redis = TestRedis::start();
    let store = std::sync::Arc::new(redis.store().await.with_sub_lines());
    store.create_queue(&sharded_config(2, 1, 0)).await.unwrap();
    for n in 0..4 {
        store.enqueue(&q(), &u(n), T0).await.unwrap();
    }
    let after = T0 + TAU_MS + SKEW_MS;
    let slow = {
        let store = std::sync::Arc::clone(&store);
        tokio::spawn(async move {
            store
                .admit_slowly(
                    &q(),
                    4,
                    &RequestId::parse("slow").unwrap(),
                    after,
                    Duration::from_millis(400),
                )
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    store
        .update_queue(
            &q(),
            &waitroom::domain::QueueUpdate {
                mode: Some(waitroom::domain::QueueMode::Paused),
                ..Default::default()
            },
            after,
        )
        .await
        .unwrap();
    let answer = slow.await.unwrap();
    assert!(matches!(answer, Err(Error::QueuePaused(_))), "{answer:?}");
    for n in 0..4 {
        let place = store.place(&q(), &u(n), after).await.unwrap().unwrap();
        assert!(
            matches!(place.state, PlaceState::Waiting { .. }),
            "{place:?}"
        );
    }
}

/// An `AdmitUsers` entry left journalled names a user who held an
/// admission then, and completes before the entry is finished: the result
/// still says which admission they held (the plan journals it), and a user
/// id with the character the settling once split on is kept as named.
#[tokio::test]
async fn a_named_entry_finished_later_answers_the_admissions_it_planned() {
    let redis = TestRedis::start();
    let store = redis.store().await.with_sub_lines();
    store.create_queue(&sharded_config(2, 0, 0)).await.unwrap();
    let holder = u(0);
    store.enqueue(&q(), &holder, T0).await.unwrap();
    let after = T0 + TAU_MS + SKEW_MS;
    let first = store
        .admit(&q(), 1, Some(&RequestId::parse("first").unwrap()), after)
        .await
        .unwrap();
    assert_eq!(first.len(), 1);
    let piped = UserId::parse("a|b").unwrap();
    let named = vec![holder.clone(), piped.clone()];
    let request = RequestId::parse("named").unwrap();
    store
        .plan_admit_users_and_stop(&q(), &named, &request, after)
        .await
        .unwrap();
    assert!(store.complete(&q(), &holder, after).await.unwrap());
    let answer = store
        .admit_users(&q(), &named, &request, false, after)
        .await
        .unwrap();
    match &answer[..] {
        [
            waitroom::domain::NamedAdmission::AlreadyAdmitted(held),
            waitroom::domain::NamedAdmission::Admitted(_),
        ] => assert_eq!(held, &first[0].admission),
        other => panic!("{other:?}"),
    }
    let again = store
        .admit_users(&q(), &named, &request, false, after)
        .await
        .unwrap();
    assert_eq!(again, answer, "a retry is answered the same");
    let place = store.place(&q(), &piped, after).await.unwrap().unwrap();
    assert!(matches!(place.state, PlaceState::Admitted(_)), "{place:?}");
}

/// A scheduled opening over sub-lines: everyone pre-queued on any
/// sub-line is placed in the seed's order, ahead of whoever came after the
/// opening, and admitted in that order; the Redis store gives the memory
/// store's answers, tickets included.
#[tokio::test]
async fn a_scheduled_opening_over_sub_lines_places_everyone_pre_queued_in_the_draw_s_order() {
    let redis = TestRedis::start();
    let stores: [Box<dyn QueueStore>; 2] = [
        Box::new(MemoryStore::new()),
        Box::new(redis.store().await.with_sub_lines()),
    ];
    let mut answers = Vec::new();
    for store in &stores {
        let mut config = sharded_config(3, 0, 0);
        let opens_at = T0 + 60_000;
        config.opens_at_ms = Some(opens_at);
        config.prequeue_window = Duration::from_secs(120);
        store.create_queue(&config).await.unwrap();
        let crowd: Vec<UserId> = (0..200).map(u).collect();
        for chunk in crowd.chunks(16) {
            for place in store.enqueue_many(&q(), chunk, T0 + 1_000).await.unwrap() {
                assert!(matches!(place.unwrap().state, PlaceState::PreQueue { .. }));
            }
        }
        let late = store.enqueue(&q(), &u(1000), opens_at).await.unwrap();
        let mut steps = 1;
        while !store
            .draw_step(&q(), "seed", 7, opens_at + 1)
            .await
            .unwrap()
        {
            steps += 1;
        }
        let order = waitroom::domain::draw::draw_order("seed", &crowd);
        let mut tickets = Vec::new();
        for (i, user) in order.iter().enumerate() {
            let place = store
                .place(&q(), user, opens_at + 2)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(position(&place.state), Some(i as u64 + 1), "{user}");
            tickets.push(place.ticket);
        }
        let late_now = store
            .place(&q(), &u(1000), opens_at + 2)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(position(&late_now.state), Some(201));
        assert!(late.ticket > *tickets.iter().max().unwrap());
        let admitted = store.admit(&q(), 50, None, opens_at + 30).await.unwrap();
        let admitted: Vec<UserId> = admitted.into_iter().map(|a| a.user).collect();
        assert_eq!(admitted, order[..50]);
        answers.push((steps, tickets, late.ticket, late_now.ticket));
    }
    assert_eq!(answers[0], answers[1]);
}

/// Joins racing a scheduled opening on three replicas whose clocks are up
/// to 20 ms apart, then two replicas drawing at once: everyone answered
/// pre-queued is drawn once into the reserved tickets, in the order of the
/// seed the head fixed, and everyone answered with a ticket stands behind
/// them all.
#[tokio::test]
async fn joins_racing_the_opening_on_skewed_replicas_and_two_drawers_keep_the_draw_whole() {
    let redis = TestRedis::start();
    let prefix = fresh_prefix();
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(std::sync::Arc::new(
            redis.store_with_prefix(&prefix).await.with_sub_lines(),
        ));
    }
    let opens_at = T0 + 10_000;
    let mut config = sharded_config(4, 0, 0);
    config.opens_at_ms = Some(opens_at);
    config.prequeue_window = Duration::from_secs(60);
    replicas[0].create_queue(&config).await.unwrap();
    let early: Vec<UserId> = (0..400).map(|n| u(10_000 + n)).collect();
    for chunk in early.chunks(32) {
        replicas[0]
            .enqueue_many(&q(), chunk, T0 + 1_000)
            .await
            .unwrap();
    }
    // 300 joins a replica, a millisecond apart by its clock from 150 ms
    // before the opening, in batches of six.
    let mut racing = Vec::new();
    for (r, skew) in [(0usize, 0i64), (1, -20), (2, 20)] {
        let store = std::sync::Arc::clone(&replicas[r]);
        racing.push(tokio::spawn(async move {
            let mut answered = Vec::new();
            for batch in 0..50u64 {
                let users: Vec<UserId> = (0..6)
                    .map(|i| u(20_000 + r * 1_000 + (batch * 6 + i) as usize))
                    .collect();
                let now = (opens_at as i64 - 150 + (batch * 6) as i64 + skew) as u64;
                let places = store.enqueue_many(&q(), &users, now).await.unwrap();
                for (user, place) in users.into_iter().zip(places) {
                    answered.push((user, place.unwrap()));
                }
            }
            answered
        }));
    }
    let mut prequeued: Vec<UserId> = early.clone();
    let mut ticketed: Vec<(UserId, u64)> = Vec::new();
    for task in racing {
        for (user, place) in task.await.unwrap() {
            match place.state {
                PlaceState::PreQueue { .. } => prequeued.push(user),
                _ => ticketed.push((user, place.ticket)),
            }
        }
    }
    assert!(prequeued.len() > early.len() && !ticketed.is_empty());
    let drawers: Vec<_> = [(0usize, "first"), (1, "second")]
        .into_iter()
        .map(|(r, seed)| {
            let store = std::sync::Arc::clone(&replicas[r]);
            tokio::spawn(async move {
                while !store
                    .draw_step(&q(), seed, 16, opens_at + 100)
                    .await
                    .unwrap()
                {}
            })
        })
        .collect();
    for drawer in drawers {
        drawer.await.unwrap();
    }
    let seed = replicas[2]
        .get_queue(&q())
        .await
        .unwrap()
        .draw_seed
        .unwrap();
    let mut drawn = Vec::new();
    for user in &prequeued {
        let place = replicas[2]
            .place(&q(), user, opens_at + 200)
            .await
            .unwrap()
            .unwrap();
        assert!(
            matches!(place.state, PlaceState::Waiting { .. }),
            "{user}: {place:?}"
        );
        drawn.push((place.ticket, user.clone()));
    }
    drawn.sort();
    let tickets: Vec<u64> = drawn.iter().map(|(t, _)| *t).collect();
    // Nobody left: the reservation, whole, and nothing past it.
    let out_of_place = tickets.iter().zip(1..).find(|(ticket, n)| **ticket != *n);
    assert_eq!(
        out_of_place,
        None,
        "not the reservation 1..={}",
        prequeued.len()
    );
    let order: Vec<UserId> = drawn.into_iter().map(|(_, u)| u).collect();
    assert_eq!(order, waitroom::domain::draw::draw_order(&seed, &prequeued));
    let last_drawn = *tickets.last().unwrap();
    let mut later: Vec<u64> = ticketed.iter().map(|(_, t)| *t).collect();
    later.sort_unstable();
    later.dedup();
    assert_eq!(later.len(), ticketed.len(), "a ticket twice");
    assert!(
        later[0] > last_drawn,
        "a join after the opening ahead of the drawn"
    );
    // One line: positions 1.. in ticket order, the drawn first.
    let everyone = prequeued.len() + ticketed.len();
    let last = &ticketed.iter().max_by_key(|(_, t)| *t).unwrap().0;
    let place = replicas[1]
        .place(&q(), last, opens_at + 200)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(position(&place.state), Some(everyone as u64));
}
