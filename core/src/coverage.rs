//! Coverage goals: proof that a test reached the rare state it exists for.
//!
//! A fault-injection run that never lands on the race it was written for passes
//! without testing anything. [`sometimes!`](crate::sometimes) marks such a state
//! at the line of code where it happens (the dual of an assertion: "this can
//! happen, and a good test makes it happen"); each simulator scenario declares the
//! states it must reach, and the simulator fails a scenario whose default seeds
//! never reach one of them.
//!
//! * [`STATES`]: every state name with a line on what it means. A marker naming a
//!   state not listed here is a test failure (and a debug assertion at run time).
//! * With the cargo feature `coverage` (the simulator turns it on), each hit is
//!   counted in a **thread-local** registry: [`reset`] before a run, [`take`]
//!   after it. Thread-local because the simulator runs each seed whole on one
//!   thread and several seeds at once on others; a global would mix their counts.
//! * Without the feature (every user build), a marker expands to code that never
//!   runs: its condition is type-checked but not evaluated, and there is no
//!   registry.
//!
//! A marker never changes what the code does: it reads state and counts, nothing
//! else, so a run's trace is the same with coverage counted or not.
//!
//! **Mark the situation, not the answer to it.** A marker sits where the code
//! meets the state, before any branch decides what to do about it: a marker
//! inside the correct branch goes dark exactly when that branch is wrong (a
//! planted bug, or a real one), and the guided search (`sim hunt`), which
//! steers by these counts, loses sight of the run that matters. So
//! `claimed_ahead_half_trust_gone` fires whether the held job is then renewed
//! or not, and `claimed_ahead_renewed` marks only the renewal.

#[cfg(feature = "coverage")]
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;

/// Every state a [`sometimes!`](crate::sometimes) marker may name, with what it
/// means. Sorted by name.
pub const STATES: &[(&str, &str)] = &[
    (
        "ambiguous_finalize",
        "a finalize call's outcome was unknown (reply lost or timed out) and the worker retried it",
    ),
    (
        "ambiguous_finalize_already_applied",
        "a finalize retried after an unknown outcome found its own attempt already finalized",
    ),
    (
        "cancel_heard_as_work_completed",
        "a handler completed its work after its worker had heard a cancel request for the job",
    ),
    (
        "cancel_heard_while_running",
        "a heartbeat told a worker its running job was asked to cancel, and the worker asked the handler to stop",
    ),
    (
        "cancel_ignored_past_grace",
        "a handler ignored a cancel request past cancel_grace; the worker dropped it and settled the job cancelled",
    ),
    (
        "cancel_races_finish",
        "an attempt finished its work while a cancel for it was pending; the finished work stands",
    ),
    (
        "claim_lost_while_running",
        "a heartbeat answered that the claim was lost (rescued, revoked) while the handler still ran",
    ),
    (
        "claim_untrusted_while_running",
        "a worker went a claim_trust without a good heartbeat and stopped its running handler",
    ),
    (
        "claimed_ahead_half_trust_gone",
        "a job waited in a worker's hand past half its claim_trust before its turn came (whatever the worker then did about it)",
    ),
    (
        "claimed_ahead_lost_unrun",
        "the rescuer handed on a job while it waited in a worker's hand, and the worker dropped it unrun",
    ),
    (
        "claimed_ahead_renewed",
        "a job waited in a worker's hand past half its claim_trust, and the worker heartbeat it before starting it",
    ),
    (
        "claimed_ahead_trust_gone",
        "a job waited in a worker's hand past its whole claim_trust (storage unreachable or slow that long) before its turn came",
    ),
    (
        "claimed_next_while_stopping",
        "a worker held a claimed job it had not started when shutdown began, and gave it back unrun",
    ),
    (
        "grant_too_late_to_trust",
        "a lease grant arrived after its trust window would have closed; the elector gave the term back",
    ),
    (
        "leader_woke_long_after_its_trust_window",
        "a leader's elector ran again more than a renew interval after its trust window closed (a frozen or starved process), and stepped down",
    ),
    (
        "lease_reply_after_safety_margin",
        "a lease grant or renewal was answered more than the safety margin after it was sent (a slow database or a frozen process)",
    ),
    (
        "lease_reply_in_last_margin_of_trust",
        "a lease grant or renewal was answered inside the last safety_margin of the trust window it started or extended",
    ),
    (
        "loop_panic_stops_siblings",
        "a watcher loop panicked while sibling loops ran; the watcher stopped them and returned the panic",
    ),
    (
        "maintenance_tick_outside_trust",
        "a maintenance loop's tick came due after its term's trust window closed (a thawed leader), where it must not act",
    ),
    (
        "panic_during_shutdown",
        "a handler, tracked task or watcher loop panicked after its shutdown had begun",
    ),
    (
        "periodic_fire_stale_term",
        "a leader tried to fire a periodic slot after its term was over, and storage refused the term",
    ),
    (
        "renewal_refused_lease_moved_on",
        "a leader's renewal was refused because another term had taken the lease",
    ),
    (
        "resign_request_for_term_not_held",
        "a resign was asked for a term this node did not hold at that moment (it must be dropped)",
    ),
    (
        "shutdown_aborts_running_handler",
        "a handler outlived the shutdown deadline; its worker was aborted and its claim given back",
    ),
    (
        "slow_tick_across_renewal",
        "a watcher tick outlasted its period while the node's elector renewed its lease",
    ),
    (
        "slow_tick_outlasts_period",
        "a watcher tick took longer than its loop's period, so missed ticks were skipped",
    ),
    (
        "stale_retry_after_term_change",
        "a maintainer start attempt for term T ended after this node stopped wanting T",
    ),
    (
        "start_attempt_outlived_its_run",
        "a maintainer start attempt finished after its maintainer run was stopped and a new run wanted the same term",
    ),
    (
        "trust_window_closed_while_leading",
        "a leader stepped down on its own: its trust window closed before any renewal answered",
    ),
];

