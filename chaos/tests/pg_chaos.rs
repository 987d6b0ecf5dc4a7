//! The chaos harness catches a planted bug on a real PostgreSQL within a
//! bounded number of runs: real worker processes, real faults, the
//! simulator's checkers. Runs only when `KEEL_PG_URL` is set; without it the
//! test says so by name and passes.

use std::path::PathBuf;

use chaos::plan::{ChaosPlan, PlanConfig};
use chaos::run::{run, Database, RunConfig};
use keel::planted::Bug;

/// The bug, the invariant that must catch it, and the runs allowed. The bug
/// shows when storage's clock steps past the stale threshold while workers
/// still trust their claims: the plans of seeds 2, 3 and 5 step it forward by
/// 15 to 30 s (`chaos plan --engine postgres --heal-s 0 --seed N`); the
/// README's chaos table says how many runs each bug took.
const BUG: Bug = Bug::HeartbeatIgnoresLostClaim;
const CATCHER: &str = "no_double_execution";
const RUNS_MAX: u64 = 6;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planted_bug_is_caught_on_postgres_within_bounded_runs() {
    let Ok(url) = std::env::var("KEEL_PG_URL") else {
        eprintln!(
            "SKIPPED a_planted_bug_is_caught_on_postgres_within_bounded_runs: KEEL_PG_URL not set"
        );
        return;
    };
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("chaos-planted");
    // Safety only: no heal phase, so each run lasts its fault phase.
    let cfg = PlanConfig {
        heal_ms: 0,
        ..PlanConfig::default()
    };
    let mut tried = Vec::new();
    for seed in 1..=RUNS_MAX {
        let plan = ChaosPlan::generate(&cfg, seed);
        let report = run(&RunConfig {
            database: Database::Postgres(url.clone()),
            dir: dir.join(seed.to_string()),
            plan,
            plant: Some(BUG),
            exe: PathBuf::from(env!("CARGO_BIN_EXE_chaos")),
            keep_schema: false,
        })
        .await
        .expect("a chaos run");
        if report.violations.iter().any(|v| v.invariant == CATCHER) {
            eprintln!("{}", report.summary());
            return;
        }
        tried.push(format!(
            "seed {seed}: {}",
            report.summary().lines().next().unwrap_or_default()
        ));
    }
    panic!(
        "{} not caught by {CATCHER} in {RUNS_MAX} runs:\n{}",
        BUG.name(),
        tried.join("\n")
    );
}
