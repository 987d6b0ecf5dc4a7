//! Leadership: one node at a time runs the cluster's maintenance.
//!
//! # Design
//!
//! The [`Elector`] holds a lease in storage. Each grant is a new **term**, a
//! strictly increasing number that fences everything done on behalf of that
//! leadership: renew, resign and maintenance writes all name their term, and
//! storage refuses an old one.
//!
//! ```text
//!            try_acquire ok                      renew ok (extends trust)
//!  Follower ───────────────────▶ Leader(T) ◀───────────────┐
//!     ▲  ▲                          │  └───────────────────┘
//!     │  │ resign(T) (term-scoped)  │
//!     │  └──────────────────────────┤ trust window expired, or lease moved on
//!     └─────────────────────────────┘
//! ```
//!
//! **The trust window.** A node believes it leads `T` until
//! `attempt_start + ttl - safety_margin`, measured on its *monotonic* clock from the
//! moment it *sent* the successful acquire or renew. Anchoring to the send time (not
//! the reply) means a slow reply can only shorten the window, and the safety margin
//! absorbs the difference between this node's clock and the clock that judges
//! expiry in storage. When the window closes without a successful renewal the node
//! steps down on its own, even if storage never answered. `TermWon` and
//! `TermRenewed` carry the window's length (`trusted_for_ms`) so the simulator can
//! judge each belief on its true time, and a leader's own services ask
//! [`Elector::holds`] (through `ServiceCtx::leads`) before every act outside storage.
//!
//! **Losing comes before resigning.** When a node stops leading it first emits
//! `TermLost` (its belief ends there), then resigns the term in storage, so no
//! other node can be granted the lease while this one still believes it leads.
//! A lease that already moved on is not resigned at all.
//!
//! **Resign is term-scoped.** [`Elector::request_resign`] names a term; the elector
//! resigns only if it still holds exactly that term. An old term's request can
//! never force out a newer, healthy leadership (source document 002).

mod elector;

pub use elector::{Elector, ElectorConfig, ElectorConfigError, Leadership};
