//! Storage's side of a chaos run, read from the database itself.
//!
//! The simulator records what its database host applied ([`DbEvent`]) as it
//! applies it. A real database applies requests whose replies a fault then
//! loses, so nothing a process saw can stand for what storage did. Instead the
//! harness installs triggers (its own, beside keel's schema, never part of it)
//! that append each change keel makes to `keel_chaos_audit` in the same
//! transaction, stamped with the machine's true time. A commit that rolls back
//! leaves no audit row; a commit whose reply is lost leaves one. At the end the
//! harness reads the rows back and [`interpret`]s them into the simulator's
//! [`DbEvent`]s:
//!
//! | change | event |
//! | --- | --- |
//! | job row inserted | `JobInserted` (and `JobScheduled` if not yet due) |
//! | job to `running`, attempt + 1 | `ClaimApplied` |
//! | job's `finalized_attempt` set, or left `running` otherwise | `FinalizeApplied` (the finalized attempt, the new state) |
//! | job left `running` with "attempt N lost its worker" appended | `RescueApplied` |
//! | waiting job to `cancelled` | `CancelApplied` |
//! | effect row inserted | `EffectApplied` (the job's attempt as the row was written) |
//! | lease to a new term with a holder | `LeaseGranted` (`evicted`: the old term, if still live) |
//! | lease holder cleared, same term | `ResignApplied` |
//! | periodic slot inserted | `PeriodicInserted`, and `HeartbeatAccepted` for the term it was fenced on |
//!
//! Keel's maintenance heartbeat is a read and leaves no row; the periodic
//! firing, a write fenced under the locked lease row, stands in as the
//! term-fenced write `one_leader_per_term` orders.
//!
//! Time: PostgreSQL stamps `clock_timestamp()` in microseconds. SQLite's
//! `'now'` has whole milliseconds only, so a stamp `T` means some time in
//! `[T, T+1)`: events that cause what processes do next (claims, grants,
//! inserts, rescues, cancels) take the start of that millisecond, and events
//! caused by what a process did (finalizes, effects, resigns) its end, so a
//! merge within one millisecond keeps cause before effect.

use serde::Deserialize;

use keel::storage::{JobId, JobState, Term};
use sim::run::history::DbEvent;

/// The audit table.
pub const AUDIT_TABLE: &str = "keel_chaos_audit";

/// Triggers for PostgreSQL, in `schema` (keel's tables must exist there);
/// `lease` is the lease whose term fences periodic firings.
pub fn postgres_sql(schema: &str, lease: &str) -> String {
    let row = |r: &str| {
        format!(
            "json_build_object('id', {r}.id, 'state', {r}.state, 'attempt', {r}.attempt, \
             'max_attempts', {r}.max_attempts, 'owner', convert_from({r}.owner, 'UTF8'), \
             'heartbeat_at', {r}.heartbeat_at, 'finalized_attempt', {r}.finalized_attempt, \
             'scheduled_at', {r}.scheduled_at, 'errors', {r}.errors)::TEXT"
        )
    };
    let lease_row = |r: &str| {
        format!(
            "json_build_object('term', {r}.term, 'holder', convert_from({r}.holder, 'UTF8'), \
             'expires_at', {r}.expires_at)::TEXT"
        )
    };
    let lease = lease.replace('\'', "''");
    let now = "(extract(epoch FROM clock_timestamp()) * 1000000)::BIGINT";
    let audit = format!("\"{schema}\".{AUDIT_TABLE}");
    let func = |name: &str, tbl: &str, old: &str, new: &str| {
        format!(
            "CREATE FUNCTION \"{schema}\".{name}() RETURNS trigger LANGUAGE plpgsql AS $f$ \
             BEGIN INSERT INTO {audit} (at_us, tbl, old, new) VALUES ({now}, '{tbl}', \
             CASE WHEN TG_OP = 'UPDATE' THEN {old} END, {new}); RETURN NULL; END $f$;"
        )
    };
    let effect = format!(
        "json_build_object('job', NEW.job_id, 'key', NEW.key, 'attempt', \
         (SELECT attempt FROM \"{schema}\".keel_jobs WHERE id = NEW.job_id))::TEXT"
    );
    let periodic = format!(
        "json_build_object('name', NEW.name, 'slot', NEW.slot, 'job', NEW.job_id, \
         'term', l.term, 'holder', convert_from(l.holder, 'UTF8'))::TEXT \
         FROM \"{schema}\".keel_leases l WHERE l.name = convert_to('{lease}', 'UTF8')"
    );
    [
        format!(
            "CREATE TABLE {audit} (seq BIGSERIAL PRIMARY KEY, at_us BIGINT NOT NULL, \
             tbl TEXT NOT NULL, old TEXT, new TEXT);"
        ),
        func("keel_chaos_jobs", "jobs", &row("OLD"), &row("NEW")),
        func(
            "keel_chaos_leases",
            "leases",
            &lease_row("OLD"),
            &lease_row("NEW"),
        ),
        func("keel_chaos_effects", "effects", "NULL", &effect),
        // A SELECT, not a VALUES: the lease row comes from a join.
        format!(
            "CREATE FUNCTION \"{schema}\".keel_chaos_periodic() RETURNS trigger LANGUAGE plpgsql \
             AS $f$ BEGIN INSERT INTO {audit} (at_us, tbl, old, new) SELECT {now}, 'periodic', \
             NULL, {periodic}; RETURN NULL; END $f$;"
        ),
        trigger_pg(schema, "keel_jobs", "keel_chaos_jobs", "INSERT OR UPDATE"),
        trigger_pg(
            schema,
            "keel_leases",
            "keel_chaos_leases",
            "INSERT OR UPDATE",
        ),
        trigger_pg(schema, "keel_effects", "keel_chaos_effects", "INSERT"),
        trigger_pg(schema, "keel_periodic", "keel_chaos_periodic", "INSERT"),
    ]
    .join("\n")
}

