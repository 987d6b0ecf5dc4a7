//! Criterion benchmarks of the storage hot path every job takes: enqueue, claim,
//! finalize, on the model (`MemStorage`) and on the SQLite engine (in memory, so
//! the figure is the SQL and the rules, not the disk). `cargo bench -p keel-bench`.
//!
//! The engines answer synchronously, so each call is driven with `poll_ready`
//! rather than an async runtime: what is timed is the engine itself.

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use keel::storage::{
    poll_ready, Claim, EnqueueRequest, Finalize, MemStorage, SqliteEngine, Storage,
};
use serde_json::json;

const QUEUE: &str = "bench";
const OWNER: &str = "node/bench/0";

fn engines() -> Vec<(&'static str, Arc<dyn Storage>)> {
    let sqlite = SqliteEngine::in_memory().expect("in-memory SQLite opens");
    vec![
        ("mem", Arc::new(MemStorage::new())),
        ("sqlite", Arc::new(sqlite)),
    ]
}

fn enqueue(store: &dyn Storage) {
    let req = EnqueueRequest::new("noop", json!({"i": 1})).queue(QUEUE);
    poll_ready(store.enqueue(req))
        .expect("engine answers at once")
        .expect("enqueue");
}

fn claim(store: &dyn Storage) -> Claim {
    let jobs = poll_ready(store.claim(QUEUE, OWNER, 1))
        .expect("engine answers at once")
        .expect("claim");
    let job = jobs.first().expect("a job to claim");
    Claim {
        job: job.id,
        attempt: job.attempt,
    }
}

fn hot_paths(c: &mut Criterion) {
    for (name, store) in engines() {
        let store = store.as_ref();
        c.bench_function(&format!("{name}/enqueue"), |b| b.iter(|| enqueue(store)));
        c.bench_function(&format!("{name}/claim"), |b| {
            b.iter_batched(|| enqueue(store), |()| claim(store), BatchSize::SmallInput)
        });
        c.bench_function(&format!("{name}/finalize"), |b| {
            b.iter_batched(
                || {
                    enqueue(store);
                    claim(store)
                },
                |claim| {
                    poll_ready(store.finalize(claim, OWNER, Finalize::Completed))
                        .expect("engine answers at once")
                        .expect("finalize")
                },
                BatchSize::SmallInput,
            )
        });
        c.bench_function(&format!("{name}/job_end_to_end"), |b| {
            b.iter(|| {
                enqueue(store);
                let claim = claim(store);
                poll_ready(store.finalize(claim, OWNER, Finalize::Completed))
                    .expect("engine answers at once")
                    .expect("finalize")
            })
        });
    }
}

criterion_group!(benches, hot_paths);
criterion_main!(benches);
