//! I6 `no_lost_jobs` (liveness): the invariant, its reasons and limits are on [`NoLostJobs`].

use keel::storage::JobId;

use super::{CheckCtx, Checker, Violation};
use crate::run::history::{DbEvent, Ev, HarnessEvent, Record};

/// I6 `no_lost_jobs` (liveness): once faults stop, every enqueued job reaches a
/// terminal state within a bounded heal window.
///
/// The runner records, at the end of the run, a `JobsUnfinished { jobs }` record
/// listing the jobs storage holds in a non-terminal state. When the heal phase
/// lasted at least `ctx.heal_converge_ms` (`end_at_ms - heal_at_ms`), a
/// `JobsUnfinished` record with a non-empty list is a violation. Its message
/// names up to 5 of the jobs; its witnesses are, for up to 3 of them, the record
/// that inserted the job (`JobInserted`, or `PeriodicInserted` for a periodic
/// job) and the last storage record concerning it, then the `JobsUnfinished`
/// record itself. A shorter heal phase proves nothing, so nothing is reported.
pub struct NoLostJobs;

const NAME: &str = "no_lost_jobs";
/// Jobs named in a violation's message.
const NAMED_MAX: usize = 5;
/// Jobs whose records are attached as witnesses.
const WITNESSED_MAX: usize = 3;
/// A job inserted this close to the end of the run (periodic jobs keep firing
/// while healing) has not had its bounded time to run yet: one idle poll plus
/// the drain allowance of the heal bound.
pub const FRESH_JOB_MS: u64 = crate::run::runner::JOBS_DRAIN_MS + 5_000;

impl Checker for NoLostJobs {
    fn name(&self) -> &'static str {
        NAME
    }

    fn property(&self) -> super::Property {
        super::Property::Liveness
    }

    fn check(&self, history: &[Record], ctx: &CheckCtx) -> Vec<Violation> {
        let healed_for = ctx.end_at_ms.saturating_sub(ctx.heal_at_ms);
        if healed_for < ctx.heal_converge_ms {
            return Vec::new();
        }
        history
            .iter()
            .filter_map(|r| match &r.ev {
                Ev::Harness(HarnessEvent::JobsUnfinished { jobs }) => {
                    let overdue = overdue(&history[..r.seq], jobs, r.at_ms);
                    (!overdue.is_empty()).then(|| violation(history, r, &overdue, healed_for))
                }
                _ => None,
            })
            .collect()
    }
}

/// The jobs of `jobs` inserted more than [`FRESH_JOB_MS`] before `end_ms`.
fn overdue(history: &[Record], jobs: &[JobId], end_ms: u64) -> Vec<JobId> {
    let inserted_at =
        |job: JobId| {
            history.iter().find_map(|r| match &r.ev {
                Ev::Db(
                    DbEvent::JobInserted { job: j } | DbEvent::PeriodicInserted { job: j, .. },
                ) if *j == job => Some(r.at_ms),
                _ => None,
            })
        };
    jobs.iter()
        .copied()
        .filter(|job| inserted_at(*job).is_none_or(|at| at + FRESH_JOB_MS <= end_ms))
        .collect()
}

fn violation(history: &[Record], at: &Record, jobs: &[JobId], healed_for: u64) -> Violation {
    let named: Vec<String> = jobs.iter().take(NAMED_MAX).map(JobId::to_string).collect();
    let more = jobs.len().saturating_sub(NAMED_MAX);
    let more = if more > 0 {
        format!(" and {more} more")
    } else {
        String::new()
    };
    let mut witnesses: Vec<Record> = jobs
        .iter()
        .take(WITNESSED_MAX)
        .flat_map(|job| job_witnesses(&history[..at.seq], *job))
        .collect();
    witnesses.sort_by_key(|w| w.seq);
    witnesses.dedup_by_key(|w| w.seq);
    witnesses.push(at.clone());
    Violation {
        invariant: NAME,
        at_ms: at.at_ms,
        message: format!(
            "{} job(s) unfinished {healed_for}ms after faults stopped: {}{more}",
            jobs.len(),
            named.join(", ")
        ),
        witnesses,
    }
}

