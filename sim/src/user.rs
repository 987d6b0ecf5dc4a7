//! Simulating your own handlers: your [`Handler`]s run inside keel's real
//! runtime on every simulated node, under a catalog scenario's faults, and your
//! invariants judge the recorded history next to the built-in ones.
//!
//! A [`Simulation`] is a scenario (nodes, fault rates, phase lengths) plus a
//! function that builds a [`Setup`] for one run: the handlers, the jobs the
//! simulator's client host enqueues over the fault phase, and the invariants.
//! The function runs afresh for every run, so state your handlers keep (a
//! ledger standing in for a payment provider) starts empty each time and a seed
//! run twice records the same history, which [`Simulation::run`] checks.
//!
//! What differs from a catalog run: the scenario's own workload (its seeded
//! jobs, the workload handler, its periodic jobs) is replaced by yours; its
//! built-in invariants still run unless [`Simulation::builtin_invariants`]
//! picks others.
//!
//! ```
//! use std::sync::{Arc, Mutex};
//! use keel::jobs::{JobCtx, Outcome};
//! use keel::storage::EnqueueRequest;
//! use serde_json::{json, Value};
//! use sim::{Setup, Simulation};
//!
//! let scenario = sim::scenarios::by_name("crash_restart")?;
//! let sim = Simulation::new(scenario, || {
//!     let seen = Arc::new(Mutex::new(Vec::new())); // fresh for every run
//!     let log = seen.clone();
//!     Setup::new()
//!         .handler("greet", move |_ctx: JobCtx, payload: Value| {
//!             let log = log.clone();
//!             async move {
//!                 log.lock().unwrap().push(payload["n"].as_u64());
//!                 Outcome::Completed
//!             }
//!         })
//!         .enqueue(5, |i| EnqueueRequest::new("greet", json!({ "n": i })))
//!         .invariant("every_greeting_ran", move |_history| {
//!             let seen = seen.lock().unwrap();
//!             match (0..5).find(|n| !seen.contains(&Some(*n))) {
//!                 Some(n) => Err(format!("greeting {n} never ran")),
//!                 None => Ok(()),
//!             }
//!         })
//! });
//! let result = sim.run(1)?;
//! assert!(result.passed(), "{}", sim.report(&result));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;

use keel::jobs::Handler;
use keel::storage::EnqueueRequest;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use scenarios::Scenario;

use crate::run::checkers::{self, CheckCtx, Checker, Violation};
use crate::run::history::Record;
use crate::run::runner::{self, RunResult, RunSpec, SimError, StorageKind, Work};
use crate::world::node::{HandlerFactory, NodeJobs};
use crate::world::workload::{PlannedJob, WorkloadPlan};

/// Workers per node on a queue that jobs name but [`Setup::queue`] did not set.
pub const WORKERS_DEFAULT: u32 = 2;
/// Salt that separates the enqueue times of a user's jobs from the other streams
/// drawn from the seed.
const ENQUEUE_SALT: u64 = 0x7573_6572_6a6f_6273;

/// A user's invariant, as the harness calls it: the whole history in, a verdict
/// out.
type InvariantFn = dyn Fn(&[Record]) -> Result<(), String> + Send + Sync;

/// What one run of a [`Simulation`] works with: your handlers, the jobs to
/// enqueue, and your invariants. Built by the function given to
/// [`Simulation::new`], once per run.
///
/// ```
/// use keel::jobs::{JobCtx, Outcome};
/// use keel::storage::EnqueueRequest;
/// use serde_json::json;
///
/// let setup = sim::Setup::new()
///     .handler("noop", |_ctx: JobCtx, _payload: serde_json::Value| async { Outcome::Completed })
///     .queue("default", 4)
///     .enqueue(10, |i| EnqueueRequest::new("noop", json!({ "i": i })))
///     .invariant("nothing_to_check", |_history| Ok(()));
/// # let _ = setup;
/// ```
#[derive(Default)]
pub struct Setup {
    handlers: BTreeMap<String, Arc<dyn Handler>>,
    queues: BTreeMap<String, u32>,
    jobs: Vec<EnqueueRequest>,
    invariants: Vec<Box<dyn Checker>>,
}

