//! `/api/v1/images`: upload, read, download, delete, list.

use rocket::http::{Header, Status};
use rocket::request::Request;
use rocket::response::{self, Responder, Response};
use rocket::serde::json::Json;
use rocket::{delete, get, post, routes, Route, State};

use super::doc::{errors, IdParam, StoredDisplay, StoredImage, StoredThumbnail, UploadErrors};
use super::guards::{ClientAddress, Credentials, IdempotencyHeader, IntakeAllowance, SpoolReservation};
use super::upload::{self, UploadData};
use crate::app::images::{self, DeleteAuthority, ImageObject, ImageView, Variant};
use crate::app::Uploaded;
use crate::domain::ImageId;
use crate::error::{AppError, AppResult, ErrorCode};
use crate::state::AppState;

pub fn routes() -> Vec<Route> {
    routes![create, show, file, thumbnail, display, remove, list]
}

errors!(ImageErrors {
    "404" => "NOT_FOUND",
    "410" => "IMAGE_MISSING: the image's file was lost from the store",
});

errors!(DeleteErrors {
    "401" => "UNAUTHORIZED: no token",
    "403" => "FORBIDDEN: wrong token",
    "404" => "NOT_FOUND",
    "503" => "STORE_UNAVAILABLE or DATABASE_UNAVAILABLE: retry",
});

errors!(ListErrors {
    "400" => "BAD_REQUEST: a cursor this server did not issue",
    "401" => "UNAUTHORIZED",
    "403" => "FORBIDDEN: admin routes disabled",
    "422" => "INVALID_REQUEST: limit out of range",
});

/// A page of images, newest first.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(crate) struct ImagePage {
    items: Vec<ImageView>,
    /// Where the next page starts; null on the last page
    #[schema(required = true)]
    next_cursor: Option<String>,
}

/// An upload's answer: the image, and what only its uploader gets.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct UploadedImage {
    #[serde(flatten)]
    pub image: ImageView,
    /// Shown once, in the first answer only (a replay has none); send it as X-Delete-Token to delete
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delete_token: Option<String>,
    /// The same bytes were already stored and are shared
    pub deduplicated: bool,
}

/// The 201 answer to an upload; a replayed `Idempotency-Key` answers the same, marked as a replay and without
/// the delete token, which only the first answer carries.
pub struct Created {
    pub body: UploadedImage,
    pub location: String,
    pub replayed: bool,
}

impl Created {
    pub fn new(state: &AppState, uploaded: &Uploaded) -> Self {
        let id = uploaded.id();
        let body = UploadedImage {
            image: ImageView::from(&uploaded.record),
            delete_token: (!uploaded.replayed).then(|| state.app.signer.delete_token(&id)),
            deduplicated: uploaded.deduplicated,
        };
        Created { body, location: format!("/api/v1/images/{id}"), replayed: uploaded.replayed }
    }
}

impl<'r> Responder<'r, 'static> for Created {
    fn respond_to(self, req: &'r Request<'_>) -> response::Result<'static> {
        let mut response = Response::build_from(Json(self.body).respond_to(req)?);
        response.status(Status::Created).header(Header::new("Location", self.location));
        if self.replayed {
            response.header(Header::new("Idempotent-Replayed", "true"));
        }
        Ok(response.finalize())
    }
}

/// Upload an image
#[utoipa::path(post, path = "/api/v1/images", operation_id = "uploadImage",
    params(("Idempotency-Key" = Option<String>, Header, nullable = false, pattern = "^[!-~]{1,255}$",
        description = "A retry with the same key and bytes returns the first result and stores nothing twice.")),
    request_body(content = ref("#/components/schemas/UploadForm"), content_type = "multipart/form-data"),
    responses((status = 201, description = "Stored. Idempotent replays carry `Idempotent-Replayed: true`.",
        body = UploadedImage, headers(("Location" = String))), UploadErrors))]
