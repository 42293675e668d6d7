//! HEIC photos, as iPhones save them, and AVIF, in the same container: stored without their private metadata,
//! shown upright, checked for size before a pixel is decoded.

use serde_json::Value;

use crate::helpers::{bytes_form, error_code, fixture, spawn, Stack};

crate::on_both_stacks!(
    a_heic_photo_is_stored_without_private_metadata_and_upright,
    avif_photos_of_8_and_10_bits_and_with_alpha_are_stored_and_read_right,
    hostile_heic_files_are_refused,
    a_photo_far_larger_than_a_screen_gets_a_display_rendition,
);

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

async fn download(app: &crate::helpers::TestApp, url: &Value) -> (reqwest::header::HeaderMap, Vec<u8>) {
    let response = app.get(url.as_str().unwrap()).await;
    assert_eq!(response.status(), 200);
    (response.headers().clone(), response.bytes().await.unwrap().to_vec())
}

/// What exiftool reads in `bytes`, as `group:tag` names. `None` when exiftool is not installed, which the full
/// suite (`scripts/test.sh`, which installs it) does not allow.
fn exiftool_tags(bytes: &[u8]) -> Option<Vec<String>> {
    let file = tempfile::Builder::new().suffix(".heic").tempfile().unwrap();
    std::fs::write(file.path(), bytes).unwrap();
    let output = match std::process::Command::new("exiftool").args(["-j", "-G1", "-a"]).arg(file.path()).output() {
        Ok(output) => output,
        Err(error) if std::env::var_os("UPSHOT_REQUIRE_EXIFTOOL").is_some() => panic!("exiftool: {error}"),
        Err(_) => {
            eprintln!("exiftool is not installed: its check of stored HEIC metadata is skipped");
            return None;
        }
    };
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let tags: Vec<serde_json::Map<String, Value>> = serde_json::from_slice(&output.stdout).unwrap();
    Some(tags[0].keys().cloned().collect())
}