fn trigger_pg(schema: &str, table: &str, func: &str, ops: &str) -> String {
    format!(
        "CREATE TRIGGER {func} AFTER {ops} ON \"{schema}\".{table} FOR EACH ROW \
         EXECUTE FUNCTION \"{schema}\".{func}();"
    )
}

/// Triggers for SQLite (keel's tables must exist in the file).
pub fn sqlite_sql(lease: &str) -> String {
    let row = |r: &str| {
        format!(
            "json_object('id', {r}.id, 'state', {r}.state, 'attempt', {r}.attempt, \
             'max_attempts', {r}.max_attempts, 'owner', {r}.owner, \
             'heartbeat_at', {r}.heartbeat_at, 'finalized_attempt', {r}.finalized_attempt, \
             'scheduled_at', {r}.scheduled_at, 'errors', {r}.errors)"
        )
    };
    let lease_row = |r: &str| {
        format!("json_object('term', {r}.term, 'holder', {r}.holder, 'expires_at', {r}.expires_at)")
    };
    let lease = lease.replace('\'', "''");
    let now = "CAST(round((julianday('now') - 2440587.5) * 86400000.0) AS INTEGER) * 1000";
    let trigger = |name: &str, when: &str, table: &str, tbl: &str, old: &str, new: &str| {
        format!(
            "CREATE TRIGGER {name} AFTER {when} ON {table} BEGIN \
             INSERT INTO {AUDIT_TABLE} (at_us, tbl, old, new) VALUES ({now}, '{tbl}', {old}, {new}); \
             END;"
        )
    };
    let effect = "json_object('job', NEW.job_id, 'key', NEW.key, 'attempt', \
                  (SELECT attempt FROM keel_jobs WHERE id = NEW.job_id))";
    let periodic = format!(
        "json_object('name', NEW.name, 'slot', NEW.slot, 'job', NEW.job_id, \
         'term', (SELECT term FROM keel_leases WHERE name = '{lease}'), \
         'holder', (SELECT holder FROM keel_leases WHERE name = '{lease}'))"
    );
    [
        format!(
            "CREATE TABLE {AUDIT_TABLE} (seq INTEGER PRIMARY KEY AUTOINCREMENT, \
             at_us INTEGER NOT NULL, tbl TEXT NOT NULL, old TEXT, new TEXT);"
        ),
        trigger(
            "keel_chaos_jobs_ins",
            "INSERT",
            "keel_jobs",
            "jobs",
            "NULL",
            &row("NEW"),
        ),
        trigger(
            "keel_chaos_jobs_upd",
            "UPDATE",
            "keel_jobs",
            "jobs",
            &row("OLD"),
            &row("NEW"),
        ),
        trigger(
            "keel_chaos_leases_ins",
            "INSERT",
            "keel_leases",
            "leases",
            "NULL",
            &lease_row("NEW"),
        ),
        trigger(
            "keel_chaos_leases_upd",
            "UPDATE",
            "keel_leases",
            "leases",
            &lease_row("OLD"),
            &lease_row("NEW"),
        ),
        trigger(
            "keel_chaos_effects",
            "INSERT",
            "keel_effects",
            "effects",
            "NULL",
            effect,
        ),
        trigger(
            "keel_chaos_periodic",
            "INSERT",
            "keel_periodic",
            "periodic",
            "NULL",
            &periodic,
        ),
    ]
    .join("\n")
}

