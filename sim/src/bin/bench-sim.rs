//! `bench-sim`: how fast the simulator runs and how fast it finds bugs, as JSON
//! lines on stdout for `ci/bench` to tabulate (progress on stderr).
//!
//! * per scenario: simulated seconds per wall second on one core, seeds per
//!   minute on every core (each seed run twice, as `sim sweep` does), peak
//!   resident memory a simulation adds (Linux `VmHWM`, reset per run), and where one run's wall time goes: turmoil's stepping
//!   (calibrated with idle hosts), recording the history, hashing it, checking
//!   it, and the rest, which is keel's runtime under test;
//! * the headline: `swarm` with 5 nodes and 1000 jobs;
//! * per planted bug: seeds until first detection in several independent seed
//!   ranges (median and worst) and the wall time that took on one core: in the
//!   bug's own scenario, in `swarm` alone, and by the guided search from swarm;
//! * what swarm's shapes and the guided search cost a seed (before and after);
//! * with `--hold-mem N` / `--hold-sqlite N`: unplanted swarm held over N seeds
//!   on every core (the nightly figure is 10,000 and 2,000).
//!
//! `cargo run -p sim --release --bin bench-sim -- [--seeds N] [--ranges N]`
//! (the nightly hold: `bash ci/bench-sim --only hold --hold-mem 10000 --hold-sqlite 2000`)

#![allow(clippy::disallowed_methods, clippy::disallowed_types)] // determinism-ok: wall-clock and heap measurement of whole runs, outside every simulated host

use std::num::NonZeroUsize;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use clap::Parser;
use keel::planted::Bug;
use serde_json::json;
use sim::run::history;
use sim::run::runner::{self, RunSpec, StorageKind, TICK};
use sim::tools::pool;

/// A field of `/proc/self/status` in bytes (`VmRSS`, `VmHWM`), or 0 without procfs.
fn proc_status_bytes(field: &str) -> usize {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status.lines().find_map(|l| {
                let rest = l.strip_prefix(field)?.strip_prefix(':')?;
                let kib: usize = rest.trim().trim_end_matches(" kB").trim().parse().ok()?;
                Some(kib * 1024)
            })
        })
        .unwrap_or(0)
}

/// Resident memory one simulation of `scenario` adds, measured in a fresh child
/// process: in this one, memory freed by earlier runs is reused and hides the peak.
fn peak_rss(label: &str) -> usize {
    let Ok(exe) = std::env::current_exe() else {
        return 0;
    };
    std::process::Command::new(exe)
        .args(["--peak-of", label])
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(0)
}

/// The child's side of [`peak_rss`].
fn print_own_peak(label: &str) -> Result<(), String> {
    let scenario = if label == HEADLINE {
        headline()?
    } else {
        scenarios::by_name(label).map_err(|e| e.to_string())?
    };
    let base = proc_status_bytes("VmRSS");
    runner::run_once(&spec(scenario, 0, None)).map_err(|e| e.to_string())?;
    println!("{}", proc_status_bytes("VmHWM").saturating_sub(base));
    Ok(())
}

/// The headline run's label: `swarm` on 5 nodes with 1000 jobs.
const HEADLINE: &str = "swarm-5n-1000j";

