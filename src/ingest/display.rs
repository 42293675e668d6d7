//! The display rendition: what a browser shows of an original it cannot show (HEIC), or of one far larger
//! than any screen. A JPEG (a PNG when the image has transparency) at most `LONG_SIDE` pixels long, upright.

use image::DynamicImage;

use super::{jpeg, ImageFormat, IngestError};
use crate::imaging::{self, WorkingSize};

/// The rendition's long side: sharp across a laptop or phone screen.
pub const LONG_SIDE: u32 = 2048;
/// Originals browsers can show get a rendition only past this long side (a 12 MP phone photo, 4032, does not).
const FAR_LARGER: u32 = 2 * LONG_SIDE;

/// An encoded rendition.
pub struct Rendition {
    pub bytes: Vec<u8>,
    pub format: ImageFormat,
}

/// Whether an upright `width`×`height` original in `format` needs a rendition to be shown.
pub fn needed(format: ImageFormat, width: u32, height: u32) -> bool {
    !format.browsers_show() || width.max(height) > FAR_LARGER
}

/// The size a JPEG must be decoded to (at a DCT scale) to make the rendition from it.
pub const JPEG_DECODE: WorkingSize = WorkingSize { min_short_side: 0, min_long_side: LONG_SIDE };

/// The rendition of upright pixels, scaled down to fit `LONG_SIDE` (never up).
pub fn make(upright: &DynamicImage) -> Result<Rendition, IngestError> {
    let (width, height) = imaging::fit_within(upright.width(), upright.height(), LONG_SIDE);
    if upright.color().has_alpha() {
        let small = imaging::resize(&upright.to_rgba8(), width, height);
        if small.pixels().any(|p| p[3] < u8::MAX) {
            let mut bytes = Vec::new();
            small
                .write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png)
                .map_err(|e| IngestError::Corrupt(e.to_string()))?;
            return Ok(Rendition { bytes, format: ImageFormat::Png });
        }
        let opaque = DynamicImage::ImageRgba8(small).into_rgb8();
        return Ok(Rendition { bytes: jpeg::encode(&opaque, jpeg::DISPLAY_QUALITY)?, format: ImageFormat::Jpeg });
    }
    let small = match upright {
        DynamicImage::ImageRgb8(rgb) => imaging::resize(rgb, width, height),
        other => imaging::resize(&other.to_rgb8(), width, height),
    };
    Ok(Rendition { bytes: jpeg::encode(&small, jpeg::DISPLAY_QUALITY)?, format: ImageFormat::Jpeg })
}
