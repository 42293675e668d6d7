//! The OpenAPI 3.1 document of the JSON routes, served at `/api/v1/openapi.json`. The operations are derived
//! (utoipa) from the handlers' `utoipa::path` attributes and the schemas from the types they serialize; the
//! request bodies that carry this server's limits (upload size, description length, accepted formats, the
//! classifier's labels) are added from its configuration.

use rocket::serde::json::Json;
use rocket::{get, routes, Route, State};
use serde_json::{json, Value};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::OpenApi;

use super::image_routes::UploadedImage;
use super::upload_sessions::MAX_FILENAME_CHARS;
use super::{classify, compat, image_routes, ops, subscriptions, upload_sessions};
use crate::app::direct_uploads::{SessionView, UploadTarget};
use crate::app::images::ImageView;
use crate::config::AppConfig;
use crate::error::ErrorBody;
use crate::inference::Analysis;
use crate::notify::subscriptions::{E164_PATTERN, EMAIL_PATTERN, MAX_LABELS};
use crate::notify::Subscription;
use crate::state::AppState;

pub fn routes() -> Vec<Route> {
    routes![openapi_json]
}

/// This document
#[utoipa::path(get, path = "/api/v1/openapi.json", operation_id = "getOpenApi",
    responses((status = 200, description = "OpenAPI 3 document", body = Object)))]
#[get("/openapi.json")]
fn openapi_json(state: &State<AppState>) -> Json<Value> {
    Json(document(&state.app.config, state.app.inference.labels()))
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Upshot API",
        version = "1.0.0",
        description = "Image intake: upload, validate by content, strip metadata, thumbnail, store, classify, notify. Every error has the shape of the Error schema, and every response carries X-Request-Id and a W3C traceparent naming the request's trace (a valid incoming traceparent is continued). Not described here, as OpenAPI cannot describe it: GET /api/v1/ws, a WebSocket where each binary message is an image and each answer a text message with the Analysis JSON (or an Error for a bad frame)."
    ),
    paths(
        image_routes::create,
        image_routes::list,
        image_routes::show,
        image_routes::remove,
        image_routes::file,
        image_routes::thumbnail,
        image_routes::display,
        classify::classify,
        subscriptions::create,
        subscriptions::list,
        subscriptions::remove,
        openapi_json,
        compat::upload_selfie,
        compat::health,
        ops::metrics,
        ops::healthz,
        ops::readyz,
        upload_sessions::open,
        upload_sessions::status,
        upload_sessions::receive,
        upload_sessions::complete
    ),
    components(schemas(ErrorBody, ImageView, UploadedImage, Analysis, Subscription, UploadTarget, SessionView)),
    modifiers(&AdminKey)
)]
struct Operations;

/// The admin routes' bearer key.
struct AdminKey;

impl utoipa::Modify for AdminKey {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme("adminKey", SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)));
    }
}

/// The request bodies whose limits are this server's configuration.
fn configured_schemas(config: &AppConfig, labels: &[String]) -> Value {
    let settings = &config.settings;
    let accepted: Vec<&str> = config.settings.images.accepted_formats.iter().map(|f| f.content_type()).collect();
    let max_direct = settings.direct_uploads.direct_upload_max_bytes;
    let mut session_types: Vec<&str> =
        config.settings.images.accepted_formats.iter().flat_map(|f| f.declared_types()).copied().collect();
    session_types.push("application/octet-stream");
    let subscription = |protocol: &str, pattern: &str, endpoint: &str| {
        json!({
            "type": "object", "required": ["protocol", "endpoint"],
            "properties": {
                "protocol": { "type": "string", "enum": [protocol] },
                "endpoint": { "type": "string", "pattern": pattern, "maxLength": 254, "description": endpoint },
                "labels": { "type": "array", "maxItems": MAX_LABELS, "items": { "type": "string", "enum": labels },
                    "description": "Only uploads whose top label is one of these (an SNS filter policy on top_label)" }
            }
        })
    };
    json!({
        "UploadForm": {
            "type": "object",
            "required": ["file"],
            "properties": {
                "file": { "type": "string", "format": "binary", "minLength": 1,
                    "description": format!("The image, at most {} bytes; identified by its content, which must be one of: {}. Other bytes are refused with 415 or 422.", settings.uploads.max_upload_bytes, accepted.join(", ")) },
                "description": { "type": "string", "maxLength": settings.uploads.max_description_chars },
                "csrf_token": { "type": "string", "description": "Sent by the HTML form; the API ignores it" }
            },
            "additionalProperties": false
        },
        "UploadSessionRequest": {
            "type": "object", "required": ["filename", "byte_size"], "additionalProperties": false,
            "properties": {
                "filename": { "type": "string", "maxLength": MAX_FILENAME_CHARS },
                "description": { "type": "string", "maxLength": settings.uploads.max_description_chars },
                "byte_size": { "type": "integer", "minimum": 1, "maximum": max_direct,
                    "description": format!("The file's exact size; at most direct_upload_max_bytes = {max_direct}") },
                "content_type": { "type": "string", "enum": session_types },
                "sha256": { "type": "string", "pattern": "^[0-9a-fA-F]{64}$", "description": "Checked against the bytes that arrive" }
            }
        },
        "SubscriptionRequest": { "oneOf": [
            subscription("email", EMAIL_PATTERN, "An e-mail address"),
            subscription("sms", E164_PATTERN, "A phone number in E.164 form, such as +14155550100")
        ] }
    })
}

/// The document, with the limits of this server's configuration and its classifier's labels.
pub fn document(config: &AppConfig, labels: &[String]) -> Value {
    let mut document = serde_json::to_value(Operations::openapi()).unwrap_or_default();
    let accepted =
        config.settings.images.accepted_formats.iter().map(|f| f.content_type()).collect::<Vec<_>>().join(", ");
    let operations = document["paths"].as_object_mut().into_iter().flat_map(|paths| paths.values_mut());
    for operation in operations.flat_map(|path| path.as_object_mut()).flat_map(|path| path.values_mut()) {
        // Every body this API takes is required, and the handlers' modules are not tags a client needs.
        if let Some(body) = operation.get_mut("requestBody") {
            body["required"] = true.into();
            // A multipart part's type is what the form's `file` may be.
            if let Some(form) = body["content"].get_mut("multipart/form-data") {
                form["encoding"] = json!({ "file": { "contentType": accepted } });
            }
        }
        if let Some(operation) = operation.as_object_mut() {
            operation.remove("tags");
        }
    }
    if let (Some(schemas), Value::Object(configured)) =
        (document["components"]["schemas"].as_object_mut(), configured_schemas(config, labels))
    {
        schemas.extend(configured);
    }
    document
}
