//! The CPU-bound half of an upload (`prepare`): identify by content, check limits, strip metadata, decode,
//! thumbnail. The application core (`app`) runs it, then stores what it made.

mod avif;
pub mod display;
mod heif;
mod jpeg;
mod pixels;
pub mod sanitize;
mod thumbnail;
pub mod validate;

use bytes::Bytes;
use std::sync::Arc;

use image::RgbImage;

use crate::imaging::WorkingSize;

pub use crate::domain::format::{self, ImageFormat};
pub use validate::ImageLimits;

use crate::domain::sha256_hex;
use crate::error::{AppError, ErrorCode};

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("{detected} is not an accepted image format")]
    Unsupported { detected: &'static str },
    #[error("the image exceeds {limit} ({actual} > {max})")]
    TooLarge { limit: &'static str, max: u64, actual: u64 },
    #[error("decoding would exceed the memory limit: {0}")]
    DecoderLimit(String),
    #[error("the image cannot be decoded: {0}")]
    Corrupt(String),
}

impl From<sanitize::MalformedImage> for IngestError {
    fn from(error: sanitize::MalformedImage) -> Self {
        IngestError::Corrupt(error.0.to_owned())
    }
}

impl From<IngestError> for AppError {
    fn from(error: IngestError) -> Self {
        let (code, message) = match &error {
            IngestError::Unsupported { detected } => (
                ErrorCode::UnsupportedMediaType,
                format!("The file is {detected}; upload a JPEG, PNG, WebP, GIF, HEIC or AVIF image."),
            ),
            IngestError::TooLarge { limit, max, actual } => (
                ErrorCode::ImageTooLarge,
                format!("The image is too large: {actual} exceeds the limit {limit} = {max}."),
            ),
            IngestError::DecoderLimit(_) => {
                (ErrorCode::ImageTooLarge, "The image needs more memory to decode than allowed.".to_owned())
            }
            IngestError::Corrupt(_) => {
                (ErrorCode::CorruptImage, "The file looks like an image but cannot be decoded.".to_owned())
            }
        };
        AppError::new(code, message).with_detail(error)
    }
}

/// What `prepare` checks against.
#[derive(Debug, Clone)]
pub struct IngestPolicy {
    pub accepted: Vec<ImageFormat>,
    pub limits: ImageLimits,
    pub thumbnail_size: u32,
    /// The size images are decoded to: enough for the thumbnail and the models' inputs.
    pub working: WorkingSize,
    /// The CPU slots uploads share, for a decoder that can split its work to borrow the idle ones.
    pub cpu: CpuSlots,
}

/// The server's CPU slots (`cpu_slots`), each upload's decoding holding one. A decoder that can use more
/// threads (a HEIC's grid of tiles) borrows the slots that are idle, and only those: under load every
/// upload keeps to its own core, and an upload alone gets them all.
#[derive(Debug, Clone, Default)]
pub struct CpuSlots(Option<Arc<tokio::sync::Semaphore>>);

impl CpuSlots {
    pub fn new(slots: Arc<tokio::sync::Semaphore>) -> Self {
        CpuSlots(Some(slots))
    }

    /// The idle slots, at most `most`, held until the returned loan is dropped.
    pub fn borrow_idle(&self, most: usize) -> IdleSlots {
        let Some(slots) = &self.0 else { return IdleSlots { count: 0, _permit: None } };
        let mut count = slots.available_permits().min(most);
        while count > 0 {
            if let Ok(permit) = slots.clone().try_acquire_many_owned(count as u32) {
                return IdleSlots { count, _permit: Some(permit) };
            }
            count -= 1;
        }
        IdleSlots { count: 0, _permit: None }
    }
}

/// Idle CPU slots lent to one decode.
pub struct IdleSlots {
    pub count: usize,
    _permit: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl IngestPolicy {
    /// The policy the settings describe, for models whose preprocessing reduces from `model_input`.
    pub fn new(settings: &crate::config::ImageSettings, model_input: WorkingSize) -> Self {
        IngestPolicy {
            accepted: settings.accepted_formats.clone(),
            limits: ImageLimits {
                max_width: settings.max_image_width,
                max_height: settings.max_image_height,
                max_pixels: settings.max_image_pixels,
                max_frames: settings.max_frames,
                max_animation_pixels: settings.max_animation_pixels,
            },
            thumbnail_size: settings.thumbnail_size,
            working: WorkingSize {
                min_long_side: model_input.min_long_side.max(settings.thumbnail_size),
                ..model_input
            },
            cpu: CpuSlots::default(),
        }
    }

    /// The policy of a server with `config`, its models' input size read from their manifest without loading
    /// them: for tools that must decode as uploads do.
    pub fn of_config(config: &crate::config::AppConfig) -> Result<Self, crate::inference::InferenceError> {
        let model_input = crate::inference::manifest_input_size(&config.settings.inference.models_dir)?;
        Ok(IngestPolicy::new(&config.settings.images, model_input))
    }
}

/// An upload's bytes as they arrived, with their SHA-256: hashed once, where they are received, and read by
/// the idempotency check, a declared-digest check and the row alike.
pub struct Upload {
    pub bytes: Vec<u8>,
    pub sha256: String,
}

impl Upload {
    pub fn new(bytes: Vec<u8>) -> Self {
        let sha256 = sha256_hex(&bytes);
        Upload { bytes, sha256 }
    }

    /// Reads `reader` to its end, hashing each piece as it arrives: one pass over the bytes, in steps short
    /// enough not to hold up the other requests on this thread. `expected_len` is the length announced.
    pub async fn read(mut reader: impl tokio::io::AsyncRead + Unpin, expected_len: u64) -> std::io::Result<Upload> {
        use sha2::Digest;
        use tokio::io::AsyncReadExt;
        // One byte more than announced, so the read that finds the end needs no larger buffer.
        let mut bytes = Vec::with_capacity(expected_len as usize + 1);
        let mut hasher = sha2::Sha256::new();
        loop {
            let start = bytes.len();
            if reader.read_buf(&mut bytes).await? == 0 {
                break;
            }
            hasher.update(&bytes[start..]);
        }
        Ok(Upload { bytes, sha256: hex::encode(hasher.finalize()) })
    }
}

/// A validated upload, ready to store: metadata stripped, its size and working image upright, thumbnail made.
pub struct PreparedImage {
    pub format: ImageFormat,
    pub original: Bytes,
    pub sha256: String,
    pub source_sha256: String,
    pub width: u32,
    pub height: u32,
    pub thumbnail: Bytes,
    pub thumbnail_format: ImageFormat,
    /// The upright working image (a few hundred pixels a side), for the models.
    pub pixels: Arc<RgbImage>,
    /// The display rendition, for an original browsers cannot show or that is far larger than a screen.
    pub display: Option<(Bytes, ImageFormat)>,
    /// The ThumbHash placeholder (base64).
    pub thumbhash: String,
}

/// The CPU-bound half of an upload. Blocking: run it on a blocking thread.
pub fn prepare(upload: &Upload, policy: &IngestPolicy) -> Result<PreparedImage, IngestError> {
    use tracing::info_span;
    let (format, header) = info_span!("image.identify").in_scope(|| identify(&upload.bytes, policy))?;
    let stripped = info_span!("image.strip", image.format = format.name()).in_scope(|| {
        let stripped = sanitize::strip_metadata(&upload.bytes, format, header.orientation)?;
        let frames = sanitize::frame_count(&stripped, format)?;
        policy.limits.check_animation(frames, header.width, header.height)?;
        Ok::<_, IngestError>(stripped)
    })?;
    // Decoding the stored bytes (every scan of them, at any scale), not the upload, proves that what we store
    // is a valid image.
    let upright = info_span!("image.decode", image.width = header.width, image.height = header.height)
        .in_scope(|| pixels::for_storage(stripped, format, header.orientation, policy))?;
    let thumbnail_span = info_span!("image.thumbnail").entered();
    let thumb = thumbnail::make(&upright.working, (upright.width, upright.height), policy.thumbnail_size)?;
    let thumbhash = crate::imaging::thumbhash(&upright.working);
    drop(thumbnail_span);
    // Bytes that had nothing to strip or turn are stored as they came: their digest is already known.
    let sha256 = if upright.original == upload.bytes { upload.sha256.clone() } else { sha256_hex(&upright.original) };
    Ok(PreparedImage {
        format,
        sha256,
        source_sha256: upload.sha256.clone(),
        original: upright.original.into(),
        width: upright.width,
        height: upright.height,
        thumbnail: thumb.bytes.into(),
        thumbnail_format: thumb.format,
        thumbhash,
        pixels: Arc::new(upright.working.into_rgb8()),
        display: upright.display.map(|rendition| (rendition.bytes.into(), rendition.format)),
    })
}

/// What an upload derives from its original, made again from the stored bytes.
pub struct Derived {
    pub thumbnail: (Bytes, ImageFormat),
    pub display: Option<(Bytes, ImageFormat)>,
}

/// The thumbnail and display rendition of an image as stored (metadata stripped; a JPEG with the orientation
/// it keeps), made as the upload made them: for a consistency repair whose derived objects are gone.
pub fn derived_from_stored(original: &[u8], policy: &IngestPolicy) -> Result<Derived, IngestError> {
    let (format, header) = identify(original, policy)?;
    let upright = pixels::for_storage(original.to_vec(), format, header.orientation, policy)?;
    let thumb = thumbnail::make(&upright.working, (upright.width, upright.height), policy.thumbnail_size)?;
    Ok(Derived {
        thumbnail: (thumb.bytes.into(), thumb.format),
        display: upright.display.map(|rendition| (rendition.bytes.into(), rendition.format)),
    })
}

/// Identifies, checks and decodes an upload for the models alone (nothing is stored): the upright working
/// image.
pub fn decode_upright(upload: &[u8], policy: &IngestPolicy) -> Result<RgbImage, IngestError> {
    let (format, header) = identify(upload, policy)?;
    pixels::for_models(upload, format, header.orientation, policy)
}

/// The accepted format, by content, and the header within the limits; no pixel decoded yet.
fn identify(upload: &[u8], policy: &IngestPolicy) -> Result<(ImageFormat, validate::Header), IngestError> {
    let format = ImageFormat::sniff(upload)
        .filter(|f| policy.accepted.contains(f))
        .ok_or_else(|| IngestError::Unsupported { detected: describe(upload) })?;
    Ok((format, validate::read_header(upload, format, &policy.limits)?))
}

fn describe(upload: &[u8]) -> &'static str {
    match ImageFormat::sniff(upload) {
        Some(format) => match format {
            ImageFormat::Jpeg => "a JPEG image",
            ImageFormat::Png => "a PNG image",
            ImageFormat::Webp => "a WebP image",
            ImageFormat::Gif => "a GIF image",
            ImageFormat::Heic => "a HEIC image",
            ImageFormat::Avif => "an AVIF image",
        },
        None => format::describe_unsupported(upload),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_decoder_borrows_only_the_idle_cpu_slots_and_gives_them_back() {
        let slots = Arc::new(tokio::sync::Semaphore::new(3));
        let own = slots.clone().try_acquire_owned().unwrap();
        let cpu = CpuSlots::new(slots.clone());
        let loan = cpu.borrow_idle(4);
        assert_eq!(loan.count, 2, "the two idle slots, not more");
        assert_eq!(cpu.borrow_idle(4).count, 0, "none left for another decode meanwhile");
        drop(loan);
        assert_eq!(cpu.borrow_idle(1).count, 1, "at most what is asked");
        assert_eq!(slots.available_permits(), 2, "returned when the loan ends");
        drop(own);
        assert_eq!(CpuSlots::default().borrow_idle(4).count, 0, "tools without slots decode on one thread");
    }
}
