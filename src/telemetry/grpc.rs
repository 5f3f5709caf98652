//! One tower layer around every gRPC call: a span whose parent is the
//! caller's W3C `traceparent`, and the go-grpc-prometheus metrics. The
//! status code is read where gRPC puts it (the headers of a trailers-only
//! response, or the trailers at the end of the body), so streams are
//! measured to their end; a call the client abandons counts as `Canceled`.
//! Health checks are measured but not traced, so probes do not flood the
//! trace store.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use http::{HeaderMap, Request, Response};
use http_body::{Body, Frame};
use opentelemetry::propagation::Extractor;
use tower::{Layer, Service};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::metrics::{GrpcCodeLabels, GrpcLabels, metrics};

#[derive(Clone, Copy, Debug, Default)]
pub struct ObserveLayer;

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Observe { inner }
    }
}

#[derive(Clone, Debug)]
pub struct Observe<S> {
    inner: S,
}

/// `service` and `method` of a gRPC path `/package.Service/Method`, from
/// the closed set of methods this server has; anything else (a made-up
/// path from anyone who can reach the port) is `unknown`/`unknown`, so the
/// metrics' label sets cannot grow with what callers send.
fn split_path(path: &str) -> (&'static str, &'static str) {
    known_methods()
        .get(path)
        .copied()
        .unwrap_or(("unknown", "unknown"))
}

/// Every method served: this crate's services (from their descriptors, so
/// the set follows the protos), health and reflection.
fn known_methods() -> &'static std::collections::HashMap<String, (&'static str, &'static str)> {
    use prost::Message;
    static KNOWN: std::sync::OnceLock<
        std::collections::HashMap<String, (&'static str, &'static str)>,
    > = std::sync::OnceLock::new();
    KNOWN.get_or_init(|| {
        let mut pairs: Vec<(String, String)> = vec![
            ("grpc.health.v1.Health".into(), "Check".into()),
            ("grpc.health.v1.Health".into(), "Watch".into()),
            (
                "grpc.reflection.v1.ServerReflection".into(),
                "ServerReflectionInfo".into(),
            ),
            (
                "grpc.reflection.v1alpha.ServerReflection".into(),
                "ServerReflectionInfo".into(),
            ),
        ];
        if let Ok(set) = prost_types::FileDescriptorSet::decode(crate::pb::FILE_DESCRIPTOR_SET) {
            for file in set.file {
                let package = file.package.unwrap_or_default();
                for service in file.service {
                    let service_name = format!("{package}.{}", service.name.unwrap_or_default());
                    for method in service.method {
                        pairs.push((service_name.clone(), method.name.unwrap_or_default()));
                    }
                }
            }
        }
        // Leaked once: a few dozen names for the life of the process.
        pairs
            .into_iter()
            .map(|(service, method)| {
                let path = format!("/{service}/{method}");
                let service: &'static str = Box::leak(service.into_boxed_str());
                let method: &'static str = Box::leak(method.into_boxed_str());
                (path, (service, method))
            })
            .collect()
    })
}

fn grpc_type(service: &str, method: &str) -> &'static str {
    match (service, method) {
        (_, "WatchRank") | ("grpc.health.v1.Health", "Watch") => "server_stream",
        (s, _) if s.starts_with("grpc.reflection.") => "bidi_stream",
        _ => "unary",
    }
}

/// The names go-grpc-prometheus gives the codes.
fn code_name(code: &[u8]) -> &'static str {
    match code {
        b"0" => "OK",
        b"1" => "Canceled",
        b"2" => "Unknown",
        b"3" => "InvalidArgument",
        b"4" => "DeadlineExceeded",
        b"5" => "NotFound",
        b"6" => "AlreadyExists",
        b"7" => "PermissionDenied",
        b"8" => "ResourceExhausted",
        b"9" => "FailedPrecondition",
        b"10" => "Aborted",
        b"11" => "OutOfRange",
        b"12" => "Unimplemented",
        b"13" => "Internal",
        b"14" => "Unavailable",
        b"15" => "DataLoss",
        b"16" => "Unauthenticated",
        _ => "Unknown",
    }
}

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Observe<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = Response<ObservedBody<ResBody>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let (service, method) = split_path(request.uri().path());
        let labels = GrpcLabels {
            grpc_type: grpc_type(service, method),
            grpc_service: service,
            grpc_method: method,
        };
        metrics().grpc_started.get_or_create(&labels).inc();
        let span = if labels.grpc_service == "grpc.health.v1.Health" {
            tracing::Span::none()
        } else {
            let span = tracing::info_span!(
                "grpc.request",
                otel.name = %format_args!("{}/{}", labels.grpc_service, labels.grpc_method),
                otel.kind = "server",
                rpc.system = "grpc",
                rpc.service = %labels.grpc_service,
                rpc.method = %labels.grpc_method,
                rpc.grpc.status_code = tracing::field::Empty,
            );
            let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
                propagator.extract(&HeaderExtractor(request.headers()))
            });
            let _ = span.set_parent(parent);
            span
        };
        let observer = Observer {
            labels,
            started: Instant::now(),
            span: span.clone(),
            done: false,
        };
        let call = self.inner.call(request).instrument(span);
        Box::pin(async move {
            let response = call.await?;
            let (parts, body) = response.into_parts();
            let mut observer = Some(observer);
            if let Some(code) = parts.headers.get("grpc-status")
                && let Some(mut done) = observer.take()
            {
                done.finish(code.as_bytes());
            }
            Ok(Response::from_parts(
                parts,
                ObservedBody {
                    inner: body,
                    observer,
                },
            ))
        })
    }
}

