//! Keel's runtime benchmarks: the same no-op workload on any storage engine.
//!
//! * [`throughput`]: N jobs end to end (enqueue, claim, run a no-op handler,
//!   finalize) with W workers, the producer enqueuing one at a time or in
//!   batches while the workers run, or the whole backlog enqueued up front and
//!   then drained (the shape peers such as graphile-worker are measured in).
//! * [`latency`]: enqueue-to-start latency of single jobs on an idle queue, or
//!   behind a draining backlog.
//!
//! Every figure is wall time on this machine, so this crate reads the OS clock;
//! it never runs inside the simulator.

#![allow(clippy::disallowed_methods, clippy::disallowed_types)] // determinism-ok: benchmarks measure wall time and CPU time of real runs

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keel::clock::SystemClock;
use keel::events::{Event, Observer};
use keel::jobs::{JobCtx, JobsConfig, Outcome, Runtime, RuntimeHandle};
use keel::storage::{EnqueueRequest, JobState, SharedStorage};
use serde_json::{json, Value};
use tokio::sync::{mpsc, Notify};

/// The queue every benchmark job goes to.
pub const QUEUE: &str = "bench";
/// The no-op job kind.
pub const KIND: &str = "noop";
/// Jobs per `enqueue_batch` call in batched modes: large enough that the call's
/// round trip is spread thin, small enough to keep one transaction short.
pub const ENQUEUE_BATCH: usize = 500;
/// How long a benchmark waits for its jobs before it gives up and says so.
pub const PHASE_TIMEOUT: Duration = Duration::from_secs(300);

/// The wall clock, for measuring only.
pub fn wall_now() -> Instant {
    Instant::now() // determinism-ok: benchmark timing, never read by a simulation
}

/// How the producer feeds the queue in a throughput run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Feed {
    /// One `enqueue` call per job, while the workers run.
    Single,
    /// `enqueue_batch` of [`ENQUEUE_BATCH`], while the workers run.
    Batched,
    /// Every job enqueued (batched) before the workers start; only the drain is
    /// timed.
    Backlog,
}

impl Feed {
    /// Name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Feed::Single => "single",
            Feed::Batched => "batched",
            Feed::Backlog => "backlog",
        }
    }
}

/// Counts completed finalizes and wakes a waiter when the target is reached.
struct Finished {
    done: AtomicU64,
    target: AtomicU64,
    reached: Notify,
}

impl Observer for Finished {
    fn record(&self, event: &Event) {
        if let Event::JobFinalized {
            state: JobState::Completed,
            result,
            ..
        } = event
        {
            if result == "applied" {
                let done = self.done.fetch_add(1, Ordering::SeqCst) + 1;
                if done >= self.target.load(Ordering::SeqCst) {
                    self.reached.notify_one();
                }
            }
        }
    }
}

/// A benchmark failure: the runtime would not start or storage failed.
#[derive(Debug)]
pub struct BenchError(pub String);

impl std::fmt::Display for BenchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BenchError {}

fn err(what: &str) -> impl FnOnce(String) -> BenchError + '_ {
    move |e| BenchError(format!("{what}: {e}"))
}

/// A running runtime with the no-op handler; `starts` hears each job's index
/// (its payload's `i`) and the moment its handler began.
struct Bench {
    handle: RuntimeHandle,
    finished: Arc<Finished>,
}

fn start(
    storage: SharedStorage,
    workers: u32,
    claim_ahead: u32,
    starts: Option<mpsc::UnboundedSender<(u64, Instant)>>,
) -> Result<Bench, BenchError> {
    let finished = Arc::new(Finished {
        done: AtomicU64::new(0),
        target: AtomicU64::new(u64::MAX),
        reached: Notify::new(),
    });
    let handler = move |_ctx: JobCtx, payload: Value| {
        let starts = starts.clone();
        async move {
            if let (Some(tx), Some(i)) = (starts, payload.get("i").and_then(Value::as_u64)) {
                let _ = tx.send((i, wall_now()));
            }
            Outcome::Completed
        }
    };
    let cfg = JobsConfig {
        claim_ahead,
        ..JobsConfig::default()
    };
    let handle = Runtime::builder("bench", storage, Arc::new(SystemClock::new()))
        .jobs_config(cfg)
        .queue(QUEUE, workers)
        .handler(KIND, handler)
        .observer(finished.clone())
        .build()
        .and_then(|rt| rt.start())
        .map_err(|e| BenchError(format!("starting keel: {e}")))?;
    Ok(Bench { handle, finished })
}

