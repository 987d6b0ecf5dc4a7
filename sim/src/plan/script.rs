//! Fault scripts: one run's faults written out as plain text, replayed without
//! the seed choosing faults (`sim replay --script FILE`), written by `sim shrink`.
//!
//! ```text
//! # keel fault script: `cargo run -p sim -- replay --script FILE` reruns it.
//! scenario=stale_retries seed=5 plant=cross_term_stop expect=violation:no_cross_term_teardown
//! nodes=2 duration_s=12 jobs=0
//! 0 skew n2 -40ms
//! 4310 bounce leader 1200ms
//! 7020 hook_fault n1 9000ms delay 3000ms fail 100%
//! ```
//!
//! The first `key=value` lines are the run: the corpus keys (`scenario`, `seed`,
//! `storage`, `plant`, `expect`, see [`crate::tools::corpus`]) and the scenario
//! overrides `nodes`, `duration_s` (the fault phase), `heal_s`, `jobs` and the
//! workload's knobs ([`WORKLOAD_KEYS`]: `workers`, `claim_ahead` and the
//! behaviour shares such as `cancel_pct`), and `shape_seed` when a swarm run
//! keeps the shape of another seed than its own (`sim hunt` reseeds). Every other
//! line is a skew or a fault with its start in simulated milliseconds, in the
//! form [`FaultPlan`]'s `Display` writes. The seed still drives message latency,
//! host order, the workload and the runtime's jitter; only the faults are fixed.

use std::sync::Arc;

use crate::plan::faults::{FaultPlan, PlanLine};
use crate::run::runner::RunSpec;
use crate::tools::corpus::{self, CorpusError, Expect};

/// A parsed fault script: the run (its `script` set) and what it must show.
#[derive(Clone, Debug)]
pub struct FaultScript {
    /// The run, with the scenario's overrides applied and the faults in
    /// `spec.script`.
    pub spec: RunSpec,
    /// What the run must show.
    pub expect: Expect,
}

/// The header key naming the seed a swarm run's shape was drawn from, when it
/// is not the run's own seed.
const SHAPE_SEED: &str = "shape_seed";

/// Scenario overrides a script may carry besides [`WORKLOAD_KEYS`], as
/// `key=value` words.
const OVERRIDE_KEYS: [&str; 4] = ["nodes", "duration_s", "heal_s", "jobs"];

