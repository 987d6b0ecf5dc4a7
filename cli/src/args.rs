//! The command line, as clap reads it.

use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use keel::storage::JobState;

/// Inspect and operate a Keel job database.
///
/// The database is `--db FILE` (SQLite), `--url URL` (postgres://... or a
/// SQLite path; `?keel_schema=NAME` picks a PostgreSQL schema), or the
/// KEEL_DATABASE_URL environment variable.
///
/// Exit codes: 0 done; 1 the database failed or could not be reached;
/// 2 bad usage or input; 3 a job named does not exist; 4 a change was
/// refused (the job is running, or already finished); 5 the database needs
/// `keel migrate`, or is not a Keel database this version can use.
#[derive(Debug, Parser)]
#[command(name = "keel", version, max_term_width = 100)]
pub struct Cli {
    /// A SQLite database file.
    #[arg(long, global = true, value_name = "FILE", conflicts_with = "url")]
    pub db: Option<String>,
    /// A database URL: postgres://..., or a SQLite path.
    #[arg(long, global = true, value_name = "URL", env = "KEEL_DATABASE_URL")]
    pub url: Option<String>,
    /// Print JSON (one document per command) instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    /// How long to wait for another process's lock on a SQLite file.
    #[arg(long, global = true, value_name = "MS", default_value_t = 5_000)]
    pub busy_timeout_ms: u64,
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// The busy timeout as a duration.
    pub fn busy_timeout(&self) -> Duration {
        Duration::from_millis(self.busy_timeout_ms)
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create the database or bring its schema up to date; `status` only looks.
    Migrate {
        #[arg(value_enum)]
        action: Option<MigrateAction>,
    },
    /// Every queue with its jobs per state, and whether it is paused.
    Queues,
    /// Pause or resume a queue, or set its workers.
    Queue {
        #[command(subcommand)]
        action: QueueAction,
    },
    /// List jobs, newest first.
    Jobs(JobsArgs),
    /// One job: its fields, every attempt, its errors and effects.
    Job {
        /// The job's id (`42` or `job-42`).
        id: String,
    },
    /// Run jobs again, due now (not running ones: cancel those first).
    Retry {
        /// Job ids.
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Cancel jobs: at once, or a running one through its worker's next heartbeat.
    Cancel {
        /// Job ids.
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// End jobs that are waiting as discarded.
    Discard {
        /// Job ids.
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Delete jobs that are not running, with their effects.
    Delete {
        /// Job ids.
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Who leads: every lease with its term, holder and expiry.
    Leader,
    /// Periodic schedules, their latest slot and their next.
    Periodic,
    /// Serve the web dashboard (and /metrics) until Ctrl-C.
    Serve {
        /// Where to listen; any address but loopback needs --auth.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        /// USER:PASSWORD every request must present (HTTP Basic).
        #[arg(long, value_name = "USER:PASSWORD", env = "KEEL_DASHBOARD_AUTH")]
        auth: Option<String>,
        /// Show, never change: no actions, every POST refused.
        #[arg(long)]
        read_only: bool,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum MigrateAction {
    /// Say which schema version the database is at, changing nothing.
    Status,
}

#[derive(Debug, Subcommand)]
pub enum QueueAction {
    /// Stop handing out the queue's jobs on every node; running jobs finish.
    Pause {
        /// The queue.
        queue: String,
    },
    /// Hand out the queue's jobs again.
    Resume {
        /// The queue.
        queue: String,
    },
    /// Run N workers for the queue on each node (`default`: each node's own count).
    Workers {
        /// The queue.
        queue: String,
        /// A number, or `default`.
        workers: String,
    },
}

#[derive(Debug, Args)]
pub struct JobsArgs {
    /// Only jobs in this state (repeat for several).
    #[arg(long, value_parser = parse_state)]
    pub state: Vec<JobState>,
    /// Only jobs of this queue.
    #[arg(long)]
    pub queue: Option<String>,
    /// Only jobs of this kind.
    #[arg(long)]
    pub kind: Option<String>,
    /// At most this many (1 to 1000).
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
    /// Only jobs older than this id (the previous page's `next`).
    #[arg(long, value_name = "ID")]
    pub before: Option<String>,
}

/// A job state as storage names it (`running`, `discarded`, ...).
fn parse_state(text: &str) -> Result<JobState, String> {
    JobState::parse(text).ok_or_else(|| {
        let names: Vec<&str> = JobState::ALL.iter().map(|s| s.as_str()).collect();
        format!("unknown state; use one of {}", names.join(", "))
    })
}
