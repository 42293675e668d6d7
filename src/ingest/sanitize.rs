//! Removes private metadata (EXIF with GPS and camera serials, XMP, IPTC, comments, text chunks) by
//! rewriting the container, not the pixels: the stored image decodes to exactly the uploaded pixels.
//! Bytes after the image's end marker (polyglot payloads) are dropped too. A JPEG keeps one fact of its EXIF,
//! the orientation, in an EXIF segment written anew that holds nothing else: viewers and browsers turn the
//! photo upright from it, so it is stored as the camera wrote it, not decoded and compressed again.

use image::metadata::Orientation;

use super::ImageFormat;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct MalformedImage(pub &'static str);

type Result<T> = std::result::Result<T, MalformedImage>;

/// The bytes without their metadata; a JPEG held other than upright (`orientation`) says so in a new EXIF
/// segment of that tag alone. The other formats' orientation is applied to their pixels by the caller.
pub fn strip_metadata(data: &[u8], format: ImageFormat, orientation: Orientation) -> Result<Vec<u8>> {
    match format {
        ImageFormat::Jpeg => strip_jpeg(data, orientation),
        ImageFormat::Png => strip_png(data),
        ImageFormat::Webp => strip_webp(data),
        ImageFormat::Gif => strip_gif(data),
        // The same container: metadata items blanked in place.
        ImageFormat::Heic | ImageFormat::Avif => {
            super::heif::strip(data).map_err(|_| MalformedImage("the HEIF container is malformed"))
        }
    }
}

fn slice(data: &[u8], start: usize, len: usize) -> Result<&[u8]> {
    data.get(start..start.checked_add(len).ok_or(MalformedImage("length overflow"))?)
        .ok_or(MalformedImage("the file is truncated"))
}

fn byte(data: &[u8], at: usize) -> Result<u8> {
    data.get(at).copied().ok_or(MalformedImage("the file is truncated"))
}

/// An APP1 segment whose EXIF holds the Orientation tag (0x0112) alone: a big-endian TIFF header, then one
/// directory of one entry (a SHORT) and no next directory.
pub fn orientation_segment(orientation: Orientation) -> [u8; 36] {
    let mut segment = [0u8; 36];
    segment[..4].copy_from_slice(&[0xFF, 0xE1, 0x00, 34]);
    segment[4..10].copy_from_slice(b"Exif\0\0");
    segment[10..18].copy_from_slice(b"MM\0\x2A\0\0\0\x08");
    segment[18..20].copy_from_slice(&1u16.to_be_bytes());
    segment[20..28].copy_from_slice(&[0x01, 0x12, 0x00, 0x03, 0x00, 0x00, 0x00, 0x01]);
    segment[28..30].copy_from_slice(&u16::from(orientation.to_exif()).to_be_bytes());
    segment
}

/// JPEG keeps what decoding needs (tables, frame and scan headers, JFIF, ICC profile, Adobe colour
/// transform) and drops APP1 (EXIF, XMP), APP3–APP13 (IPTC among them), APP15 and comments; the orientation,
/// when there is one to keep, goes in a segment of its own right after the start of the image.
fn strip_jpeg(data: &[u8], orientation: Orientation) -> Result<Vec<u8>> {
    if !data.starts_with(&[0xFF, 0xD8]) {
        return Err(MalformedImage("not a JPEG stream"));
    }
    let mut out = Vec::with_capacity(data.len());
    out.extend_from_slice(&[0xFF, 0xD8]);
    if orientation != Orientation::NoTransforms {
        out.extend_from_slice(&orientation_segment(orientation));
    }
    let mut i = 2;
    loop {
        if byte(data, i)? != 0xFF {
            return Err(MalformedImage("JPEG marker expected"));
        }
        while byte(data, i)? == 0xFF {
            i += 1; // fill bytes
        }
        let marker = byte(data, i)?;
        i += 1;
        match marker {
            0xD9 => {
                out.extend_from_slice(&[0xFF, 0xD9]);
                return Ok(out);
            }
            0x01 | 0xD0..=0xD7 => {
                out.extend_from_slice(&[0xFF, marker]);
                continue;
            }
            _ => {}
        }
        let len = u16::from_be_bytes([byte(data, i)?, byte(data, i + 1)?]) as usize;
        if len < 2 {
            return Err(MalformedImage("bad JPEG segment length"));
        }
        let segment = slice(data, i, len)?;
        let keep = match marker {
            0xE2 => segment[2..].starts_with(b"ICC_PROFILE\0"),
            0xE1 | 0xE3..=0xED | 0xEF | 0xFE => false,
            _ => true,
        };
        if keep {
            out.extend_from_slice(&[0xFF, marker]);
            out.extend_from_slice(segment);
        }
        i += len;
        if marker == 0xDA {
            // Entropy-coded data runs to the next marker that is not a stuffed byte or a restart marker; memchr
            // finds each 0xFF a machine word or a vector at a time.
            let start = i;
            loop {
                i += memchr::memchr(0xFF, data.get(i..).unwrap_or_default())
                    .ok_or(MalformedImage("the file is truncated"))?;
                match byte(data, i + 1)? {
                    0x00 | 0xD0..=0xD7 => i += 2,
                    _ => break,
                }
            }
            out.extend_from_slice(&data[start..i]);
        }
    }
}

const PNG_SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";

/// Ancillary PNG chunks that change how the image looks; every other ancillary chunk (text, eXIf, tIME,
/// private chunks) is dropped.
const PNG_KEPT_ANCILLARY: [&[u8; 4]; 11] =
    [b"tRNS", b"gAMA", b"cHRM", b"sRGB", b"iCCP", b"sBIT", b"bKGD", b"pHYs", b"acTL", b"fcTL", b"fdAT"];

fn strip_png(data: &[u8]) -> Result<Vec<u8>> {
    if !data.starts_with(PNG_SIGNATURE) {
        return Err(MalformedImage("not a PNG stream"));
    }
    let mut out = Vec::with_capacity(data.len());
    out.extend_from_slice(PNG_SIGNATURE);
    let mut i = PNG_SIGNATURE.len();
    loop {
        let len = u32::from_be_bytes(slice(data, i, 4)?.try_into().expect("4 bytes")) as usize;
        let chunk = slice(data, i, 12 + len)?;
        let kind: &[u8; 4] = chunk[4..8].try_into().expect("4 bytes");
        let critical = kind[0].is_ascii_uppercase();
        if critical || PNG_KEPT_ANCILLARY.contains(&kind) {
            out.extend_from_slice(chunk);
        }
        i += chunk.len();
        if kind == b"IEND" {
            return Ok(out);
        }
    }
}

/// WebP drops the EXIF and XMP chunks and clears their flags in the VP8X header.
fn strip_webp(data: &[u8]) -> Result<Vec<u8>> {
    if data.len() < 12 || &data[0..4] != b"RIFF" || &data[8..12] != b"WEBP" {
        return Err(MalformedImage("not a WebP stream"));
    }
    let riff_len = u32::from_le_bytes(data[4..8].try_into().expect("4 bytes")) as usize;
    let body = slice(data, 8, riff_len)?;
    let mut chunks = Vec::with_capacity(body.len());
    let mut i = 4; // past "WEBP"
    while i < body.len() {
        let header = slice(body, i, 8)?;
        let size = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes")) as usize;
        let padded = size + (size & 1);
        slice(body, i, 8 + size)?;
        // The pad byte after an odd-sized last chunk is sometimes missing; tolerate that.
        let end = (i + 8 + padded).min(body.len());
        match &header[0..4] {
            b"EXIF" | b"XMP " => {}
            b"VP8X" => {
                let mut vp8x = body[i..end].to_vec();
                if vp8x.len() > 8 {
                    vp8x[8] &= !(0x08 | 0x04);
                }
                chunks.extend_from_slice(&vp8x);
            }
            _ => chunks.extend_from_slice(&body[i..end]),
        }
        i += 8 + padded;
    }
    let mut out = Vec::with_capacity(chunks.len() + 12);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&((chunks.len() + 4) as u32).to_le_bytes());
    out.extend_from_slice(b"WEBP");
    out.extend_from_slice(&chunks);
    Ok(out)
}

