//! The consistency check between the database and the object store (`upshot reconcile`): objects that no row
//! points at (orphans), rows whose objects are gone, and notifications that are stuck.
//!
//! The store's listing and the rows are walked side by side in key order, a sorted merge: a listing page of
//! objects against keyset pages of rows ordered by original key, by thumbnail key and by display key. Memory is a few pages
//! whatever the number of images, and an object store is asked one listing request per page, plus one lookup
//! per object found missing. What the merge finds is asked again before it counts: a row or an object that
//! appeared after the walk passed its key is not drift.
//!
//! It reports; with `repair`, it also removes the orphans, makes missing thumbnails and display renditions again
//! from their original,
//! and marks the images whose original is gone as `missing` (they then answer 410; nothing is deleted).

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;
use tokio::io::AsyncReadExt;

use crate::db::image_rows::{KeyColumn, KeyedRow};
use crate::db::reconcile_runs::{self, ReconcileRun};
use crate::db::{image_rows, outbox, pending, Db, DbError};
use crate::ingest::IngestPolicy;
use crate::store::{Listed, ObjectStore, StoreError};

/// Where Upshot's objects live in the store.
const OBJECTS_PREFIX: &str = "images/";
/// Findings listed one by one in a report; past this they are only counted.
const LISTED: usize = 1000;
/// The row columns that name objects, each walked in key order.
const KEY_COLUMNS: [KeyColumn; 3] = [KeyColumn::Original, KeyColumn::Thumbnail, KeyColumn::Display];
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
    /// Remove the orphans found, make missing thumbnails again, and mark images that lost their original as
    /// `missing`.
    pub repair: bool,
    /// How uploads decode and make thumbnails, so a thumbnail made again is the one the upload made.
    pub policy: Arc<IngestPolicy>,
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
    /// Images lost at the end of the run: marked `missing` (by this run or an earlier one, until someone
    /// deletes them), or found without their original and not marked.
    pub missing_images: i64,
    /// Ids of images whose thumbnail or display rendition is gone (the original is there).
    pub missing_thumbnails: Vec<String>,
    pub missing_thumbnail_count: u64,
    /// Thumbnails and display renditions made again from their original (with `repair`).
    pub thumbnails_regenerated: u64,
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
    /// The figures as one StatsD datagram: gauges of what was found, and a count of completed runs (its
    /// absence for hours is what a stale-run alarm watches).
    pub fn statsd_datagram(&self) -> String {
        let run = self.as_run(false);
        format!(
            "upshot_reconcile_orphans:{}|g\nupshot_reconcile_missing:{}|g\nupshot_reconcile_missing_thumbnails:{}|g\n\
             upshot_reconcile_repaired:{}|g\nupshot_reconcile_runs:1|c",
            run.orphans, run.missing_images, run.missing_thumbnails, run.repaired
        )
    }

    fn as_run(&self, repair: bool) -> ReconcileRun {
        ReconcileRun {
            id: crate::domain::random_token(16),
            finished_at: crate::domain::now(),
            repair,
            orphans: self.orphan_count as i64,
            missing_images: self.missing_images,
            missing_thumbnails: (self.missing_thumbnail_count - self.thumbnails_regenerated) as i64,
            repaired: (self.orphans_removed + self.thumbnails_regenerated + self.marked_missing) as i64,
            elapsed_ms: self.elapsed_ms as i64,
        }
    }

    /// Nothing lost, nothing left over, nothing parked.
    pub fn is_clean(&self) -> bool {
        self.orphan_count == 0
            && self.missing_original_count == 0
            && self.missing_thumbnail_count == self.thumbnails_regenerated
            && self.outbox_failed == 0
            && self.outbox_stuck == 0
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("database: {0}")]
    Database(#[from] DbError),
    #[error("object store: {0}")]
    Store(#[from] StoreError),
}

pub async fn check(db: &Db, store: Arc<dyn ObjectStore>, options: &Options) -> Result<Report, CheckError> {
    use tracing::Instrument;
    let span = crate::traces::start_background(tracing::info_span!(
        "reconcile.run",
        repair = options.repair,
        trace_id = tracing::field::Empty,
        reconcile.rows_scanned = tracing::field::Empty,
        reconcile.clean = tracing::field::Empty,
    ));
    let report = walk_and_record(db, store, options).instrument(span.clone()).await?;
    span.record("reconcile.rows_scanned", report.rows_scanned);
    span.record("reconcile.clean", report.is_clean());
    Ok(report)
}

async fn walk_and_record(db: &Db, store: Arc<dyn ObjectStore>, options: &Options) -> Result<Report, CheckError> {
    let started = Instant::now();
    let mut walk = Walk {
        db,
        store,
        options,
        originals: RowWalk::new(db, KeyColumn::Original, options.page),
        thumbnails: RowWalk::new(db, KeyColumn::Thumbnail, options.page),
        displays: RowWalk::new(db, KeyColumn::Display, options.page),
        unreferenced: Vec::new(),
        gaps: Vec::new(),
        report: Report::default(),
    };
    walk.run().await?;
    let mut report = walk.report;
    report.rows_scanned = walk.originals.taken;
    report.missing_originals.sort();
    report.missing_thumbnails.sort();
    let stuck_before = crate::domain::now() - chrono::Duration::from_std(options.stuck_after).unwrap_or_default();
    let (failed, stuck, marked) = db
        .run(move |conn| {
            Ok((
                outbox::failed_count(conn)?,
                outbox::unsent_before(conn, stuck_before)?,
                image_rows::missing_count(conn)?,
            ))
        })
        .await?;
    report.outbox_failed = failed;
    report.outbox_stuck = stuck;
    report.missing_images = marked + (report.missing_original_count - report.marked_missing) as i64;
    report.elapsed_ms = started.elapsed().as_millis() as u64;
    let run = report.as_run(options.repair);
    db.run(move |conn| reconcile_runs::record(conn, &run)).await?;
    Ok(report)
}

/// Rows in the order of one of their keys, read a keyset page at a time.
struct RowWalk {
    db: Db,
    column: KeyColumn,
    page: usize,
    buffered: VecDeque<KeyedRow>,
    after: Option<(String, String)>,
    exhausted: bool,
    /// Rows taken off the walk so far.
    taken: u64,
}

impl RowWalk {
    fn new(db: &Db, column: KeyColumn, page: usize) -> Self {
        RowWalk { db: db.clone(), column, page, buffered: VecDeque::new(), after: None, exhausted: false, taken: 0 }
    }

    /// The next row, when its key sorts before `bound` (any next row, without a bound).
    async fn next_before(&mut self, bound: Option<&str>) -> Result<Option<KeyedRow>, CheckError> {
        self.fill().await?;
        Ok(match self.buffered.front() {
            Some(row) if bound.is_none_or(|bound| row.key.as_str() < bound) => self.take(),
            _ => None,
        })
    }

    /// The next row, when its key is `key`.
    async fn next_at(&mut self, key: &str) -> Result<Option<KeyedRow>, CheckError> {
        self.fill().await?;
        Ok(match self.buffered.front() {
            Some(row) if row.key == key => self.take(),
            _ => None,
        })
    }

    fn take(&mut self) -> Option<KeyedRow> {
        self.taken += 1;
        self.buffered.pop_front()
    }

    async fn fill(&mut self) -> Result<(), CheckError> {
        if !self.buffered.is_empty() || self.exhausted {
            return Ok(());
        }
        let (column, after, limit) = (self.column, self.after.clone(), self.page as i64);
        let rows = self.db.run(move |conn| image_rows::key_order_page(conn, column, after, limit)).await?;
        self.exhausted = rows.len() < self.page;
        self.after = rows.last().map(|row| (row.key.clone(), row.id.clone()));
        self.buffered.extend(rows);
        Ok(())
    }
}

/// A stored image whose key the listing did not show: drift, unless a lookup finds the object after all.
#[derive(Clone)]
struct Gap {
    row: KeyedRow,
    column: KeyColumn,
}

/// One run of the merge, with what it has found and not yet settled.
struct Walk<'a> {
    db: &'a Db,
    store: Arc<dyn ObjectStore>,
    options: &'a Options,
    originals: RowWalk,
    thumbnails: RowWalk,
    displays: RowWalk,
    /// Listed objects the walks passed without a row at their key.
    unreferenced: Vec<Listed>,
    gaps: Vec<Gap>,
    report: Report,
}

