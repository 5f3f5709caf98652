//! A scheduled opening: the pre-queue, frozen at the opening, and the draw
//! that places it in a random order fixed by a published seed (the Redis
//! twins are `draw_step.lua` and the prelude's `open_if_due`).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::queue::QueueState;
use crate::domain::draw::draw_key;
use crate::domain::{Place, PlaceState, UserId};

/// Where the opening draw stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Draw {
    /// No opening has happened (none scheduled, or not yet).
    None,
    /// The opening happened; the pre-queue is frozen, its tickets reserved.
    Frozen,
    /// Pre-queued users are being given their draw keys.
    Hashing,
    /// Users are being placed in key order.
    Assigning,
    Done,
}

impl Draw {
    pub(super) fn in_progress(self) -> bool {
        matches!(self, Self::Frozen | Self::Hashing | Self::Assigning)
    }
}

/// A scheduled opening: the pre-queue and the draw that places it.
#[derive(Debug)]
pub(super) struct Opening {
    /// Pre-queued users by arrival; `prequeued` is its inverse.
    pub(super) prequeue: BTreeMap<u64, UserId>,
    pub(super) prequeued: HashMap<UserId, u64>,
    pub(super) prequeue_seq: u64,
    /// Users drawn but not yet placed, by draw key; `pooled` is its inverse.
    pub(super) pool: BTreeSet<(u64, UserId)>,
    pub(super) pooled: HashMap<UserId, u64>,
    pub(super) draw: Draw,
    /// Next ticket of the block reserved for the pre-queue.
    pub(super) draw_next: u64,
}

impl QueueState {
    /// At the opening, freeze the pre-queue and reserve its tickets. Only a
    /// queue with an opening ever has a pre-queue.
    pub(super) fn open_if_due(&mut self, now_ms: u64) {
        if self.opening.draw != Draw::None || self.config.opens_at_ms.is_none_or(|at| now_ms < at) {
            return;
        }
        let size = self.opening.prequeue.len() as u64;
        self.opening.draw_next = self.line.seq + 1;
        self.move_seq(self.line.seq + size);
        // Over sub-lines each keeps its own marks, and each is told the
        // reserved tickets (`draw_sub_line.lua`, 'open').
        if size > 0 {
            for at in 0..self.line.by_sub_line.len().max(1) {
                self.note_joined_in(at, self.line.seq, now_ms);
            }
        }
        self.opening.draw = if size == 0 { Draw::Done } else { Draw::Frozen };
        self.config.draw_complete = size == 0;
    }

    pub(super) fn prequeue_place(&self, now_ms: u64) -> Place {
        let opens_in_ms = match (self.opening.draw, self.config.opens_at_ms) {
            (Draw::None, Some(opens_at)) => opens_at.saturating_sub(now_ms),
            _ => 0,
        };
        self.place(PlaceState::PreQueue { opens_in_ms }, 0, now_ms)
    }

    /// The next `chunk` pre-queued users to hash, by arrival; over
    /// sub-lines sub-line by sub-line (0 first), as the Redis store hashes
    /// each sub-line's own pre-queue (which arrivals come first changes no
    /// one's draw key, only who a clearing takes first).
    fn next_to_hash(&self, chunk: u32) -> Vec<(u64, UserId)> {
        let shards = self.line.by_sub_line.len().max(1);
        let mut by_sub_line: Vec<Vec<(u64, UserId)>> = vec![Vec::new(); shards];
        for (arrival, user) in &self.opening.prequeue {
            // Sub-line 0's first `chunk` are the whole answer (in one slot,
            // the first `chunk`): the rest need not be read.
            if by_sub_line[0].len() >= chunk as usize {
                break;
            }
            let at = self.sub_line(user);
            if by_sub_line[at].len() < chunk as usize {
                by_sub_line[at].push((*arrival, user.clone()));
            }
        }
        by_sub_line
            .into_iter()
            .flatten()
            .take(chunk as usize)
            .collect()
    }

    /// One step of the opening draw of at most `chunk` users: the
    /// pre-queue given its draw keys from `seed`, then placed in key order
    /// (see `draw_step.lua`). Whether the draw is over.
    pub(super) fn draw_chunk(&mut self, seed: &str, chunk: u32) -> bool {
        if self.opening.draw == Draw::Frozen {
            self.config.draw_seed = Some(seed.to_owned());
            self.opening.draw = Draw::Hashing;
        }
        match self.opening.draw {
            Draw::Hashing => {
                let seed = self.config.draw_seed.clone().unwrap_or_default();
                for (arrival, user) in self.next_to_hash(chunk) {
                    self.opening.prequeue.remove(&arrival);
                    self.opening.prequeued.remove(&user);
                    let key = draw_key(&seed, &user);
                    self.opening.pool.insert((key, user.clone()));
                    self.opening.pooled.insert(user, key);
                }
                if self.opening.prequeue.is_empty() {
                    self.opening.draw = Draw::Assigning;
                }
            }
            Draw::Assigning => {
                for _ in 0..chunk {
                    let Some((_, user)) = self.opening.pool.pop_first() else {
                        break;
                    };
                    self.opening.pooled.remove(&user);
                    let ticket = self.opening.draw_next;
                    self.opening.draw_next += 1;
                    self.add_waiting(user, ticket);
                }
                if self.opening.pool.is_empty() {
                    self.opening.draw = Draw::Done;
                    self.config.draw_complete = true;
                }
            }
            Draw::None | Draw::Frozen | Draw::Done => {}
        }
        !self.opening.draw.in_progress()
    }
}
