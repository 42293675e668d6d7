//! Direct uploads: a session, the file sent straight to the store (a presigned S3 URL, or Upshot's own signed
//! URL on the local store), then completion through the same pipeline as the form.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::helpers::{error_code, fixture, spawn, spawn_with, ServerProcess, Stack, TestApp};

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

    // Completing again answers the same image, without the delete token: it is shown once.
    let again = complete(&app, id).await;
    assert_eq!(again.status(), 201);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["id"], image["id"]);
    assert!(again.get("delete_token").is_none(), "{again}");
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
    let (status_code, code, _) =
        error_code(open_session(&app, json!({ "filename": "x.jpg", "byte_size": 10, "sha256": null })).await).await;
    assert_eq!((status_code, code.as_str()), (422, "INVALID_REQUEST"), "the document says string, not null");
    let (status_code, code, _) =
        error_code(open_session(&app, json!({ "filename": "x".repeat(1025), "byte_size": 10 })).await).await;
    assert_eq!((status_code, code.as_str()), (422, "INVALID_REQUEST"), "a filename over the document's maxLength");
    let (status_code, code, _) = error_code(open_session(&app, json!({ "name": "x.jpg" })).await).await;
    assert_eq!((status_code, code.as_str()), (422, "INVALID_REQUEST"));
    // Over the form's limit, within the direct one: a session is what such a file needs.
    // 25000000.0 is an integer to JSON Schema, so to the server too.
    let opened =
        open_session(&app, json!({ "filename": "big.jpg", "byte_size": 25_000_000.0, "content_type": "image/jpeg" }))
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
            let signature = upshot::domain::Signer::new(crate::helpers::SECRET)
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

/// A queue whose messages go to a dead-letter queue after `max_receives`: (queue URL, its ARN, the DLQ's URL).
async fn queue_with_dead_letters(max_receives: u32, visibility_secs: u32) -> (String, String, String) {
    use aws_sdk_sqs::types::QueueAttributeName;
    let sqs = crate::helpers::sqs_client().await;
    let name = format!("upshot-uploads-{}", &upshot::domain::ImageId::generate().as_str()[..12]);
    let arn_of = |url: String| {
        let sqs = sqs.clone();
        async move {
            let attributes = sqs
                .get_queue_attributes()
                .queue_url(&url)
                .attribute_names(QueueAttributeName::QueueArn)
                .send()
                .await
                .unwrap();
            attributes.attributes().unwrap()[&QueueAttributeName::QueueArn].clone()
        }
    };
    let dlq =
        sqs.create_queue().queue_name(format!("{name}-dlq")).send().await.unwrap().queue_url().unwrap().to_owned();
    let redrive = json!({ "deadLetterTargetArn": arn_of(dlq.clone()).await, "maxReceiveCount": max_receives });
    let queue = sqs
        .create_queue()
        .queue_name(name)
        .attributes(QueueAttributeName::RedrivePolicy, redrive.to_string())
        .attributes(QueueAttributeName::VisibilityTimeout, visibility_secs.to_string())
        .send()
        .await
        .unwrap()
        .queue_url()
        .unwrap()
        .to_owned();
    let arn = arn_of(queue.clone()).await;
    (queue, arn, dlq)
}

/// The bucket tells the queue of every object created under `incoming/`, as the stack configures it.
async fn notify_queue_of_incoming(bucket: &str, queue_arn: &str) {
    use aws_sdk_s3::types::{
        Event, FilterRule, FilterRuleName, NotificationConfiguration, NotificationConfigurationFilter,
        QueueConfiguration, S3KeyFilter,
    };
    let prefix = FilterRule::builder().name(FilterRuleName::Prefix).value("uploads/incoming/").build();
    let filter =
        NotificationConfigurationFilter::builder().key(S3KeyFilter::builder().filter_rules(prefix).build()).build();
    let queue = QueueConfiguration::builder()
        .queue_arn(queue_arn)
        .events(Event::S3ObjectCreated)
        .filter(filter)
        .build()
        .unwrap();
    crate::helpers::s3_client()
        .await
        .put_bucket_notification_configuration()
        .bucket(bucket)
        .notification_configuration(NotificationConfiguration::builder().queue_configurations(queue).build())
        .send()
        .await
        .unwrap();
}

