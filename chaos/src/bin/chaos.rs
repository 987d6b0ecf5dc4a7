//! `chaos`: keel's real processes on a real database under a seeded plan of
//! real faults, judged by the simulator's checkers.
//!
//! ```text
//! chaos run --engine postgres --seed 7            # one run; KEEL_PG_URL names the server
//! chaos run --engine sqlite --plan runs/x/plan.txt # the same faults again (not the same interleaving)
//! chaos sweep --engine postgres --runs 30          # many runs, a table at the end
//! chaos plan --engine postgres --seed 7           # print a seed's plan only
//! ```
//!
//! `worker` and `client` are the processes a run starts; they are not for
//! people. Exit codes: 0 every run held, 1 a violation, 2 bad usage or setup.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use chaos::plan::{ChaosPlan, PlanConfig, KINDS, KIND_COUNT};
use chaos::process::{client_main, worker_main, Spec};
use chaos::run::{quantile, run, Database, RunConfig, RunReport};
use clap::{Args, Parser, Subcommand, ValueEnum};
use keel::planted::Bug;

#[derive(Parser)]
#[command(
    name = "chaos",
    about = "keel under real faults, judged by the simulator's checkers"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum EngineArg {
    Postgres,
    Sqlite,
}

#[derive(Args)]
struct Common {
    /// The database: PostgreSQL (from --url or KEEL_PG_URL) or one SQLite file.
    #[arg(long, value_enum)]
    engine: EngineArg,
    /// PostgreSQL server URL (default: KEEL_PG_URL).
    #[arg(long)]
    url: Option<String>,
    /// Worker processes.
    #[arg(long, default_value_t = 3)]
    processes: usize,
    /// Length of the fault phase, seconds.
    #[arg(long, default_value_t = 60)]
    fault_s: u64,
    /// Length of the heal phase after it, seconds.
    #[arg(long, default_value_t = 50)]
    heal_s: u64,
    /// Switch on a planted bug in every worker.
    #[arg(long)]
    plant: Option<Bug>,
    /// Where runs write their plan, journals, logs and result.
    #[arg(long, default_value = "target/chaos")]
    dir: PathBuf,
    /// Keep each run's PostgreSQL schema, to inspect it.
    #[arg(long)]
    keep_schema: bool,
}

#[derive(Subcommand)]
enum Cmd {
    /// One run: from a seed's plan, or a plan file.
    Run {
        #[command(flatten)]
        common: Common,
        /// Draw the plan from this seed.
        #[arg(long, default_value_t = 1, conflicts_with = "plan")]
        seed: u64,
        /// Carry out this plan file (a run's plan.txt).
        #[arg(long)]
        plan: Option<PathBuf>,
    },
    /// Runs of consecutive seeds, and a table of them.
    Sweep {
        #[command(flatten)]
        common: Common,
        /// How many runs.
        #[arg(long, default_value_t = 10)]
        runs: u64,
        /// The first seed.
        #[arg(long, default_value_t = 1)]
        start: u64,
        /// Stop at the first run with a violation.
        #[arg(long)]
        fail_fast: bool,
        /// Start no new run after this many seconds.
        #[arg(long)]
        budget_s: Option<u64>,
    },
    /// Print the plan a seed draws, without running it.
    Plan {
        #[command(flatten)]
        common: Common,
        /// The seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// A worker process (started by a run).
    #[command(hide = true)]
    Worker {
        #[arg(long)]
        spec: PathBuf,
    },
    /// The client process (started by a run).
    #[command(hide = true)]
    Client {
        #[arg(long)]
        spec: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("chaos: cannot start tokio: {e}");
            return ExitCode::from(2);
        }
    };
    runtime.block_on(async {
        match cli.command {
            Cmd::Worker { spec } => process(spec, true).await,
            Cmd::Client { spec } => process(spec, false).await,
            Cmd::Plan { common, seed } => {
                print!("{}", ChaosPlan::generate(&plan_config(&common), seed));
                ExitCode::SUCCESS
            }
            Cmd::Run { common, seed, plan } => {
                let plan = match plan {
                    Some(path) => match read_plan(&path) {
                        Ok(plan) => plan,
                        Err(e) => return usage(&e),
                    },
                    None => ChaosPlan::generate(&plan_config(&common), seed),
                };
                sweep(&common, vec![plan], false, None).await
            }
            Cmd::Sweep {
                common,
                runs,
                start,
                fail_fast,
                budget_s,
            } => {
                let cfg = plan_config(&common);
                let plans = (start..start + runs)
                    .map(|s| ChaosPlan::generate(&cfg, s))
                    .collect();
                sweep(&common, plans, fail_fast, budget_s.map(Duration::from_secs)).await
            }
        }
    })
}

fn usage(message: &str) -> ExitCode {
    eprintln!("chaos: {message}");
    ExitCode::from(2)
}

fn read_plan(path: &PathBuf) -> Result<ChaosPlan, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    text.parse().map_err(|e| format!("{}: {e}", path.display()))
}

