//! Multi-process crash test: real `crash_worker` processes share one store
//! while the test SIGKILLs and restarts them at seeded-random moments.
//!
//! Checked afterwards, from storage and the workers' shared log:
//! (a) every job completed; (b) every job has its `done` effect and no log shows
//! it applied twice; (c) no two attempts of one job ran at the same time; (d) the
//! run was not vacuous: something was killed and some job needed a retry.
//!
//! `KEEL_CRASH_SEED=<n>` replays a kill schedule (the processes' own timing
//! still varies). The PostgreSQL trial runs when `KEEL_PG_URL` is set, on a
//! schema of its own that it drops; otherwise it is listed as ignored.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use keel::clock::{Clock, SystemClock};
use keel::storage::{
    JobId, JobState, PostgresOptions, PostgresStorage, SharedStorage, SqliteStorage,
};
use libtest_mimic::{Arguments, Failed, Trial};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const WORKER: &str = env!("CARGO_BIN_EXE_crash_worker");
const JOBS: u32 = 200;
const PROCESSES: usize = 4;
const WORKERS_PER_PROCESS: &str = "2";
/// Jobs come due over this span, so there is work to interrupt throughout the kills.
const SPREAD_MS: u64 = 9_000;
const KILL_PHASE_MS: i64 = 12_000;
/// Random pause before each kill, and before restarting a killed process.
const KILL_GAP_MS: std::ops::Range<i64> = 300..1_200;
const RESTART_DELAY_MS: std::ops::Range<i64> = 100..800;
const FINISH_TIMEOUT_MS: i64 = 60_000;
const PG_URL_ENV: &str = "KEEL_PG_URL";

fn main() {
    let mut args = Arguments::from_args();
    // Each trial keeps both cores busy with its processes; run them one by one.
    args.test_threads.get_or_insert(1);
    let pg_url = std::env::var(PG_URL_ENV).ok();
    if pg_url.is_none() {
        eprintln!("SKIPPED multiprocess_postgres: {PG_URL_ENV} not set");
    }
    let skipped = pg_url.is_none();
    let trials = vec![
        Trial::test("multiprocess_sqlite", || run(Engine::sqlite())),
        Trial::test("multiprocess_postgres", move || match pg_url {
            Some(url) => run(Engine::postgres(url)),
            None => Err(format!("{PG_URL_ENV} not set").into()),
        })
        .with_ignored_flag(skipped),
        Trial::test(
            "check_log_catches_overlaps_and_double_effects",
            checker_self_test,
        ),
    ];
    libtest_mimic::run(&args, trials).exit();
}

fn now_ms() -> i64 {
    SystemClock::new().now().as_millis()
}

enum Engine {
    Sqlite { dir: tempfile::TempDir },
    Postgres { url: String, schema: String },
}

impl Engine {
    fn sqlite() -> Engine {
        let dir = tempfile::tempdir().expect("a temp dir");
        Engine::Sqlite { dir }
    }

    fn postgres(url: String) -> Engine {
        let schema = format!("keel_mp_{}_{}", std::process::id(), now_ms() % 1_000_000);
        Engine::Postgres { url, schema }
    }

    fn name(&self) -> &'static str {
        match self {
            Engine::Sqlite { .. } => "multiprocess_sqlite",
            Engine::Postgres { .. } => "multiprocess_postgres",
        }
    }

    /// The worker's storage arguments.
    fn store_args(&self) -> Vec<String> {
        match self {
            Engine::Sqlite { dir } => {
                let path = dir.path().join("jobs.db");
                vec!["--sqlite".into(), path.display().to_string()]
            }
            Engine::Postgres { url, schema } => {
                let args = ["--postgres", url, "--schema", schema];
                args.map(str::to_owned).to_vec()
            }
        }
    }

    async fn open(&self) -> Result<SharedStorage, String> {
        match self {
            Engine::Sqlite { dir } => SqliteStorage::open(dir.path().join("jobs.db"))
                .await
                .map(|s| Arc::new(s) as SharedStorage)
                .map_err(|e| e.to_string()),
            Engine::Postgres { url, schema } => {
                PostgresStorage::connect_with(url, pg_options(schema))
                    .await
                    .map(|s| Arc::new(s) as SharedStorage)
                    .map_err(|e| e.to_string())
            }
        }
    }

    async fn drop_schema(&self) {
        if let Engine::Postgres { url, schema } = self {
            let dropped = match PostgresStorage::connect_with(url, pg_options(schema)).await {
                Ok(store) => store.drop_schema().await.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            if let Err(e) = dropped {
                eprintln!("cannot drop schema {schema}: {e}");
            }
        }
    }
}

