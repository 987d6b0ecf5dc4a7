//! Model-based property test: random sequences of storage calls and clock moves
//! run side by side on the model (`MemStorage`) and on each engine of
//! [`engines::EngineKind::ALL`], through [`keel::storage::ops::apply_admin`]
//! (the runtime's calls and the operator's), and every reply must be equal. A
//! mismatch fails with the op's index, the op and both replies, and proptest
//! shrinks the sequence to a minimal one. Every op and reply must also survive
//! the JSON a wire carries them in.
//!
//! Storage judges time on its own clock, so the model and the engine share one
//! [`ManualClock`], set to the run's time before every call; steps pass only
//! durations (a lease's ttl, a staleness window, a retention, a retry or snooze
//! delay), never a time of their own.
//!
//! The seed is fixed so runs are repeatable; set `PROPTEST_RNG_SEED` to explore
//! others. The last trial proves the comparison can fail: an engine whose
//! heartbeat forgets to check the owner must be caught.

mod engines;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use engines::{EngineKind, SharedStorage};
use keel::clock::{ManualClock, SharedClock, Timestamp};
use keel::storage::admin::LIST_LIMIT_MAX;
use keel::storage::ops::{apply_admin, Op, Remote, Reply, Transport};
use keel::storage::{
    AdminStorage, Claim, EnqueueRequest, Finalize, JobFilter, JobId, JobState, JobStore,
    MemStorage, PeriodicOutcome, QueueConfig, StorageResult, Term,
};
use libtest_mimic::{Arguments, Failed, Trial};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, RngSeed, TestCaseError, TestError, TestRunner};
use serde_json::json;

fn main() {
    let args = Arguments::from_args();
    engines::note_unavailable("storage_model");
    let mut trials: Vec<Trial> = EngineKind::ALL
        .into_iter()
        .map(|kind| engines::trial(kind, "agrees_with_the_model", move || check_engine(kind)))
        .collect();
    trials.push(Trial::test(
        "harness::catches_a_heartbeat_that_ignores_the_owner",
        catches_a_wrong_engine,
    ));
    let conclusion = libtest_mimic::run(&args, trials);
    engines::cleanup();
    conclusion.exit();
}

// ---------------------------------------------------------------- the check

const SEED_DEFAULT: u64 = 0x6b65_656c; // "keel"
const T0: Timestamp = Timestamp(1_700_000_000_000);

