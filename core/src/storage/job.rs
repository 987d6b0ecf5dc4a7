//! The job model: what storage keeps about a job, and the answers it gives.
//!
//! A job moves through these states:
//!
//! ```text
//!  enqueue ──▶ scheduled ──(due)──▶ available ──claim──▶ running ──▶ completed
//!     └──────────(due now)──────────▲                    │  │  │
//!                                   └─(due)── retryable ◀─┘  │  └──▶ cancelled
//!                                                             └─────▶ discarded
//! ```
//!
//! A claim increments `attempt`, and `(job_id, attempt)` is the **fencing token**:
//! heartbeat, finalize and fenced effects carry it, and storage refuses them once
//! the row has moved on (rescued, re-claimed, finished). Finalizing the same
//! `(job_id, attempt)` twice is answered `AlreadyFinalized`, so a caller whose
//! reply was lost can retry safely.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::clock::Timestamp;
use crate::storage::{StorageError, StorageResult};

/// Longest queue or kind name, in bytes.
pub const NAME_LEN_MAX: usize = 128;
/// Longest unique key, in bytes.
pub const UNIQUE_KEY_LEN_MAX: usize = 256;
/// Largest payload, serialized, in bytes: jobs carry references, not blobs.
pub const PAYLOAD_BYTES_MAX: usize = 1 << 20;
/// Most attempts a job may ask for.
pub const ATTEMPTS_MAX: u32 = 100;
/// Error messages kept per job, newest last.
pub const ERRORS_KEPT_MAX: usize = 10;
/// Attempts whose record a job keeps, newest last: as many as a job may ask
/// for, so only a job snoozed past that loses its oldest records.
pub const ATTEMPTS_KEPT_MAX: usize = ATTEMPTS_MAX as usize;

/// A job's id, assigned by storage in enqueue order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct JobId(pub u64);

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "job-{}", self.0)
    }
}

/// Where a job is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Waiting for its `scheduled_at`.
    Scheduled,
    /// Ready to be claimed.
    Available,
    /// Claimed by a worker.
    Running,
    /// Failed an attempt; waiting for its retry time.
    Retryable,
    /// Finished successfully. Terminal.
    Completed,
    /// Cancelled. Terminal.
    Cancelled,
    /// Gave up (attempts exhausted, or discarded by its handler). Terminal.
    Discarded,
}

impl JobState {
    /// Every state, in lifecycle order.
    pub const ALL: [JobState; 7] = [
        JobState::Scheduled,
        JobState::Available,
        JobState::Running,
        JobState::Retryable,
        JobState::Completed,
        JobState::Cancelled,
        JobState::Discarded,
    ];

    /// The state's name as SQL engines store it (the same as its serde name).
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Scheduled => "scheduled",
            JobState::Available => "available",
            JobState::Running => "running",
            JobState::Retryable => "retryable",
            JobState::Completed => "completed",
            JobState::Cancelled => "cancelled",
            JobState::Discarded => "discarded",
        }
    }

    /// The state named `name`, as [`as_str`](Self::as_str) writes it.
    pub fn parse(name: &str) -> Option<JobState> {
        Self::ALL.into_iter().find(|s| s.as_str() == name)
    }

    /// Whether the job will never run again.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Completed | JobState::Cancelled | JobState::Discarded
        )
    }
}

/// What to enqueue. Build with [`EnqueueRequest::new`] and the setters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EnqueueRequest {
    /// Which handler runs it.
    pub kind: String,
    /// Which queue it waits in.
    pub queue: String,
    /// The handler's input.
    pub payload: serde_json::Value,
    /// Lower runs first; `0..=9`.
    pub priority: u8,
    /// Not before this time on storage's clock; `None` means now (or
    /// `scheduled_in` from now).
    pub scheduled_at: Option<Timestamp>,
    /// Not before this long after storage inserts it, on storage's clock; at
    /// most one of this and `scheduled_at`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled_in: Option<Duration>,
    /// Attempts before the job is discarded.
    pub max_attempts: u32,
    /// At most one retained job per key; a second enqueue returns the first.
    pub unique_key: Option<String>,
}

impl EnqueueRequest {
    /// Default queue name.
    pub const QUEUE_DEFAULT: &'static str = "default";
    /// Default priority.
    pub const PRIORITY_DEFAULT: u8 = 5;
    /// Highest priority value (lowest precedence).
    pub const PRIORITY_MAX: u8 = 9;
    /// Default attempts.
    pub const MAX_ATTEMPTS_DEFAULT: u32 = 5;

