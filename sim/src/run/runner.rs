//! The runner: builds one seeded turmoil simulation, drives it through a fault
//! phase and a heal phase, and checks the history.
//!
//! One seed fixes everything: turmoil's RNG (message latency, host order), the
//! fault plan, the clock skews, and the runtime's jitter. [`run_checked`] runs a
//! seed twice and compares trace hashes, so the simulator checks its own
//! determinism on every seed it reports on.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicI64, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use keel::clock::SharedClock;
use keel::events::Event;
use keel::jobs::JobsConfig;
use keel::planted::{Bug, PlantedBugs};
use keel::shutdown::panic_message;
use keel::storage::{poll_ready, MemStorage, SqliteEngine, SqliteOptions, Storage};
use scenarios::Scenario;

use crate::plan::faults::{Fault, FaultKind, FaultPlan, Target};
use crate::run::checkers::{self, CheckCtx, Checker, Violation};
use crate::run::history::{trace_hash, Ev, HarnessEvent, History, Record};
use crate::world::clock::{Drift, SimClock};
use crate::world::db::{self, DbFaults, StorageFault, DB_HOST};
use crate::world::net::TurmoilNetwork;
use crate::world::node::{
    node_main, HookFaults, LoopFault, LoopFaults, NodeJobs, NodeSetup, Restart, RestartRequests,
    ShutdownRequests, Timing, LEASE_NAME,
};
use crate::world::pause::PauseGate;
use crate::world::workload::{self, client_main, WorkloadPlan, CLIENT_HOST};

/// Simulated time per step. Leases and heartbeats run on seconds and messages
/// take 1 to 30 ms, so 20 ms steps still order every race the runtime has; each
/// step costs about 2 us per host in turmoil alone, so halving the step from
/// here would halve the simulator's speed (measured by `ci/bench-sim`).
pub const TICK: Duration = Duration::from_millis(20);
/// Host name the harness records its own events under.
pub const HARNESS_HOST: &str = "sim";

/// What to run.
#[derive(Clone, Debug)]
pub struct RunSpec {
    /// The scenario.
    pub scenario: Scenario,
    /// The seed.
    pub seed: u64,
    /// The planted bug switched on, if any.
    pub plant: Option<Bug>,
    /// Which engine the database host serves.
    pub storage: StorageKind,
    /// A fault script to run instead of the plan the seed would draw
    /// (`sim replay --script`, `sim shrink`). Its skews fix the node count.
    pub script: Option<Arc<FaultPlan>>,
}

/// The storage engine behind the simulated database host.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StorageKind {
    /// [`MemStorage`], the reference model.
    #[default]
    Mem,
    /// [`SqliteEngine`] in memory: the SQL production runs.
    Sqlite,
}

impl StorageKind {
    /// Every engine the simulator can serve.
    pub const ALL: [StorageKind; 2] = [StorageKind::Mem, StorageKind::Sqlite];

    /// A fresh, empty store of this kind whose time is `clock`'s (the database
    /// host's: every stored time is judged on it).
    pub fn open(self, clock: SharedClock) -> Result<Arc<dyn Storage>, SimError> {
        Ok(match self {
            StorageKind::Mem => Arc::new(MemStorage::with_clock(clock)),
            StorageKind::Sqlite => Arc::new(
                SqliteEngine::in_memory_with(SqliteOptions::default().clock(clock))
                    .map_err(|e| SimError::Sim(format!("sqlite: {e}")))?,
            ),
        })
    }
}

impl std::fmt::Display for StorageKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StorageKind::Mem => "mem",
            StorageKind::Sqlite => "sqlite",
        })
    }
}

impl std::str::FromStr for StorageKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "mem" => Ok(StorageKind::Mem),
            "sqlite" => Ok(StorageKind::Sqlite),
            other => Err(format!("unknown storage {other:?}; use mem or sqlite")),
        }
    }
}

/// What one run did.
#[derive(Clone, Debug)]
pub struct RunResult {
    /// What ran.
    pub spec: RunSpec,
    /// The faults it injected.
    pub plan: FaultPlan,
    /// Every recorded event.
    pub history: Vec<Record>,
    /// Hash of the history; equal for equal runs.
    pub trace_hash: u64,
    /// Broken invariants.
    pub violations: Vec<Violation>,
    /// How often each rare state `keel::sometimes!` marks was reached, by state.
    /// Kept out of the history and the trace hash: it only says what the run
    /// covered.
    pub coverage: BTreeMap<String, u64>,
    /// When the run first reached each rare state, for the guided search to
    /// branch from; like `coverage`, outside the history and its hash.
    pub marks: crate::run::coverage::Marks,
}

/// A run that could not produce a verdict.
#[derive(Clone, Debug, thiserror::Error)]
pub enum SimError {
    /// A host's software failed or the simulation itself errored.
    #[error("simulation failed: {0}")]
    Sim(String),
    /// Something panicked while the simulation ran.
    #[error("panic during the run: {0}")]
    Panic(String),
    /// The same seed gave two different histories.
    #[error("non-determinism: two runs of one seed diverge at event {index}\n  first run:  {first}\n  second run: {second}")]
    NonDeterministic {
        /// Index of the first differing record.
        index: usize,
        /// That record in the first run (or `<end>`).
        first: String,
        /// That record in the second run (or `<end>`).
        second: String,
    },
    /// The scenario names a checker that does not exist.
    #[error("scenario {scenario} lists unknown invariant {name:?}; valid: {valid}")]
    UnknownInvariant {
        /// The scenario.
        scenario: String,
        /// The name.
        name: String,
        /// Valid names.
        valid: String,
    },
}

