//! `retry_respects_backoff`: the invariant, its reasons and limits are on [`RetryRespectsBackoff`].

use std::collections::BTreeMap;

use keel::events::Event;
use keel::storage::{JobId, JobState};

use super::belief::Offsets;
use super::{CheckCtx, Checker, Violation};
use crate::run::history::{DbEvent, Ev, Record};
use crate::world::db::DB_HOST;

/// `retry_respects_backoff`: a failed attempt's retry is claimed no earlier than
/// its backoff after the failure was recorded, judged in true time.
///
/// The worker that saw attempt `a` fail asks storage to make the job due
/// `delay(a)` later (`base * 2^(a-1)`, capped, plus jitter that only adds),
/// counted on storage's clock from when the finalize is applied; claims judge
/// due times on that clock too. So between the applied finalize and the claim
/// of attempt `a + 1` at least the backoff's floor must pass, less how far
/// storage's clock stepped in between. The nodes' clocks have no say. Storage
/// accepts an early retry without complaint: only this checker sees it.
pub struct RetryRespectsBackoff;

impl Checker for RetryRespectsBackoff {
    fn name(&self) -> &'static str {
        "retry_respects_backoff"
    }

    fn check(&self, history: &[Record], ctx: &CheckCtx) -> Vec<Violation> {
        let offsets = Offsets::of(history);
        // Per (job, attempt): where and when its handler ended.
        let mut ended: BTreeMap<(JobId, u32), &Record> = BTreeMap::new();
        // Per job: the attempt storage moved to retryable, with its handler's end.
        let mut retrying: BTreeMap<JobId, (u32, &Record, &Record)> = BTreeMap::new();
        let mut out = Vec::new();
        for r in history {
            match &r.ev {
                Ev::Node(Event::HandlerEnded { job, attempt, .. }) => {
                    ended.insert((*job, *attempt), r);
                }
                Ev::Db(DbEvent::FinalizeApplied {
                    job,
                    attempt,
                    state: JobState::Retryable,
                }) => {
                    if let Some(end) = ended.get(&(*job, *attempt)) {
                        retrying.insert(*job, (*attempt, end, r));
                    }
                }
                Ev::Db(DbEvent::ClaimApplied { job, attempt, .. }) => {
                    let Some((failed, end, fin)) = retrying.remove(job) else {
                        continue;
                    };
                    if *attempt != failed + 1 {
                        continue;
                    }
                    let floor_ms = ctx.retry_floor_ms(failed);
                    let ahead_ms = offsets.storage_moved(fin.at_ms, r.at_ms);
                    // On storage's clock, which judges the due time: a fast
                    // one (drift) lets a backoff pass in less true time.
                    let drifted =
                        offsets.drift_ms(DB_HOST, r.at_ms) - offsets.drift_ms(DB_HOST, fin.at_ms);
                    let waited_ms = (r.at_ms - fin.at_ms).saturating_add_signed(drifted);
                    let allowed_ms = floor_ms.saturating_sub(ahead_ms);
                    if waited_ms >= allowed_ms {
                        continue;
                    }
                    out.push(Violation {
                        invariant: "retry_respects_backoff",
                        at_ms: r.at_ms,
                        message: format!(
                            "{job} attempt {failed} failed on {} and was recorded at {}ms, and \
                             attempt {attempt} was claimed {waited_ms}ms later; its backoff is at \
                             least {floor_ms}ms (storage's clock stepped at most {ahead_ms}ms)",
                            end.host, fin.at_ms
                        ),
                        witnesses: vec![(*end).clone(), fin.clone(), r.clone()],
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
    use crate::run::checkers::test_support::{ctx, H};

    fn ended(attempt: u32) -> Event {
        Event::HandlerEnded {
            job: JobId(7),
            attempt,
            outcome: "failed: planned".into(),
        }
    }
    fn retryable(attempt: u32) -> DbEvent {
        DbEvent::FinalizeApplied {
            job: JobId(7),
            attempt,
            state: JobState::Retryable,
        }
    }
    fn claimed(attempt: u32) -> DbEvent {
        DbEvent::ClaimApplied {
            job: JobId(7),
            attempt,
            owner: "n2#1".into(),
            max_attempts: 10,
            heartbeat_ms: 0,
            issued_ms: 0,
        }
    }

    #[test]
    fn a_retry_after_its_backoff_passes_and_an_early_one_fires() {
        // ctx: 1 s base, so attempt 2's floor is 2 s.
        let late = H::new()
            .node(1_000, "n1", ended(2))
            .db(1_010, retryable(2))
            .db(3_200, claimed(3));
        assert!(RetryRespectsBackoff.check(&late.0, &ctx(10_000)).is_empty());
        let early = H::new()
            .node(1_000, "n1", ended(2))
            .db(1_010, retryable(2))
            .db(1_500, claimed(3));
        let v = RetryRespectsBackoff.check(&early.0, &ctx(10_000));
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(
            v[0].message.contains("claimed 490ms later"),
            "{}",
            v[0].message
        );
    }

    /// Swarm seed 50122: storage's clock 0.5% fast let the 2 s backoff pass
    /// in 1.99 s of true time. The backoff is judged on storage's clock.
    #[test]
    fn a_backoff_is_counted_on_storages_drifting_clock() {
        let rate = |ppm| crate::run::history::HarnessEvent::ClockRate { ppm };
        let fast = H::new()
            .harness(0, DB_HOST, rate(5_000))
            .node(1_000, "n1", ended(2))
            .db(1_010, retryable(2))
            .db(3_000, claimed(3));
        assert!(RetryRespectsBackoff.check(&fast.0, &ctx(10_000)).is_empty());
        let slow = H::new()
            .harness(0, DB_HOST, rate(-5_000))
            .node(1_000, "n1", ended(2))
            .db(1_010, retryable(2))
            .db(3_000, claimed(3));
        assert_eq!(RetryRespectsBackoff.check(&slow.0, &ctx(10_000)).len(), 1);
    }

    #[test]
    fn only_a_step_of_storages_clock_excuses_an_early_retry() {
        // A node's clock 10 minutes ahead has no say.
        let skewed = H::new()
            .harness(
                0,
                "n2",
                crate::run::history::HarnessEvent::NodeBoot {
                    boot: 1,
                    skew_ms: 600_000,
                },
            )
            .node(1_000, "n1", ended(2))
            .db(1_010, retryable(2))
            .db(1_500, claimed(3));
        assert_eq!(RetryRespectsBackoff.check(&skewed.0, &ctx(10_000)).len(), 1);
        // Storage's clock stepping 1.6 s ahead made the retry due early.
        let stepped = H::new()
            .node(1_000, "n1", ended(2))
            .db(1_010, retryable(2))
            .harness(
                1_100,
                crate::world::db::DB_HOST,
                crate::run::history::HarnessEvent::ClockJump { jump_ms: 1_600 },
            )
            .db(1_500, claimed(3));
        assert!(RetryRespectsBackoff
            .check(&stepped.0, &ctx(10_000))
            .is_empty());
    }
}
