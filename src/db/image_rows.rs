//! Queries on the `images` and `outbox` tables. Plain functions over a connection; callers choose the
//! transaction boundaries through `Db::run`.

use chrono::NaiveDateTime;
use diesel::prelude::*;

use super::json::Json;
use super::outbox::OutboxRow;
use super::schema::{images, outbox};
pub use super::status::ImageStatus;
use super::{DbConnection, DbError};
use crate::domain::ImageId;
use crate::inference::{FaceDetails, Prediction};

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = images)]
pub struct ImageRecord {
    pub id: ImageId,
    pub sha256: String,
    pub source_sha256: String,
    pub original_filename: Option<String>,
    pub description: Option<String>,
    pub format: String,
    pub content_type: String,
    pub byte_size: i64,
    pub width: i32,
    pub height: i32,
    pub original_key: String,
    pub thumbnail_key: String,
    pub thumbnail_content_type: String,
    /// The classifier's top labels, most probable first.
    pub predictions: Json<Vec<Prediction>>,
    pub model_name: Option<String>,
    pub model_version: Option<String>,
    pub status: ImageStatus,
    pub delete_token_hash: String,
    pub idempotency_key: Option<String>,
    pub created_at: NaiveDateTime,
    pub model_sha256: Option<String>,
    pub inference_ms: Option<f64>,
    /// The faces, the selfie analysis (or why there is none), the face model.
    pub analysis: Json<FaceDetails>,
    pub top_label: Option<String>,
    /// The display rendition, when the original needs one (see `ingest::display`).
    pub display_key: Option<String>,
    pub display_content_type: Option<String>,
    /// The ThumbHash placeholder (base64); none for images stored before placeholders.
    pub thumbhash: Option<String>,
}

/// Objects already stored for identical bytes, which a new upload may point at instead of storing again.
#[derive(Debug, Clone)]
pub struct StoredObjects {
    pub original_key: String,
    pub thumbnail_key: String,
    pub thumbnail_content_type: String,
    pub display_key: Option<String>,
    pub display_content_type: Option<String>,
}

impl StoredObjects {
    /// Every object's key: the original, the thumbnail, and the display rendition when there is one.
    pub fn keys(&self) -> Vec<&str> {
        let mut keys = vec![self.original_key.as_str(), self.thumbnail_key.as_str()];
        keys.extend(self.display_key.as_deref());
        keys
    }
}

/// Any row with this id, whatever its status: stored, missing, or left `deleting` by a failed delete.
pub fn find_any(conn: &mut DbConnection, id: &str) -> Result<Option<ImageRecord>, DbError> {
    Ok(images::table.filter(images::id.eq(id)).select(ImageRecord::as_select()).first(conn).optional()?)
}

pub fn find_by_idempotency_key(conn: &mut DbConnection, key: &str) -> Result<Option<ImageRecord>, DbError> {
    Ok(images::table.filter(images::idempotency_key.eq(key)).select(ImageRecord::as_select()).first(conn).optional()?)
}

pub fn find_objects_by_sha256(conn: &mut DbConnection, sha256: &str) -> Result<Option<StoredObjects>, DbError> {
    let found = images::table
        .filter(images::sha256.eq(sha256))
        .filter(images::status.eq(ImageStatus::Stored))
        .select((
            images::original_key,
            images::thumbnail_key,
            images::thumbnail_content_type,
            images::display_key,
            images::display_content_type,
        ))
        .first::<(String, String, String, Option<String>, Option<String>)>(conn)
        .optional()?;
    Ok(found.map(|(original_key, thumbnail_key, thumbnail_content_type, display_key, display_content_type)| {
        StoredObjects { original_key, thumbnail_key, thumbnail_content_type, display_key, display_content_type }
    }))
}

#[derive(Debug, PartialEq, Eq)]
pub enum InsertOutcome {
    Inserted,
    /// Another request committed the same `Idempotency-Key` first.
    IdempotencyKeyTaken,
    /// The row whose objects this one meant to share was deleted meanwhile; store the objects afresh.
    SharedObjectsGone,
    /// The upload outlived the grace period and the sweeper took its objects: nothing was inserted.
    ObjectsReclaimed,
}

/// Why the insert transaction rolled back, besides a database error.
enum Abort {
    SharedObjectsGone,
    ObjectsReclaimed,
    Database(diesel::result::Error),
}