impl RunResult {
    /// Whether every invariant held.
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }

    /// Simulated time the run covered, in milliseconds: the `End` record's time.
    pub fn simulated_ms(&self) -> u64 {
        self.history.last().map_or(0, |r| r.at_ms)
    }
}

/// The one-line command that replays `spec`. A scripted run replays from its
/// script file, which only the caller knows.
pub fn replay_command(spec: &RunSpec) -> String {
    if spec.script.is_some() {
        return "cargo run -p sim -- replay --script <its script file>".into();
    }
    let plant = spec
        .plant
        .map(|b| format!(" --plant {b}"))
        .unwrap_or_default();
    let storage = match spec.storage {
        StorageKind::Mem => String::new(),
        other => format!(" --storage {other}"),
    };
    format!(
        "cargo run -p sim -- replay {} --seed {}{plant}{storage}",
        scenario_arg(&spec.scenario),
        spec.seed
    )
}

/// How the command line names `scenario`: `--scenario NAME` for the catalog's,
/// `--scenario-file PATH` for a user's file.
pub fn scenario_arg(scenario: &Scenario) -> String {
    match &scenario.source {
        Some(path) => format!("--scenario-file {}", path.display()),
        None => format!("--scenario {}", scenario.name),
    }
}

/// A failure report: scenario, seed, each violation with its witnesses, and the
/// replay command.
pub fn report(result: &RunResult) -> String {
    report_with(result, &replay_command(&result.spec))
}

/// [`report`] with `replay` as the line that replays the run (a user's
/// [`Simulation`](crate::user::Simulation) is replayed from the user's code).
pub(crate) fn report_with(result: &RunResult, replay: &str) -> String {
    let spec = &result.spec;
    let plant = spec
        .plant
        .map(|b| format!(" (planted: {b})"))
        .unwrap_or_default();
    let mut out = format!(
        "scenario {} seed {}{plant}: {} violation(s)\n",
        spec.scenario.name,
        spec.seed,
        result.violations.len()
    );
    for v in &result.violations {
        // A liveness failure means the run did not converge, not that it did
        // something wrong: say which, so the reader looks at the heal phase.
        let kind = match crate::run::checkers::property_of(v.invariant) {
            crate::run::checkers::Property::Safety => "safety",
            crate::run::checkers::Property::Liveness => "liveness",
        };
        out.push_str(&format!("  [{kind}] {v}"));
    }
    out.push_str(&format!(
        "  trace hash {:016x}\n  replay: {replay}\n",
        result.trace_hash
    ));
    out
}

/// Once a job can be claimed again after the faults, how long the workers get to
/// run its remaining attempts (handler time plus retry backoff), in milliseconds.
pub const JOBS_DRAIN_MS: u64 = 15_000;

/// The job runtime's bounds: `(tick_grace_ms, heal_converge_ms)`.
///
/// From the nodes' own [`JobsConfig`] (in [`Timing`]). Shutdown returns within its deadline plus one tick of the slowest
/// job-runtime loop (heartbeat, supervisor, maintenance), plus one simulation
/// [`TICK`] of history resolution. After the heal phase, a leader runs its
/// maintainer within `converge_bound_ms`; its rescuer then revokes claims left
/// stale by the faults (`stale_threshold` plus one maintenance round), an idle
/// worker polls for them (`idle_poll`), and they run to the end
/// ([`JOBS_DRAIN_MS`]).
///
/// A worker claiming ahead may hold a job behind `claim_ahead` others, each
/// running up to the workload's slowest handler (`hand_wait_ms` in all).
fn job_bounds(jobs: &JobsConfig, converge_bound_ms: u64, hand_wait_ms: u64) -> (u64, u64) {
    let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let slowest_loop = jobs
        .heartbeat_interval
        .max(jobs.supervisor_interval)
        .max(jobs.maintenance_interval);
    let tick_grace_ms = ms(slowest_loop + TICK);
    let rescued = jobs.stale_threshold + jobs.maintenance_interval + jobs.idle_poll;
    let heal_converge_ms = converge_bound_ms + ms(rescued) + JOBS_DRAIN_MS + hand_wait_ms;
    (tick_grace_ms, heal_converge_ms)
}

/// The bounds the checkers use, derived from the runtime's own settings.
pub fn check_ctx(timing: &Timing, scenario: &Scenario, end_at_ms: u64) -> CheckCtx {
    let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let m = &timing.maintainer;
    let e = &timing.elector;
    let slack_ms = 1_000;
    let backoff_step_max =
        m.backoff.base * (1 << m.start_attempts_max.saturating_sub(2)).min(1 << 20);
    let converge = m.start_attempt_timeout
        + timing.request_timeout
        + e.lease_ttl
        + e.acquire_interval
        + backoff_step_max
            .min(m.backoff.max)
            .mul_f64(1.0 + m.backoff.jitter_ratio);
    let converge_bound_ms = ms(converge) + 3 * slack_ms;
    let slowest_handler_ms = scenario.workload.as_ref().map_or(0, |w| w.slow_ms[1]);
    let hand_wait_ms = u64::from(timing.jobs.claim_ahead) * slowest_handler_ms;
    let (tick_grace_ms, heal_converge_ms) =
        job_bounds(&timing.jobs, converge_bound_ms, hand_wait_ms);
    CheckCtx {
        heal_at_ms: scenario.duration_s * 1000,
        end_at_ms,
        give_up_bound_ms: ms(m.give_up_bound()) + slack_ms,
        stop_grace_ms: ms(timing.request_timeout) + slack_ms,
        converge_bound_ms,
        tick_grace_ms,
        lost_claim_grace_ms: ms(timing.jobs.heartbeat_interval
            + timing.request_timeout
            + timing.jobs.cancel_grace)
            + 2 * ms(TICK),
        cancel_grace_ms: ms(timing.jobs.cancel_grace),
        idle_poll_ms: ms(timing.jobs.idle_poll),
        epoch_unix_ms: crate::world::clock::EPOCH_UNIX_MS,
        periodic_every_ms: scenario
            .workload
            .as_ref()
            .map(|w| {
                w.periodic
                    .iter()
                    .map(|(name, every_s)| (name.clone(), every_s * 1000))
                    .collect()
            })
            .unwrap_or_default(),
        stale_threshold_ms: ms(timing.jobs.stale_threshold),
        claim_trust_ms: ms(timing.jobs.claim_trust),
        heartbeat_interval_ms: ms(timing.jobs.heartbeat_interval),
        maintenance_interval_ms: ms(timing.jobs.maintenance_interval),
        start_backoff_base_ms: ms(m.backoff.base),
        start_backoff_max_ms: ms(m.backoff.max),
        heal_converge_ms,
        lease_ttl_ms: ms(e.lease_ttl),
        safety_margin_ms: ms(e.safety_margin),
        resign_cooldown_ms: ms(e.resign_cooldown),
        retry_base_ms: ms(timing.jobs.retry.base),
        retry_max_ms: ms(timing.jobs.retry.max),
        drift_ppm: 0,
    }
}

