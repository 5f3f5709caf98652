//! Spreading watchers over the replicas.
//!
//! Streams stay on the pod their connection reached, so a replica started
//! during a sale would get nothing until connections aged out, while the
//! busy ones stay busy. Each replica therefore reports its open streams to
//! the store every balance interval and reads everyone's
//! ([`QueueStore::share_load`]); a replica that holds more than its share
//! (the total over the replicas that report, which are the ready ones) by
//! more than the tolerance closes connections carrying about its excess,
//! at most a step of its streams per interval, so clients reconnect
//! through the load balancer at a paced rate and spread out. Places are
//! kept: a stream's end is a sign of life, and the client is told to
//! reconnect (see [`StreamConnection`]).
//!
//! A replica moves streams only on evidence that it holds more than its
//! share: its *fewest* streams over the time the others' reports may be
//! old (three intervals) must exceed it, not its count now. While a crowd
//! opens its pages every replica grows, and every other replica's report
//! is from a moment ago: measured against them, a replica's count now looks
//! above its share on each replica in turn, and evenly loaded replicas moved
//! thousands of streams among themselves at the worst moment. A replica
//! that really holds too many (one that took the crowd alone, or all the
//! streams of a replica that stopped) holds them over the window too.
//!
//! A connection is moved only once it has been open a while, so streams
//! that just reconnected are not moved again at once. The unit moved is a
//! connection: a client that carries all its streams
//! on one connection moves them all at once, so a client holding many
//! should spread them over a few connections.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{StreamConnection, WatchHub};
use crate::domain::{Clock, instance_id};
use crate::store::QueueStore;

/// The connections open on this instance.
#[derive(Default)]
pub struct OpenConnections {
    open: Mutex<HashMap<u64, Arc<StreamConnection>>>,
    next: AtomicU64,
}

impl OpenConnections {
    /// A new connection's handle and its number, to give back with
    /// [`OpenConnections::ended`].
    pub fn opened(&self) -> (u64, Arc<StreamConnection>) {
        let number = self.next.fetch_add(1, Ordering::Relaxed);
        let connection = Arc::new(StreamConnection::default());
        self.lock().insert(number, Arc::clone(&connection));
        (number, connection)
    }

    pub fn ended(&self, number: u64) {
        self.lock().remove(&number);
    }

    /// Connections open now.
    pub fn count(&self) -> usize {
        self.lock().len()
    }

