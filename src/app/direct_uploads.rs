//! Direct uploads: files too large for the form go straight to the store. A client opens a session and gets
//! a URL to `PUT` its file to `incoming/<id>` (a presigned S3 URL, or on the local store an HMAC-signed URL on
//! Upshot itself); completing the session (the client's call, or the bucket's event) runs the same app as
//! the form on the stored bytes, once, and removes the incoming object.

use std::time::Duration;

use chrono::NaiveDateTime;
use serde::Serialize;
use tokio::io::AsyncReadExt;

use super::{App, UploadMeta, Uploaded};
use crate::db::image_rows;
use crate::db::upload_sessions::{self, SessionRow, SessionStatus};
use crate::domain::{constant_time_eq, display_filename, human_bytes, now, IdempotencyKey, ImageId};
use crate::error::{AppError, AppResult, ErrorCode};
use crate::ingest::Upload;
use crate::store::StoreError;

/// How long one worker holds a session it processes; past it, another may take the session up.
const CLAIM: Duration = Duration::from_secs(300);

/// What a client asks a session for.
#[derive(Debug, Clone)]
pub struct NewSession {
    pub filename: String,
    /// Already checked against `max_description_chars` and cleaned, as the form's is.
    pub description: Option<String>,
    pub byte_size: u64,
    pub content_type: Option<String>,
    pub sha256: Option<String>,
}

/// Where and how to send the file.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(as = UploadSession)]
pub struct UploadTarget {
    pub id: String,
    /// Always `PUT`
    pub method: &'static str,
    pub url: String,
    /// Send these headers with the `PUT`, as they are: they are signed
    pub headers: std::collections::BTreeMap<String, String>,
    /// After this the URL is refused (RFC 3339, UTC)
    pub expires_at: String,
}

