//! Shrinking: from a failing run to the smallest fault script that still breaks
//! the same invariant.
//!
//! The shrinker fixes the seed's fault plan as a script and then tries smaller
//! versions of the run, keeping each one that still violates the invariant:
//! fewer faults (halves first, then one at a time), no clock skew, fewer nodes,
//! fewer jobs, a shorter fault phase, shorter faults, and faults that start
//! later. Passes repeat until a whole round changes nothing or the run budget is
//! spent. Every candidate is one deterministic run, so a shrink is itself
//! reproducible: the same failing run always shrinks to the same script.

use std::sync::Arc;

use crate::plan::faults::{Fault, FaultKind, FaultPlan, Target};
use crate::plan::script::FaultScript;
use crate::run::runner::{run_once, RunSpec, SimError};
use crate::tools::corpus::Expect;

/// Runs a shrink may spend unless told otherwise: enough for every planted bug's
/// catalog run to reach a handful of faults, small enough to finish in about a
/// minute of release-build runs.
pub const SHRINK_RUNS_DEFAULT: u32 = 400;

/// How many times one fault's duration or start is halved toward its limit
/// before the shrinker moves on: past that, each step changes under 1/16 of it.
const HALVINGS_MAX: u32 = 4;

/// A run's size, as the shrinker counts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Size {
    /// Faults in the plan.
    pub faults: usize,
    /// Nodes.
    pub nodes: u32,
    /// Nodes with a non-zero clock skew.
    pub skewed: usize,
    /// Jobs the workload enqueues (0 without a workload).
    pub jobs: u32,
    /// The fault phase, in simulated seconds.
    pub duration_s: u64,
    /// Every fault's duration added up, in simulated ms.
    pub fault_ms: u64,
}

impl std::fmt::Display for Size {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} faults ({} ms in all), {} nodes ({} skewed), {} jobs, {} s fault phase",
            self.faults, self.fault_ms, self.nodes, self.skewed, self.jobs, self.duration_s
        )
    }
}

/// One candidate run: a scenario (with overrides) and its fixed faults.
#[derive(Clone, Debug, PartialEq)]
struct Candidate {
    scenario: scenarios::Scenario,
    plan: FaultPlan,
}

impl Candidate {
    fn size(&self) -> Size {
        Size {
            faults: self.plan.faults.len(),
            nodes: self.scenario.nodes,
            skewed: self.plan.skews_ms.iter().filter(|s| **s != 0).count()
                + self.plan.drifts_ppm.iter().filter(|s| **s != 0).count()
                + usize::from(self.plan.db_skew_ms != 0)
                + usize::from(self.plan.db_drift_ppm != 0),
            jobs: self.scenario.workload.as_ref().map_or(0, |w| w.jobs),
            duration_s: self.scenario.duration_s,
            fault_ms: self.plan.faults.iter().map(|f| f.end_ms() - f.at_ms).sum(),
        }
    }
}

/// What a shrink found.
#[derive(Clone, Debug)]
pub struct Shrunk {
    /// The invariant every kept candidate broke.
    pub invariant: String,
    /// The run's size before shrinking.
    pub before: Size,
    /// Its size after.
    pub after: Size,
    /// Runs spent, the first (the unshrunk run) included.
    pub runs: u32,
    /// The smallest failing run, as a script that must show the violation.
    pub script: FaultScript,
}

