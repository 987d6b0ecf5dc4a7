//! The software of one simulated node: keel's real runtime (elector, maintainer,
//! workers), wired to the simulated clock, the database host, and the history.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use keel::clock::{Clock, SharedClock};
use keel::jobs::{Handler, JobCtx, JobsConfig, Outcome, Runtime, MAINTENANCE_LEASE};
use keel::leadership::{Elector, ElectorConfig};
use keel::maintenance::{MaintainerConfig, Service, ServiceCtx, ServiceError};
use keel::planted::PlantedBugs;
use keel::shutdown::ShutdownToken;
use keel::storage::{EnqueueRequest, SharedStorage};
use keel::watcher::Watcher;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::run::history::{fnv1a, Ev, HarnessEvent, History, HostObserver, FNV_OFFSET};
use crate::world::clock::{Drift, SimClock};
use crate::world::db::{remote_storage, DB_HOST, DB_PORT, REQUEST_TIMEOUT_DEFAULT};
use crate::world::net::TurmoilNetwork;
use crate::world::pause::PauseGate;

/// The lease the nodes contend for.
pub const LEASE_NAME: &str = MAINTENANCE_LEASE;

/// Runtime settings every node of a run uses. Derived checker bounds come from
/// here too, so the checkers and the runtime can never disagree.
#[derive(Clone, Debug)]
pub struct Timing {
    /// Elector settings (holder is filled in per node).
    pub elector: ElectorConfig,
    /// Maintainer settings (seed is filled in per node and boot).
    pub maintainer: MaintainerConfig,
    /// Worker and job maintenance settings.
    pub jobs: JobsConfig,
    /// Storage request timeout.
    pub request_timeout: Duration,
}

impl Timing {
    /// The settings the simulator runs with.
    pub fn standard() -> Self {
        let mut maintainer = MaintainerConfig::new(0);
        maintainer.start_attempts_max = 4;
        // Long enough that a slow hook can outlive its term (the 002 race),
        // short enough that a run sees several terms give up.
        maintainer.start_attempt_timeout = Duration::from_secs(8);
        Self {
            elector: ElectorConfig::new(LEASE_NAME, "node"),
            maintainer,
            jobs: JobsConfig::default(),
            request_timeout: REQUEST_TIMEOUT_DEFAULT,
        }
    }

    /// The standard settings with the scenario's workload choices applied
    /// (how many jobs each worker claims ahead); an impossible choice is an
    /// error naming the scenario's field.
    pub fn for_scenario(scenario: &scenarios::Scenario) -> Result<Self, String> {
        let mut timing = Self::standard();
        if let Some(w) = &scenario.workload {
            timing.jobs.claim_ahead = w.claim_ahead;
        }
        let f = &scenario.faults;
        // A fixed timeout here; a range is drawn per run into the plan
        // ([`Timing::with_plan`]).
        let [lo, hi] = f.storage_timeout_ms;
        if lo > 0 && lo == hi {
            timing.request_timeout = Duration::from_millis(lo);
        }
        // The runtime is told how far clocks may drift: the scenario's bound.
        let rare = if f.drift_rare_pct > 0 {
            f.drift_rare_ppm_max
        } else {
            0
        };
        let drift = u32::try_from(f.drift_ppm_max.max(rare)).unwrap_or(u32::MAX);
        let drift = drift.max(timing.jobs.clock_drift_max_ppm);
        timing.jobs.clock_drift_max_ppm = drift;
        timing.elector.clock_drift_max_ppm = drift;
        let name = &scenario.name;
        timing.jobs.validate().map_err(|e| {
            let field = match e.field {
                "claim_ahead" => "workload.claim_ahead",
                "stale_threshold" | "clock_drift_max_ppm" => "faults.drift_ppm_max",
                other => other,
            };
            format!("scenario {name}: {field}: {}", e.reason)
        })?;
        timing.elector.validate().map_err(|e| {
            let field = match e.field {
                "safety_margin" | "clock_drift_max_ppm" => "faults.drift_ppm_max",
                other => other,
            };
            format!("scenario {name}: {field}: {}", e.reason)
        })?;
        Ok(timing)
    }

    /// These settings with the plan's drawn request timeout, if it drew one.
    pub fn with_plan(mut self, plan: &crate::plan::faults::FaultPlan) -> Self {
        if plan.request_timeout_ms > 0 {
            self.request_timeout = Duration::from_millis(plan.request_timeout_ms);
        }
        self
    }
}

/// Builds the handler for one job kind on one boot of a node, given the node's
/// name and the run's history.
pub type HandlerFactory = Arc<dyn Fn(&str, &History) -> Arc<dyn Handler> + Send + Sync>;

