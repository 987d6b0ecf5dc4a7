//! `claims_kept_alive`: the invariant, its reasons and limits are on [`ClaimsKeptAlive`].

use std::collections::BTreeMap;

use keel::events::Event;
use keel::storage::JobId;

use super::belief::Offsets;
use super::health::Impaired;
use super::{CheckCtx, Checker, Violation};
use crate::run::history::{DbEvent, Ev, Record};

/// `claims_kept_alive`: a worker that can reach storage keeps its claims
/// alive: it heartbeats each running job (`JobsConfig::heartbeat_interval`)
/// and each job waiting in its hand (`hand.rs`), so the rescuer never revokes
/// them. A `RescueApplied` of `(job, a)` at `t` breaks the promise when the
/// claimant's process lived on from its claim (no crash, shutdown or restart
/// of it since) and did not let go of it (after `finalize_attempts_max`
/// failed finalize calls, or once it stopped trusting the claim: both leave
/// the job to the rescuer, as documented), and over the whole stale window before the rescue
/// (`[t - stale_threshold, t]`) it was neither paused nor partitioned from
/// the database, no storage fault was on (nor while the claim's reply
/// travelled: a lost reply leaves a claim its worker never knew of), and
/// storage's clock, which judges staleness, did not step by more than
/// `stale_threshold - 2 * heartbeat_interval` in that window (a forward step
/// of the one judging clock ages every claim at once: keel's documented
/// limit). The nodes' own clocks have no say, however far they are off. The
/// claimant is found by its holder id, so a replacement process running under
/// a node's name is judged on its own host.
///
/// Storage applies the rescue it is asked for; only the claimant's health
/// shows the claim was alive.
pub struct ClaimsKeptAlive;

const NAME: &str = "claims_kept_alive";

/// Whether the process that made a claim on `host` may have failed to keep
/// it alive up to `rescued_ms`: it ended since the claim was sent (swarm seed
/// 3001025: a process killed with its claim in flight), or it was impaired
/// during the stale window, or while the claim travelled (`claim`: from when
/// it may have been sent to when its reply was due; a claim slowed past the
/// client's timeout, or whose reply was lost, is one its worker never knew it
/// held).
fn excused(
    health: &Impaired<'_>,
    host: &str,
    claim: (u64, u64),
    rescued_ms: u64,
    stale_ms: u64,
) -> bool {
    let (sent_ms, replied_by) = claim;
    health.ended_within(host, sent_ms, rescued_ms)
        || health.during(host, rescued_ms.saturating_sub(stale_ms), rescued_ms)
        || health.during(host, sent_ms, replied_by)
}

