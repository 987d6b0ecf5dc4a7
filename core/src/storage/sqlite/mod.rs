//! SQLite storage: the embedded default, one file, bundled SQLite.
//!
//! Two types over one SQL core:
//!
//! * [`SqliteEngine`] is the core: synchronous and deterministic. Its trait
//!   methods never wait; each runs one transaction on the calling thread and
//!   returns. The simulator serves it (in memory) from its database host, so the
//!   SQL that production runs is the SQL the simulator beats on.
//! * [`SqliteStorage`] is what a service embeds: the same engine on a thread of
//!   its own, so queries never block the async worker threads.
//!
//! ```no_run
//! # async fn demo() -> Result<(), keel::storage::OpenError> {
//! use keel::storage::SqliteStorage;
//! let storage = SqliteStorage::open("jobs.db").await?;
//! # Ok(()) }
//! ```
//!
//! # Files, locks and durability
//!
//! The file is in WAL mode, so readers never wait for the writer. Every change
//! takes the write lock up front (`BEGIN IMMEDIATE`), so two processes on one
//! file never deadlock upgrading a read lock; a process that cannot get the lock
//! within the busy timeout gets [`StorageError::Unavailable`] (nothing was
//! applied), and its caller retries. Several processes may share one file.
//!
//! # Time
//!
//! Time comes from the engine's [`Clock`](crate::clock::Clock): the machine's
//! wall clock ([`SystemClock`]) by default, or the one [`SqliteOptions::clock`]
//! names (the simulator passes its database host's clock, tests a
//! [`ManualClock`](crate::clock::ManualClock)). Never from SQLite, and never
//! from the caller: callers pass durations (a lease's ttl, a staleness window, a
//! retry delay). Each call reads the clock once, when it holds the database's
//! write lock (a read: at its start), and judges every stored time against that
//! one reading. Processes sharing a file should share a clock too; on one
//! machine they do.

mod admin;
mod schema;
mod store;
#[cfg(test)]
mod tests;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::config::DbConfig;
use rusqlite::{Connection, ErrorCode, OpenFlags};

use super::ops::{Op, Remote, Reply, Transport};
use super::{poll_ready, OpenError, StorageError, StorageResult};
use crate::clock::{SharedClock, SystemClock, Timestamp};

pub use schema::SCHEMA_VERSION;

/// How long a call waits for another process's write lock before giving up.
pub const BUSY_TIMEOUT_DEFAULT: Duration = Duration::from_secs(5);

/// How long the storage thread of a [`SqliteStorage`] polls for its next call
/// before it sleeps: about the time a busy worker takes between a reply and its
/// next call, so under load the thread rarely sleeps, and idle it spins this
/// long once per call.
pub const IDLE_SPIN_DEFAULT: Duration = Duration::from_micros(100);

/// How hard SQLite works to keep a commit across a power loss.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Durability {
    /// Sync the log on every commit: an acknowledged enqueue survives a power
    /// loss. The default.
    #[default]
    Full,
    /// Sync at checkpoints only: survives a process crash, may lose the last
    /// commits on power loss. Faster.
    Normal,
}

/// Settings for opening a SQLite database.
#[derive(Clone)]
pub struct SqliteOptions {
    busy_timeout: Duration,
    durability: Durability,
    idle_spin: Duration,
    clock: SharedClock,
    migrate: bool,
}

impl fmt::Debug for SqliteOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteOptions")
            .field("busy_timeout", &self.busy_timeout)
            .field("durability", &self.durability)
            .field("idle_spin", &self.idle_spin)
            .finish_non_exhaustive()
    }
}

impl Default for SqliteOptions {
    fn default() -> Self {
        Self {
            busy_timeout: BUSY_TIMEOUT_DEFAULT,
            durability: Durability::Full,
            idle_spin: IDLE_SPIN_DEFAULT,
            clock: Arc::new(SystemClock::new()),
            migrate: true,
        }
    }
}

impl SqliteOptions {
    /// Whether opening creates the file and migrates its schema (the default).
    /// Off, a missing file is an error and an older schema is refused with
    /// [`OpenError::SchemaTooOld`], changing nothing: what an operator's tool
    /// wants from a database its services own.
    pub fn migrate(mut self, on: bool) -> Self {
        self.migrate = on;
        self
    }

