//! The `sim` command line: sweep seeds of a scenario, replay one seed (or a
//! fault script), shrink a failing seed to a minimal script, or explain one seed
//! as an HTML page.
//!
//! Exit codes: 0 every invariant held, 2 usage error, 3 an invariant was
//! violated, 4 non-determinism detected (or the simulation itself failed).
//! `sweep` runs whole seeds on a worker pool and reports in seed order, so its
//! output does not depend on --jobs.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use keel::planted::Bug;
use scenarios::Scenario;
use sim::plan::script::FaultScript;
use sim::run::coverage;
use sim::run::runner::{self, report, RunSpec, SimError, StorageKind};
use sim::tools::corpus::{self, ReplaySpec};
use sim::tools::hunt::{Hunt, HuntConfig, Step};
use sim::tools::pool;
use sim::tools::results::{self, Line, SeedLine, Verdict};
use sim::tools::shard::Shard;

const EXIT_USAGE: u8 = 2;
const EXIT_VIOLATION: u8 = 3;
const EXIT_NONDETERMINISM: u8 = 4;

#[derive(Parser)]
#[command(name = "sim", about = "Deterministic simulation of the keel runtime")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run seeds 0..N (from --start) of a scenario (all scenarios when none is
    /// named), each twice to check determinism, on --jobs threads; or seeds
    /// until --minutes run out; or one --shard of them.
    Sweep {
        /// Scenario name; every scenario of the catalog when omitted.
        #[arg(long, value_parser = parse_scenario)]
        scenario: Option<Scenario>,
        /// A scenario TOML file of your own, loaded without a rebuild.
        #[arg(long, value_parser = parse_scenario_file, conflicts_with = "scenario")]
        scenario_file: Option<Scenario>,
        /// How many seeds (all shards together). Default: 64, or no limit
        /// with --minutes.
        #[arg(long)]
        seeds: Option<u64>,
        /// Run seeds until this many minutes have passed (seeds running then
        /// finish).
        #[arg(long)]
        minutes: Option<f64>,
        /// Run only the seeds s with s mod N == K-1 (1-based K of N).
        #[arg(long, value_parser = parse_shard, conflicts_with = "shard_from_env")]
        shard: Option<Shard>,
        /// Take the shard from the scheduler: SIM_SHARD=K/N, a Kubernetes Indexed
        /// Job (JOB_COMPLETION_INDEX), a Slurm array (SLURM_ARRAY_TASK_ID), GitLab
        /// (CI_NODE_INDEX) or SIM_SHARD_INDEX.
        #[arg(long)]
        shard_from_env: bool,
        /// The shard count where the scheduler does not say (Kubernetes, GitHub
        /// Actions); SIM_SHARDS also works.
        #[arg(long, requires = "shard_from_env")]
        shards: Option<u64>,
        /// Write every seed's verdict to this JSON-lines file, with the binary's
        /// build id (`sim merge` checks a sharded sweep's files).
        #[arg(long)]
        results: Option<PathBuf>,
        /// First seed.
        #[arg(long, default_value_t = 0)]
        start: u64,
        /// Switch on a planted bug.
        #[arg(long, value_parser = parse_bug)]
        plant: Option<Bug>,
        /// Stop starting seeds at the first failure (seeds already running finish).
        #[arg(long)]
        fail_fast: bool,
        /// The engine the database host serves: mem (the model) or sqlite.
        #[arg(long, default_value = "mem")]
        storage: StorageKind,
        /// Worker threads; each seed runs whole on one. Default: every core.
        #[arg(long)]
        jobs: Option<NonZeroUsize>,
        /// Write every failing run to this file, one replay line each
        /// (`sim replay --from FILE` reruns them).
        #[arg(long)]
        failures: Option<PathBuf>,
    },
    /// Run one seed, print its fault plan and verdict, optionally write its trace;
    /// or, with --from, rerun every line of a replay file.
    Replay {
        /// Scenario name.
        #[arg(long, value_parser = parse_scenario, required_unless_present_any = ["from", "script", "scenario_file"])]
        scenario: Option<Scenario>,
        /// A scenario TOML file of your own.
        #[arg(long, value_parser = parse_scenario_file, conflicts_with_all = ["scenario", "from", "script"])]
        scenario_file: Option<Scenario>,
        /// The seed.
        #[arg(long, required_unless_present_any = ["from", "script"])]
        seed: Option<u64>,
        /// Switch on a planted bug.
        #[arg(long, value_parser = parse_bug)]
        plant: Option<Bug>,
        /// Write the history as JSON lines to this file.
        #[arg(long)]
        trace: Option<PathBuf>,
        /// The engine the database host serves: mem (the model) or sqlite.
        #[arg(long, default_value = "mem")]
        storage: StorageKind,
        /// Rerun every line of this replay file (as `sweep --failures` writes).
        #[arg(long, conflicts_with_all = ["scenario", "seed", "plant", "trace", "storage", "script"])]
        from: Option<PathBuf>,
        /// Run this fault script (as `sim shrink` writes) instead of the faults a
        /// seed draws; exits 0 when the run shows what the script expects.
        #[arg(long, conflicts_with_all = ["scenario", "seed", "plant", "storage"])]
        script: Option<PathBuf>,
        /// Worker threads for --from. Default: every core.
        #[arg(long, requires = "from")]
        jobs: Option<NonZeroUsize>,
    },
    /// Shrink a failing seed to the smallest fault script that still breaks the
    /// same invariant, and write it to --out (`replay --script` reruns it).
    Shrink {
        /// Scenario name.
        #[arg(long, value_parser = parse_scenario, required_unless_present = "scenario_file")]
        scenario: Option<Scenario>,
        /// A scenario TOML file of your own.
        #[arg(long, value_parser = parse_scenario_file, conflicts_with = "scenario")]
        scenario_file: Option<Scenario>,
        /// The failing seed; without it, the first failing seed of 0..--search.
        #[arg(long)]
        seed: Option<u64>,
        /// How many seeds to search for a failing one when --seed is not given.
        #[arg(long, default_value_t = 200, conflicts_with = "seed")]
        search: u64,
        /// Switch on a planted bug.
        #[arg(long, value_parser = parse_bug)]
        plant: Option<Bug>,
        /// The engine the database host serves: mem (the model) or sqlite.
        #[arg(long, default_value = "mem")]
        storage: StorageKind,
        /// The invariant to keep breaking; default: the run's first violation.
        #[arg(long)]
        invariant: Option<String>,
        /// Most runs to spend.
        #[arg(long, default_value_t = sim::tools::shrink::SHRINK_RUNS_DEFAULT)]
        budget: u32,
        /// Where to write the script.
        #[arg(long)]
        out: PathBuf,
    },
    /// Run one seed and write its history as one self-contained HTML page: a
    /// timeline per host, the violation's witnesses, a searchable event table.
    Explain {
        /// Scenario name.
        #[arg(long, value_parser = parse_scenario, required_unless_present = "scenario_file")]
        scenario: Option<Scenario>,
        /// A scenario TOML file of your own.
        #[arg(long, value_parser = parse_scenario_file, conflicts_with = "scenario")]
        scenario_file: Option<Scenario>,
        /// The seed.
        #[arg(long)]
        seed: u64,
        /// Switch on a planted bug.
        #[arg(long, value_parser = parse_bug)]
        plant: Option<Bug>,
        /// The engine the database host serves: mem (the model) or sqlite.
        #[arg(long, default_value = "mem")]
        storage: StorageKind,
        /// Where to write the page.
        #[arg(long)]
        html: std::path::PathBuf,
    },
    /// Coverage-guided search: run seeds of a scenario and mutants of the runs
    /// that reached rare states (faults moved, stretched, added, removed,
    /// re-aimed), keeping whatever reaches new coverage. Each violation is
    /// written as a fault script that `sim replay --script` reruns.
    Hunt {
        /// Scenario name (its seeds are the search's inputs).
        #[arg(long, value_parser = parse_scenario, default_value = "swarm")]
        scenario: Scenario,
        /// A scenario TOML file of your own, in place of --scenario.
        #[arg(long, value_parser = parse_scenario_file)]
        scenario_file: Option<Scenario>,
        /// The hunt's own seed: the same seed takes the same path.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// First fresh seed of the scenario.
        #[arg(long, default_value_t = 0)]
        start: u64,
        /// Runs to spend.
        #[arg(long, default_value_t = 256)]
        runs: u64,
        /// Stop after this many minutes, even with runs left.
        #[arg(long)]
        minutes: Option<f64>,
        /// Switch on a planted bug.
        #[arg(long, value_parser = parse_bug)]
        plant: Option<Bug>,
        /// Only violations of this invariant count as findings.
        #[arg(long)]
        invariant: Option<String>,
        /// Stop at the first finding.
        #[arg(long)]
        fail_fast: bool,
        /// The engine the database host serves: mem (the model) or sqlite.
        #[arg(long, default_value = "mem")]
        storage: StorageKind,
        /// Worker threads. Default: every core.
        #[arg(long)]
        jobs: Option<NonZeroUsize>,
        /// Where findings' fault scripts go.
        #[arg(long, default_value = "hunt-out")]
        out: PathBuf,
    },
    /// Check that the result files of a sharded sweep add up (one build, every
    /// shard, every seed once) and print the failures' replay lines.
    Merge {
        /// The shards' `--results` files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

fn parse_scenario(s: &str) -> Result<Scenario, String> {
    scenarios::by_name(s).map_err(|e| e.to_string())
}

fn parse_scenario_file(s: &str) -> Result<Scenario, String> {
    Scenario::load(Path::new(s)).map_err(|e| e.to_string())
}

fn parse_shard(s: &str) -> Result<Shard, String> {
    s.parse::<Shard>().map_err(|e| e.to_string())
}

fn parse_bug(s: &str) -> Result<Bug, String> {
    s.parse::<Bug>().map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Handlers and loops panic on purpose, and the runtime catches and records
    // each panic; a harness panic comes back as SimError::Panic with its message.
    // The default hook would print a backtrace for every one of them.
    std::panic::set_hook(Box::new(|_| {}));
    let code = match cli.command {
        Command::Sweep {
            scenario,
            scenario_file,
            seeds,
            minutes,
            shard,
            shard_from_env,
            shards,
            results,
            start,
            plant,
            fail_fast,
            storage,
            jobs,
            failures,
        } => {
            let shard = match (shard, shard_from_env) {
                (Some(s), _) => s,
                (None, false) => Shard::ALL,
                (None, true) => match Shard::from_env(|k| std::env::var(k).ok(), shards) {
                    Ok(s) => s,
                    Err(e) => {
                        eprintln!("error: {e}");
                        return ExitCode::from(EXIT_USAGE);
                    }
                },
            };
            if minutes.is_some_and(|m| !(m > 0.0 && m.is_finite())) {
                eprintln!("error: --minutes must be a positive number of minutes");
                return ExitCode::from(EXIT_USAGE);
            }
            let plan = SweepPlan {
                scenarios: scenario
                    .or(scenario_file)
                    .map_or_else(scenarios::all, |s| vec![s]),
                start,
                seeds: seeds.or(if minutes.is_some() { None } else { Some(64) }),
                minutes,
                shard,
                plant,
                storage,
            };
            let out = SweepOutputs {
                failures: failures.as_deref(),
                results: results.as_deref(),
            };
            sweep(&plan, jobs_or_cores(jobs), fail_fast, out)
        }
        Command::Hunt {
            scenario,
            scenario_file,
            seed,
            start,
            runs,
            minutes,
            plant,
            invariant,
            fail_fast,
            storage,
            jobs,
            out,
        } => {
            if minutes.is_some_and(|m| !(m > 0.0 && m.is_finite())) {
                eprintln!("error: --minutes must be a positive number of minutes");
                return ExitCode::from(EXIT_USAGE);
            }
            if let Some(name) = invariant
                .as_deref()
                .filter(|n| sim::run::checkers::by_name(n).is_none())
            {
                let valid = sim::run::checkers::names().join(", ");
                eprintln!("error: --invariant {name:?} is no checker; valid: {valid}");
                return ExitCode::from(EXIT_USAGE);
            }
            let config = HuntConfig {
                scenario: scenario_file.unwrap_or(scenario),
                storage,
                plant,
                seed,
                start,
            };
            let goal = HuntGoal {
                runs,
                minutes,
                invariant,
                fail_fast,
            };
            hunt(config, &goal, jobs_or_cores(jobs), &out)
        }
        Command::Merge { files } => merge(&files),
        Command::Replay {
            from: Some(path),
            jobs,
            ..
        } => replay_from(&path, jobs_or_cores(jobs)),
        Command::Replay {
            script: Some(path),
            trace,
            ..
        } => replay_script(&path, trace),
        Command::Shrink {
            scenario,
            scenario_file,
            seed,
            search,
            plant,
            storage,
            invariant,
            budget,
            out,
        } => {
            let Some(scenario) = scenario.or(scenario_file) else {
                eprintln!("shrink needs --scenario or --scenario-file");
                return ExitCode::from(EXIT_USAGE);
            };
            let spec = RunSpec {
                scenario,
                seed: seed.unwrap_or(0),
                plant,
                storage,
                script: None,
            };
            match seed {
                Some(_) => shrink(&spec, invariant.as_deref(), budget, &out),
                None => match first_failing(&spec, search, invariant.as_deref()) {
                    Some(spec) => shrink(&spec, invariant.as_deref(), budget, &out),
                    None => {
                        println!(
                            "no seed of 0..{search} breaks {}",
                            invariant.as_deref().unwrap_or("any invariant")
                        );
                        EXIT_USAGE
                    }
                },
            }
        }
        Command::Replay {
            scenario,
            scenario_file,
            seed: Some(seed),
            plant,
            trace,
            storage,
            ..
        } if scenario.is_some() || scenario_file.is_some() => replay(
            RunSpec {
                scenario: scenario
                    .or(scenario_file)
                    .expect("one is given, by the guard"),
                seed,
                plant,
                storage,
                script: None,
            },
            trace,
        ),
        Command::Explain {
            scenario,
            scenario_file,
            seed,
            plant,
            storage,
            html,
        } => {
            let Some(scenario) = scenario.or(scenario_file) else {
                eprintln!("explain needs --scenario or --scenario-file");
                return ExitCode::from(EXIT_USAGE);
            };
            explain(
                &RunSpec {
                    scenario,
                    seed,
                    plant,
                    storage,
                    script: None,
                },
                &html,
            )
        }
        Command::Replay { .. } => {
            eprintln!("replay needs --scenario and --seed, --from FILE, or --script FILE");
            EXIT_USAGE
        }
    };
    ExitCode::from(code)
}

/// When a hunt stops and what counts as a finding.
struct HuntGoal {
    runs: u64,
    minutes: Option<f64>,
    invariant: Option<String>,
    fail_fast: bool,
}

/// `sim hunt`: batches until the budget is spent; each finding written as a
/// script, replayed twice from that file, and printed with its replay command.
fn hunt(config: HuntConfig, goal: &HuntGoal, jobs: NonZeroUsize, out: &Path) -> u8 {
    let began = wall_now();
    let over = |began: Instant| {
        goal.minutes
            .is_some_and(|m| began.elapsed().as_secs_f64() >= m * 60.0)
    };
    println!(
        "hunt: {}, hunt seed {}, fresh seeds from {}, {} runs, batches of {}",
        runner::scenario_arg(&config.scenario).trim_start_matches("--"),
        config.seed,
        config.start,
        goal.runs,
        sim::tools::hunt::BATCH
    );
    let label = config.scenario.name.clone();
    let mut search = Hunt::new(config);
    let (mut findings, mut mutants, mut errors) = (0u64, 0u64, 0u64);
    'search: while search.runs() < goal.runs && !over(began) {
        for ran in search.run_batch(goal.runs - search.runs(), jobs) {
            let sim::tools::hunt::Ran {
                run,
                corpus,
                candidate,
                outcome,
                step,
            } = ran;
            mutants += u64::from(candidate.parent.is_some());
            let origin = match candidate.parent {
                None => format!("seed {}", candidate.spec.seed),
                Some(p) => format!(
                    "seed {}, mutant of run {p}: {}",
                    candidate.spec.seed,
                    candidate.mutations.join(", ")
                ),
            };
            match step {
                Step::Nothing => {}
                Step::NewCoverage(states) => println!(
                    "  run {run} ({origin}): new coverage ({}), corpus {corpus}",
                    states.join(", ")
                ),
                Step::Error(e) => {
                    errors += 1;
                    println!("  run {run} ({origin}): {e}");
                }
                Step::Violation(names) => {
                    let wanted = goal
                        .invariant
                        .as_ref()
                        .is_none_or(|want| names.contains(want));
                    let (Ok(result), true) = (&outcome, wanted) else {
                        continue;
                    };
                    let invariant = goal.invariant.clone().unwrap_or_else(|| names[0].clone());
                    findings += 1;
                    println!("  run {run} ({origin}): violation {}", names.join(", "));
                    match write_finding(result, &invariant, run, out) {
                        Ok(path) => println!("    sim replay --script {}", path.display()),
                        Err(e) => {
                            eprintln!("    {e}");
                            errors += 1;
                        }
                    }
                    if goal.fail_fast {
                        break 'search;
                    }
                }
            }
        }
    }
    let wall = began.elapsed();
    println!(
        "hunt: {} runs ({mutants} mutants) in {:.1}s, corpus {}, {findings} finding(s), {errors} error(s)",
        search.runs(),
        wall.as_secs_f64(),
        search.corpus_len()
    );
    println!("coverage: runs that reached each rare state ({label})");
    for (state, n) in search.reached() {
        println!("    {state:<40} {n:>5}/{}", search.runs());
    }
    if errors > 0 {
        EXIT_NONDETERMINISM
    } else if findings > 0 {
        EXIT_VIOLATION
    } else {
        0
    }
}

