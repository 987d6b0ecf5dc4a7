//! The public API for simulating your own handlers ([`sim::Simulation`]), on the
//! example docs/scenarios.md shows (`sim/examples/idempotent_handler.rs`; that
//! the page quotes it exactly is `sim/tests/docs.rs`'s job): a handler that charges
//! an order outside keel is caught charging twice under `ambiguous_commits`
//! within the first few seeds, and the same handler writing its charge through
//! keel's fenced effect API holds over every one of those seeds.

#[path = "../examples/idempotent_handler.rs"]
#[allow(dead_code)] // its `main` runs only as the example
mod example;

use example::{simulation, SEEDS};

#[test]
fn the_naive_charge_is_caught_charging_twice_and_the_fenced_one_holds() {
    let naive = simulation(false).expect("scenario");
    let sweep = naive.sweep(0..SEEDS).expect("sweep");
    let failure = sweep
        .failure
        .as_ref()
        .unwrap_or_else(|| panic!("the naive handler was not caught within seeds 0..{SEEDS}"));
    let seed = failure.spec.seed;
    eprintln!(
        "naive handler caught at seed {seed} ({} seeds run)\n{}",
        sweep.seeds_run,
        naive.report(failure)
    );
    // Only the user's invariant sees it: keel itself did nothing wrong.
    assert!(
        failure
            .violations
            .iter()
            .all(|v| v.invariant == "each_order_charged_once"
                && v.message.contains("charged 2 times")),
        "{}",
        naive.report(failure)
    );
    // The reported seed replays to the same run.
    let again = naive.run(seed).expect("replay");
    assert_eq!(again.trace_hash, failure.trace_hash);
    assert_eq!(again.violations, failure.violations);

    let fenced = simulation(true).expect("scenario");
    let sweep = fenced.sweep(0..SEEDS).expect("sweep");
    if let Some(failure) = &sweep.failure {
        panic!("the fenced handler failed:\n{}", fenced.report(failure));
    }
    assert_eq!(sweep.seeds_run, SEEDS);
}
