//! I5 `no_stale_resign`: the invariant, its reasons and limits are on [`NoStaleResign`].

use std::collections::BTreeMap;

use keel::events::Event;
use keel::storage::Term;

use super::{last_each, CheckCtx, Checker, Violation};
use crate::run::history::{Ev, HarnessEvent, Record};

/// I5 `no_stale_resign`: a node only asks to resign a term that it holds at that
/// moment. Holding means: it won the term, and has not since lost it, crashed or
/// rebooted (the node's own view, which is what it must check before resigning).
pub struct NoStaleResign;

impl Checker for NoStaleResign {
    fn name(&self) -> &'static str {
        "no_stale_resign"
    }

    fn check(&self, history: &[Record], _ctx: &CheckCtx) -> Vec<Violation> {
        let mut held: BTreeMap<&str, Term> = BTreeMap::new();
        let mut out = Vec::new();
        for r in history {
            let host = r.host.as_str();
            match &r.ev {
                Ev::Node(Event::TermWon { term, .. }) => {
                    held.insert(host, *term);
                }
                Ev::Node(Event::TermLost { term, .. }) if held.get(host) == Some(term) => {
                    held.remove(host);
                }
                Ev::Harness(HarnessEvent::Crash | HarnessEvent::NodeBoot { .. }) => {
                    held.remove(host);
                }
                Ev::Node(Event::ResignRequested { term }) if held.get(host) != Some(term) => {
                    let now = match held.get(host) {
                        Some(t) => format!("it holds {t}"),
                        None => "it holds no term".to_owned(),
                    };
                    let mut witnesses = last_each(
                        &history[..r.seq],
                        host,
                        &[
                            &|e| matches!(e, Event::TermWon { term: t, .. } if t == term),
                            &|e| matches!(e, Event::TermLost { term: t, .. } if t == term),
                            &|e| matches!(e, Event::TermWon { .. }),
                        ],
                    );
                    witnesses.push(r.clone());
                    out.push(Violation {
                        invariant: "no_stale_resign",
                        at_ms: r.at_ms,
                        message: format!("{host} asked to resign {term} but {now}"),
                        witnesses,
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
    use crate::run::checkers::test_support::{ctx, lost, won, H};

    fn resign(t: u64) -> Event {
        Event::ResignRequested { term: Term(t) }
    }

    #[test]
    fn resigning_a_held_term_passes() {
        let h = H::new()
            .node(1, "n1", won(3))
            .node(2, "n1", resign(3))
            .node(3, "n1", lost(3));
        assert!(NoStaleResign.check(&h.0, &ctx(10)).is_empty());
    }

    #[test]
    fn fires_on_resign_after_loss_and_after_reboot() {
        let h = H::new()
            .node(1, "n1", won(3))
            .node(2, "n1", lost(3))
            .node(3, "n1", resign(3))
            .node(4, "n2", won(4))
            .harness(
                5,
                "n2",
                HarnessEvent::NodeBoot {
                    boot: 2,
                    skew_ms: 0,
                },
            )
            .node(6, "n2", resign(4));
        let v = NoStaleResign.check(&h.0, &ctx(10));
        assert_eq!(v.len(), 2, "{v:?}");
        assert!(
            v[0].message
                .contains("n1 asked to resign T3 but it holds no term"),
            "{}",
            v[0]
        );
        let seqs: Vec<usize> = v[0].witnesses.iter().map(|w| w.seq).collect();
        assert_eq!(seqs, vec![0, 1, 2]);
    }

    #[test]
    fn fires_on_resign_of_an_old_term_while_holding_a_newer_one() {
        let h = H::new()
            .node(1, "n1", won(3))
            .node(2, "n1", lost(3))
            .node(3, "n1", won(5))
            .node(4, "n1", resign(3));
        let v = NoStaleResign.check(&h.0, &ctx(10));
        assert_eq!(v.len(), 1);
        assert!(v[0].message.contains("it holds T5"));
    }
}