/// Check `history` against the scenario's invariants.
pub fn check(
    scenario: &Scenario,
    history: &[Record],
    ctx: &CheckCtx,
) -> Result<Vec<Violation>, SimError> {
    check_named(scenario, &scenario.invariants, history, ctx)
}

/// How near `result` came to breaking each of its scenario's invariants that
/// measures it ([`checkers::Checker::slack_ms`]): slack in ms, by invariant.
/// The guided search's second signal, beside the coverage states.
pub fn slack(result: &RunResult) -> BTreeMap<&'static str, u64> {
    let scenario = crate::plan::shape::concrete(&result.spec.scenario, result.spec.seed);
    let Ok(timing) = Timing::for_scenario(&scenario) else {
        return BTreeMap::new();
    };
    let timing = timing.with_plan(&result.plan);
    let ctx = checkers::after_storage_steps(
        check_ctx(&timing, &scenario, result.simulated_ms()),
        &result.history,
    );
    scenario
        .invariants
        .iter()
        .filter_map(|name| checkers::by_name(name))
        .filter_map(|c| Some((c.name(), c.slack_ms(&result.history, &ctx)?)))
        .collect()
}

/// Check `history` against the built-in invariants `names` (a scenario's, or the
/// ones a [`Work`] chose); an unknown name is an error naming `scenario`.
fn check_named(
    scenario: &Scenario,
    names: &[String],
    history: &[Record],
    ctx: &CheckCtx,
) -> Result<Vec<Violation>, SimError> {
    let mut out = Vec::new();
    for name in names {
        let checker = checkers::by_name(name).ok_or_else(|| SimError::UnknownInvariant {
            scenario: scenario.name.clone(),
            name: name.clone(),
            valid: checkers::names().join(", "),
        })?;
        out.extend(checker.check(history, ctx));
    }
    out.sort_by_key(|v| v.at_ms);
    Ok(out)
}

/// The jobs side of a run: what every node's runtime works on, what the client
/// host enqueues, and which invariants judge the history. The scenario's own
/// workload is one ([`Work::builtin`]); a [`Simulation`](crate::user::Simulation)
/// builds another from the user's handlers, jobs and invariants.
pub(crate) struct Work {
    /// Queues, handlers and periodic jobs of every node.
    pub(crate) nodes: NodeJobs,
    /// What the client host enqueues and cancels, if anything.
    pub(crate) client: Option<WorkloadPlan>,
    /// Built-in invariants to check, by name.
    pub(crate) invariants: Vec<String>,
    /// Further invariants, checked after those.
    pub(crate) extra: Vec<Box<dyn Checker>>,
}

impl Work {
    /// The scenario's own workload (if it has one) and invariants, under `seed`.
    pub(crate) fn builtin(scenario: &Scenario, seed: u64) -> Work {
        let scenario = crate::plan::shape::concrete(scenario, seed);
        let w = scenario.workload.as_ref();
        Work {
            nodes: w.map(workload::node_jobs).unwrap_or_default(),
            client: w.map(|w| WorkloadPlan::generate(w, seed)),
            invariants: scenario.invariants.clone(),
            extra: Vec::new(),
        }
    }
}

/// Run `spec` once.
pub fn run_once(spec: &RunSpec) -> Result<RunResult, SimError> {
    run_once_with(spec, || Ok(Work::builtin(&spec.scenario, spec.seed)))
}

/// Run `spec` once on the work `work` builds (called inside the run, so a panic
/// while building is the run's panic).
pub(crate) fn run_once_with<E: From<SimError>>(
    spec: &RunSpec,
    work: impl Fn() -> Result<Work, E>,
) -> Result<RunResult, E> {
    let run = || -> Result<RunResult, E> { Ok(simulate(spec, &work()?)?) };
    match std::panic::catch_unwind(AssertUnwindSafe(run)) {
        Ok(result) => result,
        Err(payload) => Err(SimError::Panic(panic_message(payload)).into()),
    }
}

/// Run `spec` twice and insist both runs recorded the same history.
pub fn run_checked(spec: &RunSpec) -> Result<RunResult, SimError> {
    run_checked_with(spec, || Ok(Work::builtin(&spec.scenario, spec.seed)))
}

