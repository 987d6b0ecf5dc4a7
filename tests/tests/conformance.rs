//! The storage conformance suite: every operation and every state transition of
//! the storage seam, run against every engine in [`engines::EngineKind::ALL`].
//!
//! `MemStorage` is the model, so these cases pin its semantics; a real engine
//! conforms when it passes them all. Trials are named `engine::case`, e.g.
//! `mem::finalize_is_idempotent`; an engine that cannot run here is listed with
//! its trials ignored, never passed. Each case gets a fresh, empty store and a
//! fresh current-thread runtime.
//!
//! Storage judges every stored time on its own clock, never the caller's: each
//! store is opened on a [`ManualClock`] the case moves. `s.now(t).call(..)` sets
//! that clock to `t` and makes the call, so every case states the time storage
//! judges each call at, whichever engine runs it.

mod engines;

use std::future::Future;
use std::ops::Deref;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use engines::EngineKind;
use engines::SharedStorage;
use keel::clock::{Clock, ManualClock, Timestamp};
use keel::storage::admin::{DISCARD_REASON, LIST_LIMIT_MAX};
use keel::storage::job::{
    ATTEMPTS_KEPT_MAX, ATTEMPTS_MAX, ERRORS_KEPT_MAX, NAME_LEN_MAX, PAYLOAD_BYTES_MAX,
    UNIQUE_KEY_LEN_MAX,
};
use keel::storage::{
    AdminOutcome, AdminStorage, Attempt, AttemptOutcome, CancelResult, Claim, EffectResult,
    EnqueueOutcome, EnqueueRequest, Finalize, FinalizeResult, HeartbeatStatus, Job, JobFilter,
    JobId, JobPage, JobState, Lease, PeriodicOutcome, QueueConfig, QueueSummary, ScheduleRecord,
    StateCounts, StorageError, StorageResult, Term,
};
use libtest_mimic::{Arguments, Failed};
use serde_json::json;

/// A store under test and storage's clock, which it judges every time on.
#[derive(Clone)]
struct Store {
    store: SharedStorage,
    clock: Arc<ManualClock>,
}

impl Store {
    /// Set storage's clock to `now` and hand back the store:
    /// `s.now(at(5)).heartbeat(c, "w")` is a heartbeat judged at `at(5)`.
    fn now(&self, now: Timestamp) -> &dyn AdminStorage {
        self.clock.set(now);
        &*self.store
    }
}

/// Calls that do not read the clock go straight to the store.
impl Deref for Store {
    type Target = dyn AdminStorage;

    fn deref(&self) -> &Self::Target {
        &*self.store
    }
}

/// Storage errors fail a case through `?`; wrong answers fail it by panicking.
type Outcome = Result<(), Failed>;
type CaseFn = Arc<dyn Fn(Store) -> Pin<Box<dyn Future<Output = Outcome>>> + Send + Sync>;

struct Case {
    name: &'static str,
    run: CaseFn,
}