#[derive(Parser)]
#[command(about = "Simulator speed and bug-finding power")]
struct Args {
    /// Seeds per scenario for the one-core figures.
    #[arg(long, default_value_t = 4)]
    seeds: u64,
    /// Independent seed ranges per planted bug.
    #[arg(long, default_value_t = 5)]
    ranges: u64,
    /// Most seeds of the bug's own scenario searched per range before it counts
    /// as missed there (the targeted figure); 0 skips it.
    #[arg(long, default_value_t = 200)]
    search: u64,
    /// Only these scenarios (comma-separated); default: the whole catalog.
    #[arg(long, value_delimiter = ',')]
    scenarios: Vec<String>,
    /// Most seeds of `swarm` searched per range for each bug (the swarm-only
    /// figure); 0 skips it.
    #[arg(long, default_value_t = 500)]
    swarm_search: u64,
    /// Most runs of the guided search (`sim hunt` from swarm) per range for
    /// each bug; 0 skips it.
    #[arg(long, default_value_t = 500)]
    guided_search: u64,
    /// Only these planted bugs (comma-separated); default: every one.
    #[arg(long, value_delimiter = ',')]
    bugs: Vec<String>,
    /// Only these parts (comma-separated): `speed` (per scenario and the
    /// headline), `cost` (of swarm's shapes and the guided search), `bugs`
    /// (targeted, swarm-only and guided power), `hold` (unplanted swarm over
    /// `--hold-mem` and `--hold-sqlite` seeds). Default: every part.
    #[arg(long, value_delimiter = ',', value_parser = ["speed", "cost", "bugs", "hold"])]
    only: Vec<String>,
    /// Unplanted `swarm` seeds to hold on `mem`, every core, each run twice
    /// (the long figure: 10000 in a nightly run); 0 skips it.
    #[arg(long, default_value_t = 0)]
    hold_mem: u64,
    /// Unplanted `swarm` seeds to hold on `sqlite` (2000 nightly); 0 skips it.
    #[arg(long, default_value_t = 0)]
    hold_sqlite: u64,
    /// Seeds of the per-seed cost of swarm's shapes and of the guided search
    /// (before and after, on one core); 0 skips it.
    #[arg(long, default_value_t = 24)]
    cost_seeds: u64,
    /// Internal: run seed 0 of this scenario in this fresh process and print the
    /// resident memory it added (the parent runs one such child per scenario).
    #[arg(long, hide = true)]
    peak_of: Option<String>,
}

fn wall_now() -> Instant {
    Instant::now() // determinism-ok: measures whole runs from outside
}

/// One run, timed, with its heap peak and the harness's own costs.
struct Timed {
    wall: Duration,
    sim_ms: u64,
    events: usize,
    hash: Duration,
    check: Duration,
}

fn timed_run(spec: &RunSpec) -> Result<Timed, String> {
    let began = wall_now();
    let result = runner::run_once(spec).map_err(|e| e.to_string())?;
    let wall = began.elapsed();
    // The hash and the checks are part of `wall`; time them again on their own.
    let t = wall_now();
    std::hint::black_box(history::trace_hash(&result.history));
    let hash = t.elapsed();
    let scenario = sim::plan::shape::concrete(&spec.scenario, spec.seed);
    let timing = sim::world::node::Timing::for_scenario(&scenario)?.with_plan(&result.plan);
    let ctx = runner::check_ctx(&timing, &scenario, result.simulated_ms());
    let t = wall_now();
    std::hint::black_box(runner::check(&scenario, &result.history, &ctx).ok());
    let check = t.elapsed();
    Ok(Timed {
        wall,
        sim_ms: result.simulated_ms(),
        events: result.history.len(),
        hash,
        check,
    })
}

/// Wall time turmoil alone takes to step `hosts` idle hosts (each ticking a
/// 100 ms interval) through `sim_ms` at the runner's tick: the floor under any
/// run of that shape.
fn idle_turmoil(hosts: usize, sim_ms: u64) -> Duration {
    let mut sim = turmoil::Builder::new()
        .tick_duration(TICK)
        .simulation_duration(Duration::from_millis(sim_ms) + Duration::from_secs(1))
        .build();
    for i in 0..hosts {
        sim.host(format!("h{i}"), || async {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tick.tick().await;
            }
        });
    }
    let began = wall_now();
    while sim.elapsed() < Duration::from_millis(sim_ms) {
        if sim.step().is_err() {
            break;
        }
    }
    began.elapsed()
}

