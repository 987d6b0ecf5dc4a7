//! I1 `no_double_execution`: no job runs on two workers at once, and no job runs
//! after it reached a terminal state.
//!
//! A **handler interval** for `(job, attempt)` on host `h` opens at
//! `HandlerStarted { job, attempt }` on `h` and closes at the first of: the
//! `HandlerEnded` of the same `(job, attempt)` on `h`; a `Crash` or `NodeBoot` of
//! `h`; a `ShutdownEnded` on `h` (shutdown drops the handlers that outlive its
//! deadline without a `HandlerEnded`; whether anything runs on after it is
//! `bounded_shutdown`'s concern); the end of the history. A second
//! `HandlerStarted` of the same `(job, attempt)` on `h` replaces the open one.
//! Two kinds of violation:
//!
//! * **overlap**: a `HandlerStarted { job, attempt: b }` (on any host) while an
//!   interval of the same job with a different attempt `a != b` is open. Witnesses:
//!   the two `HandlerStarted` records, the last `RescueApplied { job, attempt: a }`
//!   and the last `ClaimApplied { job, attempt: b }` before the second start, if
//!   present.
//! * **run after terminal**: a `HandlerStarted { job, .. }` after storage moved
//!   the job to a terminal state, that is after a `FinalizeApplied` with a terminal
//!   state or a `CancelApplied` of that job. Witnesses: that terminal record and
//!   the late start.
//!
//! Order is history order, the order the single simulation thread observed the
//! events, which is causal: no time bound is involved.

use std::collections::BTreeMap;

use keel::events::Event;
use keel::storage::JobId;

use super::{CheckCtx, Checker, Violation};
use crate::history::{DbEvent, Ev, HarnessEvent, Record};

/// See the [module docs](self).
pub struct NoDoubleExecution;

const NAME: &str = "no_double_execution";

/// An open handler interval: host, attempt, index of its `HandlerStarted`.
type Open<'a> = (&'a str, u32, usize);

impl Checker for NoDoubleExecution {
    fn name(&self) -> &'static str {
        NAME
    }

    fn check(&self, history: &[Record], _ctx: &CheckCtx) -> Vec<Violation> {
        let mut out = Vec::new();
        let mut open: BTreeMap<JobId, Vec<Open<'_>>> = BTreeMap::new();
        let mut terminal: BTreeMap<JobId, &Record> = BTreeMap::new();
        for r in history {
            let host = r.host.as_str();
            match &r.ev {
                Ev::Node(Event::HandlerStarted { job, attempt }) => {
                    if let Some(end) = terminal.get(job) {
                        out.push(after_terminal(end, r, *job));
                    }
                    let running = open.entry(*job).or_default();
                    for &(_, a, first) in running.iter().filter(|(_, a, _)| a != attempt) {
                        out.push(overlap(history, first, r, *job, (a, *attempt)));
                    }
                    running.retain(|(h, a, _)| !(*h == host && a == attempt));
                    running.push((host, *attempt, r.seq));
                }
                Ev::Node(Event::HandlerEnded { job, attempt, .. }) => {
                    if let Some(running) = open.get_mut(job) {
                        running.retain(|(h, a, _)| !(*h == host && a == attempt));
                    }
                }
                Ev::Harness(HarnessEvent::Crash | HarnessEvent::NodeBoot { .. })
                | Ev::Node(Event::ShutdownEnded { .. }) => {
                    for running in open.values_mut() {
                        running.retain(|(h, _, _)| *h != host);
                    }
                }
                Ev::Db(DbEvent::FinalizeApplied { job, state, .. }) if state.is_terminal() => {
                    terminal.entry(*job).or_insert(r);
                }
                Ev::Db(DbEvent::CancelApplied { job }) => {
                    terminal.entry(*job).or_insert(r);
                }
                _ => {}
            }
        }
        out
    }
}

/// A start of `job` after `end` made it terminal.
fn after_terminal(end: &Record, start: &Record, job: JobId) -> Violation {
    Violation {
        invariant: NAME,
        at_ms: start.at_ms,
        message: format!(
            "{job} started on {} after it reached a terminal state",
            start.host
        ),
        witnesses: vec![end.clone(), start.clone()],
    }
}

