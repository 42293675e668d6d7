//! Starts the real server on a loopback port, on a fresh database and a fresh store per test.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use diesel::prelude::*;
use figment::Figment;
use reqwest::multipart::{Form, Part};
use tempfile::TempDir;
use upshot::config::AppConfig;
use upshot::db::{schema, Db};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stack {
    /// SQLite file and local object directory: the embedded default.
    Embedded,
    /// PostgreSQL and S3 (moto on 127.0.0.1), as in production.
    Cloud,
}

pub const SECRET: &str = "test-secret-key-that-is-long-enough-0123456789";
pub const ADMIN_KEY: &str = "admin-key-for-tests-0123456789";
/// A per-client allowance no test reaches.
pub const UNLIMITED_CLIENT: u32 = 1_000_000;

fn required_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the suite with scripts/test.sh, which starts PostgreSQL and the S3 endpoint")
    })
}

pub fn fixture(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn unique_name(prefix: &str) -> String {
    format!("{prefix}{}", upshot::domain::ImageId::generate().as_str()[..16].to_owned())
}

/// A fresh PostgreSQL database on the test cluster; returns its URL.
pub fn create_pg_database() -> String {
    create_pg_database_on(&required_env("UPSHOT_TEST_PG_URL"))
}

/// A fresh PostgreSQL database on the cluster that `admin_url` reaches; returns its URL.
pub fn create_pg_database_on(admin_url: &str) -> String {
    let name = unique_name("upshot_test_");
    let mut admin = PgConnection::establish(admin_url).expect("connect to the test cluster");
    diesel::sql_query(format!("CREATE DATABASE {name}")).execute(&mut admin).expect("create database");
    let base = admin_url.rsplit_once('/').expect("URL with a database name").0;
    format!("{base}/{name}")
}

pub async fn s3_client() -> aws_sdk_s3::Client {
    let endpoint = required_env("UPSHOT_TEST_AWS_ENDPOINT");
    let shared = aws_config::defaults(aws_config::BehaviorVersion::latest()).load().await;
    let config = aws_sdk_s3::config::Builder::from(&shared).endpoint_url(endpoint).force_path_style(true).build();
    aws_sdk_s3::Client::from_conf(config)
}

async fn shared_aws_config() -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(required_env("UPSHOT_TEST_AWS_ENDPOINT"))
        .load()
        .await
}

pub async fn sns_client() -> aws_sdk_sns::Client {
    aws_sdk_sns::Client::new(&shared_aws_config().await)
}

pub async fn sqs_client() -> aws_sdk_sqs::Client {
    aws_sdk_sqs::Client::new(&shared_aws_config().await)
}

/// An SQS queue subscribed to the topic with raw delivery, so SNS message attributes arrive as SQS ones.
pub async fn subscribed_queue(topic_arn: &str, filter_policy: Option<&str>) -> String {
    let sqs = sqs_client().await;
    let name = format!("upshot-test-{}", &upshot::domain::ImageId::generate().as_str()[..12]);
    let queue_url = sqs.create_queue().queue_name(name).send().await.unwrap().queue_url().unwrap().to_owned();
    let attributes = sqs
        .get_queue_attributes()
        .queue_url(&queue_url)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
        .send()
        .await
        .unwrap();
    let queue_arn = attributes.attributes().unwrap()[&aws_sdk_sqs::types::QueueAttributeName::QueueArn].clone();
    let mut subscribe = sns_client()
        .await
        .subscribe()
        .topic_arn(topic_arn)
        .protocol("sqs")
        .endpoint(queue_arn)
        .attributes("RawMessageDelivery", "true");
    if let Some(policy) = filter_policy {
        subscribe = subscribe.attributes("FilterPolicy", policy);
    }
    subscribe.send().await.unwrap();
    queue_url
}

/// A message as a subscriber's queue received it.
#[derive(Debug, Clone)]
pub struct Delivered {
    pub attributes: std::collections::HashMap<String, String>,
    pub body: String,
}

/// Receives until `expected` messages arrived or `within` passed, then drains briefly for extras.
pub async fn receive(queue_url: &str, expected: usize, within: Duration) -> Vec<Delivered> {
    let sqs = sqs_client().await;
    let deadline = Instant::now() + within;
    let mut delivered = Vec::new();
    let mut quiet_polls = 0;
    while Instant::now() < deadline && (delivered.len() < expected || quiet_polls < 2) {
        let output = sqs
            .receive_message()
            .queue_url(queue_url)
            .max_number_of_messages(10)
            .message_attribute_names("All")
            .wait_time_seconds(0)
            .send()
            .await
            .unwrap();
        let batch = output.messages();
        if batch.is_empty() {
            quiet_polls += usize::from(delivered.len() >= expected);
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        for message in batch {
            let attributes = message
                .message_attributes()
                .map(|map| {
                    map.iter().map(|(k, v)| (k.clone(), v.string_value().unwrap_or_default().to_owned())).collect()
                })
                .unwrap_or_default();
            delivered.push(Delivered { attributes, body: message.body().unwrap_or_default().to_owned() });
            sqs.delete_message()
                .queue_url(queue_url)
                .receipt_handle(message.receipt_handle().unwrap())
                .send()
                .await
                .unwrap();
        }
    }
    delivered
}

pub async fn create_topic() -> String {
    let name = unique_name("upshot-test-");
    let topic = sns_client().await.create_topic().name(name).send().await.expect("create topic");
    topic.topic_arn().unwrap().to_owned()
}

pub async fn create_bucket() -> String {
    let bucket = unique_name("upshot-test-");
    s3_client().await.create_bucket().bucket(&bucket).send().await.expect("create bucket");
    bucket
}

/// An `upshot serve` child process, killed when dropped.
pub struct ServerProcess(pub std::process::Child);

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    pub data_dir: TempDir,
    pub bucket: Option<String>,
    pub topic_arn: Option<String>,
    pub database_url: String,
    pub db: Db,
    shutdown: rocket::Shutdown,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.clone().notify();
    }
}

