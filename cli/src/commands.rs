//! One function per command; each prints its result and returns the exit code.

use keel::admin::{Admin, Database, JobDetail};
use keel::storage::{
    AdminOutcome, CancelResult, JobFilter, JobId, JobState, OpenError, StorageError,
};
use serde::Serialize;

use crate::args::{Cli, Command, JobsArgs, MigrateAction, QueueAction};
use keel_cli::render::{admin_said, cancel_said, one_line, span_ms, table, time, time_or_dash};

/// Exit code: done.
pub const EXIT_OK: u8 = 0;
/// Exit code: the database failed or could not be reached.
pub const EXIT_STORAGE: u8 = 1;
/// Exit code: bad usage or input.
pub const EXIT_USAGE: u8 = 2;
/// Exit code: a job named does not exist.
pub const EXIT_NOT_FOUND: u8 = 3;
/// Exit code: a change was refused (running, or already finished).
pub const EXIT_REFUSED: u8 = 4;
/// Exit code: the database needs `keel migrate`, or is not usable by this version.
pub const EXIT_SCHEMA: u8 = 5;

/// Why a command failed as a whole.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// Bad usage or input; says the fix.
    #[error("{0}")]
    Usage(String),
    /// The database failed or could not be reached.
    #[error("{0}")]
    Storage(String),
    /// The database's schema is not one this version can use as it is.
    #[error("{0}")]
    Schema(String),
    /// No such job.
    #[error("{0}")]
    NotFound(String),
}

impl Failure {
    /// The process exit code for this failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            Failure::Usage(_) => EXIT_USAGE,
            Failure::Storage(_) => EXIT_STORAGE,
            Failure::Schema(_) => EXIT_SCHEMA,
            Failure::NotFound(_) => EXIT_NOT_FOUND,
        }
    }
}

impl From<OpenError> for Failure {
    fn from(e: OpenError) -> Self {
        match e {
            OpenError::InvalidConfig { .. } => Failure::Usage(e.to_string()),
            OpenError::Locked { .. } => {
                Failure::Storage(format!("{e}; retry, or wait longer with --busy-timeout-ms"))
            }
            OpenError::NotKeel { .. }
            | OpenError::SchemaTooNew { .. }
            | OpenError::SchemaTooOld { .. } => Failure::Schema(e.to_string()),
            _ => Failure::Storage(e.to_string()),
        }
    }
}

impl From<StorageError> for Failure {
    fn from(e: StorageError) -> Self {
        match e {
            StorageError::Invalid { .. } => Failure::Usage(e.to_string()),
            _ => Failure::Storage(e.to_string()),
        }
    }
}

/// Run the command `cli` names; `Ok` holds the exit code of a command that
/// ran (one that acted on several jobs may have been refused for some).
pub async fn run(cli: &Cli) -> Result<u8, Failure> {
    let db = database(cli)?;
    if let Command::Serve {
        listen,
        auth,
        read_only,
    } = &cli.command
    {
        // Refuse an exposed listener before touching the database.
        let options = keel_cli::serve::ServeOptions {
            listen: *listen,
            auth: auth.clone(),
            read_only: *read_only,
        };
        options.validate().map_err(Failure::Usage)?;
    }
    if let Command::Migrate { action } = &cli.command {
        return migrate(cli, &db, *action).await;
    }
    let admin = Admin::open_waiting(&db, cli.busy_timeout()).await?;
    match &cli.command {
        Command::Migrate { .. } => unreachable!("handled above"),
        Command::Queues => queues(cli, &admin).await,
        Command::Queue { action } => queue(cli, &admin, action).await,
        Command::Jobs(args) => jobs(cli, &admin, args).await,
        Command::Job { id } => job(cli, &admin, parse_id(id)?).await,
        Command::Retry { ids } => each(cli, ids, |id| admin_outcome(admin.retry(id))).await,
        Command::Discard { ids } => each(cli, ids, |id| admin_outcome(admin.discard(id))).await,
        Command::Delete { ids } => each(cli, ids, |id| admin_outcome(admin.delete(id))).await,
        Command::Cancel { ids } => each(cli, ids, |id| cancel_outcome(admin.cancel(id))).await,
        Command::Leader => leader(cli, &admin).await,
        Command::Periodic => periodic(cli, &admin).await,
        Command::Serve {
            listen,
            auth,
            read_only,
        } => {
            let options = keel_cli::serve::ServeOptions {
                listen: *listen,
                auth: auth.clone(),
                read_only: *read_only,
            };
            keel_cli::serve::serve(admin, options)
                .await
                .map(|()| EXIT_OK)
                .map_err(Failure::Usage)
        }
    }
}

