//! [`JobStore`] for [`PostgresStorage`]: find and lock rows in SQL, change them
//! with the model's rules (`rules.rs`), write them back in the same transaction.
//!
//! Each trait method reads its time source once ([`PostgresStorage::now_param`])
//! and hands it to every statement it runs; a rule applied in Rust gets the
//! time the statement that locked its row read (see the module docs, "Time").

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::Transaction;

use super::batch::ClaimAsk;
use super::leases::{holds, lock_lease};
use super::rows::{
    job_from_row, job_id, json_of, lock_job, notify, read_rows, select_jobs, sql_id, write_job,
    write_jobs, JobInserter, JOB_COLUMNS,
};
use super::{now_sql, read, read_now, transact, Fail, NowParam, PostgresStorage};
use crate::clock::Timestamp;
use crate::storage::job::validate_name;
use crate::storage::{
    validate_holder, CancelResult, Claim, EffectResult, EnqueueOutcome, EnqueueRequest, Finalize,
    FinalizeResult, HeartbeatStatus, Job, JobId, JobStore, PeriodicOutcome, QueueConfig,
    StateCounts, StorageResult, Term,
};

/// `WHERE` clause of terminal states; the same list as `JobState::is_terminal`.
const TERMINAL: &str = "('completed', 'cancelled', 'discarded')";

async fn enqueue_tx(
    tx: &Transaction<'_>,
    channel: &str,
    reqs: &[EnqueueRequest],
    now: NowParam,
) -> Result<Vec<EnqueueOutcome>, Fail> {
    let mut inserter = JobInserter::lock(tx, now).await?;
    let mut outcomes = Vec::with_capacity(reqs.len());
    for req in reqs {
        outcomes.push(inserter.insert(tx, req.clone()).await?);
    }
    inserter.finish(tx).await?;
    notify(tx, channel, reqs.iter().map(|r| r.queue.as_str())).await?;
    Ok(outcomes)
}

async fn apply_effect_tx(
    tx: &Transaction<'_>,
    claim: Claim,
    owner: &str,
    key: &str,
    value: &str,
) -> Result<EffectResult, Fail> {
    let Some(id) = sql_id(claim.job) else {
        return Ok(EffectResult::NotOwner);
    };
    // A share lock keeps the claim live until the effect commits: rescue and
    // finalize need the row exclusively.
    let sql = format!("SELECT {JOB_COLUMNS} FROM keel_jobs WHERE id = $1 FOR SHARE");
    let live = select_jobs(tx, &sql, &[&id])
        .await?
        .first()
        .is_some_and(|j| j.is_live_claim(claim, owner));
    if !live {
        return Ok(EffectResult::NotOwner);
    }
    let statement = tx
        .prepare_cached(
            "INSERT INTO keel_effects (job_id, key, value) VALUES ($1, $2, $3) \
             ON CONFLICT (job_id, key) DO NOTHING",
        )
        .await?;
    let inserted = tx.execute(&statement, &[&id, &key, &value]).await?;
    Ok(if inserted == 1 {
        EffectResult::Applied
    } else {
        EffectResult::AlreadyApplied
    })
}

async fn rescue_tx(
    tx: &Transaction<'_>,
    channel: &str,
    stale_after: Duration,
    now: NowParam,
) -> Result<Vec<Claim>, Fail> {
    let now = read_now(tx, now).await?;
    let stale_before = now.minus(stale_after);
    let sql = format!(
        "SELECT {JOB_COLUMNS} FROM keel_jobs WHERE state = 'running' \
         AND (heartbeat_at IS NULL OR heartbeat_at < $1) ORDER BY id FOR UPDATE"
    );
    let mut jobs: Vec<Job> = select_jobs(tx, &sql, &[&stale_before.0])
        .await?
        .into_iter()
        .filter(|j| j.is_stale(stale_before))
        .collect();
    let claims: Vec<Claim> = jobs.iter_mut().map(|j| j.rescue(now)).collect();
    write_jobs(tx, &jobs).await?;
    notify(tx, channel, jobs.iter().map(|j| j.queue.as_str())).await?;
    Ok(claims)
}