    /// A job of `kind` with `payload`, on the default queue, due now.
    pub fn new(kind: impl Into<String>, payload: serde_json::Value) -> Self {
        Self {
            kind: kind.into(),
            queue: Self::QUEUE_DEFAULT.to_owned(),
            payload,
            priority: Self::PRIORITY_DEFAULT,
            scheduled_at: None,
            scheduled_in: None,
            max_attempts: Self::MAX_ATTEMPTS_DEFAULT,
            unique_key: None,
        }
    }

    /// A job of `kind` whose payload is the JSON text `json` (a request body, a
    /// message from elsewhere).
    ///
    /// # Errors
    ///
    /// [`StorageError::Invalid`] on field `payload` when `json` is not JSON,
    /// saying where it stops being JSON.
    pub fn from_json(kind: impl Into<String>, json: &str) -> StorageResult<Self> {
        let payload =
            serde_json::from_str(json).map_err(|e| invalid("payload", format!("not JSON: {e}")))?;
        Ok(Self::new(kind, payload))
    }

    /// A job of `kind` whose payload is `value`, serialized to JSON.
    ///
    /// # Errors
    ///
    /// [`StorageError::Invalid`] on field `payload` when `value` has no JSON form
    /// (a map with non-string keys, a failing `Serialize` impl).
    pub fn typed<T: Serialize + ?Sized>(kind: impl Into<String>, value: &T) -> StorageResult<Self> {
        let payload = serde_json::to_value(value)
            .map_err(|e| invalid("payload", format!("has no JSON form: {e}")))?;
        Ok(Self::new(kind, payload))
    }

    /// Put it on `queue`.
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.queue = queue.into();
        self
    }

    /// Set its priority (lower runs first).
    pub fn priority(mut self, priority: u8) -> Self {
        self.priority = priority;
        self
    }

    /// Run it no earlier than `at`, as storage's clock reads it: an instant
    /// read off the enqueuing machine's clock is off by however far that
    /// clock is from storage's.
    pub fn scheduled_at(mut self, at: Timestamp) -> Self {
        self.scheduled_at = Some(at);
        self.scheduled_in = None;
        self
    }

    /// Run it no earlier than `delay` after storage inserts it, on storage's
    /// clock: unlike [`scheduled_at`](Self::scheduled_at), untouched by how
    /// far the enqueuing machine's clock is off.
    ///
    /// ```
    /// use keel::storage::EnqueueRequest;
    /// let req = EnqueueRequest::new("digest", serde_json::json!({}))
    ///     .scheduled_in(std::time::Duration::from_secs(30));
    /// assert_eq!(req.scheduled_in, Some(std::time::Duration::from_secs(30)));
    /// ```
    pub fn scheduled_in(mut self, delay: Duration) -> Self {
        self.scheduled_in = Some(delay);
        self.scheduled_at = None;
        self
    }

    /// Allow `n` attempts.
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n;
        self
    }

    /// Make it unique under `key`.
    pub fn unique_key(mut self, key: impl Into<String>) -> Self {
        self.unique_key = Some(key.into());
        self
    }

    /// Check every field; the error names the first bad one.
    pub fn validate(&self) -> StorageResult<()> {
        validate_name("kind", &self.kind)?;
        validate_name("queue", &self.queue)?;
        if self.priority > Self::PRIORITY_MAX {
            return Err(invalid(
                "priority",
                format!("must be 0..={}, got {}", Self::PRIORITY_MAX, self.priority),
            ));
        }
        if !(1..=ATTEMPTS_MAX).contains(&self.max_attempts) {
            return Err(invalid(
                "max_attempts",
                format!("must be 1..={ATTEMPTS_MAX}, got {}", self.max_attempts),
            ));
        }
        if self.scheduled_at.is_some() && self.scheduled_in.is_some() {
            return Err(invalid(
                "scheduled_in",
                "set at most one of scheduled_at and scheduled_in".into(),
            ));
        }
        if let Some(key) = &self.unique_key {
            if key.is_empty() || key.len() > UNIQUE_KEY_LEN_MAX {
                return Err(invalid(
                    "unique_key",
                    format!("must be 1..={UNIQUE_KEY_LEN_MAX} bytes"),
                ));
            }
        }
        let size = serde_json::to_vec(&self.payload).map_or(usize::MAX, |b| b.len());
        if size > PAYLOAD_BYTES_MAX {
            return Err(invalid(
                "payload",
                format!("{size} bytes exceeds {PAYLOAD_BYTES_MAX}"),
            ));
        }
        Ok(())
    }
}