/// The columns every engine's reader selects, in this order.
pub const SELECT_SQL: &str = "SELECT at_us, tbl, old, new FROM keel_chaos_audit ORDER BY seq";

/// One audit row as read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditRow {
    /// The machine's true time of the change, Unix µs.
    pub at_us: i64,
    /// `jobs`, `leases`, `effects` or `periodic`.
    pub tbl: String,
    /// The row before an update, as JSON.
    pub old: Option<String>,
    /// The row after, as JSON.
    pub new: Option<String>,
}

/// An audit row that does not read as the harness wrote it.
#[derive(Debug, thiserror::Error)]
#[error("audit row {index} ({tbl}): {reason}")]
pub struct AuditError {
    /// Its position in the table.
    pub index: usize,
    /// Its table.
    pub tbl: String,
    /// What is wrong.
    pub reason: String,
}

#[derive(Debug, Deserialize)]
struct JobRow {
    id: u64,
    state: String,
    attempt: u32,
    max_attempts: u32,
    owner: Option<String>,
    heartbeat_at: Option<i64>,
    finalized_attempt: Option<u32>,
    #[serde(default)]
    scheduled_at: i64,
    errors: String,
}

#[derive(Debug, Deserialize)]
struct LeaseRow {
    term: u64,
    holder: Option<String>,
    expires_at: i64,
}

#[derive(Debug, Deserialize)]
struct EffectRow {
    job: u64,
    key: String,
    attempt: Option<u32>,
}

#[derive(Debug, Deserialize)]
struct PeriodicRow {
    name: String,
    slot: i64,
    job: u64,
    term: Option<u64>,
    holder: Option<String>,
}

/// Whether an event causes what processes do next (stamped at the start of a
/// coarse stamp's millisecond) or follows from what a process did (its end).
fn is_cause(ev: &DbEvent) -> bool {
    !matches!(
        ev,
        DbEvent::FinalizeApplied { .. }
            | DbEvent::EffectApplied { .. }
            | DbEvent::ResignApplied { .. }
            | DbEvent::HeartbeatAccepted { .. }
    )
}

/// The storage events `rows` record, each with its true time in Unix µs.
/// `coarse_ms` says the stamps are whole milliseconds (SQLite); see the
/// [module docs](self). `epoch_unix_ms` is the run's start, which claim
/// heartbeats are counted from.
pub fn interpret(
    rows: &[AuditRow],
    coarse_ms: bool,
    epoch_unix_ms: i64,
) -> Result<Vec<(i64, DbEvent)>, AuditError> {
    let mut out = Vec::new();
    for (index, row) in rows.iter().enumerate() {
        let events = row_events(row, epoch_unix_ms).map_err(|reason| AuditError {
            index,
            tbl: row.tbl.clone(),
            reason,
        })?;
        for ev in events {
            let at_us = match (coarse_ms, is_cause(&ev)) {
                (false, _) | (true, true) => row.at_us,
                (true, false) => row.at_us + 999,
            };
            out.push((at_us, ev));
        }
    }
    Ok(out)
}

/// The events one audit row records.
fn row_events(row: &AuditRow, epoch_unix_ms: i64) -> Result<Vec<DbEvent>, String> {
    fn parse<T: serde::de::DeserializeOwned>(text: Option<&str>) -> Result<Option<T>, String> {
        text.map(serde_json::from_str)
            .transpose()
            .map_err(|e| e.to_string())
    }
    let (old, new) = (row.old.as_deref(), row.new.as_deref());
    match row.tbl.as_str() {
        "jobs" => job_events(parse(old)?, parse(new)?, epoch_unix_ms),
        "leases" => lease_events(parse(old)?, parse(new)?, row.at_us / 1000),
        "effects" => Ok(parse::<EffectRow>(new)?
            .map(|e| DbEvent::EffectApplied {
                job: JobId(e.job),
                attempt: e.attempt.unwrap_or(0),
                key: e.key,
            })
            .into_iter()
            .collect()),
        "periodic" => {
            let Some(p) = parse::<PeriodicRow>(new)? else {
                return Ok(vec![]);
            };
            let mut events = vec![DbEvent::PeriodicInserted {
                name: p.name,
                slot_ms: p.slot,
                job: JobId(p.job),
            }];
            if let (Some(term), Some(holder)) = (p.term, p.holder) {
                events.push(DbEvent::HeartbeatAccepted {
                    holder,
                    term: Term(term),
                });
            }
            Ok(events)
        }
        other => Err(format!("unknown table {other:?}")),
    }
}