fn seed() -> u64 {
    std::env::var("PROPTEST_RNG_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(SEED_DEFAULT)
}

/// Hold `kind` to the model for its share of random sequences.
fn check_engine(kind: EngineKind) -> Result<(), Failed> {
    let seed = seed();
    check(kind.model_cases(), seed, |case, clock| async move {
        kind.open(&format!("{}::model_{case}", kind.name()), clock)
            .await
    })
    .map_err(|e| format!("{e}\n(seed {seed}: rerun with PROPTEST_RNG_SEED={seed})").into())
}

/// Run `cases` random sequences; each opens a fresh engine with
/// `open(case, clock)`, on the clock the model of that case reads too.
fn check<F, Fut>(cases: u32, seed: u64, open: F) -> Result<(), TestError<Vec<Step>>>
where
    F: Fn(u32, SharedClock) -> Fut,
    Fut: Future<Output = Result<SharedStorage, String>>,
{
    let config = Config {
        cases,
        rng_seed: RngSeed::Fixed(seed),
        // Minimal failures are reported in the message; no regression files.
        failure_persistence: None,
        ..Config::default()
    };
    let opened = AtomicU32::new(0);
    TestRunner::new(config).run(&proptest::collection::vec(step(), 1..=40), |steps| {
        let case = opened.fetch_add(1, Ordering::Relaxed);
        // A fresh runtime per case, like the fresh store.
        engines::block_on(async {
            let clock = Arc::new(ManualClock::new(T0));
            let engine = open(case, clock.clone())
                .await
                .map_err(TestCaseError::fail)?;
            let model = MemStorage::with_clock(clock.clone());
            compare(&model, &*engine, &clock, &steps)
                .await
                .map_err(TestCaseError::fail)
        })
    })
}

/// Apply `steps` to both stores, then compare everything they hold. `clock` is
/// storage's clock, which both stores read: set to the run's time before each
/// call.
async fn compare(
    model: &dyn AdminStorage,
    engine: &dyn AdminStorage,
    clock: &ManualClock,
    steps: &[Step],
) -> Result<(), String> {
    let mut run = Run::default();
    for (i, step) in steps.iter().enumerate() {
        let Some(op) = run.op(step) else { continue };
        clock.set(run.now());
        let at = format!("op #{i} (storage at T0+{}ms)", run.clock);
        let want = same(model, engine, op, &at).await?;
        run.observe(&want);
    }
    let mut finale = vec![
        Op::CountByState,
        Op::ListUnfinished { limit: u32::MAX },
        Op::ListJobs {
            filter: JobFilter::all(LIST_LIMIT_MAX),
        },
        Op::ListQueues,
        Op::ListLeases,
        Op::ListSchedules,
    ];
    for id in 1..=run.max_id + 1 {
        finale.push(Op::GetJob { job: JobId(id) });
        finale.push(Op::ListEffects { job: JobId(id) });
        for key in EFFECT_KEYS {
            finale.push(Op::GetEffect {
                job: JobId(id),
                key: key.into(),
            });
        }
    }
    finale.extend(LEASES.map(|l| Op::GetLease { name: l.into() }));
    finale.extend(QUEUES.map(|q| Op::GetQueue { name: q.into() }));
    for op in finale {
        same(model, engine, op, "final state").await?;
    }
    Ok(())
}

/// `value` read back from the JSON it writes itself as: what a wire (the
/// simulator's, the CLI's) carries must arrive unchanged.
macro_rules! round_trip {
    ($value:expr, $ty:ty) => {{
        let value: &$ty = $value;
        match serde_json::to_string(value) {
            Err(e) => Err(format!("does not serialize: {e}")),
            Ok(text) => match serde_json::from_str::<$ty>(&text) {
                Err(e) => Err(format!("{text} does not parse: {e}")),
                Ok(back) if back == *value => Ok(()),
                Ok(back) => Err(format!("{text} reads back as {back:?}")),
            },
        }
    }};
}

async fn same(
    model: &dyn AdminStorage,
    engine: &dyn AdminStorage,
    op: Op,
    at: &str,
) -> Result<Reply, String> {
    let want = apply_admin(model, op.clone()).await;
    let got = apply_admin(engine, op.clone()).await;
    if want != got {
        return Err(format!(
            "{at}: {op:?}\n  model:  {want:?}\n  engine: {got:?}"
        ));
    }
    round_trip!(&op, Op).map_err(|e| format!("{at}: {op:?}: {e}"))?;
    round_trip!(&want, Reply).map_err(|e| format!("{at}: {op:?} answered {want:?}: {e}"))?;
    Ok(want)
}

// ---------------------------------------------------------------- steps

const QUEUES: [&str; 2] = ["q1", "q2"];
const KINDS: [&str; 2] = ["k1", "k2"];
const OWNERS: [&str; 3] = ["w1", "w2", "w3"];
const UNIQUE_KEYS: [&str; 3] = ["u1", "u2", "u3"];
const EFFECT_KEYS: [&str; 2] = ["e1", "e2"];
const LEASES: [&str; 2] = ["l1", "l2"];
const HOLDERS: [&str; 3] = ["h1", "h2", "h3"];
const PERIODICS: [&str; 2] = ["p1", "p2"];
const SCHEDULES: [&str; 2] = ["every 60s", "cron 0 * * * * *"];
/// The states an operator's listing may ask for, a bit each.
const STATES: [JobState; 7] = [
    JobState::Scheduled,
    JobState::Available,
    JobState::Running,
    JobState::Retryable,
    JobState::Completed,
    JobState::Cancelled,
    JobState::Discarded,
];

/// One random step; resolved into an [`Op`] against what the run saw so far.
#[derive(Clone, Debug)]
enum Step {
    AdvanceClock(i64),
    Enqueue(ReqSpec),
    EnqueueBatch(Vec<ReqSpec>),
    Claim {
        queue: usize,
        owner: usize,
        limit: u32,
    },
    Heartbeat {
        claim: ClaimPick,
        owner: Who,
    },
    /// With `next`, a finalize that also claims: (queue, limit).
    Finalize {
        claim: ClaimPick,
        owner: Who,
        outcome: OutcomeSpec,
        next: Option<(usize, u32)>,
    },
    ApplyEffect {
        claim: ClaimPick,
        owner: Who,
        key: usize,
        value: u8,
    },
    GetEffect {
        job: JobPick,
        key: usize,
    },
    RequestCancel {
        job: JobPick,
    },
    RescueStale {
        stale_after_ms: u64,
    },
    PromoteDue,
    Cleanup {
        retention_ms: u64,
        limit: u32,
    },
    Time,
    SetQueue {
        queue: usize,
        workers: Option<u32>,
        paused: bool,
    },
    GetQueue {
        queue: usize,
    },
    Acquire {
        lease: usize,
        holder: usize,
        ttl_ms: u64,
        /// The caller's newest term (fenced acquire), or unfenced.
        known: Option<u64>,
    },
    Renew {
        lease: usize,
        grant: Grant,
        ttl_ms: u64,
    },
    Resign {
        lease: usize,
        grant: Grant,
    },
    LeaseHeartbeat {
        lease: usize,
        grant: Grant,
    },
    GetLease {
        lease: usize,
    },
    FirePeriodic {
        name: usize,
        slot: i64,
        schedule: usize,
        lease: usize,
        grant: Grant,
        req: ReqSpec,
    },
    CountByState,
    GetJob {
        job: JobPick,
    },
    ListUnfinished {
        limit: u32,
    },
    // The operator's calls.
    ListJobs {
        /// A bit per entry of [`STATES`]; none: every state.
        states: u8,
        queue: Option<usize>,
        kind: Option<usize>,
        /// Older than this job (a page's cursor), or from the newest.
        before: Option<JobPick>,
        /// 0 and past [`LIST_LIMIT_MAX`] are refused.
        limit: u32,
    },
    ListEffects {
        job: JobPick,
    },
    ListQueues,
    ListLeases,
    ListSchedules,
    RetryJob {
        job: JobPick,
    },
    DiscardJob {
        job: JobPick,
    },
    DeleteJob {
        job: JobPick,
    },
}

#[derive(Clone, Debug)]
struct ReqSpec {
    queue: usize,
    kind: usize,
    /// 10 is out of range: validation, and all-or-nothing batches.
    priority: u8,
    delay_ms: Option<i64>,
    max_attempts: u32,
    unique_key: Option<usize>,
    payload: u8,
}

/// Which claim a step acts for: the latest handed out (likely still live), or
/// any seen so far (often stale).
#[derive(Clone, Debug)]
enum ClaimPick {
    Latest,
    Any(Index),
}

/// Which job a step names: any id up to two past the last one made.
#[derive(Clone, Debug)]
struct JobPick(Index);

/// Who acts for a claim: its own owner, or one from the pool (maybe the same).
#[derive(Clone, Copy, Debug)]
enum Who {
    Owner,
    Pool(usize),
}

#[derive(Clone, Debug)]
enum OutcomeSpec {
    Completed,
    /// The backoff, in ms from storage's now.
    Retry(u64),
    Discard,
    /// The delay, in ms from storage's now.
    Snooze(u64),
    Cancel,
}

/// Who claims to hold a lease: the latest grant of that lease (holder and
/// term), or a guess at both.
#[derive(Clone, Copy, Debug)]
enum Grant {
    Latest,
    Guess { holder: usize, term: u64 },
}

/// Mostly the first queue, so claims find jobs; sometimes the other.
fn queue() -> impl Strategy<Value = usize> {
    prop_oneof![3 => Just(0), 1 => Just(1)]
}

fn req_spec() -> impl Strategy<Value = ReqSpec> {
    (
        queue(),
        0..KINDS.len(),
        prop_oneof![12 => 0u8..=9, 1 => Just(10u8)],
        prop_oneof![3 => Just(None), 1 => (-1_000i64..3_000).prop_map(Some)],
        1u32..=4,
        prop_oneof![2 => Just(None), 1 => (0..UNIQUE_KEYS.len()).prop_map(Some)],
        0u8..4,
    )
        .prop_map(
            |(queue, kind, priority, delay_ms, max_attempts, unique_key, payload)| ReqSpec {
                queue,
                kind,
                priority,
                delay_ms,
                max_attempts,
                unique_key,
                payload,
            },
        )
}

fn who() -> impl Strategy<Value = Who> {
    prop_oneof![3 => Just(Who::Owner), 1 => (0..OWNERS.len()).prop_map(Who::Pool)]
}

fn grant() -> impl Strategy<Value = Grant> {
    prop_oneof![
        3 => Just(Grant::Latest),
        2 => (0..HOLDERS.len(), 0u64..=4).prop_map(|(holder, term)| Grant::Guess { holder, term }),
    ]
}

fn claim_pick() -> impl Strategy<Value = ClaimPick> {
    prop_oneof![
        Just(ClaimPick::Latest),
        any::<Index>().prop_map(ClaimPick::Any)
    ]
}

fn job_pick() -> impl Strategy<Value = JobPick> {
    any::<Index>().prop_map(JobPick)
}

/// A retry or snooze delay in ms: often zero (due at once), else up to 3 s.
fn delay_ms() -> impl Strategy<Value = u64> {
    prop_oneof![1 => Just(0u64), 6 => 1u64..3_000]
}

fn outcome() -> impl Strategy<Value = OutcomeSpec> {
    prop_oneof![
        Just(OutcomeSpec::Completed),
        delay_ms().prop_map(OutcomeSpec::Retry),
        Just(OutcomeSpec::Discard),
        delay_ms().prop_map(OutcomeSpec::Snooze),
        Just(OutcomeSpec::Cancel),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    let lease = 0..LEASES.len();
    prop_oneof![
        5 => (0i64..=3_000).prop_map(Step::AdvanceClock),
        6 => req_spec().prop_map(Step::Enqueue),
        1 => proptest::collection::vec(req_spec(), 0..=4).prop_map(Step::EnqueueBatch),
        6 => (queue(), 0..OWNERS.len(), 1u32..=3)
            .prop_map(|(queue, owner, limit)| Step::Claim { queue, owner, limit }),
        3 => (claim_pick(), who()).prop_map(|(claim, owner)| Step::Heartbeat { claim, owner }),
        5 => (claim_pick(), who(), outcome(), proptest::option::of((queue(), 1u32..=3)))
            .prop_map(|(claim, owner, outcome, next)| Step::Finalize { claim, owner, outcome, next }),
        3 => (claim_pick(), who(), 0..EFFECT_KEYS.len(), 0u8..4).prop_map(
            |(claim, owner, key, value)| Step::ApplyEffect { claim, owner, key, value }
        ),
        1 => (job_pick(), 0..EFFECT_KEYS.len()).prop_map(|(job, key)| Step::GetEffect { job, key }),
        2 => job_pick().prop_map(|job| Step::RequestCancel { job }),
        // Zero: everything not heartbeated at this very millisecond is stale.
        3 => prop_oneof![1 => Just(0u64), 2 => 1u64..2_000]
            .prop_map(|stale_after_ms| Step::RescueStale { stale_after_ms }),
        3 => Just(Step::PromoteDue),
        1 => (0u64..3_000, 0u32..=3)
            .prop_map(|(retention_ms, limit)| Step::Cleanup { retention_ms, limit }),
        1 => Just(Step::Time),
        1 => (0..QUEUES.len(), prop::option::of(0u32..=4), prop::bool::weighted(0.3))
            .prop_map(|(queue, workers, paused)| Step::SetQueue { queue, workers, paused }),
        1 => (0..QUEUES.len()).prop_map(|queue| Step::GetQueue { queue }),
        2 => (lease.clone(), 0..HOLDERS.len(), 500u64..=5_000, prop::option::of(0u64..4))
            .prop_map(|(lease, holder, ttl_ms, known)| Step::Acquire { lease, holder, ttl_ms, known }),
        1 => (lease.clone(), grant(), 0u64..=5_000)
            .prop_map(|(lease, grant, ttl_ms)| Step::Renew { lease, grant, ttl_ms }),
        1 => (lease.clone(), grant()).prop_map(|(lease, grant)| Step::Resign { lease, grant }),
        1 => (lease.clone(), grant())
            .prop_map(|(lease, grant)| Step::LeaseHeartbeat { lease, grant }),
        1 => lease.clone().prop_map(|lease| Step::GetLease { lease }),
        2 => (0..PERIODICS.len(), 0i64..3, 0..SCHEDULES.len(), lease, grant(), req_spec())
            .prop_map(|(name, slot, schedule, lease, grant, req)| Step::FirePeriodic {
                name,
                slot,
                schedule,
                lease,
                grant,
                req
            }),
        1 => Just(Step::CountByState),
        1 => job_pick().prop_map(|job| Step::GetJob { job }),
        1 => (0u32..=5).prop_map(|limit| Step::ListUnfinished { limit }),
        2 => list_jobs(),
        1 => job_pick().prop_map(|job| Step::ListEffects { job }),
        1 => Just(Step::ListQueues),
        1 => Just(Step::ListLeases),
        1 => Just(Step::ListSchedules),
        2 => job_pick().prop_map(|job| Step::RetryJob { job }),
        1 => job_pick().prop_map(|job| Step::DiscardJob { job }),
        1 => job_pick().prop_map(|job| Step::DeleteJob { job }),
    ]
}

/// An operator's listing: mostly every state, small pages, now and then a
/// limit that is refused.
fn list_jobs() -> impl Strategy<Value = Step> {
    (
        prop_oneof![2 => Just(0u8), 1 => 1u8..(1 << STATES.len())],
        prop::option::of(0..QUEUES.len()),
        prop::option::of(0..KINDS.len()),
        prop::option::of(job_pick()),
        prop_oneof![8 => 1u32..=4, 1 => Just(0), 1 => Just(LIST_LIMIT_MAX + 1)],
    )
        .prop_map(|(states, queue, kind, before, limit)| Step::ListJobs {
            states,
            queue,
            kind,
            before,
            limit,
        })
}

/// What a run has seen, to turn steps into concrete ops.
#[derive(Default)]
struct Run {
    /// Storage's time, in milliseconds since `T0`: the shared clock is set to
    /// it before each call.
    clock: i64,
    /// Every claim handed out, with its owner; stale ones stay, on purpose.
    claims: Vec<(Claim, String)>,
    /// The latest grant per lease: its term and holder.
    grants: BTreeMap<String, (Term, String)>,
    max_id: u64,
}

impl Run {
    fn now(&self) -> Timestamp {
        Timestamp(T0.0 + self.clock)
    }

    fn req(&self, spec: &ReqSpec) -> EnqueueRequest {
        let mut req = EnqueueRequest::new(KINDS[spec.kind], json!({ "n": spec.payload }))
            .queue(QUEUES[spec.queue])
            .priority(spec.priority)
            .max_attempts(spec.max_attempts);
        if let Some(delay) = spec.delay_ms {
            req = req.scheduled_at(Timestamp(self.now().0 + delay));
        }
        if let Some(key) = spec.unique_key {
            req = req.unique_key(UNIQUE_KEYS[key]);
        }
        req
    }

    /// A claim seen so far (or a made-up one before any), and who acts for it.
    fn claim(&self, pick: &ClaimPick, who: Who) -> (Claim, String) {
        let made_up = || {
            let claim = Claim {
                job: JobId(1),
                attempt: 1,
            };
            (claim, OWNERS[0].to_owned())
        };
        let (claim, owner) = match pick {
            ClaimPick::Latest => self.claims.last().cloned().unwrap_or_else(made_up),
            ClaimPick::Any(_) if self.claims.is_empty() => made_up(),
            ClaimPick::Any(i) => self.claims[i.index(self.claims.len())].clone(),
        };
        match who {
            Who::Owner => (claim, owner),
            Who::Pool(i) => (claim, OWNERS[i].to_owned()),
        }
    }

    fn job(&self, pick: &JobPick) -> JobId {
        JobId(pick.0.index(self.max_id as usize + 2) as u64 + 1)
    }

    /// The holder and term a lease step claims.
    fn grant(&self, lease: usize, grant: Grant) -> (String, Term) {
        match grant {
            Grant::Latest => match self.grants.get(LEASES[lease]) {
                Some((term, holder)) => (holder.clone(), *term),
                None => (HOLDERS[0].to_owned(), Term(1)),
            },
            Grant::Guess { holder, term } => (HOLDERS[holder].to_owned(), Term(term)),
        }
    }

    /// The op a step makes, to be applied once storage's clock reads
    /// [`now`](Self::now); `None` for a step that only moves the clock.
    fn op(&mut self, step: &Step) -> Option<Op> {
        let op = match step {
            Step::AdvanceClock(ms) => {
                self.clock += ms;
                return None;
            }
            Step::Enqueue(spec) => Op::Enqueue {
                req: self.req(spec),
            },
            Step::EnqueueBatch(specs) => Op::EnqueueBatch {
                reqs: specs.iter().map(|s| self.req(s)).collect(),
            },
            Step::Claim {
                queue,
                owner,
                limit,
            } => Op::Claim {
                queue: QUEUES[*queue].into(),
                owner: OWNERS[*owner].into(),
                limit: *limit,
            },
            Step::Heartbeat { claim, owner } => {
                let (claim, owner) = self.claim(claim, *owner);
                Op::Heartbeat { claim, owner }
            }
            Step::Finalize {
                claim,
                owner,
                outcome,
                next,
            } => {
                let (claim, owner) = self.claim(claim, *owner);
                let outcome = match outcome {
                    OutcomeSpec::Completed => Finalize::Completed,
                    OutcomeSpec::Retry(d) => Finalize::Retry {
                        error: format!("failed at {}", self.clock),
                        delay: Duration::from_millis(*d),
                    },
                    OutcomeSpec::Discard => Finalize::Discard {
                        error: "discarded".into(),
                    },
                    OutcomeSpec::Snooze(d) => Finalize::Snooze {
                        delay: Duration::from_millis(*d),
                    },
                    OutcomeSpec::Cancel => Finalize::Cancel {
                        reason: "cancelled".into(),
                    },
                };
                match next {
                    Some((queue, limit)) => Op::FinalizeAndClaim {
                        claim,
                        owner,
                        outcome,
                        queue: QUEUES[*queue].into(),
                        limit: *limit,
                    },
                    None => Op::Finalize {
                        claim,
                        owner,
                        outcome,
                    },
                }
            }
            Step::ApplyEffect {
                claim,
                owner,
                key,
                value,
            } => {
                let (claim, owner) = self.claim(claim, *owner);
                Op::ApplyEffect {
                    claim,
                    owner,
                    key: EFFECT_KEYS[*key].into(),
                    value: json!(value),
                }
            }
            Step::GetEffect { job, key } => Op::GetEffect {
                job: self.job(job),
                key: EFFECT_KEYS[*key].into(),
            },
            Step::RequestCancel { job } => Op::RequestCancel { job: self.job(job) },
            Step::RescueStale { stale_after_ms } => Op::RescueStale {
                stale_after_ms: *stale_after_ms,
            },
            Step::PromoteDue => Op::PromoteDue,
            Step::Cleanup {
                retention_ms,
                limit,
            } => Op::Cleanup {
                retention_ms: *retention_ms,
                limit: *limit,
            },
            Step::Time => Op::Time,
            Step::SetQueue {
                queue,
                workers,
                paused,
            } => Op::SetQueue {
                config: QueueConfig {
                    name: QUEUES[*queue].into(),
                    workers: *workers,
                    paused: *paused,
                },
            },
            Step::GetQueue { queue } => Op::GetQueue {
                name: QUEUES[*queue].into(),
            },
            Step::Acquire {
                lease,
                holder,
                ttl_ms,
                known,
            } => Op::TryAcquire {
                name: LEASES[*lease].into(),
                holder: HOLDERS[*holder].into(),
                ttl_ms: *ttl_ms,
                known: known.map(keel::storage::Term),
            },
            Step::Renew {
                lease,
                grant,
                ttl_ms,
            } => {
                let (holder, term) = self.grant(*lease, *grant);
                Op::Renew {
                    name: LEASES[*lease].into(),
                    holder,
                    term,
                    ttl_ms: *ttl_ms,
                }
            }
            Step::Resign { lease, grant } => {
                let (holder, term) = self.grant(*lease, *grant);
                Op::Resign {
                    name: LEASES[*lease].into(),
                    holder,
                    term,
                }
            }
            Step::LeaseHeartbeat { lease, grant } => {
                let (holder, term) = self.grant(*lease, *grant);
                Op::MaintenanceHeartbeat {
                    name: LEASES[*lease].into(),
                    holder,
                    term,
                }
            }
            Step::GetLease { lease } => Op::GetLease {
                name: LEASES[*lease].into(),
            },
            Step::FirePeriodic {
                name,
                slot,
                schedule,
                lease,
                grant,
                req,
            } => {
                let (holder, term) = self.grant(*lease, *grant);
                Op::FirePeriodic {
                    name: PERIODICS[*name].into(),
                    slot: Timestamp(T0.0 + slot * 60_000),
                    schedule: SCHEDULES[*schedule].into(),
                    lease: LEASES[*lease].into(),
                    holder,
                    term,
                    req: self.req(req),
                }
            }
            Step::CountByState => Op::CountByState,
            Step::GetJob { job } => Op::GetJob { job: self.job(job) },
            Step::ListUnfinished { limit } => Op::ListUnfinished { limit: *limit },
            Step::ListJobs {
                states,
                queue,
                kind,
                before,
                limit,
            } => Op::ListJobs {
                filter: JobFilter {
                    states: STATES
                        .iter()
                        .enumerate()
                        .filter(|(i, _)| states & (1 << i) != 0)
                        .map(|(_, s)| *s)
                        .collect(),
                    queue: queue.map(|q| QUEUES[q].into()),
                    kind: kind.map(|k| KINDS[k].into()),
                    before: before.as_ref().map(|b| self.job(b)),
                    limit: *limit,
                },
            },
            Step::ListEffects { job } => Op::ListEffects { job: self.job(job) },
            Step::ListQueues => Op::ListQueues,
            Step::ListLeases => Op::ListLeases,
            Step::ListSchedules => Op::ListSchedules,
            Step::RetryJob { job } => Op::RetryJob { job: self.job(job) },
            Step::DiscardJob { job } => Op::DiscardJob { job: self.job(job) },
            Step::DeleteJob { job } => Op::DeleteJob { job: self.job(job) },
        };
        Some(op)
    }

    /// Learn claims, terms and job ids from the model's reply.
    fn observe(&mut self, reply: &Reply) {
        match reply {
            Reply::Jobs(jobs) | Reply::FinalizedAndClaimed((_, jobs)) => {
                for job in jobs {
                    let claim = Claim {
                        job: job.id,
                        attempt: job.attempt,
                    };
                    self.claims
                        .push((claim, job.owner.clone().unwrap_or_default()));
                }
            }
            Reply::Lease(Some(lease)) => {
                if let Some(holder) = &lease.holder {
                    let grant = (lease.term, holder.clone());
                    self.grants.insert(lease.name.clone(), grant);
                }
            }
            Reply::Enqueued(out) => self.max_id = self.max_id.max(out.id().0),
            Reply::EnqueuedBatch(outs) => {
                for out in outs {
                    self.max_id = self.max_id.max(out.id().0);
                }
            }
            Reply::Periodic(PeriodicOutcome::Fired(id)) => self.max_id = self.max_id.max(id.0),
            _ => {}
        }
    }
}

// ---------------------------------------------------------------- self-test

/// A wrong engine: the model, except that heartbeat takes any caller for the
/// claim's owner.
struct HeartbeatIgnoresOwner(MemStorage);

#[async_trait]
impl Transport for HeartbeatIgnoresOwner {
    async fn call(&self, op: Op) -> StorageResult<Reply> {
        let op = match op {
            Op::Heartbeat { claim, .. } => {
                let owner = self
                    .0
                    .get_job(claim.job)
                    .await?
                    .and_then(|j| j.owner)
                    .unwrap_or_default();
                Op::Heartbeat { claim, owner }
            }
            op => op,
        };
        Ok(apply_admin(&self.0, op).await)
    }
}

fn catches_a_wrong_engine() -> Result<(), Failed> {
    let result = check(256, SEED_DEFAULT, |_, clock| async move {
        let wrong = HeartbeatIgnoresOwner(MemStorage::with_clock(clock));
        Ok(Arc::new(Remote(wrong)) as SharedStorage)
    });
    match result {
        Err(TestError::Fail(why, minimal)) => {
            let why = why.to_string();
            if !why.contains("Heartbeat") {
                return Err(format!("caught, but not at a heartbeat: {why}").into());
            }
            eprintln!(
                "the wrong engine was caught in {} steps: {why}",
                minimal.len()
            );
            Ok(())
        }
        Err(other) => Err(format!("the check broke instead of failing: {other}").into()),
        Ok(()) => Err("a heartbeat that ignores the owner went unnoticed".into()),
    }
}
