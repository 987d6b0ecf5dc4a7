//! What an operator reads and changes: the storage half of the admin API.
//!
//! [`AdminStore`] is implemented by every engine and held to the model
//! ([`MemStorage`](super::MemStorage)) by the conformance suite, like the
//! runtime's own traits. [`crate::admin::Admin`] builds the CLI's and the
//! dashboard's calls on it.
//!
//! Operators go through the same fences as the runtime: a running job belongs
//! to its claim, so a retry, discard or delete of one changes nothing and says
//! [`AdminOutcome::Running`]; a cancel of one goes through
//! [`JobStore::request_cancel`](super::JobStore::request_cancel), which its
//! worker hears at its next heartbeat.

use std::collections::BTreeMap;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::{Job, JobId, JobState, Lease, QueueConfig, StateCounts, StorageError, StorageResult};
use crate::clock::Timestamp;

/// Most jobs one [`AdminStore::list_jobs`] call returns.
pub const LIST_LIMIT_MAX: u32 = 1_000;

/// The error message a job discarded by an operator keeps.
pub const DISCARD_REASON: &str = "discarded by an operator";

/// Which jobs to list, newest first.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobFilter {
    /// Only jobs in one of these states; empty: every state.
    pub states: Vec<JobState>,
    /// Only jobs of this queue.
    pub queue: Option<String>,
    /// Only jobs of this kind.
    pub kind: Option<String>,
    /// Only jobs older than this one (the previous page's
    /// [`JobPage::next`]).
    pub before: Option<JobId>,
    /// At most this many, `1..=`[`LIST_LIMIT_MAX`].
    pub limit: u32,
}

impl JobFilter {
    /// Every job, `limit` at a time.
    pub fn all(limit: u32) -> Self {
        Self {
            limit,
            ..Self::default()
        }
    }

    /// Check every field; the error names the first bad one.
    pub fn validate(&self) -> StorageResult<()> {
        if !(1..=LIST_LIMIT_MAX).contains(&self.limit) {
            return Err(StorageError::Invalid {
                field: "limit".into(),
                reason: format!("must be 1..={LIST_LIMIT_MAX}, got {}", self.limit),
            });
        }
        if let Some(queue) = &self.queue {
            super::job::validate_name("queue", queue)?;
        }
        if let Some(kind) = &self.kind {
            super::job::validate_name("kind", kind)?;
        }
        Ok(())
    }

    /// Whether `job` passes the filter (the model's rule; SQL engines say the
    /// same in their `WHERE`).
    pub fn matches(&self, job: &Job) -> bool {
        (self.states.is_empty() || self.states.contains(&job.state))
            && self.queue.as_ref().is_none_or(|q| *q == job.queue)
            && self.kind.as_ref().is_none_or(|k| *k == job.kind)
            && self.before.is_none_or(|b| job.id < b)
    }
}

/// One page of [`AdminStore::list_jobs`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct JobPage {
    /// The jobs, newest (highest id) first.
    pub jobs: Vec<Job>,
    /// Where the next (older) page starts, as [`JobFilter::before`]; `None`
    /// on the last page.
    pub next: Option<JobId>,
}

impl JobPage {
    /// The page of `limit` jobs from `matching` (newest first, at most
    /// `limit + 1` of them: one more tells whether a next page exists).
    pub fn from_newest(mut matching: Vec<Job>, limit: u32) -> Self {
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        let more = matching.len() > limit;
        matching.truncate(limit);
        let next = if more {
            matching.last().map(|j| j.id)
        } else {
            None
        };
        Self {
            jobs: matching,
            next,
        }
    }
}

/// A queue as an operator sees it: its jobs per state and its settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueSummary {
    /// The queue.
    pub name: String,
    /// Its jobs per state.
    pub counts: StateCounts,
    /// Whether it is paused (no claims are handed out).
    pub paused: bool,
    /// The workers each node runs for it, if an operator set them.
    pub workers: Option<u32>,
}

/// A periodic schedule as storage last heard of it, from the leader that
/// fired its latest slot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleRecord {
    /// The schedule's name.
    pub name: String,
    /// When its slots fall, as [`Schedule`](crate::jobs::Schedule) writes
    /// itself (`every 60s`, or a cron expression).
    pub schedule: String,
    /// The queue its jobs go to.
    pub queue: String,
    /// Its jobs' kind.
    pub kind: String,
    /// The latest slot fired, on storage's clock.
    pub last_slot: Timestamp,
    /// The job that slot inserted.
    pub last_job: JobId,
}

/// What an operator's change did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdminOutcome {
    /// Done.
    Done,
    /// The job is already as asked (a retry of a job that is due now).
    Unchanged,
    /// The job is running: it belongs to its claim, so nothing changed. Cancel
    /// it, or wait for its attempt to end.
    Running,
    /// The job already finished (a discard); its outcome stands.
    AlreadyFinished,
    /// No such job.
    NotFound,
}

/// The operator's reads and changes, implemented by every engine.
#[async_trait]
pub trait AdminStore: Send + Sync {
    /// Jobs passing `filter`, newest first, one page at a time.
    async fn list_jobs(&self, filter: JobFilter) -> StorageResult<JobPage>;

    /// Every fenced effect job `job` wrote, by key.
    async fn list_effects(&self, job: JobId) -> StorageResult<Vec<(String, serde_json::Value)>>;

    /// Every queue that has jobs or settings, by name.
    async fn list_queues(&self) -> StorageResult<Vec<QueueSummary>>;

    /// Every lease ever granted, by name.
    async fn list_leases(&self) -> StorageResult<Vec<Lease>>;

    /// Every periodic schedule that fired a slot, by name.
    async fn list_schedules(&self) -> StorageResult<Vec<ScheduleRecord>>;

    /// Run a job that is not running again, due now (see
    /// [`Job::retry_by_operator`]).
    async fn retry_job(&self, job: JobId) -> StorageResult<AdminOutcome>;

    /// End a job that is neither running nor finished as discarded.
    async fn discard_job(&self, job: JobId) -> StorageResult<AdminOutcome>;

    /// Delete a job that is not running, with its effects.
    async fn delete_job(&self, job: JobId) -> StorageResult<AdminOutcome>;
}

/// Sort `(queue, state, count)` rows and queue settings into summaries, by
/// name: what every engine's [`AdminStore::list_queues`] returns.
pub(crate) fn summarize_queues(
    counts: impl IntoIterator<Item = (String, JobState, u64)>,
    configs: impl IntoIterator<Item = QueueConfig>,
) -> Vec<QueueSummary> {
    fn entry(map: &mut BTreeMap<String, QueueSummary>, name: String) -> &mut QueueSummary {
        map.entry(name.clone()).or_insert_with(|| QueueSummary {
            name,
            counts: StateCounts::default(),
            paused: false,
            workers: None,
        })
    }
    let mut by_name = BTreeMap::new();
    for (queue, state, n) in counts {
        *entry(&mut by_name, queue)
            .counts
            .0
            .entry(state)
            .or_insert(0) += n;
    }
    for config in configs {
        let summary = entry(&mut by_name, config.name);
        summary.paused = config.paused;
        summary.workers = config.workers;
    }
    by_name.into_values().collect()
}
