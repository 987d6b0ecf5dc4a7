//! A worker process for the multi-process crash test (`tests/multiprocess.rs`).
//!
//! ```sh
//! crash_worker --sqlite jobs.db --enqueue 200 --spread-ms 8000   # enqueue, print ids, exit
//! crash_worker --sqlite jobs.db --node w1 --log run.log --workers 2
//! ```
//!
//! Each attempt of a `crash_job` appends lines to the shared log (one `write`
//! per line, O_APPEND, so lines of concurrent processes never interleave):
//!
//! ```text
//! boot <node> <pid> <unix_ms>
//! start <job> <attempt> <node> <pid> <unix_ms>
//! effect <job> <attempt> <Applied|AlreadyApplied|NotOwner|Error> <unix_ms>
//! stop <job> <attempt> <unix_ms>        the handler was asked to stop; `end` follows
//! end <job> <attempt> <unix_ms>
//! drop <job> <attempt> <unix_ms>        the worker dropped the handler mid-run
//! ```
//!
//! Timings are short (stale claims rescued after 1 s) so a test sees many
//! crashes and rescues in a few seconds.

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Parser;
use keel::backoff::Backoff;
use keel::clock::{Clock, SystemClock};
use keel::jobs::MAINTENANCE_LEASE;
use keel::jobs::{JobCtx, JobsConfig, Outcome, Runtime};
use keel::leadership::ElectorConfig;
use keel::storage::{EffectResult, EnqueueOutcome, EnqueueRequest};
use keel_examples::StoreArgs;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::json;

const DEFAULT_DB: &str = "keel-crash.db";

#[derive(Parser)]
#[command(about = "A keel worker process for the multi-process crash test")]
struct Args {
    #[command(flatten)]
    store: StoreArgs,
    /// This node's name.
    #[arg(long, default_value = "worker")]
    node: String,
    /// The log file every attempt appends to.
    #[arg(long, value_name = "FILE")]
    log: Option<PathBuf>,
    /// Workers on the queue.
    #[arg(long, default_value_t = 2)]
    workers: u32,
    /// Enqueue this many `crash_job`s, print their ids one per line, and exit.
    #[arg(long, value_name = "N")]
    enqueue: Option<u32>,
    /// With --enqueue: spread the jobs' due times evenly over this many ms.
    #[arg(long, value_name = "MS", default_value_t = 0)]
    spread_ms: u64,
    /// With --enqueue: attempts per job.
    #[arg(long, default_value_t = 25)]
    max_attempts: u32,
    /// Exit after this many seconds, so a worker orphaned by a failed test stops.
    #[arg(long, value_name = "SECS", default_value_t = 180)]
    exit_after: u64,
}

/// The shared log: each line is one `write` on a file opened with O_APPEND.
struct Log(File);

impl Log {
    fn line(&self, line: String) {
        // A lost log line would show up as a failed check; nothing better to do here.
        let _ = (&self.0).write_all(format!("{line}\n").as_bytes());
    }
}

fn now_ms() -> i64 {
    SystemClock::new().now().as_millis()
}

/// Logs `drop` if the attempt is dropped before it logged its `end`.
struct DropGuard<'a> {
    log: &'a Log,
    job: u64,
    attempt: u32,
    armed: bool,
}

impl Drop for DropGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            let (job, attempt) = (self.job, self.attempt);
            self.log.line(format!("drop {job} {attempt} {}", now_ms()));
        }
    }
}

struct CrashJob {
    log: Log,
    node: String,
    pid: u32,
    rng: Mutex<ChaCha8Rng>,
}

impl CrashJob {
    async fn run(&self, ctx: JobCtx) -> Outcome {
        let (job, attempt) = (ctx.job.0, ctx.attempt);
        let (node, pid) = (&self.node, self.pid);
        self.log
            .line(format!("start {job} {attempt} {node} {pid} {}", now_ms()));
        let mut guard = DropGuard {
            log: &self.log,
            job,
            attempt,
            armed: true,
        };
        let nap = {
            let mut rng = self.rng.lock().unwrap_or_else(|p| p.into_inner());
            Duration::from_millis(rng.random_range(20..300))
        };
        tokio::select! {
            biased;
            () = ctx.cancel.wait() => {
                self.log.line(format!("stop {job} {attempt} {}", now_ms()));
                self.log.line(format!("end {job} {attempt} {}", now_ms()));
                guard.armed = false;
                return Outcome::Failed("asked to stop".into());
            }
            () = tokio::time::sleep(nap) => {}
        }
        let value = json!({"attempt": attempt, "node": node, "pid": pid});
        let result = match ctx.effect("done", value).await {
            Ok(EffectResult::Applied) => "Applied",
            Ok(EffectResult::AlreadyApplied) => "AlreadyApplied",
            Ok(EffectResult::NotOwner) => "NotOwner",
            Err(_) => "Error",
        };
        self.log
            .line(format!("effect {job} {attempt} {result} {}", now_ms()));
        self.log.line(format!("end {job} {attempt} {}", now_ms()));
        guard.armed = false;
        if result == "Error" {
            return Outcome::Failed("effect failed".into());
        }
        Outcome::Completed
    }
}