/// Write a finding's script under `out`, then read it back and replay it
/// twice: a finding is reported only once its file reproduces it.
fn write_finding(
    result: &runner::RunResult,
    invariant: &str,
    run: u64,
    out: &Path,
) -> Result<PathBuf, String> {
    let script = sim::tools::hunt::finding_script(result, invariant);
    let path = out.join(format!("run-{run}.script"));
    let text = script.render(&format!("found by `sim hunt`, run {run}"));
    std::fs::create_dir_all(out)
        .and_then(|()| std::fs::write(&path, &text))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    let back = FaultScript::parse(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let replayed = runner::run_checked(&back.spec);
    let verdict = ReplaySpec {
        line: 1,
        spec: back.spec.clone(),
        expect: back.expect.clone(),
    }
    .judge(&replayed);
    verdict
        .map(|()| path.clone())
        .map_err(|why| format!("{} does not reproduce: {why}", path.display()))
}

fn jobs_or_cores(jobs: Option<NonZeroUsize>) -> NonZeroUsize {
    jobs.or_else(|| std::thread::available_parallelism().ok())
        .unwrap_or(NonZeroUsize::MIN)
}

fn sim_error_code(e: &SimError) -> u8 {
    match e {
        SimError::UnknownInvariant { .. } => EXIT_USAGE,
        _ => EXIT_NONDETERMINISM,
    }
}

/// The CLI's own wall clock, for progress and speed only: it never reaches a
/// simulation.
#[allow(clippy::disallowed_methods)] // wall time of the tool itself, outside every simulated host
fn wall_now() -> Instant {
    Instant::now() // determinism-ok: progress display only, never read by a simulation
}

/// What one seed did, small enough to send back from its worker.
struct Outcome {
    /// What ran.
    spec: RunSpec,
    /// Invariants it broke, in order.
    violated: Vec<String>,
    /// The failure report, or `None` when every invariant held.
    failure: Option<String>,
    /// Exit code this seed calls for.
    code: u8,
    /// Whether both runs of the seed diverged.
    nondeterministic: bool,
    /// Simulated milliseconds covered by both runs.
    sim_ms: u64,
    /// Wall time the worker spent on the seed.
    wall: Duration,
    /// Rare states the first run reached (empty when the seed gave no run).
    coverage: BTreeMap<String, u64>,
}

fn run_seed(spec: RunSpec) -> Outcome {
    let began = wall_now();
    let run = runner::run_checked(&spec);
    let violated = run.as_ref().map_or_else(
        |_| Vec::new(),
        |r| {
            r.violations
                .iter()
                .map(|v| v.invariant.to_owned())
                .collect()
        },
    );
    let coverage = run.as_ref().map(|r| r.coverage.clone()).unwrap_or_default();
    let (failure, code, nondeterministic, sim_ms) = match run {
        // Both runs covered the same simulated span.
        Ok(r) if r.passed() => (None, 0, false, 2 * r.simulated_ms()),
        Ok(r) => (
            Some(report(&r)),
            EXIT_VIOLATION,
            false,
            2 * r.simulated_ms(),
        ),
        Err(e) => (
            Some(format!(
                "scenario {} seed {}: {e}\n  replay: {}\n",
                spec.scenario.name,
                spec.seed,
                runner::replay_command(&spec)
            )),
            sim_error_code(&e),
            matches!(e, SimError::NonDeterministic { .. }),
            0,
        ),
    };
    Outcome {
        spec,
        violated,
        failure,
        code,
        nondeterministic,
        sim_ms,
        wall: began.elapsed(),
        coverage,
    }
}

/// One row of the summary table.
#[derive(Default)]
struct Tally {
    seeds: u64,
    passed: u64,
    failed: u64,
    nondeterministic: u64,
    sim_ms: u64,
    wall: Duration,
    coverage: coverage::Tally,
}

impl Tally {
    fn add(&mut self, o: &Outcome) {
        self.seeds += 1;
        self.sim_ms += o.sim_ms;
        self.wall += o.wall;
        self.coverage.add(&o.coverage);
        match (&o.failure, o.nondeterministic) {
            (None, _) => self.passed += 1,
            (Some(_), true) => self.nondeterministic += 1,
            (Some(_), false) => self.failed += 1,
        }
    }
}

/// Simulated seconds per wall second.
fn speed(sim_ms: u64, wall: Duration) -> f64 {
    let wall_ms = wall.as_secs_f64() * 1000.0;
    if wall_ms > 0.0 {
        sim_ms as f64 / wall_ms
    } else {
        0.0
    }
}

/// The progress bar on stderr, drawn only when both streams are a terminal so
/// piped or logged output stays clean.
fn progress_bar(total: usize) -> ProgressBar {
    let target = if std::io::stdout().is_terminal() && std::io::stderr().is_terminal() {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    let bar = ProgressBar::with_draw_target(Some(total as u64), target);
    if let Ok(style) =
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} seeds {msg}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// The seeds a sweep runs: which scenarios, which seeds of which shard, and
/// for how long.
struct SweepPlan {
    scenarios: Vec<Scenario>,
    start: u64,
    /// Seeds of all shards together; `None`: until the time budget ends.
    seeds: Option<u64>,
    minutes: Option<f64>,
    shard: Shard,
    plant: Option<Bug>,
    storage: StorageKind,
}

impl SweepPlan {
    /// This shard's seeds, when the range is fixed.
    fn shard_seeds(&self) -> Option<Vec<u64>> {
        self.seeds
            .map(|n| self.shard.seeds(self.start, n).collect())
    }

    /// How many runs, at most.
    fn count(&self) -> usize {
        match self.shard_seeds() {
            Some(seeds) => seeds.len() * self.scenarios.len(),
            None => usize::MAX,
        }
    }

    /// Run `i`: scenario by scenario over a fixed range; seed by seed (every
    /// scenario at each seed) under a time budget, so all of them progress.
    fn spec(&self, seeds: Option<&[u64]>, i: usize) -> RunSpec {
        let k = self.scenarios.len().max(1);
        let (scenario, seed) = match seeds {
            Some(seeds) => (&self.scenarios[i / seeds.len()], seeds[i % seeds.len()]),
            None => (
                &self.scenarios[i % k],
                self.shard.nth_seed(self.start, (i / k) as u64),
            ),
        };
        RunSpec {
            scenario: scenario.clone(),
            seed,
            plant: self.plant,
            storage: self.storage,
            script: None,
        }
    }

    fn header(&self) -> Line {
        Line::Header(results::Header {
            build_id: results::build_id().to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            shard: self.shard.to_string(),
            scenarios: self.scenarios.iter().map(scenario_label).collect(),
            storage: self.storage.to_string(),
            plant: self.plant.map(|b| b.to_string()),
            start: self.start,
            seeds: self.seeds,
            minutes: self.minutes,
        })
    }
}

/// A scenario in a result file: its name, or a user's file by its path.
fn scenario_label(s: &Scenario) -> String {
    s.source
        .as_ref()
        .map_or_else(|| s.name.clone(), |p| p.display().to_string())
}

/// Where a sweep writes besides stdout.
struct SweepOutputs<'a> {
    failures: Option<&'a Path>,
    results: Option<&'a Path>,
}

/// A JSON-lines result file, flushed line by line so a killed shard leaves
/// every seed it finished.
struct ResultsFile {
    path: PathBuf,
    out: std::io::BufWriter<std::fs::File>,
}

impl ResultsFile {
    fn create(path: &Path, header: &Line) -> std::io::Result<ResultsFile> {
        let mut f = ResultsFile {
            path: path.to_owned(),
            out: std::io::BufWriter::new(std::fs::File::create(path)?),
        };
        f.write(header)?;
        Ok(f)
    }

    fn write(&mut self, line: &Line) -> std::io::Result<()> {
        writeln!(self.out, "{}", line.to_json())?;
        self.out.flush()
    }
}

fn seed_line(o: &Outcome) -> Line {
    let verdict = match (&o.failure, o.nondeterministic, o.code) {
        (None, _, _) => Verdict::Pass,
        (Some(_), true, _) => Verdict::Nondeterministic,
        (Some(_), false, EXIT_VIOLATION) => Verdict::Violation,
        (Some(_), false, _) => Verdict::Error,
    };
    Line::Seed(SeedLine {
        scenario: scenario_label(&o.spec.scenario),
        seed: o.spec.seed,
        storage: o.spec.storage.to_string(),
        plant: o.spec.plant.map(|b| b.to_string()),
        verdict,
        invariants: o.violated.clone(),
        summary: o
            .failure
            .as_ref()
            .and_then(|f| f.lines().nth(1).or(f.lines().next()))
            .map(|l| l.trim().to_owned()),
        replay: runner::replay_command(&o.spec),
        wall_ms: u64::try_from(o.wall.as_millis()).unwrap_or(u64::MAX),
    })
}

fn sweep(plan: &SweepPlan, jobs: NonZeroUsize, fail_fast: bool, outputs: SweepOutputs<'_>) -> u8 {
    if let Some(e) = plan
        .scenarios
        .iter()
        .find_map(|s| coverage::check_reach(s).err())
    {
        eprintln!("{e}");
        return EXIT_USAGE;
    }
    let mut results = match outputs
        .results
        .map(|p| ResultsFile::create(p, &plan.header()))
    {
        None => None,
        Some(Ok(f)) => Some(f),
        Some(Err(e)) => {
            eprintln!("cannot write results: {e}");
            return EXIT_USAGE;
        }
    };
    let seeds = plan.shard_seeds();
    let count = plan.count();
    let bar = progress_bar(seeds.as_ref().map_or(0, |_| count));
    let began = wall_now();
    let budget = plan.minutes.map(|m| Duration::from_secs_f64(m * 60.0));
    let stop = AtomicBool::new(false);
    let (mut failed, mut done_sim_ms) = (0u64, 0u64);
    let mut worst = 0u8;
    let mut stopped = "done";
    // Per (scenario, storage), in the order they first appear.
    let mut tallies: Vec<((String, StorageKind), Tally)> = Vec::new();
    let mut failing: Vec<(RunSpec, String)> = Vec::new();
    let mut write_error = None;
    pool::ordered_by(
        count,
        |i| plan.spec(seeds.as_deref(), i),
        jobs,
        &stop,
        run_seed,
        |o| {
            bar.inc(1);
            done_sim_ms += o.sim_ms;
            if o.failure.is_some() {
                failed += 1;
                if fail_fast {
                    stop.store(true, Ordering::SeqCst);
                    stopped = "fail fast";
                }
            }
            if budget.is_some_and(|b| began.elapsed() >= b) && !stop.swap(true, Ordering::SeqCst) {
                stopped = "time budget";
            }
            bar.set_message(format!(
                "{failed} failed, {:.0} sim-s/s",
                speed(done_sim_ms, began.elapsed())
            ));
        },
        |_, o| {
            let key = (o.spec.scenario.name.clone(), o.spec.storage);
            match tallies.iter_mut().find(|(k, _)| *k == key) {
                Some((_, t)) => t.add(&o),
                None => {
                    let mut t = Tally::default();
                    t.add(&o);
                    tallies.push((key, t));
                }
            }
            worst = worst.max(o.code);
            if let Some(f) = results.as_mut() {
                if let Err(e) = f.write(&seed_line(&o)) {
                    write_error.get_or_insert(e);
                }
            }
            if let Some(text) = &o.failure {
                let first = text.lines().next().unwrap_or_default().to_owned();
                failing.push((o.spec.clone(), first));
                bar.suspend(|| print!("{text}"));
            }
        },
    );
    bar.finish_and_clear();
    let wall = began.elapsed();
    let ran: u64 = tallies.iter().map(|(_, t)| t.seeds).sum();
    print_summary(&tallies, wall, jobs);
    print_coverage(&plan.scenarios, &tallies);
    if let Some(mut f) = results {
        let end = Line::End(results::End {
            seeds: ran,
            failed,
            wall_s: wall.as_secs_f64(),
            stopped: stopped.to_owned(),
        });
        if let Some(e) = write_error.or_else(|| f.write(&end).err()) {
            eprintln!("cannot write results to {}: {e}", f.path.display());
            return worst.max(EXIT_USAGE);
        }
        println!(
            "results: {ran} seeds of shard {} written to {} (build {})",
            plan.shard,
            f.path.display(),
            results::build_id()
        );
    }
    if let Some(path) = outputs.failures {
        if let Err(e) = write_failures(path, &failing) {
            eprintln!("cannot write failures to {}: {e}", path.display());
            return worst.max(EXIT_USAGE);
        }
        println!(
            "failures: {} written to {} (rerun: sim replay --from {})",
            failing.len(),
            path.display(),
            path.display()
        );
    }
    worst
}

/// `sim merge`: check the shards' files add up, print the totals and every
/// failure's replay line. Exit 0 all passed, 3 a seed failed, 2 the files do
/// not add up (or cannot be read).
fn merge(paths: &[PathBuf]) -> u8 {
    let mut files = Vec::new();
    for path in paths {
        match std::fs::read_to_string(path) {
            Ok(text) => files.push((path.display().to_string(), text)),
            Err(e) => {
                eprintln!("cannot read {}: {e}", path.display());
                return EXIT_USAGE;
            }
        }
    }
    let merged = match results::merge(&files) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("{e}");
            return EXIT_USAGE;
        }
    };
    let verdicts: Vec<String> = merged
        .verdicts
        .iter()
        .map(|(v, n)| format!("{n} {v}"))
        .collect();
    println!(
        "{} shard(s) of build {}: {} seeds, each once ({}); {:.1} s of wall time in all",
        merged.shards,
        merged.build_id,
        merged.seeds,
        verdicts.join(", "),
        merged.wall_s
    );
    for f in &merged.failures {
        let what = f.summary.as_deref().unwrap_or("failed");
        println!(
            "{} seed {}: {what}\n  replay: {}",
            f.scenario, f.seed, f.replay
        );
    }
    if merged.failures.is_empty() {
        0
    } else {
        EXIT_VIOLATION
    }
}

