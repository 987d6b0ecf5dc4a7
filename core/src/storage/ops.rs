//! Storage calls as data: every [`Storage`](super::Storage) method is an [`Op`],
//! every answer a [`Reply`].
//!
//! This is what lets storage sit on the far side of a wire (the simulator's
//! database host serves a `MemStorage` this way) or behind a fault injector, with
//! one implementation of the traits instead of one per transport:
//!
//! * the server side calls [`apply`] on a real store;
//! * the client side implements [`Transport`] (send an `Op`, get a `Reply`) and
//!   wraps it in [`Remote`], which implements every storage trait.
//!
//! Errors travel inside [`Reply::Err`]; a transport's own failures (no
//! connection, lost reply) are its `StorageResult` errors.

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::{
    CancelResult, Claim, EffectResult, EnqueueOutcome, EnqueueRequest, Finalize, FinalizeResult,
    HeartbeatStatus, Job, JobId, JobStore, Lease, LeaseStore, PeriodicOutcome, QueueConfig,
    StateCounts, Storage, StorageError, StorageResult, Term,
};
use crate::clock::Timestamp;

/// One storage call. Fields mirror the trait methods' arguments.
#[allow(missing_docs)]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Op {
    TryAcquire {
        name: String,
        holder: String,
        ttl_ms: u64,
        now: Timestamp,
    },
    Renew {
        name: String,
        holder: String,
        term: Term,
        ttl_ms: u64,
        now: Timestamp,
    },
    Resign {
        name: String,
        holder: String,
        term: Term,
    },
    GetLease {
        name: String,
    },
    MaintenanceHeartbeat {
        name: String,
        holder: String,
        term: Term,
        now: Timestamp,
    },
    Enqueue {
        req: EnqueueRequest,
        now: Timestamp,
    },
    EnqueueBatch {
        reqs: Vec<EnqueueRequest>,
        now: Timestamp,
    },
    Claim {
        queue: String,
        owner: String,
        limit: u32,
        now: Timestamp,
    },
    Heartbeat {
        claim: Claim,
        owner: String,
        now: Timestamp,
    },
    Finalize {
        claim: Claim,
        owner: String,
        outcome: Finalize,
        now: Timestamp,
    },
    FinalizeAndClaim {
        claim: Claim,
        owner: String,
        outcome: Finalize,
        queue: String,
        limit: u32,
        now: Timestamp,
    },
    ApplyEffect {
        claim: Claim,
        owner: String,
        key: String,
        value: serde_json::Value,
    },
    GetEffect {
        job: JobId,
        key: String,
    },
    RequestCancel {
        job: JobId,
        now: Timestamp,
    },
    RescueStale {
        stale_before: Timestamp,
        now: Timestamp,
    },
    PromoteDue {
        now: Timestamp,
    },
    Cleanup {
        finished_before: Timestamp,
        limit: u32,
    },
    GetJob {
        job: JobId,
    },
    CountByState,
    ListUnfinished {
        limit: u32,
    },
    SetQueue {
        config: QueueConfig,
    },
    GetQueue {
        name: String,
    },
    FirePeriodic {
        name: String,
        slot: Timestamp,
        lease: String,
        holder: String,
        term: Term,
        req: EnqueueRequest,
        now: Timestamp,
    },
}

impl Op {
    /// Whether the call only reads: it changes nothing, so it needs no write
    /// lock and no commit.
    pub fn is_read(&self) -> bool {
        matches!(
            self,
            Op::GetLease { .. }
                | Op::GetEffect { .. }
                | Op::GetJob { .. }
                | Op::CountByState
                | Op::ListUnfinished { .. }
                | Op::GetQueue { .. }
        )
    }
}

