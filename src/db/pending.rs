//! Objects written ahead of their row (see the `pending_objects` migration). Whoever deletes an upload's
//! entries owns its objects: the upload's own row transaction (the objects stay), or the sweeper after the
//! grace period (the objects go). Exactly one of the two can, so no row ever points at swept objects.

use chrono::NaiveDateTime;
use diesel::prelude::*;

use super::schema::pending_objects;
use super::{DbConnection, DbError};

#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = pending_objects)]
struct PendingObject<'a> {
    object_key: &'a str,
    image_id: &'a str,
    created_at: NaiveDateTime,
}

/// Records the keys an upload is about to write.
pub fn record(conn: &mut DbConnection, image_id: &str, keys: &[&str], now: NaiveDateTime) -> Result<(), DbError> {
    // One statement per key: the multi-backend connection has no batch insert.
    for object_key in keys {
        let row = PendingObject { object_key, image_id, created_at: now };
        diesel::insert_into(pending_objects::table).values(&row).execute(conn)?;
    }
    Ok(())
}

/// Clears an upload's entries; inside its row's transaction. How many there were.
pub fn clear(conn: &mut DbConnection, image_id: &str) -> QueryResult<usize> {
    diesel::delete(pending_objects::table.filter(pending_objects::image_id.eq(image_id))).execute(conn)
}

/// Takes up to `limit` entries older than `before` away from their uploads, as (object key, image id): their
/// objects are the caller's to remove. On PostgreSQL, sweepers on several instances take disjoint sets.
pub fn claim_expired(
    conn: &mut DbConnection,
    before: NaiveDateTime,
    limit: i64,
) -> Result<Vec<(String, String)>, DbError> {
    let expired = pending_objects::table
        .filter(pending_objects::created_at.lt(before))
        .order(pending_objects::created_at.asc())
        .limit(limit)
        .select((pending_objects::object_key, pending_objects::image_id));
    let taken = |entries: &[(String, String)]| {
        let keys: Vec<String> = entries.iter().map(|(key, _)| key.clone()).collect();
        pending_objects::table.filter(pending_objects::object_key.eq_any(keys))
    };
    Ok(match conn {
        DbConnection::Postgresql(pg) => pg.transaction(|pg| {
            let entries: Vec<(String, String)> = expired.for_update().skip_locked().load(pg)?;
            diesel::delete(taken(&entries)).execute(pg)?;
            Ok::<_, diesel::result::Error>(entries)
        })?,
        DbConnection::Sqlite(sqlite) => sqlite.immediate_transaction(|sqlite| {
            let entries: Vec<(String, String)> = expired.load(sqlite)?;
            diesel::delete(taken(&entries)).execute(sqlite)?;
            Ok::<_, diesel::result::Error>(entries)
        })?,
    })
}

/// Which of `keys` an upload under way has listed as pending.
pub fn listed_keys(conn: &mut DbConnection, keys: &[String]) -> Result<Vec<String>, DbError> {
    Ok(pending_objects::table
        .filter(pending_objects::object_key.eq_any(keys))
        .select(pending_objects::object_key)
        .load(conn)?)
}