fn invalid(field: &str, reason: String) -> StorageError {
    StorageError::Invalid {
        field: field.to_owned(),
        reason,
    }
}

/// Queue and kind names: 1..=128 bytes of ASCII letters, digits, `_`, `-`, `.`, `:`.
pub fn validate_name(field: &str, name: &str) -> StorageResult<()> {
    if name.is_empty() || name.len() > NAME_LEN_MAX {
        return Err(invalid(
            field,
            format!("must be 1..={NAME_LEN_MAX} bytes, got {}", name.len()),
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "_-.:".contains(*c)))
    {
        return Err(invalid(
            field,
            format!("{name:?} contains {c:?}; use letters, digits, _ - . :"),
        ));
    }
    Ok(())
}

/// A job as storage holds it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// Its id.
    pub id: JobId,
    /// Which handler runs it.
    pub kind: String,
    /// Which queue it waits in.
    pub queue: String,
    /// The handler's input.
    pub payload: serde_json::Value,
    /// Lower runs first.
    pub priority: u8,
    /// Where it is in its life.
    pub state: JobState,
    /// Claims so far; the fencing token of the current claim.
    pub attempt: u32,
    /// Attempts before it is discarded (snoozes add one each).
    pub max_attempts: u32,
    /// When it becomes (or became) due.
    pub scheduled_at: Timestamp,
    /// When it was enqueued.
    pub created_at: Timestamp,
    /// The worker holding the current claim.
    pub owner: Option<String>,
    /// The current claim's last heartbeat.
    pub heartbeat_at: Option<Timestamp>,
    /// A cancel was asked for while it ran.
    pub cancel_requested: bool,
    /// When it reached a terminal state.
    pub finalized_at: Option<Timestamp>,
    /// The attempt whose finalize was applied last (for idempotent retries).
    pub finalized_attempt: Option<u32>,
    /// The latest errors, newest last, at most [`ERRORS_KEPT_MAX`].
    pub errors: Vec<String>,
    /// Its unique key.
    pub unique_key: Option<String>,
    /// Its attempts, oldest first, at most [`ATTEMPTS_KEPT_MAX`]: who ran
    /// each, when, and how it ended.
    #[serde(default)]
    pub attempts: Vec<Attempt>,
}

/// One attempt at a job, as storage recorded it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    /// Which attempt (the claim's fencing token).
    pub attempt: u32,
    /// The worker that claimed it.
    pub owner: String,
    /// When it was claimed, on storage's clock.
    pub started_at: Timestamp,
    /// When it ended, on storage's clock; absent while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<Timestamp>,
    /// How it ended; absent while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<AttemptOutcome>,
    /// The error or panic message it ended with, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// How an attempt ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttemptOutcome {
    /// Its handler finished the work.
    Completed,
    /// Its handler failed; the job was to run again.
    Failed,
    /// Its handler failed for good.
    Discarded,
    /// Its handler (or a shutdown) put the job back without spending the attempt.
    Snoozed,
    /// It stopped on a cancel.
    Cancelled,
    /// Its worker stopped heartbeating and the rescuer revoked the claim.
    Lost,
}

impl AttemptOutcome {
    /// The outcome's name as storage writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptOutcome::Completed => "completed",
            AttemptOutcome::Failed => "failed",
            AttemptOutcome::Discarded => "discarded",
            AttemptOutcome::Snoozed => "snoozed",
            AttemptOutcome::Cancelled => "cancelled",
            AttemptOutcome::Lost => "lost",
        }
    }
}

/// The answer to an enqueue.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EnqueueOutcome {
    /// A new job.
    Inserted(JobId),
    /// A job with the same unique key exists; this is it.
    Duplicate(JobId),
}

impl EnqueueOutcome {
    /// The job's id, new or existing.
    pub fn id(self) -> JobId {
        match self {
            EnqueueOutcome::Inserted(id) | EnqueueOutcome::Duplicate(id) => id,
        }
    }
}

/// A claim's identity: the fencing token every later call carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Claim {
    /// The job.
    pub job: JobId,
    /// The attempt this claim is.
    pub attempt: u32,
}

