//! I1 `no_double_execution`: the invariant, its reasons and limits are on [`NoDoubleExecution`].

use std::collections::{BTreeMap, BTreeSet};

use keel::events::Event;
use keel::storage::JobId;

use super::belief::Offsets;
use super::{CheckCtx, Checker, Violation};
use crate::run::history::{DbEvent, Ev, HarnessEvent, Record};

/// I1 `no_double_execution`: no job runs on two workers at once while both hold a
/// valid claim, no handler outlives its revoked claim by more than the time its
/// worker needs to hear of it, and no job runs after it reached a terminal state.
///
/// A **handler interval** for `(job, attempt)` on host `h` opens at
/// `HandlerStarted { job, attempt }` on `h` and closes at the first of: the
/// `HandlerEnded` of the same `(job, attempt)` on `h`; a `Crash` or `NodeBoot` of
/// `h`; a `ShutdownEnded` on `h` (shutdown drops the handlers that outlive its
/// deadline; whether anything runs on after it is `bounded_shutdown`'s concern);
/// the end of the history.
///
/// A claim `(job, a)` is **revoked** by the first `RescueApplied { job, a }` or
/// `ClaimApplied { job, b > a }` storage applied. Three kinds of violation:
///
/// * **two valid claims**: attempt `b` starts while attempt `a` runs and `a`'s
///   claim was never revoked (storage handed out a job twice).
/// * **outlived its claim**: an interval of `(job, a)` closes (or the run ends)
///   more than `lost_claim_grace_ms` after `a`'s claim was revoked, not counting
///   time its process was frozen (a paused process runs nothing) and any
///   step of storage's clock in the stale window before the revoke, up to
///   `claim_trust` (it aged the claim by that much while its worker, cut off,
///   still trusted it). A worker learns
///   of a revoked claim at its next heartbeat and must drop the handler then
///   (source document 003, M1); a partitioned worker stops on its own before the
///   rescuer may revoke it.
/// * **ran on after hearing**: an interval of `(job, a)` on `h` closes (or the
///   run ends) more than `cancel_grace_ms` after `h` reported `ClaimLost { job,
///   a }`, not counting time `h` was frozen. The worker heard storage say the
///   claim is gone and must drop the handler at once, whatever storage's clock
///   or the request timeout did; the rule above bounds only when it must hear.
/// * **run after terminal**: a `HandlerStarted { job, .. }` after a terminal
///   `FinalizeApplied` or a `CancelApplied` of that job.
/// * **started on a revoked claim**: a `HandlerStarted { job, a }` after `a`'s
///   claim was revoked. A worker starts a claimed job only while its claim is
///   at most half its `claim_trust` old since a good heartbeat (else it asks
///   storage first), and storage revokes only past `stale_threshold` on its
///   own clock, so this needs a worker that ran a job it had heard was lost,
///   or storage's clock stepping by more than `stale_threshold - claim_trust /
///   2` (then excused: a forward step of the one judging clock ages every
///   claim, keel's documented limit). The nodes' clocks have no say.
/// * **finalized under a running handler**: storage applies a finalize of
///   `(job, a)` while a handler of `(job, a)` still runs. The owner finalizes only
///   after its handler ended, so this is another worker writing over the claim
///   (source document 003, H1: a reaped worker clobbering the new claimant).
pub struct NoDoubleExecution;

const NAME: &str = "no_double_execution";

/// An open handler interval.
#[derive(Clone, Copy)]
struct Interval<'a> {
    host: &'a str,
    job: JobId,
    attempt: u32,
    started: usize,
}

#[derive(Default)]
struct Scan<'a> {
    offsets: Offsets,
    open: Vec<Interval<'a>>,
    revoked: BTreeMap<(JobId, u32), &'a Record>,
    terminal: BTreeMap<JobId, &'a Record>,
    out: Vec<Violation>,
    /// Claims whose attempt storage finalized: a later claim ends them, it
    /// does not revoke a live one.
    finalized: BTreeSet<(JobId, u32)>,
    /// When each claim's last handler interval closed, if not yet revoked.
    closed_at_ms: BTreeMap<(JobId, u32), u64>,
    /// The least slack any revoked claim's handler left (see `slack_ms`).
    slack_ms: Option<u64>,
    /// Per `(host, job, attempt)`: the first `ClaimLost` that host reported
    /// since its handler of that attempt started.
    heard: BTreeMap<(&'a str, JobId, u32), &'a Record>,
}