impl std::fmt::Debug for Setup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Setup")
            .field("handlers", &self.handlers.keys().collect::<Vec<_>>())
            .field("queues", &self.queues)
            .field("jobs", &self.jobs.len())
            .field(
                "invariants",
                &self.invariants.iter().map(|c| c.name()).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Setup {
    /// An empty setup: no handlers, no jobs, no invariants of your own.
    pub fn new() -> Self {
        Self::default()
    }

    /// Run jobs of `kind` with `handler` on every node. One instance serves every
    /// node and every boot of a run, so state it keeps stands for the world
    /// outside keel (it survives the crashes of simulated nodes). A later call
    /// for the same kind replaces the handler.
    ///
    /// Handlers run on the simulation's one thread in simulated time: take time
    /// from `ctx.clock`, randomness from the payload, and spawn no threads.
    pub fn handler(mut self, kind: impl Into<String>, handler: impl Handler) -> Self {
        self.handlers.insert(kind.into(), Arc::new(handler));
        self
    }

    /// Work `queue` with `workers` workers on each node. Queues your jobs name
    /// without a call here get [`WORKERS_DEFAULT`].
    pub fn queue(mut self, queue: impl Into<String>, workers: u32) -> Self {
        self.queues.insert(queue.into(), workers);
        self
    }

    /// Enqueue `count` jobs, `job(i)` for `i` in `0..count`, from the simulator's
    /// client host through the faulty network, at times the seed spreads over the
    /// scenario's enqueue window (its workload's `enqueue_window_s`, else the
    /// first three quarters of the fault phase). An enqueue whose reply is lost is
    /// retried, so a job may be inserted twice unless its request has a unique
    /// key. Calls add up.
    pub fn enqueue(mut self, count: u32, mut job: impl FnMut(u32) -> EnqueueRequest) -> Self {
        self.jobs.extend((0..count).map(&mut job));
        self
    }

    /// Check `check` over the history of every run: `Err(message)` is a
    /// violation of the invariant `name`, reported at the end of the run like a
    /// built-in one (as safety). Its closure may also read state your handlers
    /// kept. For witnesses and a time of your own, use [`Setup::checker`].
    pub fn invariant(
        self,
        name: &'static str,
        check: impl Fn(&[Record]) -> Result<(), String> + Send + Sync + 'static,
    ) -> Self {
        self.checker(Invariant {
            name,
            check: Box::new(check),
        })
    }

    /// Check `checker` over the history of every run, as the built-in checkers
    /// are ([`checkers`]): it returns each [`Violation`] with its time and the
    /// records that show it.
    pub fn checker(mut self, checker: impl Checker + 'static) -> Self {
        self.invariants.push(Box::new(checker));
        self
    }

    /// The runner's work for this setup under `scenario` and `seed`, with the
    /// built-in invariants `builtin`; or why it cannot run.
    fn into_work(
        self,
        scenario: &Scenario,
        seed: u64,
        builtin: &[String],
    ) -> Result<Work, SimulationError> {
        let mut queues = self.queues;
        for (index, job) in self.jobs.iter().enumerate() {
            job.validate().map_err(|e| SimulationError::InvalidJob {
                index,
                reason: e.to_string(),
            })?;
            if !self.handlers.contains_key(&job.kind) {
                return Err(SimulationError::NoHandler {
                    index,
                    kind: job.kind.clone(),
                    registered: self.handlers.keys().cloned().collect::<Vec<_>>().join(", "),
                });
            }
            queues.entry(job.queue.clone()).or_insert(WORKERS_DEFAULT);
        }
        let mut names: Vec<&str> = Vec::new();
        for name in builtin {
            if checkers::by_name(name).is_none() {
                return Err(SimulationError::UnknownInvariant {
                    name: name.clone(),
                    valid: checkers::names().join(", "),
                });
            }
            names.push(name);
        }
        for checker in &self.invariants {
            if names.contains(&checker.name()) {
                return Err(SimulationError::DuplicateInvariant {
                    name: checker.name().to_owned(),
                });
            }
            names.push(checker.name());
        }
        let handlers = self
            .handlers
            .into_iter()
            .map(|(kind, handler)| {
                let factory: HandlerFactory = Arc::new(move |_host, _history| handler.clone());
                (kind, factory)
            })
            .collect();
        Ok(Work {
            nodes: NodeJobs {
                queues: queues.into_iter().collect(),
                handlers,
                periodic: Vec::new(),
                cron: Vec::new(),
            },
            client: (!self.jobs.is_empty()).then(|| enqueue_plan(self.jobs, scenario, seed)),
            invariants: builtin.to_vec(),
            extra: self.invariants,
        })
    }
}

/// `jobs` at times drawn from `seed` over the scenario's enqueue window.
fn enqueue_plan(jobs: Vec<EnqueueRequest>, scenario: &Scenario, seed: u64) -> WorkloadPlan {
    let window_s = scenario
        .workload
        .as_ref()
        .map_or(scenario.duration_s * 3 / 4, |w| w.enqueue_window_s);
    let window_ms = window_s * 1000;
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ ENQUEUE_SALT);
    let mut planned: Vec<PlannedJob> = jobs
        .into_iter()
        .enumerate()
        .map(|(key, req)| PlannedJob {
            key,
            at_ms: rng.random_range(0..=window_ms),
            req,
        })
        .collect();
    planned.sort_by_key(|j| (j.at_ms, j.key));
    WorkloadPlan {
        jobs: planned,
        cancels: Vec::new(),
    }
}

