//! Shards: one machine's share of a long sweep.
//!
//! `sim sweep --shard K/N` runs the seeds `s` with `s mod N == K-1`, so N
//! machines given 1/N to N/N share a seed range without talking to each other,
//! and each seed runs on exactly one of them. `--shard-from-env` takes K and N
//! from the scheduler that started the process:
//!
//! | scheduler | index (K-1) | count (N) |
//! |---|---|---|
//! | any | `SIM_SHARD=K/N` | |
//! | Kubernetes Indexed Job | `JOB_COMPLETION_INDEX` | `--shards N` or `SIM_SHARDS` |
//! | Slurm job array | `SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN` | `SLURM_ARRAY_TASK_COUNT` |
//! | GitLab CI `parallel:` | `CI_NODE_INDEX - 1` | `CI_NODE_TOTAL` |
//! | GitHub Actions matrix | `SIM_SHARD_INDEX` (0-based, set from the matrix) | `--shards N` or `SIM_SHARDS` |
//!
//! ```
//! use sim::tools::shard::Shard;
//! let s: Shard = "2/3".parse().expect("valid");
//! assert_eq!(s.seeds(10, 9).collect::<Vec<_>>(), [10, 13, 16]);
//! assert!("0/3".parse::<Shard>().is_err(), "shards count from 1");
//! ```

use std::fmt;

/// One shard of N: 0-based `index` below `count`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    index: u64,
    count: u64,
}

/// A shard that cannot be: names the flag or variable and what was wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{source_name}: {reason}")]
pub struct ShardError {
    /// The flag or environment variable.
    pub source_name: String,
    /// What is wrong with it.
    pub reason: String,
}

fn error(source_name: &str, reason: impl Into<String>) -> ShardError {
    ShardError {
        source_name: source_name.to_owned(),
        reason: reason.into(),
    }
}

impl Shard {
    /// The whole sweep, unsharded.
    pub const ALL: Shard = Shard { index: 0, count: 1 };

    /// Shard `index` (0-based) of `count`.
    pub fn new(index: u64, count: u64) -> Result<Shard, ShardError> {
        if count == 0 {
            return Err(error("shard", "the shard count must be at least 1"));
        }
        if index >= count {
            return Err(error(
                "shard",
                format!("shard {} of {count} does not exist", index + 1),
            ));
        }
        Ok(Shard { index, count })
    }

    /// 1-based K of K/N.
    pub fn number(self) -> u64 {
        self.index + 1
    }

    /// N of K/N.
    pub fn count(self) -> u64 {
        self.count
    }

    /// Whether this shard runs `seed`.
    pub fn owns(self, seed: u64) -> bool {
        seed % self.count == self.index
    }

    /// This shard's seeds of `start..start + seeds`, ascending.
    pub fn seeds(self, start: u64, seeds: u64) -> impl Iterator<Item = u64> {
        let end = start.saturating_add(seeds);
        let first = start + (self.index + self.count - start % self.count) % self.count;
        (first..end).step_by(usize::try_from(self.count).unwrap_or(usize::MAX))
    }

    /// The `i`-th seed of this shard from `start` on (for sweeps with no end).
    pub fn nth_seed(self, start: u64, i: u64) -> u64 {
        let first = start + (self.index + self.count - start % self.count) % self.count;
        first.saturating_add(i.saturating_mul(self.count))
    }

    /// The shard the scheduler gave this process, read through `var` (the
    /// environment, or a map in tests); `count` is `--shards`, when given.
    pub fn from_env(
        var: impl Fn(&str) -> Option<String>,
        count: Option<u64>,
    ) -> Result<Shard, ShardError> {
        let number = |name: &str| -> Result<Option<u64>, ShardError> {
            var(name)
                .map(|v| {
                    v.trim()
                        .parse::<u64>()
                        .map_err(|_| error(name, format!("{v:?} is not a whole number")))
                })
                .transpose()
        };
        let count_of = |names: &[&str]| -> Result<u64, ShardError> {
            if let Some(n) = count {
                return Ok(n);
            }
            for name in names {
                if let Some(n) = number(name)? {
                    return Ok(n);
                }
            }
            Err(error(
                names.first().copied().unwrap_or("--shards"),
                "unset: give the shard count with --shards N",
            ))
        };
        let named = |name: &str, r: Result<Shard, ShardError>| r.map_err(|e| error(name, e.reason));
        if let Some(v) = var("SIM_SHARD") {
            return named("SIM_SHARD", v.parse());
        }
        if let Some(i) = number("JOB_COMPLETION_INDEX")? {
            let n = count_of(&["SIM_SHARDS"])?;
            return named("JOB_COMPLETION_INDEX", Shard::new(i, n));
        }
        if let Some(id) = number("SLURM_ARRAY_TASK_ID")? {
            let min = number("SLURM_ARRAY_TASK_MIN")?.unwrap_or(0);
            let i = id
                .checked_sub(min)
                .ok_or_else(|| error("SLURM_ARRAY_TASK_ID", "below SLURM_ARRAY_TASK_MIN"))?;
            let n = count_of(&["SLURM_ARRAY_TASK_COUNT", "SIM_SHARDS"])?;
            return named("SLURM_ARRAY_TASK_ID", Shard::new(i, n));
        }
        if let Some(k) = number("CI_NODE_INDEX")? {
            let i = k
                .checked_sub(1)
                .ok_or_else(|| error("CI_NODE_INDEX", "counts from 1"))?;
            let n = count_of(&["CI_NODE_TOTAL", "SIM_SHARDS"])?;
            return named("CI_NODE_INDEX", Shard::new(i, n));
        }
        if let Some(i) = number("SIM_SHARD_INDEX")? {
            let n = count_of(&["SIM_SHARDS"])?;
            return named("SIM_SHARD_INDEX", Shard::new(i, n));
        }
        Err(error(
            "--shard-from-env",
            "no shard index in the environment: set SIM_SHARD=K/N, or run under a \
             Kubernetes Indexed Job (JOB_COMPLETION_INDEX), a Slurm array \
             (SLURM_ARRAY_TASK_ID), GitLab parallel jobs (CI_NODE_INDEX), or set \
             SIM_SHARD_INDEX from a GitHub Actions matrix",
        ))
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index + 1, self.count)
    }
}

