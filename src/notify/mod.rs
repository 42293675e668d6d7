//! Notifications: the transactional outbox is published by a relay (`relay`) through a `Notifier` — the log
//! (embedded default) or an SNS topic — and, with SNS, people subscribe by e-mail or SMS.

pub mod message;
pub mod relay;
mod sns;
pub mod subscriptions;

use std::sync::Arc;

pub use message::Notification;
pub use sns::{SnsConfig, SnsNotifier};
pub use subscriptions::{Subscription, SubscriptionRequest};

use crate::config::{NotifierKind, NotifySettings};

#[derive(Debug, Clone, thiserror::Error)]
pub enum NotifyError {
    /// Worth retrying: the endpoint was unreachable, throttled or failing.
    #[error("publishing failed: {0}")]
    Transient(String),
    /// Retrying will not help (bad topic, no permission); the message is parked at once.
    #[error("publishing was refused: {0}")]
    Permanent(String),
    #[error("this notifier does not manage subscriptions")]
    NotSupported,
}

#[rocket::async_trait]
pub trait Notifier: Send + Sync {
    async fn publish(&self, notification: &Notification) -> Result<(), NotifyError>;
    /// Publishes several, in as few requests as the notifier allows; one outcome per notification, in order.
    async fn publish_all(&self, notifications: &[Notification]) -> Vec<Result<(), NotifyError>> {
        let mut outcomes = Vec::with_capacity(notifications.len());
        for notification in notifications {
            outcomes.push(self.publish(notification).await);
        }
        outcomes
    }
    async fn subscribe(&self, request: &SubscriptionRequest) -> Result<Subscription, NotifyError>;
    async fn subscriptions(&self) -> Result<Vec<Subscription>, NotifyError>;
    async fn unsubscribe(&self, id: &str) -> Result<(), NotifyError>;
    fn describe(&self) -> String;
}

/// Writes one structured log line per notification: the embedded default, needing no account.
pub struct LogNotifier;

#[rocket::async_trait]
impl Notifier for LogNotifier {
    async fn publish(&self, n: &Notification) -> Result<(), NotifyError> {
        let attributes: Vec<String> = n.attributes.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
        log::info!(
            target: "upshot::notify",
            "notification id={} image_id={} subject={:?} sms={:?} {}",
            n.id,
            n.image_id,
            n.subject,
            n.sms,
            attributes.join(" ")
        );
        Ok(())
    }

    async fn subscribe(&self, _: &SubscriptionRequest) -> Result<Subscription, NotifyError> {
        Err(NotifyError::NotSupported)
    }

    async fn subscriptions(&self) -> Result<Vec<Subscription>, NotifyError> {
        Err(NotifyError::NotSupported)
    }

    async fn unsubscribe(&self, _: &str) -> Result<(), NotifyError> {
        Err(NotifyError::NotSupported)
    }

    fn describe(&self) -> String {
        "log".to_owned()
    }
}

pub async fn from_settings(
    settings: &NotifySettings,
    aws: &crate::aws::SharedConfig,
) -> Result<Arc<dyn Notifier>, String> {
    Ok(match settings.notifier {
        NotifierKind::Log => Arc::new(LogNotifier),
        NotifierKind::Sns => {
            let sns = SnsConfig {
                topic_arn: settings.sns_topic_arn.clone().ok_or("no SNS topic configured")?,
                region: settings.sns_region.clone(),
                endpoint_url: settings.sns_endpoint_url.clone(),
                publish_timeout: crate::config::SNS_PUBLISH_TIMEOUT,
            };
            Arc::new(SnsNotifier::connect(&sns, aws.get().await).await?)
        }
    })
}
