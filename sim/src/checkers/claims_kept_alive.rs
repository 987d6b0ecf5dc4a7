//! `claims_kept_alive`: a worker that can reach storage keeps its claims
//! alive: it heartbeats each running job (`JobsConfig::heartbeat_interval`)
//! and each job waiting in its hand (`hand.rs`), so the rescuer never revokes
//! them. A `RescueApplied` of `(job, a)` at `t` breaks the promise when the
//! claimant's process lived on from its claim (no crash, shutdown or restart
//! of it since) and did not let go of it (after `finalize_attempts_max`
//! failed finalize calls, or once it stopped trusting the claim: both leave
//! the job to the rescuer, as documented), and over the whole stale window before the rescue
//! (`[t - stale_threshold, t]`) it was neither paused nor partitioned from
//! the database, no storage fault was on (nor while the claim's reply
//! travelled: a lost reply leaves a claim its worker never knew of), and the
//! nodes' clocks stayed within
//! `stale_threshold - 2 * heartbeat_interval` of each other (a wider spread
//! lets a rescuer running ahead revoke a live claim: keel's documented clock
//! margin). The claimant is found by its holder id, so a replacement process
//! running under a node's name is judged on its own host.
//!
//! Storage applies the rescue it is asked for; only the claimant's health
//! shows the claim was alive.

use std::collections::BTreeMap;

use keel::events::Event;
use keel::storage::JobId;

use super::belief::Offsets;
use super::no_early_rescue::SENT_BEFORE_MS_MAX;
use super::{CheckCtx, Checker, Violation};
use crate::history::{DbEvent, Ev, HarnessEvent, Record};

/// See the [module docs](self).
pub struct ClaimsKeptAlive;

const NAME: &str = "claims_kept_alive";

/// What could keep a live claimant from heartbeating: per host, when its
/// process ended or began to (crash, shutdown, restart), and the stretches
/// `[from, to]` it was cut off or frozen; and when storage was faulty.
#[derive(Default)]
pub(crate) struct Impaired<'a> {
    /// Per host: stretches cut off from the database or frozen.
    transient: BTreeMap<&'a str, Vec<(u64, u64)>>,
    /// Per host: when a process of it ended or began to.
    ended: BTreeMap<&'a str, Vec<u64>>,
    /// Storage faults, for every node.
    storage: Vec<(u64, u64)>,
    /// Each holder id's host, from `RuntimeStarted`.
    host_of: BTreeMap<&'a str, &'a str>,
}

impl<'a> Impaired<'a> {
    pub(crate) fn of(history: &'a [Record]) -> Self {
        let mut out = Impaired::default();
        let mut open: BTreeMap<(&str, &str), u64> = BTreeMap::new();
        let mut storage_since: Option<u64> = None;
        for r in history {
            let host = r.host.as_str();
            let (opens, closes): (Option<&str>, Option<&str>) = match &r.ev {
                Ev::Harness(HarnessEvent::Partition { .. }) => (Some("cut"), None),
                Ev::Harness(HarnessEvent::Repair { .. }) => (None, Some("cut")),
                Ev::Harness(HarnessEvent::Paused) => (Some("paused"), None),
                Ev::Harness(HarnessEvent::Resumed) => (None, Some("paused")),
                Ev::Harness(HarnessEvent::Crash | HarnessEvent::RestartAsked { .. })
                | Ev::Node(Event::ShutdownBegan { .. }) => {
                    out.ended.entry(host).or_default().push(r.at_ms);
                    (None, None)
                }
                Ev::Node(Event::RuntimeStarted { holder }) => {
                    out.host_of.insert(holder.as_str(), host);
                    (None, None)
                }
                Ev::Harness(HarnessEvent::StorageFault { .. }) => {
                    storage_since.get_or_insert(r.at_ms);
                    (None, None)
                }
                Ev::Harness(HarnessEvent::StorageHealed) => {
                    if let Some(from) = storage_since.take() {
                        out.storage.push((from, r.at_ms));
                    }
                    (None, None)
                }
                _ => (None, None),
            };
            if let Some(kind) = opens {
                open.entry((host, kind)).or_insert(r.at_ms);
            }
            if let Some(kind) = closes {
                if let Some(from) = open.remove(&(host, kind)) {
                    out.transient.entry(host).or_default().push((from, r.at_ms));
                }
            }
        }
        for ((host, _), from) in open {
            out.transient
                .entry(host)
                .or_default()
                .push((from, u64::MAX));
        }
        if let Some(from) = storage_since {
            out.storage.push((from, u64::MAX));
        }
        out
    }

    /// Whether the process that made a claim on `host` may have failed to
    /// keep it alive up to `rescued_ms`: it ended since the claim was sent
    /// (swarm seed 3001025: a process killed with its claim in flight), or it
    /// was impaired during the stale window, or while the
    /// claim travelled (`claim`: from when it may have been sent to when its
    /// reply was due; a claim slowed past the client's timeout, or whose reply
    /// was lost, is one its worker never knew it held).
    fn excused(&self, host: &str, claim: (u64, u64), rescued_ms: u64, stale_ms: u64) -> bool {
        let (sent_ms, replied_by) = claim;
        let from = rescued_ms.saturating_sub(stale_ms);
        let overlaps = |(a, b): &(u64, u64)| {
            (*a <= rescued_ms && *b >= from) || (*a <= replied_by && *b >= sent_ms)
        };
        let ended = self
            .ended
            .get(host)
            .is_some_and(|at| at.iter().any(|t| (sent_ms..=rescued_ms).contains(t)));
        ended
            || self.storage.iter().any(overlaps)
            || self
                .transient
                .get(host)
                .is_some_and(|spans| spans.iter().any(overlaps))
    }

