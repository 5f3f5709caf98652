//! Readiness: `waitroom.v1.QueueService` and the admin service follow the
//! store; liveness (the overall `""` service) never does, so a store outage
//! does not restart the process.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tonic_health::server::HealthReporter;

use crate::Error;
use crate::api::{AdminApi, QueueApi};
use crate::config::QueueSpec;
use crate::domain::{Adoption, Clock, QueueId, REMADE_TICKET_MARGIN};
use crate::pb::queue_admin_service_server::QueueAdminServiceServer;
use crate::pb::queue_service_server::QueueServiceServer;
use crate::store::QueueStore;
use crate::watch::WatchHub;

/// How long a line this instance stopped following is remembered: the
/// streams of a store outage end and come back within it.
const KNOWN_LINES_KEPT: Duration = Duration::from_secs(600);

/// How often readiness re-checks the store.
const READINESS_INTERVAL: Duration = Duration::from_secs(1);

/// Readiness follows the store: `waitroom.v1.QueueService` (and the admin
/// service) are `SERVING` while the store answers and is set up to keep
/// what it is given (a Redis that may evict keys is not), not before the
/// queues declared at start exist, and not while a queue visitors here
/// watch or poll is lost (see [`keep_queues`]). The overall `""` service,
/// liveness, stays `SERVING`: a store outage must not restart the process.
/// Stops when the service starts draining.
pub(super) async fn track_readiness(
    health: HealthReporter,
    ready_flag: Arc<AtomicBool>,
    store: Arc<dyn QueueStore>,
    clock: Arc<dyn Clock>,
    hub: Arc<WatchHub>,
    all_declared: Vec<QueueSpec>,
    draining: CancellationToken,
) {
    let mut ready = false;
    let mut problem: Option<String> = None;
    let mut declared = all_declared.clone();
    let mut vanished: Vec<QueueId> = Vec::new();
    let mut seen_missing: HashMap<QueueId, tokio::time::Instant> = HashMap::new();
    loop {
        let answers = store.ping().await.is_ok();
        if answers && !declared.is_empty() {
            declared =
                declare_queues(store.as_ref(), clock.as_ref(), declared, &mut seen_missing).await;
        }
        if answers && declared.is_empty() {
            let now_vanished = keep_queues(
                store.as_ref(),
                clock.as_ref(),
                &hub,
                &all_declared,
                &vanished,
            )
            .await;
            for queue in now_vanished.iter().filter(|q| !vanished.contains(q)) {
                tracing::error!(
                    queue = %queue,
                    "not ready: a queue visitors here watch or poll is gone from the store without a DeleteQueue, and it is not declared, so nothing re-makes it; create it again (its visitors' receipts then give their places back only if it is declared) or delete it"
                );
            }
            vanished = now_vanished;
            crate::telemetry::metrics::metrics()
                .queues_vanished
                .set(vanished.len() as i64);
        }
        // A setup that cannot be read (INFO refused) is taken as sound:
        // readiness follows what is known to be wrong, not what is unknown.
        if answers {
            let found = store.setup_problem().await.unwrap_or(None);
            if found.is_some() && found != problem {
                tracing::error!(problem = found.as_deref().unwrap_or_default(), "not ready");
            }
            problem = found;
        }
        let now_ready = answers && declared.is_empty() && problem.is_none() && vanished.is_empty();
        if now_ready != ready && !draining.is_cancelled() {
            set_ready(&health, &ready_flag, now_ready).await;
            if now_ready {
                tracing::info!("ready: the store answers");
            } else if !answers {
                tracing::warn!("not ready: the store does not answer");
            }
            ready = now_ready;
        }
        tokio::select! {
            _ = tokio::time::sleep(READINESS_INTERVAL) => {}
            _ = draining.cancelled() => return,
        }
    }
}

/// Readiness of the two waitroom services (the overall `""`, liveness, is
/// never changed), and the flag `/readyz` answers from.
pub(super) async fn set_ready(health: &HealthReporter, flag: &AtomicBool, ready: bool) {
    flag.store(ready, Ordering::Relaxed);
    crate::telemetry::metrics::metrics()
        .ready
        .set(i64::from(ready));
    if ready {
        health.set_serving::<QueueServiceServer<QueueApi>>().await;
        health
            .set_serving::<QueueAdminServiceServer<AdminApi>>()
            .await;
    } else {
        health
            .set_not_serving::<QueueServiceServer<QueueApi>>()
            .await;
        health
            .set_not_serving::<QueueAdminServiceServer<AdminApi>>()
            .await;
    }
}

