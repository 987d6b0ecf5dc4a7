//! I11 `periodic_once`: the invariant, its reasons and limits are on [`PeriodicOnce`].

use std::collections::BTreeMap;

use keel::events::Event;

use super::{CheckCtx, Checker, Violation};
use crate::run::history::{DbEvent, Ev, Record};

/// I11 `periodic_once`: a periodic job fires at most once per schedule slot
/// across the cluster, across failovers.
///
/// Two counts per `(name, slot_ms)`, each at most one:
///
/// * storage's `PeriodicInserted { name, slot_ms, .. }` records (what the database
///   actually inserted);
/// * nodes' `PeriodicFired { name, slot_ms, inserted: true, .. }` records, on any
///   host (what leaders believe they inserted).
///
/// A second record of either kind is a violation whose witnesses are the first
/// and the second record.
pub struct PeriodicOnce;

const NAME: &str = "periodic_once";

impl Checker for PeriodicOnce {
    fn name(&self) -> &'static str {
        NAME
    }

    fn check(&self, history: &[Record], _ctx: &CheckCtx) -> Vec<Violation> {
        let mut inserted: BTreeMap<(&str, i64), &Record> = BTreeMap::new();
        let mut fired: BTreeMap<(&str, i64), &Record> = BTreeMap::new();
        let mut out = Vec::new();
        for r in history {
            let (seen, name, slot_ms, what) = match &r.ev {
                Ev::Db(DbEvent::PeriodicInserted { name, slot_ms, .. }) => {
                    (&mut inserted, name, *slot_ms, "inserted by storage")
                }
                Ev::Node(Event::PeriodicFired {
                    name,
                    slot_ms,
                    inserted: true,
                    ..
                }) => (&mut fired, name, *slot_ms, "reported inserted by a leader"),
                _ => continue,
            };
            match seen.get(&(name.as_str(), slot_ms)) {
                Some(first) => out.push(Violation {
                    invariant: NAME,
                    at_ms: r.at_ms,
                    message: format!(
                        "slot {slot_ms} of periodic {name:?} {what} twice ({} then {})",
                        first.host, r.host
                    ),
                    witnesses: vec![(*first).clone(), r.clone()],
                }),
                None => {
                    seen.insert((name.as_str(), slot_ms), r);
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::checkers::test_support::{ctx, H};
    use keel::storage::{JobId, Term};

    fn inserted(slot_ms: i64, job: u64) -> DbEvent {
        DbEvent::PeriodicInserted {
            name: "report".into(),
            slot_ms,
            job: JobId(job),
        }
    }
    fn fired(slot_ms: i64, term: u64, job: u64, inserted: bool) -> Event {
        Event::PeriodicFired {
            name: "report".into(),
            slot_ms,
            term: Term(term),
            job: JobId(job),
            inserted,
        }
    }
    fn seqs(v: &Violation) -> Vec<usize> {
        v.witnesses.iter().map(|w| w.seq).collect()
    }

    #[test]
    fn a_failover_that_refires_an_already_fired_slot_passes() {
        let h = H::new()
            .db(1, inserted(60_000, 1))
            .node(2, "n1", fired(60_000, 1, 1, true))
            .node(3, "n2", fired(60_000, 2, 1, false))
            .db(4, inserted(120_000, 2))
            .node(5, "n2", fired(120_000, 2, 2, true));
        assert!(PeriodicOnce.check(&h.0, &ctx(10)).is_empty());
    }

    #[test]
    fn fires_when_storage_inserts_one_slot_twice() {
        let h = H::new()
            .db(1, inserted(60_000, 1))
            .db(2, inserted(120_000, 2))
            .db(3, inserted(60_000, 3));
        let v = PeriodicOnce.check(&h.0, &ctx(10));
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0]
            .message
            .contains("slot 60000 of periodic \"report\" inserted by storage twice"));
        assert_eq!(seqs(&v[0]), vec![0, 2]);
    }

    #[test]
    fn fires_when_two_leaders_both_report_inserting_one_slot() {
        let h = H::new().node(1, "n1", fired(60_000, 1, 1, true)).node(
            2,
            "n2",
            fired(60_000, 2, 2, true),
        );
        let v = PeriodicOnce.check(&h.0, &ctx(10));
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0]
            .message
            .contains("reported inserted by a leader twice (n1 then n2)"));
        assert_eq!(seqs(&v[0]), vec![0, 1]);
    }
}
