//! The models, run inline: golden results on real photos, agreement with the reference preprocessing,
//! the session pool under load, and start-up checks.

use std::path::Path;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;
use upshot::inference::{classifier, face};

use crate::helpers::{error_code, file_form, fixture, spawn, spawn_with, Stack};

fn reference(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/reference").join(name);
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn reference_tensor(name: &str) -> Vec<f32> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/reference").join(name);
    std::fs::read(path).unwrap().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect()
}

fn manifest_model(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/manifest.json");
    let manifest: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    manifest["models"].as_array().unwrap().iter().find(|m| m["name"] == name).unwrap().clone()
}

fn decoded(name: &str) -> image::RgbImage {
    image::load_from_memory(&fixture(name)).unwrap().to_rgb8()
}

/// Largest and mean absolute difference between two tensors of equal length.
fn differences(a: &[f32], b: &[f32]) -> (f32, f32) {
    assert_eq!(a.len(), b.len());
    let max = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max);
    let mean = a.iter().zip(b).map(|(x, y)| (x - y).abs()).sum::<f32>() / a.len() as f32;
    (max, mean)
}

/// The Rust preprocessing against the Python reference (PIL's antialiased bilinear resize). Resampling
/// rounds differently, so values may differ by a few 8-bit levels at edges: in normalised units (one level is
/// about 0.017) the mean must stay under 0.01 and no value may be off by more than 0.15 (about 9 levels).
#[test]
fn classifier_preprocessing_matches_the_reference() {
    let spec: classifier::ClassifierPreprocessing =
        serde_json::from_value(manifest_model("mobilenet_v2")["preprocessing"].clone()).unwrap();
    let ours = classifier::preprocess(&decoded("cat.jpg"), &spec);
    assert_eq!(ours.shape(), [1, 3, 224, 224]);
    let (max, mean) = differences(ours.as_slice().unwrap(), &reference_tensor("cat_input_224.f32"));
    eprintln!("classifier input vs reference: max |d| {max:.4}, mean |d| {mean:.5}");
    assert!(mean < 0.01 && max < 0.15, "max {max}, mean {mean}");
}

#[test]
fn face_detector_preprocessing_matches_the_reference() {
    let (ours, letterbox) = face::preprocess(&decoded("astronaut.webp"), 128);
    assert_eq!((letterbox.width, letterbox.height, letterbox.offset_x), (128, 128, 0));
    let (max, mean) = differences(ours.as_slice().unwrap(), &reference_tensor("astronaut_input_128.f32"));
    eprintln!("face detector input vs reference: max |d| {max:.4}, mean |d| {mean:.5}");
    // Values are in [-1, 1]: one 8-bit level is about 0.008.
    assert!(mean < 0.01 && max < 0.1, "max {max}, mean {mean}");
}

