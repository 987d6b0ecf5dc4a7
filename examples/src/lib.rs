//! Code the example programs share: choosing a storage engine from the command
//! line, and an observer that prints what the runtime does.

use std::path::PathBuf;
use std::sync::Arc;

use keel::events::{Event, Observer};
use keel::storage::{OpenError, PostgresOptions, PostgresStorage, SharedStorage, SqliteStorage};

/// Where the jobs live: a SQLite file (the default) or a PostgreSQL server.
#[derive(Clone, Debug, clap::Args)]
pub struct StoreArgs {
    /// SQLite database file (created if missing).
    #[arg(long, value_name = "PATH", conflicts_with = "postgres")]
    pub sqlite: Option<PathBuf>,
    /// PostgreSQL URL, e.g. postgres://postgres@127.0.0.1:5432/test.
    #[arg(long, value_name = "URL")]
    pub postgres: Option<String>,
    /// PostgreSQL schema to keep keel's tables in (created if missing).
    #[arg(long, value_name = "NAME", requires = "postgres")]
    pub schema: Option<String>,
}

impl StoreArgs {
    /// Open the chosen storage; SQLite at `default_sqlite` when none was chosen.
    /// `pool` caps the PostgreSQL connections of this process.
    pub async fn open(
        &self,
        default_sqlite: &str,
        pool: usize,
    ) -> Result<SharedStorage, OpenError> {
        if let Some(url) = &self.postgres {
            let mut options = PostgresOptions::default().pool_size(pool);
            if let Some(schema) = &self.schema {
                options = options.schema(schema.clone());
            }
            return Ok(Arc::new(PostgresStorage::connect_with(url, options).await?));
        }
        let path = self
            .sqlite
            .clone()
            .unwrap_or_else(|| PathBuf::from(default_sqlite));
        Ok(Arc::new(SqliteStorage::open(path).await?))
    }

    /// What [`open`](Self::open) opens, for messages.
    pub fn describe(&self, default_sqlite: &str) -> String {
        match (&self.postgres, &self.sqlite) {
            (Some(_), _) => "PostgreSQL".to_owned(),
            (None, Some(path)) => format!("SQLite file {}", path.display()),
            (None, None) => format!("SQLite file {default_sqlite}"),
        }
    }
}

/// Prints the events a reader of the examples cares about: jobs starting,
/// ending and being finalized, periodic firings, leadership and shutdown.
/// Renewals and loop ticks are left out; they fire every second.
#[derive(Clone, Copy, Debug, Default)]
pub struct PrintObserver;

impl Observer for PrintObserver {
    fn record(&self, event: &Event) {
        let line = match event {
            Event::TermWon { term, .. } => format!("this node leads now ({term})"),
            Event::HandlerStarted { job, attempt } => format!("{job} attempt {attempt}: started"),
            Event::HandlerEnded {
                job,
                attempt,
                outcome,
            } => format!("{job} attempt {attempt}: {outcome}"),
            Event::JobFinalized {
                job, state, result, ..
            } => format!("{job} -> {} ({result})", state.as_str()),
            Event::JobRescued { job, attempt } => {
                format!("{job} attempt {attempt}: rescued from a dead worker")
            }
            Event::PeriodicFired {
                name,
                job,
                inserted: true,
                ..
            } => format!("periodic {name} enqueued {job}"),
            Event::ShutdownBegan { deadline_ms } => {
                format!("shutting down, deadline {deadline_ms}ms")
            }
            Event::TaskPanicked { task, message } => format!("task {task} panicked: {message}"),
            _ => return,
        };
        println!("  [keel] {line}");
    }
}
