//! Limits on what one call may send.

use http::{HeaderValue, Response};

/// Largest request message accepted. Every request of this API is a few
/// hundred bytes; anything near this is a mistake or an attack.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// tonic refuses an oversized message with `OUT_OF_RANGE`; the gRPC
/// specification (and our contract) says `RESOURCE_EXHAUSTED`. This rewrites
/// exactly that refusal, which arrives as a trailers-only response.
pub fn oversized_is_resource_exhausted<B>(mut response: Response<B>) -> Response<B> {
    let headers = response.headers_mut();
    let is_out_of_range = headers
        .get("grpc-status")
        .is_some_and(|status| status == "11");
    // The message is percent-encoded on the wire (spaces included).
    let is_too_large = headers.get("grpc-message").is_some_and(|message| {
        let message = message.as_bytes();
        message.starts_with(b"Error,%20decoded%20message%20length%20too%20large")
            || message.starts_with(b"Error, decoded message length too large")
    });
    if is_out_of_range && is_too_large {
        headers.insert("grpc-status", HeaderValue::from_static("8"));
        headers.insert(
            "grpc-message",
            HeaderValue::from_static("request message larger than the 64 KiB this service accepts"),
        );
    }
    response
}
