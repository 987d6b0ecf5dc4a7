//! One chaos run, start to verdict: prepare the database, start the worker
//! and client processes, carry out the plan (proxy faults, signals), heal,
//! stop everything, read storage's side from the database, merge it with the
//! journals, and judge the history with the simulator's checkers.
//!
//! ```text
//!   harness ── spawns ──▶ client ───────────────────────────▶ database
//!      │                  p1 ──▶ proxy p1 ──▶ ┐              (triggers append
//!      ├─ signals ──────▶ p2 ──▶ proxy p2 ──▶ ├─ PostgreSQL   keel_chaos_audit)
//!      └─ link faults ─▶  p3 ──▶ proxy p3 ──▶ ┘   or one SQLite file
//! ```
//!
//! Every process appends its journal; the harness journals what it did to
//! each process (boots, kills, pauses, clock jumps, hook faults) under that
//! process's name. SQLite has no network between processes and the file, so
//! link faults are not carried out there (and not counted as injected).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use keel::clock::{Clock, SystemClock};
use keel::planted::Bug;
use keel::storage::{JobId, PostgresOptions, PostgresStorage, SqliteEngine};
use sim::run::checkers::{self, Violation};
use sim::run::history::{Ev, HarnessEvent, Record};
use sim::world::node::Timing;

use crate::audit::{self, AuditRow};
use crate::journal::{machine_now_ms, merge_with, Journal};
use crate::plan::{ChaosKind, ChaosPlan, KINDS, KIND_COUNT};
use crate::process::{scenario, ChaosError, Engine, Spec};
use crate::proxy::{FaultProxy, LinkFault};

/// The host name harness records carry, as in the simulator.
const HARNESS_HOST: &str = sim::run::runner::HARNESS_HOST;
/// How often the harness looks at its plan and its processes.
const TICK: Duration = Duration::from_millis(20);
/// A shutdown may overrun its deadline by this much (a loop's last tick, the
/// process's exit) before the harness kills it.
const SHUTDOWN_GRACE_MS: u64 = 5_000;
/// A process that exits on its own (it should not) is started again after this.
const UNEXPECTED_EXIT_RESTART_MS: u64 = 1_000;

/// Which database, before the run makes its own schema or file in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Database {
    /// A PostgreSQL server (`KEEL_PG_URL`).
    Postgres(String),
    /// A SQLite file in the run's directory.
    Sqlite,
}

/// One run's settings.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// The database.
    pub database: Database,
    /// The plan to carry out.
    pub plan: ChaosPlan,
    /// A planted bug every worker runs with.
    pub plant: Option<Bug>,
    /// Where the plan, journals, logs and result go (created).
    pub dir: PathBuf,
    /// The `chaos` binary, started as `worker` and `client`.
    pub exe: PathBuf,
    /// Keep the run's PostgreSQL schema afterwards, to inspect it.
    pub keep_schema: bool,
}

/// What a run found.
#[derive(Debug)]
pub struct RunReport {
    /// `postgres` or `sqlite`.
    pub engine: &'static str,
    /// The plan carried out.
    pub plan: ChaosPlan,
    /// The planted bug, if any.
    pub plant: Option<Bug>,
    /// Faults carried out, by kind ([`KINDS`] order).
    pub injected: [usize; KIND_COUNT],
    /// Jobs inserted.
    pub jobs: usize,
    /// Jobs not finished at the end.
    pub unfinished: usize,
    /// Fenced effects applied.
    pub effects: usize,
    /// Broken invariants.
    pub violations: Vec<Violation>,
    /// Per job run without a schedule: ms from the client's enqueue to its
    /// first handler start.
    pub enqueue_to_start_ms: Vec<u64>,
    /// Journal lines lost to a kill mid-write.
    pub torn: usize,
    /// The heal `no_lost_jobs` needs to judge; a shorter heal proves nothing
    /// about liveness, and the summary says so.
    pub heal_needed_ms: u64,
    /// Wall time of the whole run.
    pub wall: Duration,
    /// The run's directory.
    pub dir: PathBuf,
    /// The merged history.
    pub history: Vec<Record>,
}

impl RunReport {
    /// The command that repeats this run's plan (not its interleaving).
    pub fn rerun(&self) -> String {
        let plant = self
            .plant
            .map(|b| format!(" --plant {}", b.name()))
            .unwrap_or_default();
        format!(
            "chaos run --engine {} --plan {}{plant}",
            self.engine,
            self.dir.join("plan.txt").display()
        )
    }
}

/// The `q`-quantile (nearest rank) of `values`.
pub fn quantile(values: &[u64], q: f64) -> Option<u64> {
    let mut v = values.to_vec();
    v.sort_unstable();
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len().max(1));
    v.get(rank - 1).copied()
}

