//! Invariant checkers: each one a named function of the recorded history.
//!
//! A checker reads the whole [`Record`] list after a run and returns the
//! violations it finds, each with the few records that prove it (the witnesses),
//! so a report shows the cause rather than the whole log. Every checker has a unit
//! test that feeds it a violating history and sees it fire.
//!
//! Most checkers judge what storage accepted. Term and attempt fencing keep that
//! clean even when a node's beliefs are wrong, so the checkers marked *true
//! time* below judge what nodes believed and did, in the harness's true time: the
//! elector reports every trust window it opens (`TermWon`/`TermRenewed` carry
//! `trusted_for_ms`), services report each act (`LeaderActed`), and the harness
//! records every clock's offset (`NodeBoot`, `ClockJump`).
//!
//! # The promises keel makes, and who judges them
//!
//! Each behavioural promise of keel's doc comments, design notes and
//! `ARCHITECTURE.md`, one line each: the checker that judges it over every
//! simulated run, or why no history checker can.
//!
//! | promise (where it is made) | judged by |
//! | --- | --- |
//! | Terms strictly increase and each has one holder; a live lease moves on only when no process of its holder id still believes in it (`leadership`, `identity`) | [`one_leader_per_term`](OneLeaderPerTerm) |
//! | A node stops believing before it resigns, and does not resign a lease that already moved on (`leadership` design note) | [`step_down_before_resign`](StepDownBeforeResign) |
//! | No node believes it leads a term once a later one was granted to another holder, so no two nodes believe they lead at one true instant, however far the nodes' clocks are off, unless storage's clock stepped forward by more than `safety_margin` (`leadership` design note, `storage` "One clock judges") | [`one_believed_leader`](OneBelievedLeader) (true time) |
//! | A node trusts a grant or renewal for `lease_ttl - safety_margin` from when it sent the request, so its belief ends before the lease storage wrote runs out, whether or not a peer takes the lease (`ElectorConfig::safety_margin`, `leadership` design note) | [`belief_within_lease`](BeliefWithinLease) (true time, from storage's write: no clock excuses it) |
//! | A leader's services act only inside their term's trust window, even as a frozen process thaws (`ServiceCtx::leads`) | [`leader_acts_in_trust`](LeaderActsInTrust) (true time) |
//! | Nothing done for term T stops or alters another term's services (`maintenance` design note) | [`no_cross_term_teardown`](NoCrossTermTeardown) |
//! | Losing T cancels T's start: no further start attempt begins (`maintenance` design note) | [`no_start_after_term_lost`](NoStartAfterTermLost) |
//! | A failed start is retried with exponential backoff (`maintenance` design note, `MaintainerConfig::backoff`) | [`start_retries_back_off`](StartRetriesBackOff) |
//! | On shutdown a held term is resigned so a peer takes over without waiting out the lease (`Elector::run`) | [`leader_resigns_at_shutdown`](LeaderResignsAtShutdown) (unless the host was cut off, frozen or storage faulty meanwhile, or the lease moved on) |
//! | After a requested resign the node stays out for `resign_cooldown`, so another node can take over (`ElectorConfig::resign_cooldown`) | [`resign_cooldown_kept`](ResignCooldownKept) (on the node's own process; a restarted process starts afresh), unproven: no scenario yet makes a maintainer exhaust its start retries (the partitions that race slow starts in `stale_retries` take the term away first), so no requested resign, and no planted bug of it, is ever reached; `core/src/leadership/elector.rs` unit tests hold the cooldown |
//! | A second `run` of an elector or maintainer while one is in progress is a no-op, and a maintainer restarted in place keeps the term while workers keep running (`Elector::run`, `Maintainer::run`, `RuntimeHandle::restart_maintainer`) | none: no scenario runs a second concurrent `run`; `core` unit tests (`a_second_concurrent_run_is_a_no_op_and_never_panics`, `restarting_the_maintainer_in_place_keeps_the_term_and_runs_its_services_again`) hold it, and `one_leader_per_term` and `maintainer_liveness` judge restarts in `zombies` |
//! | Added services start before the built-in ones, so a failing start hook fails the attempt before anything else starts; losing the term triggers the token of the start attempt in flight (`RuntimeBuilder::service`, `maintenance` design note) | none: the order of services within one start attempt and the token a hook sees are not recorded; `core/src/maintenance` unit tests hold them |
//! | A stopped maintainer run's late start attempt is never installed (`Maintainer::run`, `TermHandle`) | none: the events do not say which maintainer run an attempt belongs to; `core/src/maintenance` unit tests hold it, and `no_cross_term_teardown` and `maintainer_liveness` see what a wrongly installed start would do |
//! | A node asks to resign only a term it holds at that moment (`Elector::request_resign`, `Maintainer`) | [`no_stale_resign`](NoStaleResign) |
//! | Jobs held in a worker's hand are heartbeated while they wait, as running ones are, so a worker that can reach storage never loses a claim to the rescuer; one heard lost is not run (`hand.rs`, `JobsConfig::claim_ahead`, `heartbeat_interval`) | [`claims_kept_alive`](ClaimsKeptAlive) (no rescue of a live claimant that could reach storage for the whole stale window, unless storage's clock stepped past the claim margin) and [`no_double_execution`](NoDoubleExecution) (no start on a claim storage had revoked) |
//! | A job held in hand whose cancel was requested is not run, and its claim is kept alive until the worker settles it (`hand.rs`) | [`claims_kept_alive`](ClaimsKeptAlive) for the keeping alive; that it is not run: none, storage's taking of a running (or held) job's cancel request is not recorded, so the history cannot tell a held job that should not start; `core/src/jobs/tests.rs` (`a_job_cancelled_while_in_hand_is_settled_unrun`) holds it |
//! | A handler that ignores a user's cancel past `cancel_grace` is dropped and its job settled cancelled at once, not left to the rescuer (`worker.rs`) | [`claims_kept_alive`](ClaimsKeptAlive) (the dropped handler's claim is not left to go stale) and [`stopped_handlers_end_in_grace`](StoppedHandlersEndInGrace) (the drop); `core/src/jobs/tests.rs` (`a_handler_ignoring_a_cancel_is_dropped_and_its_job_cancelled_at_once`) |
//! | A local enqueue wakes an idle worker at once, and a storage signal does across processes (`RuntimeHandle::enqueue`, `JobStore::enqueue_signal`) | none: the simulated client enqueues over the network, so no run enqueues locally, and no simulated engine raises the signal; [`idle_workers_claim`](IdleWorkersClaim) holds the poll that backs both |
//! | A leader starts its services or resigns within the give-up bound, and a maintainer runs again soon after faults stop (`MaintainerConfig::give_up_bound`) | [`maintainer_liveness`](MaintainerLiveness) |
//! | A tracked task's panic is reported when it happens, not only at shutdown (`TaskRegistry`) | none for the reporting: the simulator injects panics into handlers and watcher loops, not into the runtime's own tracked tasks, so a swallowed task panic would leave no trace; `core/src/shutdown.rs` unit tests hold the reporting. [`no_task_panics`](NoTaskPanics) judges the other side: no runtime task panics at all |
//! | Two attempts of one job never run at once: attempt fencing, a lost heartbeat stops the handler within one interval, claims fence themselves after `claim_trust` (`jobs`, `ARCHITECTURE.md`) | [`no_double_execution`](NoDoubleExecution), with `lost_claim_grace_ms` of slack after a revoke (one heartbeat interval and request timeout: the worker hears of it at its next heartbeat); an overlap inside that slack goes unreported |
//! | A handler's effect is applied once per key, by the attempt that holds the claim (`JobStore::apply_effect`) | [`exactly_once_effects`](ExactlyOnceEffects) for once per key; that the writer held the claim is storage's fencing, inside one transaction (the conformance suite holds it for every engine), and [`no_double_execution`](NoDoubleExecution) sees a second attempt running at all |
//! | Every enqueued job reaches a final state once faults stop: rescues, finalize retries, cancels that survive a rescue (`jobs`) | [`no_lost_jobs`](NoLostJobs) |
//! | A handler's or loop's panic is surfaced (`Watcher`, `catch_panic`) | [`panics_surfaced`](PanicsSurfaced) |
//! | A loop's panic stops its sibling loops (`Watcher`: the first to end signals the others) | [`siblings_stop_on_loop_panic`](SiblingsStopOnLoopPanic) |
//! | A loop whose tick returns an error stops its siblings as a panic does, stopping them does not trigger the watcher's token, and a loop's first tick runs at once (`Watcher`) | none: the simulator's loops fail only by panicking, and a tick's start is not recorded; `core/src/watcher.rs` unit tests (`a_failing_loop_stops_its_siblings_and_its_error_is_returned_by_name`, `shutdown_before_the_first_tick_ends_every_loop_with_zero_ticks`) hold it |
//! | A slow tick is followed by the next on schedule, never a burst (`MissedTickBehavior::Skip` everywhere) | [`no_tick_burst`](NoTickBurst) |
//! | Graceful shutdown returns within its deadline plus one heartbeat interval (`RuntimeHandle::shutdown`) | [`bounded_shutdown`](BoundedShutdown), allowing one tick of the slowest job-runtime loop (heartbeat, supervisor, maintenance: all 1 s by default) |
//! | A handler asked to stop (a cancel, an untrusted or lost claim) ends within `cancel_grace`, or at once for a lost claim, else its worker drops it (`JobsConfig::cancel_grace`, `Handler`) | [`stopped_handlers_end_in_grace`](StoppedHandlersEndInGrace) |
//! | Each periodic slot is enqueued at most once cluster-wide, by a current term (`fire_periodic`) | [`periodic_once`](PeriodicOnce) for at most once; that the firing term was current is storage's term fencing (the insert records no term), held by the conformance suite |
//! | A cron slot missed by more than `CRON_CATCH_UP` is skipped rather than fired late (`jobs::maintenance`) | none: `periodic_fires_due_slot` judges fixed periods, and no scenario draws a cron schedule with a failover longer than the catch-up window; `core/src/jobs/maintenance.rs` (`cron_slots_are_the_latest_fire_time_within_the_catch_up_window`) holds it |
//! | A periodic schedule's latest due slot on storage's clock is enqueued at each tick of the leader's enqueuer, never a slot before its time, whatever the leader's clock reads; a cron slot missed in a failover is caught up within `CRON_CATCH_UP` (`PeriodicJob::slot`) | [`periodic_fires_due_slot`](PeriodicFiresDueSlot) for fixed periods once the heal converged, and early slots always; the cron catch-up by `jobs::maintenance`'s unit tests (the simulated cron runs every 3 s, inside its catch-up) |
//! | A cancel that lands as a handler completes never rewrites the finished job (`worker.rs`) | [`finished_work_stands`](FinishedWorkStands) |
//! | A cancel of a running job reaches its handler at once on the cancelling node, and elsewhere at the worker's next heartbeat (`RuntimeHandle::cancel`, `JobStore::request_cancel`) | none: storage's taking of a running job's cancel request is not recorded (only a queued job's `CancelApplied`), and the simulated client cancels through storage, never `RuntimeHandle::cancel`, so no run times the delivery; `core/src/jobs/tests.rs` holds that a cancel stops a running handler, on one node and without timing. A heard cancel is then [`stopped_handlers_end_in_grace`](StoppedHandlersEndInGrace)'s (a same-node cancel triggers the token without an event, so its grace is not judged) |
//! | A failed attempt's retry is due no earlier than its backoff after the failure, on storage's clock (`JobsConfig::retry`, `backoff`, `Finalize::Retry`) | [`retry_respects_backoff`](RetryRespectsBackoff) (true time, less any step of storage's clock: storage takes an early retry without complaint) |
//! | A scheduled job is not claimed before its `scheduled_at` on storage's clock (`EnqueueRequest`, `JobStore::claim`) | [`scheduled_not_early`](ScheduledNotEarly) (true time, less storage's clock lead) |
//! | The rescuer revokes a claim only once its heartbeat is older than `stale_threshold` on storage's clock, whatever the rescuer's clock reads (`JobsConfig::stale_threshold`, `JobStore::rescue_stale`) | [`no_early_rescue`](NoEarlyRescue), for the stretch the history shows: a claim stamps the first heartbeat, later ones are not recorded (one per running job per second would dominate the history), so a rescue is judged against its claim, less any step back of storage's clock |
//! | An available job with an idle worker is claimed within a bounded delay (`JobsConfig::idle_poll`) | [`idle_workers_claim`](IdleWorkersClaim) (liveness, once faults stopped and the cluster converged; judged for jobs whose due time the history knows: new, scheduled, periodic and rescued ones, not a failed attempt's jittered retry) |
//! | A job is claimed by priority, then due time, then id, and never from a paused queue (`JobStore::claim`, `pause_queue`) | none: storage alone decides it, inside one transaction; the conformance suite and `MemStorage`'s model test hold it for every engine (the simulator never pauses a queue) |
//! | A failed job is retried until its attempts run out, then discarded; a snooze does not spend an attempt (`Outcome`) | [`attempts_within_budget`](AttemptsWithinBudget) (each claim records the budget as it stands, a snooze's included) |
//! | Once a graceful shutdown begins a runtime claims nothing more: a stopping worker only finalizes (`RuntimeHandle::shutdown`, `worker.rs`) | [`no_claim_after_shutdown`](NoClaimAfterShutdown) (when the claim was issued, as the harness records each storage call) |
//! | A handler stopped by shutdown gives its job back without spending an attempt, and a job claimed just before a stop is given back unrun (`RuntimeHandle::shutdown`, `worker.rs`) | [`shutdown_gives_back`](ShutdownGivesBack) for what a shutdown stops; a job claimed just before the stop and given back unrun is finalized `scheduled` without a `HandlerStarted`, which [`no_double_execution`](NoDoubleExecution) and `core/src/jobs/tests.rs` hold |
//! | Finished jobs are kept for `retention`, then deleted (`JobsConfig::retention`) | none: the default retention (a day) outlasts every run, so no run deletes a finished job; `core/src/jobs/tests.rs` (`the_cleaner_keeps_a_finished_job_for_its_retention_then_deletes_it`) holds the cleaner, the conformance suite `cleanup` for a given cutoff on every engine |
//! | A unique key matches at most one live job (`EnqueueRequest::unique_key`) | none: storage alone decides it, inside one transaction; the conformance suite and `MemStorage`'s model test hold it for every engine |
//! | Bad settings and bad input are refused with an error naming the field (`*Config::validate`) | none: not a property of a run; each config's unit tests hold it |

