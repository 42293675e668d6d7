//! Routes kept compatible with the earlier selfie API.

use rocket::serde::json::Json;
use rocket::{get, post, routes, Route, State};
use serde::Serialize;
use serde_json::Value;

use super::doc::{Up, UploadErrors};
use super::guards::{IntakeAllowance, SpoolReservation};
use super::image_routes::{Created, UploadedImage};
use super::upload::{self, UploadData};
use crate::error::AppResult;
use crate::inference::{Prediction, BODY_TYPE_REASON};
use crate::state::AppState;
use crate::telemetry::RequestId;

pub fn routes() -> Vec<Route> {
    routes![health, upload_selfie]
}

/// The earlier selfie API's answer to an upload.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct SelfieUpload {
    request_id: String,
    message: SelfieMessage,
    result: SelfieResult,
}

#[derive(Serialize, utoipa::ToSchema)]
enum SelfieMessage {
    #[serde(rename = "Upload & inference successful")]
    Stored,
}

/// The stored image, and beside it the earlier API's names for what the models said.
#[derive(Serialize, utoipa::ToSchema)]
struct SelfieResult {
    #[serde(flatten)]
    image: UploadedImage,
    /// `predictions`
    labels: Vec<Prediction>,
    /// `selfie.season`
    season: Option<String>,
    /// `selfie.confidence`
    confidence: Option<f64>,
    /// Always null: no model for it
    #[schema(value_type = Option<String>)]
    body_type: Option<()>,
    body_type_reason: &'static str,
}

/// Liveness (compatibility)
#[utoipa::path(get, path = "/health", operation_id = "health",
    responses((status = 200, description = "Up", body = Up)))]
#[get("/health")]
fn health() -> Json<Up> {
    Up::answer()
}

/// Upload (compatibility with the earlier selfie API)
#[utoipa::path(post, path = "/upload-selfie", operation_id = "uploadSelfie",
    request_body(content = ref("#/components/schemas/UploadForm"), content_type = "multipart/form-data"),
    responses((status = 200, description = "Stored", body = SelfieUpload), UploadErrors))]
#[post("/upload-selfie", data = "<data>")]
async fn upload_selfie(
    _intake: IntakeAllowance,
    _spool: SpoolReservation,
    state: &State<AppState>,
    data: UploadData<'_>,
    request_id: RequestId,
) -> AppResult<Json<SelfieUpload>> {
    let uploaded = upload::handle(state, data, None, None).await?;
    let image = Created::new(state, &uploaded).body;
    let selfie = image.image.selfie.as_ref();
    let result = SelfieResult {
        labels: image.image.predictions.clone(),
        season: selfie.and_then(|s| s.get("season")).and_then(Value::as_str).map(str::to_owned),
        confidence: selfie.and_then(|s| s.get("confidence")).and_then(Value::as_f64),
        body_type: None,
        body_type_reason: BODY_TYPE_REASON,
        image,
    };
    Ok(Json(SelfieUpload { request_id: request_id.as_str().to_owned(), message: SelfieMessage::Stored, result }))
}
