//! The consistency check between the database and the object store (`upshot reconcile`): objects that no row
//! points at (orphans), rows whose objects are gone, and notifications that are stuck. Both sides are read a
//! page at a time (a listing page of objects, a keyset page of rows), so memory stays flat however many
//! images there are. It reports; with `repair`, it also removes the orphans and marks the images whose
//! original is gone as `missing` (they then answer 410; nothing is deleted).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use crate::db::{image_rows, outbox, pending, Db, DbError};
use crate::store::ObjectStore;

/// Where Upshot's objects live in the store.
const OBJECTS_PREFIX: &str = "images/";
/// Findings listed one by one in a report; past this they are only counted.
const LISTED: usize = 1000;
/// Object lookups in flight at once while rows are checked.
const LOOKUPS_AT_ONCE: usize = 16;

#[derive(Debug, Clone)]
pub struct Options {
    /// Objects younger than this are left out: an upload may still be writing its row.
    pub grace: Duration,
    /// Objects listed, and rows read, per page.
    pub page: usize,
    /// An unsent notification older than this is reported as stuck.
    pub stuck_after: Duration,
    /// Remove the orphans found and mark images that lost their original as `missing`.
    pub repair: bool,
}

/// The PostgreSQL advisory lock that lets one reconcile run at a time across the fleet.
pub const FLEET_LOCK_ID: i64 = 0x7570_7368_6f75;

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub objects_scanned: u64,
    pub rows_scanned: u64,
    /// Objects that no row and no upload under way points at, older than the grace period.
    pub orphans: Vec<Orphan>,
    pub orphan_count: u64,
    /// Orphans removed (with `repair`).
    pub orphans_removed: u64,
    /// Unreferenced objects within the grace period, left alone.
    pub recent_unreferenced: u64,
    /// Ids of images whose original is gone from the store: those images are lost.
    pub missing_originals: Vec<String>,
    pub missing_original_count: u64,
    /// Images marked `missing` by this run (with `repair`).
    pub marked_missing: u64,
    /// Ids of images whose thumbnail is gone (the original is there).
    pub missing_thumbnails: Vec<String>,
    pub missing_thumbnail_count: u64,
    /// Notifications parked as failed (`upshot outbox retry` revives them).
    pub outbox_failed: i64,
    /// Notifications unsent for longer than `stuck_after`.
    pub outbox_stuck: i64,
    pub elapsed_ms: u64,
}

#[derive(Debug, Serialize)]
pub struct Orphan {
    pub key: String,
    pub age_secs: u64,
}