impl std::str::FromStr for Shard {
    type Err = ShardError;

    /// `K/N`, 1-based: `1/4` is the first of four shards.
    fn from_str(s: &str) -> Result<Shard, ShardError> {
        let bad = || error("shard", format!("{s:?} is not K/N (like 1/4)"));
        let (k, n) = s.split_once('/').ok_or_else(bad)?;
        let k: u64 = k.trim().parse().map_err(|_| bad())?;
        let n: u64 = n.trim().parse().map_err(|_| bad())?;
        let index = k
            .checked_sub(1)
            .ok_or_else(|| error("shard", "shards count from 1 (1/N is the first)"))?;
        Shard::new(index, n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn shards_split_a_range_so_each_seed_runs_once() {
        let shards: Vec<Shard> = (1..=4)
            .map(|k| format!("{k}/4").parse().expect("valid"))
            .collect();
        let mut all: Vec<u64> = shards.iter().flat_map(|s| s.seeds(7, 30)).collect();
        all.sort_unstable();
        assert_eq!(all, (7..37).collect::<Vec<_>>());
        for s in &shards {
            assert!(s.seeds(7, 30).all(|seed| s.owns(seed)));
            let firsts: Vec<u64> = (0..3).map(|i| s.nth_seed(7, i)).collect();
            assert_eq!(firsts, s.seeds(7, 12).collect::<Vec<_>>());
        }
        assert_eq!(Shard::ALL.seeds(5, 3).collect::<Vec<_>>(), [5, 6, 7]);
    }

    #[test]
    fn bad_shards_name_what_is_wrong() {
        for bad in ["", "1", "a/2", "3/2", "0/2", "1/0"] {
            assert!(bad.parse::<Shard>().is_err(), "{bad:?}");
        }
        let e = Shard::from_env(env(&[("JOB_COMPLETION_INDEX", "x")]), None).expect_err("x");
        assert_eq!(e.source_name, "JOB_COMPLETION_INDEX");
        let e = Shard::from_env(env(&[("JOB_COMPLETION_INDEX", "2")]), None).expect_err("no N");
        assert!(e.to_string().contains("--shards"), "{e}");
        let e =
            Shard::from_env(env(&[("JOB_COMPLETION_INDEX", "4")]), Some(4)).expect_err("4 of 4");
        assert_eq!(e.source_name, "JOB_COMPLETION_INDEX");
        let e = Shard::from_env(env(&[]), None).expect_err("nothing");
        assert!(e.to_string().contains("SIM_SHARD"), "{e}");
    }

    #[test]
    fn every_scheduler_s_index_is_read() {
        let k8s = Shard::from_env(env(&[("JOB_COMPLETION_INDEX", "2")]), Some(5));
        assert_eq!(k8s, Shard::new(2, 5));
        let k8s = Shard::from_env(
            env(&[("JOB_COMPLETION_INDEX", "0"), ("SIM_SHARDS", "3")]),
            None,
        );
        assert_eq!(k8s, Shard::new(0, 3));
        let slurm = env(&[
            ("SLURM_ARRAY_TASK_ID", "11"),
            ("SLURM_ARRAY_TASK_MIN", "10"),
            ("SLURM_ARRAY_TASK_COUNT", "4"),
        ]);
        assert_eq!(Shard::from_env(slurm, None), Shard::new(1, 4));
        let gitlab = env(&[("CI_NODE_INDEX", "3"), ("CI_NODE_TOTAL", "3")]);
        assert_eq!(Shard::from_env(gitlab, None), Shard::new(2, 3));
        let gha = env(&[("SIM_SHARD_INDEX", "1"), ("SIM_SHARDS", "2")]);
        assert_eq!(Shard::from_env(gha, None), Shard::new(1, 2));
        let explicit = env(&[("SIM_SHARD", "2/2"), ("JOB_COMPLETION_INDEX", "0")]);
        assert_eq!(Shard::from_env(explicit, Some(9)), Shard::new(1, 2));
    }
}