fn case<F, Fut>(name: &'static str, f: F) -> Case
where
    F: Fn(Store) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Outcome> + 'static,
{
    Case {
        name,
        run: Arc::new(move |s| Box::pin(f(s))),
    }
}

macro_rules! cases {
    ($($f:ident),* $(,)?) => {
        vec![$(case(stringify!($f), $f)),*]
    };
}

fn cases() -> Vec<Case> {
    cases![
        // Leases.
        lease_every_grant_starts_a_new_term,
        lease_is_refused_while_live_and_taken_over_once_expired,
        lease_renew_extends_and_never_shortens,
        lease_stale_term_cannot_renew_or_resign,
        lease_resign_keeps_the_term_counter,
        lease_maintenance_heartbeat_is_fenced,
        lease_names_are_independent,
        // Time.
        every_engine_judges_time_on_its_own_clock_not_the_callers,
        // Enqueue.
        enqueue_assigns_ids_in_order_and_keeps_the_request,
        enqueue_future_is_scheduled_past_or_now_is_available,
        enqueue_unique_key_answers_with_the_existing_job,
        enqueue_batch_inserts_in_order,
        enqueue_batch_is_all_or_nothing,
        enqueue_batch_with_duplicate_keys,
        // Claim.
        claim_goes_by_priority_then_due_time_then_id,
        claim_takes_at_most_limit,
        claim_skips_a_paused_queue_until_unpaused,
        claim_leaves_jobs_that_are_not_available,
        claim_starts_a_new_attempt,
        // Heartbeat.
        heartbeat_alive_refreshes_the_claim,
        heartbeat_reports_cancel_requested,
        heartbeat_is_lost_for_a_stale_claim,
        // Finalize.
        finalize_completed_ends_the_job,
        finalize_retry_records_the_error_and_waits,
        finalize_discard_ends_the_job,
        finalize_snooze_gives_back_an_attempt,
        finalize_cancel_ends_the_job,
        finalize_is_idempotent,
        finalize_is_stale_for_a_lost_claim,
        finalize_after_cancel_request_never_runs_again,
        finalize_keeps_the_newest_errors,
        finalize_and_claim_finalizes_then_claims_the_next,
        // Fenced effects.
        effect_is_written_once_across_attempts,
        effect_is_refused_to_a_stale_claim,
        // Cancel.
        cancel_ends_an_idle_job_at_once,
        cancel_of_a_running_job_is_requested,
        cancel_request_survives_a_rescue,
        // Maintenance sweeps.
        rescue_returns_stale_claims_by_id_and_makes_them_due,
        rescue_discards_a_job_whose_attempts_are_spent,
        promote_due_counts_due_jobs,
        cleanup_deletes_old_finished_jobs_by_id_up_to_limit,
        cleanup_frees_unique_keys_and_effects_and_never_reuses_ids,
        cleanup_keeps_a_periodic_slot_fired,
        // Reads and settings.
        list_unfinished_by_id_up_to_limit,
        count_by_state_counts_every_state,
        queue_settings_round_trip,
        // Periodic.
        fire_periodic_fires_each_slot_once_for_the_current_term,
        // Validation.
        validation_of_enqueue_names_the_field,
        validation_of_leases_names_the_field,
        validation_of_claims_effects_periodics_and_queues_names_the_field,
        // Attempts.
        attempts_record_a_retry_then_a_completion,
        attempts_record_a_lost_worker_and_each_ending,
        attempts_keep_the_newest_records,
        attempts_keep_owners_and_errors_of_any_characters,
        // The operator's calls.
        admin_list_jobs_filters_by_state_queue_and_kind,
        admin_list_jobs_pages_newest_first,
        admin_list_jobs_validation_names_the_field,
        admin_list_effects_by_key,
        admin_list_queues_counts_jobs_and_shows_settings,
        admin_list_leases_by_name,
        admin_list_schedules_keeps_each_latest_slot,
        admin_retry_makes_a_job_that_is_not_running_due_now,
        admin_changes_leave_a_running_job_to_its_claim,
        admin_discard_ends_a_job_that_waits,
        admin_delete_removes_a_job_and_its_effects,
        admin_and_job_calls_on_an_id_past_any_row_find_no_job,
    ]
}

fn main() {
    let args = Arguments::from_args();
    engines::note_unavailable("conformance");
    let mut trials = Vec::new();
    for kind in EngineKind::ALL {
        for Case { name, run } in cases() {
            trials.push(engines::trial(kind, name, move || {
                engines::block_on(async move {
                    let clock = Arc::new(ManualClock::new(T0));
                    let test = format!("{}::{name}", kind.name());
                    let store = kind.open(&test, clock.clone()).await?;
                    run(Store { store, clock }).await
                })
            }));
        }
    }
    let conclusion = libtest_mimic::run(&args, trials);
    engines::cleanup();
    conclusion.exit();
}

// ---------------------------------------------------------------- helpers

const T0: Timestamp = Timestamp(1_700_000_000_000);
const TTL: Duration = Duration::from_secs(10);
/// The schedule text periodic slots are fired with.
const EVERY_MINUTE: &str = "every 60s";

fn at(ms: i64) -> Timestamp {
    Timestamp(T0.0 + ms)
}

fn ms(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

fn req() -> EnqueueRequest {
    EnqueueRequest::new("email", json!({"to": "a@b"})).queue("mail")
}

fn claim_of(job: &Job) -> Claim {
    Claim {
        job: job.id,
        attempt: job.attempt,
    }
}

/// The row `req` becomes when enqueued at `now` as job `id`, written out field
/// by field so the suite does not lean on the model's own constructor.
fn fresh(id: u64, req: &EnqueueRequest, now: Timestamp) -> Job {
    let scheduled_at = req.scheduled_at.unwrap_or(now);
    Job {
        id: JobId(id),
        kind: req.kind.clone(),
        queue: req.queue.clone(),
        payload: req.payload.clone(),
        priority: req.priority,
        state: if scheduled_at > now {
            JobState::Scheduled
        } else {
            JobState::Available
        },
        attempt: 0,
        max_attempts: req.max_attempts,
        scheduled_at,
        created_at: now,
        owner: None,
        heartbeat_at: None,
        cancel_requested: false,
        finalized_at: None,
        finalized_attempt: None,
        errors: Vec::new(),
        unique_key: req.unique_key.clone(),
        attempts: Vec::new(),
    }
}

/// The record of attempt `attempt`, claimed by `owner` at `started_at` and
/// still running.
fn started(attempt: u32, owner: &str, started_at: Timestamp) -> Attempt {
    Attempt {
        attempt,
        owner: owner.into(),
        started_at,
        ended_at: None,
        outcome: None,
        error: None,
    }
}

/// The record of attempt `attempt`, claimed by `owner` at `started_at`, that
/// ended at `ended_at` with `outcome` (and `error`).
fn ended(
    attempt: u32,
    owner: &str,
    started_at: Timestamp,
    ended_at: Timestamp,
    outcome: AttemptOutcome,
    error: Option<&str>,
) -> Attempt {
    Attempt {
        ended_at: Some(ended_at),
        outcome: Some(outcome),
        error: error.map(Into::into),
        ..started(attempt, owner, started_at)
    }
}

/// Job `id`, which must exist; checks the invariant every row keeps.
async fn job(s: &Store, id: JobId) -> StorageResult<Job> {
    let job = s
        .get_job(id)
        .await?
        .unwrap_or_else(|| panic!("{id} exists"));
    assert_eq!(
        job.state.is_terminal(),
        job.finalized_at.is_some(),
        "finalized_at is set iff the state is terminal: {job:?}"
    );
    Ok(job)
}

async fn enqueue(s: &Store, req: EnqueueRequest, now: Timestamp) -> StorageResult<JobId> {
    match s.now(now).enqueue(req).await? {
        EnqueueOutcome::Inserted(id) => Ok(id),
        dup => panic!("expected a new job, got {dup:?}"),
    }
}

async fn claim_one(s: &Store, owner: &str, now: Timestamp) -> StorageResult<Job> {
    let mut jobs = s.now(now).claim("mail", owner, 1).await?;
    assert_eq!(jobs.len(), 1, "one job claimed: {jobs:?}");
    Ok(jobs.remove(0))
}

async fn ids_claimed(
    s: &Store,
    queue: &str,
    limit: u32,
    now: Timestamp,
) -> StorageResult<Vec<u64>> {
    Ok(s.now(now)
        .claim(queue, "w", limit)
        .await?
        .iter()
        .map(|j| j.id.0)
        .collect())
}

/// The field a validation error names; panics on anything else.
fn field<T: std::fmt::Debug>(result: StorageResult<T>) -> String {
    match result {
        Err(StorageError::Invalid { field, .. }) => field,
        other => panic!("expected a validation error, got {other:?}"),
    }
}

fn counts(pairs: &[(JobState, u64)]) -> StateCounts {
    StateCounts(pairs.iter().copied().collect())
}

/// A retry `delay` after storage's now.
fn retry(error: &str, delay: Duration) -> Finalize {
    Finalize::Retry {
        error: error.into(),
        delay,
    }
}

// ---------------------------------------------------------------- leases

async fn lease_every_grant_starts_a_new_term(s: Store) -> Outcome {
    let first = s.now(T0).try_acquire("m", "a", TTL).await?;
    let expected = Lease {
        name: "m".into(),
        term: Term(1),
        holder: Some("a".into()),
        expires_at: at(10_000),
    };
    assert_eq!(first, Some(expected));
    // The same holder acquiring again still gets a fresh term.
    let again = s.now(at(5_000)).try_acquire("m", "a", TTL).await?;
    let expected = Lease {
        name: "m".into(),
        term: Term(2),
        holder: Some("a".into()),
        expires_at: at(15_000),
    };
    assert_eq!(again, Some(expected.clone()));
    assert_eq!(s.get_lease("m").await?, Some(expected));
    // The old term is fenced off even for its own holder.
    assert!(!s.now(at(6_000)).renew("m", "a", Term(1), TTL).await?);
    assert!(!s.maintenance_heartbeat("m", "a", Term(1)).await?);
    assert!(s.maintenance_heartbeat("m", "a", Term(2)).await?);
    Ok(())
}

async fn lease_is_refused_while_live_and_taken_over_once_expired(s: Store) -> Outcome {
    let a = s.now(T0).try_acquire("m", "a", TTL).await?;
    assert_eq!(s.now(at(9_999)).try_acquire("m", "b", TTL).await?, None);
    assert_eq!(s.get_lease("m").await?, a, "a refusal changes nothing");
    // Expiry is exclusive: at `expires_at` the grant has lapsed.
    let b = s.now(at(10_000)).try_acquire("m", "b", TTL).await?;
    let expected = Lease {
        name: "m".into(),
        term: Term(2),
        holder: Some("b".into()),
        expires_at: at(20_000),
    };
    assert_eq!(b, Some(expected.clone()));
    assert_eq!(s.now(at(10_001)).try_acquire("m", "a", TTL).await?, None);
    assert!(!s.now(at(10_002)).renew("m", "a", Term(1), TTL).await?);
    assert_eq!(s.get_lease("m").await?, Some(expected));
    Ok(())
}

async fn lease_renew_extends_and_never_shortens(s: Store) -> Outcome {
    s.now(at(10_000)).try_acquire("m", "a", TTL).await?;
    assert!(s.now(at(15_000)).renew("m", "a", Term(1), TTL).await?);
    let expires = |l: Option<Lease>| l.map(|l| l.expires_at);
    assert_eq!(expires(s.get_lease("m").await?), Some(at(25_000)));
    // A renewal after storage's clock stepped back, or with a shorter ttl,
    // keeps the later expiry already promised.
    assert!(s.now(at(1_000)).renew("m", "a", Term(1), TTL).await?);
    assert!(
        s.now(at(24_000))
            .renew("m", "a", Term(1), Duration::ZERO)
            .await?
    );
    assert_eq!(expires(s.get_lease("m").await?), Some(at(25_000)));
    // The holder of the current term may renew even after expiry while no one
    // else took the lease.
    assert!(s.now(at(30_000)).renew("m", "a", Term(1), TTL).await?);
    assert_eq!(expires(s.get_lease("m").await?), Some(at(40_000)));
    assert!(!s.now(at(30_000)).renew("m", "b", Term(1), TTL).await?);
    assert!(!s.now(at(30_000)).renew("absent", "a", Term(1), TTL).await?);
    assert_eq!(s.get_lease("absent").await?, None, "renew creates nothing");
    Ok(())
}

async fn lease_stale_term_cannot_renew_or_resign(s: Store) -> Outcome {
    s.now(T0).try_acquire("m", "a", TTL).await?;
    let b = s.now(at(20_000)).try_acquire("m", "b", TTL).await?;
    assert!(!s.now(at(21_000)).renew("m", "a", Term(1), TTL).await?);
    assert!(!s.resign("m", "a", Term(1)).await?);
    assert!(!s.resign("m", "b", Term(1)).await?, "b never held term 1");
    assert!(!s.now(at(21_000)).renew("m", "a", Term(2), TTL).await?);
    assert!(
        !s.resign("m", "a", Term(2)).await?,
        "a does not hold term 2"
    );
    assert!(
        !s.resign("m", "b", Term(3)).await?,
        "term 3 was never granted"
    );
    assert_eq!(s.get_lease("m").await?, b, "refusals change nothing");
    Ok(())
}

async fn lease_resign_keeps_the_term_counter(s: Store) -> Outcome {
    s.now(T0).try_acquire("m", "a", TTL).await?;
    assert!(s.resign("m", "a", Term(1)).await?);
    let resigned = Lease {
        name: "m".into(),
        term: Term(1),
        holder: None,
        expires_at: at(10_000),
    };
    assert_eq!(s.get_lease("m").await?, Some(resigned.clone()));
    assert!(!s.resign("m", "a", Term(1)).await?, "already resigned");
    assert!(!s.now(at(1)).renew("m", "a", Term(1), TTL).await?);
    assert!(!s.maintenance_heartbeat("m", "a", Term(1)).await?);
    assert_eq!(s.get_lease("m").await?, Some(resigned));
    // A resigned lease is free at once, under the next term.
    let b = s.now(at(1)).try_acquire("m", "b", TTL).await?;
    assert_eq!(
        b.map(|l| (l.term, l.holder)),
        Some((Term(2), Some("b".into())))
    );
    Ok(())
}

async fn lease_maintenance_heartbeat_is_fenced(s: Store) -> Outcome {
    let granted = s.now(T0).try_acquire("m", "a", TTL).await?;
    assert!(s.maintenance_heartbeat("m", "a", Term(1)).await?);
    assert!(!s.maintenance_heartbeat("m", "b", Term(1)).await?);
    assert!(!s.maintenance_heartbeat("m", "a", Term(2)).await?);
    assert!(!s.maintenance_heartbeat("absent", "a", Term(1)).await?);
    assert_eq!(s.get_lease("m").await?, granted, "it writes no lease");
    s.now(at(2)).try_acquire("m", "a", TTL).await?;
    assert!(!s.maintenance_heartbeat("m", "a", Term(1)).await?);
    assert!(s.maintenance_heartbeat("m", "a", Term(2)).await?);
    Ok(())
}

async fn lease_names_are_independent(s: Store) -> Outcome {
    assert_eq!(s.get_lease("m").await?, None);
    s.now(T0).try_acquire("m", "a", TTL).await?;
    let n = s.now(T0).try_acquire("n", "b", TTL).await?;
    assert_eq!(
        n.map(|l| (l.term, l.holder)),
        Some((Term(1), Some("b".into())))
    );
    assert!(!s.maintenance_heartbeat("n", "a", Term(1)).await?);
    assert!(s.maintenance_heartbeat("m", "a", Term(1)).await?);
    Ok(())
}

// ---------------------------------------------------------------- time

/// Storage's clock alone judges expiry and staleness: callers send durations,
/// never a time of their own, so however far their clocks are off (here a's an
/// hour behind storage's, b's an hour ahead) they cannot end a hold early or
/// keep one past its time.
async fn every_engine_judges_time_on_its_own_clock_not_the_callers(s: Store) -> Outcome {
    let hour = Duration::from_secs(3_600);
    let a_clock = ManualClock::new(T0.minus(hour));
    let b_clock = ManualClock::new(T0.plus(hour));
    // Time passes alike for storage and both callers; only storage's is read.
    let pass = |d: Duration| {
        s.clock.advance(d);
        a_clock.advance(d);
        b_clock.advance(d);
    };
    s.clock.set(T0);
    assert_eq!(s.time().await?, T0, "time() reads storage's clock");

    // A lease: granted for ttl from storage's now.
    let a = s.try_acquire("m", "a", TTL).await?.expect("granted");
    assert_eq!(a.expires_at, T0.plus(TTL), "not from a's clock");
    pass(ms(9_900));
    assert_eq!(s.time().await?, at(9_900));
    // By b's clock a's grant lapsed long ago; by storage's, 100 ms remain. No
    // ttl of b's changes that.
    assert!(!a.is_live(b_clock.now()) && a.is_live(s.clock.now()));
    for ttl in [TTL, Duration::ZERO, hour] {
        let refused = s.try_acquire("m", "b", ttl).await?;
        assert_eq!(refused, None, "b is refused (ttl {ttl:?})");
    }
    assert_eq!(s.get_lease("m").await?, Some(a.clone()), "nothing changed");
    pass(ms(100));
    assert_eq!(s.time().await?, at(10_000));
    // By a's clock its grant is live for another hour; by storage's it lapsed.
    assert!(a.is_live(a_clock.now()));
    let b = s.try_acquire("m", "b", TTL).await?;
    let expected = Lease {
        name: "m".into(),
        term: Term(2),
        holder: Some("b".into()),
        expires_at: at(20_000),
    };
    assert_eq!(b, Some(expected.clone()));
    assert!(!s.renew("m", "a", a.term, hour).await?, "a's term is over");
    assert_eq!(s.get_lease("m").await?, Some(expected));

    // A claim heartbeated at t is stale only once storage's clock passes
    // t + stale_after.
    let stale_after = Duration::from_secs(30);
    s.enqueue(req()).await?;
    let claimed = s.claim("mail", "w", 1).await?;
    let c = claim_of(&claimed[0]);
    pass(ms(5_000));
    let t = s.time().await?;
    assert_eq!(t, at(15_000));
    assert_eq!(s.heartbeat(c, "w").await?, HeartbeatStatus::Alive);
    assert_eq!(job(&s, c.job).await?.heartbeat_at, Some(t), "storage's t");
    pass(stale_after);
    assert_eq!(s.time().await?, t.plus(stale_after));
    assert_eq!(
        s.rescue_stale(stale_after).await?,
        Vec::new(),
        "exactly stale_after old is not stale"
    );
    assert_eq!(job(&s, c.job).await?.state, JobState::Running);
    pass(ms(1));
    assert_eq!(s.rescue_stale(stale_after).await?, vec![c]);
    let rescued = job(&s, c.job).await?;
    assert_eq!(
        (rescued.state, rescued.scheduled_at),
        (JobState::Retryable, t.plus(stale_after).plus(ms(1))),
        "due at storage's now"
    );
    Ok(())
}

// ---------------------------------------------------------------- enqueue

async fn enqueue_assigns_ids_in_order_and_keeps_the_request(s: Store) -> Outcome {
    let first = EnqueueRequest::new("email", json!({"to": "a@b", "n": [1, 2], "ok": true}))
        .queue("mail")
        .priority(3)
        .max_attempts(7)
        .unique_key("welcome:1");
    let second = EnqueueRequest::new("report", json!(null));
    let third = req().scheduled_at(at(500));
    assert_eq!(
        s.now(T0).enqueue(first.clone()).await?,
        EnqueueOutcome::Inserted(JobId(1))
    );
    assert_eq!(
        s.now(at(1)).enqueue(second.clone()).await?,
        EnqueueOutcome::Inserted(JobId(2))
    );
    assert_eq!(
        s.now(at(2)).enqueue(third.clone()).await?,
        EnqueueOutcome::Inserted(JobId(3))
    );
    let expected = Job {
        id: JobId(1),
        kind: "email".into(),
        queue: "mail".into(),
        payload: json!({"to": "a@b", "n": [1, 2], "ok": true}),
        priority: 3,
        state: JobState::Available,
        attempt: 0,
        max_attempts: 7,
        scheduled_at: T0,
        created_at: T0,
        owner: None,
        heartbeat_at: None,
        cancel_requested: false,
        finalized_at: None,
        finalized_attempt: None,
        errors: Vec::new(),
        unique_key: Some("welcome:1".into()),
        attempts: Vec::new(),
    };
    assert_eq!(job(&s, JobId(1)).await?, expected);
    assert_eq!(job(&s, JobId(2)).await?, fresh(2, &second, at(1)));
    assert_eq!(job(&s, JobId(3)).await?, fresh(3, &third, at(2)));
    assert_eq!(s.get_job(JobId(4)).await?, None);
    assert_eq!(s.get_job(JobId(0)).await?, None);
    Ok(())
}

async fn enqueue_future_is_scheduled_past_or_now_is_available(s: Store) -> Outcome {
    let future = req().scheduled_at(at(5_000));
    let past = req().scheduled_at(at(-5_000));
    let now = req().scheduled_at(T0);
    for r in [&future, &past, &now] {
        enqueue(&s, r.clone(), T0).await?;
    }
    assert_eq!(job(&s, JobId(1)).await?.state, JobState::Scheduled);
    assert_eq!(
        job(&s, JobId(2)).await?,
        fresh(2, &past, T0),
        "keeps its time"
    );
    assert_eq!(job(&s, JobId(3)).await?.state, JobState::Available);
    assert_eq!(
        s.count_by_state().await?,
        counts(&[(JobState::Scheduled, 1), (JobState::Available, 2)])
    );
    // Earlier due time first, whatever the id.
    assert_eq!(ids_claimed(&s, "mail", 10, T0).await?, vec![2, 3]);
    Ok(())
}

async fn enqueue_unique_key_answers_with_the_existing_job(s: Store) -> Outcome {
    let first = req().unique_key("k");
    enqueue(&s, first.clone(), T0).await?;
    let other_payload = EnqueueRequest::new("other", json!(2)).unique_key("k");
    assert_eq!(
        s.now(at(1)).enqueue(other_payload).await?,
        EnqueueOutcome::Duplicate(JobId(1))
    );
    assert_eq!(job(&s, JobId(1)).await?, fresh(1, &first, T0), "unchanged");
    // A duplicate consumes no id.
    assert_eq!(enqueue(&s, req().unique_key("k2"), at(2)).await?, JobId(2));
    // Finished jobs keep their key until cleaned up.
    let c = claim_of(&claim_one(&s, "w", at(3)).await?);
    s.now(at(4)).finalize(c, "w", Finalize::Completed).await?;
    assert_eq!(
        s.now(at(5)).enqueue(req().unique_key("k")).await?,
        EnqueueOutcome::Duplicate(JobId(1))
    );
    assert_eq!(s.count_by_state().await?.0.values().sum::<u64>(), 2);
    Ok(())
}

async fn enqueue_batch_inserts_in_order(s: Store) -> Outcome {
    assert_eq!(s.now(T0).enqueue_batch(Vec::new()).await?, Vec::new());
    let reqs = vec![
        req(),
        EnqueueRequest::new("b", json!(1)).priority(0),
        req().scheduled_at(at(100)),
    ];
    let out = s.now(T0).enqueue_batch(reqs.clone()).await?;
    assert_eq!(
        out,
        vec![
            EnqueueOutcome::Inserted(JobId(1)),
            EnqueueOutcome::Inserted(JobId(2)),
            EnqueueOutcome::Inserted(JobId(3)),
        ]
    );
    for (i, r) in reqs.iter().enumerate() {
        let id = i as u64 + 1;
        assert_eq!(job(&s, JobId(id)).await?, fresh(id, r, T0));
    }
    Ok(())
}

async fn enqueue_batch_is_all_or_nothing(s: Store) -> Outcome {
    enqueue(&s, req(), T0).await?;
    let bad = vec![req(), req().unique_key("k"), req().priority(10)];
    assert_eq!(field(s.now(at(1)).enqueue_batch(bad).await), "priority");
    assert_eq!(
        s.count_by_state().await?,
        counts(&[(JobState::Available, 1)]),
        "nothing of the bad batch was inserted"
    );
    // Neither its key nor its ids were taken.
    assert_eq!(enqueue(&s, req().unique_key("k"), at(2)).await?, JobId(2));
    Ok(())
}

async fn enqueue_batch_with_duplicate_keys(s: Store) -> Outcome {
    enqueue(&s, req().unique_key("a"), T0).await?;
    let batch = vec![
        req().unique_key("b"),
        req().unique_key("b"),
        req().unique_key("a"),
        req(),
    ];
    assert_eq!(
        s.now(at(1)).enqueue_batch(batch).await?,
        vec![
            EnqueueOutcome::Inserted(JobId(2)),
            EnqueueOutcome::Duplicate(JobId(2)),
            EnqueueOutcome::Duplicate(JobId(1)),
            EnqueueOutcome::Inserted(JobId(3)),
        ]
    );
    assert_eq!(
        s.list_unfinished(10).await?,
        vec![JobId(1), JobId(2), JobId(3)]
    );
    Ok(())
}

// ---------------------------------------------------------------- claim

async fn claim_goes_by_priority_then_due_time_then_id(s: Store) -> Outcome {
    // Storage's clock steps back between these: 2 is due before 1, though
    // enqueued after it.
    enqueue(&s, req().priority(5), at(10)).await?; // 1
    enqueue(&s, req().priority(5), at(0)).await?; // 2
    enqueue(&s, req().priority(1), at(20)).await?; // 3
    enqueue(&s, req().priority(5), at(0)).await?; // 4: ties with 2 on time
    enqueue(&s, req().priority(0).scheduled_at(at(1_000)), at(0)).await?; // 5: not due
    enqueue(&s, req().priority(0).queue("other"), at(0)).await?; // 6: other queue
    assert_eq!(ids_claimed(&s, "mail", 10, at(30)).await?, vec![3, 2, 4, 1]);
    assert_eq!(ids_claimed(&s, "other", 10, at(30)).await?, vec![6]);
    // The due time is when it became due, not when it was enqueued: 7 was
    // enqueued first but is due after 8.
    enqueue(&s, req().scheduled_at(at(100)), at(40)).await?; // 7
    enqueue(&s, req(), at(60)).await?; // 8
    assert_eq!(s.now(at(200)).promote_due().await?, 1);
    assert_eq!(ids_claimed(&s, "mail", 10, at(200)).await?, vec![8, 7]);
    assert_eq!(
        ids_claimed(&s, "nowhere", 10, at(30)).await?,
        Vec::<u64>::new()
    );
    Ok(())
}

async fn claim_takes_at_most_limit(s: Store) -> Outcome {
    for _ in 0..3 {
        enqueue(&s, req(), T0).await?;
    }
    assert_eq!(ids_claimed(&s, "mail", 0, T0).await?, Vec::<u64>::new());
    assert_eq!(ids_claimed(&s, "mail", 2, T0).await?, vec![1, 2]);
    assert_eq!(ids_claimed(&s, "mail", 5, T0).await?, vec![3]);
    assert_eq!(ids_claimed(&s, "mail", 5, T0).await?, Vec::<u64>::new());
    Ok(())
}

async fn claim_skips_a_paused_queue_until_unpaused(s: Store) -> Outcome {
    enqueue(&s, req(), T0).await?;
    enqueue(&s, req().queue("other"), T0).await?;
    let mut config = QueueConfig {
        name: "mail".into(),
        workers: Some(2),
        paused: true,
    };
    s.set_queue(config.clone()).await?;
    assert_eq!(ids_claimed(&s, "mail", 10, at(1)).await?, Vec::<u64>::new());
    assert_eq!(job(&s, JobId(1)).await?.attempt, 0, "untouched");
    assert_eq!(ids_claimed(&s, "other", 10, at(1)).await?, vec![2]);
    config.paused = false;
    s.set_queue(config).await?;
    assert_eq!(ids_claimed(&s, "mail", 10, at(2)).await?, vec![1]);
    Ok(())
}

async fn claim_leaves_jobs_that_are_not_available(s: Store) -> Outcome {
    enqueue(&s, req().scheduled_at(at(1_000)), T0).await?;
    // Only promotion makes a scheduled job available, even once it is due.
    assert_eq!(
        ids_claimed(&s, "mail", 10, at(2_000)).await?,
        Vec::<u64>::new()
    );
    assert_eq!(s.now(at(2_000)).promote_due().await?, 1);
    let c = claim_of(&claim_one(&s, "w", at(2_000)).await?);
    assert_eq!(
        ids_claimed(&s, "mail", 10, at(2_001)).await?,
        Vec::<u64>::new()
    );
    s.now(at(2_002))
        .finalize(c, "w", retry("boom", ms(500)))
        .await?;
    assert_eq!(
        ids_claimed(&s, "mail", 10, at(3_000)).await?,
        Vec::<u64>::new()
    );
    assert_eq!(s.now(at(3_000)).promote_due().await?, 1);
    assert_eq!(ids_claimed(&s, "mail", 10, at(3_000)).await?, vec![1]);
    Ok(())
}

async fn claim_starts_a_new_attempt(s: Store) -> Outcome {
    let r = req().max_attempts(3);
    enqueue(&s, r.clone(), T0).await?;
    let claimed = claim_one(&s, "w1", at(7)).await?;
    let expected = Job {
        state: JobState::Running,
        attempt: 1,
        owner: Some("w1".into()),
        heartbeat_at: Some(at(7)),
        attempts: vec![started(1, "w1", at(7))],
        ..fresh(1, &r, T0)
    };
    assert_eq!(claimed, expected);
    assert_eq!(job(&s, JobId(1)).await?, expected);
    s.now(at(8))
        .finalize(claim_of(&claimed), "w1", retry("boom", Duration::ZERO))
        .await?;
    s.now(at(8)).promote_due().await?;
    let second = claim_one(&s, "w2", at(9)).await?;
    let expected = Job {
        state: JobState::Running,
        attempt: 2,
        owner: Some("w2".into()),
        heartbeat_at: Some(at(9)),
        scheduled_at: at(8),
        finalized_attempt: Some(1),
        errors: vec!["boom".into()],
        attempts: vec![
            ended(1, "w1", at(7), at(8), AttemptOutcome::Failed, Some("boom")),
            started(2, "w2", at(9)),
        ],
        ..fresh(1, &r, T0)
    };
    assert_eq!(second, expected);
    Ok(())
}

// ---------------------------------------------------------------- heartbeat

async fn heartbeat_alive_refreshes_the_claim(s: Store) -> Outcome {
    enqueue(&s, req(), T0).await?;
    let claimed = claim_one(&s, "w", at(0)).await?;
    let c = claim_of(&claimed);
    assert_eq!(
        s.now(at(5)).heartbeat(c, "w").await?,
        HeartbeatStatus::Alive
    );
    let expected = Job {
        heartbeat_at: Some(at(5)),
        attempts: vec![started(1, "w", at(0))],
        ..claimed
    };
    assert_eq!(job(&s, c.job).await?, expected);
    // The fresh heartbeat keeps the rescuer away.
    assert_eq!(s.now(at(6)).rescue_stale(ms(3)).await?, Vec::new());
    assert_eq!(job(&s, c.job).await?, expected);
    Ok(())
}

async fn heartbeat_reports_cancel_requested(s: Store) -> Outcome {
    enqueue(&s, req(), T0).await?;
    let c = claim_of(&claim_one(&s, "w", at(0)).await?);
    assert_eq!(
        s.now(at(1)).request_cancel(c.job).await?,
        CancelResult::Requested
    );
    assert_eq!(
        s.now(at(2)).heartbeat(c, "w").await?,
        HeartbeatStatus::CancelRequested
    );
    let j = job(&s, c.job).await?;
    assert_eq!(
        (j.state, j.cancel_requested, j.heartbeat_at),
        (JobState::Running, true, Some(at(2)))
    );
    Ok(())
}

async fn heartbeat_is_lost_for_a_stale_claim(s: Store) -> Outcome {
    enqueue(&s, req().max_attempts(5), T0).await?;
    let claimed = claim_one(&s, "w1", at(0)).await?;
    let c = claim_of(&claimed);
    let lost = HeartbeatStatus::Lost;
    assert_eq!(s.now(at(1)).heartbeat(c, "w2").await?, lost, "wrong owner");
    let ahead = Claim { attempt: 2, ..c };
    let behind = Claim { attempt: 0, ..c };
    assert_eq!(s.now(at(1)).heartbeat(ahead, "w1").await?, lost);
    assert_eq!(s.now(at(1)).heartbeat(behind, "w1").await?, lost);
    let missing = Claim {
        job: JobId(99),
        attempt: 1,
    };
    assert_eq!(s.now(at(1)).heartbeat(missing, "w1").await?, lost);
    assert_eq!(
        job(&s, c.job).await?,
        claimed,
        "refused beats change nothing"
    );
    // Rescued and claimed again: the old claim is lost, the new one alive.
    s.now(at(60_000)).rescue_stale(Duration::ZERO).await?;
    assert_eq!(s.now(at(60_001)).heartbeat(c, "w1").await?, lost);
    s.now(at(60_000)).promote_due().await?;
    let c2 = claim_of(&claim_one(&s, "w2", at(60_002)).await?);
    assert_eq!(s.now(at(60_003)).heartbeat(c, "w1").await?, lost);
    assert_eq!(
        s.now(at(60_003)).heartbeat(c2, "w2").await?,
        HeartbeatStatus::Alive
    );
    s.now(at(60_004))
        .finalize(c2, "w2", Finalize::Completed)
        .await?;
    assert_eq!(
        s.now(at(60_005)).heartbeat(c2, "w2").await?,
        lost,
        "finished"
    );
    Ok(())
}

// ---------------------------------------------------------------- finalize

/// One claimed job of `req`, enqueued at T0 and claimed by `w` at `at(0)`.
async fn running(s: &Store, r: &EnqueueRequest) -> StorageResult<Job> {
    enqueue(s, r.clone(), T0).await?;
    claim_one(s, "w", at(0)).await
}

async fn finalize_completed_ends_the_job(s: Store) -> Outcome {
    let claimed = running(&s, &req()).await?;
    let c = claim_of(&claimed);
    assert_eq!(
        s.now(at(5)).finalize(c, "w", Finalize::Completed).await?,
        FinalizeResult::Applied
    );
    let expected = Job {
        state: JobState::Completed,
        owner: None,
        heartbeat_at: None,
        finalized_at: Some(at(5)),
        finalized_attempt: Some(1),
        attempts: vec![ended(1, "w", at(0), at(5), AttemptOutcome::Completed, None)],
        ..claimed
    };
    assert_eq!(job(&s, c.job).await?, expected);
    Ok(())
}

async fn finalize_retry_records_the_error_and_waits(s: Store) -> Outcome {
    let claimed = running(&s, &req()).await?;
    let c = claim_of(&claimed);
    assert_eq!(
        s.now(at(5))
            .finalize(c, "w", retry("boom", ms(5_000)))
            .await?,
        FinalizeResult::Applied
    );
    // Due the delay after storage's now when it was finalized.
    let expected = Job {
        state: JobState::Retryable,
        owner: None,
        heartbeat_at: None,
        scheduled_at: at(5_005),
        finalized_attempt: Some(1),
        errors: vec!["boom".into()],
        attempts: vec![ended(
            1,
            "w",
            at(0),
            at(5),
            AttemptOutcome::Failed,
            Some("boom"),
        )],
        ..claimed
    };
    assert_eq!(job(&s, c.job).await?, expected);
    assert_eq!(s.now(at(5_004)).promote_due().await?, 0);
    assert_eq!(s.now(at(5_005)).promote_due().await?, 1);
    let again = claim_one(&s, "w", at(5_006)).await?;
    assert_eq!((again.attempt, again.errors), (2, vec!["boom".to_owned()]));
    Ok(())
}

async fn finalize_discard_ends_the_job(s: Store) -> Outcome {
    let claimed = running(&s, &req()).await?;
    let c = claim_of(&claimed);
    let discard = Finalize::Discard {
        error: "bad input".into(),
    };
    assert_eq!(
        s.now(at(5)).finalize(c, "w", discard).await?,
        FinalizeResult::Applied
    );
    let expected = Job {
        state: JobState::Discarded,
        owner: None,
        heartbeat_at: None,
        finalized_at: Some(at(5)),
        finalized_attempt: Some(1),
        errors: vec!["bad input".into()],
        attempts: vec![ended(
            1,
            "w",
            at(0),
            at(5),
            AttemptOutcome::Discarded,
            Some("bad input"),
        )],
        ..claimed
    };
    assert_eq!(job(&s, c.job).await?, expected);
    Ok(())
}

async fn finalize_snooze_gives_back_an_attempt(s: Store) -> Outcome {
    let claimed = running(&s, &req().max_attempts(1)).await?;
    let c = claim_of(&claimed);
    let snooze = Finalize::Snooze { delay: ms(500) };
    assert_eq!(
        s.now(at(5)).finalize(c, "w", snooze).await?,
        FinalizeResult::Applied
    );
    let expected = Job {
        state: JobState::Scheduled,
        owner: None,
        heartbeat_at: None,
        scheduled_at: at(505),
        max_attempts: 2,
        finalized_attempt: Some(1),
        attempts: vec![ended(1, "w", at(0), at(5), AttemptOutcome::Snoozed, None)],
        ..claimed
    };
    assert_eq!(job(&s, c.job).await?, expected);
    assert_eq!(s.now(at(504)).promote_due().await?, 0);
    assert_eq!(s.now(at(505)).promote_due().await?, 1);
    let second = claim_one(&s, "w", at(505)).await?;
    assert_eq!(second.attempt, 2);
    // The given-back attempt was the last: a lost worker now discards it.
    s.now(at(60_000)).rescue_stale(Duration::ZERO).await?;
    assert_eq!(job(&s, c.job).await?.state, JobState::Discarded);
    Ok(())
}

async fn finalize_cancel_ends_the_job(s: Store) -> Outcome {
    let claimed = running(&s, &req()).await?;
    let c = claim_of(&claimed);
    let cancel = Finalize::Cancel {
        reason: "operator said stop".into(),
    };
    assert_eq!(
        s.now(at(5)).finalize(c, "w", cancel).await?,
        FinalizeResult::Applied
    );
    let expected = Job {
        state: JobState::Cancelled,
        owner: None,
        heartbeat_at: None,
        finalized_at: Some(at(5)),
        finalized_attempt: Some(1),
        errors: vec!["operator said stop".into()],
        attempts: vec![ended(
            1,
            "w",
            at(0),
            at(5),
            AttemptOutcome::Cancelled,
            Some("operator said stop"),
        )],
        ..claimed
    };
    assert_eq!(job(&s, c.job).await?, expected);
    Ok(())
}

async fn finalize_is_idempotent(s: Store) -> Outcome {
    let c = claim_of(&running(&s, &req()).await?);
    assert_eq!(
        s.now(at(5)).finalize(c, "w", Finalize::Completed).await?,
        FinalizeResult::Applied
    );
    let done = job(&s, c.job).await?;
    let again = FinalizeResult::AlreadyFinalized;
    assert_eq!(
        s.now(at(6)).finalize(c, "w", Finalize::Completed).await?,
        again
    );
    let discard = Finalize::Discard { error: "x".into() };
    assert_eq!(s.now(at(7)).finalize(c, "w", discard).await?, again);
    assert_eq!(job(&s, c.job).await?, done, "retries change nothing");
    // A retried finalize of an attempt that was retried is still answered as
    // such while the next attempt runs.
    let c = claim_of(&running(&s, &req()).await?);
    s.now(at(8)).finalize(c, "w", retry("boom", ms(2))).await?;
    assert_eq!(
        s.now(at(9)).finalize(c, "w", retry("boom", ms(2))).await?,
        again
    );
    s.now(at(10)).promote_due().await?;
    let c2 = claim_of(&claim_one(&s, "w", at(10)).await?);
    assert_eq!(c2.attempt, 2);
    let running = job(&s, c.job).await?;
    assert_eq!(
        s.now(at(11)).finalize(c, "w", Finalize::Completed).await?,
        again
    );
    assert_eq!(job(&s, c.job).await?, running);
    Ok(())
}

async fn finalize_and_claim_finalizes_then_claims_the_next(s: Store) -> Outcome {
    let first = running(&s, &req()).await?;
    let (second, third) = (
        enqueue(&s, req(), T0).await?,
        enqueue(&s, req().priority(0), T0).await?,
    );
    let (result, next) = s
        .now(at(5))
        .finalize_and_claim(claim_of(&first), "w", Finalize::Completed, "mail", 1)
        .await?;
    assert_eq!(result, FinalizeResult::Applied);
    assert_eq!(job(&s, first.id).await?.state, JobState::Completed);
    let next_ids: Vec<JobId> = next.iter().map(|j| j.id).collect();
    assert_eq!(next_ids, vec![third], "claimed in claim order");
    assert_eq!(next, vec![job(&s, third).await?], "the rows as claimed");
    assert_eq!((next[0].attempt, next[0].owner.as_deref()), (1, Some("w")));
    // A stale finalize changes nothing, and the claim still goes ahead.
    let (result, next) = s
        .now(at(6))
        .finalize_and_claim(claim_of(&first), "x", Finalize::Completed, "mail", 5)
        .await?;
    assert_eq!(result, FinalizeResult::AlreadyFinalized);
    assert_eq!(next.iter().map(|j| j.id).collect::<Vec<_>>(), vec![second]);
    // Nothing left to claim: the finalize alone.
    let (result, next) = s
        .now(at(7))
        .finalize_and_claim(claim_of(&next[0]), "x", Finalize::Completed, "mail", 1)
        .await?;
    assert_eq!((result, next.len()), (FinalizeResult::Applied, 0));
    // Bad input names the field and applies nothing.
    let held = claim_of(&job(&s, third).await?);
    let bad = s
        .now(at(8))
        .finalize_and_claim(held, "w", Finalize::Completed, "a b", 1)
        .await;
    assert_eq!(field(bad), "queue");
    assert_eq!(
        job(&s, third).await?.state,
        JobState::Running,
        "not finalized"
    );
    Ok(())
}

async fn finalize_is_stale_for_a_lost_claim(s: Store) -> Outcome {
    let claimed = running(&s, &req()).await?;
    let c = claim_of(&claimed);
    let stale = FinalizeResult::Stale;
    assert_eq!(
        s.now(at(1)).finalize(c, "x", Finalize::Completed).await?,
        stale
    );
    let ahead = Claim { attempt: 2, ..c };
    assert_eq!(
        s.now(at(1))
            .finalize(ahead, "w", Finalize::Completed)
            .await?,
        stale
    );
    let missing = Claim {
        job: JobId(99),
        attempt: 1,
    };
    assert_eq!(
        s.now(at(1))
            .finalize(missing, "w", Finalize::Completed)
            .await?,
        stale
    );
    assert_eq!(job(&s, c.job).await?, claimed, "nothing changed");
    s.now(at(60_000)).rescue_stale(Duration::ZERO).await?;
    let rescued = job(&s, c.job).await?;
    assert_eq!(rescued.state, JobState::Retryable);
    assert_eq!(
        s.now(at(60_001))
            .finalize(c, "w", Finalize::Completed)
            .await?,
        stale
    );
    assert_eq!(job(&s, c.job).await?, rescued, "nothing changed");
    Ok(())
}

async fn finalize_after_cancel_request_never_runs_again(s: Store) -> Outcome {
    // Each outcome on its own job, cancel requested while it ran.
    let outcomes = [
        (retry("boom", ms(9_000)), JobState::Cancelled, Some(at(5))),
        (
            Finalize::Snooze { delay: ms(9_000) },
            JobState::Cancelled,
            Some(at(5)),
        ),
        (Finalize::Completed, JobState::Completed, Some(at(5))),
        (
            Finalize::Discard { error: "d".into() },
            JobState::Discarded,
            Some(at(5)),
        ),
    ];
    for (i, (outcome, state, finalized_at)) in outcomes.into_iter().enumerate() {
        let claimed = running(&s, &req()).await?;
        assert_eq!(claimed.id, JobId(i as u64 + 1));
        let c = claim_of(&claimed);
        s.now(at(1)).request_cancel(c.job).await?;
        assert_eq!(
            s.now(at(5)).finalize(c, "w", outcome.clone()).await?,
            FinalizeResult::Applied
        );
        let j = job(&s, c.job).await?;
        assert_eq!(
            (j.state, j.finalized_at, j.scheduled_at, j.owner),
            (state, finalized_at, T0, None),
            "{outcome:?}: the job keeps its old due time"
        );
    }
    // The snooze still gave its attempt back before the cancel took over.
    assert_eq!(job(&s, JobId(2)).await?.max_attempts, 6);
    assert_eq!(job(&s, JobId(1)).await?.errors, vec!["boom".to_owned()]);
    Ok(())
}

async fn finalize_keeps_the_newest_errors(s: Store) -> Outcome {
    let rounds = ERRORS_KEPT_MAX as i64 + 2;
    enqueue(&s, req().max_attempts(ATTEMPTS_MAX), T0).await?;
    for i in 1..=rounds {
        s.now(at(i)).promote_due().await?;
        let c = claim_of(&claim_one(&s, "w", at(i)).await?);
        s.now(at(i))
            .finalize(c, "w", retry(&format!("e{i}"), ms(1)))
            .await?;
    }
    let kept: Vec<String> = (3..=rounds).map(|i| format!("e{i}")).collect();
    assert_eq!(kept.len(), ERRORS_KEPT_MAX);
    assert_eq!(job(&s, JobId(1)).await?.errors, kept, "newest last");
    Ok(())
}

// ---------------------------------------------------------------- effects

async fn effect_is_written_once_across_attempts(s: Store) -> Outcome {
    let c1 = claim_of(&running(&s, &req()).await?);
    assert_eq!(
        s.apply_effect(c1, "w", "sent", json!({"n": 1})).await?,
        EffectResult::Applied
    );
    assert_eq!(
        s.apply_effect(c1, "w", "sent", json!(9)).await?,
        EffectResult::AlreadyApplied
    );
    assert_eq!(
        s.apply_effect(c1, "w", "logged", json!("x")).await?,
        EffectResult::Applied
    );
    s.now(at(1))
        .finalize(c1, "w", retry("boom", Duration::ZERO))
        .await?;
    s.now(at(1)).promote_due().await?;
    let c2 = claim_of(&claim_one(&s, "w2", at(2)).await?);
    assert_eq!(
        s.apply_effect(c2, "w2", "sent", json!(2)).await?,
        EffectResult::AlreadyApplied
    );
    assert_eq!(s.get_effect(c1.job, "sent").await?, Some(json!({"n": 1})));
    assert_eq!(s.get_effect(c1.job, "logged").await?, Some(json!("x")));
    assert_eq!(s.get_effect(c1.job, "other").await?, None);
    assert_eq!(s.get_effect(JobId(99), "sent").await?, None);
    // Keys are per job.
    let c3 = claim_of(&running(&s, &req()).await?);
    assert_eq!(
        s.apply_effect(c3, "w", "sent", json!(3)).await?,
        EffectResult::Applied
    );
    assert_eq!(s.get_effect(c3.job, "sent").await?, Some(json!(3)));
    Ok(())
}

async fn effect_is_refused_to_a_stale_claim(s: Store) -> Outcome {
    let c = claim_of(&running(&s, &req()).await?);
    let refused = EffectResult::NotOwner;
    assert_eq!(s.apply_effect(c, "x", "a", json!(1)).await?, refused);
    let missing = Claim {
        job: JobId(99),
        attempt: 1,
    };
    assert_eq!(s.apply_effect(missing, "w", "a", json!(1)).await?, refused);
    s.now(at(60_000)).rescue_stale(Duration::ZERO).await?;
    assert_eq!(s.apply_effect(c, "w", "b", json!(1)).await?, refused);
    let c2 = claim_of(&running(&s, &req()).await?);
    s.now(at(60_001))
        .finalize(c2, "w", Finalize::Completed)
        .await?;
    assert_eq!(s.apply_effect(c2, "w", "c", json!(1)).await?, refused);
    for (id, key) in [(c.job, "a"), (c.job, "b"), (c2.job, "c")] {
        assert_eq!(s.get_effect(id, key).await?, None, "{id} {key}");
    }
    Ok(())
}

// ---------------------------------------------------------------- cancel

async fn cancel_ends_an_idle_job_at_once(s: Store) -> Outcome {
    enqueue(&s, req(), T0).await?; // 1: available
    enqueue(&s, req().scheduled_at(at(9_000)), T0).await?; // 2: scheduled
    let c = claim_of(&claim_one(&s, "w", at(0)).await?); // claims 1
    s.now(at(1))
        .finalize(c, "w", retry("boom", ms(9_000)))
        .await?; // 1: retryable
    enqueue(&s, req(), at(2)).await?; // 3: available
    for id in [1, 2, 3] {
        let before = job(&s, JobId(id)).await?;
        assert_eq!(
            s.now(at(10)).request_cancel(JobId(id)).await?,
            CancelResult::Cancelled
        );
        let expected = Job {
            state: JobState::Cancelled,
            finalized_at: Some(at(10)),
            ..before
        };
        assert_eq!(job(&s, JobId(id)).await?, expected);
        assert_eq!(
            s.now(at(11)).request_cancel(JobId(id)).await?,
            CancelResult::AlreadyFinished
        );
    }
    s.now(at(10_000)).promote_due().await?;
    assert_eq!(
        ids_claimed(&s, "mail", 10, at(10_000)).await?,
        Vec::<u64>::new()
    );
    Ok(())
}

async fn cancel_of_a_running_job_is_requested(s: Store) -> Outcome {
    let claimed = running(&s, &req()).await?;
    let c = claim_of(&claimed);
    assert_eq!(
        s.now(at(1)).request_cancel(c.job).await?,
        CancelResult::Requested
    );
    let expected = Job {
        cancel_requested: true,
        attempts: vec![started(1, "w", at(0))],
        ..claimed
    };
    assert_eq!(job(&s, c.job).await?, expected);
    assert_eq!(
        s.now(at(2)).request_cancel(c.job).await?,
        CancelResult::Requested
    );
    // The attempt finished the work anyway: the outcome stands.
    s.now(at(3)).finalize(c, "w", Finalize::Completed).await?;
    assert_eq!(
        s.now(at(4)).request_cancel(c.job).await?,
        CancelResult::AlreadyFinished
    );
    let done = job(&s, c.job).await?;
    assert_eq!(
        (done.state, done.finalized_at),
        (JobState::Completed, Some(at(3)))
    );
    let c2 = claim_of(&running(&s, &req()).await?);
    let discard = Finalize::Discard { error: "d".into() };
    s.now(at(5)).finalize(c2, "w", discard).await?;
    assert_eq!(
        s.now(at(6)).request_cancel(c2.job).await?,
        CancelResult::AlreadyFinished
    );
    assert_eq!(job(&s, c2.job).await?.state, JobState::Discarded);
    assert_eq!(
        s.now(at(7)).request_cancel(JobId(99)).await?,
        CancelResult::NotFound
    );
    assert_eq!(s.get_job(JobId(99)).await?, None);
    Ok(())
}

async fn cancel_request_survives_a_rescue(s: Store) -> Outcome {
    let claimed = running(&s, &req()).await?;
    let c = claim_of(&claimed);
    s.now(at(1)).request_cancel(c.job).await?;
    assert_eq!(s.now(at(60_001)).rescue_stale(ms(1)).await?, vec![c]);
    let expected = Job {
        state: JobState::Cancelled,
        owner: None,
        heartbeat_at: None,
        cancel_requested: true,
        finalized_at: Some(at(60_001)),
        errors: vec!["attempt 1 lost its worker".into()],
        attempts: vec![ended(
            1,
            "w",
            at(0),
            at(60_001),
            AttemptOutcome::Lost,
            Some("attempt 1 lost its worker"),
        )],
        ..claimed
    };
    assert_eq!(job(&s, c.job).await?, expected);
    Ok(())
}

// ---------------------------------------------------------------- sweeps

async fn rescue_returns_stale_claims_by_id_and_makes_them_due(s: Store) -> Outcome {
    for _ in 0..4 {
        enqueue(&s, req().max_attempts(3), T0).await?;
    }
    enqueue(&s, req().scheduled_at(at(1)), T0).await?; // 5: never claimed
    let claimed = s.now(at(0)).claim("mail", "w", 4).await?;
    assert_eq!(claimed.len(), 4);
    s.now(at(50_000))
        .heartbeat(claim_of(&claimed[1]), "w")
        .await?;
    // A heartbeat exactly `stale_after` old is not stale.
    s.now(at(30_000))
        .heartbeat(claim_of(&claimed[3]), "w")
        .await?;
    let revoked = s.now(at(60_000)).rescue_stale(ms(30_000)).await?;
    assert_eq!(revoked, vec![claim_of(&claimed[0]), claim_of(&claimed[2])]);
    let expected = Job {
        state: JobState::Retryable,
        owner: None,
        heartbeat_at: None,
        scheduled_at: at(60_000),
        errors: vec!["attempt 1 lost its worker".into()],
        attempts: vec![ended(
            1,
            "w",
            at(0),
            at(60_000),
            AttemptOutcome::Lost,
            Some("attempt 1 lost its worker"),
        )],
        ..claimed[0].clone()
    };
    assert_eq!(job(&s, JobId(1)).await?, expected);
    assert_eq!(job(&s, JobId(2)).await?.state, JobState::Running);
    assert_eq!(job(&s, JobId(4)).await?.state, JobState::Running);
    assert_eq!(job(&s, JobId(5)).await?.state, JobState::Scheduled);
    assert_eq!(
        s.now(at(60_000)).rescue_stale(ms(30_000)).await?,
        Vec::new()
    );
    // Due at once: the next promotion makes both rescued jobs available (and
    // the scheduled one, due long ago).
    assert_eq!(s.now(at(60_000)).promote_due().await?, 3);
    Ok(())
}

async fn rescue_discards_a_job_whose_attempts_are_spent(s: Store) -> Outcome {
    let claimed = running(&s, &req().max_attempts(1)).await?;
    let c = claim_of(&claimed);
    assert_eq!(s.now(at(60_001)).rescue_stale(ms(1)).await?, vec![c]);
    let expected = Job {
        state: JobState::Discarded,
        owner: None,
        heartbeat_at: None,
        finalized_at: Some(at(60_001)),
        errors: vec!["attempt 1 lost its worker".into()],
        attempts: vec![ended(
            1,
            "w",
            at(0),
            at(60_001),
            AttemptOutcome::Lost,
            Some("attempt 1 lost its worker"),
        )],
        ..claimed
    };
    assert_eq!(job(&s, c.job).await?, expected);
    Ok(())
}

async fn promote_due_counts_due_jobs(s: Store) -> Outcome {
    assert_eq!(s.now(T0).promote_due().await?, 0, "empty store");
    enqueue(&s, req().scheduled_at(at(100)), T0).await?; // 1
    enqueue(&s, req().scheduled_at(at(200)), T0).await?; // 2
    enqueue(&s, req(), T0).await?; // 3: claimed, then retryable at 150
    let c = claim_of(&s.now(T0).claim("mail", "w", 1).await?[0]);
    assert_eq!(c.job, JobId(3));
    s.now(at(50))
        .finalize(c, "w", retry("boom", ms(100)))
        .await?;
    enqueue(&s, req(), T0).await?; // 4: available already
    assert_eq!(s.now(at(99)).promote_due().await?, 0);
    assert_eq!(s.now(at(150)).promote_due().await?, 2);
    assert_eq!(s.now(at(150)).promote_due().await?, 0);
    assert_eq!(job(&s, JobId(2)).await?.state, JobState::Scheduled);
    assert_eq!(s.now(at(1_000)).promote_due().await?, 1);
    assert_eq!(
        s.count_by_state().await?,
        counts(&[(JobState::Available, 4)])
    );
    Ok(())
}

async fn cleanup_deletes_old_finished_jobs_by_id_up_to_limit(s: Store) -> Outcome {
    for _ in 0..3 {
        enqueue(&s, req(), T0).await?;
    }
    // Finished out of id order: 3, then 1, then 2.
    s.now(at(10)).request_cancel(JobId(3)).await?;
    let c = claim_of(&claim_one(&s, "w", at(11)).await?);
    s.now(at(20))
        .finalize(c, "w", Finalize::Discard { error: "d".into() })
        .await?;
    let c = claim_of(&claim_one(&s, "w", at(21)).await?);
    s.now(at(30)).finalize(c, "w", Finalize::Completed).await?;
    assert_eq!(
        (
            job(&s, JobId(1)).await?.state,
            job(&s, JobId(2)).await?.state
        ),
        (JobState::Discarded, JobState::Completed)
    );
    // Unfinished jobs in every other state stay whatever their age.
    enqueue(&s, req(), T0).await?; // 4: available
    enqueue(&s, req().scheduled_at(at(9_000)), T0).await?; // 5: scheduled
    enqueue(&s, req().queue("q2"), T0).await?; // 6: running
    s.now(at(0)).claim("q2", "w", 1).await?;
    enqueue(&s, req().queue("q3"), T0).await?; // 7: retryable
    let c = claim_of(&s.now(at(0)).claim("q3", "w", 1).await?[0]);
    s.now(at(1))
        .finalize(c, "w", retry("boom", ms(9_000)))
        .await?;
    // From here storage's clock reads 1_010, and the retention picks the
    // horizon: a retention of 1_000 keeps what finished at 10 (the horizon is
    // exclusive), one of 10 drops everything that finished by 1_000.
    s.clock.set(at(1_010));
    assert_eq!(
        s.cleanup(ms(1_000), 100).await?,
        0,
        "the horizon is exclusive"
    );
    assert_eq!(s.cleanup(ms(10), 0).await?, 0);
    assert_eq!(s.cleanup(ms(10), 1).await?, 1);
    assert_eq!(s.get_job(JobId(1)).await?, None, "lowest id first");
    assert_eq!(s.cleanup(ms(985), 100).await?, 1, "only 3 is old enough");
    assert_eq!(s.get_job(JobId(3)).await?, None);
    assert_eq!(s.cleanup(ms(10), 100).await?, 1);
    assert_eq!(s.cleanup(ms(10), 100).await?, 0);
    assert_eq!(
        s.count_by_state().await?,
        counts(&[
            (JobState::Scheduled, 1),
            (JobState::Available, 1),
            (JobState::Running, 1),
            (JobState::Retryable, 1),
        ])
    );
    Ok(())
}

async fn cleanup_frees_unique_keys_and_effects_and_never_reuses_ids(s: Store) -> Outcome {
    enqueue(&s, req(), T0).await?;
    enqueue(&s, req().unique_key("k"), T0).await?;
    let c1 = claim_of(&claim_one(&s, "w", at(0)).await?);
    s.now(at(1)).finalize(c1, "w", Finalize::Completed).await?;
    let c2 = claim_of(&claim_one(&s, "w", at(2)).await?);
    assert_eq!(c2.job, JobId(2));
    s.apply_effect(c2, "w", "sent", json!(1)).await?;
    s.apply_effect(c2, "w", "logged", json!(2)).await?;
    s.now(at(3)).finalize(c2, "w", Finalize::Completed).await?;
    assert_eq!(s.now(at(100)).cleanup(ms(50), 100).await?, 2);
    assert_eq!(s.get_effect(JobId(2), "sent").await?, None);
    assert_eq!(s.get_effect(JobId(2), "logged").await?, None);
    assert_eq!(s.count_by_state().await?, StateCounts::default());
    // The key is free again; the new job gets a new id, never a deleted one's.
    assert_eq!(
        s.now(at(101)).enqueue(req().unique_key("k")).await?,
        EnqueueOutcome::Inserted(JobId(3))
    );
    // The new job starts with no effects.
    let c3 = claim_of(&claim_one(&s, "w", at(102)).await?);
    assert_eq!(
        s.apply_effect(c3, "w", "sent", json!(3)).await?,
        EffectResult::Applied
    );
    Ok(())
}

async fn cleanup_keeps_a_periodic_slot_fired(s: Store) -> Outcome {
    let lease = s
        .now(T0)
        .try_acquire("maintainer", "n1", TTL)
        .await?
        .expect("granted");
    let fire = || {
        s.fire_periodic(
            "digest",
            at(60_000),
            EVERY_MINUTE,
            "maintainer",
            "n1",
            lease.term,
            req(),
        )
    };
    assert_eq!(fire().await?, PeriodicOutcome::Fired(JobId(1)));
    let c = claim_of(&claim_one(&s, "w", at(1)).await?);
    s.now(at(2)).finalize(c, "w", Finalize::Completed).await?;
    assert_eq!(s.now(at(100)).cleanup(ms(50), 100).await?, 1);
    assert_eq!(s.get_job(JobId(1)).await?, None);
    assert_eq!(
        fire().await?,
        PeriodicOutcome::AlreadyFired(JobId(1)),
        "a slot fires once, even after its job is gone"
    );
    assert_eq!(s.count_by_state().await?, StateCounts::default());
    Ok(())
}

// ---------------------------------------------------------------- reads

async fn list_unfinished_by_id_up_to_limit(s: Store) -> Outcome {
    assert_eq!(s.list_unfinished(10).await?, Vec::new());
    enqueue(&s, req(), T0).await?; // 1: claimed and completed
    enqueue(&s, req().queue("q2"), T0).await?; // 2: available
    enqueue(&s, req().scheduled_at(at(9_000)), T0).await?; // 3: scheduled
    enqueue(&s, req(), T0).await?; // 4: running
    enqueue(&s, req().queue("q2"), T0).await?; // 5: cancelled
    let c = claim_of(&claim_one(&s, "w", at(0)).await?);
    s.now(at(1)).finalize(c, "w", Finalize::Completed).await?;
    claim_one(&s, "w", at(2)).await?;
    s.now(at(3)).request_cancel(JobId(5)).await?;
    let ids = |v: &[u64]| v.iter().map(|&i| JobId(i)).collect::<Vec<_>>();
    assert_eq!(s.list_unfinished(10).await?, ids(&[2, 3, 4]));
    assert_eq!(s.list_unfinished(2).await?, ids(&[2, 3]));
    assert_eq!(s.list_unfinished(0).await?, Vec::new());
    Ok(())
}

async fn count_by_state_counts_every_state(s: Store) -> Outcome {
    assert_eq!(s.count_by_state().await?, StateCounts::default());
    // One job per queue, so each claim takes the one meant.
    let queues = [
        "sched", "avail", "run", "retry", "done", "cancel", "discard",
    ];
    for q in queues {
        let r = req().queue(q);
        let r = if q == "sched" {
            r.scheduled_at(at(9_000))
        } else {
            r
        };
        enqueue(&s, r, T0).await?;
    }
    let take = |q: &'static str| {
        let s = s.clone();
        async move { Ok::<_, StorageError>(claim_of(&s.now(at(0)).claim(q, "w", 1).await?[0])) }
    };
    take("run").await?;
    let c = take("retry").await?;
    s.now(at(1))
        .finalize(c, "w", retry("boom", ms(9_000)))
        .await?;
    let c = take("done").await?;
    s.now(at(1)).finalize(c, "w", Finalize::Completed).await?;
    s.now(at(1)).request_cancel(JobId(6)).await?;
    let c = take("discard").await?;
    s.now(at(1))
        .finalize(c, "w", Finalize::Discard { error: "d".into() })
        .await?;
    let all = counts(&[
        (JobState::Scheduled, 1),
        (JobState::Available, 1),
        (JobState::Running, 1),
        (JobState::Retryable, 1),
        (JobState::Completed, 1),
        (JobState::Cancelled, 1),
        (JobState::Discarded, 1),
    ]);
    assert_eq!(s.count_by_state().await?, all);
    assert_eq!(all.unfinished(), 4);
    Ok(())
}

async fn queue_settings_round_trip(s: Store) -> Outcome {
    assert_eq!(s.get_queue("mail").await?, None);
    let config = QueueConfig {
        name: "mail".into(),
        workers: Some(3),
        paused: false,
    };
    s.set_queue(config.clone()).await?;
    assert_eq!(s.get_queue("mail").await?, Some(config));
    let replaced = QueueConfig {
        name: "mail".into(),
        workers: Some(5),
        paused: true,
    };
    s.set_queue(replaced.clone()).await?;
    assert_eq!(s.get_queue("mail").await?, Some(replaced));
    assert_eq!(s.get_queue("other").await?, None);
    Ok(())
}

// ---------------------------------------------------------------- periodic

async fn fire_periodic_fires_each_slot_once_for_the_current_term(s: Store) -> Outcome {
    s.now(T0).try_acquire("maintainer", "a", TTL).await?;
    let slot = at(60_000);
    let fire = |name: &'static str, slot, holder: &'static str, term, r| {
        s.fire_periodic(
            name,
            slot,
            EVERY_MINUTE,
            "maintainer",
            holder,
            Term(term),
            r,
        )
    };
    let digest = EnqueueRequest::new("digest", json!({"slot": 1})).queue("cron");
    assert_eq!(
        fire("digest", slot, "a", 1, digest.clone()).await?,
        PeriodicOutcome::Fired(JobId(1))
    );
    assert_eq!(job(&s, JobId(1)).await?, fresh(1, &digest, T0));
    assert_eq!(
        fire("digest", slot, "a", 1, req()).await?,
        PeriodicOutcome::AlreadyFired(JobId(1))
    );
    assert_eq!(
        fire("digest", at(120_000), "a", 1, req()).await?,
        PeriodicOutcome::Fired(JobId(2))
    );
    assert_eq!(
        fire("report", slot, "a", 1, req()).await?,
        PeriodicOutcome::Fired(JobId(3))
    );
    // Fenced by holder and by term, checked before the slot.
    let stale = PeriodicOutcome::StaleTerm;
    assert_eq!(fire("digest", slot, "b", 1, req()).await?, stale);
    assert_eq!(fire("digest", slot, "a", 2, req()).await?, stale);
    assert_eq!(fire("digest", slot, "a", 0, req()).await?, stale);
    assert_eq!(fire("new", slot, "b", 1, req()).await?, stale);
    let no_lease = s
        .fire_periodic("new", slot, EVERY_MINUTE, "absent", "a", Term(1), req())
        .await?;
    assert_eq!(no_lease, stale);
    s.resign("maintainer", "a", Term(1)).await?;
    assert_eq!(fire("new", slot, "a", 1, req()).await?, stale, "resigned");
    s.now(at(1)).try_acquire("maintainer", "b", TTL).await?;
    assert_eq!(fire("new", slot, "a", 1, req()).await?, stale);
    assert_eq!(
        fire("new", slot, "b", 2, req()).await?,
        PeriodicOutcome::Fired(JobId(4))
    );
    // A slot whose job's unique key is taken fires as the existing job.
    enqueue(&s, req().unique_key("once"), at(2)).await?; // 5
    assert_eq!(
        fire("keyed", slot, "b", 2, req().unique_key("once")).await?,
        PeriodicOutcome::Fired(JobId(5))
    );
    assert_eq!(
        fire("keyed", slot, "b", 2, req()).await?,
        PeriodicOutcome::AlreadyFired(JobId(5))
    );
    assert_eq!(s.list_unfinished(100).await?.len(), 5);
    Ok(())
}

// ---------------------------------------------------------------- validation
//
// Storage's clock stays at T0 throughout: validation does not depend on time.

async fn validation_of_enqueue_names_the_field(s: Store) -> Outcome {
    s.try_acquire("m", "a", TTL).await?;
    let long = |n: usize| "q".repeat(n);
    let bad = [
        (req().queue(""), "queue"),
        (req().queue("a b"), "queue"),
        (req().queue("mail/x"), "queue"),
        (req().queue(long(NAME_LEN_MAX + 1)), "queue"),
        (EnqueueRequest::new("", json!(1)), "kind"),
        (EnqueueRequest::new("k\u{e9}", json!(1)), "kind"),
        (
            EnqueueRequest::new(long(NAME_LEN_MAX + 1), json!(1)),
            "kind",
        ),
        (req().priority(EnqueueRequest::PRIORITY_MAX + 1), "priority"),
        (req().max_attempts(0), "max_attempts"),
        (req().max_attempts(ATTEMPTS_MAX + 1), "max_attempts"),
        (req().unique_key(""), "unique_key"),
        (req().unique_key(long(UNIQUE_KEY_LEN_MAX + 1)), "unique_key"),
        (
            EnqueueRequest::new("k", json!("x".repeat(PAYLOAD_BYTES_MAX))),
            "payload",
        ),
    ];
    for (i, (r, expected)) in bad.into_iter().enumerate() {
        let what = format!("bad request {i}");
        assert_eq!(field(s.enqueue(r.clone()).await), expected, "{what}");
        assert_eq!(
            field(s.enqueue_batch(vec![req(), r.clone()]).await),
            expected,
            "batch: {what}"
        );
        let fired = s
            .fire_periodic("p", T0, EVERY_MINUTE, "m", "a", Term(1), r)
            .await;
        assert_eq!(field(fired), expected, "periodic: {what}");
    }
    assert_eq!(s.count_by_state().await?, StateCounts::default());
    assert_eq!(s.list_unfinished(10).await?, Vec::new());
    // The limits themselves are accepted, and the ids start at 1: the refused
    // requests consumed none.
    let edge = [
        req().queue(long(NAME_LEN_MAX)),
        EnqueueRequest::new(long(NAME_LEN_MAX), json!(1)).queue("q.-_:Z9"),
        req().priority(EnqueueRequest::PRIORITY_MAX),
        req().max_attempts(ATTEMPTS_MAX),
        req().max_attempts(1).unique_key(long(UNIQUE_KEY_LEN_MAX)),
        // Serialized with its quotes, exactly the limit.
        EnqueueRequest::new("k", json!("x".repeat(PAYLOAD_BYTES_MAX - 2))),
    ];
    for (i, r) in edge.into_iter().enumerate() {
        let id = i as u64 + 1;
        assert_eq!(enqueue(&s, r.clone(), T0).await?, JobId(id));
        assert_eq!(job(&s, JobId(id)).await?, fresh(id, &r, T0));
    }
    let fired = s
        .fire_periodic("p", T0, EVERY_MINUTE, "m", "a", Term(1), req())
        .await?;
    assert_eq!(fired, PeriodicOutcome::Fired(JobId(7)));
    Ok(())
}

async fn validation_of_leases_names_the_field(s: Store) -> Outcome {
    let long = "n".repeat(129);
    for (name, holder, expected) in [
        ("", "a", "lease name"),
        (long.as_str(), "a", "lease name"),
        ("m", "", "holder"),
        ("m", long.as_str(), "holder"),
    ] {
        let t = Term(1);
        assert_eq!(field(s.try_acquire(name, holder, TTL).await), expected);
        assert_eq!(field(s.renew(name, holder, t, TTL).await), expected);
        assert_eq!(field(s.resign(name, holder, t).await), expected);
        assert_eq!(
            field(s.maintenance_heartbeat(name, holder, t).await),
            expected
        );
    }
    assert_eq!(field(s.get_lease("").await), "lease name");
    assert_eq!(field(s.get_lease(&long).await), "lease name");
    assert_eq!(s.get_lease("m").await?, None, "nothing granted");
    let edge = "n".repeat(128);
    let granted = s.try_acquire(&edge, &edge, TTL).await?;
    assert_eq!(granted.map(|l| l.term), Some(Term(1)));
    Ok(())
}

async fn validation_of_claims_effects_periodics_and_queues_names_the_field(s: Store) -> Outcome {
    enqueue(&s, req(), T0).await?;
    assert_eq!(field(s.claim("", "w", 1).await), "queue");
    assert_eq!(field(s.claim("a b", "w", 1).await), "queue");
    assert_eq!(field(s.claim("mail", "", 1).await), "holder");
    assert_eq!(
        job(&s, JobId(1)).await?.state,
        JobState::Available,
        "not claimed"
    );
    let c = claim_of(&claim_one(&s, "w", T0).await?);
    assert_eq!(
        field(s.apply_effect(c, "w", "", json!(1)).await),
        "effect key"
    );
    assert_eq!(
        field(s.apply_effect(c, "w", "a b", json!(1)).await),
        "effect key"
    );
    assert_eq!(s.get_effect(c.job, "").await?, None);
    assert_eq!(s.get_effect(c.job, "a b").await?, None);
    s.try_acquire("m", "a", TTL).await?;
    for name in ["", "a b"] {
        let fired = s
            .fire_periodic(name, T0, EVERY_MINUTE, "m", "a", Term(1), req())
            .await;
        assert_eq!(field(fired), "periodic name");
    }
    let bad_queue = QueueConfig {
        name: "".into(),
        workers: Some(1),
        paused: true,
    };
    assert_eq!(field(s.set_queue(bad_queue).await), "queue");
    assert_eq!(s.get_queue("").await?, None);
    assert_eq!(s.count_by_state().await?, counts(&[(JobState::Running, 1)]));
    Ok(())
}

// ---------------------------------------------------------------- attempts

async fn attempts_record_a_retry_then_a_completion(s: Store) -> Outcome {
    enqueue(&s, req().max_attempts(3), T0).await?;
    let first = claim_one(&s, "w1", at(1)).await?;
    let c1 = claim_of(&first);
    let running_one = started(1, "w1", at(1));
    assert_eq!(first.attempts, vec![running_one.clone()], "the claimed row");
    // Heartbeats and refused finalizes leave the record alone.
    s.now(at(2)).heartbeat(c1, "w1").await?;
    assert_eq!(
        s.now(at(2)).finalize(c1, "x", Finalize::Completed).await?,
        FinalizeResult::Stale
    );
    assert_eq!(job(&s, c1.job).await?.attempts, vec![running_one]);
    s.now(at(3))
        .finalize(c1, "w1", retry("boom", Duration::ZERO))
        .await?;
    let one = ended(1, "w1", at(1), at(3), AttemptOutcome::Failed, Some("boom"));
    assert_eq!(job(&s, c1.job).await?.attempts, vec![one.clone()]);
    assert_eq!(
        s.now(at(4))
            .finalize(c1, "w1", retry("boom", Duration::ZERO))
            .await?,
        FinalizeResult::AlreadyFinalized
    );
    assert_eq!(job(&s, c1.job).await?.attempts, vec![one.clone()]);
    s.now(at(4)).promote_due().await?;
    let second = claim_one(&s, "w2", at(5)).await?;
    let c2 = claim_of(&second);
    assert_eq!(second.attempts, vec![one.clone(), started(2, "w2", at(5))]);
    s.now(at(6)).finalize(c2, "w2", Finalize::Completed).await?;
    let two = ended(2, "w2", at(5), at(6), AttemptOutcome::Completed, None);
    assert_eq!(
        job(&s, c1.job).await?.attempts,
        vec![one.clone(), two.clone()]
    );
    assert_eq!(
        s.now(at(7)).finalize(c2, "w2", Finalize::Completed).await?,
        FinalizeResult::AlreadyFinalized
    );
    let listed = s.list_jobs(JobFilter::all(1)).await?;
    assert_eq!(listed.jobs, vec![job(&s, c1.job).await?]);
    assert_eq!(listed.jobs[0].attempts, vec![one, two]);
    // A completion that claims the next job in the same call records both.
    enqueue(&s, req(), at(8)).await?; // 2
    enqueue(&s, req(), at(8)).await?; // 3
    let c = claim_of(&claim_one(&s, "w", at(9)).await?);
    assert_eq!(c.job, JobId(2));
    let (result, next) = s
        .now(at(10))
        .finalize_and_claim(c, "w", Finalize::Completed, "mail", 1)
        .await?;
    assert_eq!(result, FinalizeResult::Applied);
    assert_eq!(
        job(&s, JobId(2)).await?.attempts,
        vec![ended(
            1,
            "w",
            at(9),
            at(10),
            AttemptOutcome::Completed,
            None
        )]
    );
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].attempts, vec![started(1, "w", at(10))]);
    assert_eq!(next, vec![job(&s, JobId(3)).await?]);
    Ok(())
}

