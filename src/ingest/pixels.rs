//! From sanitized bytes to what is stored and what the models see: the upright original and one small working
//! image. A JPEG is decoded at a DCT scale and turned upright losslessly, so a phone photo is never decoded at
//! full size nor compressed again; other formats are decoded in full once, then downscaled, and their full
//! bitmap is dropped before any I/O.

use image::metadata::Orientation;
use image::{DynamicImage, GenericImageView, RgbImage};

use super::{jpeg, thumbnail, validate, ImageFormat, IngestError, IngestPolicy};
use crate::imaging::{self, WorkingSize};

/// What `for_storage` makes of an upload.
pub struct Upright {
    /// The bytes to store: upright, metadata already stripped.
    pub original: Vec<u8>,
    pub width: u32,
    pub height: u32,
    /// The working image, upright: RGB, or RGBA when the format has an alpha channel.
    pub working: DynamicImage,
}

fn uses_libjpeg(format: ImageFormat, data: &[u8]) -> Result<bool, IngestError> {
    Ok(format == ImageFormat::Jpeg && !jpeg::is_cmyk(data)?)
}

/// The stored bytes and the working image of a sanitized upload.
pub fn for_storage(
    stripped: Vec<u8>,
    format: ImageFormat,
    orientation: Orientation,
    policy: &IngestPolicy,
) -> Result<Upright, IngestError> {
    if !uses_libjpeg(format, &stripped)? {
        return decoded_in_full(stripped, format, orientation, policy);
    }
    if orientation == Orientation::NoTransforms {
        let working = jpeg::decode_scaled(&stripped, policy.working)?;
        let (width, height) = jpeg::dimensions(&stripped)?;
        return Ok(Upright { original: stripped, width, height, working: DynamicImage::ImageRgb8(working) });
    }
    // The lossless turn and the scaled decode both read every scan of the same bytes; on two threads they
    // cost one request half the time.
    let (upright, working) = std::thread::scope(|scope| {
        let turn = scope.spawn(|| jpeg::orient_losslessly(&stripped, orientation));
        let working = jpeg::decode_scaled(&stripped, policy.working);
        (turn.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)), working)
    });
    let Some(original) = upright? else {
        return decoded_in_full(stripped, format, orientation, policy);
    };
    let mut working = DynamicImage::ImageRgb8(working?);
    working.apply_orientation(orientation);
    let (width, height) = jpeg::dimensions(&original)?;
    Ok(Upright { original, width, height, working })
}

/// Decodes every pixel, applies the orientation and, when it had to, re-encodes in the upload's format.
fn decoded_in_full(
    stripped: Vec<u8>,
    format: ImageFormat,
    orientation: Orientation,
    policy: &IngestPolicy,
) -> Result<Upright, IngestError> {
    let mut full = validate::decode(&stripped, format, &policy.limits)?;
    full.apply_orientation(orientation);
    let (width, height) = (full.width(), full.height());
    let original =
        if orientation == Orientation::NoTransforms { stripped } else { thumbnail::encode_as(&full, format)? };
    Ok(Upright { original, width, height, working: downscale(full, policy.working) })
}

/// The upright working image alone, in RGB, for the models (nothing is stored).
pub fn for_models(
    upload: &[u8],
    format: ImageFormat,
    orientation: Orientation,
    policy: &IngestPolicy,
) -> Result<RgbImage, IngestError> {
    let mut working = if uses_libjpeg(format, upload)? {
        DynamicImage::ImageRgb8(jpeg::decode_scaled(upload, policy.working)?)
    } else {
        downscale(validate::decode(upload, format, &policy.limits)?, policy.working)
    };
    working.apply_orientation(orientation);
    Ok(working.into_rgb8())
}

/// Reduces a full decoded image to the working size, in 8-bit RGB or RGBA; the full image is consumed.
fn downscale(full: DynamicImage, needs: WorkingSize) -> DynamicImage {
    let target = needs.target(full.width(), full.height());
    let (width, height) = target;
    match full.color().has_alpha() {
        true if full.dimensions() == target => DynamicImage::ImageRgba8(full.into_rgba8()),
        true => DynamicImage::ImageRgba8(imaging::resize(&full.into_rgba8(), width, height)),
        false if full.dimensions() == target => DynamicImage::ImageRgb8(full.into_rgb8()),
        false => DynamicImage::ImageRgb8(imaging::resize(&full.into_rgb8(), width, height)),
    }
}
