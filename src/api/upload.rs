//! The multipart upload form shared by the API, the compatibility route and the HTML form.

use rocket::form::{self, Form};
use rocket::FromForm;

use super::spooled::SpooledFile;
use crate::app::{UploadMeta, UploadPermit, Uploaded};
use crate::domain::display_filename;
use crate::domain::human_bytes;
use crate::error::{AppError, AppResult, ErrorCode};
use crate::ingest::Upload;
use crate::state::AppState;

#[derive(FromForm)]
pub struct UploadForm<'r> {
    pub file: SpooledFile<'r>,
    pub description: Option<String>,
    /// Only the HTML form sends it; the JSON API uses no cookies and ignores it.
    pub csrf_token: Option<String>,
}

/// Strict: a field the form does not take is refused (422), as the API document says.
pub type UploadData<'r> = Result<Form<form::Strict<UploadForm<'r>>>, form::Errors<'r>>;

/// Turns Rocket's form errors into ours, naming the limit that was hit.
pub fn form_error(errors: &form::Errors<'_>, state: &AppState) -> AppError {
    let status = errors.status();
    let detail = errors.to_string();
    let missing_file = errors.iter().any(|e| matches!(e.kind, form::error::ErrorKind::Missing) && e.is_for("file"));
    if missing_file {
        return AppError::new(ErrorCode::MissingFile, "The form has no `file` field.").with_detail(detail);
    }
    let unexpected: Vec<String> = errors
        .iter()
        .filter(|e| matches!(e.kind, form::error::ErrorKind::Unexpected))
        .filter_map(|e| e.name.as_ref().map(|name| format!("`{name}`")))
        .collect();
    if !unexpected.is_empty() {
        return AppError::new(
            ErrorCode::InvalidRequest,
            format!(
                "The form has fields it does not take: {}; it takes `file` and `description`.",
                unexpected.join(", ")
            ),
        )
        .with_detail(detail);
    }
    // Rocket reports a body cut short (the client hung up) as an incomplete field, which reads as a 413, plus a
    // read error of the stream; a spool file that cannot be written is a different i/o error.
    let hung_up = errors.iter().any(|e| match &e.kind {
        form::error::ErrorKind::Io(io) => !matches!(
            io.kind(),
            std::io::ErrorKind::StorageFull
                | std::io::ErrorKind::PermissionDenied
                | std::io::ErrorKind::NotFound
                | std::io::ErrorKind::ReadOnlyFilesystem
                | std::io::ErrorKind::QuotaExceeded
        ),
        _ => false,
    });
    if hung_up {
        return AppError::new(ErrorCode::ClientClosedRequest, "The upload ended before its body was complete.")
            .with_detail(detail);
    }
    match status.code {
        413 => {
            let max = state.app.config.settings.uploads.max_upload_bytes;
            AppError::new(
                ErrorCode::PayloadTooLarge,
                format!("The upload exceeds the limit of {} (max_upload_bytes = {max}).", human_bytes(max)),
            )
        }
        400 => AppError::new(ErrorCode::BadRequest, "The multipart form is malformed."),
        _ => AppError::new(ErrorCode::InvalidRequest, "The upload form could not be read."),
    }
    .with_detail(detail)
}

/// The uploaded file's spool file (its bytes bounded by the form limits), opened once the upload budget has
/// room for them; an empty file is a missing one.
async fn open_spooled<'f>(
    state: &AppState,
    file: &'f SpooledFile<'_>,
) -> AppResult<(impl tokio::io::AsyncRead + Unpin + 'f, UploadPermit)> {
    if file.is_empty() {
        return Err(AppError::new(ErrorCode::MissingFile, "The uploaded file is empty."));
    }
    let permit = state.app.admit_upload(file.len()).await?;
    Ok((file.open().await.map_err(AppError::internal)?, permit))
}

/// The uploaded file as an upload to store: read and hashed in one pass.
pub async fn read_upload(state: &AppState, file: &SpooledFile<'_>) -> AppResult<(Upload, UploadPermit)> {
    let (spooled, permit) = open_spooled(state, file).await?;
    Ok((Upload::read(spooled, file.len()).await.map_err(AppError::internal)?, permit))
}

/// The uploaded file's bytes, for work that stores nothing and needs no digest.
pub async fn read_bytes(state: &AppState, file: &SpooledFile<'_>) -> AppResult<(Vec<u8>, UploadPermit)> {
    use tokio::io::AsyncReadExt;
    let (mut spooled, permit) = open_spooled(state, file).await?;
    let mut bytes = Vec::with_capacity(file.len() as usize);
    spooled.read_to_end(&mut bytes).await.map_err(AppError::internal)?;
    Ok((bytes, permit))
}

/// Checks a page form's CSRF token (the pages pass one; the API has no forms of its own).
pub type FormTokenCheck<'a> = dyn Fn(Option<&str>) -> AppResult<()> + Sync + 'a;

/// Validates the form's fields and runs the upload; `check_form_token` checks the form's CSRF token, for pages.
pub async fn handle(
    state: &AppState,
    data: UploadData<'_>,
    idempotency_key: Option<crate::domain::IdempotencyKey>,
    check_form_token: Option<&FormTokenCheck<'_>>,
) -> AppResult<Uploaded> {
    let form = data.map_err(|errors| form_error(&errors, state))?.into_inner().into_inner();
    if let Some(check) = check_form_token {
        check(form.csrf_token.as_deref())?;
    }
    let file = form.file;
    let (upload, permit) = read_upload(state, &file).await?;
    let description = clean_description(form.description, state.app.config.settings.uploads.max_description_chars)?;
    let original_filename =
        file.raw_name().and_then(|name| display_filename(name.dangerous_unsafe_unsanitized_raw().as_str()));
    state.app.metrics.add_upload_bytes(upload.bytes.len() as u64);
    state.app.accept(upload, permit, UploadMeta { original_filename, description, idempotency_key }).await
}

pub fn clean_description(raw: Option<String>, max_chars: usize) -> AppResult<Option<String>> {
    let Some(raw) = raw else { return Ok(None) };
    // Counted as sent, as the API document's maxLength counts it, before control characters are dropped.
    if raw.chars().count() > max_chars {
        return Err(AppError::new(
            ErrorCode::InvalidRequest,
            format!("The description is longer than {max_chars} characters."),
        ));
    }
    let cleaned: String = raw.chars().filter(|c| !c.is_control() || *c == '\n' || *c == '\t').collect();
    let cleaned = cleaned.trim();
    Ok((!cleaned.is_empty()).then(|| cleaned.to_owned()))
}
