//! The job half of [`MemStorage`]: the reference model of the job state machine.
//!
//! Every rule of the model lives in the synchronous methods of [`Jobs`]; the
//! async trait methods only lock and delegate, so the model reads top to bottom.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use async_trait::async_trait;

use super::admin::{summarize_queues, DISCARD_REASON};
use super::job::validate_name;
use super::{
    AdminOutcome, AdminStore, CancelResult, Claim, EffectResult, EnqueueOutcome, EnqueueRequest,
    Finalize, FinalizeResult, HeartbeatStatus, Job, JobFilter, JobId, JobPage, JobState, JobStore,
    Lease, MemStorage, PeriodicOutcome, QueueConfig, QueueSummary, ScheduleRecord, StateCounts,
    StorageResult, Term,
};
use crate::clock::Timestamp;

/// All job tables.
#[derive(Debug, Default)]
pub(super) struct Jobs {
    next_id: u64,
    rows: BTreeMap<JobId, Job>,
    /// The available rows in claim order, so a claim reads its few rows instead
    /// of scanning every row kept (finished ones stay until cleanup). Kept in
    /// step with `rows` by [`Jobs::update`], the only way a row changes.
    ready: BTreeSet<ReadyKey>,
    unique: BTreeMap<String, JobId>,
    effects: BTreeMap<(JobId, String), serde_json::Value>,
    queues: BTreeMap<String, QueueConfig>,
    periodic: BTreeMap<(String, Timestamp), JobId>,
    schedules: BTreeMap<String, ScheduleRecord>,
}

/// A row's place in claim order: queue, then priority, due time and id.
type ReadyKey = (String, u8, Timestamp, JobId);

/// Where `job` sits in claim order, if it is available at all.
fn ready_key(job: &Job) -> Option<ReadyKey> {
    (job.state == JobState::Available)
        .then(|| (job.queue.clone(), job.priority, job.scheduled_at, job.id))
}

impl Jobs {
    /// Applies `change` to row `id` and moves the row within `ready` to match.
    fn update<R>(&mut self, id: JobId, change: impl FnOnce(&mut Job) -> R) -> Option<R> {
        let job = self.rows.get_mut(&id)?;
        let before = ready_key(job);
        let result = change(job);
        let after = ready_key(job);
        if before != after {
            if let Some(key) = before {
                self.ready.remove(&key);
            }
            if let Some(key) = after {
                self.ready.insert(key);
            }
        }
        Some(result)
    }

    fn insert(&mut self, req: EnqueueRequest, now: Timestamp) -> EnqueueOutcome {
        if let Some(id) = req.unique_key.as_ref().and_then(|k| self.unique.get(k)) {
            return EnqueueOutcome::Duplicate(*id);
        }
        self.next_id += 1;
        let id = JobId(self.next_id);
        if let Some(key) = &req.unique_key {
            self.unique.insert(key.clone(), id);
        }
        let job = Job::from_request(id, req, now);
        self.ready.extend(ready_key(&job));
        self.rows.insert(id, job);
        EnqueueOutcome::Inserted(id)
    }

    fn claim(&mut self, queue: &str, owner: &str, limit: u32, now: Timestamp) -> Vec<Job> {
        if self.queues.get(queue).is_some_and(|q| q.paused) {
            return Vec::new();
        }
        let from: ReadyKey = (queue.to_owned(), 0, Timestamp(i64::MIN), JobId(0));
        let due: Vec<JobId> = self
            .ready
            .range(from..)
            .take_while(|(q, ..)| q == queue)
            .filter(|(_, _, at, _)| *at <= now)
            .take(limit as usize)
            .map(|(.., id)| *id)
            .collect();
        due.into_iter()
            .filter_map(|id| {
                self.update(id, |job| {
                    job.claim_for(owner, now);
                    job.clone()
                })
            })
            .collect()
    }

    fn heartbeat(&mut self, claim: Claim, owner: &str, now: Timestamp) -> HeartbeatStatus {
        self.update(claim.job, |job| job.beat(claim, owner, now))
            .unwrap_or(HeartbeatStatus::Lost)
    }

    fn finalize(
        &mut self,
        claim: Claim,
        owner: &str,
        outcome: Finalize,
        now: Timestamp,
    ) -> FinalizeResult {
        self.update(claim.job, |job| {
            job.finalize_with(claim, owner, outcome, now)
        })
        .unwrap_or(FinalizeResult::Stale)
    }

