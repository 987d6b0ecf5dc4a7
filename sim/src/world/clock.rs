//! `SimClock`: simulated time with a per-host wall-clock skew and rate error.
//!
//! turmoil gives every host the same simulated time and has no notion of skew or
//! drift, so the harness layers both here:
//!
//! * **Skew**: wall time is the run's fixed epoch plus the simulated elapsed
//!   time plus a skew drawn from the seed, which clock jumps step.
//! * **Drift**: one oscillator drives both of a host's clocks, so a host whose
//!   rate error is `+20000` ppm sees 1.02 s pass, on its monotonic clock and its
//!   wall clock alike, per simulated second. A sleep of `d` lasts `d / 1.02` of
//!   simulated time; an interval's period is converted when it is armed (a rate
//!   change reaches the intervals armed after it, the sleeps started after it,
//!   and every reading at once). [`Drift`] holds the rate, which the harness
//!   may change mid-run; the offset it has built up stays, as on a machine.
//!
//! ```text
//! true time   0 ─────────── 10 s ─────────── 20 s
//! +20000 ppm  0 ─────────── 10.2 s ───────── 20.4 s    (rate set at 0)
//!             0 ─────────── 10.2 s ───────── 20.1 s    (-10000 ppm from 10 s)
//! ```

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keel::clock::{Clock, Interval, Sleep, Timestamp};
use tokio::time::{Instant, MissedTickBehavior};

use crate::world::pause::PauseGate;

/// The fixed wall-clock epoch of every run: 2026-01-01T00:00:00Z in Unix ms. A
/// constant, so a seed's timestamps never depend on when it runs.
pub const EPOCH_UNIX_MS: i64 = 1_767_225_600_000;

/// Parts per million: a rate error of `ppm` runs a clock `ppm / PPM` fast.
const PPM: i128 = 1_000_000;

/// The most a host's rate may be off, in ppm (50%): a sanity bound on drawn
/// and scripted rates, far past any clock a runtime could work with.
pub const DRIFT_PPM_LIMIT: i64 = 500_000;

/// One host's clock-rate error over a run: how many ppm fast (negative: slow)
/// its oscillator runs, and the offset from true time that has built up, as a
/// function of simulated time. Shared between the host's clocks (across
/// reboots: it is the machine's) and the harness, which changes the rate.
#[derive(Clone, Debug, Default)]
pub struct Drift(Arc<Mutex<DriftState>>);

#[derive(Clone, Copy, Debug, Default)]
struct DriftState {
    /// Simulated time of the last rate change, in ns.
    anchor_ns: i128,
    /// The offset built up by then, in ns.
    offset_ns: i128,
    ppm: i64,
}

impl DriftState {
    fn offset_ns(&self, at_ns: i128) -> i128 {
        self.offset_ns + (at_ns - self.anchor_ns) * i128::from(self.ppm) / PPM
    }
}

fn sim_ns() -> i128 {
    let elapsed = turmoil::sim_elapsed().unwrap_or_else(turmoil::elapsed);
    i128::try_from(elapsed.as_nanos()).unwrap_or(i128::MAX)
}

impl Drift {
    /// A clock running `ppm` fast (negative: slow) from simulated time 0.
    pub fn new(ppm: i64) -> Self {
        assert!(ppm.abs() <= DRIFT_PPM_LIMIT, "rate error {ppm} ppm");
        Self(Arc::new(Mutex::new(DriftState {
            ppm,
            ..DriftState::default()
        })))
    }