/// A closure as a [`Checker`] (see [`Setup::invariant`]).
struct Invariant {
    name: &'static str,
    check: Box<InvariantFn>,
}

impl Checker for Invariant {
    fn name(&self) -> &'static str {
        self.name
    }

    fn check(&self, history: &[Record], ctx: &CheckCtx) -> Vec<Violation> {
        match (self.check)(history) {
            Ok(()) => Vec::new(),
            Err(message) => vec![Violation {
                invariant: self.name,
                at_ms: ctx.end_at_ms,
                message,
                witnesses: Vec::new(),
            }],
        }
    }
}

/// Why a [`Simulation`] could not give a verdict.
#[derive(Debug, thiserror::Error)]
pub enum SimulationError {
    /// A job's request is malformed.
    #[error("job {index} is not a valid request: {reason}")]
    InvalidJob {
        /// Its place among the enqueued jobs, from 0.
        index: usize,
        /// What is wrong, naming the field.
        reason: String,
    },
    /// A job's kind has no handler.
    #[error("job {index} has kind {kind:?}, which no handler runs; registered: [{registered}]")]
    NoHandler {
        /// Its place among the enqueued jobs, from 0.
        index: usize,
        /// The kind.
        kind: String,
        /// The kinds that have handlers.
        registered: String,
    },
    /// [`Simulation::builtin_invariants`] named a built-in invariant that does not exist.
    #[error("unknown built-in invariant {name:?}; valid: {valid}")]
    UnknownInvariant {
        /// The name.
        name: String,
        /// Valid names.
        valid: String,
    },
    /// Two invariants share a name, so a report could not tell them apart.
    #[error("invariant {name:?} is checked twice; give each its own name")]
    DuplicateInvariant {
        /// The name.
        name: String,
    },
    /// The run itself failed: a panic outside the handlers, a host error, or two
    /// runs of one seed that diverged (your code is not deterministic).
    #[error(transparent)]
    Run(#[from] SimError),
}

/// Your handlers and invariants under one scenario's faults: build with
/// [`Simulation::new`], then [`run`](Simulation::run) one seed or
/// [`sweep`](Simulation::sweep) many. See the [module docs](self).
#[derive(Clone)]
pub struct Simulation {
    scenario: Scenario,
    storage: StorageKind,
    invariants: Option<Vec<String>>,
    setup: Arc<dyn Fn() -> Setup + Send + Sync>,
}

impl std::fmt::Debug for Simulation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Simulation")
            .field("scenario", &self.scenario.name)
            .field("storage", &self.storage)
            .field("invariants", &self.builtin())
            .finish_non_exhaustive()
    }
}