/// What a node's runtime works on: queues with their workers per node, a handler
/// per job kind, and periodic and cron jobs. The scenario's built-in workload is
/// one ([`crate::world::workload::node_jobs`]); a [`crate::user::Simulation`] builds
/// another from the user's handlers.
#[derive(Clone, Default)]
pub struct NodeJobs {
    /// `(queue, workers per node)`.
    pub queues: Vec<(String, u32)>,
    /// `(kind, factory)`: each boot of each node asks the factory for its handler.
    pub handlers: Vec<(String, HandlerFactory)>,
    /// `(schedule name, period, request)`, enqueued by the leader once per period.
    pub periodic: Vec<(String, Duration, EnqueueRequest)>,
    /// `(schedule name, cron expression, request)`.
    pub cron: Vec<(String, String, EnqueueRequest)>,
}

impl std::fmt::Debug for NodeJobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeJobs")
            .field("queues", &self.queues)
            .field(
                "handlers",
                &self.handlers.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            )
            .field("periodic", &self.periodic)
            .field("cron", &self.cron)
            .finish()
    }
}

/// A handler a factory handed out, registered with keel's builder (which takes
/// handlers by value).
struct SharedHandler(Arc<dyn Handler>);

#[async_trait]
impl Handler for SharedHandler {
    async fn run(&self, ctx: JobCtx, payload: serde_json::Value) -> Outcome {
        self.0.run(ctx, payload).await
    }
}

/// Start-hook faults the harness switches on and off, per host: the delay after
/// which a failing call fails, and the percentage of calls that fail.
#[derive(Clone, Debug, Default)]
pub struct HookFaults(Arc<Mutex<BTreeMap<String, (u64, u64)>>>);

impl HookFaults {
    /// Make `fail_pct` percent of `host`'s hook calls fail after `delay_ms`.
    pub fn set(&self, host: &str, delay_ms: u64, fail_pct: u64) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(host.to_owned(), (delay_ms, fail_pct));
    }

    /// Make `host`'s hooks work again.
    pub fn clear(&self, host: &str) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(host);
    }

    fn get(&self, host: &str) -> Option<(u64, u64)> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(host)
            .copied()
    }
}

/// A maintainer start hook whose failures the harness injects. Like the hook in
/// source document 002, a failing call does not return early on cancellation.
/// Which calls fail inside a window is drawn from a per-boot seeded RNG.
pub struct FlakyStartHook {
    host: String,
    faults: HookFaults,
    rng: Mutex<ChaCha8Rng>,
}

impl FlakyStartHook {
    /// `host`'s hook, failing as `faults` says for it; `seed` draws which
    /// calls inside a fault window fail.
    pub fn new(host: &str, faults: HookFaults, seed: u64) -> Self {
        Self {
            host: host.to_owned(),
            faults,
            rng: Mutex::new(ChaCha8Rng::seed_from_u64(seed)),
        }
    }
}

#[async_trait]
impl Service for FlakyStartHook {
    fn name(&self) -> &str {
        "start_hook"
    }

    async fn start(&self, ctx: &ServiceCtx) -> Result<(), ServiceError> {
        let Some((delay_ms, fail_pct)) = self.faults.get(&self.host) else {
            return Ok(());
        };
        let roll = self
            .rng
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .random_range(0..100);
        if roll >= fail_pct {
            return Ok(());
        }
        ctx.clock.sleep(Duration::from_millis(delay_ms)).await;
        Err(ServiceError::Start {
            service: self.name().to_owned(),
            reason: "injected hook failure".into(),
        })
    }
}

/// Everything a node needs; cloned into turmoil's host factory, which runs again
/// on every restart. Only `boots` carries over a restart.
#[derive(Clone, Debug)]
pub struct NodeSetup {
    /// Host name (`n1`, `n2`, ...; a replacement process `n1r`): the label of
    /// its records and the key of the harness's requests.
    pub name: String,
    /// The node name keel runs under when it is not the host name: a
    /// replacement process runs as the node it replaces.
    pub node: Option<String>,
    /// Run seed.
    pub seed: u64,
    /// Wall-clock skew, shared with the harness so it can make the clock jump.
    pub skew_ms: Arc<AtomicI64>,
    /// The machine's clock-rate error, shared with the harness so it can
    /// change it (and with a replacement process on the same machine).
    pub drift: Drift,
    /// Planted bugs.
    pub plants: PlantedBugs,
    /// Runtime settings.
    pub timing: Timing,
    /// The run's history.
    pub history: History,
    /// Injected hook faults.
    pub hooks: HookFaults,
    /// How often this host has booted.
    pub boots: Arc<AtomicU32>,
    /// What the node's runtime works on (nothing if the run has no jobs).
    pub jobs: NodeJobs,
    /// Graceful shutdowns the harness asks for.
    pub shutdowns: ShutdownRequests,
    /// The scenario's watcher loops, `[name, period_ms]`.
    pub loops: Vec<(String, u64)>,
    /// Faults armed for those loops.
    pub loop_faults: LoopFaults,
    /// This host's freeze switch (process pauses).
    pub pause: PauseGate,
    /// In-place restarts the harness asks for.
    pub restarts: RestartRequests,
}