/// [`run_checked`] on the work `work` builds, fresh for each of the two runs.
pub(crate) fn run_checked_with<E: From<SimError>>(
    spec: &RunSpec,
    work: impl Fn() -> Result<Work, E>,
) -> Result<RunResult, E> {
    let first = run_once_with(spec, &work)?;
    let second = run_once_with(spec, &work)?;
    if first.trace_hash == second.trace_hash {
        return Ok(first);
    }
    Err(divergence(&first.history, &second.history).into())
}

/// The first event at which two histories of one seed differ, with both versions.
pub fn divergence(first: &[Record], second: &[Record]) -> SimError {
    let index = first.iter().zip(second).take_while(|(a, b)| a == b).count();
    let show = |h: &[Record]| h.get(index).map_or("<end>".to_owned(), Record::to_json);
    SimError::NonDeterministic {
        index,
        first: show(first),
        second: show(second),
    }
}

fn node_name(index: usize) -> String {
    format!("n{}", index + 1)
}

fn simulate(spec: &RunSpec, work: &Work) -> Result<RunResult, SimError> {
    keel::coverage::reset();
    crate::run::coverage::start_marks();
    let scenario = &*crate::plan::shape::concrete(&spec.scenario, spec.seed);
    let plan = match &spec.script {
        Some(script) if script.skews_ms.len() != scenario.nodes as usize => {
            return Err(SimError::Sim(format!(
                "the fault script has skews for {} nodes, the scenario runs {}",
                script.skews_ms.len(),
                scenario.nodes
            )))
        }
        Some(script) => FaultPlan::clone(script),
        None => FaultPlan::generate(scenario, spec.seed),
    };
    let fault_ms = scenario.duration_s * 1000;
    let end_ms = fault_ms + scenario.heal_s * 1000;
    let timing = Timing::for_scenario(scenario)
        .map_err(SimError::Sim)?
        .with_plan(&plan);
    let mut sim = turmoil::Builder::new()
        .rng_seed(spec.seed)
        .epoch(SimClock::epoch())
        .tick_duration(TICK)
        .simulation_duration(Duration::from_millis(end_ms) + Duration::from_secs(5))
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(Duration::from_millis(30))
        .enable_random_order()
        .build();
    let history = History::new();
    // The database host's wall clock: storage judges every stored time on it.
    let db_skew = Arc::new(AtomicI64::new(plan.db_skew_ms));
    if plan.db_skew_ms != 0 {
        // Storage's clock runs off from the start: a jump at 0 to the checkers.
        let jump_ms = plan.db_skew_ms;
        history.push_at(0, DB_HOST, Ev::Harness(HarnessEvent::ClockJump { jump_ms }));
    }
    let db_drift = Drift::new(plan.db_drift_ppm);
    let drifts: Vec<Drift> = plan.drifts_ppm.iter().map(|p| Drift::new(*p)).collect();
    let rates = drifts.iter().enumerate().map(|(i, d)| (node_name(i), d));
    for (host, drift) in std::iter::once((DB_HOST.to_owned(), &db_drift)).chain(rates) {
        if drift.ppm() != 0 {
            let ppm = drift.ppm();
            history.push_at(0, &host, Ev::Harness(HarnessEvent::ClockRate { ppm }));
        }
    }
    let store = spec.storage.open(Arc::new(
        SimClock::shared(db_skew.clone()).drifting(db_drift.clone()),
    ))?;
    let store_for_harness = store.clone();
    let db_history = history.clone();
    let db_faults = DbFaults::new(spec.seed ^ 0x6462_6661_756c_7473);
    let faults_for_db = db_faults.clone();
    sim.host(DB_HOST, move || {
        let (store, history, faults) = (store.clone(), db_history.clone(), faults_for_db.clone());
        async move {
            db::serve(Arc::new(TurmoilNetwork), store, history, faults).await?;
            Ok(())
        }
    });
    let hooks = HookFaults::default();
    let shutdowns = ShutdownRequests::default();
    let loop_faults = LoopFaults::default();
    let plants = spec.plant.map_or_else(PlantedBugs::none, PlantedBugs::only);
    let skews: Vec<Arc<AtomicI64>> = plan
        .skews_ms
        .iter()
        .map(|s| Arc::new(AtomicI64::new(*s)))
        .collect();
    let pauses: Vec<PauseGate> = skews.iter().map(|_| PauseGate::default()).collect();
    let restarts = RestartRequests::default();
    let mut setups = Vec::new();
    for (i, skew) in skews.iter().enumerate() {
        let setup = NodeSetup {
            name: node_name(i),
            seed: spec.seed,
            skew_ms: skew.clone(),
            drift: drifts[i].clone(),
            plants: plants.clone(),
            timing: timing.clone(),
            history: history.clone(),
            hooks: hooks.clone(),
            boots: Arc::new(AtomicU32::new(0)),
            jobs: work.nodes.clone(),
            shutdowns: shutdowns.clone(),
            loops: scenario.loops.clone(),
            loop_faults: loop_faults.clone(),
            pause: pauses[i].clone(),
            restarts: restarts.clone(),
            node: None,
        };
        setups.push(setup.clone());
        sim.host(node_name(i), move || node_main(setup.clone()));
    }
    if let Some(plan) = &work.client {
        sim.client(CLIENT_HOST, client_main(plan.clone(), history.clone()));
    }
    let mut driver = Driver {
        pending: plan.faults.iter().cloned().collect(),
        active: Vec::new(),
        hooks,
        history: history.clone(),
        store: store_for_harness,
        db_skew,
        db_drift,
        drifts,
        drift_base: plan.drifts_ppm.clone(),
        db_drift_base: plan.db_drift_ppm,
        nodes: plan.skews_ms.len(),
        skews: skews.clone(),
        db_faults,
        shutdowns,
        loop_faults,
        pauses,
        restarts,
        setups,
        replacements: BTreeSet::new(),
        away: Vec::new(),
    };
    let mut healed = false;
    loop {
        let now_ms = u64::try_from(sim.elapsed().as_millis()).unwrap_or(u64::MAX);
        if now_ms >= fault_ms && !healed {
            driver.heal(&mut sim, now_ms);
            healed = true;
        }
        if now_ms >= end_ms {
            break;
        }
        if !healed {
            driver.advance(&mut sim, now_ms);
        }
        sim.step().map_err(|e| SimError::Sim(e.to_string()))?;
    }
    let end_at = u64::try_from(sim.elapsed().as_millis()).unwrap_or(u64::MAX);
    let jobs = poll_ready(driver.store.list_unfinished(u32::MAX))
        .ok_or_else(|| SimError::Sim("the database engine waited".into()))?
        .map_err(|e| SimError::Sim(format!("listing unfinished jobs: {e}")))?;
    history.push_at(
        end_at,
        HARNESS_HOST,
        Ev::Harness(HarnessEvent::JobsUnfinished { jobs }),
    );
    history.push_at(end_at, HARNESS_HOST, Ev::Harness(HarnessEvent::End));
    let records = history.take();
    let ctx = checkers::after_storage_steps(check_ctx(&timing, scenario, end_at), &records);
    let mut violations = check_named(scenario, &work.invariants, &records, &ctx)?;
    for checker in &work.extra {
        violations.extend(checker.check(&records, &ctx));
    }
    violations.sort_by_key(|v| v.at_ms);
    let mut coverage = coverage_taken();
    coverage.extend(crate::run::coverage::harness_states(&records));
    Ok(RunResult {
        spec: spec.clone(),
        plan,
        trace_hash: trace_hash(&records),
        history: records,
        violations,
        coverage,
        marks: crate::run::coverage::take_marks(),
    })
}

