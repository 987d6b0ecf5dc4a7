//! `leader_resigns_at_shutdown`: the invariant, its reasons and limits are on [`LeaderResignsAtShutdown`].

use std::collections::BTreeMap;

use keel::events::Event;
use keel::storage::Term;

use super::health::Impaired;
use super::{CheckCtx, Checker, Violation};
use crate::run::history::{DbEvent, Ev, HarnessEvent, Record};

/// `leader_resigns_at_shutdown`: a leader shut down gracefully resigns its
/// term, so a peer takes over without waiting out the lease (`Elector::run`:
/// "on shutdown a held term is resigned"). A host that believes it leads `T`
/// (`TermWon`, no `TermLost` yet) when its `ShutdownBegan` must ask to
/// resign `T` (its `Resigned`, whatever storage answered, or storage's
/// `ResignApplied`) before its `ShutdownEnded`, unless it lost `T` for
/// another reason meanwhile, the lease moved on to a later term, the host
/// was cut off or frozen, or storage faulty, during the shutdown (a resign is
/// one best-effort call), or the deadline aborted the elector before its
/// resign could land.
///
/// Storage cannot tell a resign that was never sent: the lease simply runs
/// out its TTL, and only then does a peer take over.
pub struct LeaderResignsAtShutdown;

const NAME: &str = "leader_resigns_at_shutdown";

/// A leader's shutdown that has not yet seen its term resigned.
struct Owed<'a> {
    term: Term,
    began: &'a Record,
    /// The term was lost for another reason, or moved on: nothing is owed.
    excused: bool,
}

impl Checker for LeaderResignsAtShutdown {
    fn name(&self) -> &'static str {
        NAME
    }

    fn check(&self, history: &[Record], _ctx: &CheckCtx) -> Vec<Violation> {
        let impaired = Impaired::of(history);
        let mut leads: BTreeMap<&str, Term> = BTreeMap::new();
        let mut owed: BTreeMap<&str, Owed> = BTreeMap::new();
        let mut out = Vec::new();
        for r in history {
            let host = r.host.as_str();
            match &r.ev {
                Ev::Node(Event::TermWon { term, .. }) => {
                    leads.insert(host, *term);
                }
                Ev::Node(Event::TermLost { term, reason }) => {
                    leads.remove(host);
                    if let Some(o) = owed.get_mut(host).filter(|o| o.term == *term) {
                        o.excused |= reason != "shutdown";
                    }
                }
                Ev::Node(Event::ShutdownBegan { .. }) => {
                    if let Some(term) = leads.get(host) {
                        let term = *term;
                        owed.insert(
                            host,
                            Owed {
                                term,
                                began: r,
                                excused: false,
                            },
                        );
                    }
                }
                Ev::Db(DbEvent::ResignApplied { term, .. }) => {
                    owed.retain(|_, o| o.term != *term);
                }
                // The node asked; storage may have refused a lease that had
                // moved on (swarm seed 3003078: a peer whose clock ran 13 s
                // ahead had taken it), or not answered.
                Ev::Node(Event::Resigned { term, .. })
                    if owed.get(host).is_some_and(|o| o.term == *term) =>
                {
                    owed.remove(host);
                }
                Ev::Db(DbEvent::LeaseGranted { term, .. }) => {
                    for o in owed.values_mut() {
                        o.excused |= *term > o.term;
                    }
                }
                Ev::Harness(HarnessEvent::Crash | HarnessEvent::NodeBoot { .. }) => {
                    owed.remove(host);
                    leads.remove(host);
                }
                Ev::Node(Event::ShutdownEnded { aborted, .. }) => {
                    leads.remove(host);
                    let Some(o) = owed.remove(host) else {
                        continue;
                    };
                    // A deadline shorter than the resign's round trip aborts
                    // the elector mid-call (a shrunk script's 15 ms deadline).
                    let cut_short = aborted.iter().any(|task| task == "elector");
                    if o.excused || cut_short || impaired.during(host, o.began.at_ms, r.at_ms) {
                        continue;
                    }
                    out.push(Violation {
                        invariant: NAME,
                        at_ms: r.at_ms,
                        message: format!(
                            "{host} led {} when its shutdown began and ended it without resigning: \
                             a peer must wait out the lease",
                            o.term
                        ),
                        witnesses: vec![o.began.clone(), r.clone()],
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
    use crate::run::checkers::test_support::{ctx, H};

    fn won() -> Event {
        Event::TermWon {
            term: Term(3),
            trusted_for_ms: 4_000,
        }
    }
    fn lost(reason: &str) -> Event {
        Event::TermLost {
            term: Term(3),
            reason: reason.into(),
        }
    }
    fn began() -> Event {
        Event::ShutdownBegan { deadline_ms: 2_000 }
    }
    fn ended() -> Event {
        Event::ShutdownEnded {
            aborted: Vec::new(),
            released: Vec::new(),
        }
    }
    fn resigned() -> DbEvent {
        DbEvent::ResignApplied {
            holder: "n1#a".into(),
            term: Term(3),
        }
    }

    #[test]
    fn a_resigned_or_moved_on_or_cut_off_leader_passes() {
        let resigned_h = H::new()
            .node(0, "n1", won())
            .node(1_000, "n1", began())
            .node(1_000, "n1", lost("shutdown"))
            .db(1_020, resigned())
            .node(1_060, "n1", ended());
        assert!(LeaderResignsAtShutdown
            .check(&resigned_h.0, &ctx(10_000))
            .is_empty());
        let cut = H::new()
            .node(0, "n1", won())
            .harness(500, "n1", HarnessEvent::Partition { peer: "db".into() })
            .node(1_000, "n1", began())
            .node(1_000, "n1", lost("shutdown"))
            .node(3_000, "n1", ended());
        assert!(LeaderResignsAtShutdown
            .check(&cut.0, &ctx(10_000))
            .is_empty());
        let aborted = H::new()
            .node(0, "n1", won())
            .node(1_000, "n1", began())
            .node(1_000, "n1", lost("shutdown"))
            .node(
                1_015,
                "n1",
                Event::ShutdownEnded {
                    aborted: vec!["elector".into()],
                    released: Vec::new(),
                },
            );
        assert!(LeaderResignsAtShutdown
            .check(&aborted.0, &ctx(10_000))
            .is_empty());
        let refused = H::new()
            .node(0, "n1", won())
            .node(1_000, "n1", began())
            .node(1_000, "n1", lost("shutdown"))
            .node(
                1_030,
                "n1",
                Event::Resigned {
                    term: Term(3),
                    accepted: false,
                },
            )
            .node(1_040, "n1", ended());
        assert!(LeaderResignsAtShutdown
            .check(&refused.0, &ctx(10_000))
            .is_empty());
    }

    #[test]
    fn fires_when_a_healthy_leader_shuts_down_without_resigning() {
        let h = H::new()
            .node(0, "n1", won())
            .node(1_000, "n1", began())
            .node(1_000, "n1", lost("shutdown"))
            .node(1_060, "n1", ended());
        let v = LeaderResignsAtShutdown.check(&h.0, &ctx(10_000));
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(
            v[0].message.contains("n1 led T3 when its shutdown began"),
            "{}",
            v[0].message
        );
    }
}
