//! Thumbnails, made from the working image: bounded in size, JPEG for opaque images, PNG where transparency
//! must survive.

use std::io::Cursor;

use image::codecs::jpeg::JpegEncoder;
use image::DynamicImage;

use super::{jpeg, ImageFormat, IngestError};
use crate::imaging;

/// Pixels made small and encoded: a thumbnail or a display rendition.
pub struct Encoded {
    pub bytes: Vec<u8>,
    pub format: ImageFormat,
}

fn encode_error(error: image::ImageError) -> IngestError {
    IngestError::Corrupt(error.to_string())
}

/// A thumbnail of an image of `original` size whose pixels `working` holds (RGB or RGBA, at least as large
/// as the thumbnail).
pub fn make(working: &DynamicImage, original: (u32, u32), max_side: u32) -> Result<Encoded, IngestError> {
    let (width, height) = imaging::fit_within(original.0, original.1, max_side);
    scaled(working, width, height, jpeg::THUMBNAIL_QUALITY)
}

/// `image` resized to `width`×`height` and encoded: PNG where transparency must survive, else JPEG at
/// `quality`.
pub fn scaled(image: &DynamicImage, width: u32, height: u32, quality: i32) -> Result<Encoded, IngestError> {
    let small = match image {
        DynamicImage::ImageRgb8(rgb) => {
            return Ok(Encoded {
                bytes: jpeg::encode(&imaging::resize(rgb, width, height), quality)?,
                format: ImageFormat::Jpeg,
            })
        }
        DynamicImage::ImageRgba8(rgba) => imaging::resize(rgba, width, height),
        other if other.color().has_alpha() => imaging::resize(&other.to_rgba8(), width, height),
        other => return scaled(&DynamicImage::ImageRgb8(other.to_rgb8()), width, height, quality),
    };
    if small.pixels().any(|p| p[3] < u8::MAX) {
        let mut bytes = Vec::new();
        small.write_to(&mut Cursor::new(&mut bytes), image::ImageFormat::Png).map_err(encode_error)?;
        return Ok(Encoded { bytes, format: ImageFormat::Png });
    }
    let opaque = DynamicImage::ImageRgba8(small).into_rgb8();
    Ok(Encoded { bytes: jpeg::encode(&opaque, quality)?, format: ImageFormat::Jpeg })
}

/// Re-encodes pixels in their upload format, for images whose orientation had to be applied to their pixels:
/// PNG, WebP and GIF (whose EXIF is not kept), and CMYK JPEGs (decoded by the general decoder). Lossless
/// formats stay lossless; JPEG is re-encoded at a high quality.
pub fn encode_as(image: &DynamicImage, format: ImageFormat) -> Result<Vec<u8>, IngestError> {
    let mut bytes = Vec::new();
    match format {
        ImageFormat::Jpeg => {
            JpegEncoder::new_with_quality(&mut bytes, 92).encode_image(&image.to_rgb8()).map_err(encode_error)?
        }
        ImageFormat::Webp => {
            image.to_rgba8().write_to(&mut Cursor::new(&mut bytes), image::ImageFormat::WebP).map_err(encode_error)?
        }
        ImageFormat::Png | ImageFormat::Gif => {
            let codec = format.codec().expect("PNG and GIF have codecs");
            image.write_to(&mut Cursor::new(&mut bytes), codec).map_err(encode_error)?
        }
        // HEIF pixels come out of the decoder upright: nothing is turned, so nothing is encoded again.
        ImageFormat::Heic | ImageFormat::Avif => {
            return Err(IngestError::Unsupported { detected: "HEIF (as an encoding target)" })
        }
    }
    Ok(bytes)
}
