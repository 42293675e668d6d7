//! How errors leave the server: an `AppError` as JSON, a `PageError` as an HTML page, and the catcher that
//! gives every error Rocket raises itself the same shape, picking JSON or a page by path.

use rocket::http::{ContentType, Header, Status};
use rocket::request::Request;
use rocket::response::{self, Responder, Response};
use rocket::{catch, catchers, Catcher};
use rocket_dyn_templates::{context, Template};

use crate::error::{AppError, ErrorCode};
use crate::state::AppState;
use crate::telemetry::RequestId;

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

pub fn catchers() -> Vec<Catcher> {
    catchers![default_catcher]
}

/// Paths served as HTML pages; every other path answers in JSON.
pub fn is_page_path(path: &str) -> bool {
    path == "/" || path == "/upload" || path.starts_with("/images/") || path.starts_with("/admin")
}

fn catcher_message(status: Status, req: &Request<'_>) -> String {
    match status.code {
        404 => "There is nothing at this address.".to_owned(),
        405 => "This method is not allowed here.".to_owned(),
        413 => {
            let limit = req.rocket().state::<AppState>().map(|s| s.config.settings.max_upload_bytes).unwrap_or(0);
            format!("The request is larger than the upload limit of {}.", crate::config::human_bytes(limit))
        }
        415 => "Send the image as multipart/form-data with a `file` field.".to_owned(),
        422 => "The request could not be understood.".to_owned(),
        400 => "The request is malformed.".to_owned(),
        code if code >= 500 => "Something went wrong on our side.".to_owned(),
        _ => status.reason().unwrap_or("Request failed").to_owned(),
    }
}

#[catch(default)]
fn default_catcher(status: Status, req: &Request<'_>) -> Result<AppError, PageError> {
    let error = AppError::new(ErrorCode::for_status(status), catcher_message(status, req));
    let error = match status.code {
        500..=599 => error.with_detail(format!("{} {} failed with {status}", req.method(), req.uri().path())),
        _ => error,
    };
    if is_page_path(req.uri().path().as_str()) {
        Err(PageError(error))
    } else {
        Ok(error)
    }
}
