//! `no_early_rescue`: the invariant, its reasons and limits are on [`NoEarlyRescue`].

use std::collections::BTreeMap;

use keel::storage::JobId;

use super::belief::Offsets;
use super::{CheckCtx, Checker, Violation};
use crate::run::history::{DbEvent, Ev, Record};

/// `no_early_rescue`: the rescuer revokes a claim only once its last heartbeat
/// is more than `stale_threshold` (`JobsConfig::stale_threshold`) old on
/// storage's clock, the one clock that judges claims. A job's heartbeats are
/// not recorded (one per running job per second would dominate the history),
/// but its claim records the first one: storage's stamp when it applied the
/// claim (`ClaimApplied::heartbeat_ms`). Later heartbeats stamp later times,
/// unless storage's clock fell back in between, so a `RescueApplied` of
/// `(job, a)` at true time `t` is early when storage's clock at `t` reads no
/// more than the threshold past that stamp, lowered by how far storage's clock
/// fell back since the claim. The rescuer's own clock has no say: a rescue it
/// judged on its own wall clock (planted `rescue_on_caller_clock`) is early
/// whenever that clock ran ahead of storage's.
///
/// Storage applies an early rescue without complaint: it is handed the window.
/// A worker whose claim is revoked early is cut off while it may still trust
/// its claim, which `no_double_execution` sees only if the next attempt
/// overlaps it.
pub struct NoEarlyRescue;

/// Slack for the history stamping a host's events up to one 20 ms step late.
pub const STAMP_SLACK_MS: i64 = 20;

impl Checker for NoEarlyRescue {
    fn name(&self) -> &'static str {
        "no_early_rescue"
    }

    fn check(&self, history: &[Record], ctx: &CheckCtx) -> Vec<Violation> {
        let offsets = Offsets::of(history);
        let mut claimed: BTreeMap<(JobId, u32), (&Record, i64)> = BTreeMap::new();
        let mut out = Vec::new();
        for r in history {
            match &r.ev {
                Ev::Db(DbEvent::ClaimApplied {
                    job,
                    attempt,
                    heartbeat_ms,
                    ..
                }) => {
                    claimed.insert((*job, *attempt), (r, *heartbeat_ms));
                }
                Ev::Db(DbEvent::RescueApplied { job, attempt, .. }) => {
                    let Some((claim, first_stamp_ms)) = claimed.get(&(*job, *attempt)) else {
                        continue;
                    };
                    let stamp_ms = first_stamp_ms - offsets.storage_fell_back(claim.at_ms, r.at_ms);
                    // The history may stamp the rescue a step after storage
                    // read its clock for it.
                    let age_ms = offsets.storage_ms(r.at_ms) + STAMP_SLACK_MS - stamp_ms;
                    let stale_ms = i64::try_from(ctx.stale_threshold_ms).unwrap_or(i64::MAX);
                    if age_ms >= stale_ms {
                        continue;
                    }
                    out.push(Violation {
                        invariant: "no_early_rescue",
                        at_ms: r.at_ms,
                        message: format!(
                            "{job} attempt {attempt} was rescued when its first heartbeat was at most \
                             {age_ms}ms old on storage's clock; the stale threshold is {}ms",
                            ctx.stale_threshold_ms
                        ),
                        witnesses: vec![(*claim).clone(), r.clone()],
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
    use crate::run::checkers::test_support::{ctx, job_claimed, job_rescued, H};
    use crate::run::history::HarnessEvent;
    use crate::world::db::DB_HOST;

    /// Storage's clock (the database host's) steps by `jump_ms` at `at_ms`.
    fn storage_jump(h: H, at_ms: u64, jump_ms: i64) -> H {
        h.harness(at_ms, DB_HOST, HarnessEvent::ClockJump { jump_ms })
    }

    #[test]
    fn a_rescue_past_the_threshold_on_storages_clock_passes() {
        // The test context's stale threshold is 10 s.
        let h = H::new()
            .db(0, job_claimed(1, 10, 0))
            .db(10_500, job_rescued(1));
        assert!(NoEarlyRescue.check(&h.0, &ctx(20_000)).is_empty());
        // Storage's clock runs 2 s ahead throughout: its stamps and its
        // judgement agree, so only true ages count.
        let skewed = storage_jump(H::new(), 0, 2_000)
            .db(0, job_claimed(1, 10, 2_000))
            .db(10_500, job_rescued(1));
        assert!(NoEarlyRescue.check(&skewed.0, &ctx(20_000)).is_empty());
    }

    #[test]
    fn a_storage_clock_that_fell_back_may_have_aged_a_claim() {
        // Storage's clock ran 8 s ahead when it stamped the claim (8,000 at
        // true 0), then stepped back to true time: the worker's last
        // heartbeat, at 1 s, stamped 1,000, so a rescue at 11.5 s is 10.5 s
        // past it, though 3.5 s past the claim's stamp.
        let h = storage_jump(H::new(), 0, 8_000)
            .db(0, job_claimed(1, 10, 8_000))
            .harness(500, DB_HOST, HarnessEvent::ClockJump { jump_ms: -8_000 })
            .db(11_500, job_rescued(1));
        assert!(NoEarlyRescue.check(&h.0, &ctx(20_000)).is_empty());
    }

    #[test]
    fn fires_on_a_rescue_judged_on_a_clock_running_ahead_of_storages() {
        // n2's clock runs 4 s ahead: a rescuer judging on it (planted
        // `rescue_on_caller_clock`) revokes at 6.5 s what storage's clock
        // says is 6.5 s old.
        let h = H::new()
            .harness(
                0,
                "n2",
                HarnessEvent::NodeBoot {
                    boot: 1,
                    skew_ms: 4_000,
                },
            )
            .db(0, job_claimed(1, 10, 0))
            .db(6_500, job_rescued(1));
        let v = NoEarlyRescue.check(&h.0, &ctx(20_000));
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(
            v[0].message
                .contains("at most 6520ms old on storage's clock; the stale threshold is 10000ms"),
            "{}",
            v[0].message
        );
    }
}
