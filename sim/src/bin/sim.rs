//! The `sim` command line: sweep seeds of a scenario, replay one seed, or
//! explain one seed as an HTML page.
//!
//! Exit codes: 0 every invariant held, 2 usage error, 3 an invariant was
//! violated, 4 non-determinism detected (or the simulation itself failed).

use std::io::Write;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use keel::planted::Bug;
use scenarios::Scenario;
use sim::runner::{self, report, RunSpec, SimError, StorageKind};

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
    /// named), each twice to check determinism.
    Sweep {
        /// Scenario name; every scenario of the catalog when omitted.
        #[arg(long, value_parser = parse_scenario)]
        scenario: Option<Scenario>,
        /// How many seeds.
        #[arg(long, default_value_t = 64)]
        seeds: u64,
        /// First seed.
        #[arg(long, default_value_t = 0)]
        start: u64,
        /// Switch on a planted bug.
        #[arg(long, value_parser = parse_bug)]
        plant: Option<Bug>,
        /// Stop at the first failing seed.
        #[arg(long)]
        fail_fast: bool,
        /// The engine the database host serves: mem (the model) or sqlite.
        #[arg(long, default_value = "mem")]
        storage: StorageKind,
    },
    /// Run one seed, print its fault plan and verdict, optionally write its trace.
    Replay {
        /// Scenario name.
        #[arg(long, value_parser = parse_scenario)]
        scenario: Scenario,
        /// The seed.
        #[arg(long)]
        seed: u64,
        /// Switch on a planted bug.
        #[arg(long, value_parser = parse_bug)]
        plant: Option<Bug>,
        /// Write the history as JSON lines to this file.
        #[arg(long)]
        trace: Option<std::path::PathBuf>,
        /// The engine the database host serves: mem (the model) or sqlite.
        #[arg(long, default_value = "mem")]
        storage: StorageKind,
    },
    /// Run one seed and write its history as one self-contained HTML page: a
    /// timeline per host, the violation's witnesses, a searchable event table.
    Explain {
        /// Scenario name.
        #[arg(long, value_parser = parse_scenario)]
        scenario: Scenario,
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
}

fn parse_scenario(s: &str) -> Result<Scenario, String> {
    scenarios::by_name(s).map_err(|e| e.to_string())
}

fn parse_bug(s: &str) -> Result<Bug, String> {
    s.parse::<Bug>().map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Sweep {
            scenario,
            seeds,
            start,
            plant,
            fail_fast,
            storage,
        } => {
            let chosen = scenario.map_or_else(scenarios::all, |s| vec![s]);
            let codes = chosen
                .into_iter()
                .map(|s| sweep(s, start, seeds, plant, fail_fast, storage));
            codes.max().unwrap_or(0)
        }
        Command::Replay {
            scenario,
            seed,
            plant,
            trace,
            storage,
        } => replay(
            RunSpec {
                scenario,
                seed,
                plant,
                storage,
            },
            trace,
        ),
        Command::Explain {
            scenario,
            seed,
            plant,
            storage,
            html,
        } => explain(
            &RunSpec {
                scenario,
                seed,
                plant,
                storage,
            },
            &html,
        ),
    };
    ExitCode::from(code)
}

fn sim_error_code(e: &SimError) -> u8 {
    match e {
        SimError::UnknownInvariant { .. } => 2,
        _ => EXIT_NONDETERMINISM,
    }
}

fn sweep(
    scenario: Scenario,
    start: u64,
    count: u64,
    plant: Option<Bug>,
    fail_fast: bool,
    storage: StorageKind,
) -> u8 {
    let name = scenario.name.clone();
    let mut failed = 0u64;
    let mut worst = 0u8;
    for seed in start..start.saturating_add(count) {
        let spec = RunSpec {
            scenario: scenario.clone(),
            seed,
            plant,
            storage,
        };
        match runner::run_checked(&spec) {
            Ok(result) if result.passed() => {}
            Ok(result) => {
                failed += 1;
                worst = worst.max(EXIT_VIOLATION);
                print!("{}", report(&result));
            }
            Err(e) => {
                failed += 1;
                worst = worst.max(sim_error_code(&e));
                println!(
                    "scenario {name} seed {seed}: {e}\n  replay: {}",
                    runner::replay_command(&spec)
                );
            }
        }
        if fail_fast && failed > 0 {
            break;
        }
    }
    println!("{name} ({storage}): {count} seeds from {start}, {failed} failed");
    worst
}

fn replay(spec: RunSpec, trace: Option<std::path::PathBuf>) -> u8 {
    println!(
        "SEED={} scenario={} plant={}",
        spec.seed,
        spec.scenario.name,
        spec.plant.map_or("none".into(), |b| b.to_string())
    );
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
    if result.passed() {
        println!(
            "all invariants held; {} events, trace hash {:016x}",
            result.history.len(),
            result.trace_hash
        );
        0
    } else {
        print!("{}", report(&result));
        EXIT_VIOLATION
    }
}

/// Like `replay` (same run, same exit codes), but the output is a page.
fn explain(spec: &RunSpec, path: &std::path::Path) -> u8 {
    let result = match runner::run_checked(spec) {
        Ok(r) => r,
        Err(e) => {
            println!("{e}");
            return sim_error_code(&e);
        }
    };
    if let Err(e) = std::fs::write(path, sim::explain::render_html(&result)) {
        eprintln!("cannot write {}: {e}", path.display());
        return 2;
    }
    println!("explain: {}", path.display());
    if result.passed() {
        println!(
            "all invariants held; {} events, trace hash {:016x}",
            result.history.len(),
            result.trace_hash
        );
        0
    } else {
        print!("{}", report(&result));
        EXIT_VIOLATION
    }
}

fn write_trace(path: &std::path::Path, history: &[sim::history::Record]) -> std::io::Result<()> {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    for r in history {
        writeln!(out, "{}", r.to_json())?;
    }
    out.flush()
}