/// Re-makes the declared queues the store lost, with their declared
/// settings, taking back the lost line's places from receipts
/// ([`Adoption`]) as far as this instance knew it; a queue deleted by
/// `DeleteQueue` stays deleted until the service starts again. A queue
/// visitors here followed that the store lost in part (the head of a queue
/// over sub-lines, its sub-lines standing) is made again from the rest,
/// declared or not. Returns the queues visitors here followed that the
/// store lost, that are not declared and that nothing was left to make
/// again from: nothing re-makes those.
async fn keep_queues(
    store: &dyn QueueStore,
    clock: &dyn Clock,
    hub: &WatchHub,
    declared: &[QueueSpec],
    previously: &[QueueId],
) -> Vec<QueueId> {
    for spec in declared {
        if !matches!(store.queue_lost(&spec.id).await, Ok(true)) {
            continue;
        }
        let known = hub.known_line(&spec.id);
        let (epoch_ms, head, top) = known.map_or((0, 0, 0), |l| (l.epoch_ms, l.head, l.top));
        let mut config = spec.config(clock.now_ms());
        config.adoption = Some(Adoption {
            epoch_ms,
            head,
            top: match top {
                0 => 0,
                top => top + REMADE_TICKET_MARGIN,
            },
        });
        match store.create_queue(&config).await {
            // Only its head was lost (`QueueStore::create_queue`): it goes
            // on as it was, of its own epoch.
            Ok(made) if made.created_at_ms != config.created_at_ms => {
                crate::telemetry::metrics::metrics().queues_remade.inc();
                tracing::warn!(
                    queue = %spec.id,
                    "a declared queue's head was gone from the store while its sub-lines stood: made again from them, everyone in their place"
                );
                hub.forget_line(&spec.id);
            }
            Ok(_) => {
                crate::telemetry::metrics::metrics().queues_remade.inc();
                tracing::warn!(
                    queue = %spec.id,
                    lost_epoch_ms = epoch_ms,
                    head,
                    top,
                    "a declared queue was gone from the store (a Redis back empty, or failed over without it): re-made with its declared settings; visitors' receipts give their places back"
                );
                hub.forget_line(&spec.id);
            }
            // Another replica re-made it first.
            Err(Error::QueueAlreadyExists(_)) => hub.forget_line(&spec.id),
            Err(error) => {
                tracing::warn!(queue = %spec.id, %error, "cannot re-make a lost declared queue yet")
            }
        }
    }
    // A vanished queue stays so until it is created or deleted, however
    // long ago this instance last followed it.
    let mut candidates: Vec<(QueueId, bool)> =
        previously.iter().map(|q| (q.clone(), false)).collect();
    for (queue, _, followed) in hub.known_lines(KNOWN_LINES_KEPT) {
        if !previously.contains(&queue) {
            candidates.push((queue, followed));
        }
    }
    let mut vanished = Vec::new();
    for (queue, followed) in candidates {
        if declared.iter().any(|d| d.id == queue) {
            continue;
        }
        match store.queue_lost(&queue).await {
            // Lost in part (a head alone, its sub-lines standing): made
            // again from the rest, as it was.
            Ok(true) => match remake_from_parts(store, hub, &queue, clock.now_ms()).await {
                Ok(Some(_)) => {
                    crate::telemetry::metrics::metrics().queues_remade.inc();
                    tracing::warn!(
                        %queue,
                        "a queue's head was gone from the store while its sub-lines stood: made again from them, everyone in their place"
                    );
                    hub.forget_line(&queue);
                }
                _ => vanished.push(queue),
            },
            // Deleted, or there: remembered only while followed.
            Ok(false) if !followed => hub.forget_line(&queue),
            Ok(false) => {}
            Err(_) if previously.contains(&queue) => vanished.push(queue),
            Err(_) => {}
        }
    }
    vanished
}

/// [`QueueStore::remake_from_parts`] of the queue as this instance knew it
/// (its epoch): nothing when it knew none.
async fn remake_from_parts(
    store: &dyn QueueStore,
    hub: &WatchHub,
    queue: &QueueId,
    now_ms: u64,
) -> crate::Result<Option<crate::domain::QueueConfig>> {
    match hub.known_line(queue) {
        Some(known) => store.remake_from_parts(queue, known.epoch_ms, now_ms).await,
        None => Ok(None),
    }
}

/// How long a starting instance leaves a declared queue that may have
/// been lost to the replicas that saw its line, before making it itself.
const LOST_QUEUE_GRACE: Duration = Duration::from_secs(2);

/// Creates the declared queues that do not exist yet; existing ones keep
/// their current settings, so a restart never undoes an operator's switch.
/// Returns those still to do (the store failed).
///
/// A declared queue missing with no mark of a deletion may have been lost
/// (a Redis back empty while this instance started). Replicas that were
/// running re-make such a queue with what they saw of its line within a
/// readiness interval of the store answering (see [`keep_queues`]), so
/// this instance leaves it to them for [`LOST_QUEUE_GRACE`] first; then it
/// makes it ready to take its lost line back from receipts, of whichever
/// earlier queue the first receipt shows, as a re-made queue whose line
/// nobody saw (on a first start, nobody did).
async fn declare_queues(
    store: &dyn QueueStore,
    clock: &dyn Clock,
    declared: Vec<QueueSpec>,
    seen_missing: &mut HashMap<QueueId, tokio::time::Instant>,
) -> Vec<QueueSpec> {
    let mut left = Vec::new();
    for spec in declared {
        let mut config = spec.config(clock.now_ms());
        if matches!(store.queue_lost(&spec.id).await, Ok(true)) {
            let first = *seen_missing
                .entry(spec.id.clone())
                .or_insert_with(tokio::time::Instant::now);
            if first.elapsed() < LOST_QUEUE_GRACE {
                left.push(spec);
                continue;
            }
            config.adoption = Some(Adoption::default());
        }
        match store.create_queue(&config).await {
            Ok(_) => tracing::info!(queue = %spec.id, "declared queue created"),
            Err(Error::QueueAlreadyExists(_)) => tracing::info!(
                queue = %spec.id,
                "declared queue exists; its current settings are kept"
            ),
            Err(error) => {
                tracing::warn!(queue = %spec.id, %error, "cannot create declared queue yet");
                left.push(spec);
            }
        }
    }
    left
}
