//! The storing half of an upload: the objects stored (or shared with identical bytes) while the models run,
//! then the row and its outbox message in one transaction; whatever was written is removed when a later step
//! fails, and an unanswered commit is left to the database to decide.

use std::sync::Arc;
use std::time::Duration;

use image::RgbImage;
use tracing::Instrument;

use super::{App, UploadPermit};
use crate::db::image_rows::{self, ImageRecord, InsertOutcome, StoredObjects};
use crate::db::json::Json;
use crate::db::outbox::{self, OutboxRow};
use crate::domain::event::{self, ImageUploaded};
use crate::domain::{now, IdempotencyKey, ImageId, Signer};
use crate::error::{AppError, AppResult, ErrorCode};
use crate::inference::{Analysis, FaceDetails};
use crate::ingest::{prepare, PreparedImage, Upload};

/// What the client sent besides the bytes.
#[derive(Debug, Clone, Default)]
pub struct UploadMeta {
    pub original_filename: Option<String>,
    pub description: Option<String>,
    pub idempotency_key: Option<IdempotencyKey>,
}

#[derive(Debug)]
pub struct Uploaded {
    pub record: ImageRecord,
    /// The bytes were already stored for an earlier upload and are shared.
    pub deduplicated: bool,
    /// An `Idempotency-Key` retry: nothing new was stored.
    pub replayed: bool,
}

impl Uploaded {
    pub fn id(&self) -> ImageId {
        self.record.id.clone()
    }
}

impl App {
    /// Runs a whole upload: replay check, CPU work under the CPU semaphore, then `persist` in its own task so a
    /// client that hangs up mid-way cannot leave objects without a row. `permit` holds the upload's room in the
    /// upload budget until its bytes are stored.
    pub async fn accept(&self, upload: Upload, permit: UploadPermit, meta: UploadMeta) -> AppResult<Uploaded> {
        if let Some(key) = &meta.idempotency_key {
            if let Some(done) = replay(self, key, upload.sha256.clone()).await? {
                return Ok(done);
            }
        }
        let prepared = self.run_cpu(move |policy| prepare(&upload, policy).map_err(AppError::from)).await?;
        let (app, id) = (self.clone(), ImageId::generate());
        tracing::Span::current().record("upshot.image_id", id.as_str());
        let span = tracing::info_span!("upload.store", upshot.image_id = id.as_str());
        tokio::spawn(
            async move {
                let stored = persist(&app, id, prepared, meta).await;
                drop(permit);
                stored
            }
            .instrument(span),
        )
        .await
        .map_err(|e| AppError::internal(format!("upload task failed: {e}")))?
    }

    /// Runs the models on an upright working image and records the inference time.
    pub async fn analyse(&self, pixels: Arc<RgbImage>) -> AppResult<Analysis> {
        let span = tracing::info_span!("models", inference_ms = tracing::field::Empty);
        let analysis = self.inference.analyse(pixels).instrument(span.clone()).await?;
        span.record("inference_ms", analysis.inference_ms);
        self.metrics.observe_inference(analysis.inference_ms, analysis.models_cpu_ms);
        Ok(analysis)
    }
}

/// The earlier result for this `Idempotency-Key`, when the same bytes were sent with it.
async fn replay(app: &App, key: &IdempotencyKey, source_sha256: String) -> AppResult<Option<Uploaded>> {
    let key = key.as_str().to_owned();
    let Some(record) = app.db.run(move |conn| image_rows::find_by_idempotency_key(conn, &key)).await? else {
        return Ok(None);
    };
    if record.source_sha256 != source_sha256 {
        return Err(AppError::new(
            ErrorCode::IdempotencyConflict,
            "This Idempotency-Key was already used for a different file.",
        ));
    }
    if record.status != image_rows::ImageStatus::Stored {
        return Err(AppError::not_found());
    }
    Ok(Some(Uploaded { record, deduplicated: false, replayed: true }))
}

