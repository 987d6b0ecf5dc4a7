//! Versioned migrations: `MIGRATIONS[i]` takes a schema from version `i` to `i + 1`.
//!
//! `keel_schema_version` holds one row per applied migration. Connect runs every
//! missing migration in one transaction under an advisory lock on the schema's
//! name, so processes that connect at once migrate it exactly once, and a
//! failed migration leaves the schema as it was.

use deadpool_postgres::Object;

use super::error_chain;
use crate::storage::OpenError;

/// The schema-version table; its shape is part of the format and never changes.
const VERSION_TABLE: &str = "keel_schema_version";

/// Every migration, oldest first. Append only: a released entry never changes.
pub(super) const MIGRATIONS: &[&str] = &[V1, V2, V3, V4];

/// The newest schema version this library knows.
pub(super) fn version_supported() -> i64 {
    i64::try_from(MIGRATIONS.len()).expect("a handful of migrations")
}

const V1: &str = "
CREATE TABLE keel_counters (
    name TEXT PRIMARY KEY,
    value BIGINT NOT NULL
);
INSERT INTO keel_counters (name, value) VALUES ('job_id', 0);

CREATE TABLE keel_leases (
    name BYTEA PRIMARY KEY,
    term BIGINT NOT NULL,
    holder BYTEA,
    expires_at BIGINT NOT NULL
);

CREATE TABLE keel_jobs (
    id BIGINT PRIMARY KEY,
    kind TEXT NOT NULL,
    queue TEXT NOT NULL,
    payload TEXT NOT NULL,
    priority SMALLINT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('scheduled', 'available', 'running', 'retryable',
                                         'completed', 'cancelled', 'discarded')),
    attempt BIGINT NOT NULL,
    max_attempts BIGINT NOT NULL,
    scheduled_at BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    owner BYTEA,
    heartbeat_at BIGINT,
    cancel_requested BOOLEAN NOT NULL,
    finalized_at BIGINT,
    finalized_attempt BIGINT,
    errors TEXT NOT NULL,
    unique_key BYTEA UNIQUE
);
CREATE INDEX keel_jobs_claim ON keel_jobs (queue, priority, scheduled_at, id)
    WHERE state = 'available';
CREATE INDEX keel_jobs_rescue ON keel_jobs (heartbeat_at) WHERE state = 'running';
CREATE INDEX keel_jobs_promote ON keel_jobs (scheduled_at)
    WHERE state IN ('scheduled', 'retryable');
CREATE INDEX keel_jobs_cleanup ON keel_jobs (finalized_at)
    WHERE state IN ('completed', 'cancelled', 'discarded');

CREATE TABLE keel_effects (
    job_id BIGINT NOT NULL REFERENCES keel_jobs (id) ON DELETE CASCADE,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (job_id, key)
);

CREATE TABLE keel_queues (
    name TEXT PRIMARY KEY,
    workers BIGINT NOT NULL,
    paused BOOLEAN NOT NULL
);

-- No foreign key to keel_jobs: a fired slot stays fired after cleanup deletes its job.
CREATE TABLE keel_periodic (
    name TEXT NOT NULL,
    slot BIGINT NOT NULL,
    job_id BIGINT NOT NULL,
    PRIMARY KEY (name, slot)
);
";

/// Unique keys through a partial index. V1's `UNIQUE` column constraint indexed
/// every row, so each row version of a job without a key (nearly all of them)
/// added an entry for its NULL key: two of the six index entries a claim and a
/// completion write. Keys stay unique; lookups by key (`unique_key = $1`) imply
/// `IS NOT NULL`, so they use this index as they used the old one.
const V2: &str = "
ALTER TABLE keel_jobs DROP CONSTRAINT keel_jobs_unique_key_key;
CREATE UNIQUE INDEX keel_jobs_unique_key ON keel_jobs (unique_key) WHERE unique_key IS NOT NULL;
";

/// Effects without the foreign key. Its `ON DELETE CASCADE` ran one query per
/// deleted job (a row trigger), which cost a completing `DELETE` more than the
/// delete itself (`PostgresOptions::delete_completed`; measured in `ci/bench`).
/// Whatever deletes jobs now deletes their effects in the same statement, and
/// no effect is written for a job that is gone: `apply_effect` holds the live
/// job's row while it writes.
const V3: &str = "
ALTER TABLE keel_effects DROP CONSTRAINT keel_effects_job_id_fkey;
";

