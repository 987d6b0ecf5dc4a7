//! The SQLite engine's own concerns: files, locks, schema versions, the thread.
//! Its job and lease semantics are held to the model by the conformance suite
//! and the model-based property test in `tests/`.

use std::sync::Arc;
use std::time::Duration;

use rusqlite::Connection;
use serde_json::json;

use super::*;
use crate::clock::{Clock, ManualClock, Timestamp};
use crate::storage::{EnqueueRequest, JobState, JobStore, LeaseStore, OpenError};

const T0: Timestamp = Timestamp(1_000_000);

/// A clock reading [`T0`] until a test moves it, and options that make it
/// storage's clock.
fn manual() -> (Arc<ManualClock>, SqliteOptions) {
    let clock = Arc::new(ManualClock::new(T0));
    let options = SqliteOptions::default().clock(clock.clone());
    (clock, options)
}

fn block<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime")
        .block_on(f)
}

/// The output of an engine call, which never waits.
fn ready<F: std::future::Future>(f: F) -> F::Output {
    poll_ready(f).expect("ready")
}

fn dir() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

#[test]
fn a_file_keeps_jobs_and_leases_across_reopen_and_migrates_once() {
    let dir = dir();
    let path = dir.path().join("keel.db");
    {
        let engine = SqliteEngine::open(&path).expect("open");
        let id = poll_ready(engine.enqueue(EnqueueRequest::new("email", json!({"to": 1}))))
            .expect("ready")
            .expect("enqueue")
            .id();
        assert_eq!(id.0, 1);
        poll_ready(engine.try_acquire("m", "a", Duration::from_secs(5)))
            .expect("ready")
            .expect("acquire");
    }
    let engine = SqliteEngine::open(&path).expect("reopen");
    let job = poll_ready(engine.get_job(crate::storage::JobId(1)))
        .expect("ready")
        .expect("get")
        .expect("kept");
    assert_eq!(
        (job.kind.as_str(), job.state),
        ("email", JobState::Available)
    );
    let lease = poll_ready(engine.get_lease("m"))
        .expect("ready")
        .expect("get");
    assert_eq!(lease.map(|l| l.term.0), Some(1));
    let conn = Connection::open(&path).expect("raw");
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .expect("mode");
    assert_eq!(mode, "wal");
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .expect("version");
    assert_eq!(version, SCHEMA_VERSION);
}

#[test]
fn a_newer_schema_is_refused_with_both_versions() {
    let dir = dir();
    let path = dir.path().join("keel.db");
    drop(SqliteEngine::open(&path).expect("open"));
    Connection::open(&path)
        .expect("raw")
        .execute_batch(&format!("PRAGMA user_version = {}", SCHEMA_VERSION + 1))
        .expect("bump");
    let err = SqliteEngine::open(&path).expect_err("too new");
    assert!(
        matches!(err, OpenError::SchemaTooNew { found, supported, .. }
            if found == SCHEMA_VERSION + 1 && supported == SCHEMA_VERSION),
        "{err}"
    );
    assert!(err.to_string().contains("upgrade Keel"), "{err}");
}

#[test]
fn another_applications_database_is_refused_and_left_alone() {
    let dir = dir();
    let theirs = dir.path().join("app.db");
    Connection::open(&theirs)
        .expect("raw")
        .execute_batch("CREATE TABLE users (id INTEGER PRIMARY KEY)")
        .expect("their table");
    let err = SqliteEngine::open(&theirs).expect_err("not keel");
    assert!(matches!(err, OpenError::NotKeel { .. }), "{err}");
    let tables: i64 = Connection::open(&theirs)
        .expect("raw")
        .query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0))
        .expect("count");
    assert_eq!(tables, 1, "nothing was added to their database");

    let text = dir.path().join("notes.txt");
    std::fs::write(
        &text,
        "this is not a database, just a text file long enough to have a header",
    )
    .expect("write");
    let err = SqliteEngine::open(&text).expect_err("not a database");
    assert!(matches!(err, OpenError::NotKeel { .. }), "{err}");
}