async fn attempts_record_a_lost_worker_and_each_ending(s: Store) -> Outcome {
    enqueue(&s, req().max_attempts(3), T0).await?; // 1
    let c1 = claim_of(&claim_one(&s, "w1", at(0)).await?);
    assert_eq!(s.now(at(60_000)).rescue_stale(ms(30_000)).await?, vec![c1]);
    let lost = ended(
        1,
        "w1",
        at(0),
        at(60_000),
        AttemptOutcome::Lost,
        Some("attempt 1 lost its worker"),
    );
    assert_eq!(job(&s, c1.job).await?.attempts, vec![lost.clone()]);
    // The lost worker's late finalize is stale and records nothing.
    assert_eq!(
        s.now(at(60_001))
            .finalize(c1, "w1", Finalize::Completed)
            .await?,
        FinalizeResult::Stale
    );
    assert_eq!(job(&s, c1.job).await?.attempts, vec![lost.clone()]);
    s.now(at(60_001)).promote_due().await?;
    let c2 = claim_of(&claim_one(&s, "w2", at(60_002)).await?);
    let discard = Finalize::Discard {
        error: "bad".into(),
    };
    s.now(at(60_003)).finalize(c2, "w2", discard).await?;
    let discarded = ended(
        2,
        "w2",
        at(60_002),
        at(60_003),
        AttemptOutcome::Discarded,
        Some("bad"),
    );
    assert_eq!(job(&s, c1.job).await?.attempts, vec![lost, discarded]);
    // Each other ending, on a job of its own; with a cancel requested, a
    // failed attempt ends the job cancelled but is recorded as failed.
    let cancel = Finalize::Cancel {
        reason: "stop".into(),
    };
    let endings = [
        (
            Finalize::Snooze { delay: ms(10) },
            false,
            JobState::Scheduled,
            AttemptOutcome::Snoozed,
            None,
        ),
        (
            cancel,
            false,
            JobState::Cancelled,
            AttemptOutcome::Cancelled,
            Some("stop"),
        ),
        (
            retry("boom", ms(10)),
            true,
            JobState::Cancelled,
            AttemptOutcome::Failed,
            Some("boom"),
        ),
        (
            Finalize::Completed,
            true,
            JobState::Completed,
            AttemptOutcome::Completed,
            None,
        ),
    ];
    for (i, (outcome, cancel, state, ended_as, error)) in endings.into_iter().enumerate() {
        let id = enqueue(&s, req(), at(70_000)).await?;
        let c = claim_of(&claim_one(&s, "w", at(70_001)).await?);
        assert_eq!(c.job, id);
        if cancel {
            s.now(at(70_002)).request_cancel(id).await?;
        }
        s.now(at(70_003)).finalize(c, "w", outcome).await?;
        let j = job(&s, id).await?;
        let record = ended(1, "w", at(70_001), at(70_003), ended_as, error);
        assert_eq!((j.state, j.attempts), (state, vec![record]), "ending {i}");
    }
    Ok(())
}