/// Why a run could not be shrunk.
#[derive(Debug, thiserror::Error)]
pub enum ShrinkError {
    /// The run holds every invariant (or not the one asked for).
    #[error("nothing to shrink: {0}")]
    NoViolation(String),
    /// The run itself failed.
    #[error(transparent)]
    Sim(#[from] SimError),
}

/// Shrink the failing run `spec` (a seed, or a script) against `invariant`, or
/// against its first violated invariant when `None`. `budget` caps the runs;
/// `progress` hears each smaller failing run as it is found.
pub fn shrink(
    spec: &RunSpec,
    invariant: Option<&str>,
    budget: u32,
    progress: &mut dyn FnMut(&Size),
) -> Result<Shrunk, ShrinkError> {
    let plan = match &spec.script {
        Some(plan) => FaultPlan::clone(plan),
        None => FaultPlan::generate(&spec.scenario, spec.seed),
    };
    // A swarm seed shrinks from the shape it drew.
    let scenario = crate::plan::shape::concrete(&spec.scenario, spec.seed).into_owned();
    let first = run_once(&with_plan(spec, &scenario, &plan))?;
    let invariant = match invariant {
        Some(name) if first.violations.iter().any(|v| v.invariant == name) => name.to_owned(),
        Some(name) => {
            return Err(ShrinkError::NoViolation(format!(
                "the run does not break {name}"
            )))
        }
        None => first
            .violations
            .first()
            .map(|v| v.invariant.to_owned())
            .ok_or_else(|| ShrinkError::NoViolation("every invariant held".into()))?,
    };
    let mut s = Shrinker {
        spec,
        invariant: &invariant,
        runs: 1,
        budget,
        best: Candidate { scenario, plan },
        progress,
    };
    let before = s.best.size();
    s.run_passes();
    let after = s.best.size();
    let Candidate { scenario, plan } = s.best.clone();
    let runs = s.runs;
    let mut kept = spec.clone();
    kept.scenario = scenario;
    Ok(Shrunk {
        script: FaultScript::new(kept, plan, Expect::Violation(invariant.clone())),
        invariant,
        before,
        after,
        runs,
    })
}

fn with_plan(spec: &RunSpec, scenario: &scenarios::Scenario, plan: &FaultPlan) -> RunSpec {
    RunSpec {
        scenario: scenario.clone(),
        script: Some(Arc::new(plan.clone())),
        ..spec.clone()
    }
}

struct Shrinker<'a> {
    spec: &'a RunSpec,
    invariant: &'a str,
    runs: u32,
    budget: u32,
    best: Candidate,
    progress: &'a mut dyn FnMut(&Size),
}