/// Whether `name` is in [`STATES`].
pub fn is_known(name: &str) -> bool {
    STATES.iter().any(|(n, _)| *n == name)
}

/// What the state `name` means, if it is in [`STATES`].
pub fn describe(name: &str) -> Option<&'static str> {
    STATES.iter().find(|(n, _)| *n == name).map(|(_, d)| *d)
}

#[cfg(feature = "coverage")]
thread_local! {
    /// Hits on this thread since the last [`reset`] or [`take`].
    static HITS: RefCell<BTreeMap<&'static str, u64>> = const { RefCell::new(BTreeMap::new()) };
    /// Told of every hit on this thread, if set ([`observe`]).
    static OBSERVER: Cell<Option<fn(&'static str)>> = const { Cell::new(None) };
}

/// Count one hit of `state` on this thread. Called by
/// [`sometimes!`](crate::sometimes); not meant to be called directly.
#[cfg(feature = "coverage")]
#[doc(hidden)]
pub fn hit(state: &'static str) {
    debug_assert!(
        is_known(state),
        "sometimes! names {state:?}, not in coverage::STATES"
    );
    HITS.with(|h| *h.borrow_mut().entry(state).or_insert(0) += 1);
    if let Some(observer) = OBSERVER.with(Cell::get) {
        observer(state);
    }
}

/// Call `observer` with each state hit on this thread from now on, after it
/// is counted; `None` stops it. The simulator stamps each hit with the
/// simulated time, so its search can branch from the moment a race began.
/// The observer must only record: a marker never changes what the code does.
/// Does nothing without the `coverage` feature.
pub fn observe(observer: Option<fn(&'static str)>) {
    #[cfg(feature = "coverage")]
    OBSERVER.with(|o| o.set(observer));
    #[cfg(not(feature = "coverage"))]
    let _ = observer;
}

/// Forget every hit counted on this thread: call before a run.
pub fn reset() {
    #[cfg(feature = "coverage")]
    HITS.with(|h| h.borrow_mut().clear());
}

/// The hits counted on this thread since the last reset, by state, and reset.
/// Always empty without the `coverage` feature.
pub fn take() -> BTreeMap<&'static str, u64> {
    #[cfg(feature = "coverage")]
    return HITS.with(|h| std::mem::take(&mut *h.borrow_mut()));
    #[cfg(not(feature = "coverage"))]
    BTreeMap::new()
}

/// Mark that the rare state `name` was reached here when `condition` holds
/// (`sometimes!("name")`: whenever this line runs).
///
/// `name` must be in [`coverage::STATES`](crate::coverage::STATES). With the
/// `coverage` feature the hit is counted for [`coverage::take`](crate::coverage::take);
/// without it nothing runs, and `condition` is never evaluated.
///
/// ```
/// # fn finalize() -> Result<(), &'static str> { Err("ambiguous") }
/// let reply = finalize();
/// keel::sometimes!(reply.is_err(), "ambiguous_finalize");
/// ```
#[cfg(feature = "coverage")]
#[macro_export]
macro_rules! sometimes {
    ($name:literal) => {
        $crate::coverage::hit($name)
    };
    ($condition:expr, $name:literal) => {
        if $condition {
            $crate::coverage::hit($name)
        }
    };
}

/// Mark that the rare state `name` was reached here when `condition` holds
/// (`sometimes!("name")`: whenever this line runs).
///
/// `name` must be in [`coverage::STATES`](crate::coverage::STATES). With the
/// `coverage` feature the hit is counted for [`coverage::take`](crate::coverage::take);
/// without it nothing runs, and `condition` is never evaluated.
///
/// ```
/// # fn finalize() -> Result<(), &'static str> { Err("ambiguous") }
/// let reply = finalize();
/// keel::sometimes!(reply.is_err(), "ambiguous_finalize");
/// ```
#[cfg(not(feature = "coverage"))]
#[macro_export]
macro_rules! sometimes {
    ($name:literal) => {{
        let _: &'static str = $name;
    }};
    ($condition:expr, $name:literal) => {{
        // Type-checked, so the variables it reads count as used, but never run.
        if false {
            let _ = &$condition;
        }
        let _: &'static str = $name;
    }};
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::*;

    fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .expect("readable source dir")
            .filter_map(Result::ok)
            .map(|e| e.path())
            .collect();
        entries.sort();
        for path in entries {
            if path.is_dir() {
                rust_files(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }

    /// The state name of every `sometimes!` call site in `core/src`, with where.
    fn call_sites() -> Vec<(String, String)> {
        let mut files = Vec::new();
        rust_files(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
            &mut files,
        );
        let mut sites = Vec::new();
        for file in files {
            let text = std::fs::read_to_string(&file).expect("utf8 source");
            // A call may span lines (rustfmt): read from `sometimes!(` to the
            // first string literal that closes the call.
            for (at, _) in text.match_indices("sometimes!(") {
                let line = text[..at].rsplit('\n').next().unwrap_or_default();
                if line.trim_start().starts_with("//") || line.contains("macro_rules!") {
                    continue;
                }
                let rest = &text[at..];
                let close = rest
                    .find(");")
                    .or_else(|| rest.find(')'))
                    .unwrap_or(rest.len());
                let call = &rest[..close];
                let name = call
                    .rfind('"')
                    .and_then(|end| call[..end].rfind('"').map(|start| &call[start + 1..end]));
                let lineno = text[..at].matches('\n').count() + 1;
                let place = format!("{}:{lineno}", file.display());
                sites.push((name.unwrap_or_default().to_owned(), place));
            }
        }
        sites
    }

    #[test]
    fn every_marker_names_a_catalogued_state_and_every_state_has_a_marker() {
        let sites = call_sites();
        let real: Vec<_> = sites
            .iter()
            .filter(|(_, place)| !place.contains("coverage.rs"))
            .collect();
        assert!(real.len() >= STATES.len(), "found the markers: {sites:?}");
        for (name, place) in &real {
            assert!(
                is_known(name),
                "{place}: sometimes! names {name:?}, not in STATES"
            );
        }
        for (state, _) in STATES {
            assert!(
                real.iter().any(|(name, _)| name == state),
                "STATES lists {state:?} but no sometimes! marks it"
            );
        }
    }

    #[test]
    fn states_are_sorted_unique_and_described() {
        let names: Vec<&str> = STATES.iter().map(|(n, _)| *n).collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(
            names, sorted,
            "STATES is sorted by name, without duplicates"
        );
        for (name, what) in STATES {
            assert!(!what.is_empty(), "{name} says what it means");
            assert_eq!(describe(name), Some(*what));
        }
        assert_eq!(describe("nope"), None);
    }

    #[test]
    fn a_marker_counts_only_when_its_condition_holds_and_only_with_the_feature() {
        reset();
        let evaluated = std::cell::Cell::new(false);
        let positive = |i: u32| {
            evaluated.set(true);
            i > 0
        };
        for i in 0..3 {
            crate::sometimes!(positive(i), "cancel_races_finish");
        }
        crate::sometimes!("ambiguous_finalize");
        let hits = take();
        let evaluated = evaluated.get();
        if cfg!(feature = "coverage") {
            assert!(evaluated);
            assert_eq!(hits.get("cancel_races_finish"), Some(&2));
            assert_eq!(hits.get("ambiguous_finalize"), Some(&1));
        } else {
            assert!(!evaluated, "without the feature the condition never runs");
            assert!(hits.is_empty());
        }
        assert!(take().is_empty(), "take resets");
    }

    #[cfg(feature = "coverage")]
    #[test]
    fn hits_stay_on_their_thread() {
        reset();
        crate::sometimes!("ambiguous_finalize");
        let other = std::thread::scope(|s| {
            s.spawn(|| {
                crate::sometimes!("cancel_races_finish");
                take()
            })
            .join()
            .expect("thread ran")
        });
        assert_eq!(
            other.keys().copied().collect::<Vec<_>>(),
            ["cancel_races_finish"]
        );
        assert_eq!(
            take().keys().copied().collect::<Vec<_>>(),
            ["ambiguous_finalize"]
        );
    }

    #[cfg(feature = "coverage")]
    #[test]
    fn an_observer_hears_each_counted_hit_until_it_is_removed() {
        thread_local! {
            static HEARD: RefCell<Vec<&'static str>> = const { RefCell::new(Vec::new()) };
        }
        fn heard(state: &'static str) {
            HEARD.with(|h| h.borrow_mut().push(state));
        }
        reset();
        observe(Some(heard));
        crate::sometimes!(false, "ambiguous_finalize");
        crate::sometimes!("cancel_races_finish");
        crate::sometimes!("ambiguous_finalize");
        observe(None);
        crate::sometimes!("ambiguous_finalize");
        assert_eq!(
            HEARD.with(|h| h.take()),
            ["cancel_races_finish", "ambiguous_finalize"]
        );
        assert_eq!(take().get("ambiguous_finalize"), Some(&2), "still counted");
    }
}