fn pg_options(schema: &str) -> PostgresOptions {
    PostgresOptions::default()
        .schema(schema)
        .pool_size(1)
        .listen(false)
}

/// The worker processes; whatever is still alive is killed on drop, so a
/// failing test leaves no orphans.
struct Fleet {
    store_args: Vec<String>,
    dir: PathBuf,
    log: PathBuf,
    procs: Vec<Option<Child>>,
    /// `(pid, ms)`: when each killed process was known dead (reaped).
    kills: Vec<(u32, i64)>,
    spawned: usize,
}

impl Fleet {
    fn spawn(&mut self, slot: usize) -> Result<(), String> {
        let node = format!("w{slot}");
        let stderr = File::options()
            .append(true)
            .create(true)
            .open(self.dir.join(format!("{node}.stderr")))
            .map_err(|e| e.to_string())?;
        let child = Command::new(WORKER)
            .args(&self.store_args)
            .args(["--node", &node, "--workers", WORKERS_PER_PROCESS, "--log"])
            .arg(&self.log)
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .map_err(|e| format!("cannot start {WORKER}: {e}"))?;
        self.procs[slot] = Some(child);
        self.spawned += 1;
        Ok(())
    }

    /// SIGKILL the process in `slot` and wait until it is reaped.
    fn kill(&mut self, slot: usize) {
        if let Some(mut child) = self.procs[slot].take() {
            // `Child::kill` is SIGKILL on Unix: no handler, no cleanup, no last words.
            let _ = child.kill();
            let _ = child.wait();
            self.kills.push((child.id(), now_ms()));
        }
    }

    fn kill_all(&mut self) {
        (0..self.procs.len()).for_each(|slot| self.kill(slot));
    }

    fn live(&self) -> Vec<usize> {
        (0..self.procs.len())
            .filter(|&s| self.procs[s].is_some())
            .collect()
    }

    /// The tail of every worker's stderr, for failure messages.
    fn stderr_tails(&self) -> String {
        let mut out = String::new();
        for slot in 0..self.procs.len() {
            let path = self.dir.join(format!("w{slot}.stderr"));
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(5).collect();
            for line in tail.into_iter().rev() {
                out.push_str(&format!("  w{slot}: {line}\n"));
            }
        }
        out
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.kill_all();
    }
}

fn run(engine: Engine) -> Result<(), Failed> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime");
    let result = crash_and_check(&engine, &rt);
    rt.block_on(engine.drop_schema());
    result.map_err(Failed::from)
}

