//! The tools built on runs: sweeping, hunting, shrinking, explaining.
//!
//! [`pool`] runs many seeds on worker threads; [`seeds`] picks which seeds a
//! test covers; [`shard`] and [`results`] split a long sweep over machines and
//! check the shards add up; [`corpus`] reads and writes replay files;
//! [`shrink`] cuts a failing run down to its smallest script; [`hunt`] is the
//! coverage-guided search; [`explain`] renders a run as one HTML page.

pub mod corpus;
pub mod explain;
pub mod hunt;
pub mod pool;
pub mod results;
pub mod seeds;
pub mod shard;
pub mod shrink;
