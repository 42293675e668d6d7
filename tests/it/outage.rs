//! A database restart costs only the requests in flight: clients get 503 `DATABASE_UNAVAILABLE` with
//! `Retry-After` meanwhile, and the instance recovers by itself, with nothing half-written.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::PgConnection;
use serde_json::Value;
use tempfile::TempDir;
use tokio::sync::watch;
use upshot::db::outbox;
use upshot::db::schema;

use crate::helpers::{create_pg_database_on, error_code, spawn_with, Stack, TestApp};

/// How soon after the database is back everything must work again.
const RECOVERY_BUDGET: Duration = Duration::from_secs(5);

/// A PostgreSQL cluster of this test's own, which it stops and starts again on the same port.
struct PrivateCluster {
    state: TempDir,
    admin_url: String,
}

impl PrivateCluster {
    async fn start() -> PrivateCluster {
        PrivateCluster::start_with(None).await
    }

    /// `superuser_password`: TCP connections must authenticate with a password, as on RDS.
    async fn start_with(superuser_password: Option<&str>) -> PrivateCluster {
        let state = tempfile::tempdir().unwrap();
        let exports = services_with(state.path(), &["pg-start"], superuser_password).await;
        let admin_url = exports
            .lines()
            .find_map(|line| line.strip_prefix("export UPSHOT_TEST_PG_URL="))
            .unwrap_or_else(|| panic!("no URL in {exports:?}"))
            .to_owned();
        PrivateCluster { state, admin_url }
    }

    /// As a crash or a failover does: connections are cut, nothing is shut down politely.
    async fn kill(&self) {
        services(self.state.path(), &["pg-stop", "immediate"]).await;
    }

    async fn resume(&self) {
        services(self.state.path(), &["pg-start"]).await;
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        let _ = std::process::Command::new(script()).arg("pg-remove").arg(self.state.path()).status();
    }
}

fn script() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/test-services.sh")
}

async fn services(state: &Path, args: &[&str]) -> String {
    services_with(state, args, None).await
}

