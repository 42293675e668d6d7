//! One error type for the whole service: a stable code, the HTTP status that goes with it, a message for the
//! user and, separately, detail for the log that the user never sees.

use std::fmt;

use rocket::http::{ContentType, Header, Status};
use rocket::request::Request;
use rocket::response::{self, Responder, Response};
use rocket_dyn_templates::{context, Template};
use serde_json::json;

use crate::telemetry::RequestId;

/// Stable error codes: clients match on these, so a code is never renamed or reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    BadRequest,
    ClientClosedRequest,
    MissingFile,
    InvalidIdempotencyKey,
    Unauthorized,
    Forbidden,
    NotFound,
    MethodNotAllowed,
    IdempotencyConflict,
    PayloadTooLarge,
    UnsupportedMediaType,
    InvalidRequest,
    ImageTooLarge,
    CorruptImage,
    Busy,
    InferenceBusy,
    InferenceFailed,
    NotifierNotConfigured,
    CsrfTokenInvalid,
    NotifierUnavailable,
    NotReady,
    StoreUnavailable,
    DatabaseUnavailable,
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "BAD_REQUEST",
            ErrorCode::ClientClosedRequest => "CLIENT_CLOSED_REQUEST",
            ErrorCode::MissingFile => "MISSING_FILE",
            ErrorCode::InvalidIdempotencyKey => "INVALID_IDEMPOTENCY_KEY",
            ErrorCode::Unauthorized => "UNAUTHORIZED",
            ErrorCode::Forbidden => "FORBIDDEN",
            ErrorCode::NotFound => "NOT_FOUND",
            ErrorCode::MethodNotAllowed => "METHOD_NOT_ALLOWED",
            ErrorCode::IdempotencyConflict => "IDEMPOTENCY_CONFLICT",
            ErrorCode::PayloadTooLarge => "PAYLOAD_TOO_LARGE",
            ErrorCode::UnsupportedMediaType => "UNSUPPORTED_MEDIA_TYPE",
            ErrorCode::InvalidRequest => "INVALID_REQUEST",
            ErrorCode::ImageTooLarge => "IMAGE_TOO_LARGE",
            ErrorCode::CorruptImage => "CORRUPT_IMAGE",
            ErrorCode::Busy => "BUSY",
            ErrorCode::InferenceBusy => "INFERENCE_BUSY",
            ErrorCode::InferenceFailed => "INFERENCE_FAILED",
            ErrorCode::NotifierNotConfigured => "NOTIFIER_NOT_CONFIGURED",
            ErrorCode::CsrfTokenInvalid => "CSRF_TOKEN_INVALID",
            ErrorCode::NotifierUnavailable => "NOTIFIER_UNAVAILABLE",
            ErrorCode::NotReady => "NOT_READY",
            ErrorCode::StoreUnavailable => "STORE_UNAVAILABLE",
            ErrorCode::DatabaseUnavailable => "DATABASE_UNAVAILABLE",
            ErrorCode::Internal => "INTERNAL",
        }
    }

    pub fn status(self) -> Status {
        match self {
            ErrorCode::BadRequest | ErrorCode::MissingFile | ErrorCode::InvalidIdempotencyKey => Status::BadRequest,
            // nginx's code for a client that hung up before its request was read: not an error of the request
            // (no 413 or 400 in the metrics), and no one receives the answer.
            ErrorCode::ClientClosedRequest => Status::new(499),
            ErrorCode::Unauthorized => Status::Unauthorized,
            ErrorCode::Forbidden | ErrorCode::CsrfTokenInvalid => Status::Forbidden,
            ErrorCode::NotFound => Status::NotFound,
            ErrorCode::MethodNotAllowed => Status::MethodNotAllowed,
            ErrorCode::IdempotencyConflict | ErrorCode::NotifierNotConfigured => Status::Conflict,
            ErrorCode::PayloadTooLarge => Status::PayloadTooLarge,
            ErrorCode::UnsupportedMediaType => Status::UnsupportedMediaType,
            ErrorCode::InvalidRequest | ErrorCode::ImageTooLarge | ErrorCode::CorruptImage => {
                Status::UnprocessableEntity
            }
            ErrorCode::Busy
            | ErrorCode::InferenceBusy
            | ErrorCode::NotifierUnavailable
            | ErrorCode::NotReady
            | ErrorCode::StoreUnavailable
            | ErrorCode::DatabaseUnavailable => Status::ServiceUnavailable,
            ErrorCode::Internal | ErrorCode::InferenceFailed => Status::InternalServerError,
        }
    }

    /// The code a bare status gets when no handler chose one (Rocket's catchers).
    pub fn for_status(status: Status) -> Self {
        match status.code {
            401 => ErrorCode::Unauthorized,
            403 => ErrorCode::Forbidden,
            404 => ErrorCode::NotFound,
            405 => ErrorCode::MethodNotAllowed,
            409 => ErrorCode::IdempotencyConflict,
            413 => ErrorCode::PayloadTooLarge,
            415 => ErrorCode::UnsupportedMediaType,
            422 => ErrorCode::InvalidRequest,
            503 => ErrorCode::NotReady,
            400..=499 => ErrorCode::BadRequest,
            _ => ErrorCode::Internal,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug)]