/// A workload knob a script may override: its key and where it lives.
pub type WorkloadKey = (&'static str, fn(&mut scenarios::Workload) -> &mut u32);

/// The workload's knobs a script may override (and `sim hunt` mutates).
pub const WORKLOAD_KEYS: [WorkloadKey; 13] = [
    ("workers", |w| &mut w.workers),
    ("claim_ahead", |w| &mut w.claim_ahead),
    ("fail_pct", |w| &mut w.fail_pct),
    ("panic_pct", |w| &mut w.panic_pct),
    ("slow_pct", |w| &mut w.slow_pct),
    ("hang_pct", |w| &mut w.hang_pct),
    ("stubborn_pct", |w| &mut w.stubborn_pct),
    ("panic_on_stop_pct", |w| &mut w.panic_on_stop_pct),
    ("exhaust_pct", |w| &mut w.exhaust_pct),
    ("cancel_pct", |w| &mut w.cancel_pct),
    ("effect_pct", |w| &mut w.effect_pct),
    ("unique_pct", |w| &mut w.unique_pct),
    ("scheduled_pct", |w| &mut w.scheduled_pct),
];

fn is_override(key: &str) -> bool {
    OVERRIDE_KEYS.contains(&key) || WORKLOAD_KEYS.iter().any(|(k, _)| *k == key)
}

impl FaultScript {
    /// The faults the script runs.
    pub fn plan(&self) -> &FaultPlan {
        self.spec
            .script
            .as_deref()
            .expect("a parsed or built script always carries its plan")
    }

    /// A script for `spec` (whose scenario may differ from the catalog's) with
    /// these faults.
    pub fn new(mut spec: RunSpec, plan: FaultPlan, expect: Expect) -> FaultScript {
        spec.script = Some(Arc::new(plan));
        FaultScript { spec, expect }
    }

    /// Parse a script's text; errors name the line and the field.
    pub fn parse(text: &str) -> Result<FaultScript, CorpusError> {
        let mut header = Vec::new();
        let mut overrides = Vec::new();
        let mut lines = Vec::new();
        let mut first_header_line = None;
        let mut shape_seed = None;
        for (i, raw) in text.lines().enumerate() {
            let content = raw.split('#').next().unwrap_or("").trim();
            let Some(first) = content.split_whitespace().next() else {
                continue;
            };
            if first.contains('=') {
                first_header_line.get_or_insert(i + 1);
                for word in content.split_whitespace() {
                    let (key, value) = word.split_once('=').unwrap_or((word, ""));
                    if key == SHAPE_SEED {
                        let seed = value.parse::<u64>().map_err(|e| CorpusError {
                            line: i + 1,
                            field: SHAPE_SEED.to_owned(),
                            reason: format!("{value:?}: {e}"),
                        })?;
                        shape_seed = Some(seed);
                    } else if is_override(key) {
                        overrides.push((i + 1, word));
                    } else {
                        header.push(word);
                    }
                }
            } else {
                let line = content
                    .parse::<PlanLine>()
                    .map_err(|e| split_error(i + 1, &e))?;
                lines.push((i + 1, line));
            }
        }
        let at = first_header_line.unwrap_or(1);
        let mut run = corpus::parse_line(at, &header.join(" "))?;
        // Overrides apply to what the seed runs: a swarm seed's drawn shape.
        let drawn_from = shape_seed.unwrap_or(run.spec.seed);
        run.spec.scenario =
            crate::plan::shape::concrete(&run.spec.scenario, drawn_from).into_owned();
        for (line, word) in overrides {
            apply_override(&mut run.spec.scenario, line, word)?;
        }
        run.spec.scenario.validate().map_err(|e| {
            let (field, reason) = match e {
                scenarios::ScenarioError::Invalid { field, reason, .. } => {
                    (field.to_owned(), reason)
                }
                other => ("scenario".to_owned(), other.to_string()),
            };
            CorpusError {
                line: at,
                field,
                reason,
            }
        })?;
        let nodes = run.spec.scenario.nodes as usize;
        let last_line = lines.last().map_or(at, |(l, _)| *l);
        let plan = FaultPlan::from_lines(nodes, lines.into_iter().map(|(_, l)| l).collect())
            .map_err(|e| split_error(last_line, &e))?;
        Ok(FaultScript::new(run.spec, plan, run.expect))
    }

    /// The script as text: a comment, the run, the overrides, the faults.
    /// `parse` reads it back to the same run.
    pub fn render(&self, comment: &str) -> String {
        let mut out = String::from(
            "# keel fault script: `cargo run -p sim -- replay --script FILE` reruns it.\n",
        );
        for line in comment.lines() {
            out.push_str(&format!("# {line}\n"));
        }
        out.push_str(&corpus::line_for(&self.spec));
        if self.expect != Expect::Pass {
            out.push_str(&format!(" expect={}", self.expect));
        }
        let s = &self.spec.scenario;
        if let Some(seed) = s.shape_seed.filter(|x| *x != self.spec.seed) {
            out.push_str(&format!(" {SHAPE_SEED}={seed}"));
        }
        out.push_str(&format!(
            "\nnodes={} duration_s={} heal_s={}",
            s.nodes, s.duration_s, s.heal_s
        ));
        if let Some(w) = &s.workload {
            out.push_str(&format!(" jobs={}\n", w.jobs));
            let mut w = w.clone();
            let knobs: Vec<String> = WORKLOAD_KEYS
                .iter()
                .map(|(key, field)| format!("{key}={}", field(&mut w)))
                .collect();
            out.push_str(&knobs.join(" "));
        }
        out.push('\n');
        let plan = self.plan();
        // Zero skews are the default; leaving them out keeps a shrunk script short.
        out.push_str(&plan.header(false));
        for fault in &plan.faults {
            out.push_str(&format!("{fault}\n"));
        }
        out
    }
}

/// A plan line's error (`"field: reason"`) as a corpus error on `line`.
fn split_error(line: usize, message: &str) -> CorpusError {
    let (field, reason) = message.split_once(": ").unwrap_or(("fault", message));
    CorpusError {
        line,
        field: field.to_owned(),
        reason: reason.to_owned(),
    }
}

fn apply_override(
    scenario: &mut scenarios::Scenario,
    line: usize,
    word: &str,
) -> Result<(), CorpusError> {
    let err = |field: &str, reason: String| CorpusError {
        line,
        field: field.to_owned(),
        reason,
    };
    let (key, value) = word.split_once('=').unwrap_or((word, ""));
    let n: u64 = value
        .parse()
        .map_err(|_| err(key, format!("{value:?} is not a non-negative integer")))?;
    match key {
        "nodes" => {
            scenario.nodes = u32::try_from(n)
                .ok()
                .filter(|n| (1..=scenarios::NODES_MAX).contains(n))
                .ok_or_else(|| err(key, format!("must be 1..={}", scenarios::NODES_MAX)))?;
        }
        "duration_s" if n == 0 => return Err(err(key, "must be at least 1".into())),
        "duration_s" => scenario.duration_s = n,
        "heal_s" => scenario.heal_s = n,
        _ => {
            let name = scenario.name.clone();
            let workload = scenario
                .workload
                .as_mut()
                .ok_or_else(|| err(key, format!("scenario {name} runs no jobs")))?;
            let n = u32::try_from(n).map_err(|_| err(key, "too large".into()))?;
            match WORKLOAD_KEYS.iter().find(|(k, _)| *k == key) {
                Some((_, field)) => *field(workload) = n,
                None => workload.jobs = n,
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::runner::StorageKind;

    #[test]
    fn a_rendered_script_parses_back_to_the_same_run() {
        // A swarm seed's script carries the shape the seed draws, overridden.
        let swarm = scenarios::by_name("swarm").expect("scenario");
        let mut scenario = crate::plan::shape::concrete(&swarm, 7).into_owned();
        scenario.nodes = 3;
        scenario.duration_s = 20;
        let plan = FaultPlan::generate(&scenario, 7);
        let spec = RunSpec {
            scenario,
            seed: 7,
            plant: Some(keel::planted::Bug::BurstTicks),
            storage: StorageKind::Sqlite,
            script: None,
        };
        let expect = Expect::Violation("no_tick_burst".into());
        let script = FaultScript::new(spec, plan.clone(), expect.clone());
        let text = script.render("why\nand how");
        let back = FaultScript::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(back.plan(), &plan);
        assert_eq!(back.expect, expect);
        assert_eq!(back.spec.scenario, script.spec.scenario);
        assert_eq!(
            (back.spec.seed, back.spec.plant, back.spec.storage),
            (7, script.spec.plant, StorageKind::Sqlite)
        );
    }

    #[test]
    fn errors_name_the_line_and_the_field() {
        let e = |text: &str| FaultScript::parse(text).expect_err(text);
        let head = "scenario=stale_retries seed=1\n";
        let bad = e(&format!("{head}nodes=0\n"));
        assert_eq!((bad.line, bad.field.as_str()), (2, "nodes"));
        let bad = e(&format!("{head}jobs=5\n"));
        assert_eq!(bad.field, "jobs", "stale_retries has no workload: {bad}");
        let bad = e(&format!("{head}\n100 partition n1 10\n"));
        assert_eq!((bad.line, bad.field.as_str()), (3, "duration"));
        let bad = e(&format!("{head}nodes=2\n100 partition n3 10ms\n"));
        assert_eq!((bad.line, bad.field.as_str()), (3, "target"));
        let bad = e("seed=1\n");
        assert_eq!(bad.field, "scenario");
        let ok = FaultScript::parse(&format!("{head}nodes=2\n0 skew n2 5ms\n")).expect("ok");
        assert_eq!(ok.plan().skews_ms, vec![0, 5]);
        assert!(ok.plan().faults.is_empty());
    }
}
