//! The estimated wait, from the admission rate actually observed.
//!
//! Stores count admissions in one-second buckets and report the admissions
//! of the last [`RATE_WINDOW_MS`] together with the span they cover. The span
//! starts at the oldest bucket still in the window, so a queue that began
//! admitting ten seconds ago is measured over those ten seconds, not diluted
//! over the whole window. The estimate is the position divided by that rate;
//! with no admission in the window there is no rate, and no estimate is
//! invented.

use std::time::Duration;

/// How far back admissions count towards the observed rate.
pub const RATE_WINDOW_MS: u64 = 60_000;

/// Shortest span a rate is measured over, so one burst right now does not
/// read as an enormous rate.
const MIN_SPAN_MS: u64 = 1_000;

/// Admissions observed recently.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateSample {
    /// Admissions within the window.
    pub admitted: u64,
    /// Milliseconds the window's admissions span, up to [`RATE_WINDOW_MS`].
    pub span_ms: u64,
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

    /// Expected time until the user at `position` is admitted.
    pub fn estimate(&self, position: u64) -> Option<Duration> {
        let rate = self.per_second()?;
        Some(Duration::from_secs_f64(position as f64 / rate))
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_admissions_means_no_estimate() {
        assert_eq!(RateSample::default().estimate(10), None);
    }

    #[test]
    fn estimate_is_position_over_observed_rate() {
        let sample = RateSample {
            admitted: 600,
            span_ms: 60_000,
        };
        assert_eq!(sample.estimate(100), Some(Duration::from_secs(10)));
    }

    #[test]
    fn a_young_queue_is_measured_over_its_own_span() {
        let sample = RateSample {
            admitted: 100,
            span_ms: 10_000,
        };
        assert_eq!(sample.per_second(), Some(10.0));
    }
}
