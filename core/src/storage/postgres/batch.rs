//! Group commit for PostgreSQL's hot path: claims and completions.
//!
//! Nearly every job costs one claim and one completion, and on PostgreSQL each
//! is a statement with its own parse, plan, commit and WAL flush, so the server's
//! CPU per statement, not the network, bounds throughput. Calls go to one
//! batcher task instead: the calls that arrive while a batch is in flight make
//! up the next batch, which runs as one completing `UPDATE ... FROM unnest(..)`
//! and one claiming `UPDATE` per queue, sent together on one connection. An
//! idle store still answers a lone call at once: nothing waits for a batch to
//! fill.
//!
//! Each call keeps its own meaning. A completion applies only to its live claim
//! (same row, attempt and owner); what it does not apply, the caller settles on
//! the slow path, which tells a repeat from a stale claim. A claim takes due rows
//! in claim order for its own owner, and the rows of one batch go to its calls in
//! the order they arrived.
//!
//! Each call brings its own time source ([`NowParam`]: `None` for the server's
//! `now()`, or a test clock's reading). A completion is stamped with its own
//! call's; a claiming statement serves several calls and is judged at their
//! earliest (the server's `now()` if any call asks for it, as every call of a
//! store without a test clock does).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use deadpool_postgres::{GenericClient, Pool};
use tokio::sync::{mpsc, oneshot, Semaphore};

use super::rows::{job_from_row, sql_id, JOB_COLUMNS};
use super::{map_error, now_from, now_sql, Fail, NowParam};
use crate::storage::job::ATTEMPTS_KEPT_MAX;
use crate::storage::{Claim, Job, StorageError, StorageResult};

/// The last record of a job's `attempts` while it is open (claimed, not yet
/// ended), as `Job::claim_for` writes it through serde: the first capture is
/// its attempt. Records are edited as JSON text, never through `json`'s or
/// `jsonb`'s parsing: those refuse the `\u0000` an owner or error may hold.
/// A quote inside a string is escaped, so `{"attempt":` only ever starts a
/// record, and only the last record can end the text.
const OPEN_ATTEMPT_LAST: &str =
    r#"'\{"attempt":([0-9]+),"owner":"(?:[^"\\]|\\.)*","started_at":-?[0-9]+\}\]$'"#;

/// The most calls one batch carries; more wait for the next. Bounds the size of
/// the arrays sent and the rows one statement locks.
const BATCH_CALLS_MAX: usize = 256;

/// A claim half of a call: up to `limit` due jobs of `queue` for `owner`.
pub(super) struct ClaimAsk {
    pub(super) queue: String,
    pub(super) owner: String,
    pub(super) limit: u32,
}

/// One call: complete `complete` (a live claim and its owner), claim `claim`, or both.
struct Call {
    complete: Option<(Claim, String)>,
    claim: Option<ClaimAsk>,
    /// The time this call is judged at.
    now: NowParam,
    reply: oneshot::Sender<Answer>,
}

/// What a call's halves came to: whether the completion applied, and the jobs
/// claimed.
#[derive(Debug)]
pub(super) struct Answer {
    pub(super) completed: StorageResult<bool>,
    pub(super) claimed: StorageResult<Vec<Job>>,
}

/// The handle calls go through; the batcher task ends when it is dropped.
#[derive(Debug)]
pub(super) struct Batcher {
    calls: mpsc::UnboundedSender<Call>,
}

/// What a completion does to its row (`PostgresOptions::delete_completed`).
#[derive(Clone, Copy, Debug)]
enum Completion {
    /// Mark it completed; cleanup deletes it after the retention.
    Keep,
    /// Delete it, and its effects in the same statement.
    Delete,
}

impl Batcher {
    /// Start the batcher task on the current tokio runtime; with
    /// `delete_completed`, completions delete their rows.
    pub(super) fn start(pool: Pool, delete_completed: bool) -> Batcher {
        let (calls, rx) = mpsc::unbounded_channel();
        let completion = if delete_completed {
            Completion::Delete
        } else {
            Completion::Keep
        };
        tokio::spawn(run(pool, rx, completion));
        Batcher { calls }
    }

