//! The outbox relay: one task per instance that publishes committed notifications. It wakes when an upload
//! commits (and on a slow poll, for rows from other instances and for retries), claims due rows, publishes
//! them ten to a request, and settles each: sent, retried later with exponential backoff and jitter, or parked as `failed` after
//! the last attempt. Publishing is at least once: a crash between publish and settle publishes again.
//!
//! Every subscriber gets what the topic gets, so the topic's messages are what is limited: at most
//! `max_per_hour` in any hour (counted in the outbox, across instances; relays deciding at the same moment may
//! each send one more), then one digest per `digest_every` for everything that came meanwhile. Nothing is
//! dropped: every row goes out, alone or in a digest.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio::sync::{watch, Notify};

use super::{message, Notifier, NotifyError};
use crate::db::outbox::{self, OutboxRow};
use crate::db::{Db, DbError};
use crate::domain::event::ImageUploaded;

#[derive(Debug, Clone)]
pub struct RelayConfig {
    pub batch: i64,
    pub lease: Duration,
    pub poll: Duration,
    /// 0: no limit but `retry_horizon`.
    pub max_attempts: i32,
    pub retry_horizon: Duration,
    /// The longest one publish may take: a claim with less than this left is given back, not published.
    pub publish_timeout: Duration,
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    pub public_url: String,
    /// Messages a subscriber may get in an hour (0: no limit): past it, what is due goes out as one digest
    /// every `digest_every`, so an upload flood cannot become a flood of e-mails and SMS, nor a bill.
    pub max_per_hour: u32,
    pub digest_every: Duration,
}

#[derive(Clone)]
pub struct Relay {
    db: Db,
    notifier: Arc<dyn Notifier>,
    config: RelayConfig,
    wake: Arc<Notify>,
    /// Whether the last publish failed, so an outage is logged when it starts and ends, not per message.
    failing: Arc<std::sync::atomic::AtomicBool>,
}

/// How many claimed messages one relay can publish within half its lease, at most `limit`: each request of
/// `PUBLISH_CHUNK` messages may take up to `publish_timeout`.
pub fn batch_for(lease: Duration, publish_timeout: Duration, limit: i64) -> i64 {
    let requests = (lease.as_secs_f64() / (2.0 * publish_timeout.as_secs_f64().max(0.001))).floor() as i64;
    (requests.max(1) * PUBLISH_CHUNK as i64).min(limit).max(1)
}

/// What one pass over the outbox did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PassReport {
    pub claimed: usize,
    pub sent: usize,
    pub retried: usize,
    pub failed: usize,
    pub released: usize,
}

/// The delay before attempt `attempts + 1`: base × 2^(attempts − 1), capped, then "equal jitter" (a random
/// point in its upper half) so relays that failed together do not retry together.
pub fn backoff(attempts: i32, base: Duration, cap: Duration) -> Duration {
    let exponent = attempts.clamp(1, 30) as u32 - 1;
    let full = base.saturating_mul(2u32.saturating_pow(exponent)).min(cap);
    let half = full / 2;
    half + Duration::from_millis(rand::thread_rng().gen_range(0..=half.as_millis().max(1) as u64))
}

/// The most uploads one digest sums up; more wait for the next.
const DIGEST_MAX: i64 = 1000;

/// Claimed rows published together: SNS's PublishBatch takes 10 messages per request.
const PUBLISH_CHUNK: usize = 10;

/// How often a publish outcome is offered again to a database that could not take it.
const SETTLE_RETRY: Duration = Duration::from_millis(500);

/// The span of one message's publish: a child of its upload's span when the upload was traced.
fn publish_span(row: &OutboxRow) -> tracing::Span {
    let span = tracing::info_span!(
        "outbox.publish",
        otel.kind = "producer",
        otel.status_code = tracing::field::Empty,
        error.message = tracing::field::Empty,
        messaging.system = "aws_sns",
        upshot.image_id = row.image_id.as_str(),
        upshot.outbox_id = row.id.as_str(),
        upshot.attempt = row.attempts,
    );
    crate::traces::continue_trace(&span, row.traceparent.as_deref());
    span
}

fn later(delay: Duration) -> chrono::NaiveDateTime {
    crate::domain::now() + chrono::Duration::from_std(delay).unwrap_or_else(|_| chrono::Duration::days(1))
}

impl Relay {
    pub fn new(db: Db, notifier: Arc<dyn Notifier>, config: RelayConfig, wake: Arc<Notify>) -> Self {
        Relay { db, notifier, config, wake, failing: Arc::default() }
    }

