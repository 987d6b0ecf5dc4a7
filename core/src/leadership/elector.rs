//! The elector: acquires, renews and resigns the leader lease. See the
//! [module docs](super) for the design.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::Instrument;

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
    /// Subtracted from the TTL to get the trust window: absorbs how far this
    /// node's clock may run slow, and storage's fast, within one TTL. Must be at
    /// least `lease_ttl * 2d / (1 + d)` for `d = clock_drift_max_ppm / 10⁶`
    /// ([`trust_bound`](crate::clock::trust_bound)); wall-clock skew needs none,
    /// since trust is counted on the monotonic clock and storage's clock alone
    /// judges expiry.
    pub safety_margin: Duration,
    /// How far, in parts per million, any host's clock may run fast or slow:
    /// this node's and storage's. `validate` refuses a `safety_margin` too small
    /// for it.
    pub clock_drift_max_ppm: u32,
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
    /// Safety margin default: ten times what the default TTL needs at
    /// [`CLOCK_DRIFT_MAX_PPM_DEFAULT`](crate::clock::CLOCK_DRIFT_MAX_PPM_DEFAULT)
    /// (99 ms), so a deployment may raise the drift bound to 10% unchanged.
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
            clock_drift_max_ppm: crate::clock::CLOCK_DRIFT_MAX_PPM_DEFAULT,
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
        if self.renew_interval.is_zero() {
            return err("renew_interval", "must be positive");
        }
        if self.acquire_interval.is_zero() {
            return err("acquire_interval", "must be positive");
        }
        // The trust window must leave room for at least one renewal attempt,
        // or a leader would step down before it ever tried to renew.
        let needed = self.safety_margin.checked_add(self.renew_interval);
        if needed.is_none_or(|needed| self.lease_ttl <= needed) {
            return err("lease_ttl", "must exceed safety_margin + renew_interval");
        }
        self.validate_drift()
    }

    /// The margin keeps [`trust_bound`](crate::clock::trust_bound)'s relation:
    /// a node running slow by the drift bound, beside storage running fast by
    /// it, stops trusting before storage lets the lease go.
    fn validate_drift(&self) -> Result<(), ElectorConfigError> {
        let ppm = self.clock_drift_max_ppm;
        if ppm > crate::clock::CLOCK_DRIFT_MAX_PPM_LIMIT {
            return Err(ElectorConfigError {
                field: "clock_drift_max_ppm",
                reason: format!(
                    "must be at most {} (20%), got {ppm}",
                    crate::clock::CLOCK_DRIFT_MAX_PPM_LIMIT
                ),
            });
        }
        let trust_max = crate::clock::trust_bound(self.lease_ttl, ppm);
        let margin_min = self.lease_ttl.saturating_sub(trust_max);
        if self.safety_margin < margin_min {
            return Err(ElectorConfigError {
                field: "safety_margin",
                reason: format!(
                    "must be at least lease_ttl * 2d / (1 + d) = {} ms for lease_ttl {} ms and \
                     clock_drift_max_ppm {ppm}, got {} ms: a node whose clock runs slow would \
                     trust past a lease that storage's fast clock lets go",
                    margin_min.as_millis(),
                    self.lease_ttl.as_millis(),
                    self.safety_margin.as_millis()
                ),
            });
        }
        Ok(())
    }
}

struct State {
    leadership: Leadership,
    trusted_until: Option<Instant>,
    /// The newest term this elector was granted (`Term(0)`: none yet): sent
    /// with every acquire, so a late one of its own cannot evict a term it
    /// won since ([`LeaseStore::try_acquire_fenced`](crate::storage::LeaseStore::try_acquire_fenced)).
    known: Term,
}

/// The resign channel's receiving end, lent to one run at a time: taking it is
/// how a run proves it is the only one, and dropping it (a run that returned or
/// was aborted) hands it back so the elector can run again.
struct ResignInbox {
    elector: Arc<Elector>,
    rx: Option<mpsc::UnboundedReceiver<Term>>,
}

impl ResignInbox {
    fn take(elector: &Arc<Elector>) -> Option<Self> {
        let rx = elector
            .resign_rx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()?;
        Some(Self {
            elector: elector.clone(),
            rx: Some(rx),
        })
    }

    fn rx(&mut self) -> &mut mpsc::UnboundedReceiver<Term> {
        self.rx
            .as_mut()
            .expect("the inbox holds its receiver until dropped")
    }
}

