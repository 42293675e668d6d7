//! Reading and deleting stored images, and how an image is shown to clients.

use serde::Serialize;
use serde_json::Value;

use super::App;
use crate::db::image_rows::{self, ImageRecord, ImageStatus};
use crate::domain::{ImageId, Signer};
use crate::error::{AppError, AppResult, ErrorCode};
use crate::inference::{Face, ModelInfo, Prediction};
use crate::store::ObjectBody;

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ImageUrls {
    /// The original, as stored.
    pub file: String,
    pub thumbnail: String,
    /// What to show in a browser: the display rendition when there is one, else the original.
    pub display: String,
    pub page: String,
}

/// An image derived from the original, stored beside it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RenditionView {
    /// `thumbnail` (always), or `display`: a JPEG (PNG with transparency) at most 2048 pixels long, for an
    /// original browsers cannot show (HEIC) or that is far larger than a screen.
    #[schema(example = "display")]
    pub name: &'static str,
    pub content_type: String,
    pub url: String,
}

/// The public description of an image, as the API and the pages show it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = Image)]
pub struct ImageView {
    pub id: String,
    pub urls: ImageUrls,
    pub original_filename: Option<String>,
    pub description: Option<String>,
    #[schema(example = "jpeg")]
    pub format: String,
    pub content_type: String,
    pub width: i32,
    pub height: i32,
    pub byte_size: i64,
    #[schema(pattern = "^[0-9a-f]{64}$")]
    pub sha256: String,
    pub thumbnail_content_type: String,
    /// The renditions stored beside the original.
    pub renditions: Vec<RenditionView>,
    /// A ThumbHash (base64, https://evanw.github.io/thumbhash/): a blurred likeness to paint while the image
    /// loads. Absent for images stored before placeholders.
    #[schema(example = "1QcSHQRnh493V4dIh4eXh1h4kJUI")]
    pub thumbhash: Option<String>,
    /// The classifier's top labels, most probable first.
    pub predictions: Vec<Prediction>,
    /// The classifier that produced `predictions`.
    pub model: Option<ModelInfo>,
    pub inference_ms: Option<f64>,
    pub faces: Vec<Face>,
    /// The seasonal colour analysis, present for exactly one clear face.
    #[schema(value_type = Option<crate::inference::season::SeasonAnalysis>)]
    pub selfie: Option<Value>,
    pub selfie_reason: Option<String>,
    #[schema(format = DateTime)]
    pub created_at: String,
}

