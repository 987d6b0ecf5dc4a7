//! Result files: what one `sim sweep --results FILE` ran, as JSON lines, and
//! `sim merge`, which checks that a sharded sweep's files add up.
//!
//! A file opens with a `header` line (the binary's build id, the shard, the
//! planned seeds), has one `seed` line per seed as it finishes, and closes with
//! an `end` line; a shard killed midway leaves a file without one.
//!
//! ```text
//! {"kind":"header","build_id":"5f0c…","version":"0.1.0","shard":"2/4","scenarios":["swarm"],"storage":"mem","plant":null,"start":0,"seeds":1000,"minutes":null}
//! {"kind":"seed","scenario":"swarm","seed":1,"storage":"mem","plant":null,"verdict":"pass","invariants":[],"summary":null,"replay":"cargo run -p sim -- replay --scenario swarm --seed 1","wall_ms":84}
//! {"kind":"end","seeds":250,"failed":0,"wall_s":21.5,"stopped":"done"}
//! ```
//!
//! [`merge`] insists that every file comes from one build, that no shard and
//! no seed appears twice, that every shard of N is there and finished, and
//! that a shard of a fixed range ran all its seeds; then it lists the failures'
//! replay lines.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

use crate::tools::shard::Shard;

/// One line of a result file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Line {
    /// The file's first line: what this shard set out to run.
    Header(Header),
    /// One seed's verdict.
    Seed(SeedLine),
    /// The last line, written when the shard stopped on its own.
    End(End),
}

/// What a shard set out to run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Header {
    /// [`build_id`] of the binary that ran it.
    pub build_id: String,
    /// The sim crate's version.
    pub version: String,
    /// `K/N`.
    pub shard: String,
    /// Scenario names (a user's file by its path).
    pub scenarios: Vec<String>,
    /// `mem` or `sqlite`.
    pub storage: String,
    /// The planted bug, if any.
    pub plant: Option<String>,
    /// First seed of the range.
    pub start: u64,
    /// Seeds in the range (all shards together), or `None` for a time budget.
    pub seeds: Option<u64>,
    /// The time budget, in minutes, if any.
    pub minutes: Option<f64>,
}

/// The verdict of one seed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Every invariant held.
    Pass,
    /// An invariant was violated.
    Violation,
    /// Two runs of the seed diverged.
    Nondeterministic,
    /// The run could not finish.
    Error,
}

/// One seed's line.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SeedLine {
    /// Scenario name, or a user's scenario file's path.
    pub scenario: String,
    /// The seed.
    pub seed: u64,
    /// `mem` or `sqlite`.
    pub storage: String,
    /// The planted bug, if any.
    pub plant: Option<String>,
    /// What happened.
    pub verdict: Verdict,
    /// Invariants violated, in order.
    pub invariants: Vec<String>,
    /// The failure's first line, if it failed.
    pub summary: Option<String>,
    /// The command that replays it.
    pub replay: String,
    /// Wall time, both runs, in ms.
    pub wall_ms: u64,
}

/// The last line of a finished shard.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct End {
    /// Seeds run.
    pub seeds: u64,
    /// Seeds that did not pass.
    pub failed: u64,
    /// Wall time of the whole shard, seconds.
    pub wall_s: f64,
    /// Why it stopped: `done`, `time budget` or `fail fast`.
    pub stopped: String,
}

impl Line {
    /// The line as JSON, without a newline.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self)
            .unwrap_or_else(|e| format!("{{\"kind\":\"unwritable\",\"error\":\"{e}\"}}"))
    }
}

/// The running binary's build id: a 64-bit FNV-1a hash of its own executable,
/// so two shards agree exactly when they ran the same bytes. `unknown` where
/// the executable cannot be read.
pub fn build_id() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| {
        std::env::current_exe()
            .and_then(std::fs::read)
            .map(|bytes| format!("{:016x}", fnv1a(&bytes)))
            .unwrap_or_else(|_| "unknown".into())
    })
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Why a set of result files does not add up to one sweep.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MergeError {
    /// A line is not a result line.
    #[error("{file}:{line}: {reason}")]
    Malformed {
        /// The file.
        file: String,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// The files do not add up; every reason is listed.
    #[error("the result files do not add up to one sweep:\n  {}", reasons.join("\n  "))]
    Inconsistent {
        /// Each problem, one line each.
        reasons: Vec<String>,
    },
}

/// What a consistent set of result files says.
#[derive(Clone, Debug, PartialEq)]
pub struct Merged {
    /// The build every file came from.
    pub build_id: String,
    /// Shard count.
    pub shards: u64,
    /// Seeds run, in all.
    pub seeds: u64,
    /// Seeds by verdict.
    pub verdicts: BTreeMap<String, u64>,
    /// Every seed that did not pass, in (scenario, storage, plant, seed) order.
    pub failures: Vec<SeedLine>,
    /// Wall time the shards spent, added up, seconds.
    pub wall_s: f64,
}

/// One file, parsed.
struct ShardFile<'a> {
    name: &'a str,
    header: Header,
    seeds: Vec<SeedLine>,
    end: Option<End>,
}

