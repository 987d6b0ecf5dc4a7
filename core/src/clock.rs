//! The time seam: wall time for leases and schedules, monotonic time for waiting.
//!
//! Everything in `keel` that needs "now" asks a [`Clock`]. Production uses
//! [`SystemClock`]; the simulator supplies a clock built on simulated time with a
//! per-host skew, so one seed decides every timestamp the runtime ever sees.
//!
//! Two kinds of time, on purpose:
//!
//! * [`Clock::now`] is **wall time** ([`Timestamp`], milliseconds since the Unix
//!   epoch). It is what storage compares against lease expiry and schedules. Wall
//!   clocks skew and jump between machines, so nothing safety-critical may rely on
//!   two hosts agreeing about it.
//! * [`Clock::monotonic`] and [`Clock::sleep`] are **monotonic**. The elector's trust
//!   window is measured here, anchored to the moment a lease attempt started, so a
//!   wall-clock jump cannot stretch how long a node believes it leads.
//!
//! ```
//! use keel::clock::{Clock, SystemClock};
//! # async fn demo() {
//! let clock = SystemClock::new();
//! let before = clock.monotonic();
//! clock.sleep(std::time::Duration::from_millis(1)).await;
//! assert!(clock.monotonic() >= before);
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::{Instant, MissedTickBehavior};

/// A wall-clock instant: milliseconds since the Unix epoch.
///
/// Signed so that arithmetic near the epoch (a clock skewed backwards in a test)
/// cannot wrap.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Timestamp(pub i64);

impl Timestamp {
    /// The instant `d` after this one, saturating instead of overflowing.
    pub fn plus(self, d: Duration) -> Timestamp {
        let ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        Timestamp(self.0.saturating_add(ms))
    }

    /// The instant `d` before this one, saturating instead of overflowing.
    pub fn minus(self, d: Duration) -> Timestamp {
        let ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        Timestamp(self.0.saturating_sub(ms))
    }

    /// Milliseconds since the Unix epoch.
    pub fn as_millis(self) -> i64 {
        self.0
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ms", self.0)
    }
}

/// Clock-rate error the runtime's defaults tolerate, in parts per million: 1%,
/// a hundred times what an NTP-disciplined clock drifts, room for a VM under
/// steal time. Both [`ElectorConfig`](crate::leadership::ElectorConfig) and
/// [`JobsConfig`](crate::jobs::JobsConfig) carry it as `clock_drift_max_ppm`.
pub const CLOCK_DRIFT_MAX_PPM_DEFAULT: u32 = 10_000;

/// The largest clock-rate error a configuration may claim to tolerate, in
/// parts per million (20%): past it a "clock" is broken hardware, and the
/// margins it would need leave no trust worth having.
pub const CLOCK_DRIFT_MAX_PPM_LIMIT: u32 = 200_000;

const PPM: u128 = 1_000_000;

/// The longest a node may trust a hold that storage keeps for `hold`, counted
/// on the node's own monotonic clock from the send of the request that set it,
/// when every clock (the node's and storage's) may run fast or slow by up to
/// `drift_ppm` parts per million.
///
/// The relation every margin in keel keeps (`d` = `drift_ppm` / 10⁶): the node's
/// clock may run slow by `d` while storage's runs fast by `d`, so a trust of
/// `t` on the node lasts `t / (1 - d)` of true time while the hold lasts
/// `hold / (1 + d)`, and `t / (1 - d) <= hold / (1 + d)` gives
///
/// ```text
/// trust <= hold * (1 - d) / (1 + d)     i.e.   margin >= hold * 2d / (1 + d)
/// ```
///
/// There is no term for how late a reply comes: trust counts from the send,
/// and storage stamps a hold when it applies the request, never before the
/// send, so a reply however late only shortens the trust it brings (and a
/// reply after the window closed is not trusted at all). The elector keeps it
/// with `lease_ttl - safety_margin` against `lease_ttl`; a worker with
/// `claim_trust + cancel_grace` against `stale_threshold`.
///
/// ```
/// use std::time::Duration;
/// use keel::clock::trust_bound;
/// // A 5 s lease at 1% drift: trust at most 4.90 s, a margin of 99 ms or more.
/// assert_eq!(trust_bound(Duration::from_secs(5), 10_000).as_millis(), 4_900);
/// assert_eq!(trust_bound(Duration::from_secs(5), 0), Duration::from_secs(5));
/// ```
pub fn trust_bound(hold: Duration, drift_ppm: u32) -> Duration {
    let d = u128::from(drift_ppm.min(CLOCK_DRIFT_MAX_PPM_LIMIT));
    let ns = hold.as_nanos() * (PPM - d) / (PPM + d);
    Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX))
}

/// A boxed future returned by [`Clock::sleep`].
pub type Sleep = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The time seam. See the [module docs](self).
pub trait Clock: Send + Sync + 'static {
    /// Wall time, used for leases, heartbeats and schedules.
    fn now(&self) -> Timestamp;

    /// Monotonic time, used for trust windows and deadlines.
    fn monotonic(&self) -> Instant;

    /// Wait for `d` of monotonic time.
    fn sleep(&self, d: Duration) -> Sleep;

    /// A periodic ticker with an explicit policy for ticks missed by a slow round.
    ///
    /// The first tick completes immediately, as with [`tokio::time::interval`].
    fn interval(&self, period: Duration, missed: MissedTickBehavior) -> Interval {
        Interval::new(self.monotonic(), period, missed)
    }
}

