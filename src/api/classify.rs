//! Inference only, nothing stored: `POST /api/v1/classify` for one image, and the WebSocket `/api/v1/ws`
//! for a stream of frames (each binary message an image, each answer a JSON text message).

use std::sync::Arc;

use rocket::futures::{SinkExt, StreamExt};
use rocket::serde::json::Json;
use rocket::{get, post, routes, Route, State};
use rocket_ws::{Message, WebSocket};
use serde_json::{json, Value};

use super::doc::UploadErrors;
use super::guards::{ClientAddress, IntakeAllowance, SpoolReservation};
use super::upload::{clean_description, form_error, read_bytes, UploadData};
use crate::app::UploadPermit;
use crate::client_limits::WebSocketRefusal;
use crate::error::{AppError, AppResult, ErrorCode};
use crate::inference::Analysis;
use crate::ingest;
use crate::state::AppState;

pub fn routes() -> Vec<Route> {
    routes![classify, stream]
}

/// The models' answer for one image: the `Analysis` itself.
fn analysis_body(analysis: &Analysis) -> Value {
    serde_json::to_value(analysis).expect("an analysis serializes")
}

/// Decodes at the working size and runs the models; the upload's room in the budget is given back once the
/// bytes are decoded.
async fn analyse_bytes(state: &AppState, bytes: Vec<u8>, permit: UploadPermit) -> AppResult<Analysis> {
    let image = state
        .app
        .run_cpu(move |policy| {
            let image = ingest::decode_upright(&bytes, policy).map_err(AppError::from);
            drop((bytes, permit));
            image
        })
        .await?;
    state.app.analyse(Arc::new(image)).await
}

/// Classify an image and analyse faces; nothing is stored
#[utoipa::path(post, path = "/api/v1/classify", operation_id = "classify",
    request_body(content = ref("#/components/schemas/UploadForm"), content_type = "multipart/form-data"),
    responses((status = 200, description = "The models' answer", body = Analysis), UploadErrors))]
#[post("/classify", data = "<data>")]
async fn classify(
    _intake: IntakeAllowance,
    _spool: SpoolReservation,
    state: &State<AppState>,
    data: UploadData<'_>,
) -> AppResult<Json<Value>> {
    let form = data.map_err(|errors| form_error(&errors, state))?.into_inner().into_inner();
    // Nothing is stored, but the form follows the same rules as an upload's.
    clean_description(form.description, state.app.config.settings.uploads.max_description_chars)?;
    let file = form.file;
    let (bytes, permit) = read_bytes(state, &file).await?;
    Ok(Json(analysis_body(&analyse_bytes(state, bytes, permit).await?)))
}

/// Each binary message is an image. A message larger than `websocket_max_message_bytes` closes the socket
/// (WebSocket status 1009, message too big). Opening the socket takes one intake request from the client's
/// allowance, and so does each message: over it, the message is answered `TOO_MANY_REQUESTS` unprocessed. A
/// client has at most `max_websockets_per_client` open, the server `max_websockets`: that many messages, at
/// most, are being received at once.
#[get("/ws")]
fn stream(
    _intake: IntakeAllowance,
    ws: WebSocket,
    client: ClientAddress,
    state: &State<AppState>,
) -> AppResult<rocket_ws::Channel<'static>> {
    let slot = state.client_limits.open_websocket(client.0).map_err(|refusal| match refusal {
        WebSocketRefusal::ClientFull => AppError::new(
            ErrorCode::TooManyRequests,
            "Too many WebSockets are open from your address; close one first.",
        )
        .retry_after(5),
        WebSocketRefusal::ServerFull => {
            AppError::new(ErrorCode::Busy, "Too many WebSockets are open; retry in a moment.").retry_after(5)
        }
    })?;
    let state = state.inner().clone();
    let settings = &state.app.config.settings;
    let limit = settings.clients.websocket_max_message_bytes.min(settings.uploads.max_upload_bytes) as usize;
    let ws = ws.config(rocket_ws::Config {
        max_message_size: Some(limit),
        max_frame_size: Some(limit),
        ..Default::default()
    });
    let client = client.0;
    Ok(ws.channel(move |mut stream| {
        Box::pin(async move {
            let _slot = slot;
            while let Some(message) = stream.next().await {
                let reply = match message? {
                    Message::Binary(_) if state.client_limits.take_intake(client).is_err() => frame_error(
                        &AppError::new(ErrorCode::TooManyRequests, "Too many images from your address; slow down."),
                    ),
                    Message::Binary(frame) => match admitted_analysis(&state, frame.to_vec()).await {
                        Ok(analysis) => analysis_body(&analysis),
                        Err(error) => frame_error(&error),
                    },
                    Message::Text(_) => frame_error(&AppError::new(
                        ErrorCode::UnsupportedMediaType,
                        "Send each image as a binary message.",
                    )),
                    Message::Close(_) => break,
                    _ => continue,
                };
                stream.send(Message::Text(reply.to_string())).await?;
            }
            Ok(())
        })
    }))
}

async fn admitted_analysis(state: &AppState, frame: Vec<u8>) -> AppResult<Analysis> {
    let permit = state.app.admit_upload(frame.len() as u64).await?;
    analyse_bytes(state, frame, permit).await
}

/// A bad frame gets an error message in the API's error shape; the connection stays open.
fn frame_error(error: &AppError) -> Value {
    json!({ "error": { "code": error.code.as_str(), "message": error.message } })
}
