//! The maintainer: starts the leader's services for each term it wins, with
//! retries, and resigns the term when they cannot start. See the
//! [module docs](super).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::service::{Service, ServiceCtx, ServiceError, Slot, Tenure, TermHandle, TermServices};
use crate::backoff::Backoff;
use crate::clock::SharedClock;
use crate::events::{emit, Event, SharedObserver};
use crate::leadership::{Elector, Leadership};
#[cfg(feature = "planted-bugs")]
use crate::planted::PlantedBugs;
use crate::shutdown::{ShutdownToken, TaskRegistry};
use crate::storage::{SharedStorage, Term};

/// Maintainer settings.
#[derive(Clone, Debug)]
pub struct MaintainerConfig {
    /// Start attempts per term before giving up and resigning.
    pub start_attempts_max: u32,
    /// Backoff between attempts (1s, 2s, 4s, ... by default).
    pub backoff: Backoff,
    /// How long one start attempt may take before it counts as failed.
    pub start_attempt_timeout: Duration,
    /// Seed of the RNG that draws backoff jitter.
    pub rng_seed: u64,
    /// Bugs switched on for the simulator.
    #[cfg(feature = "planted-bugs")]
    pub plants: PlantedBugs,
}

/// A setting of [`MaintainerConfig`] that cannot work; names the field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid maintainer config: {field}: {reason}")]
pub struct MaintainerConfigError {
    /// The offending field.
    pub field: &'static str,
    /// Why it is refused.
    pub reason: String,
}

impl MaintainerConfig {
    /// Attempts default: 1s + 2s + 4s + 8s of backoff, about a quarter minute of
    /// trying before handing leadership to another node.
    pub const START_ATTEMPTS_MAX_DEFAULT: u32 = 5;
    /// Upper bound on attempts: past this, a broken start hook would keep a node
    /// leading without maintenance for hours.
    pub const START_ATTEMPTS_LIMIT: u32 = 16;
    /// Upper bound on any one wait: a leader that waits longer than this to start
    /// its maintenance is better off resigning, and the bound keeps
    /// [`give_up_bound`](Self::give_up_bound) far from overflow.
    pub const DURATION_LIMIT: Duration = Duration::from_secs(3600);
    /// Per-attempt timeout default.
    pub const START_ATTEMPT_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);

    /// Defaults, with jitter drawn from `rng_seed`.
    pub fn new(rng_seed: u64) -> Self {
        Self {
            start_attempts_max: Self::START_ATTEMPTS_MAX_DEFAULT,
            backoff: Backoff {
                base: Duration::from_secs(1),
                max: Duration::from_secs(30),
                jitter_ratio: 0.1,
            },
            start_attempt_timeout: Self::START_ATTEMPT_TIMEOUT_DEFAULT,
            rng_seed,
            #[cfg(feature = "planted-bugs")]
            plants: PlantedBugs::none(),
        }
    }

    /// Check the settings.
    pub fn validate(&self) -> Result<(), MaintainerConfigError> {
        let err = |field, reason: &str| {
            Err(MaintainerConfigError {
                field,
                reason: reason.to_owned(),
            })
        };
        if !(1..=Self::START_ATTEMPTS_LIMIT).contains(&self.start_attempts_max) {
            return err("start_attempts_max", "must be in 1..=16");
        }
        if self.start_attempt_timeout.is_zero() || self.start_attempt_timeout > Self::DURATION_LIMIT
        {
            return err(
                "start_attempt_timeout",
                "must be positive and at most an hour",
            );
        }
        if !(0.0..=1.0).contains(&self.backoff.jitter_ratio) {
            return err("backoff.jitter_ratio", "must be in 0..=1");
        }
        if self.backoff.base.is_zero() || self.backoff.max < self.backoff.base {
            return err("backoff", "base must be positive and at most max");
        }
        if self.backoff.max > Self::DURATION_LIMIT {
            return err("backoff.max", "must be at most an hour");
        }
        Ok(())
    }

    /// The longest a term can go without running services or resigning, when
    /// storage answers: every attempt timing out plus every backoff at its maximum.
    pub fn give_up_bound(&self) -> Duration {
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let no_jitter = Backoff {
            jitter_ratio: 0.0,
            ..self.backoff
        };
        let backoffs: Duration = (1..self.start_attempts_max)
            .map(|a| {
                no_jitter
                    .delay(a, &mut rng)
                    .mul_f64(1.0 + self.backoff.jitter_ratio)
            })
            .sum();
        self.start_attempt_timeout * self.start_attempts_max + backoffs
    }
}

