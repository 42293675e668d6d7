//! Pixel work shared by the pipeline and the models: resizing with SIMD (fast_image_resize), antialiased
//! bilinear as the models' reference preprocessing (PIL, torchvision) does it, and the working size that an
//! image is decoded to.

use fast_image_resize::{images::Image, FilterType, IntoImageView, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::{ImageBuffer, Pixel};

/// How large the one working image must stay so that everything derived from it (the thumbnail, the
/// classifier's input, the face detector's input) is made by downscaling, never by upscaling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkingSize {
    pub min_short_side: u32,
    pub min_long_side: u32,
}

impl WorkingSize {
    /// The size a `width`×`height` image is reduced to: the smallest that keeps both minimums, aspect ratio
    /// kept; the image's own size when it is already that small.
    pub fn target(&self, width: u32, height: u32) -> (u32, u32) {
        let (short, long) = (width.min(height).max(1), width.max(height).max(1));
        let factor =
            (f64::from(self.min_short_side) / f64::from(short)).max(f64::from(self.min_long_side) / f64::from(long));
        if factor >= 1.0 {
            return (width, height);
        }
        let scale = |side: u32| ((f64::from(side) * factor).round() as u32).max(1);
        (scale(width), scale(height))
    }
}

/// The size that fits `width`×`height` inside a `max_side` square, aspect ratio kept.
pub fn fit_within(width: u32, height: u32, max_side: u32) -> (u32, u32) {
    let long = width.max(height);
    if long <= max_side {
        return (width, height);
    }
    let scale = |side: u32| ((u64::from(side) * u64::from(max_side) + u64::from(long) / 2) / u64::from(long)) as u32;
    (scale(width).max(1), scale(height).max(1))
}

/// Resizes 8-bit RGB or RGBA pixels (alpha premultiplied while filtering) with an antialiased bilinear filter.
pub fn resize<P>(source: &ImageBuffer<P, Vec<u8>>, width: u32, height: u32) -> ImageBuffer<P, Vec<u8>>
where
    P: Pixel<Subpixel = u8>,
    ImageBuffer<P, Vec<u8>>: IntoImageView,
{
    if source.dimensions() == (width, height) {
        return source.clone();
    }
    let pixel_type = source.pixel_type().expect("8-bit pixels");
    debug_assert!(matches!(pixel_type, PixelType::U8x3 | PixelType::U8x4));
    let mut target = Image::new(width, height, pixel_type);
    let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear));
    Resizer::new().resize(source, &mut target, &options).expect("source and target share a pixel type");
    ImageBuffer::from_raw(width, height, target.into_vec()).expect("the buffer matches its dimensions")
}

/// The ThumbHash of an image (about 25 bytes, base64): a blurred likeness with its colours, aspect ratio and
/// transparency, that a page paints while the image loads. Made from at most 100×100 pixels, as it requires.
pub fn thumbhash(image: &image::DynamicImage) -> String {
    use base64::Engine;
    let (width, height) = fit_within(image.width(), image.height(), 100);
    let small = resize(&image.to_rgba8(), width, height);
    let hash = thumbhash::rgba_to_thumb_hash(width as usize, height as usize, small.as_raw());
    base64::engine::general_purpose::STANDARD.encode(hash)
}

/// The picture a ThumbHash stands for, as a small PNG (about 32 pixels long); `None` for a malformed hash.
pub fn thumbhash_png(thumbhash: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    let hash = base64::engine::general_purpose::STANDARD.decode(thumbhash).ok()?;
    let (width, height, rgba) = thumbhash::thumb_hash_to_rgba(&hash).ok()?;
    let image = image::RgbaImage::from_raw(width as u32, height as u32, rgba)?;
    let mut png = Vec::new();
    image.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png).ok()?;
    Some(png)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_working_size_keeps_both_minimums_and_the_aspect_ratio() {
        let needs = WorkingSize { min_short_side: 256, min_long_side: 320 };
        assert_eq!(needs.target(4000, 3000), (341, 256));
        assert_eq!(needs.target(3000, 4000), (256, 341));
        // A panorama: the long side is far beyond its minimum, the short side decides.
        assert_eq!(needs.target(8000, 1000), (2048, 256));
        assert_eq!(needs.target(451, 300), (385, 256));
        assert_eq!(needs.target(200, 100), (200, 100));
    }

    #[test]
    fn fitting_keeps_the_aspect_ratio_and_never_enlarges() {
        assert_eq!(fit_within(4000, 3000, 320), (320, 240));
        assert_eq!(fit_within(3024, 4032, 320), (240, 320));
        assert_eq!(fit_within(100, 50, 320), (100, 50));
        assert_eq!(fit_within(10_000, 10, 320), (320, 1));
    }

    #[test]
    fn resizing_averages_instead_of_sampling() {
        // Alternating black and white columns shrink to grey, not to one of the two.
        let stripes = image::RgbImage::from_fn(64, 8, |x, _| image::Rgb([if x % 2 == 0 { 0 } else { 255 }; 3]));
        let small = resize(&stripes, 8, 1);
        assert!(small.pixels().all(|p| (100..=155).contains(&p[0])), "{:?}", small.as_raw());
    }
}
