//! A compact, readable summary of one run, for snapshot tests: a change in the
//! runtime's behaviour shows up in review as a diff of a few counted lines
//! rather than as a changed trace hash.
//!
//! ```text
//! scenario crash_restart seed 0 storage mem plant none
//! simulated 125000 ms, 3 nodes, 2210 events
//! faults: bounce 4, partition 2
//! verdict: every invariant held
//! events:
//!   claim_granted            61
//!   ...
//! ```

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::plan::faults::FaultKind;
use crate::run::runner::RunResult;

/// The summary of `result`: the run, its faults by kind, its verdict (each
/// violation's invariant, time and message, without witnesses) and how many
/// events of each kind it recorded. The trace hash is left out on purpose: it
/// changes with anything and says nothing.
pub fn summary(result: &RunResult) -> String {
    let spec = &result.spec;
    let mut out = format!(
        "scenario {} seed {} storage {} plant {}\n",
        spec.scenario.name,
        spec.seed,
        spec.storage,
        spec.plant.map_or("none".into(), |b| b.to_string())
    );
    let _ = writeln!(
        out,
        "simulated {} ms, {} nodes, {} events",
        result.simulated_ms(),
        result.plan.skews_ms.len(),
        result.history.len()
    );
    let faults = counts(result.plan.faults.iter().map(|f| fault_name(&f.kind)));
    let _ = writeln!(out, "faults: {}", joined(&faults));
    if result.passed() {
        out.push_str("verdict: every invariant held\n");
    } else {
        out.push_str("verdict:\n");
        for v in &result.violations {
            let _ = writeln!(out, "  {} at {} ms: {}", v.invariant, v.at_ms, v.message);
        }
    }
    out.push_str("events:\n");
    let events = counts(result.history.iter().map(|r| event_name(&r.to_json())));
    for (name, n) in &events {
        let _ = writeln!(out, "  {name:<32} {n:>6}");
    }
    out
}

fn counts(names: impl Iterator<Item = String>) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for name in names {
        *out.entry(name).or_insert(0) += 1;
    }
    out
}

fn joined(counts: &BTreeMap<String, usize>) -> String {
    if counts.is_empty() {
        return "none".into();
    }
    counts
        .iter()
        .map(|(k, n)| format!("{k} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn fault_name(kind: &FaultKind) -> String {
    match kind {
        FaultKind::Partition { .. } => "partition",
        FaultKind::Bounce { .. } => "bounce",
        FaultKind::Storage { .. } => "storage",
        FaultKind::LoopPanic { .. } => "loop_panic",
        FaultKind::SlowTick { .. } => "slow_tick",
        FaultKind::Shutdown { .. } => "shutdown",
        FaultKind::ClockJump { .. } => "clock_jump",
        FaultKind::HookFault { .. } => "hook_fault",
        FaultKind::Pause { .. } => "pause",
        FaultKind::RestartMaintainer => "restart_maintainer",
        FaultKind::RestartRuntime { .. } => "restart_runtime",
        FaultKind::Replace { .. } => "replace",
        FaultKind::Drift { .. } => "drift",
    }
    .into()
}

/// The `event` tag every recorded event serializes with.
fn event_name(json: &str) -> String {
    serde_json::from_str::<serde_json::Value>(json)
        .ok()
        .and_then(|v| v.get("event").and_then(|e| e.as_str()).map(str::to_owned))
        .unwrap_or_else(|| "unnamed".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::runner::{run_once, RunSpec};

    #[test]
    fn a_summary_counts_faults_and_events_and_names_violations() {
        let spec = RunSpec {
            scenario: scenarios::by_name("panicking_tasks").expect("scenario"),
            seed: 0,
            plant: Some(keel::planted::Bug::SwallowedPanic),
            storage: Default::default(),
            script: None,
        };
        let result = run_once(&spec).expect("run");
        let text = summary(&result);
        assert!(
            text.starts_with("scenario panicking_tasks seed 0 storage mem plant swallowed_panic\n")
        );
        assert!(
            text.contains("\nfaults: ") && text.contains(" loop_panic "),
            "{text}"
        );
        assert!(text.contains("\n  panics_surfaced at "), "{text}");
        assert!(text.contains("\n  end "), "{text}");
        assert_eq!(
            text,
            summary(&run_once(&spec).expect("run")),
            "deterministic"
        );
    }
}
