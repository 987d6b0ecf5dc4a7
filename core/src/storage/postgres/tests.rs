//! The engine's own tests against a live server. Each test works in a schema of
//! its own and drops it at the end. Without `KEEL_PG_URL` they say so and pass;
//! the cross-engine conformance suite reports those skips properly.

use std::time::Duration;

use serde_json::json;

use super::*;
use crate::clock::Timestamp;
use crate::storage::{
    CancelResult, Claim, EffectResult, EnqueueOutcome, EnqueueRequest, Finalize, FinalizeResult,
    HeartbeatStatus, Job, JobId, JobState, JobStore, LeaseStore, PeriodicOutcome, QueueConfig,
    StorageError, Term,
};

const T0: Timestamp = Timestamp(1_000_000);
const TTL: Duration = Duration::from_secs(10);

fn at(ms: i64) -> Timestamp {
    Timestamp(T0.0 + ms)
}

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

/// A storage on a fresh schema named after `test`, or `None` to skip.
async fn fresh(test: &str) -> Option<PostgresStorage> {
    let url = pg_url(test)?;
    let schema = schema_for(test);
    drop_schema(&url, &schema).await;
    let options = PostgresOptions::new().schema(schema).listen(false);
    Some(
        PostgresStorage::connect_with(&url, options)
            .await
            .expect("connect"),
    )
}

fn req() -> EnqueueRequest {
    EnqueueRequest::new("email", json!({"to": "a@b"})).queue("mail")
}

async fn claim_one(s: &PostgresStorage, owner: &str, now: Timestamp) -> Job {
    let jobs = s.claim("mail", owner, 1, now).await.expect("claim");
    assert_eq!(jobs.len(), 1, "one job claimed");
    jobs.into_iter().next().expect("one")
}

fn claim_of(job: &Job) -> Claim {
    Claim {
        job: job.id,
        attempt: job.attempt,
    }
}

