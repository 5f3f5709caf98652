//! Raw bytes for every RPC: invalid UTF-8 in string fields, truncated
//! varints and lengths, wrong wire types, and random bytes, sent as the
//! request message over a real gRPC connection. What the service cannot
//! decode is `INVALID_ARGUMENT` with reason `MALFORMED_REQUEST`; whatever
//! decodes gets the RPC's own answer. Never `INTERNAL` (which says the
//! fault is the server's and sets off its alerts), `UNKNOWN`, or a dropped
//! connection.
//!
//! `WAITROOM_RAW_FUZZ_CASES` sets the cases per RPC (CI runs 300; 10,000
//! for a real hunt, see `docs/reliability.md`).

use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestRunner};
use prost::bytes::{Buf, BufMut};
use tonic::Code;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic_types::StatusExt;

use crate::helpers::*;

const UNARY: &[&str] = &[
    "/waitroom.v1.QueueAdminService/CreateQueue",
    "/waitroom.v1.QueueAdminService/GetQueue",
    "/waitroom.v1.QueueAdminService/ListQueues",
    "/waitroom.v1.QueueAdminService/UpdateQueue",
    "/waitroom.v1.QueueAdminService/DeleteQueue",
    "/waitroom.v1.QueueAdminService/GetQueueStats",
    "/waitroom.v1.QueueAdminService/ClearQueue",
    "/waitroom.v1.QueueService/Enqueue",
    "/waitroom.v1.QueueService/GetRank",
    "/waitroom.v1.QueueService/Leave",
    "/waitroom.v1.QueueService/AdmitBatch",
    "/waitroom.v1.QueueService/AdmitUsers",
    "/waitroom.v1.QueueService/CloseQueue",
    "/waitroom.v1.QueueService/VerifyAdmission",
    "/waitroom.v1.QueueService/CompleteAdmission",
    "/waitroom.v1.QueueService/GetSigningKeys",
];

const STREAMING: &str = "/waitroom.v1.QueueService/WatchRank";

fn cases() -> u32 {
    std::env::var("WAITROOM_RAW_FUZZ_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(300)
}

/// Sends and receives message bytes as they are.
#[derive(Clone, Default)]
struct Raw;

impl Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        let mut out = vec![0; src.remaining()];
        src.copy_to_slice(&mut out);
        Ok(Some(out))
    }
}

/// One piece of a hostile message: a field with a string that is not
/// UTF-8, a varint or length cut short, a wire type the field does not
/// have, a huge length, or plain random bytes.
fn piece() -> impl Strategy<Value = Vec<u8>> {
    let not_utf8 = prop_oneof![
        Just(vec![0xff, 0xfe]),
        Just(vec![0xc0, 0x80]),
        Just(vec![0xed, 0xa0, 0x80]),
        Just(b"ok\xf5\x80".to_vec()),
    ];
    prop_oneof![
        (1u8..6, not_utf8).prop_map(|(field, bytes)| {
            let mut piece = vec![field << 3 | 2, bytes.len() as u8];
            piece.extend(bytes);
            piece
        }),
        (1u8..6).prop_map(|field| vec![field << 3, 0xff, 0xff]),
        (1u8..6, 2u8..60).prop_map(|(field, claimed)| vec![field << 3 | 2, claimed, b'a']),
        (
            1u8..6,
            prop_oneof![Just(1u8), Just(5), Just(3), Just(4), Just(6), Just(7)]
        )
            .prop_map(|(field, wire)| vec![field << 3 | wire, 1, 2, 3, 4, 5, 6, 7, 8]),
        (1u8..6).prop_map(|field| vec![field << 3 | 2, 0xff, 0xff, 0xff, 0xff, 0x0f]),
        proptest::collection::vec(any::<u8>(), 0..48),
    ]
}

fn message() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(piece(), 1..4).prop_map(|pieces| pieces.concat())
}

fn check(status: &tonic::Status, path: &str, bytes: &[u8]) -> Result<(), TestCaseError> {
    prop_assert!(
        !matches!(status.code(), Code::Internal | Code::Unknown),
        "{path} {bytes:02x?}: {status:?}"
    );
    if status.code() == Code::InvalidArgument
        && let Some(info) = status.get_error_details().error_info()
    {
        prop_assert!(
            ["MALFORMED_REQUEST", "INVALID_ARGUMENT"].contains(&info.reason.as_str()),
            "{path}: {info:?}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_bytes_to_every_rpc_are_never_an_internal_error() {
    let app = TestApp::on_memory().await;
    app.create_queue(queue("sale")).await;
    let channel = app.channel().await;
    let handle = tokio::runtime::Handle::current();
    let mut malformed = 0u64;
    for path in UNARY.iter().copied().chain([STREAMING]) {
        let mut runner = TestRunner::new(ProptestConfig {
            cases: cases(),
            failure_persistence: None,
            ..ProptestConfig::default()
        });
        let channel = channel.clone();
        let counted = tokio::task::block_in_place(|| {
            let counted = std::cell::Cell::new(0u64);
            runner
                .run(&message(), |bytes| {
                    let (channel, sent) = (channel.clone(), bytes.clone());
                    let status = handle.block_on(async move {
                        let mut grpc = tonic::client::Grpc::new(channel);
                        grpc.ready().await.expect("the connection is up");
                        let route = http::uri::PathAndQuery::from_static(path);
                        if path == STREAMING {
                            grpc.server_streaming(tonic::Request::new(sent), route, Raw)
                                .await
                                .map(drop)
                                .err()
                        } else {
                            grpc.unary(tonic::Request::new(sent), route, Raw)
                                .await
                                .map(drop)
                                .err()
                        }
                    });
                    if let Some(status) = status {
                        if status
                            .get_error_details()
                            .error_info()
                            .is_some_and(|i| i.reason == "MALFORMED_REQUEST")
                        {
                            counted.set(counted.get() + 1);
                        }
                        check(&status, path, &bytes)?;
                    }
                    Ok(())
                })
                .unwrap_or_else(|e| panic!("{e}"));
            counted.get()
        });
        malformed += counted;
    }
    // Most of what is sent cannot be decoded, and each was told so.
    assert!(malformed > u64::from(cases()) * 4, "{malformed}");
    // Still serving.
    let mut client = app.client().await;
    assert_eq!(enqueue(&mut client, "sale", "after").await.ticket, 1);
    app.stop().await;
}
