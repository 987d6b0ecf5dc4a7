//! [`AdminStore`] for [`PostgresStorage`]: the operator's reads and changes,
//! changes through the model's rules on the locked row.

use async_trait::async_trait;

use super::leases::lease_from_row;
use super::rows::{
    job_from_row, job_id, json_of, lock_job, parse_state, read_rows, sql_id, text_of, write_job,
    JOB_COLUMNS,
};
use super::{read, transact, Fail, PostgresStorage};
use crate::clock::Timestamp;
use crate::storage::admin::{summarize_queues, DISCARD_REASON};
use crate::storage::{
    AdminOutcome, AdminStore, Job, JobFilter, JobId, JobPage, JobState, Lease, QueueConfig,
    QueueSummary, ScheduleRecord, StorageResult,
};

fn count_of(raw: i64) -> Result<u64, Fail> {
    u64::try_from(raw).map_err(|_| Fail::Corrupt(format!("negative count {raw}")))
}

impl PostgresStorage {
    /// Lock job `id` and apply `change` to it by the model's rules; the row
    /// is written back when the change is [`AdminOutcome::Done`].
    async fn change_job(
        &self,
        id: JobId,
        change: impl Fn(&mut Job, Timestamp) -> AdminOutcome + Send + Sync,
    ) -> StorageResult<AdminOutcome> {
        let now = self.now_param();
        transact!(self, |tx| match lock_job(&tx, id, now).await? {
            Some((mut job, now)) => {
                let outcome = change(&mut job, now);
                if outcome == AdminOutcome::Done {
                    write_job(&tx, &job).await?;
                }
                outcome
            }
            None => AdminOutcome::NotFound,
        })
    }
}

#[async_trait]
impl AdminStore for PostgresStorage {
    async fn list_jobs(&self, filter: JobFilter) -> StorageResult<JobPage> {
        filter.validate()?;
        let states: Vec<&str> = filter.states.iter().map(|s| s.as_str()).collect();
        let before = filter.before.and_then(sql_id);
        let limit = i64::from(filter.limit) + 1;
        let sql = format!(
            "SELECT {JOB_COLUMNS} FROM keel_jobs \
             WHERE (cardinality($1::text[]) = 0 OR state = ANY($1)) \
             AND ($2::text IS NULL OR queue = $2) AND ($3::text IS NULL OR kind = $3) \
             AND ($4::bigint IS NULL OR id < $4) ORDER BY id DESC LIMIT $5"
        );
        read!(self, |client| {
            let rows = read_rows(
                &client,
                &sql,
                &[&states, &filter.queue, &filter.kind, &before, &limit],
            )
            .await?;
            let jobs = rows.iter().map(job_from_row).collect::<Result<_, _>>()?;
            JobPage::from_newest(jobs, filter.limit)
        })
    }

    async fn list_effects(&self, job: JobId) -> StorageResult<Vec<(String, serde_json::Value)>> {
        let Some(id) = sql_id(job) else {
            return Ok(Vec::new());
        };
        read!(self, |client| {
            let rows = read_rows(
                &client,
                // By bytes, as the model orders them, whatever the database's collation.
                "SELECT key, value FROM keel_effects WHERE job_id = $1 ORDER BY key COLLATE \"C\"",
                &[&id],
            )
            .await?;
            let mut effects = Vec::with_capacity(rows.len());
            for row in &rows {
                let value: &str = row.try_get(1)?;
                effects.push((row.try_get(0)?, json_of("effect value", value)?));
            }
            effects
        })
    }

    async fn list_queues(&self) -> StorageResult<Vec<QueueSummary>> {
        read!(self, |client| {
            let rows = read_rows(
                &client,
                "SELECT queue, state, count(*) FROM keel_jobs GROUP BY queue, state",
                &[],
            )
            .await?;
            let mut counts = Vec::with_capacity(rows.len());
            for row in &rows {
                let state: JobState = parse_state(row.try_get(1)?)?;
                counts.push((row.try_get(0)?, state, count_of(row.try_get(2)?)?));
            }
            let rows = read_rows(
                &client,
                "SELECT name, workers, paused FROM keel_queues",
                &[],
            )
            .await?;
            let mut configs = Vec::with_capacity(rows.len());
            for row in &rows {
                let workers: Option<i64> = row.try_get(1)?;
                let workers = workers
                    .map(|w| u32::try_from(w).map_err(|_| Fail::Corrupt(format!("workers {w}"))))
                    .transpose()?;
                configs.push(QueueConfig {
                    name: row.try_get(0)?,
                    workers,
                    paused: row.try_get(2)?,
                });
            }
            summarize_queues(counts, configs)
        })
    }

    async fn list_leases(&self) -> StorageResult<Vec<Lease>> {
        read!(self, |client| {
            let rows = read_rows(
                &client,
                // A term-0 placeholder is no grant (see `get_lease`).
                "SELECT term, holder, expires_at, name FROM keel_leases WHERE term > 0 \
                 ORDER BY name",
                &[],
            )
            .await?;
            let mut leases = Vec::with_capacity(rows.len());
            for row in &rows {
                let name = text_of("lease name", row.try_get(3)?)?;
                leases.push(lease_from_row(&name, row)?);
            }
            leases
        })
    }

    async fn list_schedules(&self) -> StorageResult<Vec<ScheduleRecord>> {
        read!(self, |client| {
            let rows = read_rows(
                &client,
                "SELECT name, schedule, queue, kind, last_slot, last_job FROM keel_schedules \
                 ORDER BY name COLLATE \"C\"",
                &[],
            )
            .await?;
            let mut schedules = Vec::with_capacity(rows.len());
            for row in &rows {
                schedules.push(ScheduleRecord {
                    name: row.try_get(0)?,
                    schedule: row.try_get(1)?,
                    queue: row.try_get(2)?,
                    kind: row.try_get(3)?,
                    last_slot: Timestamp(row.try_get(4)?),
                    last_job: job_id(row.try_get(5)?)?,
                });
            }
            schedules
        })
    }

    async fn retry_job(&self, job: JobId) -> StorageResult<AdminOutcome> {
        self.change_job(job, |row, now| row.retry_by_operator(now))
            .await
    }

    async fn discard_job(&self, job: JobId) -> StorageResult<AdminOutcome> {
        self.change_job(job, |row, now| row.discard_by_operator(DISCARD_REASON, now))
            .await
    }

    async fn delete_job(&self, job: JobId) -> StorageResult<AdminOutcome> {
        let Some(id) = sql_id(job) else {
            return Ok(AdminOutcome::NotFound);
        };
        let now = self.now_param();
        transact!(self, |tx| match lock_job(&tx, job, now).await? {
            None => AdminOutcome::NotFound,
            Some((row, _)) if row.state == JobState::Running => AdminOutcome::Running,
            Some(_) => {
                let statement = tx
                    .prepare_cached(
                        "WITH gone AS (DELETE FROM keel_jobs WHERE id = $1 RETURNING id) \
                         DELETE FROM keel_effects e USING gone WHERE e.job_id = gone.id",
                    )
                    .await?;
                tx.execute(&statement, &[&id]).await?;
                AdminOutcome::Done
            }
        })
    }
}