impl Checker for ClaimsKeptAlive {
    fn name(&self) -> &'static str {
        NAME
    }

    fn check(&self, history: &[Record], ctx: &CheckCtx) -> Vec<Violation> {
        let impaired = Impaired::of(history);
        let offsets = Offsets::of(history);
        let margin_ms = ctx
            .stale_threshold_ms
            .saturating_sub(2 * ctx.heartbeat_interval_ms);
        // Per claim: its ClaimApplied, when it was sent and the claimant's host.
        let mut claims: BTreeMap<(JobId, u32), (&Record, u64, &str)> = BTreeMap::new();
        let mut out = Vec::new();
        for r in history {
            match &r.ev {
                Ev::Db(DbEvent::ClaimApplied {
                    job,
                    attempt,
                    owner,
                    issued_ms,
                    ..
                }) => {
                    claims.insert(
                        (*job, *attempt),
                        (r, *issued_ms, impaired.hosts.of_owner(owner)),
                    );
                }
                Ev::Db(DbEvent::FinalizeApplied { job, attempt, .. }) => {
                    claims.remove(&(*job, *attempt));
                }
                // The worker gave up recording the attempt's end
                // (`finalize_attempts_max` calls failed) and left the job to
                // the rescuer, as documented.
                Ev::Node(Event::JobFinalized {
                    job,
                    attempt,
                    result,
                    ..
                }) if result.starts_with("error") => {
                    claims.remove(&(*job, *attempt));
                }
                // The worker stopped trusting the claim (it went `claim_trust`
                // without a good heartbeat, paused or cut off earlier) and
                // let it go to the rescuer, as documented.
                Ev::Node(Event::HandlerCancelRequested {
                    job,
                    attempt,
                    reason,
                }) if reason == "claim_untrusted" => {
                    claims.remove(&(*job, *attempt));
                }
                Ev::Db(DbEvent::RescueApplied { job, attempt, .. }) => {
                    let Some((claim, sent_ms, host)) = claims.remove(&(*job, *attempt)) else {
                        continue;
                    };
                    // A claim sent into a slow database may be applied after
                    // the fault ended (swarm seed 3000174): its travel counts.
                    let sent_ms = sent_ms.min(claim.at_ms);
                    let replied_by = claim.at_ms.saturating_add(ctx.heartbeat_interval_ms);
                    let from = r.at_ms.saturating_sub(ctx.stale_threshold_ms);
                    if claim.at_ms > from
                        || excused(
                            &impaired,
                            host,
                            (sent_ms, replied_by),
                            r.at_ms,
                            ctx.stale_threshold_ms,
                        )
                        || offsets.storage_moved(from, r.at_ms) > margin_ms
                    {
                        continue;
                    }
                    out.push(Violation {
                        invariant: NAME,
                        at_ms: r.at_ms,
                        message: format!(
                            "{job} attempt {attempt} was rescued though {host}, its claimant, \
                             could reach storage for the whole {}ms before",
                            ctx.stale_threshold_ms
                        ),
                        witnesses: vec![claim.clone(), r.clone()],
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

    #[test]
    fn a_rescue_of_a_claimant_cut_off_paused_or_down_passes() {
        let cut = H::new()
            .db(0, job_claimed(1, 10, 0))
            .harness(5_000, "n1", HarnessEvent::Partition { peer: "db".into() })
            .db(20_000, job_rescued(1));
        assert!(ClaimsKeptAlive.check(&cut.0, &ctx(30_000)).is_empty());
        let crashed = H::new()
            .db(0, job_claimed(1, 10, 0))
            .harness(1_000, "n1", HarnessEvent::Crash)
            .db(20_000, job_rescued(1));
        assert!(ClaimsKeptAlive.check(&crashed.0, &ctx(30_000)).is_empty());
        let storage = H::new()
            .db(0, job_claimed(1, 10, 0))
            .harness(
                12_000,
                "db",
                HarnessEvent::StorageFault {
                    fault: "error".into(),
                    pct: 50,
                },
            )
            .db(20_000, job_rescued(1));
        assert!(ClaimsKeptAlive.check(&storage.0, &ctx(30_000)).is_empty());
        // The claim's reply may have been lost: its worker never knew.
        let lost_reply = H::new()
            .harness(
                0,
                "db",
                HarnessEvent::StorageFault {
                    fault: "lost_reply".into(),
                    pct: 30,
                },
            )
            .db(100, job_claimed(1, 10, 0))
            .harness(300, "db", HarnessEvent::StorageHealed)
            .db(20_000, job_rescued(1));
        assert!(ClaimsKeptAlive
            .check(&lost_reply.0, &ctx(30_000))
            .is_empty());
        // The worker gave up finalizing and left the job to the rescuer.
        let gave_up = H::new()
            .db(0, job_claimed(1, 10, 0))
            .node(
                2_000,
                "n1",
                Event::JobFinalized {
                    job: JobId(1),
                    attempt: 1,
                    state: keel::storage::JobState::Completed,
                    result: "error: storage unavailable".into(),
                },
            )
            .db(20_000, job_rescued(1));
        assert!(ClaimsKeptAlive.check(&gave_up.0, &ctx(30_000)).is_empty());
    }

    #[test]
    fn fires_on_a_rescue_of_a_claimant_that_could_reach_storage() {
        // Cut off after the claim's reply, but repaired 15 s before the rescue.
        let h = H::new()
            .db(0, job_claimed(1, 10, 0))
            .harness(2_000, "n1", HarnessEvent::Partition { peer: "db".into() })
            .harness(5_000, "n1", HarnessEvent::Repair { peer: "db".into() })
            .db(20_000, job_rescued(1));
        let v = ClaimsKeptAlive.check(&h.0, &ctx(30_000));
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(
            v[0].message
                .contains("n1, its claimant, could reach storage"),
            "{}",
            v[0].message
        );
    }

    #[test]
    fn only_a_step_of_storages_clock_excuses_a_rescue() {
        // Storage's clock stepped 9 s ahead just before the rescue: every
        // claim aged at once, keel's documented limit.
        let stepped = H::new()
            .db(0, job_claimed(1, 10, 0))
            .harness(12_000, "db", HarnessEvent::ClockJump { jump_ms: 9_000 })
            .db(12_500, job_rescued(1));
        assert!(ClaimsKeptAlive.check(&stepped.0, &ctx(30_000)).is_empty());
        // A node's clock 10 minutes ahead has no say.
        let skewed = H::new()
            .harness(
                0,
                "n2",
                HarnessEvent::NodeBoot {
                    boot: 1,
                    skew_ms: 600_000,
                },
            )
            .db(0, job_claimed(1, 10, 0))
            .db(12_500, job_rescued(1));
        assert_eq!(ClaimsKeptAlive.check(&skewed.0, &ctx(30_000)).len(), 1);
    }
}
