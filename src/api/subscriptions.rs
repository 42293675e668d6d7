//! Admin: who receives upload alerts. `POST` subscribes an e-mail address or phone number (optionally only
//! for some labels), `GET` lists, `DELETE` unsubscribes. With the log notifier there is nobody to subscribe.

use rocket::http::Status;
use rocket::serde::json::Json;
use rocket::{delete, get, post, routes, Route, State};

use super::doc::errors;
use super::guards::Credentials;
use crate::error::{AppError, AppResult, ErrorCode};
use crate::notify::subscriptions::SubscriptionInput;
use crate::notify::{NotifyError, Subscription, SubscriptionRequest};
use crate::state::AppState;

pub fn routes() -> Vec<Route> {
    routes![create, list, remove]
}

errors!(SubscribeErrors {
    "401" => "UNAUTHORIZED",
    "403" => "FORBIDDEN: admin routes disabled",
    "409" => "NOTIFIER_NOT_CONFIGURED",
    "422" => "INVALID_REQUEST: bad endpoint or unknown label",
    "503" => "NOTIFIER_UNAVAILABLE",
});

errors!(AdminErrors {
    "401" => "UNAUTHORIZED",
    "409" => "NOTIFIER_NOT_CONFIGURED",
});

/// Everyone subscribed.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(crate) struct SubscriptionList {
    items: Vec<Subscription>,
}

impl From<NotifyError> for AppError {
    fn from(error: NotifyError) -> Self {
        match error {
            NotifyError::NotSupported => AppError::new(
                ErrorCode::NotifierNotConfigured,
                "Subscriptions need the SNS notifier (notifier = \"sns\"); this server only logs notifications.",
            ),
            NotifyError::Permanent(_) => {
                AppError::new(ErrorCode::InvalidRequest, "The notification service refused the request.")
                    .with_detail(error)
            }
            NotifyError::Transient(_) => {
                AppError::new(ErrorCode::NotifierUnavailable, "The notification service is unavailable; try again.")
                    .with_detail(error)
                    .retry_after(5)
            }
        }
    }
}

/// Subscribe an e-mail address or phone number to upload alerts (admin; SNS notifier only)
#[utoipa::path(post, path = "/api/v1/subscriptions", operation_id = "subscribe", security(("adminKey" = [])),
    request_body(content = ref("#/components/schemas/SubscriptionRequest")),
    responses((status = 201, description = "Subscribed (e-mail subscribers confirm by a link first)",
        body = Subscription), SubscribeErrors))]
#[post("/subscriptions", data = "<input>")]
async fn create(
    state: &State<AppState>,
    credentials: Credentials,
    input: Result<Json<SubscriptionInput>, rocket::serde::json::Error<'_>>,
) -> AppResult<(Status, Json<Subscription>)> {
    credentials.require_admin(state)?;
    let input = input.map_err(|e| {
        AppError::new(
            ErrorCode::InvalidRequest,
            "Send JSON: {\"protocol\": \"email\" | \"sms\", \"endpoint\": \"…\", \"labels\": [\"…\"]}.",
        )
        .with_detail(e)
    })?;
    let request = SubscriptionRequest::validate(input.into_inner(), state.app.inference.labels())
        .map_err(|reason| AppError::new(ErrorCode::InvalidRequest, reason))?;
    let subscription = state.notifier.subscribe(&request).await?;
    Ok((Status::Created, Json(subscription)))
}

/// List subscriptions (admin)
#[utoipa::path(get, path = "/api/v1/subscriptions", operation_id = "listSubscriptions", security(("adminKey" = [])),
    responses((status = 200, description = "Subscriptions", body = SubscriptionList), AdminErrors))]
#[get("/subscriptions")]
async fn list(state: &State<AppState>, credentials: Credentials) -> AppResult<Json<SubscriptionList>> {
    credentials.require_admin(state)?;
    Ok(Json(SubscriptionList { items: state.notifier.subscriptions().await? }))
}

/// Unsubscribe (admin)
#[utoipa::path(delete, path = "/api/v1/subscriptions/{id}", operation_id = "unsubscribe",
    security(("adminKey" = [])), params(("id" = String, Path)),
    responses((status = 204, description = "Unsubscribed"), AdminErrors))]
#[delete("/subscriptions/<id>")]
async fn remove(state: &State<AppState>, credentials: Credentials, id: &str) -> AppResult<Status> {
    credentials.require_admin(state)?;
    state.notifier.unsubscribe(id).await?;
    Ok(Status::NoContent)
}