    /// Wait up to `timeout` for another process's lock.
    pub fn busy_timeout(mut self, timeout: Duration) -> Self {
        self.busy_timeout = timeout;
        self
    }

    /// Choose the commit durability.
    pub fn durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// How long [`SqliteStorage`]'s thread polls for its next call before it
    /// sleeps ([`IDLE_SPIN_DEFAULT`]); zero never polls, trading throughput
    /// under load for no CPU spent waiting. Not used on a machine with one CPU,
    /// where polling would keep the caller from making the call.
    pub fn idle_spin(mut self, spin: Duration) -> Self {
        self.idle_spin = spin;
        self
    }

    /// Storage's clock: the time every stored time is judged against (lease
    /// expiry, claim staleness, due times, retention). The machine's wall clock
    /// ([`SystemClock`]) by default; the simulator passes its database host's
    /// clock, tests a [`ManualClock`](crate::clock::ManualClock).
    pub fn clock(mut self, clock: SharedClock) -> Self {
        self.clock = clock;
        self
    }
}

/// The synchronous SQL core. See the [module docs](self).
pub struct SqliteEngine {
    conn: Mutex<Connection>,
    /// Set while [`execute_group`](Self::execute_group) holds one transaction
    /// open across several calls.
    grouped: AtomicBool,
    /// Storage's clock: every stored time is judged against it.
    clock: SharedClock,
}

impl fmt::Debug for SqliteEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteEngine")
            .field("conn", &self.conn)
            .field("grouped", &self.grouped)
            .finish_non_exhaustive()
    }
}