    fn apply_effect(
        &mut self,
        claim: Claim,
        owner: &str,
        key: &str,
        value: serde_json::Value,
    ) -> EffectResult {
        if !self
            .rows
            .get(&claim.job)
            .is_some_and(|j| j.is_live_claim(claim, owner))
        {
            return EffectResult::NotOwner;
        }
        let slot = (claim.job, key.to_owned());
        if self.effects.contains_key(&slot) {
            return EffectResult::AlreadyApplied;
        }
        self.effects.insert(slot, value);
        EffectResult::Applied
    }

    fn request_cancel(&mut self, id: JobId, now: Timestamp) -> CancelResult {
        self.update(id, |job| job.cancel_at(now))
            .unwrap_or(CancelResult::NotFound)
    }

    fn rescue_stale(&mut self, stale_before: Timestamp, now: Timestamp) -> Vec<Claim> {
        let stale = self.ids_where(|j| j.is_stale(stale_before));
        stale
            .into_iter()
            .filter_map(|id| self.update(id, |job| job.rescue(now)))
            .collect()
    }

    fn promote_due(&mut self, now: Timestamp) -> u64 {
        let due = self.ids_where(|j| j.is_due(now));
        for id in &due {
            self.update(*id, |job| job.state = JobState::Available);
        }
        due.len() as u64
    }

    /// Ids of the rows `keep` accepts, in id order.
    fn ids_where(&self, keep: impl Fn(&Job) -> bool) -> Vec<JobId> {
        self.rows
            .values()
            .filter(|j| keep(j))
            .map(|j| j.id)
            .collect()
    }

    fn cleanup(&mut self, finished_before: Timestamp, limit: u32) -> u64 {
        let doomed: Vec<JobId> = self
            .rows
            .values()
            .filter(|j| j.is_expired(finished_before))
            .map(|j| j.id)
            .take(limit as usize)
            .collect();
        for id in &doomed {
            if let Some(job) = self.rows.remove(id) {
                if let Some(key) = job.unique_key {
                    self.unique.remove(&key);
                }
            }
            let keys: Vec<_> = self
                .effects
                .range((*id, String::new())..)
                .take_while(|((j, _), _)| j == id)
                .map(|(k, _)| k.clone())
                .collect();
            for k in keys {
                self.effects.remove(&k);
            }
        }
        doomed.len() as u64
    }

    fn counts(&self) -> StateCounts {
        let mut counts = StateCounts::default();
        for job in self.rows.values() {
            *counts.0.entry(job.state).or_default() += 1;
        }
        counts
    }
}

impl Jobs {
    /// Keep `record` unless a later slot of its schedule fired before.
    fn record_schedule(&mut self, record: ScheduleRecord) {
        let later = self
            .schedules
            .get(&record.name)
            .is_some_and(|r| r.last_slot > record.last_slot);
        if !later {
            self.schedules.insert(record.name.clone(), record);
        }
    }

    fn delete(&mut self, id: JobId) -> AdminOutcome {
        match self.rows.get(&id).map(|j| j.state) {
            None => return AdminOutcome::NotFound,
            Some(JobState::Running) => return AdminOutcome::Running,
            Some(_) => {}
        }
        if let Some(job) = self.rows.remove(&id) {
            if let Some(key) = ready_key(&job) {
                self.ready.remove(&key);
            }
            if let Some(key) = job.unique_key {
                self.unique.remove(&key);
            }
        }
        self.effects.retain(|(job, _), _| *job != id);
        AdminOutcome::Done
    }
}

#[async_trait]
impl AdminStore for MemStorage {
    async fn list_jobs(&self, filter: JobFilter) -> StorageResult<JobPage> {
        filter.validate()?;
        let jobs = &self.state().jobs;
        let matching = jobs
            .rows
            .values()
            .rev()
            .filter(|j| filter.matches(j))
            .take(filter.limit as usize + 1)
            .cloned()
            .collect();
        Ok(JobPage::from_newest(matching, filter.limit))
    }

    async fn list_effects(&self, job: JobId) -> StorageResult<Vec<(String, serde_json::Value)>> {
        Ok(self
            .state()
            .jobs
            .effects
            .range((job, String::new())..)
            .take_while(|((j, _), _)| *j == job)
            .map(|((_, key), value)| (key.clone(), value.clone()))
            .collect())
    }

