//! The watcher: supervises named periodic loops so that none of them fails alone
//! or silently.
//!
//! Each loop calls its [`PeriodicTask`] once per period, on an interval with
//! [`MissedTickBehavior::Skip`]: a slow round is followed by one tick, not by a
//! burst of catch-up ticks. All loops run in one [`JoinSet`]:
//!
//! * The **first loop to end** (its tick returned an error, its tick panicked, or
//!   the watcher's token was triggered) stops every sibling: each loop checks the
//!   stop signal before each tick. A tick already running is allowed to finish.
//! * The watcher then **drains** every loop before it returns.
//! * [`Watcher::run`] returns the **first** error or panic, naming its loop. A
//!   panic inside a tick is caught and reported, never dropped and never allowed
//!   to tear down the runtime. Later failures are logged and reported as
//!   [`Event::LoopEnded`]; only if every loop ended because of shutdown does
//!   `run` return `Ok`, with each loop's tick count.
//!
//! Stopping siblings does not trigger the token handed to [`Watcher::new`]; the
//! caller decides what a failed loop means for the rest of the process.
//!
//! ```
//! use std::time::Duration;
//! use keel::clock::SystemClock;
//! use keel::shutdown::ShutdownToken;
//! use keel::watcher::{LoopError, Watcher, WatcherError};
//! # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
//! let clock = std::sync::Arc::new(SystemClock::new());
//! let period = Duration::from_millis(1);
//!
//! // One loop fails on its third tick: its sibling is stopped, the error is returned.
//! let mut watcher = Watcher::new(clock.clone(), ShutdownToken::new());
//! watcher.add_loop("steady", period, || async { Ok(()) })?;
//! let mut n = 0;
//! watcher.add_loop("flaky", period, move || {
//!     n += 1;
//!     let fail = n == 3;
//!     async move { if fail { Err(LoopError::new("index gone")) } else { Ok(()) } }
//! })?;
//! let err = watcher.run().await.unwrap_err();
//! assert_eq!(err, WatcherError::Failed { name: "flaky".into(), reason: "index gone".into() });
//!
//! // Shutdown before the first tick: a clean stop with zero ticks.
//! let token = ShutdownToken::new();
//! token.trigger();
//! let mut watcher = Watcher::new(clock.clone(), token);
//! watcher.add_loop("idle", period, || async { Ok(()) })?;
//! assert_eq!(watcher.run().await?.ticks["idle"], 0);
//!
//! // Names are unique and periods at least a millisecond; nothing to watch is an error.
//! assert!(watcher_with(&clock).add_loop("a", Duration::ZERO, || async { Ok(()) }).is_err());
//! assert_eq!(watcher_with(&clock).run().await, Err(WatcherError::NoLoops));
//! # fn watcher_with(clock: &std::sync::Arc<SystemClock>) -> Watcher {
//! #     Watcher::new(clock.clone(), ShutdownToken::new())
//! # }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
use tokio::task::{Id, JoinError, JoinSet};
use tokio::time::MissedTickBehavior;

use crate::clock::SharedClock;
use crate::events::{emit, Event, SharedObserver};
#[cfg(feature = "coverage")]
use crate::leadership::Elector;
#[cfg(feature = "planted-bugs")]
use crate::planted::PlantedBugs;
use crate::shutdown::{panic_message, CatchUnwind, ShutdownToken};

/// Why one tick failed. Ends its loop and, through the watcher, its siblings.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct LoopError {
    /// What went wrong, as reported to the caller of [`Watcher::run`].
    pub reason: String,
}

impl LoopError {
    /// An error with the given reason.
    pub fn new(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
        }
    }
}

/// The work of one periodic loop, called once per tick.
///
/// Any `FnMut() -> impl Future<Output = Result<(), LoopError>>` closure is a
/// task; implement the trait directly when a tick needs to borrow the task's
/// own state.
#[async_trait]
pub trait PeriodicTask: Send + 'static {
    /// Do one round of work. An `Err` or a panic ends the loop and its siblings.
    async fn tick(&mut self) -> Result<(), LoopError>;
}

