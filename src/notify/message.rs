//! What a subscriber receives for an upload: a short subject, an e-mail body, an SMS line of at most 140
//! characters, and message attributes that SNS filter policies can select on.

use serde_json::{json, Value};

use crate::domain::event::{ImageUploaded, IMAGE_DIGEST, IMAGE_UPLOADED};

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
    /// A digest's images, and their top labels (sent as the list attribute `top_label`, so that a subscriber's
    /// label filter matches a digest holding any of its labels). Empty for one upload's notification.
    pub digest_of: Vec<String>,
    pub labels: Vec<String>,
}

impl Notification {
    /// The per-protocol bodies for SNS's `MessageStructure=json`.
    pub fn structured_body(&self) -> String {
        let machine = self.machine_body();
        json!({
            "default": self.email,
            "email": self.email,
            "email-json": self.email,
            "sms": self.sms,
            "sqs": machine,
            "lambda": machine,
            "http": machine,
            "https": machine,
        })
        .to_string()
    }

    /// For programs (queues, functions, webhooks): the same facts as JSON.
    pub fn machine_body(&self) -> String {
        let mut attributes: serde_json::Map<String, Value> =
            self.attributes.iter().map(|(k, v)| (k.to_string(), Value::String(v.clone()))).collect();
        let mut body = json!({ "id": self.id, "image_id": self.image_id, "event_type": self.event_type,
                "subject": self.subject });
        if !self.digest_of.is_empty() {
            attributes.insert("top_label".to_owned(), json!(self.labels));
            body["image_ids"] = json!(self.digest_of);
        }
        body["attributes"] = Value::Object(attributes);
        body.to_string()
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
pub fn for_upload(outbox_id: &str, event: &ImageUploaded, public_url: &str) -> Notification {
    let image_id = event.image_id.clone();
    let link = format!("{}/images/{image_id}", public_url.trim_end_matches('/'));
    let what = match (&event.top_label, event.top_score) {
        (Some(label), Some(score)) => format!("{label} ({:.0}%)", score * 100.0),
        (Some(label), None) => label.clone(),
        _ => "an image".to_owned(),
    };
    let season = event.season.as_deref().map(|s| format!(", season {s}")).unwrap_or_default();
    let subject = shorten(&format!("New upload: {what}"), 100);
    // The link must survive whole: shorten the words in front of it.
    let room = SMS_LIMIT.saturating_sub(link.chars().count() + 1);
    let sms = format!("{} {link}", shorten(&format!("New upload: {what}"), room));
    let email = format!(
        "A new image was uploaded to Upshot.\n\nWhat the model sees: {what}{season}\nFaces: {}\nSize: {} × {} {}\n\n{link}\n",
        if event.has_face { "yes" } else { "none" },
        event.width,
        event.height,
        event.content_type,
    );
    let attributes = vec![
        ("event_type", IMAGE_UPLOADED.to_owned()),
        ("top_label", event.top_label.clone().unwrap_or_else(|| "none".to_owned())),
        ("has_face", event.has_face.to_string()),
        ("content_type", event.content_type.clone()),
        ("image_id", image_id.clone()),
    ];
    Notification {
        id: outbox_id.to_owned(),
        image_id,
        event_type: IMAGE_UPLOADED.to_owned(),
        subject,
        email,
        sms,
        attributes,
        digest_of: Vec::new(),
        labels: Vec::new(),
    }
}

/// How many of a digest's images its e-mail links one by one.
const DIGEST_LINKS: usize = 20;

/// One notification for many uploads (the payloads of their outbox rows), sent when the hour's allowance of
/// messages is spent: the count, the labels, links to the first few and to the gallery.
pub fn digest(digest_id: &str, events: &[ImageUploaded], public_url: &str) -> Notification {
    let base = public_url.trim_end_matches('/');
    let count = events.len();
    let mut labels: Vec<String> =
        events.iter().map(|e| e.top_label.clone().unwrap_or_else(|| "none".to_owned())).collect();
    labels.sort();
    labels.dedup();
    let image_ids: Vec<String> = events.iter().map(|e| e.image_id.clone()).collect();
    let subject = format!("{count} new uploads");
    let gallery = format!("{base}/admin/images");
    let room = SMS_LIMIT.saturating_sub(gallery.chars().count() + 1);
    let sms = format!("{} {gallery}", shorten(&format!("{count} new uploads on Upshot"), room));
    let mut email = format!(
        "{count} images were uploaded to Upshot since the last message (notifications are summed up while          many arrive).

What the model saw: {}

",
        labels.join(", ")
    );
    for event in events.iter().take(DIGEST_LINKS) {
        let label = event.top_label.as_deref().unwrap_or("an image");
        email.push_str(&format!(
            "- {label}: {base}/images/{}
",
            event.image_id
        ));
    }
    if count > DIGEST_LINKS {
        email.push_str(&format!(
            "- and {} more
",
            count - DIGEST_LINKS
        ));
    }
    email.push_str(&format!(
        "
All images: {gallery}
"
    ));
    let has_face = events.iter().any(|e| e.has_face);
    Notification {
        id: digest_id.to_owned(),
        image_id: digest_id.to_owned(),
        event_type: IMAGE_DIGEST.to_owned(),
        subject,
        email,
        sms,
        attributes: vec![("event_type", IMAGE_DIGEST.to_owned()), ("has_face", has_face.to_string())],
        digest_of: image_ids,
        labels,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(label: &str) -> ImageUploaded {
        ImageUploaded {
            image_id: "0123456789abcdef0123456789abcdef".to_owned(),
            sha256: "00".repeat(32),
            content_type: "image/jpeg".to_owned(),
            width: 300,
            height: 451,
            byte_size: 20_000,
            page_path: "/images/0123456789abcdef0123456789abcdef".to_owned(),
            top_label: Some(label.to_owned()),
            top_score: Some(0.7123),
            has_face: false,
            season: None,
        }
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
    fn a_digest_names_its_images_and_labels_and_fits_an_sms() {
        let payloads: Vec<ImageUploaded> = (0..25)
            .map(|i| ImageUploaded {
                image_id: format!("{i:032x}"),
                ..payload(if i % 2 == 0 { "espresso" } else { "tabby" })
            })
            .collect();
        let n = digest("d1", &payloads, "https://upshot.example.com");
        assert_eq!(n.subject, "25 new uploads");
        assert_eq!(n.labels, ["espresso", "tabby"]);
        assert_eq!(n.digest_of.len(), 25);
        assert!(n.sms.chars().count() <= SMS_LIMIT && n.sms.ends_with("https://upshot.example.com/admin/images"));
        assert!(n.email.contains("- and 5 more"), "{}", n.email);
        let body: Value = serde_json::from_str(&n.machine_body()).unwrap();
        assert_eq!(body["image_ids"].as_array().unwrap().len(), 25);
        assert_eq!(body["attributes"]["top_label"], json!(["espresso", "tabby"]));
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
