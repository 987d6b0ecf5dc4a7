//! The storage seam: everything durable goes through here.
//!
//! `Storage` is a bundle of small traits, one per concern; today the lease store
//! that leadership needs. Implementations:
//!
//! * [`MemStorage`]: the reference model. Deterministic, in memory; the simulator
//!   serves it from its database host and every other engine is held to it.
//! * [`PostgresStorage`]: PostgreSQL, for several machines sharing one database.
//!
//! # One clock judges
//!
//! Every operation that compares a stored time with "now" (lease expiry and
//! takeover, claim staleness, due times, periodic slots, retention) reads
//! **storage's** clock, never the caller's: [`MemStorage`] and SQLite read the
//! [`Clock`](crate::clock::Clock) they were opened with (the machine's by
//! default, the database host's in the simulator), PostgreSQL its server's
//! `now()`. So callers pass durations (a lease's ttl, a staleness window, a retry
//! delay), never timestamps of their own: a node whose wall clock is minutes off
//! or jumps cannot end another node's hold early. A node's own clock only bounds
//! how long it trusts what it holds, on its monotonic clock, from when it sent the
//! call that granted or renewed the hold.
//!
//! # Leases and terms
//!
//! `lease(name) = {term, holder, expires_at}`. Terms strictly increase, and a
//! grant always starts a new term, even for the holder that had the lease last:
//! a node that lost track of its lease (a restart, a step-down) must never
//! inherit an old term. Renew and resign name their term, so an old term cannot
//! renew or resign a newer one; [`LeaseStore::maintenance_heartbeat`] is the fenced
//! write a leader's maintenance makes, accepted only for the current term.

pub mod admin;
pub mod job;
mod mem;
mod mem_jobs;
pub mod ops;
mod postgres;
mod rules;
pub mod sqlite;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::clock::Timestamp;

pub use admin::{AdminOutcome, AdminStore, JobFilter, JobPage, QueueSummary, ScheduleRecord};
pub use job::{
    Attempt, AttemptOutcome, CancelResult, Claim, EffectResult, EnqueueOutcome, EnqueueRequest,
    Finalize, FinalizeResult, HeartbeatStatus, Job, JobId, JobState, QueueConfig, StateCounts,
};
pub use mem::MemStorage;
pub use postgres::{PostgresOptions, PostgresStorage};
pub use sqlite::{SqliteEngine, SqliteOptions, SqliteStorage};

/// A leadership term. Strictly increasing per lease; the fencing token of leadership.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Term(pub u64);

impl fmt::Display for Term {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "T{}", self.0)
    }
}

/// A leader lease as storage holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// Which lease (one per leadership domain, e.g. `"maintainer"`).
    pub name: String,
    /// The term of the latest grant.
    pub term: Term,
    /// Who was granted `term`; `None` once that term resigned.
    pub holder: Option<String>,
    /// When the grant lapses unless renewed, on storage's clock.
    pub expires_at: Timestamp,
}

impl Lease {
    /// Whether some holder still has this lease at `now` (storage's time).
    pub fn is_live(&self, now: Timestamp) -> bool {
        self.holder.is_some() && now < self.expires_at
    }

    /// Whether this lease may be granted to `holder` at `now`, by a caller
    /// that was last granted term `known`: when it is not live, or when it is
    /// `holder`'s own and the caller has heard of its term (see
    /// [`LeaseStore::try_acquire_fenced`]). Every engine grants by this rule.
    pub fn grantable(&self, holder: &str, known: Option<Term>, now: Timestamp) -> bool {
        !self.is_live(now)
            || (self.holder.as_deref() == Some(holder) && known.is_none_or(|k| k >= self.term))
    }
}

/// Why a storage call failed.
///
/// The distinction between [`Unavailable`](StorageError::Unavailable) and
/// [`Ambiguous`](StorageError::Ambiguous) matters: after an ambiguous failure the
/// operation may have been applied, so callers must only retry operations that are
/// idempotent or fenced.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum StorageError {
    /// The request certainly was not applied (no connection, refused).
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// The request may or may not have been applied (reply lost, timed out).
    #[error("storage outcome unknown: {0}")]
    Ambiguous(String),
    /// The storage engine reported an error of its own.
    #[error("storage error: {0}")]
    Backend(String),
    /// The caller passed a value storage refuses; names the field.
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// The offending field.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// Result of a storage call.
pub type StorageResult<T> = Result<T, StorageError>;

