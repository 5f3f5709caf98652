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

    /// Releases up to `limit` users silent past the heartbeat timeout and
    /// its quarter (see `reap.lua`); how many. A pass after a gap in the
    /// passes (an outage) releases nobody, and presence counts again from
    /// a moment after it.
    pub(super) fn reap(&mut self, limit: u32, now_ms: u64) -> u64 {
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
        let mut released = 0;
        for user in &silent {
            if self.remove_from_line(user) {
                released += 1;
            } else {
                // A sign of life of someone no longer in line: dropped,
                // so it is neither counted again nor in the way.
                self.unsee(user);
            }
        }
        self.count_abandons(released, now_ms);
        released
    }
}