/// What to restart in place inside a live node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Restart {
    /// The maintainer: stopped and run again while the elector keeps its term.
    Maintainer,
    /// The whole runtime: shut down within the deadline, started again at once.
    Runtime {
        /// The shutdown deadline.
        deadline: Duration,
    },
}

/// In-place restarts the harness asks of nodes, per host; the latest wins.
#[derive(Clone, Debug, Default)]
pub struct RestartRequests(Arc<Mutex<BTreeMap<String, Restart>>>);

impl RestartRequests {
    /// Ask `host` to restart `what` in place.
    pub fn request(&self, host: &str, what: Restart) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(host.to_owned(), what);
    }

    fn take(&self, host: &str) -> Option<Restart> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(host)
    }
}

impl NodeSetup {
    /// This host's clock: its skew, frozen while the host is paused.
    fn clock(&self) -> SimClock {
        SimClock::shared(self.skew_ms.clone())
            .drifting(self.drift.clone())
            .gated(self.pause.clone())
    }
}

/// One boot of a node: runs until the host is crashed or the run ends.
pub async fn node_main(setup: NodeSetup) -> turmoil::Result {
    // A crash ends a pause: the restarted software must not start frozen.
    setup.pause.resume();
    let clock = setup.clock();
    loop {
        let runtime = build_runtime(&setup)?;
        let mut handle = runtime.start()?;
        let loops_token = ShutdownToken::new();
        let loops = (!setup.loops.is_empty()).then(|| {
            let elector = handle.elector();
            tokio::spawn(run_loops(setup.clone(), loops_token.clone(), elector))
        });
        // Run until the harness asks for a graceful shutdown (then come back
        // after the planned downtime, as a deploy would) or turmoil crashes us;
        // in-place restarts keep this process and this runtime.
        let (deadline, down) = loop {
            if let Some(request) = setup.shutdowns.take(&setup.name) {
                break request;
            }
            match setup.restarts.take(&setup.name) {
                Some(Restart::Maintainer) => handle.restart_maintainer().await,
                Some(Restart::Runtime { deadline }) => {
                    handle.shutdown(deadline).await;
                    handle = runtime.start()?;
                }
                None => {}
            }
            clock.sleep(SHUTDOWN_POLL).await;
        };
        loops_token.trigger();
        if let Some(task) = loops {
            task.abort();
        }
        handle.shutdown(deadline).await;
        clock.sleep(down).await;
    }
}

/// After a watcher ended on an error or panic, wait this long and start it again,
/// as a service's supervisor would.
const WATCHER_RESTART_DELAY: Duration = Duration::from_secs(1);

/// The scenario's periodic loops under keel's `Watcher`, restarted after failures.
/// The node's `elector` only lets coverage see renewals during slow ticks.
async fn run_loops(setup: NodeSetup, token: ShutdownToken, elector: Arc<Elector>) {
    let clock: SharedClock = Arc::new(setup.clock());
    let observer: keel::events::SharedObserver =
        Arc::new(HostObserver::new(&setup.name, setup.history.clone()));
    while !token.is_triggered() {
        let mut watcher = Watcher::new(clock.clone(), token.child())
            .with_observer(observer.clone(), setup.name.clone())
            .with_plants(setup.plants.clone())
            .with_elector(elector.clone());
        for (index, (name, period_ms)) in setup.loops.iter().enumerate() {
            let tick = loop_tick(&setup, index, name);
            if watcher
                .add_loop(name.clone(), Duration::from_millis(*period_ms), tick)
                .is_err()
            {
                return;
            }
        }
        let _ = watcher.run().await;
        tokio::select! {
            biased;
            () = token.wait() => return,
            () = clock.sleep(WATCHER_RESTART_DELAY) => {}
        }
    }
}

