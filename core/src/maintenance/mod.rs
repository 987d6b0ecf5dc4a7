//! Maintenance: the services the leader runs, and the maintainer that starts them.
//!
//! # Design
//!
//! On winning term `T`, the [`Maintainer`] starts every [`Service`] for `T`. A
//! failed start (a service's start hook errors or times out, storage fails) is
//! retried with exponential backoff and jitter; when the attempts run out, the
//! maintainer resigns `T`, but only if this node still holds `T`, so another node
//! can try. Losing `T` cancels `T`'s start: no further attempt begins, and the
//! token of the attempt in flight is triggered. A start hook that ignores its token
//! runs on until it returns or the attempt times out; whatever it returns then can
//! only affect `T`.
//!
//! **Nothing done for term `T` can touch another term's services.** Source document
//! 002 shows the failure: a stale retry of an old term "resets" the shared
//! maintainer and stops the one a newer term started. Here that cannot be
//! expressed: a start attempt owns the services it starts until it hands them to
//! the maintainer's slot through a [`TermHandle`] bound to `T`, and that handle can
//! only install or stop services of `T`. An attempt for an old term that returns
//! late finds the slot expecting another term and stops only what it started.
//!
//! Services follow one contract: `start` returns once the service runs, spawning
//! its loops into the [`ServiceCtx`]'s task registry; stopping is the maintainer's
//! job (trigger the term's token, abort its tasks), so a service cannot get stop
//! wrong.

mod heartbeat;
mod maintainer;
mod service;

pub use heartbeat::MaintenanceHeartbeat;
pub use maintainer::{Maintainer, MaintainerConfig, MaintainerConfigError};
pub use service::{Service, ServiceCtx, ServiceError, TermHandle, TermServices};
