//! HEIC/HEIF photos, as iPhones save them (and AVIF's container, which is the same): the container is read
//! without decoding anything, its declared size
//! checked against the limits, its metadata items blanked in place (no offset moves, so the file stays valid
//! byte for byte elsewhere), and the primary image decoded (HEVC, in safe Rust) to upright sRGB.

use heifer::heifer_isobmff::boxes::{ConstructionMethod, Extent, Property};
use heifer::heifer_isobmff::{BoxIter, HeifFile, Item};
use image::{DynamicImage, RgbImage, RgbaImage};

use super::validate::{Header, ImageLimits};
use super::IngestError;

fn container_error(error: impl std::fmt::Display) -> IngestError {
    IngestError::Corrupt(format!("HEIF container: {error}"))
}

/// The primary image's declared size (its `ispe`, turned by its `irot`), within the limits: a grid of any
/// size costs this check, not a decode. The pixels come out upright, so no EXIF orientation is left to apply.
pub fn header(bytes: &[u8], limits: &ImageLimits) -> Result<Header, IngestError> {
    let file = HeifFile::parse(bytes).map_err(container_error)?;
    let (width, height) = file
        .image_size(file.primary_id)
        .map_err(container_error)?
        .ok_or_else(|| IngestError::Corrupt("the HEIF image declares no size".into()))?;
    let quarter_turns = file
        .item_properties(file.primary_id)
        .map_err(container_error)?
        .find_map(|property| match property {
            Property::Rotation(quarters) => Some(*quarters),
            _ => None,
        })
        .unwrap_or(0);
    let (width, height) = if quarter_turns % 2 == 1 { (height, width) } else { (width, height) };
    limits.check(width, height)?;
    Ok(Header { width, height, orientation: image::metadata::Orientation::NoTransforms })
}

/// The most threads one HEIC's decoding uses, when the CPU slots are idle.
const MAX_DECODE_THREADS: usize = 4;

/// Decodes the primary image, upright (`irot`, `imir`, `clap` applied) and in sRGB (from its ICC profile or
/// `nclx`, as iPhones tag Display P3), at 8 bits; auxiliary images (depth, HDR gain maps) are not decoded.
pub fn decode(bytes: &[u8], limits: &ImageLimits, cpu: &super::CpuSlots) -> Result<DynamicImage, IngestError> {
    header(bytes, limits)?;
    // The tiles of a grid (how phones store their photos) are decoded side by side on this upload's thread
    // and the threads of the CPU slots idle right now; a single-image HEIC uses one thread whatever it gets.
    let borrowed = cpu.borrow_idle(MAX_DECODE_THREADS - 1);
    let options = heifer::Options { max_threads: 1 + borrowed.count, max_pixels: limits.max_pixels };
    let image = heifer::decode_srgb_rgba8(bytes, &options).map_err(|error| match error {
        heifer::Error::Invalid(_) | heifer::Error::Container(_) | heifer::Error::Hevc(_) => {
            IngestError::Corrupt(error.to_string())
        }
        // Over `max_pixels`, or a coding tool this decoder lacks.
        other => IngestError::DecoderLimit(other.to_string()),
    })?;
    limits.check(image.width, image.height)?;
    let (width, height) = (image.width, image.height);
    let malformed = || IngestError::Corrupt("the decoded image has the wrong size".into());
    if image.has_alpha {
        Ok(DynamicImage::ImageRgba8(RgbaImage::from_raw(width, height, image.data).ok_or_else(malformed)?))
    } else {
        let rgb: Vec<u8> = image.data.chunks_exact(4).flat_map(|p| [p[0], p[1], p[2]]).collect();
        Ok(DynamicImage::ImageRgb8(RgbImage::from_raw(width, height, rgb).ok_or_else(malformed)?))
    }
}

/// An empty EXIF block: the item's 4-byte TIFF header offset (0), then a big-endian TIFF header whose one
/// directory has no entries. The EXIF orientation goes with the rest: in HEIF, `irot`/`imir` rule.
const EMPTY_EXIF: &[u8] = b"\0\0\0\0MM\0\x2A\0\0\0\x08\0\0\0\0\0\0";
/// An XMP packet that says nothing.
const EMPTY_XMP: &[u8] = br#"<x:xmpmeta xmlns:x="adobe:ns:meta/"/>"#;

/// The upload with every metadata item (EXIF, XMP and any other `mime` or `uri ` item: GPS, camera serials,
/// maker notes) overwritten in place by an empty one padded with zeros or spaces. Images, their properties
/// (ICC profile, rotation) and every offset stay as they were.
pub fn strip(bytes: &[u8]) -> Result<Vec<u8>, IngestError> {
    let file = HeifFile::parse(bytes).map_err(container_error)?;
    let mut out = bytes.to_vec();
    for item in &file.items {
        let (empty, padding) = match (&item.item_type.0, item.content_type.as_deref()) {
            (b"Exif", _) => (EMPTY_EXIF, 0u8),
            (b"mime", Some(content_type)) if content_type.contains("xml") => (EMPTY_XMP, b' '),
            (b"mime" | b"uri ", _) => (&[][..], 0u8),
            _ => continue,
        };
        let mut empty = empty.iter().copied();
        for range in item_ranges(bytes, item)? {
            for byte in &mut out[range] {
                *byte = empty.next().unwrap_or(padding);
            }
        }
    }
    Ok(out)
}

