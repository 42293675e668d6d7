//! A small fleet under faults: two instances of the real binary behind a loopback round-robin balancer, on
//! PostgreSQL and the S3/SNS endpoint, each endpoint reached through a proxy that can be cut. Under a steady
//! upload load: one instance is killed with SIGKILL and replaced, S3 is cut, SNS is cut. Afterwards every
//! acknowledged upload reads back, no row misses an object, every notification is delivered (duplicates are
//! counted), and both instances are ready again by themselves. Bounded: about 20 s of load.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use diesel::prelude::*;
use tempfile::TempDir;
use tokio::net::{TcpListener, TcpStream};
use upshot::db::{outbox, schema, Db};

use crate::helpers::{
    create_bucket, create_pg_database, create_topic, fixture, receive, s3_client, subscribed_queue, Cuttable,
};

/// One `upshot serve` process.
struct Instance {
    child: std::process::Child,
    port: u16,
    env: Vec<(String, String)>,
    _data_dir: Arc<TempDir>,
}

impl Instance {
    fn start(port: u16, env: Vec<(String, String)>, data_dir: Arc<TempDir>) -> Instance {
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_upshot"))
            .arg("serve")
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env("ROCKET_PORT", port.to_string())
            .env("UPSHOT_DATA_DIR", data_dir.path())
            // All the load comes from one loopback client.
            .env("UPSHOT_CLIENT_REQUESTS_PER_MINUTE", crate::helpers::UNLIMITED_CLIENT.to_string())
            .env("UPSHOT_CLIENT_REQUEST_BURST", crate::helpers::UNLIMITED_CLIENT.to_string())
            .env("UPSHOT_MAX_INTAKE_IN_FLIGHT_PER_CLIENT", crate::helpers::UNLIMITED_CLIENT.to_string())
            .env("UPSHOT_MAX_CONNECTIONS_PER_CLIENT", crate::helpers::UNLIMITED_CLIENT.to_string())
            // Every upload's own notification is what the test follows.
            .env("UPSHOT_NOTIFY_MAX_PER_HOUR", "0")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("the server starts");
        Instance { child, port, env, _data_dir: data_dir }
    }

    /// SIGKILL, as a crashed or terminated EC2 instance: no graceful shutdown.
    fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    async fn ready(&self, client: &reqwest::Client, within: Duration) -> Duration {
        let started = Instant::now();
        loop {
            let url = format!("http://127.0.0.1:{}/readyz", self.port);
            if client.get(&url).send().await.is_ok_and(|r| r.status() == 200) {
                return started.elapsed();
            }
            assert!(started.elapsed() < within, "instance on port {} not ready within {within:?}", self.port);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Round robin over the backends, per connection; a backend that refuses is skipped, as a load balancer
/// skips an unhealthy target.
async fn balancer(ports: Vec<u16>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let next = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let (ports, next) = (ports.clone(), next.clone());
            tokio::spawn(async move {
                for _ in 0..ports.len() {
                    let port = ports[next.fetch_add(1, Ordering::Relaxed) % ports.len()];
                    if let Ok(mut outbound) = TcpStream::connect(("127.0.0.1", port)).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        return;
                    }
                }
            });
        }
    });
    url
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// What the clients saw: acknowledged image ids, and how many answers were retried.
#[derive(Default)]
struct Ledger {
    acknowledged: Vec<String>,
    retried: usize,
    statuses: HashMap<u16, usize>,
}

