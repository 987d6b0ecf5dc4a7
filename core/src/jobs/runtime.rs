//! `Runtime`: everything a service embeds, wired together.
//!
//! ```text
//!  Runtime::builder(node, storage, clock) ─ .queue() .handler() .periodic() ─ build()
//!     └─ start() ─▶ RuntimeHandle
//!          ├─ one supervisor per queue: scales workers to the queue's size
//!          ├─ elector + maintainer: on the leader, rescuer, scheduler, cleaner,
//!          │   periodic enqueuer and the fenced maintenance heartbeat
//!          └─ shutdown(deadline): stop claiming, let handlers finish, abort what
//!             outlasts the deadline, give aborted jobs back at once
//! ```

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tokio::sync::Notify;
use tokio::time::MissedTickBehavior;

use super::config::{JobsConfig, JobsConfigError, QueueSpec, WORKERS_PER_QUEUE_MAX};
use super::handler::{Handler, HandlerRegistry};
use super::maintenance::{Cleaner, PeriodicEnqueuer, PeriodicJob, Rescuer, Schedule, Scheduler};
use super::worker::{worker_loop, WorkerShared};
use crate::clock::SharedClock;
use crate::events::{emit, Event, NoopObserver, SharedObserver};
use crate::identity::{holder_id, Incarnation};
use crate::leadership::{Elector, ElectorConfig, ElectorConfigError};
use crate::maintenance::{
    Maintainer, MaintainerConfig, MaintainerConfigError, MaintenanceHeartbeat, Service,
};
#[cfg(feature = "planted-bugs")]
use crate::planted::PlantedBugs;
use crate::shutdown::{JoinReport, ShutdownToken, TaskRegistry};
use crate::storage::job::validate_name;
use crate::storage::{
    CancelResult, EnqueueOutcome, EnqueueRequest, Finalize, JobId, QueueConfig, SharedStorage,
    StorageError,
};

/// The lease the runtime's nodes elect their maintenance leader with.
pub const MAINTENANCE_LEASE: &str = "keel.maintenance";

/// Why a runtime could not be built or an operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// A setting is invalid.
    #[error("invalid runtime config: {field}: {reason}")]
    Config {
        /// The field.
        field: String,
        /// Why.
        reason: String,
    },
    /// Storage failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// [`Runtime::start`] while a handle it returned has not shut down yet: one
    /// `Runtime` runs one incarnation at a time.
    #[error("the runtime is already running; shut its handle down before starting it again")]
    AlreadyRunning,
}

impl From<JobsConfigError> for RuntimeError {
    fn from(e: JobsConfigError) -> Self {
        RuntimeError::Config {
            field: e.field.to_owned(),
            reason: e.reason,
        }
    }
}

impl From<ElectorConfigError> for RuntimeError {
    fn from(e: ElectorConfigError) -> Self {
        RuntimeError::Config {
            field: format!("elector.{}", e.field),
            reason: e.reason,
        }
    }
}

impl From<MaintainerConfigError> for RuntimeError {
    fn from(e: MaintainerConfigError) -> Self {
        RuntimeError::Config {
            field: format!("maintainer.{}", e.field),
            reason: e.reason,
        }
    }
}

/// Builds a [`Runtime`].
pub struct RuntimeBuilder {
    node: String,
    storage: SharedStorage,
    clock: SharedClock,
    observer: SharedObserver,
    queues: Vec<QueueSpec>,
    handlers: HandlerRegistry,
    periodic: Vec<PeriodicJob>,
    services: Vec<Arc<dyn Service>>,
    bad_cron: Vec<String>,
    jobs: JobsConfig,
    elector: ElectorConfig,
    maintainer: MaintainerConfig,
    incarnation_seed: Option<u64>,
    #[cfg(feature = "planted-bugs")]
    plants: PlantedBugs,
}

impl RuntimeBuilder {
    /// Work on `queue` with `workers` workers (unless storage's queue config says otherwise).
    pub fn queue(mut self, name: impl Into<String>, workers: u32) -> Self {
        self.queues.push(QueueSpec {
            name: name.into(),
            workers,
        });
        self
    }

    /// Run jobs of `kind` with `handler`.
    pub fn handler(mut self, kind: impl Into<String>, handler: impl Handler) -> Self {
        self.handlers.register(kind, handler);
        self
    }

