//! One queue over K sub-lines (`docs/design.md`, "One sale over several
//! Redis slots"): the rules a queue with more than one sub-line follows,
//! which no store applies yet.
//!
//! - which sub-line holds a user's place ([`sub_line_of`]);
//! - tickets from blocks a sub-line leases from the head's sequence and
//!   closes after τ ([`Block`], [`join_ticket`], [`Head::lease`]), so the
//!   line has one total order fixed at join, and two joins are out of order
//!   only when they came less than τ (plus the replicas' clock skew) apart;
//! - how far admission may reach ([`Head::watermark`]): no ticket below it
//!   can be given any more, so nobody who joins later stands ahead of
//!   someone admitted;
//! - which users an admission of N takes over all sub-lines
//!   ([`admission_cutoff`]): one cutoff ticket, journalled at the head
//!   before any sub-line pops, and each sub-line's pop "everyone waiting at
//!   or below the cutoff" repeated by a replay takes nobody new.

use std::collections::VecDeque;

/// Most sub-lines a queue may have.
pub const MAX_SHARDS: u32 = 16;

/// The sub-line holding `user`'s place: FNV-1a (64-bit) of the id's bytes,
/// modulo `shards`. Fixed for good: another hash would move users between
/// sub-lines, and a repeat `Enqueue` would no longer find them.
pub fn sub_line_of(user: &str, shards: u32) -> u32 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in user.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (hash % u64::from(shards.max(1))) as u32
}

/// Tickets `next..end` a sub-line leased from the head, `leased_ms` by the
/// leasing replica's clock read before it asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Block {
    pub next: u64,
    pub end: u64,
    pub leased_ms: u64,
}

impl Block {
    /// Whether a join at `now_ms` may take a ticket from it: not used up,
    /// and leased less than `tau_ms` ago. A block closed unused leaves a
    /// gap in the numbers, which changes no position: positions count
    /// waiting tickets, not numbers.
    pub fn open_at(&self, now_ms: u64, tau_ms: u64) -> bool {
        self.next < self.end && now_ms < self.leased_ms.saturating_add(tau_ms)
    }
}

/// What a sub-line does for a join.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ticketing {
    /// The join's ticket, taken from the open block.
    Ticket(u64),
    /// No open block: lease one from the head, install it, and ask again.
    Lease,
}

/// A join's ticket from the sub-line's block at `now_ms`.
pub fn join_ticket(block: &mut Option<Block>, now_ms: u64, tau_ms: u64) -> Ticketing {
    match block {
        Some(open) if open.open_at(now_ms, tau_ms) => {
            let ticket = open.next;
            open.next += 1;
            Ticketing::Ticket(ticket)
        }
        _ => Ticketing::Lease,
    }
}

/// The head's ticket sequence, and the blocks it leased recently enough
/// that they may still give tickets.
#[derive(Clone, Debug, Default)]
pub struct Head {
    /// The last ticket leased.
    pub seq: u64,
    /// `(first ticket, leased_ms)` of recent leases, oldest first.
    recent: VecDeque<(u64, u64)>,
}

impl Head {
    /// A block of `size` tickets after every ticket leased before.
    pub fn lease(&mut self, size: u64, leased_ms: u64) -> Block {
        let first = self.seq + 1;
        self.seq += size.max(1);
        self.recent.push_back((first, leased_ms));
        Block {
            next: first,
            end: self.seq + 1,
            leased_ms,
        }
    }

    /// The lowest ticket a join may still be given at `now_ms`: every
    /// block leased less than `closed_after_ms` ago (τ and the replicas'
    /// clock skew) starts at or above it, and every older block is closed.
    /// Admission takes no ticket at or above it.
    pub fn watermark(&mut self, now_ms: u64, closed_after_ms: u64) -> u64 {
        while let Some(&(_, leased_ms)) = self.recent.front() {
            if leased_ms.saturating_add(closed_after_ms) > now_ms {
                break;
            }
            self.recent.pop_front();
        }
        self.recent
            .iter()
            .map(|&(first, _)| first)
            .min()
            .unwrap_or(self.seq + 1)
    }
}

