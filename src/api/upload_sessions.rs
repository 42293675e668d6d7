//! `/api/v1/uploads`: direct upload sessions for files too large for the form (see `direct_uploads`).

use rocket::data::{Data, ToByteUnit};
use rocket::http::{Header, Status};
use rocket::request::{FromRequest, Outcome, Request};
use rocket::serde::json::Json;
use rocket::{get, post, put, routes, Route, State};
use serde::{Deserialize, Deserializer};

use super::doc::{errors, FileBytes, IdParam, TOO_MANY_REQUESTS};
use super::guards::IntakeAllowance;
use super::image_routes::Created;
use super::image_routes::UploadedImage;
use crate::app::direct_uploads::{self, NewSession, SessionView, UploadTarget};
use crate::domain::ImageId;
use crate::error::{AppError, AppResult, ErrorCode};
use crate::state::AppState;

pub fn routes() -> Vec<Route> {
    routes![open, receive, complete, status]
}

errors!(OpenErrors {
    "400" => "MISSING_FILE: byte_size 0, or BAD_REQUEST",
    "413" => "PAYLOAD_TOO_LARGE: over direct_upload_max_bytes",
    "415" => "UNSUPPORTED_MEDIA_TYPE: a content_type that is not accepted",
    "422" => "INVALID_REQUEST",
    "429" => TOO_MANY_REQUESTS,
    "503" => "DATABASE_UNAVAILABLE or STORE_UNAVAILABLE",
    "default" => "Any other error, same shape",
});

errors!(NotFoundErrors { "404" => "NOT_FOUND" });

errors!(ReceiveErrors {
    "400" => "BAD_REQUEST",
    "403" => "UPLOAD_URL_INVALID: a signature or length other than signed",
    "404" => "NOT_FOUND",
    "409" => "UPLOAD_IN_PROGRESS: already completed",
    "410" => "UPLOAD_EXPIRED",
    "413" => "PAYLOAD_TOO_LARGE",
    "422" => "INVALID_REQUEST",
    "503" => "STORE_UNAVAILABLE",
    "default" => "Any other error, same shape",
});

errors!(CompleteErrors {
    "404" => "NOT_FOUND",
    "409" => "UPLOAD_INCOMPLETE (send the file first) or UPLOAD_IN_PROGRESS",
    "410" => "UPLOAD_EXPIRED or IMAGE_MISSING",
    "413" => "PAYLOAD_TOO_LARGE",
    "415" => "UNSUPPORTED_MEDIA_TYPE",
    "422" => "IMAGE_TOO_LARGE, CORRUPT_IMAGE or INVALID_REQUEST (size or SHA-256 other than declared)",
    "429" => TOO_MANY_REQUESTS,
    "500" => "INTERNAL or INFERENCE_FAILED",
    "503" => "BUSY, INFERENCE_BUSY, DATABASE_UNAVAILABLE or STORE_UNAVAILABLE; see Retry-After",
    "default" => "Any other error, same shape",
});

/// The longest `filename` a session takes, in characters; as for the form, what is kept is its last path
/// component, cut at 255 characters.
pub const MAX_FILENAME_CHARS: usize = 1024;

/// What a client declares of the file it is about to send. Read as the API document describes it: an
/// optional field is a string when sent (`null` is refused), and `byte_size` is an integer as JSON Schema counts
/// integers (`1024.0` is one).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SessionInput {
    filename: String,
    #[serde(deserialize_with = "whole_number")]
    byte_size: u64,
    #[serde(default, deserialize_with = "present")]
    description: Option<String>,
    #[serde(default, deserialize_with = "present")]
    content_type: Option<String>,
    #[serde(default, deserialize_with = "present")]
    sha256: Option<String>,
}

/// An optional field that was sent: it must hold a value.
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(field: D) -> Result<Option<T>, D::Error> {
    T::deserialize(field).map(Some)
}

/// A non-negative integer, written with or without a zero fraction.
fn whole_number<'de, D: Deserializer<'de>>(field: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Number {
        Integer(u64),
        Float(f64),
    }
    match Number::deserialize(field)? {
        Number::Integer(n) => Ok(n),
        Number::Float(f) if f.fract() == 0.0 && (0.0..u64::MAX as f64).contains(&f) => Ok(f as u64),
        Number::Float(f) => Err(serde::de::Error::custom(format!("expected a whole number of bytes, not {f}"))),
    }
}

/// A new session: 201 with where to send the file.
pub struct Opened(UploadTarget);

impl<'r> rocket::response::Responder<'r, 'static> for Opened {
    fn respond_to(self, req: &'r Request<'_>) -> rocket::response::Result<'static> {
        let location = format!("/api/v1/uploads/{}", self.0.id);
        rocket::response::Response::build_from(Json(self.0).respond_to(req)?)
            .status(Status::Created)
            .header(Header::new("Location", location))
            .ok()
    }
}

/// Open a direct upload session, for files over the form's limit
///
/// Answers a URL to PUT the file to (a presigned S3 URL, or on the local store one on this server), with the headers to send as they are. Then POST /api/v1/uploads/{id}/complete. Example: curl -X PUT -H 'content-type: image/jpeg' --data-binary @photo.jpg "$url".
#[utoipa::path(post, path = "/api/v1/uploads", operation_id = "openUploadSession",
    request_body(content = ref("#/components/schemas/UploadSessionRequest")),
    responses((status = 201, description = "The session and where to send the file", body = UploadTarget,
        headers(("Location" = String))), OpenErrors))]
