//! The in-memory reference model of storage, documented on [`MemStorage`].

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;

use super::{validate_holder, validate_lease_name, Lease, LeaseStore, StorageResult, Term};
use crate::clock::{SharedClock, SystemClock, Timestamp};

/// The in-memory reference storage.
///
/// `MemStorage`: the reference model of storage.
///
/// A plain in-memory map behind a mutex. It is the model every real engine is held
/// to, and the engine the simulator's database host serves, so it must stay
/// simple enough to be obviously right and fully deterministic (`BTreeMap`, and
/// time only from the [`Clock`](crate::clock::Clock) it was given: the database host's in the
/// simulator, a [`ManualClock`](crate::clock::ManualClock) in the conformance
/// suites).
pub struct MemStorage {
    state: Mutex<State>,
    /// Storage's clock: every stored time is judged against it.
    clock: SharedClock,
}

impl std::fmt::Debug for MemStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemStorage").finish_non_exhaustive()
    }
}

impl Default for MemStorage {
    fn default() -> Self {
        Self::new()
    }
}

#[derive(Debug, Default)]
pub(super) struct State {
    pub(super) leases: BTreeMap<String, Lease>,
    pub(super) jobs: super::mem_jobs::Jobs,
}

impl MemStorage {
    /// An empty store on the machine's wall clock.
    pub fn new() -> Self {
        Self::with_clock(Arc::new(SystemClock::new()))
    }

    /// An empty store whose time is `clock`'s.
    pub fn with_clock(clock: SharedClock) -> Self {
        Self {
            state: Mutex::default(),
            clock,
        }
    }

    /// Storage's clock, now.
    pub(super) fn now(&self) -> Timestamp {
        self.clock.now()
    }

    pub(super) fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock is a bug in the model itself; the data is
        // plain values, so continuing with it is no less correct than the panic was.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Synchronous core of [`LeaseStore::try_acquire`].
    pub fn try_acquire_now(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
        now: Timestamp,
    ) -> StorageResult<Option<Lease>> {
        self.try_acquire_fenced_now(name, holder, ttl, None, now)
    }

    /// Synchronous core of [`LeaseStore::try_acquire_fenced`].
    pub fn try_acquire_fenced_now(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
        known: Option<Term>,
        now: Timestamp,
    ) -> StorageResult<Option<Lease>> {
        validate_lease_name(name)?;
        validate_holder(holder)?;
        let mut state = self.state();
        let previous = state.leases.get(name);
        let grantable = previous.is_none_or(|l| l.grantable(holder, known, now));
        if !grantable {
            return Ok(None);
        }
        let term = Term(previous.map_or(0, |l| l.term.0) + 1);
        let lease = Lease {
            name: name.to_owned(),
            term,
            holder: Some(holder.to_owned()),
            expires_at: now.plus(ttl),
        };
        if let Some(prev) = previous {
            assert!(lease.term > prev.term, "terms strictly increase");
        }
        state.leases.insert(name.to_owned(), lease.clone());
        Ok(Some(lease))
    }

    /// The current lease `name`, read synchronously (the simulator's harness uses
    /// this to aim faults at the leader between steps).
    pub fn lease(&self, name: &str) -> Option<Lease> {
        self.state().leases.get(name).cloned()
    }

    fn holds(&self, name: &str, holder: &str, term: Term) -> bool {
        self.state()
            .leases
            .get(name)
            .is_some_and(|l| l.term == term && l.holder.as_deref() == Some(holder))
    }
}

#[async_trait]
impl LeaseStore for MemStorage {
    async fn try_acquire_fenced(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
        known: Option<Term>,
    ) -> StorageResult<Option<Lease>> {
        self.try_acquire_fenced_now(name, holder, ttl, known, self.now())
    }