/// What a heartbeat learned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HeartbeatStatus {
    /// The claim is live; keep going.
    Alive,
    /// The claim is live and a cancel was requested: stop the handler.
    CancelRequested,
    /// The claim is gone (rescued, re-claimed, finished): stop the handler.
    Lost,
}

/// How an attempt ended, as the worker reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Finalize {
    /// Done.
    Completed,
    /// Failed; run again `delay` from now on storage's clock.
    Retry {
        /// Why it failed.
        error: String,
        /// How long to wait before the next attempt (the backoff).
        delay: Duration,
    },
    /// Failed for good.
    Discard {
        /// Why.
        error: String,
    },
    /// Run again `delay` from now on storage's clock, without spending an
    /// attempt.
    Snooze {
        /// How long to wait; zero makes it due at once.
        delay: Duration,
    },
    /// Stopped on request.
    Cancel {
        /// Why.
        reason: String,
    },
}

/// What storage did with a finalize.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FinalizeResult {
    /// Applied now.
    Applied,
    /// This attempt was finalized before (a retried call); nothing changed.
    AlreadyFinalized,
    /// The claim is no longer live; nothing changed.
    Stale,
}

/// What storage did with a fenced effect.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EffectResult {
    /// Written now.
    Applied,
    /// An earlier attempt of this job wrote it; nothing changed.
    AlreadyApplied,
    /// The claim is no longer live; nothing changed.
    NotOwner,
}

/// What a cancel did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CancelResult {
    /// It was not running; it is cancelled now.
    Cancelled,
    /// It is running; its worker will see the request at its next heartbeat.
    Requested,
    /// It already finished; its outcome stands.
    AlreadyFinished,
    /// No such job.
    NotFound,
}

/// A queue's settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueConfig {
    /// The queue.
    pub name: String,
    /// Workers each node runs for it; `None`: the number each node's own
    /// configuration names (a queue an operator paused but never sized).
    pub workers: Option<u32>,
    /// Paused queues hand out no claims.
    pub paused: bool,
}

/// Jobs per state, for tests, dashboards and liveness checks.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateCounts(pub std::collections::BTreeMap<JobState, u64>);

impl StateCounts {
    /// How many jobs are in `state`.
    pub fn get(&self, state: JobState) -> u64 {
        self.0.get(&state).copied().unwrap_or(0)
    }

    /// How many jobs are not in a terminal state.
    pub fn unfinished(&self) -> u64 {
        self.0
            .iter()
            .filter(|(s, _)| !s.is_terminal())
            .map(|(_, n)| n)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(e: StorageError) -> String {
        match e {
            StorageError::Invalid { field, reason } => format!("{field}: {reason}"),
            other => panic!("not a validation error: {other}"),
        }
    }

    #[test]
    fn a_payload_that_is_not_json_is_refused_naming_the_field_and_the_place() {
        let err = EnqueueRequest::from_json("email", "{\"to\": ").expect_err("cut short");
        let msg = field(err);
        assert!(msg.starts_with("payload: not JSON"), "{msg}");
        assert!(msg.contains("line 1"), "says where: {msg}");
        let ok = EnqueueRequest::from_json("email", "{\"to\": \"a@b\"}").expect("json");
        assert_eq!(ok.payload, serde_json::json!({"to": "a@b"}));
    }

    #[test]
    fn a_value_without_a_json_form_is_refused() {
        let mut map = std::collections::BTreeMap::new();
        map.insert((1u8, 2u8), "tuple keys have no JSON form");
        let msg = field(EnqueueRequest::typed("k", &map).expect_err("no json"));
        assert!(msg.starts_with("payload: has no JSON form"), "{msg}");
        let ok = EnqueueRequest::typed("k", &[1, 2]).expect("json");
        assert_eq!(ok.payload, serde_json::json!([1, 2]));
    }

    #[test]
    fn names_must_be_non_empty_short_and_plain() {
        assert!(field(validate_name("queue", "").expect_err("empty")).contains("1..=128"));
        let long = "q".repeat(NAME_LEN_MAX + 1);
        assert!(field(validate_name("queue", &long).expect_err("long")).starts_with("queue"));
        let msg = field(validate_name("queue", "mail/urgent").expect_err("slash"));
        assert!(msg.contains("'/'"), "names the character: {msg}");
        assert!(validate_name("queue", "mail.urgent:2").is_ok());
    }
}
