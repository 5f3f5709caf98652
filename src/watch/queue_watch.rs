//! What the hub keeps per queue with watchers or pollers on this instance:
//! the streams, the copy of the line, the pollers, and what the queue's
//! task and the calls tell each other.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use tokio::sync::Notify;

use super::Watcher;
use super::lookup::{Copy, Pollers};

#[derive(Default)]
pub(super) struct QueueWatch {
    pub(super) watchers: Mutex<Vec<Watcher>>,
    /// A change was made through this instance: refresh now.
    pub(super) wake: Notify,
    /// Another instance announced a change: refresh soon (no sooner than
    /// `follow::ANNOUNCED_GAP` after the last refresh it asked for).
    pub(super) heard: Notify,
    /// Streams open on this queue, including those being refreshed.
    pub(super) open: Arc<AtomicUsize>,
    /// The copy of the line, written by the queue's task, read by lookups.
    pub(super) copy: RwLock<Copy>,
    /// Changes to the line made through this instance so far.
    pub(super) changes: AtomicU64,
    /// Reads of the line begun so far.
    pub(super) reads: AtomicU64,
    /// Refreshes completed so far (the copy caught up and watchers sent).
    pub(super) refreshed: AtomicU64,
    /// The creation time of the queue the pollers' tickets are of; 0 until
    /// the first snapshot.
    pub(super) epoch_ms: AtomicU64,
    pub(super) pollers: Mutex<Pollers>,
    /// The queue's heartbeat timeout as of the last refresh; 0 until then,
    /// and after a configuration change made here until it is read again.
    pub(super) heartbeat_ms: AtomicU64,
    /// Connections were told to close: the next refresh ends their
    /// streams, rather than the next interval.
    pub(super) connections_closing: AtomicBool,
    /// Told after each refresh that brought the copy up to date.
    pub(super) read: Notify,
    /// The line's bounds as of the last refresh, for receipts.
    pub(super) bounds: Arc<LineBounds>,
}

/// A followed line's bounds as of its last refresh (see
/// [`crate::domain::PlaceClaim`]'s head and top), read by every message a
/// stream sends: two atomics a stream holds, not a lookup of the queue.
#[derive(Debug, Default)]
pub struct LineBounds {
    head: AtomicU64,
    top: AtomicU64,
}

impl LineBounds {
    /// (head, top); zeros while the line is not known.
    pub fn get(&self) -> (u64, u64) {
        (
            self.head.load(Ordering::Relaxed),
            self.top.load(Ordering::Relaxed),
        )
    }

    pub(super) fn set(&self, (head, top): (u64, u64)) {
        self.head.store(head, Ordering::Relaxed);
        self.top.store(top, Ordering::Relaxed);
    }
}

impl QueueWatch {
    // A panic elsewhere while holding these leaves data that is still
    // whole (every update is a single assignment or insert), so a poisoned
    // lock is used as it is.
    pub(super) fn copy(&self) -> RwLockReadGuard<'_, Copy> {
        self.copy.read().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn copy_mut(&self) -> RwLockWriteGuard<'_, Copy> {
        self.copy.write().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn pollers(&self) -> std::sync::MutexGuard<'_, Pollers> {
        self.pollers.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
