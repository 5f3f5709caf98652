//! Property test: identical random sequences of operations applied to the
//! memory store (the specification) and the Redis store give identical
//! answers, every one of them.

use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestCaseError, TestRunner};
use waitroom::domain::{
    Admission, AdmissionCheck, Adoption, Consume, DrawHold, LineChanges, LineEvent, LineSnapshot,
    NamedAdmission, Place, PlaceClaim, PlaceState, QueueConfig, QueueId, QueueMode, QueueUpdate,
    RequestId, Restoration, UserId,
};
use waitroom::store::{MemoryStore, QueueStore, RedisStore};
use waitroom::tokens::token_id;

use crate::helpers::TestRedis;

const T0: u64 = 1_800_000_000_000;
const USERS: u8 = 8;

#[derive(Clone, Debug)]
enum Op {
    Enqueue(u8),
    EnqueueMany(Vec<u8>),
    Leave(u8),
    Places(Vec<u8>, bool),
    Touch(Vec<u8>),
    Reap,
    DrawStep(u8),
    SetOpening(Option<u64>),
    /// An opening at an edge of what the API lets through: the earliest and
    /// latest times it accepts, and just around now.
    SetOpeningAtEdge(u8),
    Admit(u32, Option<u8>),
    AdmitDue(u32),
    SetRate(u32),
    Complete(u8),
    SetMode(QueueMode),
    SetMaxActive(u32),
    Advance(u64),
    /// The clock moves back, as a replica's may be behind another's (or a
    /// call's clock was read before an earlier-read call ran).
    Rewind(u64),
    Stats,
    /// An online check of an admission seen earlier in the sequence (picked
    /// by index), possibly altered (0: as is; 1: another ticket; 2: another
    /// moment; 3: another queue creation; 4: another user; 5: no moment, as
    /// tokens of the earlier id shape), consuming with
    /// one of a few request ids, remembered until `now` plus the offset
    /// (which may lie in the past).
    Check {
        pick: u8,
        alter: u8,
        consume: Option<u8>,
        until: i64,
    },
    LineChanges(u64),
    /// A chunk of the line above a ticket.
    LineSnapshot(u64, u32),
    /// Delete and create again; with a scheduled opening 30 s ahead.
    Recreate(bool),
    /// Delete and create again over this many sub-lines.
    RecreateOver(u32),
    /// Delete and create again over this many sub-lines, with a scheduled
    /// opening 30 s ahead.
    RecreateScheduledOver(u32),
    /// The reaper's passes every 2 s for this many passes, as a replica
    /// runs them, each answer compared: users silent past the heartbeat
    /// are released.
    Passes(u8),
    /// The changes logged by one sub-line after a sequence number.
    SubLineChanges(u32, u64),
    /// A chunk of one sub-line's waiting tickets above a ticket.
    SubLineSnapshot(u32, u64, u32),
    /// A notice set (one of a few, the longest allowed among them) or
    /// cleared.
    SetNotice(Option<u8>),
    /// Closed with a reason (or the reason alone changed, or cleared,
    /// whatever the mode).
    CloseWith(Option<u8>, bool),
    /// Named users admitted out of turn, with one of a few request ids, over
    /// the capacity or not.
    AdmitUsers(Vec<u8>, u8, bool),
    ClearStep(u32),
    /// Deleted, then re-made as after a loss: taking back the places of
    /// the lost lineage (or of whichever lineage comes first), from a head,
    /// numbering newcomers after a top.
    Remade {
        known_epoch: bool,
        head: u64,
        top: u64,
    },
    /// A receipt brought back: of the queue as it is now (0), of the lost
    /// lineage (1) or of another (2); issued some time ago (the queue's
    /// release time is 31.25 s), for a ticket given or not given yet, with
    /// the head and top its issuer knew.
    Restore {
        user: u8,
        epoch: u8,
        ticket: u64,
        age: u64,
        head: u64,
        top: u64,
    },
}

/// The lineage a re-made queue takes back in these sequences.
const LOST_EPOCH: u64 = T0 - 60_000;

fn notice(n: u8) -> std::sync::Arc<str> {
    match n {
        0 => "Sales resume at 10:30".into(),
        1 => "é".repeat(280).into(),
        _ => "Limit 4 tickets per person".into(),
    }
}

