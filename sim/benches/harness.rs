//! Criterion benchmarks of what the harness adds to every run: recording an event
//! into the history, hashing the trace, and each checker's pass over a recorded
//! swarm history. `cargo bench -p sim --bench harness`.

use criterion::{criterion_group, criterion_main, Criterion};
use keel::events::Event;
use keel::storage::Term;
use sim::run::checkers;
use sim::run::history::{trace_hash, Ev, History};
use sim::run::runner::{self, RunSpec};

/// One recorded swarm run: a realistic history for the checkers.
fn swarm_run() -> runner::RunResult {
    let spec = RunSpec {
        scenario: scenarios::by_name("swarm").expect("swarm is in the catalog"),
        seed: 3,
        plant: None,
        storage: Default::default(),
        script: None,
    };
    runner::run_once(&spec).expect("swarm seed 3 runs")
}

fn harness(c: &mut Criterion) {
    c.bench_function("history/push", |b| {
        let history = History::new();
        let mut at = 0;
        b.iter(|| {
            at += 1;
            history.push_at(
                at,
                "n1",
                Ev::Node(Event::TermWon {
                    term: Term(at),
                    trusted_for_ms: 4_000,
                }),
            );
        })
    });
    let run = swarm_run();
    let events = run.history.len();
    c.bench_function(&format!("history/trace_hash ({events} events)"), |b| {
        b.iter(|| trace_hash(&run.history))
    });
    let ctx = runner::check_ctx(
        &sim::world::node::Timing::standard(),
        &run.spec.scenario,
        run.simulated_ms(),
    );
    for checker in checkers::all() {
        c.bench_function(
            &format!("check/{} ({events} events)", checker.name()),
            |b| b.iter(|| checker.check(&run.history, &ctx)),
        );
    }
    c.bench_function(&format!("check/all of swarm ({events} events)"), |b| {
        b.iter(|| runner::check(&run.spec.scenario, &run.history, &ctx))
    });
}

criterion_group!(benches, harness);
criterion_main!(benches);