fn database(cli: &Cli) -> Result<Database, Failure> {
    match (&cli.db, &cli.url) {
        (Some(path), _) if path.is_empty() => Err(Failure::Usage(
            "--db is empty; name a SQLite database file".into(),
        )),
        (Some(path), _) => Ok(Database::Sqlite(path.into())),
        (None, Some(url)) => Ok(Database::parse(url)?),
        (None, None) => Err(Failure::Usage(
            "no database named: pass --db FILE or --url URL, or set KEEL_DATABASE_URL".into(),
        )),
    }
}

/// `42` or `job-42`.
fn parse_id(text: &str) -> Result<JobId, Failure> {
    let digits = text.strip_prefix("job-").unwrap_or(text);
    digits
        .parse::<u64>()
        .map(JobId)
        .map_err(|_| Failure::Usage(format!("bad job id {text:?}: write 42 or job-42")))
}

fn print_json<T: Serialize + ?Sized>(value: &T) -> Result<(), Failure> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| Failure::Storage(format!("cannot write JSON: {e}")))?;
    println!("{text}");
    Ok(())
}

async fn migrate(cli: &Cli, db: &Database, action: Option<MigrateAction>) -> Result<u8, Failure> {
    let status = match action {
        Some(MigrateAction::Status) => Admin::migration_status(db).await?,
        None => Admin::migrate(db).await?,
    };
    if cli.json {
        print_json(&status)?;
        return Ok(EXIT_OK);
    }
    match action {
        Some(MigrateAction::Status) if status.from == status.to => {
            println!("schema version {}: up to date", status.to);
        }
        Some(MigrateAction::Status) if status.from == 0 => {
            println!(
                "no Keel schema yet; `keel migrate` creates version {}",
                status.to
            );
        }
        Some(MigrateAction::Status) => println!(
            "schema version {}; {} migration(s) pending: run `keel migrate`",
            status.from,
            status.to - status.from
        ),
        None if status.from == status.to => println!("schema version {}: up to date", status.to),
        None => println!("migrated schema version {} to {}", status.from, status.to),
    }
    Ok(EXIT_OK)
}

async fn queues(cli: &Cli, admin: &Admin) -> Result<u8, Failure> {
    let queues = admin.queues().await?;
    if cli.json {
        print_json(&queues)?;
        return Ok(EXIT_OK);
    }
    let rows: Vec<Vec<String>> = queues
        .iter()
        .map(|q| {
            let mut row = vec![q.name.clone()];
            row.push(if q.paused { "paused" } else { "active" }.into());
            row.push(
                q.workers
                    .map_or_else(|| "default".into(), |w| w.to_string()),
            );
            row.extend(JobState::ALL.iter().map(|s| q.counts.get(*s).to_string()));
            row
        })
        .collect();
    let mut header = vec!["queue", "status", "workers"];
    header.extend(JobState::ALL.iter().map(|s| s.as_str()));
    println!("{}", table(&header, &rows));
    Ok(EXIT_OK)
}

async fn queue(cli: &Cli, admin: &Admin, action: &QueueAction) -> Result<u8, Failure> {
    let (queue, said) = match action {
        QueueAction::Pause { queue } => {
            admin.pause(queue).await?;
            (queue, "paused".to_owned())
        }
        QueueAction::Resume { queue } => {
            admin.resume(queue).await?;
            (queue, "resumed".to_owned())
        }
        QueueAction::Workers { queue, workers } => {
            let n = match workers.as_str() {
                "default" => None,
                n => Some(n.parse::<u32>().map_err(|_| {
                    Failure::Usage(format!(
                        "bad worker count {n:?}: write a number, or `default` for each node's own"
                    ))
                })?),
            };
            admin.set_workers(queue, n).await?;
            let said = n.map_or("workers: each node's own count".into(), |n| {
                format!("workers: {n} per node")
            });
            (queue, said)
        }
    };
    if cli.json {
        let summary = admin.queues().await?.into_iter().find(|q| q.name == *queue);
        print_json(&summary)?;
    } else {
        println!("queue {queue} {said}");
    }
    Ok(EXIT_OK)
}