    /// The connections carrying streams, not closing already, and open
    /// for at least `settled`.
    fn carrying(&self, settled: Duration) -> Vec<Arc<StreamConnection>> {
        self.lock()
            .values()
            .filter(|c| c.streams() > 0 && !c.is_closing() && c.age() >= settled)
            .cloned()
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<StreamConnection>>> {
        // Each change is one insert or remove: a poisoned map is whole.
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// How a replica balances.
#[derive(Clone, Copy, Debug)]
pub struct Balancing {
    /// How often; zero: never.
    pub interval: Duration,
    /// Most of its streams moved per interval (0 to 1).
    pub step: f64,
    /// How far above its share a replica may be, as a fraction of it.
    pub tolerance: f64,
}

/// Fewer streams than this above the share are never worth moving.
const LEAST_EXCESS: u64 = 20;

impl Balancing {
    /// How many of `own` streams to move now, given every ready replica's
    /// streams (`loads`, this one's included): none within the tolerance
    /// of the share, else the excess over the share, at most a step.
    pub fn to_move(&self, own: u64, loads: &[u64]) -> u64 {
        if loads.len() < 2 {
            return 0;
        }
        let total: u64 = loads.iter().sum::<u64>().max(own);
        let share = total.div_ceil(loads.len() as u64);
        let allowed = share + ((share as f64 * self.tolerance) as u64).max(LEAST_EXCESS);
        if own <= allowed {
            return 0;
        }
        let step = ((own as f64 * self.step).ceil() as u64).max(1);
        (own - share).min(step)
    }
}

/// A replica's own stream counts over the last while: what it can show it
/// held throughout, whatever moment the others' reports are from.
#[derive(Debug, Default)]
pub struct OwnLoad {
    counts: std::collections::VecDeque<(u64, u64)>,
}

impl OwnLoad {
    /// Notes `streams` at `now_ms` and returns the fewest it held within
    /// `window_ms` up to now: 0 until it has counts over the whole window
    /// (a replica just started, or just ready, shows nothing yet).
    pub fn held_throughout(&mut self, streams: u64, now_ms: u64, window_ms: u64) -> u64 {
        self.counts.push_back((now_ms, streams));
        while self.counts.len() > 1
            && self
                .counts
                .get(1)
                .is_some_and(|(at, _)| now_ms.saturating_sub(*at) >= window_ms)
        {
            self.counts.pop_front();
        }
        let spans = self
            .counts
            .front()
            .is_some_and(|(at, _)| now_ms.saturating_sub(*at) >= window_ms);
        match spans {
            true => self.counts.iter().map(|(_, s)| *s).min().unwrap_or(0),
            false => 0,
        }
    }
}

/// Which connections to close to move about `budget` streams, out of
/// `carrying` (streams on each), taken in the order given (random, so no
/// client is always the one moved): each that fits in what is left of the
/// budget; if none fits, the smallest, when moving it brings the replica
/// nearer its share (`excess` streams above it).
pub fn choose(carrying: &[usize], budget: u64, excess: u64) -> Vec<usize> {
    let mut left = budget;
    let mut chosen = Vec::new();
    for (i, &streams) in carrying.iter().enumerate() {
        let streams = streams as u64;
        if streams <= left {
            left -= streams;
            chosen.push(i);
        }
    }
    if chosen.is_empty()
        && let Some((i, &smallest)) = carrying.iter().enumerate().min_by_key(|(_, s)| **s)
        && (smallest as u64) < 2 * excess
    {
        chosen.push(i);
    }
    chosen
}

/// What the balancing task works with.
pub struct Balancer {
    pub balancing: Balancing,
    pub hub: Arc<WatchHub>,
    pub store: Arc<dyn QueueStore>,
    pub clock: Arc<dyn Clock>,
    pub connections: Arc<OpenConnections>,
    /// Whether the instance is ready: only ready replicas take part.
    pub ready: Arc<AtomicBool>,
    /// Cancelled when the instance starts draining: it leaves at once.
    pub draining: CancellationToken,
}

impl Balancer {
    pub async fn run(self, stop: CancellationToken) {
        if self.balancing.interval.is_zero() {
            return;
        }
        let instance = instance_id();
        // A replica that stopped reporting counts no more after three
        // missed reports.
        let ttl_ms = 3 * self.balancing.interval.as_millis() as u64;
        let mut ticks = tokio::time::interval(self.balancing.interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // A connection just made is still being joined by the streams
        // that reconnect on it (clients wait 0.5 to 1.5 s): closing it now
        // would move them twice, and catch openings in flight.
        let settled = (2 * self.balancing.interval).max(Duration::from_secs(3));
        let mut order = Shuffle::new();
        let mut own_load = OwnLoad::default();
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = self.draining.cancelled() => {
                    let _ = self.store.share_load(&instance, None, ttl_ms, self.clock.now_ms()).await;
                    return;
                }
                _ = stop.cancelled() => return,
            }
            let taking_part = self.ready.load(Ordering::Acquire) && !self.draining.is_cancelled();
            let own = self.hub.watcher_count() as u64;
            let report = taking_part.then_some(own);
            let loads = match self
                .store
                .share_load(&instance, report, ttl_ms, self.clock.now_ms())
                .await
            {
                Ok(loads) => loads,
                Err(error) => {
                    tracing::debug!(%error, "cannot share this replica's load");
                    continue;
                }
            };
            if !taking_part {
                own_load = OwnLoad::default();
                continue;
            }
            let held = own_load.held_throughout(own, self.clock.now_ms(), ttl_ms);
            let budget = self.balancing.to_move(held, &loads);
            if budget == 0 {
                continue;
            }
            let total: u64 = loads.iter().sum();
            let share = total.div_ceil(loads.len() as u64);
            let mut carrying = self.connections.carrying(settled);
            order.shuffle(&mut carrying);
            let streams: Vec<usize> = carrying.iter().map(|c| c.streams()).collect();
            let chosen = choose(&streams, budget, held.saturating_sub(share));
            let moving: usize = chosen.iter().map(|&i| streams[i]).sum();
            for &i in &chosen {
                carrying[i].close();
            }
            if !chosen.is_empty() {
                self.hub.wake_all();
                tracing::info!(
                    streams = own,
                    share,
                    replicas = loads.len(),
                    connections = chosen.len(),
                    moving,
                    "holding more than this replica's share: closing connections so their streams reconnect elsewhere"
                );
            }
        }
    }
}

/// A small generator for shuffling (xorshift), seeded from the system.
struct Shuffle(u64);

impl Shuffle {
    fn new() -> Self {
        let mut seed = [0u8; 8];
        let _ = getrandom::fill(&mut seed);
        Self(u64::from_le_bytes(seed) | 1)
    }

    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }

    fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            items.swap(i, self.below(i + 1));
        }
    }
}

/// A connection's age, drawn within ±10% of `age` so connections opened
/// together (a client's pool, a crowd after a rollout) do not all go
/// together.
pub fn jittered(age: Duration) -> Duration {
    let mut shuffle = Shuffle::new();
    let permille = shuffle.below(201) as u32;
    age * (900 + permille) / 1000
}