#[test]
fn a_read_only_or_unopenable_path_says_so() {
    let dir = dir();
    let path = dir.path().join("keel.db");
    drop(SqliteEngine::open(&path).expect("create"));
    let uri = format!("file:{}?mode=ro", path.display());
    let err = SqliteEngine::open(&uri).expect_err("read-only");
    assert!(matches!(err, OpenError::ReadOnly { .. }), "{err}");

    let missing = dir.path().join("no/such/dir/keel.db");
    let err = SqliteEngine::open(&missing).expect_err("no directory");
    assert!(matches!(err, OpenError::Unreachable { .. }), "{err}");
    assert!(
        err.to_string().contains("no/such/dir"),
        "names the path: {err}"
    );

    let err = SqliteEngine::open("").expect_err("empty");
    assert!(
        matches!(err, OpenError::InvalidConfig { what: "path", .. }),
        "{err}"
    );
}

#[test]
fn a_database_another_process_keeps_locked_fails_open_then_calls_wait_or_fail_cleanly() {
    let dir = dir();
    let path = dir.path().join("keel.db");
    let quick = SqliteOptions::default().busy_timeout(Duration::from_millis(50));
    let engine = SqliteEngine::open_with(&path, quick.clone()).expect("open");
    let mut other = Connection::open(&path).expect("raw");
    let holder = other
        .transaction_with_behavior(rusqlite::TransactionBehavior::Exclusive)
        .expect("lock");
    let err = SqliteEngine::open_with(&path, quick).expect_err("locked");
    assert!(matches!(err, OpenError::Locked { .. }), "{err}");
    let err = poll_ready(engine.enqueue(EnqueueRequest::new("k", json!(1))))
        .expect("ready")
        .expect_err("busy");
    assert!(
        matches!(err, crate::storage::StorageError::Unavailable(_)),
        "busy is retryable and applied nothing: {err}"
    );
    holder.rollback().expect("release");
    let ok = poll_ready(engine.enqueue(EnqueueRequest::new("k", json!(1)))).expect("ready");
    assert_eq!(ok.expect("enqueue").id().0, 1, "the busy call used no id");
}

#[test]
fn the_storage_thread_answers_calls_and_reports_open_errors() {
    let dir = dir();
    let path = dir.path().join("keel.db");
    block(async {
        let storage = SqliteStorage::open(&path).await.expect("open");
        assert_eq!(storage.path(), path.as_path());
        let id = storage
            .enqueue(EnqueueRequest::new("email", json!(null)))
            .await
            .expect("enqueue")
            .id();
        let jobs = storage.claim("default", "w", 5).await.expect("claim");
        assert_eq!(jobs.iter().map(|j| j.id).collect::<Vec<_>>(), vec![id]);
        let err = storage
            .enqueue(EnqueueRequest::new("email", json!(null)).queue("no spaces"))
            .await
            .expect_err("invalid");
        assert!(err.to_string().contains("queue"), "{err}");
        let err = SqliteStorage::open(dir.path().join("missing/x.db"))
            .await
            .expect_err("no dir");
        assert!(matches!(err, OpenError::Unreachable { .. }), "{err}");
    });
}