pub struct AppError {
    pub code: ErrorCode,
    /// Safe to show to anyone.
    pub message: String,
    /// For the log only: may name hosts, paths, SQL errors.
    pub detail: Option<String>,
    pub retry_after_secs: Option<u32>,
}

pub type AppResult<T> = Result<T, AppError>;

impl AppError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        AppError { code, message: message.into(), detail: None, retry_after_secs: None }
    }

    pub fn with_detail(mut self, detail: impl fmt::Display) -> Self {
        self.detail = Some(detail.to_string());
        self
    }

    pub fn retry_after(mut self, secs: u32) -> Self {
        self.retry_after_secs = Some(secs);
        self
    }

    pub fn not_found() -> Self {
        AppError::new(ErrorCode::NotFound, "No such image.")
    }

    pub fn internal(detail: impl fmt::Display) -> Self {
        AppError::new(ErrorCode::Internal, "Something went wrong on our side.").with_detail(detail)
    }

    pub fn status(&self) -> Status {
        self.code.status()
    }

    fn log(&self, request_id: &str) {
        let detail = self.detail.as_deref().unwrap_or("");
        if self.status().code >= 500 {
            log::error!("request_id={request_id} code={} {} {detail}", self.code, self.message);
        } else if !detail.is_empty() {
            log::info!("request_id={request_id} code={} {detail}", self.code);
        }
    }

    pub fn body(&self, request_id: &str) -> serde_json::Value {
        json!({ "error": { "code": self.code.as_str(), "message": self.message, "request_id": request_id } })
    }
}

impl fmt::Display for AppError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for AppError {}

impl<'r> Responder<'r, 'static> for AppError {
    fn respond_to(self, req: &'r Request<'_>) -> response::Result<'static> {
        let request_id = RequestId::of(req);
        self.log(request_id);
        let body = self.body(request_id).to_string();
        let mut response = Response::build();
        response.status(self.status()).header(ContentType::JSON).sized_body(body.len(), std::io::Cursor::new(body));
        if let Some(secs) = self.retry_after_secs {
            response.header(Header::new("Retry-After", secs.to_string()));
        }
        Ok(response.finalize())
    }
}

/// The same error, rendered as a page for the HTML routes.
#[derive(Debug)]
pub struct PageError(pub AppError);

impl From<AppError> for PageError {
    fn from(error: AppError) -> Self {
        PageError(error)
    }
}

impl<'r> Responder<'r, 'static> for PageError {
    fn respond_to(self, req: &'r Request<'_>) -> response::Result<'static> {
        let error = self.0;
        let request_id = RequestId::of(req);
        error.log(request_id);
        let status = error.status();
        // A 5xx page shows the request id only: its message could say more than a visitor should see.
        let asset_version = req.rocket().state::<crate::state::AppState>().map(|s| s.asset_version.clone());
        let message = if status.code >= 500 { "Please try again later.".to_owned() } else { error.message.clone() };
        let page = Template::render(
            "error",
            context! { status: status.code, code: error.code.as_str(), message, request_id, asset_version },
        );
        let mut response = Response::build_from(page.respond_to(req)?);
        response.status(status);
        if let Some(secs) = error.retry_after_secs {
            response.header(Header::new("Retry-After", secs.to_string()));
        }
        Ok(response.finalize())
    }
}