#[post("/uploads", data = "<input>")]
async fn open(
    _intake: IntakeAllowance,
    state: &State<AppState>,
    input: Result<Json<SessionInput>, rocket::serde::json::Error<'_>>,
) -> AppResult<Opened> {
    let input = input
        .map_err(|e| {
            AppError::new(
                ErrorCode::InvalidRequest,
                "Send JSON: {\"filename\": \"…\", \"byte_size\": N, \"content_type\": \"…\", \"sha256\": \"…\"}.",
            )
            .with_detail(e)
        })?
        .into_inner();
    if input.filename.chars().count() > MAX_FILENAME_CHARS {
        let message = format!("`filename` is at most {MAX_FILENAME_CHARS} characters.");
        return Err(AppError::new(ErrorCode::InvalidRequest, message));
    }
    let description =
        super::upload::clean_description(input.description, state.app.config.settings.uploads.max_description_chars)?;
    let new = NewSession {
        filename: input.filename,
        description,
        byte_size: input.byte_size,
        content_type: input.content_type,
        sha256: input.sha256,
    };
    let public_url = state.app.config.public_url().to_owned();
    Ok(Opened(direct_uploads::open(&state.app, new, &public_url).await?))
}

/// The request's `Content-Length`, when it sent one.
struct ContentLength(Option<u64>);

#[rocket::async_trait]
impl<'r> FromRequest<'r> for ContentLength {
    type Error = std::convert::Infallible;

    async fn from_request(req: &'r Request<'_>) -> Outcome<Self, Self::Error> {
        Outcome::Success(ContentLength(req.headers().get_one("Content-Length").and_then(|v| v.parse().ok())))
    }
}

fn parse_id(raw: &str) -> AppResult<ImageId> {
    ImageId::parse(raw).ok_or_else(|| AppError::new(ErrorCode::NotFound, "No such upload session."))
}

#[utoipa::path(put, path = "/api/v1/uploads/{id}/data", operation_id = "putUploadData",
    summary = "Send a direct upload's file (the local store's stand-in for a presigned S3 URL)",
    params(IdParam, ("expires" = i64, Query, minimum = 0), ("signature" = String, Query)),
    request_body(content = inline(FileBytes), content_type = "application/octet-stream"),
    responses((status = 200, description = "Received"), ReceiveErrors))]
#[put("/uploads/<id>/data?<expires>&<signature>", data = "<body>")]
async fn receive(
    state: &State<AppState>,
    id: &str,
    expires: i64,
    signature: &str,
    length: ContentLength,
    body: Data<'_>,
) -> AppResult<Status> {
    let id = parse_id(id)?;
    let limit = state.app.config.settings.direct_uploads.direct_upload_max_bytes.bytes() + 1.bytes();
    let reader = Box::pin(body.open(limit));
    direct_uploads::receive(&state.app, id.as_str(), expires, signature, length.0, reader).await?;
    Ok(Status::Ok)
}

/// Process a direct upload's file, as POST /api/v1/images does a form's; idempotent
#[utoipa::path(post, path = "/api/v1/uploads/{id}/complete", operation_id = "completeUploadSession",
    params(IdParam),
    responses((status = 201, description = "Stored. A repeated call answers the same image, with `Idempotent-Replayed: true`.",
        body = UploadedImage, headers(("Location" = String))), CompleteErrors))]
#[post("/uploads/<id>/complete")]
async fn complete(_intake: IntakeAllowance, state: &State<AppState>, id: &str) -> AppResult<Created> {
    let id = parse_id(id)?;
    let mut uploaded = direct_uploads::complete(&state.app, id.as_str()).await?;
    uploaded.replayed = !direct_uploads::first_delivery(&state.app, id.as_str()).await?;
    Ok(Created::new(state, &uploaded))
}

/// A direct upload's status
#[utoipa::path(get, path = "/api/v1/uploads/{id}", operation_id = "getUploadSession", params(IdParam),
    responses((status = 200, description = "pending, processing, stored (with the image id) or failed (with the error)",
        body = SessionView), NotFoundErrors))]
#[get("/uploads/<id>")]
async fn status(state: &State<AppState>, id: &str) -> AppResult<Json<SessionView>> {
    Ok(Json(direct_uploads::status(&state.app, parse_id(id)?.as_str()).await?))
}

#[cfg(test)]
mod tests {
    use super::SessionInput;

    fn read(json: &str) -> Result<SessionInput, serde_json::Error> {
        serde_json::from_str(json)
    }

    #[test]
    fn a_session_is_read_as_the_document_describes_it() {
        assert_eq!(read(r#"{"filename": "a.jpg", "byte_size": 110649.0}"#).unwrap().byte_size, 110649);
        assert_eq!(read(r#"{"filename": "a.jpg", "byte_size": 7}"#).unwrap().sha256, None);
        for refused in [
            r#"{"filename": "a.jpg", "byte_size": 1.5}"#,
            r#"{"filename": "a.jpg", "byte_size": -1}"#,
            r#"{"filename": "a.jpg", "byte_size": "7"}"#,
            r#"{"filename": "a.jpg", "byte_size": 7, "sha256": null}"#,
            r#"{"filename": "a.jpg", "byte_size": 7, "content_type": null}"#,
            r#"{"filename": "a.jpg", "byte_size": 7, "description": null}"#,
        ] {
            assert!(read(refused).is_err(), "{refused}");
        }
    }
}
