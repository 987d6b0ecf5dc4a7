//! The one list of storage engines the conformance suite and the model test run
//! against. Both test binaries build their trials from [`EngineKind::ALL`], so an
//! engine is added (or made runnable) here and nowhere else.
//!
//! An engine that cannot run here (not wired yet, or its server is not
//! configured) still gets its trials, marked ignored, so the run lists them by
//! name as ignored and never as passed.
//!
//! Every engine is opened on a clock the test hands it (a
//! [`ManualClock`](keel::clock::ManualClock)): storage judges every stored time
//! against its own clock, never the caller's, so engines compared side by side
//! must read the same one. PostgreSQL gets it through
//! [`PostgresOptions::clock`](keel::storage::PostgresOptions::clock) instead of
//! judging on the server's `now()`.
//!
//! Every engine serves the operator's calls too ([`AdminStorage`]), so both
//! suites hold those to the model as well.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use keel::clock::SharedClock;
use keel::storage::{AdminStorage, MemStorage, PostgresOptions, SqliteOptions};
use libtest_mimic::{Failed, Trial};

/// The environment variable naming the PostgreSQL server the tests may use.
pub const PG_URL_ENV: &str = "KEEL_PG_URL";

/// Every storage engine under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EngineKind {
    /// The reference model itself (`MemStorage::with_clock`): the suite must
    /// pass on it by definition.
    Mem,
    /// `SqliteEngine::in_memory_with(options)`.
    Sqlite,
    /// `SqliteStorage::open_with(path, options)` on a fresh file.
    SqliteFile,
    /// `PostgresStorage` on a fresh schema of the server at `KEEL_PG_URL`, on
    /// the test's clock rather than the server's.
    Postgres,
}

impl EngineKind {
    /// Every engine, in the order their trials are listed.
    pub const ALL: [EngineKind; 4] = [
        EngineKind::Mem,
        EngineKind::Sqlite,
        EngineKind::SqliteFile,
        EngineKind::Postgres,
    ];

    /// The trial name prefix: `mem::finalize_is_idempotent`.
    pub fn name(self) -> &'static str {
        match self {
            EngineKind::Mem => "mem",
            EngineKind::Sqlite => "sqlite",
            EngineKind::SqliteFile => "sqlite_file",
            EngineKind::Postgres => "postgres",
        }
    }

    /// Why this engine cannot run here, or `None` when it can.
    pub fn unavailable(self) -> Option<String> {
        match self {
            EngineKind::Mem => None,
            // ENGINES: return None once the arm in `open` is wired.
            EngineKind::Sqlite | EngineKind::SqliteFile => None,
            EngineKind::Postgres => match std::env::var(PG_URL_ENV) {
                Err(_) => Some(format!("{PG_URL_ENV} is unset")),
                Ok(_) => None,
            },
        }
    }

    /// Proptest cases the model test runs against this engine; each case opens
    /// a fresh store, so the server engines get fewer.
    #[allow(dead_code)] // Only the model test uses it.
    pub fn model_cases(self) -> u32 {
        match self {
            EngineKind::Mem | EngineKind::Sqlite | EngineKind::SqliteFile => 256,
            EngineKind::Postgres => 24,
        }
    }

    /// A fresh, empty store for the test called `test` (unique per process, so
    /// an engine may derive a file name or schema from it), judging time on
    /// `clock`: hand every engine of one comparison the same clock.
    pub async fn open(self, test: &str, clock: SharedClock) -> Result<SharedStorage, String> {
        let _ = test;
        match self {
            EngineKind::Mem => Ok(Arc::new(MemStorage::with_clock(clock))),
            EngineKind::Sqlite => {
                keel::storage::SqliteEngine::in_memory_with(SqliteOptions::default().clock(clock))
                    .map(|e| Arc::new(e) as SharedStorage)
                    .map_err(|e| e.to_string())
            }
            EngineKind::SqliteFile => {
                let dir = scratch_dir();
                std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
                // A new file per open: the model test opens thousands.
                let n = FILES.fetch_add(1, Ordering::Relaxed);
                let path = dir.join(format!("{n}.db"));
                keel::storage::SqliteStorage::open_with(
                    &path,
                    SqliteOptions::default().clock(clock),
                )
                .await
                .map(|s| Arc::new(s) as SharedStorage)
                .map_err(|e| e.to_string())
            }
            EngineKind::Postgres => {
                let url = std::env::var(PG_URL_ENV).map_err(|e| e.to_string())?;
                // One schema per open, so runs and cases never see each other;
                // PostgreSQL names are at most 63 bytes, so a counter, not the name.
                let n = FILES.fetch_add(1, Ordering::Relaxed);
                let schema = format!("keel_t{}_{n}", std::process::id());
                let options = PostgresOptions::new()
                    .pool_size(2)
                    .listen(false)
                    .clock(clock);
                SCHEMAS
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(schema.clone());
                keel::storage::PostgresStorage::connect_with(&url, options.schema(schema))
                    .await
                    .map(|s| Arc::new(s) as SharedStorage)
                    .map_err(|e| e.to_string())
            }
        }
    }
}

/// A store under test: the runtime's calls and the operator's.
pub type SharedStorage = Arc<dyn AdminStorage>;

static FILES: AtomicU64 = AtomicU64::new(0);

/// Where this process keeps its SQLite files.
fn scratch_dir() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("keel-tests-{}", std::process::id()))
}

/// Every PostgreSQL schema this process made, to be dropped at the end. (The
/// stores themselves die with their trial's runtime.)
static SCHEMAS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// Remove this process's SQLite files and PostgreSQL schemas; call once every
/// trial has run.
pub fn cleanup() {
    let _ = std::fs::remove_dir_all(scratch_dir());
    let schemas = std::mem::take(&mut *SCHEMAS.lock().unwrap_or_else(|p| p.into_inner()));
    let Ok(url) = std::env::var(PG_URL_ENV) else {
        return;
    };
    block_on(async {
        for schema in schemas {
            let options = PostgresOptions::new()
                .schema(schema.clone())
                .pool_size(1)
                .listen(false);
            let dropped = match keel::storage::PostgresStorage::connect_with(&url, options).await {
                Ok(store) => store.drop_schema().await.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            if let Err(e) = dropped {
                eprintln!("cannot drop schema {schema}: {e}");
            }
        }
    });
}

/// Print one line per engine that cannot run, saying why its trials are ignored.
pub fn note_unavailable(binary: &str) {
    for kind in EngineKind::ALL {
        if let Some(why) = kind.unavailable() {
            eprintln!("{binary}: {}::* ignored: {why}", kind.name());
        }
    }
}

/// A trial `engine::case`, ignored when the engine cannot run here. Run with
/// `--include-ignored` anyway, it fails saying why instead of passing.
pub fn trial(
    kind: EngineKind,
    case: &str,
    run: impl FnOnce() -> Result<(), Failed> + Send + 'static,
) -> Trial {
    let unavailable = kind.unavailable();
    let ignored = unavailable.is_some();
    Trial::test(
        format!("{}::{case}", kind.name()),
        move || match unavailable {
            Some(why) => Err(format!("{} cannot run here: {why}", kind.name()).into()),
            None => run(),
        },
    )
    .with_ignored_flag(ignored)
}

/// Run `fut` to completion on a fresh current-thread runtime (one per trial, so
/// trials share nothing).
pub fn block_on<F: Future>(fut: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime builds")
        .block_on(fut)
}
