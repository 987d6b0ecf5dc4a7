//! Exponential backoff with jitter, from a seeded RNG.
//!
//! `delay(attempt) = min(base * 2^(attempt-1), max)`, plus up to `jitter_ratio` of
//! that drawn from the caller's RNG, so retries of many nodes spread out without
//! the runtime ever touching a global random source.
//!
//! ```
//! use std::time::Duration;
//! use keel::backoff::Backoff;
//! use rand::SeedableRng;
//! let b = Backoff { base: Duration::from_secs(1), max: Duration::from_secs(8), jitter_ratio: 0.0 };
//! let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
//! let delays: Vec<_> = (1..=5).map(|a| b.delay(a, &mut rng).as_secs()).collect();
//! assert_eq!(delays, [1, 2, 4, 8, 8]);
//! ```

use std::time::Duration;

use rand::Rng;

/// An exponential backoff policy. See the [module docs](self).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backoff {
    /// Delay after the first failure.
    pub base: Duration,
    /// Cap on the delay before jitter.
    pub max: Duration,
    /// Extra random delay, as a fraction of the capped delay, in `0.0..=1.0`.
    pub jitter_ratio: f64,
}

impl Backoff {
    /// The delay after failed attempt number `attempt` (1-based).
    pub fn delay(&self, attempt: u32, rng: &mut impl Rng) -> Duration {
        assert!(attempt >= 1, "attempts are 1-based");
        assert!(
            (0.0..=1.0).contains(&self.jitter_ratio),
            "jitter_ratio must be in 0..=1"
        );
        // 2^31 overflows any sane base; the cap applies long before.
        let factor = 1u32 << (attempt - 1).min(31);
        let capped = self.base.saturating_mul(factor).min(self.max);
        let jitter_ms_max = (capped.as_millis() as f64 * self.jitter_ratio) as u64;
        let jitter = if jitter_ms_max == 0 {
            0
        } else {
            rng.random_range(0..=jitter_ms_max)
        };
        capped + Duration::from_millis(jitter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn jitter_stays_within_ratio_and_is_seeded() {
        let b = Backoff {
            base: Duration::from_secs(1),
            max: Duration::from_secs(30),
            jitter_ratio: 0.25,
        };
        let mut r1 = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let mut r2 = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        for attempt in 1..=10 {
            let d = b.delay(attempt, &mut r1);
            let floor = Duration::from_secs(1 << (attempt - 1)).min(Duration::from_secs(30));
            assert!(
                d >= floor && d <= floor.mul_f64(1.25),
                "attempt {attempt}: {d:?}"
            );
            assert_eq!(d, b.delay(attempt, &mut r2), "same seed, same delay");
        }
    }
}
