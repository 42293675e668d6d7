//! The server-rendered pages, without JavaScript.

use reqwest::multipart::{Form, Part};

use crate::helpers::{fixture, spawn, Stack};

crate::on_both_stacks!(form_upload_lands_on_an_escaped_result_page, page_errors_carry_the_api_codes);

async fn form_upload_lands_on_an_escaped_result_page(stack: Stack) {
    let app = spawn(stack).await;
    let index = app.get("/").await.text().await.unwrap();
    assert!(index.contains(r#"action="/upload""#) && index.contains(r#"name="file""#), "{index}");
    assert!(index.contains("20 MiB"), "the limit comes from the configuration");

    let form = Form::new()
        .part("file", Part::bytes(fixture("cat.jpg")).file_name("<script>alert(1)</script>.jpg"))
        .text("description", "<script>alert('x')</script> & friends");
    let response = app.upload_form("/upload", form).await;
    assert_eq!(response.status(), 303);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    assert!(location.starts_with("/images/"), "{location}");
    let cookie = response.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"), "{cookie}");
    let cookie = cookie.split(';').next().unwrap().to_owned();

    let page = app.client.get(app.url(&location)).header("Cookie", &cookie).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(!html.contains("<script>alert"), "user text must be escaped");
    assert!(html.contains("&lt;script&gt;alert"), "{html}");
    let token = cookie.split_once('=').unwrap().1;
    assert!(html.contains(token), "the uploader sees the delete token once");

    let again = app.get(&location).await.text().await.unwrap();
    assert!(!again.contains(token), "without the uploader's cookie the token is not shown");

    let id = location.trim_start_matches("/images/");
    let delete = app
        .client
        .post(app.url(&format!("/images/{id}/delete")))
        .form(&[("delete_token", token)])
        .send()
        .await
        .unwrap();
    assert_eq!(delete.status(), 303);
    assert_eq!(app.image_rows().await, 0);
    assert_eq!(app.get(&location).await.status(), 404);
}

async fn page_errors_carry_the_api_codes(stack: Stack) {
    let app = spawn(stack).await;
    let form = Form::new().part("file", Part::bytes(fixture("not-an-image.jpg")).file_name("notes.jpg"));
    let response = app.upload_form("/upload", form).await;
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
}