/// A group commit answers every call exactly as one call at a time would, a
/// failing call included (rolled back alone), and its changes are all there after.
#[test]
fn a_group_answers_like_calls_one_at_a_time() {
    use crate::storage::ops::Op;
    use crate::storage::{Claim, Finalize, JobId};
    let owner = "n1/default/0".to_owned();
    let claim = Claim {
        job: JobId(1),
        attempt: 1,
    };
    let ops = vec![
        Op::Enqueue {
            req: EnqueueRequest::new("a", json!(1)),
        },
        // Refused: an empty queue name. Must not undo the enqueue before it.
        Op::Enqueue {
            req: EnqueueRequest::new("b", json!(2)).queue(""),
        },
        Op::Claim {
            queue: "default".into(),
            owner: owner.clone(),
            limit: 5,
        },
        Op::Finalize {
            claim,
            owner: "someone else".into(),
            outcome: Finalize::Completed,
        },
        Op::Finalize {
            claim,
            owner: owner.clone(),
            outcome: Finalize::Completed,
        },
        Op::Finalize {
            claim,
            owner,
            outcome: Finalize::Completed,
        },
        Op::Enqueue {
            req: EnqueueRequest::new("c", json!(3)),
        },
    ];
    // One clock for both engines: the claim's reply carries its times.
    let (_clock, options) = manual();
    let one_by_one = SqliteEngine::in_memory_with(options.clone()).expect("open");
    let expected: Vec<_> = ops
        .iter()
        .cloned()
        .map(|op| one_by_one.execute(op))
        .collect();
    assert!(
        matches!(expected[1], crate::storage::ops::Reply::Err(_)),
        "{expected:?}"
    );
    let dir = dir();
    let grouped = SqliteEngine::open_with(dir.path().join("g.db"), options).expect("open");
    assert_eq!(grouped.execute_group(ops), expected);
    let after = |e: &SqliteEngine| {
        poll_ready(e.list_unfinished(10))
            .expect("ready")
            .expect("list")
    };
    assert_eq!(after(&grouped), after(&one_by_one));
}

/// Calls that arrive while a group runs join it, up to the cap; the rest wait
/// for the next group, and every reply comes back beside its own call's tag.
#[test]
fn calls_arriving_during_a_group_join_it_up_to_the_cap() {
    use crate::storage::ops::Reply;
    let engine = SqliteEngine::in_memory().expect("open");
    let total = super::GROUP_CALLS_MAX + 10;
    let mut calls = (0..total).map(|i| {
        let req = EnqueueRequest::new("k", json!(i));
        (Op::Enqueue { req }, i)
    });
    let first = calls.next().expect("a call");
    let group = engine.execute_joined(first, || calls.next());
    let tags: Vec<usize> = group.iter().map(|(tag, _)| *tag).collect();
    assert_eq!(tags, (0..super::GROUP_CALLS_MAX).collect::<Vec<_>>());
    assert!(
        group.iter().all(|(_, r)| matches!(r, Reply::Enqueued(_))),
        "{group:?}"
    );
    let first = calls.next().expect("the rest are still queued");
    assert_eq!(
        first.1,
        super::GROUP_CALLS_MAX,
        "no call was dropped at the cap"
    );
    let rest = engine.execute_joined(first, || calls.next());
    assert_eq!(rest.len(), 10);
    let listed = poll_ready(engine.list_unfinished(u32::try_from(total + 1).expect("small")))
        .expect("ready")
        .expect("list");
    assert_eq!(listed.len(), total, "every call applied once");
}

/// Many workers hammering one SqliteStorage: calls arrive in bursts and are
/// group-committed; every job still runs its course exactly once, whether the
/// storage thread polls for calls between groups or sleeps.
#[test]
fn concurrent_callers_are_group_committed_and_every_job_finishes_once() {
    for spin in [super::IDLE_SPIN_DEFAULT, Duration::ZERO] {
        hammer(SqliteOptions::default().idle_spin(spin));
    }
}

