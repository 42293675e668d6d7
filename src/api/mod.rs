//! The JSON API (`/api/v1`), the compatibility routes, operations endpoints, and the catchers that give
//! every error the same shape.

mod classify;
mod compat;
pub mod guards;
mod images;
pub mod openapi;
mod ops;
mod subscriptions;
pub mod upload;

use rocket::http::Status;
use rocket::{catch, catchers, Catcher, Request, Route};

use crate::error::{AppError, ErrorCode, PageError};
use crate::state::AppState;

pub fn v1_routes() -> Vec<Route> {
    let mut routes = images::routes();
    routes.extend(classify::routes());
    routes.extend(subscriptions::routes());
    routes.extend(openapi::routes());
    routes
}

pub fn root_routes() -> Vec<Route> {
    let mut routes = compat::routes();
    routes.extend(ops::routes());
    routes
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