async fn promote_tx(tx: &Transaction<'_>, channel: &str, now: NowParam) -> Result<u64, Fail> {
    // The set-based form of `Job::is_due` and its transition to available.
    let sql = format!(
        "WITH promoted AS (UPDATE keel_jobs SET state = 'available' \
         WHERE state IN ('scheduled', 'retryable') AND scheduled_at <= {} RETURNING queue) \
         SELECT queue, count(*) FROM promoted GROUP BY queue",
        now_sql(1)
    );
    let statement = tx.prepare_cached(&sql).await?;
    let rows = tx.query(&statement, &[&now]).await?;
    let mut promoted = 0u64;
    let mut queues = Vec::with_capacity(rows.len());
    for row in &rows {
        queues.push(row.try_get::<_, String>(0)?);
        let count: i64 = row.try_get(1)?;
        promoted += u64::try_from(count).map_err(|_| Fail::Corrupt("negative count".into()))?;
    }
    notify(tx, channel, queues.iter().map(String::as_str)).await?;
    Ok(promoted)
}

#[allow(clippy::too_many_arguments)]
async fn fire_periodic_tx(
    tx: &Transaction<'_>,
    channel: &str,
    name: &str,
    slot: Timestamp,
    schedule: &str,
    lease: &str,
    holder: &str,
    term: Term,
    req: &EnqueueRequest,
    now: NowParam,
) -> Result<PeriodicOutcome, Fail> {
    // The lease row stays locked until commit, so the term cannot move on (and a
    // second firing of this slot waits) between this check and the insert.
    if !holds(lock_lease(tx, lease).await?.as_ref(), holder, term) {
        return Ok(PeriodicOutcome::StaleTerm);
    }
    let statement = tx
        .prepare_cached("SELECT job_id FROM keel_periodic WHERE name = $1 AND slot = $2")
        .await?;
    if let Some(row) = tx.query_opt(&statement, &[&name, &slot.0]).await? {
        return Ok(PeriodicOutcome::AlreadyFired(job_id(row.try_get(0)?)?));
    }
    let mut inserter = JobInserter::lock(tx, now).await?;
    let id = inserter.insert(tx, req.clone()).await?.id();
    inserter.finish(tx).await?;
    let sql_job = sql_id(id).ok_or_else(|| Fail::Corrupt(format!("{id} out of range")))?;
    let statement = tx
        .prepare_cached("INSERT INTO keel_periodic (name, slot, job_id) VALUES ($1, $2, $3)")
        .await?;
    tx.execute(&statement, &[&name, &slot.0, &sql_job]).await?;
    // A later slot recorded before (a slow leader's late firing) stays.
    let statement = tx
        .prepare_cached(
            "INSERT INTO keel_schedules (name, schedule, queue, kind, last_slot, last_job) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (name) DO UPDATE SET \
             schedule = EXCLUDED.schedule, queue = EXCLUDED.queue, kind = EXCLUDED.kind, \
             last_slot = EXCLUDED.last_slot, last_job = EXCLUDED.last_job \
             WHERE EXCLUDED.last_slot >= keel_schedules.last_slot",
        )
        .await?;
    tx.execute(
        &statement,
        &[&name, &schedule, &req.queue, &req.kind, &slot.0, &sql_job],
    )
    .await?;
    notify(tx, channel, [req.queue.as_str()]).await?;
    Ok(PeriodicOutcome::Fired(id))
}