impl Shrinker<'_> {
    /// Keep `candidate` if it still breaks the invariant; `false` once the budget
    /// is spent too.
    fn try_keep(&mut self, candidate: Candidate) -> bool {
        if self.runs >= self.budget || candidate == self.best {
            return false;
        }
        self.runs += 1;
        let spec = with_plan(self.spec, &candidate.scenario, &candidate.plan);
        let fails = run_once(&spec)
            .is_ok_and(|r| r.violations.iter().any(|v| v.invariant == self.invariant));
        if fails {
            self.best = candidate;
            (self.progress)(&self.best.size());
        }
        fails
    }

    fn spent(&self) -> bool {
        self.runs >= self.budget
    }

    fn run_passes(&mut self) {
        loop {
            let start = self.best.clone();
            self.drop_faults();
            self.drop_skews();
            self.drop_nodes();
            self.drop_jobs();
            self.shorten_phase();
            self.shorten_faults();
            self.delay_faults();
            if self.best == start || self.spent() {
                return;
            }
        }
    }

    /// Delta debugging over the fault list: remove chunks, halving the chunk
    /// size down to single faults.
    fn drop_faults(&mut self) {
        let mut chunk = self.best.plan.faults.len().div_ceil(2).max(1);
        loop {
            let mut at = 0;
            while at < self.best.plan.faults.len() && !self.spent() {
                let mut c = self.best.clone();
                let end = (at + chunk).min(c.plan.faults.len());
                c.plan.faults.drain(at..end);
                if !self.try_keep(c) {
                    at += chunk;
                }
            }
            if chunk == 1 || self.spent() {
                return;
            }
            chunk = chunk.div_ceil(2);
        }
    }

    /// Set clocks right: every skew and rate at once, else one at a time.
    fn drop_skews(&mut self) {
        let mut c = self.best.clone();
        c.plan.skews_ms.iter_mut().for_each(|s| *s = 0);
        c.plan.drifts_ppm.iter_mut().for_each(|s| *s = 0);
        (c.plan.db_skew_ms, c.plan.db_drift_ppm) = (0, 0);
        if self.try_keep(c) {
            return;
        }
        let per_node: [fn(&mut FaultPlan) -> &mut Vec<i64>; 2] =
            [|p| &mut p.skews_ms, |p| &mut p.drifts_ppm];
        for field in per_node {
            for i in 0..field(&mut self.best.plan.clone()).len() {
                let mut c = self.best.clone();
                if field(&mut c.plan)[i] != 0 {
                    field(&mut c.plan)[i] = 0;
                    self.try_keep(c);
                }
            }
        }
        let db: [fn(&mut FaultPlan) -> &mut i64; 2] =
            [|p| &mut p.db_skew_ms, |p| &mut p.db_drift_ppm];
        for field in db {
            let mut c = self.best.clone();
            if *field(&mut c.plan) != 0 {
                *field(&mut c.plan) = 0;
                self.try_keep(c);
            }
        }
    }

    /// Remove a node no fault names, renumbering the nodes after it.
    fn drop_nodes(&mut self) {
        let mut node = self.best.scenario.nodes as usize;
        while node > 0 && self.best.scenario.nodes > 1 && !self.spent() {
            node -= 1;
            if let Some(c) = without_node(&self.best, node) {
                self.try_keep(c);
            }
        }
    }

    fn drop_jobs(&mut self) {
        while let Some(jobs) = self.best.scenario.workload.as_ref().map(|w| w.jobs) {
            if jobs <= 1 || self.spent() {
                return;
            }
            let mut kept = false;
            for fewer in [jobs / 2, jobs - jobs / 4, jobs - 1] {
                let mut c = self.best.clone();
                if let Some(w) = c.scenario.workload.as_mut() {
                    w.jobs = fewer.max(1);
                }
                if self.try_keep(c) {
                    kept = true;
                    break;
                }
            }
            if !kept {
                return;
            }
        }
    }

    /// End the fault phase at the second after the last fault ends, or halfway there.
    fn shorten_phase(&mut self) {
        let last_end_ms = self
            .best
            .plan
            .faults
            .iter()
            .map(Fault::end_ms)
            .max()
            .unwrap_or(0);
        let tight_s = last_end_ms.div_ceil(1000).max(1);
        let current = self.best.scenario.duration_s;
        for duration_s in [tight_s, tight_s + (current - tight_s.min(current)) / 2] {
            if duration_s < current {
                let mut c = self.best.clone();
                c.scenario.duration_s = duration_s;
                if self.try_keep(c) {
                    return;
                }
            }
        }
    }

    fn shorten_faults(&mut self) {
        for i in 0..self.best.plan.faults.len() {
            for _ in 0..HALVINGS_MAX {
                let Some(shorter) = self.best.plan.faults.get(i).and_then(shortened) else {
                    break;
                };
                let mut c = self.best.clone();
                c.plan.faults[i] = shorter;
                if !self.try_keep(c) {
                    break;
                }
            }
        }
    }

    /// Move each fault halfway to the next one's start (or to the end of the
    /// fault phase), keeping the plan in time order.
    fn delay_faults(&mut self) {
        for i in 0..self.best.plan.faults.len() {
            for _ in 0..HALVINGS_MAX {
                let faults = &self.best.plan.faults;
                let limit_ms = faults
                    .get(i + 1)
                    .map_or(self.best.scenario.duration_s * 1000, |f| f.at_ms);
                let at_ms = faults[i].at_ms;
                let step_ms = limit_ms.saturating_sub(at_ms) / 2;
                if step_ms < 10 {
                    break;
                }
                let mut c = self.best.clone();
                c.plan.faults[i].at_ms = at_ms + step_ms;
                if !self.try_keep(c) {
                    break;
                }
            }
        }
    }
}