/// A session as `GET /api/v1/uploads/{id}` shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(as = UploadStatus)]
pub struct SessionView {
    pub id: String,
    /// `pending` (waiting for the file), `processing`, `stored`, or `failed`
    pub status: String,
    pub byte_size: i64,
    /// The stored image, once `stored`
    pub image_id: Option<String>,
    /// Why it failed: the same code the form would have answered
    pub error: Option<SessionError>,
    pub expires_at: String,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SessionError {
    pub code: String,
    pub message: String,
}

fn rfc3339(at: NaiveDateTime) -> String {
    at.and_utc().format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

impl From<&SessionRow> for SessionView {
    fn from(row: &SessionRow) -> Self {
        SessionView {
            id: row.id.clone(),
            status: row.status.as_str().to_owned(),
            byte_size: row.byte_size,
            image_id: row.image_id.clone(),
            error: row
                .error_code
                .clone()
                .map(|code| SessionError { code, message: row.error_message.clone().unwrap_or_default() }),
            expires_at: rfc3339(row.expires_at),
        }
    }
}

/// The origin (`scheme://host[:port]`) of the URLs the store signs for direct uploads, when it signs them;
/// `None` for the local store, whose uploads come to this server. Learnt by signing one, as S3's addressing
/// (virtual host or path style, region, endpoint) decides it.
pub async fn upload_origin(store: &dyn crate::store::ObjectStore) -> Option<String> {
    let probe = incoming_key("00000000000000000000000000000000");
    match store.presign_put(&probe, 1, "application/octet-stream", Duration::from_secs(60)).await {
        Ok(Some(presigned)) => {
            let (scheme, rest) = presigned.url.split_once("://")?;
            let host = rest.split(['/', '?']).next()?;
            Some(format!("{scheme}://{host}"))
        }
        Ok(None) => None,
        Err(error) => {
            log::warn!("cannot sign direct upload URLs ({error}); the upload page sends large files nowhere");
            None
        }
    }
}

/// The store key a session's file is sent to.
pub fn incoming_key(id: &str) -> String {
    format!("incoming/{id}")
}

/// The content types a session may declare: those of the accepted formats, or none in particular.
fn declared_type(app: &App, declared: Option<String>) -> AppResult<String> {
    let Some(declared) = declared.map(|t| t.trim().to_ascii_lowercase()).filter(|t| !t.is_empty()) else {
        return Ok("application/octet-stream".to_owned());
    };
    let accepted = &app.config.settings.images.accepted_formats;
    let names: Vec<&str> = accepted.iter().flat_map(|f| f.declared_types()).copied().collect();
    if declared == "application/octet-stream" || names.contains(&declared.as_str()) {
        return Ok(declared);
    }
    Err(AppError::new(
        ErrorCode::UnsupportedMediaType,
        format!("`content_type` {declared} is not accepted; send one of {}.", names.join(", ")),
    ))
}

/// The signature of a local upload URL: the session, its exact length and the expiry.
pub fn local_signature(app: &App, id: &str, byte_size: u64, expires: i64) -> String {
    app.signer.sign(&format!("direct-upload:{id}:{byte_size}:{expires}"))
}

/// Opens a session: checks the declared file against the limits, records it, and signs its URL.
/// `local_url` builds Upshot's own upload URL for a store that cannot sign one.
pub async fn open(app: &App, new: NewSession, local_url: &str) -> AppResult<UploadTarget> {
    let settings = &app.config.settings;
    let max = settings.direct_uploads.direct_upload_max_bytes;
    if new.byte_size == 0 {
        return Err(AppError::new(ErrorCode::MissingFile, "`byte_size` is 0: the file is empty."));
    }
    if new.byte_size > max {
        return Err(AppError::new(
            ErrorCode::PayloadTooLarge,
            format!(
                "The file is {}, over the direct upload limit of {} (direct_upload_max_bytes = {max}).",
                human_bytes(new.byte_size),
                human_bytes(max)
            ),
        ));
    }
    let sha256 = match new.sha256.map(|s| s.to_ascii_lowercase()) {
        Some(s) if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()) => {
            return Err(AppError::new(ErrorCode::InvalidRequest, "`sha256` must be 64 hexadecimal digits."))
        }
        other => other,
    };
    let content_type = declared_type(app, new.content_type)?;
    let id = ImageId::generate().as_str().to_owned();
    let ttl = Duration::from_secs(settings.direct_uploads.upload_url_ttl_secs);
    let created_at = now();
    let expires_at = created_at + chrono::Duration::from_std(ttl).map_err(AppError::internal)?;
    let row = SessionRow {
        id: id.clone(),
        status: SessionStatus::Pending,
        original_filename: display_filename(&new.filename),
        description: new.description,
        byte_size: new.byte_size as i64,
        content_type: content_type.clone(),
        sha256,
        image_id: None,
        error_code: None,
        error_message: None,
        created_at,
        expires_at,
        claimed_until: None,
        finished_at: None,
        token_delivered: false,
    };
    let record = row.clone();
    app.db.run(move |conn| upload_sessions::insert(conn, &record)).await?;
    let presigned = app.store.presign_put(&incoming_key(&id), new.byte_size, &content_type, ttl).await?;
    let (url, headers) = match presigned {
        Some(presigned) => (presigned.url, presigned.headers.into_iter().collect()),
        None => {
            let expires = expires_at.and_utc().timestamp();
            let signature = local_signature(app, &id, new.byte_size, expires);
            let url = format!("{local_url}/api/v1/uploads/{id}/data?expires={expires}&signature={signature}");
            let headers = [("content-type".to_owned(), content_type.clone())].into_iter().collect();
            (url, headers)
        }
    };
    Ok(UploadTarget { id, method: "PUT", url, headers, expires_at: rfc3339(expires_at) })
}

async fn find(app: &App, id: &str) -> AppResult<SessionRow> {
    let id = id.to_owned();
    app.db.run(move |conn| upload_sessions::find(conn, &id)).await?.ok_or_else(no_such_session)
}

fn no_such_session() -> AppError {
    AppError::new(ErrorCode::NotFound, "No such upload session.")
}

pub async fn status(app: &App, id: &str) -> AppResult<SessionView> {
    Ok(SessionView::from(&find(app, id).await?))
}

/// Receives a session's file on Upshot itself (the local store's stand-in for a presigned URL): the URL's
/// signature and expiry, and exactly the signed length.
pub async fn receive(
    app: &App,
    id: &str,
    expires: i64,
    signature: &str,
    content_length: Option<u64>,
    body: std::pin::Pin<Box<dyn tokio::io::AsyncRead + Send + '_>>,
) -> AppResult<()> {
    let refused = || AppError::new(ErrorCode::UploadUrlInvalid, "This upload URL does not allow this request.");
    // An unknown session is a URL that was never signed; a database that does not answer is not the URL's fault.
    let session = match find(app, id).await {
        Err(error) if error.code == ErrorCode::NotFound => return Err(refused()),
        found => found?,
    };
    let expected = local_signature(app, id, session.byte_size as u64, expires);
    if !constant_time_eq(expected.as_bytes(), signature.as_bytes()) {
        return Err(refused());
    }
    if now().and_utc().timestamp() > expires {
        return Err(AppError::new(ErrorCode::UploadExpired, "This upload URL has expired; open a new session."));
    }
    if content_length != Some(session.byte_size as u64) {
        return Err(refused().with_detail(format!(
            "Content-Length {content_length:?}, the session signed {} bytes",
            session.byte_size
        )));
    }
    if session.status != SessionStatus::Pending {
        return Err(AppError::new(ErrorCode::UploadInProgress, "This upload has already been completed."));
    }
    let key = incoming_key(id);
    match app.store.put_reader(&key, body, session.byte_size as u64, &session.content_type).await {
        Err(StoreError::LengthMismatch { .. }) => {
            Err(refused().with_detail("the body's length differs from the signed Content-Length"))
        }
        other => Ok(other?),
    }
}

/// Whether a failed processing is the file's fault (recorded, final) rather than a passing one (retried).
fn is_verdict(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::UnsupportedMediaType
            | ErrorCode::ImageTooLarge
            | ErrorCode::CorruptImage
            | ErrorCode::PayloadTooLarge
            | ErrorCode::InvalidRequest
            | ErrorCode::MissingFile
    )
}

