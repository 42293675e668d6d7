//! One error type for the whole service: a stable code, the HTTP status that goes with it, a message for the
//! user and, separately, detail for the log that the user never sees.

use std::fmt;

use rocket::http::Status;

/// Stable error codes: clients match on these, so a code is never renamed or reused. Each is written as its
/// variant's name in SCREAMING_SNAKE_CASE (`CsrfTokenInvalid` is `CSRF_TOKEN_INVALID`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, strum::EnumIter, strum::IntoStaticStr, strum::EnumString, strum::Display,
)]
#[strum(serialize_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    BadRequest,
    ClientClosedRequest,
    MissingFile,
    InvalidIdempotencyKey,
    Unauthorized,
    Forbidden,
    NotFound,
    ImageMissing,
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
    TooManyRequests,
    UploadIncomplete,
    UploadInProgress,
    UploadExpired,
    UploadUrlInvalid,
    NotReady,
    StoreUnavailable,
    DatabaseUnavailable,
    Internal,
}

impl ErrorCode {
    /// Every code, for the README's list and its test.
    pub fn all() -> impl Iterator<Item = ErrorCode> {
        <ErrorCode as strum::IntoEnumIterator>::iter()
    }

    pub fn as_str(self) -> &'static str {
        self.into()
    }

    /// The code named `name`, as recorded (an upload session keeps the code it failed with).
    pub fn from_name(name: &str) -> Option<Self> {
        name.parse().ok()
    }

    pub fn status(self) -> Status {
        match self {
            ErrorCode::BadRequest | ErrorCode::MissingFile | ErrorCode::InvalidIdempotencyKey => Status::BadRequest,
            // nginx's code for a client that hung up before its request was read: not an error of the request
            // (no 413 or 400 in the metrics), and no one receives the answer.
            ErrorCode::ClientClosedRequest => Status::new(499),
            ErrorCode::Unauthorized => Status::Unauthorized,
            ErrorCode::Forbidden | ErrorCode::CsrfTokenInvalid | ErrorCode::UploadUrlInvalid => Status::Forbidden,
            ErrorCode::NotFound => Status::NotFound,
            ErrorCode::ImageMissing | ErrorCode::UploadExpired => Status::Gone,
            ErrorCode::MethodNotAllowed => Status::MethodNotAllowed,
            ErrorCode::IdempotencyConflict
            | ErrorCode::NotifierNotConfigured
            | ErrorCode::UploadIncomplete
            | ErrorCode::UploadInProgress => Status::Conflict,
            ErrorCode::PayloadTooLarge => Status::PayloadTooLarge,
            ErrorCode::UnsupportedMediaType => Status::UnsupportedMediaType,
            ErrorCode::TooManyRequests => Status::TooManyRequests,
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
            410 => ErrorCode::ImageMissing,
            409 => ErrorCode::IdempotencyConflict,
            413 => ErrorCode::PayloadTooLarge,
            415 => ErrorCode::UnsupportedMediaType,
            422 => ErrorCode::InvalidRequest,
            429 => ErrorCode::TooManyRequests,
            503 => ErrorCode::NotReady,
            400..=499 => ErrorCode::BadRequest,
            _ => ErrorCode::Internal,
        }
    }
}

/// What every error answers, in JSON.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
#[schema(as = Error)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable code, e.g. UNSUPPORTED_MEDIA_TYPE
    #[schema(value_type = String)]
    pub code: &'static str,
    pub message: String,
    pub request_id: String,
}

#[derive(Debug, Clone)]
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

    /// An image whose original was found gone from the store (`upshot reconcile --repair`): its row is kept.
    pub fn image_missing() -> Self {
        AppError::new(ErrorCode::ImageMissing, "This image's file has been lost from storage; its record is kept.")
    }

    pub fn internal(detail: impl fmt::Display) -> Self {
        AppError::new(ErrorCode::Internal, "Something went wrong on our side.").with_detail(detail)
    }

    pub fn status(&self) -> Status {
        self.code.status()
    }

    /// One log line for an error answered to a request (written inside its span, which tags it with the
    /// request's ids); 4xx errors only when they carry detail.
    pub fn log(&self) {
        let detail = self.detail.as_deref().unwrap_or("");
        if self.status().code >= 500 {
            log::error!("code={} {} {detail}", self.code, self.message);
        } else if !detail.is_empty() {
            log::info!("code={} {detail}", self.code);
        }
    }

    pub fn body(&self, request_id: &str) -> serde_json::Value {
        let detail =
            ErrorDetail { code: self.code.as_str(), message: self.message.clone(), request_id: request_id.to_owned() };
        serde_json::to_value(ErrorBody { error: detail }).unwrap_or_default()
    }
}

impl fmt::Display for AppError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for AppError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_is_read_back_by_its_name() {
        assert_eq!(ErrorCode::CsrfTokenInvalid.as_str(), "CSRF_TOKEN_INVALID");
        assert_eq!(ErrorCode::all().count(), 30);
        for code in ErrorCode::all() {
            assert_eq!(ErrorCode::from_name(code.as_str()), Some(code));
            assert_eq!(code.to_string(), code.as_str());
        }
        assert_eq!(ErrorCode::from_name("csrf_token_invalid"), None);
    }
}