/// A client as a real one behaves: one `Idempotency-Key` per upload, retried on 503 or a broken connection.
async fn upload_until_answered(client: &reqwest::Client, url: &str, photo: &[u8], ledger: &Mutex<Ledger>) {
    let key = upshot::domain::ImageId::generate().to_string();
    for _ in 0..100 {
        let form = reqwest::multipart::Form::new()
            .part("file", reqwest::multipart::Part::bytes(photo.to_vec()).file_name("cat.jpg"));
        let sent = client.post(url).header("Idempotency-Key", &key).multipart(form).send().await;
        let status = sent.as_ref().map_or(0, |r| r.status().as_u16());
        *ledger.lock().unwrap().statuses.entry(status).or_default() += 1;
        match sent {
            Ok(response) if response.status() == 201 => {
                let body: serde_json::Value = response.json().await.unwrap();
                ledger.lock().unwrap().acknowledged.push(body["id"].as_str().unwrap().to_owned());
                return;
            }
            Ok(response) if response.status() != 503 => panic!("an upload got {}", response.status()),
            _ => {
                ledger.lock().unwrap().retried += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    panic!("an upload was never answered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_loses_nothing_to_a_killed_instance_or_an_s3_or_sns_outage() {
    let endpoint = std::env::var("UPSHOT_TEST_AWS_ENDPOINT").unwrap();
    let s3 = Cuttable::start(endpoint.trim_start_matches("http://").to_owned()).await;
    let sns = Cuttable::start(endpoint.trim_start_matches("http://").to_owned()).await;
    let (database_url, bucket, topic) = (create_pg_database(), create_bucket().await, create_topic().await);
    let queue = subscribed_queue(&topic, None).await;
    let env: Vec<(String, String)> = [
        ("ROCKET_ADDRESS", "127.0.0.1"),
        ("UPSHOT_LOG", "warn"),
        ("UPSHOT_DATABASE_URL", &database_url),
        ("UPSHOT_STORE", "s3"),
        ("UPSHOT_S3_BUCKET", &bucket),
        ("UPSHOT_S3_FORCE_PATH_STYLE", "true"),
        ("UPSHOT_S3_ENDPOINT_URL", &s3.url),
        ("UPSHOT_S3_TIMEOUT_SECS", "3"),
        ("UPSHOT_ORPHAN_GRACE_SECS", "6"),
        ("UPSHOT_NOTIFIER", "sns"),
        ("UPSHOT_SNS_TOPIC_ARN", &topic),
        ("UPSHOT_SNS_ENDPOINT_URL", &sns.url),
        ("UPSHOT_SECRET_KEY", crate::helpers::SECRET),
        ("UPSHOT_DEDUP", "false"),
        ("UPSHOT_OUTBOX_POLL_MS", "200"),
        ("UPSHOT_OUTBOX_BACKOFF_BASE_MS", "100"),
        ("UPSHOT_OUTBOX_BACKOFF_CAP_SECS", "1"),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect();
    let data_dirs = [Arc::new(tempfile::tempdir().unwrap()), Arc::new(tempfile::tempdir().unwrap())];
    let ports = [free_port(), free_port()];
    let mut fleet: Vec<Instance> =
        (0..2).map(|i| Instance::start(ports[i], env.clone(), data_dirs[i].clone())).collect();
    let client = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
    for instance in &fleet {
        instance.ready(&client, Duration::from_secs(60)).await;
    }
    let front = balancer(ports.to_vec()).await;

    // Steady load: three clients, each uploading as soon as its last upload was answered.
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let photo = Arc::new(fixture("cat.jpg"));
    let clients: Vec<_> = (0..3)
        .map(|_| {
            let (client, url, photo, ledger, stopped) =
                (client.clone(), format!("{front}/api/v1/images"), photo.clone(), ledger.clone(), stopped.clone());
            tokio::spawn(async move {
                while !*stopped.borrow() {
                    upload_until_answered(&client, &url, &photo, &ledger).await;
                }
            })
        })
        .collect();

    let pause = |secs| tokio::time::sleep(Duration::from_secs(secs));
    pause(3).await;
    fleet[0].kill();
    pause(2).await;
    let replacement = Instance::start(ports[0], fleet[0].env.clone(), data_dirs[0].clone());
    let replaced_in = replacement.ready(&client, Duration::from_secs(60)).await;
    fleet[0] = replacement;
    pause(2).await;
    s3.set_up(false);
    pause(4).await;
    s3.set_up(true);
    let store_back = Instant::now();
    pause(2).await;
    sns.set_up(false);
    pause(4).await;
    sns.set_up(true);
    let sns_back = Instant::now();
    pause(2).await;
    stop.send(true).unwrap();
    for task in clients {
        tokio::time::timeout(Duration::from_secs(60), task).await.expect("clients finish").unwrap();
    }

    let ledger = std::mem::take(&mut *ledger.lock().unwrap());
    let acknowledged: HashSet<String> = ledger.acknowledged.iter().cloned().collect();
    assert!(acknowledged.len() >= 10, "the load made progress: {}", acknowledged.len());
    assert_eq!(acknowledged.len(), ledger.acknowledged.len(), "an Idempotency-Key retry never stores twice");

    // Every acknowledged upload reads back through the balancer.
    for id in &acknowledged {
        for path in [format!("/api/v1/images/{id}"), format!("/api/v1/images/{id}/file")] {
            let response = client.get(format!("{front}{path}")).send().await.unwrap();
            assert_eq!(response.status(), 200, "{path}");
        }
    }
    // Every row has its objects, and every object its row: what the killed instance stored without a row is
    // swept once its grace period is over.
    let db =
        Db::open(upshot::config::DatabaseUrl::Postgres(database_url.clone()), 2, Duration::from_secs(5)).await.unwrap();
    let swept = Instant::now();
    let (rows, orphans_gone) = loop {
        let keys: Vec<(String, String, String)> = db
            .run(|conn| {
                Ok(schema::images::table
                    .select((schema::images::id, schema::images::original_key, schema::images::thumbnail_key))
                    .load(conn)?)
            })
            .await
            .unwrap();
        let listed = s3_client().await.list_objects_v2().bucket(&bucket).max_keys(1000).send().await.unwrap();
        let objects: HashSet<String> = listed.contents().iter().filter_map(|o| o.key().map(str::to_owned)).collect();
        let expected: HashSet<String> = keys.iter().flat_map(|(_, o, t)| [o.clone(), t.clone()]).collect();
        assert_eq!(expected.difference(&objects).count(), 0, "rows whose objects are gone");
        let orphans = objects.difference(&expected).count();
        if orphans == 0 {
            break (keys.into_iter().map(|(id, _, _)| id).collect::<HashSet<String>>(), swept.elapsed());
        }
        assert!(swept.elapsed() < Duration::from_secs(30), "{orphans} orphan objects were never swept");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(acknowledged.is_subset(&rows), "every acknowledged upload has its row");

    // Every notification goes out: the outbox drains, and the subscriber's queue gets every image.
    let drained = Instant::now();
    loop {
        let unsent: i64 = db
            .run(|conn| {
                Ok(schema::outbox::table
                    .filter(schema::outbox::status.ne(outbox::OutboxStatus::Sent))
                    .count()
                    .get_result(conn)?)
            })
            .await
            .unwrap();
        if unsent == 0 {
            break;
        }
        assert!(drained.elapsed() < Duration::from_secs(60), "{unsent} notifications never went out");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let ids: Vec<String> = receive(&queue, rows.len(), Duration::from_secs(30))
        .await
        .iter()
        .map(|message| serde_json::from_str::<serde_json::Value>(&message.body).unwrap()["image_id"].to_string())
        .map(|id| id.trim_matches('"').to_owned())
        .collect();
    let distinct: HashSet<String> = ids.iter().cloned().collect();
    assert_eq!(distinct, rows, "one notification per stored image, none lost");
    let duplicates = ids.len() - distinct.len();

    let mut ready = Vec::new();
    for instance in &fleet {
        ready.push(instance.ready(&client, Duration::from_secs(10)).await);
    }
    println!(
        "faults: {} uploads acknowledged and readable ({} answers retried; statuses {:?}); {} rows, 0 missing \
         objects, no orphan object left {orphans_gone:?} after the checks began; {} notifications delivered, \
         {duplicates} duplicates; replacement instance ready in {replaced_in:?}; store back {:?} and SNS back \
         {:?} before the checks; both instances ready",
        acknowledged.len(),
        ledger.retried,
        ledger.statuses,
        rows.len(),
        distinct.len(),
        store_back.elapsed(),
        sns_back.elapsed(),
    );
}
