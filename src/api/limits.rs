//! Limits that keep one caller from starving the others: the size of a
//! request, the unary calls in flight (streams are capped by the watch hub).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tokio::sync::Semaphore;
use tonic::Status;
use tower::{Layer, Service};

use crate::Error;

/// Largest request message accepted. Every request of this API is a few
/// hundred bytes; anything near this is a mistake or an attack.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// tonic refuses an oversized message with `OUT_OF_RANGE`; the gRPC
/// specification (and our contract) says `RESOURCE_EXHAUSTED`. This replaces
/// exactly that refusal, which arrives as a trailers-only response, with
/// ours (and its `ErrorInfo`).
pub fn oversized_is_resource_exhausted(
    response: Response<tonic::body::Body>,
) -> Response<tonic::body::Body> {
    let headers = response.headers();
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
        return Status::from(Error::ResourceExhausted(
            "request message larger than the 64 KiB this service accepts".into(),
        ))
        .into_http();
    }
    if let Some(cause) = undecodable(headers) {
        return Status::from(Error::MalformedRequest(cause)).into_http();
    }
    response
}

/// tonic answers a request it cannot decode (bytes that are no message of
/// the call, a string field that is not UTF-8) with `INTERNAL`, which says
/// the fault is the server's and sets off its alerts: anyone who can reach
/// the port could. The cause, when a trailers-only response is that.
fn undecodable(headers: &http::HeaderMap) -> Option<String> {
    const PREFIX: &str = "failed to decode Protobuf message";
    let internal = headers
        .get("grpc-status")
        .is_some_and(|status| status == "13");
    let message = percent_decoded(headers.get("grpc-message")?.as_bytes());
    (internal && message.starts_with(PREFIX)).then(|| {
        message[PREFIX.len()..]
            .trim_start_matches(':')
            .trim()
            .to_owned()
    })
}

/// A `grpc-message` header as text: percent-encoded on the wire.
fn percent_decoded(bytes: &[u8]) -> String {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(high), Some(low)) => {
                out.push((high * 16 + low) as u8);
                i += 3;
            }
            (byte, _, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Refuses unary calls beyond a number in flight with `RESOURCE_EXHAUSTED`
/// at once, instead of queueing them until they time out.
#[derive(Clone)]
pub struct CallLimitLayer {
    permits: Arc<Semaphore>,
}

impl CallLimitLayer {
    pub fn new(max_in_flight: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(max_in_flight)),
        }
    }
}

impl<S> Layer<S> for CallLimitLayer {
    type Service = CallLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CallLimit {
            inner,
            permits: Arc::clone(&self.permits),
        }
    }
}

#[derive(Clone)]
pub struct CallLimit<S> {
    inner: S,
    permits: Arc<Semaphore>,
}

impl<S, B> Service<Request<B>> for CallLimit<S>
where
    S: Service<Request<B>, Response = Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let path = request.uri().path();
        let exempt = path.starts_with("/grpc.health.") || path.ends_with("/WatchRank");
        if exempt {
            return Box::pin(self.inner.call(request));
        }
        match Arc::clone(&self.permits).try_acquire_owned() {
            Ok(permit) => {
                let call = self.inner.call(request);
                Box::pin(async move {
                    let response = call.await;
                    drop(permit);
                    response
                })
            }
            Err(_) => Box::pin(async {
                Ok(Status::from(Error::ResourceExhausted(
                    "too many calls in flight on this instance; retry with backoff".into(),
                ))
                .into_http())
            }),
        }
    }
}