    /// Whether `host` was cut off from the database or frozen, or storage was
    /// faulty, at some instant of `[from_ms, to_ms]`.
    pub(crate) fn during(&self, host: &str, from_ms: u64, to_ms: u64) -> bool {
        let overlaps = |(a, b): &(u64, u64)| *a <= to_ms && *b >= from_ms;
        self.storage.iter().any(overlaps)
            || self
                .transient
                .get(host)
                .is_some_and(|spans| spans.iter().any(overlaps))
    }

    /// The host a worker's owner id (`holder/queue/slot`) runs on.
    fn host(&self, owner: &'a str) -> &'a str {
        let holder = owner.split('/').next().unwrap_or(owner);
        self.host_of
            .get(holder)
            .copied()
            .unwrap_or_else(|| holder.split('#').next().unwrap_or(holder))
    }
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
        // Per claim: its ClaimApplied, its stamp and the claimant's host.
        let mut claims: BTreeMap<(JobId, u32), (&Record, i64, &str)> = BTreeMap::new();
        let mut out = Vec::new();
        for r in history {
            match &r.ev {
                Ev::Db(DbEvent::ClaimApplied {
                    job,
                    attempt,
                    owner,
                    heartbeat_ms,
                    ..
                }) => {
                    claims.insert((*job, *attempt), (r, *heartbeat_ms, impaired.host(owner)));
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
                Ev::Db(DbEvent::RescueApplied { job, attempt }) => {
                    let Some((claim, stamp_ms, host)) = claims.remove(&(*job, *attempt)) else {
                        continue;
                    };
                    // The claim was sent when its stamp was read, on a clock
                    // at most this far ahead (storage_faults-style slow
                    // calls: swarm seed 3000174's claim, sent into a slow
                    // database, was applied after the fault ended).
                    let since_ms = claim.at_ms.saturating_sub(SENT_BEFORE_MS_MAX);
                    let sent_ms =
                        offsets.sent_no_earlier_than(host, stamp_ms, since_ms, claim.at_ms);
                    let sent_ms = u64::try_from(sent_ms).unwrap_or(0).min(claim.at_ms);
                    let replied_by = claim.at_ms.saturating_add(ctx.heartbeat_interval_ms);
                    let from = r.at_ms.saturating_sub(ctx.stale_threshold_ms);
                    if claim.at_ms > from
                        || impaired.excused(
                            host,
                            (sent_ms, replied_by),
                            r.at_ms,
                            ctx.stale_threshold_ms,
                        )
                        || offsets.spread(from, r.at_ms) > margin_ms
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
    use crate::checkers::test_support::{ctx, H};

    fn claim() -> DbEvent {
        DbEvent::ClaimApplied {
            job: JobId(1),
            attempt: 1,
            owner: "n1#a/default/0".into(),
            max_attempts: 10,
            heartbeat_ms: 0,
        }
    }
    fn rescue() -> DbEvent {
        DbEvent::RescueApplied {
            job: JobId(1),
            attempt: 1,
        }
    }

    #[test]
    fn a_rescue_of_a_claimant_cut_off_paused_or_down_passes() {
        let cut = H::new()
            .db(0, claim())
            .harness(5_000, "n1", HarnessEvent::Partition { peer: "db".into() })
            .db(20_000, rescue());
        assert!(ClaimsKeptAlive.check(&cut.0, &ctx(30_000)).is_empty());
        let crashed = H::new()
            .db(0, claim())
            .harness(1_000, "n1", HarnessEvent::Crash)
            .db(20_000, rescue());
        assert!(ClaimsKeptAlive.check(&crashed.0, &ctx(30_000)).is_empty());
        let storage = H::new()
            .db(0, claim())
            .harness(
                12_000,
                "db",
                HarnessEvent::StorageFault {
                    fault: "error".into(),
                    pct: 50,
                },
            )
            .db(20_000, rescue());
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
            .db(100, claim())
            .harness(300, "db", HarnessEvent::StorageHealed)
            .db(20_000, rescue());
        assert!(ClaimsKeptAlive
            .check(&lost_reply.0, &ctx(30_000))
            .is_empty());
        // The worker gave up finalizing and left the job to the rescuer.
        let gave_up = H::new()
            .db(0, claim())
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
            .db(20_000, rescue());
        assert!(ClaimsKeptAlive.check(&gave_up.0, &ctx(30_000)).is_empty());
    }

    #[test]
    fn fires_on_a_rescue_of_a_claimant_that_could_reach_storage() {
        // Cut off after the claim's reply, but repaired 15 s before the rescue.
        let h = H::new()
            .db(0, claim())
            .harness(2_000, "n1", HarnessEvent::Partition { peer: "db".into() })
            .harness(5_000, "n1", HarnessEvent::Repair { peer: "db".into() })
            .db(20_000, rescue());
        let v = ClaimsKeptAlive.check(&h.0, &ctx(30_000));
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(
            v[0].message
                .contains("n1, its claimant, could reach storage"),
            "{}",
            v[0].message
        );
    }
}
