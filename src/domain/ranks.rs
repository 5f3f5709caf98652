//! Counts waiting tickets up to a ticket in O(log n): a Fenwick tree over
//! ticket numbers. Tickets are a dense sequence, so the tree is a plain
//! vector that grows by one slot per ticket issued. The memory store ranks
//! with it, and so does each instance's local copy of a line it watches.

#[derive(Clone, Debug, Default)]
pub struct RankIndex {
    /// 1-based Fenwick tree; slot 0 is unused.
    tree: Vec<u32>,
}

fn lowbit(i: usize) -> usize {
    i & i.wrapping_neg()
}

impl RankIndex {
    /// An index of slots `1..=present.len()`, slot `i` present when
    /// `present[i - 1]`; built in O(n).
    pub fn from_present(present: &[bool]) -> Self {
        let mut tree = Vec::with_capacity(present.len() + 1);
        tree.push(0);
        tree.extend(present.iter().map(|p| u32::from(*p)));
        for i in 1..tree.len() {
            let parent = i + lowbit(i);
            if parent < tree.len() {
                tree[parent] += tree[i];
            }
        }
        Self { tree }
    }

    /// Number of tickets in `1..=ticket` that are present.
    pub fn count_up_to(&self, ticket: u64) -> u64 {
        let mut i = (ticket as usize).min(self.tree.len().saturating_sub(1));
        let mut sum = 0u64;
        while i > 0 {
            sum += u64::from(self.tree[i]);
            i -= lowbit(i);
        }
        sum
    }

    pub fn insert(&mut self, ticket: u64) {
        self.grow_to(ticket as usize);
        self.add(ticket as usize, 1);
    }

    pub fn remove(&mut self, ticket: u64) {
        self.add(ticket as usize, -1);
    }

    fn add(&mut self, mut i: usize, delta: i32) {
        while i < self.tree.len() {
            self.tree[i] = self.tree[i].wrapping_add_signed(delta);
            i += lowbit(i);
        }
    }

    /// Appends empty slots up to `n`. A new slot k covers `(k - lowbit(k), k]`,
    /// whose sum is known from the prefix sums of the slots before it.
    fn grow_to(&mut self, n: usize) {
        if self.tree.is_empty() {
            self.tree.push(0);
        }
        while self.tree.len() <= n {
            let k = self.tree.len();
            let covered = self.count_up_to(k as u64 - 1) - self.count_up_to((k - lowbit(k)) as u64);
            self.tree.push(covered as u32);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::RankIndex;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    proptest! {
        #[test]
        fn counts_agree_with_a_sorted_set(ops in proptest::collection::vec((1u64..300, any::<bool>()), 1..400)) {
            let mut index = RankIndex::default();
            let mut set = BTreeSet::new();
            for (ticket, insert) in ops {
                if insert && set.insert(ticket) {
                    index.insert(ticket);
                } else if !insert && set.remove(&ticket) {
                    index.remove(ticket);
                }
                for probe in [ticket, ticket / 2, 300] {
                    prop_assert_eq!(index.count_up_to(probe), set.range(..=probe).count() as u64);
                }
            }
            let present: Vec<bool> = (1..=300).map(|t| set.contains(&t)).collect();
            let built = RankIndex::from_present(&present);
            for probe in 0..=300 {
                prop_assert_eq!(built.count_up_to(probe), index.count_up_to(probe));
            }
        }
    }
}
