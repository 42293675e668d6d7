//! The event an upload leaves in the outbox, in one shape for the transaction that writes it and the relay
//! that turns it into messages.

use serde::{Deserialize, Serialize};

/// The outbox's `event_type` for one stored upload.
pub const IMAGE_UPLOADED: &str = "image.uploaded";
/// The `event_type` of a message that sums many uploads up.
pub const IMAGE_DIGEST: &str = "image.digest";

/// What subscribers are told about one stored upload (the outbox row's payload).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageUploaded {
    pub image_id: String,
    pub sha256: String,
    pub content_type: String,
    pub width: i32,
    pub height: i32,
    pub byte_size: i64,
    pub page_path: String,
    /// The classifier's most probable label and its probability.
    #[serde(default)]
    pub top_label: Option<String>,
    #[serde(default)]
    pub top_score: Option<f64>,
    #[serde(default)]
    pub has_face: bool,
    /// The seasonal colour analysis' season, for one clear face.
    #[serde(default)]
    pub season: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_payload_written_before_the_type_existed_still_reads() {
        let stored = r#"{"event_type":"image.uploaded","image_id":"0123456789abcdef0123456789abcdef",
            "sha256":"ab","content_type":"image/png","width":3,"height":4,"byte_size":99,
            "page_path":"/images/0123456789abcdef0123456789abcdef","top_label":"espresso","top_score":0.5,
            "has_face":false,"season":null}"#;
        let event: ImageUploaded = serde_json::from_str(stored).unwrap();
        assert_eq!((event.width, event.top_label.as_deref(), event.season.as_deref()), (3, Some("espresso"), None));
        let again: ImageUploaded = serde_json::from_str(&serde_json::to_string(&event).unwrap()).unwrap();
        assert_eq!(again, event);
    }
}
