//! I10 `maintainer_liveness`: the invariant, its reasons and limits are on [`MaintainerLiveness`].

use keel::events::Event;

use super::{node_event, tenures, CheckCtx, Checker, Tenure, Violation};
use crate::run::history::Record;

/// I10 `maintainer_liveness`: a node that stays leader long enough has its
/// maintainer running, or has asked to resign after exhausting its retries.
///
/// Three checks, each a bounded-response property:
/// 1. a tenure that lasts `give_up_bound_ms` must see its services started, or a
///    resign requested, within that bound;
/// 2. once a term's services stop, its node may believe it leads for at most
///    `stop_grace_ms` more (a leader without maintenance is the 002 outage);
/// 3. after the heal phase has run `converge_bound_ms`, some node leads a term
///    whose services run at the end of the run.
pub struct MaintainerLiveness;

const NAME: &str = "maintainer_liveness";

fn during<'a>(
    history: &'a [Record],
    t: &'a Tenure,
) -> impl Iterator<Item = (&'a Record, &'a Event)> + 'a {
    history[t.won..=t.ended]
        .iter()
        .filter(move |r| r.host == t.host)
        .filter_map(|r| node_event(r).map(|e| (r, e)))
}

fn started_or_resigned(history: &[Record], t: &Tenure, by_ms: u64) -> bool {
    during(history, t).any(|(r, e)| {
        r.at_ms <= by_ms
            && matches!(e, Event::MaintainerStarted { term } | Event::ResignRequested { term } if *term == t.term)
    })
}

/// The record that stopped `t`'s services for good: a stop that no start
/// attempt for the same term follows within `t` (an in-place restart of the
/// maintainer stops the services and starts them again).
fn stopped<'a>(history: &'a [Record], t: &'a Tenure) -> Option<&'a Record> {
    let mut last: Option<&Record> = None;
    for (r, e) in during(history, t) {
        match e {
            Event::MaintainerStopped { affected, .. } if *affected == t.term => last = Some(r),
            Event::MaintainerStartAttempt { term, .. } if *term == t.term => last = None,
            _ => {}
        }
    }
    last
}

/// Stops of `t`'s services that a start attempt for the same term followed:
/// in-place restarts, each of which owes a start or a resign like a new term.
fn restarts<'a>(history: &'a [Record], t: &'a Tenure) -> Vec<&'a Record> {
    let mut out = Vec::new();
    let mut stop: Option<&Record> = None;
    for (r, e) in during(history, t) {
        match e {
            Event::MaintainerStopped { affected, .. } if *affected == t.term => stop = Some(r),
            Event::MaintainerStartAttempt { term, .. } if *term == t.term => {
                out.extend(stop.take());
            }
            _ => {}
        }
    }
    out
}

fn running_at_end(history: &[Record], t: &Tenure) -> bool {
    let last = during(history, t)
        .filter(|(_, e)| {
            matches!(e, Event::MaintainerStarted { term } | Event::MaintainerStopped { affected: term, .. } if *term == t.term)
        })
        .last();
    matches!(last, Some((_, Event::MaintainerStarted { .. })))
}