fn reason(n: u8) -> std::sync::Arc<str> {
    match n {
        0 => "SOLD_OUT".into(),
        1 => "CANCELLED".into(),
        _ => "A".repeat(64).into(),
    }
}

fn op() -> impl Strategy<Value = Op> {
    let mode = prop_oneof![
        Just(QueueMode::Queueing),
        Just(QueueMode::PassThrough),
        Just(QueueMode::Paused),
        Just(QueueMode::Closed),
    ];
    prop_oneof![
        6 => (0..USERS).prop_map(Op::Enqueue),
        2 => proptest::collection::vec(0..USERS, 1..5).prop_map(Op::EnqueueMany),
        2 => (0..USERS).prop_map(Op::Leave),
        3 => (proptest::collection::vec(0..USERS, 1..4), any::<bool>()).prop_map(|(u, t)| Op::Places(u, t)),
        1 => proptest::collection::vec(0..USERS, 1..4).prop_map(Op::Touch),
        1 => Just(Op::Reap),
        2 => (0u8..3).prop_map(Op::DrawStep),
        1 => proptest::option::of(0u64..90_000).prop_map(Op::SetOpening),
        1 => (0u8..5).prop_map(Op::SetOpeningAtEdge),
        3 => (1u32..4, proptest::option::of(0u8..3)).prop_map(|(n, r)| Op::Admit(n, r)),
        2 => (0..USERS).prop_map(Op::Complete),
        2 => (1u32..5).prop_map(Op::AdmitDue),
        1 => (0u32..4).prop_map(Op::SetRate),
        1 => mode.prop_map(Op::SetMode),
        1 => (0u32..4).prop_map(Op::SetMaxActive),
        2 => prop_oneof![0u64..2_000, 100u64..700, 2_998u64..3_003, 20_000u64..40_000, 59_000u64..61_000, 599_000u64..601_000].prop_map(Op::Advance),
        1 => (1u64..1_500).prop_map(Op::Rewind),
        1 => Just(Op::Stats),
        2 => (0u64..30).prop_map(Op::LineChanges),
        1 => (prop_oneof![Just(0u64), 0u64..12, Just(u64::MAX)], prop_oneof![Just(1u32), 1u32..5, Just(u32::MAX)])
            .prop_map(|(after, limit)| Op::LineSnapshot(after, limit)),
        3 => (
            any::<u8>(),
            prop_oneof![4 => Just(0u8), 1 => 1u8..6],
            proptest::option::of(0u8..3),
            prop_oneof![Just(-1i64), Just(0), Just(1), -2_000i64..5_000, 599_000i64..601_000],
        )
            .prop_map(|(pick, alter, consume, until)| Op::Check { pick, alter, consume, until }),
        1 => any::<bool>().prop_map(Op::Recreate),
        1 => proptest::option::of(0u8..3).prop_map(Op::SetNotice),
        1 => (proptest::option::of(0u8..3), any::<bool>()).prop_map(|(r, close)| Op::CloseWith(r, close)),
        2 => (proptest::collection::vec(0..=USERS, 1..4), 0u8..3, any::<bool>())
            .prop_map(|(users, request, over)| Op::AdmitUsers(users, request, over)),
        1 => prop_oneof![Just(1u32), 1u32..4, Just(u32::MAX)].prop_map(Op::ClearStep),
        1 => (any::<bool>(), 0u64..6, prop_oneof![Just(0u64), 0u64..20])
            .prop_map(|(known_epoch, head, top)| Op::Remade { known_epoch, head, top }),
        3 => (
            0..USERS,
            prop_oneof![2 => Just(0u8), 2 => Just(1u8), 1 => Just(2u8)],
            prop_oneof![Just(0u64), 1u64..16, 20u64..40],
            prop_oneof![Just(0u64), 0u64..30_000, 31_248u64..31_253, Just(120_000)],
            prop_oneof![Just(0u64), 0u64..12],
            prop_oneof![Just(0u64), 0u64..45],
        )
            .prop_map(|(user, epoch, ticket, age, head, top)| Op::Restore { user, epoch, ticket, age, head, top }),
    ]
}

fn queue() -> QueueId {
    QueueId::parse("prop").unwrap()
}