/// The operator's view. Each job's attempts (who, when, how each ended), as
/// JSON text like `errors`; queues an operator paused without sizing them
/// (workers NULL: each node's own count); the latest slot of each periodic
/// schedule; and an index for listing jobs of one state newest first.
const V4: &str = "
ALTER TABLE keel_jobs ADD COLUMN attempts TEXT NOT NULL DEFAULT '[]';
ALTER TABLE keel_queues ALTER COLUMN workers DROP NOT NULL;
CREATE TABLE keel_schedules (
    name TEXT PRIMARY KEY,
    schedule TEXT NOT NULL,
    queue TEXT NOT NULL,
    kind TEXT NOT NULL,
    last_slot BIGINT NOT NULL,
    last_job BIGINT NOT NULL
);
CREATE INDEX keel_jobs_state ON keel_jobs (state, id);
";

/// Create `schema` if missing, check it is Keel's, and apply missing migrations.
/// `target` names the schema in errors.
pub(super) async fn migrate(
    client: &mut Object,
    schema: &str,
    target: &str,
    migrate: bool,
) -> Result<(), OpenError> {
    let backend = |e: tokio_postgres::Error| OpenError::Backend {
        target: target.to_owned(),
        reason: error_chain(&e),
    };
    let tx = client.transaction().await.map_err(backend)?;
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
        &[&format!("keel migrate {schema}")],
    )
    .await
    .map_err(backend)?;
    let exists = tx
        .query_opt("SELECT 1 FROM pg_namespace WHERE nspname = $1", &[&schema])
        .await
        .map_err(backend)?
        .is_some();
    if !exists {
        tx.batch_execute(&format!("CREATE SCHEMA \"{schema}\""))
            .await
            .map_err(backend)?;
    }
    tx.batch_execute(&format!("SET LOCAL search_path TO \"{schema}\""))
        .await
        .map_err(backend)?;
    let current = current_version(&tx, schema, target).await?;
    let supported = version_supported();
    if current > supported {
        return Err(OpenError::SchemaTooNew {
            target: target.to_owned(),
            found: current,
            supported,
        });
    }
    if current < supported && !migrate {
        // Dropping the transaction undoes the schema and version table it made.
        return Err(OpenError::SchemaTooOld {
            target: target.to_owned(),
            found: current,
            supported,
        });
    }
    let start = usize::try_from(current).expect("versions are small and not negative");
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(start) {
        let version = i64::try_from(index + 1).expect("a handful of migrations");
        tx.batch_execute(sql).await.map_err(backend)?;
        tx.execute(
            "INSERT INTO keel_schema_version (version) VALUES ($1)",
            &[&version],
        )
        .await
        .map_err(backend)?;
    }
    tx.commit().await.map_err(backend)
}

/// The schema's version: 0 for a schema without Keel tables (after creating the
/// version table), an error for one with tables Keel did not make.
async fn current_version(
    tx: &deadpool_postgres::Transaction<'_>,
    schema: &str,
    target: &str,
) -> Result<i64, OpenError> {
    let backend = |e: tokio_postgres::Error| OpenError::Backend {
        target: target.to_owned(),
        reason: error_chain(&e),
    };
    let not_keel = |reason: String| OpenError::NotKeel {
        target: target.to_owned(),
        reason,
    };
    let tables: Vec<String> = tx
        .query(
            "SELECT c.relname::TEXT FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relkind IN ('r', 'p', 'v', 'm', 'f') \
             AND c.relname LIKE 'keel\\_%' ORDER BY c.relname",
            &[&schema],
        )
        .await
        .map_err(backend)?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if !tables.iter().any(|t| t == VERSION_TABLE) {
        if !tables.is_empty() {
            return Err(not_keel(format!(
                "it has tables {} but no {VERSION_TABLE}",
                tables.join(", ")
            )));
        }
        tx.batch_execute("CREATE TABLE keel_schema_version (version BIGINT PRIMARY KEY)")
            .await
            .map_err(backend)?;
        return Ok(0);
    }
    let columns: Vec<(String, String)> = tx
        .query(
            "SELECT a.attname::TEXT, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a \
             JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped \
             ORDER BY a.attnum",
            &[&schema, &VERSION_TABLE],
        )
        .await
        .map_err(backend)?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    if columns != [("version".to_owned(), "bigint".to_owned())] {
        return Err(not_keel(format!(
            "{VERSION_TABLE} has columns {columns:?}, not Keel's (version bigint)"
        )));
    }
    let found: Option<i64> = tx
        .query_one("SELECT max(version) FROM keel_schema_version", &[])
        .await
        .map_err(backend)?
        .get(0);
    match found {
        Some(version) if version >= 1 => Ok(version),
        Some(version) => Err(not_keel(format!("{VERSION_TABLE} says version {version}"))),
        None => Err(not_keel(format!("{VERSION_TABLE} is empty"))),
    }
}
