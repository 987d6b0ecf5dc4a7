//! The engine's own tests against a live server: connecting, migrations,
//! concurrency, NOTIFY. Its job and lease semantics are held to the model by the
//! conformance suite and the model test in `tests/`. Each test works in a schema
//! of its own and drops it at the end. Without `KEEL_PG_URL` they say so and pass;
//! the cross-engine conformance suite reports those skips properly.
//!
//! Tests that move time hand the store a [`ManualClock`] through
//! [`PostgresOptions::clock`]; the rest judge on the server's clock.

use std::time::Duration;

use serde_json::json;

use super::*;
use crate::clock::{Clock, ManualClock, SystemClock, Timestamp};
use crate::storage::ops::{apply, Op, Reply};
use crate::storage::{
    Claim, EffectResult, EnqueueOutcome, EnqueueRequest, Finalize, FinalizeResult, Job, JobId,
    JobState, JobStore, Lease, LeaseStore, MemStorage, Term,
};

const T0: Timestamp = Timestamp(1_000_000);
const TTL: Duration = Duration::from_secs(10);

fn pg_url(test: &str) -> Option<String> {
    let url = std::env::var("KEEL_PG_URL").ok();
    if url.is_none() {
        eprintln!("SKIPPED {test}: KEEL_PG_URL not set");
    }
    url
}

fn schema_for(test: &str) -> String {
    format!("keel_test_{test}_{}", std::process::id())
}

/// A plain connection for poking at the schema behind the storage's back.
async fn admin(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .expect("admin connection");
    tokio::spawn(connection);
    client
}

async fn drop_schema(url: &str, schema: &str) {
    admin(url)
        .await
        .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
        .await
        .expect("drop schema");
}

/// The server's URL and an empty schema name for `test` (dropped if an earlier
/// run left it), or `None` to skip.
async fn empty_schema(test: &str) -> Option<(String, String)> {
    let url = pg_url(test)?;
    let schema = schema_for(test);
    drop_schema(&url, &schema).await;
    Some((url, schema))
}

/// A storage on a fresh schema named after `test`, or `None` to skip.
async fn fresh(test: &str) -> Option<PostgresStorage> {
    fresh_with(test, |options| options).await
}

/// [`fresh`], with `tweak` applied to its options.
async fn fresh_with(
    test: &str,
    tweak: impl FnOnce(PostgresOptions) -> PostgresOptions,
) -> Option<PostgresStorage> {
    let (url, schema) = empty_schema(test).await?;
    let options = tweak(PostgresOptions::new().schema(schema).listen(false));
    Some(
        PostgresStorage::connect_with(&url, options)
            .await
            .expect("connect"),
    )
}

fn req() -> EnqueueRequest {
    EnqueueRequest::new("email", json!({"to": "a@b"})).queue("mail")
}

async fn claim_one(s: &PostgresStorage, owner: &str) -> Job {
    let jobs = s.claim("mail", owner, 1).await.expect("claim");
    assert_eq!(jobs.len(), 1, "one job claimed");
    jobs.into_iter().next().expect("one")
}

#[tokio::test]
async fn migrations_are_idempotent_even_when_processes_connect_at_once() {
    let Some((url, schema)) = empty_schema("migrations_are_idempotent").await else {
        return;
    };
    let options = || PostgresOptions::new().schema(&schema).listen(false);
    let (a, b, c) = tokio::join!(
        PostgresStorage::connect_with(&url, options()),
        PostgresStorage::connect_with(&url, options()),
        PostgresStorage::connect_with(&url, options()),
    );
    let a = a.expect("a");
    b.expect("b");
    c.expect("c");
    let id = a.enqueue(req()).await.expect("enqueue").id();
    let again = PostgresStorage::connect_with(&url, options())
        .await
        .expect("reconnect");
    assert_eq!(
        again.get_job(id).await.expect("get").map(|j| j.id),
        Some(id),
        "a second connect keeps the data"
    );
    let versions = admin(&url)
        .await
        .query(
            &format!("SELECT version FROM \"{schema}\".keel_schema_version ORDER BY version"),
            &[],
        )
        .await
        .expect("versions");
    let versions: Vec<i64> = versions.iter().map(|r| r.get(0)).collect();
    assert_eq!(
        versions,
        (1..=schema::version_supported()).collect::<Vec<_>>()
    );
    again.drop_schema().await.expect("drop");
}

