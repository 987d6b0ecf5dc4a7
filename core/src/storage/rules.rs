//! The job state machine as pure functions on one [`Job`] row.
//!
//! Every engine applies these same rules: [`MemStorage`](super::MemStorage) to
//! rows in a map, the SQL engines to a row they read and locked inside the
//! transaction that writes it back. Keeping the transitions here, once, is what
//! lets the conformance suite hold each engine to the model by construction for
//! single-row changes; the engines differ only in how they find and store rows.

use super::admin::AdminOutcome;
use super::job::{Attempt, AttemptOutcome, ATTEMPTS_KEPT_MAX, ERRORS_KEPT_MAX};
use super::{
    CancelResult, Claim, EnqueueRequest, Finalize, FinalizeResult, HeartbeatStatus, Job, JobId,
    JobState,
};
use crate::clock::Timestamp;

impl Job {
    /// A new row for `req`, enqueued at `now` with id `id`.
    pub fn from_request(id: JobId, req: EnqueueRequest, now: Timestamp) -> Job {
        let scheduled_at = req
            .scheduled_at
            .or(req.scheduled_in.map(|delay| now.plus(delay)))
            .unwrap_or(now);
        let state = if scheduled_at <= now {
            JobState::Available
        } else {
            JobState::Scheduled
        };
        Job {
            id,
            kind: req.kind,
            queue: req.queue,
            payload: req.payload,
            priority: req.priority,
            state,
            attempt: 0,
            max_attempts: req.max_attempts,
            scheduled_at,
            created_at: now,
            owner: None,
            heartbeat_at: None,
            cancel_requested: false,
            finalized_at: None,
            finalized_attempt: None,
            errors: Vec::new(),
            unique_key: req.unique_key,
            attempts: Vec::new(),
        }
    }

    /// Whether a claim of `queue` at `now` may take this row.
    pub fn is_claimable(&self, queue: &str, now: Timestamp) -> bool {
        self.queue == queue && self.state == JobState::Available && self.scheduled_at <= now
    }

    /// Claim this row for `owner`: a new attempt, the new fencing token.
    pub fn claim_for(&mut self, owner: &str, now: Timestamp) {
        assert_eq!(
            self.state,
            JobState::Available,
            "only available jobs are claimed"
        );
        self.state = JobState::Running;
        self.attempt += 1;
        self.owner = Some(owner.to_owned());
        self.heartbeat_at = Some(now);
        if self.attempts.len() >= ATTEMPTS_KEPT_MAX {
            self.attempts.remove(0);
        }
        self.attempts.push(Attempt {
            attempt: self.attempt,
            owner: owner.to_owned(),
            started_at: now,
            ended_at: None,
            outcome: None,
            error: None,
        });
    }

    /// Close the running attempt's record: it ended at `now` with `outcome`.
    fn end_attempt(&mut self, now: Timestamp, outcome: AttemptOutcome, error: Option<&str>) {
        let attempt = self.attempt;
        if let Some(last) = self.attempts.last_mut().filter(|a| a.attempt == attempt) {
            last.ended_at = Some(now);
            last.outcome = Some(outcome);
            last.error = error.map(str::to_owned);
        }
    }

    /// Whether `claim`, held by `owner`, is this row's live claim.
    pub fn is_live_claim(&self, claim: Claim, owner: &str) -> bool {
        self.id == claim.job
            && self.state == JobState::Running
            && self.attempt == claim.attempt
            && self.owner.as_deref() == Some(owner)
    }

    /// A heartbeat for `claim`. Changes the row only while the claim is live.
    pub fn beat(&mut self, claim: Claim, owner: &str, now: Timestamp) -> HeartbeatStatus {
        if !self.is_live_claim(claim, owner) {
            return HeartbeatStatus::Lost;
        }
        self.heartbeat_at = Some(now);
        if self.cancel_requested {
            HeartbeatStatus::CancelRequested
        } else {
            HeartbeatStatus::Alive
        }
    }