/// Starts and stops the leader's services as terms come and go.
pub struct Maintainer {
    cfg: MaintainerConfig,
    elector: Arc<Elector>,
    services: Vec<Arc<dyn Service>>,
    storage: SharedStorage,
    clock: SharedClock,
    observer: SharedObserver,
    slot: Arc<Mutex<Slot>>,
    rng: Mutex<ChaCha8Rng>,
    /// Set while a `run` is in progress: a second one is refused.
    running: AtomicBool,
    /// How many runs have started; each run's attempts are bound to its number.
    runs: AtomicU64,
}

impl std::fmt::Debug for Maintainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Maintainer")
            .field("holder", &self.elector.holder())
            .finish_non_exhaustive()
    }
}

/// The term the maintainer works for, and the token that cancels its start.
struct Current {
    tenure: Tenure,
    start_cancel: ShutdownToken,
}

/// Marks a maintainer as running for as long as one `run` lasts, however it
/// ends (returned or aborted).
struct RunGuard<'a>(&'a AtomicBool);

impl Drop for RunGuard<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

impl Maintainer {
    /// A maintainer that follows `elector` and runs `services` for each term.
    pub fn new(
        cfg: MaintainerConfig,
        elector: Arc<Elector>,
        services: Vec<Arc<dyn Service>>,
        storage: SharedStorage,
        clock: SharedClock,
        observer: SharedObserver,
    ) -> Result<Arc<Self>, MaintainerConfigError> {
        cfg.validate()?;
        let rng = Mutex::new(ChaCha8Rng::seed_from_u64(cfg.rng_seed));
        let slot = Arc::default();
        Ok(Arc::new(Self {
            cfg,
            elector,
            services,
            storage,
            clock,
            observer,
            slot,
            rng,
            running: AtomicBool::new(false),
            runs: AtomicU64::new(0),
        }))
    }

    /// The term whose services run now, if any.
    pub fn running_term(&self) -> Option<Term> {
        self.slot().running.as_ref().map(|(_, s)| s.term())
    }

    fn slot(&self) -> MutexGuard<'_, Slot> {
        self.slot.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn emit(&self, event: Event) {
        emit(self.observer.as_ref(), self.elector.holder(), event);
    }

    fn handle(&self, tenure: Tenure) -> TermHandle {
        TermHandle::new(
            tenure,
            self.elector.holder().to_owned(),
            self.slot.clone(),
            self.observer.clone(),
        )
    }

    /// Follow leadership until `shutdown`; start tasks go into `tasks`.
    ///
    /// A maintainer can run again after a run returned: the new run starts the
    /// services of the term held then, and nothing the stopped run's start
    /// attempts finish later can be installed, since each attempt is bound to its
    /// run as well as its term. A second `run` while one is in progress is a
    /// no-op that returns at once.
    pub async fn run(self: Arc<Self>, shutdown: ShutdownToken, tasks: TaskRegistry) {
        if self.running.swap(true, Ordering::SeqCst) {
            tracing::warn!(holder = %self.elector.holder(), "Maintainer::run while a run is in progress: ignored");
            return;
        }
        let _running = RunGuard(&self.running);
        let run = self.runs.fetch_add(1, Ordering::SeqCst) + 1;
        let mut changes = self.elector.subscribe();
        let mut current: Option<Current> = None;
        loop {
            let leadership = *changes.borrow_and_update();
            match leadership {
                Leadership::Leader(term)
                    if current.as_ref().map(|c| c.tenure.term) != Some(term) =>
                {
                    self.end_term(current.take());
                    let tenure = Tenure { run, term };
                    current = Some(self.begin_term(tenure, &shutdown, &tasks));
                }
                Leadership::Follower if current.is_some() => self.end_term(current.take()),
                _ => {}
            }
            tokio::select! {
                biased;
                () = shutdown.wait() => break,
                changed = changes.changed() => if changed.is_err() { break },
            }
        }
        self.end_term(current.take());
    }