async fn jobs(cli: &Cli, admin: &Admin, args: &JobsArgs) -> Result<u8, Failure> {
    let filter = JobFilter {
        states: args.state.clone(),
        queue: args.queue.clone(),
        kind: args.kind.clone(),
        before: args.before.as_deref().map(parse_id).transpose()?,
        limit: args.limit,
    };
    let page = admin.jobs(filter).await?;
    if cli.json {
        print_json(&page)?;
        return Ok(EXIT_OK);
    }
    let rows: Vec<Vec<String>> = page
        .jobs
        .iter()
        .map(|j| {
            vec![
                j.id.0.to_string(),
                j.state.as_str().into(),
                j.queue.clone(),
                j.kind.clone(),
                format!("{}/{}", j.attempt, j.max_attempts),
                time(j.scheduled_at),
                j.errors
                    .last()
                    .map_or_else(String::new, |e| one_line(e, 60)),
            ]
        })
        .collect();
    let header = [
        "id",
        "state",
        "queue",
        "kind",
        "attempt",
        "scheduled",
        "last error",
    ];
    println!("{}", table(&header, &rows));
    if let Some(next) = page.next {
        println!("more: --before {}", next.0);
    }
    Ok(EXIT_OK)
}

async fn job(cli: &Cli, admin: &Admin, id: JobId) -> Result<u8, Failure> {
    let Some(detail) = admin.job(id).await? else {
        return Err(Failure::NotFound(format!(
            "no job {} (it may have been cleaned up)",
            id.0
        )));
    };
    if cli.json {
        print_json(&detail)?;
    } else {
        print!("{}", job_text(&detail));
    }
    Ok(EXIT_OK)
}

/// A job for people: its fields, then a table of its attempts, its errors and effects.
fn job_text(detail: &JobDetail) -> String {
    let j = &detail.job;
    let mut out = format!(
        "job {}  {}  kind {}  queue {}\n",
        j.id.0,
        j.state.as_str(),
        j.kind,
        j.queue
    );
    out += &format!(
        "attempt {} of {}  priority {}  created {}  scheduled {}  finished {}\n",
        j.attempt,
        j.max_attempts,
        j.priority,
        time(j.created_at),
        time(j.scheduled_at),
        time_or_dash(j.finalized_at)
    );
    if let Some(owner) = &j.owner {
        out += &format!(
            "running on {owner}, last heartbeat {}\n",
            time_or_dash(j.heartbeat_at)
        );
    }
    if j.cancel_requested {
        out += "cancel requested: its worker stops at its next heartbeat\n";
    }
    if let Some(key) = &j.unique_key {
        out += &format!("unique key {key}\n");
    }
    out += &format!("payload {}\n", j.payload);
    if !j.attempts.is_empty() {
        let rows: Vec<Vec<String>> = j
            .attempts
            .iter()
            .map(|a| {
                vec![
                    a.attempt.to_string(),
                    a.owner.clone(),
                    time(a.started_at),
                    a.ended_at
                        .map_or_else(|| "running".into(), |e| span_ms(e.0 - a.started_at.0)),
                    a.outcome.map_or("-", |o| o.as_str()).into(),
                    a.error
                        .as_deref()
                        .map_or_else(String::new, |e| one_line(e, 80)),
                ]
            })
            .collect();
        out += "\nattempts\n";
        out += &table(
            &["#", "worker", "started", "took", "outcome", "error"],
            &rows,
        );
        out.push('\n');
    }
    if !j.errors.is_empty() {
        out += "\nerrors, newest last\n";
        for e in &j.errors {
            out += &format!("  {e}\n");
        }
    }
    if !detail.effects.is_empty() {
        let rows: Vec<Vec<String>> = detail
            .effects
            .iter()
            .map(|(k, v)| vec![k.clone(), v.to_string()])
            .collect();
        out += "\neffects\n";
        out += &table(&["key", "value"], &rows);
        out.push('\n');
    }
    out
}