impl Checker for NoDoubleExecution {
    fn name(&self) -> &'static str {
        NAME
    }

    fn check(&self, history: &[Record], ctx: &CheckCtx) -> Vec<Violation> {
        Scan::run(history, ctx).out
    }

    /// The least slack a revoked live claim's handler left: the grace minus
    /// how long it ran on after the revoke, or the grace plus how long before
    /// the revoke it ended.
    fn slack_ms(&self, history: &[Record], ctx: &CheckCtx) -> Option<u64> {
        Scan::run(history, ctx).slack_ms
    }
}

impl<'a> Scan<'a> {
    fn run(history: &'a [Record], ctx: &CheckCtx) -> Self {
        let mut scan = Scan {
            offsets: Offsets::of(history),
            ..Scan::default()
        };
        for r in history {
            scan.step(history, ctx, r);
        }
        if let Some(last) = history.last() {
            for i in std::mem::take(&mut scan.open) {
                scan.close(history, ctx, i, last);
            }
        }
        scan
    }

    fn near(&mut self, slack_ms: u64) {
        self.slack_ms = Some(self.slack_ms.map_or(slack_ms, |s| s.min(slack_ms)));
    }

    /// The first revoke of `(job, attempt)`, by `r`.
    fn revoke(&mut self, ctx: &CheckCtx, r: &'a Record, job: JobId, attempt: u32) {
        if self.revoked.contains_key(&(job, attempt)) {
            return;
        }
        self.revoked.insert((job, attempt), r);
        if self.finalized.contains(&(job, attempt)) {
            return;
        }
        if let Some(closed) = self.closed_at_ms.remove(&(job, attempt)) {
            self.near(ctx.lost_claim_grace_ms + r.at_ms.saturating_sub(closed));
        }
    }

    fn step(&mut self, history: &'a [Record], ctx: &CheckCtx, r: &'a Record) {
        let host = r.host.as_str();
        match &r.ev {
            Ev::Node(Event::HandlerStarted { job, attempt }) => {
                self.started_revoked(ctx, r, *job, *attempt);
                self.start(history, r, *job, *attempt)
            }
            Ev::Node(Event::ClaimLost { job, attempt }) => {
                self.heard.entry((host, *job, *attempt)).or_insert(r);
            }
            Ev::Node(Event::HandlerEnded { job, attempt, .. }) => {
                self.close_where(history, ctx, r, |i| {
                    i.host == host && i.job == *job && i.attempt == *attempt
                });
            }
            Ev::Harness(HarnessEvent::Crash | HarnessEvent::NodeBoot { .. })
            | Ev::Node(Event::ShutdownEnded { .. }) => {
                self.close_where(history, ctx, r, |i| i.host == host);
            }
            Ev::Db(DbEvent::RescueApplied { job, attempt, .. }) => {
                self.revoke(ctx, r, *job, *attempt);
            }
            Ev::Db(DbEvent::ClaimApplied { job, attempt, .. }) => {
                for a in 1..*attempt {
                    self.revoke(ctx, r, *job, a);
                }
            }
            Ev::Db(DbEvent::FinalizeApplied {
                job,
                attempt,
                state,
            }) => {
                self.finalized.insert((*job, *attempt));
                self.finalized_under(history, r, *job, *attempt);
                if state.is_terminal() {
                    self.terminal.entry(*job).or_insert(r);
                }
            }
            Ev::Db(DbEvent::CancelApplied { job }) => {
                self.terminal.entry(*job).or_insert(r);
            }
            _ => {}
        }
    }

    /// A start of `(job, attempt)` by `r` after storage revoked its claim.
    fn started_revoked(&mut self, ctx: &CheckCtx, r: &'a Record, job: JobId, attempt: u32) {
        let Some(revoked) = self.revoked.get(&(job, attempt)).copied() else {
            return;
        };
        let margin_ms = ctx
            .stale_threshold_ms
            .saturating_sub(ctx.claim_trust_ms / 2);
        let claimed_ms = r.at_ms.saturating_sub(ctx.stale_threshold_ms);
        if self.offsets.storage_moved(claimed_ms, r.at_ms) > margin_ms {
            return;
        }
        let message = format!(
            "{job} attempt {attempt} started on {} {}ms after storage revoked its claim",
            r.host,
            r.at_ms - revoked.at_ms
        );
        self.out
            .push(violation(r, message, vec![revoked.clone(), r.clone()]));
    }