fn user(n: u8) -> UserId {
    UserId::parse(&format!("user-{n}")).unwrap()
}

/// One step on one store, rendered as the text of its answer; errors by
/// their reason, the way a client tells them apart.
async fn apply(
    store: &dyn QueueStore,
    op: &Op,
    now: u64,
    seen: &mut Vec<(UserId, Admission)>,
) -> String {
    fn show<T: std::fmt::Debug>(result: waitroom::Result<T>) -> String {
        match result {
            Ok(value) => format!("{value:?}"),
            Err(error) => format!("error {}", error.reason()),
        }
    }
    fn note(seen: &mut Vec<(UserId, Admission)>, user: &UserId, place: &Place) {
        if let PlaceState::Admitted(admission) = &place.state {
            seen.push((user.clone(), admission.clone()));
        }
    }
    fn note_admitted(
        seen: &mut Vec<(UserId, Admission)>,
        answer: &waitroom::Result<Vec<waitroom::domain::Admitted>>,
    ) {
        if let Ok(admitted) = answer {
            seen.extend(
                admitted
                    .iter()
                    .map(|a| (a.user.clone(), a.admission.clone())),
            );
        }
    }
    let q = queue();
    match op {
        Op::Enqueue(u) => {
            let answer = store.enqueue(&q, &user(*u), now).await;
            if let Ok(place) = &answer {
                note(seen, &user(*u), place);
            }
            show(answer)
        }
        Op::EnqueueMany(us) => {
            let users: Vec<UserId> = us.iter().map(|u| user(*u)).collect();
            match store.enqueue_many(&q, &users, now).await {
                Ok(answers) => {
                    for (user, answer) in users.iter().zip(&answers) {
                        if let Ok(place) = answer {
                            note(seen, user, place);
                        }
                    }
                    answers.into_iter().map(show).collect::<Vec<_>>().join("; ")
                }
                Err(error) => format!("error {}", error.reason()),
            }
        }
        Op::Leave(u) => show(store.leave(&q, &user(*u), now).await),
        Op::Places(us, touch) => {
            let users: Vec<UserId> = us.iter().map(|u| user(*u)).collect();
            let answer = store.places(&q, &users, *touch, now).await;
            if let Ok(places) = &answer {
                for (user, place) in users.iter().zip(places) {
                    if let Some(place) = place {
                        note(seen, user, place);
                    }
                }
            }
            show(answer)
        }
        Op::Touch(us) => {
            let users: Vec<UserId> = us.iter().map(|u| user(*u)).collect();
            show(store.touch(&q, &users, now).await)
        }
        Op::Reap => show(store.reap(&q, 3, now).await),
        Op::DrawStep(seed) => show(store.draw_step(&q, &format!("seed{seed}"), 2, now).await),
        Op::SetOpening(at) => show(
            store
                .update_queue(
                    &q,
                    &QueueUpdate {
                        opens_at: Some(at.map(|delta| now + delta)),
                        ..Default::default()
                    },
                    now,
                )
                .await,
        ),
        Op::SetOpeningAtEdge(edge) => {
            let (earliest, latest) = QueueConfig::TIME_RANGE_MS;
            let at = match edge {
                0 => earliest,
                1 => latest - 1,
                2 => now - 1,
                3 => now,
                _ => now + 1,
            };
            show(
                store
                    .update_queue(
                        &q,
                        &QueueUpdate {
                            opens_at: Some(Some(at)),
                            ..Default::default()
                        },
                        now,
                    )
                    .await,
            )
        }
        Op::Admit(n, request) => {
            // Request 2 has the shape of an id the service makes up, whose
            // result is kept for a shorter time.
            let request = request.map(|r| {
                let id = if r == 2 {
                    "auto:2".to_owned()
                } else {
                    format!("req-{r}")
                };
                RequestId::parse(&id).unwrap()
            });
            let answer = store.admit(&q, *n, request.as_ref(), now).await;
            note_admitted(seen, &answer);
            show(answer)
        }
        Op::AdmitDue(n) => {
            let answer = store.admit_due(&q, *n, now).await;
            note_admitted(seen, &answer);
            show(answer)
        }
        Op::SetRate(n) => show(
            store
                .update_queue(
                    &q,
                    &QueueUpdate {
                        admit_per_second: Some(*n),
                        ..Default::default()
                    },
                    now,
                )
                .await,
        ),
        Op::Complete(u) => show(store.complete(&q, &user(*u), now).await),
        Op::SetMode(mode) => show(
            store
                .update_queue(
                    &q,
                    &QueueUpdate {
                        mode: Some(*mode),
                        ..Default::default()
                    },
                    now,
                )
                .await,
        ),
        Op::SetMaxActive(n) => show(
            store
                .update_queue(
                    &q,
                    &QueueUpdate {
                        max_active: Some(*n),
                        ..Default::default()
                    },
                    now,
                )
                .await,
        ),
        Op::Advance(_) | Op::Rewind(_) => String::new(),
        Op::Stats => show(store.stats(&q, now).await),
        Op::LineChanges(after) => show(changes_at_rest(
            store.line_changes(&q, 0, *after, 4, now).await,
        )),
        Op::SubLineChanges(sub_line, after) => show(changes_at_rest(
            store.line_changes(&q, *sub_line, *after, 4, now).await,
        )),
        Op::SubLineSnapshot(sub_line, after, limit) => show(snapshot_at_rest(
            store.line_snapshot(&q, *sub_line, *after, *limit).await,
        )),
        Op::Passes(_) => "passes are run by the sequence's loop".to_owned(),
        Op::RecreateOver(shards) => {
            let deleted = show(store.delete_queue(&q).await);
            let mut config = config(now);
            config.shards = *shards;
            format!("{deleted} {}", show(store.create_queue(&config).await))
        }
        Op::LineSnapshot(after, limit) => show(snapshot_at_rest(
            store.line_snapshot(&q, 0, *after, *limit).await,
        )),
        Op::Check {
            pick,
            alter,
            consume,
            until,
        } => {
            let (mut who, mut admission) = match seen.get(*pick as usize % seen.len().max(1)) {
                Some((who, admission)) => (who.clone(), admission.clone()),
                None => (
                    user(0),
                    Admission {
                        ticket: 1,
                        admitted_at_ms: T0,
                        expires_at_ms: T0 + 30_000,
                        queue_epoch_ms: T0,
                    },
                ),
            };
            match alter {
                1 => admission.ticket += 1,
                2 => admission.admitted_at_ms += 1,
                3 => admission.queue_epoch_ms += 1,
                4 => who = user(USERS),
                _ => {}
            }
            let check = AdmissionCheck {
                token_id: token_id(&q, &who, &admission),
                user: who,
                queue_epoch_ms: admission.queue_epoch_ms,
                ticket: admission.ticket,
                admitted_at_ms: (*alter != 5).then_some(admission.admitted_at_ms),
                consume: consume.map(|r| Consume {
                    remember_until_ms: now.saturating_add_signed(*until),
                    request: RequestId::parse(&format!("check-{r}")).unwrap(),
                }),
            };
            show(store.check_admission(&q, &check, now).await)
        }
        Op::SetNotice(n) => show(
            store
                .update_queue(
                    &q,
                    &QueueUpdate {
                        notice: Some(n.map(notice)),
                        ..Default::default()
                    },
                    now,
                )
                .await,
        ),
        Op::CloseWith(r, close) => show(
            store
                .update_queue(
                    &q,
                    &QueueUpdate {
                        mode: close.then_some(QueueMode::Closed),
                        closed_reason: Some(r.map(reason)),
                        ..Default::default()
                    },
                    now,
                )
                .await,
        ),
        Op::AdmitUsers(us, request, over) => {
            let users: Vec<UserId> = us.iter().map(|u| user(*u)).collect();
            // Request 2 has the shape of an id the service makes up.
            let id = if *request == 2 {
                "auto:u".to_owned()
            } else {
                format!("named-{request}")
            };
            let request = RequestId::parse(&id).unwrap();
            let answer = store.admit_users(&q, &users, &request, *over, now).await;
            if let Ok(results) = &answer {
                for (user, result) in users.iter().zip(results) {
                    if let NamedAdmission::Admitted(a) | NamedAdmission::AlreadyAdmitted(a) = result
                    {
                        seen.push((user.clone(), a.clone()));
                    }
                }
            }
            show(answer)
        }
        Op::ClearStep(limit) => show(store.clear_step(&q, *limit, now).await),
        Op::Remade {
            known_epoch,
            head,
            top,
        } => {
            // Made again as it was: over as many sub-lines.
            let shards = store.get_queue(&q).await.map_or(1, |c| c.shards);
            let deleted = show(store.delete_queue(&q).await);
            let mut config = config(now);
            config.shards = shards;
            config.adoption = Some(Adoption {
                epoch_ms: if *known_epoch { LOST_EPOCH } else { 0 },
                head: *head,
                top: *top,
            });
            format!("{deleted} {}", show(store.create_queue(&config).await))
        }
        Op::Restore {
            user: u,
            epoch,
            ticket,
            age,
            head,
            top,
        } => {
            let epoch_ms = match epoch {
                0 => match store.get_queue(&q).await {
                    Ok(config) => config.created_at_ms,
                    Err(_) => T0,
                },
                1 => LOST_EPOCH,
                _ => LOST_EPOCH - 1,
            };
            let claim = PlaceClaim {
                epoch_ms,
                ticket: *ticket,
                head: *head,
                top: *top,
                issued_ms: now.saturating_sub(*age),
            };
            let answer = store.restore(&q, &user(*u), &claim, now).await;
            if let Ok(Restoration::Restored(place)) = &answer {
                note(seen, &user(*u), place);
            }
            format!(
                "{} lost {:?}",
                show(answer),
                store.queue_lost(&q).await.ok()
            )
        }
        Op::RecreateScheduledOver(shards) => {
            let deleted = show(store.delete_queue(&q).await);
            let mut config = config(now);
            config.shards = *shards;
            config.opens_at_ms = Some(now + 30_000);
            format!("{deleted} {}", show(store.create_queue(&config).await))
        }
        Op::Recreate(scheduled) => {
            let deleted = show(store.delete_queue(&q).await);
            let mut config = config(now);
            if *scheduled {
                config.opens_at_ms = Some(now + 30_000);
            }
            format!("{deleted} {}", show(store.create_queue(&config).await))
        }
    }
}