/// One worker process's state in the harness.
struct Proc {
    spec: PathBuf,
    name: String,
    child: Option<Child>,
    boot: u32,
    /// Paused by the plan (SIGSTOP), with the boot it paused.
    paused: Option<u32>,
    /// Asked to shut down: kill it if still running at this time (ms).
    terminating: Option<u64>,
    /// Down: start it again at this time (ms).
    restart_at: Option<u64>,
    /// The downtime after a planned shutdown ends.
    down_ms: u64,
}

/// A step of the plan as the harness carries it out.
#[derive(Clone, Copy, Debug)]
enum Action {
    Link(LinkFault),
    LinkEnd(LinkFault),
    Reset,
    Kill { down_ms: u64 },
    Pause,
    Resume,
    Terminate { deadline_ms: u64, down_ms: u64 },
    Jump(i64),
    DbJump(i64),
    HookOn { pct: u64, delay_ms: u64 },
    HookOff,
}

/// One step: when, which fault of the plan (an end goes to the process its
/// start went to), the action, and the kind it counts as when it starts.
#[derive(Clone, Copy, Debug)]
struct Step {
    at_ms: u64,
    fault: usize,
    action: Action,
    starts: Option<usize>,
}

/// The plan as steps, every fault ended by the heal phase at the latest.
fn actions(plan: &ChaosPlan) -> Vec<Step> {
    let mut out = Vec::new();
    for (fault, f) in plan.faults.iter().enumerate() {
        let at = f.at_ms;
        let end_at = (at + f.kind.dur_ms()).min(plan.fault_ms);
        let k = Some(f.kind.index());
        let mut step = |at_ms, action, starts| {
            out.push(Step {
                at_ms,
                fault,
                action,
                starts,
            })
        };
        let (start, end) = match f.kind {
            ChaosKind::Partition { .. } => (
                Action::Link(LinkFault::Partition),
                Some(Action::LinkEnd(LinkFault::Partition)),
            ),
            ChaosKind::Delay { ms, .. } => {
                let fault = LinkFault::Delay(Duration::from_millis(ms));
                (Action::Link(fault), Some(Action::LinkEnd(fault)))
            }
            ChaosKind::DropReplies { .. } => (
                Action::Link(LinkFault::DropReplies),
                Some(Action::LinkEnd(LinkFault::DropReplies)),
            ),
            ChaosKind::Reset => (Action::Reset, None),
            ChaosKind::Kill { down_ms } => (Action::Kill { down_ms }, None),
            ChaosKind::Pause { .. } => (Action::Pause, Some(Action::Resume)),
            ChaosKind::Terminate {
                deadline_ms,
                down_ms,
            } => (
                Action::Terminate {
                    deadline_ms,
                    down_ms,
                },
                None,
            ),
            ChaosKind::ClockJump { jump_ms, .. } => {
                (Action::Jump(jump_ms), Some(Action::Jump(-jump_ms)))
            }
            ChaosKind::HookFail { pct, delay_ms, .. } => {
                (Action::HookOn { pct, delay_ms }, Some(Action::HookOff))
            }
            ChaosKind::DbClockJump { jump_ms, .. } => {
                (Action::DbJump(jump_ms), Some(Action::DbJump(-jump_ms)))
            }
        };
        step(at, start, k);
        if let Some(end) = end {
            step(end_at, end, None);
        }
    }
    // Ends before starts at one time: a fault ending and the next beginning.
    out.sort_by_key(|s| (s.at_ms, s.starts.is_some()));
    out
}

