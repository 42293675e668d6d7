//! ImageNet classification: the manifest's preprocessing (shorter side to 256 with a bilinear, antialiased
//! filter; centre crop 224; ImageNet normalisation), then softmax and top-k.

use image::RgbImage;
use ndarray::Array4;
use serde::Deserialize;

/// The numbers of `models/manifest.json` → `preprocessing` for the classifier.
#[derive(Debug, Clone, Deserialize)]
pub struct ClassifierPreprocessing {
    pub resize: ResizeSpec,
    pub center_crop: CropSpec,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

#[derive(Debug, Clone, Deserialize)]
pub struct ResizeSpec {
    pub shorter_side: u32,
}

#[derive(Debug, Clone, Deserialize)]
pub struct CropSpec {
    pub size: [u32; 2],
}

/// Resizes so the shorter side is `shorter`, the longer `floor(shorter * long / short)` (torchvision's rule).
fn resize_shorter_side(rgb: &RgbImage, shorter: u32) -> RgbImage {
    let (w, h) = rgb.dimensions();
    let (nw, nh) = if w <= h {
        (shorter, (u64::from(shorter) * u64::from(h) / u64::from(w)) as u32)
    } else {
        ((u64::from(shorter) * u64::from(w) / u64::from(h)) as u32, shorter)
    };
    crate::imaging::resize(rgb, nw, nh)
}

/// Python's `round(x / 2.0)` for a non-negative integer x: halves go to the even neighbour.
fn half_to_even(x: u32) -> u32 {
    let (q, r) = (x / 2, x % 2);
    if r == 1 && q % 2 == 1 {
        q + 1
    } else {
        q
    }
}

/// The classifier's input tensor, [1, 3, crop_h, crop_w] in NCHW order.
pub fn preprocess(rgb: &RgbImage, spec: &ClassifierPreprocessing) -> Array4<f32> {
    let [crop_w, crop_h] = spec.center_crop.size;
    let resized = resize_shorter_side(rgb, spec.resize.shorter_side.max(crop_w.max(crop_h)));
    let (w, h) = resized.dimensions();
    let (left, top) = (half_to_even(w - crop_w), half_to_even(h - crop_h));
    let mut tensor = Array4::<f32>::zeros((1, 3, crop_h as usize, crop_w as usize));
    for y in 0..crop_h {
        for x in 0..crop_w {
            let pixel = resized.get_pixel(left + x, top + y);
            for c in 0..3 {
                let value = f32::from(pixel[c]) / 255.0;
                tensor[[0, c, y as usize, x as usize]] = (value - spec.mean[c]) / spec.std[c];
            }
        }
    }
    tensor
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Prediction {
    pub label: String,
    #[schema(minimum = 0, maximum = 1)]
    pub score: f64,
}

/// Softmax over the logits (computed in f64 for stability), then the `k` most probable labels.
pub fn top_k(logits: &[f32], labels: &[String], k: usize) -> Vec<Prediction> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let exps: Vec<f64> = logits.iter().map(|&l| (l as f64 - max).exp()).collect();
    let sum: f64 = exps.iter().sum();
    let mut ranked: Vec<usize> = (0..logits.len()).collect();
    ranked.sort_by(|&a, &b| exps[b].total_cmp(&exps[a]));
    ranked
        .into_iter()
        .take(k)
        .map(|i| Prediction {
            label: labels.get(i).cloned().unwrap_or_else(|| format!("class {i}")),
            score: (exps[i] / sum * 10_000.0).round() / 10_000.0,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_crop_offsets_like_python() {
        assert_eq!([0, 1, 2, 3, 4, 5, 160, 227].map(half_to_even), [0, 0, 1, 2, 2, 2, 80, 114]);
    }

    #[test]
    fn softmax_top_k_orders_and_normalises() {
        let labels: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let top = top_k(&[1.0, 3.0, 2.0], &labels, 2);
        assert_eq!(top.iter().map(|p| p.label.as_str()).collect::<Vec<_>>(), ["b", "c"]);
        assert!((top[0].score - 0.6652).abs() < 1e-4, "{top:?}");
    }
}