/// What a sub-line holds of an opening draw (`DrawHold`) is the Redis
/// store's own (the memory store places a step in one step): a bound that,
/// between two whole steps, holds no ticket in line. That is checked here,
/// and the bound then left out of the comparison.
fn changes_at_rest(changes: waitroom::Result<LineChanges>) -> waitroom::Result<LineChanges> {
    changes.map(|mut changes| {
        for (_, event) in &changes.events {
            if let LineEvent::Joined { ticket, .. } = event {
                assert!(
                    !changes.summary.held.holds(*ticket),
                    "ticket {ticket} placed and held at rest: {:?}",
                    changes.summary.held
                );
            }
        }
        changes.summary.held = DrawHold::NONE;
        changes
    })
}

/// As [`changes_at_rest`], for a snapshot's tickets.
fn snapshot_at_rest(snapshot: waitroom::Result<LineSnapshot>) -> waitroom::Result<LineSnapshot> {
    snapshot.map(|mut snapshot| {
        for ticket in &snapshot.tickets {
            assert!(
                !snapshot.held.holds(*ticket),
                "ticket {ticket} in line and held at rest: {:?}",
                snapshot.held
            );
        }
        snapshot.held = DrawHold::NONE;
        snapshot
    })
}

/// A sub-line's log applied from its start (runs of newcomers included),
/// and the waiting tickets its snapshot holds; none when either cannot be
/// read whole.
async fn replayed(store: &RedisStore, sub_line: u32, now: u64) -> Option<(Vec<u64>, Vec<u64>)> {
    let q = queue();
    let changes = store
        .line_changes(&q, sub_line, 0, 10_000, now)
        .await
        .ok()?;
    let snapshot = store.line_snapshot(&q, sub_line, 0, 10_000).await.ok()?;
    if !changes.complete {
        return None;
    }
    let mut line = std::collections::BTreeSet::new();
    for (_, event) in changes.events {
        match event {
            LineEvent::Joined { ticket, .. } => {
                line.insert(ticket);
            }
            LineEvent::JoinedRun {
                first_ticket,
                count,
            } => line.extend(first_ticket..first_ticket + count),
            LineEvent::Left { ticket, .. } => {
                line.remove(&ticket);
            }
            LineEvent::PreQueueLeft { .. } => {}
        }
    }
    Some((line.into_iter().collect(), snapshot.tickets))
}

