//! Stopping: on SIGTERM (or whatever `stop` is), readiness turns off at
//! once while calls are still served for the drain delay, so load
//! balancers stop sending; then open streams end with `UNAVAILABLE`
//! (clients reconnect elsewhere; places are kept), calls in flight finish,
//! and after at most the shutdown timeout the process goes on to exit,
//! whatever the clients do.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::Context;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic_health::server::HealthReporter;

use super::readiness::set_ready;

/// What the shutdown sequence acts on.
pub(super) struct Drain {
    pub(super) health: HealthReporter,
    pub(super) ready: Arc<AtomicBool>,
    /// Cancelled when draining starts: readiness stops following the store.
    pub(super) draining: CancellationToken,
    /// Cancelled when open streams are to end.
    pub(super) streams_end: CancellationToken,
    pub(super) drain_delay: Duration,
    pub(super) shutdown_timeout: Duration,
}

/// The shutdown sequence for `stop`: the future the server stops on (it
/// resolves once streams are told to end and calls may finish), and the
/// wait that bounds the rest by the shutdown timeout.
pub(super) fn sequence(
    stop: impl Future<Output = ()> + Send + 'static,
    drain: Drain,
) -> (impl Future<Output = ()> + Send + 'static, Finish) {
    let Drain {
        health,
        ready,
        draining,
        streams_end,
        drain_delay,
        shutdown_timeout,
    } = drain;
    let finish = Finish {
        started: CancellationToken::new(),
        streams_end: streams_end.clone(),
        shutdown_timeout,
    };
    let started = finish.started.clone();
    let shutdown = async move {
        stop.await;
        tracing::info!(?drain_delay, "stopping: readiness off, draining");
        draining.cancel();
        set_ready(&health, &ready, false).await;
        tokio::time::sleep(drain_delay).await;
        tracing::info!("ending streams (clients reconnect elsewhere), finishing calls");
        streams_end.cancel();
        started.cancel();
    };
    (shutdown, finish)
}

/// The last step: calls in flight finish, for at most the shutdown timeout.
pub(super) struct Finish {
    started: CancellationToken,
    streams_end: CancellationToken,
    shutdown_timeout: Duration,
}

impl Finish {
    /// Waits for the server to finish, or for the shutdown timeout once the
    /// sequence reached its last step, whichever comes first.
    pub(super) async fn wait(self, serving: JoinHandle<anyhow::Result<()>>) -> anyhow::Result<()> {
        let shutdown_timeout = self.shutdown_timeout;
        let result = tokio::select! {
            result = serving => result.context("the gRPC server task failed")?.context("serving gRPC"),
            () = async {
                self.started.cancelled().await;
                tokio::time::sleep(shutdown_timeout).await;
            } => {
                tracing::warn!(?shutdown_timeout, "calls still open after the shutdown timeout; exiting anyway");
                Ok(())
            }
        };
        self.streams_end.cancel();
        result
    }
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = terminate => {}
    }
}
