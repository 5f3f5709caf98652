//! Calls that bring a receipt: answered from this instance's copy of the
//! line when it holds the ticket, and the line's bounds a receipt is
//! signed with.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::WatchHub;
use super::queue_watch::LineBounds;
use crate::domain::{Place, PlaceClaim, QueueId, UserId};

/// Longest a call with a receipt waits for a replica's first read of the
/// line it has just begun to follow, before asking the store instead:
/// well within the request timeout (10 s by default), and long enough for
/// a line of a million read while a crowd opens its pages.
const FIRST_READ_WAIT: Duration = Duration::from_secs(6);

impl WatchHub {
    /// A place from this instance's copy of the line for the holder of a
    /// receipt vouching for `claim`, when the copy follows the queue it
    /// was issued for, the ticket is in line, and the copy can answer as
    /// the store would (see [`lookup`]); no store lookup. Only for a
    /// receipt issued within half the heartbeat timeout: older ones go to
    /// the store, which records the user's presence at once. With
    /// `as_poller`, the user's later polls are answered here too.
    pub async fn receipt_place(
        &self,
        queue: &QueueId,
        user: &UserId,
        claim: &PlaceClaim,
        as_poller: bool,
        now_ms: u64,
    ) -> Option<Place> {
        if self.shutdown.is_cancelled() {
            return None;
        }
        let watch = self.followed(queue)?;
        // A replica that has just begun to follow the queue is reading
        // the line (a million tickets take a few seconds): the crowd's
        // openings wait for that read rather than each asking the store.
        if watch.heartbeat_ms.load(Ordering::Relaxed) == 0 {
            let read = async {
                loop {
                    let notified = watch.read.notified();
                    tokio::pin!(notified);
                    notified.as_mut().enable();
                    if watch.heartbeat_ms.load(Ordering::Relaxed) != 0 {
                        return;
                    }
                    notified.await;
                }
            };
            let _ = tokio::time::timeout(FIRST_READ_WAIT, read).await;
        }
        let heartbeat_ms = watch.heartbeat_ms.load(Ordering::Relaxed);
        if heartbeat_ms == 0 || now_ms.saturating_sub(claim.issued_ms) > heartbeat_ms / 2 {
            return None;
        }
        let changes = watch.changes.load(Ordering::Acquire);
        // A poll's answer is as fresh as the refresh interval; a stream's
        // first place may be older, since the stream's next refresh (which
        // compares every stream's place with the copy) brings it up to
        // date. While a crowd opens its pages the refreshes run late, and
        // a stream held to the poll's freshness would ask the store.
        let max_age_ms = match as_poller {
            true => (self.interval + self.interval / 4).as_millis() as u64,
            false => u64::MAX,
        };
        let copy = watch.copy();
        let place =
            copy.receipt_place(claim.epoch_ms, claim.ticket, changes, max_age_ms, now_ms)?;
        if as_poller {
            watch
                .pollers()
                .adopt(user, claim.ticket, claim.issued_ms, copy.read_no, now_ms);
        }
        Some(place)
    }

    /// Whether this instance's copy has the ticket a receipt vouches for in
    /// line, in the queue it was issued for.
    pub fn has_in_line(&self, queue: &QueueId, claim: &PlaceClaim) -> bool {
        self.followed(queue).is_some_and(|watch| {
            let copy = watch.copy();
            copy.summary
                .as_ref()
                .is_some_and(|s| s.epoch_ms == claim.epoch_ms)
                && copy.line.as_ref().is_some_and(|l| l.contains(claim.ticket))
        })
    }

    /// The bounds of a followed queue's line, as its streams read them;
    /// bounds that stay zero if this instance does not follow it.
    pub fn line_bounds(&self, queue: &QueueId) -> Arc<LineBounds> {
        self.followed(queue)
            .map_or_else(Arc::default, |watch| Arc::clone(&watch.bounds))
    }
}
