//! AVIF photos: AV1 images in a HEIF container, as recent Android phones and converters save them. The container
//! is read, checked and stripped as a HEIC's is (`heif`); the AV1 bitstream is decoded by rav1d (dav1d's decoder
//! in Rust, through its dav1d-compatible interface) under a frame-size limit, then turned from YUV (8, 10 or 12
//! bits; 4:2:0, 4:2:2, 4:4:4 or monochrome) into 8-bit RGB here, with its alpha plane, grid tiles, rotation and
//! mirroring applied.

use std::ptr::NonNull;

use heifer::heifer_isobmff::boxes::{ColorInfo, Property};
use heifer::heifer_isobmff::{HeifFile, ItemId};
use image::{DynamicImage, GrayImage, RgbaImage};
use rav1d::include::dav1d::data::Dav1dData;
use rav1d::include::dav1d::dav1d::{Dav1dContext, Dav1dSettings};
use rav1d::include::dav1d::headers::{
    DAV1D_MC_BT2020_CL, DAV1D_MC_BT2020_NCL, DAV1D_MC_BT709, DAV1D_MC_IDENTITY, DAV1D_PIXEL_LAYOUT_I400,
    DAV1D_PIXEL_LAYOUT_I420, DAV1D_PIXEL_LAYOUT_I422,
};
use rav1d::include::dav1d::picture::Dav1dPicture;
use rav1d::src::lib as dav1d;

use super::validate::ImageLimits;
use super::IngestError;

fn corrupt(what: impl std::fmt::Display) -> IngestError {
    IngestError::Corrupt(format!("AVIF: {what}"))
}

/// Decodes the primary image (its grid of tiles, if it is one) upright, with its alpha plane when it has one.
pub fn decode(bytes: &[u8], limits: &ImageLimits) -> Result<DynamicImage, IngestError> {
    let declared = super::heif::header(bytes, limits)?;
    let file = HeifFile::parse(bytes).map_err(corrupt)?;
    let primary = file.primary_id;
    let mut image = match &file.item(primary).map_err(corrupt)?.item_type.0 {
        b"av01" => decode_item(&file, primary, limits)?,
        b"grid" => decode_grid(&file, primary, limits)?,
        other => return Err(corrupt(format!("the primary image is {:?}, not AV1", String::from_utf8_lossy(other)))),
    };
    if let Some(alpha) = alpha_item(&file, primary) {
        let alpha = match &file.item(alpha).map_err(corrupt)?.item_type.0 {
            b"grid" => decode_grid(&file, alpha, limits)?,
            _ => decode_item(&file, alpha, limits)?,
        };
        let (alpha, mut rgba) = (alpha.to_luma8(), image.to_rgba8());
        if alpha.dimensions() == rgba.dimensions() {
            for (pixel, a) in rgba.pixels_mut().zip(alpha.pixels()) {
                pixel[3] = a[0];
            }
            image = DynamicImage::ImageRgba8(rgba);
        }
    }
    image = transformed(&file, primary, image)?;
    if (image.width(), image.height()) != (declared.width, declared.height) {
        return Err(corrupt("the decoded image is not the size the file declares"));
    }
    Ok(image)
}

/// The item that holds the alpha plane of `image`, if any.
fn alpha_item(file: &HeifFile<'_>, image: ItemId) -> Option<ItemId> {
    file.referencing_items(image, b"auxl").into_iter().find(|&id| {
        file.item_properties(id).is_ok_and(|mut properties| {
            properties.any(|p| matches!(p, Property::AuxiliaryType(urn) if urn.contains("auxiliary:alpha") || urn == "urn:mpeg:hevc:2015:auxid:1"))
        })
    })
}

/// `irot` then `imir`, in the order the file lists them, as HEIF applies them.
fn transformed(file: &HeifFile<'_>, id: ItemId, mut image: DynamicImage) -> Result<DynamicImage, IngestError> {
    for property in file.item_properties(id).map_err(corrupt)? {
        image = match property {
            // Anti-clockwise quarter turns.
            Property::Rotation(1) => image.rotate270(),
            Property::Rotation(2) => image.rotate180(),
            Property::Rotation(3) => image.rotate90(),
            Property::Mirror(true) => image.flipv(),
            Property::Mirror(false) => image.fliph(),
            _ => image,
        };
    }
    Ok(image)
}

