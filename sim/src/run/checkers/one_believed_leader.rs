//! `one_believed_leader`: the invariant, its reasons and limits are on [`OneBelievedLeader`].

use std::collections::BTreeSet;

use keel::storage::Term;

use super::belief::{beliefs, holder_at, Belief, Offsets};
use super::{CheckCtx, Checker, Violation};
use crate::run::history::{DbEvent, Ev, Record};

/// `one_believed_leader`: no node believes it leads a term once storage has
/// granted a later term to another holder, judged in true time: so no two
/// nodes believe they lead at the same instant, within the clock error the
/// safety margin allows.
///
/// Storage judges a lease's expiry on its own clock (the database host's), and
/// a node trusts a grant for `lease_ttl - safety_margin` on its monotonic
/// clock from the moment it asked. A peer can therefore be granted the next
/// term while the old leader still trusts its own only if storage's clock
/// stepped forward by more than the margin in between: such an overlap is
/// excused (a forward step of the one judging clock shortens every hold,
/// keel's documented limit), any other is a broken promise even though term
/// fencing keeps storage clean. The nodes' wall clocks have no say.
pub struct OneBelievedLeader;

impl Checker for OneBelievedLeader {
    fn name(&self) -> &'static str {
        "one_believed_leader"
    }

    fn check(&self, history: &[Record], ctx: &CheckCtx) -> Vec<Violation> {
        let mut out: Vec<Violation> = Vec::new();
        // One report per tenure: its first broken belief shows the cause.
        let mut reported: BTreeSet<(String, Term)> = BTreeSet::new();
        for (b, next) in next_grants(history, ctx) {
            let Next::Overlap { grant, ahead_ms } = next else {
                continue;
            };
            if !reported.insert((b.host.clone(), b.term)) {
                continue;
            }
            let (holder, term) = granted(grant);
            let mut witnesses = vec![history[b.seq].clone(), grant.clone()];
            if let Some(end) = b.ended_by {
                witnesses.push(history[end].clone());
            }
            witnesses.sort_by_key(|r| r.seq);
            witnesses.dedup_by_key(|r| r.seq);
            out.push(Violation {
                invariant: "one_believed_leader",
                at_ms: grant.at_ms,
                message: format!(
                    "{} believed it led {} until {}ms, but storage granted {term} to {holder} at {}ms \
                     (storage's clock stepped at most {ahead_ms}ms, margin {}ms)",
                    b.host, b.term, b.until_ms, grant.at_ms, ctx.safety_margin_ms
                ),
                witnesses,
            });
        }
        out.sort_by_key(|v| v.at_ms);
        out
    }

    /// The least time between the end of a belief that ran its window out
    /// and the next grant of a later term to another holder. A belief cut
    /// short (the node stepped down, resigned or crashed) frees the lease on
    /// purpose, so a grant right after it is no near miss.
    fn slack_ms(&self, history: &[Record], ctx: &CheckCtx) -> Option<u64> {
        next_grants(history, ctx)
            .into_iter()
            .filter_map(|(b, next)| match next {
                Next::Overlap { .. } => Some(0),
                Next::After(grant) if b.ended_by.is_none() => Some(grant.at_ms - b.until_ms),
                Next::After(_) | Next::Excused => None,
            })
            .min()
    }
}

