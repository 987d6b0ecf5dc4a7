//! I8 `no_tick_burst`: a periodic loop never fires twice within half its period,
//! even after a slow round (the burst `MissedTickBehavior::Burst` would cause).
//!
//! For each host and loop name, take consecutive `LoopTick { name, period_ms }`
//! records of that loop on that host. Two consecutive ticks with
//! `gap_ms * 2 < period_ms` (`gap_ms` the difference of their `at_ms`,
//! `period_ms` the later tick's) are a violation whose witnesses are the two
//! ticks. History time has the 10 ms resolution of the simulation step, so two
//! ticks in one step are 0 ms apart and fire the check for any period above 0.
//!
//! Consecutive means within one run of the loop: a `Crash` or `NodeBoot` of the
//! host forgets every loop of the host, and a `LoopEnded { name }` on the host
//! forgets that loop, since a loop started again (a new term's services) may
//! tick at once.

use std::collections::BTreeMap;

use keel::events::Event;

use super::{CheckCtx, Checker, Violation};
use crate::history::{Ev, HarnessEvent, Record};

/// See the [module docs](self).
pub struct NoTickBurst;

const NAME: &str = "no_tick_burst";

impl Checker for NoTickBurst {
    fn name(&self) -> &'static str {
        NAME
    }

    fn check(&self, history: &[Record], _ctx: &CheckCtx) -> Vec<Violation> {
        let mut last: BTreeMap<(&str, &str), &Record> = BTreeMap::new();
        let mut out = Vec::new();
        for r in history {
            let host = r.host.as_str();
            match &r.ev {
                Ev::Node(Event::LoopTick { name, period_ms }) => {
                    if let Some(prev) = last.insert((host, name.as_str()), r) {
                        let gap_ms = r.at_ms.saturating_sub(prev.at_ms);
                        if gap_ms.saturating_mul(2) < *period_ms {
                            out.push(Violation {
                                invariant: NAME,
                                at_ms: r.at_ms,
                                message: format!(
                                    "{host}: loop {name} ticked {gap_ms}ms after its previous tick, \
                                     under half its {period_ms}ms period"
                                ),
                                witnesses: vec![prev.clone(), r.clone()],
                            });
                        }
                    }
                }
                Ev::Node(Event::LoopEnded { name, .. }) => {
                    last.remove(&(host, name.as_str()));
                }
                Ev::Harness(HarnessEvent::Crash | HarnessEvent::NodeBoot { .. }) => {
                    last.retain(|(h, _), _| *h != host);
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
    use crate::checkers::test_support::{ctx, H};

    fn tick(name: &str, period_ms: u64) -> Event {
        Event::LoopTick {
            name: name.into(),
            period_ms,
        }
    }
    fn seqs(v: &Violation) -> Vec<usize> {
        v.witnesses.iter().map(|w| w.seq).collect()
    }

    #[test]
    fn a_slow_round_followed_by_evenly_spaced_ticks_passes() {
        let h = H::new()
            .node(0, "n1", tick("rescuer", 100))
            .node(350, "n1", tick("rescuer", 100))
            .node(400, "n1", tick("rescuer", 100))
            .node(400, "n2", tick("rescuer", 100))
            .node(410, "n1", tick("cleaner", 100))
            .harness(420, "n1", HarnessEvent::Crash)
            .harness(
                420,
                "n1",
                HarnessEvent::NodeBoot {
                    boot: 2,
                    skew_ms: 0,
                },
            )
            .node(430, "n1", tick("rescuer", 100))
            .node(
                440,
                "n1",
                Event::LoopEnded {
                    name: "rescuer".into(),
                    outcome: "shutdown".into(),
                },
            )
            .node(440, "n1", tick("rescuer", 100));
        assert!(NoTickBurst.check(&h.0, &ctx(1_000)).is_empty());
    }

    #[test]
    fn fires_on_two_ticks_in_one_simulation_step() {
        let h = H::new()
            .node(0, "n1", tick("rescuer", 100))
            .node(350, "n1", tick("rescuer", 100))
            .node(350, "n1", tick("rescuer", 100));
        let v = NoTickBurst.check(&h.0, &ctx(1_000));
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].message.contains(
            "n1: loop rescuer ticked 0ms after its previous tick, under half its 100ms period"
        ));
        assert_eq!(seqs(&v[0]), vec![1, 2]);
    }

    #[test]
    fn fires_on_a_tick_just_under_half_a_period_after_the_last() {
        let h = H::new()
            .node(0, "n1", tick("rescuer", 100))
            .node(40, "n1", tick("rescuer", 100))
            .node(90, "n1", tick("rescuer", 100));
        let v = NoTickBurst.check(&h.0, &ctx(1_000));
        assert_eq!(
            v.len(),
            1,
            "40ms fires, 50ms is exactly half and passes: {v:?}"
        );
        assert_eq!(seqs(&v[0]), vec![0, 1]);
    }
}
