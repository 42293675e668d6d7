//! The upload pipeline and the image API, end to end.

use reqwest::multipart::{Form, Part};
use serde_json::Value;

use crate::helpers::{error_code, file_form, fixture, raw_multipart, spawn, spawn_with, Stack, ADMIN_KEY};

crate::on_both_stacks!(
    jpeg_round_trip_strips_metadata_and_applies_orientation,
    upright_jpeg_keeps_its_exact_pixels,
    png_webp_and_gif_keep_their_pixels_and_lose_metadata,
    identical_bytes_are_stored_once,
    idempotent_retry_stores_nothing_twice,
    delete_needs_the_token_and_removes_everything,
    bad_uploads_get_clear_errors_and_store_nothing,
    upload_limit_is_enforced_with_413,
    hostile_filenames_never_reach_storage_keys,
    store_failure_leaves_no_row,
    database_failure_leaves_no_object,
    readiness_names_the_failing_part,
    errors_have_one_shape_and_echo_request_ids,
    selfie_compatibility_routes,
    admin_listing_pages_newest_first,
    metrics_count_requests_uploads_and_inference,
    every_image_has_a_thumbhash_of_its_colours,
);

fn decode(bytes: &[u8]) -> image::DynamicImage {
    image::load_from_memory(bytes).expect("stored bytes decode")
}