impl SqliteEngine {
    /// Open (creating if absent) the database at `path` and migrate it.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, OpenError> {
        Self::open_with(path, SqliteOptions::default())
    }

    /// [`open`](Self::open) with settings.
    pub fn open_with(path: impl AsRef<Path>, options: SqliteOptions) -> Result<Self, OpenError> {
        let path = path.as_ref();
        let target = path.display().to_string();
        if target.is_empty() {
            return Err(OpenError::InvalidConfig {
                what: "path",
                reason: "empty; name a database file".into(),
            });
        }
        let create = if options.migrate {
            OpenFlags::SQLITE_OPEN_CREATE
        } else {
            OpenFlags::empty()
        };
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | create
            | OpenFlags::SQLITE_OPEN_URI
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn =
            Connection::open_with_flags(path, flags).map_err(|e| OpenError::Unreachable {
                target: target.clone(),
                reason: e.to_string(),
            })?;
        Self::prepare(conn, &target, &options, true)
    }

    /// A private in-memory database (for the simulator and tests), on the
    /// machine's wall clock.
    pub fn in_memory() -> Result<Self, OpenError> {
        Self::in_memory_with(SqliteOptions::default())
    }

    /// [`in_memory`](Self::in_memory) with settings: the simulator passes its
    /// database host's [`clock`](SqliteOptions::clock).
    pub fn in_memory_with(options: SqliteOptions) -> Result<Self, OpenError> {
        let conn = Connection::open_in_memory().map_err(|e| OpenError::Backend {
            target: ":memory:".into(),
            reason: e.to_string(),
        })?;
        Self::prepare(conn, ":memory:", &options, false)
    }

    fn prepare(
        mut conn: Connection,
        target: &str,
        options: &SqliteOptions,
        file: bool,
    ) -> Result<Self, OpenError> {
        let fail = |e: rusqlite::Error| open_error(target, e);
        if conn.is_readonly(rusqlite::MAIN_DB).map_err(fail)? {
            return Err(OpenError::ReadOnly {
                target: target.into(),
                reason: "opened read-only; Keel writes to its database".into(),
            });
        }
        conn.busy_timeout(options.busy_timeout).map_err(fail)?;
        schema::check_and_migrate(&mut conn, target, options.migrate)?;
        if file {
            let mode: String = conn
                .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
                .map_err(fail)?;
            if !mode.eq_ignore_ascii_case("wal") {
                return Err(OpenError::Backend {
                    target: target.into(),
                    reason: format!("cannot switch to WAL mode (got {mode})"),
                });
            }
        }
        let sync = match options.durability {
            Durability::Full => "FULL",
            Durability::Normal => "NORMAL",
        };
        conn.execute_batch(&format!(
            "PRAGMA synchronous = {sync}; PRAGMA foreign_keys = ON;"
        ))
        .map_err(fail)?;
        // One plan per statement, whatever is bound. Without this SQLite (built
        // with STAT4) marks the claim query as depending on its bound LIMIT and
        // due time, and re-parses it on every call: a fifth of a claim's cost.
        conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)
            .map_err(fail)?;
        Ok(Self {
            conn: Mutex::new(conn),
            grouped: AtomicBool::new(false),
            clock: options.clock.clone(),
        })
    }

    /// Storage's clock, now.
    fn now(&self) -> Timestamp {
        self.clock.now()
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves no half-applied change behind:
        // the open transaction rolls back when its guard drops.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Run `f` in a write transaction (taking the write lock up front) and
    /// commit; any error rolls back, so nothing is half applied. Inside a group
    /// ([`execute_group`](Self::execute_group)) it is a savepoint of the group's
    /// transaction instead, rolled back alone on error.
    fn write<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> StorageResult<T> {
        let conn = self.conn();
        let scope = if self.grouped.load(Ordering::SeqCst) {
            Scope::SAVEPOINT
        } else {
            Scope::WRITE
        };
        scope.run(&conn, f).map_err(storage_error)
    }

    /// [`write`](Self::write) with storage's now, read once when the write lock
    /// is held: every stored time the call compares or writes is judged against
    /// that one reading, and a call that waited for another process's lock
    /// does not act on a time from before it waited.
    fn write_now<T>(
        &self,
        f: impl FnOnce(&Connection, Timestamp) -> rusqlite::Result<T>,
    ) -> StorageResult<T> {
        self.write(|tx| f(tx, self.now()))
    }

    /// Run `f` on a consistent snapshot (inside a group: the group's own).
    fn read<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> StorageResult<T> {
        let conn = self.conn();
        if self.grouped.load(Ordering::SeqCst) {
            return f(&conn).map_err(storage_error);
        }
        Scope::READ.run(&conn, f).map_err(storage_error)
    }

    /// [`execute_joined`](Self::execute_joined) over a fixed list of calls.
    #[cfg(test)]
    pub(crate) fn execute_group(&self, ops: Vec<Op>) -> Vec<Reply> {
        let mut ops = ops.into_iter().map(|op| (op, ()));
        let Some(first) = ops.next() else {
            return Vec::new();
        };
        self.execute_joined(first, || ops.next())
            .into_iter()
            .map(|((), reply)| reply)
            .collect()
    }

    /// Apply `first` and then whatever `more` yields (asked again after each
    /// call, at most [`GROUP_CALLS_MAX`] in all) in order in one transaction
    /// (group commit): each call is atomic on its own (a savepoint), and all
    /// become durable in one commit, so calls that arrive while the group runs
    /// pay for one log write instead of one each. Replies, each beside the tag
    /// its call came with, are only handed out after that commit; if it fails,
    /// every call in the group fails and none was applied.
    ///
    /// Crate-private: while a group runs, every call on this engine joins it, so
    /// only the storage thread, the engine's one caller, may group.
    pub(crate) fn execute_joined<T>(
        &self,
        first: (Op, T),
        mut more: impl FnMut() -> Option<(Op, T)>,
    ) -> Vec<(T, Reply)> {
        if first.0.is_read() {
            // A read takes no write lock: another process may hold it.
            let (op, tag) = first;
            return vec![(tag, self.execute(op))];
        }
        if let Err(e) = control(&self.conn(), Scope::WRITE.begin) {
            // Nothing was applied. Only this call fails: the ones queued behind
            // it have not been tried, and the lock may be free by their turn.
            return vec![(first.1, Reply::Err(storage_error(e)))];
        }
        // Even a lone call opens a group: the calls that arrive while it runs
        // (a busy worker's next call comes within tens of microseconds) share
        // its commit instead of each waiting for one of their own.
        self.grouped.store(true, Ordering::SeqCst);
        let mut replies = Vec::new();
        let mut call = Some(first);
        while let Some((op, tag)) = call.take() {
            replies.push((tag, self.execute(op)));
            if replies.len() < GROUP_CALLS_MAX {
                call = more();
            }
        }
        self.grouped.store(false, Ordering::SeqCst);
        let conn = self.conn();
        match control(&conn, Scope::WRITE.commit) {
            Ok(()) => replies,
            Err(e) => {
                // Nothing of the group is applied; say so to every caller.
                let _ = conn.execute_batch(Scope::WRITE.rollback);
                let error = storage_error(e);
                replies
                    .into_iter()
                    .map(|(tag, _)| (tag, Reply::Err(error.clone())))
                    .collect()
            }
        }
    }

    /// Apply one storage call, synchronously.
    pub fn execute(&self, op: Op) -> Reply {
        poll_ready(super::ops::apply_admin(self, op)).unwrap_or_else(|| {
            Reply::Err(StorageError::Backend(
                "the SQLite engine waited; its calls must complete at once".into(),
            ))
        })
    }
}

