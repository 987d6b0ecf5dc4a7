//! The storage seam: everything durable goes through here.
//!
//! `Storage` is a bundle of small traits, one per concern; today the lease store
//! that leadership needs. Implementations:
//!
//! * [`MemStorage`]: the reference model. Deterministic, in memory; the simulator
//!   serves it from its database host and every other engine is held to it.
//!
//! Every operation that compares with "now" takes the time from the caller's
//! [`Clock`](crate::clock::Clock), so the simulator decides it and storage never
//! reads a clock of its own.
//!
//! # Leases and terms
//!
//! `lease(name) = {term, holder, expires_at}`. Terms strictly increase, and a
//! grant always starts a new term, even for the holder that had the lease last:
//! a node that lost track of its lease (a restart, a step-down) must never
//! inherit an old term. Renew and resign name their term, so an old term cannot
//! renew or resign a newer one; [`LeaseStore::maintenance_heartbeat`] is the fenced
//! write a leader's maintenance makes, accepted only for the current term.

mod mem;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::clock::Timestamp;

pub use mem::MemStorage;

/// A leadership term. Strictly increasing per lease; the fencing token of leadership.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Term(pub u64);

impl fmt::Display for Term {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "T{}", self.0)
    }
}

/// A leader lease as storage holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// Which lease (one per leadership domain, e.g. `"maintainer"`).
    pub name: String,
    /// The term of the latest grant.
    pub term: Term,
    /// Who was granted `term`; `None` once that term resigned.
    pub holder: Option<String>,
    /// When the grant lapses unless renewed, in the granting caller's wall time.
    pub expires_at: Timestamp,
}

impl Lease {
    /// Whether some holder still has this lease at `now`.
    pub fn is_live(&self, now: Timestamp) -> bool {
        self.holder.is_some() && now < self.expires_at
    }
}

/// Why a storage call failed.
///
/// The distinction between [`Unavailable`](StorageError::Unavailable) and
/// [`Ambiguous`](StorageError::Ambiguous) matters: after an ambiguous failure the
/// operation may have been applied, so callers must only retry operations that are
/// idempotent or fenced.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum StorageError {
    /// The request certainly was not applied (no connection, refused).
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// The request may or may not have been applied (reply lost, timed out).
    #[error("storage outcome unknown: {0}")]
    Ambiguous(String),
    /// The storage engine reported an error of its own.
    #[error("storage error: {0}")]
    Backend(String),
    /// The caller passed a value storage refuses; names the field.
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// The offending field.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// Result of a storage call.
pub type StorageResult<T> = Result<T, StorageError>;

/// Leader leases with strictly increasing terms.
#[async_trait]
pub trait LeaseStore: Send + Sync {
    /// Take lease `name` for `holder` until `now + ttl` if it is absent, expired,
    /// resigned, or already `holder`'s. Every grant starts a new term. Returns the
    /// granted lease, or `None` when another holder's grant is still live.
    async fn try_acquire(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
        now: Timestamp,
    ) -> StorageResult<Option<Lease>>;

    /// Extend `holder`'s grant of `term` to `now + ttl`. Returns `false` when the
    /// lease has moved on to another term or holder.
    async fn renew(
        &self,
        name: &str,
        holder: &str,
        term: Term,
        ttl: Duration,
        now: Timestamp,
    ) -> StorageResult<bool>;

    /// Give up `holder`'s grant of `term`. Returns `false`, and changes nothing,
    /// unless `term` is the current term and `holder` holds it.
    async fn resign(&self, name: &str, holder: &str, term: Term) -> StorageResult<bool>;

    /// The current lease, if it was ever granted.
    async fn get_lease(&self, name: &str) -> StorageResult<Option<Lease>>;

    /// A fenced write by `term`'s maintenance: accepted (`true`) only while `term`
    /// is the current term of `name` and `holder` holds it.
    async fn maintenance_heartbeat(
        &self,
        name: &str,
        holder: &str,
        term: Term,
        now: Timestamp,
    ) -> StorageResult<bool>;
}

/// Everything durable. Blanket-implemented for any type with every store.
pub trait Storage: LeaseStore {}

impl<T: LeaseStore> Storage for T {}

/// A shared storage handle.
pub type SharedStorage = Arc<dyn Storage>;

/// Validate a lease name: the same rule for every engine.
pub(crate) fn validate_lease_name(name: &str) -> StorageResult<()> {
    const LEASE_NAME_LEN_MAX: usize = 128;
    if name.is_empty() || name.len() > LEASE_NAME_LEN_MAX {
        return Err(StorageError::Invalid {
            field: "lease name".into(),
            reason: format!("must be 1..={LEASE_NAME_LEN_MAX} bytes, got {}", name.len()),
        });
    }
    Ok(())
}

/// Validate a holder id: the same rule for every engine.
pub(crate) fn validate_holder(holder: &str) -> StorageResult<()> {
    const HOLDER_LEN_MAX: usize = 128;
    if holder.is_empty() || holder.len() > HOLDER_LEN_MAX {
        return Err(StorageError::Invalid {
            field: "holder".into(),
            reason: format!("must be 1..={HOLDER_LEN_MAX} bytes, got {}", holder.len()),
        });
    }
    Ok(())
}