    /// Enqueue `request` once per `every`, cluster-wide, from the leader.
    pub fn periodic(
        mut self,
        name: impl Into<String>,
        every: Duration,
        request: EnqueueRequest,
    ) -> Self {
        self.periodic.push(PeriodicJob {
            name: name.into(),
            schedule: Schedule::Every(every),
            request,
        });
        self
    }

    /// Enqueue `request` at each fire time of the cron expression `expr` (UTC,
    /// with seconds: `"0 */5 * * * *"` is every five minutes), once per fire time
    /// cluster-wide, from the leader. A bad expression fails [`build`](Self::build)
    /// with field `periodic.cron`.
    pub fn cron(mut self, name: impl Into<String>, expr: &str, request: EnqueueRequest) -> Self {
        let name = name.into();
        match expr.parse::<cron::Schedule>() {
            Ok(schedule) => {
                let schedule = Schedule::Cron(Box::new(schedule));
                self.periodic.push(PeriodicJob {
                    name,
                    schedule,
                    request,
                });
            }
            Err(e) => self.bad_cron.push(format!("{name}: {expr:?}: {e}")),
        }
        self
    }

    /// Run `service` on the leader too, for each term. Added services start
    /// before the built-in ones (a failing start hook fails the attempt before
    /// anything else starts) and share their retries and term fencing.
    pub fn service(mut self, service: Arc<dyn Service>) -> Self {
        self.services.push(service);
        self
    }

    /// Report every state change to `observer` (it also goes to `tracing`).
    pub fn observer(mut self, observer: SharedObserver) -> Self {
        self.observer = observer;
        self
    }

    /// Worker and maintenance timing.
    pub fn jobs_config(mut self, cfg: JobsConfig) -> Self {
        self.jobs = cfg;
        self
    }

    /// Leader election timing (lease name and holder are the runtime's).
    pub fn elector_config(mut self, cfg: ElectorConfig) -> Self {
        self.elector = cfg;
        self
    }

    /// Maintenance start retries.
    pub fn maintainer_config(mut self, cfg: MaintainerConfig) -> Self {
        self.maintainer = cfg;
        self
    }

    /// Seed for retry jitter; production passes entropy, the simulator its seed.
    pub fn rng_seed(mut self, seed: u64) -> Self {
        self.maintainer.rng_seed = seed;
        self
    }

    /// Draw each start's [`Incarnation`] from an RNG seeded with `seed` instead
    /// of the operating system (the simulator passes its seed, so holder ids are
    /// part of the replay). Production leaves this unset.
    pub fn incarnation_seed(mut self, seed: u64) -> Self {
        self.incarnation_seed = Some(seed);
        self
    }

    /// Switch on planted bugs (simulator only).
    #[cfg(feature = "planted-bugs")]
    pub fn plants(mut self, plants: PlantedBugs) -> Self {
        self.plants = plants;
        self
    }

    /// Check everything and build.
    pub fn build(mut self) -> Result<Runtime, RuntimeError> {
        validate_name("node", &self.node)?;
        self.jobs.validate()?;
        let mut seen = std::collections::BTreeSet::new();
        for q in &self.queues {
            validate_name("queue", &q.name)?;
            if !seen.insert(q.name.clone()) {
                return Err(RuntimeError::Config {
                    field: "queue".into(),
                    reason: format!("{} listed twice", q.name),
                });
            }
            if q.workers > WORKERS_PER_QUEUE_MAX {
                let reason = format!(
                    "{} asks for {} workers; at most {WORKERS_PER_QUEUE_MAX}",
                    q.name, q.workers
                );
                return Err(RuntimeError::Config {
                    field: "queue.workers".into(),
                    reason,
                });
            }
        }
        if let Some(bad) = self.bad_cron.first() {
            return Err(RuntimeError::Config {
                field: "periodic.cron".into(),
                reason: bad.clone(),
            });
        }
        for p in &self.periodic {
            validate_name("periodic name", &p.name)?;
            p.request.validate()?;
            let too_often =
                matches!(p.schedule, Schedule::Every(every) if every < Duration::from_secs(1));
            if too_often {
                return Err(RuntimeError::Config {
                    field: "periodic.every".into(),
                    reason: format!("{} must be at least 1s", p.name),
                });
            }
        }
        self.elector.lease_name = MAINTENANCE_LEASE.to_owned();
        self.elector.holder = self.node.clone();
        #[cfg(feature = "planted-bugs")]
        {
            self.elector.plants = self.plants.clone();
            self.maintainer.plants = self.plants.clone();
        }
        self.elector.validate()?;
        self.maintainer.validate()?;
        let incarnations = self.incarnation_seed.map(ChaCha8Rng::seed_from_u64);
        Ok(Runtime {
            b: self,
            live: Arc::new(AtomicBool::new(false)),
            incarnations: Mutex::new(incarnations),
        })
    }
}