fn print_summary(tallies: &[((String, StorageKind), Tally)], wall: Duration, jobs: NonZeroUsize) {
    println!(
        "{:<22} {:<7} {:>6} {:>7} {:>7} {:>7} {:>10}",
        "scenario", "storage", "seeds", "passed", "failed", "nondet", "sim-s/s"
    );
    let mut total = Tally::default();
    for ((name, storage), t) in tallies {
        println!(
            "{name:<22} {storage:<7} {:>6} {:>7} {:>7} {:>7} {:>10.1}",
            t.seeds,
            t.passed,
            t.failed,
            t.nondeterministic,
            speed(t.sim_ms, t.wall)
        );
        total.seeds += t.seeds;
        total.passed += t.passed;
        total.failed += t.failed;
        total.nondeterministic += t.nondeterministic;
        total.sim_ms += t.sim_ms;
    }
    println!(
        "{:<22} {:<7} {:>6} {:>7} {:>7} {:>7} {:>10.1}",
        "total",
        "",
        total.seeds,
        total.passed,
        total.failed,
        total.nondeterministic,
        speed(total.sim_ms, wall)
    );
    println!(
        "sim-s/s: simulated seconds (both runs of each seed) per wall second; per scenario on \
         one thread, in total on {jobs} thread(s) over {:.1}s",
        wall.as_secs_f64()
    );
}