/// GIF drops comment extensions and application extensions other than the looping ones (XMP travels in
/// an application extension).
fn strip_gif(data: &[u8]) -> Result<Vec<u8>> {
    if !(data.starts_with(b"GIF87a") || data.starts_with(b"GIF89a")) {
        return Err(MalformedImage("not a GIF stream"));
    }
    let color_table_len = |packed: u8| {
        if packed & 0x80 != 0 {
            3 << ((packed & 0x07) + 1)
        } else {
            0
        }
    };
    let mut i = 13 + color_table_len(byte(data, 10)?);
    let mut out = slice(data, 0, i)?.to_vec();
    loop {
        match byte(data, i)? {
            0x3B => {
                out.push(0x3B);
                return Ok(out);
            }
            0x21 => {
                let label = byte(data, i + 1)?;
                let end = sub_blocks_end(data, i + 2)?;
                let keep = match label {
                    0xFE => false,
                    0xFF => {
                        let id = slice(data, i + 3, 11)?;
                        byte(data, i + 2)? == 11 && (id == b"NETSCAPE2.0" || id == b"ANIMEXTS1.0")
                    }
                    _ => true,
                };
                if keep {
                    out.extend_from_slice(&data[i..end]);
                }
                i = end;
            }
            0x2C => {
                let descriptor_end = i + 10 + color_table_len(byte(data, i + 9)?);
                let end = sub_blocks_end(data, descriptor_end + 1)?; // + LZW minimum code size
                out.extend_from_slice(slice(data, i, end - i)?);
                i = end;
            }
            _ => return Err(MalformedImage("unknown GIF block")),
        }
    }
}

