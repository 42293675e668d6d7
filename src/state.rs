//! What every request handler shares: configuration, database, object store, and the CPU budget.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

use crate::config::AppConfig;
use crate::db::Db;
use crate::domain::DeleteTokens;
use crate::error::{AppError, AppResult, ErrorCode};
use crate::inference::Engine;
use crate::ingest::{ImageLimits, IngestPolicy};
use crate::notify::Notifier;
use crate::store::ObjectStore;

#[derive(Clone)]
pub struct AppState {
    pub config: Arc<AppConfig>,
    pub db: Db,
    pub store: Arc<dyn ObjectStore>,
    pub tokens: DeleteTokens,
    pub policy: Arc<IngestPolicy>,
    pub inference: Arc<Engine>,
    pub notifier: Arc<dyn Notifier>,
    /// Wakes the outbox relay when an upload commits.
    pub outbox_wake: Arc<tokio::sync::Notify>,
    /// Fingerprint of the static assets, for cache-busting URLs.
    pub asset_version: String,
    pub metrics: Arc<crate::metrics::Metrics>,
    cpu: Arc<Semaphore>,
}

impl AppState {
    pub fn new(
        config: AppConfig,
        db: Db,
        store: Arc<dyn ObjectStore>,
        tokens: DeleteTokens,
        inference: Engine,
        notifier: Arc<dyn Notifier>,
    ) -> Self {
        let settings = &config.settings;
        let policy = IngestPolicy {
            accepted: config.accepted_formats.clone(),
            limits: ImageLimits {
                max_width: settings.max_image_width,
                max_height: settings.max_image_height,
                max_pixels: settings.max_image_pixels,
            },
            thumbnail_size: settings.thumbnail_size,
        };
        let cpu = Arc::new(Semaphore::new(config.cpu_slots));
        let asset_version = crate::web::security::asset_version(&settings.static_dir);
        AppState {
            config: Arc::new(config),
            db,
            store,
            tokens,
            policy: Arc::new(policy),
            inference: Arc::new(inference),
            notifier,
            outbox_wake: Arc::new(tokio::sync::Notify::new()),
            asset_version,
            metrics: Arc::default(),
            cpu,
        }
    }

    /// Image decoding slots free right now.
    pub fn cpu_slots_free(&self) -> usize {
        self.cpu.available_permits()
    }

    /// Runs CPU-heavy work (decoding, encoding) on a blocking thread, at most `cpu_slots` at once. A request
    /// that cannot get a slot within `cpu_wait_ms` is told to come back, rather than queueing without bound.
    pub async fn run_cpu<T, F>(&self, work: F) -> AppResult<T>
    where
        F: FnOnce(&IngestPolicy) -> AppResult<T> + Send + 'static,
        T: Send + 'static,
    {
        let wait = Duration::from_millis(self.config.settings.cpu_wait_ms);
        let permit = tokio::time::timeout(wait, self.cpu.clone().acquire_owned())
            .await
            .map_err(|_| {
                AppError::new(ErrorCode::Busy, "The server is busy processing other images; try again shortly.")
                    .retry_after(2)
            })?
            .map_err(AppError::internal)?;
        let policy = self.policy.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            work(&policy)
        })
        .await
        .map_err(|e| AppError::internal(format!("image task failed: {e}")))?
    }
}