impl Walk<'_> {
    async fn run(&mut self) -> Result<(), CheckError> {
        let mut after: Option<String> = None;
        loop {
            let page = self.store.list_page(OBJECTS_PREFIX, after.as_deref(), self.options.page).await?;
            let Some(last) = page.last() else { break };
            after = Some(last.key.clone());
            self.report.objects_scanned += page.len() as u64;
            let complete = page.len() < self.options.page;
            for object in page {
                self.pass(object).await?;
            }
            self.settle_unreferenced().await?;
            self.settle_gaps().await?;
            if complete {
                break;
            }
        }
        // Rows whose keys sort after the last object listed.
        for column in KEY_COLUMNS {
            while let Some(row) = self.rows(column).next_before(None).await? {
                self.gap(row, column).await?;
            }
        }
        self.settle_gaps().await
    }

    fn rows(&mut self, column: KeyColumn) -> &mut RowWalk {
        match column {
            KeyColumn::Original => &mut self.originals,
            KeyColumn::Thumbnail => &mut self.thumbnails,
            KeyColumn::Display => &mut self.displays,
        }
    }

    /// Moves the row walks up to `object`'s key: rows passed on the way name keys that were not listed.
    async fn pass(&mut self, object: Listed) -> Result<(), CheckError> {
        let mut referenced = false;
        for column in KEY_COLUMNS {
            while let Some(row) = self.rows(column).next_before(Some(&object.key)).await? {
                self.gap(row, column).await?;
            }
            // Shared objects: every row at this key is taken.
            while self.rows(column).next_at(&object.key).await?.is_some() {
                referenced = true;
            }
        }
        if !referenced {
            self.unreferenced.push(object);
        }
        Ok(())
    }

    async fn gap(&mut self, row: KeyedRow, column: KeyColumn) -> Result<(), CheckError> {
        // Rows being deleted are losing their objects on purpose; rows marked missing are known.
        if row.status == image_rows::ImageStatus::Stored {
            self.gaps.push(Gap { row, column });
            if self.gaps.len() >= self.options.page {
                self.settle_gaps().await?;
            }
        }
        Ok(())
    }

    /// Unreferenced objects past the grace period are orphans, when the database, asked again, still knows
    /// nothing of them (a row committed after the walk passed, an upload that listed them as pending).
    async fn settle_unreferenced(&mut self) -> Result<(), CheckError> {
        let now = SystemTime::now();
        let mut old = Vec::new();
        for object in std::mem::take(&mut self.unreferenced) {
            let age = now.duration_since(object.modified).unwrap_or_default();
            if age < self.options.grace {
                self.report.recent_unreferenced += 1;
            } else {
                old.push((object.key, age));
            }
        }
        if old.is_empty() {
            return Ok(());
        }
        let keys: Vec<String> = old.iter().map(|(key, _)| key.clone()).collect();
        let referenced = referenced(self.db, keys).await?;
        let mut orphans = Vec::new();
        for (key, age) in old.into_iter().filter(|(key, _)| !referenced.contains(key)) {
            self.report.orphan_count += 1;
            if self.report.orphans.len() < LISTED {
                self.report.orphans.push(Orphan { key: key.clone(), age_secs: age.as_secs() });
            }
            orphans.push(key);
        }
        if self.options.repair && !orphans.is_empty() {
            self.report.orphans_removed += remove_orphans(self.store.as_ref(), orphans).await?;
        }
        Ok(())
    }

    /// Looks up each gap's object, a few at a time: still absent, it is a lost original or a missing thumbnail.
    async fn settle_gaps(&mut self) -> Result<(), CheckError> {
        let gaps = std::mem::take(&mut self.gaps);
        for batch in gaps.chunks(LOOKUPS_AT_ONCE) {
            let mut lookups = tokio::task::JoinSet::new();
            for Gap { row, column } in batch.iter().cloned() {
                let (db, store) = (self.db.clone(), self.store.clone());
                lookups.spawn(async move { look_up(&db, store.as_ref(), row, column).await });
            }
            let mut lost = Vec::new();
            while let Some(found) = lookups.join_next().await {
                match found.map_err(|e| StoreError::Backend(format!("object lookup task failed: {e}")))?? {
                    Found::Present => {}
                    Found::LostOriginal(id) => {
                        self.report.missing_original_count += 1;
                        if self.report.missing_originals.len() < LISTED {
                            self.report.missing_originals.push(id.clone());
                        }
                        lost.push(id);
                    }
                    Found::LostDerived(record, column) => {
                        self.report.missing_thumbnail_count += 1;
                        if self.report.missing_thumbnails.len() < LISTED {
                            self.report.missing_thumbnails.push(record.id.to_string());
                        }
                        if self.options.repair {
                            let (store, policy) = (self.store.as_ref(), &self.options.policy);
                            self.report.thumbnails_regenerated +=
                                regenerate(self.db, store, policy, *record, column).await? as u64;
                        }
                    }
                }
            }
            if self.options.repair && !lost.is_empty() {
                self.report.marked_missing += self
                    .db
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
        Ok(())
    }
}

/// What looking a gap's object up found.
enum Found {
    /// The object is there after all (written after the listing passed its key), or the gap is counted
    /// elsewhere: a thumbnail whose original is gone too belongs to a lost image.
    Present,
    LostOriginal(String),
    /// A thumbnail or a display rendition, made from the original.
    LostDerived(Box<image_rows::ImageRecord>, KeyColumn),
}

async fn look_up(db: &Db, store: &dyn ObjectStore, row: KeyedRow, column: KeyColumn) -> Result<Found, CheckError> {
    if store.head(&row.key).await?.is_some() {
        return Ok(Found::Present);
    }
    if column == KeyColumn::Original {
        return Ok(Found::LostOriginal(row.id));
    }
    let id = row.id.clone();
    let Some(record) = db.run(move |conn| image_rows::find_any(conn, &id)).await? else {
        return Ok(Found::Present);
    };
    let key = match column {
        KeyColumn::Thumbnail => Some(&record.thumbnail_key),
        _ => record.display_key.as_ref(),
    };
    let stored = record.status == image_rows::ImageStatus::Stored && key == Some(&row.key);
    if stored && store.head(&record.original_key).await?.is_some() {
        Ok(Found::LostDerived(Box::new(record), column))
    } else {
        Ok(Found::Present)
    }
}

/// Makes a stored image's thumbnail or display rendition (`column`) again from its original, as its upload made
/// it. Whether it was written: an original that no longer decodes under today's limits, or a rendition of
/// another type than the row records, is left for a person (and logged).
async fn regenerate(
    db: &Db,
    store: &dyn ObjectStore,
    policy: &Arc<IngestPolicy>,
    record: image_rows::ImageRecord,
    column: KeyColumn,
) -> Result<bool, CheckError> {
    let mut body = store.get(&record.original_key).await?;
    let mut original = Vec::with_capacity(body.len as usize);
    body.reader
        .read_to_end(&mut original)
        .await
        .map_err(|e| StoreError::Backend(format!("reading {}: {e}", record.original_key)))?;
    let policy = policy.clone();
    let made = tokio::task::spawn_blocking(move || crate::ingest::derived_from_stored(&original, &policy))
        .await
        .map_err(|e| StoreError::Backend(format!("rendition task failed: {e}")))?;
    let derived = match made {
        Ok(derived) => derived,
        Err(error) => {
            log::warn!("reconcile cannot make the renditions of image {} again: {error}", record.id);
            return Ok(false);
        }
    };
    let (made, key, recorded_type) = match column {
        KeyColumn::Thumbnail => {
            (Some(derived.thumbnail), Some(&record.thumbnail_key), Some(&record.thumbnail_content_type))
        }
        _ => (derived.display, record.display_key.as_ref(), record.display_content_type.as_ref()),
    };
    let (Some((bytes, format)), Some(key)) = (made, key) else {
        log::warn!("reconcile made no display rendition for image {}, whose row records one; none written", record.id);
        return Ok(false);
    };
    if Some(format.content_type()) != recorded_type.map(String::as_str) {
        log::warn!(
            "reconcile made a {} rendition for image {} ({key}), whose row records {recorded_type:?}; not written",
            format.content_type(),
            record.id,
        );
        return Ok(false);
    }
    // Asked again just before the write: an image deleted meanwhile gets nothing back.
    let id = record.id.clone();
    let still_stored = db
        .run(move |conn| {
            Ok(image_rows::find_any(conn, id.as_str())?
                .is_some_and(|row| row.status == image_rows::ImageStatus::Stored))
        })
        .await?;
    if !still_stored {
        return Ok(false);
    }
    store.put(key, bytes, format.content_type()).await?;
    log::info!("reconcile made {key} of image {} again", record.id);
    Ok(true)
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

/// Removes the orphans, asked about just before: once an object is neither pending nor a row's, nothing can
/// come to point at it. An upload lists its keys as pending before it writes them, keys carry the upload's new
/// random id, and sharing picks only objects that rows point at.
async fn remove_orphans(store: &dyn ObjectStore, orphans: Vec<String>) -> Result<u64, CheckError> {
    let mut removed = 0;
    for key in &orphans {
        store.delete(key).await?;
        log::info!("reconcile removed orphaned object {key}");
        removed += 1;
    }
    Ok(removed)
}