/// The coverage this thread counted since the run's reset.
fn coverage_taken() -> BTreeMap<String, u64> {
    let taken = keel::coverage::take().into_iter();
    taken.map(|(state, n)| (state.to_owned(), n)).collect()
}

/// A pause holds the node's link to the database and freezes its clocks, so it
/// never overlaps a partition (turmoil's hold and partition of one link do not
/// compose), a crash, or a shutdown or restart (a frozen process does neither).
fn process_conflict(a: &FaultKind, b: &FaultKind) -> bool {
    let pause = |k: &FaultKind| matches!(k, FaultKind::Pause { .. } | FaultKind::Replace { .. });
    let excluded = |k: &FaultKind| {
        matches!(
            k,
            FaultKind::Partition { .. }
                | FaultKind::Bounce { .. }
                | FaultKind::Shutdown { .. }
                | FaultKind::RestartMaintainer
                | FaultKind::RestartRuntime { .. }
        )
    };
    (pause(a) && excluded(b)) || (pause(b) && excluded(a))
}

/// Applies the fault plan to the simulation between steps.
struct Driver {
    pending: VecDeque<Fault>,
    /// Faults in effect, with the node each one resolved to.
    active: Vec<(Fault, usize)>,
    hooks: HookFaults,
    history: History,
    store: Arc<dyn Storage>,
    /// The database host's clock skew: its clock judges the lease.
    db_skew: Arc<AtomicI64>,
    nodes: usize,
    /// Each node's clock skew, which clock jumps change.
    skews: Vec<Arc<AtomicI64>>,
    /// The database host's clock rate.
    db_drift: Drift,
    /// Each node's clock rate, which drift faults change.
    drifts: Vec<Drift>,
    /// The rates the run drew, which a drift fault's end goes back to.
    drift_base: Vec<i64>,
    db_drift_base: i64,
    /// The database host's fault switch.
    db_faults: DbFaults,
    /// Graceful shutdowns asked of nodes.
    shutdowns: ShutdownRequests,
    /// One-shot faults armed for watcher loops.
    loop_faults: LoopFaults,
    /// Each node's freeze switch.
    pauses: Vec<PauseGate>,
    /// In-place restarts asked of nodes.
    restarts: RestartRequests,
    /// Each node's software, to start a replacement process from.
    setups: Vec<NodeSetup>,
    /// Nodes whose replacement host was registered already.
    replacements: BTreeSet<usize>,
    /// Old processes away while their replacement runs: node, when it comes
    /// back, whether it was partitioned (else paused).
    away: Vec<(usize, u64, bool)>,
}

/// What [`Driver::resolve`] answers for a fault on the database host.
const DB_SLOT: usize = usize::MAX;

/// The host a replacement process for node `index` runs on.
fn replacement_name(index: usize) -> String {
    format!("{}r", node_name(index))
}

impl Driver {
    fn record(&self, at_ms: u64, host: &str, ev: HarnessEvent) {
        self.history.push_at(at_ms, host, Ev::Harness(ev));
    }

    fn advance(&mut self, sim: &mut turmoil::Sim<'_>, now_ms: u64) {
        let (back, gone): (Vec<_>, Vec<_>) = std::mem::take(&mut self.away)
            .into_iter()
            .partition(|(_, at, _)| *at <= now_ms);
        self.away = gone;
        for (node, _, partitioned) in back {
            self.come_back(sim, node, partitioned, now_ms);
        }
        let (ended, still): (Vec<_>, Vec<_>) = std::mem::take(&mut self.active)
            .into_iter()
            .partition(|(f, _)| f.end_ms() <= now_ms);
        self.active = still;
        for (fault, node) in &ended {
            self.end(sim, fault, *node, now_ms);
        }
        while self.pending.front().is_some_and(|f| f.at_ms <= now_ms) {
            let Some(fault) = self.pending.pop_front() else {
                break;
            };
            let Some(node) = self.resolve(&fault, now_ms) else {
                continue;
            };
            self.start(sim, &fault, node, now_ms);
            self.active.push((fault, node));
        }
    }