async fn attempts_keep_the_newest_records(s: Store) -> Outcome {
    // Snoozes give each attempt back, so a job can be claimed past the cap.
    enqueue(&s, req().max_attempts(1), T0).await?;
    let rounds = ATTEMPTS_KEPT_MAX as u32 + 2;
    for i in 1..=rounds {
        let t = at(i64::from(i));
        s.now(t).promote_due().await?;
        let c = claim_of(&claim_one(&s, "w", t).await?);
        assert_eq!(c.attempt, i);
        let snooze = Finalize::Snooze {
            delay: Duration::ZERO,
        };
        s.now(t).finalize(c, "w", snooze).await?;
    }
    let snoozed = |i: u32| {
        let t = at(i64::from(i));
        ended(i, "w", t, t, AttemptOutcome::Snoozed, None)
    };
    let kept: Vec<Attempt> = (3..=rounds).map(snoozed).collect();
    assert_eq!(kept.len(), ATTEMPTS_KEPT_MAX);
    assert_eq!(job(&s, JobId(1)).await?.attempts, kept, "newest last");
    // A claim drops the oldest to make room, and its completion closes it.
    s.now(at(1_000)).promote_due().await?;
    let claimed = claim_one(&s, "w", at(1_000)).await?;
    let mut expected: Vec<Attempt> = (4..=rounds).map(snoozed).collect();
    expected.push(started(rounds + 1, "w", at(1_000)));
    assert_eq!(claimed.attempts, expected);
    s.now(at(1_001))
        .finalize(claim_of(&claimed), "w", Finalize::Completed)
        .await?;
    expected.pop();
    expected.push(ended(
        rounds + 1,
        "w",
        at(1_000),
        at(1_001),
        AttemptOutcome::Completed,
        None,
    ));
    assert_eq!(job(&s, JobId(1)).await?.attempts, expected);
    Ok(())
}

