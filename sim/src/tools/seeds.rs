//! Which seeds a test run covers: `SIM_SEED=<n>` runs exactly that seed,
//! `SIM_SEEDS=<n>` sweeps seeds `0..n`, and otherwise the scenario's default set.

use std::ops::Range;

/// A bad `SIM_SEED` / `SIM_SEEDS` value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{var}={value:?} is not a non-negative integer")]
pub struct SeedEnvError {
    /// The variable.
    pub var: &'static str,
    /// Its value.
    pub value: String,
}

/// The seeds to run, given the two environment values and a default count.
pub fn select(
    seed: Option<&str>,
    seeds: Option<&str>,
    default_count: u64,
) -> Result<Range<u64>, SeedEnvError> {
    let parse = |var, v: &str| {
        v.trim().parse::<u64>().map_err(|_| SeedEnvError {
            var,
            value: v.to_owned(),
        })
    };
    if let Some(s) = seed {
        let s = parse("SIM_SEED", s)?;
        return Ok(s..s.saturating_add(1));
    }
    if let Some(n) = seeds {
        return Ok(0..parse("SIM_SEEDS", n)?);
    }
    Ok(0..default_count)
}

/// [`select`] reading `SIM_SEED` and `SIM_SEEDS` from the environment.
pub fn from_env(default_count: u64) -> Result<Range<u64>, SeedEnvError> {
    let seed = std::env::var("SIM_SEED").ok();
    let seeds = std::env::var("SIM_SEEDS").ok();
    select(seed.as_deref(), seeds.as_deref(), default_count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_seed_beats_a_sweep_which_beats_the_default() {
        assert_eq!(select(Some("42"), Some("10"), 64), Ok(42..43));
        assert_eq!(select(None, Some("10"), 64), Ok(0..10));
        assert_eq!(select(None, None, 64), Ok(0..64));
        assert_eq!(
            select(Some("x"), None, 64).map_err(|e| e.var),
            Err("SIM_SEED")
        );
    }
}