/// Where in the file an item's bytes lie.
fn item_ranges(bytes: &[u8], item: &Item) -> Result<Vec<std::ops::Range<usize>>, IngestError> {
    let Some(location) = &item.location else { return Ok(Vec::new()) };
    let (base, source_len) = match location.construction_method {
        ConstructionMethod::File => (0, bytes.len()),
        ConstructionMethod::Idat => {
            idat_span(bytes).ok_or_else(|| container_error("an item lies in a missing idat"))?
        }
        // Built from other items' bytes: those items are blanked themselves when they are metadata.
        ConstructionMethod::Item => {
            return Err(IngestError::Corrupt("metadata constructed from other items is not accepted".into()))
        }
    };
    location
        .extents
        .iter()
        .map(|extent: &Extent| {
            let start = usize::try_from(extent.offset).ok().filter(|&start| start <= source_len);
            let start = start.ok_or_else(|| container_error("an item lies outside the file"))?;
            let len = if extent.length == 0 { source_len - start } else { extent.length as usize };
            let end = start.checked_add(len).filter(|&end| end <= source_len);
            let end = end.ok_or_else(|| container_error("an item runs past the end of the file"))?;
            Ok(base + start..base + end)
        })
        .collect()
}

/// The `idat` box's contents within the file, as (offset, length).
fn idat_span(bytes: &[u8]) -> Option<(usize, usize)> {
    let offset_of = |inner: &[u8]| inner.as_ptr() as usize - bytes.as_ptr() as usize;
    let meta = BoxIter::new(bytes).filter_map(Result::ok).find(|b| &b.header.box_type.0 == b"meta")?;
    // `meta` is a full box: its children follow a version and flags.
    let children = meta.content.get(4..)?;
    let idat = BoxIter::new(children).filter_map(Result::ok).find(|b| &b.header.box_type.0 == b"idat")?;
    Some((offset_of(idat.content), idat.content.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> ImageLimits {
        ImageLimits {
            max_width: 10_000,
            max_height: 10_000,
            max_pixels: 50_000_000,
            max_frames: 1,
            max_animation_pixels: 1,
        }
    }

    fn photo_with_metadata() -> Vec<u8> {
        let (width, height) = (96u32, 64u32);
        let rgb: Vec<u8> = (0..width * height).flat_map(|i| [(i % 251) as u8, (i / 97) as u8, 128]).collect();
        let image = heifer::Image {
            width,
            height,
            bit_depth: 8,
            has_alpha: false,
            data: rgb.chunks_exact(3).flat_map(|p| [p[0], p[1], p[2], 255].map(u16::from)).collect(),
        };
        let metadata = heifer::Metadata {
            exif: Some(b"MM\0\x2A\0\0\0\x08\0\0\0\0\0\0UpshotSecretExif".to_vec()),
            xmp: Some(b"<x:xmpmeta xmlns:x=\"adobe:ns:meta/\">UpshotSecretXmp</x:xmpmeta>".to_vec()),
            icc_profile: None,
        };
        heifer::encode_with_metadata(&image, &metadata, &heifer::EncodeOptions { quality: 90, max_threads: 1 }).unwrap()
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn metadata_is_blanked_in_place_and_the_image_still_decodes_the_same() {
        let photo = photo_with_metadata();
        assert!(contains(&photo, b"UpshotSecretExif") && contains(&photo, b"UpshotSecretXmp"));
        let stripped = strip(&photo).unwrap();
        assert_eq!(stripped.len(), photo.len(), "no offset moved");
        assert!(!contains(&stripped, b"UpshotSecret"), "nothing private left");
        let metadata = heifer::read_metadata(&stripped).unwrap();
        let exif = metadata.exif.unwrap();
        assert!(exif.starts_with(&EMPTY_EXIF[4..]) && exif[EMPTY_EXIF.len() - 4..].iter().all(|&b| b == 0), "{exif:?}");
        assert!(metadata.xmp.unwrap().starts_with(EMPTY_XMP));
        let (before, after) = (
            decode(&photo, &limits(), &Default::default()).unwrap(),
            decode(&stripped, &limits(), &Default::default()).unwrap(),
        );
        assert_eq!(before.as_bytes(), after.as_bytes());
        assert_eq!((after.width(), after.height()), (96, 64));
        assert_eq!(strip(&stripped).unwrap(), stripped, "stripping twice changes nothing");
    }

    #[test]
    fn the_declared_size_is_checked_before_decoding() {
        let small = ImageLimits { max_width: 50, ..limits() };
        let error = header(&photo_with_metadata(), &small).unwrap_err();
        assert!(matches!(error, IngestError::TooLarge { limit: "max_image_width", actual: 96, .. }), "{error:?}");
    }
}
