//! How errors leave the server: an `AppError` as JSON, a `PageError` as an HTML page, and the catcher that
//! gives every error Rocket raises itself the same shape, picking JSON or a page by path.

use rocket::http::{ContentType, Header, Method, Status};
use rocket::request::Request;
use rocket::response::{self, Responder, Response};
use rocket::{catch, catchers, Catcher};
use rocket_dyn_templates::{context, Template};

use crate::error::{AppError, ErrorCode};
use crate::state::AppState;
use crate::telemetry::RequestId;

/// Logs an error answered to `req`, and counts it by code.
fn report<'r>(error: &AppError, req: &'r Request<'_>) -> &'r str {
    let request_id = RequestId::of(req);
    error.log();
    if let Some(state) = req.rocket().state::<AppState>() {
        state.app.metrics.error_answered(error.code.as_str());
    }
    request_id
}

impl<'r> Responder<'r, 'static> for AppError {
    fn respond_to(self, req: &'r Request<'_>) -> response::Result<'static> {
        let request_id = report(&self, req);
        let body = self.body(request_id).to_string();
        let mut response = Response::build();
        response.header(ContentType::JSON).sized_body(body.len(), std::io::Cursor::new(body));
        Ok(with_status_of(response, &self))
    }
}

/// The error's status and `Retry-After` on `response`: every shape an error leaves in carries both.
fn with_status_of<'r>(mut response: response::Builder<'r>, error: &AppError) -> Response<'r> {
    response.status(error.status());
    if let Some(secs) = error.retry_after_secs {
        response.header(Header::new("Retry-After", secs.to_string()));
    }
    response.finalize()
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
        let request_id = report(&error, req);
        let status = error.status();
        // A 5xx page shows the request id only: its message could say more than a visitor should see.
        let asset_version = req.rocket().state::<crate::state::AppState>().map(|s| s.asset_version.clone());
        let message = if status.code >= 500 { "Please try again later.".to_owned() } else { error.message.clone() };
        let page = Template::render(
            "error",
            context! { status: status.code, code: error.code.as_str(), message, request_id, asset_version },
        );
        Ok(with_status_of(Response::build_from(page.respond_to(req)?), &error))
    }
}

/// A form shown again with its error in it (the upload form without JavaScript, the admin login): `page`,
/// with the error's status and `Retry-After`.
pub struct FormRefusal {
    pub error: AppError,
    pub page: Template,
}

impl<'r> Responder<'r, 'static> for FormRefusal {
    fn respond_to(self, req: &'r Request<'_>) -> response::Result<'static> {
        report(&self.error, req);
        Ok(with_status_of(Response::build_from(self.page.respond_to(req)?), &self.error))
    }
}

/// The error a request guard refused a request with, kept in the request's local cache: the catcher answers
/// with its code, message and `Retry-After` rather than the status's generic ones.
pub struct GuardRefusal(pub Option<AppError>);

/// Refuses a request from a guard with `error` (see `GuardRefusal`).
pub fn refuse<S>(req: &Request<'_>, error: AppError) -> rocket::request::Outcome<S, ()> {
    let status = error.status();
    req.local_cache(|| GuardRefusal(Some(error)));
    rocket::request::Outcome::Error((status, ()))
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
            let limit =
                req.rocket().state::<AppState>().map(|s| s.app.config.settings.uploads.max_upload_bytes).unwrap_or(0);
            format!("The request is larger than the upload limit of {}.", crate::domain::human_bytes(limit))
        }
        415 => "Send the image as multipart/form-data with a `file` field.".to_owned(),
        422 => "The request could not be understood.".to_owned(),
        400 => "The request is malformed.".to_owned(),
        code if code >= 500 => "Something went wrong on our side.".to_owned(),
        _ => status.reason().unwrap_or("Request failed").to_owned(),
    }
}