/// Per scenario and engine, how many seeds reached each rare state: the ones the
/// scenario declares in `reach` (flagged when none did), then any other.
fn print_coverage(scenarios: &[Scenario], tallies: &[((String, StorageKind), Tally)]) {
    println!("coverage: seeds that reached each rare state (keel::sometimes!)");
    for ((name, storage), t) in tallies {
        let Some(scenario) = scenarios.iter().find(|s| s.name == *name) else {
            continue;
        };
        println!("  {name} ({storage})");
        let lines = t.coverage.lines(scenario);
        if lines.is_empty() {
            println!("    (no state declared or reached)");
        }
        for line in lines {
            println!("    {line}");
        }
    }
}

fn write_failures(path: &Path, failing: &[(RunSpec, String)]) -> std::io::Result<()> {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    writeln!(
        out,
        "# failing runs of a sim sweep; rerun: sim replay --from {}",
        path.display()
    )?;
    for (spec, why) in failing {
        writeln!(out, "# {why}")?;
        writeln!(out, "{}", corpus::line_for(spec))?;
    }
    out.flush()
}

/// Rerun every line of a replay file; the worst exit code of its lines.
fn replay_from(path: &Path, jobs: NonZeroUsize) -> u8 {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("cannot read {}: {e}", path.display());
            return EXIT_USAGE;
        }
    };
    let lines = match corpus::parse(&text) {
        Ok(lines) => lines,
        Err(e) => {
            eprintln!("{}: {e}", path.display());
            return EXIT_USAGE;
        }
    };
    let mut worst = 0u8;
    let mut broken = 0usize;
    pool::ordered(
        &lines,
        jobs,
        &AtomicBool::new(false),
        |l: &ReplaySpec| {
            let outcome = runner::run_checked(&l.spec);
            let code = match &outcome {
                Err(e) => sim_error_code(e),
                Ok(_) => EXIT_VIOLATION,
            };
            (l.judge(&outcome), code)
        },
        |_| {},
        |i, (verdict, code)| {
            let l = &lines[i];
            let head = format!(
                "{}:{}: {} expect={}",
                path.display(),
                l.line,
                corpus::line_for(&l.spec),
                l.expect
            );
            match verdict {
                Ok(()) => println!("{head}: ok"),
                Err(why) => {
                    broken += 1;
                    worst = worst.max(code);
                    print!("{head}: FAILED\n{why}");
                }
            }
        },
    );
    println!("{} line(s) rerun, {broken} failed", lines.len());
    worst
}