/// How many frames a (sanitized) image holds: GIF image descriptors, APNG's `acTL` count, WebP `ANMF` chunks.
/// Only the first frame is decoded, but every frame is stored and served, so the count is what a browser meets.
pub fn frame_count(data: &[u8], format: ImageFormat) -> Result<u64> {
    match format {
        // The primary image is what is shown; a HEIF sequence's other pictures are not decoded.
        ImageFormat::Jpeg | ImageFormat::Heic | ImageFormat::Avif => Ok(1),
        ImageFormat::Png => {
            let mut i = PNG_SIGNATURE.len();
            while i + 8 <= data.len() {
                let len = u32::from_be_bytes(slice(data, i, 4)?.try_into().expect("4 bytes")) as usize;
                match slice(data, i + 4, 4)? {
                    b"acTL" => {
                        return Ok(u32::from_be_bytes(slice(data, i + 8, 4)?.try_into().expect("4 bytes")).into())
                    }
                    b"IDAT" | b"IEND" => return Ok(1),
                    _ => i += 12 + len,
                }
            }
            Ok(1)
        }
        ImageFormat::Webp => {
            let (mut i, mut frames) = (12, 0);
            while i + 8 <= data.len() {
                let size = u32::from_le_bytes(slice(data, i + 4, 4)?.try_into().expect("4 bytes")) as usize;
                frames += u64::from(slice(data, i, 4)? == b"ANMF");
                i += 8 + size + (size & 1);
            }
            Ok(frames.max(1))
        }
        ImageFormat::Gif => {
            let color_table_len = |packed: u8| if packed & 0x80 != 0 { 3 << ((packed & 0x07) + 1) } else { 0 };
            let (mut i, mut frames) = (13 + color_table_len(byte(data, 10)?), 0);
            loop {
                match byte(data, i)? {
                    0x3B => return Ok(frames.max(1)),
                    0x21 => i = sub_blocks_end(data, i + 2)?,
                    0x2C => {
                        frames += 1;
                        i = sub_blocks_end(data, i + 11 + color_table_len(byte(data, i + 9)?))?;
                    }
                    _ => return Err(MalformedImage("unknown GIF block")),
                }
            }
        }
    }
}