mod attempts_within_budget;
pub(crate) mod belief;
mod belief_within_lease;
mod bounded_shutdown;
mod claims_kept_alive;
mod exactly_once_effects;
mod finished_work_stands;
mod health;
mod idle_workers_claim;
mod leader_acts_in_trust;
mod leader_resigns_at_shutdown;
mod maintainer_liveness;
mod no_claim_after_shutdown;
mod no_cross_term_teardown;
mod no_double_execution;
pub(crate) mod no_early_rescue;
mod no_lost_jobs;
mod no_stale_resign;
mod no_start_after_term_lost;
mod no_task_panics;
mod no_tick_burst;
mod one_believed_leader;
mod one_leader_per_term;
mod panics_surfaced;
mod periodic_fires_due_slot;
mod periodic_once;
mod resign_cooldown_kept;
mod retry_respects_backoff;
mod scheduled_not_early;
mod shutdown_gives_back;
mod siblings_stop_on_loop_panic;
mod start_retries_back_off;
mod step_down_before_resign;
mod stopped_handlers_end_in_grace;

use std::collections::BTreeMap;
use std::fmt;

use keel::events::Event;
use keel::storage::Term;

use crate::run::history::{Ev, HarnessEvent, Record};

pub use attempts_within_budget::AttemptsWithinBudget;
pub use belief_within_lease::BeliefWithinLease;
pub use bounded_shutdown::BoundedShutdown;
pub use claims_kept_alive::ClaimsKeptAlive;
pub use exactly_once_effects::ExactlyOnceEffects;
pub use finished_work_stands::FinishedWorkStands;
pub use idle_workers_claim::IdleWorkersClaim;
pub use leader_acts_in_trust::LeaderActsInTrust;
pub use leader_resigns_at_shutdown::LeaderResignsAtShutdown;
pub use maintainer_liveness::MaintainerLiveness;
pub use no_claim_after_shutdown::NoClaimAfterShutdown;
pub use no_cross_term_teardown::NoCrossTermTeardown;
pub use no_double_execution::NoDoubleExecution;
pub use no_early_rescue::NoEarlyRescue;
pub use no_lost_jobs::NoLostJobs;
pub use no_stale_resign::NoStaleResign;
pub use no_start_after_term_lost::NoStartAfterTermLost;
pub use no_task_panics::NoTaskPanics;
pub use no_tick_burst::NoTickBurst;
pub use one_believed_leader::OneBelievedLeader;
pub use one_leader_per_term::OneLeaderPerTerm;
pub use panics_surfaced::PanicsSurfaced;
pub use periodic_fires_due_slot::PeriodicFiresDueSlot;
pub use periodic_once::PeriodicOnce;
pub use resign_cooldown_kept::ResignCooldownKept;
pub use retry_respects_backoff::RetryRespectsBackoff;
pub use scheduled_not_early::ScheduledNotEarly;
pub use shutdown_gives_back::ShutdownGivesBack;
pub use siblings_stop_on_loop_panic::SiblingsStopOnLoopPanic;
pub use start_retries_back_off::StartRetriesBackOff;
pub use step_down_before_resign::StepDownBeforeResign;
pub use stopped_handlers_end_in_grace::StoppedHandlersEndInGrace;

