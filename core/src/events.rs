//! What the runtime reports about itself.
//!
//! Every state change of the elector and the maintainer is an [`Event`]. Events go
//! to `tracing` and to an [`Observer`]. Production needs no observer
//! ([`NoopObserver`]); the simulator records them, stamped with host and simulated
//! time, into the history its invariant checkers read. Events are plain data so a
//! history can be written as JSON lines and compared across runs.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::storage::{JobId, JobState, Term};

/// A state change worth recording. Terms are the terms as the node saw them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// The runtime started as a new process incarnation: everything it holds
    /// (leases, claims) is held as `holder` (`node#incarnation`).
    RuntimeStarted {
        /// The holder id of this incarnation.
        holder: String,
    },
    /// This node was granted `term`.
    TermWon {
        /// The term won.
        term: Term,
        /// How long from now the node trusts the grant (its trust window's end,
        /// on its monotonic clock): what it believes, beside what storage granted.
        trusted_for_ms: u64,
    },
    /// This node renewed `term`.
    TermRenewed {
        /// The term renewed.
        term: Term,
        /// How long from now the node trusts the term after this renewal.
        trusted_for_ms: u64,
    },
    /// This node stopped believing it leads `term`.
    TermLost {
        /// The term lost.
        term: Term,
        /// Why: `trust_window_expired`, `lease_moved_on`, `resigned`, `shutdown`.
        reason: String,
    },
    /// The maintainer asked the elector to resign `term`.
    ResignRequested {
        /// The term the request names.
        term: Term,
    },
    /// The elector sent a resign of `term` to storage.
    Resigned {
        /// The term resigned.
        term: Term,
        /// Whether storage accepted it (`false`: not current, or no answer).
        accepted: bool,
    },
    /// The maintainer tries to start services for `term`.
    MaintainerStartAttempt {
        /// The term the services would run for.
        term: Term,
        /// 1-based attempt number.
        attempt: u32,
    },
    /// A start attempt for `term` failed.
    MaintainerStartFailed {
        /// The term the attempt was for.
        term: Term,
        /// 1-based attempt number.
        attempt: u32,
        /// The error.
        error: String,
    },
    /// The services of `term` are running.
    MaintainerStarted {
        /// The term whose services run.
        term: Term,
    },
    /// Services were stopped: `affected` is the term whose services stopped,
    /// `asked_by` the term on whose behalf the stop was made.
    MaintainerStopped {
        /// The term that asked for the stop.
        asked_by: Term,
        /// The term whose services were stopped.
        affected: Term,
    },
    /// Every start attempt for `term` failed.
    MaintainerRetriesExhausted {
        /// The term given up on.
        term: Term,
    },
    /// A tracked task panicked. Reported when it happens, not only at shutdown.
    TaskPanicked {
        /// The task's name.
        task: String,
        /// The panic message.
        message: String,
    },
    /// A watcher loop starts a tick. Emitted before the tick's work, so the
    /// spacing between these events is the loop's real pacing (`no_tick_burst`).
    LoopTick {
        /// The loop's name.
        name: String,
        /// The loop's period, in milliseconds.
        period_ms: u64,
    },
    /// A watcher loop ended, as the watcher saw it while draining its loops.
    LoopEnded {
        /// The loop's name.
        name: String,
        /// `shutdown`, `error: <reason>`, `panic: <message>` or `cancelled`.
        outcome: String,
    },
    /// A leader's service acts for `term` (a maintenance loop's tick), having
    /// just checked that the term's trust window is open.
    LeaderActed {
        /// The service.
        service: String,
        /// The term it acts for.
        term: Term,
    },
    /// This node enqueued a job (storage answered).
    JobEnqueued {
        /// The job.
        job: JobId,
        /// `false` when a unique key matched an existing job.
        inserted: bool,
    },
    /// A worker on this node claimed attempt `attempt` of `job`.
    JobClaimed {
        /// The job.
        job: JobId,
        /// The attempt (the fencing token).
        attempt: u32,
    },
    /// A handler began running attempt `attempt` of `job`.
    HandlerStarted {
        /// The job.
        job: JobId,
        /// The attempt.
        attempt: u32,
    },
    /// The worker asked a running handler to stop (its token was triggered).
    HandlerCancelRequested {
        /// The job.
        job: JobId,
        /// The attempt.
        attempt: u32,
        /// `cancel_requested`, `claim_lost`, `claim_untrusted` or `shutdown`.
        reason: String,
    },
    /// A handler stopped running: it returned, panicked, or was dropped.
    HandlerEnded {
        /// The job.
        job: JobId,
        /// The attempt.
        attempt: u32,
        /// `completed`, `failed: ..`, `panicked: ..`, `snoozed`, `cancelled`,
        /// `discarded: ..` or `aborted` (dropped by the worker).
        outcome: String,
    },
    /// A worker's heartbeat for a claim came back `Lost`.
    ClaimLost {
        /// The job.
        job: JobId,
        /// The attempt whose claim is gone.
        attempt: u32,
    },
    /// The worker reported the attempt's end to storage.
    JobFinalized {
        /// The job.
        job: JobId,
        /// The attempt.
        attempt: u32,
        /// The state asked for.
        state: JobState,
        /// `applied`, `already_finalized`, `stale`, or `error: ..` (unknown).
        result: String,
    },
    /// The rescuer revoked a stale claim.
    JobRescued {
        /// The job.
        job: JobId,
        /// The revoked attempt.
        attempt: u32,
    },
    /// The periodic enqueuer fired slot `slot_ms` of schedule `name`.
    PeriodicFired {
        /// The schedule.
        name: String,
        /// The slot (wall-clock ms).
        slot_ms: i64,
        /// The leader's term that fired it.
        term: Term,
        /// The job inserted, or the one an earlier firing inserted.
        job: JobId,
        /// `true` when this call inserted it.
        inserted: bool,
    },
    /// Graceful shutdown of a runtime began.
    ShutdownBegan {
        /// The deadline, in milliseconds.
        deadline_ms: u64,
    },
    /// Graceful shutdown returned.
    ShutdownEnded {
        /// Tasks that outlived the deadline and were aborted, by name.
        aborted: Vec<String>,
        /// Jobs whose handlers were aborted and whose claims were released.
        released: Vec<JobId>,
    },
}

/// Receives every [`Event`] of a runtime.
pub trait Observer: Send + Sync + 'static {
    /// Record one event. Called synchronously at the moment of the change; must
    /// not block.
    fn record(&self, event: &Event);
}

/// An observer that keeps nothing; events still reach `tracing`.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoopObserver;

impl Observer for NoopObserver {
    fn record(&self, _event: &Event) {}
}

/// A shared observer handle.
pub type SharedObserver = Arc<dyn Observer>;

/// Log `event` through `tracing` and hand it to `observer`.
pub(crate) fn emit(observer: &dyn Observer, node: &str, event: Event) {
    tracing::info!(node = %node, event = ?event, "keel event");
    observer.record(&event);
}