/// The answer a finished session gives again: its image, or the error it failed with.
async fn outcome(app: &App, session: &SessionRow) -> AppResult<Uploaded> {
    if session.status == SessionStatus::Failed {
        let code = session.error_code.as_deref().and_then(ErrorCode::from_name).unwrap_or(ErrorCode::Internal);
        return Err(AppError::new(code, session.error_message.clone().unwrap_or_default()));
    }
    let image_id = session.image_id.clone().ok_or_else(|| AppError::internal("a stored session without its image"))?;
    let record = app.db.run(move |conn| image_rows::find_any(conn, &image_id)).await?;
    match record {
        Some(record) if record.status == image_rows::ImageStatus::Stored => {
            Ok(Uploaded { record, deduplicated: false, replayed: true })
        }
        Some(record) if record.status == image_rows::ImageStatus::Missing => Err(AppError::image_missing()),
        _ => Err(AppError::not_found()),
    }
}

/// Completes a session: processes its file once, whoever asks first (the client, the bucket's event). A
/// session already finished answers as it did; one being processed elsewhere answers `UPLOAD_IN_PROGRESS`.
#[tracing::instrument(name = "direct_upload.complete", skip_all)]
pub async fn complete(app: &App, id: &str) -> AppResult<Uploaded> {
    let session = find(app, id).await?;
    if session.status == SessionStatus::Stored || session.status == SessionStatus::Failed {
        return outcome(app, &session).await;
    }
    if !claim(app, id).await? {
        let session = find(app, id).await?;
        if session.status == SessionStatus::Stored || session.status == SessionStatus::Failed {
            return outcome(app, &session).await;
        }
        return Err(in_progress());
    }
    let processed = process(app, &session).await;
    let (finish_id, at) = (id.to_owned(), now());
    match &processed {
        Ok(uploaded) => {
            let image_id = uploaded.record.id.clone();
            app.db.run(move |conn| upload_sessions::finish_stored(conn, &finish_id, image_id.as_str(), at)).await?;
            remove_incoming(app, id).await;
        }
        Err(error) if error.code == ErrorCode::UploadIncomplete => {
            app.db.run(move |conn| upload_sessions::release(conn, &finish_id)).await?;
        }
        Err(error) if is_verdict(error.code) => {
            let (code, message) = (error.code.as_str(), error.message.clone());
            app.db.run(move |conn| upload_sessions::finish_failed(conn, &finish_id, code, &message, at)).await?;
            remove_incoming(app, id).await;
        }
        // A passing failure (the store, the database, a busy server): the session is pending again.
        Err(_) => {
            app.db.run(move |conn| upload_sessions::release(conn, &finish_id)).await?;
        }
    }
    processed
}

/// Takes the session for processing for `CLAIM`; whether it was taken (not finished, nor held by another).
async fn claim(app: &App, id: &str) -> AppResult<bool> {
    let (id, at) = (id.to_owned(), now());
    let until = at + chrono::Duration::from_std(CLAIM).map_err(AppError::internal)?;
    Ok(app.db.run(move |conn| upload_sessions::claim(conn, &id, at, until)).await?)
}

fn in_progress() -> AppError {
    AppError::new(ErrorCode::UploadInProgress, "This upload is being processed; ask its status shortly.").retry_after(2)
}

async fn remove_incoming(app: &App, id: &str) {
    let key = incoming_key(id);
    if let Err(error) = app.store.delete(&key).await {
        // The bucket's lifecycle rule on incoming/ removes it in the end.
        log::warn!("direct upload {id}: the incoming object {key} was not removed: {error}");
    }
}

