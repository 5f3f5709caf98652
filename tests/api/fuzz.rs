//! A structured fuzzer: proptest makes arbitrary and adversarial field values
//! for every RPC (lengths, unicode, control characters, huge and negative
//! times and durations, empty and unknown field-mask paths, unknown enum
//! values) and sends them to a running service on Redis over gRPC. Every
//! answer must be a status the RPC documents; never `INTERNAL`, `UNKNOWN`
//! or a dropped connection (a panic).
//!
//! `WAITROOM_FUZZ_CASES` sets the cases per RPC (CI runs 64; 10,000 for a
//! real hunt, see `docs/reliability.md`).

use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestRunner};
use tonic::Code;
use waitroom::pb;

use crate::helpers::*;

fn cases() -> u32 {
    std::env::var("WAITROOM_FUZZ_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(64)
}

/// Ids that exist (so calls get past "no such queue"), look valid, or are
/// anything at all.
fn id() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop_oneof![Just("sale"), Just("open"), Just("gone")].prop_map(str::to_owned),
        2 => "[A-Za-z0-9._-]{1,64}",
        1 => "[A-Za-z0-9._-]{60,70}",
        2 => any::<String>(),
        1 => "\\PC{0,40}",
        1 => "[\\x00-\\x1f\\x7f]{1,5}",
        1 => Just(String::new()),
        1 => "x{120,140}",
        1 => "[\u{e9}\u{1f39f}]{30,70}",
    ]
}

fn user() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "u[0-9]{1,2}",
        3 => id(),
    ]
}

fn seconds() -> impl Strategy<Value = i64> {
    prop_oneof![
        Just(0),
        Just(-1),
        Just(i64::MIN),
        Just(i64::MAX),
        Just(1 << 61),
        Just(10_000_000_000_000_000),
        Just(253_402_300_799),
        Just(7_258_118_400),
        Just(7_258_118_399),
        1_700_000_000i64..1_900_000_000,
        0i64..100_000,
        any::<i64>(),
    ]
}

fn nanos() -> impl Strategy<Value = i32> {
    prop_oneof![
        Just(0),
        Just(-1),
        Just(999_999_999),
        Just(1_000_000_000),
        any::<i32>()
    ]
}

fn duration() -> impl Strategy<Value = Option<prost_types::Duration>> {
    proptest::option::of(
        (seconds(), nanos()).prop_map(|(seconds, nanos)| prost_types::Duration { seconds, nanos }),
    )
}

fn timestamp() -> impl Strategy<Value = Option<prost_types::Timestamp>> {
    proptest::option::of(
        (seconds(), nanos()).prop_map(|(seconds, nanos)| prost_types::Timestamp { seconds, nanos }),
    )
}

fn enum_value() -> impl Strategy<Value = i32> {
    prop_oneof![0i32..6, Just(-1), Just(i32::MAX), any::<i32>()]
}

fn queue_message() -> impl Strategy<Value = pb::Queue> {
    (
        (
            id(),
            enum_value(),
            any::<u32>(),
            prop_oneof![0u32..100, any::<u32>()],
        ),
        (duration(), duration(), timestamp(), timestamp(), duration()),
        (any::<String>(), any::<bool>(), notice(), closed_reason()),
        prop_oneof![0u32..=17, any::<u32>()],
    )
        .prop_map(
            |(
                (id, mode, max_active, admit_per_second),
                (admission_ttl, heartbeat_timeout, create_time, opens_at, prequeue_window),
                (draw_seed, draw_complete, notice, closed_reason),
                shards,
            )| pb::Queue {
                id,
                mode,
                max_active,
                admit_per_second,
                admission_ttl,
                heartbeat_timeout,
                create_time,
                opens_at,
                prequeue_window,
                draw_seed,
                draw_complete,
                notice,
                closed_reason,
                shards,
            },
        )
}

/// Notices at and past their length limit, with and without control
/// characters.
fn notice() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("é".repeat(280)),
        Just("é".repeat(281)),
        Just("line\nbreak".to_owned()),
        Just("sold \u{202E}tuo".to_owned()),
        Just("zero\u{200B}width".to_owned()),
        Just("line\u{2028}separator".to_owned()),
        any::<String>(),
    ]
}

