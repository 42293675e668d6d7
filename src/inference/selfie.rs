//! From a detected face to colours: skin from the cheeks, hair from the band above the face box, eyes from
//! around the eye keypoints. Medians in CIELAB keep shadows, highlights and stray pixels from deciding.

use image::RgbImage;

use super::face::Face;
use super::season::{FaceColours, Lab};

/// Faces narrower than this (in pixels) are too small to read colours from.
pub const MIN_FACE_WIDTH_PX: f64 = 40.0;

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn median_lab(samples: &[Lab]) -> Option<Lab> {
    if samples.len() < 8 {
        return None;
    }
    let mut l: Vec<f64> = samples.iter().map(|s| s.l).collect();
    let mut a: Vec<f64> = samples.iter().map(|s| s.a).collect();
    let mut b: Vec<f64> = samples.iter().map(|s| s.b).collect();
    Some(Lab { l: median(&mut l), a: median(&mut a), b: median(&mut b) })
}

/// The pixels of a rectangle given in pixels, clipped to the image.
fn region(image: &RgbImage, x0: f64, y0: f64, x1: f64, y1: f64) -> Vec<Lab> {
    let (w, h) = (image.width() as f64, image.height() as f64);
    let (x0, x1) = (x0.max(0.0) as u32, x1.min(w) as u32);
    let (y0, y1) = (y0.max(0.0) as u32, y1.min(h) as u32);
    let mut samples = Vec::new();
    for y in y0..y1 {
        for x in x0..x1 {
            samples.push(Lab::from_srgb(image.get_pixel(x, y).0));
        }
    }
    samples
}

/// Skin, hair and eye colours of one face, or `None` when the face is too small or no skin is visible.
pub fn face_colours(image: &RgbImage, face: &Face) -> Option<FaceColours> {
    let (w, h) = (image.width() as f64, image.height() as f64);
    let [x0, y0, x1, y1] = face.bbox;
    let (box_w, box_h) = ((x1 - x0) * w, (y1 - y0) * h);
    if box_w < MIN_FACE_WIDTH_PX {
        return None;
    }
    let (right_eye, left_eye) = (face.keypoint("right_eye")?, face.keypoint("left_eye")?);
    let mouth = face.keypoint("mouth_center")?;

    // Cheeks: below each eye, halfway to the mouth; square patches a tenth of the face wide.
    let half = box_w * 0.05;
    let mut skin = Vec::new();
    for (ex, ey) in [right_eye, left_eye] {
        let (cx, cy) = (ex * w, (ey + mouth.1) / 2.0 * h);
        skin.extend(region(image, cx - half, cy - half, cx + half, cy + half));
    }
    // Plausible skin only: not deep shadow, not specular highlight.
    skin.retain(|s| (20.0..=95.0).contains(&s.l));
    let skin = median_lab(&skin)?;

    // Hair: the band just above the face box, over its middle 60%.
    let centre_x = (x0 + x1) / 2.0 * w;
    let hair = median_lab(&region(
        image,
        centre_x - 0.3 * box_w,
        y0 * h - 0.18 * box_h,
        centre_x + 0.3 * box_w,
        y0 * h - 0.02 * box_h,
    ));

    // Eyes: the darker half of small patches around the eye keypoints (iris and pupil, not the white).
    let r = box_w * 0.03;
    let mut eyes = Vec::new();
    for (ex, ey) in [right_eye, left_eye] {
        eyes.extend(region(image, ex * w - r, ey * h - r, ex * w + r, ey * h + r));
    }
    eyes.sort_by(|a, b| a.l.total_cmp(&b.l));
    eyes.truncate(eyes.len() / 2);
    let eyes = median_lab(&eyes);

    Some(FaceColours { skin, hair, eyes })
}