#[tokio::test]
async fn migrations_are_idempotent_even_when_processes_connect_at_once() {
    let test = "migrations_are_idempotent";
    let Some(url) = pg_url(test) else { return };
    let schema = schema_for(test);
    drop_schema(&url, &schema).await;
    let options = || PostgresOptions::new().schema(&schema).listen(false);
    let (a, b, c) = tokio::join!(
        PostgresStorage::connect_with(&url, options()),
        PostgresStorage::connect_with(&url, options()),
        PostgresStorage::connect_with(&url, options()),
    );
    let a = a.expect("a");
    b.expect("b");
    c.expect("c");
    let id = a.enqueue(req(), T0).await.expect("enqueue").id();
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

#[tokio::test]
async fn leases_follow_the_model() {
    let Some(s) = fresh("leases").await else {
        return;
    };
    let grant = |holder: &'static str, now| s.try_acquire("m", holder, TTL, now);
    assert_eq!(
        grant("a", Timestamp(0)).await.expect("ok").map(|l| l.term),
        Some(Term(1))
    );
    assert_eq!(grant("b", Timestamp(5_000)).await.expect("ok"), None);
    assert_eq!(
        grant("a", Timestamp(5_000))
            .await
            .expect("ok")
            .map(|l| l.term),
        Some(Term(2)),
        "re-acquiring starts a new term"
    );
    let b = grant("b", Timestamp(20_000))
        .await
        .expect("ok")
        .expect("expired");
    assert_eq!(b.term, Term(3));
    assert!(!s
        .renew("m", "a", Term(2), TTL, Timestamp(21_000))
        .await
        .expect("ok"));
    assert!(!s.resign("m", "a", Term(2)).await.expect("ok"));
    assert!(s
        .maintenance_heartbeat("m", "b", Term(3), Timestamp(0))
        .await
        .expect("ok"));
    assert!(!s
        .maintenance_heartbeat("m", "a", Term(2), Timestamp(0))
        .await
        .expect("ok"));
    // Renewing from a clock that runs behind never shortens the grant.
    assert!(s
        .renew("m", "b", Term(3), TTL, Timestamp(1_000))
        .await
        .expect("ok"));
    assert_eq!(
        s.get_lease("m").await.expect("ok").map(|l| l.expires_at),
        Some(Timestamp(30_000))
    );
    assert!(s.resign("m", "b", Term(3)).await.expect("ok"));
    let lease = s.get_lease("m").await.expect("ok").expect("row kept");
    assert_eq!((lease.term, lease.holder), (Term(3), None));
    assert_eq!(
        grant("a", Timestamp(21_000))
            .await
            .expect("ok")
            .map(|l| l.term),
        Some(Term(4)),
        "resign keeps the term counter"
    );
    assert!(!s
        .renew("m", "a", Term(u64::MAX), TTL, Timestamp(0))
        .await
        .expect("ok"));
    assert_eq!(s.get_lease("never").await.expect("ok"), None);
    let err = s
        .try_acquire("m", "", TTL, Timestamp(0))
        .await
        .expect_err("empty holder");
    assert!(matches!(err, StorageError::Invalid { ref field, .. } if field == "holder"));
    s.drop_schema().await.expect("drop");
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
            tokio::spawn(async move {
                s.try_acquire("m", &format!("n{i}"), TTL, Timestamp(0))
                    .await
                    .expect("ok")
            })
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
async fn claims_go_by_priority_then_due_time_then_id_and_skip_paused_queues() {
    let Some(s) = fresh("claim_order").await else {
        return;
    };
    let late = s.enqueue(req().priority(5), at(10)).await.expect("ok").id();
    let early = s.enqueue(req().priority(5), at(0)).await.expect("ok").id();
    let urgent = s.enqueue(req().priority(1), at(20)).await.expect("ok").id();
    let future = s
        .enqueue(req().priority(0).scheduled_at(at(1_000)), at(0))
        .await
        .expect("ok")
        .id();
    assert_eq!(
        [late, early, urgent, future],
        [JobId(1), JobId(2), JobId(3), JobId(4)]
    );
    let claimed = s.claim("mail", "w", 10, at(30)).await.expect("ok");
    let got: Vec<JobId> = claimed.iter().map(|j| j.id).collect();
    assert_eq!(
        got,
        vec![urgent, early, late],
        "the scheduled job is not due"
    );
    assert!(claimed
        .iter()
        .all(|j| j.state == JobState::Running && j.attempt == 1));
    assert_eq!(
        s.get_job(urgent).await.expect("ok").as_ref(),
        claimed.first(),
        "claim returns the rows as stored"
    );
    assert_eq!(
        s.get_job(future).await.expect("ok").map(|j| j.state),
        Some(JobState::Scheduled)
    );
    let paused = QueueConfig {
        name: "mail".into(),
        workers: 1,
        paused: true,
    };
    s.set_queue(paused.clone()).await.expect("ok");
    assert_eq!(s.get_queue("mail").await.expect("ok"), Some(paused));
    assert_eq!(s.promote_due(at(1_000)).await.expect("ok"), 1);
    assert!(s
        .claim("mail", "w", 10, at(1_000))
        .await
        .expect("ok")
        .is_empty());
    s.set_queue(QueueConfig {
        name: "mail".into(),
        workers: 1,
        paused: false,
    })
    .await
    .expect("ok");
    assert_eq!(
        s.claim("mail", "w", 10, at(1_000)).await.expect("ok").len(),
        1
    );
    assert_eq!(
        s.list_unfinished(10).await.expect("ok"),
        vec![late, early, urgent, future]
    );
    assert_eq!(s.list_unfinished(2).await.expect("ok"), vec![late, early]);
    s.drop_schema().await.expect("drop");
}

#[tokio::test]
async fn the_attempt_fences_heartbeat_finalize_and_effects_after_a_rescue() {
    let Some(s) = fresh("fencing").await else {
        return;
    };
    s.enqueue(req().max_attempts(3), T0).await.expect("ok");
    let old = claim_of(&claim_one(&s, "w1", at(0)).await);
    assert_eq!(
        s.apply_effect(old, "w1", "sent", json!(1))
            .await
            .expect("ok"),
        EffectResult::Applied
    );
    assert_eq!(
        s.rescue_stale(at(60_000), at(60_000)).await.expect("ok"),
        vec![old]
    );
    assert_eq!(s.promote_due(at(60_000)).await.expect("ok"), 1);
    let new = claim_of(&claim_one(&s, "w2", at(60_000)).await);
    assert_eq!(new.attempt, 2);
    assert_eq!(
        s.heartbeat(old, "w1", at(60_001)).await.expect("ok"),
        HeartbeatStatus::Lost
    );
    assert_eq!(
        s.finalize(old, "w1", Finalize::Completed, at(60_001))
            .await
            .expect("ok"),
        FinalizeResult::Stale
    );
    assert_eq!(
        s.apply_effect(old, "w1", "sent", json!(1))
            .await
            .expect("ok"),
        EffectResult::NotOwner
    );
    assert_eq!(
        s.apply_effect(new, "w2", "sent", json!(2))
            .await
            .expect("ok"),
        EffectResult::AlreadyApplied
    );
    assert_eq!(
        s.get_effect(new.job, "sent").await.expect("ok"),
        Some(json!(1))
    );
    assert_eq!(
        s.heartbeat(new, "w2", at(60_002)).await.expect("ok"),
        HeartbeatStatus::Alive
    );
    assert_eq!(
        s.finalize(new, "w2", Finalize::Completed, at(60_003))
            .await
            .expect("ok"),
        FinalizeResult::Applied
    );
    assert_eq!(
        s.finalize(new, "w2", Finalize::Completed, at(60_004))
            .await
            .expect("ok"),
        FinalizeResult::AlreadyFinalized,
        "a retried finalize is idempotent"
    );
    let done = s.get_job(new.job).await.expect("ok").expect("row");
    assert_eq!(
        (done.state, done.finalized_at, done.errors),
        (
            JobState::Completed,
            Some(at(60_003)),
            vec!["attempt 1 lost its worker".to_owned()]
        )
    );
    let ghost = Claim {
        job: JobId(u64::MAX),
        attempt: 1,
    };
    assert_eq!(
        s.heartbeat(ghost, "w", T0).await.expect("ok"),
        HeartbeatStatus::Lost
    );
    assert_eq!(
        s.request_cancel(JobId(999), T0).await.expect("ok"),
        CancelResult::NotFound
    );
    s.drop_schema().await.expect("drop");
}

#[tokio::test]
async fn retries_snoozes_and_cancels_follow_the_state_machine() {
    let Some(s) = fresh("state_machine").await else {
        return;
    };
    let id = s.enqueue(req().max_attempts(2), T0).await.expect("ok").id();
    let a1 = claim_of(&claim_one(&s, "w", at(0)).await);
    let retry = Finalize::Retry {
        error: "boom".into(),
        at: at(5_000),
    };
    assert_eq!(
        s.finalize(a1, "w", retry, at(1)).await.expect("ok"),
        FinalizeResult::Applied
    );
    assert_eq!(s.promote_due(at(4_999)).await.expect("ok"), 0);
    assert_eq!(s.promote_due(at(5_000)).await.expect("ok"), 1);
    let a2 = claim_of(&claim_one(&s, "w", at(5_000)).await);
    let snooze = Finalize::Snooze { until: at(6_000) };
    s.finalize(a2, "w", snooze, at(5_001)).await.expect("ok");
    assert_eq!(
        s.get_job(id).await.expect("ok").map(|j| j.max_attempts),
        Some(3)
    );
    s.promote_due(at(6_000)).await.expect("ok");
    let a3 = claim_of(&claim_one(&s, "w", at(6_000)).await);
    assert_eq!(
        s.request_cancel(id, at(6_001)).await.expect("ok"),
        CancelResult::Requested
    );
    assert_eq!(
        s.heartbeat(a3, "w", at(6_002)).await.expect("ok"),
        HeartbeatStatus::CancelRequested
    );
    assert_eq!(
        s.rescue_stale(at(70_000), at(70_000)).await.expect("ok"),
        vec![a3]
    );
    let job = s.get_job(id).await.expect("ok").expect("row");
    assert_eq!(
        job.state,
        JobState::Cancelled,
        "the cancel survives a rescue"
    );
    assert_eq!(job.errors.first().map(String::as_str), Some("boom"));
    assert_eq!(
        s.request_cancel(id, at(70_001)).await.expect("ok"),
        CancelResult::AlreadyFinished
    );
    let idle = s
        .enqueue(req().scheduled_at(at(90_000)), T0)
        .await
        .expect("ok")
        .id();
    assert_eq!(
        s.request_cancel(idle, at(1)).await.expect("ok"),
        CancelResult::Cancelled
    );
    let counts = s.count_by_state().await.expect("ok");
    assert_eq!(counts.get(JobState::Cancelled), 2);
    assert_eq!(counts.0.len(), 1, "only states that have jobs are counted");
    s.drop_schema().await.expect("drop");
}

#[tokio::test]
async fn unique_keys_answer_with_the_existing_job_until_cleanup_frees_them() {
    let Some(s) = fresh("unique").await else {
        return;
    };
    let first = s.enqueue(req().unique_key("k"), T0).await.expect("ok");
    assert_eq!(first, EnqueueOutcome::Inserted(JobId(1)));
    assert_eq!(
        s.enqueue(req().unique_key("k"), T0).await.expect("ok"),
        EnqueueOutcome::Duplicate(JobId(1))
    );
    let batch = s
        .enqueue_batch(
            vec![
                req().unique_key("b"),
                req(),
                req().unique_key("b"),
                req().unique_key("k"),
            ],
            T0,
        )
        .await
        .expect("ok");
    assert_eq!(
        batch,
        vec![
            EnqueueOutcome::Inserted(JobId(2)),
            EnqueueOutcome::Inserted(JobId(3)),
            EnqueueOutcome::Duplicate(JobId(2)),
            EnqueueOutcome::Duplicate(JobId(1)),
        ],
        "duplicates take no id"
    );
    let c = claim_of(&claim_one(&s, "w", at(0)).await);
    assert_eq!(c.job, JobId(1));
    s.apply_effect(c, "w", "sent", json!("x"))
        .await
        .expect("ok");
    s.finalize(c, "w", Finalize::Completed, at(10))
        .await
        .expect("ok");
    assert_eq!(s.cleanup(at(10), 100).await.expect("ok"), 0);
    assert_eq!(s.cleanup(at(11), 100).await.expect("ok"), 1);
    assert_eq!(s.get_job(JobId(1)).await.expect("ok"), None);
    assert_eq!(s.get_effect(JobId(1), "sent").await.expect("ok"), None);
    assert_eq!(
        s.enqueue(req().unique_key("k"), at(12)).await.expect("ok"),
        EnqueueOutcome::Inserted(JobId(4)),
        "ids are never reused"
    );
    s.drop_schema().await.expect("drop");
}

#[tokio::test]
async fn bad_input_names_the_field_and_a_bad_batch_inserts_nothing() {
    let Some(s) = fresh("validation").await else {
        return;
    };
    let field = |e: StorageError| match e {
        StorageError::Invalid { field, .. } => field,
        other => panic!("not a validation error: {other}"),
    };
    assert_eq!(
        field(s.enqueue(req().queue("a b"), T0).await.expect_err("space")),
        "queue"
    );
    let batch = vec![req(), req().priority(10)];
    assert_eq!(
        field(s.enqueue_batch(batch, T0).await.expect_err("bad item")),
        "priority"
    );
    assert_eq!(s.count_by_state().await.expect("ok").unfinished(), 0);
    assert_eq!(
        field(s.claim("", "", 1, T0).await.expect_err("bad")),
        "queue",
        "queue is checked before owner"
    );
    let c = Claim {
        job: JobId(1),
        attempt: 1,
    };
    assert_eq!(
        field(
            s.apply_effect(c, "w", "a b", json!(1))
                .await
                .expect_err("bad")
        ),
        "effect key"
    );
    assert_eq!(
        field(
            s.fire_periodic("", T0, "m", "n", Term(1), req().queue(""), T0)
                .await
                .expect_err("bad")
        ),
        "periodic name"
    );
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
            T0,
        )
        .await
        .expect("ok")
        .id();
    let job = claim_one(&s, "w\0x", T0).await;
    assert_eq!(
        (
            &job.payload,
            job.owner.as_deref(),
            job.unique_key.as_deref()
        ),
        (&payload, Some("w\0x"), Some("u\0k"))
    );
    assert_eq!(
        s.enqueue(req().unique_key("u\0k"), T0).await.expect("ok"),
        EnqueueOutcome::Duplicate(id)
    );
    let lease = s
        .try_acquire("l\0", "h\0", TTL, T0)
        .await
        .expect("ok")
        .expect("granted");
    assert_eq!(s.get_lease("l\0").await.expect("ok"), Some(lease));
    assert_eq!(s.get_effect(id, "k\0").await.expect("ok"), None);
    assert_eq!(s.get_queue("q\0").await.expect("ok"), None);
    s.drop_schema().await.expect("drop");
}

#[tokio::test]
async fn a_periodic_slot_fires_once_only_for_the_current_term_and_outlives_its_job() {
    let Some(s) = fresh("periodic").await else {
        return;
    };
    let lease = s
        .try_acquire("maintainer", "n1", Duration::from_secs(5), T0)
        .await
        .expect("ok")
        .expect("granted");
    let fire = |holder: &'static str, term| {
        s.fire_periodic("digest", at(60_000), "maintainer", holder, term, req(), T0)
    };
    assert_eq!(
        fire("n1", lease.term).await.expect("ok"),
        PeriodicOutcome::Fired(JobId(1))
    );
    assert_eq!(
        fire("n1", lease.term).await.expect("ok"),
        PeriodicOutcome::AlreadyFired(JobId(1))
    );
    assert_eq!(
        fire("n2", lease.term).await.expect("ok"),
        PeriodicOutcome::StaleTerm
    );
    assert_eq!(
        fire("n1", Term(lease.term.0 - 1)).await.expect("ok"),
        PeriodicOutcome::StaleTerm
    );
    assert_eq!(
        s.fire_periodic("digest", at(1), "nobody", "n1", lease.term, req(), T0)
            .await
            .expect("ok"),
        PeriodicOutcome::StaleTerm
    );
    let c = claim_of(&claim_one(&s, "w", at(0)).await);
    s.finalize(c, "w", Finalize::Completed, at(1))
        .await
        .expect("ok");
    assert_eq!(s.cleanup(at(2), 10).await.expect("ok"), 1);
    assert_eq!(
        fire("n1", lease.term).await.expect("ok"),
        PeriodicOutcome::AlreadyFired(JobId(1)),
        "the slot stays fired after cleanup"
    );
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
            quiet
                .enqueue_batch(vec![req(), req()], T0)
                .await
                .expect("ok");
        } else {
            quiet.enqueue(req(), T0).await.expect("ok");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_claimers_never_share_a_job() {
    const JOBS: usize = 120;
    let Some(s) = fresh("skip_locked").await else {
        return;
    };
    let reqs = (0..JOBS).map(|i| req().priority((i % 3) as u8)).collect();
    s.enqueue_batch(reqs, T0).await.expect("ok");
    let s = Arc::new(s);
    let tasks: Vec<_> = (0..8)
        .map(|w| {
            let s = s.clone();
            tokio::spawn(async move {
                let owner = format!("w{w}");
                let mut mine = Vec::new();
                loop {
                    let jobs = s.claim("mail", &owner, 3, at(1)).await.expect("claim");
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
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.expect("task"));
    }
    all.sort_unstable();
    let before = all.len();
    all.dedup();
    assert_eq!(before, all.len(), "a job was claimed twice");
    assert_eq!(all.len(), JOBS, "every job was claimed");
    let counts = s.count_by_state().await.expect("ok");
    assert_eq!(counts.get(JobState::Running), JOBS as u64);
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
            quiet.enqueue(req(), T0).await.expect("ok");
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
    let id = s.enqueue(req(), T0).await.expect("ok").id();
    assert_eq!(s.get_job(id).await.expect("ok").map(|j| j.id), Some(id));
    s.drop_schema().await.expect("drop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_worker_wakes_at_once_for_a_job_another_process_enqueued() {
    use crate::clock::{Clock, SystemClock};
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
    producer
        .enqueue(req(), SystemClock.now())
        .await
        .expect("enqueue");
    tokio::time::timeout(Duration::from_secs(5), done_rx.recv())
        .await
        .expect("woken by NOTIFY, not by the 60 s poll")
        .expect("handler ran");
    runtime.shutdown(Duration::from_secs(5)).await;
    producer.drop_schema().await.expect("drop");
}
