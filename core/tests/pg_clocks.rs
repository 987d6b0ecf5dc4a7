//! Two nodes whose wall clocks are five minutes apart, on one PostgreSQL
//! schema, with the real runtime: neither takes the other's lease or rescues
//! the other's claim early, because the server's `now()` judges every stored
//! time (see "One clock judges" in `storage/mod.rs` and "Time" in
//! `storage/postgres/mod.rs`).
//!
//! Each node has its own `PostgresStorage` (no test clock: the server judges)
//! and its own [`OffsetClock`]. These tests run in real time, a few seconds
//! each, and only when `KEEL_PG_URL` is set; without it they say so and pass.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use keel::clock::{Clock, SharedClock, Sleep, SystemClock, Timestamp};
use keel::events::{Event, Observer};
use keel::jobs::{
    JobCtx, JobsConfig, Outcome, Runtime, RuntimeBuilder, RuntimeHandle, MAINTENANCE_LEASE,
};
use keel::leadership::ElectorConfig;
use keel::storage::{
    EnqueueRequest, JobId, JobState, JobStore, LeaseStore, PostgresOptions, PostgresStorage,
    SharedStorage, Term,
};
use serde_json::json;
use tokio::time::Instant;

/// How far apart the two nodes' wall clocks are.
const SKEW: Duration = Duration::from_secs(5 * 60);
/// Lease timing: a short TTL so three of them pass in a few seconds.
const LEASE_TTL: Duration = Duration::from_millis(800);
/// The longest any one expected event may take to show up.
const WAIT_MAX: Duration = Duration::from_secs(5);
/// The queue the worker node works.
const QUEUE: &str = "pgclk";

// ---------------------------------------------------------------- clocks

/// A node's clock: the machine's wall time moved by a fixed offset; monotonic
/// time and sleeps are tokio's, in real time.
#[derive(Debug)]
struct OffsetClock {
    offset_ms: i64,
}

impl OffsetClock {
    /// A clock `offset_ms` ahead of the machine's (behind when negative).
    fn shared(offset_ms: i64) -> SharedClock {
        Arc::new(OffsetClock { offset_ms })
    }
}

impl Clock for OffsetClock {
    fn now(&self) -> Timestamp {
        Timestamp(SystemClock::new().now().0 + self.offset_ms)
    }

    fn monotonic(&self) -> Instant {
        SystemClock::new().monotonic()
    }

    fn sleep(&self, d: Duration) -> Sleep {
        SystemClock::new().sleep(d)
    }
}

fn skew_ms() -> i64 {
    i64::try_from(SKEW.as_millis()).expect("fits")
}

// ---------------------------------------------------------------- events

/// Keeps one node's events with the (tokio) instant each was emitted at.
#[derive(Debug, Default)]
struct Recorder {
    events: Mutex<Vec<(Instant, Event)>>,
}

impl Observer for Recorder {
    fn record(&self, event: &Event) {
        self.lock().push((Instant::now(), event.clone()));
    }
}

impl Recorder {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(Instant, Event)>> {
        self.events.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every event matching `pred`, with its instant.
    fn all(&self, pred: impl Fn(&Event) -> bool) -> Vec<(Instant, Event)> {
        self.lock()
            .iter()
            .filter(|(_, e)| pred(e))
            .cloned()
            .collect()
    }