/// Asked after each tick of an [`Interval`]: `None` hands the tick out at once,
/// `Some` is awaited first; see [`Interval::held`].
pub type TickHold = Arc<dyn Fn() -> Option<Sleep> + Send + Sync>;

/// A periodic ticker from [`Clock::interval`]: tokio's interval, which a
/// simulated clock can hold back (a frozen process sees no ticks until it
/// resumes).
pub struct Interval {
    inner: tokio::time::Interval,
    hold: Option<TickHold>,
}

impl fmt::Debug for Interval {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Interval")
            .field("period", &self.inner.period())
            .field("held", &self.hold.is_some())
            .finish()
    }
}

impl Interval {
    /// Ticks every `period` from `start`, with `missed` for ticks a slow round
    /// missed. The first tick completes at `start`.
    ///
    /// # Panics
    ///
    /// If `period` is zero.
    pub fn new(start: Instant, period: Duration, missed: MissedTickBehavior) -> Self {
        assert!(!period.is_zero(), "an interval period must be positive");
        let mut inner = tokio::time::interval_at(start, period);
        inner.set_missed_tick_behavior(missed);
        Self { inner, hold: None }
    }

    /// The same ticker, but after each tick `hold()` may hand back a wait to
    /// finish before the tick is handed out.
    pub fn held(mut self, hold: TickHold) -> Self {
        self.hold = Some(hold);
        self
    }

    /// Wait for the next tick. Cancel-safe as tokio's is, except that a tick
    /// being held when the call is dropped is skipped.
    pub async fn tick(&mut self) -> Instant {
        let at = self.inner.tick().await;
        if let Some(wait) = self.hold.as_ref().and_then(|hold| hold()) {
            wait.await;
            // Held past the next tick: to the ticker this one fired late, as a
            // frozen timer does on waking, so the next comes on the grid after
            // now rather than at once (which would be a burst). A tick that was
            // not held keeps the ticker's own missed-tick behaviour.
            let period = self.inner.period();
            let late = Instant::now().saturating_duration_since(at); // determinism-ok: tokio Instant, simulated
            if late >= period {
                let periods =
                    u32::try_from(late.as_nanos() / period.as_nanos()).unwrap_or(u32::MAX);
                if let Some(next) = period.checked_mul(periods.saturating_add(1)) {
                    self.inner.reset_at(at + next);
                }
            }
        }
        at
    }

    /// Start counting a whole period from now: the next tick is one period
    /// away (tokio's `Interval::reset`).
    pub fn reset(&mut self) {
        self.inner.reset();
    }

    /// The period between ticks.
    pub fn period(&self) -> Duration {
        self.inner.period()
    }
}

/// A shared clock handle.
pub type SharedClock = Arc<dyn Clock>;

/// The production clock: the operating system's wall clock and tokio's timer.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl SystemClock {
    /// A new system clock.
    pub fn new() -> Self {
        SystemClock
    }
}

impl Clock for SystemClock {
    // seam: the one place production reads the OS wall clock.
    #[allow(clippy::disallowed_methods)]
    fn now(&self) -> Timestamp {
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        Timestamp(i64::try_from(since.as_millis()).unwrap_or(i64::MAX))
    }

    fn monotonic(&self) -> Instant {
        Instant::now()
    }

    fn sleep(&self, d: Duration) -> Sleep {
        Box::pin(tokio::time::sleep(d))
    }
}

/// A wall clock that only moves when told: for tests that decide what storage's
/// clock reads (the conformance suites hand one to every engine). Monotonic time
/// and sleeps are tokio's.
///
/// ```
/// use keel::clock::{Clock, ManualClock, Timestamp};
/// let clock = ManualClock::new(Timestamp(1_000));
/// clock.advance(std::time::Duration::from_secs(2));
/// assert_eq!(clock.now(), Timestamp(3_000));
/// clock.set(Timestamp(500)); // wall clocks may step back
/// assert_eq!(clock.now(), Timestamp(500));
/// ```
#[derive(Debug, Default)]
pub struct ManualClock {
    now_ms: std::sync::atomic::AtomicI64,
}

impl ManualClock {
    /// A clock reading `at` until moved.
    pub fn new(at: Timestamp) -> Self {
        Self {
            now_ms: std::sync::atomic::AtomicI64::new(at.0),
        }
    }

    /// Make it read `at`.
    pub fn set(&self, at: Timestamp) {
        self.now_ms.store(at.0, std::sync::atomic::Ordering::SeqCst);
    }

    /// Move it `d` forward.
    pub fn advance(&self, d: Duration) {
        let ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        self.now_ms
            .fetch_add(ms, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.now_ms.load(std::sync::atomic::Ordering::SeqCst))
    }

    fn monotonic(&self) -> Instant {
        Instant::now() // determinism-ok: tokio Instant, simulated in tests
    }

    fn sleep(&self, d: Duration) -> Sleep {
        Box::pin(tokio::time::sleep(d))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamp_plus_saturates() {
        assert_eq!(Timestamp(5).plus(Duration::from_millis(10)), Timestamp(15));
        assert_eq!(
            Timestamp(i64::MAX - 1).plus(Duration::from_secs(10)),
            Timestamp(i64::MAX)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn interval_skip_does_not_burst_after_a_slow_round() {
        let clock = SystemClock::new();
        let mut interval = clock.interval(Duration::from_millis(100), MissedTickBehavior::Skip);
        interval.tick().await;
        tokio::time::sleep(Duration::from_millis(350)).await;
        let a = interval.tick().await;
        let b = interval.tick().await;
        assert!(
            b - a >= Duration::from_millis(50),
            "Skip must not fire twice back to back"
        );
    }
}
