//! The server-rendered pages without JavaScript: forms, CSRF, escaping, the admin session, the headers.

use reqwest::multipart::{Form, Part};

use crate::helpers::{fixture, spawn, spawn_with, Stack, TestApp, ADMIN_KEY};

crate::on_both_stacks!(
    form_upload_lands_on_an_escaped_result_page,
    page_errors_carry_the_api_codes,
    admin_gallery_needs_a_session_from_the_login_form,
);

/// A browser-like client: it keeps cookies, so it holds the CSRF cookie a page hands out.
pub(crate) fn browser() -> reqwest::Client {
    reqwest::Client::builder().cookie_store(true).redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

/// The CSRF token of a page's forms (the hidden field's value).
pub(crate) async fn csrf_token(client: &reqwest::Client, app: &TestApp, path: &str) -> String {
    let html = client.get(app.url(path)).send().await.unwrap().text().await.unwrap();
    let marker = r#"name="csrf_token" value=""#;
    let start = html.find(marker).unwrap_or_else(|| panic!("no CSRF field on {path}: {html}")) + marker.len();
    html[start..].split('"').next().unwrap().to_owned()
}

async fn form_upload_lands_on_an_escaped_result_page(stack: Stack) {
    let app = spawn(stack).await;
    let client = browser();
    let index = client.get(app.url("/")).send().await.unwrap();
    let csp = index.headers()["content-security-policy"].to_str().unwrap().to_owned();
    assert!(csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"), "{csp}");
    assert_eq!(index.headers()["x-frame-options"], "DENY");
    assert_eq!(index.headers()["referrer-policy"], "same-origin");
    let index = index.text().await.unwrap();
    assert!(index.contains(r#"action="/upload""#) && index.contains(r#"name="file""#), "{index}");
    assert!(index.contains("20 MiB"), "the limit comes from the configuration");
    let token = csrf_token(&client, &app, "/").await;

    // Without the token, the form is refused and nothing is stored.
    let forged = Form::new().part("file", Part::bytes(fixture("cat.jpg")).file_name("cat.jpg"));
    let refused = client.post(app.url("/upload")).multipart(forged).send().await.unwrap();
    assert_eq!(refused.status(), 403);
    assert!(refused.text().await.unwrap().contains("CSRF_TOKEN_INVALID"));
    assert_eq!(app.image_rows().await, 0);

    let form = Form::new()
        .part("file", Part::bytes(fixture("cat.jpg")).file_name("<script>alert(1)</script>.jpg"))
        .text("description", "<script>alert('x')</script> & friends")
        .text("csrf_token", token.clone());
    let response = client.post(app.url("/upload")).multipart(form).send().await.unwrap();
    assert_eq!(response.status(), 303);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    assert!(location.starts_with("/images/"), "{location}");
    let cookies: Vec<String> =
        response.headers().get_all("set-cookie").iter().map(|v| v.to_str().unwrap().to_owned()).collect();
    let delete_cookie = cookies.iter().find(|c| c.starts_with("upshot_delete_token=")).expect("delete-token cookie");
    assert!(delete_cookie.contains("HttpOnly") && delete_cookie.contains("SameSite=Strict"), "{delete_cookie}");
    let delete_token = delete_cookie.split(';').next().unwrap().split_once('=').unwrap().1.to_owned();

    let page = client.get(app.url(&location)).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(!html.contains("<script>alert"), "user text must be escaped");
    assert!(html.contains("&lt;script&gt;alert"), "{html}");
    assert!(html.contains(&delete_token), "the uploader sees the delete token once");
    assert!(html.contains("Egyptian cat"), "the predictions are on the page");

    let again = client.get(app.url(&location)).send().await.unwrap().text().await.unwrap();
    assert!(!again.contains(&delete_token), "shown once only");
    let stranger = app.get(&location).await.text().await.unwrap();
    assert!(!stranger.contains(&delete_token), "never to another browser");

    let id = location.trim_start_matches("/images/");
    let delete = client
        .post(app.url(&format!("/images/{id}/delete")))
        .form(&[("delete_token", delete_token.as_str()), ("csrf_token", token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(delete.status(), 303);
    assert_eq!(app.image_rows().await, 0);
    assert_eq!(app.get(&location).await.status(), 404);
}

async fn page_errors_carry_the_api_codes(stack: Stack) {
    let app = spawn(stack).await;
    let client = browser();
    let token = csrf_token(&client, &app, "/").await;
    let form = Form::new()
        .part("file", Part::bytes(fixture("not-an-image.jpg")).file_name("notes.jpg"))
        .text("csrf_token", token);
    let response = client.post(app.url("/upload")).multipart(form).send().await.unwrap();
    assert_eq!(response.status(), 415);
    assert!(response.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
    let html = response.text().await.unwrap();
    assert!(html.contains("UNSUPPORTED_MEDIA_TYPE") && html.contains(r#"action="/upload""#), "{html}");

    let missing = app.get("/images/0123456789abcdef0123456789abcdef").await;
    assert_eq!(missing.status(), 404);
    let request_id = missing.headers()["x-request-id"].to_str().unwrap().to_owned();
    let html = missing.text().await.unwrap();
    assert!(html.contains("NOT_FOUND") && html.contains(&request_id), "{html}");
    assert_eq!(app.image_rows().await, 0);

    let css = app.get("/static/app.css?v=1").await;
    assert_eq!(css.headers()["cache-control"], "public, max-age=31536000, immutable");
}

async fn admin_gallery_needs_a_session_from_the_login_form(stack: Stack) {
    let app = spawn(stack).await;
    let uploaded = app.upload_ok("coffee.png").await;
    app.upload_ok("cat.jpg").await;
    let client = browser();
    let anonymous = client.get(app.url("/admin/images")).send().await.unwrap();
    assert_eq!(anonymous.status(), 303);
    assert_eq!(anonymous.headers()["location"], "/admin/login");

    let token = csrf_token(&client, &app, "/admin/login").await;
    let wrong = client
        .post(app.url("/admin/login"))
        .form(&[("api_key", "not-the-key-not-the-key"), ("csrf_token", token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let login = client
        .post(app.url("/admin/login"))
        .form(&[("api_key", ADMIN_KEY), ("csrf_token", token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 303);
    let session = login.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(session.contains("HttpOnly") && session.contains("SameSite=Strict") && session.contains("Path=/admin"));
    assert!(!session.contains(ADMIN_KEY), "the key itself never goes into a cookie");

    let gallery = client.get(app.url("/admin/images")).send().await.unwrap().text().await.unwrap();
    let id = uploaded["id"].as_str().unwrap();
    assert!(gallery.contains(id), "{gallery}");
    let filtered = client.get(app.url("/admin/images?label=espresso")).send().await.unwrap().text().await.unwrap();
    assert!(filtered.contains(id));
    let none = client.get(app.url("/admin/images?label=tabby")).send().await.unwrap().text().await.unwrap();
    assert!(!none.contains(id));

    let delete = client
        .post(app.url(&format!("/admin/images/{id}/delete")))
        .form(&[("csrf_token", token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(delete.status(), 303);
    assert_eq!(app.image_rows().await, 1);

    let logout = client.post(app.url("/admin/logout")).form(&[("csrf_token", token.as_str())]).send().await.unwrap();
    assert_eq!(logout.status(), 303);
    assert_eq!(client.get(app.url("/admin/images")).send().await.unwrap().status(), 303);
}

/// Signs in with `key` through the login form; the response.
pub(crate) async fn sign_in(client: &reqwest::Client, app: &TestApp, key: &str) -> reqwest::Response {
    let token = csrf_token(client, app, "/admin/login").await;
    client.post(app.url("/admin/login")).form(&[("api_key", key), ("csrf_token", token.as_str())]).send().await.unwrap()
}

#[tokio::test]
async fn an_admin_session_ends_when_the_admin_key_changes() {
    let app = spawn(Stack::Embedded).await;
    let login = sign_in(&browser(), &app, ADMIN_KEY).await;
    assert_eq!(login.status(), 303);
    let session = login.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_owned();
    // The gallery's status for a request carrying `cookie`: 200, or 303 to the login form.
    let gallery_with = |app: &TestApp, cookie: &str| {
        let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
        let request = client.get(app.url("/admin/images")).header("Cookie", cookie.to_owned());
        async move { request.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(gallery_with(&app, &session).await, 200);
    // The same server secret with a new admin key: the old session no longer opens the gallery.
    let rekeyed = spawn_with(Stack::Embedded, |f| f.merge(("admin_api_key", "a-new-admin-key-after-rotation"))).await;
    assert_eq!(gallery_with(&rekeyed, &session).await, 303);
    let tampered = session.replacen('=', "=9", 1);
    assert_eq!(gallery_with(&app, &tampered).await, 303);
}

#[tokio::test]
async fn admin_logins_are_throttled_per_address() {
    let app = spawn(Stack::Embedded).await;
    let client = browser();
    for attempt in 1..=10 {
        assert_eq!(sign_in(&client, &app, "a-wrong-key-a-wrong-key").await.status(), 401, "attempt {attempt}");
    }
    let throttled = sign_in(&client, &app, ADMIN_KEY).await;
    assert_eq!(throttled.status(), 429, "even the right key waits once the allowance is spent");
    let retry_after: u64 = throttled.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=12).contains(&retry_after), "{retry_after}");
    let page = throttled.text().await.unwrap();
    assert!(page.contains("TOO_MANY_REQUESTS"), "{page}");
}

#[tokio::test]
async fn every_cookie_is_secure_behind_https() {
    let app = spawn_with(Stack::Embedded, |f| f.merge(("public_url", "https://upshot.example"))).await;
    let page = reqwest::Client::new().get(app.url("/admin/login")).send().await.unwrap();
    let csrf = page.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(csrf.starts_with("upshot_csrf=") && csrf.contains("Secure"), "{csrf}");
    let token = csrf.split(';').next().unwrap().trim_start_matches("upshot_csrf=").to_owned();
    let cookie = format!("upshot_csrf={token}");
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let login = client
        .post(app.url("/admin/login"))
        .header("Cookie", &cookie)
        .form(&[("api_key", ADMIN_KEY), ("csrf_token", token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 303);
    assert!(login.headers()["set-cookie"].to_str().unwrap().contains("Secure"));
    let form = Form::new()
        .text("csrf_token", token.clone())
        .part("file", Part::bytes(fixture("cat.jpg")).file_name("cat.jpg"));
    let upload = client.post(app.url("/upload")).header("Cookie", &cookie).multipart(form).send().await.unwrap();
    assert_eq!(upload.status(), 303);
    let delete_token = upload.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(delete_token.starts_with("upshot_delete_token") && delete_token.contains("Secure"), "{delete_token}");
}