/// Cost of one history push, measured over many pushes.
fn push_cost() -> Duration {
    const PUSHES: u32 = 200_000;
    let h = history::History::new();
    let began = wall_now();
    for i in 0..PUSHES {
        h.push_at(
            u64::from(i),
            "n1",
            history::Ev::Harness(history::HarnessEvent::HealPhase),
        );
    }
    began.elapsed() / PUSHES
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

fn spec(scenario: scenarios::Scenario, seed: u64, plant: Option<Bug>) -> RunSpec {
    RunSpec {
        scenario,
        seed,
        plant,
        storage: StorageKind::Mem,
        script: None,
    }
}

/// The one-core figures of `scenario` over `seeds` seeds, as one JSON line.
fn one_core(
    label: &str,
    scenario: &scenarios::Scenario,
    seeds: u64,
    push: Duration,
) -> Result<serde_json::Value, String> {
    let mut speeds = Vec::new();
    let (mut wall, mut sim_ms, mut hash, mut check, mut events) =
        (Duration::ZERO, 0u64, Duration::ZERO, Duration::ZERO, 0usize);
    for seed in 0..seeds {
        let t = timed_run(&spec(scenario.clone(), seed, None))?;
        speeds.push(t.sim_ms as f64 / t.wall.as_secs_f64() / 1000.0);
        wall += t.wall;
        sim_ms += t.sim_ms;
        hash += t.hash;
        check += t.check;
        events += t.events;
    }
    // Hosts: the nodes, the database host and, with a workload, the client.
    let hosts = scenario.nodes as usize + 1 + usize::from(scenario.workload.is_some());
    let per_run_sim_ms = sim_ms / seeds.max(1);
    let stepping = idle_turmoil(hosts, per_run_sim_ms) * u32::try_from(seeds).unwrap_or(1);
    let recording = push * u32::try_from(events).unwrap_or(u32::MAX);
    let share = |d: Duration| d.as_secs_f64() / wall.as_secs_f64();
    let harness = stepping + recording + hash + check;
    let (min, max) = speeds
        .iter()
        .fold((f64::MAX, f64::MIN), |(lo, hi), s| (lo.min(*s), hi.max(*s)));
    let speed = median(&mut speeds);
    let peak = peak_rss(label);
    eprintln!(
        "{label}: {speed:.0}x on one core ({min:.0}..{max:.0}), peak +{:.1} MiB RSS",
        peak as f64 / 1048576.0
    );
    Ok(json!({
        "metric": "sim_speed", "scenario": label, "seeds": seeds, "hosts": hosts,
        "tick_ms": u64::try_from(TICK.as_millis()).unwrap_or(u64::MAX),
        "median_sim_s_per_wall_s": speed, "min": min, "max": max,
        "events_per_run": events as u64 / seeds.max(1),
        "peak_rss_bytes": peak,
        "share": {
            "turmoil_stepping": share(stepping), "history_recording": share(recording),
            "trace_hash": share(hash), "checking": share(check),
            "harness_total": share(harness), "runtime_under_test": 1.0 - share(harness),
        },
    }))
}

/// Seeds per minute through `run_checked` on every core.
fn all_cores(label: &str, scenario: &scenarios::Scenario, seeds: u64) -> serde_json::Value {
    let cores = std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN);
    let specs: Vec<RunSpec> = (0..seeds)
        .map(|s| spec(scenario.clone(), 1000 + s, None))
        .collect();
    let began = wall_now();
    pool::ordered(
        &specs,
        cores,
        &AtomicBool::new(false),
        |s| runner::run_checked(s).is_ok(),
        |_| {},
        |_, _| {},
    );
    let per_min = seeds as f64 / began.elapsed().as_secs_f64() * 60.0;
    eprintln!("{label}: {per_min:.0} seeds/min on {cores} cores (each seed twice)");
    json!({"metric": "seeds_per_minute", "scenario": label, "cores": cores.get(), "seeds": seeds, "seeds_per_minute": per_min})
}

