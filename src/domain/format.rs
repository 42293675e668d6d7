//! The image formats Upshot accepts, identified by content.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", try_from = "String")]
pub enum ImageFormat {
    Jpeg,
    Png,
    Webp,
    Gif,
    /// HEIC/HEIF: HEVC-coded HEIF, what iPhones save.
    Heic,
}

impl TryFrom<String> for ImageFormat {
    type Error = String;

    fn try_from(name: String) -> Result<Self, String> {
        ImageFormat::from_name(&name).ok_or_else(|| format!("unknown format {name:?} (jpeg, png, webp, gif, heic)"))
    }
}

impl ImageFormat {
    pub const ALL: [ImageFormat; 5] =
        [ImageFormat::Jpeg, ImageFormat::Png, ImageFormat::Webp, ImageFormat::Gif, ImageFormat::Heic];

    pub fn from_name(name: &str) -> Option<Self> {
        match name.trim().to_ascii_lowercase().as_str() {
            "jpeg" | "jpg" => Some(ImageFormat::Jpeg),
            "png" => Some(ImageFormat::Png),
            "webp" => Some(ImageFormat::Webp),
            "gif" => Some(ImageFormat::Gif),
            "heic" | "heif" => Some(ImageFormat::Heic),
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
        } else if is_hevc_heif(bytes) {
            Some(ImageFormat::Heic)
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
            ImageFormat::Heic => "heic",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            ImageFormat::Jpeg => "JPEG",
            ImageFormat::Png => "PNG",
            ImageFormat::Webp => "WebP",
            ImageFormat::Gif => "GIF",
            ImageFormat::Heic => "HEIC",
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            ImageFormat::Jpeg => "image/jpeg",
            ImageFormat::Png => "image/png",
            ImageFormat::Webp => "image/webp",
            ImageFormat::Gif => "image/gif",
            ImageFormat::Heic => "image/heic",
        }
    }

    pub fn extension(self) -> &'static str {
        match self {
            ImageFormat::Jpeg => "jpg",
            ImageFormat::Png => "png",
            ImageFormat::Webp => "webp",
            ImageFormat::Gif => "gif",
            ImageFormat::Heic => "heic",
        }
    }

    /// The file name extensions people's files of this format carry.
    pub fn file_extensions(self) -> &'static [&'static str] {
        match self {
            ImageFormat::Jpeg => &["jpg", "jpeg"],
            ImageFormat::Png => &["png"],
            ImageFormat::Webp => &["webp"],
            ImageFormat::Gif => &["gif"],
            ImageFormat::Heic => &["heic", "heif"],
        }
    }

    /// The `image` crate's codec for the format, where it has one.
    pub fn codec(self) -> Option<image::ImageFormat> {
        match self {
            ImageFormat::Jpeg => Some(image::ImageFormat::Jpeg),
            ImageFormat::Png => Some(image::ImageFormat::Png),
            ImageFormat::Webp => Some(image::ImageFormat::WebP),
            ImageFormat::Gif => Some(image::ImageFormat::Gif),
            ImageFormat::Heic => None,
        }
    }

    /// Whether every current browser shows the format in an `<img>` (Chromium and Firefox cannot show HEIC).
    pub fn browsers_show(self) -> bool {
        self != ImageFormat::Heic
    }
}

/// A HEIF file whose images are HEVC-coded: its `ftyp` box names a HEVC brand, as its major brand or, after
/// a generic one (`mif1`, `msf1`), among its compatible brands.
fn is_hevc_heif(bytes: &[u8]) -> bool {
    const HEVC_BRANDS: [&[u8; 4]; 6] = [b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx"];
    if bytes.len() < 16 || &bytes[4..8] != b"ftyp" {
        return false;
    }
    let size = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
    let Some(ftyp) = bytes.get(8..size.min(bytes.len()).max(8)) else { return false };
    let is_hevc = |brand: &[u8]| HEVC_BRANDS.iter().any(|hevc| brand == &hevc[..]);
    // Major brand, minor version, then the compatible brands.
    is_hevc(&ftyp[..4]) || ftyp.get(8..).unwrap_or_default().chunks_exact(4).any(is_hevc)
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
