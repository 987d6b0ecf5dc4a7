//! The workload: which jobs a run enqueues and cancels, when, and how their
//! handlers behave. Drawn from the seed before the run, like the fault plan.
//!
//! A job's behaviour travels in its payload (`{"b": "...", "effect": bool}`), so
//! every node's [`SimHandler`] acts the same way for the same job and attempt:
//!
//! | `b` | the handler |
//! | --- | --- |
//! | `ok` | completes |
//! | `fail:N` | fails attempts 1..=N, then completes |
//! | `panic:1` | panics on attempt 1 (recorded first), then completes |
//! | `slow:MS` | works MS ms (stops early if asked), then completes |
//! | `stubborn:MS` | works MS ms and ignores every request to stop |
//! | `hang` | waits until cancelled; the workload cancels it |
//! | `panic_on_stop:MS` | works MS ms; panics if asked to stop first |

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use keel::events::Event;
use keel::jobs::{Handler, JobCtx, Outcome};
use keel::storage::{EnqueueRequest, JobId, JobStore};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use scenarios::Workload;
use serde_json::json;

use crate::run::history::{Ev, HarnessEvent, History, Sink};
use crate::world::clock::SimClock;
use crate::world::db::{remote_storage, DB_HOST, DB_PORT};
use crate::world::net::TurmoilNetwork;
use crate::world::node::{HandlerFactory, NodeJobs};

/// Salt that separates the workload's random stream from the fault plan's.
const WORKLOAD_SALT: u64 = 0x776f_726b_6c6f_6164;
/// The queue every workload job goes to.
pub const QUEUE: &str = "default";
/// The kind every workload job has.
pub const KIND: &str = "sim";
/// The host that enqueues and cancels.
pub const CLIENT_HOST: &str = "client";

/// One job to enqueue.
#[derive(Clone, Debug, PartialEq)]
pub struct PlannedJob {
    /// Which planned job this is (a unique job's repeat shares its key).
    pub key: usize,
    /// When, in simulated ms.
    pub at_ms: u64,
    /// What.
    pub req: EnqueueRequest,
}

/// Attempts of a job that fails every one (`Workload::exhaust_pct`).
const EXHAUST_ATTEMPTS: u32 = 3;

/// Everything the workload does in one run.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WorkloadPlan {
    /// Enqueues, by time.
    pub jobs: Vec<PlannedJob>,
    /// Cancels `(at_ms, key of the planned job)`, by time.
    pub cancels: Vec<(u64, usize)>,
}

fn behaviour(w: &Workload, rng: &mut ChaCha8Rng) -> String {
    let roll = rng.random_range(0..100);
    let mut edge = w.fail_pct;
    if roll < edge {
        return format!(
            "fail:{}",
            rng.random_range(1..=2u32)
                .min(w.max_attempts.saturating_sub(1).max(1))
        );
    }
    edge += w.panic_pct;
    if roll < edge {
        return "panic:1".into();
    }
    edge += w.slow_pct;
    if roll < edge {
        return format!("slow:{}", rng.random_range(w.slow_ms[0]..=w.slow_ms[1]));
    }
    edge += w.hang_pct;
    if roll < edge {
        return "hang".into();
    }
    edge += w.stubborn_pct;
    if roll < edge {
        return format!("stubborn:{}", rng.random_range(w.slow_ms[0]..=w.slow_ms[1]));
    }
    edge += w.panic_on_stop_pct;
    if roll < edge {
        return format!(
            "panic_on_stop:{}",
            rng.random_range(w.slow_ms[0]..=w.slow_ms[1])
        );
    }
    // Last, so a workload without it draws exactly what it always drew.
    edge += w.exhaust_pct;
    if roll < edge {
        return format!("fail:{EXHAUST_ATTEMPTS}");
    }
    "ok".into()
}