    /// The first event matching `pred`, waiting at most [`WAIT_MAX`]; panics
    /// with the history when none comes.
    async fn wait_for(&self, what: &str, pred: impl Fn(&Event) -> bool) -> (Instant, Event) {
        let deadline = Instant::now() + WAIT_MAX;
        loop {
            if let Some(hit) = self.all(&pred).into_iter().next() {
                return hit;
            }
            assert!(
                Instant::now() < deadline,
                "no {what} within {WAIT_MAX:?}; events: {:#?}",
                self.lock().iter().map(|(_, e)| e).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn term_won(e: &Event) -> Option<Term> {
    match e {
        Event::TermWon { term, .. } => Some(*term),
        _ => None,
    }
}

// ---------------------------------------------------------------- nodes

/// The server's URL, or `None` (and a note) to skip.
fn pg_url(test: &str) -> Option<String> {
    let url = std::env::var("KEEL_PG_URL").ok();
    if url.is_none() {
        eprintln!("SKIPPED {test}: KEEL_PG_URL not set");
    }
    url
}

/// One schema both nodes share, created fresh for a test and dropped after.
struct Cluster {
    url: String,
    schema: String,
}

impl Cluster {
    /// A fresh schema for `test` (dropped first if an earlier run left it), or
    /// `None` to skip.
    async fn new(test: &str, key: &str) -> Option<Self> {
        let url = pg_url(test)?;
        let schema = format!("keel_pgclk_{key}_{}", std::process::id());
        let cluster = Self { url, schema };
        cluster.drop_schema().await;
        Some(cluster)
    }

    /// A node's own connection to the shared schema. No test clock: every time
    /// it stores or compares is the server's.
    async fn storage(&self) -> Arc<PostgresStorage> {
        let options = PostgresOptions::new()
            .schema(&self.schema)
            .pool_size(4)
            .listen(false);
        Arc::new(
            PostgresStorage::connect_with(&self.url, options)
                .await
                .expect("connect"),
        )
    }

    async fn drop_schema(&self) {
        let (client, connection) = tokio_postgres::connect(&self.url, tokio_postgres::NoTls)
            .await
            .expect("admin connection");
        tokio::spawn(connection);
        client
            .batch_execute(&format!(
                "DROP SCHEMA IF EXISTS \"{}\" CASCADE",
                self.schema
            ))
            .await
            .expect("drop schema");
    }
}

/// One node: its storage connection, its clock, its events.
struct Node {
    storage: Arc<PostgresStorage>,
    clock: SharedClock,
    events: Arc<Recorder>,
}

impl Node {
    async fn new(cluster: &Cluster, offset_ms: i64) -> Self {
        Self {
            storage: cluster.storage().await,
            clock: OffsetClock::shared(offset_ms),
            events: Arc::new(Recorder::default()),
        }
    }

    /// A runtime for this node with short, valid timings.
    fn builder(&self, name: &str) -> RuntimeBuilder {
        let storage: SharedStorage = self.storage.clone();
        Runtime::builder(name, storage, self.clock.clone())
            .observer(self.events.clone())
            .elector_config(elector_config())
            .jobs_config(jobs_config())
            .rng_seed(7)
    }

    fn start(&self, builder: RuntimeBuilder) -> RuntimeHandle {
        builder.build().expect("valid").start().expect("started")
    }
}

/// A lease of [`LEASE_TTL`], renewed five times per TTL, trusted for 70% of it.
fn elector_config() -> ElectorConfig {
    let mut cfg = ElectorConfig::new(MAINTENANCE_LEASE, "set-by-the-runtime");
    cfg.lease_ttl = LEASE_TTL;
    cfg.renew_interval = Duration::from_millis(150);
    cfg.safety_margin = Duration::from_millis(250);
    cfg.acquire_interval = Duration::from_millis(100);
    cfg.resign_cooldown = LEASE_TTL;
    cfg
}

/// Claims judged stale after one second of silence, heartbeats ten times as
/// often, the rescuer every 100 ms.
fn jobs_config() -> JobsConfig {
    JobsConfig {
        heartbeat_interval: Duration::from_millis(100),
        claim_trust: Duration::from_millis(500),
        cancel_grace: Duration::from_millis(200),
        stale_threshold: Duration::from_secs(1),
        idle_poll: Duration::from_millis(100),
        claim_error_backoff: Duration::from_millis(100),
        supervisor_interval: Duration::from_millis(100),
        maintenance_interval: Duration::from_millis(100),
        ..JobsConfig::default()
    }
}

/// The setup is what it claims: the server's clock is the machine's (within
/// a minute), so a node five minutes off is five minutes off from the judge.
async fn assert_nodes_are_skewed(on_time: &Node, skewed: &Node, skew_ms: i64) {
    let server = on_time.storage.time().await.expect("server time");
    let machine = SystemClock::new().now();
    assert!(
        (server.0 - machine.0).abs() < 60_000,
        "the server's clock ({server}) is the machine's ({machine})"
    );
    let apart = skewed.clock.now().0 - on_time.clock.now().0;
    assert!(
        (apart - skew_ms).abs() < 1_000,
        "the nodes are {apart} ms apart"
    );
}

// ---------------------------------------------------------------- leases

/// `holder` (its clock at `holder_offset_ms`) wins the lease; `challenger`
/// (at `challenger_offset_ms`) starts and, over three TTLs and more, never
/// wins a term while the holder runs; once the holder shuts down, the
/// challenger takes over.
async fn live_lease_holds(test: &str, key: &str, holder_offset_ms: i64, challenger_offset_ms: i64) {
    let Some(cluster) = Cluster::new(test, key).await else {
        return;
    };
    let holder = Node::new(&cluster, holder_offset_ms).await;
    let challenger = Node::new(&cluster, challenger_offset_ms).await;
    let (on_time, skewed, skew) = if holder_offset_ms == 0 {
        (&holder, &challenger, challenger_offset_ms)
    } else {
        (&challenger, &holder, holder_offset_ms)
    };
    assert_nodes_are_skewed(on_time, skewed, skew).await;

    let holder_rt = holder.start(holder.builder("holder"));
    let (_, won) = holder
        .events
        .wait_for("TermWon on the holder", |e| term_won(e).is_some())
        .await;
    let held = term_won(&won).expect("a term");

    let challenger_rt = challenger.start(challenger.builder("challenger"));
    let watch_from = Instant::now();
    let watch = LEASE_TTL * 3 + LEASE_TTL / 2;
    while watch_from.elapsed() < watch {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let lease = challenger
            .storage
            .get_lease(MAINTENANCE_LEASE)
            .await
            .expect("get_lease")
            .expect("granted");
        assert_eq!(
            (lease.term, lease.holder.as_deref()),
            (held, Some(holder_rt.holder())),
            "the holder keeps its term"
        );
        // Stamped on the server's clock, whatever the holder's reads.
        let server = challenger.storage.time().await.expect("server time");
        let ahead = lease.expires_at.0 - server.0;
        assert!(
            (0..=i64::try_from(LEASE_TTL.as_millis()).expect("fits")).contains(&ahead),
            "the lease expires {ahead} ms after the server's now"
        );
    }
    let challenger_won = challenger.events.all(|e| term_won(e).is_some());
    assert!(
        challenger_won.is_empty(),
        "the challenger won a live lease: {challenger_won:?}"
    );
    let lost = holder.events.all(|e| matches!(e, Event::TermLost { .. }));
    assert!(lost.is_empty(), "the holder lost its term: {lost:?}");
    let renewals = holder
        .events
        .all(|e| matches!(e, Event::TermRenewed { term, .. } if *term == held))
        .into_iter()
        .filter(|(at, _)| *at >= watch_from)
        .count();
    assert!(
        renewals >= 6,
        "the holder kept renewing while challenged ({renewals} renewals)"
    );
    assert_eq!(holder_rt.maintenance_term(), Some(held));
    assert_eq!(challenger_rt.maintenance_term(), None);

    let report = holder_rt.shutdown(Duration::from_secs(2)).await;
    assert!(report.tasks.is_clean(), "{report:?}");
    let (_, won) = challenger
        .events
        .wait_for("TermWon on the challenger", |e| term_won(e).is_some())
        .await;
    let next = term_won(&won).expect("a term");
    assert!(next > held, "{next} follows {held}");
    let report = challenger_rt.shutdown(Duration::from_secs(2)).await;
    assert!(report.tasks.is_clean(), "{report:?}");
    cluster.drop_schema().await;
}

/// The promise, leases: the holder's clock is right, the challenger's
/// five minutes ahead, so on its clock the holder's lease ran out minutes ago.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_five_minutes_ahead_does_not_take_a_live_lease() {
    live_lease_holds(
        "a_node_five_minutes_ahead_does_not_take_a_live_lease",
        "lease_ahead",
        0,
        skew_ms(),
    )
    .await;
}

/// The other way round: the holder's clock is five minutes behind, so a lease
/// stamped on its clock would have run out minutes ago on everyone else's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_five_minutes_behind_keeps_its_live_lease() {
    live_lease_holds(
        "a_holder_five_minutes_behind_keeps_its_live_lease",
        "lease_behind",
        -skew_ms(),
        0,
    )
    .await;
}

// ---------------------------------------------------------------- claims

/// A leader (its clock at `leader_offset_ms`, running the rescuer) and a
/// worker (at `worker_offset_ms`) running one job for twice the stale
/// threshold, started and waited for up to the handler's start. `plant` may
/// switch bugs on in the leader's builder.
struct RescueSetup {
    cluster: Cluster,
    leader: Node,
    worker: Node,
    leader_rt: RuntimeHandle,
    worker_rt: RuntimeHandle,
    job: JobId,
    run_for: Duration,
}

impl RescueSetup {
    async fn start(
        test: &str,
        key: &str,
        leader_offset_ms: i64,
        worker_offset_ms: i64,
        plant: impl FnOnce(RuntimeBuilder) -> RuntimeBuilder,
    ) -> Option<Self> {
        let cluster = Cluster::new(test, key).await?;
        let leader = Node::new(&cluster, leader_offset_ms).await;
        let worker = Node::new(&cluster, worker_offset_ms).await;
        let (on_time, skewed, skew) = if leader_offset_ms == 0 {
            (&leader, &worker, worker_offset_ms)
        } else {
            (&worker, &leader, leader_offset_ms)
        };
        assert_nodes_are_skewed(on_time, skewed, skew).await;

        // The leader starts first, works no queue, and runs the rescuer.
        let leader_rt = leader.start(plant(leader.builder("leader")));
        leader
            .events
            .wait_for("TermWon on the leader", |e| term_won(e).is_some())
            .await;
        leader
            .events
            .wait_for(
                "a rescuer pass",
                |e| matches!(e, Event::LeaderActed { service, .. } if service == "rescuer"),
            )
            .await;

        let run_for = jobs_config().stale_threshold * 2;
        let worker_rt = worker.start(worker.builder("worker").queue(QUEUE, 1).handler(
            "slow",
            move |ctx: JobCtx, _payload| async move {
                tokio::select! {
                    biased;
                    () = ctx.cancel.wait() => Outcome::Failed("stopped".into()),
                    () = ctx.clock.sleep(run_for) => Outcome::Completed,
                }
            },
        ));
        let job = worker_rt
            .enqueue(EnqueueRequest::new("slow", json!({})).queue(QUEUE))
            .await
            .expect("enqueue")
            .id();
        worker
            .events
            .wait_for(
                "the handler's start",
                |e| matches!(e, Event::HandlerStarted { job: j, .. } if *j == job),
            )
            .await;
        Some(Self {
            cluster,
            leader,
            worker,
            leader_rt,
            worker_rt,
            job,
            run_for,
        })
    }

    /// Wait for the job to finish; its state and attempt.
    async fn finished(&self) -> (JobState, u32) {
        let deadline = Instant::now() + self.run_for + WAIT_MAX;
        loop {
            let row = self
                .worker
                .storage
                .get_job(self.job)
                .await
                .expect("get_job")
                .expect("row");
            if row.state.is_terminal() {
                return (row.state, row.attempt);
            }
            assert!(
                Instant::now() < deadline,
                "{} still {:?} at attempt {}",
                self.job,
                row.state,
                row.attempt
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn stop(self) {
        let report = self.worker_rt.shutdown(Duration::from_secs(2)).await;
        assert!(report.tasks.is_clean(), "{report:?}");
        let report = self.leader_rt.shutdown(Duration::from_secs(2)).await;
        assert!(report.tasks.is_clean(), "{report:?}");
        self.cluster.drop_schema().await;
    }
}

/// The worker's live claim outlasts the stale threshold twice over under a
/// rescuer that passes every 100 ms: the job completes on attempt 1, nothing
/// is rescued, and the leader led (and rescued) throughout.
async fn live_claim_is_not_rescued(
    test: &str,
    key: &str,
    leader_offset_ms: i64,
    worker_offset_ms: i64,
) {
    let Some(setup) =
        RescueSetup::start(test, key, leader_offset_ms, worker_offset_ms, |b| b).await
    else {
        return;
    };
    let job = setup.job;
    assert_eq!(setup.finished().await, (JobState::Completed, 1));

    let rescued = setup
        .leader
        .events
        .all(|e| matches!(e, Event::JobRescued { .. }));
    assert!(rescued.is_empty(), "a live claim was rescued: {rescued:?}");
    let worker = &setup.worker.events;
    let lost = worker.all(|e| matches!(e, Event::ClaimLost { .. }));
    assert!(lost.is_empty(), "the worker lost its claim: {lost:?}");
    let started = worker.all(|e| matches!(e, Event::HandlerStarted { job: j, .. } if *j == job));
    let ended = worker.all(|e| matches!(e, Event::HandlerEnded { job: j, .. } if *j == job));
    assert_eq!(started.len(), 1, "one run: {started:?}");
    assert!(
        matches!(&ended[..], [(_, Event::HandlerEnded { attempt: 1, outcome, .. })] if outcome == "completed"),
        "{ended:?}"
    );
    let (from, to) = (started[0].0, ended[0].0);
    assert!(
        to - from >= setup.run_for,
        "the handler ran {:?}, past the stale threshold twice",
        to - from
    );
    // The rescuer kept looking while the claim was older than the threshold.
    let passes = setup
        .leader
        .events
        .all(|e| matches!(e, Event::LeaderActed { service, .. } if service == "rescuer"))
        .into_iter()
        .filter(|(at, _)| *at >= from + jobs_config().stale_threshold && *at <= to)
        .count();
    assert!(
        passes >= 3,
        "the rescuer passed {passes} times after the claim's first second"
    );
    assert!(setup.leader_rt.maintenance_term().is_some(), "still leads");
    setup.stop().await;
}

/// The promise, claims: the leader's clock (and so its rescuer's) runs
/// five minutes ahead of the worker's; on its clock every heartbeat the worker
/// sends is minutes old.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_five_minutes_ahead_does_not_rescue_a_live_claim() {
    live_claim_is_not_rescued(
        "a_leader_five_minutes_ahead_does_not_rescue_a_live_claim",
        "rescue_ahead",
        skew_ms(),
        0,
    )
    .await;
}

/// The other way round: the worker's clock is five minutes behind, so
/// heartbeats stamped on its clock would look minutes old to the leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_five_minutes_behind_keeps_its_live_claim() {
    live_claim_is_not_rescued(
        "a_worker_five_minutes_behind_keeps_its_live_claim",
        "rescue_behind",
        0,
        -skew_ms(),
    )
    .await;
}

/// The control: with planted `rescue_on_caller_clock` (the rescuer judging
/// staleness on its own clock, as keel did before), the same leader five
/// minutes ahead rescues the worker's claim well inside the stale threshold,
/// while the worker heartbeats it. So the tests above would catch the old
/// behaviour.
#[cfg(feature = "planted-bugs")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planted_rescue_on_caller_clock_rescues_a_live_claim_early() {
    use keel::planted::{Bug, PlantedBugs};

    let Some(setup) = RescueSetup::start(
        "planted_rescue_on_caller_clock_rescues_a_live_claim_early",
        "rescue_plant",
        skew_ms(),
        0,
        |b| b.plants(PlantedBugs::only(Bug::RescueOnCallerClock)),
    )
    .await
    else {
        return;
    };
    let job = setup.job;
    let (rescued_at, rescued) = setup
        .leader
        .events
        .wait_for(
            "the planted early rescue",
            |e| matches!(e, Event::JobRescued { job: j, .. } if *j == job),
        )
        .await;
    assert!(
        matches!(rescued, Event::JobRescued { attempt: 1, .. }),
        "{rescued:?}"
    );
    let (claimed_at, _) = setup
        .worker
        .events
        .wait_for(
            "the claim",
            |e| matches!(e, Event::JobClaimed { job: j, attempt: 1 } if *j == job),
        )
        .await;
    let age = rescued_at - claimed_at;
    assert!(
        age < jobs_config().stale_threshold,
        "rescued {age:?} after the claim, inside the stale threshold"
    );
    setup
        .worker
        .events
        .wait_for(
            "the worker hearing its claim is lost",
            |e| matches!(e, Event::ClaimLost { job: j, attempt: 1 } if *j == job),
        )
        .await;
    let completed_first = setup.worker.events.all(|e| {
        matches!(e, Event::HandlerEnded { job: j, attempt: 1, outcome } if *j == job && outcome == "completed")
    });
    assert!(completed_first.is_empty(), "{completed_first:?}");
    setup.stop().await;
}