/// One tick of loop `index`: does nothing, unless the harness armed a fault.
fn loop_tick(
    setup: &NodeSetup,
    index: usize,
    name: &str,
) -> impl FnMut() -> futures_tick::Tick + Send + 'static {
    let (faults, history, host, name) = (
        setup.loop_faults.clone(),
        setup.history.clone(),
        setup.name.clone(),
        name.to_owned(),
    );
    let clock = setup.clock();
    move || {
        let fault = faults.take(&host, index);
        let (history, host, name) = (history.clone(), host.clone(), name.clone());
        let clock = clock.clone();
        Box::pin(async move {
            match fault {
                Some(LoopFault::Panic) => {
                    history.push(
                        &host,
                        Ev::Harness(HarnessEvent::LoopPanicInjected { name: name.clone() }),
                    );
                    panic!("injected panic in loop {name}");
                }
                Some(LoopFault::Slow { ms }) => clock.sleep(Duration::from_millis(ms)).await,
                None => {}
            }
            Ok(())
        })
    }
}

mod futures_tick {
    /// The future one loop tick returns.
    pub(super) type Tick = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<(), keel::watcher::LoopError>> + Send>,
    >;
}

/// A fault armed for the next tick of one loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoopFault {
    /// The tick panics.
    Panic,
    /// The tick takes `ms`.
    Slow {
        /// How long.
        ms: u64,
    },
}

/// Loop faults the harness arms, per host and loop index; each fires once.
#[derive(Clone, Debug, Default)]
pub struct LoopFaults(Arc<Mutex<BTreeMap<(String, usize), LoopFault>>>);

impl LoopFaults {
    /// Arm `fault` for the next tick of loop `index` on `host`.
    pub fn arm(&self, host: &str, index: usize, fault: LoopFault) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((host.to_owned(), index), fault);
    }

    /// Disarm everything (the heal phase).
    pub fn clear(&self) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    fn take(&self, host: &str, index: usize) -> Option<LoopFault> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(host.to_owned(), index))
    }
}

/// How often a node looks for a shutdown request from the harness.
const SHUTDOWN_POLL: Duration = Duration::from_millis(50);

/// Graceful shutdowns the harness asks of nodes: `(deadline, downtime)` per host.
#[derive(Clone, Debug, Default)]
pub struct ShutdownRequests(Arc<Mutex<BTreeMap<String, (Duration, Duration)>>>);

impl ShutdownRequests {
    /// Ask `host` to shut down within `deadline` and restart `down` later.
    pub fn request(&self, host: &str, deadline: Duration, down: Duration) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(host.to_owned(), (deadline, down));
    }

    fn take(&self, host: &str) -> Option<(Duration, Duration)> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(host)
    }
}

/// Keel's runtime for one boot of this node (a boot, or a restart after a
/// graceful shutdown); an in-place restart starts the same one again.
fn build_runtime(setup: &NodeSetup) -> Result<Runtime, Box<dyn std::error::Error>> {
    let boot = setup.boots.fetch_add(1, Ordering::SeqCst) + 1;
    let name = setup.name.as_str();
    let skew_ms = setup.skew_ms.load(Ordering::SeqCst);
    setup
        .history
        .push(name, Ev::Harness(HarnessEvent::NodeBoot { boot, skew_ms }));
    let clock: SharedClock = Arc::new(setup.clock());
    let addr = format!("{DB_HOST}:{DB_PORT}");
    let net = Arc::new(TurmoilNetwork);
    let storage: SharedStorage = Arc::new(remote_storage(
        net,
        addr,
        clock.clone(),
        setup.timing.request_timeout,
    ));
    let observer = Arc::new(HostObserver::new(name, setup.history.clone()));
    let rng_seed = setup.seed ^ (u64::from(boot) << 32) ^ fnv1a(FNV_OFFSET, name.as_bytes());
    let hook = FlakyStartHook::new(name, setup.hooks.clone(), rng_seed.rotate_left(17));
    let node = setup.node.as_deref().unwrap_or(name);
    let mut builder = Runtime::builder(node, storage, clock)
        .observer(observer)
        .elector_config(setup.timing.elector.clone())
        .maintainer_config(setup.timing.maintainer.clone())
        .jobs_config(setup.timing.jobs.clone())
        .rng_seed(rng_seed)
        .incarnation_seed(rng_seed.rotate_left(29) ^ 0x696e_6361_726e)
        .plants(setup.plants.clone())
        .service(Arc::new(hook));
    let jobs = &setup.jobs;
    for (queue, workers) in &jobs.queues {
        builder = builder.queue(queue.clone(), *workers);
    }
    for (kind, make) in &jobs.handlers {
        builder = builder.handler(kind.clone(), SharedHandler(make(name, &setup.history)));
    }
    for (schedule, every, req) in &jobs.periodic {
        builder = builder.periodic(schedule.clone(), *every, req.clone());
    }
    for (schedule, expr, req) in &jobs.cron {
        builder = builder.cron(schedule.clone(), expr, req.clone());
    }
    Ok(builder.build()?)
}
