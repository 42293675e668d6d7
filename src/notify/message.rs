//! What a subscriber receives for an upload: a short subject, an e-mail body, an SMS line of at most 140
//! characters, and message attributes that SNS filter policies can select on.

use serde_json::{json, Value};

/// One notification, ready for any notifier.
#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    /// The outbox row's id; also the deduplication key subscribers can use.
    pub id: String,
    pub image_id: String,
    pub event_type: String,
    pub subject: String,
    pub email: String,
    pub sms: String,
    /// Filterable attributes: `event_type`, `top_label`, `has_face`, `content_type` (plus `image_id`).
    pub attributes: Vec<(&'static str, String)>,
}

impl Notification {
    /// The per-protocol bodies for SNS's `MessageStructure=json`.
    pub fn structured_body(&self) -> String {
        json!({
            "default": self.email,
            "email": self.email,
            "email-json": self.email,
            "sms": self.sms,
            "sqs": self.machine_body(),
            "lambda": self.machine_body(),
            "http": self.machine_body(),
            "https": self.machine_body(),
        })
        .to_string()
    }

    /// For programs (queues, functions, webhooks): the same facts as JSON.
    pub fn machine_body(&self) -> String {
        let attributes: serde_json::Map<String, Value> =
            self.attributes.iter().map(|(k, v)| (k.to_string(), Value::String(v.clone()))).collect();
        json!({ "id": self.id, "image_id": self.image_id, "event_type": self.event_type, "subject": self.subject,
                "attributes": attributes })
        .to_string()
    }
}

pub const SMS_LIMIT: usize = 140;

/// Cuts `text` to `max` characters, ending with an ellipsis when something was cut.
fn shorten(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// Builds the notification of an `image.uploaded` outbox row. `public_url` makes links absolute.
pub fn for_upload(outbox_id: &str, payload: &Value, public_url: &str) -> Notification {
    let image_id = payload["image_id"].as_str().unwrap_or_default().to_owned();
    let link = format!("{}/images/{image_id}", public_url.trim_end_matches('/'));
    let label = payload["top_label"].as_str();
    let score = payload["top_score"].as_f64();
    let has_face = payload["has_face"].as_bool().unwrap_or(false);
    let what = match (label, score) {
        (Some(label), Some(score)) => format!("{label} ({:.0}%)", score * 100.0),
        (Some(label), None) => label.to_owned(),
        _ => "an image".to_owned(),
    };
    let season = payload["season"].as_str().map(|s| format!(", season {s}")).unwrap_or_default();
    let subject = shorten(&format!("New upload: {what}"), 100);
    // The link must survive whole: shorten the words in front of it.
    let room = SMS_LIMIT.saturating_sub(link.chars().count() + 1);
    let sms = format!("{} {link}", shorten(&format!("New upload: {what}"), room));
    let email = format!(
        "A new image was uploaded to Upshot.\n\nWhat the model sees: {what}{season}\nFaces: {}\nSize: {} × {} {}\n\n{link}\n",
        if has_face { "yes" } else { "none" },
        payload["width"],
        payload["height"],
        payload["content_type"].as_str().unwrap_or("image"),
    );
    let attributes = vec![
        ("event_type", payload["event_type"].as_str().unwrap_or("image.uploaded").to_owned()),
        ("top_label", label.unwrap_or("none").to_owned()),
        ("has_face", has_face.to_string()),
        ("content_type", payload["content_type"].as_str().unwrap_or("").to_owned()),
        ("image_id", image_id.clone()),
    ];
    Notification {
        id: outbox_id.to_owned(),
        image_id,
        event_type: "image.uploaded".to_owned(),
        subject,
        email,
        sms,
        attributes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(label: &str) -> Value {
        json!({ "event_type": "image.uploaded", "image_id": "0123456789abcdef0123456789abcdef", "top_label": label,
                "top_score": 0.7123, "has_face": false, "content_type": "image/jpeg", "width": 300, "height": 451 })
    }

    #[test]
    fn sms_fits_in_140_characters_with_the_whole_link() {
        let n = for_upload("o1", &payload("Egyptian cat"), "https://upshot.example.com");
        assert_eq!(
            n.sms,
            "New upload: Egyptian cat (71%) https://upshot.example.com/images/0123456789abcdef0123456789abcdef"
        );
        let long = for_upload("o2", &payload(&"very long label ".repeat(20)), "https://upshot.example.com");
        assert!(long.sms.chars().count() <= SMS_LIMIT, "{}", long.sms);
        assert!(long.sms.ends_with("/images/0123456789abcdef0123456789abcdef"));
        assert!(long.sms.contains('…'));
    }

    #[test]
    fn attributes_carry_what_filters_need() {
        let n = for_upload("o1", &payload("espresso"), "http://localhost:8000/");
        assert!(n.attributes.contains(&("top_label", "espresso".to_owned())));
        assert!(n.attributes.contains(&("has_face", "false".to_owned())));
        let body: Value = serde_json::from_str(&n.structured_body()).unwrap();
        assert!(body["default"].as_str().unwrap().contains("http://localhost:8000/images/"));
        assert_eq!(body["sms"], n.sms);
    }
}
