//! The admin gallery. The admin key is typed into a login form once (a few attempts per address, then 429);
//! the browser then holds a signed, HttpOnly, SameSite=Strict session cookie scoped to `/admin`, bound to the
//! admin key (a new key ends every session), `Secure` when the public URL is https. The key never appears in
//! a URL.

use rocket::form::Form;
use rocket::http::{Cookie, CookieJar, SameSite, Status};
use rocket::request::{FromRequest, Outcome, Request};
use rocket::response::Redirect;
use rocket::{get, post, routes, uri, FromForm, Route, State};
use rocket_dyn_templates::{context, Template};

use super::csrf::{self, CsrfToken};
use super::page_image;
use crate::api::guards::ClientAddress;
use crate::app::images::{self, DeleteAuthority};
use crate::db::image_rows;
use crate::domain::{constant_time_eq, ImageId};
use crate::error::{AppError, ErrorCode};
use crate::responses::{FormRefusal, PageError};
use crate::state::AppState;

pub fn routes() -> Vec<Route> {
    routes![login_page, login, gallery, gallery_login, delete, logout]
}

const SESSION_COOKIE: &str = "upshot_admin";
const SESSION_HOURS: i64 = 8;
const PAGE_SIZE: i64 = 24;
/// Lost images listed above the gallery; past this they are only counted.
const LOST_LISTED: i64 = 50;

/// A session value: `<expiry in unix seconds>.<signature>`, signed with the server's secret over the expiry
/// and a fingerprint of the admin key, so that changing the key ends every session.
fn session_value(state: &AppState, admin_key: &str, expires: i64) -> String {
    let key_fingerprint = &crate::domain::sha256_hex(admin_key.as_bytes())[..16];
    format!("{expires}.{}", state.app.signer.sign(&format!("admin session until {expires} for key {key_fingerprint}")))
}

fn session_is_valid(state: &AppState, value: &str) -> bool {
    let Some(admin_key) = state.app.config.settings.keys.admin_api_key.as_deref() else { return false };
    let Some((expires, _)) = value.split_once('.') else { return false };
    let Ok(expiry) = expires.parse::<i64>() else { return false };
    expiry > chrono::Utc::now().timestamp()
        && constant_time_eq(value.as_bytes(), session_value(state, admin_key, expiry).as_bytes())
}

/// Login attempts per client address: a burst of `LOGIN_BURST`, then one every `LOGIN_REFILL`, so guessing
/// the admin key from one address takes forever and a person who mistypes it waits a few seconds.
pub struct LoginThrottle(governor::DefaultKeyedRateLimiter<std::net::IpAddr>);

const LOGIN_BURST: u32 = 10;
const LOGIN_REFILL: std::time::Duration = std::time::Duration::from_secs(12);
/// Addresses remembered before those whose allowance is full again are forgotten.
const LOGIN_ADDRESSES_KEPT: usize = 10_000;

impl Default for LoginThrottle {
    fn default() -> Self {
        let burst = std::num::NonZeroU32::new(LOGIN_BURST).expect("a positive burst");
        let quota = governor::Quota::with_period(LOGIN_REFILL).expect("a positive period").allow_burst(burst);
        LoginThrottle(governor::RateLimiter::keyed(quota))
    }
}

impl LoginThrottle {
    /// Takes one attempt from `client`'s allowance; when it is used up, how many seconds until the next.
    fn attempt(&self, client: std::net::IpAddr) -> Result<(), u32> {
        if self.0.len() > LOGIN_ADDRESSES_KEPT {
            self.0.retain_recent();
        }
        self.0.check_key(&client).map_err(|not_until| {
            let wait = not_until.wait_time_from(governor::clock::Clock::now(&governor::clock::DefaultClock::default()));
            wait.as_secs_f64().ceil().max(1.0) as u32
        })
    }
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
    if state.app.config.settings.keys.admin_api_key.is_none() {
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
    throttle: &State<LoginThrottle>,
    client: ClientAddress,
    form: Form<LoginForm>,
    cookies: &CookieJar<'_>,
    csrf: CsrfToken,
) -> Result<Redirect, Box<FormRefusal>> {
    let attempt = throttle.attempt(client.0).map_err(|retry_after| {
        AppError::new(ErrorCode::TooManyRequests, "Too many sign-in attempts; wait a little and try again.")
            .with_detail(format!("admin login throttled for {}", client.0))
            .retry_after(retry_after)
    });
    attempt
        .and_then(|()| try_login(state, &form, cookies))
        .map_err(|error| Box::new(FormRefusal { page: login_template(state, &csrf.0, Some(&error)), error }))
}

fn try_login(state: &AppState, form: &LoginForm, cookies: &CookieJar<'_>) -> Result<Redirect, AppError> {
    csrf::verify(cookies, form.csrf_token.as_deref())?;
    let Some(expected) = state.app.config.settings.keys.admin_api_key.as_deref() else {
        return Err(AppError::new(ErrorCode::Forbidden, "Admin pages are disabled."));
    };
    if !constant_time_eq(form.api_key.trim().as_bytes(), expected.as_bytes()) {
        return Err(AppError::new(ErrorCode::Unauthorized, "That is not the admin key."));
    }
    let expires = chrono::Utc::now().timestamp() + SESSION_HOURS * 3600;
    cookies.add(
        Cookie::build((SESSION_COOKIE, session_value(state, expected, expires)))
            .path("/admin")
            .http_only(true)
            .secure(super::cookies_secure(state))
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
    // Lost images head the first page, so whoever looks at the gallery sees them until they are deleted.
    let first_page = before.is_none() && label.is_none();
    let (records, lost, lost_count) = state
        .app
        .db
        .run(move |conn| {
            let records = image_rows::list_page(conn, before, filter, PAGE_SIZE)?;
            if !first_page {
                return Ok((records, Vec::new(), 0));
            }
            Ok((records, image_rows::missing_page(conn, LOST_LISTED)?, image_rows::missing_count(conn)?))
        })
        .await
        .map_err(AppError::from)?;
    let lost: Vec<_> = lost.iter().map(page_image).collect();
    let next_cursor = (records.len() as i64 == PAGE_SIZE).then(|| records.last().map(images::encode_cursor)).flatten();
    let items: Vec<_> = records.iter().map(page_image).collect();
    Ok(Template::render(
        "admin_gallery",
        context! {
            items, next_cursor, label, lost, lost_count, csrf_token: csrf.0, asset_version: &state.asset_version,
        },
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
    state.app.delete_image(&id, DeleteAuthority::Admin).await?;
    Ok(Redirect::to("/admin/images"))
}

#[post("/admin/logout", data = "<form>")]
fn logout(form: Form<CsrfForm>, cookies: &CookieJar<'_>) -> Result<Redirect, PageError> {
    csrf::verify(cookies, form.csrf_token.as_deref())?;
    cookies.remove(Cookie::build(SESSION_COOKIE).path("/admin"));
    Ok(Redirect::to("/admin/login"))
}