/// A runner of 96 sequences, or of `PROPTEST_CASES` for a longer hunt;
/// failing sequences are printed, shrunk, in the test output.
fn runner() -> TestRunner {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(96);
    TestRunner::new(ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    })
}

fn config(now: u64) -> QueueConfig {
    let mut config = QueueConfig::new(queue()).created(now);
    config.max_active = 2;
    config.admission_ttl = Duration::from_secs(30);
    config.heartbeat_timeout = Duration::from_secs(25);
    config.prequeue_window = Duration::from_secs(20);
    config
}

#[test]
fn random_operation_sequences_get_identical_answers_from_both_stores() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let redis = TestRedis::start();
    let mut runner = runner();
    runner
        .run(
            &(any::<bool>(), proptest::collection::vec(op(), 1..60)),
            |(scheduled, ops)| {
                runtime.block_on(async {
                    let memory = MemoryStore::new();
                    let redis_store: RedisStore = redis.store().await;
                    let mut now = T0;
                    // Admissions answered so far, for checks to name.
                    let mut seen = Vec::new();
                    // Half the sequences start before a scheduled opening, inside
                    // the pre-queue window.
                    let mut first = config(now);
                    if scheduled {
                        first.opens_at_ms = Some(now + 15_000);
                    }
                    memory.create_queue(&first).await.unwrap();
                    redis_store.create_queue(&first).await.unwrap();
                    for (step, op) in ops.iter().enumerate() {
                        now = clock_after(op, now);
                        same_answers(&memory, &redis_store, op, now, &mut seen, step).await?;
                    }
                    // The log, applied from its start, gives the line the
                    // store holds (runs of newcomers included).
                    if let Some((replayed, held)) = replayed(&redis_store, 0, now).await {
                        prop_assert_eq!(replayed, held, "the log replayed");
                    }
                    Ok(())
                })
            },
        )
        .unwrap();
}

