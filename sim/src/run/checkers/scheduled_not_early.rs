//! `scheduled_not_early`: the invariant, its reasons and limits are on [`ScheduledNotEarly`].

use std::collections::BTreeMap;

use keel::storage::JobId;

use super::belief::Offsets;
use super::no_early_rescue::STAMP_SLACK_MS;
use super::{CheckCtx, Checker, Violation};
use crate::run::history::{DbEvent, Ev, Record};

/// `scheduled_not_early`: a job enqueued with a `scheduled_at` is not claimed
/// before that time, judged in true time.
///
/// Every engine's claim takes only rows with `scheduled_at <= now`, `now` being
/// storage's clock (the database host's), whoever made the row available (the
/// enqueue, or the leader's scheduler promoting it). So the first claim comes
/// no earlier than storage's clock reads `scheduled_at`: true time, less how
/// far storage's clock ran ahead of it. The claimer's own clock has no say. A
/// job claimed before its time looks like any other claim to storage: only
/// this checker sees it.
pub struct ScheduledNotEarly;

impl Checker for ScheduledNotEarly {
    fn name(&self) -> &'static str {
        "scheduled_not_early"
    }

    fn check(&self, history: &[Record], _ctx: &CheckCtx) -> Vec<Violation> {
        let offsets = Offsets::of(history);
        // Per job not yet claimed: its due time and the record that set it.
        let mut due: BTreeMap<JobId, (i64, &Record)> = BTreeMap::new();
        let mut out = Vec::new();
        for r in history {
            match &r.ev {
                Ev::Db(DbEvent::JobScheduled { job, due_ms }) => {
                    due.insert(*job, (*due_ms, r));
                }
                Ev::Db(DbEvent::ClaimApplied { job, owner, .. }) => {
                    let Some((due_ms, set)) = due.remove(job) else {
                        continue;
                    };
                    let at_ms = i64::try_from(r.at_ms).unwrap_or(i64::MAX);
                    let ahead_ms = offsets.storage_ms(r.at_ms) - at_ms;
                    if at_ms + ahead_ms + STAMP_SLACK_MS >= due_ms {
                        continue;
                    }
                    out.push(Violation {
                        invariant: "scheduled_not_early",
                        at_ms: r.at_ms,
                        message: format!(
                            "{job} was scheduled for {due_ms}ms and claimed at {}ms, {}ms early \
                             by {owner}, when storage's clock ran {ahead_ms}ms ahead",
                            r.at_ms,
                            due_ms - at_ms
                        ),
                        witnesses: vec![set.clone(), r.clone()],
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
    use crate::run::history::HarnessEvent;
    use crate::world::db::DB_HOST;

    fn scheduled(job: u64, due_ms: i64) -> DbEvent {
        DbEvent::JobScheduled {
            job: JobId(job),
            due_ms,
        }
    }
    fn claim(job: u64) -> DbEvent {
        DbEvent::ClaimApplied {
            job: JobId(job),
            attempt: 1,
            owner: "n1#5e1f/default/0".into(),
            max_attempts: 10,
            heartbeat_ms: 0,
            issued_ms: 0,
        }
    }

    #[test]
    fn a_claim_before_the_due_time_fires() {
        let h = H::new().db(100, scheduled(1, 5_000)).db(1_200, claim(1));
        let v = ScheduledNotEarly.check(&h.0, &ctx(10_000));
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!(v[0].at_ms, 1_200);
        assert!(v[0].message.contains("3800ms early"), "{}", v[0].message);
    }

    #[test]
    fn a_claim_on_time_or_excused_by_storages_clock_ahead_holds() {
        let on_time = H::new().db(100, scheduled(1, 5_000)).db(5_000, claim(1));
        assert!(ScheduledNotEarly.check(&on_time.0, &ctx(10_000)).is_empty());
        let ahead = H::new()
            .harness(50, DB_HOST, HarnessEvent::ClockJump { jump_ms: 4_000 })
            .db(100, scheduled(1, 5_000))
            .db(1_200, claim(1));
        assert!(ScheduledNotEarly.check(&ahead.0, &ctx(10_000)).is_empty());
        // The claimer's clock running ahead excuses nothing.
        let claimer = H::new()
            .harness(50, "n1", HarnessEvent::ClockJump { jump_ms: 4_000 })
            .db(100, scheduled(1, 5_000))
            .db(1_200, claim(1));
        assert_eq!(ScheduledNotEarly.check(&claimer.0, &ctx(10_000)).len(), 1);
        // Only the first claim is judged; a retry has its own due time.
        let retried = on_time.db(5_100, claim(1));
        assert!(ScheduledNotEarly.check(&retried.0, &ctx(10_000)).is_empty());
    }
}
