//! The record of completed consistency checks (`upshot reconcile`): the latest one feeds `/metrics` on every
//! instance, so the fleet reports one set of figures whichever instance held the lock.

use chrono::NaiveDateTime;
use diesel::prelude::*;

use super::schema::reconcile_runs;
use super::{DbConnection, DbError};

/// Runs kept: a week of hourly checks.
const KEPT: i64 = 168;

#[derive(Debug, Clone, PartialEq, Queryable, Selectable, Insertable)]
#[diesel(table_name = reconcile_runs)]
pub struct ReconcileRun {
    pub id: String,
    pub finished_at: NaiveDateTime,
    pub repair: bool,
    /// Orphaned objects found (past the grace period).
    pub orphans: i64,
    /// Images whose original is gone, marked `missing` or not.
    pub missing_images: i64,
    /// Images whose thumbnail is gone and was not made again.
    pub missing_thumbnails: i64,
    /// Orphans removed, thumbnails made again and images marked missing.
    pub repaired: i64,
    pub elapsed_ms: i64,
}

/// Records a run and forgets the runs older than the last `KEPT`.
pub fn record(conn: &mut DbConnection, run: &ReconcileRun) -> Result<(), DbError> {
    diesel::insert_into(reconcile_runs::table).values(run).execute(conn)?;
    let oldest_kept: Option<NaiveDateTime> = reconcile_runs::table
        .order(reconcile_runs::finished_at.desc())
        .offset(KEPT - 1)
        .select(reconcile_runs::finished_at)
        .first(conn)
        .optional()?;
    if let Some(oldest_kept) = oldest_kept {
        diesel::delete(reconcile_runs::table.filter(reconcile_runs::finished_at.lt(oldest_kept))).execute(conn)?;
    }
    Ok(())
}

pub fn latest(conn: &mut DbConnection) -> Result<Option<ReconcileRun>, DbError> {
    Ok(reconcile_runs::table
        .order(reconcile_runs::finished_at.desc())
        .select(ReconcileRun::as_select())
        .first(conn)
        .optional()?)
}
