//! `attempts_within_budget`: a failed job is retried until its attempts run
//! out, then discarded (`Outcome`, `EnqueueRequest::max_attempts`); a snooze
//! or a shutdown's give-back does not spend one. Each claim records the
//! attempt it makes and the job's budget as it stands then (a snooze adds
//! one), so a `ClaimApplied` with `attempt > max_attempts` means the last
//! attempt's failure was not the end of the job.
//!
//! Storage writes whatever outcome the worker or rescuer asks for, so it
//! takes a retry of a spent job without complaint.

use keel::storage::JobId;

use super::{CheckCtx, Checker, Violation};
use crate::history::{DbEvent, Ev, Record};

/// See the [module docs](self).
pub struct AttemptsWithinBudget;

impl Checker for AttemptsWithinBudget {
    fn name(&self) -> &'static str {
        "attempts_within_budget"
    }

    fn check(&self, history: &[Record], _ctx: &CheckCtx) -> Vec<Violation> {
        history
            .iter()
            .filter_map(|r| match &r.ev {
                Ev::Db(DbEvent::ClaimApplied {
                    job,
                    attempt,
                    max_attempts,
                    ..
                }) if attempt > max_attempts => Some(Violation {
                    invariant: "attempts_within_budget",
                    at_ms: r.at_ms,
                    message: format!(
                        "{job} was claimed for attempt {attempt} of a budget of {max_attempts}"
                    ),
                    witnesses: last_end(history, r, *job)
                        .into_iter()
                        .chain([r.clone()])
                        .collect(),
                }),
                _ => None,
            })
            .collect()
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
    use crate::checkers::test_support::{ctx, H};
    use keel::storage::JobState;

    fn claim(attempt: u32, max_attempts: u32) -> DbEvent {
        DbEvent::ClaimApplied {
            job: JobId(1),
            attempt,
            owner: "n1#a/default/0".into(),
            max_attempts,
            heartbeat_ms: 0,
        }
    }
    fn retried(attempt: u32) -> DbEvent {
        DbEvent::FinalizeApplied {
            job: JobId(1),
            attempt,
            state: JobState::Retryable,
        }
    }

    #[test]
    fn claims_within_the_budget_and_a_snoozed_one_pass() {
        let h = H::new()
            .db(0, claim(1, 2))
            .db(100, retried(1))
            .db(1_200, claim(2, 2))
            .db(
                1_300,
                DbEvent::FinalizeApplied {
                    job: JobId(1),
                    attempt: 2,
                    state: JobState::Scheduled,
                },
            )
            .db(1_400, claim(3, 3));
        assert!(AttemptsWithinBudget.check(&h.0, &ctx(10_000)).is_empty());
    }

    #[test]
    fn fires_when_a_spent_job_is_claimed_again() {
        let h = H::new()
            .db(0, claim(1, 2))
            .db(100, retried(1))
            .db(1_200, claim(2, 2))
            .db(1_300, retried(2))
            .db(3_400, claim(3, 2));
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
}