/// Short timings: a SIGKILLed worker's jobs come back after about a second.
fn jobs_config() -> JobsConfig {
    JobsConfig {
        heartbeat_interval: Duration::from_millis(100),
        stale_threshold: Duration::from_secs(1),
        claim_trust: Duration::from_millis(600),
        cancel_grace: Duration::from_millis(100),
        idle_poll: Duration::from_millis(50),
        claim_error_backoff: Duration::from_millis(100),
        retry: Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_secs(1),
            jitter_ratio: 0.2,
        },
        finalize_retry_delay: Duration::from_millis(50),
        supervisor_interval: Duration::from_millis(200),
        maintenance_interval: Duration::from_millis(100),
        ..JobsConfig::default()
    }
}

/// A leader that dies is replaced within about a second.
fn elector_config(node: &str) -> ElectorConfig {
    ElectorConfig {
        lease_ttl: Duration::from_secs(1),
        renew_interval: Duration::from_millis(200),
        safety_margin: Duration::from_millis(300),
        acquire_interval: Duration::from_millis(200),
        resign_cooldown: Duration::from_secs(1),
        ..ElectorConfig::new(MAINTENANCE_LEASE, node)
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let storage = match args.store.open(DEFAULT_DB, 4).await {
        Ok(storage) => storage,
        Err(e) => {
            eprintln!("error: cannot open storage: {e}");
            return ExitCode::FAILURE;
        }
    };

    if let Some(n) = args.enqueue {
        let reqs = (0..n)
            .map(|i| {
                let due = args.spread_ms * u64::from(i) / u64::from(n.max(1));
                EnqueueRequest::new("crash_job", json!({"n": i}))
                    .max_attempts(args.max_attempts)
                    .scheduled_in(Duration::from_millis(due))
            })
            .collect();
        return match storage.enqueue_batch(reqs).await {
            Ok(outcomes) => {
                for outcome in outcomes {
                    if let EnqueueOutcome::Inserted(id) = outcome {
                        println!("{}", id.0);
                    }
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: enqueue failed: {e}");
                ExitCode::FAILURE
            }
        };
    }

    let Some(log_path) = &args.log else {
        eprintln!("error: --log FILE is required to run jobs");
        return ExitCode::FAILURE;
    };
    let file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(log_path);
    let log = match file {
        Ok(file) => Log(file),
        Err(e) => {
            eprintln!("error: cannot open log {}: {e}", log_path.display());
            return ExitCode::FAILURE;
        }
    };
    let pid = std::process::id();
    let seed = u64::from(pid) ^ now_ms().unsigned_abs();
    log.line(format!("boot {} {pid} {}", args.node, now_ms()));
    let handler = Arc::new(CrashJob {
        log,
        node: args.node.clone(),
        pid,
        rng: Mutex::new(ChaCha8Rng::seed_from_u64(seed)),
    });
    let runtime = Runtime::builder(args.node.clone(), storage, Arc::new(SystemClock::new()))
        .queue("default", args.workers)
        .handler("crash_job", move |ctx: JobCtx, _payload| {
            let handler = handler.clone();
            async move { handler.run(ctx).await }
        })
        .jobs_config(jobs_config())
        .elector_config(elector_config(&args.node))
        .rng_seed(seed)
        .build()
        .and_then(|rt| rt.start());
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start keel: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Normally SIGKILLed by the test; Ctrl-C or the time limit shut down gracefully.
    tokio::select! {
        biased;
        _ = tokio::signal::ctrl_c() => {}
        () = tokio::time::sleep(Duration::from_secs(args.exit_after)) => {}
    }
    let report = runtime.shutdown(Duration::from_secs(2)).await;
    eprintln!("{}: {report:?}", args.node);
    ExitCode::SUCCESS
}
