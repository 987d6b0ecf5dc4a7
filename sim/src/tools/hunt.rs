//! Coverage-guided search (`sim hunt`): swarm seeds as a fuzzer's inputs and
//! the `keel::sometimes!` counts as its feedback.
//!
//! A plain sweep runs seed after seed and forgets each one. The hunt keeps the
//! runs that reached something new and spends half its budget on *mutants* of
//! them, the way a fuzzer mutates inputs that found new coverage. Two signals
//! say what is new:
//!
//! * **coverage**: a rare state, or a rare state more often than any run
//!   before (hit counts in power-of-two buckets, as AFL counts edges);
//! * **nearness**: each checker that measures it says how much slack the run
//!   left on the invariant ([`crate::run::checkers::Checker::slack_ms`]: how long
//!   after its revoke a handler ran, how soon after a belief's end the next
//!   grant came). A run nearer to breaking an invariant than any before is
//!   kept, and each power-of-two level under 4 s is a state of its own
//!   (`near no_double_execution <512ms`), so the deeper levels are rare and
//!   draw the search, as a fuzzer splits a comparison into bytes it can reach
//!   one at a time (targeted property-based testing climbs the same way).
//!
//! A parent is, half the time, the run nearest to breaking one invariant (each
//! in turn), else one picked with a weight that favours the rarest states it
//! reached (each state weighs one over the runs that reached it so far). Half
//! the mutants **reseed** the parent: its shape (nodes, phase, workload, fault
//! profile) with a new seed, so a new plan and interleaving; a run that reached
//! a rare state says more about its shape than about its exact plan. The other
//! half keep the seed and change the plan; a mutation
//!
//! * **moves** a fault up to 5 s earlier or later,
//! * **stretches** or shrinks one of its durations (at most 2x either way),
//! * **adds** a fault (a copy of one moved elsewhere, or a new one of any kind
//!   the template draws), or **removes** one,
//! * **re-aims** it at the sitting leader, a node mid-start, or another node,
//! * **reshapes** the workload: one knob of [`crate::plan::script::WORKLOAD_KEYS`]
//!   set to another value swarm's shapes draw it from (a quarter of mutations).
//!
//! Every value stays inside the ranges the template and the seed's shape
//! allow, so a mutant is a plan swarm itself could draw, only one it would
//! rarely draw.
//!
//! Half the plan mutants **branch** instead: the run records when it reached
//! each rare state (the first [`crate::run::coverage::MARK_TIMES_PER_STATE_MAX`]
//! hits, stamped with the simulated time), and a branch keeps every fault of
//! its parent before one such moment, the state picked by rarity: it adds a
//! fault or moves one into the 5 s after it, or stretches or removes one that
//! starts at or after it. Its run is
//! then its parent's, record for record, up to that moment: the race the
//! parent began is kept, and what follows it is explored, the way a snapshot
//! fuzzer restarts from the state it found interesting.
//!
//! ```text
//! $ sim hunt --seed 2 --runs 400 --plant burst_ticks --invariant no_tick_burst --fail-fast
//! hunt: scenario swarm, hunt seed 2, fresh seeds from 0, 400 runs, batches of 8
//!   run 1 (seed 0): new coverage (trust_window_closed_while_leading, near one_believed_leader <2048ms), corpus 1
//!   run 2 (seed 1): violation no_tick_burst
//!     sim replay --script hunt-out/run-2.script
//! ```
//!
//! Measured on the planted bugs over fifteen seed ranges (docs/simulator.md,
//! *Hunting*), it finds the rarest ones in about as many runs as plain swarm
//! needs seeds: each needs an instant's coincidence, which a mutant, even one
//! whose past is its parent's, rarely repeats. Branching halved its runs on
//! `trust_from_reply`, the one whose race begins at a marked moment (a late
//! lease reply). What it is worth depends on what its markers and checkers
//! can see.
//!
//! **Reproducible.** Every run is a pure function of a seed plus a fault
//! script, so a finding is one `sim replay --script FILE` away; the hunt writes
//! that file and replays it twice (through [`crate::run::runner::run_checked`])
//! before it reports the finding. The search itself is a pure function of its
//! own seed: candidates are drawn a batch of [`BATCH`] at a time, before any
//! of the batch's results are in, and results are taken back in candidate
//! order, so the hunt takes the same path on one thread or many.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use keel::planted::Bug;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use scenarios::{Faults, Scenario};

use crate::plan::faults::{self, Fault, FaultKind, FaultPlan, Target, KIND_COUNT};
use crate::plan::script::FaultScript;
use crate::run::runner::{RunResult, RunSpec, SimError, StorageKind};
use crate::tools::corpus::Expect;

