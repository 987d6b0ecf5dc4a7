//! The database host: a storage engine (`MemStorage` or `SqliteEngine`) served to the nodes over the network seam.
//!
//! Nodes talk to storage the way a production service talks to its database: over
//! a byte stream that can stall, break, or lose a reply after the request was
//! applied. The wire format is a 4-byte big-endian length followed by a JSON body;
//! one request is in flight per connection.
//!
//! [`RemoteStorage`] is keel's storage on the client side: keel's
//! [`ops::Remote`] over the [`Wire`] transport. Its error mapping is the point of
//! the exercise: a request that could not be sent is [`StorageError::Unavailable`];
//! once bytes left, any failure (timeout, reset, lost reply) is
//! [`StorageError::Ambiguous`], because the database may have applied it.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use keel::clock::SharedClock;
use keel::net::{BoxStream, Network};
use keel::storage::ops::{self, Op, Remote, Reply, Transport};
use keel::storage::{
    CancelResult, Claim, EffectResult, EnqueueOutcome, EnqueueRequest, Finalize, FinalizeResult,
    Job, JobState, PeriodicOutcome, Storage, StorageError, StorageResult, Term,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::sync::Mutex as StdMutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Mutex;

use crate::run::history::{DbEvent, Ev, History};

/// The database host's name in the simulation.
pub const DB_HOST: &str = "db";
/// The port it serves storage on.
pub const DB_PORT: u16 = 7000;
/// Largest frame either side accepts: far above any lease message, small enough
/// that a corrupt length cannot make a host allocate gigabytes.
pub const FRAME_BYTES_MAX: u32 = 1 << 20;

async fn write_frame(stream: &mut BoxStream, body: &[u8]) -> io::Result<()> {
    let len = u32::try_from(body.len()).map_err(|_| io::Error::other("frame too large"))?;
    stream.write_all(&len.to_be_bytes()).await?;
    stream.write_all(body).await?;
    stream.flush().await
}

async fn read_frame(stream: &mut BoxStream) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len);
    if len > FRAME_BYTES_MAX {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes"),
        ));
    }
    let mut body = vec![0u8; len as usize];
    stream.read_exact(&mut body).await?;
    Ok(body)
}

/// The term of the live lease an acquire may replace, read just before it is
/// applied and judged on storage's clock, as storage judges it.
async fn live_term_before(store: &dyn Storage, op: &Op) -> Option<Term> {
    let Op::TryAcquire { name, .. } = op else {
        return None;
    };
    let lease = store.get_lease(name).await.ok()??;
    let now = store.time().await.ok()?;
    (lease.holder.is_some() && lease.is_live(now)).then_some(lease.term)
}

/// Record what `op` changed in the database, judged by its reply; `evicted` is
/// the live term an acquire found before it was applied.
fn record(
    history: &History,
    (issued_ms, op): (u64, &Op),
    reply: &Reply,
    (evicted, storage_ms): (Option<Term>, i64),
) {
    let events = match (op, reply) {
        (Op::TryAcquire { holder, .. }, Reply::Lease(Some(lease))) => vec![DbEvent::LeaseGranted {
            holder: holder.clone(),
            term: lease.term,
            evicted,
        }],
        (Op::Renew { holder, term, .. }, Reply::Bool(true)) => vec![DbEvent::LeaseRenewed {
            holder: holder.clone(),
            term: *term,
        }],
        (Op::Resign { holder, term, .. }, Reply::Bool(true)) => vec![DbEvent::ResignApplied {
            holder: holder.clone(),
            term: *term,
        }],
        (Op::MaintenanceHeartbeat { holder, term, .. }, Reply::Bool(true)) => {
            vec![DbEvent::HeartbeatAccepted {
                holder: holder.clone(),
                term: *term,
            }]
        }
        _ => job_events((issued_ms, storage_ms), op, reply),
    };
    for event in events {
        history.push(DB_HOST, Ev::Db(event));
    }
}