/// Bounds a checker needs, derived from the runtime settings of the run.
#[derive(Clone, Debug)]
pub struct CheckCtx {
    /// When the heal phase began.
    pub heal_at_ms: u64,
    /// When the run ended.
    pub end_at_ms: u64,
    /// A leader that keeps its term this long must have started its services or
    /// asked to resign.
    pub give_up_bound_ms: u64,
    /// How long a node may still believe it leads after its services stopped.
    pub stop_grace_ms: u64,
    /// After faults stop, a maintainer must run within this bound.
    pub converge_bound_ms: u64,
    /// How long past its deadline a graceful shutdown may take to return: one
    /// tick of the slowest loop it stops.
    pub tick_grace_ms: u64,
    /// How long a handler may run on after its claim was revoked: the worker
    /// learns at its next heartbeat (one interval, one request timeout).
    pub lost_claim_grace_ms: u64,
    /// How long a handler asked to stop may take before its worker drops it
    /// (`JobsConfig::cancel_grace`).
    pub cancel_grace_ms: u64,
    /// How often an idle worker polls for work (`JobsConfig::idle_poll`).
    pub idle_poll_ms: u64,
    /// Wall-clock milliseconds since the Unix epoch at simulated time 0.
    pub epoch_unix_ms: i64,
    /// The workload's fixed-period schedules: name and period in ms.
    pub periodic_every_ms: Vec<(String, u64)>,
    /// A claim whose heartbeat is older than this is revoked
    /// (`JobsConfig::stale_threshold`).
    pub stale_threshold_ms: u64,
    /// How long a worker trusts a claim without a good heartbeat
    /// (`JobsConfig::claim_trust`).
    pub claim_trust_ms: u64,
    /// How often a claim is heartbeated (`JobsConfig::heartbeat_interval`).
    pub heartbeat_interval_ms: u64,
    /// How often the leader's rescuer, scheduler and cleaner run
    /// (`JobsConfig::maintenance_interval`).
    pub maintenance_interval_ms: u64,
    /// The maintainer's start backoff after a first failed attempt, before
    /// jitter (`MaintainerConfig::backoff`).
    pub start_backoff_base_ms: u64,
    /// The cap on the maintainer's start backoff, before jitter.
    pub start_backoff_max_ms: u64,
    /// A heal phase at least this long must leave no job unfinished.
    pub heal_converge_ms: u64,
    /// The leader lease's TTL.
    pub lease_ttl_ms: u64,
    /// The clock error between nodes that leadership tolerates.
    pub safety_margin_ms: u64,
    /// How long an elector stays out after a requested resign
    /// (`ElectorConfig::resign_cooldown`).
    pub resign_cooldown_ms: u64,
    /// A failed job's first retry backoff, before jitter.
    pub retry_base_ms: u64,
    /// The cap on any retry backoff, before jitter.
    pub retry_max_ms: u64,
    /// The largest clock-rate error any host had in the run, in ppm (read
    /// from the history by [`after_storage_steps`]): a host's `d` ms of sleep
    /// or timeout last between [`shortest_ms`](Self::shortest_ms) and
    /// [`longest_ms`](Self::longest_ms) of true time.
    pub drift_ppm: u64,
}