/// One transaction or savepoint shape: how it begins, commits and rolls back.
///
/// rusqlite's own `Transaction` and `Savepoint` re-parse their control
/// statements on every use; these go through the statement cache instead,
/// which took a quarter off each write.
struct Scope {
    begin: &'static str,
    commit: &'static str,
    rollback: &'static str,
}

impl Scope {
    /// A write transaction that takes the write lock up front.
    const WRITE: Scope = Scope {
        begin: "BEGIN IMMEDIATE",
        commit: "COMMIT",
        rollback: "ROLLBACK",
    };
    /// A read snapshot.
    const READ: Scope = Scope {
        begin: "BEGIN DEFERRED",
        commit: "COMMIT",
        rollback: "ROLLBACK",
    };
    /// One call inside a group's transaction, undone alone on error.
    const SAVEPOINT: Scope = Scope {
        begin: "SAVEPOINT keel_call",
        commit: "RELEASE keel_call",
        rollback: "ROLLBACK TO keel_call; RELEASE keel_call",
    };

    /// Runs `f` inside this scope: committed if `f` succeeds, rolled back if it
    /// fails or panics, so nothing is ever half applied.
    fn run<T>(
        &self,
        conn: &Connection,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<T> {
        control(conn, self.begin)?;
        let mut undo = Undo(conn, Some(self.rollback));
        let value = f(conn)?;
        control(conn, self.commit)?;
        undo.1 = None;
        Ok(value)
    }
}

/// Runs its rollback statement when dropped while still armed: the scope it
/// guards ended in an error or a panic before it committed.
struct Undo<'c>(&'c Connection, Option<&'static str>);

impl Drop for Undo<'_> {
    fn drop(&mut self) {
        if let Some(rollback) = self.1 {
            // Nothing to report to: the caller already has the error.
            let _ = self.0.execute_batch(rollback);
        }
    }
}

/// Runs a transaction-control statement through the statement cache.
fn control(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(|_| ())
}

/// A storage engine error as the caller sees it. Busy means another process held
/// the write lock past the timeout: the transaction never started, so nothing
/// was applied and the call is safe to retry.
fn storage_error(e: rusqlite::Error) -> StorageError {
    match e.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
            StorageError::Unavailable(format!("database is locked by another process: {e}"))
        }
        _ => StorageError::Backend(e.to_string()),
    }
}

fn open_error(target: &str, e: rusqlite::Error) -> OpenError {
    let target = target.to_owned();
    let reason = e.to_string();
    match e.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
            OpenError::Locked { target, reason }
        }
        Some(ErrorCode::ReadOnly) => OpenError::ReadOnly { target, reason },
        Some(ErrorCode::NotADatabase) => OpenError::NotKeel { target, reason },
        Some(ErrorCode::CannotOpen | ErrorCode::PermissionDenied) => {
            OpenError::Unreachable { target, reason }
        }
        _ => OpenError::Backend { target, reason },
    }
}

/// SQLite storage for services: the [`SqliteEngine`] on a thread of its own.
///
/// Every call is sent to that thread and answered there, so a slow disk never
/// stalls the async runtime. Dropping the last handle closes the database.
pub type SqliteStorage = Remote<SqliteThread>;

/// The thread a [`SqliteStorage`] sends its calls to.
#[derive(Debug)]
pub struct SqliteThread {
    calls: Mutex<mpsc::Sender<Call>>,
    path: PathBuf,
}

type Call = (Op, tokio::sync::oneshot::Sender<Reply>);

