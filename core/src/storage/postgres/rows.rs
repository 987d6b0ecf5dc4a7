//! Rows to model values and back, and the statements every job path shares.

use deadpool_postgres::Transaction;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use super::{now_sql, Fail, NowParam};
use crate::clock::Timestamp;
use crate::storage::{EnqueueOutcome, EnqueueRequest, Job, JobId, JobState};

/// Every column of `keel_jobs`, in the order [`job_from_row`] reads them.
pub(super) const JOB_COLUMNS: &str = "id, kind, queue, payload, priority, state, attempt, \
     max_attempts, scheduled_at, created_at, owner, heartbeat_at, cancel_requested, \
     finalized_at, finalized_attempt, errors, unique_key, attempts";

/// The SQL spelling of each state (the `CHECK` in the migration lists the same).
pub(super) fn state_name(state: JobState) -> &'static str {
    state.as_str()
}

pub(super) fn parse_state(name: &str) -> Result<JobState, Fail> {
    JobState::parse(name).ok_or_else(|| Fail::Corrupt(format!("unknown job state {name:?}")))
}

/// A job id as SQL stores it; `None` for ids no row can have.
pub(super) fn sql_id(id: JobId) -> Option<i64> {
    i64::try_from(id.0).ok()
}

pub(super) fn job_id(raw: i64) -> Result<JobId, Fail> {
    u64::try_from(raw)
        .map(JobId)
        .map_err(|_| Fail::Corrupt(format!("negative job id {raw}")))
}

fn u32_of(column: &str, raw: i64) -> Result<u32, Fail> {
    u32::try_from(raw).map_err(|_| Fail::Corrupt(format!("{column} {raw} out of range")))
}

pub(super) fn text_of(column: &str, raw: Vec<u8>) -> Result<String, Fail> {
    String::from_utf8(raw).map_err(|_| Fail::Corrupt(format!("{column} is not UTF-8")))
}

pub(super) fn json_of<T: serde::de::DeserializeOwned>(column: &str, raw: &str) -> Result<T, Fail> {
    serde_json::from_str(raw).map_err(|e| Fail::Corrupt(format!("{column}: {e}")))
}

fn json_text<T: serde::Serialize>(value: &T) -> String {
    // Serializing a `serde_json::Value` or a `Vec<String>` cannot fail: every map
    // key is a string.
    serde_json::to_string(value).expect("JSON values serialize")
}

/// A `keel_jobs` row selected with [`JOB_COLUMNS`].
pub(super) fn job_from_row(row: &Row) -> Result<Job, Fail> {
    let priority: i16 = row.try_get(4)?;
    let state: &str = row.try_get(5)?;
    let owner: Option<Vec<u8>> = row.try_get(10)?;
    let finalized_attempt: Option<i64> = row.try_get(14)?;
    let errors: &str = row.try_get(15)?;
    let unique_key: Option<Vec<u8>> = row.try_get(16)?;
    let payload: &str = row.try_get(3)?;
    let attempts: &str = row.try_get(17)?;
    Ok(Job {
        id: job_id(row.try_get(0)?)?,
        kind: row.try_get(1)?,
        queue: row.try_get(2)?,
        payload: json_of("payload", payload)?,
        priority: u8::try_from(priority)
            .map_err(|_| Fail::Corrupt(format!("priority {priority} out of range")))?,
        state: parse_state(state)?,
        attempt: u32_of("attempt", row.try_get(6)?)?,
        max_attempts: u32_of("max_attempts", row.try_get(7)?)?,
        scheduled_at: Timestamp(row.try_get(8)?),
        created_at: Timestamp(row.try_get(9)?),
        owner: owner.map(|o| text_of("owner", o)).transpose()?,
        heartbeat_at: row.try_get::<_, Option<i64>>(11)?.map(Timestamp),
        cancel_requested: row.try_get(12)?,
        finalized_at: row.try_get::<_, Option<i64>>(13)?.map(Timestamp),
        finalized_attempt: finalized_attempt
            .map(|a| u32_of("finalized_attempt", a))
            .transpose()?,
        errors: json_of("errors", errors)?,
        unique_key: unique_key.map(|k| text_of("unique_key", k)).transpose()?,
        attempts: json_of("attempts", attempts)?,
    })
}

