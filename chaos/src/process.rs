//! The processes of a chaos run: `chaos worker` runs keel's real [`Runtime`]
//! as one named node, and `chaos client` enqueues and cancels the workload.
//! The harness starts both from the same binary with a [`Spec`] file.
//!
//! A worker is what the simulator's node is, on a real database: the same
//! handlers ([`SimHandler`]), periodic schedule, failing start hook and
//! settings ([`Timing`]), its events written to its journal as they happen.
//! It carries out its own part of the plan that no signal can deliver (its
//! wall clock's skew and jumps, failing start hooks), and answers SIGTERM
//! with a graceful shutdown within the plan's deadline.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use keel::clock::SharedClock;
use keel::events::SharedObserver;
use keel::jobs::Runtime;
use keel::planted::{Bug, PlantedBugs};
use keel::storage::{
    PostgresOptions, PostgresStorage, SharedStorage, SqliteOptions, SqliteStorage,
};
use serde::{Deserialize, Serialize};
use sim::run::history::{fnv1a, FNV_OFFSET};
use sim::world::node::{FlakyStartHook, HookFaults, Timing};
use sim::world::workload::{SimHandler, WorkloadPlan};

use crate::journal::{machine_now_ms, Journal};
use crate::plan::{ChaosKind, ChaosPlan, PlannedClock};

/// The chaos run's workload and invariants, as scenario data.
pub const SCENARIO_TOML: &str = include_str!("../chaos.toml");

/// The chaos scenario with the plan's phases and process count.
pub fn scenario(plan: &ChaosPlan) -> Result<scenarios::Scenario, ChaosError> {
    let mut s = scenarios::Scenario::parse("chaos/chaos.toml", SCENARIO_TOML)
        .map_err(|e| ChaosError::Setup(e.to_string()))?;
    s.nodes = u32::try_from(plan.processes).unwrap_or(u32::MAX);
    s.duration_s = plan.fault_ms / 1000;
    s.heal_s = plan.heal_ms / 1000;
    if let Some(w) = s.workload.as_mut() {
        // Enqueue through most of the fault phase, however long it is.
        w.enqueue_window_s = (s.duration_s * 5 / 6).max(1);
    }
    Ok(s)
}

/// Which database a run uses.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "engine", rename_all = "snake_case")]
pub enum Engine {
    /// PostgreSQL at `url`, in a schema of the run's own.
    Postgres {
        /// The server (`KEEL_PG_URL`).
        url: String,
        /// The run's schema.
        schema: String,
    },
    /// One SQLite file every process opens.
    Sqlite {
        /// The file.
        path: PathBuf,
    },
}

impl Engine {
    /// `postgres` or `sqlite`.
    pub fn name(&self) -> &'static str {
        match self {
            Engine::Postgres { .. } => "postgres",
            Engine::Sqlite { .. } => "sqlite",
        }
    }
}

/// What a process is told: written by the harness as JSON, read at start.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Spec {
    /// `p1`, `p2`, ... (the node name keel runs as), or `client`.
    pub name: String,
    /// 0-based index into the plan's processes (unused by the client).
    pub index: usize,
    /// The database.
    pub engine: Engine,
    /// PostgreSQL only: the proxy port this process connects through.
    pub proxy_port: Option<u16>,
    /// The run's start on the machine's clock, Unix ms.
    pub epoch_unix_ms: i64,
    /// The plan file.
    pub plan: PathBuf,
    /// This process's journal (appended across restarts).
    pub journal: PathBuf,
    /// A planted bug, by name.
    pub plant: Option<String>,
}

/// What stops a chaos process or run.
#[derive(Debug, thiserror::Error)]
pub enum ChaosError {
    /// Bad settings or files: names what is wrong.
    #[error("{0}")]
    Setup(String),
    /// The database could not be prepared or read.
    #[error("database: {0}")]
    Database(String),
    /// A process could not be started or signalled.
    #[error("process {name}: {reason}")]
    Process {
        /// Which.
        name: String,
        /// Why.
        reason: String,
    },
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

impl Spec {
    /// Read a spec file.
    pub fn read(path: &Path) -> Result<Spec, ChaosError> {
        let text = read(path)?;
        serde_json::from_str(&text)
            .map_err(|e| ChaosError::Setup(format!("{}: {e}", path.display())))
    }

    fn plan(&self) -> Result<ChaosPlan, ChaosError> {
        read(&self.plan)?
            .parse()
            .map_err(|e| ChaosError::Setup(format!("{}: {e}", self.plan.display())))
    }

