//! `LeaseStore` and `JobStore` for [`SqliteEngine`]: find rows, apply the
//! model's [rules](crate::storage::rules) to them, write them back, all in one
//! transaction per call, judged against one reading of the engine's clock.

use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension, Row};

use super::SqliteEngine;
use crate::clock::Timestamp;
use crate::storage::job::validate_name;
use crate::storage::{
    validate_holder, validate_lease_name, CancelResult, Claim, EffectResult, EnqueueOutcome,
    EnqueueRequest, Finalize, FinalizeResult, HeartbeatStatus, Job, JobId, JobState, JobStore,
    Lease, LeaseStore, PeriodicOutcome, QueueConfig, StateCounts, StorageResult, Term,
};

const JOB_COLUMNS: &str = "id, kind, queue, payload, priority, state, attempt, max_attempts, \
     scheduled_at, created_at, owner, heartbeat_at, cancel_requested, finalized_at, \
     finalized_attempt, errors, unique_key, attempts";

/// A value the database holds that this library could not have written.
pub(super) fn corrupt(column: usize, what: String) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(column, rusqlite::types::Type::Text, what.into())
}

pub(super) fn json_column<T: serde::de::DeserializeOwned>(
    row: &Row<'_>,
    i: usize,
) -> rusqlite::Result<T> {
    let text: String = row.get(i)?;
    serde_json::from_str(&text).map_err(|e| corrupt(i, format!("bad JSON: {e}")))
}

fn to_json<T: serde::Serialize>(value: &T) -> rusqlite::Result<String> {
    serde_json::to_string(value).map_err(|e| rusqlite::Error::ToSqlConversionFailure(e.into()))
}

fn job_from_row(row: &Row<'_>) -> rusqlite::Result<Job> {
    let state: String = row.get(5)?;
    let state = JobState::parse(&state).ok_or_else(|| corrupt(5, format!("state {state:?}")))?;
    Ok(Job {
        id: JobId(row.get(0)?),
        kind: row.get(1)?,
        queue: row.get(2)?,
        payload: json_column(row, 3)?,
        priority: row.get(4)?,
        state,
        attempt: row.get(6)?,
        max_attempts: row.get(7)?,
        scheduled_at: Timestamp(row.get(8)?),
        created_at: Timestamp(row.get(9)?),
        owner: row.get(10)?,
        heartbeat_at: row.get::<_, Option<i64>>(11)?.map(Timestamp),
        cancel_requested: row.get(12)?,
        finalized_at: row.get::<_, Option<i64>>(13)?.map(Timestamp),
        finalized_attempt: row.get(14)?,
        errors: json_column(row, 15)?,
        unique_key: row.get(16)?,
        attempts: json_column(row, 17)?,
    })
}

pub(super) fn jobs_where(
    tx: &Connection,
    filter: &str,
    args: impl rusqlite::Params,
) -> rusqlite::Result<Vec<Job>> {
    let sql = format!("SELECT {JOB_COLUMNS} FROM keel_jobs WHERE {filter}");
    let mut stmt = tx.prepare_cached(&sql)?;
    let rows = stmt.query_map(args, job_from_row)?;
    rows.collect()
}

/// Row `id`; an id past `INTEGER`'s range names no row, as in the model.
pub(super) fn load(tx: &Connection, id: JobId) -> rusqlite::Result<Option<Job>> {
    let Ok(id) = i64::try_from(id.0) else {
        return Ok(None);
    };
    Ok(jobs_where(tx, "id = ?1", [id])?.into_iter().next())
}

/// Write back every column a transition may change.
pub(super) fn store(tx: &Connection, job: &Job) -> rusqlite::Result<()> {
    let mut stmt = tx.prepare_cached(
        "UPDATE keel_jobs SET state = ?2, attempt = ?3, max_attempts = ?4, scheduled_at = ?5, \
         owner = ?6, heartbeat_at = ?7, cancel_requested = ?8, finalized_at = ?9, \
         finalized_attempt = ?10, errors = ?11, attempts = ?12 WHERE id = ?1",
    )?;
    let changed = stmt.execute(params![
        job.id.0,
        job.state.as_str(),
        job.attempt,
        job.max_attempts,
        job.scheduled_at.0,
        job.owner,
        job.heartbeat_at.map(|t| t.0),
        job.cancel_requested,
        job.finalized_at.map(|t| t.0),
        job.finalized_attempt,
        to_json(&job.errors)?,
        to_json(&job.attempts)?,
    ])?;
    assert_eq!(changed, 1, "a loaded row is written back");
    Ok(())
}