/// Leader leases with strictly increasing terms.
#[async_trait]
pub trait LeaseStore: Send + Sync {
    /// Take lease `name` for `holder` until `ttl` from now on storage's clock if
    /// it is absent, expired, resigned, or already `holder`'s. Every grant starts a
    /// new term. Returns the granted lease, or `None` when another holder's grant
    /// is still live.
    ///
    /// An unfenced [`try_acquire_fenced`](Self::try_acquire_fenced): a live
    /// grant of `holder`'s own is always replaced.
    async fn try_acquire(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> StorageResult<Option<Lease>> {
        self.try_acquire_fenced(name, holder, ttl, None).await
    }

    /// [`try_acquire`](Self::try_acquire) by a caller whose newest grant of
    /// `name` was term `known` (`Term(0)`: none yet): a live grant of
    /// `holder`'s own is replaced only if its term is at most `known`.
    ///
    /// This fences the caller's own late requests. An acquire whose reply was
    /// lost or came after the caller's timeout may still be applied after a
    /// later acquire won a term; named by the older `known`, it is refused
    /// instead of evicting the term its caller now leads. A caller that heard
    /// of the live term (it held it, stepped down, and its resign was lost)
    /// still takes the lease back at once. `None` replaces any live grant of
    /// `holder`'s, as `try_acquire` does.
    async fn try_acquire_fenced(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
        known: Option<Term>,
    ) -> StorageResult<Option<Lease>>;

    /// Extend `holder`'s grant of `term` to `ttl` from now on storage's clock
    /// (never shortening it). Returns `false` when the lease has moved on to
    /// another term or holder.
    async fn renew(
        &self,
        name: &str,
        holder: &str,
        term: Term,
        ttl: Duration,
    ) -> StorageResult<bool>;

    /// Give up `holder`'s grant of `term`. Returns `false`, and changes nothing,
    /// unless `term` is the current term and `holder` holds it.
    async fn resign(&self, name: &str, holder: &str, term: Term) -> StorageResult<bool>;

    /// The current lease, if it was ever granted.
    async fn get_lease(&self, name: &str) -> StorageResult<Option<Lease>>;

    /// A fenced write by `term`'s maintenance: accepted (`true`) only while `term`
    /// is the current term of `name` and `holder` holds it.
    async fn maintenance_heartbeat(
        &self,
        name: &str,
        holder: &str,
        term: Term,
    ) -> StorageResult<bool>;
}

/// What firing a periodic job's slot did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeriodicOutcome {
    /// The slot fired now: this job was inserted.
    Fired(JobId),
    /// The slot fired before (on this or another leader); nothing changed.
    AlreadyFired(JobId),
    /// The caller's term is not the current one; nothing changed.
    StaleTerm,
}

/// Jobs: enqueue, claim, heartbeat, finalize, and the maintenance sweeps. Every
/// call that acts for a claim carries its [`Claim`] (the fencing token) and the
/// claimant, and storage refuses it once the row moved on.
#[async_trait]
pub trait JobStore: Send + Sync {
    /// Insert a job, or return the existing one with the same unique key.
    async fn enqueue(&self, req: EnqueueRequest) -> StorageResult<EnqueueOutcome>;

    /// Insert many jobs at once: all are validated before any is inserted.
    async fn enqueue_batch(&self, reqs: Vec<EnqueueRequest>) -> StorageResult<Vec<EnqueueOutcome>>;

    /// Claim up to `limit` due jobs of `queue` for `owner`: by priority, then due
    /// time, then id. Each claim increments the job's attempt. A paused queue
    /// hands out nothing.
    async fn claim(&self, queue: &str, owner: &str, limit: u32) -> StorageResult<Vec<Job>>;

    /// Refresh a live claim; says whether to go on, stop for a cancel, or stop
    /// because the claim is gone.
    async fn heartbeat(&self, claim: Claim, owner: &str) -> StorageResult<HeartbeatStatus>;

    /// Record how an attempt ended. Idempotent for the same claim; a no-op for a
    /// stale one.
    async fn finalize(
        &self,
        claim: Claim,
        owner: &str,
        outcome: Finalize,
    ) -> StorageResult<FinalizeResult>;

