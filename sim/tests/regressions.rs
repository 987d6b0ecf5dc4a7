//! The regression corpus: every line of every `scenarios/regressions/*.txt`
//! rerun with `run_checked` (twice, trace hashes compared). A line without
//! `expect` must hold every invariant; `expect=violation:NAME` must break `NAME`
//! (a planted bug that must stay caught). Lines run in parallel, each whole on
//! one thread.
//!
//! Fault scripts (`scenarios/regressions/scripts/*.script`, written by
//! `ci/shrink-report`) replay the same way, and two more things hold of each:
//! it is a handful of faults, and without its planted bug the same faults break
//! nothing, so the script isolates the bug rather than a fault the runtime
//! cannot survive.

use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use sim::plan::script::FaultScript;
use sim::run::runner;
use sim::tools::corpus::{self, Expect, ReplaySpec};
use sim::tools::pool;

/// The most faults a committed shrunk script may keep: "a handful".
const SCRIPT_FAULTS_MAX: usize = 5;

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scenarios/regressions")
}

#[test]
fn every_regression_line_still_shows_what_it_expects() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(corpus_dir())
        .expect("scenarios/regressions exists")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "txt"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no *.txt in {}", corpus_dir().display());
    let mut lines: Vec<(String, ReplaySpec)> = Vec::new();
    for file in &files {
        let name = file.display().to_string();
        let text = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{name}: {e}"));
        let parsed = corpus::parse(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
        lines.extend(parsed.into_iter().map(|l| (name.clone(), l)));
    }
    let jobs = std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN);
    let mut failures = Vec::new();
    pool::ordered(
        &lines,
        jobs,
        &AtomicBool::new(false),
        |(_, l)| l.judge(&runner::run_checked(&l.spec)),
        |_| {},
        |i, verdict| {
            if let Err(why) = verdict {
                let (file, l) = &lines[i];
                failures.push(format!(
                    "{file}:{}: {}\n{why}  replay: {}\n",
                    l.line,
                    corpus::line_for(&l.spec),
                    runner::replay_command(&l.spec)
                ));
            }
        },
    );
    eprintln!(
        "{} regression line(s) from {} file(s)",
        lines.len(),
        files.len()
    );
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn every_shrunk_script_still_fails_with_its_bug_and_holds_without_it() {
    let dir = corpus_dir().join("scripts");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("scenarios/regressions/scripts exists")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "script"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no *.script in {}", dir.display());
    let scripts: Vec<(String, FaultScript)> = files
        .iter()
        .map(|f| {
            let name = f.display().to_string();
            let text = std::fs::read_to_string(f).unwrap_or_else(|e| panic!("{name}: {e}"));
            let script = FaultScript::parse(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
            (name, script)
        })
        .collect();
    let jobs = std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN);
    let mut failures = Vec::new();
    pool::ordered(
        &scripts,
        jobs,
        &AtomicBool::new(false),
        |(_, s)| judge_script(s),
        |_| {},
        |i, verdict| {
            if let Err(why) = verdict {
                failures.push(format!("{}: {why}", scripts[i].0));
            }
        },
    );
    eprintln!("{} shrunk script(s) replayed", scripts.len());
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

fn judge_script(script: &FaultScript) -> Result<(), String> {
    let faults = script.plan().faults.len();
    if faults > SCRIPT_FAULTS_MAX {
        return Err(format!("{faults} faults, more than {SCRIPT_FAULTS_MAX}"));
    }
    let line = ReplaySpec {
        line: 1,
        spec: script.spec.clone(),
        expect: script.expect.clone(),
    };
    line.judge(&runner::run_checked(&script.spec))?;
    if script.spec.plant.is_some() && script.expect != Expect::Pass {
        let clean = runner::RunSpec {
            plant: None,
            ..script.spec.clone()
        };
        let without = ReplaySpec {
            expect: Expect::Pass,
            spec: clean.clone(),
            ..line
        };
        without
            .judge(&runner::run_checked(&clean))
            .map_err(|why| format!("without its planted bug: {why}"))?;
    }
    Ok(())
}