async fn services_with(state: &Path, args: &[&str], password: Option<&str>) -> String {
    let (command, state) = (args[0].to_owned(), state.to_owned());
    let rest: Vec<String> = args[1..].iter().map(|a| (*a).to_owned()).collect();
    let password = password.map(str::to_owned);
    let output = tokio::task::spawn_blocking(move || {
        let mut run = std::process::Command::new(script());
        if let Some(password) = password {
            run.env("UPSHOT_TEST_PG_PASSWORD", password);
        }
        run.arg(&command).arg(&state).args(&rest).output().unwrap()
    })
    .await
    .unwrap();
    assert!(output.status.success(), "test-services.sh {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap()
}

/// What the steady trickle of uploads saw: (status, error code).
type Seen = Arc<Mutex<Vec<(u16, Option<String>)>>>;

/// Uploads one small photo every 100 ms until told to stop, as light production traffic would.
fn trickle(app: &TestApp, stop: watch::Receiver<bool>) -> (Seen, tokio::task::JoinHandle<()>) {
    let seen: Seen = Arc::default();
    let (client, url, record) = (app.client.clone(), app.url("/api/v1/images"), seen.clone());
    let task = tokio::spawn(async move {
        while !*stop.borrow() {
            let form = crate::helpers::file_form("cat.jpg");
            if let Ok(response) = client.post(&url).multipart(form).send().await {
                let status = response.status().as_u16();
                let body: Value = response.json().await.unwrap_or(Value::Null);
                let code = body["error"]["code"].as_str().map(str::to_owned);
                record.lock().unwrap().push((status, code));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    (seen, task)
}

async fn outbox_status(app: &TestApp, image_id: &str) -> Option<outbox::OutboxStatus> {
    let image_id = image_id.to_owned();
    app.db
        .run(move |conn| {
            Ok(schema::outbox::table
                .filter(schema::outbox::image_id.eq(image_id))
                .select(schema::outbox::status)
                .first::<outbox::OutboxStatus>(conn)
                .optional()?)
        })
        .await
        .ok()
        .flatten()
}

/// Polls `ready` until it answers true; the time that took.
async fn time_until<F, Fut>(what: &str, mut ready: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !ready().await {
        assert!(started.elapsed() < Duration::from_secs(30), "{what} did not recover within 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_restart_costs_only_the_requests_in_flight() {
    let cluster = PrivateCluster::start().await;
    let database_url = create_pg_database_on(&cluster.admin_url);
    let app = spawn_with(Stack::Cloud, |figment| {
        // Dedup off: every upload writes objects of its own, which a failed commit must not leave behind.
        figment.merge(("database_url", &database_url)).merge(("database_timeout_secs", 1)).merge(("dedup", false))
    })
    .await;
    let earlier = app.upload_ok("cat.jpg").await;
    let earlier_path = format!("/api/v1/images/{}", earlier["id"].as_str().unwrap());
    let (stop_trickle, trickle_stop) = watch::channel(false);
    let (seen, trickle_task) = trickle(&app, trickle_stop);

    for round in 1..=2 {
        cluster.kill().await;

        let (status, code, _) = error_code(app.upload("cat.jpg").await).await;
        assert_eq!((status, code.as_str()), (503, "DATABASE_UNAVAILABLE"), "round {round}: an upload");
        let response = app.get(&earlier_path).await;
        let retry_after = response.headers().contains_key("retry-after");
        let (status, code, _) = error_code(response).await;
        assert_eq!((status, code.as_str()), (503, "DATABASE_UNAVAILABLE"), "round {round}: a metadata read");
        assert!(retry_after, "round {round}: a 503 without Retry-After");
        let readiness: Value = app.get("/readyz").await.json().await.unwrap();
        assert_eq!(readiness["checks"]["database"]["status"], "failed", "round {round}: {readiness}");

        cluster.resume().await;
        let back = Instant::now();
        let ready = time_until("readiness", || async { app.get("/readyz").await.status() == 200 }).await;
        let readable = time_until("reads", || async { app.get(&earlier_path).await.status() == 200 }).await;
        let fresh = app.upload_ok("cat.jpg").await;
        let fresh_id = fresh["id"].as_str().unwrap().to_owned();
        let published = time_until("the relay", || async {
            outbox_status(&app, &fresh_id).await == Some(outbox::OutboxStatus::Sent)
        })
        .await;
        let recovered = back.elapsed();
        println!(
            "round {round}: readiness back after {ready:?}, reads after {readable:?}, \
             a fresh upload published after {published:?}; all within {recovered:?}"
        );
        assert!(recovered <= RECOVERY_BUDGET, "round {round}: recovery took {recovered:?}");
    }

    stop_trickle.send(true).unwrap();
    trickle_task.await.unwrap();
    let seen = seen.lock().unwrap().clone();
    let unavailable = seen.iter().filter(|(status, _)| *status == 503).count();
    println!("the trickle of uploads saw {} answers, {unavailable} of them 503", seen.len());
    for (status, code) in &seen {
        match status {
            201 => {}
            503 => assert_eq!(code.as_deref(), Some("DATABASE_UNAVAILABLE")),
            other => panic!("an upload during the restarts got {other} {code:?}"),
        }
    }
    assert!(unavailable > 0 && seen.iter().any(|(status, _)| *status == 201), "{seen:?}");

    // Nothing half-written: every row has its objects, every object its row, every notification goes out.
    let consistent = time_until("consistency", || async { rows_match_objects(&app).await }).await;
    println!("rows and objects agree {consistent:?} after the load stopped");
    let rows = app.image_rows().await;
    time_until("the outbox", || async {
        let sent = app
            .db
            .run(|conn| {
                Ok(schema::outbox::table
                    .filter(schema::outbox::status.eq(outbox::OutboxStatus::Sent))
                    .count()
                    .get_result::<i64>(conn)?)
            })
            .await
            .unwrap();
        sent == rows
    })
    .await;
}

/// The object keys that rows point at equal the keys in the store.
async fn rows_match_objects(app: &TestApp) -> bool {
    let rows: Vec<(String, String)> = app
        .db
        .run(|conn| {
            Ok(schema::images::table
                .select((schema::images::original_key, schema::images::thumbnail_key))
                .load(conn)?)
        })
        .await
        .unwrap();
    let mut expected: Vec<String> = rows.into_iter().flat_map(|(original, thumb)| [original, thumb]).collect();
    expected.sort();
    expected.dedup(); // identical uploads share their objects
    expected == app.object_keys().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_sqlite_database_answers_503_then_recovers() {
    let app =
        spawn_with(Stack::Embedded, |figment| figment.merge(("database_timeout_secs", 1)).merge(("dedup", false)))
            .await;
    app.upload_ok("cat.jpg").await;
    let path = app.database_url.strip_prefix("sqlite://").unwrap().to_owned();
    let (locked_tx, locked) = std::sync::mpsc::channel();
    let (release, release_rx) = std::sync::mpsc::channel::<()>();
    // Another process's writer holding the database, as a long migration or a stuck tool would.
    let holder = std::thread::spawn(move || {
        let mut conn = SqliteConnection::establish(&path).unwrap();
        // The server's relay may be writing at this moment: wait for it like any other writer would.
        conn.batch_execute("PRAGMA busy_timeout = 5000").unwrap();
        conn.batch_execute("BEGIN EXCLUSIVE").unwrap();
        locked_tx.send(()).unwrap();
        release_rx.recv_timeout(Duration::from_secs(30)).unwrap();
        conn.batch_execute("COMMIT").unwrap();
    });
    locked.recv().unwrap();

    let started = Instant::now();
    let response = app.upload("cat.jpg").await;
    let retry_after = response.headers().contains_key("retry-after");
    let (status, code, _) = error_code(response).await;
    assert_eq!((status, code.as_str()), (503, "DATABASE_UNAVAILABLE"));
    assert!(retry_after, "a 503 without Retry-After");
    assert!(started.elapsed() < Duration::from_secs(4), "the busy wait is bounded: {:?}", started.elapsed());

    release.send(()).unwrap();
    holder.join().unwrap();
    app.upload_ok("cat.jpg").await;
    assert_eq!(app.image_rows().await, 2);
    time_until("the refused upload's objects to go", || async { rows_match_objects(&app).await }).await;
}

/// A libpq password file (`*:*:*:*:password`), readable by its owner only, or libpq ignores it.
fn write_passfile(path: &Path, password: &str) {
    use std::os::unix::fs::PermissionsExt;
    let escaped = password.replace('\\', "\\\\").replace(':', "\\:");
    let staged = path.with_extension("new");
    std::fs::write(&staged, format!("*:*:*:*:{escaped}\n")).unwrap();
    std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::rename(&staged, path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_database_password_is_read_again_without_a_restart() {
    // As on RDS: the application's role authenticates with a password that Secrets Manager rotates; the
    // instance keeps it in a libpq password file (`passfile=` in the URL), which libpq reads at each connect.
    let cluster = PrivateCluster::start_with(Some("cluster-admin-password")).await;
    let admin_url = cluster.admin_url.clone();
    let database = create_pg_database_on(&admin_url);
    let name = database.rsplit('/').next().unwrap().to_owned();
    let run_as_admin = move |sql: String| {
        let mut admin = PgConnection::establish(&admin_url).unwrap();
        admin.batch_execute(&sql).unwrap();
    };
    run_as_admin(format!(
        "CREATE ROLE upshot_app LOGIN PASSWORD 'first:pass\\word'; ALTER DATABASE {name} OWNER TO upshot_app"
    ));
    let passfile = cluster.state.path().join("pgpass");
    write_passfile(&passfile, "first:pass\\word");
    let host = database.split('@').nth(1).unwrap().to_owned(); // 127.0.0.1:PORT/NAME
    let url = format!("postgres://upshot_app@{host}?passfile={}", passfile.display());
    let app = spawn_with(Stack::Cloud, |figment| {
        figment.merge(("database_url", &url)).merge(("database_timeout_secs", 1)).merge(("dedup", false))
    })
    .await;
    app.upload_ok("cat.jpg").await;

    // The secret rotates: the role's password changes, and the connections that close are opened again.
    run_as_admin("ALTER ROLE upshot_app PASSWORD 'second-password'".to_owned());
    run_as_admin("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'upshot_app'".to_owned());
    let mut refused = 0;
    for _ in 0..3 {
        let (status, code, _) = error_code(app.upload("cat.jpg").await).await;
        assert_eq!((status, code.as_str()), (503, "DATABASE_UNAVAILABLE"), "the old password no longer works");
        refused += 1;
    }

    // The instance's refresher writes the new secret; nothing restarts.
    write_passfile(&passfile, "second-password");
    let recovered =
        time_until("uploads with the new password", || async { app.upload("cat.jpg").await.status() == 201 }).await;
    println!("{refused} uploads refused with the old password; recovered {recovered:?} after the new one was written");
    assert!(recovered <= RECOVERY_BUDGET, "{recovered:?}");
    assert!(time_until("readiness", || async { app.get("/readyz").await.status() == 200 }).await <= RECOVERY_BUDGET);
}

/// A TCP endpoint that accepts connections and never answers, as an S3 in a brownout or behind a black-holed
/// route does. Stops when dropped.
async fn hanging_endpoint() -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket); // read nothing, answer nothing
        }
    });
    (format!("http://{address}"), task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_s3_costs_a_request_its_timeout_then_a_503() {
    let (endpoint, hang) = hanging_endpoint().await;
    let app = spawn_with(Stack::Cloud, |figment| {
        figment.merge(("s3_endpoint_url", &endpoint)).merge(("s3_timeout_secs", 2)).merge(("dedup", false))
    })
    .await;
    let started = Instant::now();
    let response = tokio::time::timeout(Duration::from_secs(15), app.upload("cat.jpg"))
        .await
        .expect("an upload against a hanging store is answered, not held");
    let elapsed = started.elapsed();
    let retry_after = response.headers().contains_key("retry-after");
    let (status, code, _) = error_code(response).await;
    assert_eq!((status, code.as_str()), (503, "STORE_UNAVAILABLE"));
    assert!(retry_after);
    assert!(elapsed < Duration::from_secs(6), "an upload waited {elapsed:?} on a hanging store");
    let readiness = app.get("/readyz").await;
    assert_eq!(readiness.status(), 503);
    assert_eq!(app.image_rows().await, 0, "nothing written");
    hang.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_of_an_upload_that_died_before_its_row_are_swept() {
    let app = spawn_with(Stack::Embedded, |figment| {
        figment.merge(("s3_timeout_secs", 1)).merge(("orphan_grace_secs", 2)).merge(("dedup", false))
    })
    .await;
    // A finished upload leaves nothing pending.
    app.upload_ok("cat.jpg").await;
    // A process killed between its puts and its row: objects on disk, listed as pending.
    let id = upshot::domain::ImageId::generate().to_string();
    let keys = [format!("images/{id}/original.jpg"), format!("images/{id}/thumb.jpg")];
    for key in &keys {
        let path = app.data_dir.path().join("objects").join(key);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, b"objects of a dead upload").unwrap();
    }
    let (dead, listed) = (id.clone(), keys.clone());
    app.db
        .run(move |conn| upshot::db::pending::record(conn, &dead, &[&listed[0], &listed[1]], upshot::domain::now()))
        .await
        .unwrap();
    assert_eq!(app.object_keys().await.len(), 4);
    let swept = time_until("the sweep", || async { app.object_keys().await.len() == 2 }).await;
    println!("orphans swept {swept:?} after they were left");
    let pending: i64 = app.db.run(|conn| Ok(schema::pending_objects::table.count().get_result(conn)?)).await.unwrap();
    assert_eq!(pending, 0, "nothing left pending");
    assert_eq!(app.image_rows().await, 1, "the finished upload kept its row and objects");
    assert!(rows_match_objects(&app).await);
}