#[post("/images", data = "<data>")]
async fn create(
    _intake: IntakeAllowance,
    _spool: SpoolReservation,
    state: &State<AppState>,
    data: UploadData<'_>,
    key: IdempotencyHeader,
    client: ClientAddress,
) -> AppResult<Created> {
    let scope = crate::client_limits::client_key(client.0).to_string();
    let key = key.key()?.map(|key| key.scoped_to(&scope));
    let uploaded = upload::handle(state, data, key, None).await?;
    Ok(Created::new(state, &uploaded))
}

fn parse_id(raw: &str) -> AppResult<ImageId> {
    ImageId::parse(raw).ok_or_else(AppError::not_found)
}

/// An image's metadata and predictions
#[utoipa::path(get, path = "/api/v1/images/{id}", operation_id = "getImage", params(IdParam),
    responses((status = 200, description = "The image", body = ImageView), ImageErrors))]
#[get("/images/<id>")]
async fn show(state: &State<AppState>, id: &str) -> AppResult<Json<ImageView>> {
    let record = state.app.image(&parse_id(id)?).await?;
    Ok(Json(ImageView::from(&record)))
}

/// Image bytes with the headers that keep browsers from sniffing (Rocket's Shield sends `nosniff` on every
/// response) or scripting them.
pub struct ObjectResponse {
    object: ImageObject,
    not_modified: bool,
    cache_control: &'static str,
}

impl<'r> Responder<'r, 'static> for ObjectResponse {
    fn respond_to(self, _: &'r Request<'_>) -> response::Result<'static> {
        let mut response = Response::build();
        response
            .raw_header("ETag", self.object.etag)
            .raw_header("Cache-Control", self.cache_control)
            .raw_header("Content-Security-Policy", "default-src 'none'; sandbox");
        if self.not_modified {
            return Ok(response.status(Status::NotModified).finalize());
        }
        let len = self.object.body.len;
        response
            .raw_header("Content-Type", self.object.content_type)
            .raw_header("Content-Disposition", "inline")
            .raw_header("Content-Length", len.to_string())
            .streamed_body(self.object.body.reader);
        Ok(response.finalize())
    }
}

pub struct IfNoneMatch(Option<String>);

#[rocket::async_trait]
impl<'r> rocket::request::FromRequest<'r> for IfNoneMatch {
    type Error = std::convert::Infallible;

    async fn from_request(req: &'r Request<'_>) -> rocket::request::Outcome<Self, Self::Error> {
        rocket::request::Outcome::Success(IfNoneMatch(req.headers().get_one("If-None-Match").map(str::to_owned)))
    }
}

async fn serve(state: &AppState, id: &str, variant: Variant, if_none_match: IfNoneMatch) -> AppResult<ObjectResponse> {
    let object = state.app.image_object(&parse_id(id)?, variant).await?;
    let not_modified = if_none_match.0.is_some_and(|tags| tags.split(',').any(|t| t.trim() == object.etag));
    // A deleted photo must stop showing: the original is revalidated on every view (a 304 with the ETag); a
    // thumbnail, shown in lists, may stay in a browser's cache for five minutes at most.
    let cache_control = match variant {
        Variant::Original | Variant::Display => "private, no-cache",
        Variant::Thumbnail => "private, max-age=300",
    };
    Ok(ObjectResponse { object, not_modified, cache_control })
}

/// The stored image (metadata stripped, orientation applied)
#[utoipa::path(
    get,
    path = "/api/v1/images/{id}/file",
    operation_id = "getImageFile",
    params(IdParam),
    responses(StoredImage)
)]
#[get("/images/<id>/file")]
async fn file(state: &State<AppState>, id: &str, etag: IfNoneMatch) -> AppResult<ObjectResponse> {
    serve(state, id, Variant::Original, etag).await
}

