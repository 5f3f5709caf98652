//! Who is still there: each user's last sign of life, and the release of
//! those silent past the heartbeat timeout (the Redis twins are `touch.lua`
//! and `reap.lua`).

use std::collections::{BTreeSet, HashMap};

use super::queue::QueueState;
use crate::domain::{QueueMode, UserId, presence_after_gap};

/// Signs of life of the users in line.
#[derive(Debug, Default)]
pub(super) struct Presence {
    /// Last sign of life of users in line; `seen_by_time` orders it.
    pub(super) seen: HashMap<UserId, u64>,
    pub(super) seen_by_time: BTreeSet<(u64, UserId)>,
    /// When a reaper's pass last ran (the latest clock of any caller): a
    /// gap in the passes is an outage ([`presence_after_gap`]).
    pub(super) heard_ms: Option<u64>,
    /// Over sub-lines, each one's own passes and presence start: in Redis
    /// a sub-line is a slot of its own, whose primary may be away while
    /// the others' are not, so each reaps its own users by its own rule.
    pub(super) sub_lines: Vec<Passes>,
}

/// A sub-line's last pass and the moment its presence counts from.
#[derive(Clone, Copy, Debug)]
pub(super) struct Passes {
    heard_ms: Option<u64>,
    since_ms: u64,
}

impl Presence {
    pub(super) fn new(shards: u32, since_ms: u64) -> Self {
        let sub_lines = match shards {
            0 | 1 => Vec::new(),
            shards => vec![
                Passes {
                    heard_ms: None,
                    since_ms,
                };
                shards as usize
            ],
        };
        Self {
            sub_lines,
            ..Self::default()
        }
    }

    /// Presence counts from `now_ms` on every sub-line (a reopening, a
    /// shorter heartbeat timeout).
    pub(super) fn restart(&mut self, now_ms: u64) {
        for passes in &mut self.sub_lines {
            passes.since_ms = now_ms;
        }
    }
}

impl QueueState {
    /// Records a sign of life; only forward, so a caller whose clock is
    /// behind another's never moves a newer sign back.
    pub(super) fn see(&mut self, user: &UserId, now_ms: u64) {
        match self.presence.seen.get(user) {
            Some(previous) if *previous >= now_ms => {}
            Some(previous) => {
                self.presence
                    .seen_by_time
                    .remove(&(*previous, user.clone()));
                self.presence.seen.insert(user.clone(), now_ms);
                self.presence.seen_by_time.insert((now_ms, user.clone()));
            }
            None => {
                self.presence.seen.insert(user.clone(), now_ms);
                self.presence.seen_by_time.insert((now_ms, user.clone()));
            }
        }
    }

    pub(super) fn unsee(&mut self, user: &UserId) {
        if let Some(previous) = self.presence.seen.remove(user) {
            self.presence.seen_by_time.remove(&(previous, user.clone()));
        }
    }

    /// Since when `user`'s presence counts: over sub-lines, as their
    /// sub-line's passes last found it (each sub-line's slot keeps its
    /// own, as the Redis store's do).
    pub(super) fn presence_since(&self, user: &UserId) -> u64 {
        match self.presence.sub_lines.get(self.sub_line(user)) {
            Some(passes) => passes.since_ms,
            None => self.config.presence_since_ms,
        }
    }

    /// Releases up to `limit` users silent past the heartbeat timeout and
    /// its quarter (see `reap.lua`); how many. A pass after a gap in the
    /// passes (an outage) releases nobody, and presence counts again from
    /// a moment after it.
    pub(super) fn reap(&mut self, limit: u32, now_ms: u64) -> u64 {
        if !self.presence.sub_lines.is_empty() {
            return self.reap_sub_lines(limit, now_ms);
        }
        let heard = self.presence.heard_ms;
        self.presence.heard_ms = Some(heard.map_or(now_ms, |h| h.max(now_ms)));
        if let Some(since) = presence_after_gap(heard, self.config.presence_since_ms, now_ms) {
            self.config.presence_since_ms = since;
            return 0;
        }
        if self.config.mode == QueueMode::Closed {
            return 0;
        }
        let cutoff = now_ms.saturating_sub(self.config.release_after_ms());
        if self.config.presence_since_ms >= cutoff {
            return 0;
        }
        let silent: Vec<UserId> = self
            .presence
            .seen_by_time
            .iter()
            .take_while(|(seen, _)| *seen < cutoff)
            .take(limit as usize)
            .map(|(_, user)| user.clone())
            .collect();
        let released = self.release(&silent);
        self.count_abandons(released, now_ms);
        released
    }

    /// Takes the silent out of line; how many were in it. A sign of life
    /// of someone no longer in line is dropped, so it is neither counted
    /// again nor in the way.
    fn release(&mut self, silent: &[UserId]) -> u64 {
        let mut released = 0;
        for user in silent {
            if self.remove_from_line(user) {
                released += 1;
            } else {
                self.unsee(user);
            }
        }
        released
    }

    /// [`Self::reap`] over sub-lines: each by its own passes, sub-line by
    /// sub-line (0 first) up to `limit` in all, as the Redis store runs
    /// `reap.lua` on each sub-line's slot.
    fn reap_sub_lines(&mut self, limit: u32, now_ms: u64) -> u64 {
        let mut released = 0;
        for at in 0..self.presence.sub_lines.len() {
            let left = u64::from(limit).saturating_sub(released);
            if left == 0 {
                break;
            }
            let passes = &mut self.presence.sub_lines[at];
            let heard = passes.heard_ms;
            passes.heard_ms = Some(heard.map_or(now_ms, |h| h.max(now_ms)));
            if let Some(since) = presence_after_gap(heard, passes.since_ms, now_ms) {
                passes.since_ms = since;
                continue;
            }
            let since_ms = passes.since_ms;
            if self.config.mode == QueueMode::Closed {
                continue;
            }
            let cutoff = now_ms.saturating_sub(self.config.release_after_ms());
            if since_ms >= cutoff {
                continue;
            }
            let silent: Vec<UserId> = self
                .presence
                .seen_by_time
                .iter()
                .take_while(|(seen, _)| *seen < cutoff)
                .filter(|(_, user)| self.sub_line(user) == at)
                .take(left as usize)
                .map(|(_, user)| user.clone())
                .collect();
            released += self.release(&silent);
        }
        self.count_abandons(released, now_ms);
        released
    }
}
