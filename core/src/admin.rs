//! The operator's API: what the `keel` CLI and dashboard call.
//!
//! [`Admin`] opens a database the way an operator's tool should (it never
//! creates or migrates one unless asked: that is `keel migrate`), and puts
//! the engines' [`AdminStore`](crate::storage::AdminStore) and [`JobStore`](crate::storage::JobStore) calls behind one handle:
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use keel::admin::{Admin, Database};
//! use keel::storage::JobFilter;
//! let admin = Admin::open(&Database::parse("jobs.db")?).await?;
//! for job in admin.jobs(JobFilter::all(20)).await?.jobs {
//!     println!("{} {:?} {}", job.id, job.state, job.kind);
//! }
//! # Ok(()) }
//! ```
//!
//! Its changes obey the runtime's fences: a running job belongs to its claim,
//! so [`Admin::retry`], [`Admin::discard`] and [`Admin::delete`] leave one
//! alone ([`AdminOutcome::Running`]), and [`Admin::cancel`] asks its worker
//! through the next heartbeat, as [`JobStore::request_cancel`](crate::storage::JobStore::request_cancel) does.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::clock::Timestamp;
use crate::jobs::{PeriodicJob, Schedule};
use crate::storage::job::validate_name;
use crate::storage::sqlite::BUSY_TIMEOUT_DEFAULT;
use crate::storage::{
    AdminOutcome, AdminStorage, CancelResult, Job, JobFilter, JobId, JobPage, Lease, OpenError,
    PostgresOptions, PostgresStorage, QueueConfig, QueueSummary, ScheduleRecord, SqliteOptions,
    SqliteStorage, StorageResult,
};

/// Where a Keel database lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Database {
    /// A SQLite file.
    Sqlite(PathBuf),
    /// A PostgreSQL server: a `postgres://` URL, and the schema Keel's tables
    /// are in (`?keel_schema=NAME` in the URL; `public` by default).
    Postgres {
        /// The URL, without `keel_schema`.
        url: String,
        /// The schema.
        schema: String,
    },
}

impl Database {
    /// `postgres://...` or `postgresql://...` is a server; anything else a
    /// SQLite file path (`sqlite://PATH` and `file:PATH` too).
    ///
    /// # Errors
    ///
    /// [`OpenError::InvalidConfig`] for an empty target or a URL of another
    /// scheme.
    pub fn parse(target: &str) -> Result<Self, OpenError> {
        let invalid = |reason: String| OpenError::InvalidConfig {
            what: "database",
            reason,
        };
        if target.is_empty() {
            return Err(invalid(
                "empty; name a SQLite file or a postgres:// URL".into(),
            ));
        }
        if target.starts_with("postgres://") || target.starts_with("postgresql://") {
            return Ok(Self::postgres(target));
        }
        if let Some(path) = target
            .strip_prefix("sqlite://")
            .or_else(|| target.strip_prefix("file:"))
        {
            return Ok(Database::Sqlite(PathBuf::from(path)));
        }
        match target.split_once("://") {
            Some((scheme, _)) => Err(invalid(format!(
                "unknown scheme {scheme:?}; use postgres://, or a SQLite file path"
            ))),
            None => Ok(Database::Sqlite(PathBuf::from(target))),
        }
    }

    /// A PostgreSQL URL, its `keel_schema` query parameter taken out.
    fn postgres(url: &str) -> Self {
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let mut schema = PostgresOptions::SCHEMA_DEFAULT.to_owned();
        let mut rest = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.strip_prefix("keel_schema=") {
                Some(name) => schema = name.to_owned(),
                None => rest.push(pair),
            }
        }
        let url = if rest.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", rest.join("&"))
        };
        Database::Postgres { url, schema }
    }
}

/// A job as an operator reads it: the row with every attempt, and its effects.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobDetail {
    /// The job, its attempts included.
    pub job: Job,
    /// Its fenced effects, by key.
    pub effects: Vec<(String, serde_json::Value)>,
}

/// A periodic schedule and when it fires next.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Periodic {
    /// What storage recorded at its latest slot.
    #[serde(flatten)]
    pub record: ScheduleRecord,
    /// Its next slot after the latest one fired; `None` when the recorded
    /// schedule cannot be read (written by a newer Keel) or has no next slot.
    pub next_slot: Option<Timestamp>,
}