fn parse_file<'a>(name: &'a str, text: &str) -> Result<ShardFile<'a>, MergeError> {
    let bad = |line: usize, reason: String| MergeError::Malformed {
        file: name.to_owned(),
        line,
        reason,
    };
    let mut header = None;
    let (mut seeds, mut end) = (Vec::new(), None);
    for (i, raw) in text.lines().enumerate() {
        if raw.trim().is_empty() {
            continue;
        }
        let line: Line = serde_json::from_str(raw).map_err(|e| bad(i + 1, e.to_string()))?;
        match line {
            Line::Header(h) if header.is_none() && i == 0 => header = Some(h),
            Line::Header(_) => {
                return Err(bad(i + 1, "a header belongs on the first line only".into()))
            }
            _ if header.is_none() => {
                return Err(bad(i + 1, "the first line must be the header".into()))
            }
            _ if end.is_some() => return Err(bad(i + 1, "a line after the end line".into())),
            Line::Seed(s) => seeds.push(s),
            Line::End(e) => end = Some(e),
        }
    }
    let header = header.ok_or_else(|| bad(1, "empty file: no header".into()))?;
    Ok(ShardFile {
        name,
        header,
        seeds,
        end,
    })
}

/// Check `files` (`(name, text)`) add up to one sweep, and merge them.
pub fn merge(files: &[(String, String)]) -> Result<Merged, MergeError> {
    let parsed = files
        .iter()
        .map(|(name, text)| parse_file(name, text))
        .collect::<Result<Vec<_>, _>>()?;
    let mut reasons = Vec::new();
    let Some(first) = parsed.first() else {
        return Err(MergeError::Inconsistent {
            reasons: vec!["no result files given".into()],
        });
    };
    let build_id = first.header.build_id.clone();
    for f in &parsed {
        if f.header.build_id != build_id {
            reasons.push(format!(
                "{} ran build {}, {} ran build {build_id}: rerun both on one binary",
                f.name, f.header.build_id, first.name
            ));
        }
        let plan = |h: &Header| {
            (
                h.scenarios.clone(),
                h.storage.clone(),
                h.plant.clone(),
                h.start,
                h.seeds,
            )
        };
        if plan(&f.header) != plan(&first.header) {
            reasons.push(format!(
                "{} planned another sweep than {}",
                f.name, first.name
            ));
        }
    }
    let shards = shards_check(&parsed, &mut reasons);
    let mut seen: BTreeMap<(String, String, Option<String>, u64), &str> = BTreeMap::new();
    for f in &parsed {
        for s in &f.seeds {
            let key = (
                s.scenario.clone(),
                s.storage.clone(),
                s.plant.clone(),
                s.seed,
            );
            if let Some(other) = seen.insert(key, f.name) {
                reasons.push(format!(
                    "seed {} of {} ran twice: in {other} and {}",
                    s.seed, s.scenario, f.name
                ));
            }
        }
        if f.end.is_none() {
            reasons.push(format!(
                "{} has no end line: its shard stopped before it finished",
                f.name
            ));
        }
        if let (Some(seeds), Ok(shard)) = (f.header.seeds, f.header.shard.parse::<Shard>()) {
            let stopped_early = f.end.as_ref().is_some_and(|e| e.stopped != "done");
            let want =
                shard.seeds(f.header.start, seeds).count() as u64 * f.header.scenarios.len() as u64;
            let got = f.seeds.len() as u64;
            if got < want && !stopped_early {
                reasons.push(format!("{} ran {got} of its shard's {want} seeds", f.name));
            }
        }
    }
    if !reasons.is_empty() {
        return Err(MergeError::Inconsistent { reasons });
    }
    let mut verdicts = BTreeMap::new();
    let mut failures = Vec::new();
    for f in &parsed {
        for s in &f.seeds {
            let name = serde_json::to_value(s.verdict)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned));
            *verdicts.entry(name.unwrap_or_default()).or_insert(0) += 1;
            if s.verdict != Verdict::Pass {
                failures.push(s.clone());
            }
        }
    }
    failures.sort_by(|a, b| {
        (&a.scenario, &a.storage, &a.plant, a.seed).cmp(&(
            &b.scenario,
            &b.storage,
            &b.plant,
            b.seed,
        ))
    });
    Ok(Merged {
        build_id,
        shards,
        seeds: seen.len() as u64,
        verdicts,
        failures,
        wall_s: parsed
            .iter()
            .filter_map(|f| f.end.as_ref())
            .map(|e| e.wall_s)
            .sum(),
    })
}