/// Candidates drawn before any of their results is in. Fixed, not the thread
/// count, so the search is the same on any machine; 8 keeps 2 to 8 cores busy
/// while feedback still arrives every few runs.
pub const BATCH: usize = 8;
/// Share of candidates that are a fresh seed of the template rather than a
/// mutant: the search keeps exploring shapes while it exploits plans.
const FRESH_SHARE: f64 = 0.5;
/// Most mutations stacked on one mutant.
const MUTATIONS_MAX: usize = 3;
/// Share of mutants that keep only the parent's shape (nodes, phase,
/// workload, fault profile) and draw a new seed: turmoil's interleaving and a
/// new plan from the same profile. A run that reached a rare state says more
/// about its shape than about its exact plan, whose every change reshuffles
/// what follows.
const RESEED_SHARE: f64 = 0.5;
/// Share of mutations that change the workload (one knob of
/// [`crate::plan::script::WORKLOAD_KEYS`]) rather than the fault plan.
const RESHAPE_SHARE: f64 = 0.25;
/// Farthest a move shifts a fault, in ms: a few lease renewals.
const MOVE_MS_MAX: u64 = 5_000;
/// Tries at a mutant that changes something before drawing a fresh seed.
const MUTANT_TRIES_MAX: usize = 8;
/// Weight every corpus entry has on top of its states' rarity, so an entry
/// whose states all became common is still picked now and then.
const ENERGY_FLOOR: f64 = 0.05;
/// Share of mutants whose parent is the run that came nearest to breaking
/// one invariant (each invariant with a measured slack in turn), rather than
/// one picked by the rarity of its states: a hill climb on each checker's
/// slack beside the coverage search.
const CLIMB_SHARE: f64 = 0.5;
/// Share of plan mutants that **branch**: they keep every fault of their
/// parent's plan before a moment it reached one of its rare states (the
/// state chosen by rarity, the moment among its first hits), so their run
/// is the parent's up to that moment, and change faults only after it. A
/// race's first step is kept; what follows is explored.
const BRANCH_SHARE: f64 = 0.5;
/// How far after a branch's moment its new or moved faults start, in ms: a
/// few lease renewals, the span in which a race that began there plays out.
const BRANCH_WINDOW_MS: u64 = 5_000;
/// Salt of the hunt's own random stream.
const HUNT_SALT: u64 = 0x6875_6e74;

/// What to hunt on.
#[derive(Clone, Debug)]
pub struct HuntConfig {
    /// The scenario whose seeds are the search's inputs (usually `swarm`).
    pub scenario: Scenario,
    /// The engine the database host serves.
    pub storage: StorageKind,
    /// A planted bug to switch on (to measure the search).
    pub plant: Option<Bug>,
    /// The hunt's own seed: it decides every mutation.
    pub seed: u64,
    /// The first fresh seed of the scenario; fresh seeds count up from it.
    pub start: u64,
}

/// One run the search decided on.
#[derive(Clone, Debug)]
pub struct Candidate {
    /// What to run; a mutant carries its plan as a script.
    pub spec: RunSpec,
    /// The 1-based run number of the corpus entry it was mutated from.
    pub parent: Option<u64>,
    /// The mutations applied, in order.
    pub mutations: Vec<&'static str>,
}

/// A kept run: its seed's shape, the plan it ran and what it reached.
#[derive(Clone, Debug)]
struct Entry {
    run: u64,
    spec: RunSpec,
    plan: FaultPlan,
    /// The states it reached, with their hit buckets.
    states: Vec<(String, u32)>,
    /// When it reached its runtime states, for a branch to start from.
    marks: crate::run::coverage::Marks,
}

/// One run of a batch, taken back.
pub struct Ran {
    /// Its 1-based run number in the hunt.
    pub run: u64,
    /// Runs kept for mutation once it was taken back.
    pub corpus: usize,
    /// What ran.
    pub candidate: Candidate,
    /// What it did.
    pub outcome: Result<RunResult, SimError>,
    /// What the search made of it.
    pub step: Step,
}

/// What taking one run's result back did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Nothing new.
    Nothing,
    /// The run reached new coverage and joined the corpus: these states, for
    /// the first time in these hit buckets.
    NewCoverage(Vec<String>),
    /// The run broke these invariants.
    Violation(Vec<String>),
    /// The run could not finish.
    Error(String),
}

/// The search's state: the corpus, the coverage seen, the next fresh seed.
pub struct Hunt {
    config: HuntConfig,
    rng: ChaCha8Rng,
    corpus: Vec<Entry>,
    /// (state, hit bucket) pairs some run produced.
    seen: BTreeSet<(String, u32)>,
    /// Runs that reached each state.
    reached: BTreeMap<String, u64>,
    /// Per invariant, the least slack any run left and the corpus entry that
    /// left it.
    nearest: BTreeMap<&'static str, (u64, usize)>,
    next_fresh: u64,
    runs: u64,
}

/// Slack above which a run is not near breaking an invariant, in ms: a few
/// of the runtime's one-second intervals.
const NEAR_SLACK_MS_MAX: u64 = 4_096;
/// Finest slack level told apart, in ms: a few of the simulator's 20 ms steps.
const NEAR_SLACK_MS_MIN: u64 = 128;

/// The near-miss states `result` reached: for each invariant whose slack
/// ([`crate::run::runner::slack`]) is under [`NEAR_SLACK_MS_MAX`], one state
/// naming it and its level, a power of two (`near no_double_execution
/// <512ms`). Each level is a state of its own, so the deeper levels are the
/// rarer ones and weigh more when parents are picked: the search climbs
/// toward the edge of an invariant the way a fuzzer splits a comparison into
/// bytes it can reach one at a time.
fn near_states(slack: &BTreeMap<&'static str, u64>) -> Vec<String> {
    slack
        .iter()
        .filter(|(_, slack)| **slack < NEAR_SLACK_MS_MAX)
        .map(|(invariant, slack)| {
            let level = (slack + 1).next_power_of_two().max(NEAR_SLACK_MS_MIN);
            format!("near {invariant} <{level}ms")
        })
        .collect()
}