/// A grid's tiles, decoded and placed, cropped to its output size.
fn decode_grid(file: &HeifFile<'_>, id: ItemId, limits: &ImageLimits) -> Result<DynamicImage, IngestError> {
    let grid = file.grid(id).map_err(corrupt)?;
    limits.check(grid.output_width, grid.output_height)?;
    let tiles = file.referenced_items(id, b"dimg");
    if tiles.len() != usize::from(grid.rows) * usize::from(grid.columns) {
        return Err(corrupt("the grid does not have a tile for every cell"));
    }
    let mut canvas = RgbaImage::new(grid.output_width, grid.output_height);
    let (mut tile_width, mut tile_height) = (0, 0);
    for (index, &tile) in tiles.iter().enumerate() {
        let decoded = decode_item(file, tile, limits)?.to_rgba8();
        if index == 0 {
            (tile_width, tile_height) = decoded.dimensions();
        } else if decoded.dimensions() != (tile_width, tile_height) {
            return Err(corrupt("the grid's tiles differ in size"));
        }
        let (column, row) = ((index % usize::from(grid.columns)) as i64, (index / usize::from(grid.columns)) as i64);
        image::imageops::replace(&mut canvas, &decoded, column * i64::from(tile_width), row * i64::from(tile_height));
    }
    Ok(DynamicImage::ImageRgba8(canvas))
}

/// One AV1 image item.
fn decode_item(file: &HeifFile<'_>, id: ItemId, limits: &ImageLimits) -> Result<DynamicImage, IngestError> {
    let data = file.item_data(id).map_err(corrupt)?;
    let nclx = file.item_properties(id).map_err(corrupt)?.find_map(|p| match p {
        Property::Color(ColorInfo::Nclx { matrix, full_range, .. }) => Some((u32::from(*matrix), *full_range)),
        _ => None,
    });
    let planes = decode_av1(&data, limits)?;
    planes.to_image(nclx)
}

/// A decoded picture's planes, copied out of the decoder.
struct Planes {
    width: usize,
    height: usize,
    bits: u32,
    layout: u32,
    /// From the sequence header: matrix coefficients and full range.
    matrix: u32,
    full_range: bool,
    /// Luma, then the two chroma planes (empty for monochrome), samples widened to 16 bits.
    y: Vec<u16>,
    u: Vec<u16>,
    v: Vec<u16>,
    chroma_width: usize,
}

fn check(result: rav1d::Dav1dResult, what: &str) -> Result<(), IngestError> {
    if result.0 < 0 {
        Err(corrupt(format!("{what} failed ({})", -result.0)))
    } else {
        Ok(())
    }
}

/// Runs the decoder over one AV1 bitstream and copies out its one picture.
fn decode_av1(obus: &[u8], limits: &ImageLimits) -> Result<Planes, IngestError> {
    let mut settings = std::mem::MaybeUninit::<Dav1dSettings>::uninit();
    // SAFETY: `settings` is valid to write to; `dav1d_default_settings` fills every field.
    let mut settings = unsafe {
        dav1d::dav1d_default_settings(NonNull::new_unchecked(settings.as_mut_ptr()));
        settings.assume_init()
    };
    // One thread, as uploads already run side by side; no frame larger than the limits allow is allocated.
    settings.n_threads = 1;
    settings.max_frame_delay = 1;
    settings.all_layers = 0;
    settings.frame_size_limit = u32::try_from(limits.max_pixels).unwrap_or(u32::MAX);
    let mut context: Option<Dav1dContext> = None;
    // SAFETY: both pointers are valid for the call; a context it opens is closed below.
    check(unsafe { dav1d::dav1d_open(Some(NonNull::from(&mut context)), Some(NonNull::from(&mut settings))) }, "open")?;
    let mut picture = Decoder { context }.picture(obus)?;
    let planes = copy_planes(&picture);
    // SAFETY: the picture came from `dav1d_get_picture` and is released once.
    unsafe { dav1d::dav1d_picture_unref(Some(NonNull::from(&mut picture))) };
    planes
}

