//! `attempts_within_budget`: the invariant, its reasons and limits are on [`AttemptsWithinBudget`].

use std::collections::BTreeMap;

use keel::events::Event;
use keel::storage::{JobId, JobState};

use super::{CheckCtx, Checker, Violation};
use crate::run::history::{DbEvent, Ev, Record};

/// `attempts_within_budget`: a failed job is retried until its attempts run
/// out, then discarded (`Outcome`, `EnqueueRequest::max_attempts`); a snooze
/// or a shutdown's give-back does not spend one. Each claim records the
/// attempt it makes and the job's budget as it stands then (a snooze adds
/// one), so a `ClaimApplied` with `attempt > max_attempts` means the last
/// attempt's failure was not the end of the job; and a worker's discard of
/// an attempt that failed (or panicked) with attempts left in its claim's
/// budget means the job ended early. A handler's own `Outcome::Discard`
/// ends it at any attempt.
///
/// Storage writes whatever outcome the worker or rescuer asks for, so it
/// takes a retry of a spent job without complaint.
pub struct AttemptsWithinBudget;

const NAME: &str = "attempts_within_budget";

impl Checker for AttemptsWithinBudget {
    fn name(&self) -> &'static str {
        NAME
    }

    fn check(&self, history: &[Record], _ctx: &CheckCtx) -> Vec<Violation> {
        // Per attempt: the budget its claim recorded, and how its handler ended.
        let mut budget: BTreeMap<(JobId, u32), u32> = BTreeMap::new();
        let mut ended: BTreeMap<(JobId, u32), (&Record, &str)> = BTreeMap::new();
        let mut out = Vec::new();
        for r in history {
            match &r.ev {
                Ev::Db(DbEvent::ClaimApplied {
                    job,
                    attempt,
                    max_attempts,
                    ..
                }) => {
                    budget.insert((*job, *attempt), *max_attempts);
                    if attempt > max_attempts {
                        out.push(Violation {
                            invariant: NAME,
                            at_ms: r.at_ms,
                            message: format!(
                                "{job} was claimed for attempt {attempt} of a budget of {max_attempts}"
                            ),
                            witnesses: last_end(history, r, *job)
                                .into_iter()
                                .chain([r.clone()])
                                .collect(),
                        });
                    }
                }
                Ev::Node(Event::HandlerEnded {
                    job,
                    attempt,
                    outcome,
                }) => {
                    ended.insert((*job, *attempt), (r, outcome.as_str()));
                }
                Ev::Db(DbEvent::FinalizeApplied {
                    job,
                    attempt,
                    state: JobState::Discarded,
                }) => {
                    let Some(max) = budget.get(&(*job, *attempt)) else {
                        continue;
                    };
                    let Some((end, outcome)) = ended.get(&(*job, *attempt)) else {
                        continue;
                    };
                    // A handler's own `Outcome::Discard` ends the job at once.
                    let failed = outcome.starts_with("failed") || outcome.starts_with("panicked");
                    if attempt >= max || !failed {
                        continue;
                    }
                    out.push(Violation {
                        invariant: NAME,
                        at_ms: r.at_ms,
                        message: format!(
                            "{job} was discarded after failing attempt {attempt} of a budget of {max}: \
                             attempts were left"
                        ),
                        witnesses: vec![(*end).clone(), r.clone()],
                    });
                }
                _ => {}
            }
        }
        out
    }
}

/// How `job`'s previous attempt ended in storage, before `claim`.
fn last_end(history: &[Record], claim: &Record, job: JobId) -> Option<Record> {
    history[..claim.seq]
        .iter()
        .rev()
        .find(|r| {
            matches!(&r.ev,
                Ev::Db(DbEvent::FinalizeApplied { job: j, .. } | DbEvent::RescueApplied { job: j, .. })
                    if *j == job)
        })
        .cloned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::checkers::test_support::{ctx, job_claimed, job_ended, job_finalized, H};

    #[test]
    fn claims_within_the_budget_and_a_snoozed_one_pass() {
        let h = H::new()
            .db(0, job_claimed(1, 2, 0))
            .db(100, job_finalized(1, JobState::Retryable))
            .db(1_200, job_claimed(2, 2, 0))
            .db(1_300, job_finalized(2, JobState::Scheduled))
            .db(1_400, job_claimed(3, 3, 0));
        assert!(AttemptsWithinBudget.check(&h.0, &ctx(10_000)).is_empty());
    }

    #[test]
    fn fires_when_a_spent_job_is_claimed_again() {
        let h = H::new()
            .db(0, job_claimed(1, 2, 0))
            .db(100, job_finalized(1, JobState::Retryable))
            .db(1_200, job_claimed(2, 2, 0))
            .db(1_300, job_finalized(2, JobState::Retryable))
            .db(3_400, job_claimed(3, 2, 0));
        let v = AttemptsWithinBudget.check(&h.0, &ctx(10_000));
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(
            v[0].message
                .contains("claimed for attempt 3 of a budget of 2"),
            "{}",
            v[0].message
        );
        assert_eq!(
            v[0].witnesses.len(),
            2,
            "the retry that should have been a discard"
        );
    }

    #[test]
    fn a_discard_on_the_last_attempt_or_by_the_handler_passes() {
        let last = H::new()
            .db(0, job_claimed(2, 2, 0))
            .node(100, "n1", job_ended(2, "failed: boom"))
            .db(120, job_finalized(2, JobState::Discarded));
        assert!(AttemptsWithinBudget.check(&last.0, &ctx(10_000)).is_empty());
        let own = H::new()
            .db(0, job_claimed(1, 5, 0))
            .node(100, "n1", job_ended(1, "discarded: bad payload"))
            .db(120, job_finalized(1, JobState::Discarded));
        assert!(AttemptsWithinBudget.check(&own.0, &ctx(10_000)).is_empty());
    }

    #[test]
    fn fires_when_a_failure_with_attempts_left_is_discarded() {
        let h = H::new()
            .db(0, job_claimed(1, 3, 0))
            .node(100, "n1", job_ended(1, "panicked: boom"))
            .db(120, job_finalized(1, JobState::Discarded));
        let v = AttemptsWithinBudget.check(&h.0, &ctx(10_000));
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(
            v[0].message
                .contains("discarded after failing attempt 1 of a budget of 3"),
            "{}",
            v[0].message
        );
    }
}
