//! Job and leadership metrics through the [`metrics`] crate facade (feature
//! `metrics`): install any recorder (`metrics-exporter-prometheus`, an
//! OpenTelemetry bridge) and a running runtime reports to it. Without the
//! feature every function here is empty.
//!
//! Names follow OpenTelemetry's messaging conventions, as River's otelriver
//! does; exporters that forbid dots (Prometheus) turn them into `_`:
//!
//! | name | kind | labels |
//! | --- | --- | --- |
//! | `messaging.client.sent.messages` | counter: jobs enqueued | queue, kind |
//! | `messaging.client.consumed.messages` | counter: attempts started | queue, kind |
//! | `keel.jobs.finished` | counter: attempts ended | queue, kind, outcome (`completed`, `failed`, `snoozed`, `cancelled`, `discarded`) |
//! | `messaging.process.duration` | histogram: attempt time, seconds | queue, kind, outcome |
//! | `keel.leader` | gauge: 1 while this process leads the lease, else 0 | lease |
//! | `keel.queue.depth` | gauge: jobs per queue and state (set by whoever reads storage: `keel serve`) | queue, state |
//!
//! Labels: `messaging.destination.name` (the queue), `keel.job.kind`,
//! `keel.job.outcome`, `keel.lease`, `keel.job.state`.

use std::time::Duration;

use crate::storage::Finalize;

/// The queue label (OpenTelemetry's destination name).
pub const LABEL_QUEUE: &str = "messaging.destination.name";
/// The job-kind label.
pub const LABEL_KIND: &str = "keel.job.kind";
/// The attempt-outcome label.
pub const LABEL_OUTCOME: &str = "keel.job.outcome";
/// The job-state label of `keel.queue.depth`.
pub const LABEL_STATE: &str = "keel.job.state";
/// The lease label of `keel.leader`.
pub const LABEL_LEASE: &str = "keel.lease";
/// Jobs enqueued.
pub const JOBS_ENQUEUED: &str = "messaging.client.sent.messages";
/// Attempts started.
pub const JOBS_STARTED: &str = "messaging.client.consumed.messages";
/// Attempts ended, by outcome.
pub const JOBS_FINISHED: &str = "keel.jobs.finished";
/// Attempt durations.
pub const ATTEMPT_DURATION: &str = "messaging.process.duration";
/// Leadership.
pub const LEADER: &str = "keel.leader";
/// Queue depth per state.
pub const QUEUE_DEPTH: &str = "keel.queue.depth";

/// The outcome label of an attempt that ended with `fin`.
pub fn outcome_label(fin: &Finalize) -> &'static str {
    match fin {
        Finalize::Completed => "completed",
        Finalize::Retry { .. } => "failed",
        Finalize::Snooze { .. } => "snoozed",
        Finalize::Cancel { .. } => "cancelled",
        Finalize::Discard { .. } => "discarded",
    }
}

/// A job was enqueued (a new one, not a unique-key duplicate).
#[cfg(feature = "metrics")]
pub(crate) fn job_enqueued(queue: &str, kind: &str) {
    metrics::counter!(JOBS_ENQUEUED, LABEL_QUEUE => queue.to_owned(), LABEL_KIND => kind.to_owned())
        .increment(1);
}

/// An attempt's handler started.
pub(crate) fn attempt_started(queue: &str, kind: &str) {
    #[cfg(feature = "metrics")]
    metrics::counter!(JOBS_STARTED, LABEL_QUEUE => queue.to_owned(), LABEL_KIND => kind.to_owned())
        .increment(1);
    let _ = (queue, kind);
}

/// An attempt ended with `fin` after `took`.
pub(crate) fn attempt_ended(queue: &str, kind: &str, fin: &Finalize, took: Duration) {
    #[cfg(feature = "metrics")]
    {
        let labels = [
            (LABEL_QUEUE, queue.to_owned()),
            (LABEL_KIND, kind.to_owned()),
            (LABEL_OUTCOME, outcome_label(fin).to_owned()),
        ];
        metrics::counter!(JOBS_FINISHED, &labels).increment(1);
        metrics::histogram!(ATTEMPT_DURATION, &labels).record(took.as_secs_f64());
    }
    let _ = (queue, kind, fin, took);
}

/// This process leads `lease` (or stopped leading it).
pub(crate) fn leading(lease: &str, leads: bool) {
    #[cfg(feature = "metrics")]
    metrics::gauge!(LEADER, LABEL_LEASE => lease.to_owned()).set(if leads { 1.0 } else { 0.0 });
    let _ = (lease, leads);
}
