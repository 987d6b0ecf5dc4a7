//! The worker: claim one job, run its handler under heartbeats, finalize.
//!
//! While a handler runs, the worker heartbeats its claim every
//! `heartbeat_interval` and reacts to what it hears:
//!
//! * `CancelRequested`: trigger the handler's token; drop it after `cancel_grace`.
//! * `Lost` (the rescuer or another worker took the job): drop the handler at
//!   once; the claim is someone else's, and finalizing would be refused anyway.
//! * no successful heartbeat for `claim_trust`: this worker can no longer be sure
//!   it holds the job, so it stops the handler before the rescuer's
//!   `stale_threshold` can hand the job to another worker. That is what keeps two
//!   attempts of one job from running at once even across a partition.
//!
//! A panic in a handler is caught and finalized as a failed attempt.
//!
//! A busy worker finalizes a job and claims its next in one storage call
//! ([`JobStore::finalize_and_claim`](crate::storage::JobStore::finalize_and_claim)),
//! so a backlog costs one round trip (one SQLite transaction) per job, not two.
//! A worker that is retiring or stopping only finalizes; a next job claimed just
//! before a stop is given back unrun, without spending its attempt.
//!
//! With [`JobsConfig::claim_ahead`](super::JobsConfig::claim_ahead) `= n`, a
//! worker claims up to `n + 1` jobs per call and runs them in turn. Only the
//! jobs waiting in hand are heartbeated by the hand's keeper (`hand.rs`), each
//! claim's trust counted from when its last renewing call was sent; a job the
//! keeper heard was lost or cancelled is not run, and one whose trust is half
//! gone (the keeper could not reach storage) is heartbeated once more before it
//! starts. The
//! finalizes of all but the last job of a hand go out in the background while
//! the next job runs, so a storage engine that groups calls commits many jobs
//! at once; the last one carries the claim of the next hand. For example, with
//! `claim_ahead = 3` and a backlog of no-op jobs:
//!
//! ```text
//! claim(4) ─► run A ─► run B ─► run C ─► run D ─► finalize D + claim(4) ─► ...
//!               └─ finalize A   └─ finalize B   └─ finalize C   (in the background)
//! ```

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rand_chacha::ChaCha8Rng;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};
use tracing::Instrument;

use super::config::JobsConfig;
use super::hand::{Hand, Heard, Held, Keeper};
use super::handler::{HandlerRegistry, JobCtx, Outcome};
use crate::clock::SharedClock;
use crate::events::{emit, Event, SharedObserver};
#[cfg(feature = "planted-bugs")]
use crate::planted::PlantedBugs;
use crate::shutdown::{catch_panic, ShutdownToken};
use crate::storage::{
    Claim, Finalize, FinalizeResult, HeartbeatStatus, Job, JobId, JobState, SharedStorage,
    StorageError, StorageResult,
};

/// A job running on this node, for in-process cancel and shutdown release.
#[derive(Clone, Debug)]
pub(crate) struct Running {
    pub(crate) claim: Claim,
    pub(crate) owner: String,
    pub(crate) cancel: ShutdownToken,
    /// Set when the cancel came from a user rather than shutdown.
    pub(crate) user_cancel: Arc<std::sync::atomic::AtomicBool>,
}

/// What every worker of a runtime shares.
pub(crate) struct WorkerShared {
    pub(crate) node: String,
    pub(crate) cfg: JobsConfig,
    pub(crate) storage: SharedStorage,
    pub(crate) clock: SharedClock,
    pub(crate) observer: SharedObserver,
    pub(crate) handlers: HandlerRegistry,
    pub(crate) running: Mutex<BTreeMap<JobId, Running>>,
    pub(crate) rng: Mutex<ChaCha8Rng>,
    /// Woken by a local enqueue, or by storage's enqueue signal, so idle workers
    /// need not wait for their poll.
    pub(crate) wake: Arc<Notify>,
    #[cfg(feature = "planted-bugs")]
    pub(crate) plants: PlantedBugs,
}

impl WorkerShared {
    pub(crate) fn running(&self) -> MutexGuard<'_, BTreeMap<JobId, Running>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn emit(&self, event: Event) {
        emit(self.observer.as_ref(), &self.node, event);
    }
}