/// Claim up to `limit` due jobs of `queue` for `owner`, inside `tx`.
fn claim_in(
    tx: &Connection,
    queue: &str,
    owner: &str,
    limit: u32,
    now: Timestamp,
) -> rusqlite::Result<Vec<Job>> {
    let paused: Option<bool> = tx
        .prepare_cached("SELECT paused FROM keel_queues WHERE name = ?1")?
        .query_row([queue], |r| r.get(0))
        .optional()?;
    if paused == Some(true) {
        return Ok(Vec::new());
    }
    let mut due = jobs_where(
        tx,
        "queue = ?1 AND state = 'available' AND scheduled_at <= ?2 \
         ORDER BY priority, scheduled_at, id LIMIT ?3",
        params![queue, now.0, limit],
    )?;
    // Only the columns `Job::claim_for` changes (the conformance suite holds
    // the two to the same row): a claim rewrites no payload or error list.
    let mut claimed = tx.prepare_cached(
        "UPDATE keel_jobs SET state = ?2, attempt = ?3, owner = ?4, heartbeat_at = ?5, \
         attempts = ?6 WHERE id = ?1 AND state = 'available'",
    )?;
    for job in &mut due {
        job.claim_for(owner, now);
        let changed = claimed.execute(params![
            job.id.0,
            job.state.as_str(),
            job.attempt,
            job.owner,
            job.heartbeat_at.map(|t| t.0),
            to_json(&job.attempts)?,
        ])?;
        assert_eq!(changed, 1, "a due row is claimed");
    }
    Ok(due)
}

/// Complete a live claim in one statement, the path nearly every job ends on;
/// `false` when the claim is not live (nothing changed; the rules then tell a
/// repeat from a stale claim).
///
/// The `SET` list is the model's `finalize_with` for `Completed` on a live claim
/// (owner and heartbeat cleared, the attempt recorded, finished now; a pending
/// cancel does not matter to completed work); the conformance suite holds the
/// two to the same row.
fn complete_live(
    tx: &Connection,
    claim: Claim,
    owner: &str,
    now: Timestamp,
) -> rusqlite::Result<bool> {
    let Ok(id) = i64::try_from(claim.job.0) else {
        return Ok(false);
    };
    let changed = tx
        .prepare_cached(
            "UPDATE keel_jobs SET state = 'completed', owner = NULL, heartbeat_at = NULL, \
             finalized_attempt = ?2, finalized_at = ?4, \
             attempts = CASE WHEN json_extract(attempts, '$[#-1].attempt') = ?2 \
                 THEN json_set(attempts, '$[#-1].ended_at', ?4, '$[#-1].outcome', 'completed') \
                 ELSE attempts END \
             WHERE id = ?1 AND state = 'running' AND attempt = ?2 AND owner = ?3",
        )?
        .execute(params![id, claim.attempt, owner, now.0])?;
    Ok(changed == 1)
}

/// Record how `claim`'s attempt ended, inside `tx`.
fn finalize_in(
    tx: &Connection,
    claim: Claim,
    owner: &str,
    outcome: Finalize,
    now: Timestamp,
) -> rusqlite::Result<FinalizeResult> {
    if outcome == Finalize::Completed && complete_live(tx, claim, owner, now)? {
        return Ok(FinalizeResult::Applied);
    }
    let Some(mut job) = load(tx, claim.job)? else {
        return Ok(FinalizeResult::Stale);
    };
    let result = job.finalize_with(claim, owner, outcome, now);
    if result == FinalizeResult::Applied {
        store(tx, &job)?;
    }
    Ok(result)
}

fn insert(
    tx: &Connection,
    req: EnqueueRequest,
    now: Timestamp,
) -> rusqlite::Result<EnqueueOutcome> {
    if let Some(key) = &req.unique_key {
        let existing: Option<u64> = tx
            .prepare_cached("SELECT id FROM keel_jobs WHERE unique_key = ?1")?
            .query_row([key], |r| r.get(0))
            .optional()?;
        if let Some(id) = existing {
            return Ok(EnqueueOutcome::Duplicate(JobId(id)));
        }
    }
    // Build the row through the model (id filled in below) so defaults agree.
    let job = Job::from_request(JobId(0), req, now);
    let mut stmt = tx.prepare_cached(
        "INSERT INTO keel_jobs (kind, queue, payload, priority, state, attempt, max_attempts, \
         scheduled_at, created_at, owner, heartbeat_at, cancel_requested, finalized_at, \
         finalized_attempt, errors, unique_key) \
         VALUES (?1, ?2, ?3, ?4, ?5, 0, ?6, ?7, ?8, NULL, NULL, 0, NULL, NULL, '[]', ?9)",
    )?;
    stmt.execute(params![
        job.kind,
        job.queue,
        to_json(&job.payload)?,
        job.priority,
        job.state.as_str(),
        job.max_attempts,
        job.scheduled_at.0,
        job.created_at.0,
        job.unique_key,
    ])?;
    let id =
        u64::try_from(tx.last_insert_rowid()).map_err(|_| corrupt(0, "negative job id".into()))?;
    Ok(EnqueueOutcome::Inserted(JobId(id)))
}