fn crash_and_check(engine: &Engine, rt: &tokio::runtime::Runtime) -> Result<(), String> {
    let name = engine.name();
    let seed = match std::env::var("KEEL_CRASH_SEED") {
        Ok(s) => s
            .parse::<u64>()
            .map_err(|e| format!("KEEL_CRASH_SEED: {e}"))?,
        Err(_) => now_ms().unsigned_abs(),
    };
    eprintln!("{name}: seed {seed} (replay the kill schedule with KEEL_CRASH_SEED={seed})");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let began = now_ms();

    let enqueued = Command::new(WORKER)
        .args(engine.store_args())
        .args(["--enqueue", &JOBS.to_string()])
        .args(["--spread-ms", &SPREAD_MS.to_string()])
        .output()
        .map_err(|e| format!("cannot run {WORKER}: {e}"))?;
    if !enqueued.status.success() {
        let err = String::from_utf8_lossy(&enqueued.stderr);
        return Err(format!("enqueue failed: {err}"));
    }
    let ids: Vec<JobId> = String::from_utf8_lossy(&enqueued.stdout)
        .lines()
        .map(|l| l.trim().parse().map(JobId))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("enqueue printed a bad id: {e}"))?;
    if ids.len() != JOBS as usize {
        return Err(format!("enqueued {} jobs, wanted {JOBS}", ids.len()));
    }

    let mut fleet = Fleet {
        store_args: engine.store_args(),
        dir: dir.path().to_owned(),
        log: dir.path().join("attempts.log"),
        procs: (0..PROCESSES).map(|_| None).collect(),
        kills: Vec::new(),
        spawned: 0,
    };
    (0..PROCESSES).try_for_each(|slot| fleet.spawn(slot))?;

    // Kill phase: a random live worker dies at random moments and comes back a
    // little later.
    let kill_until = now_ms() + KILL_PHASE_MS;
    let mut next_kill = now_ms() + rng.random_range(KILL_GAP_MS);
    let mut restarts: Vec<(usize, i64)> = Vec::new();
    while now_ms() < kill_until {
        std::thread::sleep(Duration::from_millis(20));
        let now = now_ms();
        for (slot, _) in restarts.iter().filter(|(_, at)| *at <= now) {
            fleet.spawn(*slot)?;
        }
        restarts.retain(|(_, at)| *at > now);
        if now >= next_kill {
            let live = fleet.live();
            if !live.is_empty() {
                let slot = live[rng.random_range(0..live.len())];
                fleet.kill(slot);
                restarts.push((slot, now_ms() + rng.random_range(RESTART_DELAY_MS)));
            }
            next_kill = now_ms() + rng.random_range(KILL_GAP_MS);
        }
    }
    let crash_kills = fleet.kills.len();
    for (slot, _) in std::mem::take(&mut restarts) {
        fleet.spawn(slot)?;
    }

    // Let the survivors finish everything.
    let storage = rt.block_on(engine.open())?;
    let deadline = now_ms() + FINISH_TIMEOUT_MS;
    loop {
        let counts = rt
            .block_on(storage.count_by_state())
            .map_err(|e| e.to_string())?;
        if counts.unfinished() == 0 {
            break;
        }
        if now_ms() > deadline {
            fleet.kill_all();
            return Err(format!(
                "{} jobs unfinished {FINISH_TIMEOUT_MS}ms after the kills stopped: {:?}\nworkers:\n{}",
                counts.unfinished(),
                counts.0,
                fleet.stderr_tails()
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let finished = now_ms();
    fleet.kill_all();
    let test_end = now_ms();

    let log = std::fs::read_to_string(&fleet.log).map_err(|e| e.to_string())?;
    let mut problems = Vec::new();

    // (a) and (b) from storage.
    let mut attempts_hist: BTreeMap<u32, u32> = BTreeMap::new();
    let mut stored_effects = BTreeMap::new();
    for &id in &ids {
        let job = rt
            .block_on(storage.get_job(id))
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("{id} is gone"))?;
        *attempts_hist.entry(job.attempt).or_default() += 1;
        if job.state != JobState::Completed {
            problems.push(format!(
                "{id} ended {:?} after {} attempts: {:?}",
                job.state, job.attempt, job.errors
            ));
        }
        match rt.block_on(storage.get_effect(id, "done")) {
            Ok(Some(value)) => {
                stored_effects.insert(id.0, value);
            }
            Ok(None) => problems.push(format!("{id} has no done effect")),
            Err(e) => return Err(e.to_string()),
        }
    }

    let report = check_log(&log, &fleet.kills, test_end, &stored_effects, &mut problems);
    let retried = attempts_hist.range(2..).map(|(_, n)| n).sum::<u32>();
    // (d) the run must have exercised something.
    if crash_kills == 0 {
        problems.push("no worker was killed".into());
    }
    if retried == 0 {
        problems.push("no job needed a second attempt".into());
    }

    eprintln!(
        "{name}: {JOBS} jobs, {PROCESSES} processes x {WORKERS_PER_PROCESS} workers, \
         {crash_kills} kills, {} process starts; all finished {:.1}s after start \
         (kill phase {}s); attempts per job {attempts_hist:?}; {report}",
        fleet.spawned,
        (finished - began) as f64 / 1000.0,
        KILL_PHASE_MS / 1000,
    );
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "seed {seed}: {} problem(s):\n{}\n(log: {} lines)",
            problems.len(),
            problems.join("\n"),
            log.lines().count()
        ))
    }
}

/// One attempt as the log tells it.
#[derive(Default)]
struct Attempt {
    starts: Vec<(i64, u32, String)>,
    end: Option<i64>,
}