/// The thumbnail (JPEG, or PNG when the image has transparency)
#[utoipa::path(
    get,
    path = "/api/v1/images/{id}/thumbnail",
    operation_id = "getImageThumbnail",
    params(IdParam),
    responses(StoredThumbnail)
)]
#[get("/images/<id>/thumbnail")]
async fn thumbnail(state: &State<AppState>, id: &str, etag: IfNoneMatch) -> AppResult<ObjectResponse> {
    serve(state, id, Variant::Thumbnail, etag).await
}

/// What a browser is shown: the display rendition (a JPEG, or PNG with transparency, at most 2048 pixels
/// long) of an original browsers cannot show (HEIC) or that is far larger than a screen, else the original
#[utoipa::path(
    get,
    path = "/api/v1/images/{id}/display",
    operation_id = "getImageDisplay",
    params(IdParam),
    responses(StoredDisplay)
)]
#[get("/images/<id>/display")]
async fn display(state: &State<AppState>, id: &str, etag: IfNoneMatch) -> AppResult<ObjectResponse> {
    serve(state, id, Variant::Display, etag).await
}

/// Delete an image and its objects
#[utoipa::path(delete, path = "/api/v1/images/{id}", operation_id = "deleteImage",
    params(IdParam, ("X-Delete-Token" = Option<String>, Header, nullable = false)), security((), ("adminKey" = [])),
    responses((status = 204, description = "Deleted"), DeleteErrors))]
#[delete("/images/<id>")]
async fn remove(state: &State<AppState>, id: &str, credentials: Credentials) -> AppResult<Status> {
    let id = parse_id(id)?;
    let authority = if credentials.is_admin() {
        DeleteAuthority::Admin
    } else {
        let token = credentials.delete_token().ok_or_else(|| {
            AppError::new(
                ErrorCode::Unauthorized,
                "Send the delete token in X-Delete-Token (or an admin key as a bearer token).",
            )
        })?;
        DeleteAuthority::Token(token)
    };
    state.app.delete_image(&id, authority).await?;
    Ok(Status::NoContent)
}

/// List images, newest first (admin)
#[utoipa::path(get, path = "/api/v1/images", operation_id = "listImages", security(("adminKey" = [])),
    params(
        ("cursor" = Option<String>, Query, nullable = false, pattern = "^[0-9]{1,15}-[0-9a-f]{32}$",
            description = "The next_cursor of the previous page"),
        ("limit" = Option<i64>, Query, nullable = false, minimum = 1, maximum = 200,
            description = "How many images, 50 when not given")),
    responses((status = 200, description = "A page of images", body = ImagePage), ListErrors))]
#[get("/images?<cursor>&<limit>")]
async fn list(
    state: &State<AppState>,
    credentials: Credentials,
    cursor: Vec<&str>,
    limit: Vec<&str>,
) -> AppResult<Json<ImagePage>> {
    credentials.require_admin(state)?;
    // Each parameter at most once: a repeated one is refused rather than half read.
    let limit = match limit[..] {
        [] => 50,
        [raw] => raw
            .parse::<i64>()
            .ok()
            .filter(|l| (1..=200).contains(l))
            .ok_or_else(|| AppError::new(ErrorCode::InvalidRequest, "`limit` is a whole number from 1 to 200."))?,
        _ => return Err(AppError::new(ErrorCode::InvalidRequest, "Give `limit` once.")),
    };
    let before = match cursor[..] {
        [] => None,
        [raw] => Some(images::decode_cursor(raw)?),
        _ => return Err(AppError::new(ErrorCode::BadRequest, "Give `cursor` once.")),
    };
    let records = state.app.db.run(move |conn| crate::db::image_rows::list_page(conn, before, None, limit)).await?;
    let next_cursor = (records.len() as i64 == limit).then(|| records.last().map(images::encode_cursor)).flatten();
    let items: Vec<ImageView> = records.iter().map(ImageView::from).collect();
    Ok(Json(ImagePage { items, next_cursor }))
}
