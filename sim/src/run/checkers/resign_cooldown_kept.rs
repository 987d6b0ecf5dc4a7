//! `resign_cooldown_kept`: the invariant, its reasons and limits are on [`ResignCooldownKept`].

use std::collections::BTreeMap;

use keel::events::Event;

use super::{CheckCtx, Checker, Violation};
use crate::run::history::{Ev, HarnessEvent, Record};

/// `resign_cooldown_kept`: after a requested resign (its maintainer gave up
/// starting, or a user asked) an elector stays out for `resign_cooldown`, so
/// another node can take over (`ElectorConfig::resign_cooldown`). A `TermWon`
/// on a host sooner than the cooldown after that host's `TermLost` with reason
/// `resigned`, by the same process (no restart, crash or boot in between),
/// breaks the promise: the node that could not start its services grabbed the
/// lease again before a healthier peer had its turn.
///
/// Storage grants a free lease to whoever asks first; only the node's own
/// history shows it asked too soon.
///
/// The elector sleeps the cooldown on its own clock, so a fast one ends it
/// sooner in true time: the bound is the cooldown's shortest true length
/// at the run's largest rate error ([`CheckCtx::shortest_ms`]; swarm seed
/// 700002165, a clock 2.6% fast, won 4,943 ms after resigning).
pub struct ResignCooldownKept;

const NAME: &str = "resign_cooldown_kept";

/// Slack for the history stamping each of the two events up to one 20 ms
/// step late.
const STAMP_SLACK_MS: u64 = 40;

impl Checker for ResignCooldownKept {
    fn name(&self) -> &'static str {
        NAME
    }

    fn check(&self, history: &[Record], ctx: &CheckCtx) -> Vec<Violation> {
        // Per host: its process's last requested resign.
        let mut resigned: BTreeMap<&str, &Record> = BTreeMap::new();
        let mut out = Vec::new();
        for r in history {
            let host = r.host.as_str();
            match &r.ev {
                Ev::Node(Event::TermLost { reason, .. }) if reason == "resigned" => {
                    resigned.insert(host, r);
                }
                Ev::Node(Event::RuntimeStarted { .. })
                | Ev::Harness(HarnessEvent::Crash | HarnessEvent::NodeBoot { .. }) => {
                    resigned.remove(host);
                }
                Ev::Node(Event::TermWon { term, .. }) => {
                    let Some(lost) = resigned.remove(host) else {
                        continue;
                    };
                    let out_ms = r.at_ms.saturating_sub(lost.at_ms);
                    if out_ms + STAMP_SLACK_MS >= ctx.shortest_ms(ctx.resign_cooldown_ms) {
                        continue;
                    }
                    out.push(Violation {
                        invariant: NAME,
                        at_ms: r.at_ms,
                        message: format!(
                            "{host} won {term} {out_ms}ms after resigning; it must stay out {}ms",
                            ctx.resign_cooldown_ms
                        ),
                        witnesses: vec![lost.clone(), r.clone()],
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
    use keel::storage::Term;

    fn lost(reason: &str) -> Event {
        Event::TermLost {
            term: Term(2),
            reason: reason.into(),
        }
    }
    fn won() -> Event {
        Event::TermWon {
            term: Term(3),
            trusted_for_ms: 4_000,
        }
    }

    #[test]
    fn a_win_after_the_cooldown_or_after_other_losses_passes() {
        // The test context's cooldown is 5 s.
        let kept = H::new()
            .node(1_000, "n1", lost("resigned"))
            .node(6_100, "n1", won());
        assert!(ResignCooldownKept.check(&kept.0, &ctx(10_000)).is_empty());
        let expired = H::new()
            .node(1_000, "n1", lost("trust_window_expired"))
            .node(1_500, "n1", won());
        assert!(ResignCooldownKept
            .check(&expired.0, &ctx(10_000))
            .is_empty());
        let restarted = H::new()
            .node(1_000, "n1", lost("resigned"))
            .node(
                1_200,
                "n1",
                Event::RuntimeStarted {
                    holder: "n1#b".into(),
                },
            )
            .node(1_500, "n1", won());
        assert!(ResignCooldownKept
            .check(&restarted.0, &ctx(10_000))
            .is_empty());
    }

    #[test]
    fn fires_on_a_win_inside_the_cooldown() {
        let h = H::new()
            .node(1_000, "n1", lost("resigned"))
            .node(1_300, "n1", won());
        let v = ResignCooldownKept.check(&h.0, &ctx(10_000));
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(
            v[0].message
                .contains("n1 won T3 300ms after resigning; it must stay out 5000ms"),
            "{}",
            v[0].message
        );
    }

    #[test]
    fn a_fast_clock_ends_the_cooldown_sooner_in_true_time() {
        // Swarm seed 700002165: 4,943 ms of true time, a clock 2.6% fast.
        let h = H::new()
            .node(1_000, "n1", lost("resigned"))
            .node(5_943, "n1", won());
        assert_eq!(ResignCooldownKept.check(&h.0, &ctx(10_000)).len(), 1);
        let mut fast = ctx(10_000);
        fast.drift_ppm = 26_258;
        assert!(ResignCooldownKept.check(&h.0, &fast).is_empty());
    }
}
