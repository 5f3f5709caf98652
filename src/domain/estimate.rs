//! The estimated wait, and the sale's recent figures it is taken from.
//!
//! Stores count admissions from the line, arrivals and abandonments in
//! one-second buckets and report those of the last [`RATE_WINDOW_MS`]
//! together with the span they cover. The span starts at the oldest
//! admission bucket still in the window, so a queue that began admitting ten
//! seconds ago is measured over those ten seconds, not diluted over the
//! whole window.
//!
//! The wait of the user at position `p` is `((p - 1) × (1 - a) + 1) / r`:
//! of the `p - 1` people ahead, the share `a` who abandon (abandoned over
//! abandoned plus admitted, in the window) will not need admitting. `r` is
//! the admission rate observed; before there is one, the configured
//! `admit_per_second` (and the estimate says so); with neither, there is no
//! estimate: none is invented. With a configured rate, the observed one is
//! taken at most at it: the automatic admitter's one second of burst is not
//! a pace (so a queue also admitted by hand is estimated on the long side).
//!
//! The range spans the rate of the whole window and of the last
//! [`RECENT_MS`] (whichever is faster gives the low end, slower the high),
//! and abandonment from half to one and a half times the share observed; it
//! is never narrower than ±10 % of the point, the precision a minute's
//! measurement can claim.
//!
//! Stores also keep, per 10-second slot, how long the users admitted from
//! the line had waited, in the buckets of [`WAITED_BOUNDS_S`]; the
//! percentiles of the last [`WAITED_WINDOW_MS`] are read from them.

use std::time::Duration;

/// How far back admissions, arrivals and abandonments count towards rates.
pub const RATE_WINDOW_MS: u64 = 60_000;

/// Arrivals and abandonments are counted in slots this long, so a reader
/// sums a handful of them, not a minute of seconds, on every lookup.
pub const FLOW_SLOT_MS: u64 = 10_000;

/// The first slot (of [`FLOW_SLOT_MS`]) of the window at `now_ms`.
pub fn first_flow_slot(now_ms: u64) -> u64 {
    now_ms.saturating_sub(RATE_WINDOW_MS) / FLOW_SLOT_MS + 1
}

/// The time the window's slots cover at `now_ms`: 50 to 60 seconds.
pub fn flow_span_ms(now_ms: u64) -> u64 {
    now_ms.saturating_sub(first_flow_slot(now_ms) * FLOW_SLOT_MS)
}

/// The recent part of the window, whose rate bounds the estimate's range.
pub const RECENT_MS: u64 = 10_000;

/// How far back the times waited count towards their percentiles.
pub const WAITED_WINDOW_MS: u64 = 300_000;

/// The slots the times waited are kept in.
pub const WAITED_SLOT_MS: u64 = 10_000;

/// Upper bounds (whole seconds, inclusive) of the buckets a time waited is
/// counted in; a percentile is reported as the bound of its bucket, so
/// within about 20 % above the true value. The last bucket takes the rest.
pub const WAITED_BOUNDS_S: [u64; 40] = [
    0, 1, 2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 25, 30, 40, 50, 60, 75, 90, 120, 150, 180, 240, 300,
    360, 480, 600, 750, 900, 1200, 1500, 1800, 2400, 3000, 3600, 5400, 7200, 10800, 21600, 86400,
];

/// Shortest span a rate is measured over, so one burst right now does not
/// read as an enormous rate.
const MIN_SPAN_MS: u64 = 1_000;

/// The bucket of [`WAITED_BOUNDS_S`] a wait of `waited_s` seconds falls in.
pub fn waited_bucket(waited_s: u64) -> usize {
    WAITED_BOUNDS_S
        .iter()
        .position(|bound| waited_s <= *bound)
        .unwrap_or(WAITED_BOUNDS_S.len() - 1)
}

/// Admissions observed recently, and what an estimate needs besides.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateSample {
    /// Admissions from the line within the window.
    pub admitted: u64,
    /// Milliseconds the window's admissions span, up to [`RATE_WINDOW_MS`].
    pub span_ms: u64,
    /// Admissions within the last [`RECENT_MS`].
    pub recent: u64,
    /// Users released for silence within the window (its slots of
    /// [`FLOW_SLOT_MS`]).
    pub abandoned: u64,
    /// The queue's configured `admit_per_second` (0: none).
    pub configured: u32,
}