/// Attempt `b` of `job` started (`second`) while attempt `a`, started at index
/// `first`, still ran.
fn overlap(
    history: &[Record],
    first: usize,
    second: &Record,
    job: JobId,
    (a, b): (u32, u32),
) -> Violation {
    let before = &history[..second.seq];
    let last = |pred: &dyn Fn(&DbEvent) -> bool| {
        before
            .iter()
            .rev()
            .find(|r| matches!(&r.ev, Ev::Db(e) if pred(e)))
    };
    let rescue = last(
        &|e| matches!(e, DbEvent::RescueApplied { job: j, attempt } if *j == job && *attempt == a),
    );
    let claim = last(
        &|e| matches!(e, DbEvent::ClaimApplied { job: j, attempt, .. } if *j == job && *attempt == b),
    );
    let mut witnesses: Vec<Record> = [Some(&history[first]), rescue, claim, Some(second)]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
    witnesses.sort_by_key(|w| w.seq);
    Violation {
        invariant: NAME,
        at_ms: second.at_ms,
        message: format!(
            "{job} attempt {b} started on {} while attempt {a} still ran on {}",
            second.host, history[first].host
        ),
        witnesses,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkers::test_support::{ctx, H};
    use keel::storage::JobState;

    const J: JobId = JobId(1);

    fn started(attempt: u32) -> Event {
        Event::HandlerStarted { job: J, attempt }
    }
    fn ended(attempt: u32) -> Event {
        Event::HandlerEnded {
            job: J,
            attempt,
            outcome: "completed".into(),
        }
    }
    fn claimed(attempt: u32, owner: &str) -> DbEvent {
        DbEvent::ClaimApplied {
            job: J,
            attempt,
            owner: owner.into(),
        }
    }
    fn finalized(attempt: u32, state: JobState) -> DbEvent {
        DbEvent::FinalizeApplied {
            job: J,
            attempt,
            state,
        }
    }
    fn seqs(v: &Violation) -> Vec<usize> {
        v.witnesses.iter().map(|w| w.seq).collect()
    }

    #[test]
    fn a_retry_after_the_first_attempt_ended_or_its_host_crashed_passes() {
        let h = H::new()
            .db(1, claimed(1, "n1"))
            .node(2, "n1", started(1))
            .node(3, "n1", ended(1))
            .db(4, finalized(1, JobState::Retryable))
            .db(5, claimed(2, "n2"))
            .node(6, "n2", started(2))
            .harness(7, "n2", HarnessEvent::Crash)
            .db(8, DbEvent::RescueApplied { job: J, attempt: 2 })
            .db(9, claimed(3, "n1"))
            .node(10, "n1", started(3))
            .node(11, "n1", ended(3))
            .db(12, finalized(3, JobState::Completed));
        assert!(NoDoubleExecution.check(&h.0, &ctx(20)).is_empty());
    }

    #[test]
    fn a_handler_aborted_by_shutdown_and_given_back_does_not_overlap_its_retry() {
        let h = H::new()
            .db(1, claimed(1, "n1"))
            .node(2, "n1", started(1))
            .node(3, "n1", Event::ShutdownBegan { deadline_ms: 100 })
            .db(4, finalized(1, JobState::Scheduled))
            .node(
                5,
                "n1",
                Event::ShutdownEnded {
                    aborted: vec!["worker".into()],
                    released: vec![J],
                },
            )
            .db(6, claimed(2, "n2"))
            .node(7, "n2", started(2));
        assert!(NoDoubleExecution.check(&h.0, &ctx(20)).is_empty());
    }

    #[test]
    fn fires_when_a_rescued_attempt_still_runs_as_the_next_one_starts() {
        let h = H::new()
            .db(1, claimed(1, "n1"))
            .node(2, "n1", started(1))
            .harness(3, "n1", HarnessEvent::Partition { peer: "db".into() })
            .db(4, DbEvent::RescueApplied { job: J, attempt: 1 })
            .db(5, claimed(2, "n2"))
            .node(6, "n2", started(2))
            .node(7, "n1", ended(1));
        let v = NoDoubleExecution.check(&h.0, &ctx(20));
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(
            v[0].message
                .contains("job-1 attempt 2 started on n2 while attempt 1 still ran on n1"),
            "{}",
            v[0]
        );
        assert_eq!(seqs(&v[0]), vec![1, 3, 4, 5]);
    }

    #[test]
    fn fires_when_a_handler_starts_after_its_job_was_finalized_or_cancelled() {
        let h = H::new()
            .db(1, claimed(1, "n1"))
            .node(2, "n1", started(1))
            .node(3, "n1", ended(1))
            .db(4, finalized(1, JobState::Completed))
            .node(5, "n2", started(1))
            .db(6, DbEvent::CancelApplied { job: JobId(2) })
            .node(
                7,
                "n1",
                Event::HandlerStarted {
                    job: JobId(2),
                    attempt: 1,
                },
            );
        let v = NoDoubleExecution.check(&h.0, &ctx(20));
        assert_eq!(v.len(), 2, "{v:?}");
        assert!(v[0]
            .message
            .contains("job-1 started on n2 after it reached a terminal state"));
        assert_eq!(seqs(&v[0]), vec![3, 4]);
        assert_eq!(seqs(&v[1]), vec![5, 6]);
        assert!(v[1].message.contains("job-2 started on n1"));
    }
}