impl CheckCtx {
    /// The least delay after failed maintainer start attempt `attempt`:
    /// jitter only adds.
    pub fn start_backoff_floor_ms(&self, attempt: u32) -> u64 {
        let factor = 1u64 << attempt.saturating_sub(1).min(31);
        self.start_backoff_base_ms
            .saturating_mul(factor)
            .min(self.start_backoff_max_ms)
    }

    /// The most true time `host_ms` of some host's own time can take.
    pub fn longest_ms(&self, host_ms: u64) -> u64 {
        let d = u128::from(self.drift_ppm.min(999_999));
        let ms = (u128::from(host_ms) * 1_000_000).div_ceil(1_000_000 - d);
        u64::try_from(ms).unwrap_or(u64::MAX)
    }

    /// The least true time `host_ms` of some host's own time can take.
    pub fn shortest_ms(&self, host_ms: u64) -> u64 {
        let d = u128::from(self.drift_ppm);
        let ms = u128::from(host_ms) * 1_000_000 / (1_000_000 + d);
        u64::try_from(ms).unwrap_or(u64::MAX)
    }

    /// The least backoff after failed attempt `attempt`: jitter only adds.
    pub fn retry_floor_ms(&self, attempt: u32) -> u64 {
        let factor = 1u64 << attempt.saturating_sub(1).min(31);
        self.retry_base_ms
            .saturating_mul(factor)
            .min(self.retry_max_ms)
    }
}

