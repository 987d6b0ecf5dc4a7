//! `bench-report`: turns the JSON lines of `bench-sim`, `bench-runtime` and the
//! peer benchmarks into one Markdown report: the headline, the machine and
//! versions, every figure with its median and spread, and each target with
//! whether it was met, by how much it was missed, and why.
//!
//! ```sh
//! bench-report --machine target/bench/machine.json target/bench/*.jsonl > report.md
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use serde_json::Value;

#[derive(Parser)]
#[command(about = "Markdown report from benchmark JSON lines")]
struct Args {
    /// A JSON object describing the machine and versions (`ci/bench` writes it).
    #[arg(long)]
    machine: Option<PathBuf>,
    /// JSON-lines files from bench-sim, bench-runtime and peers.
    files: Vec<PathBuf>,
}

/// Simulated seconds per wall second the headline run must reach.
const TARGET_SIM_SPEED: f64 = 1000.0;
/// Seeds to first detection of a planted bug in its own scenario: median and worst.
const TARGET_BUG_MEDIAN_SEEDS: f64 = 20.0;
const TARGET_BUG_WORST_SEEDS: f64 = 200.0;
/// Issue 16's target for plain swarm, seeds to first detection.
const TARGET_SWARM_MEDIAN_SEEDS: f64 = 50.0;
const TARGET_SWARM_WORST_SEEDS: f64 = 500.0;
/// PostgreSQL throughput over the best peer.
const TARGET_PG_RATIO: f64 = 1.5;
/// SQLite jobs per second with 4 workers.
const TARGET_SQLITE_JOBS_PER_S: f64 = 20_000.0;
/// p99 enqueue-to-start latency on an idle PostgreSQL queue, ms.
const TARGET_PG_IDLE_P99_MS: f64 = 10.0;

fn f(v: &Value, key: &str) -> f64 {
    v.get(key).and_then(Value::as_f64).unwrap_or(f64::NAN)
}

fn s<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

fn pct(x: f64) -> String {
    format!("{:.0}%", x * 100.0)
}

/// "Jobs per run: 10000 (`a`, `b`); 50000 (`c`)": how long each row's runs were,
/// from the rows' `jobs`, each count with the labels `label` gives its rows.
fn jobs_per_run(rows: &[Value], label: impl Fn(&Value) -> String) -> String {
    let mut by_jobs: BTreeMap<u64, BTreeSet<String>> = BTreeMap::new();
    for l in rows {
        if let Some(jobs) = l.get("jobs").and_then(Value::as_u64) {
            by_jobs.entry(jobs).or_default().insert(label(l));
        }
    }
    let parts: Vec<String> = by_jobs
        .iter()
        .map(|(jobs, labels)| {
            let labels: Vec<String> = labels.iter().map(|l| format!("`{l}`")).collect();
            format!("{jobs} ({})", labels.join(", "))
        })
        .collect();
    if parts.is_empty() {
        return String::new();
    }
    format!("Jobs per run: {}.", parts.join("; "))
}

/// What a keel profile that deletes completed rows says (`bench-runtime --delete-completed`).
const DELETES: &str = "delete completed";

/// A row's profile: `defaults` unless it names another.
fn profile(l: &Value) -> &str {
    l.get("profile")
        .and_then(Value::as_str)
        .unwrap_or("defaults")
}

/// A keel throughput row's feed, with its profile when not the defaults.
fn feed_label(l: &Value) -> String {
    match profile(l) {
        "defaults" => s(l, "feed").to_owned(),
        other => format!("{}, {other}", s(l, "feed")),
    }
}

fn spread(v: &Value) -> String {
    format!(
        "{:.0} ({:.0}..{:.0})",
        f(v, "median_jobs_per_s"),
        f(v, "min"),
        f(v, "max")
    )
}

struct Report {
    lines: Vec<Value>,
    out: String,
    targets: Vec<(String, String, String)>,
}

impl Report {
    fn of(&self, metric: &str) -> impl Iterator<Item = &Value> {
        let metric = metric.to_owned();
        self.lines.iter().filter(move |l| s(l, "metric") == metric)
    }

    fn target(&mut self, what: &str, measured: String, verdict: String) {
        self.targets.push((what.to_owned(), measured, verdict));
    }

