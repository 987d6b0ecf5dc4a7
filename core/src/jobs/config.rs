//! Job runtime settings, with named defaults and validation.

use std::time::Duration;

use crate::backoff::Backoff;

/// One queue this node works on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueSpec {
    /// The queue.
    pub name: String,
    /// Workers this node runs for it unless storage's queue config says otherwise.
    pub workers: u32,
}

/// Timing of workers and maintenance. Defaults are chosen so that a worker stops
/// trusting its claim (`claim_trust`) and drops its handler (`+ cancel_grace`)
/// before the rescuer gives the job to someone else (`stale_threshold`), with
/// room left for clock skew between nodes.
#[derive(Clone, Debug)]
pub struct JobsConfig {
    /// How often a running job's claim is refreshed.
    pub heartbeat_interval: Duration,
    /// A claim whose heartbeat is older than this is revoked by the rescuer.
    pub stale_threshold: Duration,
    /// A worker whose heartbeats have failed for this long stops its handler.
    pub claim_trust: Duration,
    /// How long a handler asked to stop may take before it is dropped.
    pub cancel_grace: Duration,
    /// How often an idle worker polls for work.
    pub idle_poll: Duration,
    /// Wait after a failed claim call.
    pub claim_error_backoff: Duration,
    /// Retry delays of failed attempts.
    pub retry: Backoff,
    /// Finalize calls per attempt before leaving the job to the rescuer.
    pub finalize_attempts_max: u32,
    /// Wait between finalize calls.
    pub finalize_retry_delay: Duration,
    /// How often the supervisor matches workers to the queue's size.
    pub supervisor_interval: Duration,
    /// How often the leader's rescuer, scheduler and cleaner run.
    pub maintenance_interval: Duration,
    /// How long finished jobs are kept.
    pub retention: Duration,
    /// Finished jobs deleted per cleaner pass.
    pub cleanup_batch: u32,
    /// Jobs each worker claims ahead of the one it runs (0: claim one at a
    /// time). A worker with jobs in hand runs them in turn and sends each one's
    /// finalize without waiting for it, so one storage transaction carries many
    /// claims and completions: more jobs per second for short handlers, at the
    /// price of jobs waiting on one worker while another may sit idle. Held
    /// jobs are heartbeated while they wait, and one whose trust is half gone
    /// (storage was unreachable) is renewed before it starts, so the rescuer
    /// cannot have handed it on.
    pub claim_ahead: u32,
    /// How far, in parts per million, any host's clock may run fast or slow:
    /// a worker's and storage's. `validate` then asks `claim_trust +
    /// cancel_grace <= stale_threshold * (1 - d) / (1 + d)`
    /// ([`trust_bound`](crate::clock::trust_bound)).
    pub clock_drift_max_ppm: u32,
}

/// A [`JobsConfig`] setting that cannot work; names the field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid jobs config: {field}: {reason}")]
pub struct JobsConfigError {
    /// The offending field.
    pub field: &'static str,
    /// Why.
    pub reason: String,
}

/// Most workers one node runs for one queue.
pub const WORKERS_PER_QUEUE_MAX: u32 = 256;

/// Most jobs one worker may claim ahead. Jobs in hand wait behind each other
/// and cost the hand's keeper one heartbeat each per interval; past a few
/// dozen, a hand mostly holds jobs other workers could have run.
pub const CLAIM_AHEAD_MAX: u32 = 64;

impl Default for JobsConfig {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_secs(1),
            stale_threshold: Duration::from_secs(10),
            claim_trust: Duration::from_secs(6),
            cancel_grace: Duration::from_secs(1),
            idle_poll: Duration::from_millis(500),
            claim_error_backoff: Duration::from_secs(1),
            retry: Backoff {
                base: Duration::from_secs(1),
                max: Duration::from_secs(300),
                jitter_ratio: 0.2,
            },
            finalize_attempts_max: 5,
            finalize_retry_delay: Duration::from_millis(200),
            supervisor_interval: Duration::from_secs(1),
            maintenance_interval: Duration::from_secs(1),
            retention: Duration::from_secs(24 * 3600),
            cleanup_batch: 1000,
            claim_ahead: 0,
            clock_drift_max_ppm: crate::clock::CLOCK_DRIFT_MAX_PPM_DEFAULT,
        }
    }
}