/// Records an RPC's end once.
struct Observer {
    labels: GrpcLabels,
    started: Instant,
    span: tracing::Span,
    done: bool,
}

impl Observer {
    fn finish(&mut self, code: &[u8]) {
        if self.done {
            return;
        }
        self.done = true;
        let name = code_name(code);
        self.span.record("rpc.grpc.status_code", name);
        let m = metrics();
        m.grpc_handling_seconds
            .get_or_create(&self.labels)
            .observe(self.started.elapsed().as_secs_f64());
        m.grpc_handled
            .get_or_create(&GrpcCodeLabels {
                grpc_type: self.labels.grpc_type,
                grpc_service: self.labels.grpc_service,
                grpc_method: self.labels.grpc_method,
                grpc_code: name,
            })
            .inc();
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        // The body went away before the status: the client gave up.
        self.finish(b"1");
    }
}

pin_project_lite::pin_project! {
    /// A response body that reports the call's status when it is sent.
    pub struct ObservedBody<B> {
        #[pin]
        inner: B,
        observer: Option<Observer>,
    }
}

impl<B: Body> Body for ObservedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(|t| t.get("grpc-status"))
                    && let Some(mut observer) = this.observer.take()
                {
                    observer.finish(code.as_bytes());
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(mut observer) = this.observer.take() {
                    observer.finish(b"13");
                }
            }
            Poll::Ready(None) => {
                // Ended without a status: an OK stream whose trailers came
                // in a frame already seen would have been taken.
                if let Some(mut observer) = this.observer.take() {
                    observer.finish(b"2");
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use axum::body::Bytes;
    use http_body_util::Empty;
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_sdk::propagation::TraceContextPropagator;
    use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    fn request(path: &str, traceparent: Option<&str>) -> Request<()> {
        let mut builder = Request::builder().uri(format!("http://localhost{path}"));
        if let Some(parent) = traceparent {
            builder = builder.header("traceparent", parent);
        }
        builder.body(()).unwrap()
    }

    #[test]
    fn a_callers_traceparent_parents_the_request_span_and_health_checks_are_not_traced() {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        tracing::subscriber::with_default(subscriber, || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            runtime.block_on(async {
                let mut service = ObserveLayer.layer(tower::service_fn(|_: Request<()>| async {
                    Ok::<_, Infallible>(
                        Response::builder()
                            .header("grpc-status", "5")
                            .body(Empty::<Bytes>::new())
                            .unwrap(),
                    )
                }));
                let traced = request(
                    "/waitroom.v1.QueueService/GetRank",
                    Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
                );
                drop(service.call(traced).await.unwrap());
                let probe = request("/grpc.health.v1.Health/Check", None);
                drop(service.call(probe).await.unwrap());
            });
        });
        let _ = provider.force_flush();
        let spans = exporter.get_finished_spans().unwrap();
        assert_eq!(
            spans.len(),
            1,
            "one span, none for the health check: {spans:?}"
        );
        let span = &spans[0];
        assert_eq!(span.name, "waitroom.v1.QueueService/GetRank");
        assert_eq!(
            span.span_context.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(span.parent_span_id.to_string(), "00f067aa0ba902b7");
        let status = span
            .attributes
            .iter()
            .find(|kv| kv.key.as_str() == "rpc.grpc.status_code")
            .map(|kv| kv.value.to_string());
        assert_eq!(status.as_deref(), Some("NotFound"));
    }
}