async fn download(app: &crate::helpers::TestApp, url: &Value) -> (reqwest::header::HeaderMap, Vec<u8>) {
    let response = app.get(url.as_str().unwrap()).await;
    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    (headers, response.bytes().await.unwrap().to_vec())
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

async fn jpeg_round_trip_strips_metadata_and_applies_orientation(stack: Stack) {
    let app = spawn(stack).await;
    let body = app.upload_ok("cat-gps-rotated.jpg").await;
    // Stored 451x300 with orientation 6: upright it is 300 wide, 451 high.
    assert_eq!((body["width"].as_i64(), body["height"].as_i64()), (Some(300), Some(451)));
    assert_eq!(body["format"], "jpeg");
    assert_eq!(body["content_type"], "image/jpeg");
    assert_eq!(body["predictions"].as_array().unwrap().len(), 5, "{body}");
    assert_eq!(body["model"]["name"], "mobilenet_v2");
    assert!(body["inference_ms"].as_f64().is_some_and(|ms| ms > 0.0));
    assert_eq!(body["original_filename"], "cat-gps-rotated.jpg");
    assert!(body["delete_token"].as_str().is_some_and(|t| t.len() >= 40));

    let (headers, stored) = download(&app, &body["urls"]["file"]).await;
    assert_eq!(headers["content-type"], "image/jpeg");
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert_eq!(headers.get_all("x-content-type-options").iter().count(), 1, "the header is sent once");
    // Deleted photos stop showing: originals are revalidated on every view, thumbnails cached 5 minutes at most.
    assert_eq!(headers["cache-control"], "private, no-cache");
    assert!(headers.contains_key("etag"));
    assert_eq!(stored.len() as i64, body["byte_size"].as_i64().unwrap());
    assert_eq!(upshot::domain::sha256_hex(&stored), body["sha256"].as_str().unwrap());
    for secret in [&b"UpshotTestCam"[..], b"UpshotSecretXmp", b"UpshotSecretComment"] {
        assert!(!contains(&stored, secret), "{:?} survived", String::from_utf8_lossy(secret));
    }
    // Stored as taken, sideways: its one EXIF segment holds the orientation alone, which viewers follow.
    let held = upshot::ingest::sanitize::orientation_segment(image::metadata::Orientation::Rotate90);
    assert_eq!(stored[2..38], held, "the orientation segment right after the start of the image");
    assert_eq!(stored.windows(6).filter(|w| w == b"Exif\0\0").count(), 1, "no other EXIF segment");
    let mut image = decode(&stored);
    assert_eq!((image.width(), image.height()), (451, 300));
    image.apply_orientation(image::metadata::Orientation::Rotate90);
    assert_eq!((image.width(), image.height()), (300, 451));

    let (headers, thumb) = download(&app, &body["urls"]["thumbnail"]).await;
    assert_eq!(headers["content-type"], "image/jpeg");
    assert_eq!(headers["cache-control"], "private, max-age=300");
    let thumb = decode(&thumb);
    assert!(thumb.width() <= 320 && thumb.height() <= 320 && thumb.height() > thumb.width());

    let shown: Value = app.get(&format!("/api/v1/images/{}", body["id"].as_str().unwrap())).await.json().await.unwrap();
    assert_eq!(shown["sha256"], body["sha256"]);
    assert_eq!(shown["predictions"], body["predictions"], "predictions are stored with the row");
    assert_eq!(shown["model"], body["model"]);
    assert!(shown.get("delete_token").is_none(), "the token is shown once, at upload");
    assert_eq!((app.image_rows().await, app.outbox_rows().await), (1, 1));
    let id = body["id"].as_str().unwrap();
    assert_eq!(app.object_keys().await, vec![format!("images/{id}/original.jpg"), format!("images/{id}/thumb.jpg")]);
}

async fn upright_jpeg_keeps_its_exact_pixels(stack: Stack) {
    let app = spawn(stack).await;
    let body = app.upload_ok("cat.jpg").await;
    let (_, stored) = download(&app, &body["urls"]["file"]).await;
    assert_eq!(decode(&stored).to_rgb8(), decode(&fixture("cat.jpg")).to_rgb8());
}

async fn png_webp_and_gif_keep_their_pixels_and_lose_metadata(stack: Stack) {
    let app = spawn(stack).await;
    for (name, format, secrets) in [
        ("coffee.png", "png", vec![&b"UpshotSecretText"[..], b"eXIf"]),
        ("astronaut.webp", "webp", vec![&b"EXIF"[..]]),
        ("rocket.gif", "gif", vec![]),
        ("logo-alpha.png", "png", vec![]),
    ] {
        let body = app.upload_ok(name).await;
        assert_eq!(body["format"], format, "{name}");
        let (_, stored) = download(&app, &body["urls"]["file"]).await;
        for secret in secrets {
            assert!(!contains(&stored, secret), "{name}: {:?} survived", String::from_utf8_lossy(secret));
        }
        assert_eq!(decode(&stored).to_rgba8(), decode(&fixture(name)).to_rgba8(), "{name}: pixels changed");
        let (headers, _) = download(&app, &body["urls"]["thumbnail"]).await;
        let expected_thumb = if name == "logo-alpha.png" { "image/png" } else { "image/jpeg" };
        assert_eq!(headers["content-type"], expected_thumb, "{name}");
    }
}

async fn identical_bytes_are_stored_once(stack: Stack) {
    let app = spawn(stack).await;
    let first = app.upload_ok("cat.jpg").await;
    let second = app.upload_ok("cat.jpg").await;
    assert_ne!(first["id"], second["id"], "each upload is its own image");
    assert_ne!(first["delete_token"], second["delete_token"]);
    assert_eq!(second["deduplicated"], true);
    assert_eq!(first["sha256"], second["sha256"]);
    assert_eq!(app.object_keys().await.len(), 2, "one original and one thumbnail for both");
    assert_eq!(app.image_rows().await, 2);

    // Deleting one keeps the shared objects for the other; deleting the last removes them.
    let delete = |body: &Value| {
        app.client
            .delete(app.url(&format!("/api/v1/images/{}", body["id"].as_str().unwrap())))
            .header("X-Delete-Token", body["delete_token"].as_str().unwrap())
            .send()
    };
    assert_eq!(delete(&first).await.unwrap().status(), 204);
    let (_, stored) = download(&app, &second["urls"]["file"]).await;
    assert_eq!(upshot::domain::sha256_hex(&stored), second["sha256"].as_str().unwrap());
    assert_eq!(app.object_keys().await.len(), 2);
    assert_eq!(delete(&second).await.unwrap().status(), 204);
    assert!(app.object_keys().await.is_empty());
    assert_eq!(app.image_rows().await, 0);
}

async fn idempotent_retry_stores_nothing_twice(stack: Stack) {
    let app = spawn(stack).await;
    let post = |name: &'static str, key: &'static str| {
        app.client.post(app.url("/api/v1/images")).header("Idempotency-Key", key).multipart(file_form(name)).send()
    };
    let first = post("coffee.png", "retry-key-1").await.unwrap();
    assert_eq!(first.status(), 201);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let first: Value = first.json().await.unwrap();
    let retry = post("coffee.png", "retry-key-1").await.unwrap();
    assert_eq!(retry.status(), 201);
    assert_eq!(retry.headers()["idempotent-replayed"], "true");
    let mut retry: Value = retry.json().await.unwrap();
    assert!(retry.get("delete_token").is_none(), "the delete token is shown once: {retry}");
    let mut first_without_token = first.clone();
    first_without_token.as_object_mut().unwrap().remove("delete_token");
    retry.as_object_mut().unwrap().remove("delete_token");
    assert_eq!(first_without_token, retry, "a retry returns the same result");
    assert_eq!((app.image_rows().await, app.outbox_rows().await), (1, 1));
    assert_eq!(app.object_keys().await.len(), 2);

    // The key is the client's own: the same key and bytes from another address are another upload, and learn
    // nothing of the first.
    let elsewhere = reqwest::Client::builder().local_address("127.0.0.9".parse::<std::net::IpAddr>().unwrap()).build();
    let other = elsewhere
        .unwrap()
        .post(app.url("/api/v1/images"))
        .header("Idempotency-Key", "retry-key-1")
        .multipart(file_form("coffee.png"))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 201);
    assert!(other.headers().get("idempotent-replayed").is_none());
    let other: Value = other.json().await.unwrap();
    assert_ne!(other["id"], first["id"]);
    assert!(other["delete_token"].is_string());
    assert_eq!(app.image_rows().await, 2);
    let url = app.url(&format!("/api/v1/images/{}", other["id"].as_str().unwrap()));
    let removed = app.client.delete(url).header("X-Delete-Token", other["delete_token"].as_str().unwrap()).send();
    assert_eq!(removed.await.unwrap().status(), 204);

    let (status, code, _) = error_code(post("cat.jpg", "retry-key-1").await.unwrap()).await;
    assert_eq!((status, code.as_str()), (409, "IDEMPOTENCY_CONFLICT"));
    let (status, code, _) = error_code(post("cat.jpg", "bad key with spaces").await.unwrap()).await;
    assert_eq!((status, code.as_str()), (400, "INVALID_IDEMPOTENCY_KEY"));
    assert_eq!(app.image_rows().await, 1);
}

