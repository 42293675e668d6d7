//! Publishing to an SNS topic, and managing its e-mail/SMS subscriptions. Credentials and region come from
//! the SDK's default chain (the instance role in production).

use std::collections::{HashMap, HashSet};

use aws_sdk_sns::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_sns::types::{MessageAttributeValue, PublishBatchRequestEntry};
use aws_sdk_sns::Client;

use super::subscriptions::{Subscription, SubscriptionRequest};
use super::{Notification, Notifier, NotifyError};

pub struct SnsNotifier {
    client: Client,
    topic_arn: String,
}

/// Which topic, where, and how long one publish may take; `notify::from_settings` builds it from the settings.
#[derive(Debug, Clone)]
pub struct SnsConfig {
    pub topic_arn: String,
    /// Overrides the SDK's region chain.
    pub region: Option<String>,
    /// A non-AWS endpoint (a local test endpoint).
    pub endpoint_url: Option<String>,
    pub publish_timeout: std::time::Duration,
}

impl SnsNotifier {
    pub async fn connect(settings: &SnsConfig, shared: &aws_config::SdkConfig) -> Result<Self, String> {
        let topic_arn = settings.topic_arn.clone();
        let region = settings.region.as_deref().or(crate::aws::region_of_arn(&topic_arn));
        // One try per publish, bounded in time: the relay owns retries, with its own backoff, so a dead
        // endpoint costs seconds, not the SDK's retry budget per message.
        let timeouts = aws_config::timeout::TimeoutConfig::builder()
            .connect_timeout(std::time::Duration::from_secs(3))
            .operation_timeout(settings.publish_timeout)
            .build();
        let mut config = aws_sdk_sns::config::Builder::from(shared)
            .region(crate::aws::region_or_shared(region, shared))
            .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(1))
            .timeout_config(timeouts);
        if let Some(endpoint) = &settings.endpoint_url {
            config = config.endpoint_url(endpoint);
        }
        Ok(SnsNotifier { client: Client::from_conf(config.build()), topic_arn })
    }

    fn is_fifo(&self) -> bool {
        self.topic_arn.ends_with(".fifo")
    }

    /// Sends one PublishBatch request and records each entry's outcome at its notification's index (the
    /// entry's id). An entry SNS failed by the sender's fault is refused for good; others are worth retrying.
    async fn publish_batch(
        &self,
        entries: Vec<(usize, PublishBatchRequestEntry)>,
        outcomes: &mut [Result<(), NotifyError>],
    ) {
        let indexes: Vec<usize> = entries.iter().map(|(index, _)| *index).collect();
        let request = self
            .client
            .publish_batch()
            .topic_arn(&self.topic_arn)
            .set_publish_batch_request_entries(Some(entries.into_iter().map(|(_, entry)| entry).collect()));
        let output = match request.send().await {
            Ok(output) => output,
            Err(error) => {
                let error = classify(error);
                for index in indexes {
                    outcomes[index] = Err(error.clone());
                }
                return;
            }
        };
        // An entry SNS answers neither way is not known to be published: it is tried again.
        let published: HashSet<usize> = output.successful().iter().filter_map(|ok| ok.id()?.parse().ok()).collect();
        for index in indexes.iter().copied().filter(|index| !published.contains(index)) {
            outcomes[index] = Err(NotifyError::Transient("SNS did not answer for this message".to_owned()));
        }
        for failed in output.failed() {
            let Some(index) = failed.id().parse::<usize>().ok().filter(|index| indexes.contains(index)) else {
                continue;
            };
            let text = format!("{}: {}", failed.code(), failed.message().unwrap_or_default());
            outcomes[index] =
                Err(if failed.sender_fault() { NotifyError::Permanent(text) } else { NotifyError::Transient(text) });
        }
    }
}

/// Throttling, server errors and network failures are worth retrying; a refused request is not.
fn classify<E: std::error::Error + ProvideErrorMetadata + 'static>(error: SdkError<E>) -> NotifyError {
    let text = DisplayErrorContext(&error).to_string();
    match &error {
        SdkError::ServiceError(service) => {
            let code = service.err().code().unwrap_or_default();
            let status = service.raw().status().as_u16();
            let retryable = status >= 500 || status == 429 || code.contains("Throttl") || code == "KMSThrottling";
            if retryable {
                NotifyError::Transient(text)
            } else {
                NotifyError::Permanent(text)
            }
        }
        _ => NotifyError::Transient(text),
    }
}

/// SNS takes at most 10 messages in one PublishBatch request, of at most 256 KiB together.
const BATCH_ENTRIES: usize = 10;
const BATCH_BYTES: usize = 256 * 1024;

/// What one notification becomes in a request: its JSON body and its message attributes.
struct Outgoing {
    body: String,
    attributes: HashMap<String, MessageAttributeValue>,
}

