//! `SimClock`: simulated time with a per-host wall-clock skew.
//!
//! turmoil gives every host the same simulated time and has no notion of skew, so
//! the harness layers it here: wall time is the run's fixed epoch plus this host's
//! simulated elapsed time plus a skew drawn from the seed. Monotonic time and
//! sleeps are tokio's, which turmoil drives from the seed's tick.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use keel::clock::{Clock, Interval, Sleep, Timestamp};
use tokio::time::{Instant, MissedTickBehavior};

use crate::pause::PauseGate;

/// The fixed wall-clock epoch of every run: 2026-01-01T00:00:00Z in Unix ms. A
/// constant, so a seed's timestamps never depend on when it runs.
pub const EPOCH_UNIX_MS: i64 = 1_767_225_600_000;

/// The simulated clock of one host. See the [module docs](self).
#[derive(Clone, Debug)]
pub struct SimClock {
    skew_ms: Arc<AtomicI64>,
    gate: Option<PauseGate>,
}

impl SimClock {
    /// A clock that runs `skew_ms` ahead (negative: behind) of true simulated time.
    pub fn new(skew_ms: i64) -> Self {
        Self::shared(Arc::new(AtomicI64::new(skew_ms)))
    }

    /// A clock whose skew the harness can change while it runs (clock jumps).
    pub fn shared(skew_ms: Arc<AtomicI64>) -> Self {
        Self {
            skew_ms,
            gate: None,
        }
    }

    /// The same clock on a host that can be frozen: while `gate` is closed no
    /// sleep completes and no interval ticks (see [`crate::pause`]).
    pub fn gated(mut self, gate: PauseGate) -> Self {
        self.gate = Some(gate);
        self
    }

    /// The epoch as a `SystemTime`, for turmoil's builder.
    pub fn epoch() -> std::time::SystemTime {
        std::time::UNIX_EPOCH + Duration::from_millis(EPOCH_UNIX_MS as u64)
    }
}

impl Clock for SimClock {
    fn now(&self) -> Timestamp {
        // The simulation's time, not this host's (`turmoil::elapsed`): a host
        // added mid-run (a replacement process) would otherwise boot with its
        // wall clock behind by the time it was added.
        let elapsed = turmoil::sim_elapsed().unwrap_or_else(turmoil::elapsed);
        let elapsed_ms = i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX);
        Timestamp(EPOCH_UNIX_MS + elapsed_ms + self.skew_ms.load(Ordering::SeqCst))
    }

    fn monotonic(&self) -> Instant {
        Instant::now() // determinism-ok: tokio Instant, simulated
    }

    fn sleep(&self, d: Duration) -> Sleep {
        let Some(gate) = self.gate.clone() else {
            return Box::pin(tokio::time::sleep(d));
        };
        Box::pin(async move {
            tokio::time::sleep(d).await;
            if let Some(resumed) = gate.held() {
                resumed.await;
            }
        })
    }

    fn interval(&self, period: Duration, missed: MissedTickBehavior) -> Interval {
        let interval = Interval::new(self.monotonic(), period, missed);
        match self.gate.clone() {
            Some(gate) => interval.held(Arc::new(move || gate.held())),
            None => interval,
        }
    }
}