/// Send `signal` (`STOP`, `CONT`, `TERM`) to `child` with the system's `kill`:
/// the workspace forbids `unsafe`, which a direct `kill(2)` needs.
fn signal(child: &Child, name: &str, signal: &str) -> Result<(), ChaosError> {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(child.id().to_string())
        .status()
        .map_err(|e| ChaosError::Process {
            name: name.to_owned(),
            reason: format!("kill -{signal}: {e}"),
        })?;
    if status.success() {
        Ok(())
    } else {
        Err(ChaosError::Process {
            name: name.to_owned(),
            reason: format!("kill -{signal} exited {status}"),
        })
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ChaosError + '_ {
    move |source| ChaosError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Remove an earlier run's journals, logs and database from `dir`: journals
/// are appended to, and a rerun into the same directory must start empty.
fn clear(dir: &Path) -> Result<(), ChaosError> {
    for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let path = entry.map_err(io_err(dir))?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let ours = [".jsonl", ".log", ".spec.json", ".deadline"]
            .iter()
            .any(|e| name.ends_with(e))
            || name.starts_with("keel.db")
            || name == "result.txt";
        if ours {
            std::fs::remove_file(&path).map_err(io_err(&path))?;
        }
    }
    Ok(())
}

fn write(path: &Path, text: &str) -> Result<(), ChaosError> {
    std::fs::write(path, text).map_err(io_err(path))
}

/// The run's own database: a fresh schema (PostgreSQL) or file (SQLite),
/// migrated by keel, with the audit triggers installed.
async fn prepare(cfg: &RunConfig) -> Result<Engine, ChaosError> {
    let lease = sim::world::node::LEASE_NAME;
    match &cfg.database {
        Database::Postgres(url) => {
            let schema = format!("keel_chaos_{}_{}", cfg.plan.seed, std::process::id());
            let admin = pg_admin(url).await?;
            drop_orphaned_schemas(&admin).await?;
            drop_schema(&admin, &schema).await?;
            let options = PostgresOptions::new().schema(&schema).listen(false);
            let store = PostgresStorage::connect_with(url, options)
                .await
                .map_err(|e| ChaosError::Database(e.to_string()))?;
            drop(store);
            admin
                .batch_execute(&audit::postgres_sql(&schema, lease))
                .await
                .map_err(|e| ChaosError::Database(format!("audit triggers: {e}")))?;
            Ok(Engine::Postgres {
                url: url.clone(),
                schema,
            })
        }
        Database::Sqlite => {
            let path = cfg.dir.join("keel.db");
            let _ = std::fs::remove_file(&path);
            SqliteEngine::open(&path).map_err(|e| ChaosError::Database(e.to_string()))?;
            let conn = rusqlite::Connection::open(&path)
                .map_err(|e| ChaosError::Database(e.to_string()))?;
            conn.execute_batch(&audit::sqlite_sql(lease))
                .map_err(|e| ChaosError::Database(format!("audit triggers: {e}")))?;
            Ok(Engine::Sqlite { path })
        }
    }
}

/// Drop the schemas of earlier runs whose harness is gone (killed before it
/// could drop its own): a run's schema is `keel_chaos_<seed>_<harness pid>`.
async fn drop_orphaned_schemas(admin: &tokio_postgres::Client) -> Result<(), ChaosError> {
    // Without /proc no pid can be checked: leave every schema be.
    if !Path::new("/proc/self").exists() {
        return Ok(());
    }
    let rows = admin
        .query(
            "SELECT nspname::TEXT FROM pg_namespace WHERE nspname LIKE 'keel\\_chaos\\_%'",
            &[],
        )
        .await
        .map_err(|e| ChaosError::Database(e.to_string()))?;
    for row in rows {
        let schema: String = row.get(0);
        let pid = schema
            .rsplit('_')
            .next()
            .and_then(|p| p.parse::<u32>().ok());
        let alive = pid.is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
        if pid.is_some() && !alive {
            tracing::info!(%schema, "dropping an orphaned chaos schema");
            drop_schema(admin, &schema).await?;
        }
    }
    Ok(())
}

async fn drop_schema(admin: &tokio_postgres::Client, schema: &str) -> Result<(), ChaosError> {
    admin
        .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
        .await
        .map_err(|e| ChaosError::Database(e.to_string()))
}

async fn pg_admin(url: &str) -> Result<tokio_postgres::Client, ChaosError> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .map_err(|e| ChaosError::Database(format!("{url}: {e}")))?;
    tokio::spawn(conn);
    Ok(client)
}

/// Storage's side, read at the end: the audit rows, and the jobs unfinished.
async fn read_back(engine: &Engine) -> Result<(Vec<AuditRow>, Vec<JobId>), ChaosError> {
    let unfinished_sql = "SELECT id FROM keel_jobs WHERE state NOT IN \
                          ('completed', 'cancelled', 'discarded') ORDER BY id";
    let db = |e: &dyn std::fmt::Display| ChaosError::Database(e.to_string());
    match engine {
        Engine::Postgres { url, schema } => {
            let admin = pg_admin(url).await?;
            admin
                .batch_execute(&format!("SET search_path TO \"{schema}\""))
                .await
                .map_err(|e| db(&e))?;
            let rows = admin
                .query(audit::SELECT_SQL, &[])
                .await
                .map_err(|e| db(&e))?;
            let audit = rows
                .iter()
                .map(|r| AuditRow {
                    at_us: r.get(0),
                    tbl: r.get(1),
                    old: r.get(2),
                    new: r.get(3),
                })
                .collect();
            let rows = admin.query(unfinished_sql, &[]).await.map_err(|e| db(&e))?;
            let ids = rows
                .iter()
                .map(|r| JobId(r.get::<_, i64>(0) as u64))
                .collect();
            Ok((audit, ids))
        }
        Engine::Sqlite { path } => {
            let conn = rusqlite::Connection::open(path).map_err(|e| db(&e))?;
            let mut st = conn.prepare(audit::SELECT_SQL).map_err(|e| db(&e))?;
            let audit = st
                .query_map([], |r| {
                    Ok(AuditRow {
                        at_us: r.get(0)?,
                        tbl: r.get(1)?,
                        old: r.get(2)?,
                        new: r.get(3)?,
                    })
                })
                .and_then(Iterator::collect::<Result<Vec<_>, _>>)
                .map_err(|e| db(&e))?;
            let mut st = conn.prepare(unfinished_sql).map_err(|e| db(&e))?;
            let ids = st
                .query_map([], |r| r.get::<_, i64>(0))
                .and_then(Iterator::collect::<Result<Vec<_>, _>>)
                .map_err(|e| db(&e))?;
            Ok((audit, ids.into_iter().map(|i| JobId(i as u64)).collect()))
        }
    }
}