fn state_of(text: &str) -> Result<JobState, String> {
    JobState::parse(text).ok_or_else(|| format!("unknown job state {text:?}"))
}

/// What one job row change was; see the [module docs](self).
fn job_events(
    old: Option<JobRow>,
    new: Option<JobRow>,
    epoch_unix_ms: i64,
) -> Result<Vec<DbEvent>, String> {
    let Some(new) = new else { return Ok(vec![]) };
    let job = JobId(new.id);
    let Some(old) = old else {
        let mut events = vec![DbEvent::JobInserted { job }];
        if state_of(&new.state)? == JobState::Scheduled {
            events.push(DbEvent::JobScheduled {
                job,
                due_ms: new.scheduled_at - epoch_unix_ms,
            });
        }
        return Ok(events);
    };
    let (was, is) = (state_of(&old.state)?, state_of(&new.state)?);
    let running = JobState::Running;
    if is == running && was != running {
        return Ok(vec![DbEvent::ClaimApplied {
            job,
            attempt: new.attempt,
            owner: new.owner.unwrap_or_default(),
            max_attempts: new.max_attempts,
            heartbeat_ms: new.heartbeat_at.map_or(0, |t| t - epoch_unix_ms),
            issued_ms: 0,
        }]);
    }
    let rescued = {
        let errors: Vec<String> = serde_json::from_str(&new.errors).unwrap_or_default();
        let mark = format!("attempt {} lost its worker", old.attempt);
        was == running && is != running && errors.last() == Some(&mark)
    };
    if rescued && new.finalized_attempt == old.finalized_attempt {
        return Ok(vec![DbEvent::RescueApplied {
            job,
            attempt: old.attempt,
            issued_ms: 0,
        }]);
    }
    if new.finalized_attempt != old.finalized_attempt || (was == running && is != running) {
        return Ok(vec![DbEvent::FinalizeApplied {
            job,
            attempt: new.finalized_attempt.unwrap_or(old.attempt),
            state: is,
        }]);
    }
    if is == JobState::Cancelled && was != JobState::Cancelled {
        return Ok(vec![DbEvent::CancelApplied { job }]);
    }
    Ok(vec![])
}

