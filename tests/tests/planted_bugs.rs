//! The simulator proves itself on the bugs it exists to find.
//!
//! For each planted bug: sweep the scenario that targets it until a seed violates
//! the invariant that names the bug (at most `SEEDS_MAX` seeds), replay that seed
//! and insist on the same violation and the same trace hash, and run the same
//! seeds with the bug switched off to see them pass.

use keel::planted::Bug;
use sim::run::runner::{self, report, RunResult, RunSpec};

/// The bound the issues promise: every planted bug is caught within 200 seeds
/// (leadership bugs) or 500 seeds (job runtime bugs); 200 holds for all so far.
const SEEDS_MAX: u64 = 200;

fn spec(scenario: &str, seed: u64, plant: Option<Bug>) -> RunSpec {
    RunSpec {
        scenario: scenarios::by_name(scenario).expect("scenario in catalog"),
        seed,
        plant,
        storage: Default::default(),
        script: None,
    }
}

fn first_detection(bug: Bug, scenario: &str, invariant: &str) -> RunResult {
    for seed in 0..SEEDS_MAX {
        // Every seed runs twice: detection must be deterministic too.
        let result =
            runner::run_checked(&spec(scenario, seed, Some(bug))).expect("deterministic run");
        if result.violations.iter().any(|v| v.invariant == invariant) {
            return result;
        }
    }
    panic!("{bug} was not caught by {invariant} within {SEEDS_MAX} seeds of {scenario}");
}

fn assert_caught_replayed_and_clean_without_the_bug(bug: Bug, scenario: &str, invariant: &str) {
    let found = first_detection(bug, scenario, invariant);
    let seed = found.spec.seed;
    eprintln!("{bug}: caught at seed {seed}\n{}", report(&found));

    // The reported seed replays to the same violation and trace.
    let replayed = runner::run_once(&found.spec).expect("replay");
    assert_eq!(
        replayed.trace_hash, found.trace_hash,
        "replay of seed {seed} has another trace"
    );
    assert_eq!(
        replayed.violations, found.violations,
        "replay of seed {seed} reports other violations"
    );

    // Without the bug, every seed up to the one that caught it holds.
    for s in 0..=seed {
        let clean = runner::run_checked(&spec(scenario, s, None)).expect("clean run");
        assert!(
            clean.passed(),
            "seed {s} fails without {bug}:\n{}",
            report(&clean)
        );
    }
}

#[test]
fn stale_resign_is_caught_by_no_stale_resign_and_replays() {
    assert_caught_replayed_and_clean_without_the_bug(
        Bug::StaleResign,
        "stale_retries",
        "no_stale_resign",
    );
}

#[test]
fn cross_term_stop_is_caught_by_no_cross_term_teardown_and_replays() {
    assert_caught_replayed_and_clean_without_the_bug(
        Bug::CrossTermStop,
        "stale_retries",
        "no_cross_term_teardown",
    );
}

#[test]
fn heartbeat_ignores_lost_claim_is_caught_by_no_double_execution_and_replays() {
    assert_caught_replayed_and_clean_without_the_bug(
        Bug::HeartbeatIgnoresLostClaim,
        "clock_skew",
        "no_double_execution",
    );
}

#[test]
fn finalize_without_owner_guard_is_caught_by_no_double_execution_and_replays() {
    assert_caught_replayed_and_clean_without_the_bug(
        Bug::FinalizeWithoutOwnerGuard,
        "clock_skew",
        "no_double_execution",
    );
}

#[test]
fn ignored_shutdown_deadline_is_caught_by_bounded_shutdown_and_replays() {
    assert_caught_replayed_and_clean_without_the_bug(
        Bug::IgnoredShutdownDeadline,
        "shutdown_under_load",
        "bounded_shutdown",
    );
}

#[test]
fn swallowed_panic_is_caught_by_panics_surfaced_and_replays() {
    assert_caught_replayed_and_clean_without_the_bug(
        Bug::SwallowedPanic,
        "panicking_tasks",
        "panics_surfaced",
    );
}

#[test]
fn burst_ticks_is_caught_by_no_tick_burst_and_replays() {
    assert_caught_replayed_and_clean_without_the_bug(
        Bug::BurstTicks,
        "slow_ticks",
        "no_tick_burst",
    );
}

#[test]
fn late_cancel_rewrites_outcome_is_caught_by_finished_work_stands_and_replays() {
    assert_caught_replayed_and_clean_without_the_bug(
        Bug::LateCancelRewritesOutcome,
        "shutdown_under_load",
        "finished_work_stands",
    );
}

