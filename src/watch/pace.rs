//! Position pacing: each stream's position messages go out at moments of
//! its own within each pace, so a crowd's are spread over the pace.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::WatchHub;
use crate::domain::UserId;

/// Where a user's paced moments fall within each pace, as a fraction of it
/// (of 65,536): the same on every instance.
pub(super) fn phase_of(user: &UserId) -> u16 {
    // FNV-1a: a stable, cheap spread, not a security boundary.
    let hash = user
        .as_str()
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
    // FNV's top bits clump for short ids that differ in their last
    // characters (user-1, user-2, ...): mixed first (splitmix64's finish).
    let mut z = hash;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z >> 48) as u16
}

/// The first of a stream's moments after `now_ms`: the moments fall at its
/// `phase` of every `pace_ms`. A stream's position messages go out only at
/// its moments, so a crowd's are spread evenly over each pace, even when
/// every position changes at once (the first admission after a quiet
/// spell): kept in step with one clock, 100,000 streams would all be due
/// at the same refresh, and their messages would hold up an admission's
/// behind them for as long as they take to write.
pub(super) fn next_moment(now_ms: u64, phase: u16, pace_ms: u64) -> u64 {
    if pace_ms == 0 {
        return now_ms;
    }
    let offset = u64::from(phase) * pace_ms / 65_536;
    let since_last = (now_ms + pace_ms - offset) % pace_ms;
    now_ms - since_last + pace_ms
}

impl WatchHub {
    /// Paces messages that only move a stream's position, waiting count or
    /// estimate: at most one per `pace` per stream, the latest. Changes of
    /// state (admitted, closed, a mode, the pre-queue and the draw) are
    /// never paced and go out before the paced ones of the same refresh, so
    /// an admission does not wait behind everyone's new positions.
    pub fn set_position_pace(&self, pace: Duration) {
        self.position_pace_ms
            .store(pace.as_millis() as u64, Ordering::Relaxed);
    }

    /// Caps the position messages of all streams together at `per_second`
    /// (0: no cap): with more open streams than that, each stream's pace
    /// is stretched to streams / `per_second` seconds. What a replica can
    /// write is bounded; past it, an admission's message would queue
    /// behind positions, while a position a second or two older costs the
    /// watcher nothing it needs.
    pub fn set_position_budget(&self, per_second: u64) {
        self.position_budget.store(per_second, Ordering::Relaxed);
    }

    /// A stream whose client leaves a message unread this long is let go
    /// (zero: never); see [`slot::PlaceSender::send`].
    pub fn set_stall_timeout(&self, stall: Duration) {
        self.stall_ms
            .store(stall.as_millis() as u64, Ordering::Relaxed);
    }

    /// The pace of position messages now (ms; 0: every change at once).
    pub(super) fn position_pace_ms(&self) -> u64 {
        let pace = self.position_pace_ms.load(Ordering::Relaxed);
        let budget = self.position_budget.load(Ordering::Relaxed);
        if pace == 0 || budget == 0 {
            return pace;
        }
        // In whole paces, so the pace stays put while streams come and go
        // (each stream's moments fall at a phase of it: a pace that moved
        // with every stream would move them all, and send more often).
        let streams = self.open.load(Ordering::Relaxed) as u64;
        let per_pace = budget.saturating_mul(pace).div_ceil(1000).max(1);
        pace * streams.div_ceil(per_pace).max(1)
    }
}
