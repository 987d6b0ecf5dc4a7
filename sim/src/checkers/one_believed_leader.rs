//! `one_believed_leader`: no node believes it leads a term once storage has
//! granted a later term to another holder, judged in true time: so no two
//! nodes believe they lead at the same instant, within the clock error the
//! safety margin allows.
//!
//! Storage judges a lease's expiry on the asking node's wall clock, and a
//! node trusts a grant for `lease_ttl - safety_margin` from the moment it
//! asked. A peer can therefore be granted the next term while the old leader
//! still trusts its own only if the peer's clock ran more than the margin
//! ahead of the leader's: such an overlap is excused, any other is a broken
//! promise even though term fencing keeps storage clean.

use std::collections::BTreeSet;

use keel::storage::Term;

use super::belief::{beliefs, holder_at, Offsets};
use super::{CheckCtx, Checker, Violation};
use crate::history::{DbEvent, Ev, Record};

/// See the [module docs](self).
pub struct OneBelievedLeader;

impl Checker for OneBelievedLeader {
    fn name(&self) -> &'static str {
        "one_believed_leader"
    }

    fn check(&self, history: &[Record], ctx: &CheckCtx) -> Vec<Violation> {
        let grants: Vec<(&Record, &str, Term)> = history
            .iter()
            .filter_map(|r| match &r.ev {
                Ev::Db(DbEvent::LeaseGranted { holder, term, .. }) => {
                    Some((r, holder.as_str(), *term))
                }
                _ => None,
            })
            .collect();
        let offsets = Offsets::of(history);
        let mut out: Vec<Violation> = Vec::new();
        // One report per tenure: its first broken belief shows the cause.
        let mut reported: BTreeSet<(String, Term)> = BTreeSet::new();
        for b in beliefs(history) {
            if reported.contains(&(b.host.clone(), b.term)) {
                continue;
            }
            let own = holder_at(history, &b.host, b.seq);
            let Some((grant, holder, term)) = grants
                .iter()
                .copied()
                .find(|(g, holder, term)| *term > b.term && g.at_ms < b.until_ms && *holder != own)
            else {
                continue;
            };
            // When the believer last asked: its window is `ttl - margin` long.
            let asked_ms = b.until_ms.saturating_sub(ctx.lease_ttl_ms);
            let ahead_ms =
                offsets.ahead_of(&b.host, (asked_ms, b.until_ms), (asked_ms, grant.at_ms));
            if ahead_ms > i64::try_from(ctx.safety_margin_ms).unwrap_or(i64::MAX) {
                continue;
            }
            let mut witnesses = vec![history[b.seq].clone(), grant.clone()];
            if let Some(end) = b.ended_by {
                witnesses.push(history[end].clone());
            }
            witnesses.sort_by_key(|r| r.seq);
            witnesses.dedup_by_key(|r| r.seq);
            reported.insert((b.host.clone(), b.term));
            out.push(Violation {
                invariant: "one_believed_leader",
                at_ms: grant.at_ms,
                message: format!(
                    "{} believed it led {} until {}ms, but storage granted {term} to {holder} at {}ms \
                     (clocks at most {ahead_ms}ms apart, margin {}ms)",
                    b.host, b.term, b.until_ms, grant.at_ms, ctx.safety_margin_ms
                ),
                witnesses,
            });
        }
        out.sort_by_key(|v| v.at_ms);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkers::test_support::{ctx, grant, lost, won_for, H};
    use crate::history::HarnessEvent;
    use keel::events::Event;

    fn started(holder: &str) -> Event {
        Event::RuntimeStarted {
            holder: holder.into(),
        }
    }
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

    #[test]
    fn a_grant_after_the_old_window_closed_passes() {
        let h = handover(5_000, 0);
        assert!(OneBelievedLeader.check(&h.0, &ctx(20_000)).is_empty());
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
    fn a_belief_that_ended_first_or_skew_beyond_the_margin_passes() {
        let ended = H::new()
            .harness(0, "n1", boot(0))
            .node(0, "n1", started("n1#1"))
            .db(0, grant("n1#1", 1))
            .node(0, "n1", won_for(1, 4_000))
            .node(2_000, "n1", lost(1))
            .db(3_000, grant("n2#1", 2));
        assert!(OneBelievedLeader.check(&ended.0, &ctx(20_000)).is_empty());
        // n2's clock 1.5 s ahead: the margin (1 s) cannot cover it.
        let skewed = handover(3_000, 1_500);
        assert!(OneBelievedLeader.check(&skewed.0, &ctx(20_000)).is_empty());
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
