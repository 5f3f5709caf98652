//! The link between the hub and one stream: a single place that the hub
//! overwrites and the stream takes, so a client that reads slowly skips to
//! the newest place instead of holding a queue of stale ones.
//!
//! A stream ends cleanly only after a final place (admitted, closed) or an
//! error: if the hub lets go of a stream without one, the stream ends with
//! [`Error::Reconnect`], never with an `OK` that would say "admitted or
//! closed".
//!
//! An open stream holds one for its whole life, so it is kept small: one
//! allocation shared by both ends, with the user's id in it so neither end
//! keeps a copy of its own. (tokio's `watch` channel, with its eight-way
//! notifier, and the boxed future a stream adapter needs to await it, cost
//! several hundred bytes more per stream.)

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::time::Instant;

use tokio_stream::Stream;

use crate::domain::{Place, UserId};
use crate::{Error, Result};

/// Whether the stream may end after `place`.
fn ends(place: &Result<Place>) -> bool {
    place.as_ref().map_or(true, Place::is_final)
}

struct Shared {
    user: UserId,
    /// How long a place may wait untaken before the stream counts as
    /// stalled (zero: for ever).
    stall: Duration,
    state: Mutex<State>,
}

struct State {
    latest: Option<Result<Place>>,
    /// Since when `latest` has waited: the stream takes a place within
    /// moments unless its client stopped reading (flow control holds the
    /// message before it, and the server stops taking more).
    waiting_since: Option<Instant>,
    waker: Option<Waker>,
    sender_gone: bool,
    /// A final place or an error was sent: the stream may end after it.
    ended: bool,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        // Nothing here can panic while holding the lock; a poisoned lock
        // still holds a consistent state.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The hub's end.
pub struct PlaceSender {
    shared: Arc<Shared>,
}

/// The stream's end: yields the newest place not yet taken, and ends once
/// the sender is gone and the last place was taken.
pub struct PlaceReceiver {
    shared: Arc<Shared>,
}

/// A link for `user` whose first place is `first`; a place left untaken
/// for `stall` (zero: no limit) stalls it (see [`PlaceSender::send`]).
pub fn link(user: UserId, first: Result<Place>, stall: Duration) -> (PlaceSender, PlaceReceiver) {
    let shared = Arc::new(Shared {
        user,
        stall,
        state: Mutex::new(State {
            ended: ends(&first),
            latest: Some(first),
            waiting_since: Some(Instant::now()),
            waker: None,
            sender_gone: false,
        }),
    });
    (
        PlaceSender {
            shared: Arc::clone(&shared),
        },
        PlaceReceiver { shared },
    )
}

impl PlaceSender {
    pub fn user(&self) -> &UserId {
        &self.shared.user
    }