impl WorkloadPlan {
    /// The plan for `w` under `seed`.
    pub fn generate(w: &Workload, seed: u64) -> WorkloadPlan {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ WORKLOAD_SALT);
        let window_ms = w.enqueue_window_s * 1000;
        let mut plan = WorkloadPlan::default();
        for i in 0..w.jobs {
            let at_ms = rng.random_range(0..=window_ms);
            let b = behaviour(w, &mut rng);
            let effect = rng.random_range(0..100) < w.effect_pct;
            // A job that fails every attempt gets a budget its backoff spends
            // in seconds (1 s + 2 s), not minutes, so it ends inside the heal.
            let attempts = if b == format!("fail:{EXHAUST_ATTEMPTS}") && w.exhaust_pct > 0 {
                EXHAUST_ATTEMPTS
            } else {
                w.max_attempts
            };
            let mut req = EnqueueRequest::new(KIND, json!({ "b": b, "effect": effect, "i": i }))
                .queue(QUEUE)
                .max_attempts(attempts);
            if rng.random_range(0..100) < w.scheduled_pct {
                // Relative, as a client that cannot trust its own clock
                // schedules: due on storage's clock, however far off it is.
                let ahead_ms = rng.random_range(1_000..=10_000);
                req = req.scheduled_in(Duration::from_millis(ahead_ms));
            }
            let unique = rng.random_range(0..100) < w.unique_pct;
            if unique || b == "hang" {
                // A hanging job ends only through its planned cancel, which names
                // the job the enqueue returned; a unique key keeps an enqueue retried
                // after a lost reply from leaving an uncancelled twin behind.
                req.unique_key = Some(format!("u{i}"));
            }
            let key = i as usize;
            let hang = b == "hang";
            plan.jobs.push(PlannedJob {
                key,
                at_ms,
                req: req.clone(),
            });
            if unique {
                // The same unique job again, a little later: storage answers Duplicate.
                plan.jobs.push(PlannedJob {
                    key,
                    at_ms: at_ms + rng.random_range(0..2_000),
                    req,
                });
            }
            if hang || rng.random_range(0..100) < w.cancel_pct {
                // After its enqueue (a repeat is at most 2 s later).
                plan.cancels
                    .push((at_ms + rng.random_range(2_500..=15_000), key));
            }
        }
        plan.jobs.sort_by_key(|j| (j.at_ms, j.key));
        plan.cancels.sort_unstable();
        plan
    }
}

/// What every node works on for the workload `w`: the one queue, a
/// [`SimHandler`] per boot, and the scenario's periodic and cron jobs.
pub fn node_jobs(w: &Workload) -> NodeJobs {
    let handler: HandlerFactory = Arc::new(|host: &str, history: &History| {
        Arc::new(SimHandler {
            host: host.to_owned(),
            history: Arc::new(history.clone()),
        }) as Arc<dyn Handler>
    });
    let periodic_req = |schedule: &str| {
        EnqueueRequest::new(KIND, json!({ "b": "ok", "periodic": schedule })).queue(QUEUE)
    };
    NodeJobs {
        queues: vec![(QUEUE.to_owned(), w.workers)],
        handlers: vec![(KIND.to_owned(), handler)],
        periodic: w
            .periodic
            .iter()
            .map(|(schedule, every_s)| {
                let every = Duration::from_secs(*every_s);
                (schedule.clone(), every, periodic_req(schedule))
            })
            .collect(),
        cron: w
            .cron
            .iter()
            .map(|(schedule, expr)| (schedule.clone(), expr.clone(), periodic_req(schedule)))
            .collect(),
    }
}

/// The client host: enqueues and cancels as planned, through the database host.
pub async fn client_main(plan: WorkloadPlan, history: History) -> turmoil::Result {
    let clock = Arc::new(SimClock::new(0));
    let storage = remote_storage(
        Arc::new(TurmoilNetwork),
        format!("{DB_HOST}:{DB_PORT}"),
        clock.clone(),
        Duration::from_secs(1),
    );
    let elapsed_ms = || u64::try_from(turmoil::elapsed().as_millis()).unwrap_or(u64::MAX);
    drive_client(&plan, &storage, &history, elapsed_ms).await;
    std::future::pending::<()>().await;
    Ok(())
}