impl Outgoing {
    fn new(n: &Notification) -> Result<Self, NotifyError> {
        let attribute = |data_type: &str, value: String| {
            MessageAttributeValue::builder()
                .data_type(data_type)
                .string_value(value)
                .build()
                .map_err(|e| NotifyError::Permanent(e.to_string()))
        };
        let mut attributes = HashMap::with_capacity(n.attributes.len() + 1);
        for (name, value) in &n.attributes {
            attributes.insert((*name).to_owned(), attribute("String", value.clone())?);
        }
        if !n.labels.is_empty() {
            let labels = serde_json::to_string(&n.labels).map_err(|e| NotifyError::Permanent(e.to_string()))?;
            attributes.insert("top_label".to_owned(), attribute("String.Array", labels)?);
        }
        Ok(Outgoing { body: n.structured_body(), attributes })
    }

    /// The bytes SNS counts against a message's (and a batch's) size limit: body and attributes.
    fn size(&self) -> usize {
        let attributes: usize = self
            .attributes
            .iter()
            .map(|(name, value)| name.len() + value.data_type().len() + value.string_value().map_or(0, str::len))
            .sum();
        self.body.len() + attributes
    }
}

#[rocket::async_trait]
impl Notifier for SnsNotifier {
    async fn publish(&self, n: &Notification) -> Result<(), NotifyError> {
        let outgoing = Outgoing::new(n)?;
        let mut request = self
            .client
            .publish()
            .topic_arn(&self.topic_arn)
            .subject(&n.subject)
            .message_structure("json")
            .message(outgoing.body)
            .set_message_attributes(Some(outgoing.attributes));
        if self.is_fifo() {
            // FIFO topics drop a repeat with the same deduplication id within five minutes.
            request = request.message_deduplication_id(&n.id).message_group_id(&n.image_id);
        }
        request.send().await.map_err(classify)?;
        Ok(())
    }

    /// PublishBatch: up to 10 messages per request, so a backlog drains in a tenth of the round trips.
    async fn publish_all(&self, notifications: &[Notification]) -> Vec<Result<(), NotifyError>> {
        let mut outcomes: Vec<Result<(), NotifyError>> = Vec::with_capacity(notifications.len());
        let mut entries: Vec<(usize, PublishBatchRequestEntry)> = Vec::new();
        let mut entries_bytes = 0;
        for (index, n) in notifications.iter().enumerate() {
            let outgoing = match Outgoing::new(n) {
                Ok(outgoing) => outgoing,
                Err(error) => {
                    outcomes.push(Err(error));
                    continue;
                }
            };
            outcomes.push(Ok(()));
            let size = outgoing.size();
            if entries.len() == BATCH_ENTRIES || (!entries.is_empty() && entries_bytes + size > BATCH_BYTES) {
                self.publish_batch(std::mem::take(&mut entries), &mut outcomes).await;
                entries_bytes = 0;
            }
            let mut entry = PublishBatchRequestEntry::builder()
                .id(index.to_string())
                .subject(&n.subject)
                .message_structure("json")
                .message(outgoing.body)
                .set_message_attributes(Some(outgoing.attributes));
            if self.is_fifo() {
                entry = entry.message_deduplication_id(&n.id).message_group_id(&n.image_id);
            }
            match entry.build() {
                Ok(entry) => {
                    entries.push((index, entry));
                    entries_bytes += size;
                }
                Err(error) => outcomes[index] = Err(NotifyError::Permanent(error.to_string())),
            }
        }
        if !entries.is_empty() {
            self.publish_batch(entries, &mut outcomes).await;
        }
        outcomes
    }

    async fn subscribe(&self, request: &SubscriptionRequest) -> Result<Subscription, NotifyError> {
        let mut call = self
            .client
            .subscribe()
            .topic_arn(&self.topic_arn)
            .protocol(request.protocol.as_str())
            .endpoint(&request.endpoint)
            .return_subscription_arn(true);
        if let Some(policy) = request.filter_policy() {
            call = call.attributes("FilterPolicy", policy);
        }
        let output = call.send().await.map_err(classify)?;
        Ok(Subscription {
            id: output.subscription_arn().unwrap_or_default().to_owned(),
            protocol: request.protocol.as_str().to_owned(),
            endpoint: request.endpoint.clone(),
            labels: request.labels.clone(),
            pending_confirmation: output.subscription_arn().is_none_or(|arn| arn.contains("pending")),
        })
    }

    async fn subscriptions(&self) -> Result<Vec<Subscription>, NotifyError> {
        let mut found = Vec::new();
        let mut pages = self.client.list_subscriptions_by_topic().topic_arn(&self.topic_arn).into_paginator().send();
        while let Some(page) = pages.next().await {
            for s in page.map_err(classify)?.subscriptions() {
                let arn = s.subscription_arn().unwrap_or_default();
                found.push(Subscription {
                    id: arn.to_owned(),
                    protocol: s.protocol().unwrap_or_default().to_owned(),
                    endpoint: s.endpoint().unwrap_or_default().to_owned(),
                    labels: Vec::new(),
                    pending_confirmation: arn.eq_ignore_ascii_case("PendingConfirmation"),
                });
            }
        }
        Ok(found)
    }

    async fn unsubscribe(&self, id: &str) -> Result<(), NotifyError> {
        self.client.unsubscribe().subscription_arn(id).send().await.map_err(classify)?;
        Ok(())
    }

    fn describe(&self) -> String {
        format!("sns {}", self.topic_arn)
    }
}
