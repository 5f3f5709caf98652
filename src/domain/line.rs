//! What an instance needs to follow a queue's line without asking the store
//! about each watcher: the changes to the waiting set, in order, and a
//! summary of the queue as of the last change.
//!
//! Each store keeps a log of who joined and who left the waiting set, one
//! per sub-line (one for a queue of one), numbered by its own sequence and
//! written in the same atomic step as the change itself, so the log and the
//! line never disagree. An instance takes one snapshot of each sub-line's
//! waiting tickets, then applies each log from there: a position is the
//! number of waiting tickets up to the user's, computed in memory. The
//! store's work per refresh is one read per sub-line, however many users
//! watch the queue.

use super::{Place, PlaceState, QueueMode, RateSample, UserId};

/// How many log entries a store keeps per sub-line's log; an instance
/// further behind takes a new snapshot.
pub const LINE_LOG_KEEP: u64 = 100_000;

/// A change to a queue's waiting set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LineEvent {
    /// A ticket joined the waiting set.
    Joined { ticket: u64, user: UserId },
    /// `count` newcomers joined a line with no pre-queue, one after another
    /// in one store call: tickets `first_ticket` on, one each, of one
    /// sub-line (the back of the line with one; with several, other
    /// sub-lines' blocks may hold higher tickets). Logged as one change, as a burst of arrivals is mostly such
    /// runs; the users are not logged, as a follower needs them only to
    /// place pre-queued watchers, and nobody is pre-queued then.
    JoinedRun { first_ticket: u64, count: u64 },
    /// A ticket left it: admitted, or gone (left, released).
    Left { ticket: u64, admitted: bool },
    /// A pre-queued user (no ticket yet) left or was released.
    PreQueueLeft { user: UserId },
}

/// The queue as of the last change logged in the sub-line's log read.
#[derive(Clone, Debug, PartialEq)]
pub struct LineSummary {
    /// When the queue was created: a queue created again starts a new log.
    pub epoch_ms: u64,
    /// Sequence number of the last change in the sub-line's log read.
    pub seq: u64,
    pub mode: QueueMode,
    /// Users waiting with a ticket.
    pub waiting: u64,
    /// Users pre-queued or being placed by the opening draw.
    pub prequeued: u64,
    pub opens_at_ms: Option<u64>,
    /// The opening has happened (the draw started or there was none).
    pub opened: bool,
    pub rate: RateSample,
    /// The heartbeat timeout in force: an instance follows a change of it
    /// within one refresh, so it records presence often enough.
    pub heartbeat_ms: u64,
    pub signs: super::Signs,
    /// The queue's sub-lines: above 1, a ticket below every waiting one
    /// may still be given within τ + ε, so no head is vouched for.
    pub shards: u32,
    /// The drawn tickets this sub-line cannot yet vouch are placed on
    /// every sub-line, as of `seq` (see [`DrawHold`]).
    pub held: DrawHold,
}

/// The changes after a sequence number, and the summary after them.
#[derive(Clone, Debug, PartialEq)]
pub struct LineChanges {
    pub summary: LineSummary,
    /// In order, each with its sequence number.
    pub events: Vec<(u64, LineEvent)>,
    /// False when changes the caller has not seen are no longer kept (or
    /// the queue was created again): take a new snapshot.
    pub complete: bool,
}

/// A chunk of the waiting tickets (those above a ticket, in order, up to a
/// count) as of a sequence number.
///
/// A long line is read in chunks, each a short store call taken at its own
/// moment. They join into an exact copy: take the union of the chunks and
/// apply the log from the first chunk's `seq` on. A ticket joins the line
/// once and leaves it at most once, in that order, so a change a later
/// chunk already shows is applied again harmlessly, and one it missed is in
/// the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LineSnapshot {
    /// When the queue was created (see [`LineSummary::epoch_ms`]); chunks of
    /// two creations never join.
    pub epoch_ms: u64,
    /// Where the chunk's sub-line's log stood.
    pub seq: u64,
    pub tickets: Vec<u64>,
    /// The queue's sub-lines: a follower reads each one's chunks and log.
    pub shards: u32,
    /// As [`LineSummary::held`], as of `seq`.
    pub held: DrawHold,
}

/// Tickets of an opening draw that may be placed on one sub-line and not
/// yet on another: those in `(above, through]`.
///
/// Over sub-lines a draw step places its users on each sub-line in that
/// sub-line's own call. A reader between two of them would count a drawn
/// ticket's place without the lower tickets of the same step on the
/// sub-lines not yet told, and show a position that rises once they are.
/// So each sub-line records the last ticket of the last step it placed
/// (every step is told to every sub-line, in order, and the next is
/// planned only once all placed it), and a drawn ticket is shown in line
/// only once no sub-line read at or after the reading of its place holds
/// it: until then it is shown as still being drawn, as it was a moment
/// before. One slot places a step in one call, and the memory store in
/// one step: neither holds anything.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DrawHold {
    pub above: u64,
    pub through: u64,
}

impl DrawHold {
    /// Nothing held.
    pub const NONE: Self = Self {
        above: 0,
        through: 0,
    };

    pub fn holds(self, ticket: u64) -> bool {
        ticket > self.above && ticket <= self.through
    }

    /// What either holds. The sub-lines of one draw hold up to the same
    /// last reserved ticket, so the union is one range.
    pub fn and(self, other: Self) -> Self {
        if self.through <= self.above {
            other
        } else if other.through <= other.above {
            self
        } else {
            Self {
                above: self.above.min(other.above),
                through: self.through.max(other.through),
            }
        }
    }

    /// A waiting place whose ticket is held, shown as still being drawn.
    pub fn apply(self, place: &mut Place) {
        if matches!(place.state, PlaceState::Waiting { .. }) && self.holds(place.ticket) {
            place.state = PlaceState::PreQueue { opens_in_ms: 0 };
            place.ticket = 0;
        }
    }
}