fn hammer(options: SqliteOptions) {
    use crate::storage::{Claim, Finalize, FinalizeResult};
    const JOBS: u64 = 400;
    const WORKERS: usize = 16;
    let dir = dir();
    let path = dir.path().join("busy.db");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let store = SqliteStorage::open_with(&path, options)
            .await
            .expect("open");
        let store = std::sync::Arc::new(store);
        let reqs = (0..JOBS)
            .map(|i| EnqueueRequest::new("k", json!(i)))
            .collect();
        store.enqueue_batch(reqs).await.expect("enqueue");
        let mut tasks = Vec::new();
        for w in 0..WORKERS {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let owner = format!("n/default/{w}");
                let mut done = 0u64;
                loop {
                    let jobs = store.claim("default", &owner, 1).await.expect("claim");
                    let Some(job) = jobs.first() else { return done };
                    let claim = Claim {
                        job: job.id,
                        attempt: job.attempt,
                    };
                    let result = store
                        .finalize(claim, &owner, Finalize::Completed)
                        .await
                        .expect("finalize");
                    assert_eq!(result, FinalizeResult::Applied);
                    done += 1;
                }
            }));
        }
        let mut total = 0;
        for t in tasks {
            total += t.await.expect("worker");
        }
        assert_eq!(total, JOBS, "every job claimed and finalized once");
        assert!(store.list_unfinished(10).await.expect("list").is_empty());
    });
}