async fn delete_needs_the_token_and_removes_everything(stack: Stack) {
    let app = spawn(stack).await;
    let body = app.upload_ok("coffee.png").await;
    let path = format!("/api/v1/images/{}", body["id"].as_str().unwrap());
    let (status, code, _) = error_code(app.client.delete(app.url(&path)).send().await.unwrap()).await;
    assert_eq!((status, code.as_str()), (401, "UNAUTHORIZED"));
    let wrong = app.client.delete(app.url(&path)).header("X-Delete-Token", "not-the-token").send().await.unwrap();
    let (status, code, _) = error_code(wrong).await;
    assert_eq!((status, code.as_str()), (403, "FORBIDDEN"));
    assert_eq!(app.image_rows().await, 1);

    let token = body["delete_token"].as_str().unwrap();
    let deleted = app.client.delete(app.url(&path)).header("X-Delete-Token", token).send().await.unwrap();
    assert_eq!(deleted.status(), 204);
    assert_eq!(app.image_rows().await, 0);
    assert!(app.object_keys().await.is_empty());
    let (status, code, _) = error_code(app.get(&path).await).await;
    assert_eq!((status, code.as_str()), (404, "NOT_FOUND"));
    assert_eq!(app.get(body["urls"]["file"].as_str().unwrap()).await.status(), 404);
    let again = app.client.delete(app.url(&path)).header("X-Delete-Token", token).send().await.unwrap();
    assert_eq!(again.status(), 404);

    // The admin key deletes without a token.
    let other = app.upload_ok("cat.jpg").await;
    let path = format!("/api/v1/images/{}", other["id"].as_str().unwrap());
    let admin = app.client.delete(app.url(&path)).bearer_auth(ADMIN_KEY).send().await.unwrap();
    assert_eq!(admin.status(), 204);
    assert!(app.object_keys().await.is_empty());
}