async fn process(spec: PathBuf, worker: bool) -> ExitCode {
    let spec = match Spec::read(&spec) {
        Ok(spec) => spec,
        Err(e) => return usage(&e.to_string()),
    };
    // Every run stops by itself: a process whose harness is gone exits. A
    // stopped process cannot look, so on Linux the kernel kills it then; the
    // watch below covers the rest (and a harness gone before this line).
    #[cfg(target_os = "linux")]
    if let Err(e) =
        rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
    {
        eprintln!("chaos: no parent-death signal ({e}); relying on the watch");
    }
    let parent = std::os::unix::process::parent_id();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            if std::os::unix::process::parent_id() != parent {
                std::process::exit(3);
            }
        }
    });
    let result = if worker {
        worker_main(spec).await
    } else {
        client_main(spec).await
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => usage(&e.to_string()),
    }
}

fn plan_config(common: &Common) -> PlanConfig {
    let mut cfg = PlanConfig {
        processes: common.processes,
        fault_ms: common.fault_s * 1000,
        heal_ms: common.heal_s * 1000,
        ..PlanConfig::default()
    };
    if common.engine == EngineArg::Sqlite {
        // No network between a process and its file: no link faults.
        for k in ["partition", "delay", "drop_replies", "reset"] {
            if let Some(i) = KINDS.iter().position(|n| *n == k) {
                cfg.rates_per_min[i] = 0.0;
            }
        }
    }
    cfg
}

async fn sweep(
    common: &Common,
    plans: Vec<ChaosPlan>,
    fail_fast: bool,
    budget: Option<Duration>,
) -> ExitCode {
    let database = match common.engine {
        EngineArg::Sqlite => Database::Sqlite,
        EngineArg::Postgres => match common
            .url
            .clone()
            .or_else(|| std::env::var("KEEL_PG_URL").ok())
        {
            Some(url) => Database::Postgres(url),
            None => return usage("--engine postgres needs --url or KEEL_PG_URL"),
        },
    };
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => return usage(&format!("cannot find the chaos binary: {e}")),
    };
    let started = tokio::time::Instant::now();
    let mut reports: Vec<RunReport> = Vec::new();
    for plan in plans {
        if budget.is_some_and(|b| started.elapsed() >= b) {
            break;
        }
        let engine = match common.engine {
            EngineArg::Postgres => "postgres",
            EngineArg::Sqlite => "sqlite",
        };
        let plant = common
            .plant
            .map(|b| format!("-{}", b.name()))
            .unwrap_or_default();
        let cfg = RunConfig {
            database: database.clone(),
            dir: common.dir.join(format!("{engine}{plant}-{}", plan.seed)),
            plan,
            plant: common.plant,
            exe: exe.clone(),
            keep_schema: common.keep_schema,
        };
        println!(
            "{}",
            cfg.plan.to_string().lines().next().unwrap_or_default()
        );
        let report = match run(&cfg).await {
            Ok(report) => report,
            Err(e) => return usage(&e.to_string()),
        };
        let summary = report.summary();
        if report.violations.is_empty() {
            println!("{}", summary.lines().next().unwrap_or_default());
        } else {
            // Witnesses, the plan and the rerun command.
            print!("{summary}");
        }
        let failed = !report.violations.is_empty();
        reports.push(report);
        if failed && fail_fast {
            break;
        }
    }
    print!("{}", table(&reports, started.elapsed()));
    if reports.iter().any(|r| !r.violations.is_empty()) {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// The per-engine table: runs, faults by kind, jobs, violations, p99.
fn table(reports: &[RunReport], wall: Duration) -> String {
    let Some(first) = reports.first() else {
        return "no runs\n".into();
    };
    let mut injected = [0usize; KIND_COUNT];
    for r in reports {
        for (sum, n) in injected.iter_mut().zip(r.injected) {
            *sum += n;
        }
    }
    let all: Vec<u64> = reports
        .iter()
        .flat_map(|r| r.enqueue_to_start_ms.clone())
        .collect();
    let sum = |f: fn(&RunReport) -> usize| reports.iter().map(f).sum::<usize>();
    let caught: Vec<String> = reports
        .iter()
        .filter(|r| !r.violations.is_empty())
        .map(|r| {
            let mut names: Vec<&str> = r.violations.iter().map(|v| v.invariant).collect();
            names.dedup();
            format!("seed {} ({})", r.plan.seed, names.join(", "))
        })
        .collect();
    let mut out = format!(
        "\n| engine | runs | wall | faults injected | jobs | unfinished | effects | violations | p99 enqueue-to-start |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n\
         | {} | {} | {:.0} s | {} | {} | {} | {} | {} | {} |\n",
        first.engine,
        reports.len(),
        wall.as_secs_f64(),
        KINDS
            .iter()
            .zip(injected)
            .filter(|(_, n)| *n > 0)
            .map(|(k, n)| format!("{k} {n}"))
            .collect::<Vec<_>>()
            .join(", "),
        sum(|r| r.jobs),
        sum(|r| r.unfinished),
        sum(|r| r.effects),
        sum(|r| r.violations.len()),
        quantile(&all, 0.99).map_or("-".into(), |ms| format!("{ms} ms")),
    );
    if !caught.is_empty() {
        out.push_str(&format!("violations in: {}\n", caught.join("; ")));
    }
    out
}
