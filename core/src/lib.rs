//! Keel: a job and task-supervision runtime that is built to be simulated.
//!
//! # Code map
//!
//! * Seams, the only doors to the outside world: [`clock`] (time), [`net`] (byte
//!   streams), [`storage`] (everything durable; [`storage::MemStorage`] is the
//!   reference model). Nothing else in this crate reads the OS clock or a global
//!   RNG, spawns a thread, or opens a socket.
//! * [`shutdown`]: [`shutdown::ShutdownToken`] and [`shutdown::TaskRegistry`], named
//!   tracked tasks joined with one deadline.
//! * [`watcher`]: the [`watcher::Watcher`], which runs named periodic loops, stops
//!   them all when the first one ends, and returns the first error or panic.
//! * [`leadership`]: the [`leadership::Elector`], a lease with strictly increasing
//!   terms and a trust window.
//! * [`maintenance`]: the [`maintenance::Maintainer`], which starts the leader's
//!   services for each term with retries, and the services themselves.
//! * [`events`]: every state change as data, for `tracing` and for the simulator's
//!   history.
//! * [`identity`]: holder ids per process incarnation (`node#incarnation`), so
//!   two processes under one node name never share a lease or a claim.
//! * [`backoff`]: exponential backoff with seeded jitter.
//! * [`coverage`]: the [`sometimes!`] markers of rare states and, with the
//!   `coverage` feature, their per-thread hit counts for the simulator.
//! * `planted` (feature `planted-bugs` only): known bugs, switchable, so the
//!   simulator can prove it finds them.

#![warn(missing_docs)]

/// `is_planted!(set, Bug)` is `set.contains(Bug::Bug)` with the `planted-bugs`
/// feature and `false` without it, so a user's build compiles the bug paths out.
macro_rules! is_planted {
    ($set:expr, $bug:ident) => {{
        #[cfg(feature = "planted-bugs")]
        let on = $set.contains($crate::planted::Bug::$bug);
        #[cfg(not(feature = "planted-bugs"))]
        let on = false;
        on
    }};
}
pub(crate) use is_planted;

pub mod admin;
pub mod backoff;
pub mod clock;
pub mod coverage;
pub mod events;
pub mod identity;
pub mod jobs;
pub mod leadership;
pub mod maintenance;
pub mod metrics;
pub mod net;
#[cfg(feature = "planted-bugs")]
pub mod planted;
pub mod shutdown;
pub mod storage;
#[cfg(test)]
mod test_support;
pub mod watcher;
