//! I4 `no_cross_term_teardown`: the invariant, its reasons and limits are on [`NoCrossTermTeardown`].

use keel::events::Event;

use super::{last_each, node_event, CheckCtx, Checker, Violation};
use crate::run::history::Record;

/// I4 `no_cross_term_teardown`: nothing started for term T stops, resigns or
/// alters what another term started. Every stop of a maintainer records the term
/// that asked and the term whose services stopped; they must be the same.
pub struct NoCrossTermTeardown;

impl Checker for NoCrossTermTeardown {
    fn name(&self) -> &'static str {
        "no_cross_term_teardown"
    }

    fn check(&self, history: &[Record], _ctx: &CheckCtx) -> Vec<Violation> {
        let mut out = Vec::new();
        for r in history {
            let Some(Event::MaintainerStopped { asked_by, affected }) = node_event(r) else {
                continue;
            };
            if asked_by == affected {
                continue;
            }
            // Witnesses: how each term came to be on this host, the stale attempt,
            // then the stop itself.
            let host = r.host.as_str();
            let mut witnesses = last_each(
                &history[..r.seq],
                host,
                &[
                    &|e| matches!(e, Event::TermWon { term, .. } if term == asked_by),
                    &|e| matches!(e, Event::MaintainerStartAttempt { term, .. } if term == asked_by),
                    &|e| matches!(e, Event::TermWon { term, .. } if term == affected),
                    &|e| matches!(e, Event::MaintainerStarted { term } if term == affected),
                ],
            );
            witnesses.push(r.clone());
            out.push(Violation {
                invariant: "no_cross_term_teardown",
                at_ms: r.at_ms,
                message: format!(
                    "{}: work for {asked_by} stopped the maintainer of {affected}",
                    r.host
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
    use crate::run::checkers::test_support::{ctx, lost, won, H};
    use keel::storage::Term;

    fn stopped(asked_by: u64, affected: u64) -> Event {
        Event::MaintainerStopped {
            asked_by: Term(asked_by),
            affected: Term(affected),
        }
    }

    #[test]
    fn a_term_stopping_its_own_services_passes() {
        let h = H::new()
            .node(1, "n1", won(1))
            .node(2, "n1", Event::MaintainerStarted { term: Term(1) })
            .node(3, "n1", lost(1))
            .node(4, "n1", stopped(1, 1));
        assert!(NoCrossTermTeardown.check(&h.0, &ctx(10)).is_empty());
    }

    #[test]
    fn fires_when_a_stale_retry_stops_a_newer_term() {
        let h = H::new()
            .node(1, "n1", won(6))
            .node(
                2,
                "n1",
                Event::MaintainerStartAttempt {
                    term: Term(6),
                    attempt: 1,
                },
            )
            .node(3, "n1", lost(6))
            .node(4, "n1", won(7))
            .node(
                5,
                "n1",
                Event::MaintainerStartAttempt {
                    term: Term(7),
                    attempt: 1,
                },
            )
            .node(6, "n1", Event::MaintainerStarted { term: Term(7) })
            .node(7, "n1", stopped(6, 7));
        let v = NoCrossTermTeardown.check(&h.0, &ctx(10));
        assert_eq!(v.len(), 1, "{v:?}");
        let seqs: Vec<usize> = v[0].witnesses.iter().map(|w| w.seq).collect();
        assert_eq!(
            seqs,
            vec![0, 1, 3, 5, 6],
            "won T6, stale attempt, won T7, started T7, stop"
        );
    }
}