/// Every row `sql` (selecting [`JOB_COLUMNS`]) returns.
pub(super) async fn select_jobs(
    tx: &Transaction<'_>,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<Job>, Fail> {
    let statement = tx.prepare_cached(sql).await?;
    tx.query(&statement, params)
        .await?
        .iter()
        .map(job_from_row)
        .collect()
}

/// Lock one job row for the rest of the transaction, if it exists, with the
/// time `now` says this transaction judges at (for the rules to apply).
pub(super) async fn lock_job(
    tx: &Transaction<'_>,
    id: JobId,
    now: NowParam,
) -> Result<Option<(Job, Timestamp)>, Fail> {
    let Some(id) = sql_id(id) else {
        return Ok(None);
    };
    let sql = format!(
        "SELECT {JOB_COLUMNS}, {} FROM keel_jobs WHERE id = $1 FOR UPDATE",
        now_sql(2)
    );
    let statement = tx.prepare_cached(&sql).await?;
    match tx.query_opt(&statement, &[&id, &now]).await? {
        Some(row) => {
            let at = row.try_get(JOB_COLUMNS.split(',').count())?;
            Ok(Some((job_from_row(&row)?, Timestamp(at))))
        }
        None => Ok(None),
    }
}

/// Write back the columns the rules in `rules.rs` may change.
pub(super) async fn write_job(tx: &Transaction<'_>, job: &Job) -> Result<(), Fail> {
    const SQL: &str = "UPDATE keel_jobs SET state = $2, attempt = $3, max_attempts = $4, \
         scheduled_at = $5, owner = $6, heartbeat_at = $7, cancel_requested = $8, \
         finalized_at = $9, finalized_attempt = $10, errors = $11, attempts = $12 WHERE id = $1";
    let id = sql_id(job.id).ok_or_else(|| Fail::Corrupt(format!("{} out of range", job.id)))?;
    let statement = tx.prepare_cached(SQL).await?;
    let changed = tx
        .execute(
            &statement,
            &[
                &id,
                &state_name(job.state),
                &i64::from(job.attempt),
                &i64::from(job.max_attempts),
                &job.scheduled_at.0,
                &job.owner.as_deref().map(str::as_bytes),
                &job.heartbeat_at.map(|t| t.0),
                &job.cancel_requested,
                &job.finalized_at.map(|t| t.0),
                &job.finalized_attempt.map(i64::from),
                &json_text(&job.errors),
                &json_text(&job.attempts),
            ],
        )
        .await?;
    assert_eq!(changed, 1, "a locked row is written back exactly once");
    Ok(())
}

/// Write back several locked rows, pipelined on the one connection.
pub(super) async fn write_jobs(tx: &Transaction<'_>, jobs: &[Job]) -> Result<(), Fail> {
    futures_util::future::try_join_all(jobs.iter().map(|job| write_job(tx, job))).await?;
    Ok(())
}

/// Inserts jobs in one transaction with the model's ids and unique keys.
///
/// [`JobInserter::lock`] takes the id counter row for the rest of the
/// transaction. That serializes enqueues, which is what makes ids gapless and in
/// commit order, and what makes "look up the unique key, then insert" race-free:
/// a concurrent enqueue of the same key commits before this one reads.
pub(super) struct JobInserter {
    last_id: i64,
    dirty: bool,
    /// The time every job this inserter makes is enqueued at.
    now: Timestamp,
}

