//! The elector: acquires, renews and resigns the leader lease. See the
//! [module docs](super) for the design.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::clock::SharedClock;
use crate::events::{emit, Event, SharedObserver};
#[cfg(feature = "planted-bugs")]
use crate::planted::PlantedBugs;
use crate::shutdown::ShutdownToken;
use crate::storage::{SharedStorage, Term};

/// What a node believes about its leadership.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Leadership {
    /// Not leading.
    Follower,
    /// Leading the given term, inside its trust window.
    Leader(Term),
}

/// Elector settings. Build with [`ElectorConfig::new`], adjust, then
/// [`validate`](ElectorConfig::validate) (the elector does it again on construction).
#[derive(Clone, Debug)]
pub struct ElectorConfig {
    /// Which lease to contend for.
    pub lease_name: String,
    /// This node's identity as a lease holder. Must be unique in the cluster.
    pub holder: String,
    /// How long a grant lasts in storage unless renewed.
    pub lease_ttl: Duration,
    /// How often the leader renews.
    pub renew_interval: Duration,
    /// Subtracted from the TTL to get the trust window; absorbs clock skew between
    /// this node and the clock that judges expiry.
    pub safety_margin: Duration,
    /// How often a follower tries to acquire.
    pub acquire_interval: Duration,
    /// After resigning, how long to stay out so another node can take over.
    pub resign_cooldown: Duration,
    /// Bugs switched on for the simulator.
    #[cfg(feature = "planted-bugs")]
    pub plants: PlantedBugs,
}

/// A setting of [`ElectorConfig`] that cannot work; names the field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid elector config: {field}: {reason}")]
pub struct ElectorConfigError {
    /// The offending field.
    pub field: &'static str,
    /// Why it is refused.
    pub reason: String,
}

impl ElectorConfig {
    /// Lease TTL default: long enough to ride out a few lost renewals.
    pub const LEASE_TTL_DEFAULT: Duration = Duration::from_secs(5);
    /// Renew interval default: several renewals fit in one TTL.
    pub const RENEW_INTERVAL_DEFAULT: Duration = Duration::from_secs(1);
    /// Safety margin default: the clock skew between nodes that leadership tolerates.
    pub const SAFETY_MARGIN_DEFAULT: Duration = Duration::from_secs(1);
    /// Acquire interval default.
    pub const ACQUIRE_INTERVAL_DEFAULT: Duration = Duration::from_secs(1);
    /// Resign cooldown default: one TTL, so a peer gets a fair chance.
    pub const RESIGN_COOLDOWN_DEFAULT: Duration = Duration::from_secs(5);

    /// Defaults for `holder` contending for `lease_name`.
    pub fn new(lease_name: impl Into<String>, holder: impl Into<String>) -> Self {
        Self {
            lease_name: lease_name.into(),
            holder: holder.into(),
            lease_ttl: Self::LEASE_TTL_DEFAULT,
            renew_interval: Self::RENEW_INTERVAL_DEFAULT,
            safety_margin: Self::SAFETY_MARGIN_DEFAULT,
            acquire_interval: Self::ACQUIRE_INTERVAL_DEFAULT,
            resign_cooldown: Self::RESIGN_COOLDOWN_DEFAULT,
            #[cfg(feature = "planted-bugs")]
            plants: PlantedBugs::none(),
        }
    }

    /// Check that the settings can work together.
    pub fn validate(&self) -> Result<(), ElectorConfigError> {
        let err = |field, reason: &str| {
            Err(ElectorConfigError {
                field,
                reason: reason.to_owned(),
            })
        };
        if self.lease_name.is_empty() {
            return err("lease_name", "must not be empty");
        }
        if self.holder.is_empty() {
            return err("holder", "must not be empty");
        }
        if self.renew_interval.is_zero() || self.acquire_interval.is_zero() {
            return err("renew_interval", "intervals must be positive");
        }
        // The trust window must leave room for at least one renewal attempt,
        // or a leader would step down before it ever tried to renew.
        if self.lease_ttl <= self.safety_margin + self.renew_interval {
            return err("lease_ttl", "must exceed safety_margin + renew_interval");
        }
        Ok(())
    }
}