/// A hit count's bucket: 1, 2, 3, 4-7, 8-15, ... (AFL's classes).
fn bucket(hits: u64) -> u32 {
    match hits {
        0..=3 => u32::try_from(hits).unwrap_or(0),
        _ => 2 + hits.ilog2(),
    }
}

impl Hunt {
    /// A hunt that has run nothing yet.
    pub fn new(config: HuntConfig) -> Hunt {
        let rng = ChaCha8Rng::seed_from_u64(config.seed ^ HUNT_SALT);
        let next_fresh = config.start;
        Hunt {
            config,
            rng,
            corpus: Vec::new(),
            seen: BTreeSet::new(),
            reached: BTreeMap::new(),
            nearest: BTreeMap::new(),
            next_fresh,
            runs: 0,
        }
    }

    /// Runs taken back so far.
    pub fn runs(&self) -> u64 {
        self.runs
    }

    /// Runs kept for mutation.
    pub fn corpus_len(&self) -> usize {
        self.corpus.len()
    }

    /// Runs that reached each state so far.
    pub fn reached(&self) -> &BTreeMap<String, u64> {
        &self.reached
    }

    /// The next [`BATCH`] candidates (fewer when `left` runs remain).
    pub fn next_batch(&mut self, left: u64) -> Vec<Candidate> {
        let count = usize::try_from(left).unwrap_or(usize::MAX).min(BATCH);
        (0..count).map(|_| self.candidate()).collect()
    }

    fn candidate(&mut self) -> Candidate {
        if !self.corpus.is_empty() && !self.rng.random_bool(FRESH_SHARE) {
            let parent = self.pick_parent();
            for _ in 0..MUTANT_TRIES_MAX {
                if let Some(c) = self.mutant(parent) {
                    return c;
                }
            }
        }
        let seed = self.next_fresh;
        self.next_fresh += 1;
        Candidate {
            spec: RunSpec {
                scenario: self.config.scenario.clone(),
                seed,
                plant: self.config.plant,
                storage: self.config.storage,
                script: None,
            },
            parent: None,
            mutations: Vec::new(),
        }
    }

    /// A corpus index: the entry nearest to breaking some invariant, or one
    /// weighted toward rare states.
    fn pick_parent(&mut self) -> usize {
        if !self.nearest.is_empty() && self.rng.random_bool(CLIMB_SHARE) {
            let i = self.rng.random_range(0..self.nearest.len());
            if let Some((_, (_, index))) = self.nearest.iter().nth(i) {
                return *index;
            }
        }
        self.pick_by_rarity()
    }

    /// A corpus index, weighted toward entries that reached rare states.
    fn pick_by_rarity(&mut self) -> usize {
        let weights: Vec<f64> = self
            .corpus
            .iter()
            .map(|e| {
                let rarity: f64 = e
                    .states
                    .iter()
                    .map(|(s, _)| 1.0 / self.reached.get(s).copied().unwrap_or(1).max(1) as f64)
                    .sum();
                ENERGY_FLOOR + rarity
            })
            .collect();
        weighted(&mut self.rng, &weights).unwrap_or(0)
    }

    /// A mutant of corpus entry `index`, or `None` when the draw changed
    /// nothing.
    fn mutant(&mut self, index: usize) -> Option<Candidate> {
        let entry = &self.corpus[index];
        let (parent_run, spec, mut plan) = (entry.run, entry.spec.clone(), entry.plan.clone());
        if self.rng.random_bool(RESEED_SHARE) {
            // Seeds of the template are counted up from `start`; a reseed
            // draws its own, far from them (the top bit set).
            let seed = self.rng.random::<u64>() | (1 << 63);
            return Some(Candidate {
                spec: RunSpec { seed, ..spec },
                parent: Some(parent_run),
                mutations: vec!["reseed"],
            });
        }
        let from_ms = match self.rng.random_bool(BRANCH_SHARE) {
            true => Some(self.branch_moment(index, spec.scenario.duration_s * 1000)?),
            false => None,
        };
        let shape = &spec.scenario;
        let bounds = Bounds::new(&self.config.scenario.faults, &shape.faults, shape);
        if let Some(from_ms) = from_ms {
            let mutations = branch(&mut self.rng, &mut plan, &bounds, from_ms);
            normalize(&mut plan);
            return (plan != self.corpus[index].plan).then(|| Candidate {
                spec: RunSpec {
                    script: Some(Arc::new(plan)),
                    ..spec
                },
                parent: Some(parent_run),
                mutations,
            });
        }
        let count = self.rng.random_range(1..=MUTATIONS_MAX);
        let mut reshaped = shape.clone();
        let mut mutations = Vec::with_capacity(count);
        for _ in 0..count {
            if self.rng.random_bool(RESHAPE_SHARE) {
                mutations.push(reshape(&mut self.rng, &mut reshaped)?);
            } else {
                mutations.push(mutate(&mut self.rng, &mut plan, &bounds));
            }
        }
        normalize(&mut plan);
        if plan == self.corpus[index].plan && reshaped == *shape {
            return None;
        }
        let mut spec = spec;
        spec.scenario = reshaped;
        spec.script = Some(Arc::new(plan));
        Some(Candidate {
            spec,
            parent: Some(parent_run),
            mutations,
        })
    }

