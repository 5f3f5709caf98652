//! Counting open streams: on the instance (against `--max-streams`), in
//! their queue, and on their connection (for the balancer and a
//! connection's age), for as long as each stream's watcher lives.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::connection::StreamConnection;

/// Counts an open stream, on the instance, in its queue and on its
/// connection, for as long as its watcher lives.
pub(super) struct StreamSlot {
    instance: Arc<AtomicUsize>,
    queue: Arc<AtomicUsize>,
    pub(super) connection: Option<Arc<StreamConnection>>,
}

impl StreamSlot {
    /// The permit's place on the instance, now also counted in its queue
    /// and on its connection.
    pub(super) fn new(
        permit: StreamPermit,
        queue: &Arc<AtomicUsize>,
        connection: Option<Arc<StreamConnection>>,
    ) -> Self {
        queue.fetch_add(1, Ordering::Relaxed);
        if let Some(connection) = &connection {
            connection.stream_opened();
        }
        let instance = Arc::clone(&permit.instance);
        // The instance count passes to the slot, which gives it back.
        std::mem::forget(permit);
        Self {
            instance,
            queue: Arc::clone(queue),
            connection,
        }
    }

    /// The stream's connection is closing: the stream must end.
    pub(super) fn leaving(&self) -> bool {
        self.connection.as_ref().is_some_and(|c| c.is_closing())
    }
}

/// A stream counted against the instance's limit before its first place is
/// read, so concurrent openings cannot together pass the limit. Given back
/// when dropped, unless it became a stream.
pub struct StreamPermit {
    pub(super) instance: Arc<AtomicUsize>,
}

impl Drop for StreamPermit {
    fn drop(&mut self) {
        self.instance.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.instance.fetch_sub(1, Ordering::Relaxed);
        self.queue.fetch_sub(1, Ordering::Relaxed);
        if let Some(connection) = &self.connection {
            connection.stream_ended();
        }
    }
}
