//! An instance's copy of a queue's waiting set: the tickets still waiting,
//! kept up to date from the store's log of changes, so every local
//! watcher's position is computed in memory.
//!
//! Tickets are dense, so the copy is a bitmap and a Fenwick tree over a
//! window of ticket numbers starting at `base`, sized by the people in line
//! rather than by the highest ticket ever given: the window moves up as the
//! front of the line is admitted, and down in the rare case a ticket below
//! every waiting one joins (the opening draw places pre-queued users in a
//! block of tickets below later arrivals; with several sub-lines, an older
//! block still open gives one while the line's front is that recent).

use crate::domain::{DrawHold, LineSnapshot, LineSummary, Place, PlaceState, QueueMode, RankIndex};

/// The window is rebuilt when its empty slots outnumber the tickets in it by
/// this much, so its size stays within a constant of the line's.
const SLACK: usize = 4096;

/// The waiting tickets as of entry `seqs[s]` of each sub-line `s`'s log.
/// A ticket belongs to one sub-line, so the logs' changes commute: each is
/// applied in its own order, the logs in any interleaving.
#[derive(Debug, Default)]
pub(super) struct Line {
    pub(super) seqs: Vec<u64>,
    /// What each sub-line held of an opening draw as of `seqs` (or as of an
    /// earlier entry, which holds no less: see [`Line::note_held`]).
    held: Vec<DrawHold>,
    /// What they hold together, which every place is checked against.
    held_by_any: DrawHold,
    /// The ticket of slot 0.
    base: u64,
    /// `waiting[i]`: ticket `base + i` is waiting.
    waiting: Vec<bool>,
    /// Ranks over the window: slot `i + 1` is ticket `base + i`.
    ranks: RankIndex,
    /// Tickets waiting.
    len: usize,
    /// Tickets that left since the window was last built: a rebuild costs
    /// the window's size, so it waits until half as many have left, and
    /// costs O(1) a leave however the tickets left are spread.
    left_since_build: usize,
    /// Windows built so far.
    #[cfg(test)]
    builds: usize,
}

impl Line {
    /// A copy from the joined chunks of a snapshot, as of the first chunk.
    #[cfg(test)]
    pub(super) fn from_snapshot(snapshot: LineSnapshot) -> Self {
        Self::from_snapshots(vec![snapshot])
    }

    /// A copy from each sub-line's snapshot (its joined chunks), as of each
    /// one's first chunk.
    pub(super) fn from_snapshots(snapshots: Vec<LineSnapshot>) -> Self {
        let mut tickets: Vec<u64> = snapshots
            .iter()
            .flat_map(|s| s.tickets.iter().copied())
            .collect();
        tickets.sort_unstable();
        let mut line = Self::from_tickets(&tickets);
        line.seqs = snapshots.iter().map(|s| s.seq).collect();
        line.held = snapshots.iter().map(|s| s.held).collect();
        line.held_by_any = held_by_any(&line.held);
        line
    }

    /// What sub-line `sub_line` held of the draw as of entry `seq` of its
    /// log, kept once the copy has applied that entry: a hold read with
    /// entries not yet applied could let a ticket show before a lower one
    /// placed by the same step. Within one draw a hold only shrinks, so
    /// one kept from an earlier entry errs on the side of holding.
    pub(super) fn note_held(&mut self, sub_line: usize, seq: u64, held: DrawHold) {
        if self.seqs.get(sub_line).is_some_and(|at| *at >= seq)
            && let Some(kept) = self.held.get_mut(sub_line)
        {
            *kept = held;
            self.held_by_any = held_by_any(&self.held);
        }
    }

    /// A window exactly over `tickets` (ascending).
    fn from_tickets(tickets: &[u64]) -> Self {
        let (Some(first), Some(last)) = (tickets.first(), tickets.last()) else {
            return Self::default();
        };
        let mut waiting = vec![false; (last - first + 1) as usize];
        for ticket in tickets {
            waiting[(ticket - first) as usize] = true;
        }
        Self {
            seqs: Vec::new(),
            held: Vec::new(),
            held_by_any: DrawHold::NONE,
            base: *first,
            ranks: RankIndex::from_present(&waiting),
            waiting,
            len: tickets.len(),
            left_since_build: 0,
            #[cfg(test)]
            builds: 0,
        }
    }

