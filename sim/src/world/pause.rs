//! `PauseGate`: freezing a simulated process, as SIGSTOP or a VM freeze does.
//!
//! turmoil 0.7.2 steps every running host each tick and has no way to skip one,
//! so a pause is layered on the node's seams instead. While a host's gate is
//! closed, its [`SimClock`](crate::world::clock::SimClock) completes no sleep and hands
//! out no interval tick, and the harness holds the host's link to the database
//! (`Sim::hold`), so nothing it sent arrives and no reply reaches it. Timers that
//! came due during the pause fire when the gate opens, all at once, with both
//! clocks jumped by the pause: what a process sees after SIGCONT.
//!
//! A task that was already runnable when the pause began may still take one
//! step; everything it can then wait on is frozen, so the pause starts at most
//! one scheduling round late.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use keel::clock::Sleep;
use tokio::sync::Notify;

/// A host's freeze switch, shared by the harness and the host's clocks.
#[derive(Clone, Debug, Default)]
pub struct PauseGate(Arc<Inner>);

#[derive(Debug, Default)]
struct Inner {
    paused: AtomicBool,
    resumed: Notify,
}

impl PauseGate {
    /// Freeze the host.
    pub fn pause(&self) {
        self.0.paused.store(true, Ordering::SeqCst);
    }

    /// Let the host run again; everything held wakes in the order it waited.
    pub fn resume(&self) {
        self.0.paused.store(false, Ordering::SeqCst);
        self.0.resumed.notify_waiters();
    }

    /// Whether the host is frozen now.
    pub fn is_paused(&self) -> bool {
        self.0.paused.load(Ordering::SeqCst)
    }

    /// `None` while the host runs; while it is frozen, the wait for its resume.
    /// The common case allocates nothing.
    pub fn held(&self) -> Option<Sleep> {
        self.is_paused().then(|| self.passed())
    }

    /// Ready at once while the host runs; otherwise when it resumes.
    pub fn passed(&self) -> Sleep {
        let inner = self.0.clone();
        Box::pin(async move {
            loop {
                let resumed = inner.resumed.notified();
                tokio::pin!(resumed);
                // Registered before the check, so a resume in between is not lost.
                resumed.as_mut().enable();
                if !inner.paused.load(Ordering::SeqCst) {
                    return;
                }
                resumed.await;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn a_closed_gate_holds_waiters_until_it_opens() {
        let gate = PauseGate::default();
        gate.passed().await;
        gate.pause();
        let waiter = tokio::spawn(gate.passed());
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(!waiter.is_finished(), "held while paused");
        gate.resume();
        tokio::time::timeout(Duration::from_millis(1), waiter)
            .await
            .expect("released at once")
            .expect("no panic");
    }
}