/// The models run while the objects are stored; the row and its outbox message are written once both are done.
async fn persist(app: &App, id: ImageId, prepared: PreparedImage, meta: UploadMeta) -> AppResult<Uploaded> {
    let (analysis, stored) = tokio::join!(app.analyse(prepared.pixels.clone()), store_or_share(app, &id, &prepared));
    let (mut objects, mut deduplicated) = stored?;
    let analysis = match analysis {
        Ok(analysis) => analysis,
        Err(error) => {
            remove_objects(app, deduplicated, &objects).await;
            return Err(error);
        }
    };
    loop {
        let record = new_record(app, &id, &prepared, &analysis, &meta, &objects);
        let message = outbox_message(&record, &analysis);
        let (row, msg) = (record.clone(), message.clone());
        let outcome = app
            .db
            .run(move |conn| image_rows::insert_with_outbox(conn, &row, &msg, deduplicated))
            .instrument(tracing::info_span!("db.commit"))
            .await;
        match outcome {
            Ok(InsertOutcome::Inserted) => {
                app.outbox_wake.notify_one();
                app.metrics.upload_stored();
                return Ok(Uploaded { record, deduplicated, replayed: false });
            }
            // The objects we meant to share were deleted meanwhile: store our own and try again.
            Ok(InsertOutcome::SharedObjectsGone) => {
                objects = store_objects(app, &id, &prepared).await?;
                deduplicated = false;
            }
            // Too slow: the sweeper took this upload's objects as those of a dead upload, and removes them.
            Ok(InsertOutcome::ObjectsReclaimed) => {
                return Err(AppError::new(ErrorCode::Busy, "The upload took too long to store; try again.")
                    .with_detail(format!("upload {id}: objects reclaimed after the orphan grace period"))
                    .retry_after(2));
            }
            Ok(InsertOutcome::IdempotencyKeyTaken) => {
                remove_objects(app, deduplicated, &objects).await;
                let key = meta.idempotency_key.as_ref().expect("only keyed inserts collide");
                return replay(app, key, prepared.source_sha256.clone()).await?.ok_or_else(AppError::not_found);
            }
            // The connection broke: the commit may have landed all the same, so the objects go only once the
            // database, back again, says that no row points at them.
            Err(error) if error.is_unavailable() => {
                if !deduplicated {
                    tokio::spawn(remove_unless_committed(app.clone(), id.clone(), objects));
                }
                return Err(error.into());
            }
            Err(error) => {
                remove_objects(app, deduplicated, &objects).await;
                return Err(error.into());
            }
        }
    }
}

/// The objects of identical bytes stored earlier (with dedup on), else this upload's own; and whether shared.
async fn store_or_share(app: &App, id: &ImageId, prepared: &PreparedImage) -> AppResult<(StoredObjects, bool)> {
    if app.config.settings.uploads.dedup {
        let sha = prepared.sha256.clone();
        let lookup = app.db.run(move |conn| image_rows::find_objects_by_sha256(conn, &sha));
        if let Some(shared) = lookup.instrument(tracing::info_span!("db.find_shared")).await? {
            return Ok((shared, true));
        }
    }
    Ok((store_objects(app, id, prepared).await?, false))
}

/// How long an upload whose commit went unanswered waits for the database before leaving its objects to the
/// orphan sweeper, which removes them (after `orphan_grace_secs`) only if the row was never written: the
/// row's transaction clears their pending entries.
const UNANSWERED_COMMIT_PATIENCE: Duration = Duration::from_secs(600);

async fn remove_unless_committed(app: App, id: ImageId, objects: StoredObjects) {
    let deadline = tokio::time::Instant::now() + UNANSWERED_COMMIT_PATIENCE;
    let mut pause = Duration::from_millis(500);
    loop {
        let row_id = id.to_string();
        match app.db.run(move |conn| image_rows::find_any(conn, &row_id)).await {
            Ok(Some(_)) => {
                log::info!("upload {id}: its commit landed before the database connection broke; objects kept");
                return;
            }
            Ok(None) => return remove_objects(&app, false, &objects).await,
            Err(error) if error.is_unavailable() && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(10));
            }
            Err(error) => {
                log::error!(
                    "upload {id}: cannot tell whether its row was written ({error}); objects {} left to the orphan \
                     sweeper",
                    objects.keys().join(", ")
                );
                return;
            }
        }
    }
}

/// Stores the original, the thumbnail and the display rendition (when there is one), listed first as pending:
/// if this process dies before the row is committed, the sweeper removes them after `orphan_grace_secs`.
async fn store_objects(app: &App, id: &ImageId, prepared: &PreparedImage) -> AppResult<StoredObjects> {
    let thumbnail_type = prepared.thumbnail_format.content_type();
    let objects = StoredObjects {
        original_key: format!("images/{id}/original.{}", prepared.format.extension()),
        thumbnail_key: format!("images/{id}/thumb.{}", prepared.thumbnail_format.extension()),
        thumbnail_content_type: thumbnail_type.to_owned(),
        display_key: prepared.display.as_ref().map(|(_, format)| format!("images/{id}/display.{}", format.extension())),
        display_content_type: prepared.display.as_ref().map(|(_, format)| format.content_type().to_owned()),
    };
    let (row_id, keys) = (id.to_string(), objects.keys().into_iter().map(str::to_owned).collect::<Vec<_>>());
    app.db
        .run(move |conn| {
            let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
            crate::db::pending::record(conn, &row_id, &keys, now())
        })
        .instrument(tracing::info_span!("db.pending"))
        .await?;
    let display = async {
        match (&prepared.display, &objects.display_key) {
            (Some((bytes, format)), Some(key)) => put(app, key, bytes, format.content_type()).await,
            _ => Ok(()),
        }
    };
    let (original, thumbnail, display) = tokio::join!(
        put(app, &objects.original_key, &prepared.original, prepared.format.content_type()),
        put(app, &objects.thumbnail_key, &prepared.thumbnail, thumbnail_type),
        display,
    );
    // Whichever were written go again when another failed.
    let outcomes = [(&objects.original_key, original), (&objects.thumbnail_key, thumbnail)]
        .into_iter()
        .chain(objects.display_key.as_ref().map(|key| (key, display)));
    let (mut written, mut failure) = (Vec::new(), None);
    for (key, outcome) in outcomes {
        match outcome {
            Ok(()) => written.push(key.clone()),
            Err(error) => failure = failure.or(Some(error)),
        }
    }
    if let Some(error) = failure {
        for key in written {
            delete_logged(app, &key).await;
        }
        return Err(error.into());
    }
    Ok(objects)
}

