//! CSRF protection for the forms: a random token in an HttpOnly, SameSite=Strict cookie, repeated in each
//! form as a hidden field (`Secure` when the public URL is https); a POST whose field does not match its
//! cookie is refused.

use rocket::http::{Cookie, CookieJar, SameSite};
use rocket::request::{FromRequest, Outcome, Request};

use crate::domain::{constant_time_eq, random_token};
use crate::error::{AppError, ErrorCode};
use crate::state::AppState;

const COOKIE: &str = "upshot_csrf";

/// The token for forms on this page, issuing the cookie on first visit.
pub struct CsrfToken(pub String);

#[rocket::async_trait]
impl<'r> FromRequest<'r> for CsrfToken {
    type Error = std::convert::Infallible;

    async fn from_request(req: &'r Request<'_>) -> Outcome<Self, Self::Error> {
        let cookies = req.cookies();
        let token = match cookies.get(COOKIE) {
            Some(cookie) if cookie.value().len() >= 32 => cookie.value().to_owned(),
            _ => {
                let token = random_token(32);
                let secure = req.rocket().state::<AppState>().is_some_and(super::cookies_secure);
                cookies.add(
                    Cookie::build((COOKIE, token.clone()))
                        .path("/")
                        .http_only(true)
                        .secure(secure)
                        .same_site(SameSite::Strict),
                );
                token
            }
        };
        Outcome::Success(CsrfToken(token))
    }
}

/// Checks a submitted form token against the browser's cookie.
pub fn verify(cookies: &CookieJar<'_>, submitted: Option<&str>) -> Result<(), AppError> {
    let expected = cookies.get(COOKIE).map(|c| c.value().to_owned());
    match (expected, submitted) {
        (Some(expected), Some(submitted)) if constant_time_eq(expected.as_bytes(), submitted.as_bytes()) => Ok(()),
        _ => Err(AppError::new(
            ErrorCode::CsrfTokenInvalid,
            "This form has expired or did not come from this site. Reload the page and try again.",
        )),
    }
}