/// The answer to an [`Op`].
#[allow(missing_docs)]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Reply {
    Lease(Option<Lease>),
    Bool(bool),
    Unit(()),
    Count(u64),
    Enqueued(EnqueueOutcome),
    EnqueuedBatch(Vec<EnqueueOutcome>),
    Jobs(Vec<Job>),
    Job(Option<Box<Job>>),
    Heartbeat(HeartbeatStatus),
    Finalized(FinalizeResult),
    FinalizedAndClaimed((FinalizeResult, Vec<Job>)),
    Effect(EffectResult),
    EffectValue(Option<serde_json::Value>),
    Cancel(CancelResult),
    Claims(Vec<Claim>),
    Ids(Vec<JobId>),
    Counts(StateCounts),
    Queue(Option<QueueConfig>),
    Periodic(PeriodicOutcome),
    Err(StorageError),
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Run `op` against `store`.
pub async fn apply(store: &dyn Storage, op: Op) -> Reply {
    let ttl = Duration::from_millis;
    let result = match op {
        Op::TryAcquire {
            name,
            holder,
            ttl_ms,
            now,
        } => store
            .try_acquire(&name, &holder, ttl(ttl_ms), now)
            .await
            .map(Reply::Lease),
        Op::Renew {
            name,
            holder,
            term,
            ttl_ms,
            now,
        } => store
            .renew(&name, &holder, term, ttl(ttl_ms), now)
            .await
            .map(Reply::Bool),
        Op::Resign { name, holder, term } => {
            store.resign(&name, &holder, term).await.map(Reply::Bool)
        }
        Op::GetLease { name } => store.get_lease(&name).await.map(Reply::Lease),
        Op::MaintenanceHeartbeat {
            name,
            holder,
            term,
            now,
        } => store
            .maintenance_heartbeat(&name, &holder, term, now)
            .await
            .map(Reply::Bool),
        Op::Enqueue { req, now } => store.enqueue(req, now).await.map(Reply::Enqueued),
        Op::EnqueueBatch { reqs, now } => store
            .enqueue_batch(reqs, now)
            .await
            .map(Reply::EnqueuedBatch),
        Op::Claim {
            queue,
            owner,
            limit,
            now,
        } => store
            .claim(&queue, &owner, limit, now)
            .await
            .map(Reply::Jobs),
        Op::Heartbeat { claim, owner, now } => store
            .heartbeat(claim, &owner, now)
            .await
            .map(Reply::Heartbeat),
        Op::Finalize {
            claim,
            owner,
            outcome,
            now,
        } => store
            .finalize(claim, &owner, outcome, now)
            .await
            .map(Reply::Finalized),
        Op::FinalizeAndClaim {
            claim,
            owner,
            outcome,
            queue,
            limit,
            now,
        } => store
            .finalize_and_claim(claim, &owner, outcome, &queue, limit, now)
            .await
            .map(Reply::FinalizedAndClaimed),
        Op::ApplyEffect {
            claim,
            owner,
            key,
            value,
        } => store
            .apply_effect(claim, &owner, &key, value)
            .await
            .map(Reply::Effect),
        Op::GetEffect { job, key } => store.get_effect(job, &key).await.map(Reply::EffectValue),
        Op::RequestCancel { job, now } => store.request_cancel(job, now).await.map(Reply::Cancel),
        Op::RescueStale { stale_before, now } => store
            .rescue_stale(stale_before, now)
            .await
            .map(Reply::Claims),
        Op::PromoteDue { now } => store.promote_due(now).await.map(Reply::Count),
        Op::Cleanup {
            finished_before,
            limit,
        } => store
            .cleanup(finished_before, limit)
            .await
            .map(Reply::Count),
        Op::GetJob { job } => store
            .get_job(job)
            .await
            .map(|j| Reply::Job(j.map(Box::new))),
        Op::CountByState => store.count_by_state().await.map(Reply::Counts),
        Op::ListUnfinished { limit } => store.list_unfinished(limit).await.map(Reply::Ids),
        Op::SetQueue { config } => store.set_queue(config).await.map(Reply::Unit),
        Op::GetQueue { name } => store.get_queue(&name).await.map(Reply::Queue),
        Op::FirePeriodic {
            name,
            slot,
            lease,
            holder,
            term,
            req,
            now,
        } => store
            .fire_periodic(&name, slot, &lease, &holder, term, req, now)
            .await
            .map(Reply::Periodic),
    };
    result.unwrap_or_else(Reply::Err)
}

/// Carries an [`Op`] somewhere and brings back its [`Reply`].
#[async_trait]
pub trait Transport: Send + Sync {
    /// Send `op`; `Err` for the transport's own failures.
    async fn call(&self, op: Op) -> StorageResult<Reply>;
}

/// Every storage trait, over a [`Transport`].
#[derive(Debug)]
pub struct Remote<T>(pub T);

macro_rules! expect_reply {
    ($self:ident, $op:expr, $variant:ident) => {
        match $self.0.call($op).await? {
            Reply::$variant(v) => Ok(v),
            Reply::Err(e) => Err(e),
            other => Err(StorageError::Backend(format!("unexpected reply {other:?}"))),
        }
    };
}

#[async_trait]
impl<T: Transport> LeaseStore for Remote<T> {
    async fn try_acquire(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
        now: Timestamp,
    ) -> StorageResult<Option<Lease>> {
        expect_reply!(
            self,
            Op::TryAcquire {
                name: name.into(),
                holder: holder.into(),
                ttl_ms: ms(ttl),
                now
            },
            Lease
        )
    }

    async fn renew(
        &self,
        name: &str,
        holder: &str,
        term: Term,
        ttl: Duration,
        now: Timestamp,
    ) -> StorageResult<bool> {
        expect_reply!(
            self,
            Op::Renew {
                name: name.into(),
                holder: holder.into(),
                term,
                ttl_ms: ms(ttl),
                now
            },
            Bool
        )
    }

    async fn resign(&self, name: &str, holder: &str, term: Term) -> StorageResult<bool> {
        expect_reply!(
            self,
            Op::Resign {
                name: name.into(),
                holder: holder.into(),
                term
            },
            Bool
        )
    }

    async fn get_lease(&self, name: &str) -> StorageResult<Option<Lease>> {
        expect_reply!(self, Op::GetLease { name: name.into() }, Lease)
    }

