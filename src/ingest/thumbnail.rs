//! Thumbnails: bounded in size, JPEG for opaque images, PNG where transparency must survive.

use std::io::Cursor;

use image::codecs::jpeg::JpegEncoder;
use image::DynamicImage;

use super::ImageFormat;

pub struct Thumbnail {
    pub bytes: Vec<u8>,
    pub format: ImageFormat,
}

pub fn make(image: &DynamicImage, max_side: u32) -> Result<Thumbnail, image::ImageError> {
    let small = if image.width() > max_side || image.height() > max_side {
        image.resize(max_side, max_side, image::imageops::FilterType::Triangle)
    } else {
        image.clone()
    };
    let mut bytes = Vec::new();
    if has_transparency(&small) {
        small.write_to(&mut Cursor::new(&mut bytes), image::ImageFormat::Png)?;
        Ok(Thumbnail { bytes, format: ImageFormat::Png })
    } else {
        JpegEncoder::new_with_quality(&mut bytes, 82).encode_image(&small.to_rgb8())?;
        Ok(Thumbnail { bytes, format: ImageFormat::Jpeg })
    }
}

fn has_transparency(image: &DynamicImage) -> bool {
    image.color().has_alpha() && image.to_rgba8().pixels().any(|p| p[3] < u8::MAX)
}

/// Re-encodes pixels in their upload format, for images whose orientation had to be applied. Lossless
/// formats stay lossless; JPEG is re-encoded at a high quality.
pub fn encode_as(image: &DynamicImage, format: ImageFormat) -> Result<Vec<u8>, image::ImageError> {
    let mut bytes = Vec::new();
    match format {
        ImageFormat::Jpeg => JpegEncoder::new_with_quality(&mut bytes, 92).encode_image(&image.to_rgb8())?,
        ImageFormat::Webp => image.to_rgba8().write_to(&mut Cursor::new(&mut bytes), image::ImageFormat::WebP)?,
        ImageFormat::Png | ImageFormat::Gif => image.write_to(&mut Cursor::new(&mut bytes), format.codec())?,
    }
    Ok(bytes)
}