/// A configured runtime; [`start`](Runtime::start) it, as often as you like, one
/// incarnation at a time.
pub struct Runtime {
    b: RuntimeBuilder,
    /// Set from `start` until the handle it returned has shut down (or was
    /// dropped: its tasks then run on, under their own holder id).
    live: Arc<AtomicBool>,
    /// Where incarnations come from: a seeded RNG, or the OS when `None`.
    incarnations: Mutex<Option<ChaCha8Rng>>,
}

impl Runtime {
    /// Start building a runtime for `node` (unique in the cluster).
    pub fn builder(
        node: impl Into<String>,
        storage: SharedStorage,
        clock: SharedClock,
    ) -> RuntimeBuilder {
        RuntimeBuilder {
            node: node.into(),
            storage,
            clock,
            observer: Arc::new(NoopObserver),
            queues: Vec::new(),
            handlers: HandlerRegistry::new(),
            periodic: Vec::new(),
            services: Vec::new(),
            bad_cron: Vec::new(),
            jobs: JobsConfig::default(),
            elector: ElectorConfig::new(MAINTENANCE_LEASE, "node"),
            maintainer: MaintainerConfig::new(0),
            incarnation_seed: None,
            #[cfg(feature = "planted-bugs")]
            plants: PlantedBugs::none(),
        }
    }

    /// The next start's incarnation.
    fn incarnation(&self) -> Incarnation {
        let mut rng = self.incarnations.lock().unwrap_or_else(|p| p.into_inner());
        match rng.as_mut() {
            Some(rng) => Incarnation::from_rng(rng),
            None => Incarnation::from_os(),
        }
    }

    /// Spawn supervisors, the elector and the maintainer as a new process
    /// incarnation: leases and claims are held as `node#incarnation`, so this
    /// start never shares them with an earlier start of the same node, here or
    /// on another machine. Needs a tokio runtime.
    ///
    /// A runtime can be started again once the handle of its last start has
    /// shut down; starting it while that handle is live is
    /// [`RuntimeError::AlreadyRunning`].
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use keel::jobs::{Runtime, RuntimeError};
    /// # async fn demo(rt: Runtime) -> Result<(), RuntimeError> {
    /// let first = rt.start()?;
    /// assert!(matches!(rt.start(), Err(RuntimeError::AlreadyRunning)));
    /// first.shutdown(std::time::Duration::from_secs(5)).await;
    /// let second = rt.start()?; // a new incarnation of the same node
    /// # second.shutdown(std::time::Duration::from_secs(5)).await;
    /// # Ok(()) }
    /// ```
    pub fn start(&self) -> Result<RuntimeHandle, RuntimeError> {
        if self.live.swap(true, Ordering::SeqCst) {
            return Err(RuntimeError::AlreadyRunning);
        }
        let started = self.spawn();
        if started.is_err() {
            self.live.store(false, Ordering::SeqCst);
        }
        started
    }

