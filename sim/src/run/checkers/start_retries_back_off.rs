//! `start_retries_back_off`: the invariant, its reasons and limits are on [`StartRetriesBackOff`].

use std::collections::BTreeMap;

use keel::events::Event;
use keel::storage::Term;

use super::{node_event, CheckCtx, Checker, Violation};
use crate::run::history::Record;

/// `start_retries_back_off`: a failed maintainer start is retried with
/// exponential backoff (`keel::maintenance` design note, `MaintainerConfig::
/// backoff`). Attempt `n + 1` of term `T` on a host begins no sooner after
/// attempt `n` *failed* (`MaintainerStartFailed`) than the backoff's floor
/// after a failed attempt `n`: `min(base * 2^(n-1), max)` (jitter only adds).
/// The backoff runs from the failure, so a start hook that takes seconds to
/// fail does not hide a retry that skipped it. A maintainer run restarted in
/// place counts its attempts from 1 again, and the stopped run's attempt may
/// still fail later: so attempt `n + 1` is measured from the *first* failure
/// of attempt `n` since attempt `n` last began on that host for that term
/// (swarm seed 3009172: a stopped run's attempt 1 failed 229 ms before the
/// new run's attempt 2, which had waited 1,035 ms after its own).
///
/// Storage never sees it broken: a leader hammering a failing start hook does
/// nothing it could refuse.
pub struct StartRetriesBackOff;

/// Slack under the floor: the history stamps a host's events up to one 20 ms
/// step late, so two attempts can look a step closer than they were.
pub const STAMP_SLACK_MS: u64 = 20;

impl Checker for StartRetriesBackOff {
    fn name(&self) -> &'static str {
        "start_retries_back_off"
    }

    fn check(&self, history: &[Record], ctx: &CheckCtx) -> Vec<Violation> {
        // Per host and term: the attempt last begun, and the earliest failure
        // of that attempt number since.
        let mut last: BTreeMap<(&str, Term), (u32, Option<&Record>)> = BTreeMap::new();
        let mut out = Vec::new();
        for r in history {
            let key = |term: &Term| (r.host.as_str(), *term);
            let (term, attempt) = match node_event(r) {
                Some(Event::MaintainerStartFailed { term, attempt, .. }) => {
                    if let Some((n, first)) = last.get_mut(&key(term)) {
                        if *n == *attempt && first.is_none() {
                            *first = Some(r);
                        }
                    }
                    continue;
                }
                Some(Event::MaintainerStartAttempt { term, attempt }) => (term, *attempt),
                _ => continue,
            };
            let before = last.insert(key(term), (attempt, None));
            let Some((n, Some(failure))) = before.filter(|(n, _)| n + 1 == attempt) else {
                continue;
            };
            let floor_ms = ctx.shortest_ms(ctx.start_backoff_floor_ms(n));
            let gap_ms = r.at_ms - failure.at_ms;
            if gap_ms + STAMP_SLACK_MS >= floor_ms {
                continue;
            }
            out.push(Violation {
                invariant: "start_retries_back_off",
                at_ms: r.at_ms,
                message: format!(
                    "{}: start attempt {attempt} for {term} began {gap_ms}ms after attempt {n} failed; \
                     the backoff after a failed attempt {n} is at least {floor_ms}ms",
                    r.host
                ),
                witnesses: vec![failure.clone(), r.clone()],
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::checkers::test_support::{ctx, H};

    fn attempt(attempt: u32) -> Event {
        Event::MaintainerStartAttempt {
            term: Term(2),
            attempt,
        }
    }
    fn failed(attempt: u32) -> Event {
        Event::MaintainerStartFailed {
            term: Term(2),
            attempt,
            error: "hook failed".into(),
        }
    }

    #[test]
    fn retries_after_their_backoff_and_restarted_runs_pass() {
        // The test context's start backoff: base 1 s, max 8 s.
        let h = H::new()
            .node(0, "n1", attempt(1))
            .node(400, "n1", failed(1))
            .node(1_400, "n1", attempt(2))
            .node(1_500, "n1", failed(2))
            .node(3_500, "n1", attempt(3))
            .node(3_600, "n1", attempt(1))
            .node(3_650, "n2", attempt(1))
            .node(3_700, "n2", failed(1))
            .node(3_800, "n2", attempt(2));
        let v = StartRetriesBackOff.check(&h.0, &ctx(10_000));
        assert_eq!(v.len(), 1, "only n2's retry came early: {v:?}");
        assert!(v[0].message.starts_with("n2:"), "{}", v[0].message);
    }

    #[test]
    fn a_stopped_run_failing_late_does_not_count_against_the_new_run() {
        // Run 2's attempt 1 (at 46.6 s) hangs; run 3's attempt 1 fails at
        // 49.84 s and its attempt 2 waits 1,035 ms; run 2's failure lands
        // in between.
        let h = H::new()
            .node(46_600, "n1", attempt(1))
            .node(48_850, "n1", attempt(1))
            .node(49_840, "n1", failed(1))
            .node(50_646, "n1", failed(1))
            .node(50_875, "n1", attempt(2));
        assert!(StartRetriesBackOff.check(&h.0, &ctx(60_000)).is_empty());
    }

    #[test]
    fn fires_when_a_retry_comes_before_its_backoff_however_slow_the_failure() {
        // The hook took 6 s to fail: 6 s between the attempts' starts hides
        // nothing, the retry came 10 ms after the failure.
        let h = H::new()
            .node(0, "n1", attempt(1))
            .node(1_000, "n1", failed(1))
            .node(2_000, "n1", attempt(2))
            .node(8_000, "n1", failed(2))
            .node(8_010, "n1", attempt(3));
        let v = StartRetriesBackOff.check(&h.0, &ctx(10_000));
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(
            v[0].message.contains("began 10ms after attempt 2 failed")
                && v[0].message.contains("at least 2000ms"),
            "{}",
            v[0].message
        );
    }
}
