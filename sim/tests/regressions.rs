//! The regression corpus: every line of every `scenarios/regressions/*.txt`
//! rerun with `run_checked` (twice, trace hashes compared). A line without
//! `expect` must hold every invariant; `expect=violation:NAME` must break `NAME`
//! (a planted bug that must stay caught). Lines run in parallel, each whole on
//! one thread.

use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use sim::corpus::{self, ReplaySpec};
use sim::{pool, runner};

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
