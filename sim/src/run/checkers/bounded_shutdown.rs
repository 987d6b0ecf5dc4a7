//! I9 `bounded_shutdown`: the invariant, its reasons and limits are on [`BoundedShutdown`].

use keel::events::Event;

use super::{CheckCtx, Checker, Violation};
use crate::run::history::{Ev, HarnessEvent, Record};

/// I9 `bounded_shutdown`: graceful shutdown returns within its deadline plus one
/// tick, and nothing keeps running after it returns.
///
/// For each `ShutdownBegan { deadline_ms }` on host `h` at time `t`, let
/// `bound = t + longest(deadline_ms + ctx.tick_grace_ms)`: the deadline and
/// the one tick after it (the give-back of aborted claims) run on `h`'s clock,
/// so the bound is as long as they can last in true time at the run's clock
/// rates ([`CheckCtx::longest_ms`]; swarm seed 3006159, a clock 1.8% slow,
/// returned 3,829 ms into a 2,752 ms deadline, 5 ms past the unscaled grace).
/// Time the process spent frozen (`Paused` to `Resumed`) after `t` moves the
/// bound on by as much (swarm seed 800001996: a restart's shutdown, a 7.7 s
/// pause inside its 3 s deadline, returned 54 ms after the resume).
/// Look at the first `ShutdownEnded`, `Crash` or `NodeBoot` of `h` after it:
///
/// * a `ShutdownEnded` after `bound` is a violation (witnesses: began, ended);
/// * a `Crash`/`NodeBoot` at or before `bound` excuses the shutdown; one after
///   `bound` is a violation (witnesses: began, the crash or reboot);
/// * none at all is a violation when the run ended after `bound` (witness:
///   began).
///
/// After a `ShutdownEnded` on `h`, the first `HandlerStarted`, `JobClaimed` or
/// `LoopTick` on `h` before `h`'s next `Crash`, `NodeBoot` or `RuntimeStarted`
/// (an in-place restart) is a violation
/// (witnesses: the `ShutdownEnded` and that record); later ones in the same
/// stretch are not reported again.
pub struct BoundedShutdown;

const NAME: &str = "bounded_shutdown";

impl Checker for BoundedShutdown {
    fn name(&self) -> &'static str {
        NAME
    }

    fn property(&self) -> super::Property {
        super::Property::Liveness
    }

    fn check(&self, history: &[Record], ctx: &CheckCtx) -> Vec<Violation> {
        history
            .iter()
            .filter_map(|r| match &r.ev {
                Ev::Node(Event::ShutdownBegan { deadline_ms }) => overran(
                    history,
                    r,
                    ctx.longest_ms(deadline_ms.saturating_add(ctx.tick_grace_ms)),
                    ctx.end_at_ms,
                ),
                Ev::Node(Event::ShutdownEnded { .. }) => ran_on(history, r),
                _ => None,
            })
            .collect()
    }
}

/// A crash, a boot, or a runtime started again in place (a new incarnation):
/// what ends the stretch in which nothing may run after a shutdown.
fn is_reboot(r: &Record) -> bool {
    matches!(
        r.ev,
        Ev::Harness(HarnessEvent::Crash | HarnessEvent::NodeBoot { .. })
            | Ev::Node(Event::RuntimeStarted { .. })
    )
}

/// The violation, if the shutdown begun at `began` did not return within
/// `allowed_ms`; it is dated at the bound it broke.
fn overran(
    history: &[Record],
    began: &Record,
    allowed_ms: u64,
    end_at_ms: u64,
) -> Option<Violation> {
    let host = began.host.as_str();
    let next = history[began.seq + 1..].iter().find(|r| {
        r.host == host && (is_reboot(r) || matches!(r.ev, Ev::Node(Event::ShutdownEnded { .. })))
    });
    // A frozen process runs nothing, and its clocks jump by the pause when it
    // resumes: the time it spent frozen before the shutdown's end moves the
    // bound on.
    let to_ms = next.map_or(end_at_ms, |r| r.at_ms);
    let frozen = super::frozen_ms(history, host, began.at_ms, to_ms);
    let bound = began
        .at_ms
        .saturating_add(allowed_ms)
        .saturating_add(frozen);
    let (at_ms, message, witnesses) = match next {
        Some(r) if r.at_ms <= bound => return None,
        Some(r) => {
            let how = if is_reboot(r) {
                "was still running when the host went down"
            } else {
                "returned"
            };
            (
                bound,
                format!(
                    "{host}: shutdown {how} {}ms after it began, over the {allowed_ms}ms allowed",
                    r.at_ms.saturating_sub(began.at_ms)
                ),
                vec![began.clone(), r.clone()],
            )
        }
        None if end_at_ms > bound => (
            bound,
            format!("{host}: shutdown never returned; {}ms allowed", allowed_ms),
            vec![began.clone()],
        ),
        None => return None,
    };
    Some(Violation {
        invariant: NAME,
        at_ms,
        message,
        witnesses,
    })
}