/// The settings of a test server on `stack`, before any test-specific change.
pub async fn base_figment(stack: Stack, data_dir: &Path) -> (Figment, String, Option<String>) {
    let port = free_port();
    let figment = AppConfig::figment()
        .merge(("address", "127.0.0.1"))
        .merge(("port", port))
        .merge(("public_url", format!("http://127.0.0.1:{port}")))
        // Every test is one client on 127.0.0.1; the per-client limits have tests of their own.
        .merge(("client_requests_per_minute", UNLIMITED_CLIENT))
        .merge(("client_request_burst", UNLIMITED_CLIENT))
        .merge(("max_intake_in_flight_per_client", UNLIMITED_CLIENT))
        .merge(("max_connections_per_client", UNLIMITED_CLIENT))
        // A message per upload, as the notification tests count them; digests have tests of their own.
        .merge(("notify_max_per_hour", 0))
        .merge(("log_level", "off"))
        .merge(("cli_colors", false))
        .merge(("shutdown.ctrlc", false))
        .merge(("shutdown.signals", Vec::<String>::new()))
        .merge(("shutdown.grace", 1))
        .merge(("shutdown.mercy", 1))
        .merge(("data_dir", data_dir))
        .merge(("secret_key", SECRET))
        // Quick retries, so outage tests finish in seconds.
        .merge(("outbox_poll_ms", 200))
        .merge(("outbox_backoff_base_ms", 100))
        .merge(("outbox_backoff_cap_secs", 1))
        .merge(("admin_api_key", ADMIN_KEY))
        .merge(("template_dir", Path::new(env!("CARGO_MANIFEST_DIR")).join("templates")))
        .merge(("static_dir", Path::new(env!("CARGO_MANIFEST_DIR")).join("static")));
    match stack {
        Stack::Embedded => {
            let url = format!("sqlite://{}", data_dir.join("upshot.sqlite3").display());
            (figment.merge(("database_url", &url)).merge(("store", "local")), url, None)
        }
        Stack::Cloud => {
            let url = create_pg_database();
            let bucket = create_bucket().await;
            let figment = figment
                .merge(("database_url", &url))
                .merge(("store", "s3"))
                .merge(("s3_bucket", &bucket))
                .merge(("s3_prefix", "uploads"))
                .merge(("s3_force_path_style", true))
                .merge(("s3_endpoint_url", required_env("UPSHOT_TEST_AWS_ENDPOINT")))
                .merge(("notifier", "sns"))
                .merge(("sns_topic_arn", create_topic().await))
                .merge(("sns_endpoint_url", required_env("UPSHOT_TEST_AWS_ENDPOINT")));
            (figment, url, Some(bucket))
        }
    }
}

pub async fn spawn(stack: Stack) -> TestApp {
    spawn_with(stack, |figment| figment).await
}