    fn simulator(&mut self) {
        let speeds: Vec<Value> = self.of("sim_speed").cloned().collect();
        if speeds.is_empty() {
            return;
        }
        let per_min: BTreeMap<String, f64> = self
            .of("seeds_per_minute")
            .map(|l| (s(l, "scenario").to_owned(), f(l, "seeds_per_minute")))
            .collect();
        let out = &mut self.out;
        out.push_str("\n## Simulator\n\n");
        out.push_str(
            "Simulated seconds per wall second on one core (median, min..max over seeds), \
                      seeds per minute on every core (each seed run twice, as `sim sweep` does), \
                      resident memory one simulation adds, and where one run's wall time goes.\n\n",
        );
        out.push_str("| scenario | sim-s / wall-s | seeds / min | peak RSS | turmoil stepping | recording | hashing | checking | runtime under test |\n");
        out.push_str("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
        for l in &speeds {
            let share = |k: &str| l.get("share").map_or(f64::NAN, |sh| f(sh, k));
            let _ = writeln!(
                out,
                "| {} | {:.0}x ({:.0}..{:.0}) | {:.0} | {:.1} MiB | {} | {} | {} | {} | {} |",
                s(l, "scenario"),
                f(l, "median_sim_s_per_wall_s"),
                f(l, "min"),
                f(l, "max"),
                per_min.get(s(l, "scenario")).copied().unwrap_or(f64::NAN),
                f(l, "peak_rss_bytes") / 1_048_576.0,
                pct(share("turmoil_stepping")),
                pct(share("history_recording")),
                pct(share("trace_hash")),
                pct(share("checking")),
                pct(share("runtime_under_test")),
            );
        }
        if let Some(h) = speeds.iter().find(|l| s(l, "scenario") == "swarm-5n-1000j") {
            let speed = f(h, "median_sim_s_per_wall_s");
            let stepping = h
                .get("share")
                .map_or(f64::NAN, |sh| f(sh, "turmoil_stepping"));
            let verdict = if speed >= TARGET_SIM_SPEED {
                "met".to_owned()
            } else {
                format!(
                    "missed by {:.0}%: turmoil's own stepping of {} hosts at a {} ms tick takes {} of the wall time before keel runs at all",
                    (1.0 - speed / TARGET_SIM_SPEED) * 100.0,
                    h.get("hosts").and_then(Value::as_u64).unwrap_or(0),
                    h.get("tick_ms").and_then(Value::as_u64).unwrap_or(0),
                    pct(stepping)
                )
            };
            self.target(
                "≥ 1000 sim-s / wall-s, swarm 5 nodes 1000 jobs, one core",
                format!("{speed:.0}x"),
                verdict,
            );
        }
    }

    fn bugs(&mut self) {
        let bugs: Vec<Value> = self.of("bug_power").cloned().collect();
        if bugs.is_empty() {
            return;
        }
        let out = &mut self.out;
        out.push_str("\n## Bug-finding power\n\n");
        out.push_str(
            "Seeds until each planted bug is first detected, in independent seed ranges \
                      (one run per seed), and the wall time that took on one core. A detection is \
                      a run that fails with the bug planted and holds without it; the last column \
                      counts only the invariant the catalog proves on the bug.\n\n",
        );
        out.push_str("| planted bug | search | scenario | seeds to detection | median | worst | missed ranges | wall to detection (median) | by its catcher: median, worst (invariant) |\n");
        out.push_str("| --- | --- | --- | --- | ---: | ---: | ---: | ---: | --- |\n");
        // Per search: largest median, largest worst, ranges missed.
        let mut worst: BTreeMap<String, (f64, f64, u64)> = BTreeMap::new();
        for l in &bugs {
            let seeds: Vec<String> = l
                .get("seeds_to_detection")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .map(|x| format!("{}", x.as_f64().unwrap_or(0.0)))
                        .collect()
                })
                .unwrap_or_default();
            let missed = l.get("missed_ranges").and_then(Value::as_u64).unwrap_or(0);
            let catcher = l.get("by_catcher").cloned().unwrap_or(Value::Null);
            let _ = writeln!(
                out,
                "| `{}` | {} | {} | {} | {} | {} | {} of {} | {:.2} s | {}, {} (`{}`) |",
                s(l, "bug"),
                s(l, "search_by"),
                s(l, "scenario"),
                seeds.join(", "),
                f(l, "median_seeds"),
                f(l, "worst_seeds"),
                missed,
                l.get("ranges").and_then(Value::as_u64).unwrap_or(0),
                f(l, "median_wall_s_to_detection"),
                f(&catcher, "median_seeds"),
                f(&catcher, "worst_seeds"),
                s(l, "invariant"),
            );
            let w = worst.entry(s(l, "search_by").to_owned()).or_default();
            w.0 = w.0.max(f(l, "median_seeds"));
            w.1 = w.1.max(f(l, "worst_seeds"));
            w.2 += missed;
        }
        let targets = [
            ("targeted", TARGET_BUG_MEDIAN_SEEDS, TARGET_BUG_WORST_SEEDS),
            (
                "swarm_only",
                TARGET_SWARM_MEDIAN_SEEDS,
                TARGET_SWARM_WORST_SEEDS,
            ),
        ];
        for (search, median_max, worst_max) in targets {
            let Some(&(median, worst, missed)) = worst.get(search) else {
                continue;
            };
            let met = median <= median_max && worst <= worst_max && missed == 0;
            self.target(
                &format!(
                    "every planted bug, {search}: median ≤ {median_max} seeds, worst ≤ {worst_max}"
                ),
                format!("largest median {median}, worst {worst}, {missed} ranges missed"),
                if met { "met".into() } else { "missed".into() },
            );
        }
    }

    fn runtime(&mut self) {
        let rows: Vec<Value> = self
            .of("throughput")
            .filter(|l| l.get("engine").is_some())
            .cloned()
            .collect();
        if rows.is_empty() {
            return;
        }
        let mut table: BTreeMap<(String, String), BTreeMap<u64, Value>> = BTreeMap::new();
        for l in &rows {
            let workers = l.get("workers").and_then(Value::as_u64).unwrap_or(0);
            table
                .entry((s(l, "engine").to_owned(), feed_label(l)))
                .or_default()
                .insert(workers, l.clone());
        }
        let out = &mut self.out;
        out.push_str("\n## Runtime throughput\n\n");
        out.push_str("Jobs per second end to end (enqueue, claim, no-op handler, finalize), \
                      median (min..max) of the runs. `single`: one enqueue call per job while the \
                      workers run; `batched`: enqueue_batch of 500 while they run; `backlog`: every \
                      job enqueued first, then the drain timed; `claim-ahead N`: the backlog with \
                      each worker claiming N jobs ahead of the one it runs (`JobsConfig::claim_ahead`; \
                      the other rows use keel's default, 0). CPU is this process's per job (and \
                      the PostgreSQL server's over the same timed part, where it runs here; a backlog's preload is in neither). ");
        out.push_str(&jobs_per_run(&rows, feed_label));
        out.push_str("\n\n");
        out.push_str(
            "| engine | feed | 1 worker | 4 workers | 16 workers | CPU µs / job (4 workers) |\n",
        );
        out.push_str("| --- | --- | ---: | ---: | ---: | ---: |\n");
        for ((engine, feed), by_workers) in &table {
            let cell = |w: u64| by_workers.get(&w).map_or("–".to_owned(), spread);
            let cpu = by_workers.get(&4).map_or("–".to_owned(), |l| {
                let db = f(l, "db_cpu_us_per_job");
                if db.is_nan() {
                    format!("{:.0}", f(l, "cpu_us_per_job"))
                } else {
                    format!("{:.0} + {:.0} server", f(l, "cpu_us_per_job"), db)
                }
            });
            let _ = writeln!(
                out,
                "| {engine} | {feed} | {} | {} | {} | {cpu} |",
                cell(1),
                cell(4),
                cell(16)
            );
        }
        let best_sqlite = rows
            .iter()
            .filter(|l| {
                s(l, "engine") == "sqlite" && l.get("workers").and_then(Value::as_u64) == Some(4)
            })
            .map(|l| f(l, "median_jobs_per_s"))
            .fold(f64::NAN, f64::max);
        if !best_sqlite.is_nan() {
            let verdict = if best_sqlite >= TARGET_SQLITE_JOBS_PER_S {
                "met".to_owned()
            } else {
                format!(
                    "missed by {:.0}%: every job is a write on SQLite's one writer thread (its finalize, which claims the next job in the same call) plus its share of the enqueue; concurrent calls share a commit, so more workers go faster; with few workers the thread also waits between calls (SqliteOptions::idle_spin keeps it polling), so a busy or one-CPU machine lowers this most",
                    (1.0 - best_sqlite / TARGET_SQLITE_JOBS_PER_S) * 100.0
                )
            };
            self.target(
                "SQLite ≥ 20,000 jobs/s, 4 workers (best feed)",
                format!("{best_sqlite:.0} jobs/s"),
                verdict,
            );
        }
    }

    fn peers(&mut self) {
        let peer_rows: Vec<Value> = self
            .of("throughput")
            .filter(|l| l.get("peer").is_some())
            .cloned()
            .collect();
        // Keel's best backlog profile at each worker count: (jobs/s, profile);
        // and its best rate among the profiles that keep completed rows.
        let mut keel: BTreeMap<u64, (f64, String)> = BTreeMap::new();
        let mut keeping_best = f64::NAN;
        for l in self
            .of("throughput")
            .filter(|l| s(l, "engine") == "postgres" && s(l, "feed") == "backlog")
        {
            let workers = l.get("workers").and_then(Value::as_u64).unwrap_or(0);
            let rate = f(l, "median_jobs_per_s");
            let slot = keel.entry(workers).or_insert((f64::NAN, String::new()));
            if slot.0.is_nan() || rate > slot.0 {
                *slot = (rate, profile(l).to_owned());
            }
            if !profile(l).contains(DELETES) {
                keeping_best = keeping_best.max(rate);
            }
        }
        if peer_rows.is_empty() || keel.is_empty() {
            return;
        }
        let out = &mut self.out;
        out.push_str("\n## Keel and its peers on the same PostgreSQL\n\n");
        out.push_str(
            "The same no-op workload: a backlog enqueued first, then drained by N \
                      workers (graphile-worker: `concurrency` N), median (min..max). \
                      Profiles: `defaults`, the peer as installed; `batched`, the batching \
                      its docs suggest starting from (a local queue of N + 1 jobs locked \
                      ahead per process, `completeJobBatchDelay: 0`); `matched`, a local queue as \
                      deep as keel's `claim-ahead 8` hand (N × 9 jobs); `deep`, a local queue of \
                      500 jobs per process. Keel's figure is its best backlog profile at that \
                      worker count, named beside it. ",
        );
        out.push_str(&jobs_per_run(&peer_rows, |l| profile(l).to_owned()));
        out.push_str("\n\n");
        out.push_str(
            "| peer | profile | workers | peer jobs/s | keel jobs/s | keel profile | keel / peer |\n",
        );
        out.push_str("| --- | --- | ---: | ---: | ---: | --- | ---: |\n");
        // The best peer row overall, and the best on each profile.
        let mut best: BTreeMap<String, f64> = BTreeMap::new();
        // (peer, profile, jobs/s) of the fastest row.
        let mut best_peer = (String::new(), String::new(), 0.0f64);
        for l in &peer_rows {
            let workers = l.get("workers").and_then(Value::as_u64).unwrap_or(0);
            let peer = f(l, "median_jobs_per_s");
            let (ours, ours_profile) = keel
                .get(&workers)
                .map_or((f64::NAN, "–"), |(r, p)| (*r, p.as_str()));
            let profile = profile(l);
            let _ = writeln!(
                out,
                "| {} {} | {profile} | {workers} | {} | {ours:.0} | {ours_profile} | {:.2}x |",
                s(l, "peer"),
                s(l, "version"),
                spread(l),
                ours / peer
            );
            let slot = best.entry(profile.to_owned()).or_insert(0.0);
            *slot = slot.max(peer);
            if peer > best_peer.2 {
                best_peer = (s(l, "peer").to_owned(), profile.to_owned(), peer);
            }
        }
        let (best_keel, best_keel_profile) = keel.values().fold((f64::NAN, ""), |best, (r, p)| {
            if best.0.is_nan() || *r > best.0 {
                (*r, p.as_str())
            } else {
                best
            }
        });
        let ratio_at_best = if best_peer.2 > 0.0 {
            best_keel / best_peer.2
        } else {
            f64::NAN
        };
        let (who, best_profile, best_peer) = best_peer;
        let mut measured = format!(
            "{best_keel:.0} (keel {best_keel_profile}) vs {best_peer:.0} jobs/s = {ratio_at_best:.2}x ({who} {best_profile})"
        );
        for (profile, peer) in &best {
            if *profile != best_profile {
                let _ = write!(measured, "; {:.2}x vs {profile}", best_keel / peer);
            }
        }
        if best_keel_profile.contains(DELETES) {
            // The peers delete completed jobs too; say what keel's default costs.
            let _ = write!(
                measured,
                "; keel keeping completed rows (its default): {keeping_best:.0} jobs/s = {:.2}x",
                keeping_best / best_peer
            );
        }
        let verdict = if ratio_at_best >= TARGET_PG_RATIO {
            "met".to_owned()
        } else if best_profile != "defaults" {
            format!(
                "missed by {:.0}%: the peer's local queue fetches and locks jobs ahead per process and deletes completed jobs in batches; keel's claim_ahead also claims ahead (per worker, at most 64) and groups completions, but waits for a hand's last completion before claiming the next, and fences and heartbeats every job it runs{}",
                (1.0 - ratio_at_best / TARGET_PG_RATIO) * 100.0,
                if best_keel_profile.contains(DELETES) {
                    ""
                } else {
                    "; and it keeps each completed row for `retention` (an UPDATE, not a DELETE)"
                }
            )
        } else {
            format!(
                "missed by {:.0}%: the server's CPU per statement and WAL flush per commit bound it; concurrent claims and completions share statements and commits, so few workers batch little",
                (1.0 - ratio_at_best / TARGET_PG_RATIO) * 100.0
            )
        };
        self.target(
            "PostgreSQL ≥ 1.5x the best peer (best worker count and profile each)",
            measured,
            verdict,
        );
    }

    fn latency(&mut self) {
        let rows: Vec<Value> = self.of("latency").cloned().collect();
        if rows.is_empty() {
            return;
        }
        let out = &mut self.out;
        out.push_str("\n## Enqueue-to-start latency\n\n");
        out.push_str(
            "Single jobs, 4 workers; `loaded`: while other jobs arrive at the given rate.\n\n",
        );
        out.push_str(
            "| system | queue | p50 ms | p99 ms | samples |\n| --- | --- | ---: | ---: | ---: |\n",
        );
        let mut pg_idle_p99 = f64::NAN;
        for l in &rows {
            let who = if l.get("peer").is_some() {
                format!("{} (peer)", s(l, "peer"))
            } else {
                format!("keel on {}", s(l, "engine"))
            };
            let _ = writeln!(
                out,
                "| {who} | {} | {:.2} | {:.2} | {} |",
                s(l, "queue"),
                f(l, "p50_ms"),
                f(l, "p99_ms"),
                l.get("samples").and_then(Value::as_u64).unwrap_or(0)
            );
            if s(l, "engine") == "postgres" && s(l, "queue") == "idle" && l.get("peer").is_none() {
                pg_idle_p99 = f(l, "p99_ms");
            }
        }
        if !pg_idle_p99.is_nan() {
            let verdict = if pg_idle_p99 < TARGET_PG_IDLE_P99_MS {
                "met".to_owned()
            } else {
                format!("missed by {:.1} ms", pg_idle_p99 - TARGET_PG_IDLE_P99_MS)
            };
            self.target(
                "p99 enqueue-to-start < 10 ms, idle PostgreSQL queue",
                format!("{pg_idle_p99:.2} ms"),
                verdict,
            );
        }
    }
}