impl Checker for MaintainerLiveness {
    fn name(&self) -> &'static str {
        NAME
    }

    fn property(&self) -> super::Property {
        super::Property::Liveness
    }

    fn check(&self, history: &[Record], ctx: &CheckCtx) -> Vec<Violation> {
        let mut out = Vec::new();
        let all = tenures(history);
        for t in &all {
            let lasted = t.ended_ms - t.won_ms;
            let by = t.won_ms + ctx.give_up_bound_ms;
            if lasted >= ctx.give_up_bound_ms && !started_or_resigned(history, t, by) {
                out.push(Violation {
                    invariant: NAME,
                    at_ms: by,
                    message: format!(
                        "{} led {} for {lasted}ms without starting its maintainer or resigning",
                        t.host, t.term
                    ),
                    witnesses: vec![history[t.won].clone(), history[t.ended].clone()],
                });
            }
            for stop in restarts(history, t) {
                let by = stop.at_ms + ctx.give_up_bound_ms;
                let again = during(history, t).any(|(r, e)| {
                    r.seq > stop.seq
                        && r.at_ms <= by
                        && matches!(e, Event::MaintainerStarted { term } | Event::ResignRequested { term } if *term == t.term)
                });
                if t.ended_ms >= by && !again {
                    out.push(Violation {
                        invariant: NAME,
                        at_ms: by,
                        message: format!(
                            "{} led {} for {}ms after its maintainer restarted without starting it again or resigning",
                            t.host,
                            t.term,
                            t.ended_ms - stop.at_ms
                        ),
                        witnesses: vec![history[t.won].clone(), stop.clone(), history[t.ended].clone()],
                    });
                }
            }
            if let Some(stop) = stopped(history, t) {
                let after = t.ended_ms - stop.at_ms;
                if after > ctx.stop_grace_ms {
                    out.push(Violation {
                        invariant: NAME,
                        at_ms: stop.at_ms,
                        message: format!(
                            "{} kept leading {} for {after}ms after its maintainer stopped",
                            t.host, t.term
                        ),
                        witnesses: vec![
                            history[t.won].clone(),
                            stop.clone(),
                            history[t.ended].clone(),
                        ],
                    });
                }
            }
        }
        let healed_for = ctx.end_at_ms.saturating_sub(ctx.heal_at_ms);
        let converged = all
            .iter()
            .any(|t| t.open_at_end && running_at_end(history, t));
        if healed_for >= ctx.converge_bound_ms && !converged {
            let witnesses = all
                .iter()
                .rev()
                .take(2)
                .map(|t| history[t.won].clone())
                .rev()
                .collect();
            out.push(Violation {
                invariant: NAME,
                at_ms: ctx.end_at_ms,
                message: format!(
                    "{healed_for}ms after faults stopped, no leader runs its maintainer"
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
    use crate::run::checkers::test_support::{ctx, won, H};
    use crate::run::history::HarnessEvent;
    use keel::storage::Term;

    fn started(t: u64) -> Event {
        Event::MaintainerStarted { term: Term(t) }
    }

    fn stopped_ev(t: u64) -> Event {
        Event::MaintainerStopped {
            asked_by: Term(t),
            affected: Term(t),
        }
    }

    fn attempt(t: u64) -> Event {
        Event::MaintainerStartAttempt {
            term: Term(t),
            attempt: 1,
        }
    }

    #[test]
    fn a_maintainer_restarted_in_place_that_starts_again_passes() {
        let h = H::new()
            .node(0, "n1", won(1))
            .node(500, "n1", started(1))
            .node(10_000, "n1", stopped_ev(1))
            .node(10_000, "n1", attempt(1))
            .node(16_000, "n1", started(1))
            .harness(60_000, "n1", HarnessEvent::End);
        let v = MaintainerLiveness.check(&h.0, &ctx(60_000));
        assert!(v.is_empty(), "{v:?}");
    }

    #[test]
    fn fires_when_a_restarted_maintainer_never_starts_again() {
        let h = H::new()
            .node(0, "n1", won(1))
            .node(500, "n1", started(1))
            .node(10_000, "n1", stopped_ev(1))
            .node(10_000, "n1", attempt(1))
            .harness(200_000, "n1", HarnessEvent::End);
        let v = MaintainerLiveness.check(&h.0, &ctx(200_000));
        assert!(
            v.iter()
                .any(|v| v.message.contains("after its maintainer restarted")),
            "{v:?}"
        );
    }

    #[test]
    fn a_leader_that_starts_and_keeps_running_passes() {
        let h = H::new()
            .node(0, "n1", won(1))
            .node(500, "n1", started(1))
            .harness(60_000, "n1", HarnessEvent::End);
        assert!(MaintainerLiveness.check(&h.0, &ctx(60_000)).is_empty());
    }

    #[test]
    fn fires_when_a_long_tenure_never_starts() {
        let h = H::new()
            .node(0, "n1", won(1))
            .harness(60_000, "n1", HarnessEvent::End);
        let v = MaintainerLiveness.check(&h.0, &ctx(60_000));
        assert_eq!(
            v.len(),
            2,
            "no start in the bound, and nothing runs after healing: {v:?}"
        );
        assert!(v[0].message.contains("without starting"));
    }

    #[test]
    fn fires_when_a_leader_keeps_leading_after_its_maintainer_was_stopped() {
        let h = H::new()
            .node(0, "n1", won(7))
            .node(100, "n1", started(7))
            .node(
                5_000,
                "n1",
                Event::MaintainerStopped {
                    asked_by: Term(6),
                    affected: Term(7),
                },
            )
            .harness(60_000, "n1", HarnessEvent::End);
        let v = MaintainerLiveness.check(&h.0, &ctx(60_000));
        assert!(
            v.iter()
                .any(|v| v.message.contains("after its maintainer stopped")),
            "{v:?}"
        );
    }

    /// A shutdown that had to abort a partitioned elector (its resign could not
    /// get through) ends the tenure when it returns: nothing of the node runs
    /// after that, though no `TermLost` was said.
    #[test]
    fn a_returned_shutdown_ends_the_tenure_even_with_its_elector_aborted() {
        let stop = Event::MaintainerStopped {
            asked_by: Term(2),
            affected: Term(2),
        };
        let ended = Event::ShutdownEnded {
            aborted: vec!["elector".into()],
            released: vec![],
        };
        let h = H::new()
            .node(0, "n1", won(2))
            .node(100, "n1", started(2))
            .node(5_000, "n1", stop)
            .node(5_900, "n1", ended)
            .harness(
                9_000,
                "n1",
                HarnessEvent::NodeBoot {
                    boot: 2,
                    skew_ms: 0,
                },
            )
            .node(9_100, "n1", won(3))
            .node(9_200, "n1", started(3))
            .harness(60_000, "n1", HarnessEvent::End);
        let v = MaintainerLiveness.check(&h.0, &ctx(60_000));
        assert!(v.is_empty(), "{v:?}");
    }
}