/// Any string the model accepts as an owner or an error survives in the
/// record: NUL, quotes, backslashes, newlines, non-ASCII.
async fn attempts_keep_owners_and_errors_of_any_characters(s: Store) -> Outcome {
    let owner = "w\0\"x\\\n\u{e9}";
    let error = "e\0 \"quoted\" \\ \u{1F600}";
    enqueue(&s, req().max_attempts(3), T0).await?;
    let c1 = claim_of(&claim_one(&s, owner, at(1)).await?);
    s.now(at(2))
        .finalize(c1, owner, retry(error, Duration::ZERO))
        .await?;
    s.now(at(2)).promote_due().await?;
    let second = claim_one(&s, owner, at(3)).await?;
    let one = ended(1, owner, at(1), at(2), AttemptOutcome::Failed, Some(error));
    assert_eq!(second.attempts, vec![one.clone(), started(2, owner, at(3))]);
    s.now(at(4))
        .finalize(claim_of(&second), owner, Finalize::Completed)
        .await?;
    let done = job(&s, c1.job).await?;
    let two = ended(2, owner, at(3), at(4), AttemptOutcome::Completed, None);
    assert_eq!(
        (done.state, &done.attempts, &done.errors),
        (
            JobState::Completed,
            &vec![one, two],
            &vec![error.to_owned()]
        )
    );
    assert_eq!(s.list_jobs(JobFilter::all(5)).await?.jobs, vec![done]);
    Ok(())
}

