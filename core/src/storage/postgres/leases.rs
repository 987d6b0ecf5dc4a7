//! [`LeaseStore`] for [`PostgresStorage`]: the rules of `MemStorage`'s leases,
//! judged on the server's clock (or a test clock; see the module docs, "Time").

use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::Transaction;
use tokio_postgres::Row;

use super::rows::{read_rows, text_of};
use super::{now_sql, plus_sql, read, sql_ms, transact, Fail, NowParam, PostgresStorage};
use crate::clock::Timestamp;
use crate::storage::{
    validate_holder, validate_lease_name, Lease, LeaseStore, StorageResult, Term,
};

pub(super) fn lease_from_row(name: &str, row: &Row) -> Result<Lease, Fail> {
    let term: i64 = row.try_get(0)?;
    let holder: Option<Vec<u8>> = row.try_get(1)?;
    Ok(Lease {
        name: name.to_owned(),
        term: Term(u64::try_from(term).map_err(|_| Fail::Corrupt(format!("lease term {term}")))?),
        holder: holder.map(|h| text_of("holder", h)).transpose()?,
        expires_at: Timestamp(row.try_get(2)?),
    })
}

/// A term as SQL stores it; `None` for terms no row can have.
fn sql_term(term: Term) -> Option<i64> {
    i64::try_from(term.0).ok()
}

/// Lock lease `name` for the rest of the transaction, if it exists.
pub(super) async fn lock_lease(tx: &Transaction<'_>, name: &str) -> Result<Option<Lease>, Fail> {
    let statement = tx
        .prepare_cached(
            "SELECT term, holder, expires_at FROM keel_leases WHERE name = $1 FOR UPDATE",
        )
        .await?;
    match tx.query_opt(&statement, &[&name.as_bytes()]).await? {
        Some(row) => Ok(Some(lease_from_row(name, &row)?)),
        None => Ok(None),
    }
}

/// Whether `holder` holds `term` of `lease`: the fencing check of leadership.
pub(super) fn holds(lease: Option<&Lease>, holder: &str, term: Term) -> bool {
    lease.is_some_and(|l| l.term == term && l.holder.as_deref() == Some(holder))
}

async fn try_acquire_tx(
    tx: &Transaction<'_>,
    name: &str,
    holder: &str,
    ttl: Duration,
    known: Option<Term>,
    now: NowParam,
) -> Result<Option<Lease>, Fail> {
    // Make sure a row exists before locking it, so two first acquirers queue on
    // one row lock instead of both seeing "absent". The placeholder (term 0, no
    // holder) is never live, so it grants exactly as an absent lease does. The
    // same statement reads the time this transaction judges at.
    let sql = format!(
        "WITH placeholder AS (INSERT INTO keel_leases (name, term, holder, expires_at) \
         VALUES ($1, 0, NULL, 0) ON CONFLICT (name) DO NOTHING) SELECT {}",
        now_sql(2)
    );
    let statement = tx.prepare_cached(&sql).await?;
    let row = tx.query_one(&statement, &[&name.as_bytes(), &now]).await?;
    let now = Timestamp(row.try_get(0)?);
    let previous = lock_lease(tx, name)
        .await?
        .expect("the row was inserted or already present");
    let grantable = previous.grantable(holder, known, now);
    if !grantable {
        return Ok(None);
    }
    let lease = Lease {
        name: name.to_owned(),
        term: Term(previous.term.0 + 1),
        holder: Some(holder.to_owned()),
        expires_at: now.plus(ttl),
    };
    assert!(lease.term > previous.term, "terms strictly increase");
    let term = sql_term(lease.term)
        .ok_or_else(|| Fail::Corrupt(format!("lease term {} overflows", lease.term)))?;
    let statement = tx
        .prepare_cached(
            "UPDATE keel_leases SET term = $2, holder = $3, expires_at = $4 WHERE name = $1",
        )
        .await?;
    tx.execute(
        &statement,
        &[
            &name.as_bytes(),
            &term,
            &holder.as_bytes(),
            &lease.expires_at.0,
        ],
    )
    .await?;
    Ok(Some(lease))
}

#[async_trait]
impl LeaseStore for PostgresStorage {
    async fn try_acquire_fenced(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
        known: Option<Term>,
    ) -> StorageResult<Option<Lease>> {
        validate_lease_name(name)?;
        validate_holder(holder)?;
        let now = self.now_param();
        transact!(self, |tx| try_acquire_tx(
            &tx, name, holder, ttl, known, now
        )
        .await?)
    }

    async fn renew(
        &self,
        name: &str,
        holder: &str,
        term: Term,
        ttl: Duration,
    ) -> StorageResult<bool> {
        validate_lease_name(name)?;
        validate_holder(holder)?;
        let Some(term) = sql_term(term) else {
            return Ok(false);
        };
        let now = self.now_param();
        let ttl = sql_ms(ttl);
        // Never shorten a grant: after the server's clock stepped back, a renewal
        // must not expire a lease earlier than already promised.
        let sql = format!(
            "UPDATE keel_leases SET expires_at = GREATEST(expires_at, {}) \
             WHERE name = $1 AND term = $2 AND holder = $3",
            plus_sql(&now_sql(4), "$5::bigint")
        );
        transact!(self, |tx| {
            let statement = tx.prepare_cached(&sql).await?;
            let changed = tx
                .execute(
                    &statement,
                    &[&name.as_bytes(), &term, &holder.as_bytes(), &now, &ttl],
                )
                .await?;
            changed == 1
        })
    }

    async fn resign(&self, name: &str, holder: &str, term: Term) -> StorageResult<bool> {
        validate_lease_name(name)?;
        validate_holder(holder)?;
        let Some(term) = sql_term(term) else {
            return Ok(false);
        };
        transact!(self, |tx| {
            // Keep the row: the next grant must still get a higher term.
            let statement = tx
                .prepare_cached(
                    "UPDATE keel_leases SET holder = NULL \
                     WHERE name = $1 AND term = $2 AND holder = $3",
                )
                .await?;
            let changed = tx
                .execute(&statement, &[&name.as_bytes(), &term, &holder.as_bytes()])
                .await?;
            changed == 1
        })
    }

    async fn get_lease(&self, name: &str) -> StorageResult<Option<Lease>> {
        validate_lease_name(name)?;
        read!(self, |client| {
            let rows = read_rows(
                &client,
                "SELECT term, holder, expires_at FROM keel_leases WHERE name = $1",
                &[&name.as_bytes()],
            )
            .await?;
            match rows.first() {
                // A term-0 placeholder is never committed; were it, it is no grant.
                Some(row) => Some(lease_from_row(name, row)?).filter(|l| l.term.0 > 0),
                None => None,
            }
        })
    }

    async fn maintenance_heartbeat(
        &self,
        name: &str,
        holder: &str,
        term: Term,
    ) -> StorageResult<bool> {
        validate_lease_name(name)?;
        validate_holder(holder)?;
        let Some(term) = sql_term(term) else {
            return Ok(false);
        };
        // A read of committed state suffices: the answer is "term was current when
        // asked", and any write that fences on it locks the lease row itself.
        read!(self, |client| {
            let rows = read_rows(
                &client,
                "SELECT 1 FROM keel_leases WHERE name = $1 AND term = $2 AND holder = $3",
                &[&name.as_bytes(), &term, &holder.as_bytes()],
            )
            .await?;
            !rows.is_empty()
        })
    }
}
