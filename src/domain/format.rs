//! The image formats Upshot accepts, identified by content.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", try_from = "String")]
pub enum ImageFormat {
    Jpeg,
    Png,
    Webp,
    Gif,
}

impl TryFrom<String> for ImageFormat {
    type Error = String;

    fn try_from(name: String) -> Result<Self, String> {
        ImageFormat::from_name(&name).ok_or_else(|| format!("unknown format {name:?} (jpeg, png, webp, gif)"))
    }
}

impl ImageFormat {
    pub const ALL: [ImageFormat; 4] = [ImageFormat::Jpeg, ImageFormat::Png, ImageFormat::Webp, ImageFormat::Gif];

    pub fn from_name(name: &str) -> Option<Self> {
        match name.trim().to_ascii_lowercase().as_str() {
            "jpeg" | "jpg" => Some(ImageFormat::Jpeg),
            "png" => Some(ImageFormat::Png),
            "webp" => Some(ImageFormat::Webp),
            "gif" => Some(ImageFormat::Gif),
            _ => None,
        }
    }

    /// Identifies the format by its magic bytes; the filename and declared type are never consulted.
    pub fn sniff(bytes: &[u8]) -> Option<Self> {
        if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
            Some(ImageFormat::Jpeg)
        } else if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
            Some(ImageFormat::Png)
        } else if bytes.len() >= 12 && &bytes[0..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
            Some(ImageFormat::Webp)
        } else if bytes.starts_with(b"GIF87a") || bytes.starts_with(b"GIF89a") {
            Some(ImageFormat::Gif)
        } else {
            None
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ImageFormat::Jpeg => "jpeg",
            ImageFormat::Png => "png",
            ImageFormat::Webp => "webp",
            ImageFormat::Gif => "gif",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            ImageFormat::Jpeg => "JPEG",
            ImageFormat::Png => "PNG",
            ImageFormat::Webp => "WebP",
            ImageFormat::Gif => "GIF",
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            ImageFormat::Jpeg => "image/jpeg",
            ImageFormat::Png => "image/png",
            ImageFormat::Webp => "image/webp",
            ImageFormat::Gif => "image/gif",
        }
    }

    pub fn extension(self) -> &'static str {
        match self {
            ImageFormat::Jpeg => "jpg",
            ImageFormat::Png => "png",
            ImageFormat::Webp => "webp",
            ImageFormat::Gif => "gif",
        }
    }

    pub fn codec(self) -> image::ImageFormat {
        match self {
            ImageFormat::Jpeg => image::ImageFormat::Jpeg,
            ImageFormat::Png => image::ImageFormat::Png,
            ImageFormat::Webp => image::ImageFormat::WebP,
            ImageFormat::Gif => image::ImageFormat::Gif,
        }
    }
}

/// A name for what was uploaded instead, for the 415 message.
pub fn describe_unsupported(bytes: &[u8]) -> &'static str {
    match image::guess_format(bytes) {
        Ok(image::ImageFormat::Tiff) => "a TIFF image",
        Ok(image::ImageFormat::Bmp) => "a BMP image",
        Ok(image::ImageFormat::Ico) => "an ICO image",
        Ok(image::ImageFormat::Avif) => "an AVIF image",
        Ok(_) => "an image in a format that is not accepted",
        Err(_) if bytes.starts_with(b"%PDF") => "a PDF document",
        Err(_) if bytes.starts_with(b"PK\x03\x04") => "a ZIP archive",
        Err(_) if bytes.trim_ascii_start().starts_with(b"<") => "markup (HTML, SVG or XML)",
        Err(_) if std::str::from_utf8(bytes).is_ok() => "a text file",
        Err(_) => "an unrecognised file",
    }
}