/// How supervising a handler ended.
enum Ended {
    /// The handler returned (or panicked, as `Err`).
    Returned(Result<Outcome, String>),
    /// The worker dropped the handler after its grace: its claim was lost or
    /// untrusted (nothing to finalize), or a user's cancel was ignored.
    Dropped,
}

/// One worker: claim, run, finalize, until `retire` (between jobs) or `stop`.
pub(crate) async fn worker_loop(
    shared: Arc<WorkerShared>,
    queue: String,
    slot: u32,
    retire: ShutdownToken,
    stop: ShutdownToken,
) {
    let owner = format!("{}/{queue}/{slot}", shared.node);
    let cfg = &shared.cfg;
    let hand = cfg.claim_ahead + 1;
    // Whether the last wait ended on a wake-up rather than the poll timer.
    let mut woken = false;
    // Empty polls in a row (planted `idle_poll_backs_off` doubles its wait
    // with each).
    let mut empty_polls: u32 = 0;
    while !retire.is_triggered() && !stop.is_triggered() {
        let was_woken = std::mem::take(&mut woken);
        let sent = shared.clock.monotonic();
        let wait = match shared.storage.claim(&queue, &owner, hand).await {
            Ok(jobs) if !jobs.is_empty() => {
                // A wake-up carries no count: one may stand for a whole batch.
                // Pass it on, so idle workers join one by one while work lasts
                // and the chain ends at the first worker that finds none.
                if was_woken {
                    shared.wake.notify_one();
                }
                let worker = Worker {
                    shared: &shared,
                    owner: &owner,
                    queue: &queue,
                    retire: &retire,
                    stop: &stop,
                };
                worker.run_jobs(Claimed { jobs, sent }).await;
                empty_polls = 0;
                continue;
            }
            Ok(_) if crate::is_planted!(shared.plants, IdlePollBacksOff) => {
                empty_polls = empty_polls.saturating_add(1);
                cfg.idle_poll * 2u32.saturating_pow(empty_polls.min(16))
            }
            Ok(_) => cfg.idle_poll,
            Err(_) => cfg.claim_error_backoff,
        };
        tokio::select! {
            biased;
            () = stop.wait() => return,
            () = retire.wait() => return,
            () = shared.wake.notified() => woken = true,
            () = shared.clock.sleep(wait) => {}
        }
    }
}

/// Jobs one storage call claimed for this worker, and when that call was sent:
/// storage stamped their claims' heartbeat then, so their trust runs from there.
struct Claimed {
    jobs: Vec<Job>,
    sent: Instant,
}

/// One worker's identity and tokens, for the steps of its loop.
struct Worker<'a> {
    shared: &'a Arc<WorkerShared>,
    owner: &'a str,
    queue: &'a str,
    retire: &'a ShutdownToken,
    stop: &'a ShutdownToken,
}