    /// [`finalize`](Self::finalize) `claim`, then [`claim`](Self::claim) up to
    /// `limit` more jobs of `queue` for `owner`, in one call: a busy worker
    /// hands back one job and takes its next in a single round trip (and, on
    /// SQLite, a single transaction) instead of two.
    ///
    /// The finalize is what counts: its result is returned even when the claim
    /// part fails, which then claims nothing. Engines that can, apply both
    /// atomically; the default makes the two calls in turn.
    async fn finalize_and_claim(
        &self,
        claim: Claim,
        owner: &str,
        outcome: Finalize,
        queue: &str,
        limit: u32,
    ) -> StorageResult<(FinalizeResult, Vec<Job>)> {
        finalize_then_claim(self, claim, owner, outcome, queue, limit).await
    }

    /// Write `value` under `key` for the job, once: only while `claim` is live,
    /// and only if no earlier attempt wrote that key.
    async fn apply_effect(
        &self,
        claim: Claim,
        owner: &str,
        key: &str,
        value: serde_json::Value,
    ) -> StorageResult<EffectResult>;

    /// A fenced effect's value, if written.
    async fn get_effect(&self, job: JobId, key: &str) -> StorageResult<Option<serde_json::Value>>;

    /// Cancel a job: at once if it is not running, through its worker's next
    /// heartbeat if it is. A finished job keeps its outcome.
    async fn request_cancel(&self, job: JobId) -> StorageResult<CancelResult>;

    /// Running jobs whose last heartbeat (or claim) is more than `stale_after`
    /// old on storage's clock go back to retryable (due now), or to discarded when
    /// their attempts are spent. Returns the claims that were revoked.
    async fn rescue_stale(&self, stale_after: Duration) -> StorageResult<Vec<Claim>>;

    /// Scheduled and retryable jobs that are due on storage's clock become
    /// available. Returns how many.
    async fn promote_due(&self) -> StorageResult<u64>;

    /// Delete up to `limit` finished jobs that finished at least `retention` ago
    /// on storage's clock.
    async fn cleanup(&self, retention: Duration, limit: u32) -> StorageResult<u64>;

    /// Storage's clock: the time every stored time is judged against. The
    /// periodic enqueuer reads it to find a schedule's due slot.
    async fn time(&self) -> StorageResult<Timestamp>;

    /// One job.
    async fn get_job(&self, job: JobId) -> StorageResult<Option<Job>>;

    /// How many jobs are in each state.
    async fn count_by_state(&self) -> StorageResult<StateCounts>;

    /// Ids of up to `limit` jobs not in a terminal state, by id.
    async fn list_unfinished(&self, limit: u32) -> StorageResult<Vec<JobId>>;

    /// A signal storage raises when jobs were enqueued elsewhere (another process
    /// or machine), so idle workers can claim at once instead of at their next
    /// poll. `None`: this engine has no such signal and workers only poll.
    fn enqueue_signal(&self) -> Option<Arc<tokio::sync::Notify>> {
        None
    }

    /// Create or replace a queue's settings.
    async fn set_queue(&self, config: QueueConfig) -> StorageResult<()>;

    /// A queue's settings, if set.
    async fn get_queue(&self, name: &str) -> StorageResult<Option<QueueConfig>>;

    /// Fire slot `slot` of periodic schedule `name`: insert `req` unless the slot
    /// fired before, and only while `term` of `lease` is `holder`'s (fenced by the
    /// leader's term, so two leaders cannot both fire it). A slot that fires
    /// records `schedule` (how the schedule writes itself) beside it, for
    /// [`AdminStore::list_schedules`].
    #[allow(clippy::too_many_arguments)]
    async fn fire_periodic(
        &self,
        name: &str,
        slot: Timestamp,
        schedule: &str,
        lease: &str,
        holder: &str,
        term: Term,
        req: EnqueueRequest,
    ) -> StorageResult<PeriodicOutcome>;
}