impl From<diesel::result::Error> for Abort {
    fn from(error: diesel::result::Error) -> Self {
        Abort::Database(error)
    }
}

/// Inserts the image row and its outbox message in one transaction. When the row shares objects with
/// earlier rows, the same transaction checks (and row-locks) that one of them is still stored, so a
/// concurrent delete cannot remove the objects under it.
pub fn insert_with_outbox(
    conn: &mut DbConnection,
    record: &ImageRecord,
    message: &OutboxRow,
    shares_objects: bool,
) -> Result<InsertOutcome, DbError> {
    let result = conn.transaction::<_, Abort, _>(|conn| {
        diesel::insert_into(images::table).values(record).execute(conn)?;
        // The row takes its objects over from the pending list; if the sweeper took them first, they are gone.
        if !shares_objects && super::pending::clear(conn, record.id.as_str())? == 0 {
            return Err(Abort::ObjectsReclaimed);
        }
        if shares_objects {
            let alive = diesel::update(
                images::table
                    .filter(images::original_key.eq(&record.original_key))
                    .filter(images::status.eq(ImageStatus::Stored))
                    .filter(images::id.ne(&record.id)),
            )
            .set(images::status.eq(images::status))
            .execute(conn)?;
            if alive == 0 {
                return Err(Abort::SharedObjectsGone);
            }
        }
        diesel::insert_into(outbox::table).values(message).execute(conn)?;
        Ok(())
    });
    match result {
        Ok(()) => Ok(InsertOutcome::Inserted),
        Err(Abort::SharedObjectsGone) => Ok(InsertOutcome::SharedObjectsGone),
        Err(Abort::ObjectsReclaimed) => Ok(InsertOutcome::ObjectsReclaimed),
        Err(Abort::Database(error)) => match DbError::from(error) {
            e if e.is_unique_violation() && record.idempotency_key.is_some() => Ok(InsertOutcome::IdempotencyKeyTaken),
            e => Err(e),
        },
    }
}

/// What a delete must do once the row is marked.
#[derive(Debug)]
pub struct DeletePlan {
    pub record: ImageRecord,
    /// Other stored rows still point at the same objects: remove the row only.
    pub objects_shared: bool,
}

/// Marks the row `deleting` and decides whether its objects may go. Rows already `deleting` (an earlier
/// attempt failed half-way) are taken up again.
pub fn begin_delete(conn: &mut DbConnection, id: &str) -> Result<Option<DeletePlan>, DbError> {
    Ok(conn.transaction::<_, diesel::result::Error, _>(|conn| {
        let marked = diesel::update(images::table.filter(images::id.eq(id)).filter(images::status.eq_any([
            ImageStatus::Stored,
            ImageStatus::Deleting,
            ImageStatus::Missing,
        ])))
        .set(images::status.eq(ImageStatus::Deleting))
        .execute(conn)?;
        if marked == 0 {
            return Ok(None);
        }
        let record = images::table.filter(images::id.eq(id)).select(ImageRecord::as_select()).first(conn)?;
        // Locks the other stored sharers, so two deletes of rows sharing objects cannot both keep them.
        let sharers = diesel::update(
            images::table
                .filter(images::original_key.eq(&record.original_key))
                .filter(images::status.eq(ImageStatus::Stored))
                .filter(images::id.ne(id)),
        )
        .set(images::status.eq(images::status))
        .execute(conn)?;
        Ok(Some(DeletePlan { record, objects_shared: sharers > 0 }))
    })?)
}

pub fn delete_row(conn: &mut DbConnection, id: &str) -> Result<(), DbError> {
    diesel::delete(images::table.filter(images::id.eq(id))).execute(conn)?;
    Ok(())
}

/// Newest first; the cursor is the `(created_at, id)` of the last row of the previous page.
pub fn list_page(
    conn: &mut DbConnection,
    before: Option<(NaiveDateTime, String)>,
    top_label: Option<String>,
    limit: i64,
) -> Result<Vec<ImageRecord>, DbError> {
    let mut query = images::table.filter(images::status.eq(ImageStatus::Stored)).into_boxed();
    if let Some(label) = top_label {
        query = query.filter(images::top_label.eq(label));
    }
    if let Some((created_at, id)) = before {
        query = query
            .filter(images::created_at.lt(created_at).or(images::created_at.eq(created_at).and(images::id.lt(id))));
    }
    Ok(query
        .order((images::created_at.desc(), images::id.desc()))
        .limit(limit)
        .select(ImageRecord::as_select())
        .load(conn)?)
}

