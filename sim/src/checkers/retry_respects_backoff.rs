//! `retry_respects_backoff`: a failed attempt's retry is claimed no earlier than
//! its backoff after the failure, judged in true time.
//!
//! The worker that saw attempt `a` fail makes the job due `delay(a)` later on
//! its own wall clock (`base * 2^(a-1)`, capped, plus jitter that only adds);
//! the leader's scheduler promotes it on its own. So between the handler's end
//! and the claim of attempt `a + 1` at least the backoff's floor must pass,
//! less how far another clock ran ahead of the failing worker's. Storage
//! accepts an early retry without complaint: only this checker sees it.

use std::collections::BTreeMap;

use keel::events::Event;
use keel::storage::{JobId, JobState};

use super::belief::Offsets;
use super::{CheckCtx, Checker, Violation};
use crate::history::{DbEvent, Ev, Record};

/// See the [module docs](self).
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
                    let ahead_ms =
                        offsets.ahead_of(&end.host, (end.at_ms, end.at_ms), (end.at_ms, r.at_ms));
                    let waited_ms = r.at_ms - end.at_ms;
                    let allowed_ms = floor_ms.saturating_sub(u64::try_from(ahead_ms).unwrap_or(0));
                    if waited_ms >= allowed_ms {
                        continue;
                    }
                    out.push(Violation {
                        invariant: "retry_respects_backoff",
                        at_ms: r.at_ms,
                        message: format!(
                            "{job} attempt {failed} failed on {} at {}ms and attempt {attempt} was \
                             claimed {waited_ms}ms later; its backoff is at least {floor_ms}ms \
                             (clocks at most {ahead_ms}ms apart)",
                            end.host, end.at_ms
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
    use crate::checkers::test_support::{ctx, H};

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
            v[0].message.contains("claimed 500ms later"),
            "{}",
            v[0].message
        );
    }

    #[test]
    fn a_clock_ahead_of_the_failing_workers_excuses_its_lead() {
        let h = H::new()
            .harness(
                0,
                "n1",
                crate::history::HarnessEvent::NodeBoot {
                    boot: 1,
                    skew_ms: 0,
                },
            )
            .harness(
                0,
                "n2",
                crate::history::HarnessEvent::NodeBoot {
                    boot: 1,
                    skew_ms: 1_600,
                },
            )
            .node(1_000, "n1", ended(2))
            .db(1_010, retryable(2))
            .db(1_500, claimed(3));
        assert!(RetryRespectsBackoff.check(&h.0, &ctx(10_000)).is_empty());
    }
}