/// How a schema migration went.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationStatus {
    /// The schema version before; 0 for a database Keel never migrated.
    pub from: i64,
    /// The schema version now.
    pub to: i64,
}

/// The operator's handle on one database. See the [module docs](self).
#[derive(Clone)]
pub struct Admin {
    storage: Arc<dyn AdminStorage>,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin").finish_non_exhaustive()
    }
}

impl Admin {
    /// Open `db` as it is: a missing SQLite file, or a schema older than this
    /// library's, is an error ([`OpenError::SchemaTooOld`] says to run `keel
    /// migrate`), and nothing is created or changed.
    pub async fn open(db: &Database) -> Result<Self, OpenError> {
        Self::open_with(db, false, BUSY_TIMEOUT_DEFAULT).await
    }

    /// [`open`](Self::open), waiting at most `busy_timeout` for another
    /// process's lock on a SQLite file ([`OpenError::Locked`] after that).
    pub async fn open_waiting(db: &Database, busy_timeout: Duration) -> Result<Self, OpenError> {
        Self::open_with(db, false, busy_timeout).await
    }

    /// Bring `db`'s schema to this library's version (creating the SQLite
    /// file or PostgreSQL schema if absent), and say from which version.
    pub async fn migrate(db: &Database) -> Result<MigrationStatus, OpenError> {
        let to = Self::schema_supported(db);
        let from = match Self::open_with(db, false, BUSY_TIMEOUT_DEFAULT).await {
            Ok(_) => return Ok(MigrationStatus { from: to, to }),
            Err(OpenError::SchemaTooOld { found, .. }) => found,
            Err(OpenError::Unreachable { .. }) if Self::is_missing_file(db) => 0,
            Err(e) => return Err(e),
        };
        Self::open_with(db, true, BUSY_TIMEOUT_DEFAULT).await?;
        Ok(MigrationStatus { from, to })
    }

    /// The schema version `db` is at, without changing it: `Ok(to == from)`
    /// when current, `from < to` when `keel migrate` has work to do.
    pub async fn migration_status(db: &Database) -> Result<MigrationStatus, OpenError> {
        let to = Self::schema_supported(db);
        match Self::open_with(db, false, BUSY_TIMEOUT_DEFAULT).await {
            Ok(_) => Ok(MigrationStatus { from: to, to }),
            Err(OpenError::SchemaTooOld { found, .. }) => Ok(MigrationStatus { from: found, to }),
            Err(OpenError::Unreachable { .. }) if Self::is_missing_file(db) => {
                Ok(MigrationStatus { from: 0, to })
            }
            Err(e) => Err(e),
        }
    }

    fn schema_supported(db: &Database) -> i64 {
        match db {
            Database::Sqlite(_) => crate::storage::sqlite::SCHEMA_VERSION,
            Database::Postgres { .. } => PostgresStorage::schema_version_supported(),
        }
    }

    fn is_missing_file(db: &Database) -> bool {
        matches!(db, Database::Sqlite(path) if !path.exists())
    }

    async fn open_with(
        db: &Database,
        migrate: bool,
        busy_timeout: Duration,
    ) -> Result<Self, OpenError> {
        let storage: Arc<dyn AdminStorage> = match db {
            Database::Sqlite(path) => {
                if !migrate && !path.exists() {
                    return Err(OpenError::Unreachable {
                        target: path.display().to_string(),
                        reason: "no such file; `keel migrate` creates a database".into(),
                    });
                }
                let options = SqliteOptions::default()
                    .migrate(migrate)
                    .busy_timeout(busy_timeout);
                Arc::new(SqliteStorage::open_with(path, options).await?)
            }
            Database::Postgres { url, schema } => {
                let options = PostgresOptions::new()
                    .schema(schema.clone())
                    .pool_size(4)
                    .listen(false)
                    .migrate(migrate);
                Arc::new(PostgresStorage::connect_with(url, options).await?)
            }
        };
        Ok(Self { storage })
    }

    /// An admin handle on storage already open (a service's own, a test's).
    pub fn new(storage: Arc<dyn AdminStorage>) -> Self {
        Self { storage }
    }

    /// The storage behind this handle.
    pub fn storage(&self) -> &Arc<dyn AdminStorage> {
        &self.storage
    }