impl JobInserter {
    /// Lock the counter, and read the time `now` says this transaction judges
    /// at: every job inserted is enqueued then.
    pub(super) async fn lock(tx: &Transaction<'_>, now: NowParam) -> Result<JobInserter, Fail> {
        let sql = format!(
            "SELECT value, {} FROM keel_counters WHERE name = 'job_id' FOR UPDATE",
            now_sql(1)
        );
        let statement = tx.prepare_cached(&sql).await?;
        let row = tx.query_one(&statement, &[&now]).await?;
        Ok(JobInserter {
            last_id: row.try_get(0)?,
            dirty: false,
            now: Timestamp(row.try_get(1)?),
        })
    }

    /// The model's `Jobs::insert`: the existing job for a taken unique key, else a
    /// new row with the next id.
    pub(super) async fn insert(
        &mut self,
        tx: &Transaction<'_>,
        req: EnqueueRequest,
    ) -> Result<EnqueueOutcome, Fail> {
        if let Some(key) = &req.unique_key {
            let statement = tx
                .prepare_cached("SELECT id FROM keel_jobs WHERE unique_key = $1")
                .await?;
            if let Some(row) = tx.query_opt(&statement, &[&key.as_bytes()]).await? {
                return Ok(EnqueueOutcome::Duplicate(job_id(row.try_get(0)?)?));
            }
        }
        self.last_id += 1;
        self.dirty = true;
        let id = job_id(self.last_id)?;
        let job = Job::from_request(id, req, self.now);
        insert_row(tx, &job).await?;
        Ok(EnqueueOutcome::Inserted(id))
    }

    /// Store the counter; call once, after the last insert.
    pub(super) async fn finish(self, tx: &Transaction<'_>) -> Result<(), Fail> {
        if self.dirty {
            let statement = tx
                .prepare_cached("UPDATE keel_counters SET value = $1 WHERE name = 'job_id'")
                .await?;
            tx.execute(&statement, &[&self.last_id]).await?;
        }
        Ok(())
    }
}

async fn insert_row(tx: &Transaction<'_>, job: &Job) -> Result<(), Fail> {
    let sql = format!(
        "INSERT INTO keel_jobs ({JOB_COLUMNS}) VALUES \
         ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)"
    );
    let id = sql_id(job.id).ok_or_else(|| Fail::Corrupt(format!("{} out of range", job.id)))?;
    let statement = tx.prepare_cached(&sql).await?;
    tx.execute(
        &statement,
        &[
            &id,
            &job.kind,
            &job.queue,
            &json_text(&job.payload),
            &i16::from(job.priority),
            &state_name(job.state),
            &i64::from(job.attempt),
            &i64::from(job.max_attempts),
            &job.scheduled_at.0,
            &job.created_at.0,
            &job.owner.as_deref().map(str::as_bytes),
            &job.heartbeat_at.map(|t| t.0),
            &job.cancel_requested,
            &job.finalized_at.map(|t| t.0),
            &job.finalized_attempt.map(i64::from),
            &json_text(&job.errors),
            &job.unique_key.as_deref().map(str::as_bytes),
            &json_text(&job.attempts),
        ],
    )
    .await?;
    Ok(())
}

/// Wake listeners of `channel` for each queue, when this transaction commits.
pub(super) async fn notify<'q>(
    tx: &Transaction<'_>,
    channel: &str,
    queues: impl IntoIterator<Item = &'q str>,
) -> Result<(), Fail> {
    let statement = tx.prepare_cached("SELECT pg_notify($1, $2)").await?;
    let queues: std::collections::BTreeSet<&str> = queues.into_iter().collect();
    for queue in queues {
        tx.query(&statement, &[&channel, &queue]).await?;
    }
    Ok(())
}

/// Run a read statement on a pooled connection, prepared once per connection.
pub(super) async fn read_rows(
    client: &deadpool_postgres::Client,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<Row>, Fail> {
    let statement = client.prepare_cached(sql).await?;
    Ok(client.query(&statement, params).await?)
}