impl From<&ImageRecord> for ImageView {
    fn from(record: &ImageRecord) -> Self {
        let id = &record.id;
        let details = &record.analysis;
        let model = match (&record.model_name, &record.model_version, &record.model_sha256) {
            (Some(name), Some(version), Some(sha256)) => {
                Some(ModelInfo { name: name.clone(), version: version.clone(), sha256: sha256.clone() })
            }
            _ => None,
        };
        let file = format!("/api/v1/images/{id}/file");
        let thumbnail = format!("/api/v1/images/{id}/thumbnail");
        let display = record.display_content_type.as_ref().map(|content_type| RenditionView {
            name: "display",
            content_type: content_type.clone(),
            url: format!("/api/v1/images/{id}/display"),
        });
        let shown = display.as_ref().map_or(&file, |display| &display.url).clone();
        let thumbnail_rendition = RenditionView {
            name: "thumbnail",
            content_type: record.thumbnail_content_type.clone(),
            url: thumbnail.clone(),
        };
        ImageView {
            id: id.to_string(),
            urls: ImageUrls { file, thumbnail, display: shown, page: format!("/images/{id}") },
            renditions: std::iter::once(thumbnail_rendition).chain(display).collect(),
            thumbhash: record.thumbhash.clone(),
            original_filename: record.original_filename.clone(),
            description: record.description.clone(),
            format: record.format.clone(),
            content_type: record.content_type.clone(),
            width: record.width,
            height: record.height,
            byte_size: record.byte_size,
            sha256: record.sha256.clone(),
            thumbnail_content_type: record.thumbnail_content_type.clone(),
            predictions: record.predictions.to_vec(),
            model,
            inference_ms: record.inference_ms,
            faces: details.faces.clone(),
            selfie: details.selfie.clone().filter(|s| !s.is_null()),
            selfie_reason: details.selfie_reason.clone(),
            created_at: record.created_at.and_utc().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    Original,
    Thumbnail,
    /// The display rendition, or the original when it needs none.
    Display,
}

pub struct ImageObject {
    pub body: ObjectBody,
    pub content_type: String,
    pub etag: String,
}

/// Who asks for a delete.
pub enum DeleteAuthority<'a> {
    Token(&'a str),
    Admin,
}

impl App {
    /// A stored image. One whose original was found gone (`upshot reconcile --repair`) answers 410.
    pub async fn image(&self, id: &ImageId) -> AppResult<ImageRecord> {
        let id = id.to_string();
        let record = self.db.run(move |conn| image_rows::find_any(conn, &id)).await?.ok_or_else(AppError::not_found)?;
        match record.status {
            ImageStatus::Stored => Ok(record),
            ImageStatus::Missing => Err(AppError::image_missing()),
            _ => Err(AppError::not_found()),
        }
    }

    pub async fn image_object(&self, id: &ImageId, variant: Variant) -> AppResult<ImageObject> {
        let record = self.image(id).await?;
        let (key, content_type, suffix) = match (variant, &record.display_key, &record.display_content_type) {
            (Variant::Thumbnail, _, _) => (&record.thumbnail_key, record.thumbnail_content_type.clone(), "-thumb"),
            (Variant::Display, Some(key), Some(content_type)) => (key, content_type.clone(), "-display"),
            _ => (&record.original_key, record.content_type.clone(), ""),
        };
        let body = self.store.get(key).await?;
        Ok(ImageObject { body, content_type, etag: format!("\"{}{suffix}\"", record.sha256) })
    }

    /// Removes the row and, unless other rows share them, the objects. The row is marked first and removed
    /// last, so a failure half-way leaves a hidden row that a retried delete finishes, never an orphan object.
    pub async fn delete_image(&self, id: &ImageId, authority: DeleteAuthority<'_>) -> AppResult<()> {
        let record = {
            let id = id.to_string();
            self.db.run(move |conn| image_rows::find_any(conn, &id)).await?.ok_or_else(AppError::not_found)?
        };
        if let DeleteAuthority::Token(token) = authority {
            if !Signer::token_matches(token, &record.delete_token_hash) {
                return Err(AppError::new(ErrorCode::Forbidden, "The delete token does not match this image."));
            }
        }
        let row_id = id.to_string();
        let Some(plan) = self.db.run(move |conn| image_rows::begin_delete(conn, &row_id)).await? else {
            return Err(AppError::not_found());
        };
        if !plan.objects_shared {
            self.store.delete(&plan.record.original_key).await?;
            self.store.delete(&plan.record.thumbnail_key).await?;
            if let Some(display_key) = &plan.record.display_key {
                self.store.delete(display_key).await?;
            }
        }
        let row_id = id.to_string();
        self.db.run(move |conn| image_rows::delete_row(conn, &row_id)).await?;
        Ok(())
    }
}

/// Cursors are opaque to clients: base64url of `<created_at in ms>:<id>`.
/// A page's `next_cursor`: `<milliseconds>-<image id>` of its last image (the pattern `GET /api/v1/images` documents for `cursor`).
pub fn encode_cursor(record: &ImageRecord) -> String {
    format!("{}-{}", record.created_at.and_utc().timestamp_millis(), record.id)
}

pub fn decode_cursor(cursor: &str) -> AppResult<(chrono::NaiveDateTime, String)> {
    let invalid = || AppError::new(ErrorCode::BadRequest, "The cursor is not one this server issued.");
    let (millis, id) = cursor.split_once('-').ok_or_else(invalid)?;
    let digits = (1..=15).contains(&millis.len()) && millis.bytes().all(|b| b.is_ascii_digit());
    let created_at = digits
        .then(|| millis.parse::<i64>().ok())
        .flatten()
        .and_then(chrono::DateTime::from_timestamp_millis)
        .ok_or_else(invalid)?;
    let id = ImageId::parse(id).ok_or_else(invalid)?;
    Ok((created_at.naive_utc(), id.to_string()))
}