/// A broken invariant, with the records that show it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The invariant's name.
    pub invariant: &'static str,
    /// Simulated time of the violating event.
    pub at_ms: u64,
    /// What went wrong, in one sentence.
    pub message: String,
    /// The smallest set of records that shows it, in history order.
    pub witnesses: Vec<Record>,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "invariant {} violated at {}ms: {}",
            self.invariant, self.at_ms, self.message
        )?;
        for w in &self.witnesses {
            writeln!(f, "    {}", w.to_json())?;
        }
        Ok(())
    }
}

/// What kind of promise an invariant is, as VOPR splits them: safety ("never"),
/// checked through the fault phase, or liveness ("eventually"), which must
/// converge within a bound once faults stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Property {
    /// Something bad never happens, faults or not.
    Safety,
    /// Something good happens within a bound, above all once faults stop.
    Liveness,
}

/// One invariant over a history.
pub trait Checker: Send + Sync {
    /// The invariant's name, as scenarios list it.
    fn name(&self) -> &'static str;
    /// Safety or liveness; reports say which.
    fn property(&self) -> Property {
        Property::Safety
    }
    /// Every violation in `history`.
    fn check(&self, history: &[Record], ctx: &CheckCtx) -> Vec<Violation>;
    /// How near the run came to breaking the invariant: the slack, in ms, left
    /// on the tightest pair of events the checker judges (0: on the edge or
    /// past it), or `None` when no such pair occurred or the checker measures
    /// none. Never a verdict: the guided search ([`crate::tools::hunt`]) keeps runs
    /// that come nearer than any before and mutates them, as targeted
    /// property-based testing climbs on a utility value.
    fn slack_ms(&self, _history: &[Record], _ctx: &CheckCtx) -> Option<u64> {
        None
    }
}

