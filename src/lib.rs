//! Upshot: a self-hosted image intake service.
#![recursion_limit = "256"]

pub mod api;
pub mod app;
pub mod aws;
pub mod client_limits;
pub mod config;
pub mod connections;
pub mod db;
pub mod domain;
pub mod error;
pub mod imaging;
pub mod inference;
pub mod ingest;
pub mod metrics;
pub mod notify;
pub mod reconcile;
pub mod responses;
pub mod secret_file;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod traces;
pub mod web;

use std::sync::Arc;

use rocket::fairing::AdHoc;
use rocket::fs::FileServer;
use rocket::{Build, Rocket};
use rocket_dyn_templates::Template;

use crate::config::AppConfig;
use crate::domain::Signer;
use crate::state::AppState;

/// The whole server, as `main` and the tests build it. Start-up work (database migrations, store
/// connection) runs at ignition; a failure there stops the launch with the reason logged.
/// Without `Server` in front, it serves the socket Rocket binds, with no connection limits.
pub fn rocket(mut config: AppConfig) -> Rocket<Build> {
    let address = config.figment.extract_inner("address").unwrap_or(std::net::Ipv4Addr::LOCALHOST.into());
    let port = config.figment.extract_inner("port").unwrap_or(8000);
    config.follow_listen_address(std::net::SocketAddr::new(address, port));
    let figment = config.rocket_figment();
    build(figment, config, Arc::default(), Arc::default())
}

fn build(
    figment: rocket::figment::Figment,
    config: AppConfig,
    connections: Arc<connections::ConnectionStats>,
    peers: Arc<connections::Peers>,
) -> Rocket<Build> {
    let static_dir = config.settings.web.static_dir.clone();
    rocket::custom(figment)
        .manage(connections)
        .manage(peers)
        .manage(web::LoginThrottle::default())
        .attach(telemetry::RequestLog)
        .attach(web::security::SecurityHeaders::default())
        .attach(Template::fairing())
        .attach(AdHoc::try_on_ignite("database and object store", move |rocket| async move {
            match connect(config).await {
                Ok(state) => Ok(rocket.manage(state)),
                Err(reason) => {
                    log::error!("start-up failed: {reason}");
                    Err(rocket)
                }
            }
        }))
        .attach(AdHoc::on_liftoff("outbox relay and orphan sweeper", |rocket| {
            Box::pin(async move {
                if let Some(state) = rocket.state::<AppState>() {
                    start_background_tasks(state, rocket.shutdown());
                }
            })
        }))
        .mount("/", telemetry::traced(api::root_routes()))
        .mount("/", telemetry::traced(web::routes()))
        .mount("/api/v1", telemetry::traced(api::v1_routes()))
        .mount("/static", FileServer::from(static_dir).rank(20))
        .register("/", telemetry::traced_catchers(responses::catchers()))
}

/// The service as it runs: the public socket (see `connections`) in front of the server on a loopback port.
pub struct Server {
    rocket: Rocket<rocket::Ignite>,
    gate: connections::Gate,
    upstream: tokio::sync::oneshot::Receiver<(std::net::SocketAddr, connections::AllowedMethods)>,
}

