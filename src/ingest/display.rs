//! The display rendition: what a browser shows of an original it cannot show (HEIC), or of one far larger
//! than any screen. A JPEG (a PNG when the image has transparency) at most `LONG_SIDE` pixels long, upright.

use image::DynamicImage;

use super::thumbnail::{self, Encoded};
use super::{jpeg, ImageFormat, IngestError};
use crate::imaging::{self, WorkingSize};

/// The rendition's long side: sharp across a laptop or phone screen.
pub const LONG_SIDE: u32 = 2048;
/// Originals browsers can show get a rendition only past this long side (a 12 MP phone photo, 4032, does not).
const FAR_LARGER: u32 = 2 * LONG_SIDE;

/// Whether an upright `width`×`height` original in `format` needs a rendition to be shown.
pub fn needed(format: ImageFormat, width: u32, height: u32) -> bool {
    !format.browsers_show() || width.max(height) > FAR_LARGER
}

/// The size a JPEG must be decoded to (at a DCT scale) to make the rendition from it.
pub const JPEG_DECODE: WorkingSize = WorkingSize { min_short_side: 0, min_long_side: LONG_SIDE };

/// The rendition of upright pixels, scaled down to fit `LONG_SIDE` (never up).
pub fn make(upright: &DynamicImage) -> Result<Encoded, IngestError> {
    let (width, height) = imaging::fit_within(upright.width(), upright.height(), LONG_SIDE);
    thumbnail::scaled(upright, width, height, jpeg::DISPLAY_QUALITY)
}
