//! The admin gallery. The admin key is typed into a login form once; the browser then holds a signed,
//! HttpOnly, SameSite=Strict session cookie scoped to `/admin` — the key never appears in a URL.

use rocket::form::Form;
use rocket::http::{Cookie, CookieJar, SameSite, Status};
use rocket::request::{FromRequest, Outcome, Request};
use rocket::response::Redirect;
use rocket::Either;
use rocket::{get, post, routes, uri, FromForm, Route, State};
use rocket_dyn_templates::{context, Template};

use super::csrf::{self, CsrfToken};
use super::page_image;
use crate::domain::{constant_time_eq, ImageId};
use crate::error::{AppError, ErrorCode};
use crate::images::{self, DeleteAuthority};
use crate::responses::PageError;
use crate::state::AppState;

pub fn routes() -> Vec<Route> {
    routes![login_page, login, gallery, gallery_login, delete, logout]
}

const SESSION_COOKIE: &str = "upshot_admin";
const SESSION_HOURS: i64 = 8;
const PAGE_SIZE: i64 = 24;

/// A session value: `<expiry in unix seconds>.<signature>`, signed with the server's secret.
fn session_value(state: &AppState, expires: i64) -> String {
    format!("{expires}.{}", state.tokens.sign(&format!("admin session until {expires}")))
}

fn session_is_valid(state: &AppState, value: &str) -> bool {
    let Some((expires, _)) = value.split_once('.') else { return false };
    let Ok(expiry) = expires.parse::<i64>() else { return false };
    expiry > chrono::Utc::now().timestamp()
        && state.config.settings.admin_api_key.is_some()
        && constant_time_eq(value.as_bytes(), session_value(state, expiry).as_bytes())
}

/// An admin signed in through the login form.
struct AdminSession;

#[rocket::async_trait]
impl<'r> FromRequest<'r> for AdminSession {
    type Error = ();

    async fn from_request(req: &'r Request<'_>) -> Outcome<Self, Self::Error> {
        let Some(state) = req.rocket().state::<AppState>() else { return Outcome::Forward(Status::Unauthorized) };
        match req.cookies().get(SESSION_COOKIE) {
            Some(cookie) if session_is_valid(state, cookie.value()) => Outcome::Success(AdminSession),
            _ => Outcome::Forward(Status::Unauthorized),
        }
    }
}

fn login_template(state: &AppState, csrf: &str, error: Option<&AppError>) -> Template {
    let error = error.map(|e| context! { code: e.code.as_str(), message: &e.message });
    Template::render("admin_login", context! { error, csrf_token: csrf, asset_version: &state.asset_version })
}

#[get("/admin/login")]
fn login_page(state: &State<AppState>, csrf: CsrfToken) -> Result<Template, PageError> {
    if state.config.settings.admin_api_key.is_none() {
        return Err(
            AppError::new(ErrorCode::Forbidden, "Admin pages are disabled: no admin API key is configured.").into()
        );
    }
    Ok(login_template(state, &csrf.0, None))
}

#[derive(FromForm)]
struct LoginForm {
    api_key: String,
    csrf_token: Option<String>,
}

#[post("/admin/login", data = "<form>")]
fn login(
    state: &State<AppState>,
    form: Form<LoginForm>,
    cookies: &CookieJar<'_>,
    csrf: CsrfToken,
) -> Either<Redirect, (Status, Template)> {
    match try_login(state, &form, cookies) {
        Ok(redirect) => Either::Left(redirect),
        Err(error) => Either::Right((error.status(), login_template(state, &csrf.0, Some(&error)))),
    }
}

fn try_login(state: &AppState, form: &LoginForm, cookies: &CookieJar<'_>) -> Result<Redirect, AppError> {
    csrf::verify(cookies, form.csrf_token.as_deref())?;
    let Some(expected) = state.config.settings.admin_api_key.as_deref() else {
        return Err(AppError::new(ErrorCode::Forbidden, "Admin pages are disabled."));
    };
    if !constant_time_eq(form.api_key.trim().as_bytes(), expected.as_bytes()) {
        return Err(AppError::new(ErrorCode::Unauthorized, "That is not the admin key."));
    }
    let expires = chrono::Utc::now().timestamp() + SESSION_HOURS * 3600;
    let secure = state.config.settings.public_url.starts_with("https://");
    cookies.add(
        Cookie::build((SESSION_COOKIE, session_value(state, expires)))
            .path("/admin")
            .http_only(true)
            .secure(secure)
            .same_site(SameSite::Strict)
            .max_age(rocket::time::Duration::hours(SESSION_HOURS)),
    );
    Ok(Redirect::to(uri!(gallery(cursor = Option::<&str>::None, label = Option::<&str>::None))))
}

#[get("/admin/images?<cursor>&<label>", rank = 1)]
async fn gallery(
    state: &State<AppState>,
    _session: AdminSession,
    csrf: CsrfToken,
    cursor: Option<&str>,
    label: Option<&str>,
) -> Result<Template, PageError> {
    let before = cursor.filter(|c| !c.is_empty()).map(images::decode_cursor).transpose()?;
    let label = label.map(str::trim).filter(|l| !l.is_empty()).map(str::to_owned);
    let filter = label.clone();
    let records = state
        .db
        .run(move |conn| crate::db::images::list_page(conn, before, filter, PAGE_SIZE))
        .await
        .map_err(AppError::from)?;
    let next_cursor = (records.len() as i64 == PAGE_SIZE).then(|| records.last().map(images::encode_cursor)).flatten();
    let items: Vec<_> = records.iter().map(page_image).collect();
    Ok(Template::render(
        "admin_gallery",
        context! { items, next_cursor, label, csrf_token: csrf.0, asset_version: &state.asset_version },
    ))
}

/// Without a session, the gallery sends people to the login form.
#[get("/admin/images", rank = 2)]
fn gallery_login() -> Redirect {
    Redirect::to("/admin/login")
}

#[derive(FromForm)]
struct CsrfForm {
    csrf_token: Option<String>,
}

#[post("/admin/images/<id>/delete", data = "<form>")]
async fn delete(
    state: &State<AppState>,
    _session: AdminSession,
    id: &str,
    form: Form<CsrfForm>,
    cookies: &CookieJar<'_>,
) -> Result<Redirect, PageError> {
    csrf::verify(cookies, form.csrf_token.as_deref())?;
    let id = ImageId::parse(id).ok_or_else(AppError::not_found)?;
    images::delete(state, &id, DeleteAuthority::Admin).await?;
    Ok(Redirect::to("/admin/images"))
}

#[post("/admin/logout", data = "<form>")]
fn logout(form: Form<CsrfForm>, cookies: &CookieJar<'_>) -> Result<Redirect, PageError> {
    csrf::verify(cookies, form.csrf_token.as_deref())?;
    cookies.remove(Cookie::build(SESSION_COOKIE).path("/admin"));
    Ok(Redirect::to("/admin/login"))
}
