//! I3 `one_leader_per_term`: the invariant, its reasons and limits are on [`OneLeaderPerTerm`].

use std::collections::BTreeMap;

use keel::events::Event;
use keel::storage::Term;

use super::{CheckCtx, Checker, Violation};
use crate::run::history::{DbEvent, Ev, HarnessEvent, Record};

/// I3 `one_leader_per_term`: terms strictly increase, each term has one holder,
/// no two terms' maintenance writes are both accepted in overlapping intervals
/// (accepted fenced writes never go back to an older term), and a live lease
/// passes to a new term only when nobody still believes in the old one under
/// the same holder id.
///
/// The last check is what makes holder ids per process incarnation matter:
/// storage re-grants a live lease to its own holder (a process that stepped
/// down and asks again), so if two processes shared one holder id, each acquire
/// would evict the other's live term while that process still believed it led.
pub struct OneLeaderPerTerm;

/// Per host: the holder id its running process holds leases as (from its
/// `RuntimeStarted`; a host that never said holds as its own name).
fn holder_of<'a>(holders: &BTreeMap<&'a str, &'a str>, host: &'a str) -> &'a str {
    holders.get(host).copied().unwrap_or(host)
}

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
        let mut holders: BTreeMap<&str, &str> = BTreeMap::new();
        // Per host: the TermWon of the term it believes it leads now.
        let mut believes: BTreeMap<&str, &Record> = BTreeMap::new();
        for r in history {
            let host = r.host.as_str();
            match &r.ev {
                Ev::Node(Event::RuntimeStarted { holder }) => {
                    holders.insert(host, holder);
                }
                Ev::Harness(HarnessEvent::Crash | HarnessEvent::NodeBoot { .. }) => {
                    believes.remove(host);
                }
                Ev::Node(Event::TermLost { term, .. })
                    if believes.get(host).is_some_and(
                        |w| matches!(w.ev, Ev::Node(Event::TermWon { term: t, .. }) if t == *term),
                    ) =>
                {
                    believes.remove(host);
                }
                Ev::Db(DbEvent::LeaseGranted {
                    holder,
                    term,
                    evicted,
                }) => {
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
                    if let Some(old) = evicted {
                        let believer = believes.iter().find(|(h, w)| {
                            holder_of(&holders, h) == holder.as_str()
                                && matches!(w.ev, Ev::Node(Event::TermWon { term: t, .. }) if t == *old)
                        });
                        if let Some((h, won)) = believer {
                            violation(
                                r,
                                format!(
                                    "{term} granted to {holder} over its live {old}, which {h} \
                                     still believes it leads under the same holder id"
                                ),
                                won,
                            );
                        }
                    }
                    last_grant = Some(r);
                    grants.insert(*term, r);
                }
                Ev::Node(Event::TermWon { term, .. }) => {
                    if let Some(prev) = winners.get(term) {
                        violation(
                            r,
                            format!("{term} won by both {} and {}", prev.host, r.host),
                            prev,
                        );
                    } else if let Some(grant) = grants.get(term) {
                        if let Ev::Db(DbEvent::LeaseGranted { holder, .. }) = &grant.ev {
                            if holder.as_str() != holder_of(&holders, host) {
                                violation(
                                    r,
                                    format!("{host} claims {term}, granted to {holder}"),
                                    grant,
                                );
                            }
                        }
                    }
                    winners.insert(*term, r);
                    believes.insert(host, r);
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
    use crate::run::checkers::test_support::{ctx, grant, started, won, H};

    fn regrant(holder: &str, t: u64, over: u64) -> DbEvent {
        DbEvent::LeaseGranted {
            holder: holder.into(),
            term: Term(t),
            evicted: Some(Term(over)),
        }
    }

    #[test]
    fn a_process_regranted_its_own_live_lease_after_stepping_down_passes() {
        let h = H::new()
            .node(0, "n1", started("n1#01"))
            .db(1, grant("n1#01", 1))
            .node(2, "n1", won(1))
            .node(3, "n1", crate::run::checkers::test_support::lost(1))
            .db(4, regrant("n1#01", 2, 1))
            .node(5, "n1", won(2));
        let v = OneLeaderPerTerm.check(&h.0, &ctx(20));
        assert!(v.is_empty(), "{v:?}");
    }

    #[test]
    fn fires_when_two_processes_share_a_holder_id_and_one_evicts_the_others_live_term() {
        // The replacement n1b starts under n1's holder id while n1 still leads.
        let h = H::new()
            .node(0, "n1", started("n1"))
            .db(1, grant("n1", 1))
            .node(2, "n1", won(1))
            .node(3, "n1b", started("n1"))
            .db(4, regrant("n1", 2, 1))
            .node(5, "n1b", won(2));
        let v = OneLeaderPerTerm.check(&h.0, &ctx(20));
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].message.contains("over its live T1"), "{}", v[0]);
        assert!(v[0].message.contains("n1 still believes"), "{}", v[0]);
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
