//! `/api/v1/uploads`: direct upload sessions for files too large for the form (see `direct_uploads`).

use rocket::data::{Data, ToByteUnit};
use rocket::http::{Header, Status};
use rocket::request::{FromRequest, Outcome, Request};
use rocket::serde::json::Json;
use rocket::{get, post, put, routes, Route, State};
use serde::Deserialize;

use super::guards::IntakeAllowance;
use super::image_routes::Created;
use crate::direct_uploads::{self, NewSession, SessionView, UploadTarget};
use crate::domain::ImageId;
use crate::error::{AppError, AppResult, ErrorCode};
use crate::state::AppState;

pub fn routes() -> Vec<Route> {
    routes![open, receive, complete, status]
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SessionInput {
    filename: String,
    byte_size: u64,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    content_type: Option<String>,
    #[serde(default)]
    sha256: Option<String>,
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
    let description = super::upload::clean_description(input.description, state.config.settings.max_description_chars)?;
    let new = NewSession {
        filename: input.filename,
        description,
        byte_size: input.byte_size,
        content_type: input.content_type,
        sha256: input.sha256,
    };
    let public_url = state.config.public_url().to_owned();
    Ok(Opened(direct_uploads::open(state, new, &public_url).await?))
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
    let limit = state.config.settings.direct_upload_max_bytes.bytes() + 1.bytes();
    let reader = Box::pin(body.open(limit));
    direct_uploads::receive(state, id.as_str(), expires, signature, length.0, reader).await?;
    Ok(Status::Ok)
}

#[post("/uploads/<id>/complete")]
async fn complete(_intake: IntakeAllowance, state: &State<AppState>, id: &str) -> AppResult<Created> {
    let id = parse_id(id)?;
    let mut uploaded = direct_uploads::complete(state, id.as_str()).await?;
    uploaded.replayed = !direct_uploads::first_delivery(state, id.as_str()).await?;
    Ok(Created::new(state, &uploaded))
}

#[get("/uploads/<id>")]
async fn status(state: &State<AppState>, id: &str) -> AppResult<Json<SessionView>> {
    Ok(Json(direct_uploads::status(state, parse_id(id)?.as_str()).await?))
}