/// What [`Simulation::sweep`] found.
#[derive(Clone, Debug)]
pub struct Sweep {
    /// Seeds run (each twice), up to and including the first failing one.
    pub seeds_run: u64,
    /// The first run that broke an invariant, if any did.
    pub failure: Option<RunResult>,
}

impl Sweep {
    /// Whether every seed held every invariant.
    pub fn passed(&self) -> bool {
        self.failure.is_none()
    }
}

impl Simulation {
    /// Your code under `scenario` (its nodes, faults, phase lengths and built-in
    /// invariants). `setup` builds what one run works with; it is called afresh
    /// for every run, so build the state your handlers and invariants share
    /// inside it.
    pub fn new(scenario: Scenario, setup: impl Fn() -> Setup + Send + Sync + 'static) -> Self {
        Self {
            scenario,
            storage: StorageKind::default(),
            invariants: None,
            setup: Arc::new(setup),
        }
    }

    /// Serve the database host from `storage` (default: [`StorageKind::Mem`]).
    pub fn storage(mut self, storage: StorageKind) -> Self {
        self.storage = storage;
        self
    }

    /// Check these built-in invariants ([`checkers::names`]) instead of the
    /// scenario's list; none at all leaves only yours.
    pub fn builtin_invariants<S: Into<String>>(
        mut self,
        names: impl IntoIterator<Item = S>,
    ) -> Self {
        self.invariants = Some(names.into_iter().map(Into::into).collect());
        self
    }

    fn builtin(&self) -> &[String] {
        self.invariants
            .as_deref()
            .unwrap_or(&self.scenario.invariants)
    }

    /// Run `seed` twice, each time on a fresh [`Setup`], and insist both runs
    /// recorded the same history; the first run's result. A broken invariant is a
    /// result with violations ([`RunResult::passed`] is false), not an error.
    ///
    /// # Errors
    ///
    /// The setup is invalid ([`SimulationError`] names what), or the run could
    /// not give a verdict ([`SimulationError::Run`]).
    pub fn run(&self, seed: u64) -> Result<RunResult, SimulationError> {
        let spec = RunSpec {
            scenario: self.scenario.clone(),
            seed,
            plant: None,
            storage: self.storage,
            script: None,
        };
        runner::run_checked_with(&spec, || {
            (self.setup)().into_work(&self.scenario, seed, self.builtin())
        })
    }

    /// Run `seeds` in order until one breaks an invariant.
    ///
    /// # Errors
    ///
    /// As [`Simulation::run`], for the first seed that errs.
    pub fn sweep(&self, seeds: impl IntoIterator<Item = u64>) -> Result<Sweep, SimulationError> {
        let mut seeds_run = 0;
        for seed in seeds {
            let result = self.run(seed)?;
            seeds_run += 1;
            if !result.passed() {
                return Ok(Sweep {
                    seeds_run,
                    failure: Some(result),
                });
            }
        }
        Ok(Sweep {
            seeds_run,
            failure: None,
        })
    }

