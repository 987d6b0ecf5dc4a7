//! Simulating your own handler: a job that charges an order must charge it once.
//!
//! `cargo run -p sim --example idempotent_handler` runs the `charge` handler
//! under the `ambiguous_commits` scenario (storage replies lost, nodes
//! crashing): the naive version, which charges a ledger outside keel, breaks
//! "each order charged exactly once" within the first few seeds; the version
//! that charges through keel's fenced effect API holds over the same seeds.
//! `sim/tests/user_api.rs` asserts both, and docs/scenarios.md shows the code
//! between the `docs: begin/end idempotent_handler` markers (`sim/tests/docs.rs`
//! keeps the two equal).

use std::process::ExitCode;

// docs: begin idempotent_handler
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use keel::jobs::{Handler, JobCtx, Outcome};
use keel::storage::{EffectResult, EnqueueRequest};
use serde_json::{json, Value};
use sim::{DbEvent, Ev, Record, Setup, Simulation};

/// Orders each run enqueues, one `charge` job each.
pub const ORDERS: u32 = 60;

/// The payment provider, outside keel's storage: charges per order. One per run,
/// shared by every simulated node (they all run on one thread).
#[derive(Clone, Default)]
pub struct Ledger(Arc<Mutex<BTreeMap<u64, u32>>>);

impl Ledger {
    fn charge(&self, order: u64) {
        *self.orders().entry(order).or_default() += 1;
    }

    fn orders(&self) -> MutexGuard<'_, BTreeMap<u64, u32>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Charges the order, then sends the receipt. Delivery is at-least-once: when
/// an attempt never reports its end (its node crashed after the charge), keel's
/// rescuer hands the job to another attempt, which charges again.
pub struct NaiveCharge(pub Ledger);

#[async_trait::async_trait]
impl Handler for NaiveCharge {
    async fn run(&self, ctx: JobCtx, payload: Value) -> Outcome {
        let Some(order) = payload["order"].as_u64() else {
            return Outcome::Discard("no order".into());
        };
        self.0.charge(order);
        ctx.clock.sleep(Duration::from_secs(2)).await; // then the receipt, a slow call
        Outcome::Completed
    }
}

/// Charges through keel's fenced effect: storage applies `charge:<order>` once
/// per job, and only while this attempt holds the job, however often it runs.
pub struct FencedCharge;

#[async_trait::async_trait]
impl Handler for FencedCharge {
    async fn run(&self, ctx: JobCtx, payload: Value) -> Outcome {
        let Some(order) = payload["order"].as_u64() else {
            return Outcome::Discard("no order".into());
        };
        match ctx
            .effect(&format!("charge:{order}"), json!({ "cents": 1500 }))
            .await
        {
            Ok(EffectResult::Applied | EffectResult::AlreadyApplied) => {}
            Ok(EffectResult::NotOwner) => return Outcome::Failed("the job moved on".into()),
            // Maybe applied: the retry's effect answers AlreadyApplied if so.
            Err(e) => return Outcome::Failed(format!("charge unknown: {e}")),
        }
        ctx.clock.sleep(Duration::from_secs(2)).await; // then the receipt, a slow call
        Outcome::Completed
    }
}

/// Charges per order: the ledger's, plus the fenced charges storage applied
/// (the history records each write of an effect).
pub fn charges(history: &[Record], ledger: &Ledger) -> BTreeMap<u64, u32> {
    let mut charges = ledger.orders().clone();
    for r in history {
        if let Ev::Db(DbEvent::EffectApplied { key, .. }) = &r.ev {
            if let Some(order) = key.strip_prefix("charge:").and_then(|o| o.parse().ok()) {
                *charges.entry(order).or_default() += 1;
            }
        }
    }
    charges
}

/// `ORDERS` charge jobs under the `ambiguous_commits` scenario, run by the fenced
/// handler or the naive one, judged by "each order charged exactly once".
pub fn simulation(fenced: bool) -> Result<Simulation, sim::scenarios::ScenarioError> {
    let scenario = sim::scenarios::by_name("ambiguous_commits")?;
    Ok(Simulation::new(scenario, move || {
        let ledger = Ledger::default(); // fresh for every run
        let setup = if fenced {
            Setup::new().handler("charge", FencedCharge)
        } else {
            Setup::new().handler("charge", NaiveCharge(ledger.clone()))
        };
        setup
            // A unique key per order: a retried enqueue must not make a second job.
            .enqueue(ORDERS, |i| {
                EnqueueRequest::new("charge", json!({ "order": i }))
                    .unique_key(format!("order-{i}"))
                    .max_attempts(10)
            })
            .invariant("each_order_charged_once", move |history| {
                let charges = charges(history, &ledger);
                let wrong: Vec<String> = (0..u64::from(ORDERS))
                    .map(|o| (o, charges.get(&o).copied().unwrap_or(0)))
                    .filter(|(_, n)| *n != 1)
                    .map(|(o, n)| format!("order {o} charged {n} times"))
                    .collect();
                if wrong.is_empty() {
                    Ok(())
                } else {
                    Err(wrong.join(", "))
                }
            })
    }))
}
// docs: end idempotent_handler

/// Seeds each handler is swept over.
pub const SEEDS: u64 = 16;

fn main() -> ExitCode {
    for (name, fenced) in [("naive", false), ("fenced", true)] {
        if let Err(e) = sweep(name, fenced) {
            eprintln!("{name}: {e}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}

/// Sweep one handler over `0..SEEDS` and print what it found.
fn sweep(name: &str, fenced: bool) -> Result<(), Box<dyn std::error::Error>> {
    let sim = simulation(fenced)?;
    let sweep = sim.sweep(0..SEEDS)?;
    match &sweep.failure {
        Some(failure) => print!(
            "{name}: caught at seed {} ({} seeds run)\n{}",
            failure.spec.seed,
            sweep.seeds_run,
            sim.report(failure)
        ),
        None => println!("{name}: every invariant held over seeds 0..{SEEDS}"),
    }
    Ok(())
}