    /// A moment of corpus entry `index` to branch from, inside the fault
    /// phase (`duration_ms`): one hit of one of its states, the state picked
    /// with a weight of one over the runs that reached it. `None` when the
    /// entry reached no state inside the phase.
    fn branch_moment(&mut self, index: usize, duration_ms: u64) -> Option<u64> {
        let moments: Vec<Vec<u64>> = self.corpus[index]
            .marks
            .values()
            .map(|times| times.iter().copied().filter(|t| *t < duration_ms).collect())
            .collect();
        let weights: Vec<f64> = self.corpus[index]
            .marks
            .keys()
            .zip(&moments)
            .map(|(state, times)| match times.is_empty() {
                true => 0.0,
                false => 1.0 / self.reached.get(state).copied().unwrap_or(1).max(1) as f64,
            })
            .collect();
        let times = &moments[weighted(&mut self.rng, &weights)?];
        match times.len() {
            0 => None,
            n => times.get(self.rng.random_range(0..n)).copied(),
        }
    }

    /// Take one candidate's outcome back, in candidate order.
    pub fn absorb(&mut self, candidate: &Candidate, outcome: &Result<RunResult, SimError>) -> Step {
        self.runs += 1;
        let result = match outcome {
            Ok(r) => r,
            Err(e) => return Step::Error(e.to_string()),
        };
        let mut new = Vec::new();
        let mut states = Vec::new();
        let slack = crate::run::runner::slack(result);
        let reached = result
            .coverage
            .iter()
            .filter(|(_, h)| **h > 0)
            .map(|(state, hits)| (state.clone(), bucket(*hits)))
            .chain(near_states(&slack).into_iter().map(|s| (s, 1)));
        for (state, bucket) in reached {
            *self.reached.entry(state.clone()).or_insert(0) += 1;
            if self.seen.insert((state.clone(), bucket)) {
                new.push(state.clone());
            }
            states.push((state, bucket));
        }
        if !result.violations.is_empty() {
            let mut names: Vec<String> = result
                .violations
                .iter()
                .map(|v| v.invariant.to_owned())
                .collect();
            names.dedup();
            return Step::Violation(names);
        }
        let nearer: Vec<(&'static str, u64)> = slack
            .into_iter()
            .filter(|(inv, ms)| self.nearest.get(inv).is_none_or(|(best, _)| ms < best))
            .collect();
        if new.is_empty() && nearer.is_empty() {
            return Step::Nothing;
        }
        for (inv, ms) in nearer {
            self.nearest.insert(inv, (ms, self.corpus.len()));
            if new.is_empty() {
                new.push(format!("nearer {inv} ({ms}ms)"));
            }
        }
        // A fresh seed's scenario is the template: keep the shape it drew, so
        // its mutants run the same nodes, phase and workload.
        let mut spec = candidate.spec.clone();
        spec.scenario = crate::plan::shape::concrete(&spec.scenario, spec.seed).into_owned();
        spec.script = None;
        self.corpus.push(Entry {
            run: self.runs,
            spec,
            plan: result.plan.clone(),
            states,
            marks: result.marks.clone(),
        });
        Step::NewCoverage(new)
    }
}

impl Hunt {
    /// Draw the next batch (at most `left` runs), run it on `jobs` threads and
    /// take every result back in candidate order, each with its 1-based run
    /// number.
    pub fn run_batch(&mut self, left: u64, jobs: std::num::NonZeroUsize) -> Vec<Ran> {
        let batch = self.next_batch(left);
        let mut outcomes = Vec::with_capacity(batch.len());
        crate::tools::pool::ordered(
            &batch,
            jobs,
            &std::sync::atomic::AtomicBool::new(false),
            |c| crate::run::runner::run_once(&c.spec),
            |_| {},
            |_, o| outcomes.push(o),
        );
        batch
            .into_iter()
            .zip(outcomes)
            .map(|(candidate, outcome)| {
                let step = self.absorb(&candidate, &outcome);
                Ran {
                    run: self.runs,
                    corpus: self.corpus.len(),
                    candidate,
                    outcome,
                    step,
                }
            })
            .collect()
    }
}

/// The script that replays `result` (a fresh seed's plan, or a mutant's),
/// expecting `invariant` broken.
pub fn finding_script(result: &RunResult, invariant: &str) -> FaultScript {
    let mut spec = result.spec.clone();
    spec.scenario = crate::plan::shape::concrete(&spec.scenario, spec.seed).into_owned();
    FaultScript::new(
        spec,
        result.plan.clone(),
        Expect::Violation(invariant.to_owned()),
    )
}

/// The ranges a mutant's values stay in: per field, the union of the
/// template's range and the shape's (a focus may bring wider ones).
struct Bounds<'a> {
    template: &'a Faults,
    shape: &'a Faults,
    nodes: usize,
    duration_ms: u64,
    loops: usize,
    /// Kinds a new fault may be of: those the template draws at all.
    kinds: Vec<usize>,
}

impl<'a> Bounds<'a> {
    fn new(template: &'a Faults, shape: &'a Faults, scenario: &Scenario) -> Bounds<'a> {
        Bounds {
            template,
            shape,
            nodes: scenario.nodes as usize,
            duration_ms: scenario.duration_s * 1000,
            loops: scenario.loops.len().max(1),
            kinds: (0..KIND_COUNT)
                .filter(|k| crate::plan::shape::kind_rate(template, *k) > 0.0)
                .collect(),
        }
    }

    fn range(&self, field: fn(&Faults) -> [u64; 2]) -> [u64; 2] {
        let [a, b] = field(self.template);
        let [c, d] = field(self.shape);
        [a.min(c), b.max(d)]
    }
}