/// The record that inserted `job` and the last storage record about it.
fn job_witnesses(history: &[Record], job: JobId) -> Vec<Record> {
    let about = |r: &&Record| matches!(&r.ev, Ev::Db(e) if e.job() == Some(job));
    let inserted = history.iter().filter(about).find(|r| {
        matches!(
            &r.ev,
            Ev::Db(DbEvent::JobInserted { .. } | DbEvent::PeriodicInserted { .. })
        )
    });
    let last = history.iter().rev().find(about);
    let mut out: Vec<Record> = inserted.into_iter().chain(last).cloned().collect();
    out.dedup_by_key(|w| w.seq);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::checkers::test_support::{ctx, H};
    use keel::storage::JobState;

    fn unfinished(ids: &[u64]) -> HarnessEvent {
        HarnessEvent::JobsUnfinished {
            jobs: ids.iter().copied().map(JobId).collect(),
        }
    }
    fn claimed(job: u64, attempt: u32) -> DbEvent {
        DbEvent::ClaimApplied {
            job: JobId(job),
            attempt,
            owner: "n1".into(),
            max_attempts: 10,
            heartbeat_ms: 0,
            issued_ms: 0,
        }
    }

    #[test]
    fn every_job_finished_passes() {
        let h = H::new()
            .db(1, DbEvent::JobInserted { job: JobId(1) })
            .db(2, claimed(1, 1))
            .db(
                3,
                DbEvent::FinalizeApplied {
                    job: JobId(1),
                    attempt: 1,
                    state: JobState::Completed,
                },
            )
            .harness(100_000, "sim", unfinished(&[]));
        assert!(NoLostJobs.check(&h.0, &ctx(100_000)).is_empty());
    }

    #[test]
    fn fires_when_jobs_are_unfinished_after_a_long_enough_heal() {
        let h = H::new()
            .db(1, DbEvent::JobInserted { job: JobId(1) })
            .db(
                2,
                DbEvent::PeriodicInserted {
                    name: "report".into(),
                    slot_ms: 0,
                    job: JobId(2),
                },
            )
            .db(3, claimed(1, 1))
            .db(
                4,
                DbEvent::RescueApplied {
                    job: JobId(1),
                    attempt: 1,
                    issued_ms: 0,
                },
            )
            .db(5, DbEvent::JobInserted { job: JobId(9) })
            .harness(100_000, "sim", unfinished(&[1, 2, 3, 4, 5, 6, 9]));
        let v = NoLostJobs.check(&h.0, &ctx(100_000));
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(
            v[0].message.contains(
                "7 job(s) unfinished 50000ms after faults stopped: \
                 job-1, job-2, job-3, job-4, job-5 and 2 more"
            ),
            "{}",
            v[0]
        );
        let seqs: Vec<usize> = v[0].witnesses.iter().map(|w| w.seq).collect();
        assert_eq!(
            seqs,
            vec![0, 1, 3, 5],
            "job-3 has no records; job-9 is not witnessed"
        );
    }

    #[test]
    fn a_heal_phase_shorter_than_the_bound_proves_nothing() {
        let h = H::new()
            .db(1, DbEvent::JobInserted { job: JobId(1) })
            .harness(100_000, "sim", unfinished(&[1]));
        let mut short = ctx(100_000);
        short.heal_converge_ms = 50_001;
        assert!(NoLostJobs.check(&h.0, &short).is_empty());
        assert_eq!(NoLostJobs.check(&h.0, &ctx(100_000)).len(), 1);
    }

    #[test]
    fn a_job_inserted_too_close_to_the_end_has_not_had_its_time_yet() {
        let end = 100_000;
        let h = H::new()
            .db(
                end - FRESH_JOB_MS + 1,
                DbEvent::JobInserted { job: JobId(1) },
            )
            .harness(end, "sim", unfinished(&[1]));
        assert!(NoLostJobs.check(&h.0, &ctx(end)).is_empty());
        let h = H::new()
            .db(end - FRESH_JOB_MS, DbEvent::JobInserted { job: JobId(1) })
            .harness(end, "sim", unfinished(&[1]));
        assert_eq!(NoLostJobs.check(&h.0, &ctx(end)).len(), 1);
    }
}