/// The lease's live holder at `now_ms` on storage's clock, read from the
/// database (errors read as none).
async fn live_holder(engine: &Engine, now_ms: i64) -> Option<String> {
    let lease = sim::world::node::LEASE_NAME;
    match engine {
        Engine::Postgres { url, schema } => {
            let admin = pg_admin(url).await.ok()?;
            let sql = format!(
                "SELECT convert_from(holder, 'UTF8') FROM \"{schema}\".keel_leases \
                 WHERE name = convert_to($1, 'UTF8') AND holder IS NOT NULL AND expires_at > $2"
            );
            let row = admin.query_opt(&sql, &[&lease, &now_ms]).await.ok()??;
            row.get(0)
        }
        Engine::Sqlite { path } => {
            let conn = rusqlite::Connection::open(path).ok()?;
            conn.busy_timeout(Duration::from_millis(500)).ok()?;
            conn.query_row(
                "SELECT holder FROM keel_leases WHERE name = ?1 AND holder IS NOT NULL \
                 AND expires_at > ?2",
                rusqlite::params![lease, now_ms],
                |r| r.get(0),
            )
            .ok()
        }
    }
}

/// The harness's view of the run while it goes.
struct Harness {
    exe: PathBuf,
    dir: PathBuf,
    epoch_unix_ms: i64,
    journal: Journal,
    procs: Vec<Proc>,
    proxies: Vec<FaultProxy>,
    skews_ms: Vec<i64>,
    injected: [usize; KIND_COUNT],
    /// Storage's clock, when the plan steps it.
    db_clock: Option<crate::plan::PlannedClock>,
}

impl Harness {
    /// Everything a run needs before its processes start: a proxy per worker
    /// (PostgreSQL), each process's spec file, the harness's journal, and the
    /// run's epoch (now). Returns the harness and the client's spec file.
    async fn new(
        cfg: &RunConfig,
        engine: &Engine,
        plan_path: &Path,
    ) -> Result<(Self, PathBuf), ChaosError> {
        let plan = &cfg.plan;
        let mut proxies = Vec::new();
        if let Database::Postgres(url) = &cfg.database {
            let server = crate::pg::server_addr(url)
                .await
                .map_err(ChaosError::Setup)?;
            for _ in 0..plan.processes {
                proxies.push(
                    FaultProxy::start(server)
                        .await
                        .map_err(|e| ChaosError::Setup(format!("proxy: {e}")))?,
                );
            }
        }
        let epoch_unix_ms = machine_now_ms();
        let spec = |name: &str, index: usize| Spec {
            name: name.to_owned(),
            index,
            engine: engine.clone(),
            proxy_port: proxies.get(index).map(|p| p.addr().port()),
            epoch_unix_ms,
            plan: plan_path.to_path_buf(),
            journal: cfg.dir.join(format!("{name}.jsonl")),
            plant: cfg.plant.map(|b| b.name().to_owned()),
        };
        let mut procs = Vec::new();
        for i in 0..plan.processes {
            let name = format!("p{}", i + 1);
            let path = cfg.dir.join(format!("{name}.spec.json"));
            write(&path, &json(&spec(&name, i))?)?;
            procs.push(Proc {
                spec: path,
                name,
                child: None,
                boot: 0,
                paused: None,
                terminating: None,
                restart_at: None,
                down_ms: 0,
            });
        }
        let client_spec = cfg.dir.join("client.spec.json");
        write(
            &client_spec,
            &json(&spec(sim::world::workload::CLIENT_HOST, 0))?,
        )?;
        let journal_path = cfg.dir.join("harness.jsonl");
        let journal = Journal::open(
            &journal_path,
            HARNESS_HOST,
            epoch_unix_ms,
            Arc::new(SystemClock::new()),
        )
        .map_err(io_err(&journal_path))?;
        let h = Harness {
            exe: cfg.exe.clone(),
            dir: cfg.dir.clone(),
            epoch_unix_ms,
            journal,
            procs,
            proxies,
            skews_ms: plan.skews_ms.clone(),
            injected: [0; KIND_COUNT],
            db_clock: crate::plan::PlannedClock::storage(plan, epoch_unix_ms),
        };
        Ok((h, client_spec))
    }