    fn plants(&self) -> Result<PlantedBugs, ChaosError> {
        match &self.plant {
            None => Ok(PlantedBugs::none()),
            Some(name) => name
                .parse::<Bug>()
                .map(PlantedBugs::only)
                .map_err(|e| ChaosError::Setup(e.to_string())),
        }
    }

    fn elapsed_ms(&self) -> u64 {
        u64::try_from(machine_now_ms() - self.epoch_unix_ms).unwrap_or(0)
    }
}

pub(crate) fn read(path: &Path) -> Result<String, ChaosError> {
    std::fs::read_to_string(path).map_err(|source| ChaosError::Io {
        path: path.to_owned(),
        source,
    })
}

/// Storage for a process under `plan`, retried until the database answers:
/// a process restarted into a partition waits it out, as a service's would.
async fn connect(spec: &Spec, plan: &ChaosPlan, via_proxy: bool) -> SharedStorage {
    // Storage's clock when the plan steps it; `None` leaves storage on its
    // own (the server's, or the machine's for SQLite).
    let clock = PlannedClock::storage(plan, spec.epoch_unix_ms).map(|c| Arc::new(c) as SharedClock);
    loop {
        match try_connect(spec, clock.clone(), via_proxy).await {
            Ok(storage) => return storage,
            Err(e) => {
                tracing::warn!(error = %e, "connect failed; retrying");
                tokio::time::sleep(CONNECT_RETRY).await;
            }
        }
    }
}

/// PostgreSQL connections per worker process (plus one for LISTEN): its six
/// workers' claims, heartbeats and finalizes, and the maintainer's calls.
const WORKER_POOL_SIZE: usize = 6;
/// PostgreSQL connections for the client, which makes one call at a time.
const CLIENT_POOL_SIZE: usize = 2;

/// Wait between attempts to open storage.
const CONNECT_RETRY: Duration = Duration::from_millis(500);

async fn try_connect(
    spec: &Spec,
    clock: Option<SharedClock>,
    via_proxy: bool,
) -> Result<SharedStorage, String> {
    match &spec.engine {
        Engine::Postgres { url, schema } => {
            let url = match (via_proxy, spec.proxy_port) {
                (true, Some(port)) => crate::pg::via_port(url, port).map_err(|e| e.to_string())?,
                _ => url.clone(),
            };
            // Several runs may share one server: a pool per process the size
            // of its workers, not keel's default.
            let pool = if via_proxy {
                WORKER_POOL_SIZE
            } else {
                CLIENT_POOL_SIZE
            };
            let mut options = PostgresOptions::new().schema(schema).pool_size(pool);
            if let Some(clock) = clock {
                options = options.clock(clock);
            }
            let storage = PostgresStorage::connect_with(&url, options)
                .await
                .map_err(|e| e.to_string())?;
            Ok(Arc::new(storage))
        }
        Engine::Sqlite { path } => {
            // No polling thread per process: several share two cores.
            let mut options = SqliteOptions::default().idle_spin(Duration::ZERO);
            if let Some(clock) = clock {
                options = options.clock(clock);
            }
            let storage = SqliteStorage::open_with(path, options)
                .await
                .map_err(|e| e.to_string())?;
            Ok(Arc::new(storage))
        }
    }
}

/// One worker process: keel's runtime as node `spec.name` until SIGTERM (a
/// graceful shutdown within the plan's deadline) or SIGKILL.
pub async fn worker_main(spec: Spec) -> Result<(), ChaosError> {
    let plan = spec.plan()?;
    let scenario = scenario(&plan)?;
    let timing = Timing::for_scenario(&scenario).map_err(ChaosError::Setup)?;
    let clock: SharedClock = Arc::new(PlannedClock::new(&plan, spec.index, spec.epoch_unix_ms));
    let journal = Arc::new(open_journal(&spec, clock.clone())?);
    let hooks = HookFaults::default();
    tokio::spawn(carry_out_hook_faults(
        spec.clone(),
        plan.clone(),
        hooks.clone(),
    ));
    let storage = connect(&spec, &plan, true).await;
    let runtime = build_runtime(&spec, &scenario, &timing, storage, clock, journal, hooks)?;
    let handle = runtime
        .start()
        .map_err(|e| ChaosError::Setup(e.to_string()))?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| ChaosError::Process {
            name: spec.name.clone(),
            reason: format!("SIGTERM handler: {e}"),
        })?;
    term.recv().await;
    handle.shutdown(deadline_at(&spec)).await;
    Ok(())
}

