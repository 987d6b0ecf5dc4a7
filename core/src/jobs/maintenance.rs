//! The leader's job maintenance: rescuer, scheduler, cleaner, periodic enqueuer.
//!
//! Each is a [`Service`] the [`Maintainer`](crate::maintenance::Maintainer) starts
//! for the term it won; each runs one loop on an interval with
//! `MissedTickBehavior::Skip` (a slow round is not followed by a burst), spawned
//! into the term's task registry so it stops with the term.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::MissedTickBehavior;

use crate::clock::Timestamp;
use crate::events::{emit, Event};
use crate::maintenance::{Service, ServiceCtx, ServiceError};
use crate::storage::{EnqueueRequest, PeriodicOutcome};

/// Run `tick` every `period` until the term's token triggers, skipping ticks
/// that fall outside the term's trust window.
fn spawn_loop<F, Fut>(ctx: &ServiceCtx, name: &'static str, period: Duration, mut tick: F)
where
    F: FnMut(ServiceCtx) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let ctx = ctx.clone();
    ctx.tasks.clone().spawn(name.to_owned(), async move {
        let mut interval = ctx.clock.interval(period, MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                biased;
                () = ctx.token.wait() => return,
                _ = interval.tick() => {}
            }
            // The token triggers only once the maintainer hears the term is
            // gone; a tick that comes due as the process thaws from a freeze
            // can run first. Planted `loop_skips_trust_check` acts anyway.
            if !ctx.leads() {
                crate::sometimes!("maintenance_tick_outside_trust");
                if !crate::is_planted!(ctx.elector.plants(), LoopSkipsTrustCheck) {
                    continue;
                }
            }
            ctx.report_act(name);
            tick(ctx.clone()).await;
        }
    });
}

/// Revokes claims whose heartbeat is older than `stale_threshold` on storage's
/// clock: the rescuer's own wall clock has no say, so a rescuer whose clock runs
/// minutes ahead cannot take a live job from its worker.
#[derive(Clone, Debug)]
pub struct Rescuer {
    /// How often it runs.
    pub interval: Duration,
    /// Claims older than this are revoked.
    pub stale_threshold: Duration,
}

#[async_trait]
impl Service for Rescuer {
    fn name(&self) -> &str {
        "rescuer"
    }

    async fn start(&self, ctx: &ServiceCtx) -> Result<(), ServiceError> {
        let stale = self.stale_threshold;
        spawn_loop(ctx, "rescuer", self.interval, move |ctx| async move {
            // Planted `rescue_threshold_halved` slips a unit.
            let stale = if crate::is_planted!(ctx.elector.plants(), RescueThresholdHalved) {
                stale / 2
            } else {
                stale
            };
            let stale = caller_clock_window(&ctx, stale).await;
            if let Ok(claims) = ctx.storage.rescue_stale(stale).await {
                for c in claims {
                    emit(
                        ctx.observer.as_ref(),
                        &ctx.holder,
                        Event::JobRescued {
                            job: c.job,
                            attempt: c.attempt,
                        },
                    );
                }
            }
        });
        Ok(())
    }
}

/// Planted `rescue_on_caller_clock` judges staleness on the rescuer's own wall
/// clock, as keel did before storage's clock judged: it shrinks the window by how
/// far its clock runs ahead of storage's, so a rescuer whose clock jumped forward
/// takes claims whose workers are alive. Without the plant, `stale` as given.
async fn caller_clock_window(ctx: &ServiceCtx, stale: Duration) -> Duration {
    if !crate::is_planted!(ctx.elector.plants(), RescueOnCallerClock) {
        return stale;
    }
    let Ok(storage_now) = ctx.storage.time().await else {
        return stale;
    };
    let ahead_ms = ctx.clock.now().0.saturating_sub(storage_now.0);
    stale.saturating_sub(Duration::from_millis(u64::try_from(ahead_ms).unwrap_or(0)))
}

/// Makes due scheduled and retryable jobs available.
#[derive(Clone, Debug)]
pub struct Scheduler {
    /// How often it runs.
    pub interval: Duration,
}

#[async_trait]
impl Service for Scheduler {
    fn name(&self) -> &str {
        "scheduler"
    }

    async fn start(&self, ctx: &ServiceCtx) -> Result<(), ServiceError> {
        spawn_loop(ctx, "scheduler", self.interval, |ctx| async move {
            let _promoted = ctx.storage.promote_due().await;
        });
        Ok(())
    }
}

/// Deletes finished jobs older than the retention.
#[derive(Clone, Debug)]
pub struct Cleaner {
    /// How often it runs.
    pub interval: Duration,
    /// How long finished jobs are kept.
    pub retention: Duration,
    /// Jobs deleted per pass.
    pub batch: u32,
}

#[async_trait]
impl Service for Cleaner {
    fn name(&self) -> &str {
        "cleaner"
    }

    async fn start(&self, ctx: &ServiceCtx) -> Result<(), ServiceError> {
        let (retention, batch) = (self.retention, self.batch);
        spawn_loop(ctx, "cleaner", self.interval, move |ctx| async move {
            let _deleted = ctx.storage.cleanup(retention, batch).await;
        });
        Ok(())
    }
}

