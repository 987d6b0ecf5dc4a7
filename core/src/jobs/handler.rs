//! Handlers: the user's code for one kind of job, and what it gets to work with.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::clock::SharedClock;
use crate::shutdown::ShutdownToken;
use crate::storage::{Claim, EffectResult, JobId, SharedStorage, StorageResult};

/// How a handler's attempt ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Done.
    Completed,
    /// Failed; retried with backoff until the job's attempts run out.
    Failed(String),
    /// Run again after this long, without spending an attempt.
    Snooze(Duration),
    /// Stop for good as cancelled.
    Cancel(String),
    /// Stop for good as discarded.
    Discard(String),
}

/// What a handler gets for one attempt.
#[derive(Clone)]
pub struct JobCtx {
    /// The job.
    pub job: JobId,
    /// This attempt (1-based); with `job`, the fencing token.
    pub attempt: u32,
    /// The job's kind.
    pub kind: String,
    /// The job's queue.
    pub queue: String,
    /// Triggered when the handler should stop: the job was cancelled, the claim
    /// was lost, or the runtime is shutting down. A handler that ignores it is
    /// dropped at its next await once the worker gives up waiting.
    pub cancel: ShutdownToken,
    /// Time.
    pub clock: SharedClock,
    pub(crate) owner: String,
    pub(crate) storage: SharedStorage,
}

impl std::fmt::Debug for JobCtx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobCtx")
            .field("job", &self.job)
            .field("attempt", &self.attempt)
            .finish_non_exhaustive()
    }
}

impl JobCtx {
    /// Write `value` under `key` for this job, exactly once: storage applies it
    /// only while this attempt still holds the job, and only if no earlier attempt
    /// wrote the key. Delivery is at-least-once; effects written here are not.
    ///
    /// # Errors
    ///
    /// A storage error; after [`StorageError::Ambiguous`](crate::storage::StorageError::Ambiguous)
    /// calling again is safe: a repeat answers `AlreadyApplied`.
    pub async fn effect(&self, key: &str, value: serde_json::Value) -> StorageResult<EffectResult> {
        let claim = Claim {
            job: self.job,
            attempt: self.attempt,
        };
        self.storage
            .apply_effect(claim, &self.owner, key, value)
            .await
    }
}

/// Decode a handler's payload into `T`.
///
/// A payload of the wrong shape will not get better on retry, so the error is
/// [`Outcome::Discard`], naming the type and the offending field:
///
/// ```
/// # use keel::jobs::{decode_payload, Outcome};
/// #[derive(serde::Deserialize)]
/// struct Email { to: String }
/// let err = decode_payload::<Email>(serde_json::json!({"from": "x"})).err();
/// assert!(matches!(err, Some(Outcome::Discard(m)) if m.contains("missing field `to`")));
/// ```
pub fn decode_payload<T: serde::de::DeserializeOwned>(
    payload: serde_json::Value,
) -> Result<T, Outcome> {
    serde_json::from_value(payload).map_err(|e| {
        Outcome::Discard(format!(
            "payload is not a {}: {e}",
            std::any::type_name::<T>()
        ))
    })
}

/// The code that runs jobs of one kind.
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    /// Run one attempt. A panic is caught and counts as a failed attempt.
    async fn run(&self, ctx: JobCtx, payload: serde_json::Value) -> Outcome;
}

#[async_trait]
impl<F, Fut> Handler for F
where
    F: Fn(JobCtx, serde_json::Value) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    async fn run(&self, ctx: JobCtx, payload: serde_json::Value) -> Outcome {
        self(ctx, payload).await
    }
}

/// Handlers by kind.
#[derive(Clone, Default)]
pub struct HandlerRegistry(BTreeMap<String, Arc<dyn Handler>>);

impl HandlerRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Register `handler` for `kind`, replacing any earlier one.
    pub fn register(&mut self, kind: impl Into<String>, handler: impl Handler) -> &mut Self {
        self.0.insert(kind.into(), Arc::new(handler));
        self
    }

    /// The handler for `kind`.
    pub fn get(&self, kind: &str) -> Option<Arc<dyn Handler>> {
        self.0.get(kind).cloned()
    }

    /// Registered kinds, sorted.
    pub fn kinds(&self) -> Vec<String> {
        self.0.keys().cloned().collect()
    }
}

impl std::fmt::Debug for HandlerRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.0.keys()).finish()
    }
}