/// Run a fault script twice (determinism checked) and judge it by its `expect`.
fn replay_script(path: &Path, trace: Option<PathBuf>) -> u8 {
    let script = match std::fs::read_to_string(path)
        .map_err(|e| e.to_string())
        .and_then(|t| FaultScript::parse(&t).map_err(|e| e.to_string()))
    {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{}: {e}", path.display());
            return EXIT_USAGE;
        }
    };
    let spec = &script.spec;
    println!(
        "script {}: scenario={} seed={} plant={} nodes={} faults={} expect={}",
        path.display(),
        spec.scenario.name,
        spec.seed,
        spec.plant.map_or("none".into(), |b| b.to_string()),
        spec.scenario.nodes,
        script.plan().faults.len(),
        script.expect
    );
    let outcome = runner::run_checked(spec);
    if let (Ok(result), Some(path)) = (&outcome, &trace) {
        if let Err(e) = write_trace(path, &result.history) {
            eprintln!("cannot write trace to {}: {e}", path.display());
            return EXIT_USAGE;
        }
    }
    let verdict = ReplaySpec {
        line: 1,
        spec: spec.clone(),
        expect: script.expect.clone(),
    }
    .judge(&outcome);
    match (verdict, &outcome) {
        (Ok(()), Ok(result)) => {
            if !result.passed() {
                print!(
                    "{}",
                    report(result).replace(
                        &runner::replay_command(spec),
                        &format!("cargo run -p sim -- replay --script {}", path.display()),
                    )
                );
            }
            println!("ok: the run shows {}", script.expect);
            0
        }
        (Err(why), Ok(_)) => {
            print!("FAILED: {why}");
            EXIT_VIOLATION
        }
        (_, Err(e)) => {
            println!("{e}");
            sim_error_code(e)
        }
    }
}