struct State {
    leadership: Leadership,
    trusted_until: Option<Instant>,
}

/// Acquires and keeps the leader lease. See the [module docs](super).
pub struct Elector {
    cfg: ElectorConfig,
    storage: SharedStorage,
    clock: SharedClock,
    observer: SharedObserver,
    state: Mutex<State>,
    changes: watch::Sender<Leadership>,
    resign_tx: mpsc::UnboundedSender<Term>,
    resign_rx: Mutex<Option<mpsc::UnboundedReceiver<Term>>>,
}

impl std::fmt::Debug for Elector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Elector")
            .field("holder", &self.cfg.holder)
            .finish_non_exhaustive()
    }
}

/// Why a leader stopped leading.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StepDown {
    TrustWindowExpired,
    LeaseMovedOn,
    Resigned,
    Shutdown,
}

impl StepDown {
    fn as_str(self) -> &'static str {
        match self {
            StepDown::TrustWindowExpired => "trust_window_expired",
            StepDown::LeaseMovedOn => "lease_moved_on",
            StepDown::Resigned => "resigned",
            StepDown::Shutdown => "shutdown",
        }
    }
}

impl Elector {
    /// A new elector; call [`run`](Self::run) to start contending.
    pub fn new(
        cfg: ElectorConfig,
        storage: SharedStorage,
        clock: SharedClock,
        observer: SharedObserver,
    ) -> Result<Arc<Self>, ElectorConfigError> {
        cfg.validate()?;
        let (changes, _) = watch::channel(Leadership::Follower);
        let (resign_tx, resign_rx) = mpsc::unbounded_channel();
        Ok(Arc::new(Self {
            cfg,
            storage,
            clock,
            observer,
            state: Mutex::new(State {
                leadership: Leadership::Follower,
                trusted_until: None,
            }),
            changes,
            resign_tx,
            resign_rx: Mutex::new(Some(resign_rx)),
        }))
    }

    /// This node's holder id.
    pub fn holder(&self) -> &str {
        &self.cfg.holder
    }

    /// The lease this elector contends for.
    pub fn lease_name(&self) -> &str {
        &self.cfg.lease_name
    }

