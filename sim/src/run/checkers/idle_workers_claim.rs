//! `idle_workers_claim`: the invariant, its reasons and limits are on [`IdleWorkersClaim`].

use std::collections::{BTreeMap, BTreeSet};

use keel::events::Event;
use keel::storage::JobId;

use super::belief::Offsets;
use super::{CheckCtx, Checker, Violation};
use crate::run::history::{DbEvent, Ev, HarnessEvent, Record};

/// `idle_workers_claim`: an available job with an idle worker is claimed
/// within a bounded delay (`JobsConfig::idle_poll`: an idle worker polls that
/// often), judged once faults have stopped and the cluster has converged
/// (`heal_at_ms + converge_bound_ms`), when nothing excuses a wait.
///
/// What the history shows, and so what is judged:
///
/// * **Worker slots** by their owner id (`node#incarnation/queue/slot`, from
///   `ClaimApplied`). A slot's *hand* is the claims it holds; a claim leaves the
///   hand when storage finalizes it, revokes it (`RescueApplied`, or a later
///   attempt's claim), or its process ends. A slot is **idle** while its hand is
///   empty and its process is the node's live incarnation and is not shutting
///   down. A slot that never claimed is unseen, so never judged idle.
/// * **Available jobs** whose due time the history knows: a new job (its
///   `JobInserted`, or its `JobScheduled` due time), a periodic firing
///   (`PeriodicInserted`), a rescued claim (`RescueApplied`); each until its
///   next claim or its cancel. A retry's due time carries jitter the history
///   does not record, so a failed attempt's retry is not judged.
///
/// A job that stayed unclaimed while an idle slot of its queue stayed idle
/// for `idle_bound_ms` (longer for a job the scheduler must promote first)
/// breaks the promise. A job's queue is the one its
/// claims name; a job never claimed is judged only when every slot serves one
/// queue. Claims compare due times with storage's clock, so the bound grows
/// by how far that clock stepped; the nodes' clocks have no say. The claim order (priority,
/// due time, id) only decides which of several waiting jobs an idle worker
/// takes first; a worker that takes one is no longer idle, so the rest are not
/// held against it.
pub struct IdleWorkersClaim;

const NAME: &str = "idle_workers_claim";

/// How long an idle worker may leave an available job waiting, before clock
/// spread: one idle poll, then the claim's round trip and a finalize retried
/// after an unknown outcome (five 200 ms retries), with a step of stamp slack;
/// a job that the leader's scheduler must first promote (a scheduled or
/// rescued one) may also wait one maintenance round for it.
pub fn idle_bound_ms(ctx: &CheckCtx, promoted: bool) -> u64 {
    let promotion_ms = if promoted {
        ctx.maintenance_interval_ms
    } else {
        0
    };
    ctx.idle_poll_ms + 1_000 + 20 + promotion_ms
}

/// One worker slot's state.
#[derive(Default)]
struct Slot {
    hand: BTreeSet<(JobId, u32)>,
    /// Since when the hand has been empty (`None`: it holds a claim).
    idle_since: Option<u64>,
}

/// A job waiting to be claimed.
struct Waiting<'a> {
    since_ms: u64,
    made: &'a Record,
    queue: Option<&'a str>,
    /// Whether the scheduler must promote it before a claim can take it.
    promoted: bool,
}

/// What the whole history says up front: each job's queue, the jobs still
/// unfinished at the end, and which records claim a job.
struct Ahead<'a> {
    queue_of: BTreeMap<JobId, &'a str>,
    unfinished: BTreeSet<JobId>,
    /// The only queue any slot serves, if there is one.
    only_queue: Option<&'a str>,
}