    /// Send one call, judged at `now`, and wait for its answer.
    pub(super) async fn call(
        &self,
        complete: Option<(Claim, String)>,
        claim: Option<ClaimAsk>,
        now: NowParam,
    ) -> Answer {
        let (reply, answer) = oneshot::channel();
        let call = Call {
            complete,
            claim,
            now,
            reply,
        };
        let gone = || StorageError::Unavailable("the PostgreSQL batcher has stopped".into());
        if self.calls.send(call).is_err() {
            return Answer {
                completed: Err(gone()),
                claimed: Err(gone()),
            };
        }
        answer.await.unwrap_or_else(|_| Answer {
            completed: Err(gone()),
            claimed: Err(gone()),
        })
    }
}

/// The most batches running at once, each on its own connection. One would
/// serialize every claim and completion through one server process; two let a
/// batch form while another runs, and measured best on 2 cores (`ci/bench`).
const BATCHES_IN_FLIGHT_MAX: usize = 2;

/// The batcher task: whenever a batch slot is free, every call waiting (at least
/// one) becomes a batch.
async fn run(pool: Pool, mut rx: mpsc::UnboundedReceiver<Call>, completion: Completion) {
    let slots = Arc::new(Semaphore::new(BATCHES_IN_FLIGHT_MAX));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = rx.recv().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < BATCH_CALLS_MAX {
            match rx.try_recv() {
                Ok(call) => batch.push(call),
                Err(_) => break,
            }
        }
        let pool = pool.clone();
        tokio::spawn(async move {
            execute(&pool, batch, completion).await;
            drop(slot);
        });
    }
}

/// Run one batch and answer every call in it.
async fn execute(pool: &Pool, batch: Vec<Call>, completion: Completion) {
    let (completed, mut claimed) = match transact(pool, &batch, completion).await {
        Ok((completed, claimed)) => (Ok(completed), Ok(claimed)),
        Err(e) => (Err(e.clone()), Err(e)),
    };
    for (i, call) in batch.into_iter().enumerate() {
        let answer = Answer {
            completed: match &completed {
                Ok(done) => Ok(done.contains(&i)),
                Err(e) => Err(e.clone()),
            },
            claimed: match &mut claimed {
                Ok(by_call) => Ok(by_call.remove(&i).unwrap_or_default()),
                Err(e) => Err(e.clone()),
            },
        };
        // A caller that gave up no longer needs its answer.
        let _ = call.reply.send(answer);
    }
}

/// Run a batch's halves. A batch with both completions and claims runs them in
/// one transaction sharing one commit, so one WAL flush (with
/// `synchronous_commit`, most of a statement's latency); either half failing
/// rolls back both. Completions go first, as the model applies a
/// `finalize_and_claim`: sent together (`join!`), a claim statement whose
/// statement was cached could reach the server before the completion, and a
/// completion naming a claim the same batch had just handed out would then
/// apply to it. A batch with one half (a lone claim on an idle
/// queue, say) runs it autocommitted: one round trip, no `BEGIN`/`COMMIT`.
#[allow(clippy::type_complexity)]
async fn transact(
    pool: &Pool,
    batch: &[Call],
    completion: Completion,
) -> StorageResult<(BTreeSet<usize>, BTreeMap<usize, Vec<Job>>)> {
    let mut client = pool
        .get()
        .await
        .map_err(|e| StorageError::Unavailable(super::error_chain(&e)))?;
    let completes = batch.iter().any(|c| c.complete.is_some());
    let claims = batch.iter().any(|c| c.claim.is_some());
    if !(completes && claims) {
        // Sent and autocommitted: a connection lost now leaves the outcome unknown.
        let unknown = |f: Fail| match f {
            Fail::Pg(e) => map_error(Fail::Commit(e)),
            other => map_error(other),
        };
        let completed = complete_all(&client, batch, completion)
            .await
            .map_err(unknown)?;
        let claimed = claim_all(&client, batch).await.map_err(unknown)?;
        return Ok((completed, claimed));
    }
    let tx = client
        .transaction()
        .await
        .map_err(|e| map_error(Fail::Pg(e)))?;
    let completed = complete_all(&tx, batch, completion)
        .await
        .map_err(map_error)?;
    let claimed = claim_all(&tx, batch).await.map_err(map_error)?;
    // The outcome of a commit that fails is unknown.
    tx.commit().await.map_err(|e| map_error(Fail::Commit(e)))?;
    Ok((completed, claimed))
}

