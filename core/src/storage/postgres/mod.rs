//! The PostgreSQL engine, documented on [`PostgresStorage`].

mod admin;
mod batch;
mod jobs;
mod leases;
mod listen;
mod rows;
mod schema;
#[cfg(test)]
mod tests;

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::error::SqlState;
use tokio_postgres::NoTls;
use tokio_util::sync::DropGuard;

use super::{OpenError, StorageError, StorageResult};
use crate::clock::{SharedClock, Timestamp};

/// How many times a transaction that lost a serialization race or a deadlock is
/// run again before the error is returned.
const TX_TRIES_MAX: u32 = 5;
/// Connect timeout used when the URL does not set one: an unroutable host must
/// fail `connect` rather than hang it.
const CONNECT_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);
/// PostgreSQL's longest identifier, in bytes (`NAMEDATALEN - 1`).
const IDENTIFIER_LEN_MAX: usize = 63;

/// Settings for [`PostgresStorage::connect_with`].
#[derive(Clone)]
pub struct PostgresOptions {
    schema: String,
    pool_size: usize,
    listen: bool,
    delete_completed: bool,
    clock: Option<SharedClock>,
    migrate: bool,
}

impl std::fmt::Debug for PostgresOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresOptions")
            .field("schema", &self.schema)
            .field("pool_size", &self.pool_size)
            .field("listen", &self.listen)
            .field("delete_completed", &self.delete_completed)
            .field("test_clock", &self.clock.is_some())
            .field("migrate", &self.migrate)
            .finish()
    }
}

impl PostgresOptions {
    /// Default schema.
    pub const SCHEMA_DEFAULT: &'static str = "public";
    /// Default connection pool size.
    pub const POOL_SIZE_DEFAULT: usize = 16;

    /// Schema `public`, 16 pooled connections, listening for enqueues, completed
    /// jobs kept.
    pub fn new() -> Self {
        Self {
            schema: Self::SCHEMA_DEFAULT.to_owned(),
            pool_size: Self::POOL_SIZE_DEFAULT,
            listen: true,
            delete_completed: false,
            clock: None,
            migrate: true,
        }
    }

    /// Keep Keel's tables in `schema` (created if missing), so several deployments
    /// or tests can share one database.
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// Whether connecting creates the schema and migrates it (the default).
    /// Off, an older or absent schema is refused with
    /// [`OpenError::SchemaTooOld`], changing nothing: what an operator's tool
    /// wants from a database its services own.
    pub fn migrate(mut self, on: bool) -> Self {
        self.migrate = on;
        self
    }

    /// Open at most `n` connections for storage calls (the listener has its own).
    pub fn pool_size(mut self, n: usize) -> Self {
        self.pool_size = n;
        self
    }

    /// Whether to hold a `LISTEN` connection that raises
    /// [`enqueue_signal`](super::JobStore::enqueue_signal). Without it workers only poll.
    pub fn listen(mut self, on: bool) -> Self {
        self.listen = on;
        self
    }

    /// Delete a job's row (and its effects) when it completes, instead of
    /// keeping it in state `completed` until the cleanup service removes it
    /// after [`JobsConfig::retention`](crate::jobs::JobsConfig::retention).
    ///
    /// For deployments that never read finished jobs: a completion writes no new
    /// row version and no index entries, so the table stays small and the hot
    /// path costs less (`ci/bench` measures the difference). What changes:
    ///
    /// ```text
    /// after a job completes     kept (default)           deleted
    /// get_job(id)               Some(state: completed)   None
    /// enqueue, same unique key  Duplicate(id)            Inserted (a new job)
    /// a repeated completion     AlreadyFinalized         Stale
    /// ```
    ///
    /// Cancelled and discarded jobs are kept either way: they carry the errors
    /// an operator reads.
    pub fn delete_completed(mut self, on: bool) -> Self {
        self.delete_completed = on;
        self
    }

    /// A test clock: every call is judged at this clock's time instead of the
    /// server's `now()`; leave unset in production.
    ///
    /// Each call reads the clock once and judges all of its statements at that
    /// reading, as [`MemStorage`](super::MemStorage) does, so the conformance
    /// suite can hold this engine to the model at times it decides (a
    /// [`ManualClock`](crate::clock::ManualClock)). Several processes sharing a
    /// database would each judge by their own clock: never set this there.
    pub fn clock(mut self, clock: SharedClock) -> Self {
        self.clock = Some(clock);
        self
    }

    fn validate(&self) -> Result<(), OpenError> {
        validate_schema(&self.schema)?;
        if self.pool_size == 0 {
            return Err(OpenError::InvalidConfig {
                what: "pool_size",
                reason: "must be at least 1".into(),
            });
        }
        Ok(())
    }
}

