//! `/api/v1/uploads`: direct upload sessions for files too large for the form (see `direct_uploads`).

use rocket::data::{Data, ToByteUnit};
use rocket::http::{Header, Status};
use rocket::request::{FromRequest, Outcome, Request};
use rocket::serde::json::Json;
use rocket::{get, post, put, routes, Route, State};
use serde::{Deserialize, Deserializer};

use super::guards::IntakeAllowance;
use super::image_routes::Created;
use crate::direct_uploads::{self, NewSession, SessionView, UploadTarget};
use crate::domain::ImageId;
use crate::error::{AppError, AppResult, ErrorCode};
use crate::state::AppState;

pub fn routes() -> Vec<Route> {
    routes![open, receive, complete, status]
}

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
    let description =
        super::upload::clean_description(input.description, state.pipeline.config.settings.max_description_chars)?;
    let new = NewSession {
        filename: input.filename,
        description,
        byte_size: input.byte_size,
        content_type: input.content_type,
        sha256: input.sha256,
    };
    let public_url = state.pipeline.config.public_url().to_owned();
    Ok(Opened(direct_uploads::open(&state.pipeline, new, &public_url).await?))
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

/// The local store's stand-in for a presigned `PUT`: the URL `POST /uploads` signed, and exactly its length.
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
    let limit = state.pipeline.config.settings.direct_upload_max_bytes.bytes() + 1.bytes();
    let reader = Box::pin(body.open(limit));
    direct_uploads::receive(&state.pipeline, id.as_str(), expires, signature, length.0, reader).await?;
    Ok(Status::Ok)
}

#[post("/uploads/<id>/complete")]
async fn complete(_intake: IntakeAllowance, state: &State<AppState>, id: &str) -> AppResult<Created> {
    let id = parse_id(id)?;
    let mut uploaded = direct_uploads::complete(&state.pipeline, id.as_str()).await?;
    uploaded.replayed = !direct_uploads::first_delivery(&state.pipeline, id.as_str()).await?;
    Ok(Created::new(state, &uploaded))
}

#[get("/uploads/<id>")]
async fn status(state: &State<AppState>, id: &str) -> AppResult<Json<SessionView>> {
    Ok(Json(direct_uploads::status(&state.pipeline, parse_id(id)?.as_str()).await?))
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
