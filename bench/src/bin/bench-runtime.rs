//! `bench-runtime`: Keel's job throughput, enqueue-to-start latency and CPU per
//! job on SQLite and PostgreSQL, as JSON lines on stdout (one figure each, with
//! its median and spread) for `ci/bench` to tabulate.
//!
//! ```sh
//! cargo run -p keel-bench --release --bin bench-runtime -- --engines sqlite
//! KEEL_PG_URL=postgres://postgres@127.0.0.1:5432/test \
//!   cargo run -p keel-bench --release --bin bench-runtime -- --engines sqlite,postgres
//! ```

#![allow(clippy::disallowed_methods)] // determinism-ok: a benchmark of real runs on the OS clock

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use keel::storage::sqlite::Durability;
use keel::storage::{PostgresOptions, PostgresStorage, SharedStorage};
use keel::storage::{SqliteOptions, SqliteStorage};
use keel_bench::{latency, quantile, spread, throughput, BenchError, Feed};
use serde_json::json;

#[derive(Parser)]
#[command(about = "Keel runtime benchmarks on SQLite and PostgreSQL")]
struct Args {
    /// Engines to measure: any of sqlite, sqlite-full, postgres (comma-separated).
    /// `sqlite` syncs at checkpoints (Durability::Normal); `sqlite-full` on every
    /// commit, the library's default.
    #[arg(long, value_delimiter = ',', default_value = "sqlite,postgres")]
    engines: Vec<String>,
    /// PostgreSQL URL; default: $KEEL_PG_URL. Without one, postgres is skipped.
    #[arg(long, env = "KEEL_PG_URL")]
    postgres: Option<String>,
    /// Jobs per throughput run.
    #[arg(long, default_value_t = 10_000)]
    jobs: u64,
    /// Jobs per run of the claim-ahead profiles (default: `--jobs`): they
    /// drain tens of thousands a second, so a short backlog would measure
    /// start-up and the last stragglers more than the steady state.
    #[arg(long)]
    claim_ahead_jobs: Option<u64>,
    /// Runs per throughput figure (median, min and max are reported).
    #[arg(long, default_value_t = 3)]
    repeats: u32,
    /// Worker counts to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16")]
    workers: Vec<u32>,
    /// Besides keel's defaults, measure the backlog with workers claiming this
    /// many jobs ahead (`JobsConfig::claim_ahead`; comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "8")]
    claim_ahead: Vec<u32>,
    /// Single jobs timed for latency.
    #[arg(long, default_value_t = 300)]
    latency_samples: u64,
    /// Other jobs per second while the loaded-queue latency samples are taken;
    /// default: half the engine's measured backlog throughput with 4 workers, so
    /// the queue is busy but keeps up (above capacity, latency only measures the
    /// growing queue).
    #[arg(long)]
    latency_load: Option<u64>,
    /// On PostgreSQL, also measure the backlog with workers claiming this many
    /// ahead and completions deleting their rows
    /// (`PostgresOptions::delete_completed`, as the peers do; comma-separated).
    #[arg(long, value_delimiter = ',')]
    delete_completed: Vec<u32>,
    /// Measure only the claim-ahead backlog profiles (no defaults, no latency):
    /// a quick A/B run while tuning the hot path.
    #[arg(long)]
    only_claim_ahead: bool,
}

/// A fresh, empty store per run, so no run sees another's jobs.
struct Engines {
    dir: tempfile::TempDir,
    pg_url: Option<String>,
    runs: u32,
}

impl Engines {
    async fn open(
        &mut self,
        engine: &str,
        delete_completed: bool,
    ) -> Result<(SharedStorage, Option<Arc<PostgresStorage>>), BenchError> {
        self.runs += 1;
        let fail = |e: keel::storage::OpenError| BenchError(format!("{engine}: {e}"));
        match engine {
            "sqlite" | "sqlite-full" => {
                let durability = if engine == "sqlite" {
                    Durability::Normal
                } else {
                    Durability::Full
                };
                let path = self.dir.path().join(format!("run-{}.db", self.runs));
                let store =
                    SqliteStorage::open_with(path, SqliteOptions::default().durability(durability))
                        .await
                        .map_err(fail)?;
                Ok((Arc::new(store), None))
            }
            "postgres" => {
                let url = self
                    .pg_url
                    .as_deref()
                    .ok_or_else(|| BenchError("postgres: no URL".into()))?;
                let schema = format!("keel_bench_{}_{}", std::process::id(), self.runs);
                let options = PostgresOptions::new()
                    .schema(schema)
                    .delete_completed(delete_completed);
                let store = PostgresStorage::connect_with(url, options)
                    .await
                    .map_err(fail)?;
                let store = Arc::new(store);
                Ok((store.clone(), Some(store)))
            }
            other => Err(BenchError(format!(
                "unknown engine {other:?}; use sqlite, sqlite-full or postgres"
            ))),
        }
    }
}

