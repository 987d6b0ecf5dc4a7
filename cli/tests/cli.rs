//! The `keel` binary as an operator runs it: every command, on SQLite (and on
//! PostgreSQL when `KEEL_PG_URL` is set), and every bad input, with its exit
//! code and the message that says the fix.

use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use keel::storage::{
    AdminStorage, Claim, EnqueueRequest, Finalize, JobId, PostgresOptions, PostgresStorage,
    SqliteStorage, Term,
};
use serde_json::{json, Value};

const EXIT_OK: i32 = 0;
const EXIT_STORAGE: i32 = 1;
const EXIT_USAGE: i32 = 2;
const EXIT_NOT_FOUND: i32 = 3;
const EXIT_REFUSED: i32 = 4;
const EXIT_SCHEMA: i32 = 5;

fn keel(target: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_keel"))
        .arg("--url")
        .arg(target)
        .args(args)
        .env_remove("KEEL_DATABASE_URL")
        .output()
        .expect("the keel binary runs")
}

fn code(out: &Output) -> i32 {
    out.status.code().expect("exited, not killed")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Run and expect success; the JSON it printed.
fn json_of(target: &str, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = keel(target, &all);
    assert_eq!(code(&out), EXIT_OK, "{args:?}: {}", stderr(&out));
    serde_json::from_slice(&out.stdout).expect("JSON")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Jobs in every state an operator meets: 1 completed with an effect, 2
/// retryable with an error, 3 running, 4 discarded, 5 available (queue
/// `mail`), and a periodic slot fired by a leader.
async fn populate(store: Arc<dyn AdminStorage>) {
    let s = store.as_storage();
    for (kind, queue, attempts) in [
        ("report", "default", 5),
        ("email", "default", 5),
        ("email", "default", 5),
        ("resize", "default", 1),
        ("email", "mail", 5),
    ] {
        let req = EnqueueRequest::new(kind, json!({"to": "<script>alert(1)</script>"}))
            .queue(queue)
            .max_attempts(attempts);
        s.enqueue(req).await.expect("enqueue");
    }
    let claimed = s.claim("default", "node-a/0", 4).await.expect("claim");
    assert_eq!(claimed.len(), 4);
    let claim = |id: u64| Claim {
        job: JobId(id),
        attempt: 1,
    };
    s.apply_effect(claim(1), "node-a/0", "sent", json!(true))
        .await
        .expect("effect");
    s.finalize(claim(1), "node-a/0", Finalize::Completed)
        .await
        .expect("complete");
    let retry = Finalize::Retry {
        error: "smtp: connection refused".into(),
        delay: Duration::from_secs(3_600),
    };
    s.finalize(claim(2), "node-a/0", retry)
        .await
        .expect("retry");
    let discard = Finalize::Discard {
        error: "panicked: image too large".into(),
    };
    s.finalize(claim(4), "node-a/0", discard)
        .await
        .expect("discard");
    let lease = s
        .try_acquire("maintainer", "node-a", Duration::from_secs(60))
        .await
        .expect("acquire")
        .expect("granted");
    assert_eq!(lease.term, Term(1));
    let now = s.time().await.expect("time");
    let slot = keel::clock::Timestamp(now.0 - now.0.rem_euclid(60_000));
    s.fire_periodic(
        "digest",
        slot,
        "every 60s",
        "maintainer",
        "node-a",
        lease.term,
        EnqueueRequest::new("digest", json!({})),
    )
    .await
    .expect("fire");
}

/// Every command against a populated database at `target`.
fn every_command(target: &str) {
    // Migrations: the database is current.
    let out = keel(target, &["migrate", "status"]);
    assert_eq!(code(&out), EXIT_OK, "{}", stderr(&out));
    assert!(stdout(&out).contains("up to date"), "{}", stdout(&out));

    // Queues with counts per state.
    let out = keel(target, &["queues"]);
    assert_eq!(code(&out), EXIT_OK);
    let text = stdout(&out);
    assert!(text.starts_with("queue"), "{text}");
    assert!(text.lines().any(|l| l.starts_with("mail ")), "{text}");
    let queues = json_of(target, &["queues"]);
    let default = &queues[0];
    assert_eq!(default["name"], "default");
    assert_eq!(default["counts"]["completed"], 1);
    assert_eq!(default["counts"]["retryable"], 1);

    // Jobs: filters and paging.
    let page = json_of(target, &["jobs", "--limit", "2"]);
    let ids: Vec<u64> = page["jobs"]
        .as_array()
        .expect("jobs")
        .iter()
        .map(|j| j["id"].as_u64().expect("id"))
        .collect();
    assert_eq!(ids[0], 6, "newest first: the periodic job");
    assert_eq!(ids.len(), 2);
    let next = page["next"].as_u64().expect("a next page").to_string();
    let older = json_of(target, &["jobs", "--limit", "2", "--before", &next]);
    assert!(older["jobs"][0]["id"].as_u64() < Some(ids[1]));
    let retryable = json_of(target, &["jobs", "--state", "retryable"]);
    assert_eq!(retryable["jobs"].as_array().map(Vec::len), Some(1));
    let out = keel(target, &["jobs", "--queue", "mail"]);
    assert_eq!(code(&out), EXIT_OK);
    assert_eq!(stdout(&out).lines().count(), 2, "header and job 5");
    let out = keel(target, &["jobs", "--kind", "email", "--state", "running"]);
    assert!(stdout(&out).contains("running"), "{}", stdout(&out));

    // One job: attempts, errors, effects.
    let out = keel(target, &["job", "job-2"]);
    assert_eq!(code(&out), EXIT_OK);
    let text = stdout(&out);
    assert!(text.contains("attempts"), "{text}");
    assert!(text.contains("smtp: connection refused"), "{text}");
    assert!(text.contains("failed"), "{text}");
    let detail = json_of(target, &["job", "1"]);
    assert_eq!(detail["effects"][0][0], "sent");
    assert_eq!(detail["job"]["attempts"][0]["outcome"], "completed");

    // Retry a discarded job; a running one is refused; several at once.
    let out = keel(target, &["retry", "4"]);
    assert_eq!(code(&out), EXIT_OK, "{}", stderr(&out));
    assert!(stdout(&out).contains("job 4: done"));
    assert_eq!(json_of(target, &["job", "4"])["job"]["state"], "available");
    let out = keel(target, &["retry", "3", "2"]);
    assert_eq!(code(&out), EXIT_REFUSED, "the worst of the two");
    let text = stdout(&out);
    assert!(text.contains("job 3: refused: running"), "{text}");
    assert!(text.contains("job 2: done"), "{text}");

    // Cancel: a running job through its heartbeat, a waiting one at once.
    let out = keel(target, &["cancel", "3"]);
    assert_eq!(code(&out), EXIT_OK);
    assert!(stdout(&out).contains("cancel requested"));
    let out = keel(target, &["cancel", "5"]);
    assert!(stdout(&out).contains("job 5: cancelled"));
    let out = keel(target, &["cancel", "5"]);
    assert_eq!(code(&out), EXIT_REFUSED);

    // Discard and delete.
    let done = json_of(target, &["discard", "2"]);
    assert_eq!(done[0]["outcome"], "done");
    assert_eq!(code(&keel(target, &["discard", "2"])), EXIT_REFUSED);
    assert_eq!(code(&keel(target, &["delete", "3"])), EXIT_REFUSED);
    assert_eq!(code(&keel(target, &["delete", "1"])), EXIT_OK);
    assert_eq!(code(&keel(target, &["job", "1"])), EXIT_NOT_FOUND);

    // Queue settings.
    assert_eq!(code(&keel(target, &["queue", "pause", "mail"])), EXIT_OK);
    let queues = json_of(target, &["queues"]);
    let mail = queues
        .as_array()
        .and_then(|q| q.iter().find(|q| q["name"] == "mail"))
        .expect("mail");
    assert_eq!(mail["paused"], true);
    let summary = json_of(target, &["queue", "workers", "mail", "3"]);
    assert_eq!(summary["workers"], 3);
    let summary = json_of(target, &["queue", "resume", "mail"]);
    assert_eq!(summary["paused"], false);
    let summary = json_of(target, &["queue", "workers", "mail", "default"]);
    assert_eq!(summary["workers"], Value::Null);
    let out = keel(target, &["queue", "workers", "mail", "many"]);
    assert_eq!(code(&out), EXIT_USAGE);
    assert!(stderr(&out).contains("write a number"), "{}", stderr(&out));
    let out = keel(target, &["queue", "pause", "bad/name"]);
    assert_eq!(code(&out), EXIT_USAGE);
    assert!(stderr(&out).contains("queue"), "{}", stderr(&out));

    // Leadership and periodic schedules.
    let out = keel(target, &["leader"]);
    assert_eq!(code(&out), EXIT_OK);
    let text = stdout(&out);
    assert!(
        text.contains("maintainer") && text.contains("node-a"),
        "{text}"
    );
    assert!(text.contains("leading"), "{text}");
    let leases = json_of(target, &["leader"]);
    assert_eq!(leases[0]["term"], 1);
    let periodic = json_of(target, &["periodic"]);
    assert_eq!(periodic[0]["name"], "digest");
    assert_eq!(periodic[0]["schedule"], "every 60s");
    let last = periodic[0]["last_slot"].as_i64().expect("slot");
    assert_eq!(periodic[0]["next_slot"].as_i64(), Some(last + 60_000));
    let out = keel(target, &["periodic"]);
    assert!(stdout(&out).contains("every 60s"), "{}", stdout(&out));

    // Bad ids.
    let out = keel(target, &["job", "forty-two"]);
    assert_eq!(code(&out), EXIT_USAGE);
    assert!(stderr(&out).contains("write 42 or job-42"));
    let out = keel(target, &["retry", "999"]);
    assert_eq!(code(&out), EXIT_NOT_FOUND);
    assert!(stdout(&out).contains("job 999: not found"));
    let out = keel(target, &["jobs", "--limit", "5000"]);
    assert_eq!(code(&out), EXIT_USAGE);
    assert!(stderr(&out).contains("limit"), "{}", stderr(&out));
}

#[test]
fn every_command_on_sqlite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("jobs.db");
    let target = path.to_str().expect("utf-8 path").to_owned();
    let out = keel(&target, &["migrate"]);
    assert_eq!(code(&out), EXIT_OK, "{}", stderr(&out));
    assert!(stdout(&out).contains("migrated schema version 0 to"));
    runtime().block_on(async {
        let store = SqliteStorage::open(&path).await.expect("open");
        populate(Arc::new(store)).await;
    });
    every_command(&target);
}

#[test]
fn every_command_on_postgres() {
    let Ok(url) = std::env::var("KEEL_PG_URL") else {
        eprintln!("skipped: set KEEL_PG_URL to run the CLI against PostgreSQL");
        return;
    };
    let schema = format!("keel_cli_test_{}", std::process::id());
    let sep = if url.contains('?') { '&' } else { '?' };
    let target = format!("{url}{sep}keel_schema={schema}");
    let out = keel(&target, &["migrate", "status"]);
    assert_eq!(code(&out), EXIT_OK, "{}", stderr(&out));
    assert!(
        stdout(&out).contains("no Keel schema yet"),
        "{}",
        stdout(&out)
    );
    assert_eq!(code(&keel(&target, &["jobs"])), EXIT_SCHEMA, "not migrated");
    assert_eq!(code(&keel(&target, &["migrate"])), EXIT_OK);
    let store = runtime().block_on(async {
        let options = PostgresOptions::new().schema(schema.clone()).listen(false);
        let store = Arc::new(
            PostgresStorage::connect_with(&url, options)
                .await
                .expect("connect"),
        );
        populate(store.clone()).await;
        store
    });
    every_command(&target);
    runtime().block_on(async { store.drop_schema().await.expect("drop") });
}

#[test]
fn a_database_that_is_not_usable_as_it_is_says_what_to_do() {
    let dir = tempfile::tempdir().expect("tempdir");

    // No database named.
    let out = Command::new(env!("CARGO_BIN_EXE_keel"))
        .arg("jobs")
        .env_remove("KEEL_DATABASE_URL")
        .output()
        .expect("runs");
    assert_eq!(code(&out), EXIT_USAGE);
    assert!(
        stderr(&out).contains("KEEL_DATABASE_URL"),
        "{}",
        stderr(&out)
    );

    // The environment names it.
    let path = dir.path().join("env.db");
    let out = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["migrate"])
        .env("KEEL_DATABASE_URL", &path)
        .output()
        .expect("runs");
    assert_eq!(code(&out), EXIT_OK, "{}", stderr(&out));

    // A missing file is not created by anything but `keel migrate`.
    let missing = dir.path().join("missing.db");
    let target = missing.to_str().expect("utf-8");
    let out = keel(target, &["jobs"]);
    assert_eq!(code(&out), EXIT_STORAGE);
    assert!(stderr(&out).contains("keel migrate"), "{}", stderr(&out));
    assert!(!missing.exists());

    // A bad URL.
    let out = keel("mysql://db/jobs", &["jobs"]);
    assert_eq!(code(&out), EXIT_USAGE);
    assert!(stderr(&out).contains("use postgres://"), "{}", stderr(&out));
    let out = keel(
        "postgres://no_such_host.invalid:1/x?connect_timeout=1",
        &["jobs"],
    );
    assert_eq!(code(&out), EXIT_STORAGE);

    // A file of another application.
    let other = dir.path().join("other.db");
    rusqlite::Connection::open(&other)
        .and_then(|c| c.execute_batch("CREATE TABLE users (id INTEGER)"))
        .expect("other app");
    let out = keel(other.to_str().expect("utf-8"), &["jobs"]);
    assert_eq!(code(&out), EXIT_SCHEMA);
    assert!(
        stderr(&out).contains("not a Keel database"),
        "{}",
        stderr(&out)
    );

    // A newer schema than this keel knows.
    let newer = dir.path().join("newer.db");
    let newer_target = newer.to_str().expect("utf-8");
    assert_eq!(code(&keel(newer_target, &["migrate"])), EXIT_OK);
    rusqlite::Connection::open(&newer)
        .and_then(|c| c.execute_batch("PRAGMA user_version = 99"))
        .expect("bump");
    let out = keel(newer_target, &["jobs"]);
    assert_eq!(code(&out), EXIT_SCHEMA);
    assert!(stderr(&out).contains("upgrade Keel"), "{}", stderr(&out));

    // A file another process holds locked.
    let locked = dir.path().join("locked.db");
    let locked_target = locked.to_str().expect("utf-8");
    assert_eq!(code(&keel(locked_target, &["migrate"])), EXIT_OK);
    let holder = rusqlite::Connection::open(&locked).expect("open");
    holder.execute_batch("BEGIN EXCLUSIVE").expect("lock");
    let out = keel(locked_target, &["--busy-timeout-ms", "200", "retry", "1"]);
    assert_eq!(code(&out), EXIT_STORAGE, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("--busy-timeout-ms"),
        "{}",
        stderr(&out)
    );
    holder.execute_batch("ROLLBACK").expect("unlock");
}

