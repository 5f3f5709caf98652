//! An instance's copy of a queue's waiting set: the tickets still waiting,
//! kept up to date from the store's log of changes, so every local
//! watcher's position is computed in memory.

use crate::domain::{LineSnapshot, LineSummary, Place, PlaceState, QueueMode, RankIndex};

/// The waiting tickets as of log entry `seq`.
#[derive(Debug, Default)]
pub(super) struct Line {
    pub(super) seq: u64,
    ranks: RankIndex,
    /// `waiting[t]`: ticket `t` is waiting. Tickets are dense, so a vector.
    waiting: Vec<bool>,
}

impl Line {
    pub(super) fn from_snapshot(snapshot: LineSnapshot) -> Self {
        let mut line = Self {
            seq: snapshot.seq,
            ..Self::default()
        };
        for ticket in snapshot.tickets {
            line.join(ticket);
        }
        line
    }

    pub(super) fn join(&mut self, ticket: u64) {
        let index = ticket as usize;
        if self.waiting.len() <= index {
            self.waiting.resize(index + 1, false);
        }
        if !self.waiting[index] {
            self.waiting[index] = true;
            self.ranks.insert(ticket);
        }
    }

    pub(super) fn leave(&mut self, ticket: u64) {
        if self.contains(ticket) {
            self.waiting[ticket as usize] = false;
            self.ranks.remove(ticket);
        }
    }

    pub(super) fn contains(&self, ticket: u64) -> bool {
        self.waiting.get(ticket as usize).copied().unwrap_or(false)
    }

    /// 1-based position of a waiting ticket.
    pub(super) fn position(&self, ticket: u64) -> u64 {
        self.ranks.count_up_to(ticket)
    }

    /// The place of a ticket still in line, as the store would give it
    /// outside pass-through (where a lookup admits).
    pub(super) fn place(&self, summary: &LineSummary, ticket: u64) -> Option<Place> {
        if !self.contains(ticket) {
            return None;
        }
        Some(Place {
            state: if summary.mode == QueueMode::Closed {
                PlaceState::Closed
            } else {
                PlaceState::Waiting {
                    position: self.position(ticket),
                }
            },
            ticket,
            waiting_count: summary.waiting + summary.prequeued,
            mode: summary.mode,
            rate: summary.rate,
        })
    }
}