/// The clock after `op`: moved on, or back (never before `T0`).
fn clock_after(op: &Op, now: u64) -> u64 {
    match op {
        Op::Advance(ms) => now + ms,
        Op::Rewind(ms) => now.saturating_sub(*ms).max(T0),
        _ => now,
    }
}

/// `op` at `now` gets the same answer from both stores. Both see the
/// admissions answered before this step (`seen`); the memory store's
/// answers extend them.
async fn same_answers(
    memory: &MemoryStore,
    redis_store: &RedisStore,
    op: &Op,
    now: u64,
    seen: &mut Vec<(UserId, Admission)>,
    step: usize,
) -> Result<(), TestCaseError> {
    let mut before = seen.clone();
    let expected = apply(memory, op, now, seen).await;
    let actual = apply(redis_store, op, now, &mut before).await;
    prop_assert_eq!(&actual, &expected, "step {} {:?}", step, op);
    Ok(())
}

/// Users of the sub-line sequences: enough that batches cross blocks.
const CROWD: u8 = 14;

/// The calls the Redis store serves over sub-lines, with the clock moved
/// across τ (5 ms) and τ + ε (25 ms), never back: each sub-line ends
/// lapsed admissions when a call reaches it, so a call whose clock is
/// behind one that reached another sub-line can still see an admission
/// that call's clock had ended there, where the memory store ended it for
/// the whole queue (`docs/design.md`): joins, lookups, leaves, presence,
/// the copy's reads, admission by `AdmitBatch` and by the rate, the
/// admitted completing or checked, updates of the mode, the rate,
/// `max_active`, the notice and the closing reason, clearing, the
/// reaper's passes (with the clock moved past the heartbeat, and past a
/// gap in the passes), the queue's figures, `AdmitUsers`, and a
/// scheduled opening: set, moved, cleared, at the edges of what the API
/// lets through, and its draw.
fn sub_line_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (0u8..3).prop_map(Op::DrawStep),
        1 => proptest::option::of(0u64..90_000).prop_map(Op::SetOpening),
        1 => (0u8..5).prop_map(Op::SetOpeningAtEdge),
        1 => (1u32..4).prop_map(Op::RecreateScheduledOver),
        5 => (0..CROWD).prop_map(Op::Enqueue),
        4 => proptest::collection::vec(0..CROWD, 1..12).prop_map(Op::EnqueueMany),
        3 => (0..CROWD).prop_map(Op::Leave),
        3 => (proptest::collection::vec(0..CROWD, 1..6), any::<bool>()).prop_map(|(u, t)| Op::Places(u, t)),
        1 => proptest::collection::vec(0..CROWD, 1..6).prop_map(Op::Touch),
        3 => prop_oneof![0u64..3, 4u64..7, 24u64..27, 100u64..2_000].prop_map(Op::Advance),
        2 => (0u32..3, prop_oneof![Just(0u64), 0u64..30]).prop_map(|(s, after)| Op::SubLineChanges(s, after)),
        2 => (0u32..3, prop_oneof![Just(0u64), 0u64..40], prop_oneof![Just(1u32), 1u32..6, Just(u32::MAX)])
            .prop_map(|(s, after, limit)| Op::SubLineSnapshot(s, after, limit)),
        1 => (1u32..4).prop_map(Op::RecreateOver),
        1 => prop_oneof![Just(1u32), 1u32..4, Just(u32::MAX)].prop_map(Op::ClearStep),
        2 => Just(Op::Reap),
        2 => Just(Op::Stats),
        2 => (proptest::collection::vec(0..CROWD, 1..5), 0u8..3, any::<bool>())
            .prop_map(|(users, request, over)| Op::AdmitUsers(users, request, over)),
        1 => prop_oneof![20_000u64..40_000, 59_000u64..61_000].prop_map(Op::Advance),
        1 => (1u8..24).prop_map(Op::Passes),
        3 => (1u32..5, proptest::option::of(0u8..3)).prop_map(|(n, r)| Op::Admit(n, r)),
        3 => (1u32..5).prop_map(Op::AdmitDue),
        1 => prop_oneof![
            Just(QueueMode::Queueing),
            Just(QueueMode::PassThrough),
            Just(QueueMode::Paused),
            Just(QueueMode::Closed),
        ]
        .prop_map(Op::SetMode),
        1 => (0u32..4).prop_map(Op::SetRate),
        1 => (0u32..4).prop_map(Op::SetMaxActive),
        1 => proptest::option::of(0u8..3).prop_map(Op::SetNotice),
        1 => (proptest::option::of(0u8..3), any::<bool>()).prop_map(|(r, close)| Op::CloseWith(r, close)),
        2 => (0..CROWD).prop_map(Op::Complete),
        1 => (any::<bool>(), 0u64..6, prop_oneof![Just(0u64), 0u64..20, 20u64..2_000])
            .prop_map(|(known_epoch, head, top)| Op::Remade { known_epoch, head, top }),
        3 => (
            0..CROWD,
            prop_oneof![2 => Just(0u8), 2 => Just(1u8), 1 => Just(2u8)],
            prop_oneof![Just(0u64), 1u64..16, 20u64..40, 40u64..3_000],
            prop_oneof![Just(0u64), 0u64..30_000, 31_248u64..31_253, Just(120_000)],
            prop_oneof![Just(0u64), 0u64..12],
            prop_oneof![Just(0u64), 0u64..45, 45u64..3_000],
        )
            .prop_map(|(user, epoch, ticket, age, head, top)| Op::Restore { user, epoch, ticket, age, head, top }),
        2 => (
            any::<u8>(),
            prop_oneof![4 => Just(0u8), 1 => 1u8..6],
            proptest::option::of(0u8..3),
            prop_oneof![Just(-1i64), Just(0), Just(1), -2_000i64..5_000],
        )
            .prop_map(|(pick, alter, consume, until)| Op::Check { pick, alter, consume, until }),
    ]
}

