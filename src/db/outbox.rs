//! The notification outbox. A relay claims due rows by moving them to `processing` with a lease (their
//! `available_at` becomes the lease's end); a relay that dies leaves rows whose lease runs out, and any relay
//! claims them again. `attempts` grows with each claim and doubles as the claim's token: only the relay
//! holding the latest claim can settle a row.

use chrono::NaiveDateTime;
use diesel::prelude::*;

use super::schema::outbox;
pub use super::status::OutboxStatus;
use super::{DbConnection, DbError};

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = outbox)]
pub struct OutboxRow {
    pub id: String,
    pub image_id: String,
    pub event_type: String,
    pub payload: String,
    pub status: OutboxStatus,
    pub attempts: i32,
    pub available_at: NaiveDateTime,
    pub last_error: Option<String>,
    pub created_at: NaiveDateTime,
    pub published_at: Option<NaiveDateTime>,
    /// Set when the row went out in a digest with others (see `relay`).
    pub digest_id: Option<String>,
    /// The W3C `traceparent` of the upload that wrote it, when its trace is exported: the publish joins it.
    pub traceparent: Option<String>,
}

/// Claims up to `limit` due rows until `lease_until`. On PostgreSQL, `FOR UPDATE SKIP LOCKED` lets relays on
/// several instances claim side by side without ever taking the same row; SQLite has a single writer.
pub fn claim_due(
    conn: &mut DbConnection,
    now: NaiveDateTime,
    lease_until: NaiveDateTime,
    limit: i64,
) -> Result<Vec<OutboxRow>, DbError> {
    let due = outbox::table
        .filter(outbox::status.eq_any([OutboxStatus::Pending, OutboxStatus::Processing]))
        .filter(outbox::available_at.le(now))
        .order(outbox::available_at.asc())
        .limit(limit)
        .select(outbox::id);
    let claim = |ids: Vec<String>| {
        diesel::update(outbox::table.filter(outbox::id.eq_any(ids))).set((
            outbox::status.eq(OutboxStatus::Processing),
            outbox::attempts.eq(outbox::attempts + 1),
            outbox::available_at.eq(lease_until),
        ))
    };
    Ok(match conn {
        DbConnection::Postgresql(pg) => pg.transaction(|pg| {
            let ids: Vec<String> = due.for_update().skip_locked().load(pg)?;
            claim(ids).returning(OutboxRow::as_returning()).get_results(pg)
        })?,
        DbConnection::Sqlite(sqlite) => sqlite.immediate_transaction(|sqlite| {
            let ids: Vec<String> = due.load(sqlite)?;
            claim(ids).returning(OutboxRow::as_returning()).get_results(sqlite)
        })?,
    })
}

/// The row as this relay claimed it: `attempts` doubles as the claim's token, so a row claimed again since
/// (its lease ran out) no longer matches.
#[diesel::dsl::auto_type(no_type_alias)]
fn still_claimed<'a>(row: &'a OutboxRow) -> _ {
    let id: &'a str = &row.id;
    let processing: OutboxStatus = OutboxStatus::Processing;
    let attempts: i32 = row.attempts;
    outbox::table.filter(outbox::id.eq(id)).filter(outbox::status.eq(processing)).filter(outbox::attempts.eq(attempts))
}

/// Gives a claimed row back as `status`, due at `available_at`; false when the claim was lost (the lease ran out
/// and another relay took it).
fn settle_unsent(
    conn: &mut DbConnection,
    row: &OutboxRow,
    status: OutboxStatus,
    available_at: NaiveDateTime,
    error: &str,
) -> Result<bool, DbError> {
    let changed = diesel::update(still_claimed(row))
        .set((outbox::status.eq(status), outbox::available_at.eq(available_at), outbox::last_error.eq(Some(error))))
        .execute(conn)?;
    Ok(changed == 1)
}

pub fn mark_retry(
    conn: &mut DbConnection,
    row: &OutboxRow,
    next_attempt: NaiveDateTime,
    error: &str,
) -> Result<bool, DbError> {
    settle_unsent(conn, row, OutboxStatus::Pending, next_attempt, error)
}

pub fn mark_failed(conn: &mut DbConnection, row: &OutboxRow, now: NaiveDateTime, error: &str) -> Result<bool, DbError> {
    settle_unsent(conn, row, OutboxStatus::Failed, now, error)
}

