//! The job runtime end to end on `MemStorage` and paused tokio time.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use super::*;
use crate::clock::Clock;
use crate::storage::{
    CancelResult, EnqueueRequest, JobId, JobState, JobStore, LeaseStore, MemStorage, SharedStorage,
};
use crate::test_support::{Flaky, Recorder, TestClock, WAIT_MAX};

struct Fixture {
    store: Arc<MemStorage>,
    recorder: Arc<Recorder>,
    clock: Arc<TestClock>,
}

impl Fixture {
    fn new() -> Self {
        let clock = TestClock::new();
        Self {
            store: Arc::new(MemStorage::with_clock(clock.clone())),
            recorder: Recorder::new(),
            clock,
        }
    }

    fn builder(&self, node: &str) -> RuntimeBuilder {
        let storage: SharedStorage = self.store.clone();
        Runtime::builder(node, storage, self.clock.clone())
            .observer(self.recorder.clone())
            .rng_seed(7)
    }

    async fn state(&self, job: JobId) -> JobState {
        self.store
            .get_job(job)
            .await
            .expect("ok")
            .expect("row")
            .state
    }

    /// Wait until `job` reaches a terminal state; its state.
    async fn finished(&self, job: JobId) -> JobState {
        let deadline = self.clock.monotonic() + WAIT_MAX;
        loop {
            let state = self.state(job).await;
            if state.is_terminal() {
                return state;
            }
            assert!(self.clock.monotonic() < deadline, "{job} still {state:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A handler that counts its runs in `runs` and completes.
fn counting(
    runs: &Arc<AtomicU32>,
) -> impl Fn(JobCtx, serde_json::Value) -> std::future::Ready<Outcome> + Send + Sync + 'static {
    let runs = runs.clone();
    move |_ctx, _p| {
        runs.fetch_add(1, Ordering::SeqCst);
        std::future::ready(Outcome::Completed)
    }
}

fn job(kind: &str) -> EnqueueRequest {
    EnqueueRequest::new(kind, json!({}))
}

#[tokio::test(start_paused = true)]
async fn jobs_run_once_and_complete_and_shutdown_is_clean() {
    let f = Fixture::new();
    let runs = Arc::new(AtomicU32::new(0));
    let rt = f
        .builder("n1")
        .queue("default", 2)
        .handler("count", counting(&runs))
        .build()
        .expect("valid")
        .start()
        .expect("started");
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(rt.enqueue(job("count")).await.expect("enqueued").id());
    }
    for id in &ids {
        assert_eq!(f.finished(*id).await, JobState::Completed);
    }
    assert_eq!(runs.load(Ordering::SeqCst), 5);
    let report = rt.shutdown(Duration::from_secs(5)).await;
    assert!(report.tasks.is_clean(), "{report:?}");
    assert!(report.released.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_failing_job_is_retried_with_backoff_then_discarded_with_its_errors() {
    let f = Fixture::new();
    let rt = f
        .builder("n1")
        .queue("default", 1)
        .handler("flaky", |ctx: JobCtx, _p| async move {
            Outcome::Failed(format!("boom {}", ctx.attempt))
        })
        .build()
        .expect("valid")
        .start()
        .expect("started");
    let id = rt
        .enqueue(job("flaky").max_attempts(3))
        .await
        .expect("ok")
        .id();
    assert_eq!(f.finished(id).await, JobState::Discarded);
    let row = f.store.get_job(id).await.expect("ok").expect("row");
    assert_eq!(row.attempt, 3);
    assert_eq!(row.errors, vec!["boom 1", "boom 2", "boom 3"]);
    let starts: Vec<_> = f
        .recorder
        .timed()
        .into_iter()
        .filter(|(_, e)| matches!(e, crate::events::Event::HandlerStarted { .. }))
        .map(|(t, _)| t)
        .collect();
    assert_eq!(starts.len(), 3);
    assert!(
        starts[1] - starts[0] >= Duration::from_secs(1),
        "backoff after attempt 1"
    );
    assert!(
        starts[2] - starts[1] >= Duration::from_secs(2),
        "backoff doubles"
    );
    rt.shutdown(Duration::from_secs(5)).await;
}

/// The leader's cleaner deletes a finished job once it is older than the
/// retention, judged on the clock: kept before, gone at its first pass after.
#[tokio::test(start_paused = true)]
async fn the_cleaner_keeps_a_finished_job_for_its_retention_then_deletes_it() {
    let f = Fixture::new();
    let runs = Arc::new(AtomicU32::new(0));
    let cfg = JobsConfig {
        retention: Duration::from_secs(30),
        ..JobsConfig::default()
    };
    let rt = f
        .builder("n1")
        .queue("default", 1)
        .handler("count", counting(&runs))
        .jobs_config(cfg)
        .build()
        .expect("valid")
        .start()
        .expect("started");
    let id = rt.enqueue(job("count")).await.expect("ok").id();
    assert_eq!(f.finished(id).await, JobState::Completed);
    let row = |f: &Fixture| {
        let store = f.store.clone();
        async move { store.get_job(id).await.expect("ok") }
    };
    tokio::time::sleep(Duration::from_secs(25)).await;
    assert!(row(&f).await.is_some(), "kept within its retention");
    // The cleaner passes once a minute (60 maintenance intervals).
    tokio::time::sleep(Duration::from_secs(40)).await;
    assert!(
        row(&f).await.is_none(),
        "deleted at the first pass past its retention"
    );
    rt.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(start_paused = true)]
async fn a_handler_panic_is_a_failed_attempt_and_the_worker_survives() {
    let f = Fixture::new();
    let rt = f
        .builder("n1")
        .queue("default", 1)
        .handler("bad", |_ctx, _p| async move {
            panic!("handler exploded");
        })
        .handler("good", |_ctx, _p| async move { Outcome::Completed })
        .build()
        .expect("valid")
        .start()
        .expect("started");
    let bad = rt
        .enqueue(job("bad").max_attempts(1))
        .await
        .expect("ok")
        .id();
    let good = rt.enqueue(job("good")).await.expect("ok").id();
    assert_eq!(f.finished(bad).await, JobState::Discarded);
    assert_eq!(f.finished(good).await, JobState::Completed);
    let row = f.store.get_job(bad).await.expect("ok").expect("row");
    assert_eq!(row.errors, vec!["panicked: handler exploded"]);
    let report = rt.shutdown(Duration::from_secs(5)).await;
    assert!(
        report.tasks.is_clean(),
        "the panic never reached the task: {report:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_snooze_runs_again_later_without_spending_an_attempt() {
    let f = Fixture::new();
    let rt = f
        .builder("n1")
        .queue("default", 1)
        .handler("nap", |ctx: JobCtx, _p| async move {
            if ctx.attempt == 1 {
                Outcome::Snooze(Duration::from_secs(3))
            } else {
                Outcome::Completed
            }
        })
        .build()
        .expect("valid")
        .start()
        .expect("started");
    let id = rt
        .enqueue(job("nap").max_attempts(1))
        .await
        .expect("ok")
        .id();
    assert_eq!(
        f.finished(id).await,
        JobState::Completed,
        "one attempt allowed, yet it ran twice"
    );
    rt.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(start_paused = true)]
async fn cancel_stops_a_running_handler_and_never_rewrites_a_finished_job() {
    let f = Fixture::new();
    let rt = f
        .builder("n1")
        .queue("default", 2)
        .handler("long", |ctx: JobCtx, _p| async move {
            ctx.cancel.wait().await;
            Outcome::Failed("stopped".into())
        })
        .handler("quick", |_ctx, _p| async move { Outcome::Completed })
        .build()
        .expect("valid")
        .start()
        .expect("started");
    let long = rt.enqueue(job("long")).await.expect("ok").id();
    f.recorder
        .wait_for(
            "long started",
            |e| matches!(e, crate::events::Event::HandlerStarted { job, .. } if *job == long),
        )
        .await;
    assert_eq!(rt.cancel(long).await.expect("ok"), CancelResult::Requested);
    assert_eq!(f.finished(long).await, JobState::Cancelled);
    let quick = rt.enqueue(job("quick")).await.expect("ok").id();
    assert_eq!(f.finished(quick).await, JobState::Completed);
    assert_eq!(
        rt.cancel(quick).await.expect("ok"),
        CancelResult::AlreadyFinished
    );
    assert_eq!(f.state(quick).await, JobState::Completed);
    rt.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(start_paused = true)]
async fn a_worker_that_loses_its_claim_drops_the_handler_and_finalizes_nothing() {
    let f = Fixture::new();
    let rt = f
        .builder("n1")
        .queue("default", 1)
        .handler("stuck", |_ctx, _p| async move {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Outcome::Completed
        })
        .build()
        .expect("valid")
        .start()
        .expect("started");
    let id = rt
        .enqueue(job("stuck").max_attempts(1))
        .await
        .expect("ok")
        .id();
    f.recorder
        .wait_for("started", |e| {
            matches!(e, crate::events::Event::HandlerStarted { .. })
        })
        .await;
    // Another node's rescuer revokes the claim (as if this worker had stalled).
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(
        f.store
            .rescue_stale(Duration::ZERO)
            .await
            .expect("ok")
            .len(),
        1
    );
    f.recorder.wait_for("drop", |e| matches!(e, crate::events::Event::HandlerEnded { outcome, .. } if outcome == "aborted")).await;
    assert!(f
        .recorder
        .find(|e| matches!(e, crate::events::Event::ClaimLost { .. }))
        .is_some());
    assert!(f
        .recorder
        .find(|e| matches!(e, crate::events::Event::JobFinalized { .. }))
        .is_none());
    assert_eq!(
        f.state(id).await,
        JobState::Discarded,
        "the rescuer's verdict stands"
    );
    rt.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(start_paused = true)]
async fn shutdown_keeps_its_deadline_and_gives_stubborn_jobs_back() {
    let f = Fixture::new();
    let rt = f
        .builder("n1")
        .queue("default", 1)
        .handler("stubborn", |_ctx, _p| async move {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Outcome::Completed
        })
        .build()
        .expect("valid")
        .start()
        .expect("started");
    let id = rt
        .enqueue(job("stubborn").max_attempts(1))
        .await
        .expect("ok")
        .id();
    f.recorder
        .wait_for("started", |e| {
            matches!(e, crate::events::Event::HandlerStarted { .. })
        })
        .await;
    let began = f.clock.monotonic();
    let report = rt.shutdown(Duration::from_secs(2)).await;
    assert!(
        f.clock.monotonic() - began <= Duration::from_secs(3),
        "deadline plus one heartbeat interval"
    );
    assert_eq!(report.released, vec![id]);
    assert!(
        report
            .tasks
            .aborted
            .iter()
            .any(|t| t.starts_with("worker/")),
        "{report:?}"
    );
    let row = f.store.get_job(id).await.expect("ok").expect("row");
    assert_eq!(row.state, JobState::Scheduled, "given back, due now");
    assert_eq!(row.max_attempts, 2, "without spending its attempt");
}

#[tokio::test(start_paused = true)]
async fn fenced_effects_apply_once_across_attempts() {
    let f = Fixture::new();
    let rt = f
        .builder("n1")
        .queue("default", 1)
        .handler("pay", |ctx: JobCtx, _p| async move {
            let _ = ctx.effect("charge", json!(ctx.attempt)).await;
            if ctx.attempt < 3 {
                Outcome::Failed("crashed after paying".into())
            } else {
                Outcome::Completed
            }
        })
        .build()
        .expect("valid")
        .start()
        .expect("started");
    let id = rt.enqueue(job("pay")).await.expect("ok").id();
    assert_eq!(f.finished(id).await, JobState::Completed);
    assert_eq!(
        f.store.get_effect(id, "charge").await.expect("ok"),
        Some(json!(1)),
        "written by attempt 1 only"
    );
    rt.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(start_paused = true)]
async fn the_leader_fires_each_periodic_slot_once_and_paused_queues_wait() {
    let f = Fixture::new();
    let rt = f
        .builder("n1")
        .queue("default", 1)
        .handler("tick", |_ctx, _p| async move { Outcome::Completed })
        .periodic("every10s", Duration::from_secs(10), job("tick"))
        .build()
        .expect("valid")
        .start()
        .expect("started");
    rt.pause("default").await.expect("paused");
    tokio::time::sleep(Duration::from_secs(35)).await;
    let fired: Vec<_> = f
        .recorder
        .events()
        .into_iter()
        .filter(|e| matches!(e, crate::events::Event::PeriodicFired { .. }))
        .collect();
    assert!(
        (3..=5).contains(&fired.len()),
        "one per 10s slot: {fired:?}"
    );
    let counts = f.store.count_by_state().await.expect("ok");
    assert_eq!(counts.get(JobState::Completed), 0, "paused");
    rt.resume("default").await.expect("resumed");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let counts = f.store.count_by_state().await.expect("ok");
    assert!(counts.get(JobState::Completed) >= 3, "{counts:?}");
    rt.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(start_paused = true)]
async fn a_cron_schedule_fires_each_fire_time_once() {
    let f = Fixture::new();
    let rt = f
        .builder("n1")
        .queue("default", 1)
        .handler("tick", |_ctx, _p| async move { Outcome::Completed })
        .cron("every5s", "*/5 * * * * *", job("tick"))
        .build()
        .expect("valid")
        .start()
        .expect("started");
    tokio::time::sleep(Duration::from_secs(21)).await;
    let slots: Vec<i64> = f
        .recorder
        .events()
        .into_iter()
        .filter_map(|e| match e {
            crate::events::Event::PeriodicFired { slot_ms, .. } => Some(slot_ms),
            _ => None,
        })
        .collect();
    assert!(
        (4..=5).contains(&slots.len()),
        "one per 5 s fire time: {slots:?}"
    );
    assert!(
        slots.iter().all(|s| s % 5_000 == 0),
        "on the fire times: {slots:?}"
    );
    assert!(
        slots.windows(2).all(|w| w[0] < w[1]),
        "each once: {slots:?}"
    );
    rt.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(start_paused = true)]
async fn bad_builder_input_names_the_field() {
    let f = Fixture::new();
    let err = |b: RuntimeBuilder| match b.build() {
        Err(RuntimeError::Config { field, .. }) => field,
        Err(RuntimeError::Storage(crate::storage::StorageError::Invalid { field, .. })) => field,
        Err(other) => panic!("{other}"),
        Ok(_) => panic!("accepted"),
    };
    assert_eq!(err(f.builder("n1").queue("a b", 1)), "queue");
    assert_eq!(err(f.builder("n1").queue("q", 1).queue("q", 2)), "queue");
    assert_eq!(err(f.builder("n1").queue("q", 100_000)), "queue.workers");
    assert_eq!(err(f.builder("")), "node");
    assert_eq!(
        err(f
            .builder("n1")
            .periodic("p", Duration::from_millis(10), job("k"))),
        "periodic.every"
    );
    assert_eq!(
        err(f.builder("n1").cron("c", "every tuesday", job("k"))),
        "periodic.cron"
    );
}

/// Serves a `MemStorage`, but the first heartbeat's reply takes `first` and
/// every later heartbeat never comes back (a stalled connection).
struct SlowBeats {
    store: Arc<MemStorage>,
    first: Duration,
    beats: AtomicU32,
}

#[async_trait::async_trait]
impl crate::storage::ops::Transport for SlowBeats {
    async fn call(
        &self,
        op: crate::storage::ops::Op,
    ) -> crate::storage::StorageResult<crate::storage::ops::Reply> {
        if !matches!(op, crate::storage::ops::Op::Heartbeat { .. }) {
            return Ok(crate::storage::ops::apply(self.store.as_ref(), op).await);
        }
        if self.beats.fetch_add(1, Ordering::SeqCst) > 0 {
            // Later heartbeats never arrive.
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        // The first is applied at once (stamped on storage's clock when it
        // arrives), but its reply comes late: the worst case for the
        // worker's trust.
        let reply = crate::storage::ops::apply(self.store.as_ref(), op).await;
        tokio::time::sleep(self.first).await;
        Ok(reply)
    }
}

#[tokio::test(start_paused = true)]
async fn a_slow_heartbeat_reply_does_not_extend_trust_past_the_rescue() {
    // Storage may record a heartbeat as soon as it is sent, so the worker's
    // trust must be anchored at the send; anchored at the (late) reply, the
    // handler would outlive the moment the rescuer may hand the job on.
    let f = Fixture::new();
    let cfg = JobsConfig::default();
    let slow = crate::storage::ops::Remote(SlowBeats {
        store: f.store.clone(),
        first: cfg.claim_trust - cfg.heartbeat_interval - Duration::from_millis(100),
        beats: AtomicU32::new(0),
    });
    let storage: SharedStorage = Arc::new(slow);
    let rt = Runtime::builder("n1", storage, f.clock.clone())
        .observer(f.recorder.clone())
        .rng_seed(7)
        .queue("default", 1)
        .handler("stuck", |_ctx, _p| async move {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Outcome::Completed
        })
        .build()
        .expect("valid")
        .start()
        .expect("started");
    rt.enqueue(job("stuck")).await.expect("ok");
    f.recorder
        .wait_for("started", |e| {
            matches!(e, crate::events::Event::HandlerStarted { .. })
        })
        .await;
    // Just past the stale threshold since the last heartbeat storage recorded
    // (the first one, sent one interval after the start).
    tokio::time::sleep(cfg.heartbeat_interval + cfg.stale_threshold + Duration::from_millis(200))
        .await;
    let revoked = f.store.rescue_stale(cfg.stale_threshold).await.expect("ok");
    assert_eq!(revoked.len(), 1, "storage sees the claim as stale");
    assert!(
        f.recorder
            .find(|e| matches!(e, crate::events::Event::HandlerEnded { .. }))
            .is_some(),
        "the rescuer may hand the job on now, so its handler must be gone already"
    );
    rt.shutdown(Duration::from_secs(1)).await;
}

/// One wake-up can stand for many jobs (one PostgreSQL NOTIFY per enqueue
/// transaction): the worker it wakes passes it on while it finds work, so the
/// whole backlog runs in parallel instead of waiting for the other workers' polls.
#[tokio::test(start_paused = true)]
async fn one_wake_up_spreads_a_backlog_over_every_idle_worker() {
    let f = Fixture::new();
    let cfg = JobsConfig {
        idle_poll: Duration::from_secs(3600),
        ..JobsConfig::default()
    };
    let rt = f
        .builder("n1")
        .jobs_config(cfg)
        .queue("default", 4)
        .handler("work", |ctx: JobCtx, _p| async move {
            ctx.clock.sleep(Duration::from_secs(1)).await;
            Outcome::Completed
        })
        .build()
        .expect("valid")
        .start()
        .expect("started");
    // Let every worker make its first (empty) claim and go to sleep for an hour.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut ids = Vec::new();
    for _ in 0..7 {
        // Straight into storage: no wake-up for these.
        let outcome = f.store.enqueue(job("work")).await;
        ids.push(outcome.expect("enqueued").id());
    }
    let began = f.clock.monotonic();
    ids.push(rt.enqueue(job("work")).await.expect("enqueued").id());
    for id in &ids {
        assert_eq!(f.finished(*id).await, JobState::Completed);
    }
    // Eight one-second jobs on four workers: two rounds, not eight.
    let took = f.clock.monotonic() - began;
    assert!(took < Duration::from_secs(4), "took {took:?}");
    rt.shutdown(Duration::from_secs(5)).await;
}

/// Storage ten milliseconds away: every call takes a round trip.
struct Distant(Arc<MemStorage>);

/// One storage round trip of [`Distant`].
const DISTANT_RTT: Duration = Duration::from_millis(10);

#[async_trait::async_trait]
impl crate::storage::ops::Transport for Distant {
    async fn call(
        &self,
        op: crate::storage::ops::Op,
    ) -> crate::storage::StorageResult<crate::storage::ops::Reply> {
        tokio::time::sleep(DISTANT_RTT).await;
        Ok(crate::storage::ops::apply(self.0.as_ref(), op).await)
    }
}

/// A runtime `n1` on `storage` with one worker on `default` whose `count`
/// handler counts its runs in `runs`.
fn counting_worker(
    f: &Fixture,
    storage: SharedStorage,
    cfg: JobsConfig,
    runs: &Arc<AtomicU32>,
) -> RuntimeHandle {
    Runtime::builder("n1", storage, f.clock.clone())
        .observer(f.recorder.clone())
        .rng_seed(7)
        .jobs_config(cfg)
        .queue("default", 1)
        .handler("count", counting(runs))
        .build()
        .expect("valid")
        .start()
        .expect("started")
}

/// How many times `id` was claimed for a worker, run or not.
fn claims_of(f: &Fixture, id: JobId) -> usize {
    f.recorder
        .events()
        .iter()
        .filter(|e| matches!(e, crate::events::Event::JobClaimed { job, .. } if *job == id))
        .count()
}

/// How long one worker with `claim_ahead` takes over 20 no-op jobs on
/// [`Distant`] storage; every job must run exactly once.
async fn backlog_time(claim_ahead: u32) -> Duration {
    let f = Fixture::new();
    let runs = Arc::new(AtomicU32::new(0));
    let mut ids = Vec::new();
    for _ in 0..20 {
        let outcome = f.store.enqueue(job("count")).await;
        ids.push(outcome.expect("enqueued").id());
    }
    let storage: SharedStorage = Arc::new(crate::storage::ops::Remote(Distant(f.store.clone())));
    let began = f.clock.monotonic();
    let cfg = JobsConfig {
        claim_ahead,
        ..JobsConfig::default()
    };
    let rt = counting_worker(&f, storage, cfg, &runs);
    let mut took = Duration::ZERO;
    for id in &ids {
        assert_eq!(f.finished(*id).await, JobState::Completed);
        took = f
            .recorder
            .find(|e| matches!(e, crate::events::Event::JobFinalized { job, .. } if job == id))
            .map_or(took, |(_, at, _)| took.max(at - began));
    }
    assert_eq!(runs.load(Ordering::SeqCst), 20, "each job ran once");
    let report = rt.shutdown(Duration::from_secs(5)).await;
    assert!(report.tasks.is_clean(), "{report:?}");
    took
}

/// Claiming one job at a time, a worker waits a round trip per job (its
/// finalize, which carries its next claim). Claiming ahead, the finalizes of a
/// hand overlap the jobs after them, so a hand costs about one round trip.
#[tokio::test(start_paused = true)]
async fn a_worker_claiming_ahead_overlaps_its_finalizes_with_its_next_jobs() {
    let one_at_a_time = backlog_time(0).await;
    let ahead = backlog_time(4).await;
    assert!(one_at_a_time >= DISTANT_RTT * 20, "{one_at_a_time:?}");
    assert!(ahead <= DISTANT_RTT * 10, "{ahead:?} vs {one_at_a_time:?}");
}

/// Runs a slow job then a quick one on one worker that claims both in one
/// hand, through `transport` (which `mid_run` may break while the slow one
/// runs; the fixture's store stays reachable to the test). Returns the quick
/// job's (claims, attempts started).
async fn hand_of_slow_then_quick<T: crate::storage::ops::Transport + 'static>(
    slow: Duration,
    transport: impl FnOnce(Arc<MemStorage>) -> T,
    mid_run: impl AsyncFnOnce(&Fixture, &T),
) -> (usize, Vec<u32>) {
    let f = Fixture::new();
    let first = f.store.enqueue(job("slow")).await;
    let second = f.store.enqueue(job("quick")).await;
    let (first, second) = (first.expect("ok").id(), second.expect("ok").id());
    let remote = Arc::new(crate::storage::ops::Remote(transport(f.store.clone())));
    let storage: SharedStorage = remote.clone();
    let rt = Runtime::builder("n1", storage, f.clock.clone())
        .observer(f.recorder.clone())
        .rng_seed(7)
        .jobs_config(JobsConfig {
            claim_ahead: 1,
            ..JobsConfig::default()
        })
        .queue("default", 1)
        .handler("slow", move |ctx: JobCtx, _p| async move {
            ctx.clock.sleep(slow).await;
            Outcome::Completed
        })
        .handler("quick", |_ctx, _p| async move { Outcome::Completed })
        .build()
        .expect("valid")
        .start()
        .expect("started");
    mid_run(&f, &remote.0).await;
    assert_eq!(f.finished(first).await, JobState::Completed);
    assert_eq!(f.finished(second).await, JobState::Completed);
    rt.shutdown(Duration::from_secs(5)).await;
    let events = f.recorder.events();
    let claims = claims_of(&f, second);
    let starts = events
        .iter()
        .filter_map(|e| match e {
            crate::events::Event::HandlerStarted { job, attempt } if *job == second => {
                Some(*attempt)
            }
            _ => None,
        })
        .collect();
    (claims, starts)
}

/// A job waiting in hand is heartbeated like a running one: held longer than
/// `stale_threshold` behind a slow job, it is not rescued, and runs once on
/// the claim that took it.
#[tokio::test(start_paused = true)]
async fn a_job_held_in_hand_is_kept_alive_and_runs_on_its_claim() {
    let cfg = JobsConfig::default();
    let slow = cfg.stale_threshold + Duration::from_secs(1);
    let rescue = async |f: &Fixture, _: &Flaky| {
        tokio::time::sleep(cfg.stale_threshold + Duration::from_millis(500)).await;
        let revoked = f.store.rescue_stale(cfg.stale_threshold).await;
        assert_eq!(revoked.expect("ok"), vec![], "nothing in hand went stale");
    };
    let (claims, starts) = hand_of_slow_then_quick(slow, Flaky::healthy, rescue).await;
    assert_eq!(
        (claims, starts),
        (1, vec![1]),
        "run once on its first claim"
    );
}

/// Cut off from storage, a worker cannot keep its hand alive: the job waiting
/// there goes stale and the rescuer hands it on. The worker must not start it
/// on that claim (its renewal fails, so it gives the job back); it runs once,
/// on the claim that came after.
#[tokio::test(start_paused = true)]
async fn a_job_that_went_stale_in_hand_is_not_started_on_its_old_claim() {
    let cfg = JobsConfig::default();
    let slow = Duration::from_secs(30);
    let cut_off = async |f: &Fixture, flaky: &Flaky| {
        tokio::time::sleep(Duration::from_millis(500)).await;
        flaky.set_failing(true);
        tokio::time::sleep(cfg.stale_threshold + Duration::from_millis(500)).await;
        let revoked = f.store.rescue_stale(cfg.stale_threshold).await;
        assert_eq!(
            revoked.expect("ok").len(),
            2,
            "the running job and the held one"
        );
        flaky.set_failing(false);
    };
    let (claims, starts) = hand_of_slow_then_quick(slow, Flaky::healthy, cut_off).await;
    assert_eq!(starts, vec![2], "never started on the stale claim");
    assert_eq!(claims, 2, "given back unrun (its first claim), then run");
}

/// Storage that, while `deaf` is set, fails every heartbeat of one job (the
/// one waiting in hand) and serves everything else.
struct DeafToHeldJob {
    store: Arc<MemStorage>,
    job: JobId,
    deaf: std::sync::atomic::AtomicBool,
}

#[async_trait::async_trait]
impl crate::storage::ops::Transport for DeafToHeldJob {
    async fn call(
        &self,
        op: crate::storage::ops::Op,
    ) -> crate::storage::StorageResult<crate::storage::ops::Reply> {
        let theirs = matches!(&op, crate::storage::ops::Op::Heartbeat { claim, .. } if claim.job == self.job);
        if theirs && self.deaf.load(Ordering::SeqCst) {
            return Err(crate::storage::StorageError::Unavailable("deaf".into()));
        }
        Ok(crate::storage::ops::apply(self.store.as_ref(), op).await)
    }
}

/// The rescuer revokes a job in hand whose keeper could not reach storage,
/// while the worker's running job stays healthy. Once storage hears the
/// worker again it answers `Lost`, and the worker drops the job unrun: it runs
/// once, on the claim that came after.
#[tokio::test(start_paused = true)]
async fn a_job_lost_while_in_hand_is_dropped_unrun() {
    let cfg = JobsConfig::default();
    let slow = cfg.stale_threshold + Duration::from_secs(2);
    let transport = |store| DeafToHeldJob {
        store,
        job: JobId(2),
        deaf: std::sync::atomic::AtomicBool::new(true),
    };
    let rescue = async |f: &Fixture, t: &DeafToHeldJob| {
        tokio::time::sleep(cfg.stale_threshold + Duration::from_millis(500)).await;
        let revoked = f.store.rescue_stale(cfg.stale_threshold).await;
        assert_eq!(revoked.expect("ok").len(), 1, "only the job in hand");
        t.deaf.store(false, Ordering::SeqCst);
    };
    let (claims, starts) = hand_of_slow_then_quick(slow, transport, rescue).await;
    assert_eq!(starts, vec![2], "never started on the revoked claim");
    assert_eq!(claims, 1, "dropped without a claim event, then run");
}

/// A job whose cancel is requested while it waits in hand is settled
/// cancelled when its turn comes, never started: the keeper heard the request,
/// and kept the claim alive meanwhile, so the rescuer never took it for lost
/// though the job ahead of it ran past `stale_threshold`.
#[tokio::test(start_paused = true)]
async fn a_job_cancelled_while_in_hand_is_settled_unrun() {
    let f = Fixture::new();
    let slow = f.store.enqueue(job("slow")).await;
    let held = f.store.enqueue(job("quick")).await;
    let (slow, held) = (slow.expect("ok").id(), held.expect("ok").id());
    let rt = f
        .builder("n1")
        .jobs_config(JobsConfig {
            claim_ahead: 1,
            ..JobsConfig::default()
        })
        .queue("default", 1)
        .handler("slow", |ctx: JobCtx, _p| async move {
            ctx.clock
                .sleep(JobsConfig::default().stale_threshold * 2)
                .await;
            Outcome::Completed
        })
        .handler("quick", |_ctx, _p| async move { Outcome::Completed })
        .build()
        .expect("valid")
        .start()
        .expect("started");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let asked = f.store.request_cancel(held).await;
    assert_eq!(
        asked.expect("ok"),
        CancelResult::Requested,
        "claimed, in hand"
    );
    assert_eq!(f.finished(slow).await, JobState::Completed);
    assert_eq!(f.finished(held).await, JobState::Cancelled);
    let started = f
        .recorder
        .events()
        .into_iter()
        .any(|e| matches!(e, crate::events::Event::HandlerStarted { job, .. } if job == held));
    assert!(!started, "a cancelled job in hand never starts");
    let row = f.store.get_job(held).await.expect("ok").expect("row");
    let rescued = row.errors.iter().any(|e| e.contains("lost its worker"));
    assert!(!rescued, "never rescued: {:?}", row.errors);
    rt.shutdown(Duration::from_secs(5)).await;
}

/// The leadership terms each recorder saw won.
fn terms_won(recorder: &Recorder) -> Vec<crate::storage::Term> {
    recorder
        .events()
        .into_iter()
        .filter_map(|e| match e {
            crate::events::Event::TermWon { term, .. } => Some(term),
            _ => None,
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn two_live_processes_under_one_node_name_never_share_the_lease() {
    // A StatefulSet starts worker-0 again while the old worker-0 still runs.
    let f = Fixture::new();
    let (old_events, new_events) = (Recorder::new(), Recorder::new());
    let old = f
        .builder("worker-0")
        .observer(old_events.clone())
        .build()
        .expect("valid")
        .start()
        .expect("started");
    old_events
        .wait_for("the old process leads", |e| {
            matches!(e, crate::events::Event::TermWon { .. })
        })
        .await;
    let new = f
        .builder("worker-0")
        .observer(new_events.clone())
        .build()
        .expect("valid")
        .start()
        .expect("started");
    assert_ne!(old.holder(), new.holder(), "one holder id per incarnation");
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(
        terms_won(&old_events),
        [crate::storage::Term(1)],
        "the old process keeps its term"
    );
    assert!(
        terms_won(&new_events).is_empty(),
        "the new one never evicts it: {:#?}",
        new_events.events()
    );
    let lease = f.store.lease(MAINTENANCE_LEASE).expect("granted");
    assert_eq!(lease.holder.as_deref(), Some(old.holder()));
    old.shutdown(Duration::from_secs(1)).await;
    new_events
        .wait_for("the new process takes over", |e| {
            matches!(e, crate::events::Event::TermWon { .. })
        })
        .await;
    new.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn a_runtime_starts_again_after_shutdown_as_a_new_incarnation_and_refuses_a_second_live_start(
) {
    let f = Fixture::new();
    let rt = f
        .builder("n1")
        .queue("default", 1)
        .handler("ok", |_ctx, _p| async move { Outcome::Completed })
        .build()
        .expect("valid");
    let first = rt.start().expect("started");
    assert!(matches!(rt.start(), Err(RuntimeError::AlreadyRunning)));
    let first_holder = first.holder().to_owned();
    first.shutdown(Duration::from_secs(1)).await;

    let second = rt.start().expect("starts again");
    assert_ne!(second.holder(), first_holder);
    assert!(second.holder().starts_with("n1#"), "{}", second.holder());
    let id = second.enqueue(job("ok")).await.expect("ok").id();
    assert_eq!(f.finished(id).await, JobState::Completed);
    let started: Vec<_> = f
        .recorder
        .events()
        .into_iter()
        .filter(|e| matches!(e, crate::events::Event::RuntimeStarted { .. }))
        .collect();
    assert_eq!(started.len(), 2, "each start is shown: {started:?}");
    second.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn restarting_the_maintainer_in_place_keeps_the_term_and_runs_its_services_again() {
    let f = Fixture::new();
    let rt = f
        .builder("n1")
        .build()
        .expect("valid")
        .start()
        .expect("started");
    f.recorder
        .wait_for("maintenance runs", |e| {
            matches!(e, crate::events::Event::MaintainerStarted { .. })
        })
        .await;
    let term = rt.maintenance_term().expect("running");
    rt.restart_maintainer().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        rt.maintenance_term(),
        Some(term),
        "{:#?}",
        f.recorder.events()
    );
    let started = f
        .recorder
        .events()
        .into_iter()
        .filter(|e| *e == crate::events::Event::MaintainerStarted { term })
        .count();
    assert_eq!(started, 2, "stopped and started again for the same term");
    // Its heartbeat is written again: storage accepts the term's writes.
    let lease = f.store.lease(MAINTENANCE_LEASE).expect("lease");
    assert!(f
        .store
        .maintenance_heartbeat(MAINTENANCE_LEASE, rt.holder(), term)
        .await
        .expect("ok"));
    assert_eq!(lease.term, term);
    rt.shutdown(Duration::from_secs(1)).await;
}

/// A handler that ignores a cancel request is dropped after `cancel_grace`,
/// and its job is settled cancelled then, not a stale window later by the
/// rescuer: the worker still held the claim.
#[tokio::test(start_paused = true)]
async fn a_handler_ignoring_a_cancel_is_dropped_and_its_job_cancelled_at_once() {
    let f = Fixture::new();
    let cfg = JobsConfig::default();
    // The cancel is heard at the next heartbeat, then the grace runs out.
    let settle_max = cfg.heartbeat_interval + cfg.cancel_grace + Duration::from_millis(500);
    assert!(settle_max < cfg.stale_threshold, "sooner than the rescuer");
    let id = f.store.enqueue(job("deaf")).await;
    let id = id.expect("ok").id();
    let rt = f
        .builder("n1")
        .jobs_config(cfg)
        .queue("default", 1)
        .handler("deaf", |ctx: JobCtx, _p| async move {
            ctx.clock.sleep(Duration::from_secs(3_600)).await;
            Outcome::Completed
        })
        .build()
        .expect("valid")
        .start()
        .expect("started");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(f.state(id).await, JobState::Running);
    let asked = f.store.request_cancel(id).await;
    assert_eq!(asked.expect("ok"), CancelResult::Requested);
    tokio::time::sleep(settle_max).await;
    assert_eq!(f.state(id).await, JobState::Cancelled);
    rt.shutdown(Duration::from_secs(5)).await;
}

/// Storage whose claim replies come back [`LATE_CLAIM_REPLY`] after it
/// applied them, and whose first heartbeat reply comes back `heartbeat_late`
/// after: a slow network, or a worker frozen while the reply waited.
struct LateReplies {
    store: Arc<MemStorage>,
    heartbeat_late: Duration,
    first_heartbeat: std::sync::atomic::AtomicBool,
}

/// Past half of the default `claim_trust`, so the worker renews before it starts.
const LATE_CLAIM_REPLY: Duration = Duration::from_secs(4);

#[async_trait::async_trait]
impl crate::storage::ops::Transport for LateReplies {
    async fn call(
        &self,
        op: crate::storage::ops::Op,
    ) -> crate::storage::StorageResult<crate::storage::ops::Reply> {
        use crate::storage::ops::Op;
        let late = match &op {
            Op::Claim { .. } => LATE_CLAIM_REPLY,
            Op::Heartbeat { .. } if self.first_heartbeat.swap(false, Ordering::SeqCst) => {
                self.heartbeat_late
            }
            _ => Duration::ZERO,
        };
        let reply = crate::storage::ops::apply(self.store.as_ref(), op).await;
        tokio::time::sleep(late).await;
        Ok(reply)
    }
}

/// A claim whose reply came late is renewed before its job starts; if the
/// renewal's reply comes back after the trust it renewed ran out, the claim
/// stood when storage applied it, not now (the rescuer may have handed the
/// job on since), so the worker gives the job back unrun and runs it on its
/// next claim. Found by swarm seed 800005351: a worker frozen 9 s with the
/// renewal's reply in flight started the job 1.3 s after storage revoked it.
#[tokio::test(start_paused = true)]
async fn a_renewal_answered_after_its_trust_ran_out_does_not_start_the_job() {
    let cfg = JobsConfig::default();
    for (late, claims) in [
        (cfg.claim_trust / 2, 1),
        (cfg.claim_trust + cfg.heartbeat_interval, 2),
    ] {
        let f = Fixture::new();
        let id = f.store.enqueue(job("count")).await.expect("enqueued").id();
        let runs = Arc::new(AtomicU32::new(0));
        let transport = LateReplies {
            store: f.store.clone(),
            heartbeat_late: late,
            first_heartbeat: std::sync::atomic::AtomicBool::new(true),
        };
        let storage: SharedStorage = Arc::new(crate::storage::ops::Remote(transport));
        let rt = counting_worker(&f, storage, cfg.clone(), &runs);
        assert_eq!(f.finished(id).await, JobState::Completed);
        rt.shutdown(Duration::from_secs(5)).await;
        let claimed = claims_of(&f, id);
        assert_eq!(
            runs.load(Ordering::SeqCst),
            1,
            "ran once (renewal {late:?} late)"
        );
        assert_eq!(claimed, claims, "renewal {late:?} late");
    }
}