    /// Leadership changes, latest value first. Intermediate values may be skipped;
    /// compare terms rather than counting notifications.
    pub fn subscribe(&self) -> watch::Receiver<Leadership> {
        self.changes.subscribe()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether this node holds `term` right now: it won it, has not stepped down,
    /// and the trust window is still open.
    pub fn holds(&self, term: Term) -> bool {
        let state = self.state();
        state.leadership == Leadership::Leader(term)
            && state
                .trusted_until
                .is_some_and(|t| self.clock.monotonic() < t)
    }

    /// Ask the elector to resign `term`. It does so only if it still holds exactly
    /// `term` when it handles the request; a request for any other term is dropped.
    pub fn request_resign(&self, term: Term) {
        // The receiver lives as long as `run`; after it returned there is nothing
        // left to resign, so a send error is not a failure.
        let _ = self.resign_tx.send(term);
    }

    fn emit(&self, event: Event) {
        emit(self.observer.as_ref(), &self.cfg.holder, event);
    }

    fn set(&self, leadership: Leadership, trusted_until: Option<Instant>) {
        {
            let mut state = self.state();
            state.leadership = leadership;
            state.trusted_until = trusted_until;
        }
        self.changes.send_replace(leadership);
    }

    async fn sleep_until(&self, deadline: Instant) {
        let left = deadline.saturating_duration_since(self.clock.monotonic());
        self.clock.sleep(left).await;
    }

    /// Contend for the lease until `shutdown`. On shutdown a held term is resigned
    /// so a peer can take over without waiting for the TTL.
    ///
    /// # Panics
    ///
    /// If called twice on the same elector.
    pub async fn run(self: Arc<Self>, shutdown: ShutdownToken) {
        let taken = self
            .resign_rx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let mut resign_rx = taken.expect("Elector::run called twice");
        while let Some((term, trusted_until)) = self.acquire(&shutdown).await {
            self.set(Leadership::Leader(term), Some(trusted_until));
            self.emit(Event::TermWon { term });
            let why = self
                .lead(term, trusted_until, &shutdown, &mut resign_rx)
                .await;
            self.set(Leadership::Follower, None);
            self.emit(Event::TermLost {
                term,
                reason: why.as_str().to_owned(),
            });
            if why == StepDown::Shutdown {
                return;
            }
            if why == StepDown::Resigned {
                tokio::select! {
                    biased;
                    () = shutdown.wait() => return,
                    () = self.clock.sleep(self.cfg.resign_cooldown) => {}
                }
            }
        }
    }

    /// Follower phase: try to acquire until granted (`Some`) or shut down (`None`).
    async fn acquire(&self, shutdown: &ShutdownToken) -> Option<(Term, Instant)> {
        let cfg = &self.cfg;
        loop {
            let started = self.clock.monotonic();
            let attempt = self.storage.try_acquire(
                &cfg.lease_name,
                &cfg.holder,
                cfg.lease_ttl,
                self.clock.now(),
            );
            let granted = tokio::select! {
                biased;
                () = shutdown.wait() => return None,
                r = attempt => r,
            };
            if let Ok(Some(lease)) = granted {
                let trusted_until = started + cfg.lease_ttl - cfg.safety_margin;
                // A reply that took longer than the trust window is useless: the
                // grant may already be someone else's. Try again for a new term.
                if self.clock.monotonic() < trusted_until {
                    return Some((lease.term, trusted_until));
                }
            }
            tokio::select! {
                biased;
                () = shutdown.wait() => return None,
                () = self.clock.sleep(cfg.acquire_interval) => {}
            }
        }
    }

    /// Leader phase: renew inside the trust window until something ends `term`.
    async fn lead(
        &self,
        term: Term,
        mut trusted_until: Instant,
        shutdown: &ShutdownToken,
        resign_rx: &mut mpsc::UnboundedReceiver<Term>,
    ) -> StepDown {
        let cfg = &self.cfg;
        let mut next_renew = self.clock.monotonic() + cfg.renew_interval;
        loop {
            tokio::select! {
                biased;
                () = shutdown.wait() => {
                    self.resign_in_storage(term).await;
                    return StepDown::Shutdown;
                }
                Some(asked) = resign_rx.recv() => {
                    if asked == term || crate::is_planted!(cfg.plants, StaleResign) {
                        self.resign_in_storage(term).await;
                        return StepDown::Resigned;
                    }
                    tracing::debug!(holder = %cfg.holder, %asked, %term, "ignoring resign of a term not held");
                    continue;
                }
                () = self.sleep_until(next_renew.min(trusted_until)) => {}
            }
            if self.clock.monotonic() >= trusted_until {
                return StepDown::TrustWindowExpired;
            }
            let attempt_start = self.clock.monotonic();
            let renew = self.storage.renew(
                &cfg.lease_name,
                &cfg.holder,
                term,
                cfg.lease_ttl,
                self.clock.now(),
            );
            let renewed = tokio::select! {
                biased;
                () = self.sleep_until(trusted_until) => return StepDown::TrustWindowExpired,
                r = renew => r,
            };
            match renewed {
                Ok(true) => {
                    trusted_until =
                        trusted_until.max(attempt_start + cfg.lease_ttl - cfg.safety_margin);
                    self.state().trusted_until = Some(trusted_until);
                    next_renew = attempt_start + cfg.renew_interval;
                    self.emit(Event::TermRenewed { term });
                }
                Ok(false) => return StepDown::LeaseMovedOn,
                // Keep trying while the window is open; a quarter interval keeps a
                // transient error from costing the lease.
                Err(_) => next_renew = self.clock.monotonic() + cfg.renew_interval / 4,
            }
        }
    }

    async fn resign_in_storage(&self, term: Term) {
        // Step down locally first: from here on this node must not act for `term`,
        // whether or not storage hears about it.
        self.set(Leadership::Follower, None);
        let cfg = &self.cfg;
        let accepted = matches!(
            self.storage
                .resign(&cfg.lease_name, &cfg.holder, term)
                .await,
            Ok(true)
        );
        self.emit(Event::Resigned { term, accepted });
    }
}