fn closed_reason() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("SOLD_OUT".to_owned()),
        Just("A".repeat(64)),
        Just("A".repeat(65)),
        Just("sold_out".to_owned()),
        "[A-Z_0-9]{0,3}",
        any::<String>(),
    ]
}

fn mask() -> impl Strategy<Value = Option<prost_types::FieldMask>> {
    let path = prop_oneof![
        prop_oneof![
            Just("mode"),
            Just("max_active"),
            Just("admit_per_second"),
            Just("admission_ttl"),
            Just("heartbeat_timeout"),
            Just("opens_at"),
            Just("prequeue_window"),
            Just("notice"),
            Just("closed_reason"),
            Just("id"),
            Just("shards"),
            Just("create_time"),
            Just(""),
            Just("queue.mode"),
            Just("*"),
        ]
        .prop_map(str::to_owned),
        any::<String>(),
    ];
    proptest::option::of(
        proptest::collection::vec(path, 0..4).prop_map(|paths| prost_types::FieldMask { paths }),
    )
}

fn token() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        "[A-Za-z0-9_-]{1,40}\\.[A-Za-z0-9_-]{1,80}\\.[A-Za-z0-9_-]{1,90}",
        "eyJ[A-Za-z0-9_-]{10,60}\\.eyJ[A-Za-z0-9_-]{10,200}\\.[A-Za-z0-9_-]{86}",
        any::<String>(),
        "a{4090,4100}",
    ]
}

/// One call of each RPC, with its fields drawn at random.
#[derive(Clone, Debug)]
enum Call {
    Enqueue(String, String),
    GetRank(String, String),
    WatchRank(String, String),
    Leave(String, String),
    AdmitBatch(String, u32, String),
    Verify(String, String, bool, String),
    Complete(String, String),
    SigningKeys,
    Create(pb::Queue),
    Get(String),
    List(u32, String),
    Update(pb::Queue, Option<prost_types::FieldMask>),
    Delete(String),
    Stats(String),
}

fn call() -> impl Strategy<Value = Call> {
    prop_oneof![
        (id(), user()).prop_map(|(q, u)| Call::Enqueue(q, u)),
        (id(), user()).prop_map(|(q, u)| Call::GetRank(q, u)),
        (id(), user()).prop_map(|(q, u)| Call::WatchRank(q, u)),
        (id(), user()).prop_map(|(q, u)| Call::Leave(q, u)),
        (
            id(),
            prop_oneof![
                Just(0u32),
                1u32..20,
                Just(10_000),
                Just(10_001),
                any::<u32>()
            ],
            prop_oneof![Just(String::new()), id()]
        )
            .prop_map(|(q, n, r)| Call::AdmitBatch(q, n, r)),
        (
            id(),
            token(),
            any::<bool>(),
            prop_oneof![Just(String::new()), id()]
        )
            .prop_map(|(q, t, c, r)| Call::Verify(q, t, c, r)),
        (id(), user()).prop_map(|(q, u)| Call::Complete(q, u)),
        Just(Call::SigningKeys),
        queue_message().prop_map(Call::Create),
        id().prop_map(Call::Get),
        (
            prop_oneof![Just(0u32), 1u32..5, any::<u32>()],
            prop_oneof![Just(String::new()), any::<String>(), "[A-Za-z0-9_-]{4,30}"]
        )
            .prop_map(|(n, t)| Call::List(n, t)),
        (queue_message(), mask()).prop_map(|(q, m)| Call::Update(q, m)),
        id().prop_map(Call::Delete),
        id().prop_map(Call::Stats),
    ]
}

/// The codes each call may answer with, from the protos' error lists.
fn allowed(call: &Call, code: Code) -> bool {
    use Code::*;
    let common = matches!(code, Ok | InvalidArgument | NotFound);
    common
        || match call {
            Call::Enqueue(..) => matches!(code, FailedPrecondition),
            Call::AdmitBatch(..) => matches!(code, FailedPrecondition),
            Call::Create(_) => matches!(code, AlreadyExists),
            Call::Update(..) => matches!(code, FailedPrecondition),
            _ => false,
        }
}