/// Apply one mutation to `plan`, named for the report.
fn mutate(rng: &mut ChaCha8Rng, plan: &mut FaultPlan, b: &Bounds<'_>) -> &'static str {
    let n = plan.faults.len();
    let op = if n == 0 { 3 } else { rng.random_range(0..6) };
    match op {
        0 => {
            let f = &mut plan.faults[rng.random_range(0..n)];
            let shift = rng.random_range(0..=2 * MOVE_MS_MAX);
            f.at_ms = (f.at_ms + shift)
                .saturating_sub(MOVE_MS_MAX)
                .min(b.duration_ms.saturating_sub(1));
            "move"
        }
        1 => {
            let i = rng.random_range(0..n);
            stretch(rng, &mut plan.faults[i].kind, b);
            "stretch"
        }
        2 => {
            let i = rng.random_range(0..n);
            let mut copy = plan.faults[i].clone();
            copy.at_ms = rng.random_range(0..b.duration_ms.max(1));
            plan.faults.push(copy);
            "copy"
        }
        3 => {
            let Some(mut fault) = new_fault(rng, b) else {
                return "none";
            };
            fault.at_ms = rng.random_range(0..b.duration_ms.max(1));
            plan.faults.push(fault);
            "add"
        }
        4 => {
            plan.faults.remove(rng.random_range(0..n));
            "remove"
        }
        _ => {
            let i = rng.random_range(0..n);
            if !reaim(rng, &mut plan.faults[i], b.nodes) {
                return "none";
            }
            "re-aim"
        }
    }
}

/// An index drawn with probability proportional to its weight (`None` when
/// no weight is above zero); weights are non-negative.
fn weighted(rng: &mut ChaCha8Rng, weights: &[f64]) -> Option<usize> {
    let total: f64 = weights.iter().sum();
    if total <= 0.0 {
        return None;
    }
    let mut x = rng.random_range(0.0..total);
    for (i, w) in weights.iter().enumerate() {
        if x < *w {
            return Some(i);
        }
        x -= w;
    }
    weights.len().checked_sub(1)
}

/// Change `plan` only from `from_ms` on (1 to [`MUTATIONS_MAX`] changes), so
/// a run of it is its parent's up to that moment: add a fault in the
/// [`BRANCH_WINDOW_MS`] after it, or move there, stretch or remove one that
/// starts at or after it. Named for the report, `branch` first.
fn branch(
    rng: &mut ChaCha8Rng,
    plan: &mut FaultPlan,
    b: &Bounds<'_>,
    from_ms: u64,
) -> Vec<&'static str> {
    let count = rng.random_range(1..=MUTATIONS_MAX);
    let mut mutations = vec!["branch"];
    let last_ms = b.duration_ms.saturating_sub(1);
    for _ in 0..count {
        let later: Vec<usize> = (0..plan.faults.len())
            .filter(|i| plan.faults[*i].at_ms >= from_ms)
            .collect();
        let op = if later.is_empty() {
            0
        } else {
            rng.random_range(0..5)
        };
        let at_ms = (from_ms + rng.random_range(0..=BRANCH_WINDOW_MS)).min(last_ms);
        let pick = |rng: &mut ChaCha8Rng| later[rng.random_range(0..later.len())];
        mutations.push(match op {
            // Adding is drawn twice as often: a race is most often pushed on
            // by one more fault.
            0 | 1 => {
                let Some(mut fault) = new_fault(rng, b) else {
                    continue;
                };
                fault.at_ms = at_ms;
                if rng.random_bool(0.5) {
                    reaim(rng, &mut fault, b.nodes);
                }
                plan.faults.push(fault);
                "add"
            }
            2 => {
                let i = pick(rng);
                plan.faults[i].at_ms = at_ms;
                "move"
            }
            3 => {
                let i = pick(rng);
                stretch(rng, &mut plan.faults[i].kind, b);
                "stretch"
            }
            _ => {
                plan.faults.remove(pick(rng));
                "remove"
            }
        });
    }
    mutations
}

/// A fault of a kind the template draws, with the shape's parameters
/// widened to the template's, aimed as a drawn plan would aim it; its time
/// is left to the caller.
fn new_fault(rng: &mut ChaCha8Rng, b: &Bounds<'_>) -> Option<Fault> {
    let kind = *b.kinds.get(rng.random_range(0..b.kinds.len().max(1)))?;
    let mut f = b.shape.clone();
    widen(&mut f, b);
    let target = faults::draw_target(kind, rng, &f, b.nodes);
    let kind = faults::draw_kind(kind, rng, &f, b.loops);
    Some(Fault {
        at_ms: 0,
        target,
        kind,
    })
}

/// Aim `fault` at the sitting leader, a node mid-start, or another node.
/// Storage faults hit the one database; hook faults only a node that is
/// about to start, never the sitting leader. `false` when it cannot move.
fn reaim(rng: &mut ChaCha8Rng, fault: &mut Fault, nodes: usize) -> bool {
    match fault.kind {
        FaultKind::Storage { .. } => return false,
        FaultKind::HookFault { .. } => fault.target = Target::Node(rng.random_range(0..nodes)),
        _ => {
            fault.target = match rng.random_range(0..3) {
                0 => Target::Leader,
                1 => Target::Starting,
                _ => Target::Node(rng.random_range(0..nodes)),
            };
        }
    }
    true
}