/// Index just past a run of GIF data sub-blocks (each a length byte and data, ended by a zero length).
fn sub_blocks_end(data: &[u8], mut i: usize) -> Result<usize> {
    loop {
        let len = byte(data, i)? as usize;
        i += 1;
        if len == 0 {
            return Ok(i);
        }
        slice(data, i, len)?;
        i += len;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jpeg_segment(marker: u8, payload: &[u8]) -> Vec<u8> {
        let mut s = vec![0xFF, marker];
        s.extend_from_slice(&((payload.len() + 2) as u16).to_be_bytes());
        s.extend_from_slice(payload);
        s
    }

    #[test]
    fn jpeg_loses_exif_and_comments_and_trailing_bytes() {
        let mut jpeg = vec![0xFF, 0xD8];
        jpeg.extend(jpeg_segment(0xE0, b"JFIF\0\x01\x01"));
        jpeg.extend(jpeg_segment(0xE1, b"Exif\0\0GPS-here"));
        jpeg.extend(jpeg_segment(0xFE, b"secret comment"));
        jpeg.extend(jpeg_segment(0xDB, &[0; 65]));
        jpeg.extend(jpeg_segment(0xDA, &[1, 2, 3]));
        jpeg.extend_from_slice(&[0x12, 0xFF, 0x00, 0x34, 0xFF, 0xD0, 0x56]);
        jpeg.extend_from_slice(&[0xFF, 0xD9]);
        jpeg.extend_from_slice(b"PK\x03\x04 zip payload");
        let out = strip_jpeg(&jpeg, Orientation::NoTransforms).unwrap();
        let text = String::from_utf8_lossy(&out);
        assert!(!text.contains("Exif") && !text.contains("secret") && !text.contains("PK"));
        assert!(text.contains("JFIF"));
        assert!(out.ends_with(&[0x12, 0xFF, 0x00, 0x34, 0xFF, 0xD0, 0x56, 0xFF, 0xD9]));

        // Held sideways, it keeps its orientation and nothing else of its EXIF; stripping again changes nothing.
        let out = strip_jpeg(&jpeg, Orientation::Rotate90).unwrap();
        assert_eq!(out[2..38], orientation_segment(Orientation::Rotate90));
        assert!(!String::from_utf8_lossy(&out).contains("GPS-here"));
        assert_eq!(strip_jpeg(&out, Orientation::Rotate90).unwrap(), out);
    }

    #[test]
    fn the_orientation_segment_reads_back_as_that_orientation() {
        use image::ImageDecoder;
        let cat = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/cat.jpg")).unwrap();
        for exif in 2..=8 {
            let orientation = Orientation::from_exif(exif).unwrap();
            let held = strip_jpeg(&cat, orientation).unwrap();
            let mut decoder = image::codecs::jpeg::JpegDecoder::new(std::io::Cursor::new(&held)).unwrap();
            assert_eq!(decoder.orientation().unwrap(), orientation);
        }
    }

    #[test]
    fn frames_are_counted_in_every_container() {
        let gif = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/rocket.gif")).unwrap();
        assert_eq!(frame_count(&gif, ImageFormat::Gif), Ok(2));
        let png = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/coffee.png")).unwrap();
        assert_eq!(frame_count(&png, ImageFormat::Png), Ok(1));
        let mut apng = PNG_SIGNATURE.to_vec();
        apng.extend_from_slice(&[0, 0, 0, 13]);
        apng.extend_from_slice(b"IHDR");
        apng.extend_from_slice(&[0; 13 + 4]);
        apng.extend_from_slice(&[0, 0, 0, 8]);
        apng.extend_from_slice(b"acTL");
        apng.extend_from_slice(&[0, 0, 0x27, 0x10, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(frame_count(&apng, ImageFormat::Png), Ok(10_000));
        let mut webp = b"RIFF\0\0\0\0WEBPVP8X\x0a\0\0\0".to_vec();
        webp.extend_from_slice(&[0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        for _ in 0..3 {
            webp.extend_from_slice(b"ANMF\x02\0\0\0\0\0");
        }
        assert_eq!(frame_count(&webp, ImageFormat::Webp), Ok(3));
    }

    #[test]
    fn truncated_streams_are_rejected() {
        assert!(strip_jpeg(&[0xFF, 0xD8, 0xFF, 0xE0, 0x00], Orientation::NoTransforms).is_err());
        assert!(strip_png(PNG_SIGNATURE).is_err());
        assert!(strip_gif(b"GIF89a\x01\x00\x01\x00\x00\x00\x00").is_err());
        assert!(strip_webp(b"RIFF\xff\x00\x00\x00WEBPVP8 ").is_err());
    }
}