    fn spawn(&self) -> Result<RuntimeHandle, RuntimeError> {
        let b = &self.b;
        let incarnation = self.incarnation();
        // Planted `incarnation_blind_holder`: hold as the bare node name.
        let holder = if crate::is_planted!(b.plants, IncarnationBlindHolder) {
            b.node.clone()
        } else {
            holder_id(&b.node, incarnation)
        };
        let token = ShutdownToken::new();
        let tasks =
            TaskRegistry::new(token.clone()).with_observer(b.observer.clone(), holder.clone());
        emit(
            b.observer.as_ref(),
            &holder,
            Event::RuntimeStarted {
                holder: holder.clone(),
            },
        );
        let shared = Arc::new(WorkerShared {
            node: holder.clone(),
            cfg: b.jobs.clone(),
            storage: b.storage.clone(),
            clock: b.clock.clone(),
            observer: b.observer.clone(),
            handlers: b.handlers.clone(),
            running: Mutex::new(BTreeMap::new()),
            rng: Mutex::new(ChaCha8Rng::seed_from_u64(
                b.maintainer.rng_seed ^ 0x6a6f_6273,
            )),
            // Storage that hears of other processes' enqueues (PostgreSQL's
            // LISTEN) wakes the same workers a local enqueue does.
            wake: b
                .storage
                .enqueue_signal()
                .unwrap_or_else(|| Arc::new(Notify::new())),
            #[cfg(feature = "planted-bugs")]
            plants: b.plants.clone(),
        });
        for spec in &b.queues {
            let (shared, spec, stop, registry) =
                (shared.clone(), spec.clone(), token.clone(), tasks.clone());
            tasks.spawn(
                format!("supervisor/{}", spec.name),
                supervise_queue(shared, spec, stop, registry),
            );
        }
        let mut elector_cfg = b.elector.clone();
        elector_cfg.holder = holder;
        let elector = Elector::new(
            elector_cfg,
            b.storage.clone(),
            b.clock.clone(),
            b.observer.clone(),
        )?;
        let mut services = b.services.clone();
        services.extend(maintenance_services(&b.jobs, &b.periodic));
        let maintainer = Maintainer::new(
            b.maintainer.clone(),
            elector.clone(),
            services,
            b.storage.clone(),
            b.clock.clone(),
            b.observer.clone(),
        )?;
        tasks.spawn("elector", elector.clone().run(token.clone()));
        let maintainer_run = MaintainerRun::spawn(&maintainer, &token, &tasks);
        Ok(RuntimeHandle {
            shared,
            token,
            tasks,
            maintainer,
            maintainer_run: tokio::sync::Mutex::new(maintainer_run),
            _live: LiveFlag(self.live.clone()),
            #[cfg(feature = "planted-bugs")]
            plants: b.plants.clone(),
            #[cfg(feature = "coverage")]
            elector,
        })
    }
}

/// One `Maintainer::run` inside a runtime: the token that stops it and the
/// token its task triggers when it has returned.
struct MaintainerRun {
    stop: ShutdownToken,
    done: ShutdownToken,
}

impl MaintainerRun {
    fn spawn(maintainer: &Arc<Maintainer>, parent: &ShutdownToken, tasks: &TaskRegistry) -> Self {
        let (stop, done) = (parent.child(), ShutdownToken::new());
        let (run, finished) = (
            maintainer.clone().run(stop.clone(), tasks.clone()),
            done.clone(),
        );
        tasks.spawn("maintainer", async move {
            run.await;
            finished.trigger();
        });
        Self { stop, done }
    }
}

/// Clears [`Runtime`]'s live flag when the handle is gone (shut down or dropped),
/// so the runtime can start again.
struct LiveFlag(Arc<AtomicBool>);

impl Drop for LiveFlag {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

fn maintenance_services(cfg: &JobsConfig, periodic: &[PeriodicJob]) -> Vec<Arc<dyn Service>> {
    let every = cfg.maintenance_interval;
    let mut services: Vec<Arc<dyn Service>> = vec![
        Arc::new(MaintenanceHeartbeat::new(every)),
        Arc::new(Rescuer {
            interval: every,
            stale_threshold: cfg.stale_threshold,
        }),
        Arc::new(Scheduler { interval: every }),
        Arc::new(Cleaner {
            interval: every * 60,
            retention: cfg.retention,
            batch: cfg.cleanup_batch,
        }),
    ];
    if !periodic.is_empty() {
        services.push(Arc::new(PeriodicEnqueuer {
            interval: every,
            jobs: Arc::new(periodic.to_vec()),
        }));
    }
    services
}

/// Match the number of workers of one queue to its configured size.
async fn supervise_queue(
    shared: Arc<WorkerShared>,
    spec: QueueSpec,
    stop: ShutdownToken,
    tasks: TaskRegistry,
) {
    let mut workers: Vec<ShutdownToken> = Vec::new();
    let mut tick = shared
        .clock
        .interval(shared.cfg.supervisor_interval, MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            biased;
            () = stop.wait() => return,
            _ = tick.tick() => {}
        }
        let target = match shared.storage.get_queue(&spec.name).await {
            Ok(Some(q)) if q.paused => 0,
            Ok(Some(q)) => q.workers.unwrap_or(spec.workers).min(WORKERS_PER_QUEUE_MAX),
            Ok(None) => spec.workers,
            Err(_) => continue,
        } as usize;
        while workers.len() > target {
            if let Some(retire) = workers.pop() {
                retire.trigger();
            }
        }
        while workers.len() < target {
            let slot = u32::try_from(workers.len()).unwrap_or(u32::MAX);
            let retire = ShutdownToken::new();
            let run = worker_loop(
                shared.clone(),
                spec.name.clone(),
                slot,
                retire.clone(),
                stop.clone(),
            );
            tasks.spawn(format!("worker/{}/{slot}", spec.name), run);
            workers.push(retire);
        }
    }
}