    fn start(&mut self, history: &'a [Record], r: &'a Record, job: JobId, attempt: u32) {
        // A start on a revoked claim is `started_revoked`'s to judge, with its
        // allowance for a step of storage's clock: that the job went on to a
        // terminal state under the newer claim changes nothing (swarm seed
        // 3009316: storage's clock stepped back 296 s and forward again, the
        // rescuer handed a claimed-ahead job on, and the newer attempt had
        // completed by the time the hand reached it).
        let revoked = self.revoked.contains_key(&(job, attempt));
        if let Some(end) = self.terminal.get(&job).filter(|_| !revoked) {
            self.out.push(violation(
                r,
                format!(
                    "{job} started on {} after it reached a terminal state",
                    r.host
                ),
                vec![(*end).clone(), r.clone()],
            ));
        }
        // Only an older attempt still running counts here: an older attempt
        // starting beside a newer one started on a claim the newer one's
        // claim revoked, which `started_revoked` judges (swarm seed 3005939:
        // a claimed-ahead job started from a hand after a step of storage's
        // clock let the rescuer hand it on).
        for i in self
            .open
            .iter()
            .filter(|i| i.job == job && i.attempt < attempt)
        {
            if !self.revoked.contains_key(&(job, i.attempt)) {
                let first = &history[i.started];
                let message = format!("{job} attempt {attempt} started on {} while attempt {} held a valid claim on {}", r.host, i.attempt, first.host);
                self.out
                    .push(violation(r, message, vec![first.clone(), r.clone()]));
            }
        }
        self.open
            .retain(|i| !(i.host == r.host && i.job == job && i.attempt == attempt));
        self.heard.remove(&(r.host.as_str(), job, attempt));
        self.open.push(Interval {
            host: r.host.as_str(),
            job,
            attempt,
            started: r.seq,
        });
    }

    fn finalized_under(&mut self, history: &'a [Record], r: &'a Record, job: JobId, attempt: u32) {
        for i in self
            .open
            .iter()
            .filter(|i| i.job == job && i.attempt == attempt)
        {
            let first = &history[i.started];
            let message = format!(
                "{job} attempt {attempt} was finalized while its handler still ran on {}",
                i.host
            );
            self.out
                .push(violation(r, message, vec![first.clone(), r.clone()]));
        }
    }