    /// Step storage's clock (the database host's) by `fault`'s jump, times
    /// `sign` (1 as the jump starts, -1 as it ends).
    fn jump_db_clock(&self, fault: &Fault, now_ms: u64, sign: i64) {
        let FaultKind::ClockJump { jump_ms, .. } = fault.kind else {
            return;
        };
        let jump_ms = jump_ms * sign;
        self.db_skew.fetch_add(jump_ms, Ordering::SeqCst);
        self.record(now_ms, DB_HOST, HarnessEvent::ClockJump { jump_ms });
    }

    /// The node `fault` hits now, or `None` when it cannot apply: nobody leads, or
    /// a fault of the same kind already holds that node.
    fn resolve(&self, fault: &Fault, now_ms: u64) -> Option<usize> {
        let node = match fault.target {
            Target::Node(i) => i,
            Target::Leader => self.leader(now_ms)?,
            Target::Starting => self.starting().or_else(|| self.leader(now_ms))?,
            // Only a clock jump can hit the database host.
            Target::Db
                if matches!(
                    fault.kind,
                    FaultKind::ClockJump { .. } | FaultKind::Drift { .. }
                ) =>
            {
                DB_SLOT
            }
            Target::Db => return None,
        };
        let busy = self.active.iter().any(|(f, n)| {
            *n == node
                && (std::mem::discriminant(&f.kind) == std::mem::discriminant(&fault.kind)
                    || process_conflict(&f.kind, &fault.kind))
        });
        (!busy).then_some(node)
    }

    /// The node holding a live lease, by the database's state and clock.
    fn leader(&self, now_ms: u64) -> Option<usize> {
        let db_ms = i64::try_from(now_ms).ok()? + self.db_skew.load(Ordering::SeqCst);
        let now = keel::clock::Timestamp(crate::world::clock::EPOCH_UNIX_MS + db_ms);
        // Both engines answer at once; `None` here would only skip aiming a fault.
        let lease = poll_ready(self.store.get_lease(LEASE_NAME))?.ok()??;
        if !lease.is_live(now) {
            return None;
        }
        let holder = lease.holder?;
        let node = keel::identity::node_of(&holder);
        (0..self.nodes).find(|i| node_name(*i) == node)
    }

    /// The first node whose latest start-related event is a start attempt (a
    /// crash or a boot ends any attempt).
    fn starting(&self) -> Option<usize> {
        self.history.read(|history| {
            (0..self.nodes).find(|i| {
                let host = node_name(*i);
                let attempting = history
                    .iter()
                    .rev()
                    .filter(|r| r.host == host)
                    .find_map(|r| match &r.ev {
                        Ev::Node(Event::MaintainerStartAttempt { .. }) => Some(true),
                        Ev::Node(
                            Event::MaintainerStartFailed { .. } | Event::MaintainerStarted { .. },
                        )
                        | Ev::Harness(HarnessEvent::Crash | HarnessEvent::NodeBoot { .. }) => {
                            Some(false)
                        }
                        _ => None,
                    });
                attempting == Some(true)
            })
        })
    }

    /// Freeze node `node` (pause) or cut it off (partition).
    fn send_away(&self, sim: &mut turmoil::Sim<'_>, node: usize, partitioned: bool, now_ms: u64) {
        let host = node_name(node);
        if partitioned {
            sim.partition(host.as_str(), DB_HOST);
            let peer = DB_HOST.into();
            self.record(now_ms, &host, HarnessEvent::Partition { peer });
        } else {
            self.pauses[node].pause();
            sim.hold(host.as_str(), DB_HOST);
            self.record(now_ms, &host, HarnessEvent::Paused);
        }
    }

    /// Undo [`send_away`](Self::send_away).
    fn come_back(&self, sim: &mut turmoil::Sim<'_>, node: usize, partitioned: bool, now_ms: u64) {
        let host = node_name(node);
        if partitioned {
            sim.repair(host.as_str(), DB_HOST);
            let peer = DB_HOST.into();
            self.record(now_ms, &host, HarnessEvent::Repair { peer });
        } else {
            sim.release(host.as_str(), DB_HOST);
            self.pauses[node].resume();
            self.record(now_ms, &host, HarnessEvent::Resumed);
        }
    }

    /// Start a replacement process for `node` on its own host, under the
    /// node's name. A host is registered once and bounced for later uses.
    fn start_replacement(&mut self, sim: &mut turmoil::Sim<'_>, node: usize, now_ms: u64) {
        let host = replacement_name(node);
        self.record(
            now_ms,
            &host,
            HarnessEvent::ReplacementStarted {
                node: node_name(node),
            },
        );
        if self.replacements.insert(node) {
            let mut setup = self.setups[node].clone();
            setup.node = Some(node_name(node));
            setup.name = host.clone();
            setup.boots = Arc::new(AtomicU32::new(0));
            setup.pause = PauseGate::default();
            sim.host(host, move || node_main(setup.clone()));
        } else {
            sim.bounce(host.as_str());
        }
    }

    fn heal(&mut self, sim: &mut turmoil::Sim<'_>, now_ms: u64) {
        self.pending.clear();
        for (fault, node) in std::mem::take(&mut self.active) {
            self.end(sim, &fault, node, now_ms);
        }
        self.loop_faults.clear();
        self.record(now_ms, HARNESS_HOST, HarnessEvent::HealPhase);
    }