/// `c` without node `node`, or `None` when a fault is aimed at it.
fn without_node(c: &Candidate, node: usize) -> Option<Candidate> {
    let aimed =
        c.plan.faults.iter().any(|f| {
            f.target == Target::Node(node) && !matches!(f.kind, FaultKind::Storage { .. })
        });
    if aimed {
        return None;
    }
    let mut out = c.clone();
    out.scenario.nodes -= 1;
    out.plan.skews_ms.remove(node);
    if node < out.plan.drifts_ppm.len() {
        out.plan.drifts_ppm.remove(node);
    }
    for f in &mut out.plan.faults {
        if let Target::Node(i) = &mut f.target {
            if *i > node {
                *i -= 1;
            }
        }
    }
    Some(out)
}

/// `fault` lasting half as long, or `None` when it is instantaneous or already
/// under 20 ms.
fn shortened(fault: &Fault) -> Option<Fault> {
    let half = |ms: u64| (ms >= 20).then_some(ms / 2);
    let mut f = fault.clone();
    match &mut f.kind {
        FaultKind::Partition { dur_ms }
        | FaultKind::ClockJump { dur_ms, .. }
        | FaultKind::Drift { dur_ms, .. }
        | FaultKind::Storage { dur_ms, .. }
        | FaultKind::Pause { dur_ms } => *dur_ms = half(*dur_ms)?,
        FaultKind::RestartRuntime { deadline_ms } => *deadline_ms = half(*deadline_ms)?,
        FaultKind::Replace { overlap_ms, .. } => *overlap_ms = half(*overlap_ms)?,
        FaultKind::Bounce { down_ms } => *down_ms = half(*down_ms)?,
        FaultKind::HookFault { window_ms, .. } => *window_ms = half(*window_ms)?,
        FaultKind::Shutdown { down_ms, .. } => *down_ms = half(*down_ms)?,
        FaultKind::SlowTick { ms, .. } => *ms = half(*ms)?,
        FaultKind::LoopPanic { .. } | FaultKind::RestartMaintainer => return None,
    }
    Some(f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::faults::Target;

    fn plan(faults: Vec<Fault>, nodes: usize) -> FaultPlan {
        FaultPlan {
            faults,
            ..FaultPlan::quiet(nodes)
        }
    }

    #[test]
    fn removing_a_node_renumbers_the_ones_after_it_and_spares_aimed_nodes() {
        let mut scenario = scenarios::by_name("leadership_flap").expect("scenario");
        scenario.nodes = 3;
        let fault = |node| Fault {
            at_ms: 5,
            target: Target::Node(node),
            kind: FaultKind::Partition { dur_ms: 100 },
        };
        let c = Candidate {
            scenario,
            plan: plan(vec![fault(2)], 3),
        };
        let out = without_node(&c, 1).expect("n2 is not aimed at");
        assert_eq!(out.scenario.nodes, 2);
        assert_eq!(out.plan.faults[0].target, Target::Node(1), "n3 became n2");
        assert!(without_node(&c, 2).is_none(), "n3 is aimed at");
    }

    #[test]
    fn shortening_halves_durations_and_stops_at_instants() {
        let f = Fault {
            at_ms: 0,
            target: Target::Leader,
            kind: FaultKind::Bounce { down_ms: 3000 },
        };
        assert_eq!(
            shortened(&f).map(|f| f.kind),
            Some(FaultKind::Bounce { down_ms: 1500 })
        );
        let instant = Fault {
            kind: FaultKind::LoopPanic { index: 0 },
            ..f
        };
        assert!(shortened(&instant).is_none());
    }

    #[test]
    fn a_passing_run_has_nothing_to_shrink() {
        let spec = RunSpec {
            scenario: scenarios::by_name("leadership_flap").expect("scenario"),
            seed: 1,
            plant: None,
            storage: Default::default(),
            script: None,
        };
        let err = shrink(&spec, None, 5, &mut |_| {}).expect_err("passes");
        assert!(matches!(err, ShrinkError::NoViolation(_)), "{err}");
    }
}