    async fn renew(
        &self,
        name: &str,
        holder: &str,
        term: Term,
        ttl: Duration,
    ) -> StorageResult<bool> {
        validate_lease_name(name)?;
        validate_holder(holder)?;
        let now = self.now();
        let mut state = self.state();
        match state.leases.get_mut(name) {
            Some(l) if l.term == term && l.holder.as_deref() == Some(holder) => {
                // Never shorten a grant: after storage's clock stepped back, a
                // renewal must not expire a lease earlier than already promised.
                l.expires_at = l.expires_at.max(now.plus(ttl));
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn resign(&self, name: &str, holder: &str, term: Term) -> StorageResult<bool> {
        validate_lease_name(name)?;
        validate_holder(holder)?;
        let mut state = self.state();
        match state.leases.get_mut(name) {
            Some(l) if l.term == term && l.holder.as_deref() == Some(holder) => {
                // Keep the row: the next grant must still get a higher term.
                l.holder = None;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn get_lease(&self, name: &str) -> StorageResult<Option<Lease>> {
        validate_lease_name(name)?;
        Ok(self.state().leases.get(name).cloned())
    }

    async fn maintenance_heartbeat(
        &self,
        name: &str,
        holder: &str,
        term: Term,
    ) -> StorageResult<bool> {
        validate_lease_name(name)?;
        validate_holder(holder)?;
        Ok(self.holds(name, holder, term))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::storage::StorageError;

    const TTL: Duration = Duration::from_secs(10);

    fn block<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(f)
    }

    /// A store on a clock the test moves, reading `at` to begin with.
    fn store_at(at: Timestamp) -> (Arc<ManualClock>, MemStorage) {
        let clock = Arc::new(ManualClock::new(at));
        let s = MemStorage::with_clock(clock.clone());
        (clock, s)
    }

    #[test]
    fn every_grant_starts_a_new_term() {
        let s = MemStorage::new();
        let a = s.try_acquire_now("m", "a", TTL, Timestamp(0)).expect("ok");
        assert_eq!(a.map(|l| l.term), Some(Term(1)));
        // Live and held by another: refused.
        assert_eq!(
            s.try_acquire_now("m", "b", TTL, Timestamp(5_000))
                .expect("ok"),
            None
        );
        // The same holder re-acquiring still gets a fresh term.
        let again = s
            .try_acquire_now("m", "a", TTL, Timestamp(5_000))
            .expect("ok");
        assert_eq!(again.map(|l| l.term), Some(Term(2)));
        // Expired: anyone may take it, with a higher term.
        let b = s
            .try_acquire_now("m", "b", TTL, Timestamp(20_000))
            .expect("ok");
        assert_eq!(b.map(|l| l.term), Some(Term(3)));
    }

    #[test]
    fn a_fenced_acquire_replaces_only_a_term_its_caller_heard_of() {
        let s = MemStorage::new();
        let at = Timestamp(0);
        let won = |l: Option<Lease>| l.map(|l| l.term);
        let first = s.try_acquire_fenced_now("m", "a", TTL, Some(Term(0)), at);
        assert_eq!(won(first.expect("ok")), Some(Term(1)));
        // A late acquire "a" sent before it won T1: refused, T1 stands.
        let late = s.try_acquire_fenced_now("m", "a", TTL, Some(Term(0)), at);
        assert_eq!(late.expect("ok"), None);
        // "a" heard of T1 (it held it, stepped down): takes the lease back.
        let again = s.try_acquire_fenced_now("m", "a", TTL, Some(Term(1)), at);
        assert_eq!(won(again.expect("ok")), Some(Term(2)));
        // Unfenced: any live grant of "a"'s is replaced, as before.
        let blind = s.try_acquire_fenced_now("m", "a", TTL, None, at);
        assert_eq!(won(blind.expect("ok")), Some(Term(3)));
        // Another holder still waits for expiry, whatever it knows.
        let other = s.try_acquire_fenced_now("m", "b", TTL, Some(Term(9)), at);
        assert_eq!(other.expect("ok"), None);
    }

    #[test]
    fn stale_term_cannot_renew_or_resign_a_newer_term() {
        let (clock, s) = store_at(Timestamp(0));
        s.try_acquire_now("m", "a", TTL, Timestamp(0)).expect("ok");
        s.try_acquire_now("m", "b", TTL, Timestamp(20_000))
            .expect("ok");
        block(async {
            clock.set(Timestamp(21_000));
            assert!(!s.renew("m", "a", Term(1), TTL).await.expect("ok"));
            assert!(!s.resign("m", "a", Term(1)).await.expect("ok"));
            assert!(!s.resign("m", "b", Term(1)).await.expect("ok"));
            assert!(s
                .maintenance_heartbeat("m", "b", Term(2))
                .await
                .expect("ok"));
            assert!(!s
                .maintenance_heartbeat("m", "a", Term(1))
                .await
                .expect("ok"));
            assert!(s.resign("m", "b", Term(2)).await.expect("ok"));
            let lease = s.get_lease("m").await.expect("ok").expect("row kept");
            assert_eq!(lease.holder, None);
            assert!(!s
                .maintenance_heartbeat("m", "b", Term(2))
                .await
                .expect("ok"));
        });
        let next = s
            .try_acquire_now("m", "a", TTL, Timestamp(21_000))
            .expect("ok");
        assert_eq!(
            next.map(|l| l.term),
            Some(Term(3)),
            "resign keeps the term counter"
        );
    }

    #[test]
    fn renew_never_shortens_a_grant() {
        let (clock, s) = store_at(Timestamp(10_000));
        block(async {
            let lease = s.try_acquire("m", "a", TTL).await.expect("ok");
            assert_eq!(lease.map(|l| l.expires_at), Some(Timestamp(20_000)));
            // Storage's clock steps back: the renewal is accepted, but the grant
            // keeps its later expiry.
            clock.set(Timestamp(1_000));
            assert!(s.renew("m", "a", Term(1), TTL).await.expect("ok"));
            let lease = s.get_lease("m").await.expect("ok").expect("row");
            assert_eq!(lease.expires_at, Timestamp(20_000));
        });
    }

    #[test]
    fn bad_names_are_rejected_with_the_field() {
        let s = MemStorage::new();
        let err = s
            .try_acquire_now("", "a", TTL, Timestamp(0))
            .expect_err("empty name");
        assert!(matches!(err, StorageError::Invalid { ref field, .. } if field == "lease name"));
        let err = s
            .try_acquire_now("m", "", TTL, Timestamp(0))
            .expect_err("empty holder");
        assert!(matches!(err, StorageError::Invalid { ref field, .. } if field == "holder"));
    }
}