// ---------------------------------------------------------------- admin

/// A page's ids, newest first, and its cursor.
fn page_ids(page: &JobPage) -> (Vec<u64>, Option<u64>) {
    (
        page.jobs.iter().map(|j| j.id.0).collect(),
        page.next.map(|n| n.0),
    )
}

async fn listed(s: &Store, filter: JobFilter) -> StorageResult<(Vec<u64>, Option<u64>)> {
    Ok(page_ids(&s.list_jobs(filter).await?))
}

/// Jobs older than `before`, `limit` at a time.
fn page(before: Option<u64>, limit: u32) -> JobFilter {
    JobFilter {
        before: before.map(JobId),
        ..JobFilter::all(limit)
    }
}

async fn admin_list_jobs_filters_by_state_queue_and_kind(s: Store) -> Outcome {
    assert_eq!(s.list_jobs(JobFilter::all(10)).await?, JobPage::default());
    enqueue(&s, req(), T0).await?; // 1: mail/email, completed
    let report = EnqueueRequest::new("report", json!(1)).queue("mail");
    enqueue(&s, report, T0).await?; // 2: mail/report, available
    enqueue(&s, req().queue("q2"), T0).await?; // 3: q2/email, available
    enqueue(&s, req().scheduled_at(at(9_000)), T0).await?; // 4: mail/email, scheduled
    let c = claim_of(&claim_one(&s, "w", at(1)).await?);
    assert_eq!(c.job, JobId(1));
    s.now(at(2)).finalize(c, "w", Finalize::Completed).await?;
    enqueue(&s, req().priority(0), at(3)).await?; // 5: mail/email, running
    assert_eq!(claim_one(&s, "w", at(4)).await?.id, JobId(5));
    let all = s.list_jobs(JobFilter::all(10)).await?;
    assert_eq!(page_ids(&all), (vec![5, 4, 3, 2, 1], None));
    for listed in &all.jobs {
        assert_eq!(*listed, job(&s, listed.id).await?, "whole rows");
    }
    let by = |states: &[JobState], queue: Option<&str>, kind: Option<&str>| JobFilter {
        states: states.to_vec(),
        queue: queue.map(Into::into),
        kind: kind.map(Into::into),
        ..JobFilter::all(10)
    };
    use JobState::{Available, Completed, Retryable, Running, Scheduled};
    let cases: [(JobFilter, Vec<u64>); 8] = [
        (by(&[Available], None, None), vec![3, 2]),
        (by(&[Scheduled, Available], None, None), vec![4, 3, 2]),
        (by(&[Retryable], None, None), vec![]),
        (by(&[], Some("mail"), None), vec![5, 4, 2, 1]),
        (by(&[], None, Some("report")), vec![2]),
        (
            by(&[Running, Completed], Some("mail"), Some("email")),
            vec![5, 1],
        ),
        (by(&[Available], Some("q2"), Some("report")), vec![]),
        (by(&[], Some("nowhere"), None), vec![]),
    ];
    for (filter, ids) in cases {
        assert_eq!(listed(&s, filter.clone()).await?, (ids, None), "{filter:?}");
    }
    Ok(())
}

