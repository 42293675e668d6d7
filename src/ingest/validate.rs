//! Decoding under explicit limits: dimensions are checked from the header before any pixel is decoded, so a
//! decompression bomb costs a header read, not gigabytes.

use std::io::Cursor;

use image::{DynamicImage, ImageDecoder, ImageReader};

use super::{ImageFormat, IngestError};

#[derive(Debug, Clone, Copy)]
pub struct ImageLimits {
    pub max_width: u32,
    pub max_height: u32,
    pub max_pixels: u64,
    /// Frames of an animation, and frames × width × height: every frame is stored and served.
    pub max_frames: u64,
    pub max_animation_pixels: u64,
}

impl ImageLimits {
    pub(super) fn check(&self, width: u32, height: u32) -> Result<(), IngestError> {
        let too_large = |limit: &'static str, max: u64, actual: u64| IngestError::TooLarge { limit, max, actual };
        if width > self.max_width {
            return Err(too_large("max_image_width", self.max_width.into(), width.into()));
        }
        if height > self.max_height {
            return Err(too_large("max_image_height", self.max_height.into(), height.into()));
        }
        let pixels = u64::from(width) * u64::from(height);
        if pixels > self.max_pixels {
            return Err(too_large("max_image_pixels", self.max_pixels, pixels));
        }
        if width == 0 || height == 0 {
            return Err(IngestError::Corrupt("the image has no pixels".into()));
        }
        Ok(())
    }

    /// An animation within the frame limits; `frames` full-size frames is what a browser decodes.
    pub fn check_animation(&self, frames: u64, width: u32, height: u32) -> Result<(), IngestError> {
        if frames > self.max_frames {
            return Err(IngestError::TooLarge { limit: "max_frames", max: self.max_frames, actual: frames });
        }
        let pixels = frames.saturating_mul(u64::from(width) * u64::from(height));
        if frames > 1 && pixels > self.max_animation_pixels {
            return Err(IngestError::TooLarge {
                limit: "max_animation_pixels",
                max: self.max_animation_pixels,
                actual: pixels,
            });
        }
        Ok(())
    }

    fn codec_limits(&self) -> image::Limits {
        // Width and height are checked by `check`, which names the setting; the codec bounds memory.
        let mut limits = image::Limits::default();
        // Room for the widest pixel type (16-bit RGBA) plus decoder scratch space.
        limits.max_alloc = Some(self.max_pixels.saturating_mul(8).saturating_add(64 << 20));
        limits
    }
}

#[derive(Debug)]
pub struct Header {
    pub width: u32,
    pub height: u32,
    pub orientation: image::metadata::Orientation,
}

fn decode_error(error: image::ImageError) -> IngestError {
    match error {
        image::ImageError::Limits(e) => IngestError::DecoderLimit(e.to_string()),
        other => IngestError::Corrupt(other.to_string()),
    }
}

fn decoder<'a>(
    bytes: &'a [u8],
    format: ImageFormat,
    limits: &ImageLimits,
) -> Result<impl ImageDecoder + 'a, IngestError> {
    let codec = format.codec().ok_or(IngestError::Unsupported { detected: format.label() })?;
    let mut reader = ImageReader::with_format(Cursor::new(bytes), codec);
    reader.limits(limits.codec_limits());
    reader.into_decoder().map_err(decode_error)
}

/// Reads dimensions and EXIF orientation from the header, and enforces the limits.
pub fn read_header(bytes: &[u8], format: ImageFormat, limits: &ImageLimits) -> Result<Header, IngestError> {
    if matches!(format, ImageFormat::Heic | ImageFormat::Avif) {
        return super::heif::header(bytes, limits);
    }
    let mut decoder = decoder(bytes, format, limits)?;
    let (width, height) = decoder.dimensions();
    limits.check(width, height)?;
    // A broken EXIF block only costs the orientation, not the upload.
    let orientation = decoder.orientation().unwrap_or(image::metadata::Orientation::NoTransforms);
    Ok(Header { width, height, orientation })
}

/// Decodes the pixels (the first frame of an animation).
pub fn decode(
    bytes: &[u8],
    format: ImageFormat,
    limits: &ImageLimits,
    cpu: &super::CpuSlots,
) -> Result<DynamicImage, IngestError> {
    match format {
        ImageFormat::Heic => return super::heif::decode(bytes, limits, cpu),
        ImageFormat::Avif => return super::avif::decode(bytes, limits),
        _ => {}
    }
    let decoder = decoder(bytes, format, limits)?;
    let (width, height) = decoder.dimensions();
    limits.check(width, height)?;
    DynamicImage::from_decoder(decoder).map_err(decode_error)
}
