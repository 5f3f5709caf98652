//! Logs, traces and metrics.
//!
//! - Logs: `tracing`, level from `RUST_LOG` (default `info`), text for people
//!   or JSON for log pipelines.
//! - Traces: exported with OTLP over gRPC when the standard
//!   `OTEL_EXPORTER_OTLP_ENDPOINT` is set (`OTEL_SERVICE_NAME` names the
//!   service); a caller's W3C `traceparent` becomes the parent of the
//!   request's span ([`grpc`]).
//! - Metrics: Prometheus text at `/metrics` on the HTTP port ([`metrics`]).

pub mod grpc;
pub mod metrics;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::LogFormat;

/// Flushes and stops trace export when dropped: keep it alive until exit.
#[must_use = "traces are flushed when the guard is dropped"]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl TelemetryGuard {
    /// Sends the spans still buffered.
    pub fn flush(&self) {
        if let Some(provider) = &self.provider
            && let Err(error) = provider.force_flush()
        {
            tracing::warn!(%error, "flushing traces failed");
        }
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(error) = provider.shutdown()
        {
            eprintln!("stopping trace export failed: {error}");
        }
    }
}

/// Installs the global subscriber and, when configured, trace export. Safe
/// to call more than once (tests): the first call wins.
pub fn init(format: LogFormat) -> TelemetryGuard {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let provider = match std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT") {
        Ok(endpoint) if !endpoint.is_empty() => match otlp_provider() {
            Ok(provider) => Some(provider),
            Err(error) => {
                eprintln!("OTLP trace export to {endpoint} is off: {error}");
                None
            }
        },
        _ => None,
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let otel = provider
        .as_ref()
        .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer("waitroom")));
    let registry = tracing_subscriber::registry().with(filter).with(otel);
    let _ = match format {
        LogFormat::Text => registry.with(tracing_subscriber::fmt::layer()).try_init(),
        LogFormat::Json => registry
            .with(tracing_subscriber::fmt::layer().json())
            .try_init(),
    };
    if provider.is_some() {
        tracing::info!("exporting traces with OTLP");
    }
    TelemetryGuard { provider }
}

/// Batch export over OTLP/gRPC; endpoint, headers and service name come
/// from the standard `OTEL_*` variables.
fn otlp_provider() -> Result<SdkTracerProvider, String> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .build()
        .map_err(|e| e.to_string())?;
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .build())
}
