//! `belief_within_lease`: the invariant, its reasons and limits are on [`BeliefWithinLease`].

use std::collections::BTreeSet;

use keel::storage::Term;

use super::belief::{beliefs, holder_at};
use super::{CheckCtx, Checker, Violation};
use crate::run::history::{DbEvent, Ev, Record};

/// `belief_within_lease`: no node trusts a term for longer than storage
/// granted it. Every belief ends, in true time, within `lease_ttl` of the
/// last grant or renewal of that term to that holder that storage applied.
///
/// A node counts its trust window (`lease_ttl - safety_margin`) from when it
/// *sent* the request, which is no later than when storage applied it, and
/// the margin covers its clock running slow; so a belief that outlives the
/// lease it was written is a broken promise whether or not a peer happened
/// to take the lease in the overlap (what [`one_believed_leader`] needs to
/// see it). Storage's clock has no say: the bound is in true time from the
/// write, so neither a step nor a drift of storage's clock excuses or
/// causes a report; a belief beside a fast storage clock that a peer's grant
/// cut into is [`one_believed_leader`]'s to judge. A belief with no write of
/// its holder and term on record (a holder id the history cannot tie to its
/// node) is not judged.
///
/// [`one_believed_leader`]: super::OneBelievedLeader
pub struct BeliefWithinLease;

impl Checker for BeliefWithinLease {
    fn name(&self) -> &'static str {
        "belief_within_lease"
    }

    fn check(&self, history: &[Record], ctx: &CheckCtx) -> Vec<Violation> {
        let writes: Vec<&Record> = history.iter().filter(|r| written(r).is_some()).collect();
        let mut out = Vec::new();
        // One report per tenure: its first broken belief shows the cause.
        let mut reported: BTreeSet<(String, Term)> = BTreeSet::new();
        for b in beliefs(history) {
            let own = holder_at(history, &b.host, b.seq);
            let last = writes
                .iter()
                .copied()
                .take_while(|w| w.at_ms < b.until_ms)
                .filter(|w| written(w) == Some((own, b.term)))
                .last();
            let Some(write) = last else { continue };
            let expiry_ms = write.at_ms + ctx.lease_ttl_ms;
            if b.until_ms <= expiry_ms || !reported.insert((b.host.clone(), b.term)) {
                continue;
            }
            let mut witnesses = vec![write.clone(), history[b.seq].clone()];
            witnesses.sort_by_key(|r| r.seq);
            out.push(Violation {
                invariant: "belief_within_lease",
                at_ms: expiry_ms,
                message: format!(
                    "{} believed it led {} until {}ms, but storage last wrote its lease at {}ms, \
                     so the lease ran out at {expiry_ms}ms (lease_ttl {}ms)",
                    b.host, b.term, b.until_ms, write.at_ms, ctx.lease_ttl_ms
                ),
                witnesses,
            });
        }
        out.sort_by_key(|v| v.at_ms);
        out
    }
}

/// The holder and term a grant or renewal wrote.
fn written(r: &Record) -> Option<(&str, Term)> {
    match &r.ev {
        Ev::Db(
            DbEvent::LeaseGranted { holder, term, .. } | DbEvent::LeaseRenewed { holder, term },
        ) => Some((holder.as_str(), *term)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::checkers::test_support::{
        ctx, grant, lost, renewal, renewed, started, won_for, H,
    };

    /// n1 wins T1 at 0 and renews at 1,000: storage applies the renewal
    /// at once, the reply arrives at `reply_ms`, trusted for `for_ms` from
    /// there, and no renewal lands after it.
    fn renewed_late(reply_ms: u64, for_ms: u64) -> H {
        H::new()
            .node(0, "n1", started("n1#a"))
            .db(0, grant("n1#a", 1))
            .node(0, "n1", won_for(1, 4_000))
            .db(1_000, renewal("n1#a", 1))
            .node(reply_ms, "n1", renewed(1, for_ms))
    }

    #[test]
    fn a_window_counted_from_the_send_ends_inside_the_lease() {
        // A late reply, trusted from when it was sent: 1,000 + 4,000.
        let h = renewed_late(3_000, 2_000);
        assert!(BeliefWithinLease.check(&h.0, &ctx(60_000)).is_empty());
    }

    #[test]
    fn a_window_counted_from_a_late_reply_outlives_the_lease_and_fires() {
        // Trusted from the reply: until 7,000, and the lease written at
        // 1,000 ran out at 6,000. No peer took it; the belief is still wrong.
        let h = renewed_late(3_000, 4_000);
        let v = BeliefWithinLease.check(&h.0, &ctx(60_000));
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!(v[0].at_ms, 6_000);
        assert!(v[0].message.contains("until 7000ms"), "{}", v[0].message);
        assert_eq!(v[0].witnesses.len(), 2);
    }

    #[test]
    fn a_later_renewal_extends_the_lease_and_a_lost_term_ends_the_belief() {
        // The same late reply, but the next renewal lands at 2,000.
        let h = renewed_late(3_000, 4_000).db(2_000, renewal("n1#a", 1));
        assert!(BeliefWithinLease.check(&h.0, &ctx(60_000)).is_empty());
        // Or the node stepped down at 5,500, inside the lease.
        let h = renewed_late(3_000, 4_000).node(5_500, "n1", lost(1));
        assert!(BeliefWithinLease.check(&h.0, &ctx(60_000)).is_empty());
    }

    #[test]
    fn another_holders_writes_do_not_extend_a_nodes_lease() {
        // A replacement process under the same node name (another
        // incarnation) renewed T1 at 2,000: not n1#a's lease.
        let h = renewed_late(3_000, 4_000).db(2_000, renewal("n1#b", 1));
        assert_eq!(BeliefWithinLease.check(&h.0, &ctx(60_000)).len(), 1);
    }
}
