//! `sim shrink` on every planted bug: from the first seed that catches
//! it to a script of a handful of faults that still breaks the same invariant,
//! reads back from its text, and replays to the same violation. Prints the
//! sizes before and after (`cargo test -p sim --test shrink -- --nocapture`).

use std::num::NonZeroUsize;
use std::sync::atomic::AtomicBool;

use keel::planted::Bug;
use sim::plan::script::FaultScript;
use sim::run::runner::{self, RunSpec};
use sim::tools::corpus::Expect;
use sim::tools::pool;
use sim::tools::shrink::{shrink, SHRINK_RUNS_DEFAULT};

/// "A handful": the most faults a shrunk planted-bug script may keep.
const FAULTS_MAX: usize = 5;

/// The most seeds searched for one that catches a bug (the bound
/// tests/tests/planted_bugs.rs holds every bug to).
const SEARCH_SEEDS_MAX: u64 = 200;

/// The first seed of `scenario` that breaks `invariant` with `bug` planted.
fn first_catching_seed(bug: Bug, scenario: &scenarios::Scenario, invariant: &str) -> Option<u64> {
    (0..SEARCH_SEEDS_MAX).find(|&seed| {
        let spec = RunSpec {
            scenario: scenario.clone(),
            seed,
            plant: Some(bug),
            storage: Default::default(),
            script: None,
        };
        runner::run_once(&spec).is_ok_and(|r| r.violations.iter().any(|v| v.invariant == invariant))
    })
}

fn shrink_one((bug, scenario, invariant): &(Bug, &str, &str)) -> Result<String, String> {
    let scenario = scenarios::by_name(scenario).map_err(|e| e.to_string())?;
    let seed = first_catching_seed(*bug, &scenario, invariant)
        .ok_or_else(|| format!("{bug}: no seed of 0..{SEARCH_SEEDS_MAX} breaks {invariant}"))?;
    let spec = RunSpec {
        scenario,
        seed,
        plant: Some(*bug),
        storage: Default::default(),
        script: None,
    };
    let shrunk = shrink(&spec, Some(invariant), SHRINK_RUNS_DEFAULT, &mut |_| {})
        .map_err(|e| e.to_string())?;
    let (before, after) = (shrunk.before, shrunk.after);
    if after.faults > FAULTS_MAX || after.faults > before.faults {
        return Err(format!("{bug}: shrank {before} to {after}"));
    }
    // The script as committed: through its text and back.
    let text = shrunk.script.render("test");
    let script = FaultScript::parse(&text).map_err(|e| format!("{bug}: {e}\n{text}"))?;
    assert_eq!(script.expect, Expect::Violation((*invariant).into()));
    let replayed = runner::run_checked(&script.spec).map_err(|e| e.to_string())?;
    if !replayed
        .violations
        .iter()
        .any(|v| v.invariant == *invariant)
    {
        return Err(format!(
            "{bug}: the script no longer breaks {invariant}\n{text}"
        ));
    }
    Ok(format!(
        "{bug}: {before}\n  -> {after} ({} runs)",
        shrunk.runs
    ))
}

#[test]
fn every_planted_bug_shrinks_to_a_handful_of_faults() {
    let jobs = std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN);
    let mut failures = Vec::new();
    pool::ordered(
        &sim::run::checkers::PLANTED_BUG_CATCHERS,
        jobs,
        &AtomicBool::new(false),
        shrink_one,
        |_| {},
        |_, outcome| match outcome {
            Ok(line) => eprintln!("{line}"),
            Err(why) => failures.push(why),
        },
    );
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}