async fn bad_uploads_get_clear_errors_and_store_nothing(stack: Stack) {
    let app = spawn(stack).await;
    for (name, status, code, mentions) in [
        ("not-an-image.jpg", 415, "UNSUPPORTED_MEDIA_TYPE", "text file"),
        ("bomb.png", 422, "IMAGE_TOO_LARGE", "max_image_pixels"),
        ("tall.png", 422, "IMAGE_TOO_LARGE", "max_image_height"),
        ("truncated.jpg", 422, "CORRUPT_IMAGE", "cannot be decoded"),
    ] {
        let (got_status, got_code, body) = error_code(app.upload(name).await).await;
        assert_eq!((got_status, got_code.as_str()), (status, code), "{name}: {body}");
        assert!(body["error"]["message"].as_str().unwrap().contains(mentions), "{name}: {body}");
    }
    let no_file = Form::new().text("description", "only a description");
    let (status, code, _) = error_code(app.upload_form("/api/v1/images", no_file).await).await;
    assert_eq!((status, code.as_str()), (400, "MISSING_FILE"));
    let empty = Form::new().part("file", Part::bytes(Vec::new()).file_name("empty.jpg"));
    let (status, code, _) = error_code(app.upload_form("/api/v1/images", empty).await).await;
    assert_eq!((status, code.as_str()), (400, "MISSING_FILE"));
    let long = file_form("cat.jpg").text("description", "x".repeat(1001));
    let (status, code, _) = error_code(app.upload_form("/api/v1/images", long).await).await;
    assert_eq!((status, code.as_str()), (422, "INVALID_REQUEST"));
    let json = app.client.post(app.url("/api/v1/images")).json(&serde_json::json!({"file": "x"})).send().await.unwrap();
    let (status, code, _) = error_code(json).await;
    assert_eq!((status, code.as_str()), (415, "UNSUPPORTED_MEDIA_TYPE"));
    assert_eq!(app.image_rows().await, 0);
    assert!(app.object_keys().await.is_empty());
}

async fn upload_limit_is_enforced_with_413(stack: Stack) {
    let app = spawn_with(stack, |f| f.merge(("max_upload_bytes", 64 * 1024))).await;
    let (status, code, body) = error_code(app.upload("coffee.png").await).await;
    assert_eq!((status, code.as_str()), (413, "PAYLOAD_TOO_LARGE"), "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("max_upload_bytes"), "{body}");
    assert_eq!(app.image_rows().await, 0);
    assert!(app.object_keys().await.is_empty());
    app.upload_ok("cat.jpg").await; // 35 KB is under the limit
}

async fn hostile_filenames_never_reach_storage_keys(stack: Stack) {
    let app = spawn(stack).await;
    let traversal = Form::new().part("file", Part::bytes(fixture("cat.jpg")).file_name("../../etc/passwd.jpg"));
    let response = app.upload_form("/api/v1/images", traversal).await;
    assert_eq!(response.status(), 201);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["original_filename"], "passwd.jpg");

    let long_name = format!("{}.jpg", "a".repeat(1000));
    let long = Form::new().part("file", Part::bytes(fixture("coffee.png")).file_name(long_name));
    let body: Value = app.upload_form("/api/v1/images", long).await.json().await.unwrap();
    assert_eq!(body["original_filename"].as_str().unwrap().chars().count(), 255);

    let (content_type, raw) = raw_multipart(b"\xff\xfe\x80evil\x00.gif", &fixture("rocket.gif"));
    let response =
        app.client.post(app.url("/api/v1/images")).header("Content-Type", content_type).body(raw).send().await.unwrap();
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap();
    assert!(status == 201 || status == 400, "non-UTF-8 filename: {status} {body}");

    for key in app.object_keys().await {
        let parts: Vec<&str> = key.split('/').collect();
        assert_eq!(parts.len(), 3, "{key}");
        assert_eq!(parts[0], "images");
        assert!(upshot::domain::ImageId::parse(parts[1]).is_some(), "{key}");
        assert!(["original.jpg", "original.png", "original.gif", "thumb.jpg"].contains(&parts[2]), "{key}");
    }
    assert!(!app.data_dir.path().join("etc").exists());
}

