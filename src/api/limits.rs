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
    response
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