/// Each planted bug with the scenario and invariant that catch it: the pairs
/// `tests/tests/planted_bugs.rs` proves, which `bench-sim`, the shrink test and
/// `ci/shrink-report` measure.
pub const PLANTED_BUG_CATCHERS: [(keel::planted::Bug, &str, &str); 27] = {
    use keel::planted::Bug;
    [
        (Bug::StaleResign, "stale_retries", "no_stale_resign"),
        (
            Bug::CrossTermStop,
            "stale_retries",
            "no_cross_term_teardown",
        ),
        (
            Bug::HeartbeatIgnoresLostClaim,
            "clock_skew",
            "no_double_execution",
        ),
        (
            Bug::FinalizeWithoutOwnerGuard,
            "clock_skew",
            "no_double_execution",
        ),
        (
            Bug::IgnoredShutdownDeadline,
            "shutdown_under_load",
            "bounded_shutdown",
        ),
        (Bug::SwallowedPanic, "panicking_tasks", "panics_surfaced"),
        (Bug::BurstTicks, "slow_ticks", "no_tick_burst"),
        (
            Bug::LateCancelRewritesOutcome,
            "shutdown_under_load",
            "finished_work_stands",
        ),
        (
            Bug::ClaimAheadIgnoresTrust,
            "claim_ahead",
            "no_double_execution",
        ),
        (
            Bug::IncarnationBlindHolder,
            "zombies",
            "one_leader_per_term",
        ),
        (Bug::TrustFromReply, "storage_faults", "belief_within_lease"),
        (
            Bug::RenewErrorExtendsTrust,
            "leadership_flap",
            "one_believed_leader",
        ),
        (Bug::LoopSkipsTrustCheck, "zombies", "leader_acts_in_trust"),
        (
            Bug::RetryBackoffFromDue,
            "crash_restart",
            "retry_respects_backoff",
        ),
        (
            Bug::CancelGraceIgnored,
            "shutdown_under_load",
            "stopped_handlers_end_in_grace",
        ),
        (
            Bug::StartRetryWithoutBackoff,
            "stale_retries",
            "start_retries_back_off",
        ),
        (
            Bug::IdlePollBacksOff,
            "periodic_failover",
            "idle_workers_claim",
        ),
        (
            Bug::ResignBeforeStepDown,
            "leadership_flap",
            "step_down_before_resign",
        ),
        (
            Bug::RescueThresholdHalved,
            "crash_restart",
            "no_early_rescue",
        ),
        (
            Bug::DiscardOffByOne,
            "periodic_failover",
            "attempts_within_budget",
        ),
        (
            Bug::PeriodicFiresNextSlot,
            "periodic_failover",
            "periodic_fires_due_slot",
        ),
        (Bug::HandKeeperIdle, "claim_ahead", "claims_kept_alive"),
        (
            Bug::ShutdownSpendsAttempt,
            "shutdown_under_load",
            "shutdown_gives_back",
        ),
        (
            Bug::ClaimsWhileStopping,
            "shutdown_under_load",
            "no_claim_after_shutdown",
        ),
        (
            Bug::ShutdownSkipsResign,
            "zombies",
            "leader_resigns_at_shutdown",
        ),
        (Bug::RescueOnCallerClock, "clock_skew", "no_early_rescue"),
        (Bug::TrustWholeTtl, "clock_drift", "belief_within_lease"),
    ]
};

/// `ctx` with its heal moved to when storage's clock caught up with its last
/// step back, if later: until then leases and claims last longer, and due
/// times come later, by that step, so the liveness bounds, which count from
/// the heal, would blame the runtime for storage's clock (keel's documented
/// limit: a step of the one judging clock delays every hold's end by the
/// step). Safety is judged as before.
///
/// It also reads the run's clock rates: `ctx.drift_ppm` is the largest.
pub fn after_storage_steps(mut ctx: CheckCtx, history: &[Record]) -> CheckCtx {
    let offsets = belief::Offsets::of(history);
    ctx.heal_at_ms = ctx.heal_at_ms.max(offsets.storage_caught_up_ms());
    ctx.drift_ppm = offsets.drift_max_ppm();
    ctx
}

/// Every checker, in a fixed order.
pub fn all() -> Vec<Box<dyn Checker>> {
    vec![
        Box::new(OneLeaderPerTerm),
        Box::new(NoCrossTermTeardown),
        Box::new(NoStaleResign),
        Box::new(MaintainerLiveness),
        Box::new(NoTaskPanics),
        Box::new(NoDoubleExecution),
        Box::new(ExactlyOnceEffects),
        Box::new(NoLostJobs),
        Box::new(PanicsSurfaced),
        Box::new(NoTickBurst),
        Box::new(BoundedShutdown),
        Box::new(PeriodicOnce),
        Box::new(FinishedWorkStands),
        Box::new(OneBelievedLeader),
        Box::new(BeliefWithinLease),
        Box::new(LeaderActsInTrust),
        Box::new(RetryRespectsBackoff),
        Box::new(ScheduledNotEarly),
        Box::new(NoStartAfterTermLost),
        Box::new(StoppedHandlersEndInGrace),
        Box::new(SiblingsStopOnLoopPanic),
        Box::new(StartRetriesBackOff),
        Box::new(IdleWorkersClaim),
        Box::new(StepDownBeforeResign),
        Box::new(NoEarlyRescue),
        Box::new(AttemptsWithinBudget),
        Box::new(PeriodicFiresDueSlot),
        Box::new(ClaimsKeptAlive),
        Box::new(ShutdownGivesBack),
        Box::new(NoClaimAfterShutdown),
        Box::new(LeaderResignsAtShutdown),
        Box::new(ResignCooldownKept),
    ]
}

/// The checker called `name`.
pub fn by_name(name: &str) -> Option<Box<dyn Checker>> {
    all().into_iter().find(|c| c.name() == name)
}

/// Whether `invariant` is a safety or a liveness property (`Safety` if unknown).
pub fn property_of(invariant: &str) -> Property {
    by_name(invariant).map_or(Property::Safety, |c| c.property())
}

