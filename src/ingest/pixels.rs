//! From sanitized bytes to what is stored and what the models see: the original and one small, upright
//! working image. A JPEG is stored as it came (its orientation kept as its only EXIF tag, which browsers and
//! viewers follow) and decoded once, at the DCT scale that covers the working size, so a phone photo is never
//! decoded at full size nor compressed again; other formats are decoded in full once, turned upright (and then
//! encoded again), downscaled, and their full bitmap is dropped before any I/O.

use image::metadata::Orientation;
use image::{DynamicImage, GenericImageView, RgbImage};

use super::{display, jpeg, thumbnail, validate, ImageFormat, IngestError, IngestPolicy};
use crate::imaging::{self, WorkingSize};

/// What `for_storage` makes of an upload.
pub struct Upright {
    /// The bytes to store, metadata already stripped: upright, or a JPEG that says how to turn it upright.
    pub original: Vec<u8>,
    /// The size as people see it: upright.
    pub width: u32,
    pub height: u32,
    /// The working image, upright: RGB, or RGBA when the format has an alpha channel.
    pub working: DynamicImage,
    /// What browsers are shown instead of an original they cannot show or that is far larger than a screen.
    pub display: Option<thumbnail::Encoded>,
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
    let mut working = DynamicImage::ImageRgb8(jpeg::decode_scaled(&stripped, policy.working)?);
    working.apply_orientation(orientation);
    let (width, height) = jpeg::dimensions(&stripped)?;
    let (width, height) = if turns_sideways(orientation) { (height, width) } else { (width, height) };
    let display = if display::needed(format, width, height) {
        // Decoded again, at the DCT scale that covers the rendition: a large JPEG is never decoded in full.
        let mut large = DynamicImage::ImageRgb8(jpeg::decode_scaled(&stripped, display::JPEG_DECODE)?);
        large.apply_orientation(orientation);
        Some(display::make(&large)?)
    } else {
        None
    };
    Ok(Upright { original: stripped, width, height, working, display })
}

/// Whether turning by `orientation` swaps width and height.
fn turns_sideways(orientation: Orientation) -> bool {
    matches!(
        orientation,
        Orientation::Rotate90 | Orientation::Rotate270 | Orientation::Rotate90FlipH | Orientation::Rotate270FlipH
    )
}

/// Decodes every pixel, applies the orientation and, when it had to, re-encodes in the upload's format.
fn decoded_in_full(
    stripped: Vec<u8>,
    format: ImageFormat,
    orientation: Orientation,
    policy: &IngestPolicy,
) -> Result<Upright, IngestError> {
    let mut full = validate::decode(&stripped, format, &policy.limits, &policy.cpu)?;
    full.apply_orientation(orientation);
    let (width, height) = (full.width(), full.height());
    let original =
        if orientation == Orientation::NoTransforms { stripped } else { thumbnail::encode_as(&full, format)? };
    let display = if display::needed(format, width, height) { Some(display::make(&full)?) } else { None };
    Ok(Upright { original, width, height, working: downscale(full, policy.working), display })
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
        downscale(validate::decode(upload, format, &policy.limits, &policy.cpu)?, policy.working)
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
