//! `no_early_rescue`: the rescuer revokes a claim only once its heartbeat is
//! older than `stale_threshold` (`JobsConfig::stale_threshold`). A job's
//! heartbeats are not recorded (one per running job per second would dominate
//! the history), but its claim records the first one: the claimer's wall-clock
//! stamp (`ClaimApplied::heartbeat_ms`). The rescuer judges staleness on its
//! own wall clock when it sends the rescue, so a `RescueApplied` of `(job, a)`
//! at true time `t` is early when even the clock most ahead over the time the
//! rescue may have been in flight reads less than the threshold past the
//! earliest stamp any heartbeat could have left. Later heartbeats stamp later
//! times, unless the worker's clock fell back: a heartbeat after a backward
//! jump stamps an earlier time than the claim did (swarm seed 61000454: a
//! worker's clock stepped back 10.5 s, and its next heartbeat made its claim
//! look 5 s older than its first stamp), so the stamp is lowered by how far
//! the worker's clock fell back in between, counted from when the claim may
//! have been sent: a claim stamped on a jumped clock and applied just after
//! the jump ended (clock_skew seed 8085) is as old as the jump.
//!
//! Storage applies an early rescue without complaint: it is handed the
//! cutoff. A worker whose claim is revoked early is cut off while it may still
//! trust its claim, which `no_double_execution` sees only if the next attempt
//! overlaps it.

use std::collections::BTreeMap;

use keel::storage::JobId;

use super::belief::Offsets;
use super::{CheckCtx, Checker, Violation};
use crate::history::{DbEvent, Ev, Record};

/// See the [module docs](self).
pub struct NoEarlyRescue;

/// Slack for the history stamping a host's events up to one 20 ms step late.
pub const STAMP_SLACK_MS: i64 = 20;

/// How long before it is applied a rescue may have been sent, its cutoff
/// read from the rescuer's clock then: a request timeout, or a paused
/// rescuer's held link (the longest pause any scenario draws is 12 s).
pub const SENT_BEFORE_MS_MAX: u64 = 15_000;

