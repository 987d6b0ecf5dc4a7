//! The Keel simulator: keel's real runtime on many simulated nodes, under faults
//! drawn from one seed, with every invariant checked over the recorded history.
//!
//! # Code map
//!
//! * [`runner`]: builds a seeded turmoil simulation, drives the fault and heal
//!   phases, runs the checkers; [`runner::run_checked`] runs a seed twice and
//!   compares trace hashes.
//! * [`node`]: one node's software, keel's elector and maintainer wired to the
//!   simulated seams. [`db`]: the database host serving `MemStorage` over the
//!   simulated network, and keel's storage client for it.
//! * [`clock`], [`net`]: keel's seams on simulated time and turmoil TCP;
//!   [`pause`]: freezing a host's clocks for a process pause.
//! * [`faults`]: the fault plan, drawn from the seed before the run;
//!   [`shape`]: what a swarm seed runs (nodes, phase, workload, fault profile).
//! * [`history`]: the recorded events; [`checkers`]: one invariant each.
//! * [`corpus`]: replay files (`sweep --failures`, `replay --from`, the
//!   regression corpus in `scenarios/regressions/`).
//! * [`pool`]: runs seeds on worker threads, results in seed order.
//! * [`shard`]: one machine's share of a long sweep (`--shard K/N`, from the
//!   scheduler's environment); [`results`]: a sweep's JSON-lines result file
//!   and `sim merge`, which checks a sharded sweep's files add up.
//! * [`script`]: fault scripts, a run's faults as plain text (`replay --script`);
//!   [`shrink`]: from a failing run to the smallest script that still fails.
//! * [`hunt`]: coverage-guided search (`sim hunt`): mutants of the runs that
//!   reached rare states, kept when they reach new coverage.
//! * [`summary`]: a run as a few counted lines, for the snapshot tests.
//! * [`coverage`]: how many seeds reached each rare state a scenario declares in
//!   `reach` (`keel::sometimes!` markers), for `sim sweep` and `cargo test`.
//! * [`seeds`]: which seeds a test run covers (`SIM_SEED`, `SIM_SEEDS`).
//! * [`explain`]: one run as a self-contained HTML page (timeline, violation,
//!   event table) for `sim explain`.
//! * [`workload`]: the jobs a run enqueues and cancels, and the handler that
//!   runs them with seed-chosen behaviour.
//! * [`user`]: simulating your own handlers: [`Simulation`] runs them in place of
//!   the built-in workload under a scenario's faults and checks your invariants
//!   ([`Setup`]) next to the built-in ones. Its essentials are re-exported here.
//! * `src/bin/sim.rs`: the `sim` command line (`sweep`, `hunt`, `replay`, `shrink`, `explain`, `merge`).

#![warn(missing_docs)]

// Without tokio_unstable, turmoil cannot seed tokio's per-host RNG (the branch order of select)
// and panics in spawned tasks are swallowed: the simulator would silently stop
// being deterministic. The workspace's .cargo/config.toml sets it; an explicit
// RUSTFLAGS replaces that list and must carry it too.
#[cfg(not(tokio_unstable))]
compile_error!(
    "sim must be built with RUSTFLAGS=\"--cfg tokio_unstable\" (see .cargo/config.toml)"
);

pub mod checkers;
pub mod clock;
pub mod corpus;
pub mod coverage;
pub mod db;
pub mod explain;
pub mod faults;
pub mod history;
pub mod hunt;
pub mod net;
pub mod node;
pub mod pause;
pub mod pool;
pub mod results;
pub mod runner;
pub mod script;
pub mod seeds;
pub mod shape;
pub mod shard;
pub mod shrink;
pub mod summary;
pub mod user;
pub mod workload;

pub use checkers::{CheckCtx, Checker, Violation};
pub use history::{DbEvent, Ev, HarnessEvent, Record};
pub use runner::{RunResult, StorageKind};
pub use scenarios;
pub use user::{Setup, Simulation, SimulationError, Sweep};
