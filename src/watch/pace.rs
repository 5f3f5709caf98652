//! Position pacing: each stream's position messages go out at moments of
//! its own within each pace, so a crowd's are spread over the pace.

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