    fn begin_term(
        self: &Arc<Self>,
        tenure: Tenure,
        shutdown: &ShutdownToken,
        tasks: &TaskRegistry,
    ) -> Current {
        let stale = {
            let mut slot = self.slot();
            slot.wanted = Some(tenure);
            slot.running.take()
        };
        // Only one run at a time and every run stops what it installed before it
        // returns, so nothing can be running here; stop it if it ever is rather
        // than run two terms' services side by side.
        debug_assert!(stale.is_none(), "a previous tenure's services still ran");
        if let Some((_, services)) = stale {
            services.stop();
        }
        let start_cancel = shutdown.child();
        let this = self.clone();
        let cancel = start_cancel.clone();
        let parent = tasks.clone();
        let name = format!("maintainer_start_{}", tenure.term.0);
        tasks.spawn(name, async move {
            this.start_with_retries(tenure, cancel, &parent).await;
        });
        Current {
            tenure,
            start_cancel,
        }
    }

    fn end_term(&self, current: Option<Current>) {
        let Some(current) = current else { return };
        current.start_cancel.trigger();
        {
            let mut slot = self.slot();
            if slot.wanted == Some(current.tenure) {
                slot.wanted = None;
            }
        }
        self.handle(current.tenure).stop();
    }

    /// Start the services for `tenure`'s term, retrying with backoff; resign the
    /// term when every attempt failed and this node still holds it.
    async fn start_with_retries(
        &self,
        tenure: Tenure,
        cancel: ShutdownToken,
        tasks: &TaskRegistry,
    ) {
        let term = tenure.term;
        // Planted `stale_resign` (002): the retry loop runs where it cannot hear of
        // the term's loss, so it keeps retrying after the term is gone.
        let cancel = if crate::is_planted!(self.cfg.plants, StaleResign) {
            ShutdownToken::new()
        } else {
            cancel
        };
        let handle = self.handle(tenure);
        let attempts = self.cfg.start_attempts_max;
        for attempt in 1..=attempts {
            if cancel.is_triggered() {
                return;
            }
            self.emit(Event::MaintainerStartAttempt { term, attempt });
            let services = TermServices::new(term, tasks.child(cancel.child()));
            let started = self.start_once(&services).await;
            // The attempt ran past the end of its term (hooks may ignore
            // cancellation): what it started must not reach another term.
            crate::sometimes!(
                cancel.is_triggered() || self.slot().wanted != Some(tenure),
                "stale_retry_after_term_change"
            );
            match started {
                Ok(()) => {
                    handle.install(services);
                    return;
                }
                Err(e) => {
                    self.emit(Event::MaintainerStartFailed {
                        term,
                        attempt,
                        error: e.to_string(),
                    });
                    services.stop();
                    if crate::is_planted!(self.cfg.plants, CrossTermStop) {
                        #[cfg(feature = "planted-bugs")]
                        handle.stop_whatever_runs();
                    }
                }
            }
            if attempt == attempts {
                break;
            }
            let delay = {
                let mut rng = self.rng.lock().unwrap_or_else(|p| p.into_inner());
                self.cfg.backoff.delay(attempt, &mut *rng)
            };
            // Planted `start_retry_without_backoff` retries at once.
            let delay = if crate::is_planted!(self.cfg.plants, StartRetryWithoutBackoff) {
                Duration::ZERO
            } else {
                delay
            };
            tokio::select! {
                biased;
                () = cancel.wait() => return,
                () = self.clock.sleep(delay) => {}
            }
        }
        self.emit(Event::MaintainerRetriesExhausted { term });
        let still_ours = !cancel.is_triggered() && self.elector.holds(term);
        if still_ours || crate::is_planted!(self.cfg.plants, StaleResign) {
            self.emit(Event::ResignRequested { term });
            self.elector.request_resign(term);
        }
    }

