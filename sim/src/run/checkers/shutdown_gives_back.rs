//! `shutdown_gives_back`: the invariant, its reasons and limits are on [`ShutdownGivesBack`].

use std::collections::BTreeMap;

use keel::events::Event;
use keel::storage::{JobId, JobState};

use super::{CheckCtx, Checker, Violation};
use crate::run::history::{DbEvent, Ev, HarnessEvent, Record};

/// `shutdown_gives_back`: a handler stopped by a graceful shutdown gives its
/// job back without spending an attempt (`RuntimeHandle::shutdown`,
/// `worker.rs`). Once `ShutdownBegan` on a host, every attempt there that
/// ends without completing (stopped, failed, panicked or aborted at the
/// deadline) is finalized as a give-back, `scheduled` (or `cancelled`, when a
/// cancel was asked for it), never `retryable` or `discarded`: those spend the
/// attempt, and on a job's last attempt end it.
///
/// Storage writes the retry it is asked for; only the shutdown around it shows
/// the attempt should not have been spent.
pub struct ShutdownGivesBack;

const NAME: &str = "shutdown_gives_back";

impl Checker for ShutdownGivesBack {
    fn name(&self) -> &'static str {
        NAME
    }

    fn check(&self, history: &[Record], _ctx: &CheckCtx) -> Vec<Violation> {
        // Hosts shutting down, since when.
        let mut stopping: BTreeMap<&str, &Record> = BTreeMap::new();
        // Attempts that ended unfinished during a shutdown, and the end.
        let mut owed: BTreeMap<(JobId, u32), (&Record, &Record)> = BTreeMap::new();
        let mut out = Vec::new();
        for r in history {
            let host = r.host.as_str();
            match &r.ev {
                Ev::Node(Event::ShutdownBegan { .. }) => {
                    stopping.insert(host, r);
                }
                Ev::Node(Event::RuntimeStarted { .. })
                | Ev::Harness(HarnessEvent::Crash | HarnessEvent::NodeBoot { .. }) => {
                    stopping.remove(host);
                }
                Ev::Node(Event::HandlerEnded {
                    job,
                    attempt,
                    outcome,
                }) if outcome != "completed" => {
                    if let Some(began) = stopping.get(host) {
                        owed.insert((*job, *attempt), (began, r));
                    }
                }
                Ev::Db(DbEvent::FinalizeApplied {
                    job,
                    attempt,
                    state,
                }) => {
                    let Some((began, ended)) = owed.remove(&(*job, *attempt)) else {
                        continue;
                    };
                    if !matches!(state, JobState::Retryable | JobState::Discarded) {
                        continue;
                    }
                    out.push(Violation {
                        invariant: NAME,
                        at_ms: r.at_ms,
                        message: format!(
                            "{job} attempt {attempt}, stopped by {}'s shutdown, was finalized {state:?}: \
                             the attempt was spent",
                            began.host
                        ),
                        witnesses: vec![(*began).clone(), (*ended).clone(), r.clone()],
                    });
                }
                _ => {}
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::checkers::test_support::{ctx, job_ended, job_finalized, H};

    fn began() -> Event {
        Event::ShutdownBegan { deadline_ms: 1_000 }
    }

    #[test]
    fn a_given_back_or_completed_attempt_and_a_failure_before_the_shutdown_pass() {
        let h = H::new()
            .node(1_000, "n1", began())
            .node(1_500, "n1", job_ended(1, "failed: stopped while slow"))
            .db(1_520, job_finalized(1, JobState::Scheduled));
        assert!(ShutdownGivesBack.check(&h.0, &ctx(10_000)).is_empty());
        let before = H::new()
            .node(500, "n1", job_ended(1, "failed: boom"))
            .node(1_000, "n1", began())
            .db(1_020, job_finalized(1, JobState::Retryable));
        assert!(ShutdownGivesBack.check(&before.0, &ctx(10_000)).is_empty());
    }

    #[test]
    fn fires_when_a_stopped_attempt_is_spent() {
        let h = H::new()
            .node(1_000, "n1", began())
            .node(2_000, "n1", job_ended(1, "aborted"))
            .db(2_020, job_finalized(1, JobState::Retryable));
        let v = ShutdownGivesBack.check(&h.0, &ctx(10_000));
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(
            v[0].message
                .contains("job-1 attempt 1, stopped by n1's shutdown, was finalized Retryable"),
            "{}",
            v[0].message
        );
    }
}
