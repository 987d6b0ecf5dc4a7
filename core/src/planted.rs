//! Known bugs from the source documents (and one of keel's own), planted
//! behind a switch.
//!
//! Compiled only with the `planted-bugs` cargo feature, which a user's build never
//! has. The simulator turns bugs on one at a time at run time to prove that its
//! checkers find them. Each bug names the source document it comes from and the
//! invariant that must catch it.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

/// One planted bug.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Bug {
    /// 002: the start retry loop does not hear that its term was lost (in the
    /// source it ran on the goroutine that delivered that news), and after
    /// exhausting its retries it resigns without checking that this node still
    /// holds the term; the elector then resigns whatever term it holds now.
    /// Caught by `no_stale_resign`.
    StaleResign,
    /// 002: a failed start retry "resets" the shared maintainer by stopping
    /// whatever is running, even when a newer term started it. Caught by
    /// `no_cross_term_teardown`.
    CrossTermStop,
    /// 000: the watcher discards a loop's panic or error, as `let _ =
    /// try_join!(..)` did: no `LoopEnded` report, the siblings are not stopped,
    /// and `run` returns `Ok` once the others shut down. Caught by
    /// `panics_surfaced`.
    SwallowedPanic,
    /// 000: the watcher's intervals use `MissedTickBehavior::Burst`, so after a
    /// slow round every missed tick fires back to back. Caught by
    /// `no_tick_burst`.
    BurstTicks,
    /// 001: graceful shutdown waits for every task however long it takes,
    /// ignoring its deadline. Caught by `bounded_shutdown`.
    IgnoredShutdownDeadline,
    /// 003 (H1): a worker finalizes with the job's current claim read back from
    /// storage instead of its own, so a reaped worker clobbers the new claimant.
    /// Caught by `no_double_execution`.
    FinalizeWithoutOwnerGuard,
    /// 003 (M1): a worker whose heartbeat says the claim is lost keeps its
    /// handler running. Caught by `no_double_execution`.
    HeartbeatIgnoresLostClaim,
    /// 003 (M2): a cancel that lands while the handler completes rewrites the
    /// finished job as cancelled. Caught by `finished_work_stands`.
    LateCancelRewritesOutcome,
    /// Keel's own, not from a source document: a worker starts a job it claimed
    /// ahead as if freshly claimed however long it sat in hand, though no
    /// heartbeat kept its claim alive, so the rescuer may already have handed it
    /// to another worker.
    /// Caught by `no_double_execution`.
    ClaimAheadIgnoresTrust,
    /// Keel's own, from River's elector tests: the holder id is the bare node
    /// name, as it was before incarnations, so a replacement process started
    /// under the same name (a StatefulSet's `worker-0` while the old one is
    /// paused) is taken by storage for the old one: each grant evicts the other's
    /// live term. Caught by `one_leader_per_term`.
    IncarnationBlindHolder,
    /// Keel's own: the elector counts a trust window from the reply to its
    /// request instead of the request's send, as a naive lease client does, so
    /// a slow reply (a frozen process, a slow database) stretches the node's
    /// trust past the lease storage granted. Storage stays clean (every write
    /// is term-fenced); caught by `belief_within_lease` (the belief outlives
    /// the lease it was written) and, when a peer takes the lease in the
    /// overlap, `one_believed_leader`.
    TrustFromReply,
    /// Keel's own: a renewal that got no answer is taken as granted ("the
    /// write probably landed"), so a leader cut off from storage goes on
    /// believing it leads while a peer holds the next term. Caught by
    /// `one_believed_leader`.
    RenewErrorExtendsTrust,
    /// Keel's own: the maintenance loops act on a tick without asking whether
    /// the term is still trusted, as they did before `ServiceCtx::leads`, so a
    /// leader thawing from a freeze acts once for a term whose window closed
    /// while it slept. Caught by `leader_acts_in_trust`.
    LoopSkipsTrustCheck,
    /// Keel's own: a failed attempt's retry is due its backoff after the time
    /// the attempt was due, not after it failed, so an attempt that waited or
    /// ran longer than its backoff retries at once. Caught by
    /// `retry_respects_backoff`.
    RetryBackoffFromDue,
    /// Keel's own: a worker that asked a running handler to stop (a cancel
    /// request, an untrusted or lost claim) waits for it however long it runs,
    /// as a plain `handle.await` would, instead of dropping it once its
    /// `cancel_grace` is spent. A cancelled job's stubborn handler then runs to
    /// the end and is recorded completed, which storage takes without
    /// complaint. Caught by `stopped_handlers_end_in_grace`.
    CancelGraceIgnored,
    /// Keel's own: a failed maintainer start is retried at once, without its
    /// backoff, so a leader whose start hook fails (a dependency down) hammers
    /// it in a tight loop until its attempts run out. Storage sees nothing
    /// wrong. Caught by `start_retries_back_off`.
    StartRetryWithoutBackoff,
    /// Keel's own: an idle worker doubles its poll interval after every empty
    /// poll, without a cap (a "back off while the queue is empty" that forgets
    /// the bound), so after a quiet spell a new job waits tens of seconds beside
    /// idle workers. Storage sees only a late claim. Caught by
    /// `idle_workers_claim`.
    IdlePollBacksOff,
    /// Keel's own: an elector stepping down resigns in storage first and only
    /// then stops believing (emits `TermLost`), so a peer may be granted the
    /// freed lease while this node still believes it leads. Caught by
    /// `step_down_before_resign`.
    ResignBeforeStepDown,
    /// Keel's own: the rescuer's cutoff takes half the stale threshold (a
    /// units slip), so it revokes claims whose workers still trust them.
    /// Storage applies the cutoff it is handed. Caught by `no_early_rescue`.
    RescueThresholdHalved,
    /// Keel's own: a worker discards a failed job only once its attempt
    /// exceeds the budget (`>` for `>=`), so a job whose last attempt failed
    /// is retried once more. Storage writes the retry it is asked for. Caught
    /// by `attempts_within_budget`.
    DiscardOffByOne,
    /// Keel's own: the periodic enqueuer rounds a fixed-period slot up
    /// instead of down, so each tick fires the coming slot before its time
    /// and never the one due. Storage inserts the slot it is given, once.
    /// Caught by `periodic_fires_due_slot`.
    PeriodicFiresNextSlot,
    /// Keel's own: the hand's keeper never heartbeats the jobs a worker
    /// claimed ahead, as before `hand.rs` existed, so a job waiting behind a
    /// slow one goes stale and is rescued while its worker is healthy; the
    /// worker then finds it lost and the attempt is spent unrun. Storage
    /// applies the rescue it is asked for. Caught by `claims_kept_alive`.
    HandKeeperIdle,
    /// Keel's own: a handler stopped by a graceful shutdown is finalized as a
    /// failed attempt (retried with backoff, or discarded on its last) rather
    /// than given back, so every rolling restart spends an attempt of each job
    /// it interrupts. Storage writes what it is asked. Caught by
    /// `shutdown_gives_back`.
    ShutdownSpendsAttempt,
    /// Keel's own: a worker finishing a job after a graceful shutdown began
    /// still claims its next batch with the finalize, then hands the batch
    /// straight back unrun: needless claim churn while the node leaves, and
    /// jobs held by a node that will not run them. Storage applies every
    /// claim it is asked for. Caught by `no_claim_after_shutdown`.
    ClaimsWhileStopping,
    /// Keel's own: a leader shutting down steps down without resigning, so
    /// its lease runs out its TTL before a peer may take over: every rolling
    /// restart of the leader leaves the cluster without maintenance that
    /// long. Storage cannot see a resign never sent. Caught by
    /// `leader_resigns_at_shutdown`.
    ShutdownSkipsResign,
    /// Keel before issue 18: the rescuer judges a claim stale on its own wall
    /// clock, not storage's, so a rescuer whose clock runs ahead (a skewed host,
    /// an NTP step after a VM resumes) revokes claims whose workers are alive
    /// and trusted. Storage applies the window it is handed. Caught by
    /// `no_early_rescue`.
    RescueOnCallerClock,
    /// Keel's own, an "optimisation" of issue 18's design: trust is counted on
    /// the monotonic clock from the send and storage's clock alone judges
    /// expiry, so the elector reasons that skew needs no margin and trusts the
    /// whole TTL. True while every clock keeps time; a node whose clock runs
    /// slow, or storage's fast, then believes it leads after storage let the
    /// lease go. Only clock drift exposes it. Caught by `belief_within_lease`
    /// when the node's clock runs slow (its belief outlives the lease in true
    /// time), and by `one_believed_leader` when a peer takes the lease in the
    /// overlap, storage's fast clock included.
    TrustWholeTtl,
}