    async fn maintenance_heartbeat(
        &self,
        name: &str,
        holder: &str,
        term: Term,
        now: Timestamp,
    ) -> StorageResult<bool> {
        expect_reply!(
            self,
            Op::MaintenanceHeartbeat {
                name: name.into(),
                holder: holder.into(),
                term,
                now
            },
            Bool
        )
    }
}

#[async_trait]
impl<T: Transport> JobStore for Remote<T> {
    async fn enqueue(&self, req: EnqueueRequest, now: Timestamp) -> StorageResult<EnqueueOutcome> {
        expect_reply!(self, Op::Enqueue { req, now }, Enqueued)
    }

    async fn enqueue_batch(
        &self,
        reqs: Vec<EnqueueRequest>,
        now: Timestamp,
    ) -> StorageResult<Vec<EnqueueOutcome>> {
        expect_reply!(self, Op::EnqueueBatch { reqs, now }, EnqueuedBatch)
    }

    async fn claim(
        &self,
        queue: &str,
        owner: &str,
        limit: u32,
        now: Timestamp,
    ) -> StorageResult<Vec<Job>> {
        expect_reply!(
            self,
            Op::Claim {
                queue: queue.into(),
                owner: owner.into(),
                limit,
                now
            },
            Jobs
        )
    }

    async fn heartbeat(
        &self,
        claim: Claim,
        owner: &str,
        now: Timestamp,
    ) -> StorageResult<HeartbeatStatus> {
        expect_reply!(
            self,
            Op::Heartbeat {
                claim,
                owner: owner.into(),
                now
            },
            Heartbeat
        )
    }

    async fn finalize(
        &self,
        claim: Claim,
        owner: &str,
        outcome: Finalize,
        now: Timestamp,
    ) -> StorageResult<FinalizeResult> {
        expect_reply!(
            self,
            Op::Finalize {
                claim,
                owner: owner.into(),
                outcome,
                now
            },
            Finalized
        )
    }

    async fn finalize_and_claim(
        &self,
        claim: Claim,
        owner: &str,
        outcome: Finalize,
        queue: &str,
        limit: u32,
        now: Timestamp,
    ) -> StorageResult<(FinalizeResult, Vec<Job>)> {
        expect_reply!(
            self,
            Op::FinalizeAndClaim {
                claim,
                owner: owner.into(),
                outcome,
                queue: queue.into(),
                limit,
                now
            },
            FinalizedAndClaimed
        )
    }

    async fn apply_effect(
        &self,
        claim: Claim,
        owner: &str,
        key: &str,
        value: serde_json::Value,
    ) -> StorageResult<EffectResult> {
        expect_reply!(
            self,
            Op::ApplyEffect {
                claim,
                owner: owner.into(),
                key: key.into(),
                value
            },
            Effect
        )
    }

    async fn get_effect(&self, job: JobId, key: &str) -> StorageResult<Option<serde_json::Value>> {
        expect_reply!(
            self,
            Op::GetEffect {
                job,
                key: key.into()
            },
            EffectValue
        )
    }

    async fn request_cancel(&self, job: JobId, now: Timestamp) -> StorageResult<CancelResult> {
        expect_reply!(self, Op::RequestCancel { job, now }, Cancel)
    }

    async fn rescue_stale(
        &self,
        stale_before: Timestamp,
        now: Timestamp,
    ) -> StorageResult<Vec<Claim>> {
        expect_reply!(self, Op::RescueStale { stale_before, now }, Claims)
    }

    async fn promote_due(&self, now: Timestamp) -> StorageResult<u64> {
        expect_reply!(self, Op::PromoteDue { now }, Count)
    }

    async fn cleanup(&self, finished_before: Timestamp, limit: u32) -> StorageResult<u64> {
        expect_reply!(
            self,
            Op::Cleanup {
                finished_before,
                limit
            },
            Count
        )
    }

    async fn get_job(&self, job: JobId) -> StorageResult<Option<Job>> {
        expect_reply!(self, Op::GetJob { job }, Job).map(|j| j.map(|b| *b))
    }

    async fn count_by_state(&self) -> StorageResult<StateCounts> {
        expect_reply!(self, Op::CountByState, Counts)
    }

    async fn list_unfinished(&self, limit: u32) -> StorageResult<Vec<JobId>> {
        expect_reply!(self, Op::ListUnfinished { limit }, Ids)
    }

    async fn set_queue(&self, config: QueueConfig) -> StorageResult<()> {
        expect_reply!(self, Op::SetQueue { config }, Unit)
    }

    async fn get_queue(&self, name: &str) -> StorageResult<Option<QueueConfig>> {
        expect_reply!(self, Op::GetQueue { name: name.into() }, Queue)
    }

    async fn fire_periodic(
        &self,
        name: &str,
        slot: Timestamp,
        lease: &str,
        holder: &str,
        term: Term,
        req: EnqueueRequest,
        now: Timestamp,
    ) -> StorageResult<PeriodicOutcome> {
        let op = Op::FirePeriodic {
            name: name.into(),
            slot,
            lease: lease.into(),
            holder: holder.into(),
            term,
            req,
            now,
        };
        expect_reply!(self, op, Periodic)
    }
}
