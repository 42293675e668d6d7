//! `upshot reconcile`: the database and the object store compared in both directions, a page at a time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use upshot::db::image_rows;
use upshot::ingest::IngestPolicy;
use upshot::reconcile::{check, Options};
use upshot::store::{LocalStore, ObjectStore, S3Config, S3Store};

use crate::helpers::{spawn, spawn_with, Stack, TestApp};

crate::on_both_stacks!(
    finds_orphans_and_images_missing_objects,
    knows_display_renditions,
    uploads_racing_a_repair_keep_their_objects,
    the_command_checks_many_objects_in_flat_memory
);

/// The test server's store, opened as a second process would open it.
async fn store_of(app: &TestApp) -> Arc<dyn ObjectStore> {
    match &app.bucket {
        None => Arc::new(LocalStore::open(app.data_dir.path().join("objects")).await.unwrap()),
        Some(bucket) => Arc::new(
            S3Store::connect(
                &S3Config {
                    bucket: bucket.clone(),
                    prefix: "uploads/".to_owned(),
                    region: None,
                    endpoint_url: Some(std::env::var("UPSHOT_TEST_AWS_ENDPOINT").unwrap()),
                    force_path_style: true,
                    timeout: Duration::from_secs(20),
                },
                upshot::aws::SharedConfig::default().get().await,
            )
            .await
            .unwrap(),
        ),
    }
}

/// How the test servers decode and make thumbnails (their settings are the defaults).
fn policy() -> Arc<IngestPolicy> {
    let config = upshot::config::AppConfig::from_figment(
        upshot::config::AppConfig::figment().merge(("secret_key", crate::helpers::SECRET)),
    )
    .unwrap();
    Arc::new(IngestPolicy::of_config(&config).unwrap())
}

fn decode(bytes: &[u8]) -> image::RgbImage {
    image::load_from_memory(bytes).unwrap().to_rgb8()
}

fn options(grace: Duration) -> Options {
    // Pages of two: every listing and every row query pages several times.
    Options { grace, page: 2, stuck_after: Duration::from_secs(3600), repair: false, policy: policy() }
}

fn repair(grace: Duration) -> Options {
    Options { repair: true, ..options(grace) }
}