/// Makes the store refuse writes: a file where the local store's directory should be, or no bucket.
async fn break_store(app: &crate::helpers::TestApp) {
    match &app.bucket {
        None => {
            let images = app.data_dir.path().join("objects/images");
            std::fs::create_dir_all(app.data_dir.path().join("objects")).unwrap();
            let _ = std::fs::remove_dir_all(&images);
            std::fs::write(&images, b"not a directory").unwrap();
        }
        Some(bucket) => {
            let s3 = crate::helpers::s3_client().await;
            let listed = s3.list_objects_v2().bucket(bucket).send().await.unwrap();
            for object in listed.contents() {
                s3.delete_object().bucket(bucket).key(object.key().unwrap()).send().await.unwrap();
            }
            s3.delete_bucket().bucket(bucket).send().await.unwrap();
        }
    }
}

async fn store_failure_leaves_no_row(stack: Stack) {
    let app = spawn(stack).await;
    break_store(&app).await;
    let (status, code, _) = error_code(app.upload("cat.jpg").await).await;
    assert_eq!((status, code.as_str()), (503, "STORE_UNAVAILABLE"));
    assert_eq!((app.image_rows().await, app.outbox_rows().await), (0, 0));
}

async fn database_failure_leaves_no_object(stack: Stack) {
    let app = spawn(stack).await;
    // The image row is inserted, then the outbox insert fails: the transaction and the objects must go.
    app.execute_sql("DROP TABLE outbox").await;
    let (status, code, _) = error_code(app.upload("cat.jpg").await).await;
    assert_eq!((status, code.as_str()), (500, "INTERNAL"));
    assert_eq!(app.image_rows().await, 0);
    assert!(app.object_keys().await.is_empty(), "{:?}", app.object_keys().await);
}

async fn readiness_names_the_failing_part(stack: Stack) {
    let app = spawn(stack).await;
    let ready: Value = app.get("/readyz").await.json().await.unwrap();
    assert_eq!(ready["status"], "ready");
    match &app.bucket {
        None => std::fs::remove_dir_all(app.data_dir.path().join("objects")).unwrap(),
        Some(_) => break_store(&app).await,
    }
    let (status, code, body) = error_code(app.get("/readyz").await).await;
    assert_eq!((status, code.as_str()), (503, "NOT_READY"));
    assert!(body["error"]["message"].as_str().unwrap().contains("store"), "{body}");
    assert_eq!(body["checks"]["database"]["status"], "ok");
    assert_eq!(body["checks"]["store"]["status"], "failed");
    assert_eq!(app.get("/healthz").await.status(), 200, "liveness does not depend on the store");
}

async fn errors_have_one_shape_and_echo_request_ids(stack: Stack) {
    let app = spawn(stack).await;
    for path in ["/api/v1/images/0123456789abcdef0123456789abcdef", "/api/v1/images/not-an-id", "/no/such/route"] {
        let (status, code, _) = error_code(app.get(path).await).await;
        assert_eq!((status, code.as_str()), (404, "NOT_FOUND"), "{path}");
    }
    let response =
        app.client.get(app.url("/no/such/route")).header("X-Request-Id", "client-id-42").send().await.unwrap();
    assert_eq!(response.headers()["x-request-id"], "client-id-42");
    let (_, _, body) = error_code(response).await;
    assert_eq!(body["error"]["request_id"], "client-id-42");
    let response =
        app.client.get(app.url("/healthz")).header("X-Request-Id", "bad id\twith space").send().await.unwrap();
    let echoed = response.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert!(!echoed.contains(' ') && !echoed.is_empty());
    let (status, code, _) = error_code(app.client.put(app.url("/api/v1/images")).send().await.unwrap()).await;
    assert_eq!(status / 100, 4, "{code}");
}