impl PostgresStorage {
    /// [`JobStore::claim`] at `now`, inputs validated.
    async fn claim_at(
        &self,
        queue: &str,
        owner: &str,
        limit: u32,
        now: NowParam,
    ) -> StorageResult<Vec<Job>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let ask = ClaimAsk {
            queue: queue.into(),
            owner: owner.into(),
            limit,
        };
        self.batcher.call(None, Some(ask), now).await.claimed
    }

    /// [`JobStore::finalize`] at `now`: a completion goes through the batcher,
    /// and what it does not apply settles by the rules.
    async fn finalize_at(
        &self,
        claim: Claim,
        owner: &str,
        outcome: Finalize,
        now: NowParam,
    ) -> StorageResult<FinalizeResult> {
        if outcome == Finalize::Completed {
            let live = Some((claim, owner.to_owned()));
            if self.batcher.call(live, None, now).await.completed? {
                return Ok(FinalizeResult::Applied);
            }
            // Not a live claim: the rules tell a repeat from a stale one.
        }
        self.finalize_by_rules(claim, owner, outcome, now).await
    }

    /// Finalize through the model's rules on the locked row: what any outcome
    /// but `Completed`, or a claim that is not live (a repeat or a stale one),
    /// takes.
    async fn finalize_by_rules(
        &self,
        claim: Claim,
        owner: &str,
        outcome: Finalize,
        now: NowParam,
    ) -> StorageResult<FinalizeResult> {
        transact!(self, |tx| match lock_job(&tx, claim.job, now).await? {
            Some((mut job, now)) => {
                let result = job.finalize_with(claim, owner, outcome.clone(), now);
                if result == FinalizeResult::Applied {
                    write_job(&tx, &job).await?;
                }
                result
            }
            None => FinalizeResult::Stale,
        })
    }
}

#[async_trait]
impl JobStore for PostgresStorage {
    async fn enqueue(&self, req: EnqueueRequest) -> StorageResult<EnqueueOutcome> {
        req.validate()?;
        let now = self.now_param();
        let reqs = [req];
        let outcomes = transact!(self, |tx| enqueue_tx(&tx, &self.channel, &reqs, now)
            .await?)?;
        Ok(outcomes
            .into_iter()
            .next()
            .expect("one outcome per request"))
    }

    async fn enqueue_batch(&self, reqs: Vec<EnqueueRequest>) -> StorageResult<Vec<EnqueueOutcome>> {
        for req in &reqs {
            req.validate()?;
        }
        if reqs.is_empty() {
            return Ok(Vec::new());
        }
        let now = self.now_param();
        transact!(self, |tx| enqueue_tx(&tx, &self.channel, &reqs, now)
            .await?)
    }

    async fn claim(&self, queue: &str, owner: &str, limit: u32) -> StorageResult<Vec<Job>> {
        validate_name("queue", queue)?;
        validate_holder(owner)?;
        self.claim_at(queue, owner, limit, self.now_param()).await
    }

    async fn heartbeat(&self, claim: Claim, owner: &str) -> StorageResult<HeartbeatStatus> {
        let now = self.now_param();
        transact!(self, |tx| match lock_job(&tx, claim.job, now).await? {
            Some((mut job, now)) => {
                let status = job.beat(claim, owner, now);
                if status != HeartbeatStatus::Lost {
                    write_job(&tx, &job).await?;
                }
                status
            }
            None => HeartbeatStatus::Lost,
        })
    }

    async fn finalize(
        &self,
        claim: Claim,
        owner: &str,
        outcome: Finalize,
    ) -> StorageResult<FinalizeResult> {
        self.finalize_at(claim, owner, outcome, self.now_param())
            .await
    }