/// What one lease row change was; `now_ms` is storage's time of the change.
fn lease_events(
    old: Option<LeaseRow>,
    new: Option<LeaseRow>,
    now_ms: i64,
) -> Result<Vec<DbEvent>, String> {
    let Some(new) = new else { return Ok(vec![]) };
    match (old, new.holder) {
        (Some(old), None) if old.term == new.term => Ok(old
            .holder
            .map(|holder| DbEvent::ResignApplied {
                holder,
                term: Term(old.term),
            })
            .into_iter()
            .collect()),
        (old, Some(holder)) if old.as_ref().is_none_or(|o| o.term != new.term) => {
            let evicted = old
                .filter(|o| o.holder.is_some() && o.expires_at > now_ms)
                .map(|o| Term(o.term));
            Ok(vec![DbEvent::LeaseGranted {
                holder,
                term: Term(new.term),
                evicted,
            }])
        }
        _ => Ok(vec![]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(state: &str, attempt: u32, finalized: Option<u32>, errors: &[&str]) -> String {
        serde_json::json!({
            "id": 7, "state": state, "attempt": attempt, "max_attempts": 5,
            "owner": (state == "running").then_some("p1/w0"), "heartbeat_at": 1_500,
            "finalized_attempt": finalized, "errors": serde_json::to_string(errors).expect("strings"),
        })
        .to_string()
    }

    fn row(tbl: &str, old: Option<String>, new: String) -> AuditRow {
        AuditRow {
            at_us: 2_000_000,
            tbl: tbl.into(),
            old,
            new: Some(new),
        }
    }

    fn events(rows: &[AuditRow]) -> Vec<DbEvent> {
        let out = interpret(rows, false, 1_000).expect("interpret");
        out.into_iter().map(|(_, e)| e).collect()
    }

    #[test]
    fn job_row_changes_read_as_the_simulators_events() {
        let rows = [
            row("jobs", None, job("available", 0, None, &[])),
            row(
                "jobs",
                Some(job("available", 0, None, &[])),
                job("running", 1, None, &[]),
            ),
            row(
                "jobs",
                Some(job("running", 1, None, &[])),
                job("retryable", 1, Some(1), &["boom"]),
            ),
            row(
                "jobs",
                Some(job("available", 1, Some(1), &["boom"])),
                job("running", 2, Some(1), &["boom"]),
            ),
            row(
                "jobs",
                Some(job("running", 2, Some(1), &["boom"])),
                job(
                    "retryable",
                    2,
                    Some(1),
                    &["boom", "attempt 2 lost its worker"],
                ),
            ),
            // Promotion and a heartbeat change nothing the checkers read.
            row(
                "jobs",
                Some(job("retryable", 2, Some(1), &[])),
                job("available", 2, Some(1), &[]),
            ),
            row(
                "jobs",
                Some(job("scheduled", 2, Some(1), &[])),
                job("cancelled", 2, Some(1), &[]),
            ),
        ];
        let job = JobId(7);
        assert_eq!(
            events(&rows),
            vec![
                DbEvent::JobInserted { job },
                DbEvent::ClaimApplied {
                    job,
                    attempt: 1,
                    owner: "p1/w0".into(),
                    max_attempts: 5,
                    heartbeat_ms: 500,
                    issued_ms: 0,
                },
                DbEvent::FinalizeApplied {
                    job,
                    attempt: 1,
                    state: JobState::Retryable,
                },
                DbEvent::ClaimApplied {
                    job,
                    attempt: 2,
                    owner: "p1/w0".into(),
                    max_attempts: 5,
                    heartbeat_ms: 500,
                    issued_ms: 0,
                },
                DbEvent::RescueApplied {
                    job,
                    attempt: 2,
                    issued_ms: 0
                },
                DbEvent::CancelApplied { job },
            ]
        );
    }

    /// A finalize that skipped the owner guard (the planted bug) names the
    /// attempt it finalized, not the attempt the row was on.
    #[test]
    fn a_stale_finalize_names_its_own_attempt() {
        let rows = [row(
            "jobs",
            Some(job("running", 3, Some(1), &[])),
            job("completed", 3, Some(2), &[]),
        )];
        assert_eq!(
            events(&rows),
            vec![DbEvent::FinalizeApplied {
                job: JobId(7),
                attempt: 2,
                state: JobState::Completed,
            }]
        );
    }

    #[test]
    fn lease_changes_read_as_grants_and_resigns() {
        let lease = |term: u64, holder: Option<&str>, expires_at: i64| {
            serde_json::json!({"term": term, "holder": holder, "expires_at": expires_at})
                .to_string()
        };
        let rows = [
            // keel's placeholder row is no grant.
            row("leases", None, lease(0, None, 0)),
            row(
                "leases",
                Some(lease(0, None, 0)),
                lease(1, Some("p1"), 9_000),
            ),
            // A renewal.
            row(
                "leases",
                Some(lease(1, Some("p1"), 9_000)),
                lease(1, Some("p1"), 12_000),
            ),
            // Re-granted while live (at 2 000 ms): term 1 is evicted.
            row(
                "leases",
                Some(lease(1, Some("p1"), 12_000)),
                lease(2, Some("p1"), 14_000),
            ),
            row(
                "leases",
                Some(lease(2, Some("p1"), 14_000)),
                lease(2, None, 14_000),
            ),
        ];
        assert_eq!(
            events(&rows),
            vec![
                DbEvent::LeaseGranted {
                    holder: "p1".into(),
                    term: Term(1),
                    evicted: None,
                },
                DbEvent::LeaseGranted {
                    holder: "p1".into(),
                    term: Term(2),
                    evicted: Some(Term(1)),
                },
                DbEvent::ResignApplied {
                    holder: "p1".into(),
                    term: Term(2),
                },
            ]
        );
    }

    #[test]
    fn coarse_stamps_put_causes_first_and_consequences_last() {
        let effect = serde_json::json!({"job": 7, "key": "k", "attempt": 1}).to_string();
        let rows = [
            row("jobs", None, job("available", 0, None, &[])),
            row("effects", None, effect),
        ];
        let out = interpret(&rows, true, 0).expect("interpret");
        assert_eq!(out[0].0, 2_000_000, "an insert at the millisecond's start");
        assert_eq!(out[1].0, 2_000_999, "an effect at its end");
    }

    #[test]
    fn a_row_that_is_not_json_names_its_index_and_table() {
        let rows = [row("jobs", None, "{not json".into())];
        let err = interpret(&rows, false, 0).expect_err("bad row");
        assert!(err.to_string().starts_with("audit row 0 (jobs)"), "{err}");
    }
}