    fn state(&self) -> DriftState {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The rate error now, in ppm.
    pub fn ppm(&self) -> i64 {
        self.state().ppm
    }

    /// Run at `ppm` from simulated time `at` on; the offset built up so far
    /// stays.
    pub fn set_ppm(&self, ppm: i64, at: Duration) {
        assert!(ppm.abs() <= DRIFT_PPM_LIMIT, "rate error {ppm} ppm");
        let at_ns = i128::try_from(at.as_nanos()).unwrap_or(i128::MAX);
        let mut state = self.0.lock().unwrap_or_else(|p| p.into_inner());
        *state = DriftState {
            anchor_ns: at_ns,
            offset_ns: state.offset_ns(at_ns),
            ppm,
        };
    }

    /// How far ahead of true time (negative: behind) the drift has put this
    /// host's clocks at simulated time `at_ns`.
    fn offset_ns(&self, at_ns: i128) -> i128 {
        self.state().offset_ns(at_ns)
    }

    /// The simulated time this host's clock needs to see `d` pass, at the
    /// current rate; rounded up, so a sleep never wakes before its host time.
    fn to_true(&self, d: Duration) -> Duration {
        let ppm = i128::from(self.ppm());
        let ns = i128::try_from(d.as_nanos()).unwrap_or(i128::MAX);
        let true_ns = (ns * PPM + PPM + ppm - 1) / (PPM + ppm);
        Duration::from_nanos(u64::try_from(true_ns).unwrap_or(u64::MAX))
    }
}

/// The simulated clock of one host. See the [module docs](self).
#[derive(Clone, Debug)]
pub struct SimClock {
    skew_ms: Arc<AtomicI64>,
    drift: Drift,
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
            drift: Drift::default(),
            gate: None,
        }
    }

    /// The same clock running at `drift`'s rate.
    pub fn drifting(mut self, drift: Drift) -> Self {
        self.drift = drift;
        self
    }

    /// The same clock on a host that can be frozen: while `gate` is closed no
    /// sleep completes and no interval ticks (see [`crate::world::pause`]).
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
        let true_ns = sim_ns();
        let at_ns = true_ns + self.drift.offset_ns(true_ns);
        let at_ms = i64::try_from(at_ns.div_euclid(1_000_000)).unwrap_or(i64::MAX);
        Timestamp(EPOCH_UNIX_MS + at_ms + self.skew_ms.load(Ordering::SeqCst))
    }

    fn monotonic(&self) -> Instant {
        let now = Instant::now(); // determinism-ok: tokio Instant, simulated
        let off = self.drift.offset_ns(sim_ns());
        let by = Duration::from_nanos(u64::try_from(off.unsigned_abs()).unwrap_or(u64::MAX));
        if off >= 0 {
            now + by
        } else {
            // A slow clock reads behind true time; the runtime's start is far
            // enough past tokio's origin for any drift a run can build up.
            now.checked_sub(by).unwrap_or(now)
        }
    }

    fn sleep(&self, d: Duration) -> Sleep {
        let d = self.drift.to_true(d);
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
        let period = self.drift.to_true(period);
        // Armed on tokio's (true) time: the ticker never compares with `monotonic`.
        let start = Instant::now(); // determinism-ok: tokio Instant, simulated
        let interval = Interval::new(start, period, missed);
        match self.gate.clone() {
            Some(gate) => interval.held(Arc::new(move || gate.held())),
            None => interval,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rate_change_keeps_the_offset_built_up() {
        let d = Drift::new(20_000);
        assert_eq!(d.state().offset_ns(10_000_000_000), 200_000_000);
        d.set_ppm(-10_000, Duration::from_secs(10));
        assert_eq!(d.state().offset_ns(20_000_000_000), 100_000_000);
    }

    #[test]
    fn a_sleep_lasts_its_host_time_rounded_up() {
        let fast = Drift::new(20_000);
        assert_eq!(
            fast.to_true(Duration::from_millis(1_020)),
            Duration::from_secs(1)
        );
        let slow = Drift::new(-500_000);
        assert_eq!(slow.to_true(Duration::from_secs(1)), Duration::from_secs(2));
        assert_eq!(
            Drift::default().to_true(Duration::from_nanos(7)),
            Duration::from_nanos(7)
        );
        // Never early: 1 ns of host time at +1 ppm still needs 1 ns.
        assert_eq!(
            Drift::new(1).to_true(Duration::from_nanos(1)),
            Duration::from_nanos(1)
        );
    }
}