/// A schema left at version 1 (a store made by an older Keel) upgrades on
/// connect: its jobs and their keys survive, keys stay unique, rows without a
/// key no longer enter the unique index (V2), and effects have no foreign key (V3).
#[tokio::test]
async fn a_version_1_schema_upgrades_and_keeps_unique_keys() {
    let Some((url, schema)) = empty_schema("upgrade_from_v1").await else {
        return;
    };
    let pg = admin(&url).await;
    pg.batch_execute(&format!(
        "CREATE SCHEMA \"{schema}\"; SET search_path TO \"{schema}\"; \
         CREATE TABLE keel_schema_version (version BIGINT PRIMARY KEY); \
         INSERT INTO keel_schema_version VALUES (1); {}",
        schema::MIGRATIONS[0]
    ))
    .await
    .expect("a version 1 schema");
    pg.batch_execute(
        "INSERT INTO keel_jobs VALUES (7, 'email', 'mail', '{}', 0, 'available', 0, 3, \
         0, 0, NULL, NULL, false, NULL, NULL, '[]', 'k'::bytea); \
         UPDATE keel_counters SET value = 7 WHERE name = 'job_id'",
    )
    .await
    .expect("a keyed job written by version 1");
    let options = PostgresOptions::new().schema(&schema).listen(false);
    let s = PostgresStorage::connect_with(&url, options)
        .await
        .expect("upgrade on connect");
    let old = JobId(7);
    assert_eq!(
        s.enqueue(req().unique_key("k")).await.expect("enqueue"),
        EnqueueOutcome::Duplicate(old),
        "a key written before the upgrade still dedupes"
    );
    let fresh = s.enqueue(req().unique_key("n")).await.expect("enqueue");
    assert!(matches!(fresh, EnqueueOutcome::Inserted(_)), "{fresh:?}");
    assert_eq!(
        s.enqueue(req().unique_key("n")).await.expect("enqueue"),
        EnqueueOutcome::Duplicate(fresh.id()),
        "a key written after the upgrade dedupes"
    );
    s.enqueue(req()).await.expect("keyless");
    s.enqueue(req()).await.expect("keyless");
    let entries: i64 = pg
        .query_one(&format!("SELECT count(*) FROM \"{schema}\".keel_jobs"), &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(entries, 4, "the old job and three new ones");
    let def: String = pg
        .query_one(
            "SELECT indexdef FROM pg_indexes WHERE schemaname = $1 AND indexname = $2",
            &[&schema, &"keel_jobs_unique_key"],
        )
        .await
        .expect("the partial unique index")
        .get(0);
    assert!(
        def.contains("UNIQUE") && def.contains("WHERE (unique_key IS NOT NULL)"),
        "{def}"
    );
    let foreign_keys: i64 = pg
        .query_one(
            "SELECT count(*) FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace \
             WHERE n.nspname = $1 AND c.contype = 'f'",
            &[&schema],
        )
        .await
        .expect("constraints")
        .get(0);
    assert_eq!(foreign_keys, 0, "V3 dropped the effects' foreign key");
    s.drop_schema().await.expect("drop");
}

#[tokio::test]
async fn a_newer_schema_version_is_refused() {
    let test = "schema_too_new";
    let Some(s) = fresh(test).await else { return };
    let Some(url) = pg_url(test) else { return };
    admin(&url)
        .await
        .execute(
            &format!(
                "INSERT INTO \"{}\".keel_schema_version VALUES (99)",
                s.schema()
            ),
            &[],
        )
        .await
        .expect("bump");
    let options = PostgresOptions::new().schema(s.schema()).listen(false);
    let err = PostgresStorage::connect_with(&url, options)
        .await
        .expect_err("too new");
    assert!(
        matches!(err, OpenError::SchemaTooNew { found: 99, supported, .. }
            if supported == schema::version_supported()),
        "{err}"
    );
    s.drop_schema().await.expect("drop");
}

#[tokio::test]
async fn tables_keel_did_not_make_are_not_keel() {
    let test = "not_keel";
    let Some(url) = pg_url(test) else { return };
    let schema = schema_for(test);
    let options = || PostgresOptions::new().schema(&schema).listen(false);
    let client = admin(&url).await;
    for tables in [
        "CREATE TABLE keel_jobs (x INT)",
        "CREATE TABLE keel_schema_version (v TEXT)",
        "CREATE TABLE keel_schema_version (version BIGINT); CREATE TABLE keel_jobs (x INT)",
    ] {
        drop_schema(&url, &schema).await;
        client
            .batch_execute(&format!(
                "CREATE SCHEMA \"{schema}\"; SET search_path TO \"{schema}\"; {tables}"
            ))
            .await
            .expect("foreign tables");
        let err = PostgresStorage::connect_with(&url, options())
            .await
            .expect_err("not keel");
        assert!(matches!(err, OpenError::NotKeel { .. }), "{tables}: {err}");
    }
    drop_schema(&url, &schema).await;
    // Tables of other applications in the same schema are fine.
    client
        .batch_execute(&format!(
            "CREATE SCHEMA \"{schema}\"; CREATE TABLE \"{schema}\".users (id INT)"
        ))
        .await
        .expect("other tables");
    let s = PostgresStorage::connect_with(&url, options())
        .await
        .expect("a schema with non-keel tables");
    s.drop_schema().await.expect("drop");
}

#[tokio::test]
async fn bad_settings_name_the_setting() {
    let err = PostgresStorage::connect("postgres://host:notaport/db")
        .await
        .expect_err("bad url");
    assert!(
        matches!(err, OpenError::InvalidConfig { what: "url", .. }),
        "{err}"
    );
    for schema in ["", "1abc", "a-b", "a\"b", &"x".repeat(64)] {
        let options = PostgresOptions::new().schema(schema);
        let err = PostgresStorage::connect_with("postgres://localhost/db", options)
            .await
            .expect_err("bad schema");
        assert!(
            matches!(err, OpenError::InvalidConfig { what: "schema", .. }),
            "{schema:?}: {err}"
        );
    }
    let options = PostgresOptions::new().pool_size(0);
    let err = PostgresStorage::connect_with("postgres://localhost/db", options)
        .await
        .expect_err("no pool");
    assert!(matches!(
        err,
        OpenError::InvalidConfig {
            what: "pool_size",
            ..
        }
    ));
}

#[tokio::test]
async fn an_unreachable_server_is_named_without_its_password() {
    let err = PostgresStorage::connect("postgres://keel:s3cret@127.0.0.1:1/test")
        .await
        .expect_err("nothing listens on port 1");
    let OpenError::Unreachable { target, reason } = &err else {
        panic!("not unreachable: {err}")
    };
    assert_eq!(target, "postgres://keel@127.0.0.1:1/test");
    assert!(!err.to_string().contains("s3cret"), "{err}");
    assert!(!reason.is_empty());
}

#[test]
fn passwords_are_removed_from_every_url_form() {
    for (url, redacted) in [
        ("postgres://u:pw@h:5/db", "postgres://u@h:5/db"),
        (
            "postgresql://u:p@w@h/db?sslmode=disable",
            "postgresql://u@h/db?sslmode=disable",
        ),
        (
            "postgres://h/db?password=pw&user=u",
            "postgres://h/db?user=u",
        ),
        ("postgres://u@h", "postgres://u@h"),
        ("host=h password=pw user=u", "host=h user=u"),
        ("host=h password='p w\\' x' user=u", "host=h user=u"),
    ] {
        assert_eq!(redact_password(url), redacted, "{url}");
    }
}

#[tokio::test]
async fn a_missing_database_is_unreachable() {
    let test = "missing_database";
    let Some(url) = pg_url(test) else { return };
    let Some((base, _)) = url.rsplit_once('/') else {
        panic!("KEEL_PG_URL names a database: {url}")
    };
    let err = PostgresStorage::connect(&format!("{base}/keel_no_such_db"))
        .await
        .expect_err("no such database");
    assert!(
        matches!(&err, OpenError::Unreachable { reason, .. } if reason.contains("keel_no_such_db")),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_acquirers_of_a_new_lease_grant_it_once() {
    let Some(s) = fresh("lease_race").await else {
        return;
    };
    let s = Arc::new(s);
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(
                async move { s.try_acquire("m", &format!("n{i}"), TTL).await.expect("ok") },
            )
        })
        .collect();
    let mut granted = Vec::new();
    for task in tasks {
        granted.extend(task.await.expect("task"));
    }
    assert_eq!(granted.len(), 1, "{granted:?}");
    assert_eq!(granted[0].term, Term(1));
    s.drop_schema().await.expect("drop");
}

#[tokio::test]
async fn strings_the_model_accepts_round_trip_including_nul() {
    let Some(s) = fresh("nul").await else {
        return;
    };
    let payload = json!({"s": "a\u{0}b", "n": 1.5, "big": u64::MAX, "z": [null, true]});
    let id = s
        .enqueue(
            EnqueueRequest::new("k", payload.clone())
                .queue("mail")
                .unique_key("u\0k"),
        )
        .await
        .expect("ok")
        .id();
    let job = claim_one(&s, "w\0x").await;
    assert_eq!(
        (
            &job.payload,
            job.owner.as_deref(),
            job.unique_key.as_deref()
        ),
        (&payload, Some("w\0x"), Some("u\0k"))
    );
    assert_eq!(
        s.enqueue(req().unique_key("u\0k")).await.expect("ok"),
        EnqueueOutcome::Duplicate(id)
    );
    let lease = s
        .try_acquire("l\0", "h\0", TTL)
        .await
        .expect("ok")
        .expect("granted");
    assert_eq!(s.get_lease("l\0").await.expect("ok"), Some(lease));
    assert_eq!(s.get_effect(id, "k\0").await.expect("ok"), None);
    assert_eq!(s.get_queue("q\0").await.expect("ok"), None);
    s.drop_schema().await.expect("drop");
}

#[tokio::test]
async fn an_enqueue_elsewhere_raises_the_signal() {
    let test = "signal";
    let Some(quiet) = fresh(test).await else {
        return;
    };
    let Some(url) = pg_url(test) else { return };
    assert!(quiet.enqueue_signal().is_none(), "listen(false)");
    let options = PostgresOptions::new().schema(quiet.schema());
    let listening = PostgresStorage::connect_with(&url, options)
        .await
        .expect("connect");
    let signal = listening.enqueue_signal().expect("listening");
    for i in 0..3 {
        let notified = signal.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if i == 2 {
            quiet.enqueue_batch(vec![req(), req()]).await.expect("ok");
        } else {
            quiet.enqueue(req()).await.expect("ok");
        }
        tokio::time::timeout(Duration::from_secs(10), notified)
            .await
            .expect("signalled");
    }
    let listen = format!("LISTEN \"{}\"", listening.channel);
    drop(listening);
    let admin = admin(&url).await;
    let stopped = async {
        loop {
            let rows = admin
                .query(
                    "SELECT 1 FROM pg_stat_activity WHERE query = $1",
                    &[&listen],
                )
                .await
                .expect("activity");
            if rows.is_empty() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), stopped)
        .await
        .expect("dropping the storage stops its listener");
    quiet.drop_schema().await.expect("drop");
}

/// The job ids every task returns, sorted; fails if any job shows up twice
/// (it was `what` by two workers).
async fn each_once(tasks: Vec<tokio::task::JoinHandle<Vec<JobId>>>, what: &str) -> Vec<JobId> {
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.expect("task"));
    }
    all.sort_unstable();
    let before = all.len();
    all.dedup();
    assert_eq!(before, all.len(), "a job was {what} twice");
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_claimers_never_share_a_job() {
    const JOBS: usize = 120;
    let Some(s) = fresh("skip_locked").await else {
        return;
    };
    let reqs = (0..JOBS).map(|i| req().priority((i % 3) as u8)).collect();
    s.enqueue_batch(reqs).await.expect("ok");
    let s = Arc::new(s);
    let tasks: Vec<_> = (0..8)
        .map(|w| {
            let s = s.clone();
            tokio::spawn(async move {
                let owner = format!("w{w}");
                let mut mine = Vec::new();
                loop {
                    let jobs = s.claim("mail", &owner, 3).await.expect("claim");
                    if jobs.is_empty() {
                        return mine;
                    }
                    for job in jobs {
                        assert_eq!(job.owner.as_deref(), Some(owner.as_str()));
                        mine.push(job.id);
                    }
                }
            })
        })
        .collect();
    let all = each_once(tasks, "claimed").await;
    assert_eq!(all.len(), JOBS, "every job was claimed");
    let counts = s.count_by_state().await.expect("ok");
    assert_eq!(counts.get(JobState::Running), JOBS as u64);
    s.drop_schema().await.expect("drop");
}