#[async_trait]
impl<F, Fut> PeriodicTask for F
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), LoopError>> + Send + 'static,
{
    async fn tick(&mut self) -> Result<(), LoopError> {
        self().await
    }
}

/// A loop [`Watcher::add_loop`] refuses; names the loop.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid watcher loop {name:?}: {reason}")]
pub struct WatcherConfigError {
    /// The loop's name as given.
    pub name: String,
    /// Why it is refused.
    pub reason: &'static str,
}

/// Why [`Watcher::run`] did not end in a clean shutdown: the first failure seen.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WatcherError {
    /// `run` was called with no loop added.
    #[error("the watcher has no loops to run")]
    NoLoops,
    /// A tick returned an error.
    #[error("watcher loop {name:?} failed: {reason}")]
    Failed {
        /// The loop.
        name: String,
        /// The tick's error.
        reason: String,
    },
    /// A tick panicked.
    #[error("watcher loop {name:?} panicked: {message}")]
    Panicked {
        /// The loop.
        name: String,
        /// The panic message.
        message: String,
    },
    /// The runtime cancelled the loop's task (it is shutting down).
    #[error("watcher loop {name:?} was cancelled by the runtime")]
    Cancelled {
        /// The loop.
        name: String,
    },
}

/// A clean shutdown: every loop stopped because it was asked to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WatchReport {
    /// Ticks started by each loop, by loop name.
    pub ticks: BTreeMap<String, u64>,
}

/// How one loop ended.
#[derive(Clone, Debug, PartialEq, Eq)]
enum LoopOutcome {
    Shutdown,
    Failed(String),
    Panicked(String),
    Cancelled,
}

impl LoopOutcome {
    /// The text of [`Event::LoopEnded::outcome`].
    fn describe(&self) -> String {
        match self {
            LoopOutcome::Shutdown => "shutdown".to_owned(),
            LoopOutcome::Failed(reason) => format!("error: {reason}"),
            LoopOutcome::Panicked(message) => format!("panic: {message}"),
            LoopOutcome::Cancelled => "cancelled".to_owned(),
        }
    }

    /// The error `run` returns for this outcome; `None` for a shutdown.
    fn into_error(self, name: String) -> Option<WatcherError> {
        match self {
            LoopOutcome::Shutdown => None,
            LoopOutcome::Failed(reason) => Some(WatcherError::Failed { name, reason }),
            LoopOutcome::Panicked(message) => Some(WatcherError::Panicked { name, message }),
            LoopOutcome::Cancelled => Some(WatcherError::Cancelled { name }),
        }
    }
}

/// What a loop's task hands back to the watcher.
#[derive(Debug)]
struct LoopEnd {
    ticks: u64,
    outcome: LoopOutcome,
}

/// Where loop events go: the observer and node name, if any.
#[derive(Clone, Default)]
struct Sink(Option<(SharedObserver, String)>);

impl Sink {
    fn emit(&self, event: Event) {
        if let Some((observer, node)) = &self.0 {
            emit(observer.as_ref(), node, event);
        }
    }
}

/// One loop as added, before it runs.
struct LoopSpec {
    name: String,
    period: Duration,
    task: Box<dyn PeriodicTask>,
}

/// What every loop shares while it runs.
#[derive(Clone)]
struct LoopCtx {
    clock: SharedClock,
    stop: ShutdownToken,
    missed: MissedTickBehavior,
    sink: Sink,
    /// The node's elector, when coverage should relate slow ticks to renewals.
    #[cfg(feature = "coverage")]
    lease: Option<std::sync::Arc<Elector>>,
}

/// Supervises named periodic loops. See the [module docs](self).
pub struct Watcher {
    clock: SharedClock,
    token: ShutdownToken,
    sink: Sink,
    loops: Vec<LoopSpec>,
    /// Bugs switched on for the simulator.
    #[cfg(feature = "planted-bugs")]
    plants: PlantedBugs,
    #[cfg(feature = "coverage")]
    lease: Option<std::sync::Arc<Elector>>,
}

impl std::fmt::Debug for Watcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.loops.iter().map(|l| l.name.as_str()).collect();
        f.debug_struct("Watcher")
            .field("loops", &names)
            .finish_non_exhaustive()
    }
}