/// The job-table changes `op` made, judged by its reply; part of [`record`].
fn job_events((issued_ms, storage_ms): (u64, i64), op: &Op, reply: &Reply) -> Vec<DbEvent> {
    let inserted = |req: &EnqueueRequest, o: &EnqueueOutcome| match o {
        EnqueueOutcome::Inserted(job) => {
            let at_ms = req
                .scheduled_at
                .map(|at| at.0 - crate::world::clock::EPOCH_UNIX_MS);
            let in_ms = req
                .scheduled_in
                .map(|d| storage_ms + i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
            let scheduled = at_ms
                .or(in_ms)
                .map(|due_ms| DbEvent::JobScheduled { job: *job, due_ms });
            std::iter::once(DbEvent::JobInserted { job: *job })
                .chain(scheduled)
                .collect()
        }
        EnqueueOutcome::Duplicate(_) => Vec::new(),
    };
    match (op, reply) {
        (Op::Enqueue { req, .. }, Reply::Enqueued(o)) => inserted(req, o),
        (Op::EnqueueBatch { reqs, .. }, Reply::EnqueuedBatch(os)) => reqs
            .iter()
            .zip(os)
            .flat_map(|(req, o)| inserted(req, o))
            .collect(),
        (Op::Claim { owner, .. }, Reply::Jobs(jobs)) => claimed(issued_ms, owner, jobs),
        (Op::Finalize { claim, outcome, .. }, Reply::Finalized(result)) => {
            finalized(*claim, outcome, *result)
        }
        (
            Op::FinalizeAndClaim {
                claim,
                owner,
                outcome,
                ..
            },
            Reply::FinalizedAndClaimed((result, jobs)),
        ) => {
            let mut events = finalized(*claim, outcome, *result);
            events.extend(claimed(issued_ms, owner, jobs));
            events
        }
        (Op::ApplyEffect { claim, key, .. }, Reply::Effect(EffectResult::Applied)) => {
            vec![DbEvent::EffectApplied {
                job: claim.job,
                attempt: claim.attempt,
                key: key.clone(),
            }]
        }
        (Op::RescueStale { .. }, Reply::Claims(claims)) => claims
            .iter()
            .map(|c| DbEvent::RescueApplied {
                job: c.job,
                attempt: c.attempt,
                issued_ms,
            })
            .collect(),
        (Op::RequestCancel { job, .. }, Reply::Cancel(CancelResult::Cancelled)) => {
            vec![DbEvent::CancelApplied { job: *job }]
        }
        (Op::FirePeriodic { name, slot, .. }, Reply::Periodic(PeriodicOutcome::Fired(job))) => {
            vec![DbEvent::PeriodicInserted {
                name: name.clone(),
                slot_ms: slot.0,
                job: *job,
            }]
        }
        _ => Vec::new(),
    }
}

/// The claims a claim call made.
fn claimed(issued_ms: u64, owner: &str, jobs: &[Job]) -> Vec<DbEvent> {
    let claim = |j: &Job| DbEvent::ClaimApplied {
        job: j.id,
        attempt: j.attempt,
        owner: owner.to_owned(),
        max_attempts: j.max_attempts,
        heartbeat_ms: j
            .heartbeat_at
            .map_or(0, |t| t.0 - crate::world::clock::EPOCH_UNIX_MS),
        issued_ms,
    };
    jobs.iter().map(claim).collect()
}

/// What a finalize call changed: its job's state, when it applied.
fn finalized(claim: Claim, outcome: &Finalize, result: FinalizeResult) -> Vec<DbEvent> {
    if result != FinalizeResult::Applied {
        return Vec::new();
    }
    vec![DbEvent::FinalizeApplied {
        job: claim.job,
        attempt: claim.attempt,
        state: finalized_state(outcome),
    }]
}

/// The state an applied finalize moves its job to.
fn finalized_state(outcome: &Finalize) -> JobState {
    match outcome {
        Finalize::Completed => JobState::Completed,
        Finalize::Retry { .. } => JobState::Retryable,
        Finalize::Discard { .. } => JobState::Discarded,
        Finalize::Snooze { .. } => JobState::Scheduled,
        Finalize::Cancel { .. } => JobState::Cancelled,
    }
}

/// One request on the wire: the storage call, and when its caller made it.
///
/// `issued_ms` is instrumentation, not part of keel's storage API (which takes
/// no caller time): the true simulated time at which the node called storage,
/// before any wait for its connection. The checkers read it from the
/// [`DbEvent`]s that carry it, to know when a claim or a rescue was decided.
#[derive(Debug, Serialize, Deserialize)]
struct Request {
    issued_ms: u64,
    op: Op,
}

/// True simulated time, in ms since the run began (not any host's wall clock).
fn true_now_ms() -> u64 {
    let elapsed = turmoil::sim_elapsed().unwrap_or_else(turmoil::elapsed);
    u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
}

/// Serve `store` on `DB_PORT` until the host stops.
pub async fn serve(
    net: Arc<dyn Network>,
    store: Arc<dyn Storage>,
    history: History,
    faults: DbFaults,
) -> io::Result<()> {
    let mut listener = net.listen(&format!("0.0.0.0:{DB_PORT}")).await?;
    loop {
        let (stream, _peer) = listener.accept().await?;
        tokio::spawn(serve_connection(
            stream,
            store.clone(),
            history.clone(),
            faults.clone(),
        ));
    }
}

/// One connection: read a request, apply it (subject to injected faults), reply.
/// It ends when the peer goes away or sends garbage, or when a fault drops the
/// reply; the node's client then sees a broken stream and reconnects.
async fn serve_connection(
    mut stream: BoxStream,
    store: Arc<dyn Storage>,
    history: History,
    faults: DbFaults,
) {
    while let Ok(body) = read_frame(&mut stream).await {
        let Request { issued_ms, op } = match serde_json::from_slice::<Request>(&body) {
            Ok(request) => request,
            Err(e) => {
                let reply = Reply::Err(StorageError::Backend(format!("bad request: {e}")));
                let Ok(bytes) = serde_json::to_vec(&reply) else {
                    return;
                };
                let _ = write_frame(&mut stream, &bytes).await;
                return;
            }
        };
        let fault = faults.draw();
        if let Some(StorageFault::Slow { ms }) = fault {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        let reply = if fault == Some(StorageFault::Error) {
            Reply::Err(StorageError::Backend(
                "injected transient storage error".into(),
            ))
        } else {
            let evicted = live_term_before(store.as_ref(), &op).await;
            let reply = ops::apply(store.as_ref(), op.clone()).await;
            // Storage's time, for a `scheduled_in` enqueue's due time: read
            // for enqueues only, not on every request.
            let storage_ms = if matches!(op, Op::Enqueue { .. } | Op::EnqueueBatch { .. }) {
                store
                    .time()
                    .await
                    .map_or(0, |t| t.0 - crate::world::clock::EPOCH_UNIX_MS)
            } else {
                0
            };
            record(&history, (issued_ms, &op), &reply, (evicted, storage_ms));
            reply
        };
        if fault == Some(StorageFault::LostReply) {
            // Applied, but the caller never hears: an ambiguous outcome.
            return;
        }
        if let Some(StorageFault::SlowReply { ms }) = fault {
            // Applied (and stamped) at once, answered late: a slow commit
            // acknowledgement.
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        let Ok(bytes) = serde_json::to_vec(&reply) else {
            return;
        };
        if write_frame(&mut stream, &bytes).await.is_err() {
            return;
        }
    }
}

/// What an injected storage fault does to one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StorageFault {
    /// Refuse it with a transient error; nothing is applied.
    Error,
    /// Apply it, then drop the connection without replying.
    LostReply,
    /// Wait `ms` before applying it.
    Slow {
        /// The delay.
        ms: u64,
    },
    /// Apply it at once, then wait `ms` before replying.
    SlowReply {
        /// The delay.
        ms: u64,
    },
}

/// The database host's fault switch: the harness sets a mode (what happens to
/// an affected request, and to what share of requests), the server draws per
/// request from a seeded RNG.
#[derive(Clone, Debug)]
pub struct DbFaults(Arc<StdMutex<DbFaultState>>);

#[derive(Debug)]
struct DbFaultState {
    mode: Option<(StorageFault, u64)>,
    rng: ChaCha8Rng,
}

impl DbFaults {
    /// No faults, with per-request draws from `seed`.
    pub fn new(seed: u64) -> Self {
        Self(Arc::new(StdMutex::new(DbFaultState {
            mode: None,
            rng: ChaCha8Rng::seed_from_u64(seed),
        })))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, DbFaultState> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// From now on, `pct` percent of requests suffer `fault`.
    pub fn set(&self, fault: StorageFault, pct: u64) {
        self.state().mode = Some((fault, pct.min(100)));
    }

    /// Requests are served normally again.
    pub fn clear(&self) {
        self.state().mode = None;
    }

    fn draw(&self) -> Option<StorageFault> {
        let mut state = self.state();
        let (fault, pct) = state.mode?;
        (state.rng.random_range(0..100) < pct).then_some(fault)
    }
}

/// How long a request may wait for its reply before the outcome is ambiguous,
/// unless the scenario fixes or draws another (`faults.storage_timeout_ms`).
/// No margin of keel's depends on it: trust counts from the send, so a reply
/// later than any margin only shortens trust, and one after the window closed
/// is not trusted (`clock_drift` draws timeouts from 300 ms to 8 s to hold
/// that; see `keel::clock::trust_bound`).
pub const REQUEST_TIMEOUT_DEFAULT: Duration = Duration::from_secs(1);

/// keel storage on the far side of the simulated network. See the
/// [module docs](self).
pub type RemoteStorage = Remote<Wire>;

/// A [`RemoteStorage`] for the database host at `addr`.
pub fn remote_storage(
    net: Arc<dyn Network>,
    addr: String,
    clock: SharedClock,
    request_timeout: Duration,
) -> RemoteStorage {
    Remote(Wire {
        net,
        addr,
        clock,
        request_timeout,
        conn: Mutex::new(None),
    })
}

/// The transport: one framed JSON request and reply at a time per connection.
pub struct Wire {
    net: Arc<dyn Network>,
    addr: String,
    clock: SharedClock,
    request_timeout: Duration,
    conn: Mutex<Option<BoxStream>>,
}

#[async_trait]
impl Transport for Wire {
    async fn call(&self, op: Op) -> StorageResult<Reply> {
        let request = Request {
            issued_ms: true_now_ms(),
            op,
        };
        let body =
            serde_json::to_vec(&request).map_err(|e| StorageError::Backend(e.to_string()))?;
        // One request at a time per connection. The stream is taken out of the slot
        // for the exchange and put back only after a complete one: if the caller
        // drops this future mid-exchange (a `select` deadline), the stream goes with
        // it, and no later request can read this request's late reply.
        let mut slot = self.conn.lock().await;
        let mut stream = match slot.take() {
            Some(stream) => stream,
            None => {
                let connect = self.net.connect(&self.addr);
                tokio::select! {
                    biased;
                    r = connect => r.map_err(|e| StorageError::Unavailable(e.to_string()))?,
                    () = self.clock.sleep(self.request_timeout) => {
                        return Err(StorageError::Unavailable("connect timed out".into()));
                    }
                }
            }
        };
        let exchange = async {
            write_frame(&mut stream, &body).await?;
            read_frame(&mut stream).await
        };
        let reply = tokio::select! {
            biased;
            r = exchange => r.map_err(|e| e.to_string()),
            () = self.clock.sleep(self.request_timeout) => Err("reply timed out".to_owned()),
        };
        match reply
            .and_then(|bytes| serde_json::from_slice::<Reply>(&bytes).map_err(|e| e.to_string()))
        {
            Ok(reply) => {
                *slot = Some(stream);
                Ok(reply)
            }
            // The request may have been applied, and the stream may still carry its
            // late reply, so the stream is dropped rather than reused.
            Err(why) => Err(StorageError::Ambiguous(why)),
        }
    }
}

#[cfg(test)]
mod tests {
    use keel::storage::{Claim, EnqueueRequest, JobId};

    use super::*;

    fn recorded(op: &Op, reply: &Reply) -> Vec<Ev> {
        let history = History::new();
        record(&history, (0, op), reply, (None, 0));
        history.snapshot().into_iter().map(|r| r.ev).collect()
    }

    #[test]
    fn applied_job_changes_are_recorded_and_refusals_are_not() {
        let claim = Claim {
            job: JobId(4),
            attempt: 2,
        };
        let finalize = |outcome| Op::Finalize {
            claim,
            owner: "n1".into(),
            outcome,
        };
        let retry = finalize(Finalize::Retry {
            error: "e".into(),
            delay: std::time::Duration::ZERO,
        });
        assert_eq!(
            recorded(&retry, &Reply::Finalized(FinalizeResult::Applied)),
            vec![Ev::Db(DbEvent::FinalizeApplied {
                job: JobId(4),
                attempt: 2,
                state: JobState::Retryable,
            })]
        );
        assert!(recorded(&retry, &Reply::Finalized(FinalizeResult::Stale)).is_empty());
        let batch = Op::EnqueueBatch {
            reqs: vec![EnqueueRequest::new("k", serde_json::Value::Null); 2],
        };
        let outcomes = vec![
            EnqueueOutcome::Duplicate(JobId(1)),
            EnqueueOutcome::Inserted(JobId(7)),
        ];
        assert_eq!(
            recorded(&batch, &Reply::EnqueuedBatch(outcomes)),
            vec![Ev::Db(DbEvent::JobInserted { job: JobId(7) })]
        );
        let rescue = Op::RescueStale { stale_after_ms: 0 };
        assert_eq!(
            recorded(&rescue, &Reply::Claims(vec![claim])),
            vec![Ev::Db(DbEvent::RescueApplied {
                job: JobId(4),
                attempt: 2,
                issued_ms: 0,
            })]
        );
    }
}
