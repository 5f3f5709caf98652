//! The sale's figures a queue keeps: arrivals, abandonments, the times
//! waited, the observed admission rate, in the same buckets as the Redis
//! prelude's `count_flow` and `prune_flow`.

use super::queue::QueueState;
use crate::domain::{
    FLOW_SLOT_MS, Flow, RateSample, WAITED_BOUNDS_S, WAITED_SLOT_MS, WAITED_WINDOW_MS,
    first_flow_slot, flow_span_ms, waited_bucket,
};
use std::collections::BTreeMap;

impl QueueState {
    /// Counts `n` users joining at `now_ms` (see the prelude's
    /// `count_flow`).
    pub(super) fn count_arrivals(&mut self, n: u64, now_ms: u64) {
        self.counters.enqueued += n;
        *self.flow.arrivals.entry(now_ms / FLOW_SLOT_MS).or_default() += n;
        self.prune_flow(now_ms);
    }

    pub(super) fn count_abandons(&mut self, n: u64, now_ms: u64) {
        self.counters.abandoned += n;
        if n > 0 {
            *self.flow.abandons.entry(now_ms / FLOW_SLOT_MS).or_default() += n;
            self.prune_flow(now_ms);
        }
    }

    /// Records that the tickets up to the last given were given by this
    /// second (the prelude's `note_joined`: only ever raised).
    pub(super) fn note_joined(&mut self, now_ms: u64) {
        self.note_joined_in(0, self.line.seq, now_ms);
    }

    /// [`Self::note_joined`] for sub-line `at`, whose highest ticket given
    /// is `highest`: over sub-lines each keeps its own marks, as each
    /// sub-line's slot in Redis does; one slot is sub-line 0.
    pub(super) fn note_joined_in(&mut self, at: usize, highest: u64, now_ms: u64) {
        let second = now_ms / 1000;
        match self.flow.joined_second.get(&(at, second)) {
            Some(previous) if *previous >= highest => {}
            previous => {
                if let Some(previous) = previous {
                    self.flow.joined.remove(&(at, *previous, second));
                }
                self.flow.joined.insert((at, highest, second));
                self.flow.joined_second.insert((at, second), highest);
            }
        }
    }

    /// Counts how long the users of `tickets` (ascending, admitted from
    /// sub-line `at` now; one slot is sub-line 0) waited, by that
    /// sub-line's marks, and forgets when tickets up to the last were
    /// given.
    pub(super) fn count_waited_in(&mut self, at: usize, tickets: &[u64], now_ms: u64) {
        let Some(&last) = tickets.last() else {
            return;
        };
        let slot = now_ms / WAITED_SLOT_MS;
        let mut milestones = self
            .flow
            .joined
            .range((at, tickets[0], 0)..(at + 1, 0, 0))
            .copied()
            .take(tickets.len())
            .peekable();
        for ticket in tickets {
            while milestones
                .next_if(|(_, highest, _)| highest < ticket)
                .is_some()
            {}
            let Some(&(_, _, second)) = milestones.peek() else {
                break;
            };
            let waited_s = now_ms.saturating_sub(second * 1000) / 1000;
            *self
                .flow
                .waited
                .entry((slot, waited_bucket(waited_s)))
                .or_default() += 1;
        }
        let forget: Vec<(usize, u64, u64)> = self
            .flow
            .joined
            .range((at, 0, 0)..(at, last, 0))
            .copied()
            .collect();
        for entry in forget {
            self.flow.joined.remove(&entry);
            self.flow.joined_second.remove(&(at, entry.2));
        }
        self.prune_flow(now_ms);
    }

    /// Drops the flow buckets older than their windows, at most every ten
    /// seconds (the prelude's `prune_flow`).
    pub(super) fn prune_flow(&mut self, now_ms: u64) {
        let second = now_ms / 1000;
        if second < self.flow.flow_pruned_s + 10 {
            return;
        }
        let first = first_flow_slot(now_ms);
        self.flow.arrivals.retain(|slot, _| *slot >= first);
        self.flow.abandons.retain(|slot, _| *slot >= first);
        let oldest =
            (now_ms / WAITED_SLOT_MS).saturating_sub(WAITED_WINDOW_MS / WAITED_SLOT_MS - 1);
        self.flow.waited.retain(|(s, _), _| *s >= oldest);
        self.flow.flow_pruned_s = second;
    }

    pub(super) fn rate_sample(&self, now_ms: u64) -> RateSample {
        let first = RateSample::first_bucket(now_ms);
        let mut buckets = self.admissions.rate.range(first..);
        let (admitted, span_ms) = match buckets.next() {
            None => (0, 0),
            Some((oldest, count)) => (
                count + buckets.map(|(_, c)| c).sum::<u64>(),
                RateSample::span_from(*oldest, now_ms),
            ),
        };
        RateSample {
            admitted,
            span_ms,
            recent: self
                .admissions
                .rate
                .range(RateSample::first_recent_bucket(now_ms)..)
                .map(|(_, c)| c)
                .sum(),
            abandoned: in_window(&self.flow.abandons, now_ms),
            configured: self.config.admit_per_second,
        }
    }

    pub(super) fn flow(&self, now_ms: u64) -> Flow {
        let slot = now_ms / WAITED_SLOT_MS;
        let oldest = slot.saturating_sub(WAITED_WINDOW_MS / WAITED_SLOT_MS - 1);
        let mut waited = vec![0; WAITED_BOUNDS_S.len()];
        for ((_, bucket), count) in self.flow.waited.range((oldest, 0)..=(slot, usize::MAX)) {
            waited[*bucket] += count;
        }
        Flow {
            arrived: in_window(&self.flow.arrivals, now_ms),
            span_ms: flow_span_ms(now_ms),
            waited,
        }
    }
}

/// The sum of the slots of `FLOW_SLOT_MS` within the rate window, up to
/// now's.
pub(super) fn in_window(buckets: &BTreeMap<u64, u64>, now_ms: u64) -> u64 {
    let (first, last) = (first_flow_slot(now_ms), now_ms / FLOW_SLOT_MS);
    if first > last {
        return 0;
    }
    buckets.range(first..=last).map(|(_, c)| c).sum()
}