/// Set one workload knob of `shape` to a value swarm's shapes draw it from.
fn reshape(rng: &mut ChaCha8Rng, shape: &mut Scenario) -> Option<&'static str> {
    let keys = &crate::plan::script::WORKLOAD_KEYS;
    let (key, _) = keys[rng.random_range(0..keys.len())];
    let [lo, hi] = crate::plan::shape::knob_range(key)?;
    *shape = crate::plan::shape::reshape(shape, key, rng.random_range(lo..=hi))?;
    Some(key)
}

/// The shape's ranges widened to the template's, for drawing a new fault.
fn widen(f: &mut Faults, b: &Bounds<'_>) {
    f.partition_ms = b.range(|f| f.partition_ms);
    f.down_ms = b.range(|f| f.down_ms);
    f.hook_fault_window_ms = b.range(|f| f.hook_fault_window_ms);
    f.hook_delay_ms = b.range(|f| f.hook_delay_ms);
    f.hook_fail_pct = b.range(|f| f.hook_fail_pct);
    f.clock_jump_ms = b.range(|f| f.clock_jump_ms);
    f.clock_jump_dur_ms = b.range(|f| f.clock_jump_dur_ms);
    f.storage_fault_ms = b.range(|f| f.storage_fault_ms);
    f.storage_fault_pct = b.range(|f| f.storage_fault_pct);
    f.slow_storage_ms = b.range(|f| f.slow_storage_ms);
    f.shutdown_deadline_ms = b.range(|f| f.shutdown_deadline_ms);
    f.shutdown_down_ms = b.range(|f| f.shutdown_down_ms);
    f.slow_tick_ms = b.range(|f| f.slow_tick_ms);
    f.pause_ms = b.range(|f| f.pause_ms);
    f.restart_deadline_ms = b.range(|f| f.restart_deadline_ms);
    f.replace_ms = b.range(|f| f.replace_ms);
    f.drift_change_ms = b.range(|f| f.drift_change_ms);
    f.replace_overlap_ms = b.range(|f| f.replace_overlap_ms);
    if f.storage_fault_modes.is_empty() {
        f.storage_fault_modes = b.template.storage_fault_modes.clone();
    }
}

/// Scale one of `kind`'s durations by 1/2 to 2, kept in its range. A clock
/// jump's size is left as drawn.
fn stretch(rng: &mut ChaCha8Rng, kind: &mut FaultKind, b: &Bounds<'_>) {
    let (value, range) = match kind {
        FaultKind::Partition { dur_ms } => (dur_ms, b.range(|f| f.partition_ms)),
        FaultKind::Bounce { down_ms } => (down_ms, b.range(|f| f.down_ms)),
        FaultKind::HookFault { window_ms, .. } => (window_ms, b.range(|f| f.hook_fault_window_ms)),
        FaultKind::ClockJump { dur_ms, .. } => (dur_ms, b.range(|f| f.clock_jump_dur_ms)),
        FaultKind::Storage { dur_ms, .. } => (dur_ms, b.range(|f| f.storage_fault_ms)),
        FaultKind::SlowTick { ms, .. } => (ms, b.range(|f| f.slow_tick_ms)),
        FaultKind::Pause { dur_ms } => (dur_ms, b.range(|f| f.pause_ms)),
        FaultKind::RestartRuntime { deadline_ms } => {
            (deadline_ms, b.range(|f| f.restart_deadline_ms))
        }
        FaultKind::Shutdown { deadline_ms, .. } => {
            (deadline_ms, b.range(|f| f.shutdown_deadline_ms))
        }
        FaultKind::Replace { dur_ms, .. } => (dur_ms, b.range(|f| f.replace_ms)),
        FaultKind::Drift { dur_ms, .. } => (dur_ms, b.range(|f| f.drift_change_ms)),
        FaultKind::LoopPanic { .. } | FaultKind::RestartMaintainer => return,
    };
    let factor: f64 = rng.random_range(0.5..=2.0);
    let scaled = (*value as f64 * factor).round() as u64;
    *value = scaled.clamp(range[0], range[1].max(range[0]));
}

