//! Direct uploads: a session, the file sent straight to the store (a presigned S3 URL, or Upshot's own signed
//! URL on the local store), then completion through the same pipeline as the form.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::helpers::{error_code, fixture, spawn, spawn_with, Stack, TestApp};

crate::on_both_stacks!(
    a_large_photo_goes_from_session_to_stored_image,
    a_file_that_is_not_an_image_fails_its_session_and_is_removed,
    sessions_over_the_limit_are_refused_at_once,
    an_uncompleted_session_expires_and_its_file_is_removed
);

/// A noisy photo of about `megabytes` MB: noise does not compress, so the file is large for its pixels.
pub fn large_noisy_jpeg(megabytes: usize) -> Vec<u8> {
    // Noise at quality 100 in 4:4:4 costs about 4.1 bytes a pixel.
    let pixels = megabytes * 1_000_000 * 10 / 40;
    let width = 4000usize;
    let height = pixels / width;
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut rgb = vec![0u8; width * height * 3];
    for chunk in rgb.chunks_mut(8) {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        for (byte, value) in chunk.iter_mut().zip(state.to_le_bytes()) {
            *byte = value;
        }
    }
    let image = turbojpeg::Image {
        pixels: rgb.as_slice(),
        width,
        pitch: width * 3,
        height,
        format: turbojpeg::PixelFormat::RGB,
    };
    turbojpeg::compress(image, 100, turbojpeg::Subsamp::None).unwrap().to_vec()
}

async fn open_session(app: &TestApp, body: Value) -> reqwest::Response {
    app.client.post(app.url("/api/v1/uploads")).json(&body).send().await.unwrap()
}

/// Opens a session for `bytes` and sends them with the URL and headers it gave.
async fn send(app: &TestApp, filename: &str, bytes: Vec<u8>, content_type: &str) -> Value {
    let opened =
        open_session(app, json!({ "filename": filename, "byte_size": bytes.len(), "content_type": content_type }))
            .await;
    assert_eq!(opened.status(), 201);
    let session: Value = opened.json().await.unwrap();
    let mut put = app.client.put(session["url"].as_str().unwrap()).body(bytes);
    for (name, value) in session["headers"].as_object().unwrap() {
        if name != "content-length" {
            put = put.header(name, value.as_str().unwrap());
        }
    }
    let sent = put.send().await.unwrap();
    assert_eq!(sent.status(), 200, "{}", sent.text().await.unwrap());
    session
}

async fn complete(app: &TestApp, id: &str) -> reqwest::Response {
    app.client.post(app.url(&format!("/api/v1/uploads/{id}/complete"))).send().await.unwrap()
}

async fn status(app: &TestApp, id: &str) -> Value {
    app.get(&format!("/api/v1/uploads/{id}")).await.json().await.unwrap()
}

fn incoming(app_keys: &[String]) -> Vec<&String> {
    app_keys.iter().filter(|key| key.starts_with("incoming/")).collect()
}

async fn a_large_photo_goes_from_session_to_stored_image(stack: Stack) {
    let app = spawn(stack).await;
    let photo = large_noisy_jpeg(60);
    let size = photo.len();
    assert!(size > 50_000_000, "{size}");
    let session = send(&app, "panorama.jpg", photo, "image/jpeg").await;
    let id = session["id"].as_str().unwrap();
    assert_eq!(status(&app, id).await["status"], "pending");

    let started = Instant::now();
    let done = complete(&app, id).await;
    assert_eq!(done.status(), 201, "{}", done.text().await.unwrap());
    let location = done.headers()["location"].to_str().unwrap().to_owned();
    let image: Value = done.json().await.unwrap();
    println!("{stack:?}: a {size}-byte photo completed in {:?}", started.elapsed());
    assert_eq!(location, format!("/api/v1/images/{}", image["id"].as_str().unwrap()));
    assert_eq!(image["original_filename"], "panorama.jpg");
    assert!(image["delete_token"].is_string() && image["urls"]["thumbnail"].is_string(), "{image}");

    let state = status(&app, id).await;
    assert_eq!((state["status"].as_str(), state["image_id"].as_str()), (Some("stored"), image["id"].as_str()));
    assert!(incoming(&app.object_keys().await).is_empty(), "the incoming object is removed");
    assert_eq!(app.get(&location).await.status(), 200);

    // Completing again answers the same image.
    let again = complete(&app, id).await;
    assert_eq!(again.status(), 201);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let again: Value = again.json().await.unwrap();
    assert_eq!(
        (again["id"].clone(), again["delete_token"].clone()),
        (image["id"].clone(), image["delete_token"].clone())
    );
    assert_eq!(app.image_rows().await, 1);
    assert_eq!(app.outbox_rows().await, 1, "one notification");
}