fn job(i: u64) -> EnqueueRequest {
    EnqueueRequest::new(KIND, json!({ "i": i })).queue(QUEUE)
}

async fn enqueue_all(handle: &RuntimeHandle, jobs: u64, feed: Feed) -> Result<(), BenchError> {
    if feed == Feed::Single {
        for i in 0..jobs {
            handle
                .enqueue(job(i))
                .await
                .map_err(|e| err("enqueue")(e.to_string()))?;
        }
        return Ok(());
    }
    let mut i = 0;
    while i < jobs {
        let n = (jobs - i).min(ENQUEUE_BATCH as u64);
        let batch = (i..i + n).map(job).collect();
        handle
            .enqueue_batch(batch)
            .await
            .map_err(|e| err("enqueue_batch")(e.to_string()))?;
        i += n;
    }
    Ok(())
}

/// Enqueue `jobs` jobs up front, straight into storage, for [`Feed::Backlog`].
async fn preload(storage: SharedStorage, jobs: u64) -> Result<(), BenchError> {
    let mut i = 0;
    while i < jobs {
        let n = (jobs - i).min(ENQUEUE_BATCH as u64);
        storage
            .enqueue_batch((i..i + n).map(job).collect())
            .await
            .map_err(|e| err("enqueue_batch")(e.to_string()))?;
        i += n;
    }
    Ok(())
}

/// One throughput run's figures.
#[derive(Clone, Debug)]
pub struct Throughput {
    /// Jobs finished per wall second.
    pub jobs_per_s: f64,
    /// This process's CPU time per job, in microseconds.
    pub cpu_us_per_job: f64,
    /// The local PostgreSQL server's CPU time per job over the timed part, in
    /// microseconds (zero without one): a backlog's preload is not in it.
    pub db_cpu_us_per_job: f64,
    /// Wall time of the timed part.
    pub wall: Duration,
}

/// Run `jobs` no-op jobs through `workers` workers on `storage` (empty), fed as
/// `feed` says; time from the first enqueue (or, for a backlog, from the start of
/// the workers) to the last completed finalize.
///
/// Each worker claims `claim_ahead` jobs ahead of the one it runs
/// ([`JobsConfig::claim_ahead`]; 0 is keel's default).
pub async fn throughput(
    storage: SharedStorage,
    workers: u32,
    claim_ahead: u32,
    jobs: u64,
    feed: Feed,
) -> Result<Throughput, BenchError> {
    if feed == Feed::Backlog {
        preload(storage.clone(), jobs).await?;
    }
    let (cpu0, db0) = (cpu_time(), postgres_cpu_time());
    let began = wall_now();
    let bench = start(storage, workers, claim_ahead, None)?;
    bench.finished.target.store(jobs, Ordering::SeqCst);
    if feed != Feed::Backlog {
        enqueue_all(&bench.handle, jobs, feed).await?;
    }
    let all_done = async {
        while bench.finished.done.load(Ordering::SeqCst) < jobs {
            bench.finished.reached.notified().await;
        }
    };
    tokio::time::timeout(PHASE_TIMEOUT, all_done)
        .await
        .map_err(|_| {
            BenchError(format!(
                "only {} of {jobs} jobs finished within {PHASE_TIMEOUT:?}",
                bench.finished.done.load(Ordering::SeqCst)
            ))
        })?;
    let wall = began.elapsed();
    let cpu = cpu_time().saturating_sub(cpu0);
    let db = postgres_cpu_time().saturating_sub(db0);
    bench.handle.shutdown(Duration::from_secs(5)).await;
    Ok(Throughput {
        jobs_per_s: jobs as f64 / wall.as_secs_f64(),
        cpu_us_per_job: cpu.as_secs_f64() * 1e6 / jobs as f64,
        db_cpu_us_per_job: db.as_secs_f64() * 1e6 / jobs as f64,
        wall,
    })
}

/// Background traffic is enqueued in batches this often.
const LOAD_BATCH_INTERVAL: Duration = Duration::from_millis(10);