/// Reads the session's file back with the form's limits and runs the app on it. The session id is the
/// upload's idempotency key, so even two workers that both processed it would store one image.
async fn process(app: &App, session: &SessionRow) -> AppResult<Uploaded> {
    let key = incoming_key(&session.id);
    let body = match app.store.get(&key).await {
        Err(StoreError::NotFound(_)) => {
            return Err(AppError::new(
                ErrorCode::UploadIncomplete,
                "The file has not arrived yet: send the PUT, then complete the upload.",
            ))
        }
        other => other?,
    };
    let max = app.config.settings.direct_uploads.direct_upload_max_bytes;
    if body.len != session.byte_size as u64 {
        return Err(AppError::new(
            ErrorCode::InvalidRequest,
            format!("The file that arrived is {} bytes, not the {} the session declared.", body.len, session.byte_size),
        ));
    }
    if body.len > max {
        return Err(AppError::new(ErrorCode::PayloadTooLarge, "The file is over the direct upload limit."));
    }
    let permit = app.admit_upload(body.len).await?;
    let upload = Upload::read(body.reader.take(max + 1), body.len)
        .await
        .map_err(|e| AppError::from(StoreError::Backend(format!("reading {key}: {e}"))))?;
    if let Some(declared) = &session.sha256 {
        if upload.sha256 != *declared {
            return Err(AppError::new(ErrorCode::InvalidRequest, "The file's SHA-256 is not the one declared."));
        }
    }
    app.metrics.add_upload_bytes(upload.bytes.len() as u64);
    let idempotency_key = IdempotencyKey::parse(&format!("upload-session:{}", session.id));
    let meta = UploadMeta {
        original_filename: session.original_filename.clone(),
        description: session.description.clone(),
        idempotency_key,
    };
    app.accept(upload, permit, meta).await
}

/// Removes sessions that finished more than `upload_session_retention_hours` ago (their images stay): a
/// finished session only answers its completion again, and nothing needs that for long.
pub async fn purge_finished(app: &App) -> AppResult<usize> {
    let retention = chrono::Duration::hours(app.config.settings.direct_uploads.upload_session_retention_hours as i64);
    let before = now() - retention;
    Ok(app.db.run(move |conn| upload_sessions::purge_finished(conn, before, 1000)).await?)
}

/// Whether this answer to a client is the first with the session's image: only that one shows the delete
/// token (the bucket's event may have stored the image before any client asked).
pub async fn first_delivery(app: &App, id: &str) -> AppResult<bool> {
    let id = id.to_owned();
    Ok(app.db.run(move |conn| upload_sessions::deliver_token(conn, &id)).await?)
}

/// Fails the pending sessions whose URL expired `upload_url_ttl_secs` ago or more (their client never
/// completed them, nor did an event) and removes whatever they had sent. How many were swept.
pub async fn sweep_expired(app: &App) -> AppResult<usize> {
    let ttl = chrono::Duration::seconds(app.config.settings.direct_uploads.upload_url_ttl_secs as i64);
    let before = now() - ttl;
    let ids = app.db.run(move |conn| upload_sessions::expired(conn, before, 100)).await?;
    let mut swept = 0;
    for id in ids {
        if !claim(app, &id).await? {
            continue;
        }
        remove_incoming(app, &id).await;
        let (code, message) = (ErrorCode::UploadExpired.as_str(), "The upload was not completed in time.");
        let (finish_id, at) = (id.clone(), now());
        app.db.run(move |conn| upload_sessions::finish_failed(conn, &finish_id, code, message, at)).await?;
        swept += 1;
    }
    Ok(swept)
}

/// Sweeps expired sessions every minute (sooner with a short URL lifetime) until `shutdown` turns true.
pub async fn run_sweeper(app: App, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let ttl = Duration::from_secs(app.config.settings.direct_uploads.upload_url_ttl_secs);
    let every = (ttl / 4).clamp(Duration::from_secs(1), Duration::from_secs(60));
    while !*shutdown.borrow() {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.changed() => continue,
        }
        match sweep_expired(&app).await {
            Ok(0) => {}
            Ok(swept) => log::info!("{swept} direct upload session(s) expired uncompleted; their files removed"),
            Err(error) => log::debug!("upload session sweep skipped: {error}"),
        }
        match purge_finished(&app).await {
            Ok(0) => {}
            Ok(purged) => log::info!("{purged} finished direct upload session(s) past their retention removed"),
            Err(error) => log::debug!("upload session purge skipped: {error}"),
        }
    }
}
