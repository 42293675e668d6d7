//! Routes kept compatible with the earlier selfie API.

use rocket::serde::json::Json;
use rocket::{get, post, routes, Route, State};
use serde_json::{json, Value};

use super::images::Created;
use super::upload::{self, UploadData};
use crate::error::AppResult;
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
    state: &State<AppState>,
    data: UploadData<'_>,
    request_id: RequestId,
) -> AppResult<Json<Value>> {
    let uploaded = upload::handle(state, data, None).await?;
    let created = Created::new(state, &uploaded);
    Ok(Json(json!({
        "request_id": request_id.as_str(),
        "message": "Upload & inference successful",
        "result": created.body,
    })))
}