    /// One attempt: start every service in order, within the attempt timeout.
    async fn start_once(&self, services: &TermServices) -> Result<(), ServiceError> {
        let ctx = ServiceCtx {
            term: services.term(),
            lease_name: self.elector.lease_name().to_owned(),
            holder: self.elector.holder().to_owned(),
            token: services.token().clone(),
            tasks: services.tasks().clone(),
            clock: self.clock.clone(),
            storage: self.storage.clone(),
            observer: self.observer.clone(),
            elector: self.elector.clone(),
        };
        let all = async {
            for service in &self.services {
                service.start(&ctx).await?;
            }
            Ok(())
        };
        tokio::select! {
            biased;
            r = all => r,
            () = self.clock.sleep(self.cfg.start_attempt_timeout) => Err(ServiceError::Timeout),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Clock;
    use crate::leadership::ElectorConfig;
    use crate::storage::MemStorage;
    use crate::test_support::{FlakyStorage, Recorder, ScriptedService, Step, TestClock};
    use tokio::time::Instant;

    const LEASE: &str = "maintainer";

    /// One node: an elector and a maintainer on a partitionable storage.
    struct Node {
        elector: Arc<Elector>,
        maintainer: Arc<Maintainer>,
        storage: Arc<FlakyStorage>,
        mem: Arc<MemStorage>,
        clock: Arc<TestClock>,
        events: Arc<Recorder>,
        shutdown: ShutdownToken,
        tasks: TaskRegistry,
    }

    /// Defaults without jitter, so backoff delays are exactly 1 s, 2 s, 4 s, ...
    fn no_jitter() -> MaintainerConfig {
        let mut cfg = MaintainerConfig::new(7);
        cfg.backoff.jitter_ratio = 0.0;
        cfg
    }

    fn start_node(cfg: MaintainerConfig, service: &Arc<ScriptedService>) -> Node {
        build_node(cfg, service, true)
    }

    /// A node with its elector running; its maintainer too when `run_maintainer`
    /// (otherwise the test runs it on tokens of its own).
    fn build_node(
        cfg: MaintainerConfig,
        service: &Arc<ScriptedService>,
        run_maintainer: bool,
    ) -> Node {
        let clock = TestClock::new();
        let mem = Arc::new(MemStorage::with_clock(clock.clone()));
        let storage = FlakyStorage::new(mem.clone());
        let events = Recorder::new();
        let elector = Elector::new(
            ElectorConfig::new(LEASE, "a"),
            storage.clone(),
            clock.clone(),
            events.clone(),
        )
        .expect("default elector config is valid");
        let services: Vec<Arc<dyn Service>> = vec![service.clone()];
        let maintainer = Maintainer::new(
            cfg,
            elector.clone(),
            services,
            storage.clone(),
            clock.clone(),
            events.clone(),
        )
        .expect("maintainer config is valid");
        let shutdown = ShutdownToken::new();
        let tasks = TaskRegistry::new(shutdown.clone());
        tasks.spawn("elector", elector.clone().run(shutdown.clone()));
        if run_maintainer {
            tasks.spawn(
                "maintainer",
                maintainer.clone().run(shutdown.clone(), tasks.clone()),
            );
        }
        Node {
            elector,
            maintainer,
            storage,
            mem,
            clock,
            events,
            shutdown,
            tasks,
        }
    }

    impl Node {
        /// Shut down and require every tracked task to end cleanly (a panic in a
        /// tracked task is caught, so only this join reports it).
        async fn stop(self) {
            self.shutdown.trigger();
            let report = self
                .tasks
                .join_all(self.clock.as_ref(), Duration::from_secs(120))
                .await;
            assert!(report.is_clean(), "{report:?}");
            assert_eq!(self.maintainer.running_term(), None, "stopped at shutdown");
        }

        fn index_of(&self, what: &str, pred: impl Fn(&Event) -> bool) -> usize {
            self.events
                .find(pred)
                .unwrap_or_else(|| panic!("no {what}: {:#?}", self.events.events()))
                .0
        }

        fn cross_term_stops(&self) -> Vec<Event> {
            self.events
                .events()
                .into_iter()
                .filter(|e| {
                    matches!(e, Event::MaintainerStopped { asked_by, affected } if asked_by != affected)
                })
                .collect()
        }
    }

    fn is_term_lost(e: &Event) -> bool {
        matches!(e, Event::TermLost { .. })
    }

    #[tokio::test(start_paused = true)]
    async fn on_winning_a_term_the_services_start_and_running_term_is_some() {
        let service = ScriptedService::new([], Step::Succeed);
        let node = start_node(no_jitter(), &service);

        let (started_idx, _, _) = node
            .events
            .wait_for("MaintainerStarted", |e| {
                matches!(e, Event::MaintainerStarted { .. })
            })
            .await;
        assert_eq!(
            node.events.events()[started_idx],
            Event::MaintainerStarted { term: Term(1) }
        );
        assert_eq!(node.maintainer.running_term(), Some(Term(1)));
        let won = node.index_of("TermWon{T1}", |e| {
            matches!(e, Event::TermWon { term: Term(1), .. })
        });
        let attempt = node.index_of("attempt 1", |e| {
            *e == Event::MaintainerStartAttempt {
                term: Term(1),
                attempt: 1,
            }
        });
        assert!(won < attempt && attempt < started_idx);
        let terms: Vec<Term> = service.calls().into_iter().map(|(_, t)| t).collect();
        assert_eq!(terms, [Term(1)], "started once, for T1");

        // Still running a while later, one start only.
        node.clock.sleep(Duration::from_secs(10)).await;
        assert_eq!(node.maintainer.running_term(), Some(Term(1)));
        assert!(node.elector.holds(Term(1)));
        assert_eq!(service.calls().len(), 1);
        node.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_start_is_retried_with_exponential_backoff_then_the_term_is_resigned() {
        let mut cfg = no_jitter();
        cfg.start_attempts_max = 4;
        let service = ScriptedService::new([], Step::Fail);
        let node = start_node(cfg, &service);

        let (lost_idx, _, lost) = node.events.wait_for("TermLost", is_term_lost).await;
        assert_eq!(
            lost,
            Event::TermLost {
                term: Term(1),
                reason: "resigned".to_owned()
            },
            "the first loss is the resignation: {:#?}",
            node.events.events()
        );

        let timed = node.events.timed();
        let attempts: Vec<(Instant, u32)> = timed
            .iter()
            .filter_map(|(at, e)| match e {
                Event::MaintainerStartAttempt { term, attempt } if *term == Term(1) => {
                    Some((*at, *attempt))
                }
                _ => None,
            })
            .collect();
        assert_eq!(
            attempts.iter().map(|(_, n)| *n).collect::<Vec<_>>(),
            [1, 2, 3, 4]
        );
        let gaps: Vec<Duration> = attempts.windows(2).map(|w| w[1].0 - w[0].0).collect();
        for (gap, want) in gaps.iter().zip([1, 2, 4].map(Duration::from_secs)) {
            let off = gap.abs_diff(want);
            assert!(off <= Duration::from_millis(10), "gaps {gaps:?}");
        }
        for attempt in 1..=4 {
            node.index_of("start failed", |e| {
                matches!(e, Event::MaintainerStartFailed { term, attempt: a, .. } if *term == Term(1) && *a == attempt)
            });
        }

        let last_failed = node.index_of("attempt 4 failed", |e| {
            matches!(e, Event::MaintainerStartFailed { attempt: 4, .. })
        });
        let exhausted = node.index_of("exhausted", |e| {
            *e == Event::MaintainerRetriesExhausted { term: Term(1) }
        });
        let requested = node.index_of("ResignRequested", |e| {
            *e == Event::ResignRequested { term: Term(1) }
        });
        let resigned = node.index_of("Resigned", |e| {
            *e == Event::Resigned {
                term: Term(1),
                accepted: true,
            }
        });
        assert!(
            last_failed < exhausted
                && exhausted < requested
                && requested < lost_idx
                && lost_idx < resigned,
            "{:#?}",
            node.events.events()
        );
        assert_eq!(
            timed[exhausted].0, attempts[3].0,
            "gave up right after the last failure"
        );
        assert!(!node.elector.holds(Term(1)));
        assert_eq!(node.maintainer.running_term(), None);
        let lease = node.mem.lease(LEASE).expect("row kept");
        assert_eq!((lease.term, lease.holder), (Term(1), None));
        node.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn losing_the_term_cancels_the_retries_and_nothing_is_resigned_after() {
        let mut cfg = no_jitter();
        cfg.start_attempts_max = 5;
        let service = ScriptedService::new([], Step::Fail);
        let node = start_node(cfg, &service);

        node.events
            .wait_for("attempt 1 failed", |e| {
                matches!(e, Event::MaintainerStartFailed { attempt: 1, .. })
            })
            .await;
        node.storage.set_failing(true);
        let (lost_idx, lost_at, lost) = node.events.wait_for("TermLost", is_term_lost).await;
        assert_eq!(
            lost,
            Event::TermLost {
                term: Term(1),
                reason: "trust_window_expired".to_owned()
            }
        );
        // Uncancelled, attempt 5 would come 1+2+4+8 = 15 s after attempt 1; wait
        // well past that.
        node.clock.sleep(Duration::from_secs(30)).await;

        let timed = node.events.timed();
        let after: Vec<&Event> = timed[lost_idx + 1..].iter().map(|(_, e)| e).collect();
        assert!(
            !after.iter().any(|e| matches!(
                e,
                Event::ResignRequested { .. }
                    | Event::MaintainerStartAttempt { .. }
                    | Event::MaintainerRetriesExhausted { .. }
            )),
            "after the loss: {after:#?}"
        );
        // The one resign after the loss is the elector's own best-effort
        // resign of the term whose trust window closed (unheard: storage fails).
        let resigns: Vec<&&Event> = after
            .iter()
            .filter(|e| matches!(e, Event::Resigned { .. }))
            .collect();
        assert_eq!(
            resigns,
            [&&Event::Resigned {
                term: Term(1),
                accepted: false
            }],
            "after the loss: {after:#?}"
        );
        assert!(
            node.events
                .find(|e| matches!(e, Event::ResignRequested { .. }))
                .is_none(),
            "{:#?}",
            node.events.events()
        );
        assert!(service.calls().iter().all(|(at, _)| *at < lost_at));
        assert_eq!(node.maintainer.running_term(), None);
        node.stop().await;
    }

    /// Term T1's first start sleeps 20 s and then fails, ignoring cancellation. The
    /// node loses T1 to a partition at 4 s, wins T2 at 5 s and installs T2's
    /// services; then the stale T1 attempt returns its error. Returns the node at
    /// 5 s after that, with T2 won.
    async fn stale_start_after_a_newer_term_started(cfg: MaintainerConfig) -> (Node, Term) {
        let mut cfg = cfg;
        cfg.start_attempt_timeout = Duration::from_secs(60);
        let stale = Duration::from_secs(20);
        let service = ScriptedService::new([Step::SleepThenFail(stale)], Step::Succeed);
        let node = start_node(cfg, &service);

        node.events
            .wait_for("attempt for T1", |e| {
                *e == Event::MaintainerStartAttempt {
                    term: Term(1),
                    attempt: 1,
                }
            })
            .await;
        node.storage.set_failing(true);
        node.events.wait_for("TermLost", is_term_lost).await;
        node.storage.set_failing(false);
        let (_, _, won) = node
            .events
            .wait_for(
                "a second TermWon",
                |e| matches!(e, Event::TermWon { term, .. } if *term > Term(1)),
            )
            .await;
        let Event::TermWon { term: newer, .. } = won else {
            unreachable!("matched TermWon")
        };
        node.events
            .wait_for("MaintainerStarted{newer}", |e| {
                *e == Event::MaintainerStarted { term: newer }
            })
            .await;
        assert_eq!(node.maintainer.running_term(), Some(newer));
        assert!(
            node.events
                .find(
                    |e| matches!(e, Event::MaintainerStartFailed { term, .. } if *term == Term(1))
                )
                .is_none(),
            "the scenario needs T1's attempt still in flight when {newer} starts"
        );

        let (_, failed_at, _) = node
            .events
            .wait_for("T1's stale failure", |e| {
                matches!(e, Event::MaintainerStartFailed { term, attempt: 1, .. } if *term == Term(1))
            })
            .await;
        let first_call = service.calls()[0];
        assert_eq!(first_call.1, Term(1));
        assert_eq!(failed_at - first_call.0, stale);
        node.clock.sleep(Duration::from_secs(5)).await;
        (node, newer)
    }

    #[tokio::test(start_paused = true)]
    async fn a_stale_start_attempt_failing_after_a_newer_term_started_does_not_stop_it() {
        let (node, newer) = stale_start_after_a_newer_term_started(no_jitter()).await;
        assert!(
            node.cross_term_stops().is_empty(),
            "{:#?}",
            node.events.events()
        );
        assert_eq!(node.maintainer.running_term(), Some(newer));
        assert!(node.elector.holds(newer));
        assert!(
            node.events
                .find(|e| matches!(e, Event::ResignRequested { .. }))
                .is_none(),
            "{:#?}",
            node.events.events()
        );
        node.stop().await;
    }

    #[cfg(feature = "planted-bugs")]
    #[tokio::test(start_paused = true)]
    async fn planted_cross_term_stop_lets_a_stale_start_attempt_stop_the_newer_term() {
        use crate::planted::{Bug, PlantedBugs};
        let mut cfg = no_jitter();
        cfg.plants = PlantedBugs::only(Bug::CrossTermStop);
        let (node, newer) = stale_start_after_a_newer_term_started(cfg).await;
        assert_eq!(
            node.cross_term_stops(),
            [Event::MaintainerStopped {
                asked_by: Term(1),
                affected: newer
            }]
        );
        assert_eq!(
            node.maintainer.running_term(),
            None,
            "the newer term's services are gone"
        );
        assert!(node.elector.holds(newer), "while the node still leads it");
        node.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_maintainer_run_again_while_the_stopped_runs_start_is_in_flight_runs_healthy_services(
    ) {
        // The stopped run's start takes 3 s; the new run's 5 s. The old attempt
        // finishes first, after its run was stopped.
        let service = ScriptedService::new(
            [
                Step::SleepThenTick(Duration::from_secs(3)),
                Step::SleepThenTick(Duration::from_secs(5)),
            ],
            Step::Succeed,
        );
        let mut cfg = no_jitter();
        cfg.start_attempt_timeout = Duration::from_secs(60);
        let node = build_node(cfg, &service, false);
        let (elector, maintainer, clock, events) = (
            node.elector.clone(),
            node.maintainer.clone(),
            node.clock.clone(),
            node.events.clone(),
        );
        let (shutdown, tasks) = (node.shutdown.clone(), node.tasks.clone());

        let first = shutdown.child();
        let run = tokio::spawn(maintainer.clone().run(first.clone(), tasks.clone()));
        events
            .wait_for("attempt 1 for T1", |e| {
                matches!(e, Event::MaintainerStartAttempt { term: Term(1), .. })
            })
            .await;
        clock.sleep(Duration::from_secs(1)).await;
        first.trigger();
        run.await.expect("the stopped run returns");
        let second = shutdown.child();
        let run2 = tokio::spawn(maintainer.clone().run(second.clone(), tasks.clone()));

        clock.sleep(Duration::from_secs(10)).await;
        assert!(elector.holds(Term(1)), "the elector kept its term");
        assert_eq!(maintainer.running_term(), Some(Term(1)));
        let before = service.ticks();
        clock.sleep(Duration::from_secs(2)).await;
        assert!(
            service.ticks() >= before + 10,
            "the running services tick: {before} then {}; {:#?}",
            service.ticks(),
            events.events()
        );
        second.trigger();
        run2.await.expect("the second run returns");
        assert_eq!(maintainer.running_term(), None);
        node.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_second_concurrent_run_is_a_no_op_and_never_panics() {
        let service = ScriptedService::new([], Step::Succeed);
        let node = start_node(no_jitter(), &service);
        node.events
            .wait_for("MaintainerStarted{T1}", |e| {
                *e == Event::MaintainerStarted { term: Term(1) }
            })
            .await;
        let again = tokio::spawn(
            node.maintainer
                .clone()
                .run(node.shutdown.clone(), node.tasks.clone()),
        );
        let returned = tokio::time::timeout(Duration::from_secs(1), again).await;
        returned
            .expect("the second run returns at once")
            .expect("and does not panic");
        node.clock.sleep(Duration::from_secs(3)).await;
        assert_eq!(node.maintainer.running_term(), Some(Term(1)));
        let starts = node
            .events
            .events()
            .into_iter()
            .filter(|e| matches!(e, Event::MaintainerStarted { .. }))
            .count();
        assert_eq!(starts, 1, "{:#?}", node.events.events());
        node.stop().await;
    }

    #[test]
    fn validate_rejects_zero_start_attempts_naming_the_field() {
        let mut cfg = MaintainerConfig::new(1);
        cfg.validate().expect("defaults are valid");
        cfg.start_attempts_max = 0;
        let err = cfg.validate().expect_err("zero attempts");
        assert_eq!(err.field, "start_attempts_max");
        assert!(err.to_string().contains("start_attempts_max"), "{err}");

        let elector = Elector::new(
            ElectorConfig::new(LEASE, "a"),
            Arc::new(MemStorage::new()),
            Arc::new(crate::clock::SystemClock::new()),
            Arc::new(crate::events::NoopObserver),
        )
        .expect("default elector config is valid");
        let err = Maintainer::new(
            cfg.clone(),
            elector,
            Vec::new(),
            Arc::new(MemStorage::new()),
            Arc::new(crate::clock::SystemClock::new()),
            Arc::new(crate::events::NoopObserver),
        )
        .expect_err("the maintainer validates too");
        assert_eq!(err.field, "start_attempts_max");

        cfg.start_attempts_max = 1;
        cfg.validate().expect("one attempt is enough");
    }
}