    async fn list_queues(&self) -> StorageResult<Vec<QueueSummary>> {
        let jobs = &self.state().jobs;
        let mut counts: BTreeMap<(String, JobState), u64> = BTreeMap::new();
        for job in jobs.rows.values() {
            *counts.entry((job.queue.clone(), job.state)).or_default() += 1;
        }
        Ok(summarize_queues(
            counts.into_iter().map(|((q, s), n)| (q, s, n)),
            jobs.queues.values().cloned(),
        ))
    }

    async fn list_leases(&self) -> StorageResult<Vec<Lease>> {
        Ok(self.state().leases.values().cloned().collect())
    }

    async fn list_schedules(&self) -> StorageResult<Vec<ScheduleRecord>> {
        Ok(self.state().jobs.schedules.values().cloned().collect())
    }

    async fn retry_job(&self, job: JobId) -> StorageResult<AdminOutcome> {
        let now = self.now();
        Ok(self
            .state()
            .jobs
            .update(job, |j| j.retry_by_operator(now))
            .unwrap_or(AdminOutcome::NotFound))
    }

    async fn discard_job(&self, job: JobId) -> StorageResult<AdminOutcome> {
        let now = self.now();
        Ok(self
            .state()
            .jobs
            .update(job, |j| j.discard_by_operator(DISCARD_REASON, now))
            .unwrap_or(AdminOutcome::NotFound))
    }

    async fn delete_job(&self, job: JobId) -> StorageResult<AdminOutcome> {
        Ok(self.state().jobs.delete(job))
    }
}

impl MemStorage {
    /// Ids of every job not in a terminal state, read synchronously (the
    /// simulator's harness checks this at the end of a run).
    pub fn unfinished_jobs(&self) -> Vec<JobId> {
        self.state()
            .jobs
            .rows
            .values()
            .filter(|j| !j.state.is_terminal())
            .map(|j| j.id)
            .collect()
    }
}

#[async_trait]
impl JobStore for MemStorage {
    async fn enqueue(&self, req: EnqueueRequest) -> StorageResult<EnqueueOutcome> {
        req.validate()?;
        let now = self.now();
        Ok(self.state().jobs.insert(req, now))
    }

    async fn enqueue_batch(&self, reqs: Vec<EnqueueRequest>) -> StorageResult<Vec<EnqueueOutcome>> {
        for req in &reqs {
            req.validate()?;
        }
        let now = self.now();
        let mut state = self.state();
        Ok(reqs
            .into_iter()
            .map(|r| state.jobs.insert(r, now))
            .collect())
    }

    async fn claim(&self, queue: &str, owner: &str, limit: u32) -> StorageResult<Vec<Job>> {
        validate_name("queue", queue)?;
        super::validate_holder(owner)?;
        let now = self.now();
        Ok(self.state().jobs.claim(queue, owner, limit, now))
    }

    async fn heartbeat(&self, claim: Claim, owner: &str) -> StorageResult<HeartbeatStatus> {
        let now = self.now();
        Ok(self.state().jobs.heartbeat(claim, owner, now))
    }

    async fn finalize(
        &self,
        claim: Claim,
        owner: &str,
        outcome: Finalize,
    ) -> StorageResult<FinalizeResult> {
        let now = self.now();
        Ok(self.state().jobs.finalize(claim, owner, outcome, now))
    }

    async fn finalize_and_claim(
        &self,
        claim: Claim,
        owner: &str,
        outcome: Finalize,
        queue: &str,
        limit: u32,
    ) -> StorageResult<(FinalizeResult, Vec<Job>)> {
        validate_name("queue", queue)?;
        super::validate_holder(owner)?;
        let now = self.now();
        let jobs = &mut self.state().jobs;
        let result = jobs.finalize(claim, owner, outcome, now);
        Ok((result, jobs.claim(queue, owner, limit, now)))
    }

    async fn apply_effect(
        &self,
        claim: Claim,
        owner: &str,
        key: &str,
        value: serde_json::Value,
    ) -> StorageResult<EffectResult> {
        validate_name("effect key", key)?;
        Ok(self.state().jobs.apply_effect(claim, owner, key, value))
    }

    async fn get_effect(&self, job: JobId, key: &str) -> StorageResult<Option<serde_json::Value>> {
        Ok(self
            .state()
            .jobs
            .effects
            .get(&(job, key.to_owned()))
            .cloned())
    }

    async fn request_cancel(&self, job: JobId) -> StorageResult<CancelResult> {
        let now = self.now();
        Ok(self.state().jobs.request_cancel(job, now))
    }