/// Unplanted swarm over `seeds` seeds from 3,000,000 (a range no test or
/// figure uses) on `storage`, on every core, each seed twice: every failure is
/// a real bug, printed with its replay line.
fn hold(storage: StorageKind, seeds: u64) -> Result<serde_json::Value, String> {
    let swarm = scenarios::by_name("swarm").map_err(|e| e.to_string())?;
    let cores = std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN);
    let specs: Vec<RunSpec> = (0..seeds)
        .map(|i| RunSpec {
            storage,
            ..spec(swarm.clone(), HOLD_FROM + i, None)
        })
        .collect();
    let began = wall_now();
    let mut failures = Vec::new();
    pool::ordered(
        &specs,
        cores,
        &AtomicBool::new(false),
        |s| runner::run_checked(s).map(|r| r.passed()),
        |_| {},
        |i, outcome| {
            if !matches!(outcome, Ok(true)) {
                failures.push(runner::replay_command(&specs[i]));
            }
        },
    );
    let wall_s = began.elapsed().as_secs_f64();
    eprintln!(
        "swarm ({storage}, unplanted): {} of {seeds} seeds failed, {wall_s:.0}s on {cores} cores",
        failures.len()
    );
    for line in &failures {
        eprintln!("  {line}");
    }
    Ok(json!({
        "metric": "swarm_holds", "storage": storage.to_string(), "seeds": seeds, "from": HOLD_FROM,
        "cores": cores.get(), "failed": failures.len(), "failures": failures, "wall_s": wall_s,
    }))
}

/// First seed of bug-finding range `range`: ranges a million seeds apart, so
/// they share no seed, from 100,000,000, far from every seed a test, a
/// regression line or the unplanted hold uses.
fn range_start(range: u64) -> u64 {
    100_000_000 + range * 1_000_000
}

/// First seed of the unplanted hold: far from every test's and figure's seeds.
const HOLD_FROM: u64 = 3_000_000;

/// Wall time per simulated second of `specs`, run one after another on this
/// core, and the mean wall time per run.
fn cost_of(specs: impl Iterator<Item = RunSpec>) -> Result<(f64, f64), String> {
    let (mut wall, mut sim_ms, mut runs) = (Duration::ZERO, 0u64, 0u32);
    for s in specs {
        let t = timed_run(&s)?;
        wall += t.wall;
        sim_ms += t.sim_ms;
        runs += 1;
    }
    let per_sim_s = wall.as_secs_f64() / (sim_ms as f64 / 1000.0).max(1e-9);
    Ok((
        per_sim_s * 1000.0,
        wall.as_secs_f64() * 1000.0 / f64::from(runs.max(1)),
    ))
}

/// What swarm's per-seed shapes and the guided search cost a seed: wall ms
/// per simulated second of swarm's fixed template (the scenario before shapes)
/// beside its drawn shapes, and of plain seeds beside the hunt's runs (its
/// bookkeeping and its mutants' plans). Shapes vary in length, so the per
/// simulated second figure is the like-for-like one.
fn shape_cost(seeds: u64) -> Result<serde_json::Value, String> {
    let swarm = scenarios::by_name("swarm").map_err(|e| e.to_string())?;
    let mut fixed = swarm.clone();
    fixed.swarm = false;
    let before = cost_of((0..seeds).map(|s| spec(fixed.clone(), s, None)))?;
    let shaped = cost_of((0..seeds).map(|s| spec(swarm.clone(), s, None)))?;
    let mut hunt = sim::tools::hunt::Hunt::new(sim::tools::hunt::HuntConfig {
        scenario: swarm,
        storage: StorageKind::Mem,
        plant: None,
        seed: 0,
        start: 0,
    });
    let began = wall_now();
    let mut sim_ms = 0u64;
    while hunt.runs() < seeds {
        for ran in hunt.run_batch(seeds - hunt.runs(), NonZeroUsize::MIN) {
            sim_ms += ran.outcome.map_or(0, |r| r.simulated_ms());
        }
    }
    let hunt_wall = began.elapsed().as_secs_f64();
    let guided = (
        hunt_wall * 1000.0 / (sim_ms as f64 / 1000.0).max(1e-9),
        hunt_wall * 1000.0 / seeds.max(1) as f64,
    );
    let ratio = |a: (f64, f64), b: (f64, f64)| a.0 / b.0;
    eprintln!(
        "swarm per simulated second: fixed template {:.1} ms, shaped {:.1} ms ({:.2}x), guided {:.1} ms ({:.2}x of shaped)",
        before.0, shaped.0, ratio(shaped, before), guided.0, ratio(guided, shaped)
    );
    Ok(json!({
        "metric": "swarm_seed_cost", "seeds": seeds,
        "fixed_template": {"wall_ms_per_sim_s": before.0, "wall_ms_per_seed": before.1},
        "shaped": {"wall_ms_per_sim_s": shaped.0, "wall_ms_per_seed": shaped.1},
        "guided": {"wall_ms_per_sim_s": guided.0, "wall_ms_per_seed": guided.1},
        "shaped_over_fixed": ratio(shaped, before), "guided_over_shaped": ratio(guided, shaped),
    }))
}

