//! What production adds to the embedded default: the instance's own endpoints kept off the load balancer, HSTS
//! behind https, links that follow the port the server really listens on, and the service's least-privilege
//! database role.

use std::time::Duration;

use diesel::prelude::*;
use upshot::config::{AppConfig, DatabaseUrl};

use crate::helpers::*;

#[tokio::test]
async fn metrics_and_readiness_answer_only_this_machine() {
    let app = spawn(Stack::Embedded).await;
    // A client on this machine (the CloudWatch agent, the deployment hooks) gets them.
    assert_eq!(app.get("/metrics").await.status(), 200);
    assert_eq!(app.get("/readyz").await.status(), 200);
    // Through the load balancer (which adds X-Forwarded-For), every spelling of the paths is unknown.
    for path in ["/metrics", "//metrics", "/%6detrics", "/metrics/", "/readyz", "//readyz", "/%72eadyz"] {
        for header in ["X-Forwarded-For", "Forwarded"] {
            let value = if header == "Forwarded" { "for=203.0.113.7" } else { "203.0.113.7" };
            let response = app.client.get(app.url(path)).header(header, value).send().await.unwrap();
            let (status, code, _) = error_code(response).await;
            assert_eq!((status, code.as_str()), (404, "NOT_FOUND"), "{path} with {header}");
        }
    }
    // The load balancer's own health check stays open.
    let healthz = app.client.get(app.url("/healthz")).header("X-Forwarded-For", "203.0.113.7").send().await.unwrap();
    assert_eq!(healthz.status(), 200);
}

#[tokio::test]
async fn https_deployments_send_hsts_and_plain_http_does_not() {
    let https = spawn_with(Stack::Embedded, |f| f.merge(("public_url", "https://upshot.example"))).await;
    for path in ["/", "/healthz", "/api/v1/images/00000000000000000000000000"] {
        let response = https.get(path).await;
        let hsts = response.headers().get("strict-transport-security").map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(hsts.as_deref(), Some("max-age=31536000"), "{path}");
    }
    let http = spawn(Stack::Embedded).await;
    assert!(http.get("/").await.headers().get("strict-transport-security").is_none());
}

#[tokio::test]
async fn links_follow_the_port_the_server_listens_on_when_public_url_is_unset() {
    let data_dir = tempfile::tempdir().unwrap();
    let (figment, _, _) = base_figment(Stack::Embedded, data_dir.path()).await;
    // Rocket.toml's [default] leaves public_url unset; port 0 is whatever the system gives.
    let mut config = AppConfig::from_figment(figment.merge(("port", 0))).unwrap();
    config.settings.web.public_url = None;
    let server = upshot::Server::bind(config).await.unwrap();
    let listening = server.local_addr().unwrap();
    let shutdown = server.shutdown();
    tokio::spawn(server.run());
    let base = format!("http://{listening}");
    let client = reqwest::Client::new();
    let mut session = None;
    for _ in 0..100 {
        let body = serde_json::json!({"filename": "cat.jpg", "byte_size": 1000, "content_type": "image/jpeg"});
        if let Ok(response) = client.post(format!("{base}/api/v1/uploads")).json(&body).send().await {
            session = Some(response.json::<serde_json::Value>().await.unwrap());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let url = session.expect("the server answers")["url"].as_str().unwrap().to_owned();
    assert!(url.starts_with(&format!("{base}/api/v1/uploads/")), "{url} is not on {base}");
    shutdown.notify();

    // Anywhere but the embedded default nothing can know the address people use: it must be given.
    let cloud = AppConfig::figment()
        .select("aws")
        .merge(("database_url", "postgres://app@db.internal/upshot"))
        .merge(("s3_bucket", "upshot-images-prod"))
        .merge(("sns_topic_arn", "arn:aws:sns:eu-west-1:123456789012:upshot-uploads"))
        .merge(("secret_key", "k".repeat(40)));
    let error = AppConfig::from_figment(cloud.merge(("public_url", ""))).unwrap_err().to_string();
    assert!(error.contains("public_url"), "{error}");
}

#[derive(QueryableByName)]
struct Allowed {
    #[diesel(sql_type = diesel::sql_types::Bool)]
    allowed: bool,
}

fn allowed(conn: &mut PgConnection, query: &str) -> bool {
    diesel::sql_query(query).get_result::<Allowed>(conn).unwrap().allowed
}

#[tokio::test]
async fn the_service_role_reads_and_writes_rows_and_changes_nothing_else() {
    // As on RDS, the tables' owner is no superuser: it may create roles, and only that.
    let suffix = upshot::domain::ImageId::generate().as_str()[..8].to_lowercase();
    let (role, owner_role) = (format!("upshot_app_{suffix}"), format!("upshot_owner_{suffix}"));
    let superuser_url = create_pg_database();
    let mut superuser = PgConnection::establish(&superuser_url).unwrap();
    diesel::sql_query(format!("CREATE ROLE {owner_role} LOGIN CREATEROLE PASSWORD 'owner'"))
        .execute(&mut superuser)
        .unwrap();
    let database = superuser_url.rsplit_once('/').unwrap().1.to_owned();
    diesel::sql_query(format!("ALTER DATABASE {database} OWNER TO {owner_role}")).execute(&mut superuser).unwrap();
    diesel::sql_query(format!("ALTER SCHEMA public OWNER TO {owner_role}")).execute(&mut superuser).unwrap();
    let host = superuser_url.rsplit_once('@').unwrap().1.rsplit_once('/').unwrap().0.to_owned();
    let owner_url = format!("postgres://{owner_role}:owner@{host}/{database}");
    let owner = DatabaseUrl::parse(&owner_url).unwrap();
    upshot::db::migrate(&owner).unwrap();
    upshot::db::provision_app_role(&owner, &role, "first password: with 'quotes'").unwrap();
    // Again, with a new password (a rotated secret at the next deployment): the role is kept, the password set.
    upshot::db::provision_app_role(&owner, &role, "second p@ss:word 'x'").unwrap();

    let app_url = format!("postgres://{role}:second%20p%40ss%3Aword%20%27x%27@{host}/{database}");
    let mut as_app = PgConnection::establish(&app_url).expect("the role logs in with its latest password");
    let mut as_owner = PgConnection::establish(&owner_url).unwrap();
    assert!(allowed(
        &mut as_owner,
        &format!("SELECT has_table_privilege('{role}', 'images', 'INSERT, UPDATE, DELETE, SELECT') AS allowed")
    ));
    assert!(!allowed(&mut as_owner, &format!("SELECT has_schema_privilege('{role}', 'public', 'CREATE') AS allowed")));
    assert!(!allowed(
        &mut as_owner,
        &format!("SELECT rolsuper OR rolcreaterole OR rolcreatedb AS allowed FROM pg_roles WHERE rolname = '{role}'")
    ));
    let refused = diesel::sql_query("DROP TABLE images").execute(&mut as_app).unwrap_err().to_string();
    assert!(refused.contains("must be owner"), "{refused}");
    let refused = diesel::sql_query("CREATE TABLE intruder (id int)").execute(&mut as_app).unwrap_err().to_string();
    assert!(refused.contains("permission denied"), "{refused}");

    // The whole service runs as that role on the migrated database: it starts (no migration to create) and
    // stores an upload.
    let app = spawn_with(Stack::Cloud, |f| f.merge(("database_url", app_url.clone()))).await;
    let stored = app.upload_ok("cat.jpg").await;
    assert!(stored["id"].is_string());
    assert_eq!(app.get("/readyz").await.status(), 200);
}