    async fn rescue_stale(&self, stale_after: Duration) -> StorageResult<Vec<Claim>> {
        let now = self.now();
        Ok(self.state().jobs.rescue_stale(now.minus(stale_after), now))
    }

    async fn promote_due(&self) -> StorageResult<u64> {
        let now = self.now();
        Ok(self.state().jobs.promote_due(now))
    }

    async fn cleanup(&self, retention: Duration, limit: u32) -> StorageResult<u64> {
        let finished_before = self.now().minus(retention);
        Ok(self.state().jobs.cleanup(finished_before, limit))
    }

    async fn time(&self) -> StorageResult<Timestamp> {
        Ok(self.now())
    }

    async fn get_job(&self, job: JobId) -> StorageResult<Option<Job>> {
        Ok(self.state().jobs.rows.get(&job).cloned())
    }

    async fn count_by_state(&self) -> StorageResult<StateCounts> {
        Ok(self.state().jobs.counts())
    }

    async fn list_unfinished(&self, limit: u32) -> StorageResult<Vec<JobId>> {
        let mut ids = self.unfinished_jobs();
        ids.truncate(limit as usize);
        Ok(ids)
    }

    async fn set_queue(&self, config: QueueConfig) -> StorageResult<()> {
        validate_name("queue", &config.name)?;
        self.state().jobs.queues.insert(config.name.clone(), config);
        Ok(())
    }

    async fn get_queue(&self, name: &str) -> StorageResult<Option<QueueConfig>> {
        Ok(self.state().jobs.queues.get(name).cloned())
    }