fn machine_section(machine: Option<&Value>) -> String {
    let Some(m) = machine else {
        return String::new();
    };
    let mut out = String::from("\n## Machine and versions\n\n");
    if let Some(obj) = m.as_object() {
        for (k, v) in obj {
            let text = v.as_str().map_or_else(|| v.to_string(), str::to_owned);
            let _ = writeln!(out, "- {k}: {text}");
        }
    }
    out
}

fn run(args: &Args) -> Result<String, String> {
    let mut lines = Vec::new();
    for file in &args.files {
        let text = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let v: Value = serde_json::from_str(line)
                .map_err(|e| format!("{}:{}: not JSON: {e}", file.display(), i + 1))?;
            lines.push(v);
        }
    }
    let machine: Option<Value> = match &args.machine {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .map_err(|e| format!("{}: {e}", p.display()))
                .and_then(|t| {
                    serde_json::from_str(&t).map_err(|e| format!("{}: {e}", p.display()))
                })?,
        ),
        None => None,
    };
    let mut r = Report {
        lines,
        out: String::new(),
        targets: Vec::new(),
    };
    r.simulator();
    r.bugs();
    r.runtime();
    r.peers();
    r.latency();
    let headline = r
        .of("sim_speed")
        .find(|l| s(l, "scenario") == "swarm-5n-1000j")
        .map_or("n/a".to_owned(), |l| {
            format!("{:.0}x", f(l, "median_sim_s_per_wall_s"))
        });
    let mut doc = format!(
        "# Keel benchmark report\n\nsimulated seconds per wall second (swarm, 5 nodes, 1000 jobs): {headline}\n"
    );
    doc.push_str(&machine_section(machine.as_ref()));
    if !r.targets.is_empty() {
        doc.push_str("\n## Targets\n\n| target | measured | verdict |\n| --- | --- | --- |\n");
        for (what, measured, verdict) in &r.targets {
            let _ = writeln!(doc, "| {what} | {measured} | {verdict} |");
        }
    }
    doc.push_str(&r.out);
    Ok(doc)
}