/// What [`RuntimeHandle::shutdown`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShutdownReport {
    /// How the tracked tasks ended.
    pub tasks: JoinReport,
    /// Jobs whose handlers were aborted; their claims were given back.
    pub released: Vec<JobId>,
}

/// A running runtime.
pub struct RuntimeHandle {
    shared: Arc<WorkerShared>,
    token: ShutdownToken,
    tasks: TaskRegistry,
    maintainer: Arc<Maintainer>,
    maintainer_run: tokio::sync::Mutex<MaintainerRun>,
    _live: LiveFlag,
    #[cfg(feature = "planted-bugs")]
    plants: PlantedBugs,
    #[cfg(feature = "coverage")]
    elector: Arc<Elector>,
}

impl RuntimeHandle {
    /// This incarnation's holder id (`node#incarnation`): what its leases and
    /// claims name in storage.
    pub fn holder(&self) -> &str {
        &self.shared.node
    }

    /// The term whose maintenance services run on this node now, if any.
    pub fn maintenance_term(&self) -> Option<crate::storage::Term> {
        self.maintainer.running_term()
    }

    /// Stop the maintainer and run it again in place (a configuration reload, or
    /// a supervisor restarting a component), while the elector keeps its term and
    /// workers keep running. Services of the held term stop and start again;
    /// start attempts of the stopped run that finish later are discarded.
    pub async fn restart_maintainer(&self) {
        let mut run = self.maintainer_run.lock().await;
        if self.token.is_triggered() {
            return;
        }
        run.stop.trigger();
        run.done.wait().await;
        *run = MaintainerRun::spawn(&self.maintainer, &self.token, &self.tasks);
    }

    /// This node's elector, for coverage marks that relate another component to
    /// its leadership (a [`Watcher`](crate::watcher::Watcher)'s slow tick across
    /// a lease renewal).
    #[cfg(feature = "coverage")]
    pub fn elector(&self) -> Arc<Elector> {
        self.elector.clone()
    }

    /// Enqueue a job; wakes one of this node's idle workers.
    pub async fn enqueue(&self, req: EnqueueRequest) -> Result<EnqueueOutcome, RuntimeError> {
        let labels = enqueue_labels(&req);
        let outcome = self.shared.storage.enqueue(req).await?;
        self.enqueued(outcome, &labels);
        Ok(outcome)
    }

    /// Enqueue many jobs; all are validated before any is inserted.
    pub async fn enqueue_batch(
        &self,
        reqs: Vec<EnqueueRequest>,
    ) -> Result<Vec<EnqueueOutcome>, RuntimeError> {
        let labels: Vec<_> = reqs.iter().map(enqueue_labels).collect();
        let outcomes = self.shared.storage.enqueue_batch(reqs).await?;
        outcomes
            .iter()
            .zip(&labels)
            .for_each(|(o, l)| self.enqueued(*o, l));
        Ok(outcomes)
    }

    fn enqueued(&self, outcome: EnqueueOutcome, labels: &EnqueueLabels) {
        let inserted = matches!(outcome, EnqueueOutcome::Inserted(_));
        #[cfg(feature = "metrics")]
        if inserted {
            crate::metrics::job_enqueued(&labels.queue, &labels.kind);
        }
        let _ = labels;
        emit(
            self.shared.observer.as_ref(),
            &self.shared.node,
            Event::JobEnqueued {
                job: outcome.id(),
                inserted,
            },
        );
        // One idle worker per new job: waking them all would send every idle
        // worker to claim, and all but one would find nothing.
        if inserted {
            self.shared.wake.notify_one();
        }
    }

