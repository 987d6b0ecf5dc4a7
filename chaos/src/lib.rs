//! Keel's chaos harness: real worker processes on a real database (PostgreSQL
//! or one SQLite file) under real faults, judged by the simulator's checkers.
//!
//! The simulator runs keel on simulated hosts and a simulated network; this
//! crate runs it as real processes on loopback, between which faults are
//! injected for real:
//!
//! * [`proxy`]: a TCP fault proxy between each process and PostgreSQL, which
//!   partitions, delays, resets connections, and forwards a request while
//!   dropping its reply (an ambiguous commit).
//! * [`plan`]: every fault of a run drawn from a seed (proxy faults, SIGKILL,
//!   SIGSTOP past a lease, SIGTERM with a deadline, clock jumps, failing start
//!   hooks), printed at the start and read back to repeat it; a process's
//!   wall clock under it is a [`plan::PlannedClock`] through keel's `Clock` seam.
//! * [`journal`]: each process appends the simulator's own history records to
//!   a file of its own, surviving SIGKILL up to its last whole line; merged,
//!   they are one history the simulator's checkers judge unchanged.
//!
//! Runs are not deterministic: a plan drawn from a seed repeats the same
//! faults at the same offsets, not the same interleaving.

pub mod audit;
pub mod journal;
pub mod pg;
pub mod plan;
pub mod process;
pub mod proxy;
pub mod run;
