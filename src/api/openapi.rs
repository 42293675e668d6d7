//! The OpenAPI 3.1 document of the JSON routes, served at `/api/v1/openapi.json`. The schemas of what the
//! handlers answer are derived (utoipa) from the types they serialize; the operations are written here, with
//! the limits of the running configuration (upload size, description length, accepted formats, labels).

use rocket::serde::json::Json;
use rocket::{get, routes, Route, State};
use serde_json::{json, Value};

use super::image_routes::UploadedImage;
use crate::config::AppConfig;
use crate::direct_uploads::{SessionView, UploadTarget};
use crate::error::ErrorBody;
use crate::inference::Analysis;
use crate::notify::subscriptions::{E164_PATTERN, EMAIL_PATTERN, MAX_LABELS};
use crate::notify::Subscription;
use crate::state::AppState;
use crate::stored_images::ImageView;

pub fn routes() -> Vec<Route> {
    routes![openapi_json]
}

#[get("/openapi.json")]
fn openapi_json(state: &State<AppState>) -> Json<Value> {
    Json(document(&state.pipeline.config, state.pipeline.inference.labels()))
}

/// The schemas of what the handlers answer, derived from the types they serialize.
#[derive(utoipa::OpenApi)]
#[openapi(components(schemas(
    ErrorBody,
    ImageView,
    UploadedImage,
    Analysis,
    Subscription,
    UploadTarget,
    SessionView
)))]
struct ResponseTypes;

fn derived_schemas() -> serde_json::Map<String, Value> {
    use utoipa::OpenApi;
    let components = ResponseTypes::openapi().components.unwrap_or_default();
    match serde_json::to_value(components.schemas) {
        Ok(Value::Object(schemas)) => schemas,
        _ => serde_json::Map::new(),
    }
}

/// `GET /api/v1/images?cursor=`: the `next_cursor` of a page, `<milliseconds>-<image id>`.
pub const CURSOR_PATTERN: &str = "^[0-9]{1,15}-[0-9a-f]{32}$";

fn error_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } }
    })
}

fn errors(codes: &[(&str, &str)]) -> serde_json::Map<String, Value> {
    codes.iter().map(|(status, description)| (status.to_string(), error_response(description))).collect()
}

fn with_errors(mut responses: Value, codes: &[(&str, &str)]) -> Value {
    responses.as_object_mut().expect("responses are an object").extend(errors(codes));
    responses
}

const TOO_MANY: (&str, &str) = ("429", "TOO_MANY_REQUESTS: over the client's allowance; see Retry-After");

const UPLOAD_ERRORS: [(&str, &str); 9] = [
    ("400", "MISSING_FILE, BAD_REQUEST or INVALID_IDEMPOTENCY_KEY"),
    ("409", "IDEMPOTENCY_CONFLICT: the key was used with other bytes"),
    ("413", "PAYLOAD_TOO_LARGE: over max_upload_bytes"),
    ("415", "UNSUPPORTED_MEDIA_TYPE: not JPEG, PNG, WebP or GIF by content"),
    ("422", "IMAGE_TOO_LARGE (a dimension or pixel limit), CORRUPT_IMAGE or INVALID_REQUEST"),
    TOO_MANY,
    ("500", "INTERNAL or INFERENCE_FAILED"),
    ("503", "BUSY, INFERENCE_BUSY, DATABASE_UNAVAILABLE or STORE_UNAVAILABLE; see Retry-After"),
    ("default", "Any other error, same shape"),
];

/// A subscription request for one protocol; `labels` are the classifier's.
fn subscription_input(protocol: &str, endpoint_pattern: &str, endpoint: &str, labels: &[String]) -> Value {
    json!({
        "type": "object", "required": ["protocol", "endpoint"],
        "properties": {
            "protocol": { "type": "string", "enum": [protocol] },
            "endpoint": { "type": "string", "pattern": endpoint_pattern, "maxLength": 254, "description": endpoint },
            "labels": { "type": "array", "maxItems": MAX_LABELS, "items": { "type": "string", "enum": labels },
                "description": "Only uploads whose top label is one of these (an SNS filter policy on top_label)" }
        }
    })
}