impl Watcher {
    /// The shortest period a loop may have: tokio's timer resolution.
    pub const PERIOD_MIN: Duration = Duration::from_millis(1);

    /// A watcher with no loops yet, whose loops all stop when `token` triggers.
    pub fn new(clock: SharedClock, token: ShutdownToken) -> Self {
        Self {
            clock,
            token,
            sink: Sink::default(),
            loops: Vec::new(),
            #[cfg(feature = "planted-bugs")]
            plants: PlantedBugs::none(),
            #[cfg(feature = "coverage")]
            lease: None,
        }
    }

    /// Watch `elector`'s renewals, so coverage can tell a slow tick that ran
    /// across one (`slow_tick_across_renewal`). Changes nothing else.
    #[cfg(feature = "coverage")]
    pub fn with_elector(mut self, elector: std::sync::Arc<Elector>) -> Self {
        self.lease = Some(elector);
        self
    }

    /// Report every tick and every loop's end to `observer`, as `node`.
    pub fn with_observer(mut self, observer: SharedObserver, node: impl Into<String>) -> Self {
        self.sink = Sink(Some((observer, node.into())));
        self
    }

    /// Switch on planted bugs, for the simulator.
    #[cfg(feature = "planted-bugs")]
    pub fn with_plants(mut self, plants: PlantedBugs) -> Self {
        self.plants = plants;
        self
    }

    /// Add a loop that calls `task` every `period`, first at once when `run`
    /// starts. `name` must be non-empty and unique in this watcher; `period` at
    /// least [`PERIOD_MIN`](Self::PERIOD_MIN).
    pub fn add_loop(
        &mut self,
        name: impl Into<String>,
        period: Duration,
        task: impl PeriodicTask,
    ) -> Result<&mut Self, WatcherConfigError> {
        let name = name.into();
        let refuse = |reason| {
            Err(WatcherConfigError {
                name: name.clone(),
                reason,
            })
        };
        if name.is_empty() {
            return refuse("the name must not be empty");
        }
        if self.loops.iter().any(|l| l.name == name) {
            return refuse("another loop already has this name");
        }
        if period < Self::PERIOD_MIN {
            return refuse("the period must be at least 1ms");
        }
        let task = Box::new(task);
        self.loops.push(LoopSpec { name, period, task });
        Ok(self)
    }

    /// Run every loop until the first one ends, stop the others, wait for all of
    /// them, and return the first failure, or each loop's tick count when all
    /// of them stopped for shutdown.
    pub async fn run(self) -> Result<WatchReport, WatcherError> {
        if self.loops.is_empty() {
            return Err(WatcherError::NoLoops);
        }
        let expected = self.loops.len();
        let swallow = crate::is_planted!(self.plants, SwallowedPanic);
        let ctx = LoopCtx {
            clock: self.clock,
            stop: self.token.child(),
            missed: missed_tick_behavior(crate::is_planted!(self.plants, BurstTicks)),
            sink: self.sink,
            #[cfg(feature = "coverage")]
            lease: self.lease,
        };
        let (mut set, names) = spawn_all(self.loops, &ctx);
        let mut drain = Drain::default();
        while let Some(joined) = set.join_next_with_id().await {
            let (name, end) = resolve(&names, joined);
            if swallow && end.outcome != LoopOutcome::Shutdown {
                continue; // planted: the failure is dropped on the floor
            }
            crate::sometimes!(
                matches!(end.outcome, LoopOutcome::Panicked(_))
                    && !ctx.stop.is_triggered()
                    && !set.is_empty(),
                "loop_panic_stops_siblings"
            );
            ctx.stop.trigger();
            drain.settle(name, end, &ctx.sink);
        }
        assert!(set.is_empty(), "every loop is drained before run returns");
        drain.finish(expected, swallow)
    }
}

/// The interval policy: `Skip`, or `Burst` with the planted bug.
fn missed_tick_behavior(burst_planted: bool) -> MissedTickBehavior {
    if burst_planted {
        MissedTickBehavior::Burst
    } else {
        MissedTickBehavior::Skip
    }
}