impl Bug {
    /// Every planted bug, in a fixed order.
    pub const ALL: [Bug; 27] = [
        Bug::StaleResign,
        Bug::CrossTermStop,
        Bug::SwallowedPanic,
        Bug::BurstTicks,
        Bug::IgnoredShutdownDeadline,
        Bug::FinalizeWithoutOwnerGuard,
        Bug::HeartbeatIgnoresLostClaim,
        Bug::LateCancelRewritesOutcome,
        Bug::ClaimAheadIgnoresTrust,
        Bug::IncarnationBlindHolder,
        Bug::TrustFromReply,
        Bug::RenewErrorExtendsTrust,
        Bug::LoopSkipsTrustCheck,
        Bug::RetryBackoffFromDue,
        Bug::CancelGraceIgnored,
        Bug::StartRetryWithoutBackoff,
        Bug::IdlePollBacksOff,
        Bug::ResignBeforeStepDown,
        Bug::RescueThresholdHalved,
        Bug::DiscardOffByOne,
        Bug::PeriodicFiresNextSlot,
        Bug::HandKeeperIdle,
        Bug::ShutdownSpendsAttempt,
        Bug::ClaimsWhileStopping,
        Bug::ShutdownSkipsResign,
        Bug::RescueOnCallerClock,
        Bug::TrustWholeTtl,
    ];