/// Why a storage engine could not be opened. Each variant names what to fix.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The connection URL or path is malformed.
    #[error("invalid {what}: {reason}")]
    InvalidConfig {
        /// Which setting (`"url"`, `"path"`, `"schema"`, ...).
        what: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The database could not be reached or opened.
    #[error("cannot open {target}: {reason}")]
    Unreachable {
        /// The file or server, as the caller named it (passwords removed).
        target: String,
        /// The engine's own explanation.
        reason: String,
    },
    /// Another process holds a lock on the database for longer than the busy timeout.
    #[error("{target} is locked by another process: {reason}")]
    Locked {
        /// The database file.
        target: String,
        /// The engine's own explanation.
        reason: String,
    },
    /// The database can be read but not written.
    #[error("{target} is read-only: {reason}")]
    ReadOnly {
        /// The database file.
        target: String,
        /// The engine's own explanation.
        reason: String,
    },
    /// The database holds tables that are not Keel's, or is not a database at all.
    #[error("{target} is not a Keel database: {reason}")]
    NotKeel {
        /// The database file or schema.
        target: String,
        /// What was found instead.
        reason: String,
    },
    /// The database's schema is older than this library's (or absent), and
    /// the opener asked not to migrate it (`keel` commands other than
    /// `keel migrate`).
    #[error(
        "{target} has schema version {found}; this Keel needs {supported}: run `keel migrate`"
    )]
    SchemaTooOld {
        /// The database file or schema.
        target: String,
        /// The version found; 0 for a database Keel never migrated.
        found: i64,
        /// The version this library needs.
        supported: i64,
    },
    /// The database was migrated by a newer Keel than this one.
    #[error(
        "{target} has schema version {found}; this Keel supports up to {supported}: upgrade Keel"
    )]
    SchemaTooNew {
        /// The database file or schema.
        target: String,
        /// The version found.
        found: i64,
        /// The newest version this library knows.
        supported: i64,
    },
    /// The engine failed while migrating or checking the schema.
    #[error("storage error opening {target}: {reason}")]
    Backend {
        /// The database file or schema.
        target: String,
        /// The engine's own explanation.
        reason: String,
    },
}

/// Everything durable. Blanket-implemented for any type with every store.
pub trait Storage: LeaseStore + JobStore {}

impl<T: LeaseStore + JobStore> Storage for T {}

/// A shared storage handle.
pub type SharedStorage = Arc<dyn Storage>;

/// Everything durable and the operator's view of it: what the `keel` CLI and
/// dashboard open. Blanket-implemented for any [`Storage`] that is also an
/// [`AdminStore`], as every engine is.
pub trait AdminStorage: Storage + AdminStore {
    /// This handle as the runtime's [`Storage`].
    fn as_storage(&self) -> &dyn Storage;
}

impl<T: Storage + AdminStore> AdminStorage for T {
    fn as_storage(&self) -> &dyn Storage {
        self
    }
}

/// The output of `future` if it completes without waiting, else `None`.
///
/// For engines whose calls never wait ([`MemStorage`], [`SqliteEngine`]): the
/// simulator's harness and the SQLite thread use this to call them synchronously.
pub fn poll_ready<F: std::future::Future>(future: F) -> Option<F::Output> {
    let future = std::pin::pin!(future);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match future.poll(&mut cx) {
        std::task::Poll::Ready(value) => Some(value),
        std::task::Poll::Pending => None,
    }
}

/// Validate a lease name: the same rule for every engine.
pub(crate) fn validate_lease_name(name: &str) -> StorageResult<()> {
    const LEASE_NAME_LEN_MAX: usize = 128;
    if name.is_empty() || name.len() > LEASE_NAME_LEN_MAX {
        return Err(StorageError::Invalid {
            field: "lease name".into(),
            reason: format!("must be 1..={LEASE_NAME_LEN_MAX} bytes, got {}", name.len()),
        });
    }
    Ok(())
}

/// [`JobStore::finalize_and_claim`] as two calls in turn: the default, and what
/// an engine with a faster path falls back to for the other cases.
pub(crate) async fn finalize_then_claim<S: JobStore + ?Sized>(
    store: &S,
    claim: Claim,
    owner: &str,
    outcome: Finalize,
    queue: &str,
    limit: u32,
) -> StorageResult<(FinalizeResult, Vec<Job>)> {
    // Bad input fails the whole call before anything is applied.
    job::validate_name("queue", queue)?;
    validate_holder(owner)?;
    let result = store.finalize(claim, owner, outcome).await?;
    let next = store.claim(queue, owner, limit).await.unwrap_or_default();
    Ok((result, next))
}

/// Validate a holder id: the same rule for every engine.
pub(crate) fn validate_holder(holder: &str) -> StorageResult<()> {
    const HOLDER_LEN_MAX: usize = 128;
    if holder.is_empty() || holder.len() > HOLDER_LEN_MAX {
        return Err(StorageError::Invalid {
            field: "holder".into(),
            reason: format!("must be 1..={HOLDER_LEN_MAX} bytes, got {}", holder.len()),
        });
    }
    Ok(())
}
