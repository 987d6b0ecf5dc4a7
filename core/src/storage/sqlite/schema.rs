//! The SQLite schema and its migrations.
//!
//! A Keel database is marked by SQLite's `application_id` header field, and its
//! schema version is `user_version`. Opening a file:
//!
//! * fresh (no tables, no id): mark it and apply every migration;
//! * Keel's, older: apply the missing migrations, in one transaction;
//! * Keel's, newer than this library: refuse ([`OpenError::SchemaTooNew`]);
//! * anything else (another application's tables or id): refuse
//!   ([`OpenError::NotKeel`]) and change nothing.

use rusqlite::{Connection, TransactionBehavior};

use super::open_error;
use crate::storage::OpenError;

/// `application_id` of a Keel database: "KEEL" in ASCII.
pub const APPLICATION_ID: i64 = 0x4B45_454C;

/// Migrations in order; migration `i` brings the schema to version `i + 1`.
/// Never edit one that has shipped: append a new one.
const MIGRATIONS: &[&str] = &[
    // 1: leases, jobs, effects, queues, periodic slots.
    "
    CREATE TABLE keel_leases (
        name       TEXT PRIMARY KEY,
        term       INTEGER NOT NULL,
        holder     TEXT,
        expires_at INTEGER NOT NULL
    ) STRICT;

    -- AUTOINCREMENT: ids are never reused after cleanup, as the model promises.
    CREATE TABLE keel_jobs (
        id                INTEGER PRIMARY KEY AUTOINCREMENT,
        kind              TEXT NOT NULL,
        queue             TEXT NOT NULL,
        payload           TEXT NOT NULL,
        priority          INTEGER NOT NULL,
        state             TEXT NOT NULL,
        attempt           INTEGER NOT NULL,
        max_attempts      INTEGER NOT NULL,
        scheduled_at      INTEGER NOT NULL,
        created_at        INTEGER NOT NULL,
        owner             TEXT,
        heartbeat_at      INTEGER,
        cancel_requested  INTEGER NOT NULL,
        finalized_at      INTEGER,
        finalized_attempt INTEGER,
        errors            TEXT NOT NULL,
        unique_key        TEXT UNIQUE
    ) STRICT;

    -- The claim path: due jobs of one queue in claim order.
    CREATE INDEX keel_jobs_claim ON keel_jobs (queue, priority, scheduled_at, id)
        WHERE state = 'available';
    -- The rescuer's sweep.
    CREATE INDEX keel_jobs_running ON keel_jobs (heartbeat_at) WHERE state = 'running';
    -- Promotion of scheduled and retryable jobs.
    CREATE INDEX keel_jobs_waiting ON keel_jobs (scheduled_at)
        WHERE state IN ('scheduled', 'retryable');
    -- Retention.
    CREATE INDEX keel_jobs_finished ON keel_jobs (finalized_at)
        WHERE state IN ('completed', 'cancelled', 'discarded');

    CREATE TABLE keel_effects (
        job_id INTEGER NOT NULL,
        key    TEXT NOT NULL,
        value  TEXT NOT NULL,
        PRIMARY KEY (job_id, key)
    ) STRICT;

    CREATE TABLE keel_queues (
        name    TEXT PRIMARY KEY,
        workers INTEGER NOT NULL,
        paused  INTEGER NOT NULL
    ) STRICT;

    -- Outlives its job's cleanup: a slot fires once, ever.
    CREATE TABLE keel_periodic (
        name   TEXT NOT NULL,
        slot   INTEGER NOT NULL,
        job_id INTEGER NOT NULL,
        PRIMARY KEY (name, slot)
    ) STRICT;
    ",
    // 2: the operator's view. Each job's attempts (who, when, how each
    // ended); queues an operator paused without sizing them (workers NULL:
    // each node's own count); the latest slot of each periodic schedule.
    "
    ALTER TABLE keel_jobs ADD COLUMN attempts TEXT NOT NULL DEFAULT '[]';

    CREATE TABLE keel_queues_v2 (
        name    TEXT PRIMARY KEY,
        workers INTEGER,
        paused  INTEGER NOT NULL
    ) STRICT;
    INSERT INTO keel_queues_v2 (name, workers, paused) SELECT name, workers, paused FROM keel_queues;
    DROP TABLE keel_queues;
    ALTER TABLE keel_queues_v2 RENAME TO keel_queues;

    CREATE TABLE keel_schedules (
        name      TEXT PRIMARY KEY,
        schedule  TEXT NOT NULL,
        queue     TEXT NOT NULL,
        kind      TEXT NOT NULL,
        last_slot INTEGER NOT NULL,
        last_job  INTEGER NOT NULL
    ) STRICT;

    -- The operator's listing: newest first, by state.
    CREATE INDEX keel_jobs_state ON keel_jobs (state, id);
    ",
];

/// The schema version this library writes and reads.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Check that `conn` holds a Keel database (or nothing) and bring it to
/// [`SCHEMA_VERSION`], all under the write lock so concurrent openers migrate once.
/// Unless `migrate`: then an older schema is refused
/// ([`OpenError::SchemaTooOld`]) and nothing changes.
pub(super) fn check_and_migrate(
    conn: &mut Connection,
    target: &str,
    migrate: bool,
) -> Result<(), OpenError> {
    let fail = |e: rusqlite::Error| open_error(target, e);
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(fail)?;
    let app_id: i64 = tx
        .query_row("PRAGMA application_id", [], |r| r.get(0))
        .map_err(fail)?;
    let version: i64 = tx
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(fail)?;
    let tables: i64 = tx
        .query_row(
            "SELECT count(*) FROM sqlite_schema WHERE type = 'table'",
            [],
            |r| r.get(0),
        )
        .map_err(fail)?;
    let refuse_old = |found: i64| OpenError::SchemaTooOld {
        target: target.into(),
        found,
        supported: SCHEMA_VERSION,
    };
    match app_id {
        APPLICATION_ID => {}
        0 if tables == 0 && !migrate => return Err(refuse_old(0)),
        0 if tables == 0 => {
            tx.execute_batch(&format!("PRAGMA application_id = {APPLICATION_ID}"))
                .map_err(fail)?;
        }
        0 => {
            return Err(OpenError::NotKeel {
                target: target.into(),
                reason: format!("it holds {tables} tables of another application"),
            })
        }
        other => {
            return Err(OpenError::NotKeel {
                target: target.into(),
                reason: format!("its application_id is {other:#x}, not Keel's"),
            })
        }
    }
    if version > SCHEMA_VERSION {
        return Err(OpenError::SchemaTooNew {
            target: target.into(),
            found: version,
            supported: SCHEMA_VERSION,
        });
    }
    if version < SCHEMA_VERSION && !migrate {
        return Err(refuse_old(version));
    }
    let applied = usize::try_from(version).map_err(|_| OpenError::NotKeel {
        target: target.into(),
        reason: format!("negative schema version {version}"),
    })?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(applied) {
        tx.execute_batch(sql).map_err(fail)?;
        tx.execute_batch(&format!("PRAGMA user_version = {}", i + 1))
            .map_err(fail)?;
    }
    tx.commit().map_err(fail)
}