    fn tickets(&self) -> Vec<u64> {
        self.waiting
            .iter()
            .enumerate()
            .filter(|(_, w)| **w)
            .map(|(i, _)| self.base + i as u64)
            .collect()
    }

    /// Rebuilds the window over what is waiting, and `extra`.
    fn rebuild(&mut self, extra: Option<u64>) {
        let mut tickets = self.tickets();
        if let Some(extra) = extra {
            let at = tickets.partition_point(|t| *t < extra);
            tickets.insert(at, extra);
        }
        self.set_window(&tickets);
        #[cfg(test)]
        {
            self.builds += 1;
        }
    }

    /// The window made exactly over `tickets` (ascending); what the copy is
    /// as of (`seqs`, the holds) stays.
    fn set_window(&mut self, tickets: &[u64]) {
        let Self {
            base,
            waiting,
            ranks,
            len,
            left_since_build,
            ..
        } = Self::from_tickets(tickets);
        (self.base, self.waiting, self.ranks) = (base, waiting, ranks);
        (self.len, self.left_since_build) = (len, left_since_build);
    }

    pub(super) fn join(&mut self, ticket: u64) {
        if self.len == 0 {
            self.set_window(&[ticket]);
            return;
        }
        if ticket < self.base {
            self.rebuild(Some(ticket));
            return;
        }
        let index = (ticket - self.base) as usize;
        if self.waiting.len() <= index {
            self.waiting.resize(index + 1, false);
        }
        if !self.waiting[index] {
            self.waiting[index] = true;
            self.ranks.insert(index as u64 + 1);
            self.len += 1;
        }
    }

    pub(super) fn leave(&mut self, ticket: u64) {
        if !self.contains(ticket) {
            return;
        }
        let index = (ticket - self.base) as usize;
        self.waiting[index] = false;
        self.ranks.remove(index as u64 + 1);
        self.len -= 1;
        self.left_since_build += 1;
        if self.waiting.len() > 2 * self.len + SLACK
            && 2 * self.left_since_build >= self.waiting.len()
        {
            self.rebuild(None);
        }
    }

    /// The window's first and last tickets: at or below the first waiting
    /// ticket, and at or above the last (a ticket that joined, so given);
    /// zeros for an empty line.
    pub(super) fn bounds(&self) -> (u64, u64) {
        match self.len {
            0 => (0, 0),
            _ => (self.base, self.base + self.waiting.len() as u64 - 1),
        }
    }

    pub(super) fn contains(&self, ticket: u64) -> bool {
        ticket >= self.base
            && self
                .waiting
                .get((ticket - self.base) as usize)
                .copied()
                .unwrap_or(false)
    }

    /// 1-based position of a waiting ticket.
    pub(super) fn position(&self, ticket: u64) -> u64 {
        if ticket < self.base {
            return 0;
        }
        self.ranks.count_up_to(ticket - self.base + 1)
    }

    /// The place of a ticket still in line, as the store would give it
    /// outside pass-through (where a lookup admits).
    pub(super) fn place(&self, summary: &LineSummary, ticket: u64) -> Option<Place> {
        if !self.contains(ticket) {
            return None;
        }
        let mut place = Place {
            state: if summary.mode == QueueMode::Closed {
                PlaceState::Closed
            } else {
                PlaceState::Waiting {
                    position: self.position(ticket),
                }
            },
            ticket,
            epoch_ms: summary.epoch_ms,
            waiting_count: summary.waiting + summary.prequeued,
            mode: summary.mode,
            rate: summary.rate,
            signs: summary.signs.clone(),
        };
        self.held_by_any.apply(&mut place);
        Some(place)
    }
}