impl Default for PostgresOptions {
    fn default() -> Self {
        Self::new()
    }
}

/// Schema names go into SQL as identifiers, so only a plain identifier is accepted.
fn validate_schema(schema: &str) -> Result<(), OpenError> {
    let invalid = |reason: String| OpenError::InvalidConfig {
        what: "schema",
        reason,
    };
    if schema.is_empty() || schema.len() > IDENTIFIER_LEN_MAX {
        return Err(invalid(format!(
            "must be 1..={IDENTIFIER_LEN_MAX} bytes, got {}",
            schema.len()
        )));
    }
    if schema.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(invalid(format!("{schema:?} starts with a digit")));
    }
    if let Some(c) = schema
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_'))
    {
        return Err(invalid(format!(
            "{schema:?} contains {c:?}; use letters, digits and _"
        )));
    }
    Ok(())
}

/// Keel storage in a PostgreSQL schema.
///
/// `PostgresStorage`: the multi-node engine, held to [`MemStorage`](super::MemStorage).
///
/// * One schema per Keel deployment ([`PostgresOptions::schema`]); every pooled
///   connection sets its `search_path` to it, so SQL names no schema.
/// * `schema`: versioned migrations, applied on connect under an advisory lock.
/// * `leases` and `jobs`: the trait impls. Single-row job transitions lock the row
///   (`FOR UPDATE`), apply the model's own rules from `rules.rs`, and write the row
///   back in the same transaction, so the fencing check and the guarded write
///   cannot be separated.
/// * `listen`: a task on one dedicated connection turns `NOTIFY`s from other
///   processes into [`JobStore::enqueue_signal`](super::JobStore::enqueue_signal).
///
/// # Time
///
/// Every judgment against "now" (lease expiry, claim due times and staleness,
/// retry and snooze delays, promotion, retention) is made on the **server's**
/// clock: each statement that needs the time computes it as
/// `COALESCE($n::bigint, <server now in ms>)`, where the server's now is
/// PostgreSQL's `now()`, the start of the statement's transaction (so one
/// transaction sees one time). Callers pass only durations, so no client's wall
/// clock reaches a stored time. The `$n` parameter is `NULL` in production; a
/// test hands the store a clock with [`PostgresOptions::clock`], and then every
/// statement of a call gets that clock's reading, taken once per call, in its
/// place, which lets the conformance suite judge PostgreSQL reply by reply
/// against [`MemStorage`](super::MemStorage) at times it decides. Where the
/// model's rules run in Rust on a locked row, the same expression comes back
/// with the row (or from the transaction's first statement).
///
/// Job ids come from a counter row, not a sequence: sequences skip values on
/// rollback and on `ON CONFLICT`, and the model hands out 1, 2, 3, ... with no gaps.
/// Strings that callers choose freely (lease names, holders, owners, unique keys)
/// are stored as `BYTEA`, because `TEXT` cannot hold the NUL character the model
/// accepts.
pub struct PostgresStorage {
    pool: Pool,
    schema: String,
    /// The `NOTIFY` channel of this schema's enqueues.
    channel: String,
    signal: Option<Arc<tokio::sync::Notify>>,
    /// Stops the listener task when the storage is dropped.
    _listener: Option<DropGuard>,
    /// Claims and completions, batched (`batch.rs`).
    batcher: batch::Batcher,
    /// [`PostgresOptions::clock`]: `None` judges on the server's `now()`.
    clock: Option<SharedClock>,
}

impl std::fmt::Debug for PostgresStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStorage")
            .field("schema", &self.schema)
            .field("listen", &self.signal.is_some())
            .finish_non_exhaustive()
    }
}

impl PostgresStorage {
    /// Connect with default [`PostgresOptions`] (schema `public`).
    pub async fn connect(url: &str) -> Result<PostgresStorage, OpenError> {
        Self::connect_with(url, PostgresOptions::new()).await
    }