fn id_param() -> Value {
    json!({ "name": "id", "in": "path", "required": true, "schema": { "type": "string", "pattern": "^[0-9a-f]{32}$" } })
}

fn binary_response(description: &str) -> Value {
    with_errors(
        json!({
            "200": {
                "description": description,
                "headers": {
                    "ETag": { "schema": { "type": "string" } },
                    "X-Content-Type-Options": { "schema": { "type": "string", "enum": ["nosniff"] } }
                },
                "content": { "image/*": { "schema": { "type": "string", "format": "binary" } } }
            },
            "304": { "description": "Not modified (If-None-Match)" }
        }),
        &[("404", "NOT_FOUND"), ("410", "IMAGE_MISSING: the image's file was lost from the store")],
    )
}

/// Direct upload sessions: open, send, complete, ask.
fn direct_upload_paths(config: &AppConfig, accepted: &[&str]) -> Value {
    let max = config.settings.direct_upload_max_bytes;
    let mut content_types: Vec<&str> = accepted.to_vec();
    content_types.push("application/octet-stream");
    json!({
        "/api/v1/uploads": { "post": {
            "summary": "Open a direct upload session, for files over the form's limit",
            "description": "Answers a URL to PUT the file to (a presigned S3 URL, or on the local store one on this server), with the headers to send as they are. Then POST /api/v1/uploads/{id}/complete. Example: curl -X PUT -H 'content-type: image/jpeg' --data-binary @photo.jpg \"$url\".",
            "operationId": "openUploadSession",
            "requestBody": { "required": true, "content": { "application/json": { "schema": {
                "type": "object", "required": ["filename", "byte_size"], "additionalProperties": false,
                "properties": {
                    "filename": { "type": "string", "maxLength": 1024 },
                    "description": { "type": "string", "maxLength": config.settings.max_description_chars },
                    "byte_size": { "type": "integer", "minimum": 1, "maximum": max,
                        "description": format!("The file's exact size; at most direct_upload_max_bytes = {max}") },
                    "content_type": { "type": "string", "enum": content_types },
                    "sha256": { "type": "string", "pattern": "^[0-9a-fA-F]{64}$", "description": "Checked against the bytes that arrive" }
                }
            } } } },
            "responses": with_errors(json!({ "201": {
                "description": "The session and where to send the file",
                "headers": { "Location": { "schema": { "type": "string" } } },
                "content": { "application/json": { "schema": { "$ref": "#/components/schemas/UploadSession" } } }
            } }), &[("400", "MISSING_FILE: byte_size 0, or BAD_REQUEST"), ("413", "PAYLOAD_TOO_LARGE: over direct_upload_max_bytes"),
                    ("415", "UNSUPPORTED_MEDIA_TYPE: a content_type that is not accepted"), ("422", "INVALID_REQUEST"), TOO_MANY,
                    ("503", "DATABASE_UNAVAILABLE or STORE_UNAVAILABLE"), ("default", "Any other error, same shape")])
        } },
        "/api/v1/uploads/{id}": { "get": {
            "summary": "A direct upload's status",
            "operationId": "getUploadSession",
            "parameters": [id_param()],
            "responses": with_errors(json!({ "200": {
                "description": "pending, processing, stored (with the image id) or failed (with the error)",
                "content": { "application/json": { "schema": { "$ref": "#/components/schemas/UploadStatus" } } }
            } }), &[("404", "NOT_FOUND")])
        } },
        "/api/v1/uploads/{id}/data": { "put": {
            "summary": "Send a direct upload's file (the local store's stand-in for a presigned S3 URL)",
            "operationId": "putUploadData",
            "parameters": [id_param(),
                { "name": "expires", "in": "query", "required": true,
                    "schema": { "type": "integer", "format": "int64", "minimum": 0, "maximum": i64::MAX } },
                { "name": "signature", "in": "query", "required": true, "schema": { "type": "string" } }],
            "requestBody": { "required": true, "content": { "application/octet-stream": { "schema": { "type": "string", "format": "binary" } } } },
            "responses": with_errors(json!({ "200": { "description": "Received" } }),
                &[("400", "BAD_REQUEST"), ("403", "UPLOAD_URL_INVALID: a signature or length other than signed"), ("404", "NOT_FOUND"),
                  ("409", "UPLOAD_IN_PROGRESS: already completed"), ("410", "UPLOAD_EXPIRED"), ("413", "PAYLOAD_TOO_LARGE"),
                  ("422", "INVALID_REQUEST"), ("503", "STORE_UNAVAILABLE"), ("default", "Any other error, same shape")])
        } },
        "/api/v1/uploads/{id}/complete": { "post": {
            "summary": "Process a direct upload's file, as POST /api/v1/images does a form's; idempotent",
            "operationId": "completeUploadSession",
            "parameters": [id_param()],
            "responses": with_errors(json!({ "201": {
                "description": "Stored. A repeated call answers the same image, with `Idempotent-Replayed: true`.",
                "headers": { "Location": { "schema": { "type": "string" } } },
                "content": { "application/json": { "schema": { "$ref": "#/components/schemas/UploadedImage" } } }
            } }), &[("404", "NOT_FOUND"), ("409", "UPLOAD_INCOMPLETE (send the file first) or UPLOAD_IN_PROGRESS"),
                    ("410", "UPLOAD_EXPIRED or IMAGE_MISSING"), ("413", "PAYLOAD_TOO_LARGE"), ("415", "UNSUPPORTED_MEDIA_TYPE"),
                    ("422", "IMAGE_TOO_LARGE, CORRUPT_IMAGE or INVALID_REQUEST (size or SHA-256 other than declared)"), TOO_MANY,
                    ("500", "INTERNAL or INFERENCE_FAILED"), ("503", "BUSY, INFERENCE_BUSY, DATABASE_UNAVAILABLE or STORE_UNAVAILABLE; see Retry-After"),
                    ("default", "Any other error, same shape")])
        } }
    })
}

