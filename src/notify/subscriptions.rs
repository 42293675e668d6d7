//! Subscribing people to the topic: validated e-mail addresses and E.164 phone numbers, optionally only for
//! some labels (an SNS filter policy on the `top_label` message attribute).

use serde::{Deserialize, Serialize};
use serde_json::json;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Email,
    Sms,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Email => "email",
            Protocol::Sms => "sms",
        }
    }
}

/// A subscription as the API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Subscription {
    /// The SNS subscription ARN
    pub id: String,
    pub protocol: String,
    pub endpoint: String,
    /// Empty: every upload.
    pub labels: Vec<String>,
    /// E-mail subscribers must click the link SNS sends them first.
    pub pending_confirmation: bool,
}

/// A checked request to subscribe.
#[derive(Debug, Clone)]
pub struct SubscriptionRequest {
    pub protocol: Protocol,
    pub endpoint: String,
    pub labels: Vec<String>,
}

/// The request body of `POST /api/v1/subscriptions`.
#[derive(Debug, Deserialize)]
pub struct SubscriptionInput {
    pub protocol: Protocol,
    pub endpoint: String,
    #[serde(default)]
    pub labels: Vec<String>,
}

/// An e-mail address: a local part of visible ASCII without `@`, and a domain of dot-separated labels. The API
/// document publishes these patterns, so that the document and the check are one rule.
pub const EMAIL_PATTERN: &str =
    "^[!-?A-~]{1,64}@[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)+$";
/// E.164: a plus, a non-zero country digit, 7 to 15 digits in all.
pub const E164_PATTERN: &str = "^\\+[1-9][0-9]{6,14}$";
pub const MAX_EMAIL_LENGTH: usize = 254;
pub const MAX_LABELS: usize = 50;

static EMAIL: std::sync::LazyLock<regex::Regex> =
    std::sync::LazyLock::new(|| regex::Regex::new(EMAIL_PATTERN).expect("a valid pattern"));
static E164: std::sync::LazyLock<regex::Regex> =
    std::sync::LazyLock::new(|| regex::Regex::new(E164_PATTERN).expect("a valid pattern"));

pub fn is_email(value: &str) -> bool {
    value.len() <= MAX_EMAIL_LENGTH && EMAIL.is_match(value)
}

pub fn is_e164(value: &str) -> bool {
    E164.is_match(value)
}

impl SubscriptionRequest {
    /// Checks the endpoint against its protocol and the labels against the model's label list.
    pub fn validate(input: SubscriptionInput, known_labels: &[String]) -> Result<Self, String> {
        let endpoint = input.endpoint;
        match input.protocol {
            Protocol::Email if !is_email(&endpoint) => return Err(format!("{endpoint:?} is not an e-mail address")),
            Protocol::Sms if !is_e164(&endpoint) => {
                return Err(format!("{endpoint:?} is not a phone number in E.164 form, like +14155550100"))
            }
            _ => {}
        }
        if input.labels.len() > MAX_LABELS {
            return Err(format!("at most {MAX_LABELS} labels"));
        }
        for label in &input.labels {
            if !known_labels.iter().any(|known| known == label) {
                return Err(format!("{label:?} is not one of the classifier's labels"));
            }
        }
        Ok(SubscriptionRequest { protocol: input.protocol, endpoint, labels: input.labels })
    }

    /// The SNS filter policy, when the subscriber wants only some labels.
    pub fn filter_policy(&self) -> Option<String> {
        (!self.labels.is_empty()).then(|| json!({ "top_label": self.labels }).to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_endpoints() {
        assert!(is_email("ana@example.com") && is_email("a.b+c@mail.example.org"));
        for bad in ["", "ana", "ana@", "@example.com", "ana@example", "ana @example.com", "a@b..com", "a@-b.com"] {
            assert!(!is_email(bad), "{bad}");
        }
        assert!(is_e164("+14155550100") && is_e164("+447911123456"));
        for bad in ["14155550100", "+0123456789", "+1415", "+1415555010012345", "+1 415 555 0100"] {
            assert!(!is_e164(bad), "{bad}");
        }
    }

    #[test]
    fn filters_on_known_labels_only() {
        let labels = vec!["espresso".to_owned(), "tabby".to_owned()];
        let input = |labels: Vec<&str>| SubscriptionInput {
            protocol: Protocol::Sms,
            endpoint: "+14155550100".into(),
            labels: labels.into_iter().map(String::from).collect(),
        };
        let request = SubscriptionRequest::validate(input(vec!["espresso"]), &labels).unwrap();
        assert_eq!(request.filter_policy().unwrap(), r#"{"top_label":["espresso"]}"#);
        assert!(SubscriptionRequest::validate(input(vec![]), &labels).unwrap().filter_policy().is_none());
        assert!(SubscriptionRequest::validate(input(vec!["unicorn"]), &labels).is_err());
    }
}
