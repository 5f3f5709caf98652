//! What a user sees of a place, compared to decide whether a stream is
//! sent a message.

use std::time::Duration;

use crate::domain::{Place, PlaceState, QueueMode, Signs};

/// What a user sees of a place; a message is sent only when it changes.
/// Kept small: there is one per open stream, and the hub keeps a queue's
/// watchers in one vector (see `docs/benchmarks.md` on its size).
#[derive(Clone, Debug)]
pub(super) struct View {
    state: Shown,
    waiting_count: u64,
    mode: QueueMode,
    estimated_wait: Option<Duration>,
    signs: Signs,
}

/// The state part of a view. The countdown to an opening is not in it: a
/// client counts down from `opens_in` itself, or every pre-queued watcher
/// would get a message every refresh; a moved opening is. Admitted and
/// closed end the stream, so what they carry is never compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Shown {
    Waiting {
        position: u64,
    },
    /// Counting down to the opening at this time (of the hub's clock),
    /// within [`Shown::OPENING_TOLERANCE_MS`].
    PreQueue {
        opens_at_ms: u64,
    },
    /// Pre-queued while the opening draw places everyone.
    Drawing,
    Admitted,
    Closed,
}

impl Shown {
    /// Two readings of one opening differ by the time between the clock
    /// readings they were computed with; a moved opening by more.
    const OPENING_TOLERANCE_MS: u64 = 1000;

    pub(super) fn of(state: &PlaceState, now_ms: u64) -> Self {
        match *state {
            PlaceState::Waiting { position } => Self::Waiting { position },
            PlaceState::PreQueue { opens_in_ms: 0 } => Self::Drawing,
            PlaceState::PreQueue { opens_in_ms } => Self::PreQueue {
                opens_at_ms: now_ms + opens_in_ms,
            },
            PlaceState::Admitted(_) => Self::Admitted,
            PlaceState::Closed => Self::Closed,
        }
    }

    pub(super) fn differs_from(self, last: Self) -> bool {
        match (self, last) {
            (Self::PreQueue { opens_at_ms: a }, Self::PreQueue { opens_at_ms: b }) => {
                a.abs_diff(b) > Self::OPENING_TOLERANCE_MS
            }
            _ => self != last,
        }
    }
}

impl View {
    pub(super) fn of(place: &Place, now_ms: u64) -> Self {
        Self {
            state: Shown::of(&place.state, now_ms),
            waiting_count: place.waiting_count,
            mode: place.mode,
            estimated_wait: place.estimated_wait(),
            signs: place.signs.clone(),
        }
    }

    /// Whether the view shows these signs; when it does, it keeps their
    /// shared text, so the next comparison does not read it.
    pub(super) fn shows_signs(&mut self, signs: &Signs) -> bool {
        if self.signs.shares(signs) {
            return true;
        }
        let same = self.signs.same_as(signs);
        if same {
            self.signs = signs.clone();
        }
        same
    }

    pub(super) fn mode(&self) -> QueueMode {
        self.mode
    }

    /// Still waiting (its position alone can change without a change of
    /// state).
    pub(super) fn is_waiting(&self) -> bool {
        matches!(self.state, Shown::Waiting { .. })
    }

    /// Anything the user sees. The position is compared on its own: with
    /// one ahead gone and one more behind, the line keeps its length and
    /// the estimate can stay while the position moves.
    pub(super) fn differs_from(&self, last: &View) -> bool {
        self.state_differs_from(last)
            || self.position() != last.position()
            || self.waiting_count != last.waiting_count
            || self.estimated_wait != last.estimated_wait
    }

    fn position(&self) -> Option<u64> {
        match self.state {
            Shown::Waiting { position } => Some(position),
            _ => None,
        }
    }

    /// A change of state: admitted, closed, a mode, a notice or closing
    /// reason, into or out of the pre-queue, a moved opening. A new position
    /// alone is not one.
    pub(super) fn state_differs_from(&self, last: &View) -> bool {
        self.mode != last.mode
            || !self.signs.same_as(&last.signs)
            || match (self.state, last.state) {
                (Shown::Waiting { .. }, Shown::Waiting { .. }) => false,
                (now, then) => now.differs_from(then),
            }
    }
}