/// What an estimate is taken from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EstimateBasis {
    Observed,
    Configured,
}

/// An estimated wait: a point within a range, in whole seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Estimate {
    pub wait: Duration,
    pub low: Duration,
    pub high: Duration,
    pub basis: EstimateBasis,
}

impl RateSample {
    /// Admissions per second, if any were observed.
    pub fn per_second(&self) -> Option<f64> {
        if self.admitted == 0 {
            return None;
        }
        let span = self.span_ms.clamp(MIN_SPAN_MS, RATE_WINDOW_MS);
        Some(self.admitted as f64 * 1000.0 / span as f64)
    }

    /// Admissions per second over the last [`RECENT_MS`], if any.
    fn recent_per_second(&self) -> Option<f64> {
        if self.recent == 0 {
            return None;
        }
        let span = self.span_ms.clamp(MIN_SPAN_MS, RECENT_MS);
        Some(self.recent as f64 * 1000.0 / span as f64)
    }

    /// The share of those leaving the line who abandoned it.
    pub fn abandon_share(&self) -> f64 {
        let total = self.admitted + self.abandoned;
        if total == 0 {
            0.0
        } else {
            self.abandoned as f64 / total as f64
        }
    }

    /// Expected time until the user at `position` (1-based) is admitted.
    pub fn estimate(&self, position: u64) -> Option<Estimate> {
        let (rate, basis) = match self.per_second() {
            // The automatic admitter keeps to the configured rate: more
            // observed is its bucket's first second of burst, not a pace.
            Some(rate) if self.configured > 0 => (
                rate.min(f64::from(self.configured)),
                EstimateBasis::Observed,
            ),
            // Admitted by hand only: a pace while admissions keep coming;
            // once none came for [`RECENT_MS`] the line may not move at all
            // (a full queue, an operator away), and a rate shrinking with
            // the time since the last batch would tell a wait that grows
            // and means nothing.
            Some(_) if self.recent == 0 => return None,
            Some(rate) => (rate, EstimateBasis::Observed),
            None if self.configured > 0 => (f64::from(self.configured), EstimateBasis::Configured),
            None => return None,
        };
        let ahead = position.saturating_sub(1) as f64;
        let share = self.abandon_share();
        let wait = |rate: f64, share: f64| (ahead * (1.0 - share.min(1.0)) + 1.0) / rate;
        let point = wait(rate, share);
        let recent = self.recent_per_second().unwrap_or(rate);
        let low = wait(rate.max(recent), share * 1.5).min(point * 0.9);
        let high = wait(rate.min(recent), share * 0.5).max(point * 1.1);
        Some(Estimate {
            wait: Duration::from_secs(point.ceil() as u64),
            low: Duration::from_secs(low.floor() as u64),
            high: Duration::from_secs(high.ceil() as u64),
            basis,
        })
    }

    /// The span covered by buckets starting at `oldest_bucket_s` (seconds),
    /// as stores compute it.
    pub fn span_from(oldest_bucket_s: u64, now_ms: u64) -> u64 {
        let window_start = now_ms.saturating_sub(RATE_WINDOW_MS);
        now_ms.saturating_sub((oldest_bucket_s * 1000).max(window_start))
    }

    /// The first bucket (in seconds) still inside the window at `now_ms`.
    pub fn first_bucket(now_ms: u64) -> u64 {
        (now_ms.saturating_sub(RATE_WINDOW_MS)) / 1000 + 1
    }

    /// The first bucket (in seconds) of the recent part of the window.
    pub fn first_recent_bucket(now_ms: u64) -> u64 {
        (now_ms.saturating_sub(RECENT_MS)) / 1000 + 1
    }
}

/// The sale's recent figures beyond the rate sample: arrivals and the
/// times waited (counts per bucket of [`WAITED_BOUNDS_S`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Flow {
    /// Users who joined within the window (its slots of [`FLOW_SLOT_MS`]).
    pub arrived: u64,
    /// The time those slots cover ([`flow_span_ms`]).
    pub span_ms: u64,
    /// Admissions from the line within [`WAITED_WINDOW_MS`], by how long
    /// each had waited.
    pub waited: Vec<u64>,
}