    fn elapsed_ms(&self) -> u64 {
        u64::try_from(machine_now_ms() - self.epoch_unix_ms).unwrap_or(0)
    }

    fn record(&self, host: &str, ev: HarnessEvent) {
        self.journal.push_as(host, Ev::Harness(ev));
    }

    fn spawn(&mut self, i: usize) -> Result<(), ChaosError> {
        let p = &mut self.procs[i];
        p.boot += 1;
        let (boot, name) = (p.boot, p.name.clone());
        let skew_ms = self.skews_ms.get(i).copied().unwrap_or(0);
        self.journal
            .push_as(&name, Ev::Harness(HarnessEvent::NodeBoot { boot, skew_ms }));
        let child = start(&self.exe, "worker", &self.procs[i].spec, &self.dir, &name)?;
        let p = &mut self.procs[i];
        p.child = Some(child);
        p.paused = None;
        p.terminating = None;
        p.restart_at = None;
        Ok(())
    }

    fn apply(&mut self, i: usize, action: Action, now: u64) -> Result<bool, ChaosError> {
        let name = self.procs[i].name.clone();
        let proxy = self.proxies.get(i);
        let running = self.procs[i].child.is_some();
        match action {
            Action::Link(fault) => match proxy {
                Some(proxy) => proxy.set(fault),
                None => return Ok(false),
            },
            Action::LinkEnd(fault) => {
                if let Some(proxy) = proxy.filter(|p| p.fault() == fault) {
                    proxy.set(LinkFault::Healthy);
                }
            }
            Action::Reset => match proxy {
                Some(proxy) => {
                    proxy.reset();
                }
                None => return Ok(false),
            },
            Action::Kill { down_ms } => {
                if !running {
                    return Ok(false);
                }
                reap(self.procs[i].child.take());
                self.record(&name, HarnessEvent::Crash);
                let p = &mut self.procs[i];
                p.paused = None;
                p.terminating = None;
                p.restart_at = Some(now + down_ms);
            }
            Action::Pause => {
                let p = &self.procs[i];
                let (Some(child), None, None) = (&p.child, p.paused, p.terminating) else {
                    return Ok(false);
                };
                signal(child, &name, "STOP")?;
                self.record(&name, HarnessEvent::Paused);
                self.procs[i].paused = Some(self.procs[i].boot);
            }
            Action::Resume => self.resume(i)?,
            Action::Terminate {
                deadline_ms,
                down_ms,
            } => {
                let p = &self.procs[i];
                let (Some(child), None, None) = (&p.child, p.paused, p.terminating) else {
                    return Ok(false);
                };
                let file = crate::process::deadline_file(&self.dir.join(format!("{name}.jsonl")));
                write(&file, &deadline_ms.to_string())?;
                signal(child, &name, "TERM")?;
                let p = &mut self.procs[i];
                p.terminating = Some(now + deadline_ms + SHUTDOWN_GRACE_MS);
                p.down_ms = down_ms;
            }
            Action::Jump(jump_ms) => self.record(&name, HarnessEvent::ClockJump { jump_ms }),
            // Every process steps its storage clock itself, from the plan.
            Action::DbJump(jump_ms) => {
                self.record(sim::world::db::DB_HOST, HarnessEvent::ClockJump { jump_ms });
                return Ok(true);
            }
            Action::HookOn { pct, delay_ms } => self.record(
                &name,
                HarnessEvent::HookFault {
                    delay_ms,
                    fail_pct: pct,
                },
            ),
            Action::HookOff => self.record(&name, HarnessEvent::HookHealed),
        }
        Ok(running || matches!(action, Action::Jump(_) | Action::HookOn { .. }))
    }

    /// The process whose incarnation holds the lease now, if any: its holder
    /// id is the process name, `#`, the incarnation.
    async fn leader(&self, engine: &Engine) -> Option<usize> {
        let now_ms = match &self.db_clock {
            Some(clock) => clock.now().as_millis(),
            None => machine_now_ms(),
        };
        let holder = live_holder(engine, now_ms).await?;
        let name = holder.split('#').next()?;
        self.procs.iter().position(|p| p.name == name)
    }

    fn resume(&mut self, i: usize) -> Result<(), ChaosError> {
        let p = &self.procs[i];
        if let (Some(child), Some(boot)) = (&p.child, p.paused) {
            if boot == p.boot {
                self.record(&p.name, HarnessEvent::Resumed);
                signal(child, &p.name, "CONT")?;
            }
        }
        self.procs[i].paused = None;
        Ok(())
    }

