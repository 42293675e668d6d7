//! The application core: what Upshot does, whatever asked. The HTTP adapters (`api`, `web`) and the
//! background work (the bucket-event poller, the sweepers) call it; it calls the infrastructure below it.
//! - uploads: the form, the API, a completed direct upload and a bucket event all enter by `App::accept`;
//! - images: reads, files and deletes of stored images (`App::image`, `App::image_object`, `App::delete_image`);
//! - direct uploads: sessions, their signed URLs, completion and the poller of the bucket's events;
//! - sweeps: objects of uploads that died before their row, and expired sessions.
//!
//! `App` holds what that work needs: configuration, database, object store, models, metrics, and the CPU and
//! upload budgets that bound it.

pub mod direct_uploads;
pub mod images;
pub mod sweep;
pub mod upload_events;
mod uploads;

pub use uploads::{UploadMeta, Uploaded};

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::aws::SharedConfig;
use crate::config::AppConfig;
use crate::db::Db;
use crate::domain::Signer;
use crate::error::{AppError, AppResult, ErrorCode};
use crate::inference::Engine;
use crate::ingest::{CpuSlots, IngestPolicy};
use crate::metrics::Metrics;
use crate::store::ObjectStore;

#[derive(Clone)]
pub struct App {
    pub config: Arc<AppConfig>,
    pub db: Db,
    pub store: Arc<dyn ObjectStore>,
    /// The AWS SDK's configuration, shared by the S3, SNS and SQS clients.
    pub aws: Arc<SharedConfig>,
    pub signer: Signer,
    pub policy: Arc<IngestPolicy>,
    pub inference: Arc<Engine>,
    /// Wakes the outbox relay when an upload commits.
    pub outbox_wake: Arc<tokio::sync::Notify>,
    pub metrics: Arc<Metrics>,
    cpu: Arc<Semaphore>,
    /// The upload budget, in KiB.
    upload_budget: Arc<Semaphore>,
}

/// Room in the upload budget, held for as long as an upload's bytes are in memory.
pub struct UploadPermit {
    _room: OwnedSemaphorePermit,
}

impl App {
    pub fn new(
        config: AppConfig,
        db: Db,
        store: Arc<dyn ObjectStore>,
        aws: Arc<SharedConfig>,
        signer: Signer,
        inference: Engine,
    ) -> Self {
        let uploads = &config.settings.uploads;
        let cpu = Arc::new(Semaphore::new(uploads.cpu_slots));
        let policy = IngestPolicy {
            cpu: CpuSlots::new(cpu.clone()),
            ..IngestPolicy::new(&config.settings.images, inference.input_size())
        };
        let upload_budget = Arc::new(Semaphore::new((uploads.upload_budget_bytes / 1024) as usize));
        App {
            config: Arc::new(config),
            db,
            store,
            aws,
            signer,
            policy: Arc::new(policy),
            inference: Arc::new(inference),
            outbox_wake: Arc::new(tokio::sync::Notify::new()),
            metrics: Arc::default(),
            cpu,
            upload_budget,
        }
    }

    /// Room left in the upload budget, in bytes.
    pub fn upload_budget_free(&self) -> u64 {
        self.upload_budget.available_permits() as u64 * 1024
    }

    /// Waits (at most `cpu_wait_ms`) for room for `bytes` of upload in memory; a request that finds none is
    /// told to come back, so memory is bounded by the budget however many clients send at once.
    pub async fn admit_upload(&self, bytes: u64) -> AppResult<UploadPermit> {
        let budget = self.config.settings.uploads.upload_budget_bytes;
        if bytes > budget {
            // Configuration keeps every accepted size within the budget; this guards the invariant.
            return Err(AppError::new(
                ErrorCode::PayloadTooLarge,
                "The file is larger than this server holds at once.",
            )
            .with_detail(format!("{bytes} bytes over upload_budget_bytes = {budget}")));
        }
        let kib = bytes.div_ceil(1024).max(1) as u32;
        let wait = Duration::from_millis(self.config.settings.uploads.cpu_wait_ms);
        let permit = tokio::time::timeout(wait, self.upload_budget.clone().acquire_many_owned(kib))
            .await
            .map_err(|_| {
                AppError::new(ErrorCode::Busy, "The server is receiving too many uploads at once; try again shortly.")
                    .with_detail(format!("upload budget full: {bytes} bytes waited {wait:?}"))
                    .retry_after(2)
            })?
            .map_err(AppError::internal)?;
        Ok(UploadPermit { _room: permit })
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
        use tracing::Instrument;
        let wait = Duration::from_millis(self.config.settings.uploads.cpu_wait_ms);
        let permit = tokio::time::timeout(wait, self.cpu.clone().acquire_owned())
            .instrument(tracing::info_span!("cpu.wait"))
            .await
            .map_err(|_| {
                AppError::new(ErrorCode::Busy, "The server is busy processing other images; try again shortly.")
                    .retry_after(2)
            })?
            .map_err(AppError::internal)?;
        let (policy, span) = (self.policy.clone(), tracing::Span::current());
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            span.in_scope(|| work(&policy))
        })
        .await
        .map_err(|e| AppError::internal(format!("image task failed: {e}")))?
    }
}