async fn a_file_that_is_not_an_image_fails_its_session_and_is_removed(stack: Stack) {
    let app = spawn(stack).await;
    // Completing before the file arrived leaves the session pending.
    let opened: Value =
        open_session(&app, json!({ "filename": "notes.jpg", "byte_size": 4000 })).await.json().await.unwrap();
    let (status_code, code, _) = error_code(complete(&app, opened["id"].as_str().unwrap()).await).await;
    assert_eq!((status_code, code.as_str()), (409, "UPLOAD_INCOMPLETE"));
    assert_eq!(status(&app, opened["id"].as_str().unwrap()).await["status"], "pending");

    let session = send(&app, "notes.jpg", fixture("not-an-image.jpg"), "image/jpeg").await;
    let id = session["id"].as_str().unwrap();
    let (status_code, code, _) = error_code(complete(&app, id).await).await;
    assert_eq!((status_code, code.as_str()), (415, "UNSUPPORTED_MEDIA_TYPE"));
    let state = status(&app, id).await;
    assert_eq!(
        (state["status"].as_str(), state["error"]["code"].as_str()),
        (Some("failed"), Some("UNSUPPORTED_MEDIA_TYPE"))
    );
    assert!(incoming(&app.object_keys().await).is_empty(), "the file is removed");
    let (status_code, code, _) = error_code(complete(&app, id).await).await;
    assert_eq!((status_code, code.as_str()), (415, "UNSUPPORTED_MEDIA_TYPE"), "the same answer again");
    assert_eq!(app.image_rows().await, 0);
}

async fn sessions_over_the_limit_are_refused_at_once(stack: Stack) {
    let app = spawn_with(stack, |figment| figment.merge(("direct_upload_max_bytes", 30_000_000))).await;
    let (status_code, code, body) =
        error_code(open_session(&app, json!({ "filename": "big.jpg", "byte_size": 30_000_001 })).await).await;
    assert_eq!((status_code, code.as_str()), (413, "PAYLOAD_TOO_LARGE"), "{body}");
    let (status_code, code, _) = error_code(
        open_session(&app, json!({ "filename": "x.txt", "byte_size": 10, "content_type": "text/plain" })).await,
    )
    .await;
    assert_eq!((status_code, code.as_str()), (415, "UNSUPPORTED_MEDIA_TYPE"));
    let (status_code, code, _) =
        error_code(open_session(&app, json!({ "filename": "x.jpg", "byte_size": 10, "sha256": "abc" })).await).await;
    assert_eq!((status_code, code.as_str()), (422, "INVALID_REQUEST"));
    let (status_code, code, _) = error_code(open_session(&app, json!({ "name": "x.jpg" })).await).await;
    assert_eq!((status_code, code.as_str()), (422, "INVALID_REQUEST"));
    // Over the form's limit, within the direct one: a session is what such a file needs.
    let opened =
        open_session(&app, json!({ "filename": "big.jpg", "byte_size": 25_000_000, "content_type": "image/jpeg" }))
            .await;
    assert_eq!(opened.status(), 201);
    let session: Value = opened.json().await.unwrap();
    let url = session["url"].as_str().unwrap();
    match stack {
        // S3 refuses a PUT whose length or type differ from those signed, and an expired URL.
        Stack::Cloud => {
            let signed = url.split("X-Amz-SignedHeaders=").nth(1).unwrap().split('&').next().unwrap();
            assert!(signed.contains("content-length") && signed.contains("content-type"), "{signed}");
            assert!(url.contains("X-Amz-Expires=900"), "{url}");
        }
        // Upshot refuses them itself.
        Stack::Embedded => {
            let wrong =
                app.client.put(url).header("content-type", "image/jpeg").body(vec![0u8; 1000]).send().await.unwrap();
            let (status_code, code, _) = error_code(wrong).await;
            assert_eq!((status_code, code.as_str()), (403, "UPLOAD_URL_INVALID"));
            // Refused before the body is read, so small bodies show it (a large one meets a closed connection).
            let forged = url.replace("signature=", "signature=x");
            let (status_code, code, _) =
                error_code(app.client.put(forged).body(vec![0u8; 1000]).send().await.unwrap()).await;
            assert_eq!((status_code, code.as_str()), (403, "UPLOAD_URL_INVALID"));
            let id = session["id"].as_str().unwrap();
            let expired = 1_600_000_000;
            let signature = upshot::domain::DeleteTokens::new(crate::helpers::SECRET)
                .sign(&format!("direct-upload:{id}:25000000:{expired}"));
            let stale = format!("{}/api/v1/uploads/{id}/data?expires={expired}&signature={signature}", app.base);
            let (status_code, code, _) =
                error_code(app.client.put(stale).body(vec![0u8; 1000]).send().await.unwrap()).await;
            assert_eq!((status_code, code.as_str()), (410, "UPLOAD_EXPIRED"));
            assert!(incoming(&app.object_keys().await).is_empty(), "nothing refused was kept");
        }
    }
}

async fn an_uncompleted_session_expires_and_its_file_is_removed(stack: Stack) {
    let app = spawn_with(stack, |figment| figment.merge(("upload_url_ttl_secs", 60))).await;
    let session = send(&app, "cat.jpg", fixture("cat.jpg"), "image/jpeg").await;
    let id = session["id"].as_str().unwrap();
    assert_eq!(incoming(&app.object_keys().await).len(), 1);
    // As if its URL had expired long ago; the sweeper runs every 15 s with this lifetime.
    app.execute_sql("UPDATE upload_sessions SET expires_at = '2000-01-01 00:00:00'").await;
    let deadline = Instant::now() + Duration::from_secs(40);
    while status(&app, id).await["status"] == "pending" && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let state = status(&app, id).await;
    assert_eq!((state["status"].as_str(), state["error"]["code"].as_str()), (Some("failed"), Some("UPLOAD_EXPIRED")));
    assert!(incoming(&app.object_keys().await).is_empty());
    let (status_code, code, _) = error_code(complete(&app, id).await).await;
    assert_eq!((status_code, code.as_str()), (410, "UPLOAD_EXPIRED"));
}