/// Time order, and no two faults of one kind overlapping on one target (the
/// property a drawn plan has and the harness relies on): the later one goes.
fn normalize(plan: &mut FaultPlan) {
    plan.faults.sort_by_key(|f| (f.at_ms, f.target));
    let mut busy_until: BTreeMap<(Target, usize), u64> = BTreeMap::new();
    plan.faults.retain(|f| {
        let key = (f.target, faults::kind_index(&f.kind));
        let free = busy_until.get(&key).is_none_or(|end| f.at_ms >= *end);
        if free {
            busy_until.insert(key, f.end_ms());
        }
        free
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::history::Record;

    fn config(seed: u64) -> HuntConfig {
        HuntConfig {
            scenario: scenarios::by_name("swarm").expect("in the catalog"),
            storage: StorageKind::Mem,
            plant: None,
            seed,
            start: 0,
        }
    }

    /// A stand-in result that reached `states`, for driving the search
    /// without running it.
    fn outcome(c: &Candidate, states: &[(&str, u64)]) -> Result<RunResult, SimError> {
        let scenario = crate::plan::shape::concrete(&c.spec.scenario, c.spec.seed).into_owned();
        let plan = c
            .spec
            .script
            .as_deref()
            .cloned()
            .unwrap_or_else(|| FaultPlan::generate(&scenario, c.spec.seed));
        Ok(RunResult {
            spec: c.spec.clone(),
            plan,
            history: Vec::new(),
            trace_hash: 0,
            violations: Vec::new(),
            coverage: states.iter().map(|(s, h)| ((*s).to_owned(), *h)).collect(),
            marks: BTreeMap::new(),
        })
    }

    fn drive(seed: u64) -> Vec<String> {
        let mut hunt = Hunt::new(config(seed));
        let mut log = Vec::new();
        for round in 0..6u64 {
            for c in hunt.next_batch(100) {
                let hits = 1 + (c.spec.seed + round) % 9;
                let step = hunt.absorb(&c, &outcome(&c, &[("cancel_races_finish", hits)]));
                let plan = c.spec.script.as_deref().map(ToString::to_string);
                log.push(format!(
                    "{} {:?} {:?} {step:?}",
                    c.spec.seed, c.mutations, plan
                ));
            }
        }
        log
    }

    #[test]
    fn the_search_is_a_function_of_its_seed() {
        let a = drive(3);
        assert_eq!(a, drive(3));
        assert_ne!(a, drive(4));
        assert!(a.iter().any(|l| l.contains("NewCoverage")), "{a:#?}");
        assert!(a.iter().any(|l| !l.contains("[]")), "mutants drawn: {a:#?}");
    }

    #[test]
    fn mutants_keep_the_shape_and_the_ranges() {
        let mut hunt = Hunt::new(config(9));
        let template = config(9).scenario;
        let (mut mutants, mut reshaped, mut reseeded) = (0, 0, 0);
        for _ in 0..40 {
            for c in hunt.next_batch(BATCH as u64) {
                if c.mutations == ["reseed"] {
                    // The parent's shape under a seed of its own, far from the
                    // fresh seeds, with the plan that seed draws.
                    reseeded += 1;
                    let parent = hunt.corpus.iter().find(|e| Some(e.run) == c.parent);
                    let parent = parent.expect("a reseed names its parent");
                    assert_eq!(c.spec.scenario, parent.spec.scenario);
                    assert!(c.spec.seed >= 1 << 63 && c.spec.script.is_none());
                }
                if let Some(plan) = c.spec.script.as_deref() {
                    mutants += 1;
                    let s = &c.spec.scenario;
                    let drawn = crate::plan::shape::concrete(&template, c.spec.seed);
                    assert_eq!((s.nodes, s.duration_s), (drawn.nodes, drawn.duration_s));
                    assert!(s.validate().is_ok(), "{s:?}");
                    reshaped += usize::from(s.workload != drawn.workload);
                    assert_eq!(plan.skews_ms.len(), s.nodes as usize);
                    let mut sorted = plan.clone();
                    normalize(&mut sorted);
                    assert_eq!(&sorted, plan, "ordered, no same-kind overlap");
                    for f in &plan.faults {
                        assert!(f.at_ms < s.duration_s * 1000, "{f}");
                        if let Target::Node(i) = f.target {
                            assert!(
                                i < s.nodes as usize || matches!(f.kind, FaultKind::Storage { .. })
                            );
                        }
                    }
                }
                // Every distinct seed reaches something new once.
                let hits = c.spec.seed % 5 + 1;
                hunt.absorb(&c, &outcome(&c, &[("claimed_ahead_renewed", hits)]));
            }
        }
        assert!(mutants > 30, "{mutants} mutants");
        assert!(reseeded > 30, "{reseeded} reseeded");
        assert!(
            reshaped > 5,
            "{reshaped} of {mutants} mutants with another workload"
        );
    }

    /// A mutant (its workload reshaped, its faults changed) and a reseeded
    /// one, each written as a script and read back, run exactly the run the
    /// hunt ran.
    #[test]
    fn a_mutant_replays_from_its_script() {
        let mut hunt = Hunt::new(config(5));
        let (mut reshaped_checked, mut reseed_checked) = (false, false);
        while !(reshaped_checked && reseed_checked) {
            for c in hunt.next_batch(BATCH as u64) {
                let reshaped = c
                    .mutations
                    .iter()
                    .any(|m| m.ends_with("_pct") || *m == "workers" || *m == "claim_ahead");
                let reseed = c.mutations == ["reseed"];
                let check = (reshaped && !reshaped_checked) || (reseed && !reseed_checked);
                if !check {
                    hunt.absorb(
                        &c,
                        &outcome(&c, &[("cancel_races_finish", c.spec.seed % 7 + 1)]),
                    );
                    continue;
                }
                let ran = crate::run::runner::run_once(&c.spec).expect("runs");
                let text = finding_script(&ran, "no_lost_jobs").render("test");
                assert_eq!(reseed, text.contains("shape_seed="), "{text}");
                let back = FaultScript::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
                assert_eq!(back.spec.scenario, c.spec.scenario, "{text}");
                let again = crate::run::runner::run_once(&back.spec).expect("runs");
                assert_eq!(again.trace_hash, ran.trace_hash, "{text}");
                reshaped_checked |= reshaped;
                reseed_checked |= reseed;
            }
        }
    }

    /// A branch changes nothing before a moment its parent reached a rare
    /// state, so its run is the parent's, record for record, up to there.
    #[test]
    fn a_branch_runs_its_parent_up_to_the_moment_it_branched_from() {
        let mut hunt = Hunt::new(config(7));
        let mut parents: BTreeMap<u64, RunResult> = BTreeMap::new();
        let mut checked = 0;
        while checked < 2 {
            for c in hunt.next_batch(BATCH as u64) {
                let ran = crate::run::runner::run_once(&c.spec).expect("runs");
                if c.mutations.first() == Some(&"branch") {
                    let parent = &parents[&c.parent.expect("a branch names its parent")];
                    let plan = c.spec.script.as_deref().expect("a branch is a script");
                    let differs = |a: &FaultPlan, b: &FaultPlan| {
                        a.faults
                            .iter()
                            .filter(|f| !b.faults.contains(f))
                            .map(|f| f.at_ms)
                            .min()
                    };
                    let from_ms = [differs(plan, &parent.plan), differs(&parent.plan, plan)]
                        .into_iter()
                        .flatten()
                        .min()
                        .expect("a branch changes the plan");
                    let marked = parent.marks.values().flatten().any(|t| *t <= from_ms);
                    assert!(
                        marked,
                        "{from_ms} ms is at or after a moment the parent marked"
                    );
                    let before = |r: &RunResult| -> Vec<Record> {
                        r.history
                            .iter()
                            .filter(|e| e.at_ms < from_ms)
                            .cloned()
                            .collect()
                    };
                    assert_eq!(before(&ran), before(parent), "up to {from_ms} ms");
                    assert!(!before(parent).is_empty());
                    checked += 1;
                }
                hunt.absorb(&c, &Ok(ran.clone()));
                parents.insert(hunt.runs(), ran);
            }
        }
    }

    /// A run whose handler of a revoked claim ran on `over_ms` past the
    /// revoke (the runtime's grace is 3,040 ms).
    fn ran_on(c: &Candidate, over_ms: u64) -> Result<RunResult, SimError> {
        use crate::run::checkers::test_support::H;
        use crate::run::history::DbEvent;
        use keel::events::Event;
        use keel::storage::JobId;
        let job = JobId(1);
        let history = H::new()
            .db(
                0,
                DbEvent::ClaimApplied {
                    job,
                    attempt: 1,
                    owner: "w".into(),
                    max_attempts: 10,
                    heartbeat_ms: 0,
                    issued_ms: 0,
                },
            )
            .node(10, "n1", Event::HandlerStarted { job, attempt: 1 })
            .db(
                5_000,
                DbEvent::RescueApplied {
                    job,
                    attempt: 1,
                    issued_ms: 0,
                },
            )
            .node(
                5_000 + over_ms,
                "n1",
                Event::HandlerEnded {
                    job,
                    attempt: 1,
                    outcome: "aborted".into(),
                },
            )
            .0;
        let mut result = outcome(c, &[])?;
        result.history = history;
        // The grace counts one request timeout: the default 1 s, not the
        // one the candidate's plan drew.
        result.plan.request_timeout_ms = 0;
        Ok(result)
    }

    #[test]
    fn a_run_nearer_to_breaking_an_invariant_is_kept_and_climbed_from() {
        let mut hunt = Hunt::new(config(2));
        let batch = hunt.next_batch(3);
        let far = hunt.absorb(&batch[0], &ran_on(&batch[0], 0));
        assert_eq!(
            far,
            Step::NewCoverage(vec!["near no_double_execution <4096ms".into()]),
            "3,040 ms of slack"
        );
        let same = hunt.absorb(&batch[1], &ran_on(&batch[1], 0));
        assert_eq!(same, Step::Nothing, "no nearer than before");
        let near = hunt.absorb(&batch[2], &ran_on(&batch[2], 3_000));
        assert_eq!(
            near,
            Step::NewCoverage(vec!["near no_double_execution <128ms".into()]),
            "40 ms of slack"
        );
        assert_eq!(hunt.nearest.get("no_double_execution"), Some(&(40, 1)));
        let picks = (0..400).filter(|_| hunt.pick_parent() == 1).count();
        assert!(picks > 200, "the nearest run drew {picks} of 400 picks");
    }

    #[test]
    fn rare_states_draw_the_search_and_buckets_count_powers_of_two() {
        assert_eq!([1, 2, 3, 4, 7, 8, 100].map(bucket), [1, 2, 3, 4, 4, 5, 8]);
        let mut hunt = Hunt::new(config(1));
        let batch = hunt.next_batch(2);
        hunt.absorb(&batch[0], &outcome(&batch[0], &[("common", 1)]));
        hunt.absorb(&batch[1], &outcome(&batch[1], &[("rare", 1)]));
        for _ in 0..50 {
            let c = hunt.next_batch(1).remove(0);
            if c.parent.is_none() {
                hunt.absorb(&c, &outcome(&c, &[("common", 1)]));
            }
        }
        let picks: Vec<usize> = (0..400).map(|_| hunt.pick_parent()).collect();
        let rare = picks.iter().filter(|i| **i == 1).count();
        assert!(rare > 300, "the rare entry drew {rare} of 400 picks");
    }
}
