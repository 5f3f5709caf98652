//! The gRPC edge. Each handler has the same three steps: validate the
//! request into domain types (`validate`: `INVALID_ARGUMENT` there and
//! nowhere else), call the store once, convert the answer (`convert`).
//! Errors become statuses through the one `From<Error> for Status`.
//!
//! The services are `queue_service` (visitors and booking services) and
//! `admin_service` (operators); `auth` checks API keys, `limits` bounds a
//! request's size and the unary calls in flight, and `connection` tells a
//! call which connection it came on.

mod admin_service;
pub mod auth;
pub mod connection;
mod convert;
pub mod limits;
mod queue_service;
mod validate;

pub use admin_service::AdminApi;
pub use queue_service::QueueApi;
