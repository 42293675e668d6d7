//! Direct upload sessions (see the `upload_sessions` migration). A session is processed once: whoever moves
//! it from `pending` to `processing` (a client's completion, the bucket's event, the expiry sweep) owns it
//! until it finishes or its claim lapses.

use chrono::NaiveDateTime;
use diesel::prelude::*;

use super::schema::upload_sessions;
pub use super::status::SessionStatus;
use super::{DbConnection, DbError};

#[derive(Debug, Clone, PartialEq, Queryable, Selectable, Insertable)]
#[diesel(table_name = upload_sessions)]
pub struct SessionRow {
    pub id: String,
    pub status: SessionStatus,
    pub original_filename: Option<String>,
    pub description: Option<String>,
    pub byte_size: i64,
    pub content_type: String,
    /// The SHA-256 the client declared, checked against the bytes that arrive.
    pub sha256: Option<String>,
    pub image_id: Option<String>,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub created_at: NaiveDateTime,
    /// The upload URL's expiry; the session itself is swept a while later.
    pub expires_at: NaiveDateTime,
    pub claimed_until: Option<NaiveDateTime>,
    pub finished_at: Option<NaiveDateTime>,
    /// A client has been answered with the image's delete token.
    pub token_delivered: bool,
}

pub fn insert(conn: &mut DbConnection, row: &SessionRow) -> Result<(), DbError> {
    diesel::insert_into(upload_sessions::table).values(row).execute(conn)?;
    Ok(())
}

pub fn find(conn: &mut DbConnection, id: &str) -> Result<Option<SessionRow>, DbError> {
    Ok(upload_sessions::table
        .filter(upload_sessions::id.eq(id))
        .select(SessionRow::as_select())
        .first(conn)
        .optional()?)
}

/// Takes the session for processing until `until`: a pending one, or one whose earlier claim has lapsed (its
/// worker died). Whether it was taken.
pub fn claim(conn: &mut DbConnection, id: &str, now: NaiveDateTime, until: NaiveDateTime) -> Result<bool, DbError> {
    let claimable = upload_sessions::status
        .eq(SessionStatus::Pending)
        .or(upload_sessions::status.eq(SessionStatus::Processing).and(upload_sessions::claimed_until.lt(now)));
    let taken = diesel::update(upload_sessions::table.filter(upload_sessions::id.eq(id)).filter(claimable))
        .set((upload_sessions::status.eq(SessionStatus::Processing), upload_sessions::claimed_until.eq(Some(until))))
        .execute(conn)?;
    Ok(taken == 1)
}

/// Gives a claimed session back as pending: its file has not arrived yet.
pub fn release(conn: &mut DbConnection, id: &str) -> Result<(), DbError> {
    diesel::update(
        upload_sessions::table
            .filter(upload_sessions::id.eq(id))
            .filter(upload_sessions::status.eq(SessionStatus::Processing)),
    )
    .set((upload_sessions::status.eq(SessionStatus::Pending), upload_sessions::claimed_until.eq(None::<NaiveDateTime>)))
    .execute(conn)?;
    Ok(())
}

pub fn finish_stored(conn: &mut DbConnection, id: &str, image_id: &str, now: NaiveDateTime) -> Result<(), DbError> {
    diesel::update(upload_sessions::table.filter(upload_sessions::id.eq(id)))
        .set((
            upload_sessions::status.eq(SessionStatus::Stored),
            upload_sessions::image_id.eq(Some(image_id)),
            upload_sessions::claimed_until.eq(None::<NaiveDateTime>),
            upload_sessions::finished_at.eq(Some(now)),
        ))
        .execute(conn)?;
    Ok(())
}

pub fn finish_failed(
    conn: &mut DbConnection,
    id: &str,
    code: &str,
    message: &str,
    now: NaiveDateTime,
) -> Result<(), DbError> {
    diesel::update(upload_sessions::table.filter(upload_sessions::id.eq(id)))
        .set((
            upload_sessions::status.eq(SessionStatus::Failed),
            upload_sessions::error_code.eq(Some(code)),
            upload_sessions::error_message.eq(Some(message)),
            upload_sessions::claimed_until.eq(None::<NaiveDateTime>),
            upload_sessions::finished_at.eq(Some(now)),
        ))
        .execute(conn)?;
    Ok(())
}

/// Up to `limit` pending sessions whose URL expired before `before`.
pub fn expired(conn: &mut DbConnection, before: NaiveDateTime, limit: i64) -> Result<Vec<String>, DbError> {
    Ok(upload_sessions::table
        .filter(upload_sessions::status.eq(SessionStatus::Pending))
        .filter(upload_sessions::expires_at.lt(before))
        .order(upload_sessions::expires_at.asc())
        .limit(limit)
        .select(upload_sessions::id)
        .load(conn)?)
}

/// Marks a stored session's delete token as handed to a client; true for the one caller that does so first.
pub fn deliver_token(conn: &mut DbConnection, id: &str) -> Result<bool, DbError> {
    let marked = diesel::update(upload_sessions::table)
        .filter(upload_sessions::id.eq(id))
        .filter(upload_sessions::status.eq(SessionStatus::Stored))
        .filter(upload_sessions::token_delivered.eq(false))
        .set(upload_sessions::token_delivered.eq(true))
        .execute(conn)?;
    Ok(marked == 1)
}

/// Removes up to `limit` sessions that finished (stored or failed) before `before`; their images stay.
pub fn purge_finished(conn: &mut DbConnection, before: NaiveDateTime, limit: i64) -> Result<usize, DbError> {
    let ids: Vec<String> = upload_sessions::table
        .filter(upload_sessions::status.eq_any([SessionStatus::Stored, SessionStatus::Failed]))
        .filter(upload_sessions::finished_at.lt(before))
        .limit(limit)
        .select(upload_sessions::id)
        .load(conn)?;
    Ok(diesel::delete(upload_sessions::table.filter(upload_sessions::id.eq_any(&ids))).execute(conn)?)
}