/// Most calls one group commit takes: enough to cover every worker of a busy
/// node, few enough that the write lock is never held for long.
const GROUP_CALLS_MAX: usize = 64;

/// The next call for the storage thread: polled for up to `spin`, then waited
/// for asleep; `None` once every handle is dropped.
///
/// A busy worker's next call comes tens of microseconds after its reply. Were
/// the thread asleep by then, each call would pay for waking it (a futex wake,
/// and in a VM an interrupt to another CPU) and the group it would have joined
/// would already be committed; polling a little first (with calls joining the
/// running group) took 4 SQLite workers from about 20k to about 28k jobs/s on
/// 2 cores.
#[allow(clippy::disallowed_methods)] // determinism-ok: the production SQLite thread, never simulated
fn next_call(calls: &mpsc::Receiver<Call>, spin: Duration) -> Option<Call> {
    if !spin.is_zero() {
        let until = std::time::Instant::now() + spin;
        loop {
            match calls.try_recv() {
                Ok(call) => return Some(call),
                Err(mpsc::TryRecvError::Disconnected) => return None,
                Err(mpsc::TryRecvError::Empty) if std::time::Instant::now() >= until => break,
                Err(mpsc::TryRecvError::Empty) => std::hint::spin_loop(),
            }
        }
    }
    calls.recv().ok()
}

impl Remote<SqliteThread> {
    /// Open (creating if absent) the database at `path` and migrate it.
    pub async fn open(path: impl AsRef<Path>) -> Result<SqliteStorage, OpenError> {
        Self::open_with(path, SqliteOptions::default()).await
    }

    /// [`open`](Self::open) with settings.
    pub async fn open_with(
        path: impl AsRef<Path>,
        options: SqliteOptions,
    ) -> Result<SqliteStorage, OpenError> {
        let path = path.as_ref().to_path_buf();
        let (opened_tx, opened_rx) = tokio::sync::oneshot::channel();
        let (calls_tx, calls_rx) = mpsc::channel::<Call>();
        let thread_path = path.clone();
        // The one thread that owns the connection: SQLite serialises writers
        // anyway, and one owner means no connection is ever shared.
        #[allow(clippy::disallowed_methods)]
        let spawned = std::thread::Builder::new()
            .name("keel-sqlite".into())
            .spawn(move || {
                let engine = match SqliteEngine::open_with(&thread_path, options.clone()) {
                    Ok(engine) => {
                        let _ = opened_tx.send(Ok(()));
                        engine
                    }
                    Err(e) => {
                        let _ = opened_tx.send(Err(e));
                        return;
                    }
                };
                // Spinning only pays when another CPU can make the next call
                // meanwhile; on one CPU it would keep the caller off it.
                let one_cpu = std::thread::available_parallelism().map_or(true, |n| n.get() < 2);
                let spin = if one_cpu {
                    Duration::ZERO
                } else {
                    options.idle_spin
                };
                while let Some(first) = next_call(&calls_rx, spin) {
                    // Calls queued meanwhile, and calls that arrive while the
                    // group runs, join this call's transaction: one commit.
                    let group = engine.execute_joined(first, || calls_rx.try_recv().ok());
                    for (reply, result) in group {
                        // The caller may have given up (a timeout); the call still
                        // ran, exactly as a lost reply on a network would.
                        let _ = reply.send(result);
                    }
                }
            });
        if let Err(e) = spawned {
            return Err(OpenError::Backend {
                target: path.display().to_string(),
                reason: format!("cannot start the SQLite thread: {e}"),
            });
        }
        match opened_rx.await {
            Ok(Ok(())) => Ok(Remote(SqliteThread {
                calls: Mutex::new(calls_tx),
                path,
            })),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(OpenError::Backend {
                target: path.display().to_string(),
                reason: "the SQLite thread stopped while opening".into(),
            }),
        }
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.0.path
    }
}

#[async_trait]
impl Transport for SqliteThread {
    async fn call(&self, op: Op) -> StorageResult<Reply> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let sent = self
            .calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send((op, tx));
        if sent.is_err() {
            return Err(StorageError::Unavailable(
                "the SQLite thread has stopped".into(),
            ));
        }
        rx.await.map_err(|_| {
            StorageError::Ambiguous("the SQLite thread stopped during the call".into())
        })
    }
}
