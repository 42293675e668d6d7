//! Decoding at the working size instead of in full: the models say the same, phone photos are stored as taken
//! with their orientation alone and seen upright, and damaged files are refused at every scale.

use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use image::metadata::Orientation;
use image::{ImageDecoder, RgbImage};
use serde_json::Value;
use upshot::inference::{Analysis, Engine, EngineConfig};
use upshot::ingest::{self, IngestError, IngestPolicy, Upload};

use crate::helpers::{fixture, spawn, Stack, TestApp};

fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
        let ort_library =
            std::env::var("UPSHOT_ORT_LIB").map_or_else(|_| repo.join(upshot::config::DEFAULT_ORT_LIB), Into::into);
        let config = EngineConfig {
            models_dir: repo.join("models"),
            ort_library,
            sessions: 1,
            threads_per_session: 1,
            wait: Duration::from_secs(60),
            // Every label, so that scores can be compared whatever their rank.
            top_k: 1000,
        };
        Engine::load(&config).expect("models load")
    })
}

fn policy() -> IngestPolicy {
    IngestPolicy::new(&upshot::config::ImageSettings::default(), engine().input_size())
}

/// `source` enlarged to `width`×`height` and compressed as a camera would (4:2:0) at `quality`.
fn large_jpeg(source: &str, width: u32, height: u32, quality: i32) -> Vec<u8> {
    let large = image::load_from_memory(&fixture(source))
        .unwrap()
        .resize_exact(width, height, image::imageops::FilterType::Triangle)
        .to_rgb8();
    let pixels = turbojpeg::Image {
        pixels: large.as_raw().as_slice(),
        width: width as usize,
        pitch: width as usize * 3,
        height: height as usize,
        format: turbojpeg::PixelFormat::RGB,
    };
    turbojpeg::compress(pixels, quality, turbojpeg::Subsamp::Sub2x2).unwrap().to_vec()
}

async fn analyse(pixels: RgbImage) -> Analysis {
    engine().analyse(Arc::new(pixels)).await.unwrap()
}