    /// Reap processes that exited, kill shutdowns past their bound, restart
    /// what is due.
    fn supervise(&mut self, now: u64, restarts_by: u64) -> Result<(), ChaosError> {
        for i in 0..self.procs.len() {
            let p = &mut self.procs[i];
            let name = p.name.clone();
            if let Some(child) = p.child.as_mut() {
                let exited = child.try_wait().map_err(|e| ChaosError::Process {
                    name: name.clone(),
                    reason: e.to_string(),
                })?;
                match (exited, p.terminating) {
                    (Some(_), Some(_)) => {
                        p.child = None;
                        p.terminating = None;
                        p.restart_at = Some(now + p.down_ms);
                    }
                    (Some(status), None) => {
                        tracing::warn!(process = %name, %status, "exited unasked");
                        p.child = None;
                        p.restart_at = Some(now + UNEXPECTED_EXIT_RESTART_MS);
                        self.record(&name, HarnessEvent::Crash);
                    }
                    (None, Some(kill_at)) if now >= kill_at => {
                        reap(p.child.take());
                        p.terminating = None;
                        p.restart_at = Some(now + p.down_ms);
                        self.record(&name, HarnessEvent::Crash);
                    }
                    _ => {}
                }
            }
            let p = &self.procs[i];
            if p.child.is_none() && p.restart_at.is_some_and(|at| now >= at.min(restarts_by)) {
                self.spawn(i)?;
            }
        }
        Ok(())
    }

    /// Carry out `plan` until the end of its heal phase: its steps at their
    /// times, the heal, and the processes' supervision, on a [`TICK`].
    async fn carry_out(&mut self, plan: &ChaosPlan, engine: &Engine) -> Result<(), ChaosError> {
        let steps = actions(plan);
        // Where each fault's start went: its end goes there too.
        let mut aimed = std::collections::BTreeMap::new();
        let mut next = 0;
        let mut healed = false;
        let end_ms = plan.fault_ms + plan.heal_ms;
        loop {
            let now = self.elapsed_ms();
            while let Some(step) = steps.get(next).copied() {
                if step.at_ms > now {
                    break;
                }
                next += 1;
                let f = &plan.faults[step.fault];
                let p = match (step.starts, f.leader) {
                    (Some(_), true) => self.leader(engine).await.unwrap_or(f.process),
                    (Some(_), false) => f.process,
                    (None, _) => aimed.get(&step.fault).copied().unwrap_or(f.process),
                };
                aimed.insert(step.fault, p);
                let targets = if f.all {
                    (0..plan.processes).collect()
                } else {
                    vec![p]
                };
                let mut applied = false;
                for p in targets {
                    applied |= self.apply(p, step.action, now)?;
                }
                if let (true, Some(k)) = (applied, step.starts) {
                    self.injected[k] += 1;
                }
            }
            if !healed && now >= plan.fault_ms {
                self.heal()?;
                healed = true;
            }
            self.supervise(now, plan.fault_ms)?;
            if now >= end_ms {
                return Ok(());
            }
            tokio::time::sleep(TICK).await;
        }
    }

    fn heal(&mut self) -> Result<(), ChaosError> {
        self.record(HARNESS_HOST, HarnessEvent::HealPhase);
        for proxy in &self.proxies {
            proxy.set(LinkFault::Healthy);
            proxy.reset();
        }
        for i in 0..self.procs.len() {
            self.resume(i)?;
        }
        Ok(())
    }