/// Names of every checker.
pub fn names() -> Vec<&'static str> {
    all().iter().map(|c| c.name()).collect()
}

/// The node event of a record, if it is one.
pub(crate) fn node_event(r: &Record) -> Option<&Event> {
    match &r.ev {
        Ev::Node(e) => Some(e),
        _ => None,
    }
}

/// For each predicate, the last node event on `host` in `history` that matches
/// it; the hits, deduplicated, in history order.
pub(crate) fn last_each(
    history: &[Record],
    host: &str,
    preds: &[&dyn Fn(&Event) -> bool],
) -> Vec<Record> {
    let mut hits: Vec<&Record> = preds
        .iter()
        .filter_map(|p| {
            history
                .iter()
                .rev()
                .find(|r| r.host == host && node_event(r).is_some_and(p))
        })
        .collect();
    hits.sort_by_key(|r| r.seq);
    hits.dedup_by_key(|r| r.seq);
    hits.into_iter().cloned().collect()
}

/// One stretch in which a host believed it led a term: from its `TermWon` to its
/// `TermLost`, a crash or reboot of the host, or the end of the run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Tenure {
    pub host: String,
    pub term: Term,
    /// Index of the `TermWon` record.
    pub won: usize,
    /// Index of the record that ended it (the last record if it never ended).
    pub ended: usize,
    pub won_ms: u64,
    pub ended_ms: u64,
    /// Whether it was still open when the run ended.
    pub open_at_end: bool,
}

/// Every tenure in `history`, ordered by start.
/// How long `host`'s process was frozen (between `Paused` and `Resumed`)
/// within `[from_ms, to_ms]`: time in which it ran nothing, so no bound on how
/// fast it reacts may count it.
pub(crate) fn frozen_ms(history: &[Record], host: &str, from_ms: u64, to_ms: u64) -> u64 {
    let mut total = 0;
    let mut since: Option<u64> = None;
    for r in history.iter().filter(|r| r.host == host) {
        match r.ev {
            Ev::Harness(HarnessEvent::Paused) => since = Some(r.at_ms),
            Ev::Harness(HarnessEvent::Resumed | HarnessEvent::Crash) => {
                if let Some(start) = since.take() {
                    let (a, b) = (start.max(from_ms), r.at_ms.min(to_ms));
                    total += b.saturating_sub(a);
                }
            }
            _ => {}
        }
    }
    if let Some(start) = since {
        total += to_ms.saturating_sub(start.max(from_ms));
    }
    total
}

pub(crate) fn tenures(history: &[Record]) -> Vec<Tenure> {
    let mut open: BTreeMap<&str, (Term, usize)> = BTreeMap::new();
    let mut done = Vec::new();
    let close = |done: &mut Vec<Tenure>,
                 host: &str,
                 (term, won): (Term, usize),
                 r: &Record,
                 open_at_end| {
        let won_ms = history[won].at_ms;
        done.push(Tenure {
            host: host.to_owned(),
            term,
            won,
            ended: r.seq,
            won_ms,
            ended_ms: r.at_ms,
            open_at_end,
        });
    };
    for r in history {
        let host = r.host.as_str();
        match &r.ev {
            Ev::Node(Event::TermWon { term, .. }) => {
                if let Some(prev) = open.insert(host, (*term, r.seq)) {
                    close(&mut done, host, prev, r, false);
                }
            }
            Ev::Node(Event::TermLost { term, .. })
                if open.get(host).is_some_and(|(t, _)| t == term) =>
            {
                let prev = open.remove(host).unwrap_or((*term, r.seq));
                close(&mut done, host, prev, r, false);
            }
            // A returned shutdown stopped every task of the node, the elector
            // too (aborted, if it could not resign within the deadline): from
            // then on the node no more believes it leads than a crashed one.
            Ev::Harness(HarnessEvent::Crash | HarnessEvent::NodeBoot { .. })
            | Ev::Node(Event::ShutdownEnded { .. }) => {
                if let Some(prev) = open.remove(host) {
                    close(&mut done, host, prev, r, false);
                }
            }
            _ => {}
        }
    }
    if let Some(last) = history.last() {
        for (host, prev) in std::mem::take(&mut open) {
            close(&mut done, host, prev, last, true);
        }
    }
    done.sort_by_key(|t| t.won);
    done
}

#[cfg(test)]
pub(crate) mod test_support {
    //! A tiny builder for hand-written histories.
    use super::*;
    use crate::run::history::DbEvent;
    use keel::storage::JobId;

    pub(crate) struct H(pub Vec<Record>);

    impl H {
        pub(crate) fn new() -> Self {
            H(Vec::new())
        }
        fn push(mut self, at_ms: u64, host: &str, ev: Ev) -> Self {
            let seq = self.0.len();
            self.0.push(Record {
                seq,
                at_ms,
                host: host.into(),
                ev,
            });
            self
        }
        pub(crate) fn node(self, at_ms: u64, host: &str, e: Event) -> Self {
            self.push(at_ms, host, Ev::Node(e))
        }
        pub(crate) fn db(self, at_ms: u64, e: DbEvent) -> Self {
            self.push(at_ms, "db", Ev::Db(e))
        }
        pub(crate) fn harness(self, at_ms: u64, host: &str, e: HarnessEvent) -> Self {
            self.push(at_ms, host, Ev::Harness(e))
        }
    }