/// The shutdown deadline the harness wrote beside the journal before its
/// SIGTERM: a terminate aimed at the leader names no process in the plan.
fn deadline_at(spec: &Spec) -> Duration {
    let ms = std::fs::read_to_string(deadline_file(&spec.journal))
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(DEADLINE_DEFAULT_MS);
    Duration::from_millis(ms)
}

/// Where the harness writes a process's shutdown deadline, in ms.
pub fn deadline_file(journal: &Path) -> PathBuf {
    journal.with_extension("deadline")
}

/// A SIGTERM the plan did not send (an operator's): the runtime's usual grace.
const DEADLINE_DEFAULT_MS: u64 = 5_000;

fn open_journal(spec: &Spec, clock: SharedClock) -> Result<Journal, ChaosError> {
    Journal::open(&spec.journal, &spec.name, spec.epoch_unix_ms, clock).map_err(|source| {
        ChaosError::Io {
            path: spec.journal.clone(),
            source,
        }
    })
}

/// Switch this process's start hooks to failing and back as the plan says:
/// only the process itself can make its own code fail.
async fn carry_out_hook_faults(spec: Spec, plan: ChaosPlan, hooks: HookFaults) {
    let mut windows: Vec<(u64, Option<(u64, u64)>)> = Vec::new();
    for f in plan
        .faults
        .iter()
        .filter(|f| f.all || f.process == spec.index)
    {
        if let ChaosKind::HookFail {
            pct,
            delay_ms,
            dur_ms,
        } = f.kind
        {
            windows.push((f.at_ms, Some((delay_ms, pct))));
            // Faults stop when the heal phase begins.
            windows.push(((f.at_ms + dur_ms).min(plan.fault_ms), None));
        }
    }
    windows.sort_by_key(|(at, on)| (*at, on.is_some()));
    for (at_ms, fault) in windows {
        let now = spec.elapsed_ms();
        if at_ms > now {
            tokio::time::sleep(Duration::from_millis(at_ms - now)).await;
        }
        match fault {
            Some((delay_ms, pct)) => hooks.set(&spec.name, delay_ms, pct),
            None => hooks.clear(&spec.name),
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn build_runtime(
    spec: &Spec,
    scenario: &scenarios::Scenario,
    timing: &Timing,
    storage: SharedStorage,
    clock: SharedClock,
    journal: Arc<Journal>,
    hooks: HookFaults,
) -> Result<Runtime, ChaosError> {
    let name = spec.name.as_str();
    // A fresh incarnation per process: the pid tells two boots apart.
    let seed = fnv1a(FNV_OFFSET, name.as_bytes())
        ^ u64::from(std::process::id()) << 20
        ^ u64::try_from(machine_now_ms()).unwrap_or(0);
    let hook = FlakyStartHook::new(name, hooks, seed.rotate_left(17));
    let observer: SharedObserver = journal.clone();
    let mut builder = Runtime::builder(name, storage, clock)
        .observer(observer)
        .elector_config(timing.elector.clone())
        .maintainer_config(timing.maintainer.clone())
        .jobs_config(timing.jobs.clone())
        .rng_seed(seed)
        .incarnation_seed(seed.rotate_left(29))
        .plants(spec.plants()?)
        .service(Arc::new(hook));
    let workload = scenario
        .workload
        .as_ref()
        .ok_or_else(|| ChaosError::Setup("chaos.toml: no [workload]".into()))?;
    let jobs = sim::world::workload::node_jobs(workload);
    for (queue, workers) in &jobs.queues {
        builder = builder.queue(queue.clone(), *workers);
    }
    builder = builder.handler(
        sim::world::workload::KIND,
        SimHandler {
            host: name.to_owned(),
            history: journal,
        },
    );
    for (schedule, every, req) in &jobs.periodic {
        builder = builder.periodic(schedule.clone(), *every, req.clone());
    }
    builder
        .build()
        .map_err(|e| ChaosError::Setup(e.to_string()))
}

/// The client process: the workload's enqueues and cancels, straight to the
/// database (faults are for the workers), then exit.
pub async fn client_main(spec: Spec) -> Result<(), ChaosError> {
    let plan = spec.plan()?;
    let scenario = scenario(&plan)?;
    let workload = scenario
        .workload
        .as_ref()
        .ok_or_else(|| ChaosError::Setup("chaos.toml: no [workload]".into()))?;
    let clock: SharedClock = Arc::new(keel::clock::SystemClock::new());
    let journal = open_journal(&spec, clock.clone())?;
    let storage = connect(&spec, &plan, false).await;
    let work = WorkloadPlan::generate(workload, plan.seed);
    sim::world::workload::drive_client(&work, &*storage, &journal, || spec.elapsed_ms()).await;
    Ok(())
}