fn held_by_any(held: &[DrawHold]) -> DrawHold {
    held.iter().fold(DrawHold::NONE, |all, h| all.and(*h))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn positions_agree_with_a_sorted_set_as_the_window_moves(
            start in proptest::collection::btree_set(1u64..20_000, 0..50),
            ops in proptest::collection::vec((0u64..30_000, any::<bool>()), 1..400),
        ) {
            let mut line = Line::from_snapshot(LineSnapshot {
                epoch_ms: 1,
                seq: 3,
                tickets: start.iter().copied().collect(),
                shards: 1,
                held: crate::domain::DrawHold::NONE,
            });
            let mut set: BTreeSet<u64> = start;
            for (ticket, join) in ops {
                if join {
                    line.join(ticket);
                    set.insert(ticket);
                } else {
                    line.leave(ticket);
                    set.remove(&ticket);
                }
                prop_assert_eq!(&line.seqs, &[3]);
                for probe in [ticket, ticket.saturating_sub(1), ticket + 1] {
                    prop_assert_eq!(line.contains(probe), set.contains(&probe));
                    if set.contains(&probe) {
                        prop_assert_eq!(line.position(probe), set.range(..=probe).count() as u64);
                    }
                }
            }
        }
    }

    /// A sub-line's hold of the draw counts once the copy has applied the
    /// entries it was read with, and the window's rebuilds keep it.
    #[test]
    fn a_drawn_ticket_is_held_until_every_sub_line_s_hold_read_with_it_lets_it_go() {
        let held = DrawHold {
            above: 0,
            through: 10,
        };
        let snapshot = |seq, tickets: Vec<u64>| LineSnapshot {
            epoch_ms: 1,
            seq,
            tickets,
            shards: 2,
            held,
        };
        let mut line = Line::from_snapshots(vec![snapshot(5, vec![1]), snapshot(2, vec![])]);
        // Below the window: rebuilt.
        line.join(0);
        line.join(3);
        let summary = LineSummary {
            epoch_ms: 1,
            seq: 2,
            mode: QueueMode::Queueing,
            waiting: 3,
            prequeued: 0,
            opens_at_ms: None,
            opened: true,
            rate: Default::default(),
            heartbeat_ms: 120_000,
            signs: Default::default(),
            shards: 2,
            held: DrawHold::NONE,
        };
        let state = |line: &Line| line.place(&summary, 3).map(|p| (p.state, p.ticket));
        let drawing = Some((PlaceState::PreQueue { opens_in_ms: 0 }, 0));
        assert_eq!(state(&line), drawing);
        line.note_held(
            1,
            2,
            DrawHold {
                above: 3,
                through: 10,
            },
        );
        assert_eq!(state(&line), drawing, "sub-line 0 still holds it");
        // Read as of an entry of sub-line 0 not applied yet: not kept.
        line.note_held(0, 7, DrawHold::NONE);
        assert_eq!(state(&line), drawing);
        line.seqs[0] = 7;
        line.note_held(0, 7, DrawHold::NONE);
        assert_eq!(state(&line), Some((PlaceState::Waiting { position: 3 }, 3)));
        assert_eq!(
            line.place(&summary, 0).map(|p| p.state),
            Some(PlaceState::Waiting { position: 1 })
        );
    }

    #[test]
    fn a_sparse_line_is_not_rebuilt_at_every_leave() {
        let mut line = Line::default();
        for ticket in 1..=100_000 {
            line.join(ticket);
        }
        // Every other ticket leaves, then every other of the rest: the
        // window cannot shrink, and must not be rebuilt each time it is
        // found sparse.
        for ticket in (1..=100_000).step_by(2) {
            line.leave(ticket);
        }
        for ticket in (2..=99_998).step_by(4) {
            line.leave(ticket);
        }
        assert!(
            line.builds <= 2,
            "{} rebuilds for 75,000 leaves",
            line.builds
        );
        assert_eq!(line.position(100_000), 25_000);
    }

    #[test]
    fn a_line_far_along_its_tickets_takes_memory_for_its_people_only() {
        let mut line = Line::default();
        for ticket in 1..=200_000 {
            line.join(ticket);
        }
        for ticket in 1..=199_990 {
            line.leave(ticket);
        }
        assert!(line.waiting.len() < SLACK + 100, "{}", line.waiting.len());
        assert_eq!(line.position(199_995), 5);
        line.join(200_500);
        assert_eq!(line.position(200_500), 11);
        line.join(100);
        assert_eq!((line.position(100), line.position(200_500)), (1, 12));
    }
}