/// Spawn every loop into one set; return the set and each task's loop name.
fn spawn_all(loops: Vec<LoopSpec>, ctx: &LoopCtx) -> (JoinSet<LoopEnd>, Vec<(Id, String)>) {
    let mut set = JoinSet::new();
    let mut names = Vec::with_capacity(loops.len());
    for spec in loops {
        let name = spec.name.clone();
        let id = set.spawn(run_loop(spec, ctx.clone())).id();
        names.push((id, name));
    }
    (set, names)
}

/// The loop name and end of a joined task. A task can only fail to join if it
/// panicked outside a tick (e.g. in an observer) or the runtime cancelled it.
fn resolve(names: &[(Id, String)], joined: Result<(Id, LoopEnd), JoinError>) -> (String, LoopEnd) {
    let (id, end) = match joined {
        Ok(pair) => pair,
        Err(e) => {
            let id = e.id();
            let outcome = if e.is_panic() {
                LoopOutcome::Panicked(panic_message(e.into_panic()))
            } else {
                LoopOutcome::Cancelled
            };
            (id, LoopEnd { ticks: 0, outcome })
        }
    };
    let name = names
        .iter()
        .find(|(i, _)| *i == id)
        .map(|(_, n)| n.clone())
        .expect("every task in the set was spawned with a name");
    (name, end)
}

/// What the watcher has learned while draining its loops.
#[derive(Debug, Default)]
struct Drain {
    report: WatchReport,
    first_error: Option<WatcherError>,
    failures: usize,
}

impl Drain {
    /// Record how `name` ended: report it, keep the first failure, log the rest.
    fn settle(&mut self, name: String, end: LoopEnd, sink: &Sink) {
        let outcome = end.outcome.describe();
        sink.emit(Event::LoopEnded {
            name: name.clone(),
            outcome: outcome.clone(),
        });
        match end.outcome.into_error(name.clone()) {
            None => {
                self.report.ticks.insert(name, end.ticks);
            }
            Some(error) => {
                tracing::error!(watcher_loop = %name, %outcome, "watcher loop failed");
                self.failures += 1;
                self.first_error.get_or_insert(error);
            }
        }
    }

    /// The result of `run`, after all `expected` loops were joined.
    fn finish(self, expected: usize, swallowed: bool) -> Result<WatchReport, WatcherError> {
        let settled = self.report.ticks.len() + self.failures;
        assert!(
            settled == expected || (swallowed && settled < expected),
            "{settled} loops settled, {expected} ran"
        );
        match self.first_error {
            Some(error) => Err(error),
            None => Ok(self.report),
        }
    }
}

/// One loop: wait for the next tick unless stopped, run it, until stopped or
/// a tick fails.
async fn run_loop(mut spec: LoopSpec, ctx: LoopCtx) -> LoopEnd {
    let mut interval = ctx.clock.interval(spec.period, ctx.missed);
    let period_ms = u64::try_from(spec.period.as_millis()).unwrap_or(u64::MAX);
    let mut ticks = 0;
    loop {
        tokio::select! {
            biased;
            () = ctx.stop.wait() => {
                return LoopEnd { ticks, outcome: LoopOutcome::Shutdown };
            }
            _ = interval.tick() => {}
        }
        ticks += 1;
        ctx.sink.emit(Event::LoopTick {
            name: spec.name.clone(),
            period_ms,
        });
        #[cfg(feature = "coverage")]
        let before = TickMark::now(&ctx);
        let ended = tick_once(spec.task.as_mut()).await;
        #[cfg(feature = "coverage")]
        before.mark_end(&ctx, spec.period);
        if let Some(outcome) = ended {
            crate::sometimes!(
                matches!(outcome, LoopOutcome::Panicked(_)) && ctx.stop.is_triggered(),
                "panic_during_shutdown"
            );
            return LoopEnd { ticks, outcome };
        }
    }
}

/// When a tick began and where the node's lease stood, for the coverage marks
/// of a slow tick.
#[cfg(feature = "coverage")]
struct TickMark {
    began: tokio::time::Instant,
    lease: Option<(crate::leadership::Leadership, Option<tokio::time::Instant>)>,
}