/// Carry out `plan` against `storage`: each enqueue and cancel at its time
/// (`elapsed_ms` reads ms since the run began), each enqueue recorded as the
/// client's `JobEnqueued`. The simulator's client host runs it, and so does a
/// chaos run's client process on a real database.
pub async fn drive_client(
    plan: &WorkloadPlan,
    storage: &(impl JobStore + ?Sized),
    sink: &dyn Sink,
    elapsed_ms: impl Fn() -> u64,
) {
    let mut ids: BTreeMap<usize, JobId> = BTreeMap::new();
    let mut cancels = plan.cancels.iter().peekable();
    for job in &plan.jobs {
        while let Some((at, target)) = cancels.next_if(|(at, _)| *at <= job.at_ms) {
            sleep_until(&elapsed_ms, *at).await;
            cancel(storage, &ids, *target).await;
        }
        sleep_until(&elapsed_ms, job.at_ms).await;
        // Retry until storage answers: an ambiguous enqueue may insert twice,
        // which at-least-once delivery must absorb anyway.
        let outcome = loop {
            match storage.enqueue(job.req.clone()).await {
                Ok(o) => break o,
                Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        };
        ids.insert(job.key, outcome.id());
        let inserted = matches!(outcome, keel::storage::EnqueueOutcome::Inserted(_));
        sink.push(
            CLIENT_HOST,
            Ev::Node(Event::JobEnqueued {
                job: outcome.id(),
                inserted,
            }),
        );
    }
    for (at, target) in cancels {
        sleep_until(&elapsed_ms, *at).await;
        cancel(storage, &ids, *target).await;
    }
}

async fn sleep_until(elapsed_ms: &impl Fn() -> u64, at_ms: u64) {
    let now_ms = elapsed_ms();
    if at_ms > now_ms {
        tokio::time::sleep(Duration::from_millis(at_ms - now_ms)).await;
    }
}

async fn cancel(storage: &(impl JobStore + ?Sized), ids: &BTreeMap<usize, JobId>, target: usize) {
    let Some(job) = ids.get(&target) else { return };
    for _ in 0..10 {
        if storage.request_cancel(*job).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The handler every node runs for workload jobs. See the [module docs](self).
pub struct SimHandler {
    /// This node.
    pub host: String,
    /// Where injected panics are announced before they happen.
    pub history: Arc<dyn Sink>,
}

#[async_trait]
impl Handler for SimHandler {
    async fn run(&self, ctx: JobCtx, payload: serde_json::Value) -> Outcome {
        if payload["effect"].as_bool() == Some(true) {
            // Errors are fine: the effect is fenced and retried by later attempts.
            let _ = ctx.effect("effect", json!(ctx.attempt)).await;
        }
        let b = payload["b"].as_str().unwrap_or("ok");
        let (verb, arg) = b.split_once(':').unwrap_or((b, "0"));
        let n: u64 = arg.parse().unwrap_or(0);
        match verb {
            "fail" if u64::from(ctx.attempt) <= n => {
                Outcome::Failed(format!("planned failure {}", ctx.attempt))
            }
            "panic" if u64::from(ctx.attempt) <= n => {
                let injected = HarnessEvent::HandlerPanicInjected {
                    job: ctx.job,
                    attempt: ctx.attempt,
                };
                self.history.push(&self.host, Ev::Harness(injected));
                panic!("injected panic in {}", ctx.job);
            }
            "slow" => {
                tokio::select! {
                    biased;
                    () = ctx.cancel.wait() => Outcome::Failed("stopped while slow".into()),
                    () = ctx.clock.sleep(Duration::from_millis(n)) => Outcome::Completed,
                }
            }
            // Ignores its cancel token: only a deadline's abort can stop it.
            "stubborn" => {
                ctx.clock.sleep(Duration::from_millis(n)).await;
                Outcome::Completed
            }
            "hang" => {
                ctx.cancel.wait().await;
                Outcome::Cancel("hung job cancelled".into())
            }
            // Works like `slow`, but answers a request to stop with a panic.
            "panic_on_stop" => {
                tokio::select! {
                    biased;
                    () = ctx.cancel.wait() => {
                        let injected = HarnessEvent::HandlerPanicInjected {
                            job: ctx.job,
                            attempt: ctx.attempt,
                        };
                        self.history.push(&self.host, Ev::Harness(injected));
                        panic!("injected panic on stop in {}", ctx.job);
                    }
                    () = ctx.clock.sleep(Duration::from_millis(n)) => Outcome::Completed,
                }
            }
            _ => Outcome::Completed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plan_is_seeded_and_every_hanging_job_is_cancelled() {
        let w = Workload {
            jobs: 50,
            enqueue_window_s: 30,
            workers: 2,
            max_attempts: 5,
            unique_pct: 20,
            scheduled_pct: 20,
            fail_pct: 20,
            panic_pct: 10,
            slow_pct: 10,
            slow_ms: [100, 200],
            hang_pct: 10,
            stubborn_pct: 5,
            panic_on_stop_pct: 0,
            exhaust_pct: 0,
            cancel_pct: 10,
            effect_pct: 50,
            periodic: vec![],
            cron: vec![],
            claim_ahead: 0,
        };
        let a = WorkloadPlan::generate(&w, 3);
        assert_eq!(a, WorkloadPlan::generate(&w, 3));
        assert!(a.jobs.len() >= 50);
        assert!(
            a.jobs.windows(2).all(|p| p[0].at_ms <= p[1].at_ms),
            "by time"
        );
        for job in a.jobs.iter().filter(|j| j.req.payload["b"] == "hang") {
            let cancel = a.cancels.iter().find(|(_, key)| *key == job.key);
            assert!(
                cancel.is_some_and(|(at, _)| *at > job.at_ms),
                "hang {} is cancelled after it exists",
                job.key
            );
        }
    }
}
