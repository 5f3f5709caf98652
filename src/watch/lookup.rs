//! `GetRank` answered from the hub's copy of the line.
//!
//! A crowd that polls its place would otherwise cost the store one lookup
//! per poll. The copy the hub keeps for its watchers already knows every
//! waiting ticket's position as of the last refresh, which is as fresh as
//! the contract asks; what it lacks is which ticket a user holds. The first
//! lookup of a user goes to the store and the hub remembers the ticket
//! (a *poller*); later ones are answered here while that ticket is in line.
//! A poll is still a sign of life: at each refresh the hub records the
//! pollers it answered since the last whose recorded sign is a quarter of
//! the heartbeat timeout old, in one store write for all of them (the store
//! releases a place only after the timeout and that quarter more), so a
//! crowd polling every few seconds costs the store one write per user every
//! half minute, not one per poll.
//!
//! The copy answers only when it can answer as the store would:
//! - it is caught up with the log as of a read begun within the refresh
//!   interval (a quarter more for the read itself), and no older than the
//!   user's previous answer, the store's too, so a poller never sees time
//!   go back (a position rise after it fell);
//! - it is of the queue as created now (a queue created again drops the
//!   copy and every poller);
//! - no change was made through this instance since that read began
//!   (leave, admission, completion, reaping, a new mode or config: each
//!   nudges the hub), so a client sees its own writes at once;
//! - the queue is not in pass-through, where a lookup admits;
//! - the user's presence was recorded within half the heartbeat timeout,
//!   so a poll not yet recorded can never be the one that would have kept
//!   the place (older ones go to the store, which records at once).
//!
//! Changes made through other replicas reach the copy with the next
//! refresh, as they reach watchers.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::line::Line;
use crate::domain::{LineSummary, Place, PlaceState, QueueConfig, QueueMode, UserId};

/// A poller not heard from for this long, or for as long as the store
/// takes to release a silent user if that is longer, is forgotten (once its
/// polls are recorded); its next lookup goes to the store. A crowd spread
/// over many replicas polls each one seldom: remembered until it would be
/// released anyway, it is still answered here.
const POLLER_IDLE_MS: u64 = 60_000;

/// The hub's copy of a queue's line and the summary read with it.
#[derive(Default)]
pub(super) struct Copy {
    pub(super) line: Option<Line>,
    pub(super) summary: Option<LineSummary>,
    /// When the read the copy is caught up with began, by the service's
    /// clock (what the summary's rate is computed for) and by the machine's.
    pub(super) read_ms: u64,
    pub(super) read_at: Option<Instant>,
    /// The number of that read among the queue's reads (see [`Poller`]).
    pub(super) read_no: u64,
    /// The count of local changes before that read began; `None` while the
    /// copy is not caught up.
    pub(super) changes_seen: Option<u64>,
}

impl Copy {
    pub(super) fn reset(&mut self) {
        *self = Self::default();
    }

    /// A poller's place, if this copy can give it (see the module docs).
    fn place(&self, poller: &Poller, changes: u64, max_age_ms: u64, now_ms: u64) -> Option<Place> {
        self.ticket_place(poller.ticket, poller.min_read, changes, max_age_ms, now_ms)
    }

    /// The place of the holder of a receipt for `ticket` of the queue
    /// created at `epoch_ms`, if this copy can give it as it would a
    /// poller's.
    pub(super) fn receipt_place(
        &self,
        epoch_ms: u64,
        ticket: u64,
        changes: u64,
        max_age_ms: u64,
        now_ms: u64,
    ) -> Option<Place> {
        if self.summary.as_ref()?.epoch_ms != epoch_ms {
            return None;
        }
        self.ticket_place(ticket, 0, changes, max_age_ms, now_ms)
    }

    fn ticket_place(
        &self,
        ticket: u64,
        min_read: u64,
        changes: u64,
        max_age_ms: u64,
        now_ms: u64,
    ) -> Option<Place> {
        let fresh = max_age_ms == u64::MAX
            || (now_ms.saturating_sub(self.read_ms) <= max_age_ms
                && self
                    .read_at
                    .is_some_and(|at| at.elapsed() <= Duration::from_millis(max_age_ms)));
        if self.changes_seen != Some(changes) || !fresh || self.read_no < min_read {
            return None;
        }
        let summary = self.summary.as_ref()?;
        if summary.mode == QueueMode::PassThrough {
            return None;
        }
        self.line.as_ref()?.place(summary, ticket)
    }
}

pub(super) struct Poller {
    ticket: u64,
    seen_ms: u64,
    /// The first read of the line that is no older than its last answer:
    /// the read that answered it, or, after the store answered, the first
    /// read begun after that answer came back. (Read numbers, not clock
    /// readings, so two in the same millisecond are told apart.)
    min_read: u64,
    /// When its presence was last recorded in the store.
    recorded_ms: u64,
    /// Answered here since its presence was last recorded.
    unrecorded: bool,
}