/// Concurrent workers that complete a job and claim the next in one call go
/// through shared batches: every completion applies to its own claim, every job
/// is claimed by one worker and completed once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_completions_and_claims_keep_every_call_its_own() {
    const JOBS: usize = 200;
    let Some(s) = fresh("batched").await else {
        return;
    };
    let reqs = (0..JOBS).map(|i| req().priority((i % 4) as u8)).collect();
    s.enqueue_batch(reqs).await.expect("ok");
    let s = Arc::new(s);
    let tasks: Vec<_> = (0..12)
        .map(|w| {
            let s = s.clone();
            tokio::spawn(async move {
                let owner = format!("w{w}");
                let mut done = Vec::new();
                let mut held = s.claim("mail", &owner, 1).await.expect("claim");
                while let Some(job) = held.pop() {
                    assert_eq!(job.owner.as_deref(), Some(owner.as_str()));
                    let claim = Claim {
                        job: job.id,
                        attempt: job.attempt,
                    };
                    let (result, next) = s
                        .finalize_and_claim(claim, &owner, Finalize::Completed, "mail", 1)
                        .await
                        .expect("finalize and claim");
                    assert_eq!(result, FinalizeResult::Applied);
                    assert!(next.len() <= 1, "a limit of one: {next:?}");
                    done.push(job.id);
                    held = next;
                }
                done
            })
        })
        .collect();
    let all = each_once(tasks, "completed").await;
    assert_eq!(all.len(), JOBS, "every job was completed");
    let counts = s.count_by_state().await.expect("ok");
    assert_eq!(counts.get(JobState::Completed), JOBS as u64);
    s.drop_schema().await.expect("drop");
}