#[cfg(test)]
mod tests {
    use super::*;

    const BALANCING: Balancing = Balancing {
        interval: Duration::from_secs(5),
        step: 0.1,
        tolerance: 0.1,
    };

    #[test]
    fn a_lone_replica_or_one_near_its_share_moves_nothing() {
        assert_eq!(BALANCING.to_move(20_000, &[20_000]), 0);
        assert_eq!(BALANCING.to_move(10_500, &[10_500, 9_500]), 0);
        assert_eq!(BALANCING.to_move(30, &[30, 0]), 0);
    }

    #[test]
    fn a_replica_above_its_share_moves_its_excess_a_step_at_a_time() {
        // 20,000 on one of three: a tenth now, the excess in the end.
        assert_eq!(BALANCING.to_move(20_000, &[20_000, 0, 0]), 2_000);
        assert_eq!(BALANCING.to_move(7_700, &[7_700, 6_200, 6_100]), 770);
        assert_eq!(BALANCING.to_move(7_400, &[7_400, 6_300, 6_300]), 733);
        assert_eq!(BALANCING.to_move(7_300, &[7_300, 6_400, 6_300]), 0);
    }

    /// Replicas ticking at their own moments, each reporting its streams
    /// and reading the others' last reports, as the store keeps them.
    /// Returns the streams each would move over `seconds`, with the rule
    /// given.
    fn simulate(
        replicas: usize,
        streams_at: impl Fn(usize, f64) -> u64,
        seconds: f64,
        evidence: bool,
    ) -> u64 {
        let interval_ms = 1_000u64;
        let ttl_ms = 3 * interval_ms;
        let mut reports = vec![None::<u64>; replicas];
        let mut own: Vec<OwnLoad> = (0..replicas).map(|_| OwnLoad::default()).collect();
        let mut moved = 0;
        let mut t_ms = 0u64;
        while (t_ms as f64) < seconds * 1000.0 {
            for r in 0..replicas {
                // Each replica ticks at its own phase within the interval.
                let phase = r as u64 * interval_ms / replicas as u64;
                if t_ms % interval_ms != phase {
                    continue;
                }
                let now = streams_at(r, t_ms as f64 / 1000.0);
                reports[r] = Some(now);
                let loads: Vec<u64> = reports.iter().flatten().copied().collect();
                let count = if evidence {
                    own[r].held_throughout(now, t_ms, ttl_ms)
                } else {
                    now
                };
                moved += BALANCING.to_move(count, &loads);
            }
            t_ms += 10;
        }
        moved
    }

    #[test]
    fn evenly_loaded_replicas_move_nothing_while_a_crowd_opens_its_pages() {
        // 100,000 pages over five replicas in six seconds: each grows
        // alike, 20,000 in the end.
        let ramp = |_: usize, t: f64| (20_000.0 * (t / 6.0).min(1.0)) as u64;
        assert!(
            simulate(5, ramp, 12.0, false) > 1_000,
            "the count now, against reports a moment old, moves streams"
        );
        assert_eq!(simulate(5, ramp, 12.0, true), 0);
    }

    #[test]
    fn a_replica_that_holds_the_crowd_alone_still_spreads_it() {
        // A replica started during the sale: the first holds everyone.
        let alone = |r: usize, t: f64| {
            if r == 0 {
                (20_000.0 * (t / 2.0).min(1.0)) as u64
            } else {
                0
            }
        };
        assert!(simulate(5, alone, 10.0, true) > 10_000);
    }

    #[test]
    fn connections_are_chosen_to_fit_the_budget_or_to_come_nearer_the_share() {
        assert_eq!(choose(&[100, 300, 50, 200], 400, 1_000), vec![0, 1]);
        // None fits: the smallest, if moving it does not overshoot.
        assert_eq!(choose(&[5_000, 4_000], 2_000, 3_000), vec![1]);
        assert_eq!(choose(&[5_000, 4_000], 1_000, 1_500), Vec::<usize>::new());
    }

    #[test]
    fn ages_are_spread_within_a_tenth() {
        let ages: Vec<Duration> = (0..200)
            .map(|_| jittered(Duration::from_secs(600)))
            .collect();
        assert!(ages.iter().all(|a| (540..=660).contains(&a.as_secs())));
        let distinct: std::collections::HashSet<_> = ages.iter().collect();
        assert!(distinct.len() > 100);
    }

    #[test]
    fn shuffles_keep_every_item() {
        let mut items: Vec<u32> = (0..50).collect();
        Shuffle::new().shuffle(&mut items);
        items.sort_unstable();
        assert_eq!(items, (0..50).collect::<Vec<_>>());
    }
}
