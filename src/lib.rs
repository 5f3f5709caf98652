//! waitroom: the queue authority behind a virtual waiting room.
//!
//! # Layout
//!
//! - [`api`]: the gRPC services. Each handler validates its request into
//!   domain types, calls the store once, and converts the answer.
//! - [`domain`]: plain types and the rules that need no store: ids, queue
//!   configuration, places, the clock, the wait estimate, the opening draw,
//!   positions from a copy of the line, receipts' places given back.
//! - [`store`]: the [`store::QueueStore`] trait and its two implementations,
//!   Redis (production) and memory (single process, and the executable
//!   specification the Redis store is tested against).
//! - [`tokens`]: signing admission tokens, the published keys (JWKS), and a
//!   [`tokens::Verifier`] a booking service can embed to check tokens
//!   offline.
//! - [`worker`]: the background work every replica does: automatic
//!   admission, the opening draw, releasing silent users.
//! - [`watch`]: the per-instance hub that pushes place changes to
//!   `WatchRank` streams.
//! - [`http`]: the plain-HTTP port (JWKS, metrics, liveness and readiness).
//! - [`config`], [`startup`], [`telemetry`]: flags, wiring, logs.
//! - `testkit` (the `testkit` feature, on for the tests and the benchmark):
//!   real parts for tests and benchmarks (a `redis-server` of its own).
//! - [`error`]: the one error type and its mapping to gRPC status.
//! - [`pb`]: the generated protobuf and gRPC code, and its codec.

pub mod api;
pub mod config;
pub mod domain;
pub mod error;
pub mod http;
pub mod pb;
pub mod startup;
pub mod store;
pub mod telemetry;
#[cfg(any(test, feature = "testkit"))]
pub mod testkit;
pub mod tokens;
pub mod watch;
pub mod worker;

pub use error::{Error, Result};
