//! What every request handler shares: the upload app and what it works with (configuration, database,
//! object store, models, budgets), the notifier, and the static assets' fingerprint.

use std::sync::Arc;
use std::time::Duration;

use crate::app::App;
use crate::client_limits::ClientLimits;
use crate::error::{AppError, AppResult, ErrorCode};
use crate::notify::Notifier;

#[derive(Clone)]
pub struct AppState {
    pub app: App,
    pub notifier: Arc<dyn Notifier>,
    /// Fingerprint of the static assets, for cache-busting URLs.
    pub asset_version: String,
    /// Where the upload page's script sends direct uploads when that is not this server (the bucket's
    /// origin), for the pages' Content-Security-Policy.
    pub direct_upload_origin: Option<String>,
    /// What one client may take of the intake.
    pub client_limits: Arc<ClientLimits>,
    /// Room for multipart bodies on disk, in KiB (`spool_quota_bytes`).
    spool_quota: Arc<tokio::sync::Semaphore>,
}

/// How long a readiness check waits for the database or the store.
const CHECK_TIMEOUT: Duration = Duration::from_secs(3);

/// What readiness is made of: whether the database and the object store each answered.
pub struct Dependencies {
    pub database: Result<(), String>,
    pub store: Result<(), String>,
}

impl Dependencies {
    pub fn ready(&self) -> bool {
        self.database.is_ok() && self.store.is_ok()
    }
}

impl AppState {
    pub fn new(app: App, notifier: Arc<dyn Notifier>, direct_upload_origin: Option<String>) -> Self {
        let asset_version = asset_version(&app.config.settings.web.static_dir);
        let client_limits = Arc::new(ClientLimits::new(app.config.settings.clients.clone()));
        let spool_kib = (app.config.settings.uploads.spool_quota_bytes / 1024) as usize;
        let spool_quota = Arc::new(tokio::sync::Semaphore::new(spool_kib));
        AppState { app, notifier, asset_version, direct_upload_origin, client_limits, spool_quota }
    }

    /// Room for `bytes` of spooled body, held until the permit is dropped; 503 `BUSY` when none frees up
    /// within `cpu_wait_ms`.
    pub async fn reserve_spool(&self, bytes: u64) -> AppResult<tokio::sync::OwnedSemaphorePermit> {
        let kib = bytes.div_ceil(1024).max(1) as u32;
        let wait = Duration::from_millis(self.app.config.settings.uploads.cpu_wait_ms);
        match tokio::time::timeout(wait, self.spool_quota.clone().acquire_many_owned(kib)).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(AppError::new(ErrorCode::Busy, "Too many uploads are arriving at once; retry in a moment.")
                .retry_after(2)),
        }
    }

    /// Room left for spooled bodies, in bytes.
    pub fn spool_quota_free(&self) -> u64 {
        self.spool_quota.available_permits() as u64 * 1024
    }

    /// Asks the database and the object store at once, each bounded by `CHECK_TIMEOUT`.
    pub async fn dependencies(&self) -> Dependencies {
        let (database, store) = tokio::join!(check(self.app.db.ping()), check(self.app.store.health()));
        Dependencies { database, store }
    }
}

async fn check<E: std::fmt::Display>(check: impl std::future::Future<Output = Result<(), E>>) -> Result<(), String> {
    match tokio::time::timeout(CHECK_TIMEOUT, check).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {} s", CHECK_TIMEOUT.as_secs())),
    }
}

/// A fingerprint of everything under the static directory: the first 12 hex digits of a SHA-256 over the
/// files' names and contents.
fn asset_version(static_dir: &std::path::Path) -> String {
    use sha2::{Digest, Sha256};
    let mut files = Vec::new();
    let mut stack = vec![static_dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files.sort();
    let mut hasher = Sha256::new();
    for file in files {
        hasher.update(file.strip_prefix(static_dir).unwrap_or(&file).to_string_lossy().as_bytes());
        hasher.update(std::fs::read(&file).unwrap_or_default());
    }
    hex::encode(hasher.finalize())[..12].to_owned()
}