#[test]
fn migrate_status_counts_the_pending_migrations_of_an_old_schema() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("old.db");
    let target = path.to_str().expect("utf-8");
    assert_eq!(code(&keel(target, &["migrate"])), EXIT_OK);
    // Version 1's tables, as a Keel before the operator's view left them.
    let conn = rusqlite::Connection::open(&path).expect("open");
    conn.execute_batch(
        "DROP TABLE keel_schedules; DROP INDEX keel_jobs_state; \
         ALTER TABLE keel_jobs DROP COLUMN attempts; PRAGMA user_version = 1",
    )
    .expect("downgrade");
    drop(conn);
    let out = keel(target, &["migrate", "status"]);
    assert_eq!(code(&out), EXIT_OK);
    assert!(
        stdout(&out).contains("schema version 1; 1 migration(s) pending"),
        "{}",
        stdout(&out)
    );
    let out = keel(target, &["queues"]);
    assert_eq!(code(&out), EXIT_SCHEMA);
    assert!(
        stderr(&out).contains("run `keel migrate`"),
        "{}",
        stderr(&out)
    );
    let out = keel(target, &["migrate"]);
    assert!(
        stdout(&out).contains("migrated schema version 1 to 2"),
        "{}",
        stdout(&out)
    );
    assert_eq!(code(&keel(target, &["queues"])), EXIT_OK);
}
