//! Shared helpers for the crate's unit tests: a paused-time clock, a storage
//! wrapper that can be partitioned away, a recording observer and a scripted
//! service.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::clock::{Clock, Sleep, Timestamp};
use crate::events::{Event, Observer};
use crate::maintenance::{Service, ServiceCtx, ServiceError};
use crate::storage::ops::{self, Op, Remote, Reply, Transport};
use crate::storage::{MemStorage, StorageError, StorageResult, Term};

/// The wall time every [`TestClock`] starts at (2024-01-01T00:00:00Z).
pub(crate) const BASE: Timestamp = Timestamp(1_704_067_200_000);

/// Generous upper bound for any wait in a test; paused time makes it free.
pub(crate) const WAIT_MAX: Duration = Duration::from_secs(300);

/// A clock on tokio's (paused) time: `now()` is [`BASE`] plus the tokio time
/// elapsed since the clock was made, so wall and monotonic time agree exactly.
#[derive(Debug)]
pub(crate) struct TestClock {
    start: Instant,
}

impl TestClock {
    /// A clock starting at [`BASE`] now. Call inside the runtime.
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            start: Instant::now(), // determinism-ok: tokio Instant, simulated
        })
    }
}

impl Clock for TestClock {
    fn now(&self) -> Timestamp {
        BASE.plus(Instant::now().duration_since(self.start)) // determinism-ok: tokio Instant, simulated
    }

    fn monotonic(&self) -> Instant {
        Instant::now() // determinism-ok: tokio Instant, simulated
    }

    fn sleep(&self, d: Duration) -> Sleep {
        Box::pin(tokio::time::sleep(d))
    }
}

/// Storage over a shared [`MemStorage`] that can be switched to fail every call
/// with [`StorageError::Unavailable`], as if partitioned away.
pub(crate) type FlakyStorage = Remote<Flaky>;

/// The transport behind [`FlakyStorage`].
#[derive(Debug)]
pub(crate) struct Flaky {
    inner: Arc<MemStorage>,
    failing: AtomicBool,
    failing_renewals: AtomicBool,
}

#[async_trait]
impl Transport for Flaky {
    async fn call(&self, op: Op) -> StorageResult<Reply> {
        let renewal = matches!(op, Op::Renew { .. } | Op::TryAcquire { .. });
        if self.failing.load(Ordering::SeqCst)
            || (renewal && self.failing_renewals.load(Ordering::SeqCst))
        {
            return Err(StorageError::Unavailable("test partition".to_owned()));
        }
        Ok(ops::apply(self.inner.as_ref(), op).await)
    }
}

impl Flaky {
    /// A healthy transport to `inner`.
    pub(crate) fn healthy(inner: Arc<MemStorage>) -> Self {
        Flaky {
            inner,
            failing: AtomicBool::new(false),
            failing_renewals: AtomicBool::new(false),
        }
    }

    /// Fail (`true`) or serve (`false`) every call from now on.
    pub(crate) fn set_failing(&self, failing: bool) {
        self.failing.store(failing, Ordering::SeqCst);
    }
}

impl Remote<Flaky> {
    /// A healthy view of `inner`.
    pub(crate) fn new(inner: Arc<MemStorage>) -> Arc<Self> {
        Arc::new(Remote(Flaky::healthy(inner)))
    }

    /// Fail every lease renewal and acquire from now on, and serve every other
    /// call (resigns included).
    pub(crate) fn fail_lease_grants(&self) {
        self.0.failing_renewals.store(true, Ordering::SeqCst);
    }

    /// Fail (`true`) or serve (`false`) every call from now on.
    pub(crate) fn set_failing(&self, failing: bool) {
        self.0.set_failing(failing);
    }
}

/// An [`Observer`] that keeps every event with the tokio time it was emitted at.
#[derive(Debug)]
pub(crate) struct Recorder {
    events: Mutex<Vec<(Instant, Event)>>,
    count: watch::Sender<usize>,
}