    fn stop_all(&mut self) {
        for p in &mut self.procs {
            reap(p.child.take());
        }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// SIGKILL `child`, if any (a stopped one too), and wait for it; it may be
/// gone already.
fn reap(child: Option<Child>) {
    if let Some(mut child) = child {
        let _ = child.kill();
        let _ = child.wait();
    }
}

fn start(exe: &Path, role: &str, spec: &Path, dir: &Path, name: &str) -> Result<Child, ChaosError> {
    let log_path = dir.join(format!("{name}.log"));
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(io_err(&log_path))?;
    Command::new(exe)
        .arg(role)
        .arg("--spec")
        .arg(spec)
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| ChaosError::Process {
            name: name.to_owned(),
            reason: format!("{}: {e}", exe.display()),
        })
}

/// Run the scenario's checkers over `records` with the bounds the runtime's
/// settings imply; the run began at `epoch_unix_ms` on the machine's clock.
fn judge(
    scenario: &scenarios::Scenario,
    timing: &Timing,
    records: &[Record],
    end_at_ms: u64,
    epoch_unix_ms: i64,
) -> Result<(Vec<Violation>, checkers::CheckCtx), ChaosError> {
    let mut ctx = sim::run::runner::check_ctx(timing, scenario, end_at_ms);
    ctx.epoch_unix_ms = epoch_unix_ms;
    let ctx = checkers::after_storage_steps(ctx, records);
    let mut violations = Vec::new();
    for name in &scenario.invariants {
        let checker = checkers::by_name(name)
            .ok_or_else(|| ChaosError::Setup(format!("chaos.toml: unknown invariant {name}")))?;
        violations.extend(checker.check(records, &ctx));
    }
    violations.sort_by_key(|v| v.at_ms);
    Ok((violations, ctx))
}

/// Carry out one run. See the [module docs](self).
pub async fn run(cfg: &RunConfig) -> Result<RunReport, ChaosError> {
    let started = tokio::time::Instant::now();
    if cfg.plan.processes == 0 {
        return Err(ChaosError::Setup(
            "plan: processes must be at least 1".into(),
        ));
    }
    std::fs::create_dir_all(&cfg.dir).map_err(io_err(&cfg.dir))?;
    clear(&cfg.dir)?;
    let plan = &cfg.plan;
    let plan_path = cfg.dir.join("plan.txt");
    write(&plan_path, &plan.to_string())?;
    let scenario = scenario(plan)?;
    let timing = Timing::for_scenario(&scenario).map_err(ChaosError::Setup)?;
    let engine = prepare(cfg).await?;
    let (mut h, client_spec) = Harness::new(cfg, &engine, &plan_path).await?;
    let journal_path = cfg.dir.join("harness.jsonl");
    let epoch_unix_ms = h.epoch_unix_ms;
    let mut client = ClientGuard(Some(start(
        &cfg.exe,
        "client",
        &client_spec,
        &cfg.dir,
        "client",
    )?));
    for i in 0..plan.processes {
        h.spawn(i)?;
    }
    h.carry_out(plan, &engine).await?;
    h.stop_all();
    client.stop();
    let (rows, unfinished) = read_back(&engine).await?;
    h.record(
        HARNESS_HOST,
        HarnessEvent::JobsUnfinished {
            jobs: unfinished.clone(),
        },
    );
    h.record(HARNESS_HOST, HarnessEvent::End);
    let end_at_ms = h.elapsed_ms();
    let coarse = matches!(engine, Engine::Sqlite { .. });
    let events = audit::interpret(&rows, coarse, epoch_unix_ms)
        .map_err(|e| ChaosError::Database(e.to_string()))?;
    let extra = events
        .into_iter()
        .map(|(at_us, ev)| {
            (
                at_us - epoch_unix_ms * 1000,
                sim::world::db::DB_HOST.to_owned(),
                Ev::Db(ev),
            )
        })
        .collect();
    let mut paths = vec![journal_path, cfg.dir.join("client.jsonl")];
    paths.extend(
        h.procs
            .iter()
            .map(|p| cfg.dir.join(format!("{}.jsonl", p.name))),
    );
    paths.retain(|p| p.exists());
    let merged = merge_with(&paths, extra).map_err(|e| ChaosError::Setup(e.to_string()))?;
    let (violations, ctx) = judge(
        &scenario,
        &timing,
        &merged.records,
        end_at_ms,
        epoch_unix_ms,
    )?;
    if let (Engine::Postgres { url, schema }, false) = (&engine, cfg.keep_schema) {
        drop_schema(&pg_admin(url).await?, schema).await?;
    }
    let report = RunReport {
        engine: engine.name(),
        plan: plan.clone(),
        plant: cfg.plant,
        injected: h.injected,
        jobs: count(&merged.records, |e| {
            matches!(e, Ev::Db(sim::run::history::DbEvent::JobInserted { .. }))
        }),
        unfinished: unfinished.len(),
        effects: count(&merged.records, |e| {
            matches!(e, Ev::Db(sim::run::history::DbEvent::EffectApplied { .. }))
        }),
        violations,
        enqueue_to_start_ms: enqueue_to_start(&merged.records),
        torn: merged.torn,
        heal_needed_ms: ctx.heal_converge_ms,
        wall: started.elapsed(),
        dir: cfg.dir.clone(),
        history: merged.records,
    };
    write(&cfg.dir.join("result.txt"), &report.summary())?;
    let lines: Vec<String> = report.history.iter().map(Record::to_json).collect();
    write(&cfg.dir.join("history.jsonl"), &(lines.join("\n") + "\n"))?;
    Ok(report)
}

/// The client process, killed if the run ends before it does.
struct ClientGuard(Option<Child>);

impl ClientGuard {
    fn stop(&mut self) {
        reap(self.0.take());
    }
}

impl Drop for ClientGuard {
    fn drop(&mut self) {
        self.stop();
    }
}

fn json(spec: &Spec) -> Result<String, ChaosError> {
    serde_json::to_string_pretty(spec).map_err(|e| ChaosError::Setup(e.to_string()))
}

fn count(records: &[Record], f: impl Fn(&Ev) -> bool) -> usize {
    records.iter().filter(|r| f(&r.ev)).count()
}

/// Enqueue to first start, per job that was neither scheduled nor periodic.
fn enqueue_to_start(records: &[Record]) -> Vec<u64> {
    use keel::events::Event;
    use sim::run::history::DbEvent;
    let mut enqueued = std::collections::BTreeMap::new();
    let mut scheduled = std::collections::BTreeSet::new();
    let mut out = Vec::new();
    for r in records {
        match &r.ev {
            Ev::Db(DbEvent::JobScheduled { job, .. }) => {
                scheduled.insert(*job);
            }
            Ev::Node(Event::JobEnqueued {
                job,
                inserted: true,
            }) => {
                enqueued.entry(*job).or_insert(r.at_ms);
            }
            Ev::Node(Event::HandlerStarted { job, .. }) => {
                if let Some(at) = enqueued.remove(job) {
                    if !scheduled.contains(job) {
                        out.push(r.at_ms.saturating_sub(at));
                    }
                }
            }
            _ => {}
        }
    }
    out
}

impl RunReport {
    /// The result file: the verdict, the counts, each violation with its
    /// witnesses, the plan, and the command that reruns it.
    pub fn summary(&self) -> String {
        let mut out = format!(
            "{} seed {}{}: {} violation(s), {} jobs ({} unfinished), {} effects, {} torn lines, {:.0} s\n",
            self.engine,
            self.plan.seed,
            self.plant.map(|b| format!(" plant {}", b.name())).unwrap_or_default(),
            self.violations.len(),
            self.jobs,
            self.unfinished,
            self.effects,
            self.torn,
            self.wall.as_secs_f64(),
        );
        if self.plan.heal_ms < self.heal_needed_ms {
            out.push_str(&format!(
                "note: a heal of {} ms is shorter than the {} ms no_lost_jobs needs: liveness not judged\n",
                self.plan.heal_ms, self.heal_needed_ms
            ));
        }
        out.push_str("injected:");
        for (k, n) in KINDS.iter().zip(self.injected) {
            out.push_str(&format!(" {k}={n}"));
        }
        out.push('\n');
        for v in &self.violations {
            out.push_str(&format!(
                "VIOLATION {} at {} ms: {}\n",
                v.invariant, v.at_ms, v.message
            ));
            for w in &v.witnesses {
                out.push_str(&format!("  witness {}\n", w.to_json()));
            }
        }
        out.push_str(&format!("plan:\n{}", self.plan));
        out.push_str(&format!("rerun: {}\n", self.rerun()));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_fault_ends_by_the_heal_and_ends_sort_before_starts() {
        let text = "seed 1 processes 2 fault_ms 10000 heal_ms 5000\n\
                    0 skew p1 0ms\n0 skew p2 0ms\n\
                    1000 partition p1 3000ms\n\
                    4000 delay p1 50ms for 9000ms\n\
                    9000 pause p2 5000ms\n";
        let plan: ChaosPlan = text.parse().expect("plan");
        let steps = actions(&plan);
        let at: Vec<(u64, bool)> = steps
            .iter()
            .map(|s| (s.at_ms, s.starts.is_some()))
            .collect();
        assert_eq!(
            at,
            [
                (1000, true),
                (4000, false),
                (4000, true),
                (9000, true),
                (10000, false),
                (10000, false)
            ]
        );
    }

    #[test]
    fn quantiles_are_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(quantile(&v, 0.99), Some(99));
        assert_eq!(quantile(&v, 1.0), Some(100));
        assert_eq!(quantile(&[], 0.99), None);
    }
}

#[cfg(test)]
mod bounds_tests {
    use super::*;
    use crate::plan::PlanConfig;

    /// `no_lost_jobs` judges only a heal at least `heal_converge_ms` long:
    /// the default heal must be one it judges.
    #[test]
    fn the_default_heal_is_long_enough_for_no_lost_jobs_to_judge() {
        let plan = ChaosPlan::generate(&PlanConfig::default(), 1);
        let scenario = scenario(&plan).expect("chaos.toml");
        let timing = Timing::for_scenario(&scenario).expect("timing");
        let ctx = sim::run::runner::check_ctx(&timing, &scenario, 0);
        assert!(
            ctx.heal_converge_ms <= plan.heal_ms,
            "heal {} ms, no_lost_jobs needs {} ms",
            plan.heal_ms,
            ctx.heal_converge_ms
        );
    }
}