    /// The bug's name as the CLI spells it.
    pub fn name(self) -> &'static str {
        match self {
            Bug::StaleResign => "stale_resign",
            Bug::CrossTermStop => "cross_term_stop",
            Bug::SwallowedPanic => "swallowed_panic",
            Bug::BurstTicks => "burst_ticks",
            Bug::IgnoredShutdownDeadline => "ignored_shutdown_deadline",
            Bug::FinalizeWithoutOwnerGuard => "finalize_without_owner_guard",
            Bug::HeartbeatIgnoresLostClaim => "heartbeat_ignores_lost_claim",
            Bug::LateCancelRewritesOutcome => "late_cancel_rewrites_outcome",
            Bug::ClaimAheadIgnoresTrust => "claim_ahead_ignores_trust",
            Bug::IncarnationBlindHolder => "incarnation_blind_holder",
            Bug::TrustFromReply => "trust_from_reply",
            Bug::RenewErrorExtendsTrust => "renew_error_extends_trust",
            Bug::LoopSkipsTrustCheck => "loop_skips_trust_check",
            Bug::RetryBackoffFromDue => "retry_backoff_from_due",
            Bug::CancelGraceIgnored => "cancel_grace_ignored",
            Bug::StartRetryWithoutBackoff => "start_retry_without_backoff",
            Bug::IdlePollBacksOff => "idle_poll_backs_off",
            Bug::ResignBeforeStepDown => "resign_before_step_down",
            Bug::RescueThresholdHalved => "rescue_threshold_halved",
            Bug::DiscardOffByOne => "discard_off_by_one",
            Bug::PeriodicFiresNextSlot => "periodic_fires_next_slot",
            Bug::HandKeeperIdle => "hand_keeper_idle",
            Bug::ShutdownSpendsAttempt => "shutdown_spends_attempt",
            Bug::ClaimsWhileStopping => "claims_while_stopping",
            Bug::ShutdownSkipsResign => "shutdown_skips_resign",
            Bug::RescueOnCallerClock => "rescue_on_caller_clock",
            Bug::TrustWholeTtl => "trust_whole_ttl",
        }
    }
}

impl fmt::Display for Bug {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An unknown bug name; lists the valid ones.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown planted bug {given:?}; valid: {}", Bug::ALL.map(Bug::name).join(", "))]
pub struct UnknownBug {
    /// The name given.
    pub given: String,
}

impl FromStr for Bug {
    type Err = UnknownBug;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Bug::ALL
            .into_iter()
            .find(|b| b.name() == s)
            .ok_or_else(|| UnknownBug {
                given: s.to_owned(),
            })
    }
}

/// The set of bugs switched on for one runtime.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PlantedBugs(BTreeSet<Bug>);

impl PlantedBugs {
    /// No bug planted.
    pub fn none() -> Self {
        Self::default()
    }

    /// Exactly `bug` planted.
    pub fn only(bug: Bug) -> Self {
        Self(BTreeSet::from([bug]))
    }

    /// Whether `bug` is switched on.
    pub fn contains(&self, bug: Bug) -> bool {
        self.0.contains(&bug)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_list_the_valid_ones() {
        for bug in Bug::ALL {
            assert_eq!(bug.name().parse::<Bug>(), Ok(bug));
        }
        let err = "nope".parse::<Bug>().expect_err("unknown");
        assert!(err
            .to_string()
            .contains("stale_resign, cross_term_stop, swallowed_panic, burst_ticks, ignored_shutdown_deadline"));
    }
}