/// Closes the decoder however decoding ends.
struct Decoder {
    context: Option<Dav1dContext>,
}

impl Decoder {
    fn picture(&mut self, obus: &[u8]) -> Result<Dav1dPicture, IngestError> {
        let mut data = Dav1dData::default();
        // SAFETY: `data` is valid to write to; the buffer it allocates has `obus.len()` bytes.
        let buffer = unsafe { dav1d::dav1d_data_create(Some(NonNull::from(&mut data)), obus.len()) };
        if buffer.is_null() {
            return Err(corrupt("no memory for the bitstream"));
        }
        // SAFETY: `buffer` holds `obus.len()` bytes that nothing else refers to yet.
        unsafe { std::ptr::copy_nonoverlapping(obus.as_ptr(), buffer, obus.len()) };
        let context = self.context;
        // SAFETY: `context` is open; `data` is valid to read and write.
        let sent = unsafe { dav1d::dav1d_send_data(context, Some(NonNull::from(&mut data))) };
        if data.sz > 0 {
            // SAFETY: what the decoder did not take is released once.
            unsafe { dav1d::dav1d_data_unref(Some(NonNull::from(&mut data))) };
        }
        if sent.0 < 0 && sent.0 != -libc::EAGAIN {
            return Err(corrupt(format!("the bitstream was refused ({})", -sent.0)));
        }
        let mut picture = Dav1dPicture::default();
        // The first call may only start draining: a still picture comes out by the second.
        for _ in 0..2 {
            // SAFETY: `context` is open; `picture` is valid to write to.
            let got = unsafe { dav1d::dav1d_get_picture(context, Some(NonNull::from(&mut picture))) };
            if got.0 == 0 {
                return Ok(picture);
            }
            if got.0 != -libc::EAGAIN {
                return Err(corrupt(format!("decoding failed ({})", -got.0)));
            }
        }
        Err(corrupt("the bitstream holds no picture"))
    }
}

impl Drop for Decoder {
    fn drop(&mut self) {
        // SAFETY: the context came from `dav1d_open` and is closed once.
        unsafe { dav1d::dav1d_close(Some(NonNull::from(&mut self.context))) };
    }
}

fn copy_planes(picture: &Dav1dPicture) -> Result<Planes, IngestError> {
    let (width, height) = (usize::try_from(picture.p.w).unwrap_or(0), usize::try_from(picture.p.h).unwrap_or(0));
    let (bits, layout) = (u32::try_from(picture.p.bpc).unwrap_or(0), picture.p.layout);
    if width == 0 || height == 0 || !(8..=12).contains(&bits) {
        return Err(corrupt("the picture has no pixels"));
    }
    // SAFETY: a picture from the decoder points at its sequence header while it is referenced.
    let header = picture.seq_hdr.map(|header| unsafe { header.as_ref() });
    let (matrix, full_range) = header.map_or((2, false), |h| (h.mtrx, h.color_range != 0));
    let (chroma_width, chroma_height) = match layout {
        DAV1D_PIXEL_LAYOUT_I420 => (width.div_ceil(2), height.div_ceil(2)),
        DAV1D_PIXEL_LAYOUT_I422 => (width.div_ceil(2), height),
        DAV1D_PIXEL_LAYOUT_I400 => (0, 0),
        _ => (width, height),
    };
    let plane =
        |index: usize, stride: isize, plane_width: usize, plane_height: usize| -> Result<Vec<u16>, IngestError> {
            if plane_width == 0 {
                return Ok(Vec::new());
            }
            let base = picture.data[index].ok_or_else(|| corrupt("a plane is missing"))?.as_ptr().cast::<u8>();
            let mut samples = Vec::with_capacity(plane_width * plane_height);
            for row in 0..plane_height {
                // SAFETY: the decoder's plane has `plane_height` rows of at least `plane_width` samples, `stride`
                // bytes apart; samples are bytes at 8 bits and 16-bit words above.
                unsafe {
                    let start = base.offset(row as isize * stride);
                    if bits == 8 {
                        samples.extend(std::slice::from_raw_parts(start, plane_width).iter().map(|&s| u16::from(s)));
                    } else {
                        samples.extend_from_slice(std::slice::from_raw_parts(start.cast::<u16>(), plane_width));
                    }
                }
            }
            Ok(samples)
        };
    Ok(Planes {
        width,
        height,
        bits,
        layout,
        matrix,
        full_range,
        y: plane(0, picture.stride[0], width, height)?,
        u: plane(1, picture.stride[1], chroma_width, chroma_height)?,
        v: plane(2, picture.stride[1], chroma_width, chroma_height)?,
        chroma_width,
    })
}

