//! The maintainer: starts the leader's services for each term it wins, with
//! retries, and resigns the term when they cannot start. See the
//! [module docs](super).

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::service::{Service, ServiceCtx, ServiceError, Slot, TermHandle, TermServices};
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
        if self.start_attempt_timeout.is_zero() {
            return err("start_attempt_timeout", "must be positive");
        }
        if !(0.0..=1.0).contains(&self.backoff.jitter_ratio) {
            return err("backoff.jitter_ratio", "must be in 0..=1");
        }
        if self.backoff.base.is_zero() || self.backoff.max < self.backoff.base {
            return err("backoff", "base must be positive and at most max");
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
    term: Term,
    start_cancel: ShutdownToken,
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
        }))
    }

    /// The term whose services run now, if any.
    pub fn running_term(&self) -> Option<Term> {
        self.slot().running.as_ref().map(TermServices::term)
    }

    fn slot(&self) -> MutexGuard<'_, Slot> {
        self.slot.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn emit(&self, event: Event) {
        emit(self.observer.as_ref(), self.elector.holder(), event);
    }

    fn handle(&self, term: Term) -> TermHandle {
        TermHandle::new(
            term,
            self.elector.holder().to_owned(),
            self.slot.clone(),
            self.observer.clone(),
        )
    }

    /// Follow leadership until `shutdown`; start tasks go into `tasks`.
    pub async fn run(self: Arc<Self>, shutdown: ShutdownToken, tasks: TaskRegistry) {
        let mut changes = self.elector.subscribe();
        let mut current: Option<Current> = None;
        loop {
            let leadership = *changes.borrow_and_update();
            match leadership {
                Leadership::Leader(term) if current.as_ref().map(|c| c.term) != Some(term) => {
                    self.end_term(current.take());
                    current = Some(self.begin_term(term, &shutdown, &tasks));
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
        term: Term,
        shutdown: &ShutdownToken,
        tasks: &TaskRegistry,
    ) -> Current {
        {
            let mut slot = self.slot();
            assert!(
                slot.running.is_none(),
                "the previous term's services were stopped"
            );
            slot.wanted = Some(term);
        }
        let start_cancel = shutdown.child();
        let this = self.clone();
        let cancel = start_cancel.clone();
        tasks.spawn(format!("maintainer_start_{}", term.0), async move {
            this.start_with_retries(term, cancel).await;
        });
        Current { term, start_cancel }
    }

    fn end_term(&self, current: Option<Current>) {
        let Some(current) = current else { return };
        current.start_cancel.trigger();
        self.slot().wanted = None;
        self.handle(current.term).stop();
    }

    /// Start the services for `term`, retrying with backoff; resign `term` when
    /// every attempt failed and this node still holds it.
    async fn start_with_retries(&self, term: Term, cancel: ShutdownToken) {
        // Planted `stale_resign` (002): the retry loop runs where it cannot hear of
        // the term's loss, so it keeps retrying after the term is gone.
        let cancel = if crate::is_planted!(self.cfg.plants, StaleResign) {
            ShutdownToken::new()
        } else {
            cancel
        };
        let handle = self.handle(term);
        let attempts = self.cfg.start_attempts_max;
        for attempt in 1..=attempts {
            if cancel.is_triggered() {
                return;
            }
            self.emit(Event::MaintainerStartAttempt { term, attempt });
            let services = TermServices::new(term, cancel.child());
            match self.start_once(&services).await {
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
