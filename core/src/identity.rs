//! Holder identity: who holds a lease or a claim, one id per process incarnation.
//!
//! A node's name says which machine or pod it is; it does not say which *process*.
//! When an orchestrator starts `worker-0` again while the old `worker-0` is paused
//! or partitioned, two live processes share the name. If they also shared a holder
//! id, storage would take each one's acquire as the other's renewal: every grant
//! evicts the other, and both believe they lead. So every start of a runtime draws
//! an [`Incarnation`], and everything it holds is held as `node#incarnation`:
//!
//! ```
//! use keel::identity::{holder_id, Incarnation};
//! assert_eq!(holder_id("worker-0", Incarnation(0x2a)), "worker-0#0000002a");
//! ```
//!
//! Production draws incarnations from the operating system
//! ([`Incarnation::from_os`]); the simulator draws them from its seed, so a run
//! stays a pure function of the seed.

use std::fmt;

use rand::{Rng, TryRngCore};

/// One start of one process: drawn once per start, never reused on purpose.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Incarnation(pub u32);

impl Incarnation {
    /// A fresh incarnation from the operating system's entropy. 32 bits: the
    /// chance that two starts of one node ever collide is about one in four
    /// billion per pair, and the id stays short in traces.
    pub fn from_os() -> Self {
        let drawn = rand::rngs::OsRng.try_next_u32(); // determinism-ok: production only; the simulator seeds incarnations
        match drawn {
            Ok(id) => Incarnation(id),
            // No entropy (a sandbox without getrandom): fall back to the wall
            // clock's nanoseconds, which still differ between two starts.
            Err(_) => {
                #[allow(clippy::disallowed_methods)] // production-only fallback
                let now = std::time::SystemTime::now(); // determinism-ok: production only, no entropy
                let nanos = now
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.subsec_nanos() ^ (d.as_secs() as u32));
                Incarnation(nanos)
            }
        }
    }

    /// The next incarnation from a seeded RNG (the simulator's).
    pub fn from_rng(rng: &mut impl Rng) -> Self {
        Incarnation(rng.random())
    }
}

impl fmt::Display for Incarnation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08x}", self.0)
    }
}

/// The holder id of `node`'s process `incarnation`: what leases and claims name.
pub fn holder_id(node: &str, incarnation: Incarnation) -> String {
    format!("{node}#{incarnation}")
}

/// The node name inside a holder id (everything before the last `#`; a holder id
/// without one is a bare node name).
pub fn node_of(holder: &str) -> &str {
    holder.rsplit_once('#').map_or(holder, |(node, _)| node)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn two_starts_of_one_node_hold_under_different_ids_and_share_the_node_name() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let a = holder_id("n1", Incarnation::from_rng(&mut rng));
        let b = holder_id("n1", Incarnation::from_rng(&mut rng));
        assert_ne!(a, b);
        assert_eq!(node_of(&a), "n1");
        assert_eq!(node_of(&b), "n1");
        assert_eq!(node_of("plain"), "plain");
        assert_ne!(Incarnation::from_os(), Incarnation::from_os());
    }
}