    /// Connect to `url` (a `postgres://` URL or a `key=value` string), create
    /// `options.schema` if missing and migrate it, and start the listener.
    pub async fn connect_with(
        url: &str,
        options: PostgresOptions,
    ) -> Result<PostgresStorage, OpenError> {
        options.validate()?;
        let target = redact_password(url);
        let mut config: tokio_postgres::Config =
            url.parse().map_err(|e| OpenError::InvalidConfig {
                what: "url",
                reason: error_chain(&e),
            })?;
        // Quoted, so the search path keeps the schema's case.
        config.options(format!("-c search_path=\"{}\"", options.schema));
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT_DEFAULT);
        }
        let manager = Manager::from_config(
            config.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(options.pool_size)
            .build()
            .map_err(|e| OpenError::Backend {
                target: target.clone(),
                reason: error_chain(&e),
            })?;
        let mut client = pool.get().await.map_err(|e| OpenError::Unreachable {
            target: target.clone(),
            reason: error_chain(&e),
        })?;
        let where_ = format!("schema {} of {target}", options.schema);
        schema::migrate(&mut client, &options.schema, &where_, options.migrate).await?;
        drop(client);
        let channel = channel_name(&options.schema);
        let (signal, listener) = if options.listen {
            let notify = Arc::new(tokio::sync::Notify::new());
            let guard = listen::start(config, channel.clone(), notify.clone())
                .await
                .map_err(|reason| OpenError::Unreachable {
                    target: target.clone(),
                    reason,
                })?;
            (Some(notify), Some(guard))
        } else {
            (None, None)
        };
        Ok(PostgresStorage {
            batcher: batch::Batcher::start(pool.clone(), options.delete_completed),
            pool,
            schema: options.schema,
            channel,
            signal,
            _listener: listener,
            clock: options.clock,
        })
    }

    /// The newest schema version this library knows (and `connect` migrates to).
    pub fn schema_version_supported() -> i64 {
        schema::version_supported()
    }

    /// The schema this storage lives in.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// Drop this storage's schema and everything in it. Destructive; meant for
    /// tests that each made a schema of their own.
    pub async fn drop_schema(&self) -> StorageResult<()> {
        let client = self.client().await?;
        let sql = format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.schema);
        client
            .batch_execute(&sql)
            .await
            .map_err(|e| map_error(Fail::Pg(e)))
    }

    /// The time one call is judged at, as the `$n` of [`now_sql`]: the test
    /// clock's reading ([`PostgresOptions::clock`]), or `None` for the server's
    /// `now()`. Read once per call, and passed to each of its statements.
    fn now_param(&self) -> NowParam {
        self.clock.as_ref().map(|clock| clock.now().0)
    }

    /// A pooled connection; failing to get one means nothing was sent.
    async fn client(&self) -> StorageResult<deadpool_postgres::Object> {
        self.pool
            .get()
            .await
            .map_err(|e| StorageError::Unavailable(error_chain(&e)))
    }
}

/// Where a statement's "now" comes from: `Some(ms)` a test clock's reading,
/// `None` the server's (see the module docs, "Time").
pub(super) type NowParam = Option<i64>;

/// The server's time in milliseconds since the Unix epoch: `now()`, the start
/// of the current transaction.
const SERVER_NOW_MS: &str = "floor(extract(epoch from now()) * 1000)::bigint";

/// The SQL of "now" in ms for a statement whose parameter `$n` is a
/// [`NowParam`]: the test clock's reading if set, else the server's time.
pub(super) fn now_sql(n: usize) -> String {
    now_from(&format!("${n}::bigint"))
}

/// [`now_sql`] for a [`NowParam`] that the SQL expression `source` yields (a
/// column of an array the statement unnests, say).
pub(super) fn now_from(source: &str) -> String {
    format!("COALESCE({source}, {SERVER_NOW_MS})")
}

/// A duration in whole milliseconds, saturating: what SQL adds to or subtracts
/// from a time, as [`Timestamp::plus`] and [`Timestamp::minus`] do.
pub(super) fn sql_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// SQL for `at + ms` (both `bigint`, `ms` not negative), saturating at the
/// largest `bigint` as [`Timestamp::plus`] does instead of failing.
pub(super) fn plus_sql(at: &str, ms: &str) -> String {
    format!("(LEAST({at}, 9223372036854775807 - {ms}) + {ms})")
}

/// Read the time statement `$1` of a call is judged at (a [`NowParam`]), for
/// rules that run in Rust; in a transaction, later statements see the same.
pub(super) async fn read_now<C: deadpool_postgres::GenericClient>(
    client: &C,
    now: NowParam,
) -> Result<Timestamp, Fail> {
    let sql = format!("SELECT {}", now_sql(1));
    let statement = client.prepare_cached(&sql).await?;
    let row = client.query_one(&statement, &[&now]).await?;
    Ok(Timestamp(row.try_get(0)?))
}

/// The `NOTIFY` channel for `schema`: per schema, so deployments sharing a
/// database do not wake each other. Fits PostgreSQL's 63-byte channel names.
fn channel_name(schema: &str) -> String {
    let name = format!("keel_jobs_{schema}");
    if name.len() <= IDENTIFIER_LEN_MAX {
        return name;
    }
    // FNV-1a: stable across processes, unlike std's hasher.
    let hash = schema.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("keel_jobs_{hash:016x}")
}

