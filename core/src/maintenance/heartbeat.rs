//! `MaintenanceHeartbeat`: the leader's fenced proof of life.
//!
//! While a term's maintenance runs, this service writes a heartbeat fenced by the
//! term every `interval`. Storage accepts it only from the current term's holder,
//! so the record of accepted heartbeats says which term's maintenance was really
//! active, and two terms can never both be accepted at once.

use std::time::Duration;

use async_trait::async_trait;
use tokio::time::MissedTickBehavior;

use super::service::{Service, ServiceCtx, ServiceError};

/// Writes a term-fenced heartbeat while the term's maintenance runs.
#[derive(Clone, Debug)]
pub struct MaintenanceHeartbeat {
    interval: Duration,
}

impl MaintenanceHeartbeat {
    /// Default heartbeat period.
    pub const INTERVAL_DEFAULT: Duration = Duration::from_secs(1);

    /// A heartbeat every `interval`.
    pub fn new(interval: Duration) -> Self {
        assert!(!interval.is_zero(), "heartbeat interval must be positive");
        Self { interval }
    }
}

impl Default for MaintenanceHeartbeat {
    fn default() -> Self {
        Self::new(Self::INTERVAL_DEFAULT)
    }
}

#[async_trait]
impl Service for MaintenanceHeartbeat {
    fn name(&self) -> &str {
        "maintenance_heartbeat"
    }

    async fn start(&self, ctx: &ServiceCtx) -> Result<(), ServiceError> {
        // Fail the start if storage already refuses this term: no point running
        // maintenance for a term that is over.
        let accepted = ctx
            .storage
            .maintenance_heartbeat(&ctx.lease_name, &ctx.holder, ctx.term)
            .await?;
        if !accepted {
            return Err(ServiceError::Start {
                service: self.name().to_owned(),
                reason: format!("storage refuses term {}", ctx.term),
            });
        }
        let ctx2 = ctx.clone();
        let period = self.interval;
        ctx.tasks.spawn("maintenance_heartbeat", async move {
            let mut tick = ctx2.clock.interval(period, MissedTickBehavior::Skip);
            tick.tick().await;
            loop {
                tokio::select! {
                    biased;
                    () = ctx2.token.wait() => return,
                    _ = tick.tick() => {}
                }
                let write = ctx2.storage.maintenance_heartbeat(&ctx2.lease_name, &ctx2.holder, ctx2.term);
                if let Ok(false) = write.await {
                    tracing::info!(term = %ctx2.term, "maintenance heartbeat refused: term is over");
                }
            }
        });
        Ok(())
    }
}
