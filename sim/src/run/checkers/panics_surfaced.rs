//! I7 `panics_surfaced`: the invariant, its reasons and limits are on [`PanicsSurfaced`].

use keel::events::Event;
use keel::storage::JobId;

use super::{CheckCtx, Checker, Violation};
use crate::run::history::{Ev, HarnessEvent, Record};

/// I7 `panics_surfaced`: every panic of a handler or loop is observed and
/// reported.
///
/// The simulated handlers and loops record, on their host, the panic they are
/// about to raise. Each must be reported on the same host before the host
/// crashes or reboots and before the history ends:
///
/// * `HandlerPanicInjected { job, attempt }` on `h`: the next `HandlerEnded` of
///   that `(job, attempt)` on `h` must exist, come before any `Crash` or
///   `NodeBoot` of `h`, and have an outcome starting with `panicked`;
/// * `LoopPanicInjected { name }` on `h`: the next `LoopEnded { name }` on `h`
///   must exist, come before any `Crash` or `NodeBoot` of `h`, and have an
///   outcome starting with `panic`.
///
/// Witnesses: the injection, then what came instead of the report if anything
/// did (the `HandlerEnded`/`LoopEnded` with another outcome, or the crash or
/// reboot).
pub struct PanicsSurfaced;

const NAME: &str = "panics_surfaced";

/// What panicked on purpose.
enum Injected<'a> {
    Handler(JobId, u32),
    Loop(&'a str),
}

impl Injected<'_> {
    /// For a node event of the same host: whether it is the panic's report
    /// (`Some(true)`), another end of the same handler or loop (`Some(false)`),
    /// or unrelated (`None`).
    fn report(&self, e: &Event) -> Option<bool> {
        match (self, e) {
            (
                Injected::Handler(job, attempt),
                Event::HandlerEnded {
                    job: j,
                    attempt: a,
                    outcome,
                },
            ) if j == job && a == attempt => Some(outcome.starts_with("panicked")),
            (Injected::Loop(name), Event::LoopEnded { name: n, outcome }) if n == name => {
                Some(outcome.starts_with("panic"))
            }
            _ => None,
        }
    }

    fn describe(&self) -> String {
        match self {
            Injected::Handler(job, attempt) => format!("handler of {job} attempt {attempt}"),
            Injected::Loop(name) => format!("loop {name}"),
        }
    }
}

impl Checker for PanicsSurfaced {
    fn name(&self) -> &'static str {
        NAME
    }

    fn check(&self, history: &[Record], _ctx: &CheckCtx) -> Vec<Violation> {
        history
            .iter()
            .filter_map(|r| {
                let injected = match &r.ev {
                    Ev::Harness(HarnessEvent::HandlerPanicInjected { job, attempt }) => {
                        Injected::Handler(*job, *attempt)
                    }
                    Ev::Harness(HarnessEvent::LoopPanicInjected { name }) => Injected::Loop(name),
                    _ => return None,
                };
                unreported(history, r, &injected)
            })
            .collect()
    }
}

/// The violation, if the panic `what`, injected at record `injected`, is not
/// reported.
fn unreported(history: &[Record], injected: &Record, what: &Injected<'_>) -> Option<Violation> {
    let host = injected.host.as_str();
    let next = history[injected.seq + 1..]
        .iter()
        .filter(|r| r.host == host)
        .find_map(|r| match &r.ev {
            Ev::Node(e) => what.report(e).map(|ok| (r, ok)),
            Ev::Harness(HarnessEvent::Crash | HarnessEvent::NodeBoot { .. }) => Some((r, false)),
            _ => None,
        });
    let what = what.describe();
    let (message, witnesses) = match next {
        Some((_, true)) => return None,
        Some((instead, false)) => (
            format!("{host}: {what} panicked but the next report of it is not a panic"),
            vec![injected.clone(), instead.clone()],
        ),
        None => (
            format!("{host}: {what} panicked and was never reported"),
            vec![injected.clone()],
        ),
    };
    Some(Violation {
        invariant: NAME,
        at_ms: injected.at_ms,
        message,
        witnesses,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::checkers::test_support::{ctx, H};

    fn injected(job: u64) -> HarnessEvent {
        HarnessEvent::HandlerPanicInjected {
            job: JobId(job),
            attempt: 1,
        }
    }
    fn handler_ended(job: u64, outcome: &str) -> Event {
        Event::HandlerEnded {
            job: JobId(job),
            attempt: 1,
            outcome: outcome.into(),
        }
    }
    fn loop_injected(name: &str) -> HarnessEvent {
        HarnessEvent::LoopPanicInjected { name: name.into() }
    }
    fn loop_ended(name: &str, outcome: &str) -> Event {
        Event::LoopEnded {
            name: name.into(),
            outcome: outcome.into(),
        }
    }
    fn seqs(v: &Violation) -> Vec<usize> {
        v.witnesses.iter().map(|w| w.seq).collect()
    }

    #[test]
    fn panics_reported_on_their_host_pass() {
        let h = H::new()
            .harness(1, "n1", injected(1))
            .node(2, "n2", handler_ended(1, "completed"))
            .node(3, "n1", handler_ended(1, "panicked: boom"))
            .harness(4, "n1", loop_injected("rescuer"))
            .node(5, "n1", loop_ended("cleaner", "shutdown"))
            .node(6, "n1", loop_ended("rescuer", "panic: boom"));
        assert!(PanicsSurfaced.check(&h.0, &ctx(10)).is_empty());
    }

    #[test]
    fn fires_when_a_handler_panic_is_reported_as_another_outcome() {
        let h = H::new()
            .harness(1, "n1", injected(1))
            .node(2, "n1", handler_ended(1, "completed"));
        let v = PanicsSurfaced.check(&h.0, &ctx(10));
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].message.contains(
            "n1: handler of job-1 attempt 1 panicked but the next report of it is not a panic"
        ));
        assert_eq!(seqs(&v[0]), vec![0, 1]);
    }

    #[test]
    fn fires_when_the_host_crashes_or_the_run_ends_before_the_report() {
        let h = H::new()
            .harness(1, "n1", injected(1))
            .harness(2, "n1", HarnessEvent::Crash)
            .node(3, "n1", handler_ended(1, "panicked: boom"))
            .harness(4, "n2", loop_injected("rescuer"));
        let v = PanicsSurfaced.check(&h.0, &ctx(10));
        assert_eq!(v.len(), 2, "{v:?}");
        assert_eq!(seqs(&v[0]), vec![0, 1]);
        assert!(
            v[1].message
                .contains("n2: loop rescuer panicked and was never reported"),
            "{}",
            v[1]
        );
        assert_eq!(seqs(&v[1]), vec![3]);
    }

    #[test]
    fn fires_when_a_loop_panic_is_reported_as_a_clean_end() {
        let h = H::new().harness(1, "n1", loop_injected("rescuer")).node(
            2,
            "n1",
            loop_ended("rescuer", "shutdown"),
        );
        let v = PanicsSurfaced.check(&h.0, &ctx(10));
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!(seqs(&v[0]), vec![0, 1]);
    }
}