    fn close_where(
        &mut self,
        history: &'a [Record],
        ctx: &CheckCtx,
        at: &'a Record,
        pred: impl Fn(&Interval<'a>) -> bool,
    ) {
        let (closing, open): (Vec<_>, Vec<_>) = std::mem::take(&mut self.open)
            .into_iter()
            .partition(|i| pred(i));
        self.open = open;
        for i in closing {
            self.close(history, ctx, i, at);
        }
    }

    fn close(&mut self, history: &'a [Record], ctx: &CheckCtx, i: Interval<'a>, at: &'a Record) {
        if self.ran_on_after_hearing(history, ctx, i, at) {
            return;
        }
        let Some(revoked) = self.revoked.get(&(i.job, i.attempt)).copied() else {
            self.closed_at_ms.insert((i.job, i.attempt), at.at_ms);
            return;
        };
        if revoked.seq < i.started {
            return;
        }
        // A frozen process runs nothing: only the time it ran counts. A
        // forward step of storage's clock in the stale window before the
        // revoke aged the claim by that step while its worker (cut off, so
        // deaf to the revoke) still rightly trusted it, keel's documented
        // limit; but never past `claim_trust`, by when a worker stops on its
        // own, and a worker that heard the revoke stops within the grace.
        let frozen = super::frozen_ms(history, i.host, revoked.at_ms, at.at_ms);
        let from_ms = revoked.at_ms.saturating_sub(ctx.stale_threshold_ms);
        let stepped = self
            .offsets
            .storage_moved(from_ms, revoked.at_ms)
            .min(ctx.claim_trust_ms);
        let over = at
            .at_ms
            .saturating_sub(revoked.at_ms)
            .saturating_sub(frozen)
            .saturating_sub(stepped);
        self.near(ctx.lost_claim_grace_ms.saturating_sub(over));
        if over <= ctx.lost_claim_grace_ms {
            return;
        }
        let lost = self.heard.get(&(i.host, i.job, i.attempt)).copied();
        let witnesses = [Some(&history[i.started]), Some(revoked), lost, Some(at)]
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        let message = format!(
            "{} attempt {} kept running on {} for {over}ms after its claim was revoked",
            i.job, i.attempt, i.host
        );
        self.out.push(violation(at, message, witnesses));
    }
}

impl<'a> Scan<'a> {
    /// Whether the handler of `i`, closing at `at`, ran on past `cancel_grace`
    /// after its own worker reported hearing that the claim was lost (and so
    /// was reported). A worker that hears `Lost` drops the handler at once
    /// (source document 003, M1), whatever storage's clock did: measured, the
    /// handler ends in the same millisecond in the simulator and within 16 ms
    /// on a real database. Time its process was frozen does not count.
    fn ran_on_after_hearing(
        &mut self,
        history: &'a [Record],
        ctx: &CheckCtx,
        i: Interval<'a>,
        at: &'a Record,
    ) -> bool {
        let Some(lost) = self.heard.get(&(i.host, i.job, i.attempt)).copied() else {
            return false;
        };
        let frozen = super::frozen_ms(history, i.host, lost.at_ms, at.at_ms);
        let over = at.at_ms.saturating_sub(lost.at_ms).saturating_sub(frozen);
        if over <= ctx.longest_ms(ctx.cancel_grace_ms) {
            return false;
        }
        let message = format!(
            "{} attempt {} kept running on {} for {over}ms after its worker heard the claim was lost",
            i.job, i.attempt, i.host
        );
        let witnesses = vec![history[i.started].clone(), lost.clone(), at.clone()];
        self.out.push(violation(at, message, witnesses));
        true
    }
}

fn violation(at: &Record, message: String, witnesses: Vec<Record>) -> Violation {
    Violation {
        invariant: NAME,
        at_ms: at.at_ms,
        message,
        witnesses,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::checkers::test_support::{ctx, job_finalized, H};
    use keel::storage::JobState;

    fn started(job: u64, attempt: u32) -> Event {
        Event::HandlerStarted {
            job: JobId(job),
            attempt,
        }
    }
    fn ended(job: u64, attempt: u32) -> Event {
        Event::HandlerEnded {
            job: JobId(job),
            attempt,
            outcome: "completed".into(),
        }
    }
    fn claim(job: u64, attempt: u32) -> DbEvent {
        DbEvent::ClaimApplied {
            job: JobId(job),
            attempt,
            owner: "w".into(),
            max_attempts: 10,
            heartbeat_ms: 0,
            issued_ms: 0,
        }
    }
    fn rescue(job: u64, attempt: u32) -> DbEvent {
        DbEvent::RescueApplied {
            job: JobId(job),
            attempt,
            issued_ms: 0,
        }
    }

    /// n1 runs attempt 1 from 10 ms, its claim is rescued at 5 s, and its
    /// handler ends at `end_ms`.
    fn rescued_and_ended(end_ms: u64) -> H {
        let h = H::new().db(0, claim(1, 1)).node(10, "n1", started(1, 1));
        if end_ms < 5_000 {
            h.node(end_ms, "n1", ended(1, 1)).db(5_000, rescue(1, 1))
        } else {
            h.db(5_000, rescue(1, 1)).node(end_ms, "n1", ended(1, 1))
        }
    }

    #[test]
    fn slack_is_the_grace_left_on_the_tightest_revoked_live_claim() {
        let slack = |h: H| NoDoubleExecution.slack_ms(&h.0, &ctx(20_000));
        // Grace 2 s: dropped 1 s after the revoke leaves 1 s; ending 500 ms
        // before it leaves the grace and 500 ms; 3 s after it, nothing.
        assert_eq!(slack(rescued_and_ended(6_000)), Some(1_000));
        assert_eq!(slack(rescued_and_ended(4_500)), Some(2_500));
        assert_eq!(slack(rescued_and_ended(8_000)), Some(0));
        // A finalized attempt that the next claim ends was never revoked live.
        let retried = H::new()
            .db(0, claim(1, 1))
            .node(10, "n1", started(1, 1))
            .node(1_000, "n1", ended(1, 1))
            .db(1_010, job_finalized(1, JobState::Retryable))
            .db(2_000, claim(1, 2));
        assert_eq!(slack(retried), None);
    }

    #[test]
    fn fires_when_a_handler_starts_on_a_claim_storage_had_revoked() {
        // Claimed at 0, rescued at 11 s (its worker held it unheard), then
        // started at 12 s as if its claim stood.
        let h =
            H::new()
                .db(0, claim(1, 1))
                .db(11_000, rescue(1, 1))
                .node(12_000, "n1", started(1, 1));
        let v = NoDoubleExecution.check(&h.0, &ctx(20_000));
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(
            v[0].message
                .contains("job-1 attempt 1 started on n1 1000ms after storage revoked its claim"),
            "{}",
            v[0].message
        );
        // The nodes' clocks 8 s apart change nothing: storage judged.
        let skewed = H::new()
            .harness(
                0,
                "n2",
                HarnessEvent::NodeBoot {
                    boot: 1,
                    skew_ms: 8_000,
                },
            )
            .db(0, claim(1, 1))
            .db(11_000, rescue(1, 1))
            .node(12_000, "n1", started(1, 1));
        assert_eq!(NoDoubleExecution.check(&skewed.0, &ctx(20_000)).len(), 1);
        // Storage's clock stepping 8 s ahead is the documented limit.
        let stepped = H::new()
            .db(0, claim(1, 1))
            .harness(
                5_000,
                crate::world::db::DB_HOST,
                HarnessEvent::ClockJump { jump_ms: 8_000 },
            )
            .db(11_000, rescue(1, 1))
            .node(12_000, "n1", started(1, 1));
        assert!(NoDoubleExecution.check(&stepped.0, &ctx(20_000)).is_empty());
        // Nor does it matter that the newer attempt finished first: the start
        // is judged as one on a revoked claim, excused by the step.
        // A held attempt 1 starts after attempt 2 completed, with or without
        // a step of storage's clock before the handover.
        let held_start_after_newer_done = |step_ms: Option<i64>| {
            let mut h = H::new().db(0, claim(1, 1));
            if let Some(jump_ms) = step_ms {
                h = h.harness(
                    5_000,
                    crate::world::db::DB_HOST,
                    HarnessEvent::ClockJump { jump_ms },
                );
            }
            h.db(11_000, claim(1, 2))
                .node(11_100, "n2", started(1, 2))
                .node(11_200, "n2", ended(1, 2))
                .db(11_300, job_finalized(2, JobState::Completed))
                .node(12_000, "n1", started(1, 1))
        };
        let finished = held_start_after_newer_done(Some(8_000));
        assert!(NoDoubleExecution
            .check(&finished.0, &ctx(20_000))
            .is_empty());
        // Without the step, the same start breaks the invariant.
        let unexcused = held_start_after_newer_done(None);
        let v = NoDoubleExecution.check(&unexcused.0, &ctx(20_000));
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(
            v[0].message.contains("after storage revoked its claim"),
            "{v:?}"
        );
    }

    #[test]
    fn a_rescued_attempt_dropped_within_the_grace_passes() {
        let h = H::new()
            .db(0, claim(1, 1))
            .node(10, "n1", started(1, 1))
            .db(5_000, rescue(1, 1))
            .db(5_100, claim(1, 2))
            .node(5_110, "n2", started(1, 2))
            .node(
                6_000,
                "n1",
                Event::ClaimLost {
                    job: JobId(1),
                    attempt: 1,
                },
            )
            .node(
                6_000,
                "n1",
                Event::HandlerEnded {
                    job: JobId(1),
                    attempt: 1,
                    outcome: "aborted".into(),
                },
            )
            .node(9_000, "n2", ended(1, 2))
            .db(9_010, job_finalized(2, JobState::Completed));
        assert!(NoDoubleExecution.check(&h.0, &ctx(20_000)).is_empty());
    }

    #[test]
    fn a_handler_that_ends_as_its_frozen_process_resumes_passes_and_running_on_after_fires() {
        // n1 is paused with the handler running; the rescuer revokes the claim
        // meanwhile; the handler ends the moment n1 resumes: it ran for 0 ms
        // after the revoke. Ending 5 s after the resume is a violation.
        let frozen = |end_ms: u64| {
            H::new()
                .db(0, claim(1, 1))
                .node(10, "n1", started(1, 1))
                .harness(1_000, "n1", HarnessEvent::Paused)
                .db(5_000, rescue(1, 1))
                .harness(20_000, "n1", HarnessEvent::Resumed)
                .node(end_ms, "n1", ended(1, 1))
        };
        assert!(NoDoubleExecution
            .check(&frozen(20_000).0, &ctx(40_000))
            .is_empty());
        let v = NoDoubleExecution.check(&frozen(25_000).0, &ctx(40_000));
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].message.contains("for 5000ms"), "{}", v[0]);
    }

