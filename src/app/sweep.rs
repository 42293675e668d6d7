//! Removes the objects of uploads that died between storing them and committing their row (a killed
//! process): their `pending_objects` entries outlive `orphan_grace_secs`. Every instance sweeps; on
//! PostgreSQL they take disjoint entries.

use std::time::Duration;

use tokio::sync::watch;

use super::App;
use crate::db::{pending, DbError};

const BATCH: i64 = 100;

/// Sweeps every half grace period (between 1 s and 1 min) until `shutdown` turns true.
pub async fn run(app: App, mut shutdown: watch::Receiver<bool>) {
    let grace = Duration::from_secs(app.config.settings.store.orphan_grace_secs);
    let every = (grace / 2).clamp(Duration::from_secs(1), Duration::from_secs(60));
    while !*shutdown.borrow() {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.changed() => continue,
        }
        match sweep_once(&app, grace).await {
            Ok(0) => {}
            Ok(removed) => log::warn!("removed {removed} object(s) of uploads that died before their row was written"),
            Err(error) => log::debug!("orphan sweep skipped: {error}"),
        }
    }
}

/// One sweep: how many objects were removed.
pub async fn sweep_once(app: &App, grace: Duration) -> Result<usize, DbError> {
    let mut removed = 0;
    loop {
        let before =
            crate::domain::now() - chrono::Duration::from_std(grace).unwrap_or_else(|_| chrono::Duration::days(1));
        let entries = app.db.run(move |conn| pending::claim_expired(conn, before, BATCH)).await?;
        for (key, image_id) in &entries {
            match app.store.delete(key).await {
                Ok(()) => removed += 1,
                Err(error) => {
                    // Listed again, so a later sweep retries it.
                    log::error!("orphan object {key} of upload {image_id} could not be removed: {error}");
                    let (key, image_id) = (key.clone(), image_id.clone());
                    app.db.run(move |conn| pending::record(conn, &image_id, &[&key], crate::domain::now())).await?;
                }
            }
        }
        if (entries.len() as i64) < BATCH {
            return Ok(removed);
        }
    }
}