fn main() -> ExitCode {
    match run(&Args::parse()) {
        Ok(doc) => {
            print!("{doc}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(jsonl: &str) -> String {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("in.jsonl");
        std::fs::write(&path, jsonl).expect("write");
        run(&Args {
            machine: None,
            files: vec![path],
        })
        .expect("report")
    }

    #[test]
    fn headline_targets_and_ratios() {
        let doc = report(concat!(
            r#"{"metric":"sim_speed","scenario":"swarm-5n-1000j","median_sim_s_per_wall_s":650.0,"min":600,"max":700,"hosts":7,"peak_rss_bytes":1048576,"share":{"turmoil_stepping":0.5}}"#,
            "\n",
            r#"{"engine":"postgres","metric":"throughput","feed":"backlog","workers":4,"median_jobs_per_s":3000,"min":2900,"max":3100}"#,
            "\n",
            r#"{"peer":"graphile-worker","version":"0.16.6","metric":"throughput","workers":4,"median_jobs_per_s":1500,"min":1400,"max":1600}"#,
            "\n",
        ));
        assert!(
            doc.contains("simulated seconds per wall second (swarm, 5 nodes, 1000 jobs): 650x"),
            "{doc}"
        );
        assert!(doc.contains("missed by 35%"), "{doc}");
        assert!(
            doc.contains(
                "| graphile-worker 0.16.6 | defaults | 4 | 1500 (1400..1600) | 3000 | defaults | 2.00x |"
            ),
            "{doc}"
        );
        assert!(
            doc.contains("= 2.00x (graphile-worker defaults) | met |"),
            "{doc}"
        );
    }

    #[test]
    fn the_target_is_judged_against_the_best_profile_of_the_peer() {
        let doc = report(concat!(
            r#"{"engine":"postgres","metric":"throughput","feed":"backlog","workers":16,"median_jobs_per_s":8000,"min":7900,"max":8100}"#,
            "\n",
            r#"{"peer":"graphile-worker","version":"0.17.3","profile":"defaults","metric":"throughput","workers":16,"median_jobs_per_s":4000,"min":3900,"max":4100}"#,
            "\n",
            r#"{"peer":"graphile-worker","version":"0.17.3","profile":"batched","metric":"throughput","workers":16,"median_jobs_per_s":16000,"min":15000,"max":17000}"#,
            "\n",
        ));
        assert!(
            doc.contains("8000 (keel defaults) vs 16000 jobs/s = 0.50x (graphile-worker batched); 2.00x vs defaults | missed by 67%: the peer's local queue"),
            "{doc}"
        );
    }

    /// When keel's best profile deletes completed rows (as the peers do), the
    /// verdict also gives the ratio of its best profile that keeps them.
    #[test]
    fn a_deleting_best_is_shown_beside_keels_default_of_keeping_rows() {
        let doc = report(concat!(
            r#"{"engine":"postgres","metric":"throughput","feed":"backlog","profile":"claim-ahead 64","workers":16,"median_jobs_per_s":6000,"min":5900,"max":6100}"#,
            "\n",
            r#"{"engine":"postgres","metric":"throughput","feed":"backlog","profile":"claim-ahead 64, delete completed","workers":16,"median_jobs_per_s":8000,"min":7900,"max":8100}"#,
            "\n",
            r#"{"peer":"graphile-worker","version":"0.17.3","profile":"deep","metric":"throughput","workers":16,"median_jobs_per_s":5000,"min":4900,"max":5100}"#,
            "\n",
        ));
        assert!(
            doc.contains("8000 (keel claim-ahead 64, delete completed) vs 5000 jobs/s = 1.60x (graphile-worker deep); keel keeping completed rows (its default): 6000 jobs/s = 1.20x | met"),
            "{doc}"
        );
    }

    /// Each table says how many jobs its rows' runs drained.
    #[test]
    fn the_tables_say_how_many_jobs_each_run_drained() {
        let doc = report(concat!(
            r#"{"engine":"postgres","metric":"throughput","feed":"backlog","profile":"defaults","workers":4,"jobs":10000,"median_jobs_per_s":3000,"min":2900,"max":3100}"#,
            "\n",
            r#"{"engine":"postgres","metric":"throughput","feed":"backlog","profile":"claim-ahead 64","workers":4,"jobs":50000,"median_jobs_per_s":9000,"min":8800,"max":9100}"#,
            "\n",
            r#"{"peer":"graphile-worker","version":"0.17.3","profile":"defaults","metric":"throughput","workers":4,"jobs":10000,"median_jobs_per_s":2000,"min":1900,"max":2100}"#,
            "\n",
            r#"{"peer":"graphile-worker","version":"0.17.3","profile":"deep","metric":"throughput","workers":4,"jobs":50000,"median_jobs_per_s":5000,"min":4900,"max":5100}"#,
            "\n",
        ));
        assert!(
            doc.contains("Jobs per run: 10000 (`backlog`); 50000 (`backlog, claim-ahead 64`)."),
            "{doc}"
        );
        assert!(
            doc.contains("Jobs per run: 10000 (`defaults`); 50000 (`deep`)."),
            "{doc}"
        );
    }

    /// Keel's side is its best backlog profile per worker count, named in the
    /// row and the verdict; the runtime table lists the profile as its own feed.
    #[test]
    fn keel_is_judged_by_its_best_profile_and_names_it() {
        let doc = report(concat!(
            r#"{"engine":"postgres","metric":"throughput","feed":"backlog","profile":"defaults","workers":4,"median_jobs_per_s":3000,"min":2900,"max":3100}"#,
            "\n",
            r#"{"engine":"postgres","metric":"throughput","feed":"backlog","profile":"claim-ahead 8","workers":4,"median_jobs_per_s":9000,"min":8800,"max":9100}"#,
            "\n",
            r#"{"peer":"graphile-worker","version":"0.17.3","profile":"batched","metric":"throughput","workers":4,"median_jobs_per_s":5000,"min":4900,"max":5100}"#,
            "\n",
        ));
        assert!(
            doc.contains("| graphile-worker 0.17.3 | batched | 4 | 5000 (4900..5100) | 9000 | claim-ahead 8 | 1.80x |"),
            "{doc}"
        );
        assert!(
            doc.contains(
                "9000 (keel claim-ahead 8) vs 5000 jobs/s = 1.80x (graphile-worker batched) | met"
            ),
            "{doc}"
        );
        assert!(
            doc.contains("| postgres | backlog, claim-ahead 8 | – | 9000 (8800..9100) |"),
            "{doc}"
        );
    }

    #[test]
    fn a_line_that_is_not_json_is_named() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("bad.jsonl");
        std::fs::write(&path, "{}\nnope\n").expect("write");
        let err = run(&Args {
            machine: None,
            files: vec![path],
        })
        .expect_err("bad line");
        assert!(err.contains("bad.jsonl:2: not JSON"), "{err}");
    }
}