    #[test]
    fn fires_when_a_handler_ignores_its_lost_claim() {
        let h = H::new()
            .db(0, claim(1, 1))
            .node(10, "n1", started(1, 1))
            .db(5_000, rescue(1, 1))
            .db(5_100, claim(1, 2))
            .node(5_110, "n2", started(1, 2))
            .node(
                6_000,
                "n1",
                Event::ClaimLost {
                    job: JobId(1),
                    attempt: 1,
                },
            )
            .node(30_000, "n1", ended(1, 1));
        let v = NoDoubleExecution.check(&h.0, &ctx(40_000));
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(
            v[0].message
                .contains("kept running on n1 for 24000ms after its worker heard"),
            "{}",
            v[0]
        );
        let seqs: Vec<usize> = v[0].witnesses.iter().map(|w| w.seq).collect();
        assert_eq!(seqs, vec![1, 5, 6], "start, lost, end");
    }

    /// A step of storage's clock excuses a handler that ran on after the
    /// revoke while its worker could not know (up to `claim_trust`), but not
    /// one whose worker heard the claim was lost and kept it running: the
    /// rule that caught `heartbeat_ignores_lost_claim` behind such a step.
    #[test]
    fn a_storage_step_does_not_excuse_running_on_after_hearing_the_claim_was_lost() {
        let lost = |heard_ms: u64, end_ms: u64| {
            H::new()
                .db(0, claim(1, 1))
                .node(10, "n1", started(1, 1))
                .harness(
                    2_000,
                    crate::world::db::DB_HOST,
                    HarnessEvent::ClockJump { jump_ms: 20_000 },
                )
                .db(2_500, rescue(1, 1))
                .node(
                    heard_ms,
                    "n1",
                    Event::ClaimLost {
                        job: JobId(1),
                        attempt: 1,
                    },
                )
                .node(end_ms, "n1", ended(1, 1))
        };
        // Heard at 3 s, dropped at once: holds.
        assert!(NoDoubleExecution
            .check(&lost(3_000, 3_000).0, &ctx(40_000))
            .is_empty());
        // Heard at 3 s, ran on to 9 s: within the revoke rule's allowance
        // (grace plus the step, up to claim_trust), but not after hearing.
        let v = NoDoubleExecution.check(&lost(3_000, 9_000).0, &ctx(40_000));
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(
            v[0].message.contains("for 6000ms after its worker heard"),
            "{}",
            v[0]
        );
    }

