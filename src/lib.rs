//! Upshot: a self-hosted image intake service.
#![recursion_limit = "256"]

pub mod api;
pub mod config;
pub mod db;
pub mod domain;
pub mod error;
pub mod images;
pub mod imaging;
pub mod inference;
pub mod ingest;
pub mod metrics;
pub mod notify;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod web;

use rocket::fairing::AdHoc;
use rocket::fs::FileServer;
use rocket::{Build, Rocket};
use rocket_dyn_templates::Template;

use crate::config::AppConfig;
use crate::domain::DeleteTokens;
use crate::state::AppState;

/// The whole server, as `main` and the tests build it. Start-up work (database migrations, store
/// connection) runs at ignition; a failure there stops the launch with the reason logged.
pub fn rocket(config: AppConfig) -> Rocket<Build> {
    let static_dir = config.settings.static_dir.clone();
    rocket::custom(config.rocket_figment())
        .attach(telemetry::RequestLog)
        .attach(web::security::SecurityHeaders)
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
                    start_relay(state, rocket.shutdown());
                }
            })
        }))
        .mount("/", api::root_routes())
        .mount("/", web::routes())
        .mount("/api/v1", api::v1_routes())
        .mount("/static", FileServer::from(static_dir).rank(20))
        .register("/", api::catchers())
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
    let secret = match &settings.secret_key {
        Some(secret) => secret.clone(),
        None => config::load_or_create_secret(&config.secret_key_file())
            .map_err(|e| format!("secret key {}: {e}", config.secret_key_file().display()))?,
    };
    let timeout = std::time::Duration::from_secs(settings.database_timeout_secs);
    let db = db::Db::open(config.database.clone(), settings.database_pool_size, timeout)
        .await
        .map_err(|e| format!("database ({}): {e}", config.database.backend_name()))?;
    let store = store::from_config(&config).await.map_err(|e| format!("object store: {e}"))?;
    let engine_config = inference::EngineConfig {
        models_dir: settings.models_dir.clone(),
        ort_library: settings.ort_lib.clone(),
        sessions: config.inference_sessions,
        threads_per_session: settings.inference_threads,
        wait: std::time::Duration::from_millis(settings.inference_wait_ms),
        top_k: settings.top_k,
    };
    let engine = tokio::task::spawn_blocking(move || inference::Engine::load(&engine_config))
        .await
        .map_err(|e| format!("model loading task failed: {e}"))?
        .map_err(|e| e.to_string())?;
    log::info!(
        "database: {}; object store: {}; upload limit {}; {} CPU slots; model {} {} in {} sessions",
        db.backend(),
        store.describe(),
        config::human_bytes(settings.max_upload_bytes),
        config.cpu_slots,
        engine.classifier_info().name,
        engine.classifier_info().version,
        engine.sessions(),
    );
    let notifier = notify::from_config(&config).await.map_err(|e| format!("notifier: {e}"))?;
    log::info!("notifications: {}", notifier.describe());
    Ok(AppState::new(config, db, store, DeleteTokens::new(&secret), engine, notifier))
}

/// The relay that publishes the outbox, stopped by the server's own shutdown.
fn start_relay(state: &AppState, shutdown: rocket::Shutdown) {
    let settings = &state.config.settings;
    let lease = std::time::Duration::from_secs(settings.outbox_lease_secs);
    let publish_timeout = config::SNS_PUBLISH_TIMEOUT;
    let config = notify::relay::RelayConfig {
        batch: notify::relay::batch_for(lease, publish_timeout, 20),
        lease,
        poll: std::time::Duration::from_millis(settings.outbox_poll_ms),
        max_attempts: settings.outbox_max_attempts,
        retry_horizon: std::time::Duration::from_secs(settings.outbox_retry_horizon_hours * 3600),
        publish_timeout,
        backoff_base: std::time::Duration::from_millis(settings.outbox_backoff_base_ms),
        backoff_cap: std::time::Duration::from_secs(settings.outbox_backoff_cap_secs),
        public_url: settings.public_url.clone(),
    };
    let relay = notify::relay::Relay::new(state.db.clone(), state.notifier.clone(), config, state.outbox_wake.clone());
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop.send(true);
    });
    tokio::spawn(ingest::sweep::run(state.clone(), stopped.clone()));
    tokio::spawn(relay.run(stopped));
}