/// Complete every live claim the batch asks to, in one statement; returns the indexes of the calls whose completion applied.
///
/// The `SET` list is the model's `finalize_with` for `Completed` on a live claim
/// (owner and heartbeat cleared, the attempt recorded, finished now; a pending
/// cancel does not matter to completed work); the conformance suite holds the
/// two to the same result. A job named twice in one batch is completed for its
/// first call only; the second settles on the slow path, as it would in turn.
async fn complete_all<C: GenericClient>(
    client: &C,
    batch: &[Call],
    completion: Completion,
) -> Result<BTreeSet<usize>, Fail> {
    let (mut ids, mut attempts, mut owners, mut ats, mut calls) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut seen = BTreeSet::new();
    for (i, call) in batch.iter().enumerate() {
        let Some((claim, owner)) = &call.complete else {
            continue;
        };
        let Some(id) = sql_id(claim.job) else {
            continue;
        };
        if seen.insert(id) {
            ids.push(id);
            attempts.push(i64::from(claim.attempt));
            owners.push(owner.as_bytes());
            ats.push(call.now);
            calls.push(i);
        }
    }
    if ids.is_empty() {
        return Ok(BTreeSet::new());
    }
    let run = async {
        let statement = client.prepare_cached(&completion.sql()).await?;
        let rows = client
            .query(&statement, &[&ids, &attempts, &owners, &ats])
            .await?;
        let done: BTreeSet<i64> = rows
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()?;
        Ok::<_, Fail>(done)
    };
    let done = run.await?;
    Ok(ids
        .iter()
        .zip(calls)
        .filter(|(id, _)| done.contains(id))
        .map(|(_, i)| i)
        .collect())
}

impl Completion {
    /// The completing statement: `$1..$4` are the ids, attempts, owners and
    /// time sources ([`NowParam`]s, `NULL` for the server's `now()`) of the
    /// completions; it returns the ids it applied to. Both forms apply only to a
    /// live claim (running, same attempt and owner).
    fn sql(self) -> String {
        match self {
            Completion::Keep => format!(
                "UPDATE keel_jobs j SET state = 'completed', owner = NULL, heartbeat_at = NULL, \
                 finalized_attempt = c.attempt, finalized_at = {now}, \
                 attempts = CASE \
                     WHEN substring(j.attempts FROM {open_last})::bigint = c.attempt \
                     THEN left(j.attempts, -2) || ',\"ended_at\":' || {now} \
                         || ',\"outcome\":\"completed\"}}]' \
                     ELSE j.attempts END \
                 FROM unnest($1::bigint[], $2::bigint[], $3::bytea[], $4::bigint[]) \
                 AS c(id, attempt, owner, at) \
                 WHERE j.id = c.id AND j.state = 'running' AND j.attempt = c.attempt \
                 AND j.owner = c.owner RETURNING j.id",
                now = now_from("c.at"),
                open_last = OPEN_ATTEMPT_LAST,
            ),
            // The job's effects go with it. An effect written by a call racing its
            // own job's completion (apply_effect holds the row, so the delete waits
            // for it) commits after this statement's snapshot and is left behind:
            // a row no job id will name again (ids are never reused).
            Completion::Delete => "WITH gone AS (DELETE FROM keel_jobs j \
                 USING unnest($1::bigint[], $2::bigint[], $3::bytea[], $4::bigint[]) \
                 AS c(id, attempt, owner, at) \
                 WHERE j.id = c.id AND j.state = 'running' AND j.attempt = c.attempt \
                 AND j.owner = c.owner RETURNING j.id), \
                 effects AS (DELETE FROM keel_effects e USING gone WHERE e.job_id = gone.id) \
                 SELECT id FROM gone"
                .to_owned(),
        }
    }
}

/// Claim for every call that asks, one statement per queue; returns each
/// call's jobs, in claim order, by call index.
async fn claim_all<C: GenericClient>(
    client: &C,
    batch: &[Call],
) -> Result<BTreeMap<usize, Vec<Job>>, Fail> {
    let mut by_queue: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, call) in batch.iter().enumerate() {
        if let Some(ask) = call.claim.as_ref().filter(|a| a.limit > 0) {
            by_queue.entry(ask.queue.as_str()).or_default().push(i);
        }
    }
    let mut claimed = BTreeMap::new();
    for (queue, calls) in by_queue {
        claimed.extend(claim_queue(client, batch, queue, &calls).await?);
    }
    Ok(claimed)
}

