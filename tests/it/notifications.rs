//! Notifications that are never lost: the outbox, its relay, SNS (moto on 127.0.0.1) delivering into SQS
//! queues, outages, crashed relays, concurrent relays, filter policies, and the subscription API.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use diesel::prelude::*;
use serde_json::{json, Value};
use tokio::sync::watch;
use upshot::db::outbox::{self, OutboxRow};
use upshot::db::{schema, Db};
use upshot::notify::relay::{Relay, RelayConfig};
use upshot::notify::{Notifier, SnsNotifier};

use crate::helpers::{
    create_pg_database, create_topic, error_code, receive, sns_client, spawn, spawn_with, subscribed_queue, Cuttable,
    Stack, ADMIN_KEY,
};

async fn outbox_rows(db: &Db) -> Vec<OutboxRow> {
    db.run(outbox::all).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_upload_is_delivered_with_its_attributes() {
    let app = spawn(Stack::Cloud).await;
    let queue = subscribed_queue(app.topic_arn.as_deref().unwrap(), None).await;
    let mut uploaded = HashSet::new();
    for name in ["cat.jpg", "coffee.png", "astronaut.webp", "rocket.gif", "logo-alpha.png"] {
        uploaded.insert(app.upload_ok(name).await["id"].as_str().unwrap().to_owned());
    }
    let delivered = receive(&queue, 5, Duration::from_secs(20)).await;
    let ids: HashSet<String> = delivered.iter().map(|d| d.attributes["image_id"].clone()).collect();
    assert_eq!(ids, uploaded, "every upload announced");
    assert_eq!(delivered.len(), 5, "and each once: {delivered:?}");
    let coffee = delivered.iter().find(|d| d.attributes["top_label"] == "espresso").expect("the coffee upload");
    assert_eq!(coffee.attributes["event_type"], "image.uploaded");
    assert_eq!(coffee.attributes["has_face"], "false");
    assert_eq!(coffee.attributes["content_type"], "image/png");
    let face = delivered.iter().find(|d| d.attributes["has_face"] == "true").expect("the astronaut upload");
    assert_eq!(face.attributes["content_type"], "image/webp");
    assert!(delivered.iter().all(|d| !d.body.is_empty()));
    let rows = outbox_rows(&app.db).await;
    assert!(rows.iter().all(|r| r.status == outbox::OutboxStatus::Sent && r.published_at.is_some()), "{rows:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sns_outage_delays_notifications_but_loses_none() {
    let endpoint = std::env::var("UPSHOT_TEST_AWS_ENDPOINT").unwrap();
    let proxy = Cuttable::start(endpoint.trim_start_matches("http://").to_owned()).await;
    let proxy_url = proxy.url.clone();
    let app = spawn_with(Stack::Cloud, move |f| {
        f.merge(("sns_endpoint_url", proxy_url)).merge(("outbox_degraded_after_secs", 1))
    })
    .await;
    let queue = subscribed_queue(app.topic_arn.as_deref().unwrap(), None).await;

    proxy.set_up(false);
    let mut uploaded = HashSet::new();
    for name in ["cat.jpg", "coffee.png", "astronaut.webp", "rocket.gif"] {
        uploaded.insert(app.upload_ok(name).await["id"].as_str().unwrap().to_owned());
    }
    // Wait until the relay has failed on every message at least once.
    let deadline = Instant::now() + Duration::from_secs(15);
    let during = loop {
        let rows = outbox_rows(&app.db).await;
        if rows.len() == 4 && rows.iter().all(|r| r.last_error.is_some()) {
            break rows;
        }
        assert!(Instant::now() < deadline, "the relay did not try every message: {rows:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(during.len(), 4);
    assert!(during.iter().all(|r| r.status != outbox::OutboxStatus::Sent), "nothing can be sent during the outage");
    assert!(during.iter().all(|r| r.attempts >= 1 && r.last_error.is_some()), "{during:?}");
    // A backlog older than the threshold (1 s here) degrades readiness without failing it.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let response = app.get("/readyz").await;
        assert_eq!(response.status(), 200, "an outbox backlog never fails readiness");
        let ready: Value = response.json().await.unwrap();
        assert_eq!(ready["checks"]["outbox"]["unsent"], 4);
        if ready["status"] == "degraded" {
            break;
        }
        assert!(Instant::now() < deadline, "readiness never degraded: {ready}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let restored = Instant::now();
    proxy.set_up(true);
    let delivered = receive(&queue, 4, Duration::from_secs(20)).await;
    let drain = restored.elapsed();
    let ids: Vec<String> = delivered.iter().map(|d| d.attributes["image_id"].clone()).collect();
    let distinct: HashSet<String> = ids.iter().cloned().collect();
    assert_eq!(distinct, uploaded, "every notification arrived after the outage");
    let after = outbox_rows(&app.db).await;
    assert!(after.iter().all(|r| r.status == outbox::OutboxStatus::Sent), "{after:?}");
    let attempts: Vec<i32> = after.iter().map(|r| r.attempts).collect();
    eprintln!(
        "outage: uploaded {}, delivered {}, duplicates {}, attempts per message {attempts:?}, drained {:.2} s after recovery",
        uploaded.len(),
        distinct.len(),
        ids.len() - distinct.len(),
        drain.as_secs_f64()
    );
}

/// Outbox rows straight into the database, as committed uploads would leave them.
async fn seed_outbox(db: &Db, count: usize) -> Vec<String> {
    let ids: Vec<String> = (0..count).map(|_| upshot::domain::ImageId::generate().to_string()).collect();
    let rows: Vec<OutboxRow> = ids
        .iter()
        .map(|image_id| OutboxRow {
            id: upshot::domain::ImageId::generate().to_string(),
            image_id: image_id.clone(),
            event_type: "image.uploaded".to_owned(),
            payload: serde_json::to_string(&upshot::domain::event::ImageUploaded {
                image_id: image_id.clone(),
                sha256: "00".repeat(32),
                content_type: "image/jpeg".to_owned(),
                width: 300,
                height: 451,
                byte_size: 20_000,
                page_path: format!("/images/{image_id}"),
                top_label: Some("tabby".to_owned()),
                top_score: Some(0.5),
                has_face: false,
                season: None,
            })
            .unwrap(),
            status: outbox::OutboxStatus::Pending,
            attempts: 0,
            available_at: upshot::domain::now(),
            last_error: None,
            created_at: upshot::domain::now(),
            published_at: None,
            digest_id: None,
            traceparent: None,
        })
        .collect();
    db.run(move |conn| {
        for row in &rows {
            diesel::insert_into(schema::outbox::table).values(row).execute(conn)?;
        }
        Ok(())
    })
    .await
    .unwrap();
    ids
}

async fn relay_on(db: &Db, topic_arn: &str, lease: Duration) -> Relay {
    relay_with(db, topic_arn, lease, Duration::from_millis(100), 5).await
}

async fn relay_with(db: &Db, topic_arn: &str, lease: Duration, publish_timeout: Duration, batch: i64) -> Relay {
    let sns = upshot::notify::SnsConfig {
        topic_arn: topic_arn.to_owned(),
        region: None,
        endpoint_url: Some(std::env::var("UPSHOT_TEST_AWS_ENDPOINT").unwrap()),
        publish_timeout: upshot::config::SNS_PUBLISH_TIMEOUT,
    };
    let notifier: Arc<dyn Notifier> =
        Arc::new(SnsNotifier::connect(&sns, upshot::aws::SharedConfig::default().get().await).await.unwrap());
    let config = RelayConfig {
        batch,
        lease,
        poll: Duration::from_millis(100),
        max_attempts: 5,
        retry_horizon: Duration::from_secs(3600),
        publish_timeout,
        backoff_base: Duration::from_millis(100),
        backoff_cap: Duration::from_secs(1),
        public_url: "http://127.0.0.1:8000".to_owned(),
        max_per_hour: 0,
        digest_every: Duration::from_secs(300),
    };
    Relay::new(db.clone(), notifier, config, Arc::new(tokio::sync::Notify::new()))
}

async fn database(stack: Stack, dir: &std::path::Path) -> Db {
    let url = match stack {
        Stack::Embedded => upshot::config::DatabaseUrl::Sqlite(dir.join("relay.sqlite3")),
        Stack::Cloud => upshot::config::DatabaseUrl::Postgres(create_pg_database()),
    };
    Db::open(url, 4, Duration::from_secs(5)).await.unwrap()
}

crate::on_both_stacks!(a_relay_that_dies_after_claiming_leaves_work_for_the_next);

async fn a_relay_that_dies_after_claiming_leaves_work_for_the_next(stack: Stack) {
    let dir = tempfile::tempdir().unwrap();
    let db = database(stack, dir.path()).await;
    let topic = create_topic().await;
    let queue = subscribed_queue(&topic, None).await;
    let seeded = seed_outbox(&db, 3).await;

    // The first relay claims everything and dies before publishing: its claim is all that remains.
    let lease = Duration::from_millis(600);
    let claimed = {
        let lease_end = upshot::domain::now() + chrono::Duration::from_std(lease).unwrap();
        db.run(move |conn| outbox::claim_due(conn, upshot::domain::now(), lease_end, 10)).await.unwrap()
    };
    assert_eq!(claimed.len(), 3);
    let (_, running) = watch::channel(false);
    let survivor = relay_on(&db, &topic, Duration::from_secs(30)).await;
    assert_eq!(survivor.pass(&running).await.unwrap().claimed, 0, "claimed rows are not taken before the lease ends");

    tokio::time::sleep(lease + Duration::from_millis(200)).await;
    let report = survivor.pass(&running).await.unwrap();
    assert_eq!((report.claimed, report.sent), (3, 3));
    let delivered = receive(&queue, 3, Duration::from_secs(10)).await;
    let ids: HashSet<String> = delivered.iter().map(|d| d.attributes["image_id"].clone()).collect();
    assert_eq!(ids, seeded.into_iter().collect());
    let rows = outbox_rows(&db).await;
    assert!(rows.iter().all(|r| r.status == outbox::OutboxStatus::Sent && r.attempts == 2), "{rows:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_about_to_run_out_is_given_back_not_published() {
    let dir = tempfile::tempdir().unwrap();
    let db = database(Stack::Cloud, dir.path()).await;
    let topic = create_topic().await;
    let queue = subscribed_queue(&topic, None).await;
    seed_outbox(&db, 3).await;
    // A lease shorter than one publish may take: whatever this relay claims, another could take over mid-publish.
    let hurried = relay_with(&db, &topic, Duration::from_secs(2), Duration::from_secs(5), 5).await;
    let (_, running) = watch::channel(false);
    let report = hurried.pass(&running).await.unwrap();
    assert_eq!((report.claimed, report.sent, report.released), (3, 0, 3));
    assert!(receive(&queue, 1, Duration::from_secs(2)).await.is_empty(), "nothing published");
    let rows = outbox_rows(&db).await;
    assert!(
        rows.iter().all(|r| r.status == outbox::OutboxStatus::Pending && r.attempts == 0),
        "given back whole: {rows:?}"
    );
    // With room for a publish in its lease, the next pass sends them.
    let relay = relay_on(&db, &topic, Duration::from_secs(30)).await;
    assert_eq!(relay.pass(&running).await.unwrap().sent, 3);
}

#[test]
fn a_relay_claims_only_what_it_can_publish_within_half_its_lease() {
    use upshot::notify::relay::batch_for;
    let publish = Duration::from_secs(15);
    // Each request carries up to ten messages and may take the whole publish timeout.
    assert_eq!(batch_for(Duration::from_secs(60), publish, 100), 20);
    assert_eq!(batch_for(Duration::from_secs(3600), publish, 100), 100);
    assert_eq!(batch_for(Duration::from_secs(10), publish, 100), 10);
    assert_eq!(batch_for(Duration::from_secs(10), publish, 5), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_relays_on_one_postgres_publish_each_message_once() {
    let dir = tempfile::tempdir().unwrap();
    let db = database(Stack::Cloud, dir.path()).await;
    let topic = create_topic().await;
    let queue = subscribed_queue(&topic, None).await;
    let seeded = seed_outbox(&db, 30).await;
    let (_, running) = watch::channel(false);
    let (first, second) =
        (relay_on(&db, &topic, Duration::from_secs(30)).await, relay_on(&db, &topic, Duration::from_secs(30)).await);
    let drain = |relay: Relay, running: watch::Receiver<bool>| async move {
        let mut sent = 0;
        loop {
            let report = relay.pass(&running).await.unwrap();
            sent += report.sent;
            if report.claimed == 0 {
                return sent;
            }
        }
    };
    let (a, b) = tokio::join!(drain(first, running.clone()), drain(second, running.clone()));
    assert_eq!(a + b, 30, "relays sent {a} + {b}");
    assert!(a > 0 && b > 0, "both relays took part: {a} + {b}");
    let delivered = receive(&queue, 30, Duration::from_secs(20)).await;
    let ids: Vec<String> = delivered.iter().map(|d| d.attributes["image_id"].clone()).collect();
    assert_eq!(ids.len(), 30, "no duplicates, none missing");
    assert_eq!(ids.into_iter().collect::<HashSet<_>>(), seeded.into_iter().collect());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_go_out_ten_to_a_request_and_one_refused_fails_alone() {
    let dir = tempfile::tempdir().unwrap();
    let db = database(Stack::Cloud, dir.path()).await;
    let topic = create_topic().await;
    let queue = subscribed_queue(&topic, None).await;
    let mut seeded = seed_outbox(&db, 12).await;
    // One message SNS refuses (over its 256 KiB limit), due first so that it shares a request with others.
    let oversized = seeded.remove(0);
    let huge_id = "x".repeat(100_000);
    let payload = serde_json::json!({
        "image_id": huge_id, "sha256": "00".repeat(32), "content_type": "image/jpeg", "width": 1, "height": 1,
        "byte_size": 1, "page_path": "/", "has_face": false,
    })
    .to_string();
    let past = upshot::domain::now() - chrono::Duration::seconds(5);
    let key = oversized.clone();
    db.run(move |conn| {
        diesel::update(schema::outbox::table.filter(schema::outbox::image_id.eq(&key)))
            .set((schema::outbox::payload.eq(&payload), schema::outbox::available_at.eq(past)))
            .execute(conn)?;
        Ok(())
    })
    .await
    .unwrap();

    let relay = relay_with(&db, &topic, Duration::from_secs(30), Duration::from_millis(100), 12).await;
    let (_, running) = watch::channel(false);
    let report = relay.pass(&running).await.unwrap();
    assert_eq!((report.claimed, report.sent, report.failed, report.retried), (12, 11, 1, 0), "{report:?}");
    let delivered = receive(&queue, 11, Duration::from_secs(20)).await;
    let ids: Vec<String> = delivered.iter().map(|d| d.attributes["image_id"].clone()).collect();
    assert_eq!(ids.len(), 11, "each once");
    assert_eq!(ids.into_iter().collect::<HashSet<_>>(), seeded.into_iter().collect());
    let rows = outbox_rows(&db).await;
    let refused = rows.iter().find(|row| row.image_id == oversized).unwrap();
    assert_eq!(refused.status, outbox::OutboxStatus::Failed, "{:?}", refused.last_error);
    assert!(refused.last_error.as_deref().unwrap_or_default().contains("too long"), "{:?}", refused.last_error);
    assert_eq!(rows.iter().filter(|row| row.status == outbox::OutboxStatus::Sent).count(), 11);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_label_filter_delivers_only_matching_uploads() {
    let app = spawn(Stack::Cloud).await;
    let topic = app.topic_arn.clone().unwrap();
    // Subscribed through the API: the filter policy it sets on the subscription is the one used below.
    let response = app
        .client
        .post(app.url("/api/v1/subscriptions"))
        .bearer_auth(ADMIN_KEY)
        .json(&json!({ "protocol": "sms", "endpoint": "+14155550100", "labels": ["espresso"] }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let created: Value = response.json().await.unwrap();
    let arn = created["id"].as_str().unwrap().to_owned();
    let attributes = sns_client().await.get_subscription_attributes().subscription_arn(&arn).send().await.unwrap();
    let policy = attributes.attributes().unwrap()["FilterPolicy"].clone();
    assert_eq!(serde_json::from_str::<Value>(&policy).unwrap(), json!({ "top_label": ["espresso"] }));

    let filtered = subscribed_queue(&topic, Some(&policy)).await;
    let everything = subscribed_queue(&topic, None).await;
    app.upload_ok("cat.jpg").await;
    let coffee = app.upload_ok("coffee.png").await;
    let all = receive(&everything, 2, Duration::from_secs(20)).await;
    assert_eq!(all.len(), 2);
    let only = receive(&filtered, 1, Duration::from_secs(5)).await;
    assert_eq!(only.len(), 1, "{only:?}");
    assert_eq!(only[0].attributes["image_id"], coffee["id"].as_str().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_are_validated_and_need_the_admin_key() {
    let app = spawn(Stack::Cloud).await;
    let post = |body: Value, key: Option<&'static str>| {
        let mut request = app.client.post(app.url("/api/v1/subscriptions")).json(&body);
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        request.send()
    };
    let email = json!({ "protocol": "email", "endpoint": "ana@example.com" });
    let (status, code, _) = error_code(post(email.clone(), None).await.unwrap()).await;
    assert_eq!((status, code.as_str()), (401, "UNAUTHORIZED"));
    let (status, code, _) = error_code(post(email.clone(), Some("wrong-key-wrong-key-wrong")).await.unwrap()).await;
    assert_eq!((status, code.as_str()), (401, "UNAUTHORIZED"));
    for bad in [
        json!({ "protocol": "email", "endpoint": "not-an-address" }),
        json!({ "protocol": "sms", "endpoint": "555-0100" }),
        json!({ "protocol": "sms", "endpoint": "+14155550100", "labels": ["unicorn"] }),
        json!({ "protocol": "pigeon", "endpoint": "ana@example.com" }),
    ] {
        let (status, code, body) = error_code(post(bad.clone(), Some(ADMIN_KEY)).await.unwrap()).await;
        assert_eq!((status, code.as_str()), (422, "INVALID_REQUEST"), "{bad} → {body}");
    }
    let created = post(email, Some(ADMIN_KEY)).await.unwrap();
    assert_eq!(created.status(), 201);
    let created: Value = created.json().await.unwrap();
    let listed: Value = app
        .client
        .get(app.url("/api/v1/subscriptions"))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(listed["items"].as_array().unwrap().iter().any(|s| s["endpoint"] == "ana@example.com"), "{listed}");
    let id = created["id"].as_str().unwrap();
    let removed =
        app.client.delete(app.url(&format!("/api/v1/subscriptions/{id}"))).bearer_auth(ADMIN_KEY).send().await.unwrap();
    assert_eq!(removed.status(), 204);

    // With the log notifier there is nobody to subscribe.
    let embedded = spawn(Stack::Embedded).await;
    let response = embedded
        .client
        .post(embedded.url("/api/v1/subscriptions"))
        .bearer_auth(ADMIN_KEY)
        .json(&json!({ "protocol": "sms", "endpoint": "+14155550100" }))
        .send()
        .await
        .unwrap();
    let (status, code, _) = error_code(response).await;
    assert_eq!((status, code.as_str()), (409, "NOTIFIER_NOT_CONFIGURED"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_notifier_publishes_the_embedded_outbox() {
    let app = spawn(Stack::Embedded).await;
    app.upload_ok("cat.jpg").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let rows = outbox_rows(&app.db).await;
        if rows.len() == 1 && rows[0].status == outbox::OutboxStatus::Sent {
            break;
        }
        assert!(Instant::now() < deadline, "the relay never published: {rows:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_notification_is_parked_and_the_retry_command_revives_it() {
    // A topic that does not exist yet: SNS refuses, so the message is parked at once, not retried forever.
    let name = format!("upshot-test-later-{}", &upshot::domain::ImageId::generate().as_str()[..12]);
    let arn = format!("arn:aws:sns:us-east-1:123456789012:{name}");
    let configured = arn.clone();
    let app = spawn_with(Stack::Cloud, move |f| f.merge(("sns_topic_arn", configured))).await;
    let uploaded = app.upload_ok("coffee.png").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let parked = loop {
        let rows = outbox_rows(&app.db).await;
        if rows.first().is_some_and(|r| r.status == outbox::OutboxStatus::Failed) {
            break rows[0].clone();
        }
        assert!(Instant::now() < deadline, "never parked: {rows:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(parked.attempts, 1, "a refusal is not retried");
    assert!(parked.last_error.as_deref().is_some_and(|e| e.contains("refused")), "{parked:?}");

    let created = sns_client().await.create_topic().name(&name).send().await.unwrap();
    assert_eq!(created.topic_arn(), Some(arn.as_str()));
    let queue = subscribed_queue(&arn, None).await;
    let cli = |command: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_upshot"))
            .args(command)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env("UPSHOT_DATABASE_URL", &app.database_url)
            .env("UPSHOT_SECRET_KEY", crate::helpers::SECRET)
            .output()
            .unwrap()
    };
    let status = cli(&["outbox", "status"]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(status.status.success() && text.contains("failed: 1") && text.contains(&parked.id), "{text}");
    let retry = cli(&["outbox", "retry"]);
    assert!(retry.status.success(), "{}", String::from_utf8_lossy(&retry.stderr));
    assert!(String::from_utf8_lossy(&retry.stdout).starts_with("1 notification(s) due again"));

    let delivered = receive(&queue, 1, Duration::from_secs(15)).await;
    assert_eq!(delivered.len(), 1);
    assert_eq!(delivered[0].attributes["image_id"], uploaded["id"].as_str().unwrap());
}

/// An upload flood is not an SMS flood: past `notify_max_per_hour` messages, what comes is summed up in one
/// digest per `notify_digest_secs`, every image in some message, nothing dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_uploads_reaches_each_subscriber_as_a_few_messages_and_digests() {
    const LIMIT: usize = 4;
    const DIGEST_SECS: u64 = 2;
    const UPLOADS: usize = 24;
    let app = spawn_with(Stack::Cloud, |f| {
        f.merge(("notify_max_per_hour", LIMIT)).merge(("notify_digest_secs", DIGEST_SECS)).merge(("dedup", false))
    })
    .await;
    let topic = app.topic_arn.clone().unwrap();
    let queues = [subscribed_queue(&topic, None).await, subscribed_queue(&topic, None).await];
    let started = Instant::now();
    let names = ["cat.jpg", "coffee.png", "astronaut.webp", "rocket.gif", "logo-alpha.png", "cat-gps-rotated.jpg"];
    let mut uploaded = HashSet::new();
    for name in names.iter().cycle().take(UPLOADS) {
        uploaded.insert(app.upload_ok(name).await["id"].as_str().unwrap().to_owned());
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while outbox_rows(&app.db).await.iter().any(|r| r.status != outbox::OutboxStatus::Sent) && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let rows = outbox_rows(&app.db).await;
    assert!(rows.iter().all(|r| r.status == outbox::OutboxStatus::Sent), "every notification went out: {rows:?}");
    let elapsed = started.elapsed();
    // The allowance, then at most one digest per interval (and one more at the boundary).
    let bound = LIMIT + (elapsed.as_secs() / DIGEST_SECS) as usize + 1;
    for queue in &queues {
        let delivered = receive(queue, 1, Duration::from_secs(20)).await;
        let mut seen = HashSet::new();
        let mut digests = 0;
        for message in &delivered {
            if message.attributes.get("event_type").map(String::as_str) == Some("image.digest") {
                digests += 1;
                let body: Value = serde_json::from_str(&message.body).unwrap();
                seen.extend(body["image_ids"].as_array().unwrap().iter().map(|id| id.as_str().unwrap().to_owned()));
            } else {
                seen.insert(message.attributes["image_id"].clone());
            }
        }
        eprintln!(
            "{UPLOADS} uploads in {:.1} s reached a subscriber as {} messages ({digests} digests; bound {bound})",
            elapsed.as_secs_f64(),
            delivered.len()
        );
        assert_eq!(seen, uploaded, "every image is in some message");
        assert!(digests >= 1, "the flood was summed up");
        assert!(delivered.len() <= bound, "{} messages, bound {bound}", delivered.len());
    }
}

/// A StatsD listener on loopback, as the CloudWatch agent is, and its address.
fn statsd_listener() -> (std::net::UdpSocket, String) {
    let statsd = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    statsd.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let addr = statsd.local_addr().unwrap().to_string();
    (statsd, addr)
}

/// What the stack's readiness and outbox alarms watch reaches the CloudWatch agent's StatsD listener as soon as
/// the server is up: readiness, the age of the oldest unsent notification and the parked count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_and_the_outbox_state_reach_statsd() {
    let (statsd, addr) = statsd_listener();
    let _app = spawn_with(Stack::Cloud, move |f| f.merge(("statsd_addr", addr))).await;
    let mut datagram = [0u8; 512];
    let length = tokio::task::spawn_blocking(move || statsd.recv(&mut datagram).map(|n| (n, datagram)))
        .await
        .unwrap()
        .expect("the gauges reach the StatsD listener");
    let text = String::from_utf8_lossy(&length.1[..length.0]).into_owned();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines,
        ["upshot_ready:1|g", "upshot_outbox_oldest_unsent_seconds:0|g", "upshot_outbox_failed:0|g"],
        "{text}"
    );
}

/// Each upload stored, error answered (by code) and inference timed reaches the StatsD listener as it happens,
/// for the dashboard's uploads, errors and inference time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_errors_and_inference_times_reach_statsd() {
    let (statsd, addr) = statsd_listener();
    let app = spawn_with(Stack::Embedded, move |f| f.merge(("statsd_addr", addr))).await;
    app.upload_ok("cat.jpg").await;
    let refused = app.upload("not-an-image.jpg").await;
    assert_eq!(refused.status(), 415);
    let lines = tokio::task::spawn_blocking(move || {
        let mut lines = Vec::new();
        let mut datagram = [0u8; 1024];
        while let Ok(length) = statsd.recv(&mut datagram) {
            lines.extend(String::from_utf8_lossy(&datagram[..length]).lines().map(str::to_owned));
            let seen = |prefix: &str| lines.iter().any(|line: &String| line.starts_with(prefix));
            if seen("upshot_uploads_stored:") && seen("upshot_errors:") && seen("upshot_inference_ms:") {
                break;
            }
        }
        lines
    })
    .await
    .unwrap();
    assert!(lines.contains(&"upshot_uploads_stored:1|c".to_owned()), "{lines:?}");
    assert!(lines.contains(&"upshot_errors:1|c|#code:UNSUPPORTED_MEDIA_TYPE".to_owned()), "{lines:?}");
    let timed = lines.iter().find_map(|line| line.strip_prefix("upshot_inference_ms:")?.strip_suffix("|ms"));
    assert!(timed.and_then(|ms| ms.parse::<f64>().ok()).is_some_and(|ms| ms > 0.0), "{lines:?}");
}