/// Checks (b) and (c) on the log; returns a summary of what the log shows.
fn check_log(
    log: &str,
    kills: &[(u32, i64)],
    test_end: i64,
    stored_effects: &BTreeMap<u64, serde_json::Value>,
    problems: &mut Vec<String>,
) -> String {
    let killed: BTreeMap<u32, i64> = kills.iter().copied().collect();
    let mut attempts: BTreeMap<(u64, u32), Attempt> = BTreeMap::new();
    let mut applied: BTreeMap<u64, Vec<u32>> = BTreeMap::new();
    let mut results: BTreeMap<String, u32> = BTreeMap::new();
    let mut lines_of: BTreeMap<u64, Vec<&str>> = BTreeMap::new();
    let (mut drops, mut stops) = (0, 0);
    for line in log.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        let num = |i: usize| f.get(i).and_then(|s| s.parse::<i64>().ok());
        let (Some(job), Some(attempt)) = (num(1), num(2)) else {
            continue; // `boot` lines
        };
        let key = (
            job.unsigned_abs(),
            u32::try_from(attempt).unwrap_or(u32::MAX),
        );
        lines_of.entry(key.0).or_default().push(line);
        let a = attempts.entry(key).or_default();
        match (f[0], f.len()) {
            ("start", 6) => {
                let pid = num(4).and_then(|p| u32::try_from(p).ok()).unwrap_or(0);
                a.starts.push((num(5).unwrap_or(0), pid, f[3].to_owned()));
            }
            ("effect", 5) => {
                *results.entry(f[3].to_owned()).or_default() += 1;
                if f[3] == "Applied" {
                    applied.entry(key.0).or_default().push(key.1);
                }
            }
            ("end", 4) | ("drop", 4) => {
                drops += u32::from(f[0] == "drop");
                a.end = a.end.max(num(3));
            }
            ("stop", 4) => stops += 1,
            _ => problems.push(format!("unreadable log line: {line:?}")),
        }
    }
    let evidence = |job: u64| {
        let lines = lines_of
            .get(&job)
            .map(|l| l.join("\n    "))
            .unwrap_or_default();
        format!("\n    {lines}\n    kills (pid, ms): {kills:?}")
    };

    // (b) at most one Applied per job, and it is the one storage kept.
    for (job, by) in &applied {
        if by.len() > 1 {
            problems.push(format!(
                "job {job}: done effect applied by attempts {by:?}{}",
                evidence(*job)
            ));
        }
        let kept = stored_effects.get(job).and_then(|v| v["attempt"].as_u64());
        if kept != by.first().map(|&a| u64::from(a)) {
            problems.push(format!(
                "job {job}: attempt {by:?} logged Applied but storage holds {kept:?}"
            ));
        }
    }

    // (c) attempts of one job never overlap: an attempt runs from its start
    // until its end/drop line, or until its process was reaped after a kill.
    let mut by_job: BTreeMap<u64, Vec<(i64, i64, u32)>> = BTreeMap::new();
    for ((job, attempt), a) in &attempts {
        if a.starts.len() != 1 {
            problems.push(format!(
                "job {job} attempt {attempt} started {} times{}",
                a.starts.len(),
                evidence(*job)
            ));
        }
        for (start, pid, _) in &a.starts {
            let end = a
                .end
                .or_else(|| killed.get(pid).copied())
                .unwrap_or(test_end);
            by_job
                .entry(*job)
                .or_default()
                .push((*start, end, *attempt));
        }
    }
    for (job, mut spans) in by_job {
        spans.sort();
        let mut latest: Option<(i64, u32)> = None;
        for (start, end, attempt) in spans {
            if let Some((prev_end, prev)) = latest {
                if start < prev_end {
                    problems.push(format!(
                        "job {job}: attempt {attempt} started at {start} while attempt {prev} ran until {prev_end}{}",
                        evidence(job)
                    ));
                }
            }
            if latest.is_none_or(|(e, _)| end > e) {
                latest = Some((end, attempt));
            }
        }
    }
    format!("effects logged {results:?}, handlers dropped {drops}, asked to stop {stops}")
}

/// The checker must see what it is for: a rescue that overlaps a live attempt,
/// an attempt cut short by a kill, and an effect applied twice.
fn checker_self_test() -> Result<(), Failed> {
    let log = "boot w0 10 0\n\
               start 1 1 w0 10 100\n\
               start 1 2 w1 11 500\n\
               effect 1 1 Applied 600\n\
               effect 1 2 Applied 650\n\
               end 1 1 700\n\
               end 1 2 800\n\
               start 2 1 w2 12 100\n\
               start 2 2 w1 11 1500\n\
               end 2 2 1700\n";
    let effects = BTreeMap::from([(1, serde_json::json!({"attempt": 1}))]);
    let mut problems = Vec::new();
    // pid 12 was reaped at 1200: attempt 1 of job 2 ended there, before attempt 2.
    check_log(log, &[(12, 1200)], 2000, &effects, &mut problems);
    let found = problems.join("\n");
    assert!(
        found.contains("job 1: attempt 2 started at 500 while attempt 1 ran until 700"),
        "{found}"
    );
    assert!(
        found.contains("job 1: done effect applied by attempts [1, 2]"),
        "{found}"
    );
    assert!(!found.contains("job 2"), "{found}");
    assert_eq!(problems.len(), 2, "{found}");
    // Without the kill, job 2's first attempt runs on to the end of the test.
    let mut problems = Vec::new();
    check_log(log, &[], 2000, &effects, &mut problems);
    assert!(
        problems.iter().any(|p| p.starts_with("job 2: attempt 2")),
        "{problems:?}"
    );
    Ok(())
}