#[derive(Default)]
pub(super) struct Pollers {
    known: HashMap<UserId, Poller>,
    /// The users whose `unrecorded` is set, so a refresh takes them without
    /// reading every poller (a million of them, in a large sale).
    unrecorded: Vec<UserId>,
    /// When the pollers were last pruned: every few seconds, not every
    /// refresh.
    pruned_ms: u64,
}

/// How often the pollers are pruned: forgetting is housekeeping (a poller
/// whose ticket left the line is not answered here anyway).
const PRUNE_EVERY_MS: u64 = 2_000;

impl Pollers {
    pub(super) fn is_empty(&self) -> bool {
        self.known.is_empty()
    }

    pub(super) fn knows(&self, user: &UserId) -> bool {
        self.known.contains_key(user)
    }

    /// Remembers the place the store gave a user: asked at `asked_ms`,
    /// which recorded the user's presence, and answered before read
    /// `min_read` began. Polls answered here and not recorded yet are
    /// covered by the store's later record.
    pub(super) fn remember(&mut self, user: &UserId, place: &Place, asked_ms: u64, min_read: u64) {
        let in_line = matches!(place.state, PlaceState::Waiting { .. } | PlaceState::Closed);
        if !in_line || place.ticket == 0 {
            self.known.remove(user);
            return;
        }
        self.known.insert(
            user.clone(),
            Poller {
                ticket: place.ticket,
                seen_ms: asked_ms,
                min_read,
                recorded_ms: asked_ms,
                unrecorded: false,
            },
        );
    }

    /// Takes a user whose receipt the copy answered as a poller: their
    /// presence is recorded with the next refresh, as if answered here.
    pub(super) fn adopt(
        &mut self,
        user: &UserId,
        ticket: u64,
        issued_ms: u64,
        read_no: u64,
        now_ms: u64,
    ) {
        self.known.insert(
            user.clone(),
            Poller {
                ticket,
                seen_ms: now_ms,
                min_read: read_no,
                recorded_ms: issued_ms.min(now_ms),
                unrecorded: true,
            },
        );
        self.unrecorded.push(user.clone());
    }

    /// Answers a known user's lookup from the copy, as a sign of life;
    /// `heartbeat_ms` is the queue's heartbeat timeout.
    pub(super) fn answer(
        &mut self,
        user: &UserId,
        copy: &Copy,
        changes: u64,
        max_age_ms: u64,
        heartbeat_ms: u64,
        now_ms: u64,
    ) -> Option<Place> {
        let poller = self.known.get_mut(user)?;
        if now_ms.saturating_sub(poller.recorded_ms) > heartbeat_ms / 2 {
            return None;
        }
        let place = copy.place(poller, changes, max_age_ms, now_ms)?;
        poller.min_read = copy.read_no;
        poller.seen_ms = poller.seen_ms.max(now_ms);
        // A recorded sign of life younger than a quarter of the timeout is
        // news to nobody: the store releases a place only after the timeout
        // and that quarter more (`QueueConfig::release_after_ms`).
        if !poller.unrecorded
            && now_ms.saturating_sub(poller.recorded_ms)
                >= QueueConfig::presence_stale_ms(heartbeat_ms)
        {
            poller.unrecorded = true;
            self.unrecorded.push(user.clone());
        }
        Some(place)
    }

    /// The users answered here since their presence was last recorded;
    /// marked recorded.
    pub(super) fn take_unrecorded(&mut self) -> Vec<UserId> {
        let mut taken = std::mem::take(&mut self.unrecorded);
        taken.retain(|user| match self.known.get_mut(user) {
            Some(poller) if poller.unrecorded => {
                poller.unrecorded = false;
                true
            }
            _ => false,
        });
        taken
    }

    /// Notes the outcome of the write of users' presence at `now_ms`: on
    /// failure the next write includes them again.
    pub(super) fn recorded(&mut self, users: &[UserId], written: bool, now_ms: u64) {
        for user in users {
            if let Some(poller) = self.known.get_mut(user) {
                if written {
                    poller.recorded_ms = poller.recorded_ms.max(now_ms);
                } else if !poller.unrecorded {
                    poller.unrecorded = true;
                    self.unrecorded.push(user.clone());
                }
            }
        }
    }

