//! JPEG with libjpeg-turbo: decoding at the DCT scale (1/8, 1/4, 1/2) that still covers the working size,
//! and thumbnail encoding. Every
//! entropy-coded scan is decoded at any scale, and libjpeg's warnings (a truncated file, corrupt data) count
//! as errors, so a damaged file is refused however small it is decoded.

use image::RgbImage;
use turbojpeg::{Colorspace, Decompressor, Image, PixelFormat, ScalingFactor, Subsamp};

use super::IngestError;
use crate::imaging::WorkingSize;

/// Progressive files with more scans than any encoder writes are a CPU bomb, not a photo.
const MAX_SCANS: u32 = 100;

/// Thumbnails are small, so a quality that hides blocking costs few bytes.
pub const THUMBNAIL_QUALITY: i32 = 82;

fn corrupt(error: turbojpeg::Error) -> IngestError {
    IngestError::Corrupt(error.to_string())
}

/// CMYK and YCCK files (print workflows) are left to the general decoder, which converts them to RGB.
pub fn is_cmyk(data: &[u8]) -> Result<bool, IngestError> {
    let header = turbojpeg::read_header(data).map_err(corrupt)?;
    Ok(matches!(header.colorspace, Colorspace::CMYK | Colorspace::YCCK))
}

/// Width and height as libjpeg reads them from the frame header.
pub fn dimensions(data: &[u8]) -> Result<(u32, u32), IngestError> {
    let header = turbojpeg::read_header(data).map_err(corrupt)?;
    Ok((header.width as u32, header.height as u32))
}

/// The smallest power-of-two DCT scale whose output still covers `needs` (so it is only ever downscaled).
fn scale_for(width: usize, height: usize, needs: WorkingSize) -> ScalingFactor {
    let (target_width, target_height) = needs.target(width as u32, height as u32);
    [ScalingFactor::ONE_EIGHTH, ScalingFactor::ONE_QUARTER, ScalingFactor::ONE_HALF]
        .into_iter()
        .find(|factor| factor.scale(width) >= target_width as usize && factor.scale(height) >= target_height as usize)
        .unwrap_or(ScalingFactor::ONE)
}

/// Decodes every scan, at the smallest DCT scale that covers `needs`, to 8-bit RGB.
pub fn decode_scaled(data: &[u8], needs: WorkingSize) -> Result<RgbImage, IngestError> {
    let mut decompressor = Decompressor::new().map_err(corrupt)?;
    decompressor.set_scan_limit(MAX_SCANS).map_err(corrupt)?;
    let header = decompressor.read_header(data).map_err(corrupt)?;
    // Lossless JPEGs have no DCT to scale.
    let factor = if header.is_lossless { ScalingFactor::ONE } else { scale_for(header.width, header.height, needs) };
    decompressor.set_scaling_factor(factor).map_err(corrupt)?;
    let scaled = header.scaled(factor);
    let mut image = Image {
        pixels: vec![0; scaled.width * scaled.height * 3],
        width: scaled.width,
        pitch: scaled.width * 3,
        height: scaled.height,
        format: PixelFormat::RGB,
    };
    decompressor.decompress(data, image.as_deref_mut()).map_err(corrupt)?;
    Ok(RgbImage::from_raw(scaled.width as u32, scaled.height as u32, image.pixels).expect("decoded to its size"))
}

/// A baseline JPEG of the pixels, 4:2:0, for thumbnails.
/// JPEG quality of the display rendition: a photo shown large.
pub const DISPLAY_QUALITY: i32 = 85;

/// Encodes RGB pixels with libjpeg-turbo, chroma subsampled 2x2 as cameras do.
pub fn encode(image: &RgbImage, quality: i32) -> Result<Vec<u8>, IngestError> {
    let pixels = Image {
        pixels: image.as_raw().as_slice(),
        width: image.width() as usize,
        pitch: image.width() as usize * 3,
        height: image.height() as usize,
        format: PixelFormat::RGB,
    };
    let encoded = turbojpeg::compress(pixels, quality, Subsamp::Sub2x2).map_err(corrupt)?;
    Ok(encoded.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_smallest_scale_that_still_covers_the_working_size() {
        let needs = WorkingSize { min_short_side: 256, min_long_side: 320 };
        assert_eq!(scale_for(4000, 3000, needs), ScalingFactor::ONE_EIGHTH);
        assert_eq!(scale_for(4032, 3024, needs), ScalingFactor::ONE_EIGHTH);
        assert_eq!(scale_for(2000, 2000, needs), ScalingFactor::ONE_QUARTER);
        assert_eq!(scale_for(1000, 750, needs), ScalingFactor::ONE_HALF);
        assert_eq!(scale_for(451, 300, needs), ScalingFactor::ONE);
        assert_eq!(scale_for(100, 80, needs), ScalingFactor::ONE);
    }
}
