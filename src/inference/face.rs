//! BlazeFace (MediaPipe's short-range face detector): letterboxed input, SSD anchors generated as MediaPipe's
//! SsdAnchorsCalculator does, box and keypoint decoding, and weighted non-maximum suppression.

use image::{Rgb, RgbImage};
use ndarray::Array4;
use serde::{Deserialize, Serialize};

/// `models/manifest.json` → `anchors` for the face detector.
#[derive(Debug, Clone, Deserialize)]
pub struct AnchorSpec {
    pub input_size_width: u32,
    pub input_size_height: u32,
    pub anchor_offset_x: f32,
    pub anchor_offset_y: f32,
    pub strides: Vec<u32>,
    pub aspect_ratios: Vec<f32>,
    pub interpolated_scale_aspect_ratio: f32,
    pub num_anchors: usize,
}

/// `models/manifest.json` → `decoding` for the face detector.
#[derive(Debug, Clone, Deserialize)]
pub struct DecodingSpec {
    pub num_coords: usize,
    pub num_keypoints: usize,
    pub keypoint_names: Vec<String>,
    pub x_scale: f32,
    pub y_scale: f32,
    pub w_scale: f32,
    pub h_scale: f32,
    pub score_clipping_thresh: f32,
    pub score_threshold: f32,
    pub nms_iou_threshold: f32,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Anchor {
    pub x: f32,
    pub y: f32,
}

/// Anchor centres in MediaPipe's order: layers of equal stride share a grid; per cell, one anchor per
/// aspect ratio per layer plus the interpolated one (with a fixed anchor size, all are 1×1).
pub fn anchors(spec: &AnchorSpec) -> Vec<Anchor> {
    let mut anchors = Vec::with_capacity(spec.num_anchors);
    let mut layer = 0;
    while layer < spec.strides.len() {
        let stride = spec.strides[layer];
        let mut per_cell = 0;
        while layer < spec.strides.len() && spec.strides[layer] == stride {
            per_cell += spec.aspect_ratios.len() + usize::from(spec.interpolated_scale_aspect_ratio > 0.0);
            layer += 1;
        }
        let rows = spec.input_size_height.div_ceil(stride);
        let cols = spec.input_size_width.div_ceil(stride);
        for y in 0..rows {
            for x in 0..cols {
                let centre = Anchor {
                    x: (x as f32 + spec.anchor_offset_x) / cols as f32,
                    y: (y as f32 + spec.anchor_offset_y) / rows as f32,
                };
                anchors.extend(std::iter::repeat_n(centre, per_cell));
            }
        }
    }
    anchors
}

/// Where the image sits inside the square input, to map detections back.
#[derive(Debug, Clone, Copy)]
pub struct Letterbox {
    pub size: u32,
    pub offset_x: u32,
    pub offset_y: u32,
    pub width: u32,
    pub height: u32,
}

/// The detector's input: the image scaled to fit a `size`×`size` square (aspect ratio kept, black border),
/// as NHWC floats in [-1, 1].
pub fn preprocess(rgb: &RgbImage, size: u32) -> (Array4<f32>, Letterbox) {
    let (w, h) = rgb.dimensions();
    let scale = size as f32 / w.max(h) as f32;
    let nw = ((w as f32 * scale + 0.5).floor() as u32).clamp(1, size);
    let nh = ((h as f32 * scale + 0.5).floor() as u32).clamp(1, size);
    let resized = crate::imaging::resize(rgb, nw, nh);
    let mut canvas = RgbImage::from_pixel(size, size, Rgb([0, 0, 0]));
    let (ox, oy) = ((size - nw) / 2, (size - nh) / 2);
    image::imageops::replace(&mut canvas, &resized, i64::from(ox), i64::from(oy));
    let mut tensor = Array4::<f32>::zeros((1, size as usize, size as usize, 3));
    for (x, y, pixel) in canvas.enumerate_pixels() {
        for c in 0..3 {
            tensor[[0, y as usize, x as usize, c]] = f32::from(pixel[c]) * (2.0 / 255.0) - 1.0;
        }
    }
    (tensor, Letterbox { size, offset_x: ox, offset_y: oy, width: nw, height: nh })
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Keypoint {
    pub name: String,
    pub x: f64,
    pub y: f64,
}

/// A detected face. Coordinates are fractions of the image's width and height.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Face {
    pub score: f64,
    /// [xmin, ymin, xmax, ymax] as fractions of the image's width and height
    #[schema(min_items = 4, max_items = 4)]
    pub bbox: [f64; 4],
    pub keypoints: Vec<Keypoint>,
}

impl Face {
    pub fn keypoint(&self, name: &str) -> Option<(f64, f64)> {
        self.keypoints.iter().find(|k| k.name == name).map(|k| (k.x, k.y))
    }
}

struct Candidate {
    score: f32,
    bbox: [f32; 4],
    keypoints: Vec<(f32, f32)>,
}

fn iou(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = w * h;
    let union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter;
    if union <= 0.0 {
        0.0
    } else {
        inter / union
    }
}

/// Turns raw outputs into faces: sigmoid scores over the threshold, decoded against the anchors, merged by
/// weighted NMS (each group becomes the score-weighted mean of its members), then mapped out of the letterbox.
pub fn decode(
    regressors: &[f32],
    logits: &[f32],
    anchors: &[Anchor],
    spec: &DecodingSpec,
    letterbox: &Letterbox,
) -> Vec<Face> {
    let clip = spec.score_clipping_thresh;
    let mut candidates: Vec<Candidate> = anchors
        .iter()
        .enumerate()
        .filter_map(|(i, anchor)| {
            let score = 1.0 / (1.0 + (-logits[i].clamp(-clip, clip)).exp());
            if score < spec.score_threshold {
                return None;
            }
            let r = &regressors[i * spec.num_coords..(i + 1) * spec.num_coords];
            let (cx, cy) = (r[0] / spec.x_scale + anchor.x, r[1] / spec.y_scale + anchor.y);
            let (w, h) = (r[2] / spec.w_scale, r[3] / spec.h_scale);
            let keypoints = (0..spec.num_keypoints)
                .map(|k| (r[4 + 2 * k] / spec.x_scale + anchor.x, r[5 + 2 * k] / spec.y_scale + anchor.y))
                .collect();
            Some(Candidate { score, bbox: [cx - w / 2.0, cy - h / 2.0, cx + w / 2.0, cy + h / 2.0], keypoints })
        })
        .collect();
    candidates.sort_by(|a, b| b.score.total_cmp(&a.score));

    let mut faces = Vec::new();
    while !candidates.is_empty() {
        let top_box = candidates[0].bbox;
        let (group, rest): (Vec<Candidate>, Vec<Candidate>) =
            candidates.into_iter().partition(|c| iou(&top_box, &c.bbox) > spec.nms_iou_threshold);
        candidates = rest;
        let total: f32 = group.iter().map(|c| c.score).sum();
        let weighted = |f: &dyn Fn(&Candidate) -> f32| group.iter().map(|c| f(c) * c.score).sum::<f32>() / total;
        let bbox = [0, 1, 2, 3].map(|j| weighted(&|c| c.bbox[j]));
        let keypoints = (0..spec.num_keypoints)
            .map(|k| (weighted(&|c| c.keypoints[k].0), weighted(&|c| c.keypoints[k].1)))
            .collect::<Vec<_>>();
        faces.push(unletterbox(group[0].score, bbox, keypoints, spec, letterbox));
    }
    faces
}

fn unletterbox(score: f32, bbox: [f32; 4], keypoints: Vec<(f32, f32)>, spec: &DecodingSpec, lb: &Letterbox) -> Face {
    let size = lb.size as f32;
    // Four decimals are a tenth of a pixel on a 1000-pixel image: plenty, and readable in JSON.
    let round = |v: f32| (f64::from(v) * 10_000.0).round() / 10_000.0;
    let x = |v: f32| round((v * size - lb.offset_x as f32) / lb.width as f32);
    let y = |v: f32| round((v * size - lb.offset_y as f32) / lb.height as f32);
    Face {
        score: round(score),
        bbox: [x(bbox[0]), y(bbox[1]), x(bbox[2]), y(bbox[3])],
        keypoints: keypoints
            .into_iter()
            .zip(&spec.keypoint_names)
            .map(|((kx, ky), name)| Keypoint { name: name.clone(), x: x(kx), y: y(ky) })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn short_range() -> AnchorSpec {
        AnchorSpec {
            input_size_width: 128,
            input_size_height: 128,
            anchor_offset_x: 0.5,
            anchor_offset_y: 0.5,
            strides: vec![8, 16, 16, 16],
            aspect_ratios: vec![1.0],
            interpolated_scale_aspect_ratio: 1.0,
            num_anchors: 896,
        }
    }

    #[test]
    fn generates_mediapipe_short_range_anchors() {
        let anchors = anchors(&short_range());
        assert_eq!(anchors.len(), 896);
        assert_eq!(anchors[0], Anchor { x: 0.5 / 16.0, y: 0.5 / 16.0 });
        assert_eq!(anchors[1], anchors[0], "two anchors per stride-8 cell");
        assert_eq!(anchors[2], Anchor { x: 1.5 / 16.0, y: 0.5 / 16.0 });
        assert_eq!(anchors[512], Anchor { x: 0.5 / 8.0, y: 0.5 / 8.0 });
        assert_eq!(anchors[895], Anchor { x: 7.5 / 8.0, y: 7.5 / 8.0 });
    }

    #[test]
    fn overlapping_boxes_merge_into_one_weighted_face() {
        let spec = DecodingSpec {
            num_coords: 16,
            num_keypoints: 6,
            keypoint_names: (0..6).map(|k| format!("k{k}")).collect(),
            x_scale: 128.0,
            y_scale: 128.0,
            w_scale: 128.0,
            h_scale: 128.0,
            score_clipping_thresh: 100.0,
            score_threshold: 0.7,
            nms_iou_threshold: 0.3,
        };
        let anchors = vec![Anchor { x: 0.5, y: 0.5 }; 3];
        let mut regressors = vec![0.0; 48];
        for (i, dx) in [0.0, 4.0, 0.0].iter().enumerate() {
            regressors[i * 16] = *dx;
            regressors[i * 16 + 2] = 32.0;
            regressors[i * 16 + 3] = 32.0;
        }
        let logits = [3.0, 3.0, -3.0]; // the third is under the threshold
        let letterbox = Letterbox { size: 128, offset_x: 0, offset_y: 0, width: 128, height: 128 };
        let faces = decode(&regressors, &logits, &anchors, &spec, &letterbox);
        assert_eq!(faces.len(), 1);
        let centre_x = (faces[0].bbox[0] + faces[0].bbox[2]) / 2.0;
        assert!((centre_x - (0.5 + 2.0 / 128.0)).abs() < 1e-4, "{faces:?}");
        assert!((faces[0].score - 0.952_574).abs() < 1e-4);
    }
}
