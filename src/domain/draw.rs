//! The opening draw: a fair start for a scheduled opening.
//!
//! Everyone who arrived in the pre-queue window gets a place in a uniformly
//! random order at the opening, so arriving a second earlier buys nothing.
//! The order is a pure function of a seed chosen at the opening (never
//! before, so nobody can pick a user id that draws well) and of the user
//! ids: each user's key is the first 13 hex digits (52 bits, exact in a
//! double, which Redis sorted-set scores are) of SHA-1(seed + user id);
//! lowest key first, ties by user id. Publishing the seed afterwards lets
//! anyone recompute the order. Both stores run it, the Redis one in chunks
//! of [`DRAW_CHUNK`] users per script call so a large pre-queue never holds
//! Redis for long.

use super::UserId;

/// Users hashed, or placed, per draw step.
pub const DRAW_CHUNK: u32 = 1000;

/// A user's draw key under `seed`.
pub fn draw_key(seed: &str, user: &UserId) -> u64 {
    let mut hash = sha1_smol::Sha1::new();
    hash.update(seed.as_bytes());
    hash.update(user.as_str().as_bytes());
    let hex = hash.digest().to_string();
    u64::from_str_radix(&hex[..13], 16).unwrap_or(0)
}

/// A fresh seed: 64 random bits as 16 hex digits.
pub fn new_seed() -> Result<String, String> {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).map_err(|e| format!("no randomness for a draw seed: {e}"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The drawn order of `users` under `seed`.
pub fn draw_order(seed: &str, users: &[UserId]) -> Vec<UserId> {
    let mut keyed: Vec<(u64, &UserId)> = users.iter().map(|u| (draw_key(seed, u), u)).collect();
    keyed.sort();
    keyed.into_iter().map(|(_, u)| u.clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn users(n: usize) -> Vec<UserId> {
        (0..n)
            .map(|i| UserId::parse(&format!("user-{i}")).unwrap())
            .collect()
    }

    #[test]
    fn the_draw_is_a_permutation_and_a_function_of_the_seed() {
        let all = users(500);
        let order = draw_order("00ff00ff00ff00ff", &all);
        let mut sorted = order.clone();
        sorted.sort();
        let mut expected = all.clone();
        expected.sort();
        assert_eq!(sorted, expected);
        assert_eq!(order, draw_order("00ff00ff00ff00ff", &all));
        assert_ne!(order, draw_order("00ff00ff00ff00fe", &all));
    }

    #[test]
    fn every_order_of_four_users_is_about_equally_likely() {
        // 24 orders, 24,000 seeded draws: about 1,000 each. A chi-square
        // statistic over 23 degrees of freedom above 49.7 would happen by
        // chance once in a thousand runs; the seeds are fixed, so this
        // test is deterministic.
        let four = users(4);
        let mut counts: HashMap<Vec<UserId>, u64> = HashMap::new();
        let draws = 24_000;
        for seed in 0..draws {
            *counts
                .entry(draw_order(&format!("{seed:016x}"), &four))
                .or_default() += 1;
        }
        assert_eq!(counts.len(), 24, "every order occurs");
        let expected = draws as f64 / 24.0;
        let chi_square: f64 = counts
            .values()
            .map(|&c| (c as f64 - expected).powi(2) / expected)
            .sum();
        assert!(chi_square < 49.7, "chi-square {chi_square}");
        // And each user lands first about a quarter of the time.
        for user in &four {
            let first = counts
                .iter()
                .filter(|(o, _)| &o[0] == user)
                .map(|(_, c)| c)
                .sum::<u64>();
            assert!((5400..=6600).contains(&first), "{user} first {first} times");
        }
    }

    #[test]
    fn keys_fit_a_double_exactly() {
        for user in users(100) {
            assert!(draw_key("seed", &user) < 1 << 52);
        }
    }
}