impl<'a> Ahead<'a> {
    fn of(history: &'a [Record]) -> Self {
        let mut queue_of = BTreeMap::new();
        let mut queues = BTreeSet::new();
        let mut unfinished = BTreeSet::new();
        for r in history {
            match &r.ev {
                Ev::Db(DbEvent::ClaimApplied { job, owner, .. }) => {
                    let queue = owner.split('/').nth(1).unwrap_or("");
                    queue_of.insert(*job, queue);
                    queues.insert(queue);
                }
                Ev::Harness(HarnessEvent::JobsUnfinished { jobs }) => {
                    unfinished.extend(jobs.iter().copied());
                }
                _ => {}
            }
        }
        let only_queue = (queues.len() == 1)
            .then(|| queues.into_iter().next())
            .flatten();
        Ahead {
            queue_of,
            unfinished,
            only_queue,
        }
    }

    fn queue(&self, job: JobId) -> Option<&'a str> {
        self.queue_of.get(&job).copied().or(self.only_queue)
    }
}

/// The scan's state at one point of the history.
struct Scan<'a> {
    ahead: Ahead<'a>,
    /// Storage's clock, on which due times are set.
    offsets: Offsets,
    slots: BTreeMap<&'a str, Slot>,
    /// Per node host, its live holder id, and whether it is shutting down.
    live: BTreeMap<&'a str, (&'a str, bool)>,
    waiting: BTreeMap<JobId, Waiting<'a>>,
    /// Jobs claimed after a given record index, to tell a rescue that made a
    /// job available from one that ended it (cancelled, discarded).
    claims_after: BTreeMap<JobId, Vec<usize>>,
    out: Vec<Violation>,
    reported: BTreeSet<JobId>,
}

impl Checker for IdleWorkersClaim {
    fn name(&self) -> &'static str {
        NAME
    }

    fn property(&self) -> super::Property {
        super::Property::Liveness
    }

    fn check(&self, history: &[Record], ctx: &CheckCtx) -> Vec<Violation> {
        let from_ms = ctx.heal_at_ms + ctx.converge_bound_ms;
        let spread_ms = Offsets::of(history).storage_moved(from_ms, ctx.end_at_ms);
        let bound_ms = |promoted| idle_bound_ms(ctx, promoted) + spread_ms;
        let mut scan = Scan::new(history);
        for r in history {
            scan.judge(&bound_ms, from_ms, r.at_ms);
            scan.step(r);
        }
        scan.judge(&bound_ms, from_ms, ctx.end_at_ms);
        scan.out
    }
}

impl<'a> Scan<'a> {
    fn new(history: &'a [Record]) -> Self {
        let mut claims_after: BTreeMap<JobId, Vec<usize>> = BTreeMap::new();
        for r in history {
            if let Ev::Db(DbEvent::ClaimApplied { job, .. }) = &r.ev {
                claims_after.entry(*job).or_default().push(r.seq);
            }
        }
        Scan {
            ahead: Ahead::of(history),
            offsets: Offsets::of(history),
            slots: BTreeMap::new(),
            live: BTreeMap::new(),
            waiting: BTreeMap::new(),
            claims_after,
            out: Vec::new(),
            reported: BTreeSet::new(),
        }
    }

    /// Report every job that, by `now_ms`, waited a whole `bound_ms` while a
    /// live slot of its queue sat idle, counting from `from_ms` at the earliest.
    fn judge(&mut self, bound_ms: &dyn Fn(bool) -> u64, from_ms: u64, now_ms: u64) {
        for (job, w) in &self.waiting {
            let bound_ms = bound_ms(w.promoted);
            if self.reported.contains(job) {
                continue;
            }
            let Some(queue) = w.queue else { continue };
            let Some((owner, idle_since)) = self.idlest(queue) else {
                continue;
            };
            let since = w.since_ms.max(idle_since).max(from_ms);
            if now_ms < since + bound_ms {
                continue;
            }
            self.reported.insert(*job);
            self.out.push(Violation {
                invariant: NAME,
                at_ms: since + bound_ms,
                message: format!(
                    "{job} was available from {}ms and {owner} idle from {idle_since}ms, \
                     but nobody claimed it within {bound_ms}ms",
                    w.since_ms
                ),
                witnesses: vec![w.made.clone()],
            });
        }
    }