/// When a periodic job's slots fall.
#[derive(Clone, Debug, PartialEq)]
pub enum Schedule {
    /// Every multiple of this period since the Unix epoch.
    Every(Duration),
    /// The fire times of a cron expression (with seconds: `sec min hour day
    /// month weekday [year]`), in UTC.
    Cron(Box<cron::Schedule>),
}

/// `every 60s` (whole seconds) or `every 1500ms`; `cron <expression>`: how
/// storage records a schedule, and what `Schedule::from_str` reads back.
impl std::fmt::Display for Schedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Schedule::Every(every) if every.subsec_millis() == 0 => {
                write!(f, "every {}s", every.as_secs())
            }
            Schedule::Every(every) => write!(f, "every {}ms", every.as_millis()),
            Schedule::Cron(cron) => write!(f, "cron {}", cron.source()),
        }
    }
}

/// Why a schedule's text could not be read.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("schedule {text:?}: {reason}; write `every 60s`, `every 1500ms` or `cron <sec min hour day month weekday>`")]
pub struct ScheduleParseError {
    /// The text.
    pub text: String,
    /// What is wrong with it.
    pub reason: String,
}

impl std::str::FromStr for Schedule {
    type Err = ScheduleParseError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let fail = |reason: String| ScheduleParseError {
            text: text.to_owned(),
            reason,
        };
        if let Some(expr) = text.strip_prefix("cron ") {
            let cron = expr
                .parse::<cron::Schedule>()
                .map_err(|e| fail(e.to_string()))?;
            return Ok(Schedule::Cron(Box::new(cron)));
        }
        let Some(period) = text.strip_prefix("every ") else {
            return Err(fail("starts with neither `every ` nor `cron `".into()));
        };
        let (digits, unit_ms) = if let Some(ms) = period.strip_suffix("ms") {
            (ms, 1)
        } else if let Some(s) = period.strip_suffix('s') {
            (s, 1_000)
        } else {
            return Err(fail("the period ends in neither `s` nor `ms`".into()));
        };
        let n: u64 = digits
            .parse()
            .map_err(|e| fail(format!("period {digits:?}: {e}")))?;
        match n.checked_mul(unit_ms) {
            Some(ms) if ms > 0 => Ok(Schedule::Every(Duration::from_millis(ms))),
            _ => Err(fail(
                "the period must be positive and fit in u64 milliseconds".into(),
            )),
        }
    }
}

impl PeriodicJob {
    /// The first slot after `after`: when a schedule fires next.
    pub fn next_slot(schedule: &Schedule, after: Timestamp) -> Option<Timestamp> {
        match schedule {
            Schedule::Every(every) => {
                let every_ms = i64::try_from(every.as_millis()).unwrap_or(i64::MAX).max(1);
                let next = after.0.div_euclid(every_ms).checked_add(1)?;
                Some(Timestamp(next.checked_mul(every_ms)?))
            }
            Schedule::Cron(cron) => {
                let from = chrono::DateTime::from_timestamp_millis(after.0)?;
                cron.after(&from)
                    .next()
                    .map(|t| Timestamp(t.timestamp_millis()))
            }
        }
    }
}

/// How far back a cron slot may still fire: a slot whose leader was gone for
/// longer than this (a long failover) is skipped rather than fired late.
pub const CRON_CATCH_UP: Duration = Duration::from_secs(60);

/// A job enqueued once per slot of its schedule, cluster-wide.
#[derive(Clone, Debug, PartialEq)]
pub struct PeriodicJob {
    /// The schedule's name.
    pub name: String,
    /// When its slots fall.
    pub schedule: Schedule,
    /// What each slot enqueues.
    pub request: EnqueueRequest,
}

impl PeriodicJob {
    /// The latest slot at or before `now`, if one is due: for `Every`, the slot
    /// `now` falls in; for `Cron`, the latest fire time within [`CRON_CATCH_UP`].
    pub fn slot(&self, now: Timestamp) -> Option<Timestamp> {
        match &self.schedule {
            Schedule::Every(every) => {
                let every_ms = i64::try_from(every.as_millis()).unwrap_or(i64::MAX).max(1);
                Some(Timestamp(now.0.div_euclid(every_ms) * every_ms))
            }
            Schedule::Cron(cron) => {
                let catch_up_ms = i64::try_from(CRON_CATCH_UP.as_millis()).unwrap_or(i64::MAX);
                let from =
                    chrono::DateTime::from_timestamp_millis(now.0.saturating_sub(catch_up_ms))?;
                cron.after(&from)
                    .map(|t| Timestamp(t.timestamp_millis()))
                    .take_while(|t| *t <= now)
                    .last()
            }
        }
    }
}

/// Fires each periodic schedule's current slot, fenced by the leader's term.
/// Slots are found on storage's clock (read once a round), so a leader whose
/// wall clock is off fires neither early nor late.
#[derive(Clone, Debug)]
pub struct PeriodicEnqueuer {
    /// How often it looks for a new slot.
    pub interval: Duration,
    /// The schedules.
    pub jobs: Arc<Vec<PeriodicJob>>,
}

