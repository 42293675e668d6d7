//! Routes kept compatible with the earlier selfie API.

use rocket::serde::json::Json;
use rocket::{get, post, routes, Route, State};
use serde_json::{json, Value};

use super::guards::{IntakeAllowance, SpoolReservation};
use super::image_routes::Created;
use super::upload::{self, UploadData};
use crate::error::AppResult;
use crate::inference::BODY_TYPE_REASON;
use crate::state::AppState;
use crate::telemetry::RequestId;

pub fn routes() -> Vec<Route> {
    routes![health, upload_selfie]
}

#[get("/health")]
fn health() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

#[post("/upload-selfie", data = "<data>")]
async fn upload_selfie(
    _intake: IntakeAllowance,
    _spool: SpoolReservation,
    state: &State<AppState>,
    data: UploadData<'_>,
    request_id: RequestId,
) -> AppResult<Json<Value>> {
    let uploaded = upload::handle(state, data, None, None).await?;
    let mut result =
        serde_json::to_value(Created::new(state, &uploaded).body).map_err(crate::error::AppError::internal)?;
    // The earlier API's field names, beside the full image description.
    let selfie = result["selfie"].clone();
    result["labels"] = result["predictions"].clone();
    result["season"] = selfie.get("season").cloned().unwrap_or(Value::Null);
    result["confidence"] = selfie.get("confidence").cloned().unwrap_or(Value::Null);
    result["body_type"] = Value::Null;
    result["body_type_reason"] = BODY_TYPE_REASON.into();
    Ok(Json(json!({
        "request_id": request_id.as_str(),
        "message": "Upload & inference successful",
        "result": result,
    })))
}
