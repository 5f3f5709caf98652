//! How far the wait shown on arrival is from the wait people then have:
//! a sale simulated on the memory store with an injected clock. An opening
//! burst of 3,000, then 7,000 more arriving at 50 a second, admitted at 50
//! a second by the automatic admitter, a tenth of them abandoning (they
//! stop showing signs of life at a random moment and are released after
//! the heartbeat timeout). The figure is written in `docs/design.md`.

use std::collections::HashMap;
use std::time::Duration;

use waitroom::domain::{PlaceState, QueueConfig, QueueId, UserId};
use waitroom::store::{MemoryStore, QueueStore};

const T0: u64 = 1_800_000_000_000;
const STEP_MS: u64 = 100;
const BURST: usize = 3_000;
const USERS: usize = 10_000;
const ARRIVALS_PER_SECOND: usize = 50;
const ADMIT_PER_SECOND: u32 = 50;

/// A deterministic draw in [0, 1) for user `n` and purpose `salt`.
fn draw(n: usize, salt: u64) -> f64 {
    let mut x = (n as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ salt;
    x ^= x >> 31;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^= x >> 29;
    (x >> 11) as f64 / (1u64 << 53) as f64
}

struct Visitor {
    user: UserId,
    arrived_ms: u64,
    shown: Option<Duration>,
    /// When they stop showing signs of life, if they abandon.
    gives_up_ms: Option<u64>,
    admitted_ms: Option<u64>,
}

#[tokio::test]
async fn nine_in_ten_are_shown_a_wait_within_a_fifth_of_the_one_they_have() {
    let store = MemoryStore::new();
    let queue = QueueId::parse("accuracy").unwrap();
    let mut config = QueueConfig::new(queue.clone()).created(T0);
    config.admit_per_second = ADMIT_PER_SECOND;
    config.heartbeat_timeout = Duration::from_secs(5);
    store.create_queue(&config).await.unwrap();

    let mut visitors: Vec<Visitor> = Vec::with_capacity(USERS);
    let mut index: HashMap<UserId, usize> = HashMap::new();
    let mut now = T0;
    let mut next = 0;
    while visitors
        .iter()
        .any(|v| v.admitted_ms.is_none() && !gone(v, now))
        || next < USERS
    {
        // Arrivals of this step.
        let due = if now < T0 + 1_000 {
            (BURST * (now - T0 + STEP_MS) as usize / 1_000).min(BURST)
        } else {
            (BURST + ARRIVALS_PER_SECOND * (now - T0 - 1_000 + STEP_MS) as usize / 1_000).min(USERS)
        };
        let arriving: Vec<UserId> = (next..due)
            .map(|n| UserId::parse(&format!("visitor-{n}")).unwrap())
            .collect();
        if !arriving.is_empty() {
            let places = store.enqueue_many(&queue, &arriving, now).await.unwrap();
            for (user, place) in arriving.into_iter().zip(places) {
                let place = place.unwrap();
                let n = visitors.len();
                index.insert(user.clone(), n);
                let abandons = draw(n, 1) < 0.1;
                visitors.push(Visitor {
                    user,
                    arrived_ms: now,
                    shown: match place.state {
                        PlaceState::Waiting { .. } => place.estimated_wait(),
                        _ => None,
                    },
                    gives_up_ms: abandons.then(|| now + (draw(n, 2) * 60_000.0) as u64),
                    admitted_ms: matches!(place.state, PlaceState::Admitted(_)).then_some(now),
                });
            }
            next = due;
        }
        for admitted in store.admit_due(&queue, 1_000, now).await.unwrap() {
            visitors[index[&admitted.user]].admitted_ms = Some(now);
        }
        // Every second, those still there show life and the silent are
        // released.
        if (now - T0).is_multiple_of(1_000) {
            let present: Vec<UserId> = visitors
                .iter()
                .filter(|v| v.admitted_ms.is_none() && v.gives_up_ms.is_none_or(|at| now < at))
                .map(|v| v.user.clone())
                .collect();
            store.touch(&queue, &present, now).await.unwrap();
            store.reap(&queue, 10_000, now).await.unwrap();
        }
        now += STEP_MS;
        assert!(now < T0 + 3_600_000, "the simulated sale never ended");
    }

    if std::env::var("ESTIMATE_DETAIL").is_ok() {
        for v in visitors.iter().step_by(250) {
            println!(
                "arrived {:>6} ms shown {:?} had {:?}",
                v.arrived_ms - T0,
                v.shown,
                v.admitted_ms.map(|a| a - v.arrived_ms)
            );
        }
    }
    let mut errors: Vec<f64> = visitors
        .iter()
        .filter_map(|v| {
            let shown = v.shown?.as_secs_f64();
            let had = (v.admitted_ms? - v.arrived_ms) as f64 / 1000.0;
            Some((shown - had).abs() / had.max(1.0))
        })
        .collect();
    errors.sort_by(f64::total_cmp);
    let within = errors.iter().filter(|e| **e <= 0.2).count() as f64 / errors.len() as f64;
    let median = errors[errors.len() / 2];
    let p90 = errors[errors.len() * 9 / 10];
    let abandoned = store.stats(&queue, now).await.unwrap().abandoned;
    println!(
        "{} admitted after waiting, {abandoned} abandoned: {:.1} % shown a wait within 20 % of the one they had; error median {:.1} %, p90 {:.1} %",
        errors.len(),
        within * 100.0,
        median * 100.0,
        p90 * 100.0
    );
    assert!(
        abandoned > 500,
        "{abandoned} abandoned: the sale did not lose its tenth"
    );
    assert!(errors.len() > 8_000, "{} measured", errors.len());
    assert!(within >= 0.9, "only {:.1} % within 20 %", within * 100.0);
}

/// Released for silence: gave up longer ago than the heartbeat timeout.
fn gone(v: &Visitor, now: u64) -> bool {
    v.gives_up_ms.is_some_and(|at| now > at + 7_000)
}