/// The violation, if something ran on the host after its shutdown returned at
/// `ended`.
fn ran_on(history: &[Record], ended: &Record) -> Option<Violation> {
    let host = ended.host.as_str();
    let late = history[ended.seq + 1..]
        .iter()
        .filter(|r| r.host == host)
        .take_while(|r| !is_reboot(r))
        .find(|r| {
            matches!(
                r.ev,
                Ev::Node(
                    Event::HandlerStarted { .. }
                        | Event::JobClaimed { .. }
                        | Event::LoopTick { .. }
                )
            )
        })?;
    Some(Violation {
        invariant: NAME,
        at_ms: late.at_ms,
        message: format!(
            "{host}: still running {}ms after its shutdown returned",
            late.at_ms.saturating_sub(ended.at_ms)
        ),
        witnesses: vec![ended.clone(), late.clone()],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::checkers::test_support::{ctx, H};
    use keel::storage::JobId;

    fn began(deadline_ms: u64) -> Event {
        Event::ShutdownBegan { deadline_ms }
    }
    fn ended() -> Event {
        Event::ShutdownEnded {
            aborted: Vec::new(),
            released: Vec::new(),
        }
    }
    fn boot() -> HarnessEvent {
        HarnessEvent::NodeBoot {
            boot: 2,
            skew_ms: 0,
        }
    }
    fn seqs(v: &Violation) -> Vec<usize> {
        v.witnesses.iter().map(|w| w.seq).collect()
    }

    #[test]
    fn a_shutdown_within_deadline_and_grace_then_a_reboot_passes() {
        let h = H::new()
            .node(0, "n1", began(5_000))
            .node(1_000, "n2", began(5_000))
            .node(5_900, "n1", ended())
            .harness(6_500, "n2", HarnessEvent::Crash)
            .harness(9_000, "n1", boot())
            .node(
                9_100,
                "n1",
                Event::JobClaimed {
                    job: JobId(1),
                    attempt: 1,
                },
            );
        assert!(BoundedShutdown.check(&h.0, &ctx(20_000)).is_empty());
        let endless = H::new().node(0, "n1", began(u64::MAX));
        assert!(
            BoundedShutdown.check(&endless.0, &ctx(20_000)).is_empty(),
            "an unbounded deadline never overruns"
        );
    }

    #[test]
    fn fires_when_shutdown_returns_after_deadline_plus_grace() {
        let h = H::new()
            .node(0, "n1", began(5_000))
            .node(6_010, "n1", ended());
        let v = BoundedShutdown.check(&h.0, &ctx(20_000));
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0]
            .message
            .contains("n1: shutdown returned 6010ms after it began, over the 6000ms allowed"));
        assert_eq!(seqs(&v[0]), vec![0, 1]);
    }

    #[test]
    fn a_slow_clock_stretches_the_deadline_by_its_rate_and_no_more() {
        let h = |ended_ms| {
            H::new()
                .node(0, "n1", began(5_000))
                .node(ended_ms, "n1", ended())
        };
        let mut slow = ctx(20_000);
        slow.drift_ppm = 10_000; // 1%: 6,000 ms of its clock last up to 6,061 ms
        assert!(BoundedShutdown.check(&h(6_060).0, &slow).is_empty());
        assert_eq!(BoundedShutdown.check(&h(6_070).0, &slow).len(), 1);
        assert_eq!(BoundedShutdown.check(&h(6_040).0, &ctx(20_000)).len(), 1);
    }

    #[test]
    fn time_frozen_inside_the_shutdown_moves_the_bound_on() {
        // Frozen from 2,000 to 9,700: the 6,000 ms allowed end at 13,700.
        let h = |ended_ms| {
            H::new()
                .node(0, "n1", began(5_000))
                .harness(2_000, "n1", HarnessEvent::Paused)
                .harness(9_700, "n1", HarnessEvent::Resumed)
                .node(ended_ms, "n1", ended())
        };
        assert!(BoundedShutdown.check(&h(9_800).0, &ctx(20_000)).is_empty());
        let v = BoundedShutdown.check(&h(13_800).0, &ctx(20_000));
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!(v[0].at_ms, 13_700);
        // Never returning: the bound is moved on by the pause, and no more.
        let never = H::new()
            .node(0, "n1", began(5_000))
            .harness(2_000, "n1", HarnessEvent::Paused)
            .harness(9_700, "n1", HarnessEvent::Resumed);
        assert!(BoundedShutdown.check(&never.0, &ctx(13_000)).is_empty());
        assert_eq!(BoundedShutdown.check(&never.0, &ctx(14_000)).len(), 1);
    }

    #[test]
    fn fires_when_shutdown_never_returns_or_the_host_dies_past_the_bound() {
        let h = H::new()
            .node(0, "n1", began(5_000))
            .node(0, "n2", began(1_000))
            .harness(3_000, "n2", HarnessEvent::Crash);
        let v = BoundedShutdown.check(&h.0, &ctx(20_000));
        assert_eq!(v.len(), 2, "{v:?}");
        assert!(v[0].message.contains("n1: shutdown never returned"));
        assert_eq!(seqs(&v[0]), vec![0]);
        assert!(v[1]
            .message
            .contains("still running when the host went down"));
        assert_eq!(seqs(&v[1]), vec![1, 2]);
        assert!(
            BoundedShutdown.check(&h.0[..1], &ctx(6_000)).is_empty(),
            "the run ended before the bound"
        );
    }

    #[test]
    fn fires_when_a_loop_ticks_after_shutdown_returned() {
        let h = H::new()
            .node(0, "n1", began(5_000))
            .node(100, "n1", ended())
            .node(
                150,
                "n2",
                Event::HandlerStarted {
                    job: JobId(1),
                    attempt: 1,
                },
            )
            .node(
                200,
                "n1",
                Event::LoopTick {
                    name: "rescuer".into(),
                    period_ms: 1_000,
                },
            )
            .node(
                300,
                "n1",
                Event::HandlerStarted {
                    job: JobId(2),
                    attempt: 1,
                },
            );
        let v = BoundedShutdown.check(&h.0, &ctx(20_000));
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0]
            .message
            .contains("n1: still running 100ms after its shutdown returned"));
        assert_eq!(seqs(&v[0]), vec![1, 3]);
    }
}