/// Which of a row's object keys a walk in key order follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyColumn {
    Original,
    Thumbnail,
    /// Rows without a display rendition are not walked.
    Display,
}

/// One row as seen from one of its objects, for the consistency check.
#[derive(Debug, Clone)]
pub struct KeyedRow {
    pub key: String,
    pub id: String,
    pub status: ImageStatus,
}

/// Rows of any status in `(key, id)` order after `after`: a keyset page for the consistency check, which walks
/// them beside the store's listing. Keys compare as bytes on both backends, as S3 lists them.
pub fn key_order_page(
    conn: &mut DbConnection,
    column: KeyColumn,
    after: Option<(String, String)>,
    limit: i64,
) -> Result<Vec<KeyedRow>, DbError> {
    let rows: Vec<(String, String, ImageStatus)> = match column {
        KeyColumn::Original => {
            let mut query = images::table.into_boxed();
            if let Some((key, id)) = after {
                query = query.filter(
                    images::original_key.gt(key.clone()).or(images::original_key.eq(key).and(images::id.gt(id))),
                );
            }
            query
                .order((images::original_key.asc(), images::id.asc()))
                .limit(limit)
                .select((images::original_key, images::id, images::status))
                .load(conn)?
        }
        KeyColumn::Thumbnail => {
            let mut query = images::table.into_boxed();
            if let Some((key, id)) = after {
                query = query.filter(
                    images::thumbnail_key.gt(key.clone()).or(images::thumbnail_key.eq(key).and(images::id.gt(id))),
                );
            }
            query
                .order((images::thumbnail_key.asc(), images::id.asc()))
                .limit(limit)
                .select((images::thumbnail_key, images::id, images::status))
                .load(conn)?
        }
        KeyColumn::Display => {
            let mut query = images::table.filter(images::display_key.is_not_null()).into_boxed();
            if let Some((key, id)) = after {
                query = query
                    .filter(images::display_key.gt(key.clone()).or(images::display_key.eq(key).and(images::id.gt(id))));
            }
            let rows: Vec<(Option<String>, String, ImageStatus)> = query
                .order((images::display_key.asc(), images::id.asc()))
                .limit(limit)
                .select((images::display_key, images::id, images::status))
                .load(conn)?;
            rows.into_iter().filter_map(|(key, id, status)| Some((key?, id, status))).collect()
        }
    };
    Ok(rows.into_iter().map(|(key, id, status)| KeyedRow { key, id, status }).collect())
}

/// Which of `keys` some row points at, as its original, its thumbnail or its display rendition (shared objects
/// included).
pub fn referenced_keys(conn: &mut DbConnection, keys: &[String]) -> Result<Vec<String>, DbError> {
    let mut found: Vec<String> =
        images::table.filter(images::original_key.eq_any(keys)).select(images::original_key).load(conn)?;
    found.extend(
        images::table.filter(images::thumbnail_key.eq_any(keys)).select(images::thumbnail_key).load::<String>(conn)?,
    );
    let displays: Vec<Option<String>> =
        images::table.filter(images::display_key.eq_any(keys)).select(images::display_key).load(conn)?;
    found.extend(displays.into_iter().flatten());
    Ok(found)
}

/// Marks a stored image whose original is gone as `missing`; how many rows changed (0 if it was not stored).
pub fn mark_missing(conn: &mut DbConnection, id: &str) -> Result<usize, DbError> {
    Ok(diesel::update(images::table.filter(images::id.eq(id)).filter(images::status.eq(ImageStatus::Stored)))
        .set(images::status.eq(ImageStatus::Missing))
        .execute(conn)?)
}

/// Images marked `missing`: lost, until someone deletes them.
pub fn missing_count(conn: &mut DbConnection) -> Result<i64, DbError> {
    Ok(images::table.filter(images::status.eq(ImageStatus::Missing)).count().get_result(conn)?)
}

/// The newest `limit` images marked `missing`, for the admin gallery.
pub fn missing_page(conn: &mut DbConnection, limit: i64) -> Result<Vec<ImageRecord>, DbError> {
    Ok(images::table
        .filter(images::status.eq(ImageStatus::Missing))
        .order((images::created_at.desc(), images::id.desc()))
        .limit(limit)
        .select(ImageRecord::as_select())
        .load(conn)?)
}