/// The first seed of `0..search` whose run breaks `invariant` (any, if `None`),
/// searched on every core.
fn first_failing(spec: &RunSpec, search: u64, invariant: Option<&str>) -> Option<RunSpec> {
    let specs: Vec<RunSpec> = (0..search)
        .map(|seed| RunSpec {
            seed,
            ..spec.clone()
        })
        .collect();
    let stop = AtomicBool::new(false);
    let mut found = None;
    pool::ordered(
        &specs,
        jobs_or_cores(None),
        &stop,
        |s| {
            runner::run_once(s).is_ok_and(|r| {
                r.violations
                    .iter()
                    .any(|v| invariant.is_none_or(|name| v.invariant == name))
            })
        },
        |fails| {
            if *fails {
                stop.store(true, Ordering::SeqCst);
            }
        },
        |i, fails| {
            if fails && found.is_none() {
                found = Some(specs[i].clone());
            }
        },
    );
    if let Some(s) = &found {
        println!("seed {}: first failing seed of 0..{search}", s.seed);
    }
    found
}

/// Shrink a failing seed, write its script, print the sizes before and after.
fn shrink(spec: &RunSpec, invariant: Option<&str>, budget: u32, out: &Path) -> u8 {
    let began = wall_now();
    let bar = progress_bar(budget as usize);
    let shrunk = sim::tools::shrink::shrink(spec, invariant, budget, &mut |size| {
        bar.set_message(size.to_string());
    });
    bar.finish_and_clear();
    let shrunk = match shrunk {
        Ok(s) => s,
        Err(e) => {
            println!("{e}");
            return match e {
                sim::tools::shrink::ShrinkError::NoViolation(_) => EXIT_USAGE,
                sim::tools::shrink::ShrinkError::Sim(e) => sim_error_code(&e),
            };
        }
    };
    let comment = format!(
        "shrunk by `sim shrink --scenario {} --seed {}{}` in {} runs\n\
         before: {}\nafter:  {}",
        spec.scenario.name,
        spec.seed,
        spec.plant
            .map(|b| format!(" --plant {b}"))
            .unwrap_or_default(),
        shrunk.runs,
        shrunk.before,
        shrunk.after
    );
    if let Err(e) = std::fs::write(out, shrunk.script.render(&comment)) {
        eprintln!("cannot write {}: {e}", out.display());
        return EXIT_USAGE;
    }
    println!("invariant: {}", shrunk.invariant);
    println!("before: {}", shrunk.before);
    println!("after:  {}", shrunk.after);
    println!(
        "{} runs in {:.1}s; script: {} (rerun: cargo run -p sim -- replay --script {})",
        shrunk.runs,
        began.elapsed().as_secs_f64(),
        out.display(),
        out.display()
    );
    0
}