/// How the first grant of a later term to another holder fell against one
/// belief.
enum Next<'a> {
    /// Inside the belief, with the clocks within the margin: a broken promise.
    Overlap { grant: &'a Record, ahead_ms: i64 },
    /// Inside the belief, but the clocks were further apart than the margin.
    Excused,
    /// At or after the belief's end.
    After(&'a Record),
}

fn granted(r: &Record) -> (&str, Term) {
    match &r.ev {
        Ev::Db(DbEvent::LeaseGranted { holder, term, .. }) => (holder.as_str(), *term),
        _ => ("", Term(0)),
    }
}

/// Each belief with the first grant of a later term to another holder, if any.
/// Grants come in time order, so when that first one falls after the belief
/// every later one does too.
fn next_grants<'a>(history: &'a [Record], ctx: &CheckCtx) -> Vec<(Belief, Next<'a>)> {
    let grants: Vec<&Record> = history
        .iter()
        .filter(|r| matches!(r.ev, Ev::Db(DbEvent::LeaseGranted { .. })))
        .collect();
    let offsets = Offsets::of(history);
    let margin_ms = i64::try_from(ctx.safety_margin_ms).unwrap_or(i64::MAX);
    let mut out = Vec::new();
    for b in beliefs(history) {
        let own = holder_at(history, &b.host, b.seq);
        let Some(grant) = grants.iter().copied().find(|g| {
            let (holder, term) = granted(g);
            term > b.term && holder != own
        }) else {
            continue;
        };
        let next = if grant.at_ms >= b.until_ms {
            Next::After(grant)
        } else {
            // When the believer last asked: its window is `ttl - margin` long.
            let asked_ms = b.until_ms.saturating_sub(ctx.lease_ttl_ms);
            let ahead_ms =
                i64::try_from(offsets.storage_moved(asked_ms, grant.at_ms)).unwrap_or(i64::MAX);
            if ahead_ms > margin_ms {
                Next::Excused
            } else {
                Next::Overlap { grant, ahead_ms }
            }
        };
        out.push((b, next));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::checkers::test_support::{ctx, grant, lost, started, won_for, H};
    use crate::run::history::HarnessEvent;

    fn boot(skew_ms: i64) -> HarnessEvent {
        HarnessEvent::NodeBoot { boot: 1, skew_ms }
    }

    /// n1 wins T1 at 0 trusting it 4 s; n2 is granted T2 at `grant_at`.
    fn handover(grant_at: u64, n2_skew_ms: i64) -> H {
        H::new()
            .harness(0, "n1", boot(0))
            .harness(0, "n2", boot(n2_skew_ms))
            .node(0, "n1", started("n1#1"))
            .node(0, "n2", started("n2#1"))
            .db(0, grant("n1#1", 1))
            .node(0, "n1", won_for(1, 4_000))
            .db(grant_at, grant("n2#1", 2))
            .node(grant_at, "n2", won_for(2, 4_000))
    }

    /// n1 wins T1 at 0 trusting it 4 s and steps down at 2 s; n2 is granted T2
    /// at `grant_at`.
    fn stepped_down(grant_at: u64) -> H {
        H::new()
            .harness(0, "n1", boot(0))
            .node(0, "n1", started("n1#1"))
            .db(0, grant("n1#1", 1))
            .node(0, "n1", won_for(1, 4_000))
            .node(2_000, "n1", lost(1))
            .db(grant_at, grant("n2#1", 2))
    }

    #[test]
    fn a_grant_after_the_old_window_closed_passes() {
        let h = handover(5_000, 0);
        assert!(OneBelievedLeader.check(&h.0, &ctx(20_000)).is_empty());
    }

    #[test]
    fn slack_is_the_time_from_a_window_running_out_to_the_next_grant() {
        let slack = |h: H| OneBelievedLeader.slack_ms(&h.0, &ctx(20_000));
        assert_eq!(
            slack(handover(5_000, 0)),
            Some(1_000),
            "4 s window, grant at 5 s"
        );
        assert_eq!(slack(handover(3_000, 0)), Some(0), "a broken promise");
        // A leader that stepped down freed the lease: a grant right after is
        // no near miss.
        assert_eq!(slack(stepped_down(2_010)), None);
    }

    #[test]
    fn a_grant_while_the_old_leader_still_trusts_fires() {
        let h = handover(3_000, 0);
        let v = OneBelievedLeader.check(&h.0, &ctx(20_000));
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!(v[0].invariant, "one_believed_leader");
        assert_eq!(v[0].at_ms, 3_000);
        assert!(
            v[0].message.contains("n1 believed it led T1 until 4000ms"),
            "{}",
            v[0].message
        );
    }

    #[test]
    fn a_belief_that_ended_first_or_a_storage_step_beyond_the_margin_passes() {
        let ended = stepped_down(3_000);
        assert!(OneBelievedLeader.check(&ended.0, &ctx(20_000)).is_empty());
        // Storage's clock stepped 1.5 s ahead: the margin (1 s) cannot cover it.
        let stepped = handover(3_000, 0).harness(
            1_000,
            crate::world::db::DB_HOST,
            HarnessEvent::ClockJump { jump_ms: 1_500 },
        );
        let stepped = H(sorted(stepped.0));
        assert!(OneBelievedLeader.check(&stepped.0, &ctx(20_000)).is_empty());
        // n2's clock 10 minutes ahead has no say: storage judged the lease.
        let skewed = handover(3_000, 600_000);
        assert_eq!(OneBelievedLeader.check(&skewed.0, &ctx(20_000)).len(), 1);
    }

    /// The records in time order, renumbered, as a run records them.
    fn sorted(mut records: Vec<Record>) -> Vec<Record> {
        records.sort_by_key(|r| r.at_ms);
        for (i, r) in records.iter_mut().enumerate() {
            r.seq = i;
        }
        records
    }

    #[test]
    fn a_regrant_to_the_believers_own_holder_passes() {
        let h = H::new()
            .node(0, "n1", started("n1#1"))
            .node(0, "n1", won_for(1, 4_000))
            .db(1_000, grant("n1#1", 2));
        assert!(OneBelievedLeader.check(&h.0, &ctx(20_000)).is_empty());
    }
}