impl Recorder {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            events: Mutex::default(),
            count: watch::channel(0).0,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Vec<(Instant, Event)>> {
        self.events.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every event so far, with its time.
    pub(crate) fn timed(&self) -> Vec<(Instant, Event)> {
        self.lock().clone()
    }

    /// Every event so far.
    pub(crate) fn events(&self) -> Vec<Event> {
        self.lock().iter().map(|(_, e)| e.clone()).collect()
    }

    /// The first event matching `pred`, with its time and index.
    pub(crate) fn find(&self, pred: impl Fn(&Event) -> bool) -> Option<(usize, Instant, Event)> {
        self.lock()
            .iter()
            .enumerate()
            .find(|(_, (_, e))| pred(e))
            .map(|(i, (t, e))| (i, *t, e.clone()))
    }

    /// Wait (at most [`WAIT_MAX`] of test time) for the first event matching
    /// `pred`; panics with the history when it never comes.
    pub(crate) async fn wait_for(
        &self,
        what: &str,
        pred: impl Fn(&Event) -> bool,
    ) -> (usize, Instant, Event) {
        let mut rx = self.count.subscribe();
        let found = tokio::time::timeout(WAIT_MAX, async {
            loop {
                rx.borrow_and_update();
                if let Some(hit) = self.find(&pred) {
                    return hit;
                }
                rx.changed().await.expect("the recorder owns the sender");
            }
        })
        .await;
        match found {
            Ok(hit) => hit,
            Err(_) => panic!(
                "no {what} within {WAIT_MAX:?}; events: {:#?}",
                self.events()
            ),
        }
    }
}

impl Observer for Recorder {
    fn record(&self, event: &Event) {
        self.lock().push((Instant::now(), event.clone())); // determinism-ok: tokio Instant, simulated
        self.count.send_modify(|n| *n += 1);
    }
}

/// What one call of [`ScriptedService::start`] does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// Return `Ok` at once.
    Succeed,
    /// Return an error at once.
    Fail,
    /// Sleep for the duration, ignoring the term's token, then return an error.
    SleepThenFail(Duration),
    /// Sleep for the duration, ignoring the term's token, then spawn a loop into
    /// the term's tasks that counts [`ScriptedService::ticks`] every 100 ms
    /// until the term's token stops it.
    SleepThenTick(Duration),
}

/// A [`Service`] whose start calls follow a script; when the script runs out,
/// every further call does `then`.
#[derive(Debug)]
pub(crate) struct ScriptedService {
    script: Mutex<VecDeque<Step>>,
    then: Step,
    calls: Mutex<Vec<(Instant, Term)>>,
    ticks: Arc<std::sync::atomic::AtomicU64>,
}

impl ScriptedService {
    pub(crate) fn new(script: impl IntoIterator<Item = Step>, then: Step) -> Arc<Self> {
        Arc::new(Self {
            script: Mutex::new(script.into_iter().collect()),
            then,
            calls: Mutex::default(),
            ticks: Arc::default(),
        })
    }

    /// How often the loops of `SleepThenTick` starts have ticked.
    pub(crate) fn ticks(&self) -> u64 {
        self.ticks.load(Ordering::SeqCst)
    }

    /// When each start call began, and for which term.
    pub(crate) fn calls(&self) -> Vec<(Instant, Term)> {
        self.calls.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

#[async_trait]
impl Service for ScriptedService {
    fn name(&self) -> &str {
        "scripted"
    }

    async fn start(&self, ctx: &ServiceCtx) -> Result<(), ServiceError> {
        self.calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((Instant::now(), ctx.term)); // determinism-ok: tokio Instant, simulated
        let step = self
            .script
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop_front()
            .unwrap_or(self.then);
        let fail = || {
            Err(ServiceError::Start {
                service: "scripted".to_owned(),
                reason: format!("scripted failure for {}", ctx.term),
            })
        };
        match step {
            Step::Succeed => Ok(()),
            Step::Fail => fail(),
            Step::SleepThenFail(d) => {
                ctx.clock.sleep(d).await;
                fail()
            }
            Step::SleepThenTick(d) => {
                ctx.clock.sleep(d).await;
                let (ticks, token, clock) =
                    (self.ticks.clone(), ctx.token.clone(), ctx.clock.clone());
                ctx.tasks.spawn("scripted_ticks", async move {
                    while !token.is_triggered() {
                        ticks.fetch_add(1, Ordering::SeqCst);
                        tokio::select! {
                            biased;
                            () = token.wait() => return,
                            () = clock.sleep(Duration::from_millis(100)) => {}
                        }
                    }
                });
                Ok(())
            }
        }
    }
}