/// Settles claimed rows as published, in one transaction: each alone, or together in digest `digest_id`.
/// Returns how many were still this relay's.
pub fn mark_sent(
    conn: &mut DbConnection,
    rows: &[OutboxRow],
    now: NaiveDateTime,
    digest_id: Option<&str>,
) -> Result<usize, DbError> {
    conn.transaction(|conn| {
        let mut settled = 0;
        for row in rows {
            settled += diesel::update(still_claimed(row))
                .set((
                    outbox::status.eq(OutboxStatus::Sent),
                    outbox::available_at.eq(now),
                    outbox::published_at.eq(Some(now)),
                    outbox::digest_id.eq(digest_id),
                ))
                .execute(conn)?;
        }
        Ok(settled)
    })
}

/// Messages published since `since`: rows sent on their own, and digests (each counted once).
pub fn messages_since(conn: &mut DbConnection, since: NaiveDateTime) -> Result<i64, DbError> {
    let published = outbox::table.filter(outbox::status.eq(OutboxStatus::Sent)).filter(outbox::published_at.ge(since));
    let single: i64 = published.filter(outbox::digest_id.is_null()).count().get_result(conn)?;
    // A handful an hour at most: one per digest interval.
    let digests: Vec<Option<String>> =
        published.filter(outbox::digest_id.is_not_null()).select(outbox::digest_id).distinct().load(conn)?;
    Ok(single + digests.len() as i64)
}

/// When the last digest went out.
pub fn last_digest_at(conn: &mut DbConnection) -> Result<Option<NaiveDateTime>, DbError> {
    Ok(outbox::table
        .filter(outbox::digest_id.is_not_null())
        .select(diesel::dsl::max(outbox::published_at))
        .first(conn)?)
}

/// Gives claimed rows back unpublished and due now, their claim undone (`attempts` as before it), in one
/// transaction; how many were still this relay's.
pub fn release(conn: &mut DbConnection, rows: &[OutboxRow], now: NaiveDateTime) -> Result<usize, DbError> {
    conn.transaction(|conn| {
        let mut released = 0;
        for row in rows {
            released += diesel::update(still_claimed(row))
                .set((
                    outbox::status.eq(OutboxStatus::Pending),
                    outbox::available_at.eq(now),
                    outbox::attempts.eq(row.attempts - 1),
                ))
                .execute(conn)?;
        }
        Ok(released)
    })
}

/// `upshot outbox retry`: parked rows (all, or one) become due again with a fresh attempt budget.
pub fn retry_failed(conn: &mut DbConnection, id: Option<&str>, now: NaiveDateTime) -> Result<usize, DbError> {
    let mut query = diesel::update(outbox::table).filter(outbox::status.eq(OutboxStatus::Failed)).into_boxed();
    if let Some(id) = id {
        query = query.filter(outbox::id.eq(id));
    }
    Ok(query
        .set((outbox::status.eq(OutboxStatus::Pending), outbox::attempts.eq(0), outbox::available_at.eq(now)))
        .execute(conn)?)
}

/// Rows not yet published (pending or being published), and the creation time of the oldest.
#[derive(Debug, Clone, Copy, Default)]
pub struct Backlog {
    pub unsent: i64,
    pub failed: i64,
    pub oldest_unsent: Option<NaiveDateTime>,
}

impl Backlog {
    /// How long the oldest unsent notification has waited, in seconds.
    pub fn oldest_unsent_secs(&self) -> Option<i64> {
        self.oldest_unsent.map(|created| (crate::domain::now() - created).num_seconds().max(0))
    }
}

pub fn backlog(conn: &mut DbConnection) -> Result<Backlog, DbError> {
    let unsent_filter = outbox::status.eq_any([OutboxStatus::Pending, OutboxStatus::Processing]);
    let unsent = outbox::table.filter(unsent_filter).count().get_result(conn)?;
    let failed = failed_count(conn)?;
    let oldest_unsent = outbox::table
        .filter(outbox::status.eq_any([OutboxStatus::Pending, OutboxStatus::Processing]))
        .select(diesel::dsl::min(outbox::created_at))
        .first(conn)?;
    Ok(Backlog { unsent, failed, oldest_unsent })
}

/// Notifications parked as failed.
pub fn failed_count(conn: &mut DbConnection) -> Result<i64, DbError> {
    Ok(outbox::table.filter(outbox::status.eq(OutboxStatus::Failed)).count().get_result(conn)?)
}

/// Notifications still unsent that were written before `before`.
pub fn unsent_before(conn: &mut DbConnection, before: NaiveDateTime) -> Result<i64, DbError> {
    Ok(outbox::table
        .filter(outbox::status.eq_any([OutboxStatus::Pending, OutboxStatus::Processing]))
        .filter(outbox::created_at.lt(before))
        .count()
        .get_result(conn)?)
}

pub fn all(conn: &mut DbConnection) -> Result<Vec<OutboxRow>, DbError> {
    Ok(outbox::table.order(outbox::created_at.asc()).select(OutboxRow::as_select()).load(conn)?)
}