/// Stores one object, in a span of its own.
async fn put(app: &App, key: &str, bytes: &bytes::Bytes, content_type: &str) -> Result<(), crate::store::StoreError> {
    let span = tracing::info_span!("store.put", object.key = key, object.bytes = bytes.len());
    app.store.put(key, bytes.clone(), content_type).instrument(span).await
}

async fn remove_objects(app: &App, shared: bool, objects: &StoredObjects) {
    if !shared {
        for key in objects.keys() {
            delete_logged(app, key).await;
        }
    }
}

/// Best-effort cleanup; a failure is logged with the key so `upshot` operators can find the orphan.
pub(crate) async fn delete_logged(app: &App, key: &str) {
    if let Err(error) = app.store.delete(key).await {
        log::error!("could not remove object {key} after a failed upload: {error}");
    }
}

fn new_record(
    app: &App,
    id: &ImageId,
    prepared: &PreparedImage,
    analysis: &Analysis,
    meta: &UploadMeta,
    objects: &StoredObjects,
) -> ImageRecord {
    ImageRecord {
        id: id.clone(),
        sha256: prepared.sha256.clone(),
        source_sha256: prepared.source_sha256.clone(),
        original_filename: meta.original_filename.clone(),
        description: meta.description.clone(),
        format: prepared.format.name().to_owned(),
        content_type: prepared.format.content_type().to_owned(),
        byte_size: prepared.original.len() as i64,
        width: prepared.width as i32,
        height: prepared.height as i32,
        original_key: objects.original_key.clone(),
        thumbnail_key: objects.thumbnail_key.clone(),
        thumbnail_content_type: objects.thumbnail_content_type.clone(),
        display_key: objects.display_key.clone(),
        display_content_type: objects.display_content_type.clone(),
        thumbhash: Some(prepared.thumbhash.clone()),
        predictions: Json::new(analysis.predictions.clone()),
        model_name: Some(analysis.model.name.clone()),
        model_version: Some(analysis.model.version.clone()),
        status: image_rows::ImageStatus::Stored,
        delete_token_hash: Signer::hash_token(&app.signer.delete_token(id)),
        idempotency_key: meta.idempotency_key.as_ref().map(|k| k.as_str().to_owned()),
        created_at: now(),
        model_sha256: Some(analysis.model.sha256.clone()),
        inference_ms: Some(analysis.inference_ms),
        analysis: Json::new(FaceDetails::from(analysis)),
        top_label: analysis.predictions.first().map(|p| p.label.clone()),
    }
}

fn outbox_message(record: &ImageRecord, analysis: &Analysis) -> OutboxRow {
    let top = analysis.predictions.first();
    let event = ImageUploaded {
        image_id: record.id.to_string(),
        sha256: record.sha256.clone(),
        content_type: record.content_type.clone(),
        width: record.width,
        height: record.height,
        byte_size: record.byte_size,
        page_path: format!("/images/{}", record.id),
        top_label: top.map(|p| p.label.clone()),
        top_score: top.map(|p| p.score),
        has_face: !analysis.faces.is_empty(),
        season: analysis.selfie.as_ref().map(|s| s.season.to_owned()),
    };
    OutboxRow {
        id: ImageId::generate().to_string(),
        image_id: record.id.to_string(),
        event_type: event::IMAGE_UPLOADED.to_owned(),
        payload: serde_json::to_string(&event).expect("an event serializes"),
        status: outbox::OutboxStatus::Pending,
        attempts: 0,
        available_at: record.created_at,
        last_error: None,
        created_at: record.created_at,
        published_at: None,
        digest_id: None,
        traceparent: crate::traces::current_traceparent(),
    }
}