async fn a_heic_photo_is_stored_without_private_metadata_and_upright(stack: Stack) {
    let app = spawn(stack).await;
    let upload = fixture("cat-gps.heic");
    assert!(contains(&upload, b"UpshotTestCam") && contains(&upload, b"UpshotSecretXmp"));
    let before = exiftool_tags(&upload);
    if let Some(tags) = &before {
        assert!(tags.iter().any(|tag| tag.contains("GPSLatitude")), "the fixture has GPS: {tags:?}");
    }
    let response = app.upload_form("/api/v1/images", bytes_form("IMG_0001.HEIC", upload.clone())).await;
    assert_eq!(response.status(), 201);
    let body: Value = response.json().await.unwrap();
    assert_eq!((body["format"].as_str(), body["content_type"].as_str()), (Some("heic"), Some("image/heic")));
    // Stored 451x300 and turned a quarter by the container (irot): upright it is 300 wide, 451 high.
    assert_eq!((body["width"].as_i64(), body["height"].as_i64()), (Some(300), Some(451)));
    assert_eq!(body["predictions"].as_array().unwrap().len(), 5, "the models ran: {body}");

    let (headers, stored) = download(&app, &body["urls"]["file"]).await;
    assert_eq!(headers["content-type"], "image/heic");
    assert_eq!(stored.len(), upload.len(), "blanked in place: no offset moved");
    assert_eq!(upshot::domain::sha256_hex(&stored), body["sha256"].as_str().unwrap());
    assert_nothing_private(&stored);
    let decoded = heifer::decode(&stored).expect("the stored file is a valid HEIC");
    assert_eq!((decoded.width, decoded.height), (300, 451));

    let (headers, thumbnail) = download(&app, &body["urls"]["thumbnail"]).await;
    assert_eq!(headers["content-type"], "image/jpeg");
    let thumbnail = image::load_from_memory(&thumbnail).unwrap();
    assert!(thumbnail.height() > thumbnail.width(), "the thumbnail is upright");
    // Browsers cannot show HEIC: the page and `urls.display` give a JPEG rendition of it, upright.
    let id = body["id"].as_str().unwrap();
    assert_eq!(body["urls"]["display"], format!("/api/v1/images/{id}/display"));
    let names: Vec<&str> = body["renditions"].as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["thumbnail", "display"]);
    assert_eq!(body["renditions"][1]["content_type"], "image/jpeg");
    let (headers, shown) = download(&app, &body["urls"]["display"]).await;
    assert_eq!(headers["content-type"], "image/jpeg");
    let shown = image::load_from_memory(&shown).unwrap();
    assert_eq!((shown.width(), shown.height()), (300, 451));
    let page = app.get(body["urls"]["page"].as_str().unwrap()).await.text().await.unwrap().replace("&#x2F;", "/");
    assert!(page.contains(&format!("src=\"/api/v1/images/{id}/display\"")), "the page shows the rendition");
    let keys = app.object_keys().await;
    let expected = ["display.jpg", "original.heic", "thumb.jpg"].map(|name| format!("images/{id}/{name}"));
    assert_eq!(keys, expected);

    // A delete takes the rendition too.
    let deleted = app
        .client
        .delete(app.url(&format!("/api/v1/images/{id}")))
        .header("X-Delete-Token", body["delete_token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);
    assert!(app.object_keys().await.is_empty());
}

async fn a_photo_far_larger_than_a_screen_gets_a_display_rendition(stack: Stack) {
    let app = spawn(stack).await;
    let wide = image::RgbImage::from_fn(6000, 1200, |x, y| image::Rgb([(x / 24) as u8, (y / 5) as u8, 80]));
    let mut jpeg = Vec::new();
    wide.write_to(&mut std::io::Cursor::new(&mut jpeg), image::ImageFormat::Jpeg).unwrap();
    let response = app.upload_form("/api/v1/images", bytes_form("panorama.jpg", jpeg)).await;
    assert_eq!(response.status(), 201);
    let body: Value = response.json().await.unwrap();
    assert_eq!((body["width"].as_i64(), body["height"].as_i64()), (Some(6000), Some(1200)));
    let (_, shown) = download(&app, &body["urls"]["display"]).await;
    let shown = image::load_from_memory(&shown).unwrap();
    assert_eq!((shown.width(), shown.height()), (2048, 410), "scaled to fit 2048");

    // A photo a browser shows as it is needs none: `urls.display` is its file.
    let cat = app.upload_ok("cat.jpg").await;
    assert_eq!(cat["urls"]["display"], cat["urls"]["file"]);
    assert_eq!(cat["renditions"].as_array().unwrap().len(), 1, "the thumbnail alone");
}

fn gradient(width: u32, height: u32) -> heifer::Image {
    let pixels: Vec<u16> = (0..width * height)
        .flat_map(|i| {
            let (x, y) = (i % width, i / width);
            [(x * 255 / width) as u16, (y * 255 / height) as u16, 96, 255]
        })
        .collect();
    heifer::Image { width, height, bit_depth: 8, has_alpha: false, data: pixels }
}

/// The EXIF of the JPEG fixture: GPS, camera make and model.
fn camera_metadata() -> heifer::Metadata {
    let mut decoder = image::ImageReader::new(std::io::Cursor::new(fixture("cat-gps-rotated.jpg")))
        .with_guessed_format()
        .unwrap()
        .into_decoder()
        .unwrap();
    let exif = image::ImageDecoder::exif_metadata(&mut decoder).unwrap().expect("the fixture's EXIF");
    heifer::Metadata { exif: Some(exif), xmp: None, icc_profile: None }
}

const QUICK: heifer::EncodeOptions = heifer::EncodeOptions { quality: 30, max_threads: 0 };

/// A 12 MP photo stored as a grid of tiles, as iPhones store theirs.
fn phone_heic(width: u32, height: u32) -> Vec<u8> {
    heifer::encode_with_metadata(&gradient(width, height), &camera_metadata(), &QUICK).unwrap()
}

/// A photo with an HDR gain map: an auxiliary image beside the primary one, which is not decoded.
fn hdr_heic(width: u32, height: u32) -> Vec<u8> {
    let base = gradient(width, height);
    let linear = |v: u16| (f32::from(v) / 255.0).powf(2.2) * 3.0;
    let data = base.data.chunks_exact(4).flat_map(|p| [linear(p[0]), linear(p[1]), linear(p[2])]).collect();
    let hdr = heifer::HdrImage { width, height, headroom: 3.0, data };
    heifer::encode_hdr_with_metadata(&base, &hdr, &camera_metadata(), &QUICK).unwrap()
}

/// The file with every image's declared size (`ispe`) made 100,000 x 100,000.
fn declaring_huge_size(file: &[u8]) -> Vec<u8> {
    let mut bomb = file.to_vec();
    let mut at = 0;
    while let Some(found) = bomb[at..].windows(4).position(|w| w == b"ispe") {
        let size = at + found + 8; // past the type, the version and the flags
        bomb[size..size + 4].copy_from_slice(&100_000u32.to_be_bytes());
        bomb[size + 4..size + 8].copy_from_slice(&100_000u32.to_be_bytes());
        at = size + 8;
    }
    bomb
}

async fn hostile_heic_files_are_refused(stack: Stack) {
    let app = spawn(stack).await;
    let phone = phone_heic(4032, 3024);
    let file = heifer::heifer_isobmff::HeifFile::parse(&phone).unwrap();
    assert_eq!(&file.primary_item().unwrap().item_type.0, b"grid", "stored as tiles");
    let response = app.upload_form("/api/v1/images", bytes_form("phone.heic", phone.clone())).await;
    assert_eq!(response.status(), 201);
    let body: Value = response.json().await.unwrap();
    assert_eq!((body["width"].as_i64(), body["height"].as_i64()), (Some(4032), Some(3024)));
    let (_, stored) = download(&app, &body["urls"]["file"]).await;
    assert!(!contains(&stored, b"UpshotTestCam") && !contains(&stored, b"GPS"), "EXIF blanked");

    let hdr = hdr_heic(1024, 768);
    let items: Vec<[u8; 4]> =
        heifer::heifer_isobmff::HeifFile::parse(&hdr).unwrap().items.iter().map(|item| item.item_type.0).collect();
    assert!(items.contains(b"tmap"), "the file has a gain map: {items:?}");
    let response = app.upload_form("/api/v1/images", bytes_form("hdr.heic", hdr)).await;
    assert_eq!(response.status(), 201);
    let body: Value = response.json().await.unwrap();
    assert_eq!((body["width"].as_i64(), body["height"].as_i64()), (Some(1024), Some(768)));

    // Cut short.
    let cat = fixture("cat-gps.heic");
    let truncated = cat[..cat.len() * 3 / 5].to_vec();
    let response = app.upload_form("/api/v1/images", bytes_form("cut.heic", truncated)).await;
    let (status, code, _) = error_code(response).await;
    assert_eq!((status, code.as_str()), (422, "CORRUPT_IMAGE"));

    // A bomb: every image declares 100,000 x 100,000 pixels. Refused from the header, before any decoding.
    let response = app.upload_form("/api/v1/images", bytes_form("bomb.heic", declaring_huge_size(&cat))).await;
    let (status, code, _) = error_code(response).await;
    assert_eq!((status, code.as_str()), (422, "IMAGE_TOO_LARGE"));

    // Something that says it is HEIF and is not.
    let mut fake = b"\0\0\0\x18ftypheic\0\0\0\0mif1heic".to_vec();
    fake.extend_from_slice(&[0u8; 64]);
    let response = app.upload_form("/api/v1/images", bytes_form("fake.heic", fake)).await;
    let (status, code, _) = error_code(response).await;
    assert_eq!((status, code.as_str()), (422, "CORRUPT_IMAGE"));
    assert_eq!(app.image_rows().await, 2, "only the phone photos were stored");
}

/// How far, in mean levels, the thumbnail of the upload `body` is from that of the fixture `reference` (the
/// same pixels in another format), uploaded to the same server.
async fn thumbnail_difference(app: &crate::helpers::TestApp, body: &Value, reference: &str) -> f64 {
    let reference = app.upload_ok(reference).await;
    let (_, ours) = download(app, &body["urls"]["thumbnail"]).await;
    let (_, theirs) = download(app, &reference["urls"]["thumbnail"]).await;
    let (ours, theirs) =
        (image::load_from_memory(&ours).unwrap().to_rgba8(), image::load_from_memory(&theirs).unwrap().to_rgba8());
    assert_eq!(ours.dimensions(), theirs.dimensions());
    let total: u64 = ours.as_raw().iter().zip(theirs.as_raw()).map(|(x, y)| u64::from(x.abs_diff(*y))).sum();
    total as f64 / ours.as_raw().len() as f64
}

/// Neither the bytes nor exiftool show anything of the camera, the place or the XMP.
fn assert_nothing_private(stored: &[u8]) {
    for secret in [&b"UpshotTestCam"[..], b"UpshotSecretXmp"] {
        assert!(!contains(stored, secret), "{:?} survived", String::from_utf8_lossy(secret));
    }
    if let Some(tags) = exiftool_tags(stored) {
        let private: Vec<&String> = tags
            .iter()
            .filter(|tag| ["GPS", "Make", "Model", "DateTime", "XMP-"].iter().any(|p| tag.contains(p)))
            .collect();
        assert!(private.is_empty(), "exiftool still reads {private:?}");
    }
}

async fn avif_photos_of_8_and_10_bits_and_with_alpha_are_stored_and_read_right(stack: Stack) {
    let app = spawn(stack).await;
    // 8 bits 4:2:0 by libavif, stored sideways with its rotation in the container, EXIF (GPS) and XMP.
    let upload = fixture("cat-gps.avif");
    let response = app.upload_form("/api/v1/images", bytes_form("cat.avif", upload.clone())).await;
    assert_eq!(response.status(), 201);
    let body: Value = response.json().await.unwrap();
    assert_eq!((body["format"].as_str(), body["content_type"].as_str()), (Some("avif"), Some("image/avif")));
    assert_eq!((body["width"].as_i64(), body["height"].as_i64()), (Some(300), Some(451)));
    assert_eq!(body["urls"]["display"], body["urls"]["file"], "browsers show AVIF: no rendition");
    assert_eq!(body["predictions"][0]["label"], "Egyptian cat", "the models see the cat: {body}");
    let (headers, stored) = download(&app, &body["urls"]["file"]).await;
    assert_eq!(headers["content-type"], "image/avif");
    assert_eq!(stored.len(), upload.len(), "blanked in place");
    assert_nothing_private(&stored);
    // Its thumbnail looks like the JPEG's of the same pixels, upright.
    let difference = thumbnail_difference(&app, &body, "cat-gps-rotated.jpg").await;
    assert!(difference < 6.0, "the AVIF's thumbnail differs from the JPEG's by {difference} levels");

    // 10 bits, 4:4:4 by avifenc: the pixels of the PNG it was made from, within lossy coding.
    let body = app.upload_ok("coffee-10bit.avif").await;
    assert_eq!((body["width"].as_i64(), body["height"].as_i64()), (Some(320), Some(213)));
    assert_eq!(body["predictions"][0]["label"], "espresso", "{body}");
    let difference = thumbnail_difference(&app, &body, "coffee.png").await;
    assert!(difference < 4.0, "the 10-bit AVIF's thumbnail differs from the PNG's by {difference} levels");

    // An alpha plane: the thumbnail keeps the transparency, as the PNG's does.
    let body = app.upload_ok("logo-alpha.avif").await;
    assert_eq!(body["thumbnail_content_type"], "image/png", "{body}");
    let difference = thumbnail_difference(&app, &body, "logo-alpha.png").await;
    assert!(difference < 6.0, "the AVIF logo differs from the PNG's by {difference} levels");

    // A grid of 2x2 tiles, each in its place.
    let body = app.upload_ok("coffee-grid.avif").await;
    assert_eq!((body["width"].as_i64(), body["height"].as_i64()), (Some(320), Some(212)));
    let (_, thumbnail) = download(&app, &body["urls"]["thumbnail"]).await;
    let thumbnail = image::load_from_memory(&thumbnail).unwrap().to_rgb8();
    let png = image::load_from_memory(&fixture("coffee.png")).unwrap().crop_imm(0, 0, 320, 212).to_rgb8();
    assert_eq!(thumbnail.dimensions(), png.dimensions());
    let total: u64 = thumbnail.as_raw().iter().zip(png.as_raw()).map(|(x, y)| u64::from(x.abs_diff(*y))).sum();
    let difference = total as f64 / png.as_raw().len() as f64;
    assert!(difference < 6.0, "the grid differs from the PNG by {difference} levels");

    // A bomb: its images declare 100,000 x 100,000 pixels; refused from the header.
    let cat = fixture("cat-gps.avif");
    let response = app.upload_form("/api/v1/images", bytes_form("bomb.avif", declaring_huge_size(&cat))).await;
    let (status, code, _) = error_code(response).await;
    assert_eq!((status, code.as_str()), (422, "IMAGE_TOO_LARGE"));

    // Cut short: refused, nothing stored of it.
    let response = app.upload_form("/api/v1/images", bytes_form("cut.avif", cat[..cat.len() * 3 / 5].to_vec())).await;
    let (status, code, _) = error_code(response).await;
    assert_eq!((status, code.as_str()), (422, "CORRUPT_IMAGE"));
}