async fn classify(app: &crate::helpers::TestApp, name: &str) -> Value {
    let response = app.upload_form("/api/v1/classify", file_form(name)).await;
    assert_eq!(response.status(), 200, "{name}");
    response.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn golden_results_on_real_photos() {
    let app = spawn(Stack::Embedded).await;
    let expected = reference("classifier.json");
    for image in expected["images"].as_array().unwrap() {
        let name = image["file"].as_str().unwrap().rsplit('/').next().unwrap();
        let body = classify(&app, name).await;
        let ours = &body["predictions"][0];
        let theirs = &image["top5"][0];
        assert_eq!(ours["label"], theirs["label"], "{name}: {body}");
        let delta = (ours["score"].as_f64().unwrap() - theirs["probability"].as_f64().unwrap()).abs();
        assert!(delta < 0.03, "{name}: score {} vs reference {}", ours["score"], theirs["probability"]);
        assert_eq!(body["predictions"].as_array().unwrap().len(), 5);
        assert_eq!(body["model"]["name"], "mobilenet_v2");
        assert_eq!(body["model"]["sha256"], manifest_model("mobilenet_v2")["sha256"]);
    }
    let cat = classify(&app, "cat.jpg").await;
    assert!(cat["predictions"][0]["label"].as_str().unwrap().contains("cat"));
    assert_eq!(cat["faces"], serde_json::json!([]), "no face on a cat");
    assert!(cat["selfie"].is_null());
    assert_eq!(cat["selfie_reason"], "no face found");
    assert_eq!(classify(&app, "coffee.png").await["predictions"][0]["label"], "espresso");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_face_gets_a_seasonal_colour_analysis() {
    let app = spawn(Stack::Embedded).await;
    let body = classify(&app, "astronaut.webp").await;
    let faces = body["faces"].as_array().unwrap();
    assert_eq!(faces.len(), 1, "{body}");
    let expected = &reference("face_detection.json")["images"][0]["detections"][0];
    for (ours, theirs) in faces[0]["bbox"].as_array().unwrap().iter().zip(expected["box"].as_array().unwrap()) {
        assert!((ours.as_f64().unwrap() - theirs.as_f64().unwrap()).abs() < 0.02, "{faces:?} vs {expected}");
    }
    assert_eq!(faces[0]["keypoints"].as_array().unwrap().len(), 6);
    let selfie = &body["selfie"];
    let seasons = [
        "Light Spring",
        "Warm Spring",
        "Bright Spring",
        "Light Summer",
        "Cool Summer",
        "Soft Summer",
        "Soft Autumn",
        "Warm Autumn",
        "Deep Autumn",
        "Deep Winter",
        "Cool Winter",
        "Bright Winter",
    ];
    assert!(seasons.contains(&selfie["season"].as_str().unwrap()), "{selfie}");
    let confidence = selfie["confidence"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&confidence), "{selfie}");
    assert_eq!(selfie["palette"].as_array().unwrap().len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_two_parallel_requests_share_two_sessions() {
    let app =
        spawn_with(Stack::Embedded, |f| f.merge(("inference_sessions", 2)).merge(("inference_wait_ms", 60_000))).await;
    let requests = (0..32).map(|i| {
        let name = ["cat.jpg", "coffee.png", "astronaut.webp", "rocket.gif"][i % 4];
        app.upload_form("/api/v1/classify", file_form(name))
    });
    let responses = futures_util::future::join_all(requests).await;
    let statuses: Vec<u16> = responses.iter().map(|r| r.status().as_u16()).collect();
    assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
    let ready: Value = app.get("/readyz").await.json().await.unwrap();
    assert_eq!(ready["checks"]["models"]["sessions"], 2);
    assert_eq!(ready["checks"]["models"]["idle_sessions"], 2, "every session came back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saturated_pool_answers_503_with_retry_after() {
    let app = spawn_with(Stack::Embedded, |f| {
        f.merge(("inference_sessions", 1)).merge(("inference_wait_ms", 0)).merge(("dedup", false))
    })
    .await;
    let responses =
        futures_util::future::join_all((0..16).map(|_| app.upload_form("/api/v1/classify", file_form("cat.jpg"))))
            .await;
    let mut busy = 0;
    for response in responses {
        match response.status().as_u16() {
            200 => {}
            503 => {
                assert_eq!(response.headers()["retry-after"], "1");
                let (_, code, _) = error_code(response).await;
                assert_eq!(code, "INFERENCE_BUSY");
                busy += 1;
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert!(busy > 0, "16 simultaneous requests on one session with no wait must turn some away");
    // Nothing was stored by the busy uploads either.
    let busy_uploads = futures_util::future::join_all((0..8).map(|_| app.upload("coffee.png"))).await;
    let stored = busy_uploads.iter().filter(|r| r.status() == 201).count() as i64;
    assert_eq!(app.image_rows().await, stored);
    // The models run while the objects are stored: a busy model removes them again.
    assert_eq!(app.object_keys().await.len() as i64, 2 * stored);
}

#[test]
fn a_damaged_model_stops_start_up_with_its_checksum() {
    let models = tempfile::tempdir().unwrap();
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
    for entry in std::fs::read_dir(&source).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), models.path().join(entry.file_name())).unwrap();
    }
    let damaged = models.path().join("face_detection_short_range.onnx");
    let mut bytes = std::fs::read(&damaged).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xFF;
    std::fs::write(&damaged, bytes).unwrap();
    let config = upshot::inference::EngineConfig {
        models_dir: models.path().to_owned(),
        ort_library: std::env::var("UPSHOT_ORT_LIB")
            .map_or_else(|_| upshot::config::DEFAULT_ORT_LIB.into(), Into::into),
        sessions: 1,
        threads_per_session: 1,
        wait: std::time::Duration::from_secs(1),
        top_k: 5,
    };
    let error = upshot::inference::Engine::load(&config).err().expect("a damaged model must not load").to_string();
    assert!(error.contains("face_detection_short_range.onnx") && error.contains("sha256"), "{error}");
}

#[test]
fn a_missing_runtime_library_stops_start_up_saying_how_to_fetch_it() {
    let data = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_upshot"))
        .arg("serve")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("UPSHOT_ORT_LIB", data.path().join("no-such-libonnxruntime.so"))
        .env("UPSHOT_DATA_DIR", data.path())
        .env("ROCKET_PORT", "0")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("scripts/fetch-onnxruntime.sh"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_classifies_each_frame_and_survives_bad_ones() {
    let app = spawn_with(Stack::Embedded, |f| f.merge(("max_upload_bytes", 64 * 1024))).await;
    let url = app.url("/api/v1/ws").replace("http://", "ws://");
    let (mut socket, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let mut answer = async |message: Message| -> Value {
        socket.send(message).await.unwrap();
        loop {
            match socket.next().await.unwrap().unwrap() {
                Message::Text(text) => return serde_json::from_str(&text).unwrap(),
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("unexpected {other:?}"),
            }
        }
    };
    let cat = answer(Message::Binary(fixture("cat.jpg"))).await;
    assert_eq!(cat["predictions"][0]["label"], "Egyptian cat");
    let bad = answer(Message::Binary(fixture("not-an-image.jpg"))).await;
    assert_eq!(bad["error"]["code"], "UNSUPPORTED_MEDIA_TYPE");
    let text = answer(Message::Text("hello".into())).await;
    assert_eq!(text["error"]["code"], "UNSUPPORTED_MEDIA_TYPE");
    let coffee = answer(Message::Binary(fixture("astronaut.webp"))).await;
    assert_eq!(coffee["faces"].as_array().unwrap().len(), 1, "the connection survived the bad frames");
    // A frame over the limit (64 KiB here) ends the connection.
    socket.send(Message::Binary(vec![0u8; 200 * 1024])).await.unwrap();
    let next = socket.next().await;
    assert!(
        matches!(next, None | Some(Err(_)) | Some(Ok(Message::Close(_)))),
        "an oversized frame must close the connection, got {next:?}"
    );
}