fn lease(tx: &Connection, name: &str) -> rusqlite::Result<Option<Lease>> {
    tx.prepare_cached("SELECT term, holder, expires_at FROM keel_leases WHERE name = ?1")?
        .query_row([name], |r| {
            Ok(Lease {
                name: name.to_owned(),
                term: Term(r.get(0)?),
                holder: r.get(1)?,
                expires_at: Timestamp(r.get(2)?),
            })
        })
        .optional()
}

fn holds(tx: &Connection, name: &str, holder: &str, term: Term) -> rusqlite::Result<bool> {
    Ok(lease(tx, name)?.is_some_and(|l| l.term == term && l.holder.as_deref() == Some(holder)))
}

#[async_trait]
impl LeaseStore for SqliteEngine {
    async fn try_acquire_fenced(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
        known: Option<Term>,
    ) -> StorageResult<Option<Lease>> {
        validate_lease_name(name)?;
        validate_holder(holder)?;
        self.write_now(|tx, now| {
            let previous = lease(tx, name)?;
            let grantable = previous
                .as_ref()
                .is_none_or(|l| l.grantable(holder, known, now));
            if !grantable {
                return Ok(None);
            }
            let granted = Lease {
                name: name.to_owned(),
                term: Term(previous.as_ref().map_or(0, |l| l.term.0) + 1),
                holder: Some(holder.to_owned()),
                expires_at: now.plus(ttl),
            };
            tx.prepare_cached(
                "INSERT INTO keel_leases (name, term, holder, expires_at) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT (name) DO UPDATE SET term = excluded.term, holder = excluded.holder, \
                 expires_at = excluded.expires_at",
            )?
            .execute(params![name, granted.term.0, holder, granted.expires_at.0])?;
            Ok(Some(granted))
        })
    }

    async fn renew(
        &self,
        name: &str,
        holder: &str,
        term: Term,
        ttl: Duration,
    ) -> StorageResult<bool> {
        validate_lease_name(name)?;
        validate_holder(holder)?;
        self.write_now(|tx, now| {
            // Never shorten a grant, even after storage's clock stepped back
            // (see MemStorage::renew).
            let changed = tx
                .prepare_cached(
                    "UPDATE keel_leases SET expires_at = max(expires_at, ?4) \
                     WHERE name = ?1 AND holder = ?2 AND term = ?3",
                )?
                .execute(params![name, holder, term.0, now.plus(ttl).0])?;
            Ok(changed == 1)
        })
    }

    async fn resign(&self, name: &str, holder: &str, term: Term) -> StorageResult<bool> {
        validate_lease_name(name)?;
        validate_holder(holder)?;
        self.write(|tx| {
            // Keep the row: the next grant must still get a higher term.
            let changed = tx
                .prepare_cached(
                    "UPDATE keel_leases SET holder = NULL \
                     WHERE name = ?1 AND holder = ?2 AND term = ?3",
                )?
                .execute(params![name, holder, term.0])?;
            Ok(changed == 1)
        })
    }

    async fn get_lease(&self, name: &str) -> StorageResult<Option<Lease>> {
        validate_lease_name(name)?;
        self.read(|tx| lease(tx, name))
    }

    async fn maintenance_heartbeat(
        &self,
        name: &str,
        holder: &str,
        term: Term,
    ) -> StorageResult<bool> {
        validate_lease_name(name)?;
        validate_holder(holder)?;
        self.read(|tx| holds(tx, name, holder, term))
    }
}

#[async_trait]
impl JobStore for SqliteEngine {
    async fn enqueue(&self, req: EnqueueRequest) -> StorageResult<EnqueueOutcome> {
        req.validate()?;
        self.write_now(|tx, now| insert(tx, req, now))
    }