    /// Cancel a job from any node: recorded in storage, and if it runs here its
    /// handler is told at once; elsewhere its worker hears at the next heartbeat.
    pub async fn cancel(&self, job: JobId) -> Result<CancelResult, RuntimeError> {
        let result = self.shared.storage.request_cancel(job).await?;
        if result == CancelResult::Requested {
            if let Some(running) = self.shared.running().get(&job) {
                running.user_cancel.store(true, Ordering::SeqCst);
                running.cancel.trigger();
            }
        }
        Ok(result)
    }

    /// Stop handing out `queue`'s jobs, cluster-wide.
    pub async fn pause(&self, queue: &str) -> Result<(), RuntimeError> {
        self.set_paused(queue, true).await
    }

    /// Hand out `queue`'s jobs again.
    pub async fn resume(&self, queue: &str) -> Result<(), RuntimeError> {
        self.set_paused(queue, false).await
    }

    async fn set_paused(&self, queue: &str, paused: bool) -> Result<(), RuntimeError> {
        validate_name("queue", queue)?;
        let storage = &self.shared.storage;
        // Pausing sizes nothing: a queue no one sized keeps each node's own count.
        let workers = storage.get_queue(queue).await?.and_then(|q| q.workers);
        storage
            .set_queue(QueueConfig {
                name: queue.to_owned(),
                workers,
                paused,
            })
            .await?;
        Ok(())
    }

    /// Jobs running on this node now.
    pub fn running_jobs(&self) -> Vec<JobId> {
        self.shared.running().keys().copied().collect()
    }

    /// Stop claiming, let running handlers finish, and after `deadline` abort what
    /// is left and give those jobs back (without spending their attempt) so
    /// another node can take them at once. Returns within the deadline plus one
    /// heartbeat interval.
    pub async fn shutdown(self, deadline: Duration) -> ShutdownReport {
        let shared = &self.shared;
        let deadline_ms = u64::try_from(deadline.as_millis()).unwrap_or(u64::MAX);
        emit(
            shared.observer.as_ref(),
            &shared.node,
            Event::ShutdownBegan { deadline_ms },
        );
        self.token.trigger();
        let wait = if crate::is_planted!(self.plants, IgnoredShutdownDeadline) {
            Duration::from_secs(86_400)
        } else {
            deadline
        };
        let tasks = self.tasks.join_all(shared.clock.as_ref(), wait).await;
        let released = self.release_aborted().await;
        let aborted = tasks.aborted.clone();
        emit(
            shared.observer.as_ref(),
            &shared.node,
            Event::ShutdownEnded {
                aborted,
                released: released.clone(),
            },
        );
        ShutdownReport { tasks, released }
    }

    /// Give back the claims of handlers that were aborted, within one heartbeat
    /// interval; what is not given back in time the rescuer recovers.
    async fn release_aborted(&self) -> Vec<JobId> {
        let shared = &self.shared;
        let left: Vec<_> = std::mem::take(&mut *shared.running())
            .into_values()
            .collect();
        crate::sometimes!(!left.is_empty(), "shutdown_aborts_running_handler");
        let release = async {
            let mut released = Vec::new();
            for running in left {
                // The worker task was aborted before it could say so.
                let (job, attempt) = (running.claim.job, running.claim.attempt);
                let event = Event::HandlerEnded {
                    job,
                    attempt,
                    outcome: "aborted".into(),
                };
                emit(shared.observer.as_ref(), &shared.node, event);
                let fin = Finalize::Snooze {
                    delay: Duration::ZERO,
                };
                let ok = shared
                    .storage
                    .finalize(running.claim, &running.owner, fin)
                    .await;
                if ok.is_ok() {
                    released.push(running.claim.job);
                }
            }
            released
        };
        tokio::select! {
            biased;
            r = release => r,
            () = shared.clock.sleep(shared.cfg.heartbeat_interval) => Vec::new(),
        }
    }
}

/// A job's queue and kind, kept across its enqueue for the metrics feature
/// (empty without it).
struct EnqueueLabels {
    #[cfg(feature = "metrics")]
    queue: String,
    #[cfg(feature = "metrics")]
    kind: String,
}

fn enqueue_labels(req: &EnqueueRequest) -> EnqueueLabels {
    let _ = req;
    EnqueueLabels {
        #[cfg(feature = "metrics")]
        queue: req.queue.clone(),
        #[cfg(feature = "metrics")]
        kind: req.kind.clone(),
    }
}
