//! The gRPC edge. Each handler has the same three steps: validate the
//! request into domain types (`INVALID_ARGUMENT` here and nowhere else),
//! call the store once, convert the answer. Errors become statuses through
//! the one `From<Error> for Status`.

mod admin_service;
pub mod auth;
pub mod codec;
mod convert;
pub mod limits;
mod queue_service;

pub use admin_service::AdminApi;
pub use queue_service::QueueApi;
