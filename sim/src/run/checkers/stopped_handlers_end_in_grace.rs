//! `stopped_handlers_end_in_grace`: the invariant, its reasons and limits are on [`StoppedHandlersEndInGrace`].

use keel::events::Event;
use keel::storage::JobId;

use super::{node_event, CheckCtx, Checker, Violation};
use crate::run::history::{Ev, HarnessEvent, Record};

/// `stopped_handlers_end_in_grace`: a handler its worker asked to stop ends
/// within its grace. When a worker triggers a running handler's token
/// (`HandlerCancelRequested`), the handler must have ended (`HandlerEnded`:
/// returned, or dropped by the worker) within the grace that reason allows:
/// `cancel_grace` after a cancel request or an untrusted claim, none after a
/// lost claim (`JobsConfig::cancel_grace`, `worker.rs`). A stop for shutdown
/// is `bounded_shutdown`'s to judge. A crash, reboot or returned shutdown of
/// the host ends the handler too; a frozen process runs nothing, so frozen
/// time is not counted.
///
/// Storage cannot see this promise broken: a cancelled job whose stubborn
/// handler runs on and completes is recorded completed, as it should be, only
/// an unbounded time after the user asked it to stop.
pub struct StoppedHandlersEndInGrace;

/// Slack on top of the grace: the worker's drop timer fires on the step after
/// the grace ends, and the history stamps a host's events up to a step late
/// (two 20 ms steps).
pub const DROP_SLACK_MS: u64 = 2 * 20;

const NAME: &str = "stopped_handlers_end_in_grace";

impl Checker for StoppedHandlersEndInGrace {
    fn name(&self) -> &'static str {
        NAME
    }

    fn check(&self, history: &[Record], ctx: &CheckCtx) -> Vec<Violation> {
        history
            .iter()
            .filter_map(|r| {
                let Some(Event::HandlerCancelRequested {
                    job,
                    attempt,
                    reason,
                }) = node_event(r)
                else {
                    return None;
                };
                let grace_ms = match reason.as_str() {
                    "cancel_requested" | "claim_untrusted" => ctx.longest_ms(ctx.cancel_grace_ms),
                    "claim_lost" => 0,
                    _ => return None,
                };
                let end = end_of(history, r, *job, *attempt);
                let end_ms = end.map_or(ctx.end_at_ms, |e| e.at_ms);
                let frozen = super::frozen_ms(history, &r.host, r.at_ms, end_ms);
                let ran_ms = end_ms.saturating_sub(r.at_ms).saturating_sub(frozen);
                if ran_ms <= grace_ms + DROP_SLACK_MS {
                    return None;
                }
                let mut witnesses = vec![r.clone()];
                witnesses.extend(end.cloned());
                let ended = if end.is_some() {
                    "ended"
                } else {
                    "still ran when the run ended"
                };
                Some(Violation {
                    invariant: NAME,
                    at_ms: end_ms,
                    message: format!(
                        "{job} attempt {attempt} on {}: asked to stop ({reason}), {ended} {ran_ms}ms later; its grace is {grace_ms}ms",
                        r.host
                    ),
                    witnesses,
                })
            })
            .collect()
    }
}

/// What ended the handler `(job, attempt)` that `asked` asked to stop, on its
/// host: its `HandlerEnded`, or the host's crash, reboot or returned shutdown.
fn end_of<'a>(
    history: &'a [Record],
    asked: &Record,
    job: JobId,
    attempt: u32,
) -> Option<&'a Record> {
    history[asked.seq + 1..]
        .iter()
        .filter(|e| e.host == asked.host)
        .find(|e| match &e.ev {
            Ev::Node(Event::HandlerEnded {
                job: j, attempt: a, ..
            }) => *j == job && *a == attempt,
            Ev::Node(Event::ShutdownEnded { .. }) => true,
            Ev::Harness(HarnessEvent::Crash | HarnessEvent::NodeBoot { .. }) => true,
            _ => false,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::checkers::test_support::{ctx, H};

    fn asked(reason: &str) -> Event {
        Event::HandlerCancelRequested {
            job: JobId(1),
            attempt: 1,
            reason: reason.into(),
        }
    }
    fn ended(outcome: &str) -> Event {
        Event::HandlerEnded {
            job: JobId(1),
            attempt: 1,
            outcome: outcome.into(),
        }
    }

    #[test]
    fn a_handler_that_ends_or_is_dropped_within_its_grace_passes() {
        // The test context's cancel_grace is 1 s.
        let h = H::new().node(1_000, "n1", asked("cancel_requested")).node(
            2_020,
            "n1",
            ended("aborted"),
        );
        assert!(StoppedHandlersEndInGrace
            .check(&h.0, &ctx(10_000))
            .is_empty());
        let h = H::new()
            .node(1_000, "n1", asked("claim_lost"))
            .node(1_020, "n1", ended("aborted"));
        assert!(StoppedHandlersEndInGrace
            .check(&h.0, &ctx(10_000))
            .is_empty());
        let frozen = H::new()
            .node(1_000, "n1", asked("claim_untrusted"))
            .harness(1_500, "n1", HarnessEvent::Paused)
            .harness(6_500, "n1", HarnessEvent::Resumed)
            .node(6_600, "n1", ended("aborted"));
        assert!(StoppedHandlersEndInGrace
            .check(&frozen.0, &ctx(10_000))
            .is_empty());
    }

    #[test]
    fn fires_when_a_stopped_handler_runs_past_its_grace() {
        let h = H::new().node(1_000, "n1", asked("cancel_requested")).node(
            4_000,
            "n1",
            ended("completed"),
        );
        let v = StoppedHandlersEndInGrace.check(&h.0, &ctx(10_000));
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(
            v[0].message
                .contains("ended 3000ms later; its grace is 1000ms"),
            "{}",
            v[0].message
        );
        let never = H::new().node(1_000, "n1", asked("claim_lost"));
        let v = StoppedHandlersEndInGrace.check(&never.0, &ctx(10_000));
        assert!(
            v[0].message.contains("still ran when the run ended"),
            "{v:?}"
        );
    }
}