impl Drop for ResignInbox {
    fn drop(&mut self) {
        let Some(mut rx) = self.rx.take() else { return };
        // Requests made for this run's terms die with it.
        while rx.try_recv().is_ok() {}
        let elector = &self.elector;
        {
            let mut state = elector.state();
            state.leadership = Leadership::Follower;
            state.trusted_until = None;
        }
        elector.changes.send_replace(Leadership::Follower);
        *elector.resign_rx.lock().unwrap_or_else(|p| p.into_inner()) = Some(rx);
    }
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
                known: Term(0),
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

    /// The bugs planted in this elector; its term's services read them too.
    #[cfg(feature = "planted-bugs")]
    pub(crate) fn plants(&self) -> &PlantedBugs {
        &self.cfg.plants
    }

    /// Leadership and the end of its trust window now: a renewal moves the end
    /// on within one term, which is how a coverage mark tells that one happened.
    #[cfg(feature = "coverage")]
    pub(crate) fn trust(&self) -> (Leadership, Option<Instant>) {
        let state = self.state();
        (state.leadership, state.trusted_until)
    }

    /// Ask the elector to resign `term`. A request for a term this node does not
    /// hold right now is dropped at once, so it can never resign a term won
    /// later; a request for the held term is honoured only if the elector still
    /// holds exactly `term` when it handles it.
    pub fn request_resign(&self, term: Term) {
        // Planted `stale_resign` (002) keeps the request whatever it names.
        let held = self.holds(term);
        crate::sometimes!(!held, "resign_request_for_term_not_held");
        if !held && !crate::is_planted!(self.cfg.plants, StaleResign) {
            tracing::debug!(holder = %self.cfg.holder, %term, "dropping resign of a term not held");
            return;
        }
        // The receiver lives as long as `run`; after it returned there is nothing
        // left to resign, so a send error is not a failure.
        let _ = self.resign_tx.send(term);
    }

    fn emit(&self, event: Event) {
        emit(self.observer.as_ref(), &self.cfg.holder, event);
    }