impl Server {
    /// Binds the configured address and ignites the server (migrations, store, models).
    pub async fn bind(mut config: AppConfig) -> Result<Server, String> {
        let address: std::net::IpAddr = config.figment.extract_inner("address").map_err(|e| e.to_string())?;
        let port: u16 = config.figment.extract_inner("port").map_err(|e| e.to_string())?;
        let public = std::net::SocketAddr::new(address, port);
        let settings = &config.settings.connections;
        let limits = connections::Limits {
            header: std::time::Duration::from_secs(settings.header_timeout_secs),
            idle: std::time::Duration::from_secs(settings.idle_timeout_secs),
            min_body_rate: settings.min_body_bytes_per_sec,
            body_grace: std::time::Duration::from_secs(settings.body_grace_secs),
        };
        // Behind proxies every connection comes from one of them: a per-address cap would cap the proxy.
        let per_client = (config.settings.web.trusted_proxy_hops == 0).then_some(settings.max_connections_per_client);
        let gate = connections::Gate::bind(public, settings.max_connections, per_client, limits)
            .await
            .map_err(|e| format!("cannot listen on {public}: {e}"))?;
        config.follow_listen_address(gate.local_addr().map_err(|e| e.to_string())?);
        let (report_upstream, upstream) = tokio::sync::oneshot::channel();
        let report_upstream = std::sync::Mutex::new(Some(report_upstream));
        let figment = config.rocket_figment().merge(("address", "127.0.0.1")).merge(("port", 0));
        let rocket = build(figment, config, gate.stats(), gate.peers())
            .attach(AdHoc::on_liftoff("public socket", move |rocket| {
                Box::pin(async move {
                    let loopback = std::net::SocketAddr::new(rocket.config().address, rocket.config().port);
                    let routes: Vec<_> = rocket.routes().map(|r| (r.method, r.uri.path().to_owned())).collect();
                    let allowed: connections::AllowedMethods = Arc::new(move |path: &str| {
                        let methods = responses::allowed_methods(routes.iter().map(|(m, p)| (*m, p.as_str())), path);
                        (!methods.is_empty()).then(|| responses::allow_header(&methods))
                    });
                    if let Some(report) = report_upstream.lock().unwrap_or_else(|e| e.into_inner()).take() {
                        let _ = report.send((loopback, allowed));
                    }
                })
            }))
            .ignite()
            .await
            .map_err(|e| e.to_string())?;
        Ok(Server { rocket, gate, upstream })
    }

    pub fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.gate.local_addr()
    }

    pub fn shutdown(&self) -> rocket::Shutdown {
        self.rocket.shutdown()
    }

    /// Serves until shutdown (a signal, or `shutdown().notify()`).
    pub async fn run(self) -> Result<(), rocket::Error> {
        let Server { rocket, gate, upstream } = self;
        let shutdown = rocket.shutdown();
        let public = gate.local_addr().map(|a| a.to_string()).unwrap_or_default();
        tokio::spawn(async move {
            tokio::select! {
                _ = shutdown.clone() => {}
                upstream = upstream => if let Ok((loopback, allowed)) = upstream {
                    log::info!("listening on {public}");
                    gate.run(loopback, allowed, shutdown).await;
                },
            }
        });
        rocket.launch().await.map(drop)
    }
}

/// Creates the spool directory, emptied of what a killed process left in it.
fn sweep_spool(dir: &std::path::Path) -> Result<usize, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("spool directory {}: {e}", dir.display()))?;
    let mut swept = 0;
    for entry in std::fs::read_dir(dir).map_err(|e| format!("spool directory {}: {e}", dir.display()))?.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_file()) && std::fs::remove_file(entry.path()).is_ok() {
            swept += 1;
        }
    }
    Ok(swept)
}

async fn connect(config: AppConfig) -> Result<AppState, String> {
    let swept = sweep_spool(&config.spool_dir())?;
    if swept > 0 {
        log::info!("removed {swept} upload spool file(s) left by an earlier run");
    }
    let settings = &config.settings;
    let secret = match &settings.keys.secret_key {
        Some(secret) => secret.clone(),
        None => secret_file::load_or_create(&config.secret_key_file())
            .map_err(|e| format!("secret key {}: {e}", config.secret_key_file().display()))?,
    };
    let timeout = std::time::Duration::from_secs(settings.database.database_timeout_secs);
    let db = db::Db::open(config.database.clone(), settings.database.database_pool_size, timeout)
        .await
        .map_err(|e| format!("database ({}): {e}", config.database.backend_name()))?;
    let aws = Arc::new(aws::SharedConfig::default());
    let store = store::from_settings(&settings.store, config.local_store_dir(), &aws)
        .await
        .map_err(|e| format!("object store: {e}"))?;
    let engine_config = inference::EngineConfig {
        models_dir: settings.inference.models_dir.clone(),
        ort_library: settings.inference.ort_lib.clone(),
        sessions: settings.inference.inference_sessions,
        threads_per_session: settings.inference.inference_threads,
        wait: std::time::Duration::from_millis(settings.inference.inference_wait_ms),
        top_k: settings.inference.top_k,
    };
    let engine = tokio::task::spawn_blocking(move || inference::Engine::load(&engine_config))
        .await
        .map_err(|e| format!("model loading task failed: {e}"))?
        .map_err(|e| e.to_string())?;
    log::info!(
        "database: {}; object store: {}; upload limit {}; {} CPU slots; model {} {} in {} sessions",
        db.backend(),
        store.describe(),
        domain::human_bytes(settings.uploads.max_upload_bytes),
        settings.uploads.cpu_slots,
        engine.classifier_info().name,
        engine.classifier_info().version,
        engine.sessions(),
    );
    let notifier = notify::from_settings(&settings.notify, &aws).await.map_err(|e| format!("notifier: {e}"))?;
    log::info!("notifications: {}", notifier.describe());
    let upload_origin = app::direct_uploads::upload_origin(store.as_ref()).await;
    let app = app::App::new(config, db, store, aws, Signer::new(&secret), engine);
    Ok(AppState::new(app, notifier, upload_origin))
}

