//! Headers that make the pages safe by default.

use rocket::fairing::{Fairing, Info, Kind};
use rocket::http::Header;
use rocket::{Request, Response};

use crate::state::AppState;

/// No inline script or style anywhere: every script and stylesheet comes from `/static`. The page's script
/// talks to this server, and to the bucket's origin for direct uploads when the store signs them.
fn content_security_policy(direct_upload_origin: Option<&str>) -> String {
    let connect = match direct_upload_origin {
        Some(origin) => format!("'self' {origin}"),
        None => "'self'".to_owned(),
    };
    format!(
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; \
         connect-src {connect}; frame-ancestors 'none'; base-uri 'none'; form-action 'self'; object-src 'none'"
    )
}

/// The page policy is made once, at the first response, when the store's upload origin is known.
#[derive(Default)]
pub struct SecurityHeaders {
    page_policy: std::sync::OnceLock<String>,
}

#[rocket::async_trait]
impl Fairing for SecurityHeaders {
    fn info(&self) -> Info {
        Info { name: "security headers", kind: Kind::Response }
    }

    async fn on_response<'r>(&self, req: &'r Request<'_>, res: &mut Response<'r>) {
        // Image bytes carry their own, stricter policy (a sandbox); everything else gets the page policy.
        if res.headers().get_one("Content-Security-Policy").is_none() {
            let policy = self.page_policy.get_or_init(|| {
                let state = req.rocket().state::<AppState>();
                content_security_policy(state.and_then(|state| state.direct_upload_origin.as_deref()))
            });
            res.set_header(Header::new("Content-Security-Policy", policy.clone()));
        }
        // Reached over https, browsers are told to use nothing else for a year.
        if req.rocket().state::<AppState>().is_some_and(crate::web::cookies_secure) {
            res.set_header(Header::new("Strict-Transport-Security", "max-age=31536000"));
        }
        res.set_header(Header::new("X-Frame-Options", "DENY"));
        res.set_header(Header::new("Referrer-Policy", "same-origin"));
        if req.uri().path().starts_with("/static/") && res.status().code == 200 {
            // Pages link assets as `?v=<fingerprint>`: a changed file gets a new URL, so caching can be long.
            let versioned = req.uri().query().is_some_and(|q| q.as_str().starts_with("v="));
            let policy = if versioned { "public, max-age=31536000, immutable" } else { "public, max-age=300" };
            res.set_header(Header::new("Cache-Control", policy));
        }
    }
}