async fn send(app: &TestApp, call: &Call) -> Result<(), tonic::Status> {
    let mut q = app.client().await;
    let mut a = app.admin().await;
    match call.clone() {
        Call::Enqueue(queue_id, user_id) => q
            .enqueue(pb::EnqueueRequest {
                queue_id,
                user_id,
                receipt: String::new(),
            })
            .await
            .map(drop),
        Call::GetRank(queue_id, user_id) => q
            .get_rank(pb::GetRankRequest {
                queue_id,
                user_id,
                receipt: String::new(),
            })
            .await
            .map(drop),
        Call::WatchRank(queue_id, user_id) => {
            let mut stream = q
                .watch_rank(pb::WatchRankRequest {
                    queue_id,
                    user_id,
                    receipt: String::new(),
                })
                .await?
                .into_inner();
            stream.message().await.map(drop)
        }
        Call::Leave(queue_id, user_id) => q
            .leave(pb::LeaveRequest { queue_id, user_id })
            .await
            .map(drop),
        Call::AdmitBatch(queue_id, max_count, request_id) => q
            .admit_batch(pb::AdmitBatchRequest {
                queue_id,
                max_count,
                request_id,
            })
            .await
            .map(drop),
        Call::Verify(queue_id, token, consume, request_id) => q
            .verify_admission(pb::VerifyAdmissionRequest {
                queue_id,
                token,
                consume,
                request_id,
            })
            .await
            .map(drop),
        Call::Complete(queue_id, user_id) => q
            .complete_admission(pb::CompleteAdmissionRequest { queue_id, user_id })
            .await
            .map(drop),
        Call::SigningKeys => q
            .get_signing_keys(pb::GetSigningKeysRequest {})
            .await
            .map(drop),
        Call::Create(queue) => a
            .create_queue(pb::CreateQueueRequest { queue: Some(queue) })
            .await
            .map(drop),
        Call::Get(queue_id) => a
            .get_queue(pb::GetQueueRequest { queue_id })
            .await
            .map(drop),
        Call::List(page_size, page_token) => a
            .list_queues(pb::ListQueuesRequest {
                page_size,
                page_token,
            })
            .await
            .map(drop),
        Call::Update(queue, update_mask) => a
            .update_queue(pb::UpdateQueueRequest {
                queue: Some(queue),
                update_mask,
            })
            .await
            .map(drop),
        Call::Delete(queue_id) => a
            .delete_queue(pb::DeleteQueueRequest { queue_id })
            .await
            .map(drop),
        Call::Stats(queue_id) => a
            .get_queue_stats(pb::GetQueueStatsRequest { queue_id })
            .await
            .map(drop),
    }
}

#[test]
fn arbitrary_field_values_get_a_documented_status_and_never_an_internal_error() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (app, _redis) = runtime.block_on(TestApp::on_redis());
    runtime.block_on(async {
        app.create_queue(queue("sale")).await;
        app.create_queue(pb::Queue {
            max_active: 2,
            ..queue("open")
        })
        .await;
    });
    // Cases for each of the fourteen RPCs, on average.
    let mut runner = TestRunner::new(ProptestConfig {
        cases: cases() * 14,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    runner
        .run(&call(), |call| {
            runtime.block_on(async {
                let code = match send(&app, &call).await {
                    Ok(()) => Code::Ok,
                    Err(status) => {
                        prop_assert!(
                            !status.message().is_empty() || status.code() == Code::Ok,
                            "{:?} without a message for {:?}",
                            status.code(),
                            call
                        );
                        status.code()
                    }
                };
                prop_assert!(allowed(&call, code), "{:?} answered {:?}", call, code);
                Ok(())
            })
        })
        .unwrap();
    // Still serving.
    runtime.block_on(async {
        app.wait_until_ready().await;
        app.create_queue(queue("after-the-fuzz")).await;
        let mut client = app.client().await;
        enqueue(&mut client, "after-the-fuzz", "someone").await;
    });
}
