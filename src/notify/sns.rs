//! Publishing to an SNS topic, and managing its e-mail/SMS subscriptions. Credentials and region come from
//! the SDK's default chain (the instance role in production).

use aws_sdk_sns::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_sns::types::MessageAttributeValue;
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

#[rocket::async_trait]
impl Notifier for SnsNotifier {
    async fn publish(&self, n: &Notification) -> Result<(), NotifyError> {
        let mut request = self
            .client
            .publish()
            .topic_arn(&self.topic_arn)
            .subject(&n.subject)
            .message_structure("json")
            .message(n.structured_body());
        for (name, value) in &n.attributes {
            let attribute = MessageAttributeValue::builder()
                .data_type("String")
                .string_value(value)
                .build()
                .map_err(|e| NotifyError::Permanent(e.to_string()))?;
            request = request.message_attributes(*name, attribute);
        }
        if !n.labels.is_empty() {
            let labels = serde_json::to_string(&n.labels).map_err(|e| NotifyError::Permanent(e.to_string()))?;
            let attribute = MessageAttributeValue::builder()
                .data_type("String.Array")
                .string_value(labels)
                .build()
                .map_err(|e| NotifyError::Permanent(e.to_string()))?;
            request = request.message_attributes("top_label", attribute);
        }
        if self.is_fifo() {
            // FIFO topics drop a repeat with the same deduplication id within five minutes.
            request = request.message_deduplication_id(&n.id).message_group_id(&n.image_id);
        }
        request.send().await.map_err(classify)?;
        Ok(())
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