    async fn enqueue_batch(&self, reqs: Vec<EnqueueRequest>) -> StorageResult<Vec<EnqueueOutcome>> {
        for req in &reqs {
            req.validate()?;
        }
        self.write_now(|tx, now| reqs.into_iter().map(|r| insert(tx, r, now)).collect())
    }

    async fn claim(&self, queue: &str, owner: &str, limit: u32) -> StorageResult<Vec<Job>> {
        validate_name("queue", queue)?;
        validate_holder(owner)?;
        self.write_now(|tx, now| claim_in(tx, queue, owner, limit, now))
    }

    async fn heartbeat(&self, claim: Claim, owner: &str) -> StorageResult<HeartbeatStatus> {
        self.write_now(|tx, now| {
            let Some(mut job) = load(tx, claim.job)? else {
                return Ok(HeartbeatStatus::Lost);
            };
            let status = job.beat(claim, owner, now);
            if status != HeartbeatStatus::Lost {
                store(tx, &job)?;
            }
            Ok(status)
        })
    }

    async fn finalize(
        &self,
        claim: Claim,
        owner: &str,
        outcome: Finalize,
    ) -> StorageResult<FinalizeResult> {
        self.write_now(|tx, now| finalize_in(tx, claim, owner, outcome, now))
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
        validate_holder(owner)?;
        // One reading for both halves, as the model does.
        self.write_now(|tx, now| {
            let result = finalize_in(tx, claim, owner, outcome, now)?;
            Ok((result, claim_in(tx, queue, owner, limit, now)?))
        })
    }

    async fn apply_effect(
        &self,
        claim: Claim,
        owner: &str,
        key: &str,
        value: serde_json::Value,
    ) -> StorageResult<EffectResult> {
        validate_name("effect key", key)?;
        self.write(|tx| {
            let live = load(tx, claim.job)?.is_some_and(|j| j.is_live_claim(claim, owner));
            if !live {
                return Ok(EffectResult::NotOwner);
            }
            let inserted = tx
                .prepare_cached(
                    "INSERT INTO keel_effects (job_id, key, value) VALUES (?1, ?2, ?3) \
                     ON CONFLICT DO NOTHING",
                )?
                .execute(params![claim.job.0, key, to_json(&value)?])?;
            Ok(if inserted == 1 {
                EffectResult::Applied
            } else {
                EffectResult::AlreadyApplied
            })
        })
    }

    async fn get_effect(&self, job: JobId, key: &str) -> StorageResult<Option<serde_json::Value>> {
        let Ok(id) = i64::try_from(job.0) else {
            return Ok(None);
        };
        self.read(|tx| {
            tx.prepare_cached("SELECT value FROM keel_effects WHERE job_id = ?1 AND key = ?2")?
                .query_row(params![id, key], |r| json_column(r, 0))
                .optional()
        })
    }

    async fn request_cancel(&self, job: JobId) -> StorageResult<CancelResult> {
        self.write_now(|tx, now| {
            let Some(mut row) = load(tx, job)? else {
                return Ok(CancelResult::NotFound);
            };
            let result = row.cancel_at(now);
            if result != CancelResult::AlreadyFinished {
                store(tx, &row)?;
            }
            Ok(result)
        })
    }

    async fn rescue_stale(&self, stale_after: Duration) -> StorageResult<Vec<Claim>> {
        self.write_now(|tx, now| {
            let stale_before = now.minus(stale_after);
            let stale = jobs_where(
                tx,
                "state = 'running' AND (heartbeat_at IS NULL OR heartbeat_at < ?1) ORDER BY id",
                [stale_before.0],
            )?;
            let mut revoked = Vec::with_capacity(stale.len());
            for mut job in stale {
                debug_assert!(job.is_stale(stale_before));
                revoked.push(job.rescue(now));
                store(tx, &job)?;
            }
            Ok(revoked)
        })
    }

    async fn promote_due(&self) -> StorageResult<u64> {
        self.write_now(|tx, now| {
            let promoted = tx
                .prepare_cached(
                    "UPDATE keel_jobs SET state = 'available' \
                     WHERE state IN ('scheduled', 'retryable') AND scheduled_at <= ?1",
                )?
                .execute([now.0])?;
            Ok(promoted as u64)
        })
    }