    async fn finalize_and_claim(
        &self,
        claim: Claim,
        owner: &str,
        outcome: Finalize,
        queue: &str,
        limit: u32,
    ) -> StorageResult<(FinalizeResult, Vec<Job>)> {
        // Bad input fails the whole call before anything is applied.
        validate_name("queue", queue)?;
        validate_holder(owner)?;
        // Both halves are judged at one reading of the time source.
        let now = self.now_param();
        if outcome != Finalize::Completed || limit == 0 {
            // In turn, as the trait's default does.
            let result = self.finalize_at(claim, owner, outcome, now).await?;
            let next = self.claim_at(queue, owner, limit, now).await;
            return Ok((result, next.unwrap_or_default()));
        }
        let ask = ClaimAsk {
            queue: queue.into(),
            owner: owner.into(),
            limit,
        };
        let live = Some((claim, owner.to_owned()));
        let answer = self.batcher.call(live, Some(ask), now).await;
        // A failed claim claimed nothing, or its jobs go back through the rescuer.
        let next = answer.claimed.unwrap_or_default();
        if answer.completed? {
            return Ok((FinalizeResult::Applied, next));
        }
        // The batch judged the completion before its claims. If it then
        // handed out this very attempt, the claim named was not live before
        // (a made-up or future one), and the rules must not see the fresh one.
        if next
            .iter()
            .any(|j| j.id == claim.job && j.attempt == claim.attempt)
        {
            return Ok((FinalizeResult::Stale, next));
        }
        // Not a live claim: the rules tell a repeat from a stale one.
        Ok((
            self.finalize_by_rules(claim, owner, outcome, now).await?,
            next,
        ))
    }

    async fn apply_effect(
        &self,
        claim: Claim,
        owner: &str,
        key: &str,
        value: serde_json::Value,
    ) -> StorageResult<EffectResult> {
        validate_name("effect key", key)?;
        let value = serde_json::to_string(&value).expect("JSON values serialize");
        transact!(self, |tx| apply_effect_tx(&tx, claim, owner, key, &value)
            .await?)
    }

    async fn get_effect(&self, job: JobId, key: &str) -> StorageResult<Option<serde_json::Value>> {
        // Stored keys are validated names: an id or key no row can hold finds nothing
        // (and a NUL, which TEXT refuses, never reaches the server).
        let Some(id) = sql_id(job).filter(|_| !key.contains('\0')) else {
            return Ok(None);
        };
        read!(self, |client| {
            let rows = read_rows(
                &client,
                "SELECT value FROM keel_effects WHERE job_id = $1 AND key = $2",
                &[&id, &key],
            )
            .await?;
            match rows.first() {
                Some(row) => Some(json_of("effect value", row.try_get(0)?)?),
                None => None,
            }
        })
    }

    async fn request_cancel(&self, job: JobId) -> StorageResult<CancelResult> {
        let now = self.now_param();
        transact!(self, |tx| match lock_job(&tx, job, now).await? {
            Some((mut row, now)) => {
                let result = row.cancel_at(now);
                if result != CancelResult::AlreadyFinished {
                    write_job(&tx, &row).await?;
                }
                result
            }
            None => CancelResult::NotFound,
        })
    }

    async fn rescue_stale(&self, stale_after: Duration) -> StorageResult<Vec<Claim>> {
        let now = self.now_param();
        transact!(self, |tx| rescue_tx(&tx, &self.channel, stale_after, now)
            .await?)
    }

    async fn promote_due(&self) -> StorageResult<u64> {
        let now = self.now_param();
        transact!(self, |tx| promote_tx(&tx, &self.channel, now).await?)
    }

    async fn cleanup(&self, retention: Duration, limit: u32) -> StorageResult<u64> {
        let now = self.now_param();
        // Effects go with their job; periodic slots stay. A finished job gets no
        // new effects, so the effects this statement's snapshot sees are all.
        let sql = format!(
            "WITH gone AS (DELETE FROM keel_jobs WHERE id IN (SELECT id FROM keel_jobs \
             WHERE state IN {TERMINAL} AND finalized_at < $1 ORDER BY id LIMIT $2 FOR UPDATE) \
             RETURNING id), \
             effects AS (DELETE FROM keel_effects e USING gone WHERE e.job_id = gone.id) \
             SELECT count(*) FROM gone"
        );
        transact!(self, |tx| {
            let finished_before = read_now(&tx, now).await?.minus(retention);
            let statement = tx.prepare_cached(&sql).await?;
            let row = tx
                .query_one(&statement, &[&finished_before.0, &i64::from(limit)])
                .await?;
            let count: i64 = row.try_get(0)?;
            u64::try_from(count).map_err(|_| Fail::Corrupt("negative count".into()))?
        })
    }