    /// The live slot of `queue` idle the longest, with when it became idle.
    fn idlest(&self, queue: &str) -> Option<(&'a str, u64)> {
        self.slots
            .iter()
            .filter(|(owner, _)| owner.split('/').nth(1) == Some(queue) && self.is_live(owner))
            .filter_map(|(owner, s)| s.idle_since.map(|t| (*owner, t)))
            .min_by_key(|(_, t)| *t)
    }

    /// Whether `owner`'s process is its node's live incarnation and running.
    fn is_live(&self, owner: &str) -> bool {
        let holder = owner.split('/').next().unwrap_or(owner);
        let node = holder.split('#').next().unwrap_or(holder);
        self.live
            .get(node)
            .is_some_and(|(live, stopping)| *live == holder && !stopping)
    }

    fn wait(&mut self, job: JobId, since_ms: u64, made: &'a Record, promoted: bool) {
        let queue = self.ahead.queue(job);
        self.waiting.insert(
            job,
            Waiting {
                since_ms,
                made,
                queue,
                promoted,
            },
        );
    }

    fn step(&mut self, r: &'a Record) {
        let at = r.at_ms;
        match &r.ev {
            Ev::Node(Event::RuntimeStarted { holder }) => {
                self.live.insert(r.host.as_str(), (holder.as_str(), false));
            }
            Ev::Node(Event::ShutdownBegan { .. })
            | Ev::Harness(HarnessEvent::Crash | HarnessEvent::NodeBoot { .. }) => {
                if let Some(l) = self.live.get_mut(r.host.as_str()) {
                    l.1 = true;
                }
            }
            Ev::Db(DbEvent::JobInserted { job } | DbEvent::PeriodicInserted { job, .. }) => {
                self.wait(*job, at, r, false);
            }
            Ev::Db(DbEvent::JobScheduled { job, due_ms }) => {
                // Due on storage's clock; in true time, as its offset stood.
                let lead_ms = self.offsets.storage_ms(at) - i64::try_from(at).unwrap_or(i64::MAX);
                let due = u64::try_from(due_ms - lead_ms).unwrap_or(0).max(at);
                self.wait(*job, due, r, true);
            }
            Ev::Db(DbEvent::CancelApplied { job }) => {
                self.waiting.remove(job);
            }
            Ev::Db(DbEvent::ClaimApplied {
                job,
                attempt,
                owner,
                ..
            }) => {
                self.waiting.remove(job);
                for a in 1..*attempt {
                    self.release(*job, a, at);
                }
                let slot = self.slots.entry(owner.as_str()).or_default();
                slot.hand.insert((*job, *attempt));
                slot.idle_since = None;
            }
            Ev::Db(DbEvent::FinalizeApplied { job, attempt, .. }) => {
                self.release(*job, *attempt, at);
            }
            Ev::Db(DbEvent::RescueApplied { job, attempt, .. }) => {
                self.release(*job, *attempt, at);
                // A rescue that cancelled or discarded the job ends it: only
                // one claimed again, or still unfinished at the end, waits.
                let claimed_later = self
                    .claims_after
                    .get(job)
                    .is_some_and(|seqs| seqs.iter().any(|s| *s > r.seq));
                if claimed_later || self.ahead.unfinished.contains(job) {
                    self.wait(*job, at, r, true);
                }
            }
            _ => {}
        }
    }

