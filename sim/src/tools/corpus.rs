//! Replay corpora: text files of runs to rerun, one per line.
//!
//! `sim sweep --failures FILE` writes one; `sim replay --from FILE` and the
//! regression test (`scenarios/regressions/*.txt`) read them. A line is
//! whitespace-separated `key=value` fields:
//!
//! ```text
//! # why this seed is here
//! scenario=stale_retries seed=2 storage=mem
//! scenario=panicking_tasks seed=0 plant=swallowed_panic expect=violation:panics_surfaced
//! ```
//!
//! `scenario` (a catalog name) or `scenario_file` (a user's TOML file) and
//! `seed` are required; `storage` defaults to `mem`, `plant` to
//! none, and `expect` to `pass` (every invariant holds). `expect=violation:NAME`
//! says the run must break invariant `NAME`: a committed proof that a planted bug
//! stays caught. `#` starts a comment; blank lines are skipped.

use keel::planted::Bug;

use crate::run::runner::{RunResult, RunSpec, SimError, StorageKind};

/// What a corpus line demands of its run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expect {
    /// Every invariant holds.
    Pass,
    /// This invariant is violated.
    Violation(String),
}

impl std::fmt::Display for Expect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Expect::Pass => f.write_str("pass"),
            Expect::Violation(name) => write!(f, "violation:{name}"),
        }
    }
}

/// One line of a corpus: the run and what it must show.
#[derive(Clone, Debug)]
pub struct ReplaySpec {
    /// 1-based line number in its file, for messages.
    pub line: usize,
    /// What to run.
    pub spec: RunSpec,
    /// What the run must show.
    pub expect: Expect,
}

/// A corpus line that does not parse; names the line and the field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {field}: {reason}")]
pub struct CorpusError {
    /// 1-based line number.
    pub line: usize,
    /// The field at fault (or the bare word that is not `key=value`).
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

/// Parse a corpus file's text.
pub fn parse(text: &str) -> Result<Vec<ReplaySpec>, CorpusError> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let content = raw.split('#').next().unwrap_or("").trim();
        if !content.is_empty() {
            out.push(parse_line(i + 1, content)?);
        }
    }
    Ok(out)
}

pub(crate) fn parse_line(line: usize, content: &str) -> Result<ReplaySpec, CorpusError> {
    let err = |field: &str, reason: String| CorpusError {
        line,
        field: field.to_owned(),
        reason,
    };
    let (mut scenario, mut seed, mut plant, mut storage, mut expect) =
        (None, None, None, None, None);
    for word in content.split_whitespace() {
        let Some((key, value)) = word.split_once('=') else {
            return Err(err(word, "expected key=value".into()));
        };
        let fresh =
            match key {
                "scenario" => scenario
                    .replace(scenarios::by_name(value).map_err(|e| err(key, e.to_string()))?)
                    .is_none(),
                "scenario_file" => scenario
                    .replace(
                        scenarios::Scenario::load(std::path::Path::new(value))
                            .map_err(|e| err(key, e.to_string()))?,
                    )
                    .is_none(),
                "seed" => seed
                    .replace(value.parse::<u64>().map_err(|_| {
                        err(key, format!("{value:?} is not a non-negative integer"))
                    })?)
                    .is_none(),
                "plant" => plant
                    .replace(value.parse::<Bug>().map_err(|e| err(key, e.to_string()))?)
                    .is_none(),
                "storage" => storage
                    .replace(value.parse::<StorageKind>().map_err(|e| err(key, e))?)
                    .is_none(),
                "expect" => expect
                    .replace(parse_expect(value).map_err(|e| err(key, e))?)
                    .is_none(),
                other => {
                    return Err(err(
                        other,
                        "unknown key; valid: scenario, scenario_file, seed, plant, storage, expect"
                            .into(),
                    ))
                }
            };
        if !fresh {
            return Err(err(key, "given twice".into()));
        }
    }
    let scenario = scenario.ok_or_else(|| err("scenario", "missing".into()))?;
    let seed = seed.ok_or_else(|| err("seed", "missing".into()))?;
    Ok(ReplaySpec {
        line,
        spec: RunSpec {
            scenario,
            seed,
            plant,
            storage: storage.unwrap_or_default(),
            script: None,
        },
        expect: expect.unwrap_or(Expect::Pass),
    })
}

fn parse_expect(value: &str) -> Result<Expect, String> {
    if value == "pass" {
        return Ok(Expect::Pass);
    }
    let name = value
        .strip_prefix("violation:")
        .ok_or_else(|| format!("{value:?}: use pass or violation:<invariant>"))?;
    let known = crate::run::checkers::names();
    if known.contains(&name) {
        Ok(Expect::Violation(name.to_owned()))
    } else {
        Err(format!(
            "unknown invariant {name:?}; valid: {}",
            known.join(", ")
        ))
    }
}