    async fn cleanup(&self, retention: Duration, limit: u32) -> StorageResult<u64> {
        self.write_now(|tx, now| {
            let finished_before = now.minus(retention);
            let doomed: Vec<u64> = tx
                .prepare_cached(
                    "SELECT id FROM keel_jobs \
                     WHERE state IN ('completed', 'cancelled', 'discarded') AND finalized_at < ?1 \
                     ORDER BY id LIMIT ?2",
                )?
                .query_map(params![finished_before.0, limit], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            for id in &doomed {
                tx.prepare_cached("DELETE FROM keel_effects WHERE job_id = ?1")?
                    .execute([id])?;
                tx.prepare_cached("DELETE FROM keel_jobs WHERE id = ?1")?
                    .execute([id])?;
            }
            Ok(doomed.len() as u64)
        })
    }

    async fn time(&self) -> StorageResult<Timestamp> {
        Ok(self.now())
    }

    async fn get_job(&self, job: JobId) -> StorageResult<Option<Job>> {
        self.read(|tx| load(tx, job))
    }

    async fn count_by_state(&self) -> StorageResult<StateCounts> {
        self.read(|tx| {
            let mut counts = StateCounts::default();
            let mut stmt =
                tx.prepare_cached("SELECT state, count(*) FROM keel_jobs GROUP BY state")?;
            let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, u64>(1)?)))?;
            for row in rows {
                let (state, n) = row?;
                let state = JobState::parse(&state)
                    .ok_or_else(|| corrupt(0, format!("state {state:?}")))?;
                counts.0.insert(state, n);
            }
            Ok(counts)
        })
    }

    async fn list_unfinished(&self, limit: u32) -> StorageResult<Vec<JobId>> {
        self.read(|tx| {
            tx.prepare_cached(
                "SELECT id FROM keel_jobs \
                 WHERE state NOT IN ('completed', 'cancelled', 'discarded') ORDER BY id LIMIT ?1",
            )?
            .query_map([limit], |r| Ok(JobId(r.get(0)?)))?
            .collect()
        })
    }

    async fn set_queue(&self, config: QueueConfig) -> StorageResult<()> {
        validate_name("queue", &config.name)?;
        self.write(|tx| {
            tx.prepare_cached(
                "INSERT INTO keel_queues (name, workers, paused) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (name) DO UPDATE SET workers = excluded.workers, \
                 paused = excluded.paused",
            )?
            .execute(params![config.name, config.workers, config.paused])?;
            Ok(())
        })
    }

    async fn get_queue(&self, name: &str) -> StorageResult<Option<QueueConfig>> {
        self.read(|tx| {
            tx.prepare_cached("SELECT workers, paused FROM keel_queues WHERE name = ?1")?
                .query_row([name], |r| {
                    Ok(QueueConfig {
                        name: name.to_owned(),
                        workers: r.get(0)?,
                        paused: r.get(1)?,
                    })
                })
                .optional()
        })
    }

    async fn fire_periodic(
        &self,
        name: &str,
        slot: Timestamp,
        schedule: &str,
        lease_name: &str,
        holder: &str,
        term: Term,
        req: EnqueueRequest,
    ) -> StorageResult<PeriodicOutcome> {
        validate_name("periodic name", name)?;
        req.validate()?;
        self.write_now(|tx, now| {
            if !holds(tx, lease_name, holder, term)? {
                return Ok(PeriodicOutcome::StaleTerm);
            }
            let fired: Option<u64> = tx
                .prepare_cached("SELECT job_id FROM keel_periodic WHERE name = ?1 AND slot = ?2")?
                .query_row(params![name, slot.0], |r| r.get(0))
                .optional()?;
            if let Some(id) = fired {
                return Ok(PeriodicOutcome::AlreadyFired(JobId(id)));
            }
            let (queue, kind) = (req.queue.clone(), req.kind.clone());
            let id = insert(tx, req, now)?.id();
            tx.prepare_cached(
                "INSERT INTO keel_periodic (name, slot, job_id) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![name, slot.0, id.0])?;
            // A later slot recorded before (a slow leader's late firing) stays.
            tx.prepare_cached(
                "INSERT INTO keel_schedules (name, schedule, queue, kind, last_slot, last_job) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (name) DO UPDATE SET \
                 schedule = excluded.schedule, queue = excluded.queue, kind = excluded.kind, \
                 last_slot = excluded.last_slot, last_job = excluded.last_job \
                 WHERE excluded.last_slot >= keel_schedules.last_slot",
            )?
            .execute(params![name, schedule, queue, kind, slot.0, id.0])?;
            Ok(PeriodicOutcome::Fired(id))
        })
    }
}