    /// `(job, attempt)` leaves whatever hand holds it at `at_ms`.
    fn release(&mut self, job: JobId, attempt: u32, at_ms: u64) {
        for slot in self.slots.values_mut() {
            if slot.hand.remove(&(job, attempt)) && slot.hand.is_empty() {
                slot.idle_since = Some(at_ms);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::checkers::test_support::{ctx, H};
    use keel::storage::JobState;

    fn claim(job: u64, owner: &str) -> DbEvent {
        DbEvent::ClaimApplied {
            job: JobId(job),
            attempt: 1,
            owner: owner.into(),
            max_attempts: 10,
            heartbeat_ms: 0,
            issued_ms: 0,
        }
    }
    fn done(job: u64) -> DbEvent {
        DbEvent::FinalizeApplied {
            job: JobId(job),
            attempt: 1,
            state: JobState::Completed,
        }
    }
    fn inserted(job: u64) -> DbEvent {
        DbEvent::JobInserted { job: JobId(job) }
    }

    /// n1's worker claims job 1 and, with the same claim, `others` for n9's
    /// worker (whose process the history never starts), and finishes job 1 at
    /// 30 s (the test context with its end at 60 s heals at 30 s and converges
    /// 20 s later, at 50 s).
    fn idle_from_30s(others: &[u64]) -> H {
        let mut h = H::new()
            .node(
                0,
                "n1",
                Event::RuntimeStarted {
                    holder: "n1#a".into(),
                },
            )
            .db(1_000, claim(1, "n1#a/default/0"));
        for job in others {
            h = h.db(1_000, claim(*job, "n9#z/default/0"));
        }
        h.db(30_000, done(1))
    }

    /// [`idle_from_30s`]; job 2 is inserted at 50 s and claimed at
    /// `claimed_at`.
    fn quiet_then_job(claimed_at: Option<u64>) -> H {
        let h = idle_from_30s(&[]).db(50_000, inserted(2));
        match claimed_at {
            Some(at) => h.db(at, claim(2, "n1#a/default/0")),
            None => h,
        }
    }

    #[test]
    fn a_job_claimed_within_a_poll_or_with_no_idle_worker_passes() {
        // The test context's idle_poll is 500 ms: the bound is 1,520 ms.
        let h = quiet_then_job(Some(50_600));
        assert!(IdleWorkersClaim.check(&h.0, &ctx(60_000)).is_empty());
        // The only worker's process was replaced: nobody idle is alive.
        let gone = quiet_then_job(None).harness(40_000, "n1", HarnessEvent::Crash);
        assert!(IdleWorkersClaim.check(&gone.0, &ctx(60_000)).is_empty());
    }

    #[test]
    fn other_queues_and_rescues_that_ended_a_job_are_not_held_against_idle_workers() {
        // Job 3 belongs to queue `mail` (its later claim says so): n1's idle
        // `default` slot owes it nothing.
        let other_queue = quiet_then_job(Some(50_100))
            .db(50_200, inserted(3))
            .db(58_000, claim(3, "n2#b/mail/0"));
        assert!(IdleWorkersClaim
            .check(&other_queue.0, &ctx(60_000))
            .is_empty());
        // Job 4's rescue discarded it (never claimed again, not unfinished at
        // the end); job 5's made it available again, and it waited.
        let rescued = |job: u64| DbEvent::RescueApplied {
            job: JobId(job),
            attempt: 1,
            issued_ms: 0,
        };
        let h = idle_from_30s(&[4, 5])
            .db(51_000, rescued(4))
            .db(51_000, rescued(5))
            .harness(
                60_000,
                "sim",
                HarnessEvent::JobsUnfinished {
                    jobs: vec![JobId(5)],
                },
            );
        let v = IdleWorkersClaim.check(&h.0, &ctx(60_000));
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].message.starts_with("job-5 "), "{}", v[0].message);
    }

    #[test]
    fn fires_when_a_job_waits_past_the_bound_beside_an_idle_worker() {
        let h = quiet_then_job(Some(55_000));
        let v = IdleWorkersClaim.check(&h.0, &ctx(60_000));
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!(v[0].at_ms, 51_520);
        assert!(
            v[0].message
                .contains("job-2 was available from 50000ms and n1#a/default/0 idle from 30000ms"),
            "{}",
            v[0].message
        );
        let never = quiet_then_job(None);
        assert_eq!(IdleWorkersClaim.check(&never.0, &ctx(60_000)).len(), 1);
    }
}