impl Worker<'_> {
    /// Run `claimed`, and the jobs each finalize claims next, until none is
    /// left. With `claim_ahead`, finalizes other than the one that claims run
    /// in the background (at most a hand's worth), and all have ended when
    /// this returns.
    async fn run_jobs(&self, claimed: Claimed) {
        let shared = self.shared;
        let hand = Arc::new(Hand::default());
        hand.hold(&claimed.jobs, claimed.sent);
        let mut pending = std::collections::VecDeque::from(claimed.jobs);
        // Dropped (aborting it) when this returns or the worker is aborted.
        let mut keeper = JoinSet::new();
        if shared.cfg.claim_ahead > 0 {
            keeper.spawn(hand.clone().keep(self.keeper()));
        }
        let mut background = JoinSet::new();
        let background_max = usize::try_from(shared.cfg.claim_ahead + 1).unwrap_or(usize::MAX);
        while let Some(job) = pending.pop_front() {
            while background.try_join_next().is_some() {}
            let held = hand.take(job.id).expect("every pending job is held");
            if self.stop.is_triggered() {
                // Claimed but not started: hand it straight back.
                crate::sometimes!("claimed_next_while_stopping");
                give_back(shared, self.owner, &job).await;
                continue;
            }
            let Some(sent) = self.renew_if_old(&job, held).await else {
                continue;
            };
            let Some(done) = self.run_job(job, sent).await else {
                continue;
            };
            let wants_next = pending.is_empty() && self.goes_on();
            if wants_next || shared.cfg.claim_ahead == 0 {
                let sent = shared.clock.monotonic();
                let next = wants_next.then_some(self.queue);
                let jobs = finalize_then_claim(shared, &done.running, done.fin, next)
                    .instrument(done.span)
                    .await;
                hand.hold(&jobs, sent);
                pending.extend(jobs);
                continue;
            }
            if background.len() >= background_max {
                background.join_next().await;
            }
            let shared = shared.clone();
            background.spawn(
                async move { finalize(&shared, &done.running, done.fin).await }
                    .instrument(done.span),
            );
        }
        keeper.abort_all();
        while background.join_next().await.is_some() {}
    }

    /// What the hand's keeper needs to heartbeat this worker's held claims.
    fn keeper(&self) -> Keeper {
        let shared = self.shared;
        Keeper {
            storage: shared.storage.clone(),
            clock: shared.clock.clone(),
            every: shared.cfg.heartbeat_interval,
            owner: self.owner.to_owned(),
            // Planted `hand_keeper_idle` keeps nothing alive.
            idle: crate::is_planted!(shared.plants, HandKeeperIdle),
        }
    }

    /// Settle what the hand's keeper heard of a job before starting it, and
    /// once half its trust is gone (the keeper could not renew it: storage
    /// unreachable, or slow), ask storage whether the claim still stands.
    /// Returns when the claim's trust now runs from, or `None` if the job is
    /// not to be run (lost, cancelled, or given back).
    async fn renew_if_old(&self, job: &Job, held: Held) -> Option<Instant> {
        let shared = self.shared;
        let heard = match held.heard {
            Heard::Alive => match self.fresh_or_renewed(held).await {
                Ok(trusted_from) => return Some(trusted_from),
                Err(heard) => heard,
            },
            heard => Some(heard),
        };
        match heard {
            Some(Heard::Lost) => {
                // The rescuer handed it on: it is someone else's to run.
                crate::sometimes!("claimed_ahead_lost_unrun");
            }
            Some(Heard::CancelRequested) => {
                let reason = "cancelled by request".to_owned();
                settle_unrun(shared, self.owner, job, Finalize::Cancel { reason }).await;
            }
            // Storage could not say: give it back (if that fails too, the
            // rescuer recovers it once its claim is stale).
            Some(Heard::Alive) | None => give_back(shared, self.owner, job).await,
        }
        None
    }

    /// How long ago `from` was on this worker's clock.
    fn age(&self, from: Instant) -> Duration {
        self.shared
            .clock
            .monotonic()
            .saturating_duration_since(from)
    }

    /// The held claim's trust anchor if at least half its trust is left, else
    /// renewed by a heartbeat answered inside the trust it renewed; otherwise
    /// what storage said (`None`: no answer, `Alive`: answered too late).
    async fn fresh_or_renewed(&self, held: Held) -> Result<Instant, Option<Heard>> {
        let shared = self.shared;
        let age = self.age(held.trusted_from);
        if age < shared.cfg.claim_trust / 2 {
            return Ok(held.trusted_from);
        }
        crate::sometimes!("claimed_ahead_half_trust_gone");
        crate::sometimes!(age >= shared.cfg.claim_trust, "claimed_ahead_trust_gone");
        if crate::is_planted!(shared.plants, ClaimAheadIgnoresTrust) {
            // Planted: trust the old claim as if it were fresh.
            return Ok(shared.clock.monotonic());
        }
        crate::sometimes!("claimed_ahead_renewed");
        let renewed = shared.clock.monotonic();
        match shared.storage.heartbeat(held.claim, self.owner).await {
            Ok(HeartbeatStatus::Alive) if self.age(renewed) < shared.cfg.claim_trust => Ok(renewed),
            // A reply that came back after the trust it renewed ran out (a
            // slow reply, a frozen process) says the claim stood when storage
            // applied it, not now: the rescuer may have handed the job on
            // since. Give it back rather than start it.
            Ok(HeartbeatStatus::Alive) => Err(Some(Heard::Alive)),
            Ok(status) => Err(Some(Heard::from(status))),
            Err(_) => Err(None),
        }
    }

    /// Whether the worker takes another job once this one is done.
    fn goes_on(&self) -> bool {
        // Planted `claims_while_stopping` claims on through a shutdown.
        let stopping = self.stop.is_triggered()
            && !crate::is_planted!(self.shared.plants, ClaimsWhileStopping);
        !self.retire.is_triggered() && !stopping
    }

    /// Run one claimed job; returns what to finalize, or `None` if the handler
    /// was dropped with its claim lost or untrusted.
    async fn run_job(&self, job: Job, sent: Instant) -> Option<Done> {
        let shared = self.shared;
        let claim = Claim {
            job: job.id,
            attempt: job.attempt,
        };
        assert!(claim.attempt >= 1, "a claimed job has an attempt");
        shared.emit(Event::JobClaimed {
            job: job.id,
            attempt: job.attempt,
        });
        let running = Running {
            claim,
            owner: self.owner.to_owned(),
            cancel: self.stop.child(),
            user_cancel: Arc::default(),
        };
        shared.running().insert(job.id, running.clone());
        // Every event of this attempt (worker, handler, storage client) carries the
        // job, attempt, queue and node.
        let span = tracing::info_span!("job", job = %job.id, attempt = job.attempt, queue = %job.queue, node = %shared.node);
        crate::metrics::attempt_started(&job.queue, &job.kind);
        let began = shared.clock.monotonic();
        let ended = supervise(shared, &running, &job, sent)
            .instrument(span.clone())
            .await;
        shared.running().remove(&job.id);
        let fin = match ended {
            Ended::Returned(result) => to_finalize(shared, &job, &running, self.stop, result),
            // A handler that ignored a user's cancel past `cancel_grace` was
            // dropped while its claim still stood: settle the cancel now
            // rather than leave the job to the rescuer a stale window later
            // (found by `claims_kept_alive`). The finalize is owner-guarded,
            // so a claim lost meanwhile is left alone.
            Ended::Dropped
                if running
                    .user_cancel
                    .load(std::sync::atomic::Ordering::SeqCst) =>
            {
                crate::sometimes!("cancel_ignored_past_grace");
                Finalize::Cancel {
                    reason: "cancelled by request; the handler ignored it past cancel_grace".into(),
                }
            }
            Ended::Dropped => return None,
        };
        let took = shared.clock.monotonic().saturating_duration_since(began);
        crate::metrics::attempt_ended(&job.queue, &job.kind, &fin, took);
        Some(Done { running, fin, span })
    }
}

