//! The bucket's events for direct uploads (production): S3 sends an `ObjectCreated` event for each file put
//! under `incoming/` to an SQS queue, and every instance long-polls it, completing the sessions whose client
//! never did. A session is processed once whoever asks (see `direct_uploads::complete`); a message is deleted
//! only once its session is finished. A message that never succeeds (it cannot be read, or its processing
//! keeps failing) is received again and again until the queue's redrive policy moves it to the dead-letter
//! queue.

use std::time::Duration;

use aws_sdk_sqs::error::DisplayErrorContext;
use aws_sdk_sqs::Client;
use serde::Deserialize;
use tokio::sync::watch;
use tracing::Instrument;

use super::{direct_uploads, App};
use crate::domain::ImageId;
use crate::error::ErrorCode;

/// Long polling: an idle queue costs one request per 20 s per instance.
const WAIT: i32 = 20;
/// Pause after the queue itself failed, so an outage costs a request every few seconds, not a busy loop.
const PAUSE_AFTER_ERROR: Duration = Duration::from_secs(5);

#[derive(Deserialize)]
struct S3Event {
    #[serde(rename = "Records", default)]
    records: Vec<S3Record>,
    /// S3's `s3:TestEvent`, sent once when the notification is configured.
    #[serde(rename = "Event", default)]
    event: Option<String>,
}

#[derive(Deserialize)]
struct S3Record {
    #[serde(rename = "eventName")]
    event_name: String,
    s3: S3Entity,
}

#[derive(Deserialize)]
struct S3Entity {
    object: S3Object,
}

#[derive(Deserialize)]
struct S3Object {
    key: String,
}

/// The sessions a message's events name; `Err` for a message that is not an S3 event (poison).
fn sessions_named(body: &str) -> Result<Vec<String>, String> {
    let event: S3Event = serde_json::from_str(body).map_err(|e| format!("not an S3 event: {e}"))?;
    if event.event.as_deref() == Some("s3:TestEvent") {
        return Ok(Vec::new());
    }
    if event.records.is_empty() {
        return Err("an S3 event without records".to_owned());
    }
    let mut ids = Vec::new();
    for record in &event.records {
        if !record.event_name.starts_with("ObjectCreated:") {
            continue;
        }
        // Keys arrive URL-encoded (`+` for a space).
        let key = record.s3.object.key.replace('+', " ");
        let key = percent_encoding::percent_decode_str(&key).decode_utf8_lossy();
        match key.rsplit_once("incoming/").map(|(_, id)| id).and_then(ImageId::parse) {
            Some(id) => ids.push(id.as_str().to_owned()),
            None => return Err(format!("{key} is not a direct upload's key")),
        }
    }
    Ok(ids)
}

/// What became of a message.
#[derive(Debug, PartialEq, Eq)]
enum Handled {
    /// Every session it names is finished (stored, failed, or unknown): delete it.
    Done,
    /// Leave it: it comes back after its visibility timeout (a session processed elsewhere, a passing failure).
    Again,
}

async fn handle(app: &App, body: &str) -> Handled {
    let ids = match sessions_named(body) {
        Ok(ids) => ids,
        Err(reason) => {
            log::warn!("upload event left for the dead-letter queue: {reason}");
            return Handled::Again;
        }
    };
    let mut handled = Handled::Done;
    for id in ids {
        match direct_uploads::complete(app, &id).await {
            Ok(uploaded) => log::info!("direct upload {id} stored as image {} from its event", uploaded.record.id),
            Err(error) if error.code == ErrorCode::NotFound => {
                log::warn!("upload event for {id}, which is no session (expired and swept, or never opened)");
            }
            Err(error) if error.status().code < 500 && !is_pending(error.code) => {
                log::info!("direct upload {id} failed from its event: {} {}", error.code, error.message);
            }
            Err(error) => {
                log::info!("direct upload {id} not finished yet ({}); its event comes back", error.code);
                handled = Handled::Again;
            }
        }
    }
    handled
}

/// A session that is not finished: someone else is at it, or its file is not readable yet.
fn is_pending(code: ErrorCode) -> bool {
    matches!(code, ErrorCode::UploadInProgress | ErrorCode::UploadIncomplete)
}

/// Connects to SQS in the queue's own region (from its URL; the SDK's chain for a URL that names none), with
/// the endpoint override when set.
pub fn client(
    settings: &crate::config::DirectUploadSettings,
    queue_url: &str,
    shared: &aws_config::SdkConfig,
) -> Client {
    let region = crate::aws::region_of_queue_url(queue_url);
    let mut config = aws_sdk_sqs::config::Builder::from(shared).region(crate::aws::region_or_shared(region, shared));
    if let Some(endpoint) = &settings.sqs_endpoint_url {
        config = config.endpoint_url(endpoint);
    }
    Client::from_conf(config.build())
}

/// Polls `queue_url` until `shutdown` turns true.
pub async fn run(app: App, queue_url: String, mut shutdown: watch::Receiver<bool>) {
    let sqs = client(&app.config.settings.direct_uploads, &queue_url, app.aws.get().await);
    log::info!("polling {queue_url} for direct uploads' events");
    while !*shutdown.borrow() {
        let received = tokio::select! {
            received = sqs.receive_message().queue_url(&queue_url).max_number_of_messages(10).wait_time_seconds(WAIT).send() => received,
            _ = shutdown.changed() => continue,
        };
        let messages = match received {
            Ok(output) => output.messages.unwrap_or_default(),
            Err(error) => {
                log::warn!("upload events: receiving from {queue_url} failed: {}", DisplayErrorContext(error));
                tokio::time::sleep(PAUSE_AFTER_ERROR).await;
                continue;
            }
        };
        for message in messages {
            let body = message.body().unwrap_or_default();
            let span = crate::traces::start_background(tracing::info_span!(
                "sqs.event",
                otel.kind = "consumer",
                messaging.system = "aws_sqs",
                trace_id = tracing::field::Empty,
            ));
            if handle(&app, body).instrument(span).await == Handled::Done {
                let Some(receipt) = message.receipt_handle() else { continue };
                if let Err(error) = sqs.delete_message().queue_url(&queue_url).receipt_handle(receipt).send().await {
                    // Received again later: its session answers as finished, and it is deleted then.
                    log::warn!("upload events: deleting a handled message failed: {}", DisplayErrorContext(error));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_sessions_an_s3_event_names() {
        let event = r#"{"Records":[{"eventName":"ObjectCreated:Put","s3":{"bucket":{"name":"b"},
            "object":{"key":"uploads%2Fincoming%2F0123456789abcdef0123456789abcdef","size":5}}}]}"#;
        assert_eq!(sessions_named(event).unwrap(), ["0123456789abcdef0123456789abcdef"]);
        assert_eq!(sessions_named(r#"{"Event":"s3:TestEvent","Service":"Amazon S3"}"#).unwrap(), Vec::<String>::new());
        let removed = r#"{"Records":[{"eventName":"ObjectRemoved:Delete","s3":{"object":{"key":"incoming/x"}}}]}"#;
        assert_eq!(sessions_named(removed).unwrap(), Vec::<String>::new());
        assert!(sessions_named("not json").is_err());
        assert!(sessions_named(
            r#"{"Records":[{"eventName":"ObjectCreated:Put","s3":{"object":{"key":"images/x"}}}]}"#
        )
        .is_err());
    }
}