    /// Runs until `shutdown` turns true; a pass under way finishes the request it is publishing and gives
    /// the rest of its claim back.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        log::info!("outbox relay started, publishing to {}", self.notifier.describe());
        while !*shutdown.borrow() {
            let report = match self.pass(&shutdown).await {
                Ok(report) => report,
                Err(error) => {
                    log::warn!("outbox relay: {error}");
                    PassReport::default()
                }
            };
            if report.claimed as i64 == self.config.batch {
                continue; // more may be due right now
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(self.config.poll) => {}
                _ = shutdown.changed() => {}
            }
        }
        log::info!("outbox relay stopped");
    }

    /// Claims one batch of due rows and settles each of them; once the hour's allowance is spent, a digest.
    pub async fn pass(&self, shutdown: &watch::Receiver<bool>) -> Result<PassReport, DbError> {
        let (mut batch, lease) = (self.config.batch, self.config.lease);
        if self.config.max_per_hour > 0 {
            let since = crate::domain::now() - chrono::Duration::hours(1);
            let sent = self.db.run(move |conn| outbox::messages_since(conn, since)).await?;
            let room = i64::from(self.config.max_per_hour) - sent;
            if room <= 0 {
                return self.digest_pass().await;
            }
            batch = batch.min(room);
        }
        let claimed =
            self.db.run(move |conn| outbox::claim_due(conn, crate::domain::now(), later(lease), batch)).await?;
        let mut report = PassReport { claimed: claimed.len(), ..PassReport::default() };
        let mut claimed = claimed.into_iter().peekable();
        while claimed.peek().is_some() {
            let chunk: Vec<OutboxRow> = claimed.by_ref().take(PUBLISH_CHUNK).collect();
            // A claim about to run out is given back unpublished: past its lease, another relay may publish it.
            let publish_timeout = chrono::Duration::from_std(self.config.publish_timeout).unwrap_or_default();
            let deadline = chunk.iter().map(|row| row.available_at).min().unwrap_or_default() - publish_timeout;
            if *shutdown.borrow() || crate::domain::now() >= deadline {
                report.released += chunk.len();
                let now = crate::domain::now();
                self.db.run(move |conn| outbox::release(conn, &chunk, now)).await?;
                continue;
            }
            self.publish_chunk(chunk, shutdown, &mut report).await?;
        }
        Ok(report)
    }

    /// Publishes claimed rows together, then settles them: those sent in one transaction, the others one by
    /// one, retried later or parked.
    async fn publish_chunk(
        &self,
        chunk: Vec<OutboxRow>,
        shutdown: &watch::Receiver<bool>,
        report: &mut PassReport,
    ) -> Result<(), DbError> {
        let mut outcomes: Vec<Result<(), NotifyError>> = Vec::with_capacity(chunk.len());
        let mut notifications = Vec::with_capacity(chunk.len());
        for row in &chunk {
            match serde_json::from_str::<ImageUploaded>(&row.payload) {
                Ok(event) => {
                    notifications.push(message::for_upload(&row.id, &event, &self.config.public_url));
                    outcomes.push(Ok(()));
                }
                Err(error) => outcomes.push(Err(NotifyError::Permanent(format!("unreadable payload: {error}")))),
            }
        }
        // Each message's publish joins the trace of the upload that wrote it.
        let spans: Vec<tracing::Span> = chunk.iter().map(publish_span).collect();
        let mut published = self.notifier.publish_all(&notifications).await.into_iter();
        for outcome in outcomes.iter_mut().filter(|outcome| outcome.is_ok()) {
            *outcome = published.next().unwrap_or_else(|| Err(NotifyError::Transient("not published".to_owned())));
        }
        for (span, outcome) in spans.iter().zip(&outcomes) {
            if let Err(error) = outcome {
                span.record("otel.status_code", "ERROR");
                span.record("error.message", error.to_string().as_str());
            }
        }
        drop(spans);

        let (mut sent, mut unsent) = (Vec::new(), Vec::new());
        for (row, outcome) in chunk.into_iter().zip(outcomes) {
            match outcome {
                Ok(()) => sent.push(row),
                Err(error) => unsent.push((row, error)),
            }
        }
        if !sent.is_empty() {
            if self.failing.swap(false, std::sync::atomic::Ordering::Relaxed) {
                log::info!("notifications: publishing works again; delayed messages are going out");
            }
            report.sent += sent.len();
            self.settle(sent, shutdown, |conn, rows| outbox::mark_sent(conn, rows, crate::domain::now(), None)).await?;
        }
        for (row, error) in unsent {
            let permanent = matches!(error, NotifyError::Permanent(_));
            let text = error.to_string();
            let age = (crate::domain::now() - row.created_at).to_std().unwrap_or_default();
            let out_of_attempts = self.config.max_attempts > 0 && row.attempts >= self.config.max_attempts;
            if permanent || out_of_attempts || age >= self.config.retry_horizon {
                log::error!(
                    "outbox message {} for image {} parked as failed after {} attempt(s): {text}",
                    row.id,
                    row.image_id,
                    row.attempts
                );
                let park = move |conn: &mut _, rows: &[OutboxRow]| {
                    outbox::mark_failed(conn, &rows[0], crate::domain::now(), &text).map(usize::from)
                };
                self.settle(vec![row], shutdown, park).await?;
                report.failed += 1;
            } else {
                let delay = backoff(row.attempts, self.config.backoff_base, self.config.backoff_cap);
                if !self.failing.swap(true, std::sync::atomic::Ordering::Relaxed) {
                    log::warn!(
                        "notifications: publishing fails ({text}); retrying with backoff for up to {} h",
                        self.config.retry_horizon.as_secs() / 3600
                    );
                }
                log::debug!(
                    "outbox message {} attempt {} failed, next in {:.1} s: {text}",
                    row.id,
                    row.attempts,
                    delay.as_secs_f64()
                );
                let retry = move |conn: &mut _, rows: &[OutboxRow]| {
                    outbox::mark_retry(conn, &rows[0], later(delay), &text).map(usize::from)
                };
                self.settle(vec![row], shutdown, retry).await?;
                report.retried += 1;
            }
        }
        Ok(())
    }

    /// The hour's allowance is spent: what is due waits, and goes out as one digest once the last digest is
    /// `digest_every` old.
    async fn digest_pass(&self) -> Result<PassReport, DbError> {
        let last = self.db.run(outbox::last_digest_at).await?;
        let every = chrono::Duration::from_std(self.config.digest_every).unwrap_or_default();
        if last.is_some_and(|at| crate::domain::now() < at + every) {
            return Ok(PassReport::default());
        }
        let lease = self.config.lease;
        let claimed =
            self.db.run(move |conn| outbox::claim_due(conn, crate::domain::now(), later(lease), DIGEST_MAX)).await?;
        if claimed.is_empty() {
            return Ok(PassReport::default());
        }
        let mut report = PassReport { claimed: claimed.len(), ..PassReport::default() };
        let events: Vec<ImageUploaded> =
            claimed.iter().filter_map(|row| serde_json::from_str(&row.payload).ok()).collect();
        let digest_id = crate::domain::ImageId::generate().to_string();
        let notification = message::digest(&digest_id, &events, &self.config.public_url);
        match self.notifier.publish(&notification).await {
            Ok(()) => {
                log::info!("notifications: {} upload(s) sent in digest {digest_id}", claimed.len());
                let now = crate::domain::now();
                report.sent = self.db.run(move |conn| outbox::mark_sent(conn, &claimed, now, Some(&digest_id))).await?;
            }
            Err(error) => {
                let text = error.to_string();
                log::warn!("notifications: a digest of {} upload(s) failed, retried later: {text}", claimed.len());
                for row in claimed {
                    let delay = backoff(row.attempts, self.config.backoff_base, self.config.backoff_cap);
                    let text = text.clone();
                    self.db.run(move |conn| outbox::mark_retry(conn, &row, later(delay), &text)).await?;
                    report.retried += 1;
                }
            }
        }
        Ok(report)
    }

    /// Records the outcome of a publish. When the database is briefly unreachable (a restart, a failover) the
    /// outcome is kept and retried until the claim's lease runs out, so a message already published is not
    /// published again once the database is back.
    async fn settle<F>(&self, rows: Vec<OutboxRow>, shutdown: &watch::Receiver<bool>, settle: F) -> Result<(), DbError>
    where
        F: Fn(&mut crate::db::DbConnection, &[OutboxRow]) -> Result<usize, DbError> + Clone + Send + 'static,
    {
        let lease_ends = rows.iter().map(|row| row.available_at).min().unwrap_or_default();
        let rows = Arc::new(rows);
        loop {
            let (attempt, claimed) = (settle.clone(), rows.clone());
            match self.db.run(move |conn| attempt(conn, &claimed)).await {
                Ok(settled) => {
                    if settled < rows.len() {
                        let ids: Vec<&str> = rows.iter().map(|row| row.id.as_str()).collect();
                        log::warn!(
                            "outbox: {} of the messages {} had their claim expire before they were settled; another \
                             relay owns them now",
                            rows.len() - settled,
                            ids.join(", ")
                        );
                    }
                    return Ok(());
                }
                Err(error) if error.is_unavailable() && crate::domain::now() < lease_ends && !*shutdown.borrow() => {
                    log::debug!("outbox: settling {} message(s) waits for the database: {error}", rows.len());
                    tokio::time::sleep(SETTLE_RETRY).await;
                }
                Err(error) => return Err(error),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter_in_the_upper_half() {
        let (base, cap) = (Duration::from_secs(2), Duration::from_secs(60));
        for _ in 0..50 {
            let first = backoff(1, base, cap);
            assert!(first >= Duration::from_secs(1) && first <= Duration::from_secs(2), "{first:?}");
            let third = backoff(3, base, cap);
            assert!(third >= Duration::from_secs(4) && third <= Duration::from_secs(8), "{third:?}");
            let late = backoff(20, base, cap);
            assert!(late >= Duration::from_secs(30) && late <= cap, "{late:?}");
        }
    }
}
