//! `leader_acts_in_trust`: the invariant, its reasons and limits are on [`LeaderActsInTrust`].

use super::belief::beliefs;
use super::no_early_rescue::STAMP_SLACK_MS;
use super::{CheckCtx, Checker, Violation};
use crate::run::history::{Ev, Record};
use keel::events::Event;

/// `leader_acts_in_trust`: a leader's service acts for term `T` only while its
/// node trusts `T`, judged in true time against the node's own reported trust
/// windows.
///
/// The term's token stops its services only once the maintainer hears that `T`
/// is gone. A process thawing from a freeze runs whatever came due, and a loop
/// that acts on a tick without asking `ServiceCtx::leads` would act for a term
/// whose window closed while it slept, while a peer leads the next one.
pub struct LeaderActsInTrust;

impl Checker for LeaderActsInTrust {
    fn name(&self) -> &'static str {
        "leader_acts_in_trust"
    }

    fn check(&self, history: &[Record], _ctx: &CheckCtx) -> Vec<Violation> {
        let beliefs = beliefs(history);
        let mut out = Vec::new();
        for r in history {
            let Ev::Node(Event::LeaderActed { service, term }) = &r.ev else {
                continue;
            };
            let mine: Vec<_> = beliefs
                .iter()
                .filter(|b| b.host == r.host && b.term == *term && b.seq < r.seq)
                .collect();
            // The act may be stamped a step after it asked `leads` (clock_skew
            // seed 3009482: acted 7 ms past a window, inside one step).
            let asked_ms = r.at_ms.saturating_sub(STAMP_SLACK_MS.unsigned_abs());
            if mine
                .iter()
                .any(|b| b.from_ms <= r.at_ms && asked_ms <= b.until_ms)
            {
                continue;
            }
            let last = mine.iter().max_by_key(|b| b.until_ms);
            let (why, mut witnesses) = match last {
                Some(b) => (
                    format!("its trust window closed at {}ms", b.until_ms),
                    vec![history[b.seq].clone()],
                ),
                None => ("it never trusted that term".to_owned(), Vec::new()),
            };
            if let Some(end) = last.and_then(|b| b.ended_by) {
                witnesses.push(history[end].clone());
            }
            witnesses.push(r.clone());
            out.push(Violation {
                invariant: "leader_acts_in_trust",
                at_ms: r.at_ms,
                message: format!(
                    "{}'s {service} acted for {term} at {}ms, but {why}",
                    r.host, r.at_ms
                ),
                witnesses,
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::checkers::test_support::{ctx, won_for, H};
    use keel::storage::Term;

    fn acted(t: u64) -> Event {
        Event::LeaderActed {
            service: "rescuer".into(),
            term: Term(t),
        }
    }

    #[test]
    fn acts_inside_the_window_pass() {
        let h = H::new()
            .node(0, "n1", won_for(1, 4_000))
            .node(1_000, "n1", acted(1))
            .node(
                1_500,
                "n1",
                Event::TermRenewed {
                    term: Term(1),
                    trusted_for_ms: 4_000,
                },
            )
            .node(5_000, "n1", acted(1))
            // Stamped a step past the window: it asked inside.
            .node(5_515, "n1", acted(1));
        assert!(LeaderActsInTrust.check(&h.0, &ctx(10_000)).is_empty());
    }

    #[test]
    fn an_act_after_the_window_closed_fires() {
        // Frozen from 1 s to 9 s: the window closed at 4 s, the loop acts on
        // waking, before the elector steps down.
        let h = H::new()
            .node(0, "n1", won_for(1, 4_000))
            .node(9_000, "n1", acted(1));
        let v = LeaderActsInTrust.check(&h.0, &ctx(10_000));
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(
            v[0].message.contains("window closed at 4000ms"),
            "{}",
            v[0].message
        );
        let other_host = H::new()
            .node(0, "n1", won_for(1, 4_000))
            .node(10, "n2", acted(1));
        assert_eq!(
            LeaderActsInTrust.check(&other_host.0, &ctx(10_000)).len(),
            1
        );
    }
}