    pub(crate) fn ctx(end_at_ms: u64) -> CheckCtx {
        CheckCtx {
            heal_at_ms: end_at_ms / 2,
            end_at_ms,
            give_up_bound_ms: 30_000,
            stop_grace_ms: 2_000,
            converge_bound_ms: 20_000,
            tick_grace_ms: 1_000,
            lost_claim_grace_ms: 2_000,
            cancel_grace_ms: 1_000,
            idle_poll_ms: 500,
            epoch_unix_ms: 0,
            periodic_every_ms: vec![("digest".into(), 10_000)],
            stale_threshold_ms: 10_000,
            claim_trust_ms: 6_000,
            heartbeat_interval_ms: 1_000,
            maintenance_interval_ms: 1_000,
            start_backoff_base_ms: 1_000,
            start_backoff_max_ms: 8_000,
            heal_converge_ms: 40_000,
            lease_ttl_ms: 5_000,
            safety_margin_ms: 1_000,
            resign_cooldown_ms: 5_000,
            retry_base_ms: 1_000,
            retry_max_ms: 300_000,
            drift_ppm: 0,
        }
    }

    pub(crate) fn won(t: u64) -> Event {
        Event::TermWon {
            term: Term(t),
            trusted_for_ms: 4_000,
        }
    }

    /// The lease granted to `holder` for term `t`, evicting nobody.
    pub(crate) fn grant(holder: &str, t: u64) -> DbEvent {
        DbEvent::LeaseGranted {
            holder: holder.into(),
            term: Term(t),
            evicted: None,
        }
    }

    /// The renewal storage applied to `holder`'s grant of term `t`.
    pub(crate) fn renewal(holder: &str, t: u64) -> DbEvent {
        DbEvent::LeaseRenewed {
            holder: holder.into(),
            term: Term(t),
        }
    }

    /// A runtime started under the lease holder id `holder`.
    pub(crate) fn started(holder: &str) -> Event {
        Event::RuntimeStarted {
            holder: holder.into(),
        }
    }

    /// A `TermWon` trusted for `for_ms`.
    pub(crate) fn won_for(t: u64, for_ms: u64) -> Event {
        Event::TermWon {
            term: Term(t),
            trusted_for_ms: for_ms,
        }
    }

    /// A `TermRenewed` trusted for `for_ms`.
    pub(crate) fn renewed(t: u64, for_ms: u64) -> Event {
        Event::TermRenewed {
            term: Term(t),
            trusted_for_ms: for_ms,
        }
    }

    pub(crate) fn lost(t: u64) -> Event {
        Event::TermLost {
            term: Term(t),
            reason: "trust_window_expired".into(),
        }
    }

    /// Job 1's attempt `attempt` ended with `outcome` on its handler's node.
    pub(crate) fn job_ended(attempt: u32, outcome: &str) -> Event {
        Event::HandlerEnded {
            job: JobId(1),
            attempt,
            outcome: outcome.into(),
        }
    }

    /// Storage recorded job 1's attempt `attempt` as `state`.
    pub(crate) fn job_finalized(attempt: u32, state: keel::storage::JobState) -> DbEvent {
        DbEvent::FinalizeApplied {
            job: JobId(1),
            attempt,
            state,
        }
    }

    /// Storage applied worker `n1#a/default/0`'s claim of job 1's attempt
    /// `attempt`, with the job's budget and the claim's first heartbeat stamp
    /// on storage's clock; the worker issued it at that time in true time (a
    /// storage clock that keeps true time).
    pub(crate) fn job_claimed(attempt: u32, max_attempts: u32, stamp_ms: i64) -> DbEvent {
        DbEvent::ClaimApplied {
            job: JobId(1),
            attempt,
            owner: "n1#a/default/0".into(),
            max_attempts,
            heartbeat_ms: stamp_ms,
            issued_ms: u64::try_from(stamp_ms).unwrap_or(0),
        }
    }

    /// The rescuer revoked job 1's attempt `attempt`.
    pub(crate) fn job_rescued(attempt: u32) -> DbEvent {
        DbEvent::RescueApplied {
            job: JobId(1),
            attempt,
            issued_ms: 0,
        }
    }
}

#[cfg(test)]
mod property_tests {
    use super::*;

    #[test]
    fn convergence_checkers_are_liveness_and_the_rest_safety() {
        let liveness: Vec<&str> = all()
            .iter()
            .filter(|c| c.property() == Property::Liveness)
            .map(|c| c.name())
            .collect();
        assert_eq!(
            liveness,
            vec![
                "maintainer_liveness",
                "no_lost_jobs",
                "bounded_shutdown",
                "idle_workers_claim"
            ]
        );
        assert_eq!(property_of("one_leader_per_term"), Property::Safety);
        assert_eq!(property_of("no_lost_jobs"), Property::Liveness);
    }
}