    /// Set the rate of `node`'s clocks (the database host's for [`DB_SLOT`])
    /// to `ppm`, from now on, or back to the run's drawn rate for `None`.
    fn set_rate(&self, node: usize, ppm: Option<i64>, now_ms: u64) {
        let (drift, host) = match self.drifts.get(node) {
            Some(drift) => (drift, node_name(node)),
            None => (&self.db_drift, DB_HOST.to_owned()),
        };
        let base = self
            .drift_base
            .get(node)
            .copied()
            .unwrap_or(self.db_drift_base);
        let ppm = ppm.unwrap_or(base);
        drift.set_ppm(ppm, Duration::from_millis(now_ms));
        self.record(now_ms, &host, HarnessEvent::ClockRate { ppm });
    }

    fn start(&mut self, sim: &mut turmoil::Sim<'_>, fault: &Fault, node: usize, now_ms: u64) {
        if let FaultKind::Drift { ppm, .. } = fault.kind {
            return self.set_rate(node, Some(ppm), now_ms);
        }
        if node == DB_SLOT {
            return self.jump_db_clock(fault, now_ms, 1);
        }
        let host = node_name(node);
        match fault.kind {
            FaultKind::Drift { .. } => {}
            FaultKind::Replace {
                dur_ms,
                partitioned,
                ..
            } => {
                self.send_away(sim, node, partitioned, now_ms);
                self.away.push((node, now_ms + dur_ms, partitioned));
                self.start_replacement(sim, node, now_ms);
            }
            FaultKind::Partition { .. } => {
                sim.partition(host.as_str(), DB_HOST);
                self.record(
                    now_ms,
                    &host,
                    HarnessEvent::Partition {
                        peer: DB_HOST.into(),
                    },
                );
            }
            FaultKind::Bounce { .. } => {
                sim.crash(host.as_str());
                self.record(now_ms, &host, HarnessEvent::Crash);
            }
            FaultKind::Storage { fault: f, pct, .. } => {
                self.db_faults.set(f, pct);
                let fault = match f {
                    StorageFault::Error => "error".to_owned(),
                    StorageFault::LostReply => "lost_reply".to_owned(),
                    StorageFault::Slow { ms } => format!("slow:{ms}"),
                    StorageFault::SlowReply { ms } => format!("slow_reply:{ms}"),
                };
                self.record(now_ms, DB_HOST, HarnessEvent::StorageFault { fault, pct });
            }
            FaultKind::Shutdown {
                deadline_ms,
                down_ms,
            } => {
                // The node records its own ShutdownBegan/Ended and restart.
                let (deadline, down) = (
                    Duration::from_millis(deadline_ms),
                    Duration::from_millis(down_ms),
                );
                self.shutdowns.request(&host, deadline, down);
            }
            FaultKind::LoopPanic { index } => self.loop_faults.arm(&host, index, LoopFault::Panic),
            FaultKind::SlowTick { index, ms } => {
                self.loop_faults.arm(&host, index, LoopFault::Slow { ms })
            }
            FaultKind::ClockJump { jump_ms, .. } => {
                self.skews[node].fetch_add(jump_ms, Ordering::SeqCst);
                self.record(now_ms, &host, HarnessEvent::ClockJump { jump_ms });
            }
            FaultKind::Pause { .. } => {
                self.pauses[node].pause();
                sim.hold(host.as_str(), DB_HOST);
                self.record(now_ms, &host, HarnessEvent::Paused);
            }
            FaultKind::RestartMaintainer => {
                self.restarts.request(&host, Restart::Maintainer);
                let what = "maintainer".to_owned();
                let ev = HarnessEvent::RestartAsked {
                    what,
                    deadline_ms: 0,
                };
                self.record(now_ms, &host, ev);
            }
            FaultKind::RestartRuntime { deadline_ms } => {
                let deadline = Duration::from_millis(deadline_ms);
                self.restarts.request(&host, Restart::Runtime { deadline });
                let what = "runtime".to_owned();
                let ev = HarnessEvent::RestartAsked { what, deadline_ms };
                self.record(now_ms, &host, ev);
            }
            FaultKind::HookFault {
                delay_ms, fail_pct, ..
            } => {
                self.hooks.set(&host, delay_ms, fail_pct);
                self.record(
                    now_ms,
                    &host,
                    HarnessEvent::HookFault { delay_ms, fail_pct },
                );
            }
        }
    }