/// Every pixel decoded, as the pipeline did before it decoded at the working size.
fn full_resolution(bytes: &[u8]) -> RgbImage {
    image::load_from_memory(bytes).unwrap().to_rgb8()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_working_size_keeps_the_models_answers() {
    let photos = [
        ("cat.jpg", fixture("cat.jpg")),
        ("coffee.png", fixture("coffee.png")),
        ("astronaut.webp", fixture("astronaut.webp")),
        ("cat 3608x2400 jpeg", large_jpeg("cat.jpg", 3608, 2400, 90)),
        ("astronaut 4000x3000 jpeg", large_jpeg("astronaut.webp", 4000, 3000, 90)),
        ("astronaut 2048x2048 jpeg", large_jpeg("astronaut.webp", 2048, 2048, 85)),
    ];
    let policy = policy();
    for (name, bytes) in photos {
        let full = analyse(full_resolution(&bytes)).await;
        let prepared = ingest::prepare(&Upload::new(bytes.clone()), &policy).unwrap();
        let (working_width, working_height) = prepared.pixels.dimensions();
        assert!(
            working_width.max(working_height) <= 1024,
            "{name}: a working image of {working_width}x{working_height}"
        );
        let working = analyse(Arc::unwrap_or_clone(prepared.pixels)).await;
        assert_eq!(working.predictions[0].label, full.predictions[0].label, "{name}");
        let mut largest_change = 0.0_f64;
        for prediction in &full.predictions {
            let same = working.predictions.iter().find(|p| p.label == prediction.label).expect("every label scored");
            let delta = (same.score - prediction.score).abs();
            largest_change = largest_change.max(delta);
            assert!(
                delta <= 0.02,
                "{name}: {} {} at full size, {} at the working size",
                same.label,
                prediction.score,
                same.score
            );
        }
        assert_eq!(working.faces.len(), full.faces.len(), "{name}");
        for (ours, theirs) in working.faces.iter().zip(&full.faces) {
            for (a, b) in ours.bbox.iter().zip(theirs.bbox) {
                assert!((a - b).abs() < 0.02, "{name}: face box {:?} vs {:?} at full size", ours.bbox, theirs.bbox);
            }
        }
        eprintln!(
            "{name}: working image {working_width}x{working_height}, top-1 {} {:.4} (full size {:.4}), largest \
             score change {largest_change:.4}, {} face(s)",
            working.predictions[0].label,
            working.predictions[0].score,
            full.predictions[0].score,
            working.faces.len()
        );
    }
}

/// The EXIF segment of the rotated fixture: orientation 6, camera make and model, a GPS position.
fn exif_segment() -> Vec<u8> {
    let fixture = fixture("cat-gps-rotated.jpg");
    let mut at = 2;
    loop {
        assert_eq!(fixture[at], 0xFF);
        let marker = fixture[at + 1];
        let length = u16::from_be_bytes([fixture[at + 2], fixture[at + 3]]) as usize;
        if marker == 0xE1 && fixture[at + 4..].starts_with(b"Exif\0\0") {
            return fixture[at..at + 2 + length].to_vec();
        }
        at += 2 + length;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_phone_photo_held_upright_is_stored_as_taken_with_its_orientation_alone() {
    // Stored sideways, 2048x1536 (whole 4:2:0 blocks, as phone cameras write), orientation 6, GPS and camera.
    let sideways = large_jpeg("astronaut.webp", 2048, 1536, 77);
    let mut photo = sideways[..2].to_vec();
    photo.extend_from_slice(&exif_segment());
    photo.extend_from_slice(&sideways[2..]);

    let app = spawn(Stack::Embedded).await;
    let response = app.upload_form("/api/v1/images", crate::helpers::bytes_form("phone.jpg", photo.clone())).await;
    assert_eq!(response.status(), 201);
    let body: Value = response.json().await.unwrap();
    // The size people see: upright.
    assert_eq!((body["width"].as_u64(), body["height"].as_u64()), (Some(1536), Some(2048)), "{body}");
    let stored = app.get(body["urls"]["file"].as_str().unwrap()).await.bytes().await.unwrap().to_vec();

    // The camera's bytes, not a copy compressed again or turned: its EXIF (GPS, camera) gives way to one
    // segment that holds the orientation alone, and everything after it is the upload's, byte for byte.
    let held = ingest::sanitize::orientation_segment(Orientation::Rotate90);
    assert_eq!(&stored[..2], &sideways[..2]);
    assert_eq!(stored[2..38], held);
    assert_eq!(&stored[38..], &sideways[2..], "the photo was rewritten");
    assert!(!stored.windows(13).any(|w| w == b"UpshotTestCam"));

    // A viewer that follows the orientation (every browser does) shows the sideways pixels turned upright.
    let mut decoder = image::codecs::jpeg::JpegDecoder::new(std::io::Cursor::new(&stored)).unwrap();
    assert_eq!(decoder.orientation().unwrap(), Orientation::Rotate90);
    let mut shown = image::load_from_memory(&stored).unwrap();
    shown.apply_orientation(Orientation::Rotate90);
    assert_eq!(shown.to_rgb8(), image::imageops::rotate90(&full_resolution(&sideways)));
    // The thumbnail and the models saw it upright.
    let thumbnail = app.get(body["urls"]["thumbnail"].as_str().unwrap()).await.bytes().await.unwrap();
    let thumbnail = image::load_from_memory(&thumbnail).unwrap();
    assert!(thumbnail.height() > thumbnail.width(), "{}x{}", thumbnail.width(), thumbnail.height());
}

fn refused(bytes: &[u8], policy: &IngestPolicy) -> bool {
    matches!(ingest::prepare(&Upload::new(bytes.to_vec()), policy), Err(IngestError::Corrupt(_)))
        && ingest::decode_upright(bytes, policy).is_err()
}

#[test]
fn truncated_or_corrupt_jpegs_are_refused_at_every_scale() {
    let policy = policy();
    let exif = exif_segment();
    let cases = [
        ("451x300, decoded in full", fixture("cat.jpg")),
        ("1000x750, decoded at 1/2", large_jpeg("cat.jpg", 1000, 750, 90)),
        ("2048x2048, decoded at 1/4", large_jpeg("astronaut.webp", 2048, 2048, 90)),
        ("4000x3000, decoded at 1/8", large_jpeg("astronaut.webp", 4000, 3000, 90)),
    ];
    for (name, jpeg) in cases {
        let rotated = [&jpeg[..2], &exif, &jpeg[2..]].concat();
        assert!(ingest::prepare(&Upload::new(jpeg.clone()), &policy).is_ok(), "{name}: the intact file");
        assert!(ingest::prepare(&Upload::new(rotated.clone()), &policy).is_ok(), "{name}: the intact file, rotated");
        for file in [&jpeg, &rotated] {
            for keep in [0.4, 0.7, 0.95, 0.999] {
                let truncated = &file[..(file.len() as f64 * keep) as usize];
                assert!(refused(truncated, &policy), "{name}: {}% of the bytes", keep * 100.0);
            }
            // An end-of-image marker in the middle of the scan: the rest of the image is missing.
            let mut cut = file.clone();
            let middle = cut.len() * 2 / 3;
            cut[middle..middle + 2].copy_from_slice(&[0xFF, 0xD9]);
            assert!(refused(&cut, &policy), "{name}: a marker in the middle of the scan");
        }
    }
}

async fn upload_status(app: &TestApp, photo: &[u8]) -> (u16, Option<String>, bool) {
    let response = app.upload_form("/api/v1/images", crate::helpers::bytes_form("big.jpg", photo.to_vec())).await;
    let retry_after = response.headers().contains_key("retry-after");
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap();
    (status, body["error"]["code"].as_str().map(str::to_owned), retry_after)
}

async fn budget_free(app: &TestApp) -> u64 {
    let metrics = app.get("/metrics").await.text().await.unwrap();
    let line = metrics.lines().find(|l| l.starts_with("upshot_upload_budget_free_bytes ")).expect("the gauge");
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_beyond_the_memory_budget_wait_then_are_told_to_come_back() {
    let photo = large_jpeg("astronaut.webp", 2000, 2000, 97);
    // Room for one such upload at a time.
    let budget = photo.len() as u64 * 3 / 2;
    let app = crate::helpers::spawn_with(Stack::Embedded, |figment| {
        figment
            .merge(("max_upload_bytes", budget))
            .merge(("upload_budget_bytes", budget))
            .merge(("direct_upload_max_bytes", budget))
            .merge(("cpu_wait_ms", 200))
            .merge(("database_timeout_secs", 10))
            .merge(("dedup", false))
    })
    .await;
    let whole = budget_free(&app).await;
    assert_eq!(whole, budget / 1024 * 1024);
    let browser = reqwest::Client::builder().cookie_store(true).build().unwrap();
    let form_token = crate::pages::csrf_token(&browser, &app, "/").await;

    // A writer holding the database keeps the first upload, and its room in the budget, in flight.
    let path = app.database_url.strip_prefix("sqlite://").unwrap().to_owned();
    let (locked_tx, locked) = std::sync::mpsc::channel();
    let (release, release_rx) = std::sync::mpsc::channel::<()>();
    let holder = std::thread::spawn(move || {
        use diesel::connection::SimpleConnection;
        use diesel::Connection;
        let mut conn = diesel::SqliteConnection::establish(&path).unwrap();
        conn.batch_execute("BEGIN EXCLUSIVE").unwrap();
        locked_tx.send(()).unwrap();
        release_rx.recv_timeout(Duration::from_secs(30)).unwrap();
        conn.batch_execute("COMMIT").unwrap();
    });
    locked.recv().unwrap();
    let first = {
        let (client, url, photo) = (app.client.clone(), app.url("/api/v1/images"), photo.clone());
        tokio::spawn(async move {
            client.post(url).multipart(crate::helpers::bytes_form("big.jpg", photo)).send().await.unwrap().status()
        })
    };
    let started = std::time::Instant::now();
    while budget_free(&app).await == whole {
        assert!(started.elapsed() < Duration::from_secs(10), "the first upload never took its room");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for _ in 0..3 {
        let (status, code, retry_after) = upload_status(&app, &photo).await;
        assert_eq!((status, code.as_deref(), retry_after), (503, Some("BUSY"), true));
    }
    // The page's form is told the same, with the same Retry-After.
    let form = reqwest::multipart::Form::new()
        .text("csrf_token", form_token)
        .part("file", reqwest::multipart::Part::bytes(photo.clone()).file_name("big.jpg"));
    let page = browser.post(app.url("/upload")).multipart(form).send().await.unwrap();
    assert_eq!(page.status(), 503);
    assert!(page.headers().contains_key("retry-after"), "{:?}", page.headers());
    assert!(page.text().await.unwrap().contains("BUSY"));
    release.send(()).unwrap();
    holder.join().unwrap();
    assert_eq!(first.await.unwrap(), 201);
    assert_eq!(upload_status(&app, &photo).await.0, 201, "the budget came back");

    // Nothing half-written: a row and two objects for each stored upload, nothing for the refused ones.
    assert_eq!(app.image_rows().await, 2);
    assert_eq!(app.object_keys().await.len(), 4);
    assert_eq!(budget_free(&app).await, whole);
}

#[test]
fn an_upload_budget_smaller_than_one_upload_stops_start_up() {
    let figment = upshot::config::AppConfig::figment()
        .merge(("max_upload_bytes", 8 << 20))
        .merge(("upload_budget_bytes", 4 << 20));
    let error = upshot::config::AppConfig::from_figment(figment).map(|_| ()).expect_err("refused").to_string();
    assert!(error.contains("upload_budget_bytes"), "{error}");
}

#[test]
fn a_direct_upload_limit_beyond_the_memory_budget_stops_start_up() {
    let figment = upshot::config::AppConfig::figment()
        .merge(("upload_budget_bytes", 64 << 20))
        .merge(("direct_upload_max_bytes", 200 << 20));
    let error = upshot::config::AppConfig::from_figment(figment).map(|_| ()).expect_err("refused").to_string();
    assert!(error.contains("direct_upload_max_bytes"), "{error}");
}

/// An animated GIF of `frames` frames, `side`×`side` pixels each.
fn animated_gif(frames: usize, side: u32) -> Vec<u8> {
    let mut bytes = Vec::new();
    {
        let mut encoder = image::codecs::gif::GifEncoder::new(&mut bytes);
        let frames = (0..frames).map(|n| {
            let pixels = image::RgbaImage::from_pixel(side, side, image::Rgba([(n * 7) as u8, 90, 200, 255]));
            image::Frame::new(pixels)
        });
        encoder.encode_frames(frames).unwrap();
    }
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn animation_bombs_are_refused_naming_the_limit() {
    let app = crate::helpers::spawn_with(Stack::Embedded, |figment| {
        figment.merge(("max_frames", 10)).merge(("max_animation_pixels", 40_000))
    })
    .await;
    let cases = [(animated_gif(11, 8), "max_frames"), (animated_gif(5, 100), "max_animation_pixels")];
    for (gif, limit) in cases {
        let response = app.upload_form("/api/v1/images", crate::helpers::bytes_form("bomb.gif", gif)).await;
        let (status, code, body) = crate::helpers::error_code(response).await;
        assert_eq!((status, code.as_str()), (422, "IMAGE_TOO_LARGE"), "{body}");
        assert!(body["error"]["message"].as_str().unwrap().contains(limit), "{body}");
    }
    // Within the limits, an animation is stored whole.
    let gif = animated_gif(3, 100);
    let response = app.upload_form("/api/v1/images", crate::helpers::bytes_form("ok.gif", gif.clone())).await;
    assert_eq!(response.status(), 201);
    assert_eq!(app.image_rows().await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_hangs_up_mid_upload_is_counted_as_such_not_as_too_large() {
    use tokio::io::AsyncWriteExt;
    let app = spawn(Stack::Embedded).await;
    let address = app.base.trim_start_matches("http://").to_owned();
    let mut socket = tokio::net::TcpStream::connect(&address).await.unwrap();
    let boundary = "upshot-abort";
    let head = format!(
        "POST /api/v1/images HTTP/1.1\r\nHost: {address}\r\nContent-Type: multipart/form-data; boundary={boundary}\r\n\
         Content-Length: 500000\r\n\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; \
         filename=\"x.jpg\"\r\nContent-Type: image/jpeg\r\n\r\n"
    );
    socket.write_all(head.as_bytes()).await.unwrap();
    socket.write_all(&fixture("cat.jpg")[..4096]).await.unwrap();
    drop(socket); // half a small upload, then gone
    let metrics = crate::helpers::eventually_metrics(&app, r#"route="/api/v1/images",status="499""#).await;
    assert!(!metrics.contains(r#"route="/api/v1/images",status="413""#), "{metrics}");
    assert_eq!(app.image_rows().await, 0);
}