#[cfg(feature = "coverage")]
impl TickMark {
    fn now(ctx: &LoopCtx) -> Self {
        Self {
            began: ctx.clock.monotonic(),
            lease: ctx.lease.as_ref().map(|e| e.trust()),
        }
    }

    /// Mark a tick that outlasted `period`, and one during which the node stayed
    /// leader of one term and renewed it (its trust window moved on).
    fn mark_end(self, ctx: &LoopCtx, period: Duration) {
        use crate::leadership::Leadership;
        let slow = ctx.clock.monotonic().saturating_duration_since(self.began) > period;
        crate::sometimes!(slow, "slow_tick_outlasts_period");
        let after = ctx.lease.as_ref().map(|e| e.trust());
        let renewed = match (self.lease, after) {
            (Some((Leadership::Leader(a), Some(t0))), Some((Leadership::Leader(b), Some(t1)))) => {
                a == b && t1 > t0
            }
            _ => false,
        };
        crate::sometimes!(slow && renewed, "slow_tick_across_renewal");
    }
}

/// Run one tick; `None` if it succeeded, else how the loop ends.
async fn tick_once(task: &mut dyn PeriodicTask) -> Option<LoopOutcome> {
    let mut result = Ok(());
    let panicked = CatchUnwind(Box::pin(async {
        result = task.tick().await;
    }))
    .await;
    match (panicked, result) {
        (Some(message), _) => Some(LoopOutcome::Panicked(message)),
        (None, Err(e)) => Some(LoopOutcome::Failed(e.reason)),
        (None, Ok(())) => None,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    use tokio::time::Instant;

    use super::*;
    use crate::clock::Clock;
    use crate::test_support::{Recorder, TestClock, WAIT_MAX};

    /// The period of every loop in these tests.
    const PERIOD: Duration = Duration::from_millis(100);
    /// A slow tick: three and a half periods.
    const SLOW_TICK: Duration = Duration::from_millis(350);
    /// How long the pacing tests let a loop run before shutdown.
    const RUN_FOR: Duration = Duration::from_millis(1_050);

    fn watcher(token: &ShutdownToken) -> (Watcher, Arc<Recorder>) {
        let recorder = Recorder::new();
        let watcher =
            Watcher::new(TestClock::new(), token.clone()).with_observer(recorder.clone(), "n1");
        (watcher, recorder)
    }

    /// A task that succeeds, except on tick number `n` (1-based), where it does `f`.
    fn on_tick(
        n: u64,
        f: impl Fn() -> Result<(), LoopError> + Send + Sync + 'static,
    ) -> impl PeriodicTask {
        let count = AtomicU64::new(0);
        move || {
            let hit = count.fetch_add(1, Ordering::SeqCst) + 1 == n;
            let result = if hit { f() } else { Ok(()) };
            async move { result }
        }
    }

    /// `w.run()`, failing the test instead of hanging if it never returns.
    async fn run(w: Watcher) -> Result<WatchReport, WatcherError> {
        let bounded = tokio::time::timeout(WAIT_MAX, w.run()).await;
        bounded.unwrap_or_else(|_| panic!("the watcher did not return within {WAIT_MAX:?}"))
    }

    fn ok_task() -> impl PeriodicTask {
        || async { Ok(()) }
    }

    fn ended(recorder: &Recorder) -> Vec<(String, String)> {
        let ended = recorder.events().into_iter().filter_map(|e| match e {
            Event::LoopEnded { name, outcome } => Some((name, outcome)),
            _ => None,
        });
        ended.collect()
    }

    fn tick_times(recorder: &Recorder, loop_name: &str) -> Vec<Instant> {
        let ticks = recorder.timed().into_iter().filter_map(|(t, e)| match e {
            Event::LoopTick { name, .. } if name == loop_name => Some(t),
            _ => None,
        });
        ticks.collect()
    }

    fn trigger_after(token: &ShutdownToken, after: Duration) {
        let token = token.clone();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            token.trigger();
        });
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_loop_stops_its_siblings_and_its_error_is_returned_by_name() {
        let token = ShutdownToken::new();
        let (mut w, recorder) = watcher(&token);
        w.add_loop("steady", PERIOD, ok_task())
            .expect("valid")
            .add_loop("flaky", PERIOD, on_tick(3, || Err(LoopError::new("gone"))))
            .expect("valid");
        let result = run(w).await;
        assert_eq!(
            result,
            Err(WatcherError::Failed {
                name: "flaky".into(),
                reason: "gone".into()
            })
        );
        let mut ended = ended(&recorder);
        ended.sort();
        assert_eq!(
            ended,
            [
                ("flaky".to_owned(), "error: gone".to_owned()),
                ("steady".to_owned(), "shutdown".to_owned())
            ]
        );
        assert!(!token.is_triggered(), "the caller's token is the caller's");
    }

    #[tokio::test(start_paused = true)]
    async fn a_panicking_tick_is_returned_with_its_message_and_siblings_are_drained() {
        let token = ShutdownToken::new();
        let (mut w, recorder) = watcher(&token);
        w.add_loop("a", PERIOD, ok_task())
            .expect("valid")
            .add_loop("panicky", PERIOD, on_tick(2, || panic!("tick exploded")))
            .expect("valid")
            .add_loop("b", PERIOD * 3, ok_task())
            .expect("valid");
        let result = run(w).await;
        assert_eq!(
            result,
            Err(WatcherError::Panicked {
                name: "panicky".into(),
                message: "tick exploded".into()
            })
        );
        let ended = ended(&recorder);
        assert_eq!(ended.len(), 3, "every loop drained: {ended:?}");
        assert_eq!(ended[0], ("panicky".into(), "panic: tick exploded".into()));
        assert!(ended[1..].iter().all(|(_, outcome)| outcome == "shutdown"));
    }

    #[tokio::test(start_paused = true)]
    async fn an_external_shutdown_returns_ok_with_tick_counts() {
        let token = ShutdownToken::new();
        let (mut w, recorder) = watcher(&token);
        w.add_loop("fast", PERIOD, ok_task())
            .expect("valid")
            .add_loop("slow", PERIOD * 5 / 2, ok_task())
            .expect("valid");
        trigger_after(&token, RUN_FOR);
        let report = run(w).await.expect("clean shutdown");
        // Ticks at 0, 100, ..., 1000 ms and at 0, 250, ..., 1000 ms.
        let expected = BTreeMap::from([("fast".to_owned(), 11), ("slow".to_owned(), 5)]);
        assert_eq!(report.ticks, expected);
        assert_eq!(tick_times(&recorder, "fast").len(), 11);
        assert!(ended(&recorder).iter().all(|(_, o)| o == "shutdown"));
    }

    #[tokio::test(start_paused = true)]
    async fn an_error_from_a_tick_running_at_shutdown_is_still_returned() {
        let token = ShutdownToken::new();
        let (mut w, _recorder) = watcher(&token);
        let clock = TestClock::new();
        w.add_loop("quick", PERIOD, ok_task())
            .expect("valid")
            .add_loop("late", PERIOD, move || {
                let sleep = clock.sleep(SLOW_TICK);
                async move {
                    sleep.await;
                    Err(LoopError::new("too late"))
                }
            })
            .expect("valid");
        trigger_after(&token, PERIOD);
        let result = run(w).await;
        assert_eq!(
            result,
            Err(WatcherError::Failed {
                name: "late".into(),
                reason: "too late".into()
            })
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_failure_is_returned_and_a_later_one_is_still_reported() {
        let token = ShutdownToken::new();
        let (mut w, recorder) = watcher(&token);
        let clock = TestClock::new();
        w.add_loop("early", PERIOD, on_tick(2, || Err(LoopError::new("first"))))
            .expect("valid")
            .add_loop("late", PERIOD, move || {
                let sleep = clock.sleep(SLOW_TICK);
                async move {
                    sleep.await;
                    Err(LoopError::new("second"))
                }
            })
            .expect("valid");
        let result = run(w).await;
        assert_eq!(
            result,
            Err(WatcherError::Failed {
                name: "early".into(),
                reason: "first".into()
            })
        );
        assert_eq!(
            ended(&recorder),
            [
                ("early".to_owned(), "error: first".to_owned()),
                ("late".to_owned(), "error: second".to_owned())
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_before_the_first_tick_ends_every_loop_with_zero_ticks() {
        let token = ShutdownToken::new();
        token.trigger();
        let (mut w, recorder) = watcher(&token);
        w.add_loop("idle", PERIOD, ok_task()).expect("valid");
        let report = run(w).await.expect("clean");
        assert_eq!(report.ticks["idle"], 0);
        assert!(tick_times(&recorder, "idle").is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn bad_loops_are_refused_by_name_and_an_empty_watcher_does_not_run() {
        let (mut w, _recorder) = watcher(&ShutdownToken::new());
        let err = w.add_loop("", PERIOD, ok_task()).expect_err("empty name");
        assert_eq!(err.name, "");
        let err = w
            .add_loop("fast", Duration::from_micros(500), ok_task())
            .expect_err("period below 1ms");
        assert!(err.to_string().contains("\"fast\""), "{err}");
        w.add_loop("twin", PERIOD, ok_task()).expect("valid");
        w.add_loop("twin", PERIOD, ok_task())
            .expect_err("duplicate");
        let (empty, _recorder) = watcher(&ShutdownToken::new());
        assert_eq!(run(empty).await, Err(WatcherError::NoLoops));
    }

    /// Run one loop whose second tick takes [`SLOW_TICK`]; return the spacing
    /// between consecutive ticks that started after the slow one.
    async fn spacing_after_a_slow_tick(mut w: Watcher, recorder: &Recorder) -> Vec<Duration> {
        let clock = TestClock::new();
        let count = AtomicU64::new(0);
        let task = move || {
            let slow = count.fetch_add(1, Ordering::SeqCst) == 1;
            let sleep = clock.sleep(if slow { SLOW_TICK } else { Duration::ZERO });
            async move {
                sleep.await;
                Ok(())
            }
        };
        w.add_loop("indexer", PERIOD, task).expect("valid");
        let token = w.token.clone();
        trigger_after(&token, RUN_FOR);
        run(w).await.expect("clean shutdown");
        let times = tick_times(recorder, "indexer");
        assert!(times.len() > 4, "enough ticks to judge: {times:?}");
        times[2..].windows(2).map(|w| w[1] - w[0]).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn after_a_slow_tick_the_next_ticks_are_not_back_to_back() {
        let (w, recorder) = watcher(&ShutdownToken::new());
        let spacing = spacing_after_a_slow_tick(w, &recorder).await;
        assert!(
            spacing.iter().all(|d| *d >= PERIOD / 2),
            "Skip keeps at least half a period between ticks: {spacing:?}"
        );
    }

    #[cfg(feature = "planted-bugs")]
    #[tokio::test(start_paused = true)]
    async fn planted_burst_ticks_fire_the_missed_ticks_back_to_back() {
        use crate::planted::Bug;
        let (w, recorder) = watcher(&ShutdownToken::new());
        let w = w.with_plants(PlantedBugs::only(Bug::BurstTicks));
        let spacing = spacing_after_a_slow_tick(w, &recorder).await;
        assert!(
            spacing.iter().any(|d| d.is_zero()),
            "Burst fires catch-up ticks at once: {spacing:?}"
        );
    }

    #[cfg(feature = "planted-bugs")]
    #[tokio::test(start_paused = true)]
    async fn planted_swallowed_panic_returns_ok_and_reports_no_panic() {
        use crate::planted::Bug;
        let token = ShutdownToken::new();
        let (w, recorder) = watcher(&token);
        let mut w = w.with_plants(PlantedBugs::only(Bug::SwallowedPanic));
        w.add_loop("steady", PERIOD, ok_task())
            .expect("valid")
            .add_loop("panicky", PERIOD, on_tick(2, || panic!("lost")))
            .expect("valid");
        trigger_after(&token, RUN_FOR);
        let report = run(w).await.expect("the bug hides the panic");
        assert_eq!(report.ticks.keys().collect::<Vec<_>>(), ["steady"]);
        assert_eq!(report.ticks["steady"], 11, "the sibling was never stopped");
        assert!(ended(&recorder).iter().all(|(_, o)| o == "shutdown"));
    }
}