    fn end(&mut self, sim: &mut turmoil::Sim<'_>, fault: &Fault, node: usize, now_ms: u64) {
        if let FaultKind::Drift { .. } = fault.kind {
            return self.set_rate(node, None, now_ms);
        }
        if node == DB_SLOT {
            return self.jump_db_clock(fault, now_ms, -1);
        }
        let host = node_name(node);
        match fault.kind {
            FaultKind::Drift { .. } => {}
            FaultKind::Replace { partitioned, .. } => {
                if let Some(i) = self.away.iter().position(|(n, _, _)| *n == node) {
                    self.away.remove(i);
                    self.come_back(sim, node, partitioned, now_ms);
                }
                let replacement = replacement_name(node);
                sim.crash(replacement.as_str());
                self.record(now_ms, &replacement, HarnessEvent::Crash);
            }
            FaultKind::Partition { .. } => {
                sim.repair(host.as_str(), DB_HOST);
                self.record(
                    now_ms,
                    &host,
                    HarnessEvent::Repair {
                        peer: DB_HOST.into(),
                    },
                );
            }
            // The restarted node records its own boot.
            FaultKind::Bounce { .. } => sim.bounce(host.as_str()),
            FaultKind::Storage { .. } => {
                self.db_faults.clear();
                self.record(now_ms, DB_HOST, HarnessEvent::StorageHealed);
            }
            // The node restarted itself after its downtime.
            FaultKind::Shutdown { .. } => {}
            FaultKind::LoopPanic { .. } | FaultKind::SlowTick { .. } => {}
            FaultKind::ClockJump { jump_ms, .. } => {
                self.skews[node].fetch_sub(jump_ms, Ordering::SeqCst);
                self.record(now_ms, &host, HarnessEvent::ClockJump { jump_ms: -jump_ms });
            }
            FaultKind::Pause { .. } => {
                sim.release(host.as_str(), DB_HOST);
                self.pauses[node].resume();
                self.record(now_ms, &host, HarnessEvent::Resumed);
            }
            FaultKind::RestartMaintainer | FaultKind::RestartRuntime { .. } => {}
            FaultKind::HookFault { .. } => {
                self.hooks.clear(&host);
                self.record(now_ms, &host, HarnessEvent::HookHealed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel::storage::Term;

    fn history(events: &[(u64, &str, u64)]) -> Vec<Record> {
        let h = History::new();
        for (at, host, term) in events {
            h.push_at(
                *at,
                host,
                Ev::Node(Event::TermWon {
                    term: Term(*term),
                    trusted_for_ms: 4_000,
                }),
            );
        }
        h.snapshot()
    }

    #[test]
    fn job_bounds_give_one_loop_tick_of_grace_and_fit_the_catalog_heal_phase() {
        let scenario = scenarios::by_name("leadership_flap").expect("scenario");
        let heal_ms = scenario.heal_s * 1000;
        let ctx = check_ctx(&Timing::standard(), &scenario, 0);
        assert_eq!(ctx.tick_grace_ms, 1_020, "1 s loops plus one 20 ms step");
        assert!(ctx.heal_converge_ms > ctx.converge_bound_ms);
        assert!(
            ctx.heal_converge_ms <= heal_ms,
            "no_lost_jobs must be able to fire in a {heal_ms}ms heal: {ctx:?}"
        );
        // Every scenario that claims no_lost_jobs heals long enough for it to
        // fire, with its own claim_ahead and handlers counted.
        for scenario in scenarios::all() {
            if !scenario.invariants.iter().any(|i| i == "no_lost_jobs") {
                continue;
            }
            // At the longest request timeout the scenario may draw.
            let mut timing = Timing::for_scenario(&scenario).expect("valid");
            let longest = scenario.faults.storage_timeout_ms[1];
            timing.request_timeout = timing.request_timeout.max(Duration::from_millis(longest));
            let ctx = check_ctx(&timing, &scenario, 0);
            let heal_ms = scenario.heal_s * 1000;
            assert!(
                ctx.heal_converge_ms <= heal_ms,
                "{}: no_lost_jobs needs {}ms of heal, has {heal_ms}",
                scenario.name,
                ctx.heal_converge_ms
            );
        }
    }

    /// The runtime is told the scenario's drift bound, and a scenario drifting
    /// past what its margins cover is refused, naming the scenario's field.
    #[test]
    fn a_scenario_drifting_past_the_runtimes_margins_is_refused_by_name() {
        let mut s = scenarios::by_name("clock_drift").expect("scenario");
        let timing = Timing::for_scenario(&s).expect("10% fits a 1 s margin on 5 s");
        assert_eq!(timing.elector.clock_drift_max_ppm, 100_000);
        assert_eq!(timing.jobs.clock_drift_max_ppm, 100_000);
        s.faults.drift_rare_ppm_max = 150_000;
        let err = Timing::for_scenario(&s).expect_err("15% does not");
        assert!(err.contains("faults.drift_ppm_max"), "{err}");
        assert!(err.contains("safety_margin") || err.contains("2d"), "{err}");
        let spec = RunSpec {
            scenario: s,
            seed: 0,
            plant: None,
            storage: Default::default(),
            script: None,
        };
        let run = run_once(&spec).expect_err("refused before it runs");
        assert!(run.to_string().contains("faults.drift_ppm_max"), "{run}");
    }

    #[test]
    fn divergence_names_the_first_differing_event_with_both_versions() {
        let a = history(&[(1, "n1", 1), (2, "n2", 2), (3, "n1", 3)]);
        let b = history(&[(1, "n1", 1), (2, "n3", 2)]);
        let SimError::NonDeterministic {
            index,
            first,
            second,
        } = divergence(&a, &b)
        else {
            panic!("kind")
        };
        assert_eq!(index, 1);
        assert!(
            first.contains("\"n2\"") && second.contains("\"n3\""),
            "{first} / {second}"
        );
        let SimError::NonDeterministic { index, second, .. } = divergence(&a, &a[..2]) else {
            panic!("kind")
        };
        assert_eq!((index, second.as_str()), (2, "<end>"));
    }

    #[test]
    fn a_seed_replays_to_the_same_trace_hash() {
        let spec = RunSpec {
            scenario: scenarios::by_name("leadership_flap").expect("scenario"),
            seed: 5,
            plant: None,
            storage: StorageKind::Mem,
            script: None,
        };
        let a = run_once(&spec).expect("run");
        let b = run_once(&spec).expect("run");
        assert_eq!(a.trace_hash, b.trace_hash);
        let other = run_once(&RunSpec { seed: 6, ..spec }).expect("run");
        assert_ne!(a.trace_hash, other.trace_hash, "the seed matters");
    }
}