/// Every stored time is judged against the engine's own clock, read once per
/// call, and never against the caller's: leases expire, claims go stale,
/// retries and snoozes come due and finished jobs age out as that clock moves,
/// and not before; a renewal after the clock stepped back never shortens a grant.
#[test]
fn the_engine_judges_every_stored_time_by_its_own_clock() {
    use crate::storage::{Claim, Finalize, FinalizeResult, JobId};
    let (clock, options) = manual();
    let engine = SqliteEngine::in_memory_with(options).expect("open");
    let secs = Duration::from_secs;
    assert_eq!(ready(engine.time()).expect("time"), T0);

    // Leases: expiry and takeover on storage's clock; renew never shortens.
    let ttl = secs(10);
    let granted = ready(engine.try_acquire("m", "a", ttl))
        .expect("acquire")
        .expect("granted");
    assert_eq!(granted.expires_at, T0.plus(ttl));
    clock.advance(secs(9));
    assert_eq!(
        ready(engine.try_acquire("m", "b", ttl)).expect("acquire"),
        None,
        "a's grant is live until T0 + ttl"
    );
    clock.set(T0.minus(secs(60)));
    assert!(ready(engine.renew("m", "a", granted.term, ttl)).expect("renew"));
    let lease = ready(engine.get_lease("m")).expect("get").expect("kept");
    assert_eq!(
        lease.expires_at,
        T0.plus(ttl),
        "a renewal after the clock stepped back keeps the grant"
    );
    clock.set(T0.plus(ttl));
    let taken = ready(engine.try_acquire("m", "b", ttl))
        .expect("acquire")
        .expect("expired: b takes over");
    assert_eq!(
        (taken.term.0, taken.expires_at),
        (granted.term.0 + 1, T0.plus(ttl).plus(ttl))
    );

    // Due times: a scheduled job is not claimed, nor promoted, before its time.
    clock.set(T0);
    let later = ready(
        engine.enqueue(EnqueueRequest::new("later", json!(null)).scheduled_at(T0.plus(secs(5)))),
    )
    .expect("enqueue")
    .id();
    assert_eq!(ready(engine.promote_due()).expect("promote"), 0);
    clock.advance(secs(5));
    assert_eq!(ready(engine.promote_due()).expect("promote"), 1);
    let claimed = ready(engine.claim("default", "w", 5)).expect("claim");
    assert_eq!(
        claimed.iter().map(|j| j.id).collect::<Vec<_>>(),
        vec![later]
    );
    let claim = Claim {
        job: later,
        attempt: 1,
    };
    assert_eq!(claimed[0].heartbeat_at, Some(T0.plus(secs(5))));

    // A retry's delay runs from storage's now.
    let retry = Finalize::Retry {
        error: "boom".into(),
        delay: secs(30),
    };
    assert_eq!(
        ready(engine.finalize(claim, "w", retry)).expect("finalize"),
        FinalizeResult::Applied
    );
    let job = ready(engine.get_job(later)).expect("get").expect("kept");
    assert_eq!(
        (job.state, job.scheduled_at),
        (JobState::Retryable, T0.plus(secs(35)))
    );
    clock.advance(secs(29));
    assert_eq!(ready(engine.promote_due()).expect("promote"), 0);
    clock.advance(secs(1));
    assert_eq!(ready(engine.promote_due()).expect("promote"), 1);

    // A snooze's delay too, without spending an attempt.
    let claimed = ready(engine.claim("default", "w", 5)).expect("claim");
    let claim = Claim {
        job: later,
        attempt: claimed[0].attempt,
    };
    let snooze = Finalize::Snooze { delay: secs(7) };
    ready(engine.finalize(claim, "w", snooze)).expect("finalize");
    let job = ready(engine.get_job(later)).expect("get").expect("kept");
    assert_eq!(
        (job.state, job.scheduled_at),
        (JobState::Scheduled, T0.plus(secs(42)))
    );

    // Staleness: a claim is rescued only once its heartbeat is older than the
    // window on storage's clock.
    clock.advance(secs(7));
    assert_eq!(ready(engine.promote_due()).expect("promote"), 1);
    let claimed = ready(engine.claim("default", "w", 5)).expect("claim");
    let claim = Claim {
        job: later,
        attempt: claimed[0].attempt,
    };
    let window = secs(10);
    clock.advance(window);
    assert!(
        ready(engine.rescue_stale(window))
            .expect("rescue")
            .is_empty(),
        "a heartbeat exactly the window old is not stale"
    );
    clock.advance(Duration::from_millis(1));
    assert_eq!(
        ready(engine.rescue_stale(window)).expect("rescue"),
        vec![claim]
    );
    let job = ready(engine.get_job(later)).expect("get").expect("kept");
    assert_eq!(
        (job.state, job.scheduled_at),
        (JobState::Retryable, clock.now()),
        "a rescued job is due at once"
    );

    // Retention: a finished job is deleted only once it finished that long ago.
    let finished_at = clock.now();
    assert_eq!(ready(engine.promote_due()).expect("promote"), 1);
    let retried = ready(engine.claim("default", "w", 5)).expect("claim");
    let claim = Claim {
        job: later,
        attempt: retried[0].attempt,
    };
    ready(engine.finalize(claim, "w", Finalize::Completed)).expect("finalize");
    let job = ready(engine.get_job(later)).expect("get").expect("kept");
    assert_eq!(job.finalized_at, Some(finished_at));
    let retention = secs(3600);
    clock.advance(retention);
    assert_eq!(ready(engine.cleanup(retention, 10)).expect("cleanup"), 0);
    clock.advance(Duration::from_millis(1));
    assert_eq!(ready(engine.cleanup(retention, 10)).expect("cleanup"), 1);
    assert_eq!(ready(engine.get_job(JobId(later.0))).expect("get"), None);
}

/// `SqliteStorage::open_with` hands the options' clock to its thread: what the
/// thread judges against is that clock, not the machine's.
#[test]
fn the_storage_thread_reads_the_clock_it_was_opened_with() {
    let dir = dir();
    let path = dir.path().join("keel.db");
    let (clock, options) = manual();
    block(async {
        let storage = SqliteStorage::open_with(&path, options)
            .await
            .expect("open");
        assert_eq!(storage.time().await.expect("time"), T0);
        let due = T0.plus(Duration::from_secs(60));
        let id = storage
            .enqueue(EnqueueRequest::new("email", json!(null)).scheduled_at(due))
            .await
            .expect("enqueue")
            .id();
        assert_eq!(storage.promote_due().await.expect("promote"), 0);
        clock.set(due);
        assert_eq!(storage.time().await.expect("time"), due);
        assert_eq!(storage.promote_due().await.expect("promote"), 1);
        let jobs = storage.claim("default", "w", 5).await.expect("claim");
        assert_eq!(jobs.iter().map(|j| j.id).collect::<Vec<_>>(), vec![id]);
        assert_eq!(jobs[0].heartbeat_at, Some(due));
    });
}