/// Every shard of N once: returns N.
fn shards_check(parsed: &[ShardFile<'_>], reasons: &mut Vec<String>) -> u64 {
    let mut by_number: BTreeMap<u64, &str> = BTreeMap::new();
    let mut count = None;
    for f in parsed {
        let shard = match f.header.shard.parse::<Shard>() {
            Ok(s) => s,
            Err(e) => {
                reasons.push(format!("{}: {e}", f.name));
                continue;
            }
        };
        match count {
            None => count = Some(shard.count()),
            Some(n) if n != shard.count() => {
                reasons.push(format!(
                    "{} is shard {shard}, but another file is one of {n}",
                    f.name
                ));
            }
            Some(_) => {}
        }
        if let Some(other) = by_number.insert(shard.number(), f.name) {
            reasons.push(format!(
                "shard {shard} appears twice: {other} and {}",
                f.name
            ));
        }
    }
    let n = count.unwrap_or(1);
    let missing: Vec<String> = (1..=n)
        .filter(|k| !by_number.contains_key(k))
        .map(|k| format!("{k}/{n}"))
        .collect();
    if !missing.is_empty() {
        reasons.push(format!("missing shard(s): {}", missing.join(", ")));
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(shard: &str, build: &str) -> Line {
        Line::Header(Header {
            build_id: build.into(),
            version: "0".into(),
            shard: shard.into(),
            scenarios: vec!["swarm".into()],
            storage: "mem".into(),
            plant: None,
            start: 0,
            seeds: Some(4),
            minutes: None,
        })
    }

    fn seed(seed: u64, verdict: Verdict) -> Line {
        Line::Seed(SeedLine {
            scenario: "swarm".into(),
            seed,
            storage: "mem".into(),
            plant: None,
            verdict,
            invariants: vec![],
            summary: None,
            replay: format!("sim replay --scenario swarm --seed {seed}"),
            wall_ms: 1,
        })
    }

    fn end(seeds: u64) -> Line {
        Line::End(End {
            seeds,
            failed: 0,
            wall_s: 1.0,
            stopped: "done".into(),
        })
    }

    fn file(name: &str, lines: &[Line]) -> (String, String) {
        let text: Vec<String> = lines.iter().map(Line::to_json).collect();
        (name.into(), text.join("\n"))
    }

    #[test]
    fn two_shards_merge_and_list_their_failures() {
        let a = file(
            "a",
            &[
                header("1/2", "b1"),
                seed(0, Verdict::Pass),
                seed(2, Verdict::Violation),
                end(2),
            ],
        );
        let b = file(
            "b",
            &[
                header("2/2", "b1"),
                seed(1, Verdict::Pass),
                seed(3, Verdict::Pass),
                end(2),
            ],
        );
        let m = merge(&[a, b]).expect("consistent");
        assert_eq!((m.seeds, m.shards, m.failures.len()), (4, 2, 1));
        assert_eq!(m.failures[0].seed, 2);
        assert_eq!(m.verdicts.get("pass"), Some(&3));
    }

    #[test]
    fn files_that_do_not_add_up_say_why() {
        let reasons = |files: &[(String, String)]| match merge(files) {
            Err(MergeError::Inconsistent { reasons }) => reasons.join("\n"),
            other => panic!("{other:?}"),
        };
        let a = file(
            "a",
            &[
                header("1/2", "b1"),
                seed(0, Verdict::Pass),
                seed(2, Verdict::Pass),
                end(2),
            ],
        );
        let other_build = file(
            "b",
            &[
                header("2/2", "b2"),
                seed(1, Verdict::Pass),
                seed(3, Verdict::Pass),
                end(2),
            ],
        );
        assert!(reasons(&[a.clone(), other_build]).contains("build b2"));
        assert!(reasons(std::slice::from_ref(&a)).contains("missing shard(s): 2/2"));
        let short = file("b", &[header("2/2", "b1"), seed(1, Verdict::Pass)]);
        let why = reasons(&[a.clone(), short]);
        assert!(
            why.contains("no end line") && why.contains("ran 1 of its shard's 2"),
            "{why}"
        );
        let twice = file(
            "b",
            &[
                header("2/2", "b1"),
                seed(1, Verdict::Pass),
                seed(2, Verdict::Pass),
                end(2),
            ],
        );
        assert!(reasons(&[a.clone(), twice]).contains("seed 2 of swarm ran twice"));
        assert!(reasons(&[a.clone(), a.clone()]).contains("appears twice"));
        let Err(MergeError::Malformed { file, line, .. }) =
            merge(&[("x".into(), "{\"kind\":\"seed\"}".into())])
        else {
            panic!("malformed");
        };
        assert_eq!((file.as_str(), line), ("x", 1));
    }
}