    /// Jobs passing `filter`, newest first.
    pub async fn jobs(&self, filter: JobFilter) -> StorageResult<JobPage> {
        self.storage.list_jobs(filter).await
    }

    /// One job with its attempts and effects; `None` if there is no such job.
    pub async fn job(&self, id: JobId) -> StorageResult<Option<JobDetail>> {
        let Some(job) = self.storage.get_job(id).await? else {
            return Ok(None);
        };
        let effects = self.storage.list_effects(id).await?;
        Ok(Some(JobDetail { job, effects }))
    }

    /// Every queue with jobs or settings, with its counts.
    pub async fn queues(&self) -> StorageResult<Vec<QueueSummary>> {
        self.storage.list_queues().await
    }

    /// Stop handing out `queue`'s jobs, cluster-wide, within each node's next
    /// supervisor tick; running jobs finish.
    pub async fn pause(&self, queue: &str) -> StorageResult<()> {
        self.update_queue(queue, |q| q.paused = true).await
    }

    /// Hand out `queue`'s jobs again.
    pub async fn resume(&self, queue: &str) -> StorageResult<()> {
        self.update_queue(queue, |q| q.paused = false).await
    }

    /// Run `workers` workers for `queue` on each node (`None`: each node's own
    /// configured count).
    pub async fn set_workers(&self, queue: &str, workers: Option<u32>) -> StorageResult<()> {
        self.update_queue(queue, |q| q.workers = workers).await
    }

    async fn update_queue(
        &self,
        queue: &str,
        change: impl FnOnce(&mut QueueConfig),
    ) -> StorageResult<()> {
        validate_name("queue", queue)?;
        let mut config = self.storage.get_queue(queue).await?.unwrap_or(QueueConfig {
            name: queue.to_owned(),
            workers: None,
            paused: false,
        });
        change(&mut config);
        self.storage.set_queue(config).await
    }

    /// Run a job that is not running again, due now.
    pub async fn retry(&self, id: JobId) -> StorageResult<AdminOutcome> {
        self.storage.retry_job(id).await
    }

    /// Cancel a job: at once if it is not running, through its worker's next
    /// heartbeat if it is.
    pub async fn cancel(&self, id: JobId) -> StorageResult<CancelResult> {
        self.storage.request_cancel(id).await
    }

    /// End a job that is neither running nor finished as discarded.
    pub async fn discard(&self, id: JobId) -> StorageResult<AdminOutcome> {
        self.storage.discard_job(id).await
    }

    /// Delete a job that is not running, with its effects.
    pub async fn delete(&self, id: JobId) -> StorageResult<AdminOutcome> {
        self.storage.delete_job(id).await
    }

    /// Every lease (one per leadership domain; the runtime's is
    /// `maintainer`): who holds it, in which term, until when.
    pub async fn leases(&self) -> StorageResult<Vec<Lease>> {
        self.storage.list_leases().await
    }

    /// Every periodic schedule that fired, with its next slot.
    pub async fn periodic(&self) -> StorageResult<Vec<Periodic>> {
        let records = self.storage.list_schedules().await?;
        Ok(records
            .into_iter()
            .map(|record| {
                let next_slot = record
                    .schedule
                    .parse::<Schedule>()
                    .ok()
                    .and_then(|s| PeriodicJob::next_slot(&s, record.last_slot));
                Periodic { record, next_slot }
            })
            .collect())
    }

    /// Storage's clock, now: what every stored time is judged against.
    pub async fn time(&self) -> StorageResult<Timestamp> {
        self.storage.time().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_target_is_a_postgres_url_or_a_sqlite_path() {
        assert_eq!(
            Database::parse("jobs.db").expect("path"),
            Database::Sqlite("jobs.db".into())
        );
        assert_eq!(
            Database::parse("sqlite:///var/lib/jobs.db").expect("sqlite url"),
            Database::Sqlite("/var/lib/jobs.db".into())
        );
        assert_eq!(
            Database::parse("postgres://u@h/db?keel_schema=jobs&sslmode=disable").expect("pg"),
            Database::Postgres {
                url: "postgres://u@h/db?sslmode=disable".into(),
                schema: "jobs".into()
            }
        );
        let err = Database::parse("mysql://h/db").expect_err("scheme");
        assert!(
            err.to_string().contains("unknown scheme \"mysql\""),
            "{err}"
        );
        assert!(Database::parse("").is_err());
    }
}
