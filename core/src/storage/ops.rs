//! Storage calls as data: every [`Storage`] method is an [`Op`],
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
    AdminOutcome, AdminStorage, AdminStore, CancelResult, Claim, EffectResult, EnqueueOutcome,
    EnqueueRequest, Finalize, FinalizeResult, HeartbeatStatus, Job, JobFilter, JobId, JobPage,
    JobStore, Lease, LeaseStore, PeriodicOutcome, QueueConfig, QueueSummary, ScheduleRecord,
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
        /// The caller's newest term (`try_acquire_fenced`); absent: unfenced.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        known: Option<Term>,
    },
    Renew {
        name: String,
        holder: String,
        term: Term,
        ttl_ms: u64,
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
    },
    Enqueue {
        req: EnqueueRequest,
    },
    EnqueueBatch {
        reqs: Vec<EnqueueRequest>,
    },
    Claim {
        queue: String,
        owner: String,
        limit: u32,
    },
    Heartbeat {
        claim: Claim,
        owner: String,
    },
    Finalize {
        claim: Claim,
        owner: String,
        outcome: Finalize,
    },
    FinalizeAndClaim {
        claim: Claim,
        owner: String,
        outcome: Finalize,
        queue: String,
        limit: u32,
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
        #[serde(default)]
        schedule: String,
        lease: String,
        holder: String,
        term: Term,
        req: EnqueueRequest,
    },
    // The operator's calls ([`AdminStore`]).
    ListJobs {
        filter: JobFilter,
    },
    ListEffects {
        job: JobId,
    },
    ListQueues,
    ListLeases,
    ListSchedules,
    RetryJob {
        job: JobId,
    },
    DiscardJob {
        job: JobId,
    },
    DeleteJob {
        job: JobId,
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
                | Op::Time
                | Op::ListJobs { .. }
                | Op::ListEffects { .. }
                | Op::ListQueues
                | Op::ListLeases
                | Op::ListSchedules
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
    Time(Timestamp),
    Page(JobPage),
    Effects(Vec<(String, serde_json::Value)>),
    Queues(Vec<QueueSummary>),
    Leases(Vec<Lease>),
    Schedules(Vec<ScheduleRecord>),
    Admin(AdminOutcome),
    Err(StorageError),
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Run `op`, an operator's call or any other, against `store`.
pub async fn apply_admin(store: &dyn AdminStorage, op: Op) -> Reply {
    let result = match op {
        Op::ListJobs { filter } => store.list_jobs(filter).await.map(Reply::Page),
        Op::ListEffects { job } => store.list_effects(job).await.map(Reply::Effects),
        Op::ListQueues => store.list_queues().await.map(Reply::Queues),
        Op::ListLeases => store.list_leases().await.map(Reply::Leases),
        Op::ListSchedules => store.list_schedules().await.map(Reply::Schedules),
        Op::RetryJob { job } => store.retry_job(job).await.map(Reply::Admin),
        Op::DiscardJob { job } => store.discard_job(job).await.map(Reply::Admin),
        Op::DeleteJob { job } => store.delete_job(job).await.map(Reply::Admin),
        op => return apply(store.as_storage(), op).await,
    };
    result.unwrap_or_else(Reply::Err)
}

/// Run `op` against `store`. An operator's call (an [`AdminStore`] method) is
/// refused: it needs [`apply_admin`] and a store that serves it.
pub async fn apply(store: &dyn Storage, op: Op) -> Reply {
    let ttl = Duration::from_millis;
    let result = match op {
        Op::TryAcquire {
            name,
            holder,
            ttl_ms,
            known,
        } => store
            .try_acquire_fenced(&name, &holder, ttl(ttl_ms), known)
            .await
            .map(Reply::Lease),
        Op::Renew {
            name,
            holder,
            term,
            ttl_ms,
        } => store
            .renew(&name, &holder, term, ttl(ttl_ms))
            .await
            .map(Reply::Bool),
        Op::Resign { name, holder, term } => {
            store.resign(&name, &holder, term).await.map(Reply::Bool)
        }
        Op::GetLease { name } => store.get_lease(&name).await.map(Reply::Lease),
        Op::MaintenanceHeartbeat { name, holder, term } => store
            .maintenance_heartbeat(&name, &holder, term)
            .await
            .map(Reply::Bool),
        Op::Enqueue { req } => store.enqueue(req).await.map(Reply::Enqueued),
        Op::EnqueueBatch { reqs } => store.enqueue_batch(reqs).await.map(Reply::EnqueuedBatch),
        Op::Claim {
            queue,
            owner,
            limit,
        } => store.claim(&queue, &owner, limit).await.map(Reply::Jobs),
        Op::Heartbeat { claim, owner } => {
            store.heartbeat(claim, &owner).await.map(Reply::Heartbeat)
        }
        Op::Finalize {
            claim,
            owner,
            outcome,
        } => store
            .finalize(claim, &owner, outcome)
            .await
            .map(Reply::Finalized),
        Op::FinalizeAndClaim {
            claim,
            owner,
            outcome,
            queue,
            limit,
        } => store
            .finalize_and_claim(claim, &owner, outcome, &queue, limit)
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
        Op::RequestCancel { job } => store.request_cancel(job).await.map(Reply::Cancel),
        Op::RescueStale { stale_after_ms } => store
            .rescue_stale(ttl(stale_after_ms))
            .await
            .map(Reply::Claims),
        Op::PromoteDue => store.promote_due().await.map(Reply::Count),
        Op::Cleanup {
            retention_ms,
            limit,
        } => store
            .cleanup(ttl(retention_ms), limit)
            .await
            .map(Reply::Count),
        Op::Time => store.time().await.map(Reply::Time),
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
            schedule,
            lease,
            holder,
            term,
            req,
        } => store
            .fire_periodic(&name, slot, &schedule, &lease, &holder, term, req)
            .await
            .map(Reply::Periodic),
        op => Err(StorageError::Backend(format!(
            "{op:?} is an operator's call, and this store does not serve them"
        ))),
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
    async fn try_acquire_fenced(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
        known: Option<Term>,
    ) -> StorageResult<Option<Lease>> {
        expect_reply!(
            self,
            Op::TryAcquire {
                name: name.into(),
                holder: holder.into(),
                ttl_ms: ms(ttl),
                known,
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
    ) -> StorageResult<bool> {
        expect_reply!(
            self,
            Op::Renew {
                name: name.into(),
                holder: holder.into(),
                term,
                ttl_ms: ms(ttl)
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
    ) -> StorageResult<bool> {
        expect_reply!(
            self,
            Op::MaintenanceHeartbeat {
                name: name.into(),
                holder: holder.into(),
                term
            },
            Bool
        )
    }
}

#[async_trait]
impl<T: Transport> JobStore for Remote<T> {
    async fn enqueue(&self, req: EnqueueRequest) -> StorageResult<EnqueueOutcome> {
        expect_reply!(self, Op::Enqueue { req }, Enqueued)
    }

    async fn enqueue_batch(&self, reqs: Vec<EnqueueRequest>) -> StorageResult<Vec<EnqueueOutcome>> {
        expect_reply!(self, Op::EnqueueBatch { reqs }, EnqueuedBatch)
    }

    async fn claim(&self, queue: &str, owner: &str, limit: u32) -> StorageResult<Vec<Job>> {
        expect_reply!(
            self,
            Op::Claim {
                queue: queue.into(),
                owner: owner.into(),
                limit
            },
            Jobs
        )
    }

    async fn heartbeat(&self, claim: Claim, owner: &str) -> StorageResult<HeartbeatStatus> {
        expect_reply!(
            self,
            Op::Heartbeat {
                claim,
                owner: owner.into()
            },
            Heartbeat
        )
    }

    async fn finalize(
        &self,
        claim: Claim,
        owner: &str,
        outcome: Finalize,
    ) -> StorageResult<FinalizeResult> {
        expect_reply!(
            self,
            Op::Finalize {
                claim,
                owner: owner.into(),
                outcome
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
    ) -> StorageResult<(FinalizeResult, Vec<Job>)> {
        expect_reply!(
            self,
            Op::FinalizeAndClaim {
                claim,
                owner: owner.into(),
                outcome,
                queue: queue.into(),
                limit
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

    async fn request_cancel(&self, job: JobId) -> StorageResult<CancelResult> {
        expect_reply!(self, Op::RequestCancel { job }, Cancel)
    }

    async fn rescue_stale(&self, stale_after: Duration) -> StorageResult<Vec<Claim>> {
        let op = Op::RescueStale {
            stale_after_ms: ms(stale_after),
        };
        expect_reply!(self, op, Claims)
    }

    async fn promote_due(&self) -> StorageResult<u64> {
        expect_reply!(self, Op::PromoteDue, Count)
    }

    async fn cleanup(&self, retention: Duration, limit: u32) -> StorageResult<u64> {
        let op = Op::Cleanup {
            retention_ms: ms(retention),
            limit,
        };
        expect_reply!(self, op, Count)
    }

    async fn time(&self) -> StorageResult<Timestamp> {
        expect_reply!(self, Op::Time, Time)
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
        schedule: &str,
        lease: &str,
        holder: &str,
        term: Term,
        req: EnqueueRequest,
    ) -> StorageResult<PeriodicOutcome> {
        let op = Op::FirePeriodic {
            name: name.into(),
            slot,
            schedule: schedule.into(),
            lease: lease.into(),
            holder: holder.into(),
            term,
            req,
        };
        expect_reply!(self, op, Periodic)
    }
}

#[async_trait]
impl<T: Transport> AdminStore for Remote<T> {
    async fn list_jobs(&self, filter: JobFilter) -> StorageResult<JobPage> {
        expect_reply!(self, Op::ListJobs { filter }, Page)
    }

    async fn list_effects(&self, job: JobId) -> StorageResult<Vec<(String, serde_json::Value)>> {
        expect_reply!(self, Op::ListEffects { job }, Effects)
    }

    async fn list_queues(&self) -> StorageResult<Vec<QueueSummary>> {
        expect_reply!(self, Op::ListQueues, Queues)
    }

    async fn list_leases(&self) -> StorageResult<Vec<Lease>> {
        expect_reply!(self, Op::ListLeases, Leases)
    }

    async fn list_schedules(&self) -> StorageResult<Vec<ScheduleRecord>> {
        expect_reply!(self, Op::ListSchedules, Schedules)
    }

    async fn retry_job(&self, job: JobId) -> StorageResult<AdminOutcome> {
        expect_reply!(self, Op::RetryJob { job }, Admin)
    }

    async fn discard_job(&self, job: JobId) -> StorageResult<AdminOutcome> {
        expect_reply!(self, Op::DiscardJob { job }, Admin)
    }

    async fn delete_job(&self, job: JobId) -> StorageResult<AdminOutcome> {
        expect_reply!(self, Op::DeleteJob { job }, Admin)
    }
}
