//! The Keel simulator: keel's real runtime on many simulated nodes, under faults
//! drawn from one seed, with every invariant checked over the recorded history.
//!
//! # Code map
//!
//! The modules are grouped by what a reader looks for:
//!
//! * [`world`]: the simulated world. [`world::node`] is one node's software,
//!   keel's runtime wired to the simulated seams ([`world::clock`],
//!   [`world::net`], [`world::pause`]); [`world::db`] is the database host
//!   serving storage over the simulated network; [`world::workload`] is the
//!   jobs a run enqueues and the handler that runs them.
//! * [`plan`]: what a seed decides before the run. [`plan::faults`] draws the
//!   fault plan, [`plan::shape`] what a swarm seed runs, and [`plan::script`]
//!   writes a run's faults as plain text (`replay --script`).
//! * [`run`]: running and judging one seed. [`run::runner`] builds the seeded
//!   turmoil simulation and checks it ([`run::runner::run_checked`] runs a seed
//!   twice and compares trace hashes); [`run::history`] is the recorded
//!   events; [`run::checkers`] holds one invariant each; [`run::coverage`] and
//!   [`run::summary`] count what a run reached and did.
//! * [`tools`]: what is built on runs. Sweeps on threads ([`tools::pool`],
//!   [`tools::seeds`]) and over machines ([`tools::shard`],
//!   [`tools::results`]), replay files ([`tools::corpus`]), shrinking
//!   ([`tools::shrink`]), the coverage-guided search ([`tools::hunt`]) and the
//!   HTML page of a run ([`tools::explain`]).
//! * [`user`]: simulating your own handlers: [`Simulation`] runs them in place
//!   of the built-in workload under a scenario's faults and checks your
//!   invariants ([`Setup`]) next to the built-in ones. Its essentials are
//!   re-exported here.
//! * `src/bin/sim.rs`: the `sim` command line (`sweep`, `hunt`, `replay`,
//!   `shrink`, `explain`, `merge`); `src/bin/bench-sim.rs`: the figures of
//!   `ci/bench-sim`.

#![warn(missing_docs)]

// Without tokio_unstable, turmoil cannot seed tokio's per-host RNG (the branch order of select)
// and panics in spawned tasks are swallowed: the simulator would silently stop
// being deterministic. The workspace's .cargo/config.toml sets it; an explicit
// RUSTFLAGS replaces that list and must carry it too.
#[cfg(not(tokio_unstable))]
compile_error!(
    "sim must be built with RUSTFLAGS=\"--cfg tokio_unstable\" (see .cargo/config.toml)"
);

pub mod plan;
pub mod run;
pub mod tools;
pub mod user;
pub mod world;

pub use run::checkers::{CheckCtx, Checker, Violation};
pub use run::history::{DbEvent, Ev, HarnessEvent, Record};
pub use run::runner::{RunResult, StorageKind};
pub use scenarios;
pub use user::{Setup, Simulation, SimulationError, Sweep};