    /// Record how `claim`'s attempt ended. Idempotent for the same claim, a no-op
    /// for a stale one.
    pub fn finalize_with(
        &mut self,
        claim: Claim,
        owner: &str,
        outcome: Finalize,
        now: Timestamp,
    ) -> FinalizeResult {
        if !self.is_live_claim(claim, owner) {
            return if self.finalized_attempt == Some(claim.attempt) {
                FinalizeResult::AlreadyFinalized
            } else {
                FinalizeResult::Stale
            };
        }
        // The cancel came too late to stop the work: the completion stands.
        crate::sometimes!(
            self.cancel_requested && outcome == Finalize::Completed,
            "cancel_races_finish"
        );
        let (ended, error) = match &outcome {
            Finalize::Completed => (AttemptOutcome::Completed, None),
            Finalize::Retry { error, .. } => (AttemptOutcome::Failed, Some(error.as_str())),
            Finalize::Discard { error } => (AttemptOutcome::Discarded, Some(error.as_str())),
            Finalize::Snooze { .. } => (AttemptOutcome::Snoozed, None),
            Finalize::Cancel { reason } => (AttemptOutcome::Cancelled, Some(reason.as_str())),
        };
        self.end_attempt(now, ended, error);
        self.owner = None;
        self.heartbeat_at = None;
        self.finalized_attempt = Some(claim.attempt);
        let (state, at) = match outcome {
            Finalize::Completed => (JobState::Completed, None),
            Finalize::Retry { error, delay } => {
                self.push_error(error);
                (JobState::Retryable, Some(now.plus(delay)))
            }
            Finalize::Discard { error } => {
                self.push_error(error);
                (JobState::Discarded, None)
            }
            Finalize::Snooze { delay } => {
                // A snooze does not spend an attempt: the next claim's increment is
                // given back through the budget.
                self.max_attempts += 1;
                (JobState::Scheduled, Some(now.plus(delay)))
            }
            Finalize::Cancel { reason } => {
                self.push_error(reason);
                (JobState::Cancelled, None)
            }
        };
        // A job someone asked to cancel never runs again: an attempt that ends
        // without finishing the work ends the job as cancelled.
        let (state, at) = if self.cancel_requested && at.is_some() {
            (JobState::Cancelled, None)
        } else {
            (state, at)
        };
        self.state = state;
        match at {
            Some(at) => self.scheduled_at = at,
            None => self.finalized_at = Some(now),
        }
        assert_eq!(
            state.is_terminal(),
            self.finalized_at.is_some(),
            "terminal iff finalized"
        );
        FinalizeResult::Applied
    }

    /// Cancel: at once unless running (then through the worker's heartbeat);
    /// a finished job keeps its outcome.
    pub fn cancel_at(&mut self, now: Timestamp) -> CancelResult {
        match self.state {
            s if s.is_terminal() => CancelResult::AlreadyFinished,
            JobState::Running => {
                self.cancel_requested = true;
                CancelResult::Requested
            }
            _ => {
                self.state = JobState::Cancelled;
                self.finalized_at = Some(now);
                CancelResult::Cancelled
            }
        }
    }

    /// Whether the rescuer takes this row back: running, heartbeat older than
    /// `stale_before`.
    pub fn is_stale(&self, stale_before: Timestamp) -> bool {
        self.state == JobState::Running && self.heartbeat_at.is_none_or(|h| h < stale_before)
    }

    /// Revoke the current claim of a stale row; returns the revoked claim.
    pub fn rescue(&mut self, now: Timestamp) -> Claim {
        assert_eq!(
            self.state,
            JobState::Running,
            "only running jobs are rescued"
        );
        let revoked = Claim {
            job: self.id,
            attempt: self.attempt,
        };
        let error = format!("attempt {} lost its worker", self.attempt);
        self.end_attempt(now, AttemptOutcome::Lost, Some(&error));
        self.push_error(error);
        self.owner = None;
        self.heartbeat_at = None;
        if self.cancel_requested {
            // Its worker is gone and a cancel was asked for: honour the cancel
            // rather than run it again (found by the simulator: the request used
            // to be forgotten across a rescue, and a hanging job never ended).
            self.state = JobState::Cancelled;
            self.finalized_at = Some(now);
        } else if self.attempt >= self.max_attempts {
            self.state = JobState::Discarded;
            self.finalized_at = Some(now);
        } else {
            self.state = JobState::Retryable;
            self.scheduled_at = now;
        }
        revoked
    }

    /// Whether promotion makes this row available at `now`.
    pub fn is_due(&self, now: Timestamp) -> bool {
        matches!(self.state, JobState::Scheduled | JobState::Retryable) && self.scheduled_at <= now
    }

    /// Whether cleanup deletes this row.
    pub fn is_expired(&self, finished_before: Timestamp) -> bool {
        self.state.is_terminal() && self.finalized_at.is_some_and(|f| f < finished_before)
    }

    /// An operator's retry: a job that is not running becomes due now with
    /// its outcome forgotten, and gets one more attempt if it spent them all.
    /// A running job belongs to its claim and is left alone.
    pub fn retry_by_operator(&mut self, now: Timestamp) -> AdminOutcome {
        match self.state {
            JobState::Running => return AdminOutcome::Running,
            JobState::Available if self.scheduled_at <= now => return AdminOutcome::Unchanged,
            _ => {}
        }
        self.state = JobState::Available;
        self.scheduled_at = now;
        self.finalized_at = None;
        self.cancel_requested = false;
        if self.attempt >= self.max_attempts {
            self.max_attempts = self.attempt + 1;
        }
        AdminOutcome::Done
    }

    /// An operator's discard: a job that is neither running nor finished
    /// ends as discarded, with `reason` as its last error.
    pub fn discard_by_operator(&mut self, reason: &str, now: Timestamp) -> AdminOutcome {
        match self.state {
            JobState::Running => AdminOutcome::Running,
            s if s.is_terminal() => AdminOutcome::AlreadyFinished,
            _ => {
                self.push_error(reason.to_owned());
                self.state = JobState::Discarded;
                self.finalized_at = Some(now);
                AdminOutcome::Done
            }
        }
    }

    fn push_error(&mut self, error: String) {
        self.errors.push(error);
        if self.errors.len() > ERRORS_KEPT_MAX {
            self.errors.remove(0);
        }
    }
}
