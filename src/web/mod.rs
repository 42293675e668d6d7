//! The server-rendered pages. They work without JavaScript (which only makes them nicer); the same error
//! codes as the API appear on them; every form carries a CSRF token.

mod admin;
pub use admin::LoginThrottle;
pub mod csrf;
pub mod security;

use rocket::form::Form;
use rocket::http::{Cookie, CookieJar, SameSite};
use rocket::response::Redirect;
use rocket::{get, post, routes, FromForm, Route, State};
use rocket_dyn_templates::{context, Template};
use serde_json::Value;

use crate::api::guards::{IntakeAllowance, SpoolReservation};
use crate::api::upload::{self, UploadData};
use crate::app::images::{DeleteAuthority, ImageView};
use crate::db::image_rows::ImageRecord;
use crate::domain::human_bytes;
use crate::domain::ImageId;
use crate::error::AppError;
use crate::responses::{FormRefusal, PageError};
use crate::state::AppState;
use csrf::CsrfToken;

pub fn routes() -> Vec<Route> {
    let mut routes = routes![index, upload_form, image_page, delete_form];
    routes.extend(admin::routes());
    routes
}

/// Carries a fresh upload's delete token to its result page, once, in the uploader's own browser.
const DELETE_TOKEN_COOKIE: &str = "upshot_delete_token";

/// An image as the templates show it: the API's view plus human-friendly extras.
pub fn page_image(record: &ImageRecord) -> Value {
    let mut image = serde_json::to_value(ImageView::from(record)).expect("views serialize");
    image["byte_size_human"] = human_bytes(record.byte_size.max(0) as u64).into();
    image["created_at"] = record.created_at.and_utc().format("%Y-%m-%dT%H:%M:%SZ").to_string().into();
    // The page paints the placeholder (allowed by the policy's `img-src data:`) until the image has loaded.
    if let Some(png) = record.thumbhash.as_deref().and_then(crate::imaging::thumbhash_png) {
        use base64::Engine;
        let encoded = base64::engine::general_purpose::STANDARD.encode(png);
        image["placeholder"] = format!("data:image/png;base64,{encoded}").into();
    }
    image
}

/// Cookies are `Secure` when people reach Upshot over https, so a browser never sends them in the clear.
pub(crate) fn cookies_secure(state: &AppState) -> bool {
    state.app.config.public_url().starts_with("https://")
}

/// The file input's `accept`: the formats' types and file extensions, since a phone or desktop file picker
/// may know a HEIC photo only by its extension (and iOS hands a picker that does not ask for HEIC a JPEG).
fn accept_attribute(formats: &[crate::domain::format::ImageFormat]) -> String {
    let mut accept: Vec<String> = Vec::new();
    for format in formats {
        accept.push(format.content_type().to_owned());
        accept.extend(format.file_extensions().iter().map(|extension| format!(".{extension}")));
    }
    accept.join(",")
}

fn index_page(state: &AppState, csrf: &CsrfToken, notice: Option<&str>, error: Option<&AppError>) -> Template {
    let settings = &state.app.config.settings;
    let (uploads, direct) = (&settings.uploads, &settings.direct_uploads);
    let formats = &settings.images.accepted_formats;
    let error = error.map(|e| context! { code: e.code.as_str(), message: &e.message });
    Template::render(
        "index",
        context! {
            max_upload_human: human_bytes(uploads.max_upload_bytes),
            max_upload_bytes: uploads.max_upload_bytes,
            direct_max_human: human_bytes(direct.direct_upload_max_bytes),
            direct_max_bytes: direct.direct_upload_max_bytes,
            direct_always: direct.direct_uploads_always,
            accepted_formats: formats.iter().map(|f| f.label()).collect::<Vec<_>>(),
            accept_attr: accept_attribute(formats),
            max_description_chars: uploads.max_description_chars,
            notice,
            error,
            csrf_token: &csrf.0,
            asset_version: &state.asset_version,
        },
    )
}

#[get("/?<deleted>")]
fn index(state: &State<AppState>, csrf: CsrfToken, deleted: Option<bool>) -> Template {
    let notice = deleted.unwrap_or(false).then_some("The image was deleted.");
    index_page(state, &csrf, notice, None)
}

/// The no-JavaScript upload: success lands on the result page; failure shows the form again with the error.
#[post("/upload", data = "<data>")]
async fn upload_form(
    _intake: IntakeAllowance,
    _spool: SpoolReservation,
    state: &State<AppState>,
    data: UploadData<'_>,
    cookies: &CookieJar<'_>,
    csrf: CsrfToken,
) -> Result<Redirect, FormRefusal> {
    let check_form_token = |token: Option<&str>| csrf::verify(cookies, token);
    match upload::handle(state, data, None, Some(&check_form_token)).await {
        Ok(uploaded) => {
            let id = uploaded.id();
            let cookie = Cookie::build((DELETE_TOKEN_COOKIE, state.app.signer.delete_token(&id)))
                .path(format!("/images/{id}"))
                .http_only(true)
                .secure(cookies_secure(state))
                .same_site(SameSite::Strict)
                .max_age(rocket::time::Duration::minutes(10));
            cookies.add(cookie);
            Ok(Redirect::to(format!("/images/{id}")))
        }
        Err(error) => {
            let page = index_page(state, &csrf, None, Some(&error));
            Err(FormRefusal { error, page })
        }
    }
}

#[get("/images/<id>")]
async fn image_page(
    state: &State<AppState>,
    id: &str,
    cookies: &CookieJar<'_>,
    csrf: CsrfToken,
) -> Result<Template, PageError> {
    let id = ImageId::parse(id).ok_or_else(AppError::not_found)?;
    let record = state.app.image(&id).await?;
    let delete_token = cookies.get(DELETE_TOKEN_COOKIE).map(|c| c.value().to_owned());
    if delete_token.is_some() {
        cookies.remove(Cookie::build(DELETE_TOKEN_COOKIE).path(format!("/images/{id}")));
    }
    let just_uploaded = delete_token.is_some();
    let page_url = format!("{}/images/{id}", state.app.config.public_url());
    Ok(Template::render(
        "image",
        context! {
            image: page_image(&record),
            delete_token,
            just_uploaded,
            page_url,
            csrf_token: csrf.0,
            asset_version: &state.asset_version,
        },
    ))
}

#[derive(FromForm)]
struct DeleteForm {
    delete_token: String,
    csrf_token: Option<String>,
}

#[post("/images/<id>/delete", data = "<form>")]
async fn delete_form(
    state: &State<AppState>,
    id: &str,
    form: Form<DeleteForm>,
    cookies: &CookieJar<'_>,
) -> Result<Redirect, PageError> {
    csrf::verify(cookies, form.csrf_token.as_deref())?;
    let id = ImageId::parse(id).ok_or_else(AppError::not_found)?;
    state.app.delete_image(&id, DeleteAuthority::Token(&form.delete_token)).await?;
    Ok(Redirect::to("/?deleted=true"))
}