/// The highest ticket an admission of up to `n` takes: the `n`-th lowest
/// waiting ticket below `watermark` over all sub-lines (`fronts`: each
/// sub-line's lowest waiting tickets, ascending, at least `n` of them
/// where it has so many), or `None` when nobody can be admitted. Each
/// sub-line then admits everyone waiting at or below it.
pub fn admission_cutoff(fronts: &[Vec<u64>], watermark: u64, n: u32) -> Option<u64> {
    let mut below: Vec<u64> = fronts
        .iter()
        .flat_map(|front| front.iter().copied().take_while(|&t| t < watermark))
        .collect();
    let n = n as usize;
    if n == 0 || below.is_empty() {
        return None;
    }
    let at = n.min(below.len()) - 1;
    let (_, cutoff, _) = below.select_nth_unstable(at);
    Some(*cutoff)
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet, HashMap};

    use proptest::prelude::*;

    use super::*;

    #[test]
    fn a_user_s_sub_line_is_fixed_and_users_spread_evenly() {
        // Fixed values: a change here moves users between sub-lines.
        assert_eq!(u64::from(sub_line_of("", 16)), 0xcbf2_9ce4_8422_2325 % 16);
        assert_eq!(sub_line_of("alice", 4), sub_line_of("alice", 4));
        assert_eq!(sub_line_of("anyone", 1), 0);
        let shards = 4;
        let mut counts = [0u32; 4];
        for n in 0..100_000 {
            counts[sub_line_of(&format!("visitor-{n:x}"), shards) as usize] += 1;
        }
        for count in counts {
            assert!((23_000..27_000).contains(&count), "{counts:?}");
        }
    }

    #[test]
    fn a_block_closes_when_used_up_or_tau_after_its_lease() {
        let mut head = Head::default();
        let mut block = Some(head.lease(2, 100));
        assert_eq!(join_ticket(&mut block, 100, 5), Ticketing::Ticket(1));
        assert_eq!(join_ticket(&mut block, 104, 5), Ticketing::Ticket(2));
        assert_eq!(join_ticket(&mut block, 104, 5), Ticketing::Lease);
        let mut late = Some(head.lease(10, 200));
        assert_eq!(join_ticket(&mut late, 205, 5), Ticketing::Lease);
        // Its unused tickets are a gap: the next block starts after them.
        assert_eq!(head.lease(10, 206).next, 13);
    }

    #[test]
    fn the_watermark_holds_back_only_blocks_that_may_still_give_tickets() {
        let mut head = Head::default();
        head.lease(10, 0);
        head.lease(10, 3);
        assert_eq!(head.watermark(4, 5), 1);
        assert_eq!(head.watermark(5, 5), 11);
        assert_eq!(head.watermark(8, 5), 21);
    }

    #[test]
    fn an_admission_takes_the_n_lowest_below_the_watermark_over_all_sub_lines() {
        let fronts = vec![vec![1, 4, 9], vec![2, 3], vec![], vec![5, 30]];
        assert_eq!(admission_cutoff(&fronts, 100, 3), Some(3));
        assert_eq!(admission_cutoff(&fronts, 100, 5), Some(5));
        assert_eq!(admission_cutoff(&fronts, 5, 10), Some(4));
        assert_eq!(admission_cutoff(&fronts, 1, 10), None);
        assert_eq!(admission_cutoff(&fronts, 100, 0), None);
    }

    /// One step of a sale on a queue of K sub-lines.
    #[derive(Clone, Debug)]
    enum Step {
        /// Time passes on the shared clock.
        Wait(u64),
        /// A new user joins, through a replica whose clock is `skew` ahead
        /// (0 up to the skew allowed), the lease reaching its sub-line
        /// `install_delay` after it was asked for.
        Join { skew: u64, install_delay: u64 },
        /// An admission of up to `n` by a replica whose clock is `skew`
        /// ahead; `crash_after` sub-lines pop before it dies, then a
        /// replay finishes it.
        Admit {
            n: u32,
            skew: u64,
            crash_after: usize,
        },
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            1 => (0u64..8).prop_map(Step::Wait),
            4 => (0u64..=SKEW, 0u64..12).prop_map(|(skew, install_delay)| Step::Join { skew, install_delay }),
            1 => (0u32..6, 0u64..=SKEW, 0usize..4)
                .prop_map(|(n, skew, crash_after)| Step::Admit { n, skew, crash_after }),
        ]
    }

    const TAU: u64 = 5;
    const SKEW: u64 = 2;

    /// A sub-line: its block, who waits on it, and the admissions it
    /// applied, by request (what a replay is told again).
    #[derive(Default)]
    struct SubLine {
        block: Option<Block>,
        waiting: BTreeMap<u64, u32>,
        applied: HashMap<u32, Vec<u32>>,
    }

    impl SubLine {
        /// Everyone waiting at or below `cutoff`, once per request.
        fn pop(&mut self, request: u32, cutoff: u64) -> Vec<u32> {
            if let Some(done) = self.applied.get(&request) {
                return done.clone();
            }
            let rest = self.waiting.split_off(&(cutoff + 1));
            let taken: Vec<u32> = std::mem::replace(&mut self.waiting, rest)
                .into_values()
                .collect();
            self.applied.insert(request, taken.clone());
            taken
        }
    }

    proptest! {
        // The edges (a block closing while a skewed replica still uses it)
        // are a millisecond or two wide: more cases find them.
        #![proptest_config(ProptestConfig::with_cases(3000))]

        /// Joins over K sub-lines with skewed clocks and late leases, and
        /// admissions that crash part way and are replayed: tickets are
        /// unique; two joins are out of order only when they came less than
        /// τ plus the skew apart; nobody is admitted twice; every admission
        /// takes the lowest waiting tickets; nobody who joins after an
        /// admission gets a ticket below one it admitted.
        #[test]
        fn one_order_and_admission_exactly_once_over_k_sub_lines(
            shards in 1u32..=3,
            block in 1u64..6,
            steps in proptest::collection::vec(step(), 1..300),
        ) {
            let mut head = Head::default();
            let mut lines: Vec<SubLine> = (0..shards).map(|_| SubLine::default()).collect();
            let mut now = 0u64;
            let mut joins: Vec<(u64, u64)> = Vec::new(); // (join time, ticket)
            let mut tickets = BTreeSet::new();
            let mut admitted = BTreeSet::new();
            let mut highest_admitted = 0u64;
            let mut requests = 0u32;
            for step in steps {
                match step {
                    Step::Wait(ms) => now += ms,
                    Step::Join { skew, install_delay } => {
                        let user = joins.len() as u32;
                        let line = &mut lines[sub_line_of(&format!("u{user}"), shards) as usize];
                        let clock = now + skew;
                        let ticket = loop {
                            match join_ticket(&mut line.block, clock, TAU) {
                                Ticketing::Ticket(t) => break t,
                                Ticketing::Lease => {
                                    // Asked for `install_delay` before it reached
                                    // the sub-line: a late block may be closed
                                    // already, a gap, and the next join leases
                                    // afresh.
                                    let lease = head.lease(block, clock.saturating_sub(install_delay));
                                    line.block = Some(lease);
                                    if !lease.open_at(clock, TAU) {
                                        line.block = Some(head.lease(block, clock));
                                    }
                                }
                            }
                        };
                        prop_assert!(tickets.insert(ticket), "ticket {ticket} given twice");
                        prop_assert!(ticket > highest_admitted,
                            "ticket {ticket} given after {highest_admitted} was admitted");
                        line.waiting.insert(ticket, user);
                        joins.push((now, ticket));
                    }
                    Step::Admit { n, skew, crash_after } => {
                        requests += 1;
                        let watermark = head.watermark(now + skew, TAU + SKEW);
                        let fronts: Vec<Vec<u64>> = lines
                            .iter()
                            .map(|l| l.waiting.keys().copied().take(n as usize).collect())
                            .collect();
                        let Some(cutoff) = admission_cutoff(&fronts, watermark, n) else { continue };
                        let lowest: Vec<u64> = lines
                            .iter()
                            .flat_map(|l| l.waiting.keys().copied())
                            .filter(|&t| t < watermark)
                            .collect::<BTreeSet<_>>()
                            .into_iter()
                            .take(n as usize)
                            .collect();
                        // Some sub-lines pop, the replica dies, a replay pops all.
                        for line in lines.iter_mut().take(crash_after) {
                            line.pop(requests, cutoff);
                        }
                        let mut taken = Vec::new();
                        for line in &mut lines {
                            taken.extend(line.pop(requests, cutoff));
                        }
                        prop_assert_eq!(taken.len(), lowest.len());
                        for user in taken {
                            prop_assert!(admitted.insert(user), "user {user} admitted twice");
                            let ticket = joins[user as usize].1;
                            prop_assert!(lowest.contains(&ticket));
                        }
                        highest_admitted = highest_admitted.max(cutoff);
                    }
                }
            }
            for (i, &(at, ticket)) in joins.iter().enumerate() {
                for &(later_at, later_ticket) in &joins[i + 1..] {
                    if later_at >= at + TAU + SKEW {
                        prop_assert!(later_ticket > ticket,
                            "joined at {at} with {ticket}, at {later_at} with {later_ticket}");
                    }
                }
            }
        }
    }
}
