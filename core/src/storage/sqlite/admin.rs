//! [`AdminStore`] for [`SqliteEngine`]: the operator's reads and changes, each
//! one transaction, changes through the model's rules on the loaded row.

use async_trait::async_trait;
use rusqlite::params;

use super::store::{corrupt, jobs_where, load, store};
use super::SqliteEngine;
use crate::clock::Timestamp;
use crate::storage::admin::{summarize_queues, DISCARD_REASON};
use crate::storage::{
    AdminOutcome, AdminStore, JobFilter, JobId, JobPage, JobState, Lease, QueueConfig,
    QueueSummary, ScheduleRecord, StorageResult, Term,
};

#[async_trait]
impl AdminStore for SqliteEngine {
    async fn list_jobs(&self, filter: JobFilter) -> StorageResult<JobPage> {
        filter.validate()?;
        let states: Vec<&str> = filter.states.iter().map(|s| s.as_str()).collect();
        let states = serde_json::to_string(&states).unwrap_or_else(|_| "[]".into());
        self.read(|tx| {
            let jobs = jobs_where(
                tx,
                "(?1 = '[]' OR state IN (SELECT value FROM json_each(?1))) \
                 AND (?2 IS NULL OR queue = ?2) AND (?3 IS NULL OR kind = ?3) \
                 AND (?4 IS NULL OR id < ?4) ORDER BY id DESC LIMIT ?5",
                params![
                    states,
                    filter.queue,
                    filter.kind,
                    // Past `INTEGER`'s range: older than every row.
                    filter.before.and_then(|b| i64::try_from(b.0).ok()),
                    filter.limit + 1
                ],
            )?;
            Ok(JobPage::from_newest(jobs, filter.limit))
        })
    }

    async fn list_effects(&self, job: JobId) -> StorageResult<Vec<(String, serde_json::Value)>> {
        let Ok(id) = i64::try_from(job.0) else {
            return Ok(Vec::new());
        };
        self.read(|tx| {
            tx.prepare_cached("SELECT key, value FROM keel_effects WHERE job_id = ?1 ORDER BY key")?
                .query_map([id], |r| {
                    let text: String = r.get(1)?;
                    let value = serde_json::from_str(&text)
                        .map_err(|e| corrupt(1, format!("bad JSON: {e}")))?;
                    Ok((r.get(0)?, value))
                })?
                .collect()
        })
    }

    async fn list_queues(&self) -> StorageResult<Vec<QueueSummary>> {
        self.read(|tx| {
            let counts = tx
                .prepare_cached(
                    "SELECT queue, state, count(*) FROM keel_jobs GROUP BY queue, state",
                )?
                .query_map([], |r| {
                    let state: String = r.get(1)?;
                    let state = JobState::parse(&state)
                        .ok_or_else(|| corrupt(1, format!("state {state:?}")))?;
                    Ok((r.get(0)?, state, r.get(2)?))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let configs = tx
                .prepare_cached("SELECT name, workers, paused FROM keel_queues")?
                .query_map([], |r| {
                    Ok(QueueConfig {
                        name: r.get(0)?,
                        workers: r.get(1)?,
                        paused: r.get(2)?,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(summarize_queues(counts, configs))
        })
    }

    async fn list_leases(&self) -> StorageResult<Vec<Lease>> {
        self.read(|tx| {
            tx.prepare_cached(
                "SELECT name, term, holder, expires_at FROM keel_leases ORDER BY name",
            )?
            .query_map([], |r| {
                Ok(Lease {
                    name: r.get(0)?,
                    term: Term(r.get(1)?),
                    holder: r.get(2)?,
                    expires_at: Timestamp(r.get(3)?),
                })
            })?
            .collect()
        })
    }

    async fn list_schedules(&self) -> StorageResult<Vec<ScheduleRecord>> {
        self.read(|tx| {
            tx.prepare_cached(
                "SELECT name, schedule, queue, kind, last_slot, last_job FROM keel_schedules \
                 ORDER BY name",
            )?
            .query_map([], |r| {
                Ok(ScheduleRecord {
                    name: r.get(0)?,
                    schedule: r.get(1)?,
                    queue: r.get(2)?,
                    kind: r.get(3)?,
                    last_slot: Timestamp(r.get(4)?),
                    last_job: JobId(r.get(5)?),
                })
            })?
            .collect()
        })
    }

    async fn retry_job(&self, job: JobId) -> StorageResult<AdminOutcome> {
        self.write_now(|tx, now| {
            let Some(mut row) = load(tx, job)? else {
                return Ok(AdminOutcome::NotFound);
            };
            let outcome = row.retry_by_operator(now);
            if outcome == AdminOutcome::Done {
                store(tx, &row)?;
            }
            Ok(outcome)
        })
    }

    async fn discard_job(&self, job: JobId) -> StorageResult<AdminOutcome> {
        self.write_now(|tx, now| {
            let Some(mut row) = load(tx, job)? else {
                return Ok(AdminOutcome::NotFound);
            };
            let outcome = row.discard_by_operator(DISCARD_REASON, now);
            if outcome == AdminOutcome::Done {
                store(tx, &row)?;
            }
            Ok(outcome)
        })
    }

    async fn delete_job(&self, job: JobId) -> StorageResult<AdminOutcome> {
        self.write(|tx| {
            let Some(row) = load(tx, job)? else {
                return Ok(AdminOutcome::NotFound);
            };
            if row.state == JobState::Running {
                return Ok(AdminOutcome::Running);
            }
            tx.prepare_cached("DELETE FROM keel_effects WHERE job_id = ?1")?
                .execute([row.id.0])?;
            tx.prepare_cached("DELETE FROM keel_jobs WHERE id = ?1")?
                .execute([row.id.0])?;
            Ok(AdminOutcome::Done)
        })
    }
}