impl Checker for NoEarlyRescue {
    fn name(&self) -> &'static str {
        "no_early_rescue"
    }

    fn check(&self, history: &[Record], ctx: &CheckCtx) -> Vec<Violation> {
        let offsets = Offsets::of(history);
        let mut claimed: BTreeMap<(JobId, u32), (&Record, i64, &str)> = BTreeMap::new();
        let mut out = Vec::new();
        for r in history {
            match &r.ev {
                Ev::Db(DbEvent::ClaimApplied {
                    job,
                    attempt,
                    heartbeat_ms,
                    owner,
                    ..
                }) => {
                    claimed.insert((*job, *attempt), (r, *heartbeat_ms, worker_node(owner)));
                }
                Ev::Db(DbEvent::RescueApplied { job, attempt }) => {
                    let Some((claim, first_stamp_ms, worker)) = claimed.get(&(*job, *attempt))
                    else {
                        continue;
                    };
                    // The claim too may have been sent (and stamped) that
                    // long before it was applied, on a clock that has since
                    // stepped back (clock_skew seed 8085).
                    let claim_sent_ms = claim.at_ms.saturating_sub(SENT_BEFORE_MS_MAX);
                    let fell_ms = offsets.fell_back_on(worker, claim_sent_ms, claim.at_ms, r.at_ms);
                    let stamp_ms = first_stamp_ms - fell_ms;
                    let sent_ms = r.at_ms.saturating_sub(SENT_BEFORE_MS_MAX);
                    let latest_clock_ms = i64::try_from(r.at_ms).unwrap_or(i64::MAX)
                        + offsets.most_ahead_within(sent_ms, r.at_ms)
                        + STAMP_SLACK_MS;
                    let age_ms = latest_clock_ms - stamp_ms;
                    let stale_ms = i64::try_from(ctx.stale_threshold_ms).unwrap_or(i64::MAX);
                    if age_ms >= stale_ms {
                        continue;
                    }
                    out.push(Violation {
                        invariant: "no_early_rescue",
                        at_ms: r.at_ms,
                        message: format!(
                            "{job} attempt {attempt} was rescued when its first heartbeat was at most \
                             {age_ms}ms old on any clock; the stale threshold is {}ms",
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

/// The node a worker's owner id (`node#incarnation/queue/slot`) runs on.
fn worker_node(owner: &str) -> &str {
    owner.split(['/', '#']).next().unwrap_or(owner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkers::test_support::{ctx, job_claimed, job_rescued, H};
    use crate::history::HarnessEvent;

    /// Attempt `at`'s claim, its first heartbeat stamped at `stamp_ms`.

    #[test]
    fn a_rescue_past_the_threshold_on_some_clock_passes() {
        // The test context's stale threshold is 10 s.
        let h = H::new()
            .db(0, job_claimed(1, 10, 0))
            .db(10_500, job_rescued(1));
        assert!(NoEarlyRescue.check(&h.0, &ctx(20_000)).is_empty());
        // The claim was sent at 0 and applied 3 s later (a held link); the
        // rescue 8 s after the apply is 11 s after the stamp.
        let late = H::new()
            .db(3_000, job_claimed(1, 10, 0))
            .db(11_000, job_rescued(1));
        assert!(NoEarlyRescue.check(&late.0, &ctx(20_000)).is_empty());
        // A node's clock ran 2 s ahead: the rescuer may have been on it.
        let skewed = H::new()
            .harness(
                0,
                "n2",
                HarnessEvent::NodeBoot {
                    boot: 1,
                    skew_ms: 2_000,
                },
            )
            .db(0, job_claimed(1, 10, 0))
            .db(8_500, job_rescued(1));
        assert!(NoEarlyRescue.check(&skewed.0, &ctx(20_000)).is_empty());
    }

    #[test]
    fn a_worker_clock_that_fell_back_may_have_aged_its_claim() {
        // n1 claims with its clock 8 s ahead (stamp 8,000 at true 0), then
        // steps back to true time: its last heartbeat, at 1 s, stamped 1,000,
        // so a rescue at 16 s is 15 s past it, though 8 s past the claim's.
        let h = H::new()
            .harness(
                0,
                "n1",
                HarnessEvent::NodeBoot {
                    boot: 1,
                    skew_ms: 8_000,
                },
            )
            .db(0, job_claimed(1, 10, 8_000))
            .harness(500, "n1", HarnessEvent::ClockJump { jump_ms: -8_000 })
            .db(16_000, job_rescued(1));
        assert!(NoEarlyRescue.check(&h.0, &ctx(20_000)).is_empty());
    }

    #[test]
    fn a_claim_stamped_before_its_clock_fell_back_may_be_old() {
        // n1's clock ran 8 s ahead until 1,000; its claim, sent then (stamp
        // 9,000), was applied at 1,010, after the clock stepped back; its
        // heartbeats since stamp true time, so at 17 s it is 16 s old.
        let h = H::new()
            .harness(
                0,
                "n1",
                HarnessEvent::NodeBoot {
                    boot: 1,
                    skew_ms: 8_000,
                },
            )
            .harness(1_000, "n1", HarnessEvent::ClockJump { jump_ms: -8_000 })
            .db(1_010, job_claimed(1, 10, 9_000))
            .db(17_000, job_rescued(1));
        assert!(NoEarlyRescue.check(&h.0, &ctx(20_000)).is_empty());
    }

    #[test]
    fn fires_on_a_rescue_before_the_threshold_on_every_clock() {
        let h = H::new()
            .db(0, job_claimed(1, 10, 0))
            .db(6_000, job_rescued(1));
        let v = NoEarlyRescue.check(&h.0, &ctx(20_000));
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(
            v[0].message
                .contains("at most 6020ms old on any clock; the stale threshold is 10000ms"),
            "{}",
            v[0].message
        );
    }
}
