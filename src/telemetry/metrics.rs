//! The process's Prometheus metrics.
//!
//! gRPC metrics carry the names and labels of go-grpc-prometheus
//! (`grpc_server_started_total`, `grpc_server_handled_total`,
//! `grpc_server_handling_seconds`), so existing dashboards work. Per-queue
//! figures (`waitroom_queue_*`) are read from the store at scrape time: they
//! are the queue's, not this replica's, and every replica reports the same
//! values, so aggregate them with `max`, not `sum`. Open watchers, token
//! verifications, rank lookups and store calls are this replica's own.

use std::sync::{LazyLock, Mutex};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::domain::{QueueId, QueueMode, QueueStats, per_second_over_window};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GrpcLabels {
    pub grpc_type: &'static str,
    pub grpc_service: &'static str,
    pub grpc_method: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GrpcCodeLabels {
    pub grpc_type: &'static str,
    pub grpc_service: &'static str,
    pub grpc_method: &'static str,
    pub grpc_code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerdictLabels {
    pub verdict: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StoreLabels {
    pub operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StoreErrorLabels {
    pub operation: &'static str,
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LookupLabels {
    /// `copy`: this replica's copy of the line; `store`: a store call.
    pub answered_by: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReceiptLabels {
    /// `answered_here` (from this replica's copy, no store call),
    /// `looked_up` (genuine, but the copy could not answer), `restored`,
    /// `lapsed`, `refused` (not genuine), `unknown_key`.
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabels {
    queue: String,
}

/// Every metric of the process.
pub struct Metrics {
    registry: Registry,
    pub grpc_started: Family<GrpcLabels, Counter>,
    pub grpc_handled: Family<GrpcCodeLabels, Counter>,
    pub grpc_handling_seconds: Family<GrpcLabels, Histogram>,
    pub token_verifications: Family<VerdictLabels, Counter>,
    pub store_seconds: Family<StoreLabels, Histogram>,
    pub store_errors: Family<StoreErrorLabels, Counter>,
    pub open_watchers: Gauge,
    pub open_connections: Gauge,
    /// 1 while this replica is ready (its store answers and is safe).
    pub ready: Gauge,
    /// The most streams this replica holds (`--max-streams`).
    pub max_streams: Gauge,
    pub rank_lookups: Family<LookupLabels, Counter>,
    pub receipts: Family<ReceiptLabels, Counter>,
    /// Declared queues this replica created again after the store lost
    /// them.
    pub queues_remade: Counter,
    /// Queues this replica's visitors watch or poll that the store lost
    /// and nobody re-made (not declared).
    pub queues_vanished: Gauge,
    /// Streams ended because their client stopped reading them, and
    /// connections closed because their socket took no bytes.
    pub stalled: Family<StalledLabels, Counter>,
    queues: std::sync::Arc<QueueSnapshot>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StalledLabels {
    /// `stream` or `connection`.
    pub what: &'static str,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    &METRICS
}

fn grpc_buckets() -> Histogram {
    // go-grpc-prometheus's default buckets.
    Histogram::new([
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ])
}

fn store_buckets() -> Histogram {
    Histogram::new([
        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
    ])
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::default();
        let grpc_started = Family::<GrpcLabels, Counter>::default();
        registry.register(
            "grpc_server_started",
            "RPCs started on the server",
            grpc_started.clone(),
        );
        let grpc_handled = Family::<GrpcCodeLabels, Counter>::default();
        registry.register(
            "grpc_server_handled",
            "RPCs completed on the server, by status code",
            grpc_handled.clone(),
        );
        let grpc_handling_seconds = Family::<GrpcLabels, Histogram>::new_with_constructor(
            grpc_buckets as fn() -> Histogram,
        );
        registry.register(
            "grpc_server_handling_seconds",
            "Time from the start of an RPC to its status, in seconds",
            grpc_handling_seconds.clone(),
        );
        let token_verifications = Family::<VerdictLabels, Counter>::default();
        registry.register(
            "waitroom_token_verifications",
            "VerifyAdmission calls on this replica, by verdict",
            token_verifications.clone(),
        );
        let store_seconds = Family::<StoreLabels, Histogram>::new_with_constructor(
            store_buckets as fn() -> Histogram,
        );
        registry.register(
            "waitroom_store_call_seconds",
            "Time of each call to the queue store (a Redis round trip), in seconds",
            store_seconds.clone(),
        );
        let store_errors = Family::<StoreErrorLabels, Counter>::default();
        registry.register(
            "waitroom_store_errors",
            "Failed calls to the queue store, by kind (unavailable, internal)",
            store_errors.clone(),
        );
        let open_watchers = Gauge::default();
        registry.register(
            "waitroom_open_watchers",
            "WatchRank streams open on this replica",
            open_watchers.clone(),
        );
        let open_connections = Gauge::default();
        registry.register(
            "waitroom_open_connections",
            "gRPC connections open on this replica",
            open_connections.clone(),
        );
        let ready = Gauge::default();
        registry.register(
            "waitroom_ready",
            "1 while this replica is ready to serve, 0 while not (its store does not answer or would lose data)",
            ready.clone(),
        );
        let max_streams = Gauge::default();
        registry.register(
            "waitroom_max_streams",
            "The most WatchRank streams this replica holds",
            max_streams.clone(),
        );
        let rank_lookups = Family::<LookupLabels, Counter>::default();
        registry.register(
            "waitroom_rank_lookups",
            "GetRank answers on this replica, by what gave them (copy: this replica's copy of the line; store)",
            rank_lookups.clone(),
        );
        let receipts = Family::<ReceiptLabels, Counter>::default();
        registry.register(
            "waitroom_receipts",
            "Place receipts brought back to this replica, by outcome (answered_here, looked_up, restored, lapsed, refused, unknown_key)",
            receipts.clone(),
        );
        let queues_remade = Counter::default();
        registry.register(
            "waitroom_queues_remade",
            "Declared queues this replica created again, with their declared settings, after the store lost them (the log names each)",
            queues_remade.clone(),
        );
        let queues_vanished = Gauge::default();
        registry.register(
            "waitroom_queues_vanished",
            "Queues watched or polled on this replica that the store lost without a DeleteQueue and that are not declared, so nothing re-makes them",
            queues_vanished.clone(),
        );
        let stalled = Family::<StalledLabels, Counter>::default();
        registry.register(
            "waitroom_stalled",
            "Streams ended because their client left a message unread for --stall-timeout, and connections closed because their socket took no bytes for that long (what: stream, connection)",
            stalled.clone(),
        );
        let queues = std::sync::Arc::new(QueueSnapshot::default());
        registry.register_collector(Box::new(std::sync::Arc::clone(&queues)));
        Self {
            registry,
            grpc_started,
            grpc_handled,
            grpc_handling_seconds,
            token_verifications,
            store_seconds,
            store_errors,
            open_watchers,
            open_connections,
            ready,
            max_streams,
            rank_lookups,
            receipts,
            queues_remade,
            queues_vanished,
            stalled,
            queues,
        }
    }

    /// Replaces the per-queue figures reported by the next encodes.
    pub fn set_queues(&self, queues: Vec<QueueFigures>) {
        if let Ok(mut current) = self.queues.queues.lock() {
            *current = queues;
        }
    }

    /// The Prometheus text exposition of everything.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

/// One queue's figures as of a scrape.
#[derive(Debug)]
pub struct QueueFigures {
    pub queue: QueueId,
    pub mode: QueueMode,
    pub stats: QueueStats,
    /// Its streams open on this replica.
    pub watchers_here: u64,
}

/// Per-queue figures as of the last scrape.
#[derive(Debug, Default)]
struct QueueSnapshot {
    queues: Mutex<Vec<QueueFigures>>,
}

impl Collector for QueueSnapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Ok(queues) = self.queues.lock() else {
            return Ok(());
        };
        type Read = fn(&QueueFigures) -> u64;
        use MetricType::{Counter as Total, Gauge as Now};
        let families: [(&str, &str, MetricType, Read); 12] = [
            (
                "waitroom_queue_admitting",
                "1 while the queue's mode admits (queueing or pass-through), 0 while paused or closed",
                Now,
                |f| {
                    u64::from(matches!(
                        f.mode,
                        QueueMode::Queueing | QueueMode::PassThrough
                    ))
                },
            ),
            (
                "waitroom_queue_waiting",
                "Users in line (waiting or pre-queued)",
                Now,
                |f| f.stats.waiting,
            ),
            (
                "waitroom_queue_active",
                "Users holding an admission",
                Now,
                |f| f.stats.active,
            ),
            (
                "waitroom_queue_prequeued",
                "Users pre-queued for a scheduled opening",
                Now,
                |f| f.stats.prequeued,
            ),
            (
                "waitroom_queue_watchers",
                "WatchRank streams of the queue open on this replica",
                Now,
                |f| f.watchers_here,
            ),
            (
                "waitroom_queue_enqueued",
                "Users given a place since the queue was created",
                Total,
                |f| f.stats.enqueued,
            ),
            (
                "waitroom_queue_admitted",
                "Admissions since the queue was created",
                Total,
                |f| f.stats.admitted,
            ),
            (
                "waitroom_queue_completed",
                "Admissions ended by CompleteAdmission",
                Total,
                |f| f.stats.completed,
            ),
            (
                "waitroom_queue_expired",
                "Admissions that reached their TTL unused",
                Total,
                |f| f.stats.expired,
            ),
            (
                "waitroom_queue_abandoned",
                "Places released for lack of a sign of life",
                Total,
                |f| f.stats.abandoned,
            ),
            (
                "waitroom_queue_left",
                "Users who left with Leave",
                Total,
                |f| f.stats.left,
            ),
            (
                "waitroom_queue_cleared",
                "Users taken out of line by ClearQueue",
                Total,
                |f| f.stats.cleared,
            ),
        ];
        for (name, help, kind, read) in families {
            let mut family = encoder.encode_descriptor(name, help, None, kind)?;
            for figures in queues.iter() {
                let labels = QueueLabels {
                    queue: figures.queue.to_string(),
                };
                let value = read(figures);
                let sample = family.encode_family(&labels)?;
                match kind {
                    MetricType::Counter => ConstCounter::new(value).encode(sample)?,
                    _ => ConstGauge::new(value as i64).encode(sample)?,
                }
            }
        }
        // The sale's figures, computed in the store so every replica reports
        // the same; a figure with nothing to measure yet is left out.
        type Figure = fn(&QueueStats) -> Option<f64>;
        let figures: [(&str, &str, Figure); 6] = [
            (
                "waitroom_queue_arrival_rate",
                "Users joining per second over the last minute",
                |s| Some(per_second_over_window(s.flow.arrived, s.flow.span_ms)),
            ),
            (
                "waitroom_queue_admission_rate",
                "Admissions from the line per second, observed over the last minute",
                |s| Some(s.rate.per_second().unwrap_or(0.0)),
            ),
            (
                "waitroom_queue_abandon_rate",
                "Waiting users released for silence per second over the last minute",
                |s| Some(per_second_over_window(s.rate.abandoned, s.flow.span_ms)),
            ),
            (
                "waitroom_queue_waited_p50_seconds",
                "Median time waited before admission, admissions of the last 5 minutes",
                |s| s.flow.waited_quantile(0.5).map(|d| d.as_secs_f64()),
            ),
            (
                "waitroom_queue_waited_p90_seconds",
                "90th percentile of the time waited before admission, last 5 minutes",
                |s| s.flow.waited_quantile(0.9).map(|d| d.as_secs_f64()),
            ),
            (
                "waitroom_queue_back_of_line_wait_seconds",
                "Estimated wait of someone joining the back of the line now",
                |s| s.rate.estimate(s.waiting + 1).map(|e| e.wait.as_secs_f64()),
            ),
        ];
        for (name, help, read) in figures {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for figures in queues.iter() {
                let Some(value) = read(&figures.stats) else {
                    continue;
                };
                let labels = QueueLabels {
                    queue: figures.queue.to_string(),
                };
                ConstGauge::new(value).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}