async fn finds_orphans_and_images_missing_objects(stack: Stack) {
    let app = spawn(stack).await;
    let store = store_of(&app).await;
    let clean = check(&app.db, store.clone(), &options(Duration::ZERO)).await.unwrap();
    assert!(clean.is_clean() && clean.objects_scanned == 0, "{clean:?}");

    let kept = app.upload_ok("cat.jpg").await["id"].as_str().unwrap().to_owned();
    let lost = app.upload_ok("coffee.png").await["id"].as_str().unwrap().to_owned();
    let mut thumbless = Vec::new();
    for name in ["logo-alpha.png", "cat-gps-rotated.jpg", "astronaut.webp"] {
        thumbless.push(app.upload_ok(name).await["id"].as_str().unwrap().to_owned());
    }
    let turned = thumbless[1].clone();
    thumbless.sort();
    let row = |id: &str| {
        let id = id.to_owned();
        let db = app.db.clone();
        async move { db.run(move |conn| image_rows::find_any(conn, &id)).await.unwrap().unwrap() }
    };
    store.delete(&row(&lost).await.original_key).await.unwrap();
    let mut thumbnails = Vec::new();
    for id in &thumbless {
        let bytes = app.get(&format!("/api/v1/images/{id}/thumbnail")).await.bytes().await.unwrap();
        let key = row(id).await.thumbnail_key;
        store.delete(&key).await.unwrap();
        thumbnails.push((id.clone(), bytes));
    }
    let stray = "images/0123456789abcdef0123456789abcdef/original.jpg";
    store.put(stray, bytes::Bytes::from_static(b"left by hand"), "image/jpeg").await.unwrap();
    // An upload whose insert fails takes its objects away again: nothing is left for the check to find.
    app.execute_sql("ALTER TABLE outbox RENAME TO outbox_away").await;
    assert_eq!(app.upload("rocket.gif").await.status().as_u16(), 500);
    app.execute_sql("ALTER TABLE outbox_away RENAME TO outbox").await;

    let report = check(&app.db, store.clone(), &options(Duration::ZERO)).await.unwrap();
    assert_eq!((report.objects_scanned, report.rows_scanned), (7, 5), "{report:?}");
    let orphans: Vec<&str> = report.orphans.iter().map(|o| o.key.as_str()).collect();
    assert_eq!(orphans, [stray]);
    assert_eq!(report.missing_originals, std::slice::from_ref(&lost));
    assert_eq!(report.missing_thumbnails, thumbless);
    assert!(!report.is_clean());
    assert!(!report.missing_originals.contains(&kept));

    // Within the grace period, an unreferenced object may belong to an upload still writing its row.
    let report = check(&app.db, store.clone(), &options(Duration::from_secs(3600))).await.unwrap();
    assert_eq!((report.orphan_count, report.recent_unreferenced), (0, 1));
    assert_eq!(report.missing_original_count, 1, "missing objects are reported whatever their age");
    let notifications = app.outbox_rows().await;
    let report = check(&app.db, store.clone(), &repair(Duration::from_secs(3600))).await.unwrap();
    assert_eq!(report.orphans_removed, 0, "nothing within the grace period is removed");
    assert_eq!(report.marked_missing, 1, "a lost image is marked whatever the grace period");
    assert_eq!(report.thumbnails_regenerated, 3, "{report:?}");
    for (id, made_at_upload) in &thumbnails {
        let made_again = app.get(&format!("/api/v1/images/{id}/thumbnail")).await.bytes().await.unwrap();
        if id != &turned {
            assert!(made_again == made_at_upload, "the thumbnail of {id} is made again byte for byte");
            continue;
        }
        // A photo turned upright at upload was decoded before its turn; its thumbnail is made again from the
        // upright original, so the IDCT rounds differently: same size, pixels within a few levels.
        let (again, before) = (decode(&made_again), decode(made_at_upload));
        assert_eq!(again.dimensions(), before.dimensions());
        let levels = again.as_raw().iter().zip(before.as_raw()).map(|(x, y)| u64::from(x.abs_diff(*y)));
        let mean = levels.sum::<u64>() as f64 / again.as_raw().len() as f64;
        assert!(mean < 3.0, "the turned photo's thumbnail is made again within {mean} levels");
    }

    let report = check(&app.db, store.clone(), &repair(Duration::ZERO)).await.unwrap();
    assert_eq!((report.orphan_count, report.orphans_removed, report.marked_missing), (1, 1, 0));
    assert!(!app.object_keys().await.contains(&stray.to_owned()));
    let after = check(&app.db, store.clone(), &options(Duration::ZERO)).await.unwrap();
    assert!(after.is_clean(), "the lost image is marked, the thumbnails are back: {after:?}");
    assert_eq!(after.missing_images, 1, "a marked image stays lost until someone deletes it");
    // Every instance reports the last run, whichever ran it.
    let metrics = app.get("/metrics").await.text().await.unwrap();
    for series in ["upshot_reconcile_orphans 0\n", "upshot_reconcile_missing 1\n", "upshot_reconcile_repaired 0\n"] {
        assert!(metrics.contains(series), "{series} in {metrics}");
    }
    assert!(metrics.contains("upshot_reconcile_last_success_timestamp 1"), "{metrics}");

    // The lost image answers 410 with its code, on the API and its page; nothing of it is deleted.
    let (status, code, _) = crate::helpers::error_code(app.get(&format!("/api/v1/images/{lost}")).await).await;
    assert_eq!((status, code.as_str()), (410, "IMAGE_MISSING"));
    let file = app.get(&format!("/api/v1/images/{lost}/thumbnail")).await;
    assert_eq!(file.status().as_u16(), 410);
    let page = app.get(&format!("/images/{lost}")).await;
    assert_eq!(page.status().as_u16(), 410);
    assert!(page.text().await.unwrap().contains("IMAGE_MISSING"));
    assert_eq!(app.get(&format!("/api/v1/images/{kept}")).await.status().as_u16(), 200);
    // The admin gallery lists it above the others, with a way to delete its record.
    let admin = crate::pages::browser();
    assert_eq!(crate::pages::sign_in(&admin, &app, crate::helpers::ADMIN_KEY).await.status(), 303);
    let gallery = admin.get(app.url("/admin/images")).send().await.unwrap().text().await.unwrap();
    assert!(gallery.contains("1 lost image<") && gallery.contains(&format!("/admin/images/{lost}/delete")));
    assert_eq!(app.image_rows().await, 5);
    assert_eq!(app.outbox_rows().await, notifications, "the notification history is untouched");

    // Deleting the record is how a person closes the case.
    let token = crate::pages::csrf_token(&admin, &app, "/admin/images").await;
    let deleted = admin
        .post(app.url(&format!("/admin/images/{lost}/delete")))
        .form(&[("csrf_token", token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 303);
    assert_eq!(app.get(&format!("/api/v1/images/{lost}")).await.status().as_u16(), 404);
    let after = check(&app.db, store.clone(), &options(Duration::ZERO)).await.unwrap();
    assert!(after.is_clean() && after.missing_images == 0, "{after:?}");
}

/// A HEIC's display rendition is one of its objects: not an orphan while its row names it, reported and made
/// again when it is gone, an orphan once the row is gone.
async fn knows_display_renditions(stack: Stack) {
    let app = spawn(stack).await;
    let store = store_of(&app).await;
    let body = app.upload_ok("cat-gps.heic").await;
    let id = body["id"].as_str().unwrap().to_owned();
    let clean = check(&app.db, store.clone(), &options(Duration::ZERO)).await.unwrap();
    assert!(clean.is_clean() && clean.objects_scanned == 3, "{clean:?}");

    let made_at_upload = app.get(&format!("/api/v1/images/{id}/display")).await.bytes().await.unwrap();
    let record = {
        let id = id.clone();
        app.db.run(move |conn| image_rows::find_any(conn, &id)).await.unwrap().unwrap()
    };
    let display_key = record.display_key.clone().expect("a HEIC has a display rendition");
    store.delete(&display_key).await.unwrap();
    let report = check(&app.db, store.clone(), &options(Duration::ZERO)).await.unwrap();
    assert_eq!(report.missing_thumbnails, std::slice::from_ref(&id), "{report:?}");
    let report = check(&app.db, store.clone(), &repair(Duration::ZERO)).await.unwrap();
    assert_eq!(report.thumbnails_regenerated, 1, "{report:?}");
    let made_again = app.get(&format!("/api/v1/images/{id}/display")).await.bytes().await.unwrap();
    assert!(made_again == made_at_upload, "the rendition is made again byte for byte");
    assert!(check(&app.db, store.clone(), &options(Duration::ZERO)).await.unwrap().is_clean());

    // Without its row, the rendition is an orphan like the other objects.
    let row_id = id.clone();
    app.db
        .run(move |conn| {
            use diesel::prelude::*;
            diesel::delete(upshot::db::schema::images::table.filter(upshot::db::schema::images::id.eq(&row_id)))
                .execute(conn)?;
            Ok(())
        })
        .await
        .unwrap();
    let report = check(&app.db, store.clone(), &repair(Duration::ZERO)).await.unwrap();
    assert_eq!(report.orphan_count, 3, "{report:?}");
    assert!(app.object_keys().await.is_empty());
}

/// A repair with no grace period at all, over and over while uploads run: every upload keeps its objects,
/// because an upload lists its keys as pending before it writes them.
async fn uploads_racing_a_repair_keep_their_objects(stack: Stack) {
    let app = spawn_with(stack, |figment| figment.merge(("dedup", false))).await;
    let store = store_of(&app).await;
    let uploads = async {
        for name in ["cat.jpg", "coffee.png", "logo-alpha.png", "cat-gps-rotated.jpg", "astronaut.webp", "rocket.gif"] {
            app.upload_ok(name).await;
        }
    };
    let repairs = async {
        let mut runs = 0;
        let mut removed = 0;
        while runs < 200 {
            removed += check(&app.db, store.clone(), &repair(Duration::ZERO)).await.unwrap().orphans_removed;
            runs += 1;
            if app.image_rows().await == 6 {
                break;
            }
        }
        (runs, removed)
    };
    let ((), (runs, removed)) = tokio::join!(uploads, repairs);
    assert!(runs > 1, "the repair ran while the uploads did");
    assert_eq!(removed, 0);
    let report = check(&app.db, store, &options(Duration::ZERO)).await.unwrap();
    assert_eq!((report.rows_scanned, report.objects_scanned), (6, 12), "{report:?}");
    assert!(report.is_clean(), "{report:?}");
}

/// Two runs at once on PostgreSQL: the second exits at once, saying another holds the lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_reconcile_at_a_time_across_the_fleet() {
    let app = spawn(Stack::Cloud).await;
    let url = upshot::config::DatabaseUrl::parse(&app.database_url).unwrap();
    let held = upshot::db::try_fleet_lock(&url, upshot::reconcile::FLEET_LOCK_ID).unwrap();
    assert!(held.is_some());
    let second = upshot::db::try_fleet_lock(&url, upshot::reconcile::FLEET_LOCK_ID).unwrap();
    assert!(second.is_none(), "the lock is taken");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_upshot"))
        .args(["reconcile", "--repair"])
        .env("UPSHOT_DATABASE_URL", &app.database_url)
        .env("UPSHOT_DATA_DIR", app.data_dir.path())
        .env("UPSHOT_SECRET_KEY", crate::helpers::SECRET)
        .env("UPSHOT_LOG", "warn")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(String::from_utf8_lossy(&output.stdout).contains("another reconcile is running"));
    drop(held);
    assert!(upshot::db::try_fleet_lock(&url, upshot::reconcile::FLEET_LOCK_ID).unwrap().is_some(), "released");
}

/// Copies of the stored image `template` as `count` more rows, ids (and keys) `{n:032x}` for n in 1..=count.
async fn copy_rows(app: &TestApp, stack: Stack, template: &str, count: usize) {
    let id = match stack {
        Stack::Embedded => "printf('%032x', n)",
        Stack::Cloud => "lpad(to_hex(n), 32, '0')",
    };
    let sql = format!(
        "WITH RECURSIVE seq(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM seq WHERE n < {count}) \
         INSERT INTO images (id, sha256, source_sha256, original_filename, description, format, content_type, \
           byte_size, width, height, original_key, thumbnail_key, thumbnail_content_type, predictions, model_name, \
           model_version, status, delete_token_hash, idempotency_key, created_at, model_sha256, inference_ms, \
           analysis, top_label) \
         SELECT {id}, sha256, source_sha256, original_filename, description, format, content_type, byte_size, \
           width, height, 'images/' || {id} || '/original.jpg', 'images/' || {id} || '/thumb.jpg', \
           thumbnail_content_type, predictions, model_name, model_version, status, delete_token_hash, NULL, \
           created_at, model_sha256, inference_ms, analysis, top_label \
         FROM images, seq WHERE images.id = '{template}'"
    );
    app.db
        .run(move |conn| {
            use diesel::connection::SimpleConnection;
            Ok(conn.batch_execute(&sql)?)
        })
        .await
        .unwrap();
}

/// Writes small objects at `keys`, many at a time.
async fn put_all(store: &Arc<dyn ObjectStore>, keys: Vec<String>) {
    for chunk in keys.chunks(64) {
        let mut puts = tokio::task::JoinSet::new();
        for key in chunk {
            let (store, key) = (store.clone(), key.clone());
            puts.spawn(async move { store.put(&key, bytes::Bytes::from_static(b"x"), "image/jpeg").await });
        }
        while let Some(put) = puts.join_next().await {
            put.unwrap().unwrap();
        }
    }
}

/// The command itself, over many objects: JSON out, exit status 3 with findings, the orphan list capped.
/// `UPSHOT_RECONCILE_OBJECTS` objects (20,000 by default): nine in ten are the objects of rows, one in ten
/// strays, and one row has lost its original. The run prints its time and peak RSS.
async fn the_command_checks_many_objects_in_flat_memory(stack: Stack) {
    let app = spawn(stack).await;
    let template = app.upload_ok("cat.jpg").await["id"].as_str().unwrap().to_owned();
    let count: usize = std::env::var("UPSHOT_RECONCILE_OBJECTS").ok().and_then(|n| n.parse().ok()).unwrap_or(20_000);
    let (rows, strays) = (count * 9 / 20, count / 10);
    copy_rows(&app, stack, &template, rows).await;
    let store = store_of(&app).await;
    let mut keys = Vec::with_capacity(count);
    for n in 1..=rows {
        if n != rows / 2 {
            keys.push(format!("images/{n:032x}/original.jpg"));
        }
        keys.push(format!("images/{n:032x}/thumb.jpg"));
    }
    keys.extend((0..strays).map(|n| format!("images/{:032x}/original.png", u128::MAX - n as u128)));
    let written = Instant::now();
    put_all(&store, keys).await;
    let written = written.elapsed();

    let statsd = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    statsd.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_upshot"));
    command
        .args(["reconcile", "--json"])
        .env("UPSHOT_DATA_DIR", app.data_dir.path())
        .env("UPSHOT_DATABASE_URL", &app.database_url)
        .env("UPSHOT_RECONCILE_GRACE_SECS", "0")
        .env("UPSHOT_SECRET_KEY", crate::helpers::SECRET)
        .env("UPSHOT_STATSD_ADDR", statsd.local_addr().unwrap().to_string())
        .env("UPSHOT_LOG", "info");
    if let Some(bucket) = &app.bucket {
        command
            .env("UPSHOT_STORE", "s3")
            .env("UPSHOT_S3_BUCKET", bucket)
            .env("UPSHOT_S3_PREFIX", "uploads")
            .env("UPSHOT_S3_FORCE_PATH_STYLE", "true")
            .env("UPSHOT_S3_ENDPOINT_URL", std::env::var("UPSHOT_TEST_AWS_ENDPOINT").unwrap());
    }
    let started = Instant::now();
    let output = command.output().unwrap();
    let elapsed = started.elapsed();
    assert_eq!(output.status.code(), Some(3), "{}", String::from_utf8_lossy(&output.stderr));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["objects_scanned"], 2 + rows * 2 - 1 + strays, "{report}");
    assert_eq!(report["rows_scanned"], rows + 1);
    assert_eq!(report["orphan_count"], strays);
    assert_eq!(report["orphans"].as_array().unwrap().len(), strays.min(1000), "the list is capped, the count is not");
    assert_eq!(report["missing_originals"], serde_json::json!([format!("{:032x}", rows / 2)]));
    assert_eq!(report["missing_thumbnail_count"], 0);
    let mut datagram = [0u8; 512];
    let length = statsd.recv(&mut datagram).expect("the figures reach the StatsD listener");
    let figures = String::from_utf8_lossy(&datagram[..length]);
    let expected = format!("upshot_reconcile_orphans:{strays}|g\nupshot_reconcile_missing:1|g\n");
    assert!(figures.starts_with(&expected) && figures.ends_with("upshot_reconcile_runs:1|c"), "{figures}");
    let log = String::from_utf8_lossy(&output.stderr);
    let peak = log.split("peak_rss_kib=").nth(1).and_then(|rest| rest.split_whitespace().next()).unwrap_or("-");
    println!(
        "reconcile on {stack:?}: {} objects and {} rows in {elapsed:?}, peak RSS {peak} KiB (objects written in {written:?})",
        report["objects_scanned"],
        report["rows_scanned"]
    );
}