    /// How long from now the node trusts a window ending at `trusted_until`.
    fn trusted_for_ms(&self, trusted_until: Instant) -> u64 {
        let left = trusted_until.saturating_duration_since(self.clock.monotonic());
        u64::try_from(left.as_millis()).unwrap_or(u64::MAX)
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
    /// An elector can run again after a run returned (or was aborted): it starts
    /// as a follower. A second `run` while one is in progress is a no-op that
    /// returns at once, so one elector never contends twice.
    pub async fn run(self: Arc<Self>, shutdown: ShutdownToken) {
        let span =
            tracing::info_span!("elector", node = %self.cfg.holder, lease = %self.cfg.lease_name);
        let Some(mut resign_rx) = ResignInbox::take(&self) else {
            tracing::warn!(holder = %self.cfg.holder, "Elector::run while a run is in progress: ignored");
            return;
        };
        self.clone()
            .contend(shutdown, &mut resign_rx)
            .instrument(span)
            .await;
    }

    async fn contend(self: Arc<Self>, shutdown: ShutdownToken, inbox: &mut ResignInbox) {
        let resign_rx = inbox.rx();
        while let Some((term, trusted_until)) = self.acquire(&shutdown).await {
            // A request queued before this term was won names another term (the
            // request-time check drops unheld ones); never let it reach `lead`.
            while resign_rx.try_recv().is_ok() {}
            self.set(Leadership::Leader(term), Some(trusted_until));
            let trusted_for_ms = self.trusted_for_ms(trusted_until);
            self.emit(Event::TermWon {
                term,
                trusted_for_ms,
            });
            crate::metrics::leading(&self.cfg.lease_name, true);
            let why = self.lead(term, trusted_until, &shutdown, resign_rx).await;
            // Planted `resign_before_step_down` frees the lease while still believing.
            let resign_first = crate::is_planted!(self.cfg.plants, ResignBeforeStepDown)
                && why != StepDown::LeaseMovedOn;
            if resign_first {
                self.send_resign(term).await;
            }
            self.set(Leadership::Follower, None);
            crate::metrics::leading(&self.cfg.lease_name, false);
            self.emit(Event::TermLost {
                term,
                reason: why.as_str().to_owned(),
            });
            // TermLost marks the belief's end, so it comes before the resign: a
            // successor may be granted the moment storage hears it.
            // Planted `shutdown_skips_resign` leaves the lease to run out.
            let skip = why == StepDown::Shutdown
                && crate::is_planted!(self.cfg.plants, ShutdownSkipsResign);
            if why != StepDown::LeaseMovedOn && !resign_first && !skip {
                // After a closed window storage may only have been slow (or this
                // process frozen): a resign it hears lets a successor in at once
                // instead of after the rest of the TTL, and being term-scoped it
                // cannot touch a newer term.
                self.resign_in_storage(term).await;
            }
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
            // Planted `incarnation_blind_holder` is keel before incarnations,
            // whose acquires named no term either.
            let known = Some(self.state().known)
                .filter(|_| !crate::is_planted!(cfg.plants, IncarnationBlindHolder));
            let attempt =
                self.storage
                    .try_acquire_fenced(&cfg.lease_name, &cfg.holder, cfg.lease_ttl, known);
            let trusted_until = started + self.trust_window();
            // A reply later than the trust window is useless, so the call is
            // bounded by it, whatever the storage's own timeouts are.
            let granted = tokio::select! {
                biased;
                () = shutdown.wait() => return None,
                r = attempt => r,
                () = self.sleep_until(trusted_until) => Ok(None),
            };
            if let Ok(Some(lease)) = granted {
                {
                    let mut state = self.state();
                    state.known = state.known.max(lease.term);
                }
                let now = self.clock.monotonic();
                self.mark_late_reply(started, now);
                self.mark_reply_near_trust_end(trusted_until);
                if now < trusted_until {
                    // Planted `trust_from_reply` counts the window from the reply,
                    // so a slow reply stretches trust past the lease.
                    if crate::is_planted!(cfg.plants, TrustFromReply) {
                        return Some((lease.term, now + self.trust_window()));
                    }
                    return Some((lease.term, trusted_until));
                }
                crate::sometimes!("grant_too_late_to_trust");
                // Granted too late to trust: give the term back (term-scoped, so
                // harmless if it moved on) rather than make peers wait out the TTL.
                self.resign_in_storage(lease.term).await;
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
                () = shutdown.wait() => return StepDown::Shutdown,
                Some(asked) = resign_rx.recv() => {
                    if asked == term || crate::is_planted!(cfg.plants, StaleResign) {
                        return StepDown::Resigned;
                    }
                    tracing::debug!(holder = %cfg.holder, %asked, %term, "ignoring resign of a term not held");
                    continue;
                }
                () = self.sleep_until(next_renew.min(trusted_until)) => {}
            }
            if self.clock.monotonic() >= trusted_until {
                return self.trust_window_closed(trusted_until);
            }
            let attempt_start = self.clock.monotonic();
            let renew = self
                .storage
                .renew(&cfg.lease_name, &cfg.holder, term, cfg.lease_ttl);
            let renewed = tokio::select! {
                biased;
                () = shutdown.wait() => return StepDown::Shutdown,
                () = self.sleep_until(trusted_until) => {
                    return self.trust_window_closed(trusted_until);
                }
                r = renew => r,
            };
            // Planted `renew_error_extends_trust` takes an unanswered renewal for
            // a granted one ("the write probably landed").
            let renewed = match renewed {
                Err(_) if crate::is_planted!(cfg.plants, RenewErrorExtendsTrust) => Ok(true),
                r => r,
            };
            match renewed {
                Ok(true) => {
                    self.mark_late_reply(attempt_start, self.clock.monotonic());
                    self.mark_reply_near_trust_end(trusted_until);
                    // The window counts from the request's send, never its reply:
                    // storage started the TTL no earlier than that.
                    let anchor = if crate::is_planted!(cfg.plants, TrustFromReply) {
                        self.clock.monotonic()
                    } else {
                        attempt_start
                    };
                    trusted_until = trusted_until.max(anchor + self.trust_window());
                    self.state().trusted_until = Some(trusted_until);
                    next_renew = attempt_start + cfg.renew_interval;
                    let trusted_for_ms = self.trusted_for_ms(trusted_until);
                    self.emit(Event::TermRenewed {
                        term,
                        trusted_for_ms,
                    });
                }
                Ok(false) => {
                    crate::sometimes!("renewal_refused_lease_moved_on");
                    return StepDown::LeaseMovedOn;
                }
                // Keep trying while the window is open; a quarter interval keeps a
                // transient error from costing the lease.
                Err(_) => next_renew = self.clock.monotonic() + cfg.renew_interval / 4,
            }
        }
    }

    /// Coverage: a grant or renewal sent at `sent` answered at `answered`,
    /// later than the safety margin allows for.
    fn mark_late_reply(&self, sent: Instant, answered: Instant) {
        crate::sometimes!(
            answered.saturating_duration_since(sent) > self.cfg.safety_margin,
            "lease_reply_after_safety_margin"
        );
    }

    /// Coverage: a grant or renewal answered inside the last safety margin of
    /// the window it was to start or extend: the late reply a margin exists for.
    fn mark_reply_near_trust_end(&self, trusted_until: Instant) {
        let left = trusted_until.saturating_duration_since(self.clock.monotonic());
        crate::sometimes!(
            !left.is_zero() && left <= self.cfg.safety_margin,
            "lease_reply_in_last_margin_of_trust"
        );
    }

    /// How long a grant or renewal is trusted from its send: the TTL less the
    /// margin that covers clock drift ([`crate::clock::trust_bound`]).
    fn trust_window(&self) -> Duration {
        // Planted `trust_whole_ttl` spends the margin: "trust counts on the
        // monotonic clock and storage alone judges expiry, so skew needs none".
        if crate::is_planted!(self.cfg.plants, TrustWholeTtl) {
            return self.cfg.lease_ttl;
        }
        self.cfg.lease_ttl - self.cfg.safety_margin
    }

    /// The trust window closed without a renewal: step down (the caller then
    /// resigns the term best-effort, see `contend`).
    fn trust_window_closed(&self, trusted_until: Instant) -> StepDown {
        crate::sometimes!("trust_window_closed_while_leading");
        // Woke a whole renew interval late: the process was frozen (or its
        // runtime starved) across the window's end, a zombie leader waking.
        crate::sometimes!(
            self.clock.monotonic() > trusted_until + self.cfg.renew_interval,
            "leader_woke_long_after_its_trust_window"
        );
        self.set(Leadership::Follower, None);
        StepDown::TrustWindowExpired
    }

    async fn resign_in_storage(&self, term: Term) {
        // Step down locally first: from here on this node must not act for `term`,
        // whether or not storage hears about it.
        self.set(Leadership::Follower, None);
        self.send_resign(term).await;
    }

    /// Resign `term` in storage, bounded, and report it.
    async fn send_resign(&self, term: Term) {
        let cfg = &self.cfg;
        // Bounded: a resign is a courtesy that shortens the handover; the lease
        // expires on its own, and shutdown must not hang on an unanswered call.
        let resign = self.storage.resign(&cfg.lease_name, &cfg.holder, term);
        let accepted = tokio::select! {
            biased;
            r = resign => matches!(r, Ok(true)),
            () = self.clock.sleep(cfg.renew_interval) => false,
        };
        self.emit(Event::Resigned { term, accepted });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Clock;
    use crate::storage::MemStorage;
    use crate::test_support::{FlakyStorage, Recorder, TestClock, WAIT_MAX};

    const LEASE: &str = "maintainer";

    /// One elector with its own view of the shared storage and its own events.
    struct Node {
        elector: Arc<Elector>,
        storage: Arc<FlakyStorage>,
        events: Arc<Recorder>,
    }

    fn node(holder: &str, mem: &Arc<MemStorage>, clock: &Arc<TestClock>) -> Node {
        let storage = FlakyStorage::new(mem.clone());
        let events = Recorder::new();
        let elector = Elector::new(
            ElectorConfig::new(LEASE, holder),
            storage.clone(),
            clock.clone(),
            events.clone(),
        )
        .expect("default config is valid");
        Node {
            elector,
            storage,
            events,
        }
    }

    fn spawn(elector: &Arc<Elector>, shutdown: &ShutdownToken) -> tokio::task::JoinHandle<()> {
        tokio::spawn(elector.clone().run(shutdown.clone()))
    }

    /// Wait (at most `WAIT_MAX` of test time) until `elector`'s leadership matches.
    async fn wait_leadership(
        elector: &Elector,
        what: &str,
        pred: impl Fn(Leadership) -> bool,
    ) -> Leadership {
        let mut rx = elector.subscribe();
        let seen = tokio::time::timeout(WAIT_MAX, async {
            loop {
                let now = *rx.borrow_and_update();
                if pred(now) {
                    return now;
                }
                rx.changed().await.expect("the elector owns the sender");
            }
        })
        .await;
        seen.unwrap_or_else(|_| panic!("{} never became {what}", elector.holder()))
    }

    fn is_leader(l: Leadership) -> bool {
        matches!(l, Leadership::Leader(_))
    }

    /// `[won, lost)` intervals of every term a node led, from its events; a term
    /// still led at the end runs to `end`.
    fn leader_intervals(events: &Recorder, end: Instant) -> Vec<(Term, Instant, Instant)> {
        let mut out = Vec::new();
        let mut open: Option<(Term, Instant)> = None;
        for (at, e) in events.timed() {
            match e {
                Event::TermWon { term, .. } => {
                    assert!(open.is_none(), "won {term} while leading {open:?}");
                    open = Some((term, at));
                }
                Event::TermLost { term, .. } => {
                    let (won, since) = open.take().expect("lost a term never won");
                    assert_eq!(won, term, "lost a term other than the one led");
                    out.push((term, since, at));
                }
                _ => {}
            }
        }
        if let Some((term, since)) = open {
            out.push((term, since, end));
        }
        out
    }

    #[tokio::test(start_paused = true)]
    async fn a_single_elector_wins_term_1_renews_it_and_holds_it() {
        let clock = TestClock::new();
        let mem = Arc::new(MemStorage::with_clock(clock.clone()));
        let a = node("a", &mem, &clock);
        let shutdown = ShutdownToken::new();
        let run = spawn(&a.elector, &shutdown);

        let led = wait_leadership(&a.elector, "leader", is_leader).await;
        assert_eq!(led, Leadership::Leader(Term(1)));
        assert!(a.elector.holds(Term(1)));
        assert!(!a.elector.holds(Term(2)), "holds only the term it won");
        let (_, won_at, _) = a
            .events
            .wait_for("TermWon", |e| matches!(e, Event::TermWon { .. }))
            .await;

        let (_, renewed_at, _) = a
            .events
            .wait_for("TermRenewed{T1}", |e| {
                matches!(e, Event::TermRenewed { term: Term(1), .. })
            })
            .await;
        let cfg = ElectorConfig::new(LEASE, "a");
        assert!(
            renewed_at - won_at <= cfg.renew_interval,
            "first renewal after {:?}, interval {:?}",
            renewed_at - won_at,
            cfg.renew_interval
        );

        // Well past the first TTL: only renewals can have kept it.
        clock.sleep(cfg.lease_ttl * 2).await;
        assert!(a.elector.holds(Term(1)));
        assert_eq!(*a.elector.subscribe().borrow(), Leadership::Leader(Term(1)));
        let renewals = a
            .events
            .events()
            .iter()
            .filter(|e| matches!(e, Event::TermRenewed { term: Term(1), .. }))
            .count();
        assert!(renewals >= 9, "only {renewals} renewals in ~10 s");
        assert!(
            a.events
                .find(|e| matches!(e, Event::TermLost { .. }))
                .is_none(),
            "{:#?}",
            a.events.events()
        );
        let lease = mem.lease(LEASE).expect("granted");
        assert_eq!(lease.term, Term(1));
        assert_eq!(lease.holder.as_deref(), Some("a"));
        assert!(lease.is_live(clock.now()), "renewals keep the lease live");

        shutdown.trigger();
        run.await.expect("elector run did not panic");
        assert!(!a.elector.holds(Term(1)));
        assert_eq!(
            mem.lease(LEASE).expect("row").holder,
            None,
            "shutdown resigns"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn two_electors_lead_one_at_a_time_and_a_partitioned_leader_steps_down_within_its_trust_window(
    ) {
        let clock = TestClock::new();
        let mem = Arc::new(MemStorage::with_clock(clock.clone()));
        let a = node("a", &mem, &clock);
        let b = node("b", &mem, &clock);
        let cfg = ElectorConfig::new(LEASE, "a");
        let shutdown = ShutdownToken::new();

        let run_a = spawn(&a.elector, &shutdown);
        wait_leadership(&a.elector, "leader", is_leader).await;
        let run_b = spawn(&b.elector, &shutdown);

        // Sample both beliefs every 10 ms for the whole test.
        let stop_sampling = ShutdownToken::new();
        let sampler = {
            let (ea, eb, stop) = (a.elector.clone(), b.elector.clone(), stop_sampling.clone());
            tokio::spawn(async move {
                let mut both = Vec::new();
                loop {
                    let (la, lb) = (*ea.subscribe().borrow(), *eb.subscribe().borrow());
                    if is_leader(la) && is_leader(lb) {
                        both.push((Instant::now(), la, lb)); // determinism-ok: tokio Instant, simulated
                    }
                    tokio::select! {
                        biased;
                        () = stop.wait() => return both,
                        () = tokio::time::sleep(Duration::from_millis(10)) => {}
                    }
                }
            })
        };

        // Off the renewal grid (renewals land on whole seconds).
        clock.sleep(Duration::from_millis(3_500)).await;
        assert_eq!(*a.elector.subscribe().borrow(), Leadership::Leader(Term(1)));
        assert_eq!(*b.elector.subscribe().borrow(), Leadership::Follower);
        assert!(
            b.events.events().is_empty(),
            "b never won: {:#?}",
            b.events.events()
        );

        let failed_at = Instant::now(); // determinism-ok: tokio Instant, simulated
        a.storage.set_failing(true);
        let (_, lost_at, lost) = a
            .events
            .wait_for("TermLost", |e| matches!(e, Event::TermLost { .. }))
            .await;
        assert_eq!(
            lost,
            Event::TermLost {
                term: Term(1),
                reason: "trust_window_expired".to_owned()
            }
        );
        // With a storage that answers at once, a renewal is emitted at the instant
        // its attempt started; the acquire likewise at TermWon.
        let last_ok_attempt = a
            .events
            .timed()
            .into_iter()
            .filter(|(_, e)| {
                matches!(e, Event::TermWon { term, .. } | Event::TermRenewed { term, .. } if *term == Term(1))
            })
            .map(|(at, _)| at)
            .max()
            .expect("won T1");
        assert!(last_ok_attempt <= failed_at);
        let window_end = last_ok_attempt + cfg.lease_ttl - cfg.safety_margin;
        assert!(
            lost_at <= window_end,
            "stepped down {:?} after the trust window closed",
            lost_at - window_end
        );
        assert!(
            lost_at > failed_at,
            "stepped down before storage failed or while it still answered"
        );
        assert!(!a.elector.holds(Term(1)));

        let (_, b_won_at, b_won) = b
            .events
            .wait_for("TermWon", |e| matches!(e, Event::TermWon { .. }))
            .await;
        let Event::TermWon { term: b_term, .. } = b_won else {
            unreachable!("matched TermWon")
        };
        assert!(b_term > Term(1), "b won {b_term}, not above T1");
        assert!(b_won_at >= lost_at, "b won before a stepped down");
        assert_eq!(*b.elector.subscribe().borrow(), Leadership::Leader(b_term));
        assert!(b.elector.holds(b_term));

        // b keeps it; a, still partitioned, never wins again.
        clock.sleep(cfg.lease_ttl * 2).await;
        assert!(b.elector.holds(b_term));
        assert_eq!(*a.elector.subscribe().borrow(), Leadership::Follower);

        stop_sampling.trigger();
        let both = sampler.await.expect("sampler did not panic");
        assert!(both.is_empty(), "both led at once: {both:?}");
        let end = Instant::now(); // determinism-ok: tokio Instant, simulated
        for (ta, a_from, a_to) in leader_intervals(&a.events, end) {
            for (tb, b_from, b_to) in leader_intervals(&b.events, end) {
                assert!(
                    a_to <= b_from || b_to <= a_from,
                    "a led {ta} and b led {tb} at the same time"
                );
            }
        }

        shutdown.trigger();
        run_a.await.expect("a did not panic");
        run_b.await.expect("b did not panic");
    }

    #[tokio::test(start_paused = true)]
    async fn request_resign_is_ignored_for_a_term_not_held_and_honoured_for_the_held_term() {
        let clock = TestClock::new();
        let mem = Arc::new(MemStorage::with_clock(clock.clone()));
        let a = node("a", &mem, &clock);
        let cfg = ElectorConfig::new(LEASE, "a");
        let shutdown = ShutdownToken::new();
        let run = spawn(&a.elector, &shutdown);
        wait_leadership(&a.elector, "leader", is_leader).await;

        a.elector.request_resign(Term(0));
        a.elector.request_resign(Term(7));
        clock.sleep(Duration::from_millis(2_500)).await;
        assert!(
            a.events
                .find(|e| matches!(e, Event::Resigned { .. }))
                .is_none(),
            "{:#?}",
            a.events.events()
        );
        assert!(a
            .events
            .find(|e| matches!(e, Event::TermLost { .. }))
            .is_none());
        assert_eq!(*a.elector.subscribe().borrow(), Leadership::Leader(Term(1)));
        assert!(a.elector.holds(Term(1)));
        assert_eq!(mem.lease(LEASE).expect("row").holder.as_deref(), Some("a"));

        a.elector.request_resign(Term(1));
        let (lost_idx, lost_at, lost) = a
            .events
            .wait_for("TermLost", |e| matches!(e, Event::TermLost { .. }))
            .await;
        assert_eq!(
            lost,
            Event::TermLost {
                term: Term(1),
                reason: "resigned".to_owned()
            }
        );
        let (resigned_idx, _, resigned) = a
            .events
            .wait_for("Resigned", |e| matches!(e, Event::Resigned { .. }))
            .await;
        assert_eq!(
            resigned,
            Event::Resigned {
                term: Term(1),
                accepted: true
            }
        );
        // The belief ends before storage hears the resign, which may let a
        // successor in at once.
        assert!(lost_idx < resigned_idx, "TermLost before Resigned");
        let lease = mem.lease(LEASE).expect("row kept");
        assert_eq!(lease.term, Term(1));
        assert_eq!(lease.holder, None);
        assert_eq!(*a.elector.subscribe().borrow(), Leadership::Follower);
        assert!(!a.elector.holds(Term(1)));

        // It stays out for the cooldown, then contends again for a new term.
        let (_, rewon_at, rewon) = a
            .events
            .wait_for("TermWon{T2}", |e| {
                matches!(e, Event::TermWon { term: Term(2), .. })
            })
            .await;
        assert!(matches!(rewon, Event::TermWon { term: Term(2), .. }));
        assert!(rewon_at - lost_at >= cfg.resign_cooldown);

        shutdown.trigger();
        run.await.expect("elector run did not panic");
    }

    #[tokio::test(start_paused = true)]
    async fn a_resign_request_made_while_not_leader_is_dropped_and_never_resigns_a_term_won_later()
    {
        let clock = TestClock::new();
        let mem = Arc::new(MemStorage::with_clock(clock.clone()));
        let a = node("a", &mem, &clock);
        // Asked before it ever led: for the very term it will win.
        a.elector.request_resign(Term(1));
        let shutdown = ShutdownToken::new();
        let run = spawn(&a.elector, &shutdown);
        wait_leadership(&a.elector, "leader", is_leader).await;
        clock.sleep(Duration::from_secs(3)).await;
        assert!(a.elector.holds(Term(1)), "{:#?}", a.events.events());
        assert!(
            a.events
                .find(|e| matches!(e, Event::Resigned { .. } | Event::TermLost { .. }))
                .is_none(),
            "{:#?}",
            a.events.events()
        );
        shutdown.trigger();
        run.await.expect("no panic");
    }

    #[tokio::test(start_paused = true)]
    async fn a_leader_whose_trust_window_closed_resigns_so_its_successor_need_not_wait_out_the_lease(
    ) {
        let clock = TestClock::new();
        let mem = Arc::new(MemStorage::with_clock(clock.clone()));
        let a = node("a", &mem, &clock);
        let b = node("b", &mem, &clock);
        let cfg = ElectorConfig::new(LEASE, "a");
        let shutdown = ShutdownToken::new();
        let run_a = spawn(&a.elector, &shutdown);
        wait_leadership(&a.elector, "leader", is_leader).await;
        let run_b = spawn(&b.elector, &shutdown);
        // a's renewals and acquires fail (slow or lost on the way); its resign
        // and everything else are served.
        a.storage.fail_lease_grants();
        let (_, lost_at, lost) = a.events.wait_for("TermLost", is_lost).await;
        assert_eq!(
            lost,
            Event::TermLost {
                term: Term(1),
                reason: "trust_window_expired".to_owned()
            }
        );
        assert!(
            a.events
                .find(|e| *e
                    == Event::Resigned {
                        term: Term(1),
                        accepted: true
                    })
                .is_some(),
            "{:#?}",
            a.events.events()
        );
        let (_, b_won_at, _) = b
            .events
            .wait_for("b's TermWon", |e| matches!(e, Event::TermWon { .. }))
            .await;
        // Without the resign b would wait for the lease to expire in storage,
        // a safety margin after the trust window closed.
        assert!(
            b_won_at - lost_at <= cfg.acquire_interval,
            "b won {:?} after a stepped down",
            b_won_at - lost_at
        );
        shutdown.trigger();
        run_a.await.expect("a did not panic");
        run_b.await.expect("b did not panic");
    }

    #[tokio::test(start_paused = true)]
    async fn an_elector_runs_again_after_its_run_returned_and_a_concurrent_second_run_is_a_no_op() {
        let clock = TestClock::new();
        let mem = Arc::new(MemStorage::with_clock(clock.clone()));
        let a = node("a", &mem, &clock);
        let first = ShutdownToken::new();
        let run = spawn(&a.elector, &first);
        wait_leadership(&a.elector, "leader", is_leader).await;
        let again =
            tokio::time::timeout(Duration::from_secs(1), a.elector.clone().run(first.clone()));
        again
            .await
            .expect("a second concurrent run returns at once");
        assert!(a.elector.holds(Term(1)), "and leaves the first run alone");
        first.trigger();
        run.await.expect("no panic");
        assert_eq!(*a.elector.subscribe().borrow(), Leadership::Follower);

        let second = ShutdownToken::new();
        let run = spawn(&a.elector, &second);
        let led = wait_leadership(&a.elector, "leader again", is_leader).await;
        assert_eq!(led, Leadership::Leader(Term(2)));
        second.trigger();
        run.await.expect("no panic");
    }

    fn is_lost(e: &Event) -> bool {
        matches!(e, Event::TermLost { .. })
    }

    #[test]
    fn validate_rejects_a_lease_ttl_not_above_safety_margin_plus_renew_interval() {
        let mut cfg = ElectorConfig::new(LEASE, "a");
        cfg.validate().expect("defaults are valid");

        cfg.lease_ttl = cfg.safety_margin + cfg.renew_interval;
        let err = cfg.validate().expect_err("ttl == margin + interval");
        assert_eq!(err.field, "lease_ttl");
        assert!(err.to_string().contains("lease_ttl"), "{err}");

        cfg.lease_ttl = cfg.safety_margin;
        assert_eq!(cfg.validate().expect_err("ttl < margin").field, "lease_ttl");

        let err = Elector::new(
            cfg.clone(),
            Arc::new(MemStorage::new()),
            Arc::new(crate::clock::SystemClock::new()),
            Arc::new(crate::events::NoopObserver),
        )
        .expect_err("the elector validates too");
        assert_eq!(err.field, "lease_ttl");

        cfg.lease_ttl = cfg.safety_margin + cfg.renew_interval + Duration::from_millis(1);
        cfg.validate().expect("just above the bound");
    }

    #[test]
    fn validate_refuses_a_margin_the_drift_bound_cannot_live_with() {
        let mut cfg = ElectorConfig::new(LEASE, "a");
        // 5 s TTL: 10% drift needs 909 ms of margin, 12% needs 1.07 s.
        cfg.clock_drift_max_ppm = 100_000;
        cfg.validate().expect("1 s covers 10%");
        cfg.clock_drift_max_ppm = 120_000;
        let err = cfg.validate().expect_err("1 s does not cover 12%");
        assert_eq!(err.field, "safety_margin");
        assert!(err.reason.contains("1071 ms"), "{err}");
        cfg.safety_margin = Duration::from_millis(1_100);
        cfg.validate().expect("a wider margin does");
        cfg.clock_drift_max_ppm = 250_000;
        assert_eq!(
            cfg.validate().expect_err("past the limit").field,
            "clock_drift_max_ppm"
        );
    }

    #[test]
    fn validate_names_acquire_interval_when_it_is_zero() {
        let mut cfg = ElectorConfig::new(LEASE, "a");
        cfg.acquire_interval = Duration::ZERO;
        let err = cfg.validate().expect_err("zero acquire interval");
        assert_eq!(err.field, "acquire_interval");
    }

    #[test]
    fn validate_rejects_rather_than_panics_on_an_overflowing_safety_margin() {
        let mut cfg = ElectorConfig::new(LEASE, "a");
        cfg.safety_margin = Duration::MAX;
        let err = cfg.validate().expect_err("a margin no TTL can exceed");
        assert_eq!(err.field, "lease_ttl");
    }
}