async fn admin_list_jobs_pages_newest_first(s: Store) -> Outcome {
    for _ in 0..7 {
        enqueue(&s, req(), T0).await?;
    }
    for id in [2, 4, 6] {
        s.now(at(1)).request_cancel(JobId(id)).await?;
    }
    // Each page but the last names where the next one starts.
    let mut pages = Vec::new();
    let mut before = None;
    loop {
        let listed = s.list_jobs(page(before, 3)).await?;
        pages.push(page_ids(&listed));
        match listed.next {
            Some(next) => before = Some(next.0),
            None => break,
        }
    }
    assert_eq!(
        pages,
        vec![
            (vec![7, 6, 5], Some(5)),
            (vec![4, 3, 2], Some(2)),
            (vec![1], None),
        ]
    );
    // A last page filled exactly still says it is the last.
    assert_eq!(
        listed(&s, page(None, 7)).await?,
        (vec![7, 6, 5, 4, 3, 2, 1], None)
    );
    assert_eq!(
        listed(&s, page(None, 6)).await?,
        (vec![7, 6, 5, 4, 3, 2], Some(2))
    );
    let available = |before: Option<u64>, limit| JobFilter {
        states: vec![JobState::Available],
        ..page(before, limit)
    };
    assert_eq!(listed(&s, available(None, 2)).await?, (vec![7, 5], Some(5)));
    assert_eq!(listed(&s, available(Some(5), 2)).await?, (vec![3, 1], None));
    let cancelled = JobFilter {
        states: vec![JobState::Cancelled],
        ..page(Some(6), 1)
    };
    assert_eq!(listed(&s, cancelled).await?, (vec![4], Some(4)));
    // The cursor need not name a job that passes the filter, or exists.
    assert_eq!(listed(&s, page(Some(1), 5)).await?, (vec![], None));
    assert_eq!(listed(&s, page(Some(99), 2)).await?, (vec![7, 6], Some(6)));
    // Jobs enqueued since come first; a cursor's pages stay where they were.
    enqueue(&s, req(), at(2)).await?; // 8
    assert_eq!(listed(&s, page(None, 2)).await?, (vec![8, 7], Some(7)));
    assert_eq!(
        listed(&s, page(Some(5), 3)).await?,
        (vec![4, 3, 2], Some(2))
    );
    Ok(())
}

async fn admin_list_jobs_validation_names_the_field(s: Store) -> Outcome {
    enqueue(&s, req(), T0).await?;
    for limit in [0, LIST_LIMIT_MAX + 1, u32::MAX] {
        let all = JobFilter::all(limit);
        assert_eq!(field(s.list_jobs(all).await), "limit", "limit {limit}");
        let filtered = JobFilter {
            states: vec![JobState::Available],
            queue: Some("mail".into()),
            ..JobFilter::all(limit)
        };
        assert_eq!(field(s.list_jobs(filtered).await), "limit", "limit {limit}");
    }
    let bad_queue = JobFilter {
        queue: Some("a b".into()),
        ..JobFilter::all(1)
    };
    assert_eq!(field(s.list_jobs(bad_queue).await), "queue");
    let bad_kind = JobFilter {
        kind: Some(String::new()),
        ..JobFilter::all(1)
    };
    assert_eq!(field(s.list_jobs(bad_kind).await), "kind");
    // The limits themselves are accepted.
    assert_eq!(
        listed(&s, page(None, LIST_LIMIT_MAX)).await?,
        (vec![1], None)
    );
    assert_eq!(listed(&s, page(None, 1)).await?, (vec![1], None));
    Ok(())
}

async fn admin_list_effects_by_key(s: Store) -> Outcome {
    let c = claim_of(&running(&s, &req()).await?);
    assert_eq!(s.list_effects(c.job).await?, Vec::new());
    for (key, value) in [
        ("aa", json!(1)),
        ("B", json!({"n": [1, 2]})),
        ("a-b", json!("x")),
        ("a", json!(null)),
    ] {
        s.apply_effect(c, "w", key, value).await?;
    }
    let c2 = claim_of(&running(&s, &req()).await?);
    s.apply_effect(c2, "w", "sent", json!(2)).await?;
    // By key in byte order, as the model keeps them ("B" before "a").
    let expected = vec![
        ("B".to_owned(), json!({"n": [1, 2]})),
        ("a".to_owned(), json!(null)),
        ("a-b".to_owned(), json!("x")),
        ("aa".to_owned(), json!(1)),
    ];
    assert_eq!(s.list_effects(c.job).await?, expected);
    assert_eq!(
        s.list_effects(c2.job).await?,
        vec![("sent".to_owned(), json!(2))]
    );
    // They outlive the attempt that wrote them, and the job's end.
    s.now(at(1)).finalize(c, "w", Finalize::Completed).await?;
    assert_eq!(s.list_effects(c.job).await?, expected);
    assert_eq!(s.list_effects(JobId(99)).await?, Vec::new());
    assert_eq!(s.list_effects(JobId(0)).await?, Vec::new());
    Ok(())
}

async fn admin_list_queues_counts_jobs_and_shows_settings(s: Store) -> Outcome {
    assert_eq!(s.list_queues().await?, Vec::new());
    enqueue(&s, req(), T0).await?; // 1: mail, running
    enqueue(&s, req(), T0).await?; // 2: mail, available
    enqueue(&s, req(), T0).await?; // 3: mail, available
    enqueue(&s, req().queue("q2").scheduled_at(at(9_000)), T0).await?; // 4: q2, scheduled
    enqueue(&s, req().queue("q2"), T0).await?; // 5: q2, completed
    claim_one(&s, "w", at(1)).await?;
    let c = claim_of(&s.now(at(1)).claim("q2", "w", 1).await?[0]);
    s.now(at(2)).finalize(c, "w", Finalize::Completed).await?;
    let summary = |name: &str, pairs: &[(JobState, u64)], paused, workers| QueueSummary {
        name: name.into(),
        counts: counts(pairs),
        paused,
        workers,
    };
    let mail = [(JobState::Running, 1), (JobState::Available, 2)];
    let q2 = [(JobState::Scheduled, 1), (JobState::Completed, 1)];
    assert_eq!(
        s.list_queues().await?,
        vec![
            summary("mail", &mail, false, None),
            summary("q2", &q2, false, None),
        ]
    );
    // A queue with settings is listed without jobs; workers set or not.
    let set = |name: &str, workers, paused| QueueConfig {
        name: name.into(),
        workers,
        paused,
    };
    s.set_queue(set("idle", None, true)).await?;
    s.set_queue(set("mail", Some(3), false)).await?;
    s.set_queue(set("Zeta", Some(0), false)).await?;
    assert_eq!(
        s.list_queues().await?,
        vec![
            summary("Zeta", &[], false, Some(0)),
            summary("idle", &[], true, None),
            summary("mail", &mail, false, Some(3)),
            summary("q2", &q2, false, None),
        ]
    );
    // Counts follow the jobs; settings are replaced whole.
    assert_eq!(s.now(at(1_000)).cleanup(ms(10), 100).await?, 1);
    s.set_queue(set("mail", None, true)).await?;
    s.set_queue(set("idle", None, false)).await?;
    assert_eq!(
        s.list_queues().await?,
        vec![
            summary("Zeta", &[], false, Some(0)),
            summary("idle", &[], false, None),
            summary("mail", &mail, true, None),
            summary("q2", &[(JobState::Scheduled, 1)], false, None),
        ]
    );
    Ok(())
}

async fn admin_list_leases_by_name(s: Store) -> Outcome {
    assert_eq!(s.list_leases().await?, Vec::new());
    s.now(T0).try_acquire("m", "a", TTL).await?;
    s.now(T0).try_acquire("Z", "b", TTL).await?;
    s.now(T0).try_acquire("m-2", "c", TTL).await?;
    s.resign("Z", "b", Term(1)).await?;
    s.now(at(20_000)).try_acquire("m", "d", TTL).await?;
    // Refused calls create nothing.
    assert_eq!(s.now(at(20_001)).try_acquire("m", "e", TTL).await?, None);
    assert!(!s.now(at(20_001)).renew("absent", "a", Term(1), TTL).await?);
    let lease = |name: &str, term, holder: Option<&str>, expires_at| Lease {
        name: name.into(),
        term: Term(term),
        holder: holder.map(Into::into),
        expires_at,
    };
    let leases = s.list_leases().await?;
    assert_eq!(
        leases,
        vec![
            lease("Z", 1, None, at(10_000)),
            lease("m", 2, Some("d"), at(30_000)),
            lease("m-2", 1, Some("c"), at(10_000)),
        ]
    );
    for l in leases {
        assert_eq!(s.get_lease(&l.name).await?, Some(l));
    }
    Ok(())
}

async fn admin_list_schedules_keeps_each_latest_slot(s: Store) -> Outcome {
    assert_eq!(s.list_schedules().await?, Vec::new());
    s.now(T0).try_acquire("maintainer", "a", TTL).await?;
    let fire = |name: &'static str, slot, schedule: &'static str, r| {
        s.fire_periodic(name, slot, schedule, "maintainer", "a", Term(1), r)
    };
    let record = |name: &str, schedule: &str, r: &EnqueueRequest, slot, job| ScheduleRecord {
        name: name.into(),
        schedule: schedule.into(),
        queue: r.queue.clone(),
        kind: r.kind.clone(),
        last_slot: slot,
        last_job: JobId(job),
    };
    let digest = EnqueueRequest::new("digest", json!(1)).queue("cron");
    assert_eq!(
        fire("digest", at(120_000), EVERY_MINUTE, digest.clone()).await?,
        PeriodicOutcome::Fired(JobId(1))
    );
    let latest = record("digest", EVERY_MINUTE, &digest, at(120_000), 1);
    assert_eq!(s.list_schedules().await?, vec![latest.clone()]);
    // An earlier slot fired afterwards (a slow leader's) inserts its job but
    // leaves the record; a slot fired before, or a refused call, changes nothing.
    assert_eq!(
        fire("digest", at(60_000), "every 30s", req()).await?,
        PeriodicOutcome::Fired(JobId(2))
    );
    assert_eq!(
        fire("digest", at(120_000), "every 30s", req()).await?,
        PeriodicOutcome::AlreadyFired(JobId(1))
    );
    for name in ["digest", "other"] {
        let refused = s
            .fire_periodic(
                name,
                at(180_000),
                "every 30s",
                "maintainer",
                "b",
                Term(1),
                req(),
            )
            .await?;
        assert_eq!(refused, PeriodicOutcome::StaleTerm);
    }
    assert_eq!(s.list_schedules().await?, vec![latest]);
    // A later slot takes the record over, its schedule, queue and kind too.
    let hourly = "cron 0 0 * * * *";
    assert_eq!(
        fire("digest", at(180_000), hourly, req()).await?,
        PeriodicOutcome::Fired(JobId(3))
    );
    assert_eq!(
        fire("report", at(60_000), EVERY_MINUTE, req()).await?,
        PeriodicOutcome::Fired(JobId(4))
    );
    assert_eq!(
        fire("Zed", at(60_000), EVERY_MINUTE, req()).await?,
        PeriodicOutcome::Fired(JobId(5))
    );
    // A slot whose job's unique key is taken records the existing job.
    enqueue(&s, req().unique_key("once"), at(1)).await?; // 6
    assert_eq!(
        fire("keyed", at(60_000), EVERY_MINUTE, req().unique_key("once")).await?,
        PeriodicOutcome::Fired(JobId(6))
    );
    // By name in byte order ("Zed" before "digest"); a record outlives its job.
    assert_eq!(s.delete_job(JobId(3)).await?, AdminOutcome::Done);
    assert_eq!(
        s.list_schedules().await?,
        vec![
            record("Zed", EVERY_MINUTE, &req(), at(60_000), 5),
            record("digest", hourly, &req(), at(180_000), 3),
            record("keyed", EVERY_MINUTE, &req(), at(60_000), 6),
            record("report", EVERY_MINUTE, &req(), at(60_000), 4),
        ]
    );
    Ok(())
}

