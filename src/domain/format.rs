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
    /// AV1-coded HEIF.
    Avif,
}

impl TryFrom<String> for ImageFormat {
    type Error = String;

    fn try_from(name: String) -> Result<Self, String> {
        ImageFormat::from_name(&name)
            .ok_or_else(|| format!("unknown format {name:?} (jpeg, png, webp, gif, heic, avif)"))
    }
}

impl ImageFormat {
    pub const ALL: [ImageFormat; 6] = [
        ImageFormat::Jpeg,
        ImageFormat::Png,
        ImageFormat::Webp,
        ImageFormat::Gif,
        ImageFormat::Heic,
        ImageFormat::Avif,
    ];

    pub fn from_name(name: &str) -> Option<Self> {
        match name.trim().to_ascii_lowercase().as_str() {
            "jpeg" | "jpg" => Some(ImageFormat::Jpeg),
            "png" => Some(ImageFormat::Png),
            "webp" => Some(ImageFormat::Webp),
            "gif" => Some(ImageFormat::Gif),
            "heic" | "heif" => Some(ImageFormat::Heic),
            "avif" => Some(ImageFormat::Avif),
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
            heif_codec(bytes)
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ImageFormat::Jpeg => "jpeg",
            ImageFormat::Png => "png",
            ImageFormat::Webp => "webp",
            ImageFormat::Gif => "gif",
            ImageFormat::Heic => "heic",
            ImageFormat::Avif => "avif",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            ImageFormat::Jpeg => "JPEG",
            ImageFormat::Png => "PNG",
            ImageFormat::Webp => "WebP",
            ImageFormat::Gif => "GIF",
            ImageFormat::Heic => "HEIC",
            ImageFormat::Avif => "AVIF",
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            ImageFormat::Jpeg => "image/jpeg",
            ImageFormat::Png => "image/png",
            ImageFormat::Webp => "image/webp",
            ImageFormat::Gif => "image/gif",
            ImageFormat::Heic => "image/heic",
            ImageFormat::Avif => "image/avif",
        }
    }

    /// The media types a client may declare for a file of this format: its own, and the other names in use
    /// (browsers give `.heif` files `image/heif`).
    pub fn declared_types(self) -> &'static [&'static str] {
        match self {
            ImageFormat::Jpeg => &["image/jpeg"],
            ImageFormat::Png => &["image/png"],
            ImageFormat::Webp => &["image/webp"],
            ImageFormat::Gif => &["image/gif"],
            ImageFormat::Heic => &["image/heic", "image/heif"],
            ImageFormat::Avif => &["image/avif"],
        }
    }

    pub fn extension(self) -> &'static str {
        match self {
            ImageFormat::Jpeg => "jpg",
            ImageFormat::Png => "png",
            ImageFormat::Webp => "webp",
            ImageFormat::Gif => "gif",
            ImageFormat::Heic => "heic",
            ImageFormat::Avif => "avif",
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
            ImageFormat::Avif => &["avif"],
        }
    }

    /// The `image` crate's codec for the format, where it has one.
    pub fn codec(self) -> Option<image::ImageFormat> {
        match self {
            ImageFormat::Jpeg => Some(image::ImageFormat::Jpeg),
            ImageFormat::Png => Some(image::ImageFormat::Png),
            ImageFormat::Webp => Some(image::ImageFormat::WebP),
            ImageFormat::Gif => Some(image::ImageFormat::Gif),
            ImageFormat::Heic | ImageFormat::Avif => None,
        }
    }

    /// Whether every current browser shows the format in an `<img>` (Chromium and Firefox cannot show HEIC; all
    /// show AVIF).
    pub fn browsers_show(self) -> bool {
        self != ImageFormat::Heic
    }
}

/// A HEIF file's format by the codec its `ftyp` box names: as its major brand or, after a generic one (`mif1`,
/// `msf1`), among its compatible brands.
fn heif_codec(bytes: &[u8]) -> Option<ImageFormat> {
    const BRANDS: [(&[u8; 4], ImageFormat); 8] = [
        (b"heic", ImageFormat::Heic),
        (b"heix", ImageFormat::Heic),
        (b"heim", ImageFormat::Heic),
        (b"heis", ImageFormat::Heic),
        (b"hevc", ImageFormat::Heic),
        (b"hevx", ImageFormat::Heic),
        (b"avif", ImageFormat::Avif),
        (b"avis", ImageFormat::Avif),
    ];
    if bytes.len() < 16 || &bytes[4..8] != b"ftyp" {
        return None;
    }
    let size = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
    let ftyp = bytes.get(8..size.min(bytes.len()).max(8))?;
    let codec = |brand: &[u8]| BRANDS.iter().find(|(name, _)| brand == &name[..]).map(|(_, format)| *format);
    // Major brand, minor version, then the compatible brands.
    codec(&ftyp[..4]).or_else(|| ftyp.get(8..).unwrap_or_default().chunks_exact(4).find_map(codec))
}

/// A name for what was uploaded instead, for the 415 message.
pub fn describe_unsupported(bytes: &[u8]) -> &'static str {
    match image::guess_format(bytes) {
        Ok(image::ImageFormat::Tiff) => "a TIFF image",
        Ok(image::ImageFormat::Bmp) => "a BMP image",
        Ok(image::ImageFormat::Ico) => "an ICO image",
        Ok(_) => "an image in a format that is not accepted",
        Err(_) if bytes.starts_with(b"%PDF") => "a PDF document",
        Err(_) if bytes.starts_with(b"PK\x03\x04") => "a ZIP archive",
        Err(_) if bytes.trim_ascii_start().starts_with(b"<") => "markup (HTML, SVG or XML)",
        Err(_) if std::str::from_utf8(bytes).is_ok() => "a text file",
        Err(_) => "an unrecognised file",
    }
}
