//! What a seed decides before a run starts.
//!
//! [`faults`] draws the fault plan (partitions, crashes, clock jumps, storage
//! faults, pauses, ...) from a scenario's rates; [`shape`] draws what a swarm
//! seed runs (nodes, phase length, workload, fault profile); [`script`] writes
//! and reads a run's faults as plain text, so a run is a seed plus a script.

pub mod faults;
pub mod script;
pub mod shape;