    /// A failure report in the runner's format: scenario, seed, each violation
    /// with its witnesses, the trace hash, and how to replay it.
    pub fn report(&self, result: &RunResult) -> String {
        let replay = format!(
            "Simulation::run({}) on this setup (scenario {}, storage {})",
            result.spec.seed, self.scenario.name, self.storage
        );
        runner::report_with(result, &replay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel::jobs::{JobCtx, Outcome};
    use serde_json::json;

    fn noop() -> impl Handler {
        |_ctx: JobCtx, _payload: serde_json::Value| async { Outcome::Completed }
    }

    fn scenario() -> Scenario {
        scenarios::by_name("crash_restart").expect("scenario")
    }

    #[test]
    fn a_setup_names_what_it_cannot_run() {
        let work = |setup: Setup, builtin: &[&str]| {
            let builtin: Vec<String> = builtin.iter().map(|s| s.to_string()).collect();
            setup.into_work(&scenario(), 1, &builtin).err()
        };
        let job = |kind: &str| EnqueueRequest::new(kind, json!({}));
        let err = work(
            Setup::new()
                .handler("a", noop())
                .enqueue(2, |i| job(if i == 0 { "a" } else { "b" })),
            &[],
        );
        assert!(
            matches!(&err, Some(SimulationError::NoHandler { index: 1, kind, registered }) if kind == "b" && registered == "a"),
            "{err:?}"
        );
        let err = work(
            Setup::new()
                .handler("a", noop())
                .enqueue(1, |_| job("a").max_attempts(0)),
            &[],
        );
        assert!(
            matches!(&err, Some(SimulationError::InvalidJob { index: 0, reason }) if reason.contains("max_attempts")),
            "{err:?}"
        );
        let err = work(Setup::new(), &["no_such_thing"]);
        assert!(
            matches!(&err, Some(SimulationError::UnknownInvariant { name, .. }) if name == "no_such_thing"),
            "{err:?}"
        );
        let err = work(
            Setup::new().invariant("no_lost_jobs", |_| Ok(())),
            &["no_lost_jobs"],
        );
        assert!(
            matches!(&err, Some(SimulationError::DuplicateInvariant { name }) if name == "no_lost_jobs"),
            "{err:?}"
        );
    }

    #[test]
    fn jobs_go_to_their_queues_at_seeded_times_within_the_window() {
        let setup = || {
            Setup::new()
                .handler("a", noop())
                .queue("slow", 1)
                .enqueue(20, |i| {
                    let req = EnqueueRequest::new("a", json!({ "i": i }));
                    if i % 2 == 0 {
                        req.queue("fast")
                    } else {
                        req
                    }
                })
        };
        let scenario = scenario();
        let work = setup().into_work(&scenario, 7, &[]).expect("work");
        assert_eq!(
            work.nodes.queues,
            vec![
                ("default".to_owned(), WORKERS_DEFAULT),
                ("fast".to_owned(), WORKERS_DEFAULT),
                ("slow".to_owned(), 1)
            ]
        );
        let plan = work.client.expect("jobs");
        assert_eq!(plan.jobs.len(), 20);
        let window_ms = scenario
            .workload
            .as_ref()
            .expect("workload")
            .enqueue_window_s
            * 1000;
        assert!(plan.jobs.iter().all(|j| j.at_ms <= window_ms));
        assert!(plan.jobs.windows(2).all(|p| p[0].at_ms <= p[1].at_ms));
        let again = setup().into_work(&scenario, 7, &[]).expect("work");
        assert_eq!(again.client, Some(plan.clone()), "the seed fixes the times");
        let other = setup().into_work(&scenario, 8, &[]).expect("work");
        assert_ne!(other.client, Some(plan), "and the seed matters");
    }

    #[test]
    fn a_failing_invariant_is_a_violation_under_its_name_and_the_report_says_how_to_replay() {
        let sim = Simulation::new(scenario(), || {
            Setup::new()
                .handler("a", noop())
                .enqueue(3, |i| EnqueueRequest::new("a", json!({ "i": i })))
                .invariant("always_fails", |history| {
                    Err(format!("{} records", history.len()))
                })
        })
        .builtin_invariants(["no_lost_jobs"]);
        let result = sim.run(3).expect("run");
        assert_eq!(
            result
                .violations
                .iter()
                .map(|v| v.invariant)
                .collect::<Vec<_>>(),
            vec!["always_fails"]
        );
        let report = sim.report(&result);
        assert!(
            report.contains("[safety] invariant always_fails violated")
                && report.contains("replay: Simulation::run(3) on this setup (scenario crash_restart, storage mem)"),
            "{report}"
        );
    }
}