#[test]
fn sequences_over_sub_lines_get_identical_answers_from_both_stores() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let redis = TestRedis::start();
    let mut runner = runner();
    runner
        .run(
            &(
                1u32..4,
                0u32..4,
                any::<bool>(),
                any::<bool>(),
                proptest::collection::vec(sub_line_op(), 1..60),
            ),
            |(shards, rate, pass_through, scheduled, ops)| {
                runtime.block_on(over_sub_lines(
                    &redis,
                    shards,
                    rate,
                    pass_through,
                    scheduled,
                    &ops,
                ))
            },
        )
        .unwrap();
}

/// One sequence of `sequences_over_sub_lines_get_identical_answers_from_both_stores`.
async fn over_sub_lines(
    redis: &TestRedis,
    shards: u32,
    rate: u32,
    pass_through: bool,
    scheduled: bool,
    ops: &[Op],
) -> Result<(), TestCaseError> {
    let memory = MemoryStore::new();
    let redis_store = redis.store().await.with_sub_lines();
    let mut now = T0;
    let mut seen = Vec::new();
    let mut first = config(now);
    first.shards = shards;
    first.admit_per_second = rate;
    if pass_through {
        first.mode = QueueMode::PassThrough;
    }
    // Half the sequences start before a scheduled opening, inside the
    // pre-queue window.
    if scheduled {
        first.opens_at_ms = Some(now + 15_000);
    }
    memory.create_queue(&first).await.unwrap();
    redis_store.create_queue(&first).await.unwrap();
    for (step, op) in ops.iter().enumerate() {
        now = clock_after(op, now);
        if let Op::Passes(passes) = op {
            for pass in 0..*passes {
                now += 2_000;
                let expected = memory.reap(&queue(), 3, now).await.ok();
                let actual = redis_store.reap(&queue(), 3, now).await.ok();
                prop_assert_eq!(actual, expected, "step {} pass {}", step, pass);
            }
            continue;
        }
        same_answers(&memory, &redis_store, op, now, &mut seen, step).await?;
        nothing_held_at_rest(&redis_store, step).await?;
    }
    // Each sub-line's log, applied from its start, gives the sub-line's
    // waiting tickets.
    let shards = redis_store
        .get_queue(&queue())
        .await
        .map_or(1, |c| c.shards);
    for sub_line in 0..shards {
        if let Some((replayed, held)) = replayed(&redis_store, sub_line, now).await {
            prop_assert_eq!(replayed, held, "sub-line {} replayed", sub_line);
        }
    }
    Ok(())
}

