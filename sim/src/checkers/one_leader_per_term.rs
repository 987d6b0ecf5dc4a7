//! I3 `one_leader_per_term`: terms strictly increase, each term has one holder,
//! and no two terms' maintenance writes are both accepted in overlapping
//! intervals (accepted fenced writes never go back to an older term).

use std::collections::BTreeMap;

use keel::events::Event;
use keel::storage::Term;

use super::{CheckCtx, Checker, Violation};
use crate::history::{DbEvent, Ev, Record};

/// See the [module docs](self).
pub struct OneLeaderPerTerm;

impl Checker for OneLeaderPerTerm {
    fn name(&self) -> &'static str {
        "one_leader_per_term"
    }

    fn check(&self, history: &[Record], _ctx: &CheckCtx) -> Vec<Violation> {
        let mut out = Vec::new();
        let mut violation = |r: &Record, message: String, earlier: &Record| {
            out.push(Violation {
                invariant: "one_leader_per_term",
                at_ms: r.at_ms,
                message,
                witnesses: vec![earlier.clone(), r.clone()],
            });
        };
        let mut last_grant: Option<&Record> = None;
        let mut grants: BTreeMap<Term, &Record> = BTreeMap::new();
        let mut winners: BTreeMap<Term, &Record> = BTreeMap::new();
        let mut last_fenced: Option<(Term, &Record)> = None;
        for r in history {
            match &r.ev {
                Ev::Db(DbEvent::LeaseGranted { holder, term }) => {
                    if let Some(prev) = last_grant {
                        if let Ev::Db(DbEvent::LeaseGranted {
                            term: prev_term, ..
                        }) = &prev.ev
                        {
                            if term <= prev_term {
                                violation(
                                    r,
                                    format!("{term} granted to {holder} after {prev_term}"),
                                    prev,
                                );
                            }
                        }
                    }
                    last_grant = Some(r);
                    grants.insert(*term, r);
                }
                Ev::Node(Event::TermWon { term }) => {
                    if let Some(prev) = winners.get(term) {
                        violation(
                            r,
                            format!("{term} won by both {} and {}", prev.host, r.host),
                            prev,
                        );
                    } else if let Some(grant) = grants.get(term) {
                        if let Ev::Db(DbEvent::LeaseGranted { holder, .. }) = &grant.ev {
                            if *holder != r.host {
                                violation(
                                    r,
                                    format!("{} claims {term}, granted to {holder}", r.host),
                                    grant,
                                );
                            }
                        }
                    }
                    winners.insert(*term, r);
                }
                Ev::Db(DbEvent::HeartbeatAccepted { holder, term }) => {
                    if let Some((newest, prev)) = last_fenced {
                        if *term < newest {
                            let message =
                                format!("{holder}'s {term} write accepted after a {newest} write");
                            violation(r, message, prev);
                        }
                    }
                    if last_fenced.is_none_or(|(t, _)| *term >= t) {
                        last_fenced = Some((*term, r));
                    }
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
    use crate::checkers::test_support::{ctx, won, H};

    fn grant(holder: &str, t: u64) -> DbEvent {
        DbEvent::LeaseGranted {
            holder: holder.into(),
            term: Term(t),
        }
    }

    #[test]
    fn a_clean_handover_passes() {
        let h = H::new()
            .db(1, grant("n1", 1))
            .node(2, "n1", won(1))
            .db(9, grant("n2", 2))
            .node(10, "n2", won(2));
        assert!(OneLeaderPerTerm.check(&h.0, &ctx(20)).is_empty());
    }

    #[test]
    fn fires_on_a_term_won_twice() {
        let h = H::new()
            .db(1, grant("n1", 1))
            .node(2, "n1", won(1))
            .node(3, "n2", won(1));
        let v = OneLeaderPerTerm.check(&h.0, &ctx(20));
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].message.contains("won by both"), "{}", v[0]);
    }

    #[test]
    fn fires_on_a_term_granted_twice_and_on_a_stale_fenced_write() {
        let h = H::new()
            .db(1, grant("n1", 2))
            .db(2, grant("n2", 2))
            .db(
                3,
                DbEvent::HeartbeatAccepted {
                    holder: "n2".into(),
                    term: Term(3),
                },
            )
            .db(
                4,
                DbEvent::HeartbeatAccepted {
                    holder: "n1".into(),
                    term: Term(2),
                },
            );
        let v = OneLeaderPerTerm.check(&h.0, &ctx(20));
        assert_eq!(v.len(), 2, "{v:?}");
        assert_eq!(v[1].witnesses.len(), 2);
    }
}
