//! I8 `no_tick_burst`: the invariant, its reasons and limits are on [`NoTickBurst`].

use std::collections::BTreeMap;

use keel::events::Event;

use super::{CheckCtx, Checker, Violation};
use crate::run::history::{Ev, HarnessEvent, Record};
use crate::run::runner::TICK;

/// How late a recorded time may be: one simulation step.
const STAMP_SLACK_MS: u64 = TICK.as_millis() as u64;

/// I8 `no_tick_burst`: after a slow round, a periodic loop does not fire a burst
/// of catch-up ticks (what `MissedTickBehavior::Burst` does).
///
/// `MissedTickBehavior::Skip` fires the one late tick at once when a slow round
/// ends and then realigns to its schedule, so the late tick and the next aligned
/// one can be close; a burst fires every missed tick back to back. The checker
/// tells them apart: **three consecutive ticks of a loop within one period** are a
/// violation (`t3 - t1 < period_ms`), witnessed by the three ticks. Skip never
/// does that (after the late tick the next two are a full period apart); a burst
/// of two or more missed ticks always does.
///
/// Times are as recorded, and a host's events are stamped with the time of the
/// simulation step that ran them, up to one [`TICK`] after they happened: a late
/// tick and the aligned one just after it can share a stamp. So the span must
/// fall short of the period by more than one `TICK` (a burst's ticks share one
/// instant, far inside that). Before this slack, `slow_ticks` seed 5060 failed
/// on Skip's own ticks at 16753, 16753 and 17000 ms (period 250 ms).
///
/// Consecutive means within one run of the loop: a `Crash` or `NodeBoot` of the
/// host forgets every loop of the host, and a `LoopEnded { name }` on the host
/// forgets that loop, since a loop started again may tick at once.
pub struct NoTickBurst;

const NAME: &str = "no_tick_burst";

impl Checker for NoTickBurst {
    fn name(&self) -> &'static str {
        NAME
    }

    fn check(&self, history: &[Record], ctx: &CheckCtx) -> Vec<Violation> {
        let mut last: BTreeMap<(&str, &str), (Option<&Record>, &Record)> = BTreeMap::new();
        let mut out = Vec::new();
        for r in history {
            let host = r.host.as_str();
            match &r.ev {
                Ev::Node(Event::LoopTick { name, period_ms }) => {
                    let key = (host, name.as_str());
                    let (older, prev) = match last.get(&key) {
                        Some((older, prev)) => (*older, Some(*prev)),
                        None => (None, None),
                    };
                    if let (Some(first), Some(second)) = (older, prev) {
                        let span_ms = r.at_ms.saturating_sub(first.at_ms);
                        // A period of the host's time: shorter on a fast clock.
                        if span_ms + STAMP_SLACK_MS < ctx.shortest_ms(*period_ms) {
                            out.push(Violation {
                                invariant: NAME,
                                at_ms: r.at_ms,
                                message: format!(
                                    "{host}: loop {name} ticked three times in {span_ms}ms, \
                                     within one {period_ms}ms period"
                                ),
                                witnesses: vec![first.clone(), second.clone(), r.clone()],
                            });
                        }
                    }
                    last.insert(key, (prev, r));
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
    use crate::run::checkers::test_support::{ctx, H};

    fn tick(name: &str, period_ms: u64) -> Event {
        Event::LoopTick {
            name: name.into(),
            period_ms,
        }
    }

    #[test]
    fn skip_after_a_slow_round_passes() {
        // Ticks at 0 and 100, a slow round, the late tick at 460, then aligned at
        // 500 and 600: one short gap, never three ticks in one period.
        let mut h = H::new();
        for at in [0, 100, 460, 500, 600, 700] {
            h = h.node(at, "n1", tick("poll", 100));
        }
        assert!(NoTickBurst.check(&h.0, &ctx(1_000)).is_empty());
    }

    #[test]
    fn a_late_tick_stamped_with_the_aligned_one_passes() {
        // slow_ticks seed 5060: the late tick ran at about 16745 and the aligned
        // one at 16750, both stamped 16753; the next came at 17000.
        let mut h = H::new();
        for at in [15250, 16753, 16753, 17000, 17250] {
            h = h.node(at, "n1", tick("sync", 250));
        }
        assert!(NoTickBurst.check(&h.0, &ctx(20_000)).is_empty());
    }

    #[test]
    fn fires_on_a_burst_of_catch_up_ticks() {
        let mut h = H::new();
        for at in [0, 100, 460, 460, 460, 500] {
            h = h.node(at, "n1", tick("poll", 100));
        }
        let v = NoTickBurst.check(&h.0, &ctx(1_000));
        assert!(!v.is_empty());
        let seqs: Vec<usize> = v[0].witnesses.iter().map(|w| w.seq).collect();
        assert_eq!(seqs, vec![2, 3, 4], "the three ticks at 460");
    }

    #[test]
    fn a_restarted_loop_or_another_host_starts_afresh() {
        let h = H::new()
            .node(0, "n1", tick("poll", 100))
            .node(10, "n1", tick("poll", 100))
            .node(
                10,
                "n1",
                Event::LoopEnded {
                    name: "poll".into(),
                    outcome: "panic: x".into(),
                },
            )
            .node(20, "n1", tick("poll", 100))
            .node(20, "n2", tick("poll", 100))
            .harness(25, "n1", HarnessEvent::Crash)
            .node(30, "n1", tick("poll", 100));
        assert!(NoTickBurst.check(&h.0, &ctx(100)).is_empty());
    }
}