#[test]
fn claim_ahead_ignores_trust_is_caught_by_no_double_execution_and_replays() {
    assert_caught_replayed_and_clean_without_the_bug(
        Bug::ClaimAheadIgnoresTrust,
        "claim_ahead",
        "no_double_execution",
    );
}

#[test]
fn incarnation_blind_holder_is_caught_by_one_leader_per_term_and_replays() {
    assert_caught_replayed_and_clean_without_the_bug(
        Bug::IncarnationBlindHolder,
        "zombies",
        "one_leader_per_term",
    );
}

#[test]
fn trust_from_reply_is_caught_by_one_believed_leader_and_replays() {
    assert_caught_replayed_and_clean_without_the_bug(
        Bug::TrustFromReply,
        "storage_faults",
        "one_believed_leader",
    );
}

/// The stretched belief itself, before any peer takes the lease inside it:
/// `storage_faults` catches it at seed 7 this way, at 132 by a peer's grant.
#[test]
fn trust_from_reply_is_caught_by_belief_within_lease_and_replays() {
    assert_caught_replayed_and_clean_without_the_bug(
        Bug::TrustFromReply,
        "storage_faults",
        "belief_within_lease",
    );
}

#[test]
fn renew_error_extends_trust_is_caught_by_one_believed_leader_and_replays() {
    assert_caught_replayed_and_clean_without_the_bug(
        Bug::RenewErrorExtendsTrust,
        "leadership_flap",
        "one_believed_leader",
    );
}

#[test]
fn loop_skips_trust_check_is_caught_by_leader_acts_in_trust_and_replays() {
    assert_caught_replayed_and_clean_without_the_bug(
        Bug::LoopSkipsTrustCheck,
        "zombies",
        "leader_acts_in_trust",
    );
}

#[test]
fn retry_backoff_from_due_is_caught_by_retry_respects_backoff_and_replays() {
    assert_caught_replayed_and_clean_without_the_bug(
        Bug::RetryBackoffFromDue,
        "crash_restart",
        "retry_respects_backoff",
    );
}

#[test]
fn cancel_grace_ignored_is_caught_by_stopped_handlers_end_in_grace_and_replays() {
    assert_caught_replayed_and_clean_without_the_bug(
        Bug::CancelGraceIgnored,
        "shutdown_under_load",
        "stopped_handlers_end_in_grace",
    );
}

#[test]
fn start_retry_without_backoff_is_caught_by_start_retries_back_off_and_replays() {
    assert_caught_replayed_and_clean_without_the_bug(
        Bug::StartRetryWithoutBackoff,
        "stale_retries",
        "start_retries_back_off",
    );
}

#[test]
fn idle_poll_backs_off_is_caught_by_idle_workers_claim_and_replays() {
    assert_caught_replayed_and_clean_without_the_bug(
        Bug::IdlePollBacksOff,
        "periodic_failover",
        "idle_workers_claim",
    );
}

#[test]
fn resign_before_step_down_is_caught_by_step_down_before_resign_and_replays() {
    assert_caught_replayed_and_clean_without_the_bug(
        Bug::ResignBeforeStepDown,
        "leadership_flap",
        "step_down_before_resign",
    );
}

#[test]
fn rescue_threshold_halved_is_caught_by_no_early_rescue_and_replays() {
    assert_caught_replayed_and_clean_without_the_bug(
        Bug::RescueThresholdHalved,
        "crash_restart",
        "no_early_rescue",
    );
}

/// The behaviour before storage's clock judged claims: a rescuer whose wall
/// clock runs ahead revokes live claims. `clock_skew` (clocks ten minutes
/// apart, stepping either way, on every host) catches it within its seed bound.
#[test]
fn rescue_on_caller_clock_is_caught_by_no_early_rescue_and_replays() {
    assert_caught_replayed_and_clean_without_the_bug(
        Bug::RescueOnCallerClock,
        "clock_skew",
        "no_early_rescue",
    );
}

/// The margin spent on skew: a leader trusting the whole TTL from its send
/// believes past a lease storage let go whenever its clock runs slow or
/// storage's fast. `clock_drift` (rates up to 10% off) catches it; without
/// drift nothing can (300 drift-free seeds of the same scenario hold).
#[test]
fn trust_whole_ttl_is_caught_by_one_believed_leader_and_replays() {
    assert_caught_replayed_and_clean_without_the_bug(
        Bug::TrustWholeTtl,
        "clock_drift",
        "one_believed_leader",
    );
}