async fn admin_retry_makes_a_job_that_is_not_running_due_now(s: Store) -> Outcome {
    enqueue(&s, req().max_attempts(1), T0).await?; // 1: discarded, attempts spent
    let c = claim_of(&claim_one(&s, "w", at(1)).await?);
    let discard = Finalize::Discard {
        error: "bad".into(),
    };
    s.now(at(2)).finalize(c, "w", discard).await?;
    enqueue(&s, req().max_attempts(3), at(3)).await?; // 2: completed
    let c = claim_of(&claim_one(&s, "w", at(4)).await?);
    s.now(at(5)).finalize(c, "w", Finalize::Completed).await?;
    enqueue(&s, req(), at(6)).await?; // 3: retryable, not yet due
    let c = claim_of(&claim_one(&s, "w", at(7)).await?);
    s.now(at(8))
        .finalize(c, "w", retry("boom", ms(9_000)))
        .await?;
    enqueue(&s, req(), at(9)).await?; // 4: cancelled before it ran
    s.now(at(9)).request_cancel(JobId(4)).await?;
    enqueue(&s, req().scheduled_at(at(9_000)), at(9)).await?; // 5: scheduled
    enqueue(&s, req(), at(9)).await?; // 6: cancelled through a rescue
    let c = claim_of(&claim_one(&s, "w", at(9)).await?);
    assert_eq!(c.job, JobId(6));
    s.now(at(10)).request_cancel(JobId(6)).await?;
    s.now(at(60_000)).rescue_stale(ms(30_000)).await?;
    enqueue(&s, req(), at(60_000)).await?; // 7: available and due
    enqueue(&s, req(), at(70_000)).await?; // 8: available, due later (the clock stepped back)
    assert_eq!(
        job(&s, JobId(1)).await?.attempts,
        vec![ended(
            1,
            "w",
            at(1),
            at(2),
            AttemptOutcome::Discarded,
            Some("bad")
        )]
    );
    let now = at(60_010);
    for id in [1, 2, 3, 4, 5, 6, 8] {
        let before = job(&s, JobId(id)).await?;
        assert_eq!(
            s.now(now).retry_job(JobId(id)).await?,
            AdminOutcome::Done,
            "job {id}"
        );
        // Its history stays; only a job whose attempts are spent gets one more.
        let expected = Job {
            state: JobState::Available,
            scheduled_at: now,
            finalized_at: None,
            cancel_requested: false,
            max_attempts: if id == 1 { 2 } else { before.max_attempts },
            ..before
        };
        assert_eq!(job(&s, JobId(id)).await?, expected, "job {id}");
    }
    let due = job(&s, JobId(7)).await?;
    assert_eq!(
        s.now(now).retry_job(JobId(7)).await?,
        AdminOutcome::Unchanged
    );
    assert_eq!(
        s.now(now).retry_job(JobId(1)).await?,
        AdminOutcome::Unchanged
    );
    assert_eq!(job(&s, JobId(7)).await?, due);
    assert_eq!(
        s.now(now).retry_job(JobId(99)).await?,
        AdminOutcome::NotFound
    );
    // Every one of them is claimable at once, in claim order.
    assert_eq!(
        ids_claimed(&s, "mail", 10, now).await?,
        vec![7, 1, 2, 3, 4, 5, 6, 8]
    );
    let again = job(&s, JobId(1)).await?;
    assert_eq!(
        (again.attempt, again.max_attempts, again.attempts),
        (
            2,
            2,
            vec![
                ended(1, "w", at(1), at(2), AttemptOutcome::Discarded, Some("bad")),
                started(2, "w", now),
            ]
        )
    );
    let c = claim_of(&job(&s, JobId(1)).await?);
    assert_eq!(
        s.now(at(60_011))
            .finalize(c, "w", Finalize::Completed)
            .await?,
        FinalizeResult::Applied
    );
    Ok(())
}

async fn admin_changes_leave_a_running_job_to_its_claim(s: Store) -> Outcome {
    let claimed = running(&s, &req()).await?;
    let c = claim_of(&claimed);
    s.apply_effect(c, "w", "sent", json!(1)).await?;
    assert_eq!(s.now(at(1)).retry_job(c.job).await?, AdminOutcome::Running);
    assert_eq!(
        s.now(at(2)).discard_job(c.job).await?,
        AdminOutcome::Running
    );
    assert_eq!(s.now(at(3)).delete_job(c.job).await?, AdminOutcome::Running);
    assert_eq!(job(&s, c.job).await?, claimed, "nothing changed");
    assert_eq!(
        s.list_effects(c.job).await?,
        vec![("sent".to_owned(), json!(1))]
    );
    // The claim carries on as though no one had asked.
    assert_eq!(
        s.now(at(4)).heartbeat(c, "w").await?,
        HeartbeatStatus::Alive
    );
    assert_eq!(
        s.now(at(5)).finalize(c, "w", Finalize::Completed).await?,
        FinalizeResult::Applied
    );
    let done = job(&s, c.job).await?;
    assert_eq!(
        (done.state, done.attempts),
        (
            JobState::Completed,
            vec![ended(1, "w", at(0), at(5), AttemptOutcome::Completed, None)]
        )
    );
    // A running job asked to cancel is left to its claim as well.
    let claimed = running(&s, &req()).await?;
    let c = claim_of(&claimed);
    s.now(at(6)).request_cancel(c.job).await?;
    let asked = job(&s, c.job).await?;
    assert_eq!(s.now(at(7)).retry_job(c.job).await?, AdminOutcome::Running);
    assert_eq!(
        s.now(at(7)).discard_job(c.job).await?,
        AdminOutcome::Running
    );
    assert_eq!(job(&s, c.job).await?, asked);
    assert_eq!(
        s.now(at(8)).heartbeat(c, "w").await?,
        HeartbeatStatus::CancelRequested
    );
    Ok(())
}

async fn admin_discard_ends_a_job_that_waits(s: Store) -> Outcome {
    enqueue(&s, req(), T0).await?; // 1: retryable
    let c = claim_of(&claim_one(&s, "w", at(0)).await?);
    s.now(at(1))
        .finalize(c, "w", retry("boom", ms(9_000)))
        .await?;
    enqueue(&s, req(), T0).await?; // 2: completed
    let c = claim_of(&claim_one(&s, "w", at(1)).await?);
    s.now(at(2)).finalize(c, "w", Finalize::Completed).await?;
    enqueue(&s, req(), T0).await?; // 3: discarded
    let c = claim_of(&claim_one(&s, "w", at(2)).await?);
    let discard = Finalize::Discard {
        error: "bad".into(),
    };
    s.now(at(3)).finalize(c, "w", discard).await?;
    enqueue(&s, req(), at(3)).await?; // 4: cancelled
    s.now(at(3)).request_cancel(JobId(4)).await?;
    enqueue(&s, req().scheduled_at(at(9_000)), at(3)).await?; // 5: scheduled
    enqueue(&s, req(), at(3)).await?; // 6: available
    for id in [1, 5, 6] {
        let before = job(&s, JobId(id)).await?;
        assert_eq!(
            s.now(at(10)).discard_job(JobId(id)).await?,
            AdminOutcome::Done,
            "job {id}"
        );
        let mut errors = before.errors.clone();
        errors.push(DISCARD_REASON.into());
        let expected = Job {
            state: JobState::Discarded,
            finalized_at: Some(at(10)),
            errors,
            ..before
        };
        assert_eq!(job(&s, JobId(id)).await?, expected, "job {id}");
    }
    let one = job(&s, JobId(1)).await?;
    assert_eq!(
        (one.errors, one.attempts),
        (
            vec!["boom".to_owned(), DISCARD_REASON.to_owned()],
            vec![ended(
                1,
                "w",
                at(0),
                at(1),
                AttemptOutcome::Failed,
                Some("boom")
            )]
        ),
        "no attempt ran, so none is recorded"
    );
    // A finished job keeps its outcome.
    for id in [1, 2, 3, 4] {
        let before = job(&s, JobId(id)).await?;
        assert_eq!(
            s.now(at(11)).discard_job(JobId(id)).await?,
            AdminOutcome::AlreadyFinished,
            "job {id}"
        );
        assert_eq!(job(&s, JobId(id)).await?, before, "job {id}");
    }
    assert_eq!(
        s.now(at(11)).discard_job(JobId(99)).await?,
        AdminOutcome::NotFound
    );
    // Nothing discarded runs, until an operator retries it.
    assert_eq!(s.now(at(10_000)).promote_due().await?, 0);
    assert_eq!(
        ids_claimed(&s, "mail", 10, at(10_000)).await?,
        Vec::<u64>::new()
    );
    assert_eq!(
        s.now(at(10_000)).retry_job(JobId(5)).await?,
        AdminOutcome::Done
    );
    assert_eq!(ids_claimed(&s, "mail", 10, at(10_000)).await?, vec![5]);
    Ok(())
}

async fn admin_delete_removes_a_job_and_its_effects(s: Store) -> Outcome {
    let c = claim_of(&running(&s, &req()).await?); // 1: completed, with effects
    s.apply_effect(c, "w", "sent", json!(1)).await?;
    s.apply_effect(c, "w", "logged", json!(2)).await?;
    s.now(at(1)).finalize(c, "w", Finalize::Completed).await?;
    enqueue(&s, req().unique_key("k"), at(1)).await?; // 2: available, keyed
    let lease = s
        .now(at(1))
        .try_acquire("maintainer", "n1", TTL)
        .await?
        .expect("granted");
    let fire = || {
        s.fire_periodic(
            "digest",
            at(60_000),
            EVERY_MINUTE,
            "maintainer",
            "n1",
            lease.term,
            req(),
        )
    };
    assert_eq!(fire().await?, PeriodicOutcome::Fired(JobId(3))); // 3: available
    enqueue(&s, req().scheduled_at(at(9_000)), at(1)).await?; // 4: scheduled
    enqueue(&s, req().queue("q2"), at(1)).await?; // 5: stays
    for id in [1, 2, 3, 4] {
        assert_eq!(
            s.now(at(2)).delete_job(JobId(id)).await?,
            AdminOutcome::Done,
            "job {id}"
        );
        assert_eq!(s.get_job(JobId(id)).await?, None, "job {id}");
        assert_eq!(
            s.now(at(2)).delete_job(JobId(id)).await?,
            AdminOutcome::NotFound,
            "job {id}"
        );
    }
    assert_eq!(s.list_effects(JobId(1)).await?, Vec::new());
    assert_eq!(s.get_effect(JobId(1), "sent").await?, None);
    assert_eq!(
        s.now(at(2)).delete_job(JobId(99)).await?,
        AdminOutcome::NotFound
    );
    assert_eq!(listed(&s, page(None, 10)).await?, (vec![5], None));
    assert_eq!(
        s.count_by_state().await?,
        counts(&[(JobState::Available, 1)])
    );
    assert_eq!(s.list_unfinished(10).await?, vec![JobId(5)]);
    // Its key is free again, its id never reused; its slot stays fired.
    assert_eq!(
        s.now(at(3)).enqueue(req().unique_key("k")).await?,
        EnqueueOutcome::Inserted(JobId(6))
    );
    assert_eq!(fire().await?, PeriodicOutcome::AlreadyFired(JobId(3)));
    // Nothing of the deleted jobs is claimed.
    assert_eq!(ids_claimed(&s, "mail", 10, at(10_000)).await?, vec![6]);
    Ok(())
}

/// An id no engine can store (past SQL's signed 64 bits) names no job: every
/// call that takes one answers as for any unknown id, never with an error.
async fn admin_and_job_calls_on_an_id_past_any_row_find_no_job(s: Store) -> Outcome {
    let c = claim_of(&running(&s, &req()).await?);
    let before = job(&s, c.job).await?;
    for id in [u64::MAX, 1 << 63] {
        let big = JobId(id);
        let claim = Claim {
            job: big,
            attempt: 1,
        };
        assert_eq!(s.get_job(big).await?, None);
        assert_eq!(s.get_effect(big, "k").await?, None);
        assert_eq!(
            s.now(at(1)).request_cancel(big).await?,
            CancelResult::NotFound
        );
        assert_eq!(
            s.now(at(1)).heartbeat(claim, "w").await?,
            HeartbeatStatus::Lost
        );
        assert_eq!(
            s.now(at(1))
                .finalize(claim, "w", Finalize::Completed)
                .await?,
            FinalizeResult::Stale
        );
        assert_eq!(
            s.apply_effect(claim, "w", "k", json!(1)).await?,
            EffectResult::NotOwner
        );
        assert_eq!(s.list_effects(big).await?, Vec::new());
        assert_eq!(s.now(at(1)).retry_job(big).await?, AdminOutcome::NotFound);
        assert_eq!(s.now(at(1)).discard_job(big).await?, AdminOutcome::NotFound);
        assert_eq!(s.now(at(1)).delete_job(big).await?, AdminOutcome::NotFound);
        // As a cursor it is past every job.
        assert_eq!(listed(&s, page(Some(id), 5)).await?, (vec![1], None));
    }
    assert_eq!(job(&s, c.job).await?, before, "nothing changed");
    Ok(())
}
