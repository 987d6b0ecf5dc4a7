//! `step_down_before_resign`: the invariant, its reasons and limits are on [`StepDownBeforeResign`].

use std::collections::BTreeMap;

use keel::events::Event;
use keel::storage::Term;

use super::{node_event, CheckCtx, Checker, Violation};
use crate::run::history::{Ev, HarnessEvent, Record};

/// `step_down_before_resign`: losing comes before resigning (`leadership`
/// design note). A node that won term `T` stops believing in it (`TermLost`)
/// before it resigns `T` in storage (`Resigned`), so no other node can be
/// granted the lease while this one still believes it leads; and a node whose
/// lease already moved on (`TermLost { reason: "lease_moved_on" }`) does not
/// resign at all. A resign of a term the node never won (a grant that came
/// back too late to trust, given straight back) is not judged.
///
/// Storage sees a resign as a resign: only the order of what the node
/// reported shows the belief outliving it.
pub struct StepDownBeforeResign;

const NAME: &str = "step_down_before_resign";

/// What a host's belief in a term it won is at one point of the history.
enum Tenure<'a> {
    /// Won and still believed.
    Believed(&'a Record),
    /// Lost, with the record that says why.
    Lost(&'a Record),
}

impl Checker for StepDownBeforeResign {
    fn name(&self) -> &'static str {
        NAME
    }

    fn check(&self, history: &[Record], _ctx: &CheckCtx) -> Vec<Violation> {
        let mut tenures: BTreeMap<(&str, Term), Tenure> = BTreeMap::new();
        let mut out = Vec::new();
        for r in history {
            let host = r.host.as_str();
            match &r.ev {
                Ev::Harness(HarnessEvent::Crash | HarnessEvent::NodeBoot { .. }) => {
                    tenures.retain(|(h, _), _| *h != host);
                    continue;
                }
                Ev::Node(_) => {}
                _ => continue,
            }
            match node_event(r) {
                Some(Event::TermWon { term, .. }) => {
                    tenures.insert((host, *term), Tenure::Believed(r));
                }
                Some(Event::TermLost { term, .. }) => {
                    tenures.insert((host, *term), Tenure::Lost(r));
                }
                Some(Event::Resigned { term, .. }) => {
                    let message = match tenures.get(&(host, *term)) {
                        Some(Tenure::Believed(won)) => Some((
                            format!("{host} resigned {term} while it still believed it led {term}"),
                            *won,
                        )),
                        Some(Tenure::Lost(lost)) if lost_to_another(lost) => Some((
                            format!("{host} resigned {term} after its lease had moved on"),
                            *lost,
                        )),
                        _ => None,
                    };
                    if let Some((message, why)) = message {
                        out.push(Violation {
                            invariant: NAME,
                            at_ms: r.at_ms,
                            message,
                            witnesses: vec![why.clone(), r.clone()],
                        });
                    }
                }
                _ => {}
            }
        }
        out
    }
}

fn lost_to_another(lost: &Record) -> bool {
    matches!(node_event(lost), Some(Event::TermLost { reason, .. }) if reason == "lease_moved_on")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::checkers::test_support::{ctx, won, H};

    fn lost(t: u64, reason: &str) -> Event {
        Event::TermLost {
            term: Term(t),
            reason: reason.into(),
        }
    }
    fn resigned(t: u64) -> Event {
        Event::Resigned {
            term: Term(t),
            accepted: true,
        }
    }

    #[test]
    fn resigning_after_the_belief_ended_or_a_term_never_won_passes() {
        let h = H::new()
            .node(0, "n1", won(1))
            .node(1_000, "n1", lost(1, "resigned"))
            .node(1_010, "n1", resigned(1))
            .node(2_000, "n2", resigned(2))
            .node(3_000, "n1", won(3))
            .node(4_000, "n1", lost(3, "lease_moved_on"));
        assert!(StepDownBeforeResign.check(&h.0, &ctx(10_000)).is_empty());
    }

    #[test]
    fn fires_on_a_resign_before_the_step_down_or_after_the_lease_moved_on() {
        let h = H::new()
            .node(0, "n1", won(1))
            .node(1_000, "n1", resigned(1))
            .node(1_010, "n1", lost(1, "resigned"))
            .node(2_000, "n1", won(2))
            .node(3_000, "n1", lost(2, "lease_moved_on"))
            .node(3_010, "n1", resigned(2));
        let v = StepDownBeforeResign.check(&h.0, &ctx(10_000));
        assert_eq!(v.len(), 2, "{v:?}");
        assert!(
            v[0].message.contains("while it still believed it led T1"),
            "{}",
            v[0].message
        );
        assert!(
            v[1].message.contains("after its lease had moved on"),
            "{}",
            v[1].message
        );
    }
}