impl JobsConfig {
    /// Check that the settings can work together.
    pub fn validate(&self) -> Result<(), JobsConfigError> {
        let err = |field, reason: &str| {
            Err(JobsConfigError {
                field,
                reason: reason.to_owned(),
            })
        };
        for (field, d) in [
            ("heartbeat_interval", self.heartbeat_interval),
            ("idle_poll", self.idle_poll),
            ("supervisor_interval", self.supervisor_interval),
            ("maintenance_interval", self.maintenance_interval),
        ] {
            if d.is_zero() {
                return err(field, "must be positive");
            }
        }
        if self.claim_trust <= self.heartbeat_interval {
            return err(
                "claim_trust",
                "must exceed heartbeat_interval, or one late heartbeat stops every handler",
            );
        }
        // The worker must have dropped its handler before the rescuer hands the
        // job to another worker, or two attempts run at once.
        if self.claim_trust + self.cancel_grace >= self.stale_threshold {
            return err("stale_threshold", "must exceed claim_trust + cancel_grace");
        }
        let ppm = self.clock_drift_max_ppm;
        if ppm > crate::clock::CLOCK_DRIFT_MAX_PPM_LIMIT {
            return Err(JobsConfigError {
                field: "clock_drift_max_ppm",
                reason: format!("must be at most 200000 (20%), got {ppm}"),
            });
        }
        // A worker running slow by the bound, beside storage running fast by
        // it, must still drop its handler before the claim may be rescued.
        let held = self.claim_trust + self.cancel_grace;
        let bound = crate::clock::trust_bound(self.stale_threshold, ppm);
        if held > bound {
            return Err(JobsConfigError {
                field: "stale_threshold",
                reason: format!(
                    "must be at least (claim_trust + cancel_grace) * (1 + d) / (1 - d) for \
                     clock_drift_max_ppm {ppm}: claim_trust + cancel_grace is {} ms, but \
                     stale_threshold {} ms allows {} ms",
                    held.as_millis(),
                    self.stale_threshold.as_millis(),
                    bound.as_millis()
                ),
            });
        }
        if self.finalize_attempts_max == 0 {
            return err("finalize_attempts_max", "must be at least 1");
        }
        if self.claim_ahead > CLAIM_AHEAD_MAX {
            return err("claim_ahead", "must be at most CLAIM_AHEAD_MAX (64)");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_an_overlapping_rescue_is_refused_by_name() {
        JobsConfig::default().validate().expect("defaults work");
        let cfg = JobsConfig {
            stale_threshold: Duration::from_secs(7),
            ..JobsConfig::default()
        };
        assert_eq!(cfg.validate().map_err(|e| e.field), Err("stale_threshold"));
        let cfg = JobsConfig {
            heartbeat_interval: Duration::ZERO,
            ..JobsConfig::default()
        };
        assert_eq!(
            cfg.validate().map_err(|e| e.field),
            Err("heartbeat_interval")
        );
        let cfg = JobsConfig {
            claim_ahead: CLAIM_AHEAD_MAX + 1,
            ..JobsConfig::default()
        };
        assert_eq!(cfg.validate().map_err(|e| e.field), Err("claim_ahead"));
    }

    #[test]
    fn a_drift_bound_the_rescue_window_cannot_absorb_is_refused_by_name() {
        // 7 s held against a 10 s window: fine up to d = 3/17 (17.6%).
        let ok = JobsConfig {
            clock_drift_max_ppm: 170_000,
            ..JobsConfig::default()
        };
        ok.validate().expect("17% fits");
        let tight = JobsConfig {
            clock_drift_max_ppm: 180_000,
            ..JobsConfig::default()
        };
        let err = tight.validate().expect_err("18% does not");
        assert_eq!(err.field, "stale_threshold");
        assert!(err.reason.contains("clock_drift_max_ppm 180000"), "{err}");
        let absurd = JobsConfig {
            clock_drift_max_ppm: 300_000,
            ..JobsConfig::default()
        };
        assert_eq!(
            absurd.validate().map_err(|e| e.field),
            Err("clock_drift_max_ppm")
        );
    }
}