impl Planes {
    /// 8-bit RGB (grey for monochrome), with the container's colour information (`nclx`) taking precedence
    /// over the bitstream's, as MIAF says. Unspecified matrices are BT.601, as AVIF readers treat them.
    fn to_image(&self, nclx: Option<(u32, bool)>) -> Result<DynamicImage, IngestError> {
        let (matrix, full_range) = nclx.unwrap_or((self.matrix, self.full_range));
        let max = ((1u32 << self.bits) - 1) as f32;
        let scale = (1u32 << (self.bits - 8)) as f32;
        let (y_offset, y_range, c_range) =
            if full_range { (0.0, max, max) } else { (16.0 * scale, 219.0 * scale, 224.0 * scale) };
        let c_mid = (1u32 << (self.bits - 1)) as f32;
        let luma = |y: u16| ((f32::from(y) - y_offset) / y_range).clamp(0.0, 1.0);
        let to_byte = |v: f32| (v.clamp(0.0, 1.0) * 255.0 + 0.5) as u8;
        let (width, height) = (self.width as u32, self.height as u32);
        if self.layout == DAV1D_PIXEL_LAYOUT_I400 {
            let grey: Vec<u8> = self.y.iter().map(|&y| to_byte(luma(y))).collect();
            return GrayImage::from_raw(width, height, grey)
                .map(DynamicImage::ImageLuma8)
                .ok_or_else(|| corrupt("the picture's planes are short"));
        }
        let (kr, kb) = match matrix {
            DAV1D_MC_BT709 => (0.2126, 0.0722),
            DAV1D_MC_BT2020_NCL | DAV1D_MC_BT2020_CL => (0.2627, 0.0593),
            _ => (0.299, 0.114),
        };
        let kg = 1.0 - kr - kb;
        let (shift_x, shift_y) = match self.layout {
            DAV1D_PIXEL_LAYOUT_I420 => (1, 1),
            DAV1D_PIXEL_LAYOUT_I422 => (1, 0),
            _ => (0, 0),
        };
        let mut rgb = Vec::with_capacity(self.width * self.height * 3);
        for row in 0..self.height {
            let chroma_row = (row >> shift_y) * self.chroma_width;
            for column in 0..self.width {
                let y = self.y[row * self.width + column];
                let at = chroma_row + (column >> shift_x);
                let (u, v) = (self.u[at], self.v[at]);
                let pixel = if matrix == DAV1D_MC_IDENTITY {
                    // GBR: the "luma" plane is green.
                    [luma(v), luma(y), luma(u)]
                } else {
                    let y = luma(y);
                    let (cb, cr) = ((f32::from(u) - c_mid) / c_range, (f32::from(v) - c_mid) / c_range);
                    let (r, b) = (y + 2.0 * (1.0 - kr) * cr, y + 2.0 * (1.0 - kb) * cb);
                    [r, (y - kr * r - kb * b) / kg, b]
                };
                rgb.extend(pixel.map(to_byte));
            }
        }
        image::RgbImage::from_raw(width, height, rgb)
            .map(DynamicImage::ImageRgb8)
            .ok_or_else(|| corrupt("the picture's planes are short"))
    }
}