impl Flow {
    /// The `q` quantile (0 to 1) of the times waited, as the bound of its
    /// bucket; none without admissions.
    pub fn waited_quantile(&self, q: f64) -> Option<Duration> {
        let total: u64 = self.waited.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (bucket, count) in self.waited.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return Some(Duration::from_secs(WAITED_BOUNDS_S[bucket]));
            }
        }
        None
    }
}

/// A count over the window's slots as a rate per second.
pub fn per_second_over_window(count: u64, span_ms: u64) -> f64 {
    count as f64 * 1000.0 / span_ms.max(MIN_SPAN_MS) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn steady(admitted: u64, abandoned: u64) -> RateSample {
        RateSample {
            admitted,
            span_ms: 60_000,
            recent: admitted / 6,
            abandoned,
            configured: 0,
        }
    }

    #[test]
    fn no_admissions_and_no_configured_rate_means_no_estimate() {
        assert_eq!(RateSample::default().estimate(10), None);
    }

    #[test]
    fn admitted_by_hand_with_nothing_admitted_lately_there_is_no_estimate() {
        let sample = RateSample {
            admitted: 5,
            span_ms: 40_000,
            recent: 0,
            ..Default::default()
        };
        assert_eq!(sample.estimate(3), None);
        let moving = RateSample {
            recent: 2,
            ..sample
        };
        assert!(moving.estimate(3).is_some());
        // With a configured rate the admitter keeps going: still estimated.
        let automatic = RateSample {
            configured: 2,
            ..sample
        };
        assert!(automatic.estimate(3).is_some());
    }

    #[test]
    fn estimate_is_position_over_observed_rate() {
        let estimate = steady(600, 0).estimate(101).unwrap();
        assert_eq!(estimate.wait, Duration::from_secs(11));
        assert_eq!(estimate.basis, EstimateBasis::Observed);
        assert!(estimate.low < estimate.wait && estimate.wait < estimate.high);
    }

    #[test]
    fn those_ahead_who_abandon_shorten_the_wait() {
        // A tenth of those leaving abandoned: of 100 ahead, 90 need admitting.
        let estimate = steady(540, 60).estimate(101).unwrap();
        assert_eq!(estimate.wait, Duration::from_secs(11));
        let without = steady(540, 0).estimate(101).unwrap();
        assert_eq!(without.wait, Duration::from_secs(12));
    }

    #[test]
    fn before_any_admission_the_configured_rate_is_used_and_said() {
        let sample = RateSample {
            configured: 50,
            ..RateSample::default()
        };
        let estimate = sample.estimate(500).unwrap();
        assert_eq!(
            (estimate.wait, estimate.basis),
            (Duration::from_secs(10), EstimateBasis::Configured)
        );
    }

    #[test]
    fn a_slower_recent_rate_widens_the_range_upwards() {
        let mut sample = steady(600, 0);
        sample.recent = 20;
        let estimate = sample.estimate(101).unwrap();
        assert_eq!(estimate.high, Duration::from_secs(51));
    }

    #[test]
    fn a_young_queue_is_measured_over_its_own_span() {
        let sample = RateSample {
            admitted: 100,
            span_ms: 10_000,
            ..RateSample::default()
        };
        assert_eq!(sample.per_second(), Some(10.0));
    }

    #[test]
    fn quantiles_of_times_waited_are_bucket_bounds() {
        let mut waited = vec![0; WAITED_BOUNDS_S.len()];
        waited[waited_bucket(7)] = 5; // bound 8 s
        waited[waited_bucket(100)] = 5; // bound 120 s
        let flow = Flow {
            waited,
            ..Flow::default()
        };
        assert_eq!(flow.waited_quantile(0.5), Some(Duration::from_secs(8)));
        assert_eq!(flow.waited_quantile(0.9), Some(Duration::from_secs(120)));
        assert_eq!(Flow::default().waited_quantile(0.5), None);
        assert_eq!(waited_bucket(1_000_000), WAITED_BOUNDS_S.len() - 1);
    }
}
