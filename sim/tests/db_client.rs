//! The simulated database client under the network faults it exists for.

use std::sync::Arc;
use std::time::Duration;

use keel::clock::SharedClock;
use keel::storage::{LeaseStore, MemStorage, StorageError, Term};
use sim::run::history::History;
use sim::world::clock::{SimClock, EPOCH_UNIX_MS};
use sim::world::db::{self, remote_storage, RemoteStorage, DB_HOST, DB_PORT};
use sim::world::net::TurmoilNetwork;

fn sim_with_db(store: Arc<MemStorage>) -> turmoil::Sim<'static> {
    let mut sim = turmoil::Builder::new()
        .rng_seed(1)
        .epoch(SimClock::epoch())
        .min_message_latency(Duration::from_millis(20))
        .max_message_latency(Duration::from_millis(20))
        .build();
    sim.host(DB_HOST, move || {
        let store = store.clone();
        async move {
            db::serve(
                Arc::new(TurmoilNetwork),
                store,
                History::new(),
                db::DbFaults::new(0),
            )
            .await?;
            Ok(())
        }
    });
    sim
}

fn client() -> (RemoteStorage, SharedClock) {
    let clock: SharedClock = Arc::new(SimClock::new(0));
    let addr = format!("{DB_HOST}:{DB_PORT}");
    (
        remote_storage(
            Arc::new(TurmoilNetwork),
            addr,
            clock.clone(),
            Duration::from_secs(1),
        ),
        clock,
    )
}

/// Regression (found by the first sweeps of `stale_retries`): a call dropped by
/// a caller's deadline after its request was sent left the reply on the stream,
/// and the next call read it as its own answer.
#[test]
fn a_call_dropped_mid_exchange_does_not_hand_its_reply_to_the_next_call() {
    let store = Arc::new(MemStorage::with_clock(Arc::new(SimClock::new(0))));
    let mut sim = sim_with_db(store.clone());
    sim.client("node", async move {
        let (remote, _clock) = client();
        let ttl = Duration::from_secs(10);
        assert!(remote.get_lease("m").await?.is_none(), "connected");
        // Dropped after sending: the reply takes 40 ms round trip.
        let dropped = tokio::time::timeout(
            Duration::from_millis(5),
            remote.try_acquire("m", "node", ttl),
        )
        .await;
        assert!(dropped.is_err(), "the deadline fired first");
        tokio::time::sleep(Duration::from_millis(100)).await;
        let lease = remote
            .get_lease("m")
            .await?
            .expect("the dropped acquire was applied");
        let accepted = remote
            .maintenance_heartbeat("m", "node", lease.term)
            .await?;
        assert!(accepted, "the heartbeat got its own answer");
        Ok(())
    });
    sim.run().expect("sim");
    assert_eq!(store.lease("m").map(|l| l.term), Some(Term(1)));
}

/// A partition is `Unavailable` before the request leaves and `Ambiguous` after.
#[test]
fn partitions_surface_as_unavailable_or_ambiguous_and_the_client_recovers() {
    let store = Arc::new(MemStorage::with_clock(Arc::new(SimClock::new(0))));
    let mut sim = sim_with_db(store);
    sim.client("node", async move {
        let (remote, clock) = client();
        assert!(remote.get_lease("m").await?.is_none());
        // Cut the link after the request arrived (20 ms) and before its reply
        // does (40 ms): applied, but the caller cannot know.
        let call = remote.try_acquire("m", "node", Duration::from_secs(10));
        let cut = async {
            tokio::time::sleep(Duration::from_millis(30)).await;
            turmoil::partition("node", DB_HOST);
        };
        let (result, ()) = tokio::join!(call, cut);
        assert!(
            matches!(result, Err(StorageError::Ambiguous(_))),
            "{result:?}"
        );
        // No connection can be made while partitioned.
        let refused = remote.get_lease("m").await;
        assert!(
            matches!(refused, Err(StorageError::Unavailable(_))),
            "{refused:?}"
        );
        turmoil::repair("node", DB_HOST);
        let lease = remote.get_lease("m").await?;
        assert_eq!(
            lease.map(|l| l.term),
            Some(Term(1)),
            "the ambiguous acquire had been applied"
        );
        assert!(EPOCH_UNIX_MS < clock.now().as_millis());
        Ok(())
    });
    sim.run().expect("sim");
}