/// The corpus line for `spec` (no `expect`: the run must pass), as
/// `sweep --failures` writes it.
pub fn line_for(spec: &RunSpec) -> String {
    let plant = spec
        .plant
        .map(|b| format!(" plant={b}"))
        .unwrap_or_default();
    let scenario = match &spec.scenario.source {
        Some(path) => format!("scenario_file={}", path.display()),
        None => format!("scenario={}", spec.scenario.name),
    };
    format!(
        "{scenario} seed={} storage={}{plant}",
        spec.seed, spec.storage
    )
}

impl ReplaySpec {
    /// Whether `outcome` is what this line demands; `Err` says what happened
    /// instead. A run that could not finish never meets an expectation.
    pub fn judge(&self, outcome: &Result<RunResult, SimError>) -> Result<(), String> {
        let result = outcome.as_ref().map_err(ToString::to_string)?;
        match &self.expect {
            Expect::Pass if result.passed() => Ok(()),
            Expect::Pass => Err(crate::run::runner::report(result)),
            Expect::Violation(name) if result.violations.iter().any(|v| v.invariant == name) => {
                Ok(())
            }
            Expect::Violation(name) => Err(format!(
                "expected invariant {name} to be violated, but {}\n  replay: {}\n",
                if result.passed() {
                    "every invariant held".to_owned()
                } else {
                    crate::run::runner::report(result)
                },
                crate::run::runner::replay_command(&result.spec)
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(text: &str) -> CorpusError {
        match parse(text) {
            Ok(specs) => panic!("parsed {} lines of {text:?}", specs.len()),
            Err(e) => e,
        }
    }

    #[test]
    fn good_lines_comments_and_blank_lines() {
        let text = "# header\n\nscenario=stale_retries seed=2\n   \n\
                    scenario=clock_skew seed=7 storage=sqlite plant=stale_resign # why\n\
                    scenario=panicking_tasks seed=0 plant=swallowed_panic expect=violation:panics_surfaced\n";
        let specs = parse(text).expect("parses");
        assert_eq!(specs.len(), 3);
        assert_eq!(specs[0].line, 3);
        assert_eq!(specs[0].spec.scenario.name, "stale_retries");
        assert_eq!(specs[0].spec.seed, 2);
        assert_eq!(specs[0].spec.storage, StorageKind::Mem);
        assert_eq!(specs[0].spec.plant, None);
        assert_eq!(specs[0].expect, Expect::Pass);
        assert_eq!(specs[1].line, 5);
        assert_eq!(specs[1].spec.storage, StorageKind::Sqlite);
        assert_eq!(specs[1].spec.plant, Some(Bug::StaleResign));
        assert_eq!(specs[2].expect, Expect::Violation("panics_surfaced".into()));
        assert!(parse("# only comments\n\n").expect("parses").is_empty());
    }

    #[test]
    fn a_written_line_parses_back_to_its_spec() {
        let spec = RunSpec {
            scenario: scenarios::by_name("swarm").expect("scenario"),
            seed: 41,
            plant: Some(Bug::BurstTicks),
            storage: StorageKind::Sqlite,
            script: None,
        };
        let back = parse(&line_for(&spec)).expect("parses");
        assert_eq!(back.len(), 1);
        assert_eq!(back[0].spec.scenario.name, "swarm");
        assert_eq!(
            (back[0].spec.seed, back[0].spec.plant, back[0].spec.storage),
            (41, Some(Bug::BurstTicks), StorageKind::Sqlite)
        );
    }

    #[test]
    fn errors_name_the_line_and_the_field() {
        let e = error("scenario=stale_retries seed=1\nscenario=nope seed=1\n");
        assert_eq!((e.line, e.field.as_str()), (2, "scenario"));
        assert!(e.reason.contains("stale_retries"), "lists valid: {e}");

        let e = error("\n\nscenario=stale_retries seed=-3");
        assert_eq!((e.line, e.field.as_str()), (3, "seed"));
        assert_eq!(
            e.to_string(),
            "line 3: seed: \"-3\" is not a non-negative integer"
        );

        let e = error("scenario=stale_retries seed=1 colour=red");
        assert_eq!((e.line, e.field.as_str()), (1, "colour"));
        assert!(e.reason.contains("unknown key"), "{e}");

        let e = error("scenario=stale_retries");
        assert_eq!((e.field.as_str(), e.reason.as_str()), ("seed", "missing"));
        let e = error("scenario=stale_retries seed=1 seed=2");
        assert_eq!(
            (e.field.as_str(), e.reason.as_str()),
            ("seed", "given twice")
        );
        let e = error("scenario=stale_retries seed=1 stray");
        assert_eq!(e.field, "stray");
        let e = error("scenario=stale_retries seed=1 plant=nope");
        assert_eq!(e.field, "plant");
        let e = error("scenario=stale_retries seed=1 storage=pg");
        assert_eq!(e.field, "storage");
        let e = error("scenario=stale_retries seed=1 expect=violation:nope");
        assert_eq!(e.field, "expect");
        assert!(e.reason.contains("panics_surfaced"), "lists valid: {e}");
    }
}
