//! One fixed seed per scenario, summarized (`sim::run::summary`) and compared with
//! the snapshot in `tests/snapshots/`: a change in the runtime's behaviour
//! shows up in review as a readable diff of counted events. After an intended
//! change, review and accept with `cargo insta review` (or rerun with
//! `INSTA_UPDATE=always` and read the diff in git).

use std::num::NonZeroUsize;
use std::sync::atomic::AtomicBool;

use sim::run::runner::{self, RunSpec};
use sim::run::summary;
use sim::tools::pool;

/// The seed every scenario is pinned at.
const SNAPSHOT_SEED: u64 = 1;

#[test]
fn every_scenario_summary_matches_its_snapshot() {
    let specs: Vec<RunSpec> = scenarios::all()
        .into_iter()
        .map(|scenario| RunSpec {
            scenario,
            seed: SNAPSHOT_SEED,
            plant: None,
            storage: Default::default(),
            script: None,
        })
        .collect();
    let jobs = std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN);
    let mut summaries = Vec::new();
    pool::ordered(
        &specs,
        jobs,
        &AtomicBool::new(false),
        |spec| runner::run_once(spec).map(|r| summary::summary(&r)),
        |_| {},
        |i, s| summaries.push((specs[i].scenario.name.clone(), s)),
    );
    // Assert on this thread, one snapshot per scenario, so every mismatch is
    // written out for review rather than only the first.
    let mut mismatched = Vec::new();
    for (name, text) in summaries {
        let text = text.unwrap_or_else(|e| panic!("{name}: {e}"));
        let outcome = std::panic::catch_unwind(|| insta::assert_snapshot!(name.clone(), text));
        if outcome.is_err() {
            mismatched.push(name);
        }
    }
    assert!(mismatched.is_empty(), "snapshots differ: {mismatched:?}");
}
