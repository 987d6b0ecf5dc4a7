//! `no_claim_after_shutdown`: the invariant, its reasons and limits are on [`NoClaimAfterShutdown`].

use std::collections::BTreeMap;

use keel::events::Event;

use super::health::Hosts;
use super::no_early_rescue::STAMP_SLACK_MS;
use super::{CheckCtx, Checker, Violation};
use crate::run::history::{DbEvent, Ev, HarnessEvent, Record};

/// `no_claim_after_shutdown`: once a graceful shutdown begins, a runtime
/// claims no more jobs (`RuntimeHandle::shutdown`: "stop claiming"; a
/// retiring or stopping worker only finalizes). A `ClaimApplied` for an owner
/// whose process began shutting down breaks the promise when the claim was
/// issued after the shutdown began: the harness records when each storage call
/// was made (`ClaimApplied::issued_ms`, true time), so a claim in flight when
/// the shutdown began (a held link, a slow reply) is never counted.
///
/// Storage applies every claim it is asked for; only the shutdown around it
/// shows the worker should not have asked.
pub struct NoClaimAfterShutdown;

const NAME: &str = "no_claim_after_shutdown";

impl Checker for NoClaimAfterShutdown {
    fn name(&self) -> &'static str {
        NAME
    }

    fn check(&self, history: &[Record], _ctx: &CheckCtx) -> Vec<Violation> {
        let hosts = Hosts::of(history);
        // The hosts shutting down, since when.
        let mut stopping: BTreeMap<&str, &Record> = BTreeMap::new();
        let mut out = Vec::new();
        for r in history {
            let host = r.host.as_str();
            match &r.ev {
                Ev::Node(Event::ShutdownBegan { .. }) => {
                    stopping.insert(host, r);
                }
                Ev::Node(Event::RuntimeStarted { .. })
                | Ev::Harness(HarnessEvent::Crash | HarnessEvent::NodeBoot { .. }) => {
                    stopping.remove(host);
                }
                Ev::Db(DbEvent::ClaimApplied {
                    job,
                    attempt,
                    owner,
                    issued_ms,
                    ..
                }) => {
                    let claimer = hosts.of_owner(owner);
                    let Some(began) = stopping.get(claimer) else {
                        continue;
                    };
                    let sent_ms = *issued_ms;
                    if sent_ms <= began.at_ms + STAMP_SLACK_MS.unsigned_abs() {
                        continue;
                    }
                    out.push(Violation {
                        invariant: NAME,
                        at_ms: r.at_ms,
                        message: format!(
                            "{job} attempt {attempt} was claimed by {owner}, sent at {sent_ms}ms or \
                             later, after {claimer}'s shutdown began at {}ms",
                            began.at_ms
                        ),
                        witnesses: vec![(*began).clone(), r.clone()],
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
    use crate::run::checkers::test_support::{ctx, job_claimed, H};
    use crate::run::history::HarnessEvent;

    fn started() -> Event {
        Event::RuntimeStarted {
            holder: "n1#a".into(),
        }
    }
    fn began() -> Event {
        Event::ShutdownBegan { deadline_ms: 5_000 }
    }
    #[test]
    fn a_claim_sent_before_the_shutdown_or_by_a_new_process_passes() {
        // Sent at 990, applied after the shutdown began at 1,000.
        let in_flight = H::new()
            .node(0, "n1", started())
            .node(1_000, "n1", began())
            .db(1_500, job_claimed(1, 10, 990));
        assert!(NoClaimAfterShutdown
            .check(&in_flight.0, &ctx(10_000))
            .is_empty());
        let restarted = H::new()
            .node(0, "n1", started())
            .node(1_000, "n1", began())
            .node(3_000, "n1", started())
            .db(3_500, job_claimed(1, 10, 3_480));
        assert!(NoClaimAfterShutdown
            .check(&restarted.0, &ctx(10_000))
            .is_empty());
    }

    #[test]
    fn only_when_the_claim_was_issued_counts_not_any_clock() {
        // n1's clock runs 10 minutes ahead; its claim, issued at true 900,
        // was applied after the shutdown began.
        let h = H::new()
            .harness(
                0,
                "n1",
                HarnessEvent::NodeBoot {
                    boot: 1,
                    skew_ms: 600_000,
                },
            )
            .node(0, "n1", started())
            .node(1_000, "n1", began())
            .db(1_200, job_claimed(1, 10, 900));
        assert!(NoClaimAfterShutdown.check(&h.0, &ctx(10_000)).is_empty());
    }

    #[test]
    fn fires_on_a_claim_sent_after_the_shutdown_began() {
        let h = H::new()
            .node(0, "n1", started())
            .node(1_000, "n1", began())
            .db(1_520, job_claimed(1, 10, 1_500));
        let v = NoClaimAfterShutdown.check(&h.0, &ctx(10_000));
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(
            v[0].message.contains(
                "job-1 attempt 1 was claimed by n1#a/default/0, sent at 1500ms or later, \
                 after n1's shutdown began at 1000ms"
            ),
            "{}",
            v[0].message
        );
    }
}