/// `delete_completed`: a completion deletes the row and its effects, through
/// both the lone and the combined call; a repeat finds nothing (Stale); only a
/// live claim's completion deletes; other outcomes keep their rows; a completed
/// job's unique key is free again.
#[tokio::test]
async fn delete_completed_deletes_only_what_a_live_claim_completes() {
    let Some(s) = fresh_with("delete_completed", |o| o.delete_completed(true)).await else {
        return;
    };
    let reqs = vec![req().unique_key("k"), req(), req(), req()];
    s.enqueue_batch(reqs).await.expect("enqueue");
    let held = s.claim("mail", "w", 4).await.expect("claim");
    let claims: Vec<Claim> = held
        .iter()
        .map(|j| Claim {
            job: j.id,
            attempt: j.attempt,
        })
        .collect();
    let [a, b, c, d] = claims[..] else {
        panic!("four claimed: {held:?}")
    };
    let applied = s.apply_effect(a, "w", "sent", json!(1)).await;
    assert_eq!(applied.expect("effect"), EffectResult::Applied);

    let done = s.finalize(a, "w", Finalize::Completed).await;
    assert_eq!(done.expect("finalize"), FinalizeResult::Applied);
    assert_eq!(s.get_job(a.job).await.expect("get"), None, "deleted");
    assert_eq!(s.get_effect(a.job, "sent").await.expect("get"), None);
    let again = s.finalize(a, "w", Finalize::Completed).await;
    assert_eq!(again.expect("finalize"), FinalizeResult::Stale);

    let (done, next) = s
        .finalize_and_claim(b, "w", Finalize::Completed, "mail", 1)
        .await
        .expect("finalize and claim");
    assert_eq!((done, next.len()), (FinalizeResult::Applied, 0));
    assert_eq!(s.get_job(b.job).await.expect("get"), None, "deleted");

    let other = s.finalize(c, "x", Finalize::Completed).await;
    assert_eq!(other.expect("finalize"), FinalizeResult::Stale, "not x's");
    let kept = s.get_job(c.job).await.expect("get").map(|j| j.state);
    assert_eq!(
        kept,
        Some(JobState::Running),
        "another owner deletes nothing"
    );

    let reason = "no".to_owned();
    let cancelled = s.finalize(d, "w", Finalize::Cancel { reason }).await;
    assert_eq!(cancelled.expect("finalize"), FinalizeResult::Applied);
    let kept = s.get_job(d.job).await.expect("get").map(|j| j.state);
    assert_eq!(kept, Some(JobState::Cancelled), "only completions delete");

    let reused = s.enqueue(req().unique_key("k")).await;
    assert!(
        matches!(reused.expect("enqueue"), EnqueueOutcome::Inserted(id) if id != a.job),
        "a completed job's key is free again"
    );
    s.drop_schema().await.expect("drop");
}