    /// Forgets pollers whose ticket left the line, and recorded ones not
    /// heard from for a while.
    pub(super) fn prune(&mut self, line: &Line, heartbeat_ms: u64, now_ms: u64) {
        if now_ms.saturating_sub(self.pruned_ms) < PRUNE_EVERY_MS && self.pruned_ms <= now_ms {
            return;
        }
        self.pruned_ms = now_ms;
        let idle_ms = POLLER_IDLE_MS.max(crate::domain::release_after_ms(heartbeat_ms));
        self.known.retain(|_, p| {
            line.contains(p.ticket) && (p.unrecorded || now_ms.saturating_sub(p.seen_ms) < idle_ms)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{LineSnapshot, RateSample};

    const HEARTBEAT_MS: u64 = 10_000;
    const MAX_AGE_MS: u64 = 300;

    /// A copy made by read number `read_ms / 100`, just now.
    fn copy(read_ms: u64, mode: QueueMode) -> Copy {
        Copy {
            line: Some(Line::from_snapshot(LineSnapshot {
                epoch_ms: 1,
                seq: 7,
                tickets: vec![3, 5, 9],
                shards: 1,
                held: crate::domain::DrawHold::NONE,
            })),
            summary: Some(LineSummary {
                epoch_ms: 1,
                seq: 7,
                mode,
                waiting: 3,
                prequeued: 0,
                opens_at_ms: None,
                opened: true,
                rate: RateSample::default(),
                heartbeat_ms: HEARTBEAT_MS,
                signs: Default::default(),
                shards: 1,
                held: crate::domain::DrawHold::NONE,
            }),
            read_ms,
            read_at: Some(Instant::now()),
            read_no: read_ms / 100,
            changes_seen: Some(2),
        }
    }

    fn waiting(ticket: u64, position: u64) -> Place {
        Place {
            state: PlaceState::Waiting { position },
            ticket,
            epoch_ms: 1,
            waiting_count: 3,
            mode: QueueMode::Queueing,
            rate: RateSample::default(),
            signs: Default::default(),
        }
    }

    fn pollers(at_ms: u64) -> (Pollers, UserId) {
        let user = UserId::parse("u").unwrap();
        let mut pollers = Pollers::default();
        pollers.remember(&user, &waiting(5, 2), at_ms, at_ms / 100 + 1);
        (pollers, user)
    }

    #[test]
    fn a_known_poller_is_answered_from_a_fresh_copy_newer_than_its_last_answer() {
        let (mut pollers, user) = pollers(1_000);
        let answer = |pollers: &mut Pollers, copy: &Copy, changes, now| {
            pollers.answer(&user, copy, changes, MAX_AGE_MS, HEARTBEAT_MS, now)
        };
        let queueing = copy(1_100, QueueMode::Queueing);
        // Older than the store's answer it had: time would go back.
        assert_eq!(
            answer(&mut pollers, &copy(900, QueueMode::Queueing), 2, 1_000),
            None
        );
        // A change made here since the read; a read too old.
        assert_eq!(answer(&mut pollers, &queueing, 3, 1_200), None);
        assert_eq!(answer(&mut pollers, &queueing, 2, 1_401), None);
        // Pass-through admits on lookup: the store's to do.
        assert_eq!(
            answer(&mut pollers, &copy(1_100, QueueMode::PassThrough), 2, 1_200),
            None
        );
        assert_eq!(
            answer(&mut pollers, &queueing, 2, 1_200),
            Some(waiting(5, 2))
        );
        // Answered while its recorded sign of life is young: nothing to
        // record. A quarter of the timeout on, the poll is worth recording.
        assert!(pollers.take_unrecorded().is_empty());
        let later = copy(3_600, QueueMode::Queueing);
        assert_eq!(answer(&mut pollers, &later, 2, 3_600), Some(waiting(5, 2)));
        let polled = pollers.take_unrecorded();
        assert_eq!(polled, vec![user.clone()]);
        pollers.recorded(&polled, true, 3_600);
        // Presence recorded more than half a timeout ago: the store answers
        // (and records it).
        let late = copy(8_700, QueueMode::Queueing);
        assert_eq!(answer(&mut pollers, &late, 2, 8_700), None);
        let in_time = copy(8_500, QueueMode::Queueing);
        assert_eq!(
            answer(&mut pollers, &in_time, 2, 8_500),
            Some(waiting(5, 2))
        );
    }

    #[test]
    fn polls_answered_here_are_recorded_once_and_again_after_a_failed_write() {
        let (mut pollers, user) = pollers(1_000);
        assert!(
            pollers.take_unrecorded().is_empty(),
            "the store recorded it"
        );
        let copy = copy(3_600, QueueMode::Queueing);
        pollers.answer(&user, &copy, 2, MAX_AGE_MS, HEARTBEAT_MS, 3_600);
        let polled = pollers.take_unrecorded();
        assert_eq!(polled, vec![user.clone()]);
        pollers.recorded(&polled, false, 3_650);
        assert_eq!(pollers.take_unrecorded(), vec![user]);
    }

    #[test]
    fn pollers_whose_ticket_left_the_line_are_forgotten() {
        let (mut pollers, _) = pollers(1_000);
        let mut line = Line::from_snapshot(LineSnapshot {
            epoch_ms: 1,
            seq: 7,
            tickets: vec![3, 5, 9],
            shards: 1,
            held: crate::domain::DrawHold::NONE,
        });
        pollers.prune(&line, HEARTBEAT_MS, 2_000);
        assert!(!pollers.is_empty());
        line.leave(5);
        // Pruned every few seconds, not at every refresh.
        pollers.prune(&line, HEARTBEAT_MS, 3_000);
        assert!(!pollers.is_empty());
        pollers.prune(&line, HEARTBEAT_MS, 4_000);
        assert!(pollers.is_empty());
    }
}