/// A job whose handler returned, with what to record for it.
struct Done {
    running: Running,
    fin: Finalize,
    span: tracing::Span,
}

/// Give back a job claimed for this worker that it will not run (it is
/// stopping): no attempt is spent, and another node may take it at once.
async fn give_back(shared: &Arc<WorkerShared>, owner: &str, job: &Job) {
    let give_back = Finalize::Snooze {
        delay: Duration::ZERO,
    };
    settle_unrun(shared, owner, job, give_back).await;
}

/// Finalize a job claimed for this worker without running it.
async fn settle_unrun(shared: &Arc<WorkerShared>, owner: &str, job: &Job, fin: Finalize) {
    shared.emit(Event::JobClaimed {
        job: job.id,
        attempt: job.attempt,
    });
    let running = Running {
        claim: Claim {
            job: job.id,
            attempt: job.attempt,
        },
        owner: owner.to_owned(),
        cancel: ShutdownToken::new(),
        user_cancel: Arc::default(),
    };
    finalize(shared, &running, fin).await;
}

fn end_label(result: &Result<Outcome, String>) -> String {
    match result {
        Ok(Outcome::Completed) => "completed".into(),
        Ok(Outcome::Failed(e)) => format!("failed: {e}"),
        Ok(Outcome::Snooze(_)) => "snoozed".into(),
        Ok(Outcome::Cancel(_)) => "cancelled".into(),
        Ok(Outcome::Discard(e)) => format!("discarded: {e}"),
        Err(panic) => format!("panicked: {panic}"),
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Run the handler while heartbeating its claim. See the [module docs](self).
///
/// `sent` is when the call that claimed the job was sent: the claim's trust
/// runs from there, not from when the handler starts.
async fn supervise(
    shared: &Arc<WorkerShared>,
    running: &Running,
    job: &Job,
    sent: Instant,
) -> Ended {
    let Some(handler) = shared.handlers.get(&job.kind) else {
        return Ended::Returned(Ok(Outcome::Discard(format!(
            "no handler for kind {:?}",
            job.kind
        ))));
    };
    let ctx = JobCtx {
        job: job.id,
        attempt: job.attempt,
        kind: job.kind.clone(),
        queue: job.queue.clone(),
        cancel: running.cancel.clone(),
        clock: shared.clock.clone(),
        owner: running.owner.clone(),
        storage: shared.storage.clone(),
    };
    let (id, attempt) = (job.id, job.attempt);
    shared.emit(Event::HandlerStarted { job: id, attempt });
    let payload = job.payload.clone();
    let mut work: BoxFuture<Result<Outcome, String>> =
        Box::pin(catch_panic(async move { handler.run(ctx, payload).await }));
    let mut beat = Beat::new(shared, running, sent);
    let mut drop_at: Option<Instant> = None;
    loop {
        let drop_in = drop_at.map(|t| t.saturating_duration_since(shared.clock.monotonic()));
        tokio::select! {
            biased;
            result = &mut work => {
                shared.emit(Event::HandlerEnded { job: id, attempt, outcome: end_label(&result) });
                return Ended::Returned(result);
            }
            () = shared.clock.sleep(drop_in.unwrap_or(Duration::MAX)), if drop_in.is_some() => {
                shared.emit(Event::HandlerEnded { job: id, attempt, outcome: "aborted".into() });
                return Ended::Dropped;
            }
            verdict = beat.next() => match verdict {
                Verdict::Continue => {}
                Verdict::Stop { reason, grace } => {
                    if !running.cancel.is_triggered() {
                        shared.emit(Event::HandlerCancelRequested { job: id, attempt, reason: reason.into() });
                        running.cancel.trigger();
                    }
                    // Planted `cancel_grace_ignored` waits for the handler however long.
                    if !crate::is_planted!(shared.plants, CancelGraceIgnored) {
                        let at = shared.clock.monotonic() + grace;
                        drop_at = Some(drop_at.map_or(at, |d| d.min(at)));
                    }
                }
            },
        }
    }
}

/// What the heartbeat side decided.
enum Verdict {
    Continue,
    Stop {
        reason: &'static str,
        grace: Duration,
    },
}

/// The heartbeat side of [`supervise`]: one pending heartbeat call at a time.
struct Beat<'a> {
    shared: &'a Arc<WorkerShared>,
    running: &'a Running,
    interval: crate::clock::Interval,
    call: Option<BoxFuture<StorageResult<HeartbeatStatus>>>,
    /// When the pending call was sent: storage records the heartbeat at that
    /// time, so a successful reply renews trust from there, not from its arrival.
    sent: Instant,
    last_ok: Instant,
    stopped: bool,
}

impl<'a> Beat<'a> {
    fn new(shared: &'a Arc<WorkerShared>, running: &'a Running, claimed: Instant) -> Self {
        let mut interval = shared
            .clock
            .interval(shared.cfg.heartbeat_interval, MissedTickBehavior::Skip);
        interval.reset();
        let last_ok = claimed;
        Self {
            shared,
            running,
            interval,
            call: None,
            sent: last_ok,
            last_ok,
            stopped: false,
        }
    }

    async fn next(&mut self) -> Verdict {
        if self.call.is_none() {
            self.interval.tick().await;
            let (storage, claim, owner) = (
                self.shared.storage.clone(),
                self.running.claim,
                self.running.owner.clone(),
            );
            self.sent = self.shared.clock.monotonic();
            self.call = Some(Box::pin(
                async move { storage.heartbeat(claim, &owner).await },
            ));
        }
        // Once stopping, only the call is awaited: the trust deadline has done its
        // job, and re-arming an expired one would spin.
        let trust_ends = self.last_ok + self.shared.cfg.claim_trust;
        let left = if self.stopped {
            Duration::MAX
        } else {
            trust_ends.saturating_duration_since(self.shared.clock.monotonic())
        };
        let call = self.call.as_mut().map(|c| c.as_mut());
        let heard = tokio::select! {
            biased;
            r = async { match call { Some(c) => c.await, None => Err(StorageError::Unavailable("no call".into())) } } => Some(r),
            () = self.shared.clock.sleep(left) => None,
        };
        let Some(heard) = heard else {
            return self.stop("claim_untrusted", self.shared.cfg.cancel_grace);
        };
        self.call = None;
        self.judge(heard)
    }

    fn judge(&mut self, heard: StorageResult<HeartbeatStatus>) -> Verdict {
        let cfg = &self.shared.cfg;
        match heard {
            Ok(HeartbeatStatus::Alive) => {
                self.last_ok = self.sent;
                Verdict::Continue
            }
            Ok(HeartbeatStatus::CancelRequested) => {
                crate::sometimes!(!self.stopped, "cancel_heard_while_running");
                self.last_ok = self.sent;
                self.running
                    .user_cancel
                    .store(true, std::sync::atomic::Ordering::SeqCst);
                self.stop("cancel_requested", cfg.cancel_grace)
            }
            Ok(HeartbeatStatus::Lost) => {
                crate::sometimes!("claim_lost_while_running");
                let claim = self.running.claim;
                self.shared.emit(Event::ClaimLost {
                    job: claim.job,
                    attempt: claim.attempt,
                });
                if crate::is_planted!(self.shared.plants, HeartbeatIgnoresLostClaim) {
                    self.last_ok = self.shared.clock.monotonic();
                    return Verdict::Continue;
                }
                self.stop("claim_lost", Duration::ZERO)
            }
            Err(_) if self.shared.clock.monotonic() >= self.last_ok + cfg.claim_trust => {
                self.stop("claim_untrusted", cfg.cancel_grace)
            }
            Err(_) => Verdict::Continue,
        }
    }

    fn stop(&mut self, reason: &'static str, grace: Duration) -> Verdict {
        crate::sometimes!(
            reason == "claim_untrusted" && !self.stopped,
            "claim_untrusted_while_running"
        );
        if self.stopped && reason != "claim_lost" {
            // Already stopping: keep heartbeating (the handler may still finish
            // inside its grace) without extending anything.
            return Verdict::Continue;
        }
        self.stopped = true;
        Verdict::Stop { reason, grace }
    }
}

/// Turn a handler's result into what storage records.
fn to_finalize(
    shared: &WorkerShared,
    job: &Job,
    running: &Running,
    stop: &ShutdownToken,
    result: Result<Outcome, String>,
) -> Finalize {
    let user_cancel = running
        .user_cancel
        .load(std::sync::atomic::Ordering::SeqCst);
    crate::sometimes!(
        result.is_err() && stop.is_triggered(),
        "panic_during_shutdown"
    );
    let outcome = result.unwrap_or_else(|panic| Outcome::Failed(format!("panicked: {panic}")));
    crate::sometimes!(
        user_cancel && outcome == Outcome::Completed,
        "cancel_heard_as_work_completed"
    );
    // A cancel that arrives after the work completed does not rewrite it: the
    // work happened (source document 003, M2).
    let rewrite = user_cancel
        && (outcome != Outcome::Completed
            || crate::is_planted!(shared.plants, LateCancelRewritesOutcome));
    if rewrite {
        return Finalize::Cancel {
            reason: "cancelled by request".into(),
        };
    }
    // Stopped by shutdown and did not finish: give the job back without spending
    // the attempt, so another node takes it at once.
    // Planted `shutdown_spends_attempt` finalizes a stopped attempt as a failure.
    let gives_back = !crate::is_planted!(shared.plants, ShutdownSpendsAttempt);
    if gives_back && stop.is_triggered() && outcome != Outcome::Completed {
        return Finalize::Snooze {
            delay: Duration::ZERO,
        };
    }
    // Planted `discard_off_by_one` lets a spent job retry once more.
    let spent = if crate::is_planted!(shared.plants, DiscardOffByOne) {
        job.attempt > job.max_attempts
    } else {
        job.attempt >= job.max_attempts
    };
    match outcome {
        Outcome::Completed => Finalize::Completed,
        Outcome::Failed(error) if spent => Finalize::Discard { error },
        Outcome::Failed(error) => {
            let mut rng = shared.rng.lock().unwrap_or_else(|p| p.into_inner());
            let delay = shared.cfg.retry.delay(job.attempt, &mut *rng);
            // The backoff counts from the failure, on storage's clock: planted
            // `retry_backoff_from_due` counts it from when the attempt was due,
            // taking off the time the job waited before its claim.
            let delay = if crate::is_planted!(shared.plants, RetryBackoffFromDue) {
                let claimed = job.heartbeat_at.unwrap_or(job.scheduled_at);
                let waited_ms = u64::try_from(claimed.0 - job.scheduled_at.0).unwrap_or(0);
                delay.saturating_sub(Duration::from_millis(waited_ms))
            } else {
                delay
            };
            Finalize::Retry { error, delay }
        }
        Outcome::Snooze(delay) => Finalize::Snooze { delay },
        Outcome::Cancel(reason) => Finalize::Cancel { reason },
        Outcome::Discard(error) => Finalize::Discard { error },
    }
}

fn target_state(fin: &Finalize) -> JobState {
    match fin {
        Finalize::Completed => JobState::Completed,
        Finalize::Retry { .. } => JobState::Retryable,
        Finalize::Discard { .. } => JobState::Discarded,
        Finalize::Snooze { .. } => JobState::Scheduled,
        Finalize::Cancel { .. } => JobState::Cancelled,
    }
}

/// Report the attempt's end, retrying calls whose outcome is unknown: finalize is
/// idempotent for the same claim, so a retry after a lost reply is safe.
pub(crate) async fn finalize(shared: &WorkerShared, running: &Running, fin: Finalize) {
    finalize_then_claim(shared, running, fin, None).await;
}

/// [`finalize`], and with `next_queue` claim the worker's next job of that
/// queue in the same call; returns what was claimed. Only the first call claims:
/// a retry after an unknown outcome only finalizes, and jobs a lost reply
/// claimed go stale and back to the queue through the rescuer, as after any
/// claim whose reply is lost.
async fn finalize_then_claim(
    shared: &WorkerShared,
    running: &Running,
    fin: Finalize,
    mut next_queue: Option<&str>,
) -> Vec<Job> {
    let (mut claim, mut owner) = (running.claim, running.owner.clone());
    let mut claimed = Vec::new();
    if crate::is_planted!(shared.plants, FinalizeWithoutOwnerGuard) {
        // The planted finalize may act as another owner: claim nothing for it.
        next_queue = None;
        // Planted: act on whatever claim the row holds now, not on our own.
        if let Ok(Some(row)) = shared.storage.get_job(claim.job).await {
            claim.attempt = row.attempt;
            owner = row.owner.unwrap_or(owner);
        }
    }
    let hand = shared.cfg.claim_ahead + 1;
    let state = target_state(&fin);
    let mut result = "error: no attempt".to_owned();
    let mut ambiguous = false;
    for _ in 0..shared.cfg.finalize_attempts_max {
        let call = match next_queue.take() {
            Some(queue) => shared
                .storage
                .finalize_and_claim(claim, &owner, fin.clone(), queue, hand)
                .await
                .map(|(r, jobs)| {
                    claimed = jobs;
                    r
                }),
            None => shared.storage.finalize(claim, &owner, fin.clone()).await,
        };
        match call {
            Ok(r) => {
                crate::sometimes!(
                    ambiguous && r == FinalizeResult::AlreadyFinalized,
                    "ambiguous_finalize_already_applied"
                );
                result = match r {
                    FinalizeResult::Applied => "applied",
                    FinalizeResult::AlreadyFinalized => "already_finalized",
                    FinalizeResult::Stale => "stale",
                }
                .to_owned();
                break;
            }
            Err(e @ (StorageError::Ambiguous(_) | StorageError::Unavailable(_))) => {
                crate::sometimes!(
                    matches!(e, StorageError::Ambiguous(_)),
                    "ambiguous_finalize"
                );
                ambiguous |= matches!(e, StorageError::Ambiguous(_));
                result = format!("error: {e}");
                shared.clock.sleep(shared.cfg.finalize_retry_delay).await;
            }
            Err(e) => {
                result = format!("error: {e}");
                break;
            }
        }
    }
    shared.emit(Event::JobFinalized {
        job: claim.job,
        attempt: running.claim.attempt,
        state,
        result,
    });
    claimed
}