async fn drop_pg(pg: Option<Arc<PostgresStorage>>) {
    if let Some(pg) = pg {
        if let Err(e) = pg.drop_schema().await {
            eprintln!("warning: dropping bench schema: {e}");
        }
    }
}

fn emit(line: serde_json::Value) {
    println!("{line}");
}

async fn run(args: Args) -> Result<(), BenchError> {
    let mut engines = Engines {
        dir: tempfile::tempdir().map_err(|e| BenchError(format!("temp dir: {e}")))?,
        pg_url: args.postgres.clone(),
        runs: 0,
    };
    for engine in &args.engines {
        if engine == "postgres" && args.postgres.is_none() {
            eprintln!("postgres: skipped (no --postgres and no KEEL_PG_URL)");
            emit(json!({"engine": "postgres", "skipped": "no KEEL_PG_URL"}));
            continue;
        }
        let mut capacity_4 = 0.0f64;
        let mut profiles = if args.only_claim_ahead {
            Vec::new()
        } else {
            vec![
                (Feed::Single, 0, false),
                (Feed::Batched, 0, false),
                (Feed::Backlog, 0, false),
            ]
        };
        profiles.extend(args.claim_ahead.iter().map(|&n| (Feed::Backlog, n, false)));
        if engine == "postgres" {
            profiles.extend(
                args.delete_completed
                    .iter()
                    .map(|&n| (Feed::Backlog, n, true)),
            );
        }
        for (feed, claim_ahead, delete_completed) in profiles {
            let mut profile = if claim_ahead == 0 {
                "defaults".to_owned()
            } else {
                format!("claim-ahead {claim_ahead}")
            };
            if delete_completed {
                profile.push_str(", delete completed");
            }
            let jobs = match args.claim_ahead_jobs {
                Some(n) if claim_ahead > 0 => n,
                _ => args.jobs,
            };
            for &workers in &args.workers {
                let (mut rates, mut cpu, mut db_cpu) = (Vec::new(), Vec::new(), Vec::new());
                for _ in 0..args.repeats {
                    let (storage, pg) = engines.open(engine, delete_completed).await?;
                    let t = throughput(storage, workers, claim_ahead, jobs, feed).await;
                    drop_pg(pg).await;
                    let t = t?;
                    rates.push(t.jobs_per_s);
                    cpu.push(t.cpu_us_per_job);
                    db_cpu.push(t.db_cpu_us_per_job);
                }
                let (median, min, max) = spread(&rates);
                if feed == Feed::Backlog && workers == 4 && profile == "defaults" {
                    capacity_4 = median;
                }
                let (cpu_median, _, _) = spread(&cpu);
                let (db_median, _, _) = spread(&db_cpu);
                eprintln!(
                    "{engine} {} ({profile}) x{workers}: {median:.0} jobs/s ({min:.0}..{max:.0})",
                    feed.name()
                );
                emit(json!({
                    "engine": engine, "metric": "throughput", "feed": feed.name(),
                    "profile": profile, "claim_ahead": claim_ahead,
                    "delete_completed": delete_completed,
                    "workers": workers, "jobs": jobs, "median_jobs_per_s": median,
                    "min": min, "max": max, "runs": rates,
                    "cpu_us_per_job": cpu_median,
                    "db_cpu_us_per_job": if engine == "postgres" { Some(db_median) } else { None },
                }));
            }
        }
        if args.only_claim_ahead {
            continue;
        }
        let load = args
            .latency_load
            .unwrap_or((capacity_4 / 2.0) as u64)
            .max(1);
        for (queue, load) in [("idle", 0), ("loaded", load)] {
            let (storage, pg) = engines.open(engine, false).await?;
            let l = latency(storage, 4, args.latency_samples, load).await;
            drop_pg(pg).await;
            let l = l?;
            let (p50, p99) = (quantile(&l, 0.5), quantile(&l, 0.99));
            eprintln!("{engine} latency {queue}: p50 {p50:.2} ms, p99 {p99:.2} ms");
            emit(json!({
                "engine": engine, "metric": "latency", "queue": queue, "workers": 4,
                "load_jobs_per_s": load, "samples": l.len(), "p50_ms": p50, "p99_ms": p99,
                "max_ms": l.last().copied(),
            }));
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