fn replay(spec: RunSpec, trace: Option<PathBuf>) -> u8 {
    println!(
        "SEED={} scenario={} plant={}",
        spec.seed,
        spec.scenario.name,
        spec.plant.map_or("none".into(), |b| b.to_string())
    );
    if spec.scenario.swarm {
        let shape = sim::plan::shape::concrete(&spec.scenario, spec.seed);
        println!("{}", sim::plan::shape::summary(&shape));
    }
    let result = match runner::run_checked(&spec) {
        Ok(r) => r,
        Err(e) => {
            println!("{e}");
            return sim_error_code(&e);
        }
    };
    print!("fault plan:\n{}", result.plan);
    if let Some(path) = trace {
        if let Err(e) = write_trace(&path, &result.history) {
            eprintln!("cannot write trace to {}: {e}", path.display());
            return 2;
        }
        println!(
            "trace: {} events written to {}",
            result.history.len(),
            path.display()
        );
    }
    print_verdict(&result)
}

/// Print a run's verdict; its exit code.
fn print_verdict(result: &runner::RunResult) -> u8 {
    if result.passed() {
        println!(
            "all invariants held; {} events, trace hash {:016x}",
            result.history.len(),
            result.trace_hash
        );
        0
    } else {
        print!("{}", report(result));
        EXIT_VIOLATION
    }
}

/// Like `replay` (same run, same exit codes), but the output is a page.
fn explain(spec: &RunSpec, path: &Path) -> u8 {
    let result = match runner::run_checked(spec) {
        Ok(r) => r,
        Err(e) => {
            println!("{e}");
            return sim_error_code(&e);
        }
    };
    if let Err(e) = std::fs::write(path, sim::tools::explain::render_html(&result)) {
        eprintln!("cannot write {}: {e}", path.display());
        return 2;
    }
    println!("explain: {}", path.display());
    print_verdict(&result)
}

fn write_trace(path: &Path, history: &[sim::run::history::Record]) -> std::io::Result<()> {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    for r in history {
        writeln!(out, "{}", r.to_json())?;
    }
    out.flush()
}
