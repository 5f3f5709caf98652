//! Where a user stands: waiting with a position, admitted, or shut out by a
//! closed queue.

use std::sync::Arc;
use std::time::Duration;

use super::{Estimate, QueueMode, RateSample, UserId};

/// What the operator tells everyone in a queue, shown with every place: a
/// notice ("Sales resume at 10:30") and, while the queue is closed, why
/// (`SOLD_OUT`, `CANCELLED`, or an operator's own reason).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Signs {
    pub notice: Option<Arc<str>>,
    pub closed_reason: Option<Arc<str>>,
}

impl Signs {
    /// Equal signs; the same text shared (as the hub shares it between
    /// refreshes) is told apart without reading it.
    pub fn same_as(&self, other: &Signs) -> bool {
        fn same(a: &Option<Arc<str>>, b: &Option<Arc<str>>) -> bool {
            match (a, b) {
                (None, None) => true,
                (Some(a), Some(b)) => Arc::ptr_eq(a, b) || a == b,
                _ => false,
            }
        }
        same(&self.notice, &other.notice) && same(&self.closed_reason, &other.closed_reason)
    }

    /// The very same texts (or none): what each stream's check per refresh
    /// finds once it shares the hub's copy, without touching the counts.
    pub fn shares(&self, other: &Signs) -> bool {
        fn shared(a: &Option<Arc<str>>, b: &Option<Arc<str>>) -> bool {
            match (a, b) {
                (None, None) => true,
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                _ => false,
            }
        }
        shared(&self.notice, &other.notice) && shared(&self.closed_reason, &other.closed_reason)
    }

    /// These signs, sharing the text of `previous` where it is unchanged.
    pub fn sharing(self, previous: &Signs) -> Signs {
        fn share(new: Option<Arc<str>>, old: &Option<Arc<str>>) -> Option<Arc<str>> {
            match (&new, old) {
                (Some(n), Some(o)) if n == o => Some(Arc::clone(o)),
                _ => new,
            }
        }
        Signs {
            notice: share(self.notice, &previous.notice),
            closed_reason: share(self.closed_reason, &previous.closed_reason),
        }
    }
}

/// A user's admission: it holds a slot until `expires_at_ms` unless
/// completed earlier.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Admission {
    pub ticket: u64,
    pub admitted_at_ms: u64,
    pub expires_at_ms: u64,
    /// The queue's `created_at_ms`: with the ticket, it makes the token id
    /// unique across a queue deleted and created again.
    pub queue_epoch_ms: u64,
}

/// The state part of a place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PlaceState {
    /// In line; `position` is 1-based.
    Waiting {
        position: u64,
    },
    Admitted(Admission),
    /// Waiting in a closed queue: the place is kept, nobody moves.
    Closed,
    /// Arrived before a scheduled opening; `opens_in_ms` is 0 while the
    /// opening draw is placing everyone.
    PreQueue {
        opens_in_ms: u64,
    },
}

/// A user's place in a queue, as of one moment.
#[derive(Clone, Debug, PartialEq)]
pub struct Place {
    pub state: PlaceState,
    /// 0 while pre-queued (the ticket comes with the opening draw).
    pub ticket: u64,
    /// The queue's `created_at_ms`: a receipt for this place names it.
    pub epoch_ms: u64,
    /// Everyone in line: waiting or pre-queued.
    pub waiting_count: u64,
    pub mode: QueueMode,
    pub rate: RateSample,
    pub signs: Signs,
}

impl Place {
    /// Admitted or closed: a watcher's stream ends with this place.
    pub fn is_final(&self) -> bool {
        matches!(self.state, PlaceState::Admitted(_) | PlaceState::Closed)
    }

    /// The wait shown to the user (see [`super::estimate`]), in whole
    /// seconds, so a steady line does not flicker by milliseconds: none
    /// unless waiting with a rate to estimate from.
    pub fn estimate(&self) -> Option<Estimate> {
        match self.state {
            PlaceState::Waiting { position } => self.rate.estimate(position),
            PlaceState::Admitted(_) | PlaceState::Closed | PlaceState::PreQueue { .. } => None,
        }
    }

    /// The point of the estimate: zero once admitted, none when closed,
    /// pre-queued or without a rate.
    pub fn estimated_wait(&self) -> Option<Duration> {
        match self.state {
            PlaceState::Admitted(_) => Some(Duration::ZERO),
            _ => self.estimate().map(|e| e.wait),
        }
    }
}

/// What admitting one named user did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NamedAdmission {
    /// Admitted by this call.
    Admitted(Admission),
    /// Held an admission already: this one.
    AlreadyAdmitted(Admission),
    /// `max_active` users hold admissions.
    NoCapacity,
}

/// A user admitted by one `AdmitBatch`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Admitted {
    pub user: UserId,
    pub admission: Admission,
}