/// What one planted run showed.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Seen {
    /// It held, or it failed as it fails without the bug too.
    Nothing,
    /// Some invariant broke, and the same run without the plant holds: the
    /// failure a user sweeping would see, caused by the bug.
    Failure,
    /// The invariant the catalog proves on this bug broke.
    Catcher,
}

/// What `outcome` (a run of `spec`, planted) showed; a failure is checked by
/// running `spec` again without the plant, only while `failures` still count
/// (once a range has its first failure, only its catcher matters).
fn seen(
    spec: &RunSpec,
    outcome: &Result<runner::RunResult, runner::SimError>,
    invariant: &str,
    failures: bool,
) -> Seen {
    let Ok(result) = outcome else {
        return Seen::Nothing;
    };
    if result.violations.iter().any(|v| v.invariant == invariant) {
        return Seen::Catcher;
    }
    if result.violations.is_empty() || !failures {
        return Seen::Nothing;
    }
    let unplanted = RunSpec {
        plant: None,
        ..spec.clone()
    };
    match runner::run_once(&unplanted) {
        Ok(r) if r.violations.is_empty() => Seen::Failure,
        _ => Seen::Nothing,
    }
}

/// First detections per range, counted two ways: the first run that failed
/// because of the bug (any invariant), and the first its catcher fired in.
#[derive(Default)]
struct Detections {
    any: Vec<f64>,
    any_walls: Vec<f64>,
    catcher: Vec<f64>,
    catcher_walls: Vec<f64>,
    ranges: u64,
}

impl Detections {
    /// Search one range: `look(i, failures)` runs the range's `i`-th run
    /// (0-based) and says what it showed, a plain failure only while
    /// `failures` (none seen yet); stops at the catcher or after `search` runs.
    fn range(&mut self, search: u64, mut look: impl FnMut(u64, bool) -> Seen) {
        self.ranges += 1;
        let began = wall_now();
        let mut failed = false;
        for i in 0..search {
            let seen = look(i, !failed);
            if seen >= Seen::Failure && !failed {
                failed = true;
                self.any.push((i + 1) as f64);
                self.any_walls.push(began.elapsed().as_secs_f64());
            }
            if seen == Seen::Catcher {
                self.catcher.push((i + 1) as f64);
                self.catcher_walls.push(began.elapsed().as_secs_f64());
                return;
            }
        }
    }

    /// Median, worst, misses and median wall of one count, as JSON.
    fn summary(found: &[f64], walls: &[f64], ranges: u64) -> serde_json::Value {
        let worst = found.iter().copied().fold(0.0, f64::max);
        json!({
            "seeds_to_detection": found, "median_seeds": median(&mut found.to_vec()),
            "worst_seeds": worst, "missed_ranges": ranges - found.len() as u64,
            "median_wall_s_to_detection": median(&mut walls.to_vec()),
        })
    }

