//! A worker's hand: the jobs it claimed ahead ([`JobsConfig::claim_ahead`]) and
//! has not started yet, kept alive by heartbeats while they wait.
//!
//! A claim that nobody heartbeats goes stale after `stale_threshold`, and the
//! rescuer then spends its attempt (on the last attempt, discards the job)
//! though it never ran. So while jobs wait in hand, [`Hand::keep`] heartbeats
//! each one every `heartbeat_interval`, as a running job's supervisor does, and
//! records what storage answered: a fresher trust anchor (when the heartbeat was
//! sent), or that the claim was lost or its cancel requested. The worker reads
//! that record when it takes the job out of its hand to start it. A held job
//! whose cancel was requested is kept alive the same way until its turn, when
//! the worker settles it cancelled without running it.
//!
//! [`JobsConfig::claim_ahead`]: super::JobsConfig::claim_ahead

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::{Instant, MissedTickBehavior};

use crate::clock::SharedClock;
use crate::storage::{Claim, HeartbeatStatus, Job, JobId, SharedStorage};

/// What storage last said of a held claim.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Heard {
    /// Still ours (or not asked yet).
    Alive,
    /// The rescuer or another worker took it: not ours to run.
    Lost,
    /// Still ours, and a user asked to cancel it.
    CancelRequested,
}

impl From<HeartbeatStatus> for Heard {
    fn from(status: HeartbeatStatus) -> Self {
        match status {
            HeartbeatStatus::Alive => Heard::Alive,
            HeartbeatStatus::Lost => Heard::Lost,
            HeartbeatStatus::CancelRequested => Heard::CancelRequested,
        }
    }
}

/// One job in hand.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Held {
    pub(crate) claim: Claim,
    /// When the last call that renewed this claim (its claim, or a heartbeat
    /// storage accepted) was sent: storage stamped the claim then.
    pub(crate) trusted_from: Instant,
    pub(crate) heard: Heard,
}

/// What [`Hand::keep`] needs from its worker to heartbeat the held claims, so
/// the hand depends on storage and the clock only, not on the worker.
pub(crate) struct Keeper {
    pub(crate) storage: SharedStorage,
    pub(crate) clock: SharedClock,
    /// How often to heartbeat each held claim (`heartbeat_interval`).
    pub(crate) every: Duration,
    /// The worker the claims were made for.
    pub(crate) owner: String,
    /// Planted `hand_keeper_idle`: keep nothing alive.
    pub(crate) idle: bool,
}

/// The jobs one worker holds, by id.
#[derive(Debug, Default)]
pub(crate) struct Hand {
    held: Mutex<BTreeMap<JobId, Held>>,
}

impl Hand {
    fn held(&self) -> MutexGuard<'_, BTreeMap<JobId, Held>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hold `jobs`, claimed by a call sent at `sent`.
    pub(crate) fn hold<'a>(&self, jobs: impl IntoIterator<Item = &'a Job>, sent: Instant) {
        let mut held = self.held();
        for job in jobs {
            let claim = Claim {
                job: job.id,
                attempt: job.attempt,
            };
            let record = Held {
                claim,
                trusted_from: sent,
                heard: Heard::Alive,
            };
            held.insert(job.id, record);
        }
    }

    /// Take `job` out of the hand, to start it or give it back.
    pub(crate) fn take(&self, job: JobId) -> Option<Held> {
        self.held().remove(&job)
    }

    /// Heartbeat every held claim each `keeper.every`, forever: the worker
    /// drops this future when its hand is done (it runs in a `JoinSet`, so an
    /// aborted worker stops it too and the claims go stale as they should).
    pub(crate) async fn keep(self: Arc<Self>, keeper: Keeper) {
        if keeper.idle {
            return std::future::pending().await;
        }
        let mut interval = keeper
            .clock
            .interval(keeper.every, MissedTickBehavior::Skip);
        interval.reset();
        loop {
            interval.tick().await;
            let claims: Vec<Claim> = self
                .held()
                .values()
                // A cancelled claim is kept alive too until the worker settles
                // it at its turn: left to go stale, the rescuer would revoke it
                // as if its worker were gone (found by `claims_kept_alive`).
                .filter(|h| h.heard != Heard::Lost)
                .map(|h| h.claim)
                .collect();
            for claim in claims {
                let sent = keeper.clock.monotonic();
                let heard = keeper.storage.heartbeat(claim, &keeper.owner).await;
                self.record(claim, sent, heard.ok());
            }
        }
    }

    /// Note what a heartbeat sent at `sent` heard, if the job is still held
    /// under the same claim.
    fn record(&self, claim: Claim, sent: Instant, heard: Option<HeartbeatStatus>) {
        let mut held = self.held();
        let Some(h) = held.get_mut(&claim.job).filter(|h| h.claim == claim) else {
            return;
        };
        // No answer: the trust already earned keeps ageing.
        let Some(heard) = heard.map(Heard::from) else {
            return;
        };
        if heard != Heard::Lost {
            // Storage stamped the claim when this heartbeat was sent.
            h.trusted_from = h.trusted_from.max(sent);
        }
        h.heard = heard;
    }
}