/// Enqueue-to-start latencies of `samples` single jobs, in milliseconds, sorted.
/// With `load_per_s` > 0, other jobs arrive at that rate (in batches every
/// 10 ms) while the samples are taken, so each sample competes
/// with live traffic for workers and storage.
pub async fn latency(
    storage: SharedStorage,
    workers: u32,
    samples: u64,
    load_per_s: u64,
) -> Result<Vec<f64>, BenchError> {
    const SAMPLE_BASE: u64 = 1 << 40;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let bench = start(storage.clone(), workers, 0, Some(tx))?;
    let load = (load_per_s > 0).then(|| tokio::spawn(background_load(storage, load_per_s)));
    let mut out = Vec::with_capacity(samples as usize);
    for s in 0..samples {
        let id = SAMPLE_BASE + s;
        let sent = wall_now();
        bench
            .handle
            .enqueue(job(id))
            .await
            .map_err(|e| err("enqueue")(e.to_string()))?;
        loop {
            let next = tokio::time::timeout(PHASE_TIMEOUT, rx.recv()).await;
            match next {
                Ok(Some((i, at))) if i == id => {
                    out.push(at.duration_since(sent).as_secs_f64() * 1e3);
                    break;
                }
                Ok(Some(_)) => {} // a background job started
                Ok(None) | Err(_) => return Err(BenchError(format!("sample {s} never started"))),
            }
        }
    }
    if let Some(load) = load {
        load.abort();
    }
    bench.handle.shutdown(Duration::from_secs(5)).await;
    out.sort_by(f64::total_cmp);
    Ok(out)
}

/// Enqueue `per_s` jobs a second straight into storage until aborted.
async fn background_load(storage: SharedStorage, per_s: u64) {
    let per_batch = (per_s * LOAD_BATCH_INTERVAL.as_millis() as u64 / 1000).max(1);
    let mut tick = tokio::time::interval(LOAD_BATCH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut i = 0;
    loop {
        tick.tick().await;
        let batch = (i..i + per_batch).map(job).collect();
        if storage.enqueue_batch(batch).await.is_err() {
            return;
        }
        i += per_batch;
    }
}

/// The `q` quantile (0..=1) of sorted `values`.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (q * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// Median, minimum and maximum of `values`.
pub fn spread(values: &[f64]) -> (f64, f64, f64) {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    (
        quantile(&v, 0.5),
        v.first().copied().unwrap_or(f64::NAN),
        v.last().copied().unwrap_or(f64::NAN),
    )
}

/// CPU time (user + system) this process has used, from `/proc/self/stat`
/// (zero where there is no procfs).
pub fn cpu_time() -> Duration {
    proc_cpu("self")
}

/// CPU time of every process of `user`'s PostgreSQL server on this machine
/// (zero when there is none or no procfs): the database's share of a run.
pub fn postgres_cpu_time() -> Duration {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Duration::ZERO;
    };
    dir.filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|pid| pid.bytes().all(|b| b.is_ascii_digit()))
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "postgres")
        })
        .map(|pid| proc_cpu(&pid))
        .sum()
}

/// Clock ticks per second of `/proc/*/stat` times: 100 on every Linux this runs on
/// (the kernel's USER_HZ, fixed for userspace).
const USER_HZ: u64 = 100;

fn proc_cpu(pid: &str) -> Duration {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return Duration::ZERO;
    };
    // Fields after the command name, which is in parentheses and may hold spaces.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return Duration::ZERO;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 here.
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|i| fields.get(*i).and_then(|f| f.parse::<u64>().ok()))
        .sum();
    Duration::from_millis(ticks * 1000 / USER_HZ)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_and_spread() {
        let v = [1.0, 2.0, 3.0, 4.0, 100.0];
        assert_eq!(quantile(&v, 0.5), 3.0);
        assert_eq!(quantile(&v, 0.99), 100.0);
        assert_eq!(spread(&[3.0, 1.0, 2.0]), (2.0, 1.0, 3.0));
        assert!(quantile(&[], 0.5).is_nan());
    }

    #[test]
    fn this_process_uses_cpu() {
        let (before, began) = (cpu_time(), wall_now());
        let mut x = 0u64;
        while cpu_time() == before && began.elapsed() < Duration::from_secs(5) {
            for i in 0..1_000_000u64 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
            }
        }
        assert!(cpu_time() > before, "procfs CPU time moves while we spin");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_feed_finishes_its_jobs_on_mem_storage() {
        for feed in [Feed::Single, Feed::Batched, Feed::Backlog] {
            let storage: SharedStorage = Arc::new(keel::storage::MemStorage::new());
            let t = throughput(storage, 4, 0, 300, feed).await.expect("runs");
            assert!(t.jobs_per_s > 0.0, "{feed:?}");
            let storage: SharedStorage = Arc::new(keel::storage::MemStorage::new());
            let t = throughput(storage, 4, 8, 300, feed).await.expect("runs");
            assert!(t.jobs_per_s > 0.0, "{feed:?} claiming ahead");
        }
        let storage: SharedStorage = Arc::new(keel::storage::MemStorage::new());
        let l = latency(storage, 2, 5, 20).await.expect("runs");
        assert_eq!(l.len(), 5);
    }
}