    async fn time(&self) -> StorageResult<Timestamp> {
        let now = self.now_param();
        read!(self, |client| read_now(&client, now).await?)
    }

    async fn get_job(&self, job: JobId) -> StorageResult<Option<Job>> {
        let Some(id) = sql_id(job) else {
            return Ok(None);
        };
        let sql = format!("SELECT {JOB_COLUMNS} FROM keel_jobs WHERE id = $1");
        read!(self, |client| {
            match read_rows(&client, &sql, &[&id]).await?.first() {
                Some(row) => Some(job_from_row(row)?),
                None => None,
            }
        })
    }

    async fn count_by_state(&self) -> StorageResult<StateCounts> {
        read!(self, |client| {
            let rows = read_rows(
                &client,
                "SELECT state, count(*) FROM keel_jobs GROUP BY state",
                &[],
            )
            .await?;
            let mut counts = StateCounts::default();
            for row in &rows {
                let state = super::rows::parse_state(row.try_get(0)?)?;
                let count: i64 = row.try_get(1)?;
                let count =
                    u64::try_from(count).map_err(|_| Fail::Corrupt("negative count".into()))?;
                counts.0.insert(state, count);
            }
            counts
        })
    }

    async fn list_unfinished(&self, limit: u32) -> StorageResult<Vec<JobId>> {
        let sql =
            format!("SELECT id FROM keel_jobs WHERE state NOT IN {TERMINAL} ORDER BY id LIMIT $1");
        read!(self, |client| {
            read_rows(&client, &sql, &[&i64::from(limit)])
                .await?
                .iter()
                .map(|row| job_id(row.try_get(0)?))
                .collect::<Result<Vec<_>, Fail>>()?
        })
    }

    fn enqueue_signal(&self) -> Option<Arc<tokio::sync::Notify>> {
        self.signal.clone()
    }

    async fn set_queue(&self, config: QueueConfig) -> StorageResult<()> {
        validate_name("queue", &config.name)?;
        transact!(self, |tx| {
            let statement = tx
                .prepare_cached(
                    "INSERT INTO keel_queues (name, workers, paused) VALUES ($1, $2, $3) \
                     ON CONFLICT (name) DO UPDATE \
                     SET workers = EXCLUDED.workers, paused = EXCLUDED.paused",
                )
                .await?;
            tx.execute(
                &statement,
                &[&config.name, &config.workers.map(i64::from), &config.paused],
            )
            .await?;
        })
    }

    async fn get_queue(&self, name: &str) -> StorageResult<Option<QueueConfig>> {
        // Stored names are validated: one with a NUL (which TEXT refuses) is unknown.
        if name.contains('\0') {
            return Ok(None);
        }
        read!(self, |client| {
            let rows = read_rows(
                &client,
                "SELECT workers, paused FROM keel_queues WHERE name = $1",
                &[&name],
            )
            .await?;
            match rows.first() {
                Some(row) => {
                    let workers: Option<i64> = row.try_get(0)?;
                    Some(QueueConfig {
                        name: name.to_owned(),
                        workers: workers
                            .map(|w| {
                                u32::try_from(w).map_err(|_| Fail::Corrupt(format!("workers {w}")))
                            })
                            .transpose()?,
                        paused: row.try_get(1)?,
                    })
                }
                None => None,
            }
        })
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
        let now = self.now_param();
        transact!(self, |tx| fire_periodic_tx(
            &tx,
            &self.channel,
            name,
            slot,
            schedule,
            lease,
            holder,
            term,
            &req,
            now
        )
        .await?)
    }
}
