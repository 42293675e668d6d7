//! `upshot reconcile`: the database and the object store compared in both directions, a page at a time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use upshot::db::image_rows;
use upshot::reconcile::{check, Options};
use upshot::store::{LocalStore, ObjectStore, S3Config, S3Store};

use crate::helpers::{spawn, spawn_with, Stack, TestApp};

crate::on_both_stacks!(finds_orphans_and_images_missing_objects, uploads_racing_a_repair_keep_their_objects);

/// The test server's store, opened as a second process would open it.
async fn store_of(app: &TestApp) -> Arc<dyn ObjectStore> {
    match &app.bucket {
        None => Arc::new(LocalStore::open(app.data_dir.path().join("objects")).await.unwrap()),
        Some(bucket) => Arc::new(
            S3Store::connect(&S3Config {
                bucket: bucket.clone(),
                prefix: "uploads/".to_owned(),
                region: None,
                endpoint_url: Some(std::env::var("UPSHOT_TEST_AWS_ENDPOINT").unwrap()),
                force_path_style: true,
                timeout: Duration::from_secs(20),
            })
            .await
            .unwrap(),
        ),
    }
}

fn options(grace: Duration) -> Options {
    // Pages of two: every listing and every row query pages several times.
    Options { grace, page: 2, stuck_after: Duration::from_secs(3600), repair: false }
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
    let thumbless = app.upload_ok("logo-alpha.png").await["id"].as_str().unwrap().to_owned();
    let rows = app.db.run(|conn| image_rows::objects_page(conn, None, 10)).await.unwrap();
    let row = |id: &str| rows.iter().find(|r| r.id == id).unwrap().clone();
    store.delete(&row(&lost).original_key).await.unwrap();
    store.delete(&row(&thumbless).thumbnail_key).await.unwrap();
    let stray = "images/0123456789abcdef0123456789abcdef/original.jpg";
    store.put(stray, bytes::Bytes::from_static(b"left by hand"), "image/jpeg").await.unwrap();

    let report = check(&app.db, store.clone(), &options(Duration::ZERO)).await.unwrap();
    assert_eq!((report.objects_scanned, report.rows_scanned), (5, 3), "{report:?}");
    let orphans: Vec<&str> = report.orphans.iter().map(|o| o.key.as_str()).collect();
    assert_eq!(orphans, [stray]);
    assert_eq!(report.missing_originals, std::slice::from_ref(&lost));
    assert_eq!(report.missing_thumbnails, [thumbless]);
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

    let report = check(&app.db, store.clone(), &repair(Duration::ZERO)).await.unwrap();
    assert_eq!((report.orphan_count, report.orphans_removed, report.marked_missing), (1, 1, 0));
    assert!(!app.object_keys().await.contains(&stray.to_owned()));
    let after = check(&app.db, store.clone(), &options(Duration::ZERO)).await.unwrap();
    assert_eq!(after.orphan_count, 0);
    assert_eq!((after.missing_original_count, after.missing_thumbnail_count), (0, 1), "the lost image is marked");

    // The lost image answers 410 with its code, on the API and its page; nothing of it is deleted.
    let (status, code, _) = crate::helpers::error_code(app.get(&format!("/api/v1/images/{lost}")).await).await;
    assert_eq!((status, code.as_str()), (410, "IMAGE_MISSING"));
    let file = app.get(&format!("/api/v1/images/{lost}/thumbnail")).await;
    assert_eq!(file.status().as_u16(), 410);
    let page = app.get(&format!("/images/{lost}")).await;
    assert_eq!(page.status().as_u16(), 410);
    assert!(page.text().await.unwrap().contains("IMAGE_MISSING"));
    assert_eq!(app.get(&format!("/api/v1/images/{kept}")).await.status().as_u16(), 200);
    assert_eq!(app.image_rows().await, 3);
    assert_eq!(app.outbox_rows().await, notifications, "the notification history is untouched");
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

/// The command itself: JSON out, exit status 3 with findings. Many orphans are listed in flat memory:
/// `UPSHOT_RECONCILE_OBJECTS` sets how many (2,000 by default) and the run prints its time and peak RSS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_reports_many_objects_in_pages() {
    let app = spawn(Stack::Embedded).await;
    app.upload_ok("cat.jpg").await;
    let count: usize = std::env::var("UPSHOT_RECONCILE_OBJECTS").ok().and_then(|n| n.parse().ok()).unwrap_or(2000);
    let store = store_of(&app).await;
    for i in 0..count {
        let key = format!("images/{i:032x}/original.jpg");
        store.put(&key, bytes::Bytes::from_static(b"stray"), "image/jpeg").await.unwrap();
    }
    let started = Instant::now();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_upshot"))
        .arg("reconcile")
        .arg("--json")
        .env("UPSHOT_DATA_DIR", app.data_dir.path())
        .env("UPSHOT_DATABASE_URL", &app.database_url)
        .env("UPSHOT_RECONCILE_GRACE_SECS", "0")
        .env("UPSHOT_LOG", "info")
        .output()
        .unwrap();
    let elapsed = started.elapsed();
    assert_eq!(output.status.code(), Some(3), "{}", String::from_utf8_lossy(&output.stderr));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["objects_scanned"], count + 2);
    assert_eq!(report["orphan_count"], count);
    assert_eq!(report["orphans"].as_array().unwrap().len(), count.min(1000), "the list is capped, the count is not");
    assert_eq!(report["missing_original_count"], 0);
    let log = String::from_utf8_lossy(&output.stderr);
    let peak = log.split("peak_rss_kib=").nth(1).and_then(|rest| rest.split_whitespace().next()).unwrap_or("-");
    println!("reconcile of {} objects: {elapsed:?}, peak RSS {peak} KiB", count + 2);
}