/// One claiming statement for `calls` (indexes into `batch`), all on `queue`.
///
/// The `SET` list is the model's `Job::claim_for` (running, next attempt, owner,
/// heartbeat now). Row `n` in claim order goes to the owner in slot `n` of an
/// array holding each call's owner `limit` times, in call order, so the calls
/// share the due rows as they would have claimed them one after another.
/// `SKIP LOCKED`: concurrent claimers each take different rows. The time is
/// the calls' earliest source (`None`, the server's `now()`, orders first): no
/// call is handed a job before it was due at its own time, and no claim's
/// heartbeat is later than its call's time.
async fn claim_queue<C: GenericClient>(
    client: &C,
    batch: &[Call],
    queue: &str,
    calls: &[usize],
) -> Result<Vec<(usize, Vec<Job>)>, Fail> {
    let mut slots: Vec<(usize, &[u8])> = Vec::new();
    // Each slot's owner as a JSON string, for its attempt's record.
    let mut owners_json: Vec<String> = Vec::new();
    for &i in calls {
        if let Some(ask) = &batch[i].claim {
            let n = usize::try_from(ask.limit).unwrap_or(usize::MAX);
            slots.extend(std::iter::repeat_n((i, ask.owner.as_bytes()), n));
            let json = serde_json::Value::from(ask.owner.as_str()).to_string();
            owners_json.extend(std::iter::repeat_n(json, n));
        }
    }
    let now: NowParam = calls.iter().map(|&i| batch[i].now).min().flatten();
    let owners: Vec<&[u8]> = slots.iter().map(|(_, o)| *o).collect();
    let limit = i64::try_from(owners.len()).unwrap_or(i64::MAX);
    let returning: Vec<String> = JOB_COLUMNS
        .split(',')
        .map(|c| format!("j.{}", c.trim()))
        .collect();
    let sql = format!(
        "WITH locked AS (SELECT id, priority, scheduled_at FROM keel_jobs \
         WHERE queue = $1 AND state = 'available' AND scheduled_at <= {now} \
         AND NOT EXISTS (SELECT 1 FROM keel_queues WHERE name = $1 AND paused) \
         ORDER BY priority, scheduled_at, id LIMIT $3 FOR UPDATE SKIP LOCKED), \
         due AS (SELECT id, row_number() OVER (ORDER BY priority, scheduled_at, id) AS n \
         FROM locked) \
         UPDATE keel_jobs j SET state = 'running', attempt = j.attempt + 1, \
         owner = ($4::bytea[])[due.n::int], heartbeat_at = {now}, \
         attempts = CASE \
             WHEN j.attempts = '[]' THEN '[' || {record} || ']' \
             WHEN json_array_length(j.attempts::json) >= {kept} THEN '[' || COALESCE(( \
                 SELECT string_agg(e::text, ',' ORDER BY i) \
                 FROM json_array_elements(j.attempts::json) WITH ORDINALITY AS t(e, i) \
                 WHERE i > 1) || ',', '') \
                 || {record} || ']' \
             ELSE left(j.attempts, -1) || ',' || {record} || ']' END \
         FROM due WHERE j.id = due.id RETURNING {}, due.n",
        returning.join(", "),
        now = now_sql(2),
        kept = ATTEMPTS_KEPT_MAX,
        // `Job::claim_for`'s record, as serde writes it.
        record = format!(
            "('{{\"attempt\":' || (j.attempt + 1) || ',\"owner\":' \
             || ($5::text[])[due.n::int] || ',\"started_at\":' || {} || '}}')",
            now_sql(2)
        ),
    );
    let run = async {
        let statement = client.prepare_cached(&sql).await?;
        let rows = client
            .query(&statement, &[&queue, &now, &limit, &owners, &owners_json])
            .await?;
        let mut jobs: BTreeMap<usize, Vec<Job>> = BTreeMap::new();
        for row in &rows {
            let n: i64 = row.try_get(JOB_COLUMNS.split(',').count())?;
            let slot = usize::try_from(n - 1)
                .ok()
                .and_then(|s| slots.get(s))
                .ok_or_else(|| Fail::Corrupt(format!("claim row number {n} out of range")))?;
            let job = job_from_row(row)?;
            assert!(
                job.owner.as_deref().map(str::as_bytes) == Some(slot.1),
                "a claimed row is running under the owner of its slot"
            );
            jobs.entry(slot.0).or_default().push(job);
        }
        for list in jobs.values_mut() {
            list.sort_unstable_by_key(|j| (j.priority, j.scheduled_at, j.id));
        }
        Ok::<_, Fail>(jobs)
    };
    Ok(run.await?.into_iter().collect())
}