    async fn fire_periodic(
        &self,
        name: &str,
        slot: Timestamp,
        schedule: &str,
        lease: &str,
        holder: &str,
        term: Term,
        req: EnqueueRequest,
    ) -> StorageResult<PeriodicOutcome> {
        validate_name("periodic name", name)?;
        req.validate()?;
        let now = self.now();
        let mut state = self.state();
        let current = state
            .leases
            .get(lease)
            .is_some_and(|l| l.term == term && l.holder.as_deref() == Some(holder));
        if !current {
            return Ok(PeriodicOutcome::StaleTerm);
        }
        let key = (name.to_owned(), slot);
        if let Some(id) = state.jobs.periodic.get(&key) {
            return Ok(PeriodicOutcome::AlreadyFired(*id));
        }
        let (queue, kind) = (req.queue.clone(), req.kind.clone());
        let id = state.jobs.insert(req, now).id();
        state.jobs.periodic.insert(key, id);
        state.jobs.record_schedule(ScheduleRecord {
            name: name.to_owned(),
            schedule: schedule.to_owned(),
            queue,
            kind,
            last_slot: slot,
            last_job: id,
        });
        Ok(PeriodicOutcome::Fired(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::storage::job::PAYLOAD_BYTES_MAX;
    use crate::storage::{LeaseStore, StorageError};
    use serde_json::json;
    use std::sync::Arc;
    use std::time::Duration;

    const T0: Timestamp = Timestamp(1_000_000);

    fn at(ms: i64) -> Timestamp {
        Timestamp(T0.0 + ms)
    }

    fn ms(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    /// A store on a clock the test moves, reading `T0` to begin with.
    fn store() -> (Arc<ManualClock>, MemStorage) {
        let clock = Arc::new(ManualClock::new(T0));
        let s = MemStorage::with_clock(clock.clone());
        (clock, s)
    }

    fn block<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(f)
    }

    fn req() -> EnqueueRequest {
        EnqueueRequest::new("email", json!({"to": "a@b"})).queue("mail")
    }

    async fn claim_one(s: &MemStorage, owner: &str) -> Job {
        let jobs = s.claim("mail", owner, 1).await.expect("claim");
        assert_eq!(jobs.len(), 1, "one job claimed");
        jobs.into_iter().next().expect("one")
    }

    fn claim_of(job: &Job) -> Claim {
        Claim {
            job: job.id,
            attempt: job.attempt,
        }
    }

    /// The claim-order index holds exactly the available rows, whatever
    /// sequence of transitions got them there.
    #[test]
    fn the_ready_index_follows_every_transition() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let mut jobs = Jobs::default();
        let mut live: Vec<Job> = Vec::new();
        for step in 0..2_000i64 {
            let now = at(step * 10);
            match rng.random_range(0..7) {
                0 | 1 => {
                    let queue = if rng.random_bool(0.5) { "mail" } else { "sms" };
                    let due = at(step * 10 + rng.random_range(-50..200));
                    let r = req()
                        .queue(queue)
                        .priority(rng.random_range(0..3))
                        .scheduled_at(due);
                    jobs.insert(r, now);
                }
                2 => live.extend(jobs.claim("mail", "w", rng.random_range(1..4), now)),
                3 if !live.is_empty() => {
                    let job = live.swap_remove(rng.random_range(0..live.len()));
                    let outcome = match rng.random_range(0..3) {
                        0 => Finalize::Completed,
                        1 => Finalize::Retry {
                            error: "e".into(),
                            delay: ms(30),
                        },
                        _ => Finalize::Snooze {
                            delay: Duration::ZERO,
                        },
                    };
                    jobs.finalize(claim_of(&job), "w", outcome, now);
                }
                4 => {
                    jobs.request_cancel(JobId(rng.random_range(1..=jobs.next_id.max(1))), now);
                }
                5 => {
                    jobs.rescue_stale(at(step * 10 - 100), now);
                }
                _ => {
                    jobs.promote_due(now);
                }
            }
            let scanned: BTreeSet<ReadyKey> = jobs.rows.values().filter_map(ready_key).collect();
            assert_eq!(
                jobs.ready, scanned,
                "index and rows disagree at step {step}"
            );
        }
    }

    #[test]
    fn claims_go_by_priority_then_due_time_then_id_and_skip_paused_queues() {
        let (clock, s) = store();
        block(async {
            clock.set(at(10));
            let late = s.enqueue(req().priority(5)).await.expect("ok").id();
            // Storage's clock steps back: `early` is due before `late`, though
            // enqueued after it.
            clock.set(at(0));
            let early = s.enqueue(req().priority(5)).await.expect("ok").id();
            clock.set(at(20));
            let urgent = s.enqueue(req().priority(1)).await.expect("ok").id();
            clock.set(at(0));
            let future = s
                .enqueue(req().priority(0).scheduled_at(at(1_000)))
                .await
                .expect("ok")
                .id();
            clock.set(at(30));
            let got: Vec<JobId> = s
                .claim("mail", "w", 10)
                .await
                .expect("ok")
                .iter()
                .map(|j| j.id)
                .collect();
            assert_eq!(
                got,
                vec![urgent, early, late],
                "the scheduled job is not due"
            );
            assert_eq!(
                s.get_job(future).await.expect("ok").map(|j| j.state),
                Some(JobState::Scheduled)
            );
            s.set_queue(QueueConfig {
                name: "mail".into(),
                workers: Some(1),
                paused: true,
            })
            .await
            .expect("ok");
            clock.set(at(1_000));
            assert_eq!(s.promote_due().await.expect("ok"), 1);
            assert!(
                s.claim("mail", "w", 10).await.expect("ok").is_empty(),
                "paused"
            );
        });
    }

    #[test]
    fn a_unique_key_answers_with_the_existing_job() {
        let (_clock, s) = store();
        block(async {
            let first = s.enqueue(req().unique_key("welcome:42")).await.expect("ok");
            let again = s.enqueue(req().unique_key("welcome:42")).await.expect("ok");
            assert!(matches!(first, EnqueueOutcome::Inserted(_)));
            assert_eq!(again, EnqueueOutcome::Duplicate(first.id()));
        });
    }

    #[test]
    fn the_attempt_fences_heartbeat_finalize_and_effects_after_a_rescue() {
        let (clock, s) = store();
        block(async {
            s.enqueue(req().max_attempts(3)).await.expect("ok");
            let first = claim_one(&s, "w1").await;
            let old = claim_of(&first);
            assert_eq!(
                s.apply_effect(old, "w1", "sent", json!(1))
                    .await
                    .expect("ok"),
                EffectResult::Applied
            );
            // w1 goes silent; the rescuer revokes its claim and w2 takes the job.
            clock.set(at(60_000));
            assert_eq!(s.rescue_stale(Duration::ZERO).await.expect("ok"), vec![old]);
            assert_eq!(
                s.promote_due().await.expect("ok"),
                1,
                "rescued jobs are due at once"
            );
            let second = claim_one(&s, "w2").await;
            assert_eq!(second.attempt, 2);
            let new = claim_of(&second);
            clock.set(at(60_001));
            assert_eq!(
                s.heartbeat(old, "w1").await.expect("ok"),
                HeartbeatStatus::Lost
            );
            assert_eq!(
                s.finalize(old, "w1", Finalize::Completed)
                    .await
                    .expect("ok"),
                FinalizeResult::Stale
            );
            assert_eq!(
                s.apply_effect(old, "w1", "sent", json!(1))
                    .await
                    .expect("ok"),
                EffectResult::NotOwner
            );
            assert_eq!(
                s.apply_effect(new, "w2", "sent", json!(2))
                    .await
                    .expect("ok"),
                EffectResult::AlreadyApplied
            );
            assert_eq!(
                s.get_effect(new.job, "sent").await.expect("ok"),
                Some(json!(1)),
                "written exactly once"
            );
            clock.set(at(60_002));
            assert_eq!(
                s.heartbeat(new, "w2").await.expect("ok"),
                HeartbeatStatus::Alive
            );
            clock.set(at(60_003));
            assert_eq!(
                s.finalize(new, "w2", Finalize::Completed)
                    .await
                    .expect("ok"),
                FinalizeResult::Applied
            );
            clock.set(at(60_004));
            assert_eq!(
                s.finalize(new, "w2", Finalize::Completed)
                    .await
                    .expect("ok"),
                FinalizeResult::AlreadyFinalized
            );
            let done = s.get_job(new.job).await.expect("ok").expect("row");
            assert_eq!(
                (done.state, done.finalized_at),
                (JobState::Completed, Some(at(60_003)))
            );
        });
    }

    #[test]
    fn retries_snoozes_and_exhausted_rescues_follow_the_state_machine() {
        let (clock, s) = store();
        block(async {
            let id = s.enqueue(req().max_attempts(2)).await.expect("ok").id();
            let a1 = claim_of(&claim_one(&s, "w").await);
            // Failed at at(1), due again at at(5_000).
            clock.set(at(1));
            let retry = Finalize::Retry {
                error: "boom".into(),
                delay: ms(5_000 - 1),
            };
            assert_eq!(
                s.finalize(a1, "w", retry).await.expect("ok"),
                FinalizeResult::Applied
            );
            clock.set(at(4_999));
            assert!(
                s.claim("mail", "w", 1).await.expect("ok").is_empty(),
                "not due yet"
            );
            clock.set(at(5_000));
            assert_eq!(s.promote_due().await.expect("ok"), 1);
            let a2 = claim_of(&claim_one(&s, "w").await);
            // Snoozed at at(5_001) until at(6_000).
            clock.set(at(5_001));
            let snooze = Finalize::Snooze {
                delay: ms(6_000 - 5_001),
            };
            assert_eq!(
                s.finalize(a2, "w", snooze).await.expect("ok"),
                FinalizeResult::Applied
            );
            assert_eq!(
                s.get_job(id).await.expect("ok").map(|j| j.max_attempts),
                Some(3),
                "a snooze spends no attempt"
            );
            clock.set(at(6_000));
            s.promote_due().await.expect("ok");
            let a3 = claim_of(&claim_one(&s, "w").await);
            assert_eq!(a3.attempt, 3);
            // The worker dies on its last attempt: the rescuer discards the job.
            clock.set(at(70_000));
            assert_eq!(s.rescue_stale(Duration::ZERO).await.expect("ok"), vec![a3]);
            let job = s.get_job(id).await.expect("ok").expect("row");
            assert_eq!(job.state, JobState::Discarded);
            assert_eq!(job.errors.first().map(String::as_str), Some("boom"));
        });
    }

    #[test]
    fn cancel_is_immediate_when_idle_requested_when_running_and_never_rewrites_an_outcome() {
        let (clock, s) = store();
        block(async {
            let idle = s
                .enqueue(req().scheduled_at(at(9_000)))
                .await
                .expect("ok")
                .id();
            clock.set(at(1));
            assert_eq!(
                s.request_cancel(idle).await.expect("ok"),
                CancelResult::Cancelled
            );
            clock.set(T0);
            let busy = s.enqueue(req()).await.expect("ok").id();
            clock.set(at(2));
            let c = claim_of(&claim_one(&s, "w").await);
            assert_eq!(c.job, busy);
            clock.set(at(3));
            assert_eq!(
                s.request_cancel(busy).await.expect("ok"),
                CancelResult::Requested
            );
            clock.set(at(4));
            assert_eq!(
                s.heartbeat(c, "w").await.expect("ok"),
                HeartbeatStatus::CancelRequested
            );
            clock.set(at(5));
            assert_eq!(
                s.finalize(c, "w", Finalize::Completed).await.expect("ok"),
                FinalizeResult::Applied
            );
            clock.set(at(6));
            assert_eq!(
                s.request_cancel(busy).await.expect("ok"),
                CancelResult::AlreadyFinished
            );
            assert_eq!(
                s.get_job(busy).await.expect("ok").map(|j| j.state),
                Some(JobState::Completed)
            );
            clock.set(at(7));
            assert_eq!(
                s.request_cancel(JobId(999)).await.expect("ok"),
                CancelResult::NotFound
            );
        });
    }

    #[test]
    fn a_cancel_requested_while_running_survives_a_rescue_and_a_failed_attempt() {
        let (clock, s) = store();
        block(async {
            let rescued = s.enqueue(req()).await.expect("ok").id();
            let c = claim_of(&claim_one(&s, "w").await);
            clock.set(at(1));
            assert_eq!(
                s.request_cancel(rescued).await.expect("ok"),
                CancelResult::Requested
            );
            clock.set(at(60_000));
            s.rescue_stale(Duration::ZERO).await.expect("ok");
            assert_eq!(
                s.get_job(c.job).await.expect("ok").map(|j| j.state),
                Some(JobState::Cancelled)
            );
            clock.set(T0);
            let failed = s.enqueue(req()).await.expect("ok").id();
            clock.set(at(60_001));
            let c = claim_of(&claim_one(&s, "w").await);
            assert_eq!(c.job, failed);
            clock.set(at(60_002));
            s.request_cancel(failed).await.expect("ok");
            // Failed at at(60_003), due again at at(61_000).
            clock.set(at(60_003));
            let retry = Finalize::Retry {
                error: "boom".into(),
                delay: ms(61_000 - 60_003),
            };
            s.finalize(c, "w", retry).await.expect("ok");
            assert_eq!(
                s.get_job(failed).await.expect("ok").map(|j| j.state),
                Some(JobState::Cancelled)
            );
        });
    }

    #[test]
    fn cleanup_removes_only_old_finished_jobs_and_frees_their_unique_keys() {
        const RETENTION: Duration = Duration::from_secs(1);
        let (clock, s) = store();
        block(async {
            let id = s.enqueue(req().unique_key("k")).await.expect("ok").id();
            s.enqueue(req()).await.expect("ok");
            let c = claim_of(&claim_one(&s, "w").await);
            assert_eq!(c.job, id);
            clock.set(at(10));
            s.finalize(c, "w", Finalize::Completed).await.expect("ok");
            // Finished at at(10): exactly RETENTION old is not older than the
            // horizon; a millisecond more is.
            clock.set(at(10).plus(RETENTION));
            assert_eq!(
                s.cleanup(RETENTION, 100).await.expect("ok"),
                0,
                "not older than the horizon"
            );
            clock.set(at(11).plus(RETENTION));
            assert_eq!(s.cleanup(RETENTION, 100).await.expect("ok"), 1);
            let counts = s.count_by_state().await.expect("ok");
            assert_eq!(
                (counts.get(JobState::Available), counts.unfinished()),
                (1, 1)
            );
            clock.set(at(12).plus(RETENTION));
            assert!(matches!(
                s.enqueue(req().unique_key("k")).await.expect("ok"),
                EnqueueOutcome::Inserted(_)
            ));
        });
    }

    #[test]
    fn a_periodic_slot_fires_once_and_only_for_the_current_term() {
        let (_clock, s) = store();
        block(async {
            let lease = s
                .try_acquire("maintainer", "n1", Duration::from_secs(5))
                .await
                .expect("ok")
                .expect("granted");
            let fire = |holder: &'static str, term| {
                s.fire_periodic(
                    "digest",
                    at(60_000),
                    "every 60s",
                    "maintainer",
                    holder,
                    term,
                    req(),
                )
            };
            let fired = fire("n1", lease.term).await.expect("ok");
            let PeriodicOutcome::Fired(id) = fired else {
                panic!("fired: {fired:?}")
            };
            assert_eq!(
                fire("n1", lease.term).await.expect("ok"),
                PeriodicOutcome::AlreadyFired(id)
            );
            assert_eq!(
                fire("n2", lease.term).await.expect("ok"),
                PeriodicOutcome::StaleTerm
            );
            assert_eq!(
                fire("n1", Term(lease.term.0 - 1)).await.expect("ok"),
                PeriodicOutcome::StaleTerm
            );
        });
    }

    #[test]
    fn bad_input_names_the_field_and_a_bad_batch_inserts_nothing() {
        let (_clock, s) = store();
        let field = |e: StorageError| match e {
            StorageError::Invalid { field, .. } => field,
            other => panic!("not a validation error: {other}"),
        };
        block(async {
            assert_eq!(
                field(s.enqueue(req().queue("")).await.expect_err("empty")),
                "queue"
            );
            assert_eq!(
                field(s.enqueue(req().queue("a b")).await.expect_err("space")),
                "queue"
            );
            assert_eq!(
                field(s.enqueue(req().max_attempts(0)).await.expect_err("zero")),
                "max_attempts"
            );
            assert_eq!(
                field(s.enqueue(req().priority(10)).await.expect_err("ten")),
                "priority"
            );
            let big = EnqueueRequest::new("k", json!("x".repeat(PAYLOAD_BYTES_MAX)));
            assert_eq!(field(s.enqueue(big).await.expect_err("big")), "payload");
            let batch = vec![req(), req().queue("")];
            assert_eq!(
                field(s.enqueue_batch(batch).await.expect_err("bad item")),
                "queue"
            );
            assert_eq!(
                s.count_by_state().await.expect("ok").unfinished(),
                0,
                "nothing inserted"
            );
            let ok = s.enqueue_batch(vec![req(), req()]).await.expect("ok");
            assert_eq!(ok.len(), 2);
        });
    }

    /// Staleness is judged on storage's clock alone: a claim goes stale only once
    /// storage's clock is `stale_after` past its last heartbeat, and a storage
    /// clock that steps back never makes a claim stale.
    #[test]
    fn scheduled_in_is_counted_on_storages_clock_from_the_insert() {
        let (clock, s) = store();
        block(async {
            clock.set(at(5_000));
            let id = s
                .enqueue(req().scheduled_in(ms(2_000)))
                .await
                .expect("ok")
                .id();
            let job = s.get_job(id).await.expect("ok").expect("row");
            assert_eq!(
                (job.state, job.scheduled_at),
                (JobState::Scheduled, at(7_000))
            );
            clock.set(at(6_999));
            assert_eq!(s.promote_due().await.expect("ok"), 0, "not due yet");
            clock.set(at(7_000));
            assert_eq!(s.promote_due().await.expect("ok"), 1);
            let mut both = req().scheduled_in(ms(1));
            both.scheduled_at = Some(at(0));
            let err = s.enqueue(both).await.expect_err("both set");
            assert!(
                matches!(err, StorageError::Invalid { ref field, .. } if field == "scheduled_in"),
                "{err}"
            );
        });
    }

    #[test]
    fn storage_clock_judges_staleness_not_the_caller() {
        const STALE_AFTER: Duration = Duration::from_secs(30);
        let (clock, s) = store();
        block(async {
            s.enqueue(req()).await.expect("ok");
            let c = claim_of(&claim_one(&s, "w").await);
            clock.set(at(1_000));
            assert_eq!(
                s.heartbeat(c, "w").await.expect("ok"),
                HeartbeatStatus::Alive
            );
            let job = s.get_job(c.job).await.expect("ok").expect("row");
            assert_eq!(job.heartbeat_at, Some(at(1_000)), "storage's time");

            // Storage's clock steps back, even to before the claim: however short
            // the window, nothing is stale.
            clock.set(at(-60_000));
            assert!(s.rescue_stale(STALE_AFTER).await.expect("ok").is_empty());
            assert!(s.rescue_stale(Duration::ZERO).await.expect("ok").is_empty());

            // Forward again, but not yet `stale_after` past the heartbeat.
            clock.set(at(1_000).plus(STALE_AFTER).minus(ms(1)));
            assert!(
                s.rescue_stale(STALE_AFTER).await.expect("ok").is_empty(),
                "heartbeat is younger than stale_after"
            );
            assert_eq!(
                s.get_job(c.job).await.expect("ok").map(|j| j.state),
                Some(JobState::Running)
            );

            // Past it: revoked.
            clock.set(at(1_000).plus(STALE_AFTER).plus(ms(1)));
            assert_eq!(
                s.rescue_stale(STALE_AFTER).await.expect("ok"),
                vec![c],
                "heartbeat is older than stale_after"
            );
            assert_eq!(
                s.heartbeat(c, "w").await.expect("ok"),
                HeartbeatStatus::Lost
            );
        });
    }
}