/// Every `READINESS_REPORT_PERIOD`, StatsD gauges the stack alarms on: the readiness checks' outcome as
/// `upshot_ready` (1 or 0), since the load balancer asks only for liveness; and the outbox's
/// `upshot_outbox_oldest_unsent_seconds` (0 when nothing waits) and `upshot_outbox_failed` (parked
/// notifications), left out when the database does not answer (readiness says so).
async fn report_readiness(
    state: AppState,
    statsd: std::net::SocketAddr,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) {
    const READINESS_REPORT_PERIOD: std::time::Duration = std::time::Duration::from_secs(60);
    let mut warned = false;
    loop {
        let ready = state.dependencies().await.ready();
        let mut datagram = format!("upshot_ready:{}|g", u8::from(ready));
        if let Ok(backlog) = state.app.db.run(db::outbox::backlog).await {
            let waited = backlog.oldest_unsent_secs().unwrap_or(0);
            datagram +=
                &format!("\nupshot_outbox_oldest_unsent_seconds:{waited}|g\nupshot_outbox_failed:{}|g", backlog.failed);
        }
        match metrics::send_statsd(statsd, &datagram) {
            Ok(()) => warned = false,
            Err(error) if !warned => {
                warned = true;
                log::warn!("readiness not sent to StatsD at {statsd}: {error}");
            }
            Err(_) => {}
        }
        tokio::select! {
            _ = tokio::time::sleep(READINESS_REPORT_PERIOD) => {}
            _ = stopped.changed() => return,
        }
    }
}

/// The background work: the relay that publishes the outbox, the sweepers, and (when configured) the poller
/// of upload events; all stopped by the server's own shutdown.
fn start_background_tasks(state: &AppState, shutdown: rocket::Shutdown) {
    let settings = &state.app.config.settings;
    let lease = std::time::Duration::from_secs(settings.outbox.outbox_lease_secs);
    let publish_timeout = config::SNS_PUBLISH_TIMEOUT;
    let config = notify::relay::RelayConfig {
        batch: notify::relay::batch_for(lease, publish_timeout, 100),
        lease,
        poll: std::time::Duration::from_millis(settings.outbox.outbox_poll_ms),
        max_attempts: settings.outbox.outbox_max_attempts,
        retry_horizon: std::time::Duration::from_secs(settings.outbox.outbox_retry_horizon_hours * 3600),
        publish_timeout,
        backoff_base: std::time::Duration::from_millis(settings.outbox.outbox_backoff_base_ms),
        backoff_cap: std::time::Duration::from_secs(settings.outbox.outbox_backoff_cap_secs),
        public_url: state.app.config.public_url().to_owned(),
        max_per_hour: settings.notify.notify_max_per_hour,
        digest_every: std::time::Duration::from_secs(settings.notify.notify_digest_secs),
    };
    let relay =
        notify::relay::Relay::new(state.app.db.clone(), state.notifier.clone(), config, state.app.outbox_wake.clone());
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop.send(true);
    });
    tokio::spawn(app::sweep::run(state.app.clone(), stopped.clone()));
    tokio::spawn(app::direct_uploads::run_sweeper(state.app.clone(), stopped.clone()));
    if let Some(queue_url) = settings.direct_uploads.upload_queue_url.clone() {
        tokio::spawn(app::upload_events::run(state.app.clone(), queue_url, stopped.clone()));
    }
    if let Some(statsd) = settings.reconcile.statsd_addr {
        if let Err(error) = state.app.metrics.send_to_statsd(statsd) {
            log::warn!("uploads, errors and inference times not sent to StatsD at {statsd}: {error}");
        }
        tokio::spawn(report_readiness(state.clone(), statsd, stopped.clone()));
    }
    tokio::spawn(relay.run(stopped));
}