/// Whether a route's path pattern (`/api/v1/images/<id>/file`, `/static/<path..>`) covers `path`.
fn pattern_covers(pattern: &str, path: &str) -> bool {
    let mut segments = path.trim_start_matches('/').split('/');
    for expected in pattern.trim_start_matches('/').split('/') {
        if expected.starts_with('<') && expected.ends_with("..>") {
            return true;
        }
        match segments.next() {
            Some(segment) if expected.starts_with('<') && !segment.is_empty() => {}
            Some(segment) if segment == expected => {}
            _ => return false,
        }
    }
    segments.next().is_none()
}

/// What an `Allow` header lists for `path`: the methods of the routes that cover it, and HEAD wherever GET
/// is (Rocket answers HEAD with GET's route). Empty for a path no route covers.
pub fn allowed_methods<'a>(routes: impl IntoIterator<Item = (Method, &'a str)>, path: &str) -> Vec<Method> {
    let mut methods: Vec<Method> =
        routes.into_iter().filter(|(_, pattern)| pattern_covers(pattern, path)).map(|(method, _)| method).collect();
    if methods.contains(&Method::Get) {
        methods.push(Method::Head);
    }
    methods.sort_by_key(|m| m.as_str());
    methods.dedup();
    methods
}

pub fn allow_header(methods: &[Method]) -> String {
    methods.iter().map(|m| m.as_str()).collect::<Vec<_>>().join(", ")
}

/// A caught error, with `Allow` when the path exists but not for this method.
struct Caught {
    error: Result<AppError, PageError>,
    allow: Option<String>,
}

impl<'r> Responder<'r, 'static> for Caught {
    fn respond_to(self, req: &'r Request<'_>) -> response::Result<'static> {
        let mut response = match self.error {
            Ok(error) => error.respond_to(req)?,
            Err(page) => page.respond_to(req)?,
        };
        if let Some(allow) = self.allow {
            response.set_raw_header("Allow", allow);
        }
        Ok(response)
    }
}

#[catch(default)]
fn default_catcher(status: Status, req: &Request<'_>) -> Caught {
    let path = req.uri().path();
    // No route took the request: when routes exist at this path for other methods, the method is the problem.
    let allowed = match status.code {
        404 => allowed_methods(req.rocket().routes().map(|r| (r.method, r.uri.path())), path.as_str()),
        _ => Vec::new(),
    };
    let (status, allow) = match allowed.is_empty() || allowed.contains(&req.method()) {
        true => (status, None),
        false => (Status::MethodNotAllowed, Some(allow_header(&allowed))),
    };
    let error = AppError::new(ErrorCode::for_status(status), catcher_message(status, req));
    let error = match &req.local_cache(|| GuardRefusal(None)).0 {
        Some(refusal) if refusal.status() == status => refusal.clone(),
        _ => error,
    };
    let error = match status.code {
        500..=599 => error.with_detail(format!("{} {} failed with {status}", req.method(), path)),
        _ => error,
    };
    let error = if is_page_path(path.as_str()) { Err(PageError(error)) } else { Ok(error) };
    Caught { error, allow }
}

#[cfg(test)]
mod tests {
    use super::{allow_header, allowed_methods};
    use rocket::http::Method;

    #[test]
    fn allow_lists_the_methods_of_the_routes_at_a_path() {
        let routes = [
            (Method::Post, "/api/v1/images"),
            (Method::Get, "/api/v1/images"),
            (Method::Get, "/api/v1/images/<id>"),
            (Method::Delete, "/api/v1/images/<id>"),
            (Method::Get, "/api/v1/images/<id>/file"),
            (Method::Get, "/static/<path..>"),
        ];
        let allow = |path| allow_header(&allowed_methods(routes, path));
        assert_eq!(allow("/api/v1/images"), "GET, HEAD, POST");
        assert_eq!(allow("/api/v1/images/0123"), "DELETE, GET, HEAD");
        assert_eq!(allow("/api/v1/images/0123/file"), "GET, HEAD");
        assert_eq!(allow("/static/css/app.css"), "GET, HEAD");
        assert_eq!(allow("/api/v1/images/0123/file/more"), "");
        assert_eq!(allow("/api/v1/nothing"), "");
    }
}