/// What one change did to one job, for people and scripts.
#[derive(Serialize)]
struct Done {
    id: u64,
    outcome: String,
    #[serde(skip)]
    code: u8,
}

type Pending<'a> = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<(String, u8), StorageError>> + Send + 'a>,
>;

fn admin_outcome<'a>(
    call: impl std::future::Future<Output = Result<AdminOutcome, StorageError>> + Send + 'a,
) -> Pending<'a> {
    Box::pin(async move {
        let outcome = call.await?;
        let code = match outcome {
            AdminOutcome::Done | AdminOutcome::Unchanged => EXIT_OK,
            AdminOutcome::NotFound => EXIT_NOT_FOUND,
            AdminOutcome::Running | AdminOutcome::AlreadyFinished => EXIT_REFUSED,
        };
        Ok((admin_said(outcome).to_owned(), code))
    })
}

fn cancel_outcome<'a>(
    call: impl std::future::Future<Output = Result<CancelResult, StorageError>> + Send + 'a,
) -> Pending<'a> {
    Box::pin(async move {
        let result = call.await?;
        let code = match result {
            CancelResult::Cancelled | CancelResult::Requested => EXIT_OK,
            CancelResult::AlreadyFinished => EXIT_REFUSED,
            CancelResult::NotFound => EXIT_NOT_FOUND,
        };
        Ok((cancel_said(result).to_owned(), code))
    })
}

/// Apply `change` to each id in turn; the exit code is the worst of them.
async fn each<'a>(
    cli: &Cli,
    ids: &[String],
    change: impl Fn(JobId) -> Pending<'a>,
) -> Result<u8, Failure> {
    let ids: Vec<JobId> = ids.iter().map(|t| parse_id(t)).collect::<Result<_, _>>()?;
    let mut done = Vec::with_capacity(ids.len());
    for id in ids {
        let (outcome, code) = change(id).await?;
        if !cli.json {
            println!("job {}: {outcome}", id.0);
        }
        done.push(Done {
            id: id.0,
            outcome,
            code,
        });
    }
    if cli.json {
        print_json(&done)?;
    }
    Ok(done.iter().map(|d| d.code).max().unwrap_or(EXIT_OK))
}

async fn leader(cli: &Cli, admin: &Admin) -> Result<u8, Failure> {
    let leases = admin.leases().await?;
    let now = admin.time().await?;
    if cli.json {
        print_json(&leases)?;
        return Ok(EXIT_OK);
    }
    if leases.is_empty() {
        println!("no lease was ever granted: no node has led yet");
        return Ok(EXIT_OK);
    }
    let rows: Vec<Vec<String>> = leases
        .iter()
        .map(|l| {
            let status = match &l.holder {
                Some(_) if l.is_live(now) => {
                    format!("leading, {} left", span_ms(l.expires_at.0 - now.0))
                }
                Some(_) => format!("expired {} ago", span_ms(now.0 - l.expires_at.0)),
                None => "resigned".into(),
            };
            vec![
                l.name.clone(),
                l.term.0.to_string(),
                l.holder.clone().unwrap_or_else(|| "-".into()),
                time(l.expires_at),
                status,
            ]
        })
        .collect();
    println!(
        "{}",
        table(&["lease", "term", "holder", "expires", "status"], &rows)
    );
    Ok(EXIT_OK)
}

async fn periodic(cli: &Cli, admin: &Admin) -> Result<u8, Failure> {
    let schedules = admin.periodic().await?;
    if cli.json {
        print_json(&schedules)?;
        return Ok(EXIT_OK);
    }
    if schedules.is_empty() {
        println!("no periodic schedule has fired yet");
        return Ok(EXIT_OK);
    }
    let rows: Vec<Vec<String>> = schedules
        .iter()
        .map(|p| {
            let r = &p.record;
            vec![
                r.name.clone(),
                r.schedule.clone(),
                format!("{}/{}", r.queue, r.kind),
                time(r.last_slot),
                r.last_job.0.to_string(),
                time_or_dash(p.next_slot),
            ]
        })
        .collect();
    let header = [
        "name",
        "schedule",
        "queue/kind",
        "last slot",
        "last job",
        "next slot",
    ];
    println!("{}", table(&header, &rows));
    Ok(EXIT_OK)
}