/// `url` with any password removed, for error messages and logs.
fn redact_password(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://") {
        let (authority, tail) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
        let authority = match authority.rsplit_once('@') {
            Some((userinfo, hosts)) => {
                let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
                format!("{user}@{hosts}")
            }
            None => authority.to_owned(),
        };
        let tail = match tail.split_once('?') {
            Some((path, query)) => {
                let kept: Vec<&str> = query
                    .split('&')
                    .filter(|kv| !kv.starts_with("password="))
                    .collect();
                if kept.is_empty() {
                    path.to_owned()
                } else {
                    format!("{path}?{}", kept.join("&"))
                }
            }
            None => tail.to_owned(),
        };
        return format!("{scheme}://{authority}{tail}");
    }
    // key=value form; a quoted password may hold spaces, so skip to its closing quote.
    let mut out = String::new();
    let mut rest = url.trim_start();
    while !rest.is_empty() {
        let is_password = rest.starts_with("password");
        let end = value_end(rest);
        if !is_password {
            let _ = write!(
                out,
                "{}{}",
                if out.is_empty() { "" } else { " " },
                &rest[..end]
            );
        }
        rest = rest[end..].trim_start();
    }
    out
}

/// Where the `key=value` pair at the start of `s` ends (after a quoted value's
/// closing quote, honouring backslash escapes).
fn value_end(s: &str) -> usize {
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '\'' => quoted = !quoted,
            c if c.is_whitespace() && !quoted => return i,
            _ => {}
        }
    }
    s.len()
}

/// An error and its sources, joined: the driver's top-level messages alone say
/// little ("db error", "error connecting to server").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            let _ = write!(out, ": {text}");
        }
        source = s.source();
    }
    out
}

/// Why a transaction body failed.
#[derive(Debug)]
pub(super) enum Fail {
    /// A statement failed; the transaction was not committed.
    Pg(tokio_postgres::Error),
    /// `COMMIT` itself failed; the outcome may be unknown.
    Commit(tokio_postgres::Error),
    /// A row held a value the model cannot represent.
    Corrupt(String),
}

impl From<tokio_postgres::Error> for Fail {
    fn from(e: tokio_postgres::Error) -> Self {
        Fail::Pg(e)
    }
}

/// Whether a failed transaction may simply be run again.
fn is_retryable(fail: &Fail) -> bool {
    let (Fail::Pg(e) | Fail::Commit(e)) = fail else {
        return false;
    };
    matches!(
        e.code(),
        Some(c) if *c == SqlState::T_R_SERIALIZATION_FAILURE || *c == SqlState::T_R_DEADLOCK_DETECTED
    )
}

/// A driver error as the storage seam names it.
///
/// A statement that failed before `COMMIT` was sent cannot have been applied: the
/// server rolls back an open transaction when its connection goes, so a lost
/// connection there is `Unavailable`. Only a lost `COMMIT` is `Ambiguous`.
fn map_error(fail: Fail) -> StorageError {
    match fail {
        Fail::Corrupt(msg) => StorageError::Backend(format!("corrupt row: {msg}")),
        Fail::Pg(e) => match e.as_db_error() {
            Some(db) => StorageError::Backend(format!("{} ({})", db.message(), db.code().code())),
            None => StorageError::Unavailable(error_chain(&e)),
        },
        Fail::Commit(e) => match e.as_db_error() {
            Some(db) => StorageError::Backend(format!("{} ({})", db.message(), db.code().code())),
            None => StorageError::Ambiguous(format!("commit: {}", error_chain(&e))),
        },
    }
}

/// Run `$body` in a transaction on a pooled connection named `$tx`, commit, and
/// retry the whole transaction on serialization failures and deadlocks. The body
/// evaluates to `Result<T, Fail>`-compatible code using `?`.
macro_rules! transact {
    ($storage:expr, |$tx:ident| $body:expr) => {{
        let mut tries = 0u32;
        loop {
            tries += 1;
            let mut client = $storage.client().await?;
            let result: Result<_, $crate::storage::postgres::Fail> = async {
                let $tx = client.transaction().await?;
                let value = $body;
                $tx.commit()
                    .await
                    .map_err($crate::storage::postgres::Fail::Commit)?;
                Ok(value)
            }
            .await;
            match result {
                Ok(value) => break Ok(value),
                Err(fail)
                    if tries < $crate::storage::postgres::TX_TRIES_MAX
                        && $crate::storage::postgres::is_retryable(&fail) =>
                {
                    continue
                }
                Err(fail) => break Err($crate::storage::postgres::map_error(fail)),
            }
        }
    }};
}
pub(super) use transact;

/// Run one read-only statement block on a pooled connection, outside a
/// transaction: it sees committed state, and a failure changed nothing.
macro_rules! read {
    ($storage:expr, |$client:ident| $body:expr) => {{
        let $client = $storage.client().await?;
        let result: Result<_, $crate::storage::postgres::Fail> = async { Ok($body) }.await;
        result.map_err($crate::storage::postgres::map_error)
    }};
}
pub(super) use read;