#[test]
fn trust_whole_ttl_is_caught_by_belief_within_lease_and_replays() {
    assert_caught_replayed_and_clean_without_the_bug(
        Bug::TrustWholeTtl,
        "clock_drift",
        "belief_within_lease",
    );
}

#[test]
fn discard_off_by_one_is_caught_by_attempts_within_budget_and_replays() {
    assert_caught_replayed_and_clean_without_the_bug(
        Bug::DiscardOffByOne,
        "periodic_failover",
        "attempts_within_budget",
    );
}

#[test]
fn periodic_fires_next_slot_is_caught_by_periodic_fires_due_slot_and_replays() {
    assert_caught_replayed_and_clean_without_the_bug(
        Bug::PeriodicFiresNextSlot,
        "periodic_failover",
        "periodic_fires_due_slot",
    );
}

#[test]
fn hand_keeper_idle_is_caught_by_claims_kept_alive_and_replays() {
    assert_caught_replayed_and_clean_without_the_bug(
        Bug::HandKeeperIdle,
        "claim_ahead",
        "claims_kept_alive",
    );
}

#[test]
fn shutdown_spends_attempt_is_caught_by_shutdown_gives_back_and_replays() {
    assert_caught_replayed_and_clean_without_the_bug(
        Bug::ShutdownSpendsAttempt,
        "shutdown_under_load",
        "shutdown_gives_back",
    );
}

#[test]
fn claims_while_stopping_is_caught_by_no_claim_after_shutdown_and_replays() {
    assert_caught_replayed_and_clean_without_the_bug(
        Bug::ClaimsWhileStopping,
        "shutdown_under_load",
        "no_claim_after_shutdown",
    );
}

#[test]
fn shutdown_skips_resign_is_caught_by_leader_resigns_at_shutdown_and_replays() {
    assert_caught_replayed_and_clean_without_the_bug(
        Bug::ShutdownSkipsResign,
        "zombies",
        "leader_resigns_at_shutdown",
    );
}

/// The older bugs that break a promise a newer checker judges are caught by it
/// too: a stale resign's retries outlive the term (`no_start_after_term_lost`),
/// and a swallowed loop panic leaves the siblings ticking
/// (`siblings_stop_on_loop_panic`).
#[test]
fn the_newer_checkers_catch_the_older_bugs_that_break_their_promises() {
    for (bug, scenario, invariant) in [
        (
            Bug::StaleResign,
            "stale_retries",
            "no_start_after_term_lost",
        ),
        (
            Bug::SwallowedPanic,
            "panicking_tasks",
            "siblings_stop_on_loop_panic",
        ),
    ] {
        let found = first_detection(bug, scenario, invariant);
        eprintln!("{bug}: {invariant} fired at seed {}", found.spec.seed);
    }
}

/// Swarm, aimed at nothing in particular, finds the shared holder id on its own
/// seeds: replacements are one of the process faults each swarm seed may draw.
#[test]
fn swarm_catches_incarnation_blind_holder_within_500_seeds() {
    const SWARM_SEEDS_MAX: u64 = 500;
    let bug = Bug::IncarnationBlindHolder;
    let caught = (0..SWARM_SEEDS_MAX).find(|seed| {
        let result = runner::run_once(&spec("swarm", *seed, Some(bug))).expect("run");
        result
            .violations
            .iter()
            .any(|v| v.invariant == "one_leader_per_term")
    });
    let seed = caught.unwrap_or_else(|| panic!("swarm missed {bug} in {SWARM_SEEDS_MAX} seeds"));
    eprintln!("{bug}: swarm caught it at seed {seed}");
}

/// The violation names its witnesses: for a cross-term stop, the stop itself and
/// the two terms it crossed.
#[test]
fn a_cross_term_violation_names_both_terms_and_the_stop() {
    let found = first_detection(
        Bug::CrossTermStop,
        "stale_retries",
        "no_cross_term_teardown",
    );
    let v = found
        .violations
        .iter()
        .find(|v| v.invariant == "no_cross_term_teardown")
        .expect("violation");
    let json: Vec<String> = v.witnesses.iter().map(|w| w.to_json()).collect();
    assert!(
        json.last()
            .is_some_and(|l| l.contains("maintainer_stopped")),
        "{json:?}"
    );
    assert!(
        json.iter().filter(|l| l.contains("term_won")).count() >= 1,
        "{json:?}"
    );
    assert!(
        v.witnesses.len() <= 6,
        "a handful of events, not a log: {json:?}"
    );
}