    /// The JSON line: the top-level figures count any failure the bug caused;
    /// `by_catcher` counts only its catcher's invariant.
    fn line(&self, label: serde_json::Value, search: u64) -> serde_json::Value {
        let mut line = Detections::summary(&self.any, &self.any_walls, self.ranges);
        let by_catcher = Detections::summary(&self.catcher, &self.catcher_walls, self.ranges);
        eprintln!(
            "{} ({}, {}): first failure after {} runs (median), {} (worst), {:.2}s, missed in {} of {}; its catcher after {} (median), {} (worst), missed in {}",
            text(&label["bug"]), text(&label["search_by"]), text(&label["scenario"]),
            line["median_seeds"], line["worst_seeds"], line["median_wall_s_to_detection"].as_f64().unwrap_or(f64::NAN),
            line["missed_ranges"], self.ranges,
            by_catcher["median_seeds"], by_catcher["worst_seeds"], by_catcher["missed_ranges"],
        );
        if let (Some(line), Some(label)) = (line.as_object_mut(), label.as_object()) {
            line.extend(label.clone());
            line.insert("ranges".into(), json!(self.ranges));
            line.insert("search".into(), json!(search));
            line.insert("by_catcher".into(), by_catcher);
        }
        line
    }
}

/// A JSON string's text, or "" for any other value.
fn text(value: &serde_json::Value) -> &str {
    value.as_str().unwrap_or("")
}

/// Seeds until `bug` is first detected in each of `ranges` seed ranges.
fn bug_power(
    (bug, scenario, invariant): (Bug, &str, &str),
    ranges: u64,
    search: u64,
) -> Result<serde_json::Value, String> {
    let scenario = scenarios::by_name(scenario).map_err(|e| e.to_string())?;
    let search_by = if scenario.swarm {
        "swarm_only"
    } else {
        "targeted"
    };
    let mut found = Detections::default();
    for range in 0..ranges {
        let start = range_start(range);
        found.range(search, |i, failures| {
            let spec = spec(scenario.clone(), start + i, Some(bug));
            seen(&spec, &runner::run_once(&spec), invariant, failures)
        });
    }
    let label = json!({
        "metric": "bug_power", "search_by": search_by, "bug": bug.to_string(),
        "scenario": scenario.name, "invariant": invariant,
    });
    Ok(found.line(label, search))
}

/// Runs of the guided search (`sim hunt` from swarm, on one core) until `bug`
/// is first detected, in each of `ranges` ranges: range `r` hunts with seed
/// `r` from fresh seed [`range_start`]`(r)`, the swarm-only figure's ranges.
fn guided_power(
    (bug, invariant): (Bug, &str),
    ranges: u64,
    search: u64,
) -> Result<serde_json::Value, String> {
    let swarm = scenarios::by_name("swarm").map_err(|e| e.to_string())?;
    let mut found = Detections::default();
    for range in 0..ranges {
        let mut hunt = sim::tools::hunt::Hunt::new(sim::tools::hunt::HuntConfig {
            scenario: swarm.clone(),
            storage: StorageKind::Mem,
            plant: Some(bug),
            seed: range,
            start: range_start(range),
        });
        let mut ran = std::collections::VecDeque::new();
        found.range(search, |_, failures| {
            if ran.is_empty() {
                ran.extend(hunt.run_batch(search - hunt.runs(), NonZeroUsize::MIN));
            }
            ran.pop_front().map_or(Seen::Nothing, |r| {
                seen(&r.candidate.spec, &r.outcome, invariant, failures)
            })
        });
    }
    let label = json!({
        "metric": "bug_power", "search_by": "guided", "bug": bug.to_string(),
        "scenario": "swarm", "invariant": invariant,
    });
    Ok(found.line(label, search))
}

fn headline() -> Result<scenarios::Scenario, String> {
    let mut swarm = scenarios::by_name("swarm").map_err(|e| e.to_string())?;
    swarm.nodes = 5;
    let w = swarm.workload.as_mut().ok_or("swarm has no workload")?;
    w.jobs = 1000;
    Ok(swarm)
}

