//! The job runtime: queues, workers, retries, cancel, and the leader's
//! maintenance services.
//!
//! * [`Runtime`]: build with handlers, queues and periodic jobs, then
//!   [`start`](Runtime::start); the [`RuntimeHandle`] enqueues, cancels, pauses
//!   and shuts down.
//! * Workers claim one job at a time (or a hand of them, see
//!   [`JobsConfig::claim_ahead`] and `hand.rs`), run its [`Handler`] under
//!   heartbeats, and finalize with the claim's attempt as fencing token (see
//!   `worker.rs`).
//! * On the elected leader, the maintainer runs the [`Rescuer`], [`Scheduler`],
//!   [`Cleaner`] and [`PeriodicEnqueuer`].

mod config;
mod hand;
mod handler;
mod maintenance;
mod runtime;
mod worker;

pub use config::{JobsConfig, JobsConfigError, QueueSpec, CLAIM_AHEAD_MAX, WORKERS_PER_QUEUE_MAX};
pub use handler::{decode_payload, Handler, HandlerRegistry, JobCtx, Outcome};
pub use maintenance::{
    Cleaner, PeriodicEnqueuer, PeriodicJob, Rescuer, Schedule, ScheduleParseError, Scheduler,
    CRON_CATCH_UP,
};
pub use runtime::{
    Runtime, RuntimeBuilder, RuntimeError, RuntimeHandle, ShutdownReport, MAINTENANCE_LEASE,
};

#[cfg(test)]
mod tests;