/// Two instances poll the bucket's events: an upload whose client never completes it is stored once, with
/// one notification; a message that is no S3 event goes to the dead-letter queue after its receives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bucket_event_completes_an_upload_once_across_two_instances() {
    let (queue, queue_arn, dead_letters) = queue_with_dead_letters(2, 1).await;
    let endpoint = std::env::var("UPSHOT_TEST_AWS_ENDPOINT").unwrap();
    let polling = |figment: figment::Figment| {
        figment.merge(("upload_queue_url", queue.clone())).merge(("sqs_endpoint_url", endpoint.clone()))
    };
    let first = spawn_with(Stack::Cloud, polling).await;
    let bucket = first.bucket.clone().unwrap();
    let (database, topic) = (first.database_url.clone(), first.topic_arn.clone().unwrap());
    let second = spawn_with(Stack::Cloud, |figment| {
        polling(figment).merge(("database_url", database)).merge(("s3_bucket", &bucket)).merge(("sns_topic_arn", topic))
    })
    .await;
    notify_queue_of_incoming(&bucket, &queue_arn).await;

    let session = send(&second, "cat.jpg", fixture("cat.jpg"), "image/jpeg").await;
    let id = session["id"].as_str().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while status(&first, id).await["status"] != "stored" && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let state = status(&first, id).await;
    assert_eq!(state["status"], "stored", "{state}");
    assert_eq!((first.image_rows().await, first.outbox_rows().await), (1, 1), "stored once, one notification");
    assert!(incoming(&first.object_keys().await).is_empty());
    let late = complete(&first, id).await;
    assert!(late.headers().get("idempotent-replayed").is_none(), "the first answer to a client");
    let image: Value = late.json().await.unwrap();
    assert_eq!(image["id"], state["image_id"], "the client's late completion answers the same image");
    assert!(image["delete_token"].is_string(), "with the delete token, though the event stored it: {image}");
    let replay: Value = complete(&second, id).await.json().await.unwrap();
    assert!(replay.get("delete_token").is_none(), "and only once: {replay}");

    let sqs = crate::helpers::sqs_client().await;
    sqs.send_message().queue_url(&queue).message_body("not an S3 event").send().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut parked = Vec::new();
    while parked.is_empty() && Instant::now() < deadline {
        let received = sqs.receive_message().queue_url(&dead_letters).wait_time_seconds(2).send().await.unwrap();
        parked = received.messages.unwrap_or_default();
    }
    assert_eq!(parked.len(), 1, "the poison message reaches the dead-letter queue");
    assert_eq!(parked[0].body(), Some("not an S3 event"));
    drop(second);
}

/// A server process of its own, for what only a process shows: its peak resident memory.
/// The process's peak RSS (VmHWM), in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|line| line.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// The 60 MB photo through `upshot serve` on the embedded default: the file travels to the store without
/// the server holding it, and processing it costs the server's memory a bounded amount (printed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_direct_upload_keeps_the_servers_memory_bounded() {
    let data_dir = tempfile::tempdir().unwrap();
    let port = crate::helpers::free_port();
    let base = format!("http://127.0.0.1:{port}");
    let server = ServerProcess(
        std::process::Command::new(env!("CARGO_BIN_EXE_upshot"))
            .arg("serve")
            .env("UPSHOT_DATA_DIR", data_dir.path())
            .env("ROCKET_ADDRESS", "127.0.0.1")
            .env("ROCKET_PORT", port.to_string())
            .env("UPSHOT_PUBLIC_URL", &base)
            .env("UPSHOT_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !client.get(format!("{base}/readyz")).send().await.is_ok_and(|r| r.status() == 200) {
        assert!(Instant::now() < deadline, "the server did not get ready");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let ready = peak_rss_kib(server.0.id());
    let photo = large_noisy_jpeg(60);
    let size = photo.len() as u64;
    let opened = client
        .post(format!("{base}/api/v1/uploads"))
        .json(&json!({ "filename": "big.jpg", "byte_size": size, "content_type": "image/jpeg" }))
        .send()
        .await
        .unwrap();
    let session: Value = opened.json().await.unwrap();
    let put = client
        .put(session["url"].as_str().unwrap())
        .header("content-type", "image/jpeg")
        .body(photo)
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 200);
    let received = peak_rss_kib(server.0.id());
    let done = client
        .post(format!("{base}/api/v1/uploads/{}/complete", session["id"].as_str().unwrap()))
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), 201);
    let processed = peak_rss_kib(server.0.id());
    println!(
        "direct upload of {size} bytes: server peak RSS {ready} KiB ready, {received} KiB after the PUT, \
         {processed} KiB after completion"
    );
    assert!(received - ready < size / 1024 / 4, "the PUT streams to the store: {ready} → {received} KiB");
    assert!(processed - ready < 3 * size / 1024, "processing costs a bounded amount: {ready} → {processed} KiB");
}

/// A finished session is kept for `upload_session_retention_hours`, then removed with its answers; its image
/// stays. (0 hours: at the next sweep, which runs every quarter of the URL's lifetime, here 15 s.)
#[tokio::test]
async fn finished_sessions_are_purged_after_their_retention_and_their_images_stay() {
    let app = spawn_with(Stack::Embedded, |f| {
        f.merge(("upload_session_retention_hours", 0)).merge(("upload_url_ttl_secs", 60))
    })
    .await;
    let session = send(&app, "cat.jpg", fixture("cat.jpg"), "image/jpeg").await;
    let id = session["id"].as_str().unwrap();
    let image: Value = complete(&app, id).await.json().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut answer = app.get(&format!("/api/v1/uploads/{id}")).await.status();
    while answer != 404 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        answer = app.get(&format!("/api/v1/uploads/{id}")).await.status();
    }
    assert_eq!(answer, 404, "the finished session is gone");
    assert_eq!(complete(&app, id).await.status(), 404, "and so is its answer, delete token and all");
    let path = format!("/api/v1/images/{}", image["id"].as_str().unwrap());
    assert_eq!(app.get(&path).await.status(), 200, "the image stays");
}

/// Browsers give `.heif` files the type `image/heif`: a session declaring it is taken, and the photo stored
/// as the HEIC it is.
#[tokio::test]
async fn a_heif_declared_by_its_other_media_type_is_taken() {
    let app = spawn(Stack::Embedded).await;
    let session = send(&app, "IMG_0001.HEIF", fixture("cat-gps.heic"), "image/heif").await;
    let done = complete(&app, session["id"].as_str().unwrap()).await;
    assert_eq!(done.status(), 201);
    let image: Value = done.json().await.unwrap();
    assert_eq!((image["format"].as_str(), image["content_type"].as_str()), (Some("heic"), Some("image/heic")));
}