async fn selfie_compatibility_routes(stack: Stack) {
    let app = spawn(stack).await;
    let health: Value = app.get("/health").await.json().await.unwrap();
    assert_eq!(health, serde_json::json!({ "status": "ok" }));
    let response = app.upload_form("/upload-selfie", file_form("astronaut.webp")).await;
    assert_eq!(response.status(), 200);
    let request_id = response.headers()["x-request-id"].to_str().unwrap().to_owned();
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["message"], "Upload & inference successful");
    assert_eq!(body["request_id"], request_id.as_str());
    assert_eq!(body["result"]["format"], "webp");
    assert_eq!(body["result"]["faces"].as_array().unwrap().len(), 1, "{body}");
    assert!(body["result"]["season"].is_string() && body["result"]["confidence"].is_number(), "{body}");
    assert!(body["result"]["labels"].as_array().is_some_and(|l| l.len() == 5));
    assert!(body["result"]["body_type"].is_null() && body["result"]["body_type_reason"].is_string());
    assert_eq!(app.image_rows().await, 1);
    let (status, code, _) = error_code(app.upload_form("/upload-selfie", file_form("not-an-image.jpg")).await).await;
    assert_eq!((status, code.as_str()), (415, "UNSUPPORTED_MEDIA_TYPE"));
}

async fn admin_listing_pages_newest_first(stack: Stack) {
    let app = spawn(stack).await;
    let mut ids = Vec::new();
    for name in ["cat.jpg", "coffee.png", "rocket.gif", "astronaut.webp", "logo-alpha.png"] {
        ids.push(app.upload_ok(name).await["id"].as_str().unwrap().to_owned());
    }
    let (status, code, _) = error_code(app.get("/api/v1/images").await).await;
    assert_eq!((status, code.as_str()), (401, "UNAUTHORIZED"));
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let query = match &cursor {
            Some(c) => format!("/api/v1/images?limit=2&cursor={c}"),
            None => "/api/v1/images?limit=2".to_owned(),
        };
        let page: Value =
            app.client.get(app.url(&query)).bearer_auth(ADMIN_KEY).send().await.unwrap().json().await.unwrap();
        seen.extend(page["items"].as_array().unwrap().iter().map(|i| i["id"].as_str().unwrap().to_owned()));
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    ids.reverse();
    assert_eq!(seen, ids);
}