#[tokio::test]
async fn the_listener_reconnects_when_its_connection_is_killed() {
    let test = "listener_reconnect";
    let Some(quiet) = fresh(test).await else {
        return;
    };
    let Some(url) = pg_url(test) else { return };
    let options = PostgresOptions::new().schema(quiet.schema());
    let listening = PostgresStorage::connect_with(&url, options)
        .await
        .expect("connect");
    let signal = listening.enqueue_signal().expect("listening");
    let killed = admin(&url)
        .await
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query = $1",
            &[&format!("LISTEN \"{}\"", listening.channel)],
        )
        .await
        .expect("terminate");
    assert_eq!(killed.len(), 1, "found the listener's backend");
    // Enqueue until the reconnected listener hears one: the first few may land
    // while it is away (the wake-up after reconnecting covers those too).
    let heard = async {
        loop {
            let notified = signal.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            quiet.enqueue(req()).await.expect("ok");
            if tokio::time::timeout(Duration::from_millis(200), notified)
                .await
                .is_ok()
            {
                return;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), heard)
        .await
        .expect("the listener came back");
    drop(listening);
    quiet.drop_schema().await.expect("drop");
}

#[tokio::test]
async fn a_mixed_case_schema_keeps_its_case() {
    let test = "MixedCase";
    let Some(s) = fresh(test).await else {
        return;
    };
    assert!(s.schema().starts_with("keel_test_MixedCase_"));
    let id = s.enqueue(req()).await.expect("ok").id();
    assert_eq!(s.get_job(id).await.expect("ok").map(|j| j.id), Some(id));
    s.drop_schema().await.expect("drop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_worker_wakes_at_once_for_a_job_another_process_enqueued() {
    use crate::jobs::{JobsConfig, Outcome, Runtime};
    let test = "runtime_wake";
    let Some(producer) = fresh(test).await else {
        return;
    };
    let Some(url) = pg_url(test) else { return };
    let options = PostgresOptions::new().schema(producer.schema());
    let consumer = PostgresStorage::connect_with(&url, options)
        .await
        .expect("connect");
    // A poll this long would fail the test's deadline: only the signal can wake it.
    let idle_poll = Duration::from_secs(60);
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
    let runtime = Runtime::builder(
        "consumer",
        std::sync::Arc::new(consumer),
        std::sync::Arc::new(SystemClock),
    )
    .queue("mail", 1)
    .handler("email", move |_ctx, _payload| {
        let done = done_tx.clone();
        async move {
            let _ = done.send(());
            Outcome::Completed
        }
    })
    .jobs_config(JobsConfig {
        idle_poll,
        ..JobsConfig::default()
    })
    .build()
    .expect("build")
    .start()
    .expect("start");
    // Let the worker find the queue empty and go idle.
    tokio::time::sleep(Duration::from_millis(500)).await;
    producer.enqueue(req()).await.expect("enqueue");
    tokio::time::timeout(Duration::from_secs(5), done_rx.recv())
        .await
        .expect("woken by NOTIFY, not by the 60 s poll")
        .expect("handler ran");
    runtime.shutdown(Duration::from_secs(5)).await;
    producer.drop_schema().await.expect("drop");
}

/// Without a test clock the server's clock judges: callers send durations
/// only, so a second process cannot take a live lease however it calls, a
/// renewal cannot shorten a grant, and every stored time is the server's,
/// which (the server is local) is close to this machine's.
#[tokio::test]
async fn without_a_test_clock_the_servers_clock_judges() {
    let test = "server_clock";
    let Some(s) = fresh(test).await else { return };
    let Some(url) = pg_url(test) else { return };
    let options = PostgresOptions::new().schema(s.schema()).listen(false);
    let other = PostgresStorage::connect_with(&url, options)
        .await
        .expect("a second caller");
    let slack = Duration::from_secs(5);
    let near = |t: Timestamp, from: Timestamp, to: Timestamp| {
        from.minus(slack) <= t && t <= to.plus(slack)
    };

    let before = SystemClock.now();
    let server = s.time().await.expect("time");
    let after = SystemClock.now();
    assert!(
        near(server, before, after),
        "{server} not in {before}..{after}"
    );

    let ttl = Duration::from_secs(60);
    let granted = s
        .try_acquire("m", "a", ttl)
        .await
        .expect("acquire")
        .expect("granted");
    let after = SystemClock.now();
    assert!(
        near(granted.expires_at, before.plus(ttl), after.plus(ttl)),
        "expires {} = the server's now + ttl",
        granted.expires_at
    );
    for ttl in [ttl, Duration::ZERO] {
        assert_eq!(
            other.try_acquire("m", "b", ttl).await.expect("acquire"),
            None,
            "a's grant is live on the server's clock"
        );
    }
    assert!(s
        .renew("m", "a", granted.term, Duration::ZERO)
        .await
        .expect("renew"));
    let lease = other.get_lease("m").await.expect("get").expect("kept");
    assert_eq!(lease.expires_at, granted.expires_at, "never shortened");

    // Jobs: enqueued, claimed and delayed on the server's clock.
    let id = s.enqueue(req()).await.expect("enqueue").id();
    let job = claim_one(&other, "w").await;
    let after = SystemClock.now();
    assert_eq!(job.id, id, "due at once");
    assert!(near(job.created_at, before, after), "{}", job.created_at);
    let beat = job.heartbeat_at.expect("claimed");
    assert!(near(beat, before, after), "{beat}");
    let claim = Claim {
        job: id,
        attempt: job.attempt,
    };
    let retry = Finalize::Retry {
        error: "boom".into(),
        delay: Duration::from_secs(60),
    };
    let done = other.finalize(claim, "w", retry).await.expect("finalize");
    assert_eq!(done, FinalizeResult::Applied);
    let job = s.get_job(id).await.expect("get").expect("kept");
    assert!(
        job.state == JobState::Retryable && job.scheduled_at >= beat.plus(Duration::from_secs(60)),
        "{job:?}"
    );
    assert_eq!(s.promote_due().await.expect("promote"), 0, "not due yet");
    s.drop_schema().await.expect("drop");
}

/// One step of [`a_test_clock_judges_every_call_as_the_model_does`]. A test
/// script, built once: the size gap between variants costs nothing.
#[allow(clippy::large_enum_variant)]
enum Step {
    Advance(Duration),
    Set(Timestamp),
    Call(Op),
}

/// With [`PostgresOptions::clock`], every call is judged at the test clock's
/// time: reply by reply the same as [`MemStorage`] on the same clock, through
/// leases (expiry, takeover, renewals that never shorten), due times, retry and
/// snooze delays, the batched claim and completion, rescue, cleanup and
/// periodic slots.
#[tokio::test]
async fn a_test_clock_judges_every_call_as_the_model_does() {
    use Step::{Advance, Call, Set};
    let clock = Arc::new(ManualClock::new(T0));
    let Some(s) = fresh_with("test_clock", |o| o.clock(clock.clone())).await else {
        return;
    };
    let model = MemStorage::with_clock(clock.clone());
    let secs = Duration::from_secs;
    let ms = |d: Duration| u64::try_from(d.as_millis()).expect("small");
    let claim = |job: u64, attempt: u32| Claim {
        job: JobId(job),
        attempt,
    };
    let lease = |holder: &str, ttl: Duration| Op::TryAcquire {
        name: "m".into(),
        holder: holder.into(),
        ttl_ms: ms(ttl),
        known: None,
    };
    let finalize = |job: u64, attempt: u32, outcome: Finalize| Op::Finalize {
        claim: claim(job, attempt),
        owner: "w".into(),
        outcome,
    };
    let get = |job: u64| Op::GetJob { job: JobId(job) };
    let claim_mail = |limit: u32| Op::Claim {
        queue: "mail".into(),
        owner: "w".into(),
        limit,
    };
    let periodic = Op::FirePeriodic {
        name: "p".into(),
        slot: T0,
        schedule: "every 60s".into(),
        lease: "m".into(),
        holder: "b".into(),
        term: Term(2),
        req: req(),
    };
    let script = vec![
        Call(Op::Time),
        // Leases: expiry and takeover; a renewal never shortens.
        Call(lease("a", TTL)),
        Advance(TTL - Duration::from_millis(1)),
        Call(lease("b", TTL)),
        Set(T0.minus(secs(60))),
        Call(Op::Renew {
            name: "m".into(),
            holder: "a".into(),
            term: Term(1),
            ttl_ms: ms(TTL),
        }),
        Call(Op::GetLease { name: "m".into() }),
        Set(T0.plus(TTL)),
        Call(lease("b", TTL)),
        Call(Op::MaintenanceHeartbeat {
            name: "m".into(),
            holder: "b".into(),
            term: Term(2),
        }),
        // Jobs: due times, then retry and snooze delays.
        Set(T0),
        Call(Op::Enqueue { req: req() }),
        Call(Op::Enqueue {
            req: req().scheduled_at(T0.plus(secs(5))),
        }),
        Call(Op::EnqueueBatch {
            reqs: vec![req(), req().unique_key("k"), req().unique_key("k")],
        }),
        Call(claim_mail(2)),
        Advance(secs(1)),
        Call(Op::Heartbeat {
            claim: claim(1, 1),
            owner: "w".into(),
        }),
        Call(finalize(
            1,
            1,
            Finalize::Retry {
                error: "boom".into(),
                delay: secs(3),
            },
        )),
        Call(finalize(3, 1, Finalize::Snooze { delay: secs(2) })),
        Call(get(1)),
        Call(get(3)),
        Call(Op::PromoteDue),
        Advance(secs(2)),
        Call(Op::PromoteDue),
        Advance(secs(1)),
        Call(Op::PromoteDue),
        Advance(secs(1)),
        Call(Op::PromoteDue),
        // The batched paths: a claim, then a completion with the next claims.
        Call(claim_mail(1)),
        Call(Op::FinalizeAndClaim {
            claim: claim(4, 1),
            owner: "w".into(),
            outcome: Finalize::Completed,
            queue: "mail".into(),
            limit: 2,
        }),
        Call(Op::FinalizeAndClaim {
            claim: claim(3, 2),
            owner: "w".into(),
            outcome: Finalize::Retry {
                error: "again".into(),
                delay: secs(1),
            },
            queue: "mail".into(),
            limit: 1,
        }),
        Call(Op::RequestCancel { job: JobId(2) }),
        Call(get(4)),
        // Staleness: rescued once the heartbeat is older than the window.
        Advance(secs(10)),
        Call(Op::RescueStale {
            stale_after_ms: ms(secs(10)),
        }),
        Advance(Duration::from_millis(1)),
        Call(Op::RescueStale {
            stale_after_ms: ms(secs(10)),
        }),
        Call(get(1)),
        Call(get(2)),
        // Retention: finished jobs age out on the clock.
        Call(Op::Cleanup {
            retention_ms: ms(secs(11)),
            limit: 10,
        }),
        Call(Op::Cleanup {
            retention_ms: ms(secs(10)),
            limit: 10,
        }),
        Call(get(4)),
        Call(Op::Enqueue {
            req: req().unique_key("k"),
        }),
        // A periodic slot fires once, its job enqueued at the clock's time.
        Call(periodic.clone()),
        Call(periodic),
        Call(get(6)),
        Call(Op::CountByState),
        Call(Op::Time),
    ];
    let mut replies = Vec::new();
    for (i, step) in script.into_iter().enumerate() {
        match step {
            Advance(d) => clock.advance(d),
            Set(at) => clock.set(at),
            Call(op) => {
                let expected = apply(&model, op.clone()).await;
                let got = apply(&s, op.clone()).await;
                assert_eq!(got, expected, "step {i}: {op:?}");
                replies.push(got);
            }
        }
    }
    // The script did what it says (the model judged as intended).
    assert_eq!(replies.first(), Some(&Reply::Time(T0)));
    let taken = Lease {
        name: "m".into(),
        term: Term(2),
        holder: Some("b".into()),
        expires_at: T0.plus(TTL).plus(TTL),
    };
    assert!(replies.contains(&Reply::Lease(Some(taken))), "{replies:?}");
    let rescued = Reply::Claims(vec![claim(1, 2), claim(2, 1)]);
    assert!(replies.contains(&rescued), "{replies:?}");
    assert!(replies.contains(&Reply::Count(1)), "{replies:?}");
    s.drop_schema().await.expect("drop");
}

/// A batch's completions apply before its claims, as the model applies a
/// `finalize_and_claim`. They used to be sent together, and a claim whose
/// statement was already prepared on the connection reached the server before
/// a completion still being prepared: a completion naming the attempt the
/// same batch handed out then completed it, and so did the rules asked after
/// the batch to tell a repeat from a stale call (found by the model test with
/// `PROPTEST_RNG_SEED=1` during issue 18).
#[tokio::test]
async fn a_batched_completion_applies_before_the_claim_beside_it() {
    let Some(s) = fresh_with("batch_order", |o| o.pool_size(1)).await else {
        return;
    };
    // Prepare the claim statement, not the completion's, on the one connection.
    assert!(s.claim("mail", "w", 1).await.expect("claim").is_empty());
    let job = s.enqueue(req()).await.expect("enqueue").id();
    // Attempt 1 of a job nobody claimed yet: completed in the same call that
    // claims it, the completion must find no live claim.
    let made_up = Claim { job, attempt: 1 };
    let (result, next) = s
        .finalize_and_claim(made_up, "w", Finalize::Completed, "mail", 1)
        .await
        .expect("call");
    assert_eq!(result, FinalizeResult::Stale);
    assert_eq!(next.iter().map(|j| j.id).collect::<Vec<_>>(), [job]);
    let stored = s.get_job(job).await.expect("get").expect("the job");
    assert_eq!(stored.state, JobState::Running, "claimed, not completed");
    s.drop_schema().await.expect("drop");
}