#[async_trait]
impl Service for PeriodicEnqueuer {
    fn name(&self) -> &str {
        "periodic_enqueuer"
    }

    async fn start(&self, ctx: &ServiceCtx) -> Result<(), ServiceError> {
        let jobs = self.jobs.clone();
        spawn_loop(ctx, "periodic_enqueuer", self.interval, move |ctx| {
            let jobs = jobs.clone();
            async move {
                // No reading of storage's clock, no round: its next tick tries again.
                let Ok(now) = ctx.storage.time().await else {
                    return;
                };
                for job in jobs.iter() {
                    fire(&ctx, job, now).await;
                }
            }
        });
        Ok(())
    }
}

/// Fire `job`'s slot at `now`, storage's time.
async fn fire(ctx: &ServiceCtx, job: &PeriodicJob, now: Timestamp) {
    let Some(slot) = job.slot(now) else { return };
    // Planted `periodic_fires_next_slot` rounds a fixed period up.
    let slot = match &job.schedule {
        Schedule::Every(every)
            if crate::is_planted!(ctx.elector.plants(), PeriodicFiresNextSlot) =>
        {
            Timestamp(slot.0 + i64::try_from(every.as_millis()).unwrap_or(i64::MAX))
        }
        _ => slot,
    };
    let fired = ctx
        .storage
        .fire_periodic(
            &job.name,
            slot,
            &job.schedule.to_string(),
            &ctx.lease_name,
            &ctx.holder,
            ctx.term,
            job.request.clone(),
        )
        .await;
    let (id, inserted) = match fired {
        Ok(PeriodicOutcome::Fired(id)) => (id, true),
        Ok(PeriodicOutcome::AlreadyFired(id)) => (id, false),
        Ok(PeriodicOutcome::StaleTerm) => {
            crate::sometimes!("periodic_fire_stale_term");
            return;
        }
        Err(_) => return,
    };
    let event = Event::PeriodicFired {
        name: job.name.clone(),
        slot_ms: slot.0,
        term: ctx.term,
        job: id,
        inserted,
    };
    // Only report slots this leader inserted or first saw, not every re-check.
    if inserted {
        emit(ctx.observer.as_ref(), &ctx.holder, event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(schedule: Schedule) -> PeriodicJob {
        PeriodicJob {
            name: "digest".into(),
            schedule,
            request: EnqueueRequest::new("d", serde_json::json!({})),
        }
    }

    #[test]
    fn a_schedule_writes_itself_as_text_it_reads_back() {
        for text in ["every 60s", "every 1500ms", "cron 0 */5 * * * *"] {
            let schedule: Schedule = text.parse().expect(text);
            assert_eq!(schedule.to_string(), text);
        }
        let err = "every 0s".parse::<Schedule>().expect_err("zero");
        assert!(err.to_string().contains("positive"), "{err}");
        let err = "hourly".parse::<Schedule>().expect_err("unknown");
        assert!(err.to_string().contains("write `every 60s`"), "{err}");
        assert!("cron 61 * * * * *".parse::<Schedule>().is_err());
    }

    #[test]
    fn the_next_slot_is_the_first_after_the_given_time() {
        let every = Schedule::Every(Duration::from_secs(60));
        assert_eq!(
            PeriodicJob::next_slot(&every, Timestamp(120_000)),
            Some(Timestamp(180_000))
        );
        assert_eq!(
            PeriodicJob::next_slot(&every, Timestamp(125_000)),
            Some(Timestamp(180_000))
        );
        let cron: Schedule = "cron 0 0 * * * *".parse().expect("hourly");
        assert_eq!(
            PeriodicJob::next_slot(&cron, Timestamp(60_000)),
            Some(Timestamp(3_600_000))
        );
    }

    #[test]
    fn slots_are_multiples_of_the_period() {
        let job = job(Schedule::Every(Duration::from_secs(60)));
        assert_eq!(job.slot(Timestamp(125_000)), Some(Timestamp(120_000)));
        assert_eq!(job.slot(Timestamp(120_000)), Some(Timestamp(120_000)));
        assert_eq!(job.slot(Timestamp(-1)), Some(Timestamp(-60_000)));
    }

    #[test]
    fn cron_slots_are_the_latest_fire_time_within_the_catch_up_window() {
        let every_10s: cron::Schedule = "*/10 * * * * *".parse().expect("valid cron");
        let job = job(Schedule::Cron(Box::new(every_10s)));
        assert_eq!(job.slot(Timestamp(125_000)), Some(Timestamp(120_000)));
        assert_eq!(job.slot(Timestamp(130_000)), Some(Timestamp(130_000)));
        let hourly: cron::Schedule = "0 0 * * * *".parse().expect("valid cron");
        let job = super::PeriodicJob {
            schedule: Schedule::Cron(Box::new(hourly)),
            ..job
        };
        assert_eq!(
            job.slot(Timestamp(3_600_000 + 30_000)),
            Some(Timestamp(3_600_000))
        );
        assert_eq!(
            job.slot(Timestamp(3_600_000 + 61_000)),
            None,
            "too late to catch up"
        );
    }
}