/// The document, with the limits of this server's configuration (upload size, description length, accepted
/// formats) and its classifier's labels.
pub fn document(config: &AppConfig, labels: &[String]) -> Value {
    let settings = &config.settings;
    let accepted: Vec<&str> = config.accepted_formats.iter().map(|f| f.content_type()).collect();
    let upload_body = json!({
        "required": true,
        "content": { "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["file"],
                "properties": {
                    "file": { "type": "string", "format": "binary", "minLength": 1,
                        "description": format!("The image, at most {} bytes; identified by its content, which must be one of: {}. Other bytes are refused with 415 or 422.", settings.max_upload_bytes, accepted.join(", ")) },
                    "description": { "type": "string", "maxLength": settings.max_description_chars },
                    "csrf_token": { "type": "string", "description": "Sent by the HTML form; the API ignores it" }
                },
                "additionalProperties": false
            },
            "encoding": { "file": { "contentType": accepted.join(", ") } }
        } }
    });
    let mut schemas = derived_schemas();
    schemas.insert(
        "Status".to_owned(),
        json!({ "type": "object", "required": ["status"], "properties": { "status": { "type": "string" } } }),
    );
    let mut document = json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Upshot API",
            "version": "1.0.0",
            "description": "Image intake: upload, validate by content, strip metadata, thumbnail, store, classify, notify. Every error has the shape of the Error schema, and every response carries X-Request-Id. Not described here, as OpenAPI cannot describe it: GET /api/v1/ws, a WebSocket where each binary message is an image and each answer a text message with the Analysis JSON (or an Error for a bad frame)."
        },
        "paths": {
            "/api/v1/images": {
                "post": {
                    "summary": "Upload an image",
                    "operationId": "uploadImage",
                    "parameters": [{ "name": "Idempotency-Key", "in": "header", "required": false,
                        "description": "A retry with the same key and bytes returns the first result and stores nothing twice.",
                        "schema": { "type": "string", "pattern": "^[!-~]{1,255}$" } }],
                    "requestBody": upload_body,
                    "responses": with_errors(json!({ "201": {
                        "description": "Stored. Idempotent replays carry `Idempotent-Replayed: true`.",
                        "headers": { "Location": { "schema": { "type": "string" } } },
                        "content": { "application/json": { "schema": { "$ref": "#/components/schemas/UploadedImage" } } }
                    } }), &UPLOAD_ERRORS)
                },
                "get": {
                    "summary": "List images, newest first (admin)",
                    "operationId": "listImages",
                    "security": [{ "adminKey": [] }],
                    "parameters": [
                        { "name": "cursor", "in": "query", "description": "The next_cursor of the previous page",
                            "schema": { "type": "string", "pattern": CURSOR_PATTERN } },
                        { "name": "limit", "in": "query", "schema": { "type": "integer", "minimum": 1, "maximum": 200, "default": 50 } }
                    ],
                    "responses": with_errors(json!({ "200": {
                        "description": "A page of images",
                        "content": { "application/json": { "schema": {
                            "type": "object",
                            "required": ["items", "next_cursor"],
                            "properties": {
                                "items": { "type": "array", "items": { "$ref": "#/components/schemas/Image" } },
                                "next_cursor": { "type": ["string", "null"] }
                            }
                        } } }
                    } }), &[("400", "BAD_REQUEST: a cursor this server did not issue"), ("401", "UNAUTHORIZED"), ("403", "FORBIDDEN: admin routes disabled"), ("422", "INVALID_REQUEST: limit out of range")])
                }
            },
            "/api/v1/images/{id}": {
                "get": {
                    "summary": "An image's metadata and predictions",
                    "operationId": "getImage",
                    "parameters": [id_param()],
                    "responses": with_errors(json!({ "200": {
                        "description": "The image",
                        "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Image" } } }
                    } }), &[("404", "NOT_FOUND"), ("410", "IMAGE_MISSING: the image's file was lost from the store")])
                },
                "delete": {
                    "summary": "Delete an image and its objects",
                    "operationId": "deleteImage",
                    "parameters": [id_param(), { "name": "X-Delete-Token", "in": "header", "schema": { "type": "string" } }],
                    "security": [{}, { "adminKey": [] }],
                    "responses": with_errors(json!({ "204": { "description": "Deleted" } }),
                        &[("401", "UNAUTHORIZED: no token"), ("403", "FORBIDDEN: wrong token"), ("404", "NOT_FOUND"), ("503", "STORE_UNAVAILABLE or DATABASE_UNAVAILABLE: retry")])
                }
            },
            "/api/v1/images/{id}/file": { "get": {
                "summary": "The stored image (metadata stripped, orientation applied)",
                "operationId": "getImageFile",
                "parameters": [id_param()],
                "responses": binary_response("The image bytes")
            } },
            "/api/v1/images/{id}/thumbnail": { "get": {
                "summary": "The thumbnail (JPEG, or PNG when the image has transparency)",
                "operationId": "getImageThumbnail",
                "parameters": [id_param()],
                "responses": binary_response("The thumbnail bytes")
            } },
            "/api/v1/classify": { "post": {
                "summary": "Classify an image and analyse faces; nothing is stored",
                "operationId": "classify",
                "requestBody": upload_body,
                "responses": with_errors(json!({ "200": {
                    "description": "The models' answer",
                    "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Analysis" } } }
                } }), &UPLOAD_ERRORS)
            } },
            "/api/v1/subscriptions": {
                "post": {
                    "summary": "Subscribe an e-mail address or phone number to upload alerts (admin; SNS notifier only)",
                    "operationId": "subscribe",
                    "security": [{ "adminKey": [] }],
                    "requestBody": { "required": true, "content": { "application/json": { "schema": {
                        "oneOf": [
                            subscription_input("email", EMAIL_PATTERN, "An e-mail address", labels),
                            subscription_input("sms", E164_PATTERN, "A phone number in E.164 form, such as +14155550100", labels)
                        ]
                    } } } },
                    "responses": with_errors(json!({ "201": { "description": "Subscribed (e-mail subscribers confirm by a link first)",
                        "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Subscription" } } } } }),
                        &[("401", "UNAUTHORIZED"), ("403", "FORBIDDEN: admin routes disabled"), ("409", "NOTIFIER_NOT_CONFIGURED"),
                          ("422", "INVALID_REQUEST: bad endpoint or unknown label"), ("503", "NOTIFIER_UNAVAILABLE")])
                },
                "get": {
                    "summary": "List subscriptions (admin)",
                    "operationId": "listSubscriptions",
                    "security": [{ "adminKey": [] }],
                    "responses": with_errors(json!({ "200": { "description": "Subscriptions",
                        "content": { "application/json": { "schema": { "type": "object", "properties": {
                            "items": { "type": "array", "items": { "$ref": "#/components/schemas/Subscription" } } } } } } } }),
                        &[("401", "UNAUTHORIZED"), ("409", "NOTIFIER_NOT_CONFIGURED")])
                }
            },
            "/api/v1/subscriptions/{id}": { "delete": {
                "summary": "Unsubscribe (admin)",
                "operationId": "unsubscribe",
                "security": [{ "adminKey": [] }],
                "parameters": [{ "name": "id", "in": "path", "required": true, "schema": { "type": "string" } }],
                "responses": with_errors(json!({ "204": { "description": "Unsubscribed" } }),
                    &[("401", "UNAUTHORIZED"), ("409", "NOTIFIER_NOT_CONFIGURED")])
            } },
            "/api/v1/openapi.json": { "get": {
                "summary": "This document",
                "operationId": "getOpenApi",
                "responses": { "200": { "description": "OpenAPI 3 document", "content": { "application/json": { "schema": { "type": "object" } } } } }
            } },
            "/upload-selfie": { "post": {
                "summary": "Upload (compatibility with the earlier selfie API)",
                "operationId": "uploadSelfie",
                "requestBody": upload_body,
                "responses": with_errors(json!({ "200": {
                    "description": "Stored",
                    "content": { "application/json": { "schema": {
                        "type": "object",
                        "required": ["request_id", "message", "result"],
                        "properties": {
                            "request_id": { "type": "string" },
                            "message": { "type": "string", "enum": ["Upload & inference successful"] },
                            "result": { "allOf": [
                                { "$ref": "#/components/schemas/UploadedImage" },
                                { "type": "object", "properties": {
                                    "labels": { "type": "array", "items": { "$ref": "#/components/schemas/Prediction" } },
                                    "season": { "type": ["string", "null"] },
                                    "confidence": { "type": ["number", "null"] },
                                    "body_type": { "type": "null", "description": "Always null: no model for it" },
                                    "body_type_reason": { "type": "string" }
                                } }
                            ] }
                        }
                    } } }
                } }), &UPLOAD_ERRORS)
            } },
            "/health": { "get": {
                "summary": "Liveness (compatibility)",
                "operationId": "health",
                "responses": { "200": { "description": "Up", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Status" } } } } }
            } },
            "/metrics": { "get": {
                "summary": "Prometheus metrics: requests and latency by route and status, upload bytes, inference time, queues, outbox backlog",
                "operationId": "metrics",
                "responses": { "200": { "description": "Prometheus text format 0.0.4", "content": { "text/plain": { "schema": { "type": "string" } } } } }
            } },
            "/healthz": { "get": {
                "summary": "Liveness",
                "operationId": "healthz",
                "responses": { "200": { "description": "Up", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Status" } } } } }
            } },
            "/readyz": { "get": {
                "summary": "Readiness: database and object store reachable",
                "operationId": "readyz",
                "responses": {
                    "200": { "description": "Ready", "content": { "application/json": { "schema": { "type": "object" } } } },
                    "503": error_response("NOT_READY, naming the failing part; `checks` has each part's status")
                }
            } }
        },
        "components": {
            "securitySchemes": { "adminKey": { "type": "http", "scheme": "bearer" } },
            "schemas": schemas
        }
    });
    if let (Some(paths), Value::Object(more)) =
        (document["paths"].as_object_mut(), direct_upload_paths(config, &accepted))
    {
        paths.extend(more);
    }
    document
}