pub async fn spawn_with(stack: Stack, customize: impl FnOnce(Figment) -> Figment) -> TestApp {
    let data_dir = tempfile::tempdir().unwrap();
    let (figment, _, bucket) = base_figment(stack, data_dir.path()).await;
    let figment = customize(figment);
    let database_url: String = figment.extract_inner("database_url").unwrap();
    let topic_arn: Option<String> = figment.extract_inner("sns_topic_arn").ok();
    let config = AppConfig::from_figment(figment).expect("valid test configuration");
    let database = config.database.clone();
    let server = upshot::Server::bind(config).await.expect("server starts");
    let shutdown = server.shutdown();
    let base = format!("http://{}", server.local_addr().unwrap());
    tokio::spawn(server.run());
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    for _ in 0..100 {
        if client.get(format!("{base}/healthz")).send().await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let db = Db::open(database, 2, Duration::from_secs(5)).await.expect("test database handle");
    TestApp { base, client, data_dir, bucket, topic_arn, database_url, db, shutdown }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).send().await.unwrap()
    }

    pub async fn upload_form(&self, path: &str, form: Form) -> reqwest::Response {
        self.client.post(self.url(path)).multipart(form).send().await.unwrap()
    }

    pub async fn upload(&self, fixture_name: &str) -> reqwest::Response {
        self.upload_form("/api/v1/images", file_form(fixture_name)).await
    }

    /// Uploads and returns the 201 body, failing the test otherwise.
    pub async fn upload_ok(&self, fixture_name: &str) -> serde_json::Value {
        let response = self.upload(fixture_name).await;
        let status = response.status();
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(status, 201, "{fixture_name}: {body}");
        body
    }

    pub async fn image_rows(&self) -> i64 {
        self.db.run(|conn| Ok(schema::images::table.count().get_result(conn)?)).await.unwrap()
    }

    pub async fn outbox_rows(&self) -> i64 {
        self.db.run(|conn| Ok(schema::outbox::table.count().get_result(conn)?)).await.unwrap()
    }

    /// Every object in the store, as keys relative to the store's root (or prefix).
    pub async fn object_keys(&self) -> Vec<String> {
        match &self.bucket {
            None => {
                let root = self.data_dir.path().join("objects");
                let mut keys = Vec::new();
                walk(&root, &root, &mut keys);
                keys.sort();
                keys
            }
            Some(bucket) => {
                let listed = s3_client().await.list_objects_v2().bucket(bucket).send().await.unwrap();
                let mut keys: Vec<String> = listed
                    .contents()
                    .iter()
                    .filter_map(|o| o.key())
                    .map(|k| k.strip_prefix("uploads/").expect("objects live under the prefix").to_owned())
                    .collect();
                keys.sort();
                keys
            }
        }
    }

    /// Runs SQL straight on the test database, bypassing the server.
    pub async fn execute_sql(&self, sql: &'static str) {
        use diesel::connection::SimpleConnection;
        self.db.run(move |conn| Ok(conn.batch_execute(sql)?)).await.unwrap();
    }
}

fn walk(root: &Path, dir: &Path, keys: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path: PathBuf = entry.path();
        if path.file_name().is_some_and(|n| n == ".tmp") {
            continue;
        }
        if path.is_dir() {
            walk(root, &path, keys);
        } else {
            keys.push(path.strip_prefix(root).unwrap().to_string_lossy().into_owned());
        }
    }
}

pub fn file_form(fixture_name: &str) -> Form {
    bytes_form(fixture_name, fixture(fixture_name))
}

pub fn bytes_form(file_name: &str, bytes: Vec<u8>) -> Form {
    Form::new().part("file", Part::bytes(bytes).file_name(file_name.to_owned()))
}

/// A multipart body built by hand, for what reqwest will not send (non-UTF-8 filenames).
pub fn raw_multipart(filename: &[u8], content: &[u8]) -> (String, Vec<u8>) {
    let boundary = "upshot-test-boundary-7c1f";
    let mut body = Vec::new();
    body.extend_from_slice(
        format!("--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"").as_bytes(),
    );
    body.extend_from_slice(filename);
    body.extend_from_slice(b"\"\r\nContent-Type: application/octet-stream\r\n\r\n");
    body.extend_from_slice(content);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

pub async fn error_code(response: reqwest::Response) -> (u16, String, serde_json::Value) {
    let status = response.status().as_u16();
    let request_id = response.headers().get("x-request-id").map(|v| v.to_str().unwrap().to_owned());
    let body: serde_json::Value = response.json().await.expect("error bodies are JSON");
    let code = body["error"]["code"].as_str().unwrap_or_else(|| panic!("no error code in {body}")).to_owned();
    assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
    assert_eq!(body["error"]["request_id"].as_str(), request_id.as_deref(), "request id in body and header");
    (status, code, body)
}

/// Declares each listed `async fn case(stack: Stack)` as one test per stack.
#[macro_export]
macro_rules! on_both_stacks {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::helpers::Stack::Embedded).await
                }
            )*
        }
        mod postgres_s3 {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::helpers::Stack::Cloud).await
                }
            )*
        }
    };
}

/// A TCP proxy to an endpoint (S3, SNS) that can be cut: while down it refuses new connections and drops the
/// open ones, as an unreachable endpoint would.
pub struct Cuttable {
    pub url: String,
    up: Arc<AtomicBool>,
    down_signal: watch::Sender<u64>,
}

impl Cuttable {
    pub async fn start(target: String) -> Cuttable {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let up = Arc::new(AtomicBool::new(true));
        let (down_signal, _) = watch::channel(0u64);
        let (flag, signal) = (up.clone(), down_signal.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else { return };
                if !flag.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let target = target.clone();
                let mut cut = signal.subscribe();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(target).await else { return };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Cuttable { url, up, down_signal }
    }

    pub fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::SeqCst);
        if !up {
            self.down_signal.send_modify(|n| *n += 1);
        }
    }
}

/// The metrics text once it contains `needle` (at most 10 s).
pub async fn eventually_metrics(app: &TestApp, needle: &str) -> String {
    let started = Instant::now();
    loop {
        let metrics = app.get("/metrics").await.text().await.unwrap();
        if metrics.contains(needle) {
            return metrics;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{needle} never appeared in {metrics}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
