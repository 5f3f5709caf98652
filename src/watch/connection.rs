//! The connection a stream travels on, as the hub sees it: how many streams
//! it carries, and whether it is closing.
//!
//! Behind a Kubernetes Service (or any layer-4 balancer) a client's streams
//! stay with the pod its connection reached, and a stream opened again on
//! the same connection reaches the same pod. So a replica that lets streams
//! go (it is stopping, the connection reached its age, or it holds more
//! than its share) closes their connection: the connection is told to go
//! away (HTTP/2 `GOAWAY`, so the client's next stream opens a new one,
//! through the Service) and the hub ends each of its streams with
//! [`Error::Reconnect`](crate::Error::Reconnect).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

pub struct StreamConnection {
    streams: AtomicUsize,
    closing: AtomicBool,
    /// Cancelled when the connection is to go away.
    leave: CancellationToken,
    /// Cancelled when the connection is gone (its socket dropped).
    gone: CancellationToken,
    opened: Instant,
}

impl Default for StreamConnection {
    fn default() -> Self {
        Self {
            streams: AtomicUsize::new(0),
            closing: AtomicBool::new(false),
            leave: CancellationToken::new(),
            gone: CancellationToken::new(),
            opened: Instant::now(),
        }
    }
}

impl StreamConnection {
    /// How long the connection has been open.
    pub fn age(&self) -> Duration {
        self.opened.elapsed()
    }

    /// Streams open on the connection.
    pub fn streams(&self) -> usize {
        self.streams.load(Ordering::Relaxed)
    }

    /// Marks the connection closing: its streams are ended by the hub, and
    /// whoever serves the connection sends `GOAWAY` (see
    /// [`StreamConnection::closed`]).
    pub fn close(&self) {
        self.closing.store(true, Ordering::Release);
        self.leave.cancel();
    }

    pub fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    /// Resolves once the connection is told to close.
    pub async fn closed(&self) {
        self.leave.cancelled().await;
    }

    /// The connection's socket was dropped: the client closed it, it
    /// failed, or the server finished with it.
    pub fn dropped(&self) {
        self.gone.cancel();
    }

    /// Resolves once the connection's socket is dropped.
    pub async fn gone(&self) {
        self.gone.cancelled().await;
    }

    pub(super) fn stream_opened(&self) {
        self.streams.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn stream_ended(&self) {
        self.streams.fetch_sub(1, Ordering::Relaxed);
    }
}