    /// Replaces the place not yet taken; gives it back if the stream is
    /// gone, or stalled: its client left a place untaken for the stall
    /// time. Either way the hub lets go of the stream, which, if its
    /// client ever reads again, gives the place it holds and then tells
    /// it to reconnect.
    // Handing the place back is not an error path: boxing it would cost an
    // allocation on every send.
    #[allow(clippy::result_large_err)]
    pub fn send(&self, place: Result<Place>) -> std::result::Result<(), Result<Place>> {
        if self.is_closed() {
            return Err(place);
        }
        let waker = {
            let mut state = self.shared.state();
            let stall = self.shared.stall;
            if !stall.is_zero()
                && state.latest.is_some()
                && state
                    .waiting_since
                    .is_some_and(|since| since.elapsed() >= stall)
            {
                drop(state);
                crate::telemetry::metrics::metrics()
                    .stalled
                    .get_or_create(&crate::telemetry::metrics::StalledLabels { what: "stream" })
                    .inc();
                return Err(place);
            }
            // Only a limit needs the clock: no call per message without one.
            if state.latest.is_none() && !stall.is_zero() {
                state.waiting_since = Some(Instant::now());
            }
            state.ended |= ends(&place);
            state.latest = Some(place);
            state.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        Ok(())
    }

    /// The stream was dropped (the client went away).
    pub fn is_closed(&self) -> bool {
        Arc::strong_count(&self.shared) == 1
    }
}

impl Drop for PlaceSender {
    fn drop(&mut self) {
        let waker = {
            let mut state = self.shared.state();
            state.sender_gone = true;
            state.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl PlaceReceiver {
    pub fn user(&self) -> &UserId {
        &self.shared.user
    }
}

impl Stream for PlaceReceiver {
    type Item = Result<Place>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut state = self.shared.state();
        if let Some(place) = state.latest.take() {
            state.waiting_since = None;
            return Poll::Ready(Some(place));
        }
        if state.sender_gone {
            if !state.ended {
                state.ended = true;
                return Poll::Ready(Some(Err(Error::Reconnect(
                    "this server stopped watching".into(),
                ))));
            }
            return Poll::Ready(None);
        }
        match &mut state.waker {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            waker => *waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use tokio_stream::StreamExt;

    use super::*;

    fn user() -> UserId {
        UserId::parse("u").unwrap()
    }

    #[tokio::test]
    async fn the_stream_gets_the_newest_place_and_ends_after_the_sender() {
        let (tx, mut rx) = link(user(), Err(Error::Internal("first".into())), Duration::ZERO);
        assert!(matches!(rx.next().await, Some(Err(Error::Internal(m))) if m == "first"));
        tx.send(Err(Error::Internal("stale".into()))).unwrap();
        tx.send(Err(Error::Internal("newest".into()))).unwrap();
        assert!(matches!(rx.next().await, Some(Err(Error::Internal(m))) if m == "newest"));
        let waiting = tokio::spawn(async move { rx.next().await.is_none() });
        tokio::task::yield_now().await;
        drop(tx);
        assert!(waiting.await.unwrap());
    }

    #[tokio::test]
    async fn a_stream_let_go_without_a_final_place_is_told_to_reconnect() {
        let queue = crate::domain::QueueId::parse("q").unwrap();
        let mut config = crate::domain::QueueConfig::new(queue.clone());
        config.created_at_ms = 1;
        let store = crate::store::MemoryStore::new();
        use crate::store::QueueStore;
        store.create_queue(&config).await.unwrap();
        let waiting = store.enqueue(&queue, &user(), 1).await.unwrap();
        assert!(!waiting.is_final());
        let (tx, mut rx) = link(user(), Ok(waiting), Duration::ZERO);
        drop(tx);
        assert!(matches!(rx.next().await, Some(Ok(_))));
        assert!(matches!(rx.next().await, Some(Err(Error::Reconnect(_)))));
        assert!(rx.next().await.is_none());
    }

    /// A place in line (not final), from the specification store.
    async fn waiting_place() -> Place {
        use crate::store::QueueStore;
        let queue = crate::domain::QueueId::parse("q").unwrap();
        let mut config = crate::domain::QueueConfig::new(queue.clone());
        config.created_at_ms = 1;
        let store = crate::store::MemoryStore::new();
        store.create_queue(&config).await.unwrap();
        store.enqueue(&queue, &user(), 1).await.unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_place_left_unread_for_the_stall_time_stalls_the_stream() {
        let stall = Duration::from_secs(60);
        let place = waiting_place().await;
        let (tx, mut rx) = link(user(), Ok(place.clone()), stall);
        // Taken at once: the client reads.
        assert!(rx.next().await.is_some());
        tokio::time::advance(Duration::from_secs(600)).await;
        tx.send(Ok(place.clone())).unwrap();
        // Replaced while unread, within the stall time: still open.
        tokio::time::advance(Duration::from_secs(59)).await;
        tx.send(Ok(place.clone())).unwrap();
        tokio::time::advance(Duration::from_secs(1)).await;
        // A minute unread: refused, and the hub lets go.
        assert!(tx.send(Ok(place.clone())).is_err());
        drop(tx);
        // The client, reading again, gets the place held, then is told to
        // reconnect.
        assert!(matches!(rx.next().await, Some(Ok(_))));
        assert!(matches!(rx.next().await, Some(Err(Error::Reconnect(_)))));
        assert!(rx.next().await.is_none());
        // With no limit, a place may wait for ever.
        let (tx, _rx) = link(user(), Ok(place.clone()), Duration::ZERO);
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert!(tx.send(Ok(place)).is_ok());
    }

    #[test]
    fn a_dropped_stream_closes_the_sender() {
        let (tx, rx) = link(user(), Err(Error::Internal("first".into())), Duration::ZERO);
        assert!(!tx.is_closed());
        drop(rx);
        assert!(tx.is_closed());
        assert!(tx.send(Err(Error::Internal("late".into()))).is_err());
    }
}