    #[test]
    fn an_older_attempt_starting_beside_a_newer_one_started_on_a_revoked_claim() {
        let h = H::new()
            .db(0, claim(1, 1))
            .db(5_000, claim(1, 2))
            .node(5_100, "n2", started(1, 2))
            .node(5_300, "n1", started(1, 1));
        let v = NoDoubleExecution.check(&h.0, &ctx(20_000));
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(
            v[0].message
                .contains("attempt 1 started on n1 300ms after storage revoked its claim"),
            "{}",
            v[0].message
        );
    }

    #[test]
    fn fires_on_two_valid_claims_and_on_a_run_after_terminal() {
        let h = H::new()
            .db(0, claim(1, 1))
            .node(10, "n1", started(1, 1))
            .node(20, "n2", started(1, 2))
            .node(30, "n1", ended(1, 1))
            .node(40, "n2", ended(1, 2))
            .db(50, DbEvent::CancelApplied { job: JobId(1) })
            .node(60, "n3", started(1, 3))
            .node(70, "n3", ended(1, 3));
        let v = NoDoubleExecution.check(&h.0, &ctx(100));
        assert_eq!(v.len(), 2, "{v:?}");
        assert!(v[0].message.contains("held a valid claim"));
        assert!(v[1].message.contains("after it reached a terminal state"));
    }

    #[test]
    fn fires_when_an_attempt_is_finalized_while_its_handler_runs() {
        let done = |attempt| job_finalized(attempt, JobState::Completed);
        let h = H::new()
            .node(10, "n2", started(1, 2))
            .db(20, done(2))
            .node(30, "n2", ended(1, 2));
        let v = NoDoubleExecution.check(&h.0, &ctx(100));
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0]
            .message
            .contains("finalized while its handler still ran on n2"));
        let h = H::new()
            .node(10, "n2", started(1, 2))
            .node(20, "n2", ended(1, 2))
            .db(30, done(2));
        assert!(
            NoDoubleExecution.check(&h.0, &ctx(100)).is_empty(),
            "the owner finalizes after its handler"
        );
    }

    #[test]
    fn a_crash_closes_the_interval() {
        let h = H::new()
            .node(10, "n1", started(1, 1))
            .harness(20, "n1", HarnessEvent::Crash)
            .db(15_000, rescue(1, 1))
            .node(15_100, "n2", started(1, 2));
        assert!(NoDoubleExecution.check(&h.0, &ctx(20_000)).is_empty());
    }
}