fn run(args: &Args) -> Result<(), String> {
    let push = push_cost();
    let mut catalog = scenarios::all();
    if !args.scenarios.is_empty() {
        catalog.retain(|s| args.scenarios.contains(&s.name));
    }
    let part = |name: &str| args.only.is_empty() || args.only.iter().any(|p| p == name);
    if part("speed") {
        let headline = headline()?;
        let line = one_core(HEADLINE, &headline, args.seeds, push)?;
        println!("{line}");
        let cores = std::thread::available_parallelism().map_or(1, NonZeroUsize::get) as u64;
        println!("{}", all_cores(HEADLINE, &headline, 2 * cores));
        for scenario in &catalog {
            println!("{}", one_core(&scenario.name, scenario, args.seeds, push)?);
            println!("{}", all_cores(&scenario.name, scenario, 2 * cores));
        }
    }
    if part("cost") && args.cost_seeds > 0 {
        println!("{}", shape_cost(args.cost_seeds)?);
    }
    let holds = [
        (StorageKind::Mem, args.hold_mem),
        (StorageKind::Sqlite, args.hold_sqlite),
    ];
    for (storage, seeds) in holds.into_iter().filter(|_| part("hold")) {
        if seeds > 0 {
            println!("{}", hold(storage, seeds)?);
        }
    }
    if part("bugs") {
        let bugs = || {
            sim::run::checkers::PLANTED_BUG_CATCHERS
                .into_iter()
                .filter(|(b, _, _)| args.bugs.is_empty() || args.bugs.contains(&b.to_string()))
        };
        for bug in bugs().filter(|_| args.search > 0) {
            println!("{}", bug_power(bug, args.ranges, args.search)?);
        }
        for (bug, _, invariant) in bugs().filter(|_| args.swarm_search > 0) {
            let line = bug_power((bug, "swarm", invariant), args.ranges, args.swarm_search)?;
            println!("{line}");
        }
        for (bug, _, invariant) in bugs().filter(|_| args.guided_search > 0) {
            println!(
                "{}",
                guided_power((bug, invariant), args.ranges, args.guided_search)?
            );
        }
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    // Handlers and loops panic on purpose; the runtime records each one.
    std::panic::set_hook(Box::new(|_| {}));
    let args = Args::parse();
    let outcome = match &args.peak_of {
        Some(label) => print_own_peak(label),
        None => run(&args),
    };
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn planted(seed: u64) -> (RunSpec, Seen) {
        let swarm = scenarios::by_name("swarm").expect("swarm is in the catalog");
        let spec = spec(swarm, seed, Some(Bug::CrossTermStop));
        let seen = seen(
            &spec,
            &runner::run_once(&spec),
            "no_cross_term_teardown",
            true,
        );
        (spec, seen)
    }

    /// A change to swarm's draws moves these seeds; `sim sweep --scenario
    /// swarm --plant cross_term_stop` finds new ones.
    #[test]
    fn a_failure_counts_when_the_unplanted_run_holds_and_the_catcher_apart() {
        // Seed 79: the stale retry stops a newer term's maintainer and
        // no_cross_term_teardown sees it (planted_bug_seeds.txt).
        assert!(planted(79).1 == Seen::Catcher);
        // Seed 700000729: the same bug seen only by maintainer_liveness; the
        // seed holds without the plant.
        let (spec, seen) = planted(700_000_729);
        assert!(seen == Seen::Failure);
        let unplanted = RunSpec {
            plant: None,
            ..spec
        };
        assert!(runner::run_once(&unplanted).is_ok_and(|r| r.violations.is_empty()));
    }

    #[test]
    fn the_first_failure_and_the_first_catch_are_counted_apart() {
        let mut d = Detections::default();
        let shows = [Seen::Nothing, Seen::Failure, Seen::Nothing, Seen::Catcher];
        d.range(10, |i, _| {
            shows.get(i as usize).copied().unwrap_or(Seen::Nothing)
        });
        d.range(2, |_, _| Seen::Nothing);
        assert_eq!(
            (d.any.as_slice(), d.catcher.as_slice()),
            (&[2.0][..], &[4.0][..])
        );
        let line = d.line(
            json!({"bug": "b", "search_by": "swarm_only", "scenario": "swarm"}),
            10,
        );
        assert_eq!(line["missed_ranges"], 1);
        assert_eq!(line["by_catcher"]["median_seeds"], 4.0);
    }
}
