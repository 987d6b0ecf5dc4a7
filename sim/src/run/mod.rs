//! Running one seed and judging it.
//!
//! [`runner`] builds the seeded turmoil simulation, drives the fault and heal
//! phases and runs the checkers over the recorded [`history`]; [`checkers`]
//! holds one invariant each; [`coverage`] counts the rare states a run reached
//! (`keel::sometimes!`); [`summary`] turns a run into a few counted lines for
//! the snapshot tests.

pub mod checkers;
pub mod coverage;
pub mod history;
pub mod runner;
pub mod summary;