impl Report {
    /// Nothing lost, nothing left over, nothing parked.
    pub fn is_clean(&self) -> bool {
        self.orphan_count == 0
            && self.missing_original_count == 0
            && self.missing_thumbnail_count == 0
            && self.outbox_failed == 0
            && self.outbox_stuck == 0
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("database: {0}")]
    Database(#[from] DbError),
    #[error("object store: {0}")]
    Store(#[from] crate::store::StoreError),
}

pub async fn check(db: &Db, store: Arc<dyn ObjectStore>, options: &Options) -> Result<Report, CheckError> {
    let started = Instant::now();
    let mut report = Report::default();
    check_objects(db, store.as_ref(), options, &mut report).await?;
    check_rows(db, store, options, &mut report).await?;
    let stuck_before = crate::domain::now() - chrono::Duration::from_std(options.stuck_after).unwrap_or_default();
    let (failed, stuck) =
        db.run(move |conn| Ok((outbox::backlog(conn)?.failed, outbox::unsent_before(conn, stuck_before)?))).await?;
    report.outbox_failed = failed;
    report.outbox_stuck = stuck;
    report.elapsed_ms = started.elapsed().as_millis() as u64;
    Ok(report)
}

/// Objects → rows: each listed object must be some row's original or thumbnail, or an upload's under way.
async fn check_objects(
    db: &Db,
    store: &dyn ObjectStore,
    options: &Options,
    report: &mut Report,
) -> Result<(), CheckError> {
    let mut after: Option<String> = None;
    loop {
        let page = store.list_page(OBJECTS_PREFIX, after.as_deref(), options.page).await?;
        let Some(last) = page.last() else { break };
        after = Some(last.key.clone());
        report.objects_scanned += page.len() as u64;
        let keys: Vec<String> = page.iter().map(|object| object.key.clone()).collect();
        let referenced = referenced(db, keys).await?;
        let now = SystemTime::now();
        let mut orphans = Vec::new();
        for object in page.iter().filter(|object| !referenced.contains(&object.key)) {
            let age = now.duration_since(object.modified).unwrap_or_default();
            if age < options.grace {
                report.recent_unreferenced += 1;
                continue;
            }
            report.orphan_count += 1;
            if report.orphans.len() < LISTED {
                report.orphans.push(Orphan { key: object.key.clone(), age_secs: age.as_secs() });
            }
            orphans.push(object.key.clone());
        }
        if options.repair && !orphans.is_empty() {
            report.orphans_removed += remove_orphans(db, store, orphans).await?;
        }
        if page.len() < options.page {
            break;
        }
    }
    Ok(())
}

/// Which of `keys` a row or an upload under way points at. Pending first: an upload that commits in between
/// has left the pending list only for its row, which the second query sees.
async fn referenced(db: &Db, keys: Vec<String>) -> Result<HashSet<String>, CheckError> {
    let found = db
        .run(move |conn| {
            let mut found = pending::listed_keys(conn, &keys)?;
            found.extend(image_rows::referenced_keys(conn, &keys)?);
            Ok(found)
        })
        .await?;
    Ok(found.into_iter().collect())
}

/// Removes the orphans that are still unreferenced when asked again, just before the delete. Once an object
/// is neither pending nor a row's, nothing can come to point at it: an upload lists its keys as pending before
/// it writes them, keys carry the upload's new random id, and sharing picks only objects that rows point at.
async fn remove_orphans(db: &Db, store: &dyn ObjectStore, orphans: Vec<String>) -> Result<u64, CheckError> {
    let still_referenced = referenced(db, orphans.clone()).await?;
    let mut removed = 0;
    for key in orphans.iter().filter(|key| !still_referenced.contains(*key)) {
        store.delete(key).await?;
        log::info!("reconcile removed orphaned object {key}");
        removed += 1;
    }
    Ok(removed)
}

/// Rows → objects: each stored image's original and thumbnail must exist.
async fn check_rows(
    db: &Db,
    store: Arc<dyn ObjectStore>,
    options: &Options,
    report: &mut Report,
) -> Result<(), CheckError> {
    let mut after: Option<String> = None;
    let page_size = options.page as i64;
    loop {
        let from = after.clone();
        let rows = db.run(move |conn| image_rows::objects_page(conn, from.as_deref(), page_size)).await?;
        let Some(last) = rows.last() else { break };
        after = Some(last.id.clone());
        report.rows_scanned += rows.len() as u64;
        // Rows being deleted are losing their objects on purpose.
        let stored: Vec<_> = rows.iter().filter(|row| row.status == image_rows::STATUS_STORED).cloned().collect();
        for batch in stored.chunks(LOOKUPS_AT_ONCE) {
            let mut lookups = tokio::task::JoinSet::new();
            for row in batch.iter().cloned() {
                let store = store.clone();
                lookups.spawn(async move {
                    let (original, thumbnail) =
                        tokio::join!(store.head(&row.original_key), store.head(&row.thumbnail_key));
                    (row.id, original, thumbnail)
                });
            }
            let mut lost = Vec::new();
            while let Some(found) = lookups.join_next().await {
                let (id, original, thumbnail) =
                    found.map_err(|e| crate::store::StoreError::Backend(format!("object lookup task failed: {e}")))?;
                if original?.is_none() {
                    report.missing_original_count += 1;
                    if report.missing_originals.len() < LISTED {
                        report.missing_originals.push(id.clone());
                    }
                    lost.push(id);
                } else if thumbnail?.is_none() {
                    report.missing_thumbnail_count += 1;
                    if report.missing_thumbnails.len() < LISTED {
                        report.missing_thumbnails.push(id);
                    }
                }
            }
            if options.repair && !lost.is_empty() {
                report.marked_missing += db
                    .run(move |conn| {
                        let mut marked = 0;
                        for id in &lost {
                            marked += image_rows::mark_missing(conn, id)? as u64;
                        }
                        Ok(marked)
                    })
                    .await?;
            }
        }
        if rows.len() < options.page {
            break;
        }
    }
    report.missing_originals.sort();
    report.missing_thumbnails.sort();
    Ok(())
}