/// Between whole steps, what every sub-line holds of a draw, together,
/// holds no ticket in line on any of them: a ticket no sub-line holds is
/// shown, and every step was placed on all of them.
async fn nothing_held_at_rest(store: &RedisStore, step: usize) -> Result<(), TestCaseError> {
    let Ok(config) = store.get_queue(&queue()).await else {
        return Ok(());
    };
    let mut held = DrawHold::NONE;
    let mut tickets = Vec::new();
    for sub_line in 0..config.shards.max(1) {
        if let Ok(snapshot) = store.line_snapshot(&queue(), sub_line, 0, 10_000).await {
            held = held.and(snapshot.held);
            tickets.extend(snapshot.tickets);
        }
    }
    for ticket in tickets {
        prop_assert!(
            !held.holds(ticket),
            "step {}: ticket {} in line and held at rest: {:?}",
            step,
            ticket,
            held
        );
    }
    Ok(())
}

/// Sequences the random ones found, kept.
#[test]
fn sequences_over_sub_lines_found_before_get_identical_answers() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let redis = TestRedis::start();
    let found: Vec<(u32, u32, bool, bool, Vec<Op>)> = vec![
        (
            2,
            0,
            true,
            false,
            vec![
                Op::EnqueueMany(vec![1, 2, 11]),
                Op::Enqueue(3),
                Op::SetOpeningAtEdge(4),
                Op::EnqueueMany(vec![4]),
                Op::Advance(20000),
                Op::Leave(5),
                Op::DrawStep(0),
                Op::DrawStep(0),
                Op::Admit(1, None),
                Op::Stats,
            ],
        ),
        // Someone in line before the opening, and someone pre-queued on
        // another sub-line: the opening's draw holds only its own tickets.
        (
            2,
            0,
            false,
            false,
            vec![
                Op::EnqueueMany(vec![5]),
                Op::SetOpeningAtEdge(4),
                Op::Enqueue(6),
                Op::Advance(1),
                Op::Places(vec![5], false),
            ],
        ),
    ];
    for (shards, rate, pass_through, scheduled, ops) in found {
        runtime
            .block_on(over_sub_lines(
                &redis,
                shards,
                rate,
                pass_through,
                scheduled,
                &ops,
            ))
            .unwrap();
    }
}