async fn metrics_count_requests_uploads_and_inference(stack: Stack) {
    let app = spawn(stack).await;
    app.upload_ok("cat.jpg").await;
    let (status, _, _) = error_code(app.upload("not-an-image.jpg").await).await;
    assert_eq!(status, 415);
    let response = app.get("/metrics").await;
    assert!(response.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
    let text = response.text().await.unwrap();
    for expected in [
        r#"upshot_http_requests_total{method="POST",route="/api/v1/images",status="201"} 1"#,
        r#"upshot_http_requests_total{method="POST",route="/api/v1/images",status="415"} 1"#,
        r#"upshot_http_request_duration_seconds_count{method="POST",route="/api/v1/images"} 2"#,
        "upshot_inference_seconds_count 1",
        "upshot_inference_sessions_idle ",
        "upshot_cpu_slots_free ",
    ] {
        assert!(text.contains(expected), "{expected} missing from:\n{text}");
    }
    let bytes = fixture("cat.jpg").len() + fixture("not-an-image.jpg").len();
    assert!(text.contains(&format!("upshot_upload_bytes_total {bytes}")), "{text}");
    assert!(text.contains("upshot_outbox_unsent "), "{text}");
}

#[tokio::test]
async fn the_api_refuses_what_its_document_does_not_allow() {
    let app = spawn(Stack::Embedded).await;
    // A form field the upload does not take, named in the error.
    let form = file_form("cat.jpg").text("tags", "cat");
    let (status, code, body) = error_code(app.upload_form("/api/v1/images", form).await).await;
    assert_eq!((status, code.as_str()), (422, "INVALID_REQUEST"));
    assert!(body["error"]["message"].as_str().unwrap().contains("`tags`"), "{body}");
    // A description over the limit counts as sent, control characters included.
    let long = "\u{7}".repeat(1001);
    let form = file_form("cat.jpg").text("description", long);
    assert_eq!(error_code(app.upload_form("/api/v1/classify", form).await).await.1, "INVALID_REQUEST");
    assert_eq!(app.image_rows().await, 0);

    let admin = |query: &str| {
        let request = app.client.get(app.url(&format!("/api/v1/images{query}"))).bearer_auth(ADMIN_KEY);
        async move { request.send().await.unwrap() }
    };
    for query in ["?limit=0", "?limit=null", "?limit=5&limit=5", "?limit=201"] {
        assert_eq!(error_code(admin(query).await).await.1, "INVALID_REQUEST", "{query}");
    }
    for query in ["?cursor=", "?cursor=abc", "?cursor=1-XYZ"] {
        assert_eq!(error_code(admin(query).await).await.1, "BAD_REQUEST", "{query}");
    }
    app.upload_ok("cat.jpg").await;
    app.upload_ok("coffee.png").await;
    let first: serde_json::Value = admin("?limit=1").await.json().await.unwrap();
    let cursor = first["next_cursor"].as_str().unwrap();
    let document: serde_json::Value = app.get("/api/v1/openapi.json").await.json().await.unwrap();
    let parameters = document["paths"]["/api/v1/images"]["get"]["parameters"].as_array().unwrap();
    let documented = parameters.iter().find(|p| p["name"] == "cursor").unwrap()["schema"]["pattern"].as_str().unwrap();
    let pattern = regex::Regex::new(documented).unwrap();
    assert!(pattern.is_match(cursor), "{cursor} matches the documented pattern");
    let second: serde_json::Value = admin(&format!("?limit=1&cursor={cursor}")).await.json().await.unwrap();
    assert_ne!(first["items"][0]["id"], second["items"][0]["id"]);
}

/// The placeholder's average colour is the image's, and its page carries it as a small PNG to paint.
async fn every_image_has_a_thumbhash_of_its_colours(stack: Stack) {
    use base64::Engine;
    let app = spawn(stack).await;
    for name in ["cat.jpg", "coffee.png", "logo-alpha.png", "cat-gps.heic"] {
        let body = app.upload_ok(name).await;
        let hash = base64::engine::general_purpose::STANDARD.decode(body["thumbhash"].as_str().unwrap()).unwrap();
        assert!(hash.len() <= 40, "{name}: {} bytes", hash.len());
        let (r, g, b, a) = thumbhash::thumb_hash_to_average_rgba(&hash).unwrap();
        let (_, thumbnail) = download(&app, &body["urls"]["thumbnail"]).await;
        let pixels = decode(&thumbnail).to_rgba8();
        let count = f32::from(u16::try_from(pixels.pixels().len().min(60_000)).unwrap());
        let mean =
            |channel: usize| pixels.pixels().take(60_000).map(|p| f32::from(p[channel]) / 255.0).sum::<f32>() / count;
        if name == "logo-alpha.png" {
            assert!(a < 0.9, "{name}: the placeholder keeps the transparency ({a})");
        } else {
            for (channel, value) in [(0, r), (1, g), (2, b)] {
                let expected = mean(channel);
                assert!(
                    (value - expected).abs() < 0.06,
                    "{name}: channel {channel} is {value}, the image's {expected}"
                );
            }
        }
        let page = app.get(body["urls"]["page"].as_str().unwrap()).await.text().await.unwrap();
        assert!(page.contains("data-placeholder=\"data:image&#x2F;png;base64,"), "{name}: the page carries it");
    }
}
