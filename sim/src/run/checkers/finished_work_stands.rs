//! `finished_work_stands`: the invariant, its reasons and limits are on [`FinishedWorkStands`].

use std::collections::BTreeMap;

use keel::events::Event;
use keel::storage::{JobId, JobState};

use super::{CheckCtx, Checker, Violation};
use crate::run::history::{DbEvent, Ev, Record};

/// `finished_work_stands`: work that completed is recorded as completed. When
/// a handler of `(job, a)` ended `completed` and storage then applies a finalize
/// of `(job, a)` with any other state, a cancel (or anything else) rewrote work
/// that happened: an operator who retries a "cancelled" job that in fact sent
/// its e-mail sends it twice (source document 003, M2).
pub struct FinishedWorkStands;

const NAME: &str = "finished_work_stands";

impl Checker for FinishedWorkStands {
    fn name(&self) -> &'static str {
        NAME
    }

    fn check(&self, history: &[Record], _ctx: &CheckCtx) -> Vec<Violation> {
        let mut completed: BTreeMap<(JobId, u32), &Record> = BTreeMap::new();
        let mut out = Vec::new();
        for r in history {
            match &r.ev {
                Ev::Node(Event::HandlerEnded {
                    job,
                    attempt,
                    outcome,
                }) if outcome == "completed" => {
                    completed.insert((*job, *attempt), r);
                }
                Ev::Db(DbEvent::FinalizeApplied {
                    job,
                    attempt,
                    state,
                }) if *state != JobState::Completed => {
                    if let Some(done) = completed.get(&(*job, *attempt)) {
                        out.push(Violation {
                            invariant: NAME,
                            at_ms: r.at_ms,
                            message: format!("{job} attempt {attempt} completed on {} but was recorded {state:?}", done.host),
                            witnesses: vec![(*done).clone(), r.clone()],
                        });
                    }
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

    #[test]
    fn completed_work_recorded_completed_passes_and_failed_work_may_be_cancelled() {
        let h = H::new()
            .node(1, "n1", job_ended(1, "completed"))
            .db(2, job_finalized(1, JobState::Completed));
        assert!(FinishedWorkStands.check(&h.0, &ctx(10)).is_empty());
        let h = H::new()
            .node(1, "n1", job_ended(1, "failed: x"))
            .db(2, job_finalized(1, JobState::Cancelled));
        assert!(FinishedWorkStands.check(&h.0, &ctx(10)).is_empty());
    }

    #[test]
    fn fires_when_completed_work_is_recorded_cancelled() {
        let h = H::new()
            .node(1, "n1", job_ended(1, "completed"))
            .db(2, job_finalized(1, JobState::Cancelled));
        let v = FinishedWorkStands.check(&h.0, &ctx(10));
        assert_eq!(v.len(), 1);
        assert!(v[0].message.contains("recorded Cancelled"));
    }
}
