//! Seasonal colour analysis: the 12-season palette from the colours of the skin, hair and eyes.
//!
//! Colours are compared in CIELAB (D65), where distances match perception. Three axes decide a season:
//! - undertone (warm / cool): the skin's hue angle h = atan2(b*, a*). Yellow-leaning skin (larger h) is warm,
//!   pink-leaning skin (smaller h) is cool. Boundary: 58°.
//! - value (light / deep): the skin's lightness L*, with the hair's pulling it when known. Boundary: L* 55.
//! - clarity (clear / soft): the skin's chroma C* plus the skin–hair lightness contrast. Boundary: 0.
//!
//! Each axis gives a signed score: how far past its boundary the measurement lies, in units of that axis'
//! typical spread. The axis with the largest magnitude is the dominant characteristic, and the next axis that
//! the dominant one leaves open picks the season within it (Light → Light Spring or Light Summer by
//! undertone, and so on). Confidence grows with the dominant axis' distance from its boundary and with the
//! deciding axis' distance from its own: a face on a boundary gets a low confidence, never a confident guess.

use serde::Serialize;

/// A colour in CIELAB.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Lab {
    pub l: f64,
    pub a: f64,
    pub b: f64,
}

impl Lab {
    /// From 8-bit sRGB, D65 white.
    pub fn from_srgb(rgb: [u8; 3]) -> Lab {
        let linear = |c: u8| {
            let c = f64::from(c) / 255.0;
            if c <= 0.04045 {
                c / 12.92
            } else {
                ((c + 0.055) / 1.055).powf(2.4)
            }
        };
        let (r, g, b) = (linear(rgb[0]), linear(rgb[1]), linear(rgb[2]));
        let x = (0.412_456_4 * r + 0.357_576_1 * g + 0.180_437_5 * b) / 0.950_47;
        let y = 0.212_672_9 * r + 0.715_152_2 * g + 0.072_175 * b;
        let z = (0.019_333_9 * r + 0.119_192 * g + 0.950_304_1 * b) / 1.088_83;
        let f = |t: f64| if t > 0.008_856 { t.cbrt() } else { 7.787 * t + 16.0 / 116.0 };
        let (fx, fy, fz) = (f(x), f(y), f(z));
        Lab { l: 116.0 * fy - 16.0, a: 500.0 * (fx - fy), b: 200.0 * (fy - fz) }
    }

    /// Rounded to a tenth, for reports.
    fn rounded(self) -> Lab {
        let r = |v: f64| (v * 10.0).round() / 10.0;
        Lab { l: r(self.l), a: r(self.a), b: r(self.b) }
    }

    pub fn chroma(&self) -> f64 {
        self.a.hypot(self.b)
    }

    /// Hue angle in degrees, 0..360.
    pub fn hue(&self) -> f64 {
        self.b.atan2(self.a).to_degrees().rem_euclid(360.0)
    }
}

/// The colours measured on a face; hair and eyes are absent when the face box leaves no room for them.
#[derive(Debug, Clone, Copy)]
pub struct FaceColours {
    pub skin: Lab,
    pub hair: Option<Lab>,
    pub eyes: Option<Lab>,
}

#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
#[schema(as = Selfie)]
pub struct SeasonAnalysis {
    /// One of the 12 seasons, e.g. "Soft Autumn".
    #[schema(value_type = String)]
    pub season: &'static str,
    /// 0..1: how far the deciding measurements are from the boundaries between seasons.
    #[schema(minimum = 0, maximum = 1)]
    pub confidence: f64,
    #[schema(value_type = String)]
    pub undertone: &'static str,
    #[schema(value_type = String)]
    pub value: &'static str,
    #[schema(value_type = String)]
    pub clarity: &'static str,
    /// Lightness difference between skin and hair, when the hair was measured.
    pub contrast: Option<f64>,
    pub skin_lab: Lab,
    pub hair_lab: Option<Lab>,
    pub eye_lab: Option<Lab>,
    /// A few representative colours of the season, as hex sRGB.
    #[schema(value_type = Vec<String>)]
    pub palette: [&'static str; 5],
}

const HUE_BOUNDARY: f64 = 58.0;
const HUE_SPREAD: f64 = 12.0;
const VALUE_BOUNDARY: f64 = 55.0;
const VALUE_SPREAD: f64 = 15.0;
const CHROMA_BOUNDARY: f64 = 20.0;
const CHROMA_SPREAD: f64 = 6.0;
const CONTRAST_BOUNDARY: f64 = 35.0;
const CONTRAST_SPREAD: f64 = 15.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Axis {
    Undertone,
    Value,
    Clarity,
}

/// Signed scores: warm > 0, light > 0, clear > 0.
fn scores(colours: &FaceColours) -> [(Axis, f64); 3] {
    let skin = colours.skin;
    let undertone = (skin.hue() - HUE_BOUNDARY) / HUE_SPREAD;
    // Dark hair deepens the overall value; light hair lightens it.
    let value_l = match colours.hair {
        Some(hair) => 0.7 * skin.l + 0.3 * hair.l,
        None => skin.l,
    };
    let value = (value_l - VALUE_BOUNDARY) / VALUE_SPREAD;
    let chroma_score = (skin.chroma() - CHROMA_BOUNDARY) / CHROMA_SPREAD;
    let clarity = match colours.hair {
        Some(hair) => {
            let contrast_score = ((skin.l - hair.l).abs() - CONTRAST_BOUNDARY) / CONTRAST_SPREAD;
            0.5 * chroma_score + 0.5 * contrast_score
        }
        None => chroma_score,
    };
    [(Axis::Undertone, undertone), (Axis::Value, value), (Axis::Clarity, clarity)]
}

fn season_for(dominant: Axis, dominant_score: f64, undertone: f64, value: f64, clarity: f64) -> (&'static str, f64) {
    match (dominant, dominant_score > 0.0) {
        (Axis::Value, true) => (if undertone > 0.0 { "Light Spring" } else { "Light Summer" }, undertone),
        (Axis::Value, false) => (if undertone > 0.0 { "Deep Autumn" } else { "Deep Winter" }, undertone),
        (Axis::Clarity, true) => (if undertone > 0.0 { "Bright Spring" } else { "Bright Winter" }, undertone),
        (Axis::Clarity, false) => (if undertone > 0.0 { "Soft Autumn" } else { "Soft Summer" }, undertone),
        // Spring is lighter and clearer than Autumn; Summer is lighter (and softer) than Winter.
        (Axis::Undertone, true) => {
            let lighter_or_clearer = value + clarity;
            (if lighter_or_clearer > 0.0 { "Warm Spring" } else { "Warm Autumn" }, lighter_or_clearer)
        }
        (Axis::Undertone, false) => (if value > 0.0 { "Cool Summer" } else { "Cool Winter" }, value),
    }
}

fn palette(season: &str) -> [&'static str; 5] {
    match season {
        "Light Spring" => ["#F9D6A5", "#F4A7A0", "#A8D8B9", "#9DC3E6", "#F2E394"],
        "Warm Spring" => ["#F2A541", "#E9724C", "#7DB46C", "#F6D55C", "#3CAEA3"],
        "Bright Spring" => ["#FF6F59", "#F7B32B", "#2EC4B6", "#3A86FF", "#E71D36"],
        "Light Summer" => ["#C5D5EA", "#E8C1C5", "#B8D8D8", "#D7C0D0", "#A0C4E2"],
        "Cool Summer" => ["#6C8EBF", "#9E7BB5", "#D16BA5", "#5DA9E9", "#A2A7A5"],
        "Soft Summer" => ["#8E9AAF", "#CBC0D3", "#A3B18A", "#B392AC", "#7D8491"],
        "Soft Autumn" => ["#B5A48B", "#C38D6B", "#8A9A5B", "#A47551", "#6E7F80"],
        "Warm Autumn" => ["#C1666B", "#D4A373", "#8C5E3C", "#6A994E", "#BC6C25"],
        "Deep Autumn" => ["#7F4F24", "#582F0E", "#936639", "#3A5A40", "#9B2226"],
        "Deep Winter" => ["#1B263B", "#5C0029", "#0B6E4F", "#2D3047", "#E0E1DD"],
        "Cool Winter" => ["#1D3557", "#E63946", "#F1FAEE", "#457B9D", "#6A0572"],
        _ => ["#0077B6", "#D00000", "#FFFFFF", "#7209B7", "#000000"], // Bright Winter
    }
}

pub fn analyse(colours: &FaceColours) -> SeasonAnalysis {
    let scores = scores(colours);
    let [(_, undertone), (_, value), (_, clarity)] = scores;
    let mut ranked = scores;
    ranked.sort_by(|a, b| b.1.abs().total_cmp(&a.1.abs()));
    let (dominant, dominant_score) = ranked[0];
    let (season, decider) = season_for(dominant, dominant_score, undertone, value, clarity);
    // Each factor maps a distance (in spreads) to 0..1; 1.5 spreads from a boundary counts as sure.
    let sureness = |distance: f64| (distance.abs() / 1.5).min(1.0);
    let margin_over_runner_up = (dominant_score.abs() - ranked[1].1.abs()).max(0.0);
    let confidence =
        0.2 + 0.8 * (sureness(dominant_score) * 0.4 + sureness(decider) * 0.4 + sureness(margin_over_runner_up) * 0.2);
    SeasonAnalysis {
        season,
        confidence: (confidence * 100.0).round() / 100.0,
        undertone: if undertone > 0.0 { "warm" } else { "cool" },
        value: if value > 0.0 { "light" } else { "deep" },
        clarity: if clarity > 0.0 { "clear" } else { "soft" },
        contrast: colours.hair.map(|hair| ((colours.skin.l - hair.l).abs() * 10.0).round() / 10.0),
        skin_lab: colours.skin.rounded(),
        hair_lab: colours.hair.map(Lab::rounded),
        eye_lab: colours.eyes.map(Lab::rounded),
        palette: palette(season),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lab(l: f64, a: f64, b: f64) -> Lab {
        Lab { l, a, b }
    }

    #[test]
    fn srgb_to_lab_matches_reference_values() {
        let white = Lab::from_srgb([255, 255, 255]);
        assert!((white.l - 100.0).abs() < 0.1 && white.a.abs() < 0.1 && white.b.abs() < 0.1, "{white:?}");
        // sRGB (200, 150, 120), a common skin tone: L* 66.1, a* 14.85, b* 23.13 (the CIE formulas in f64).
        let skin = Lab::from_srgb([200, 150, 120]);
        assert!(
            (skin.l - 66.1).abs() < 0.1 && (skin.a - 14.85).abs() < 0.1 && (skin.b - 23.13).abs() < 0.1,
            "{skin:?}"
        );
    }

    #[test]
    fn pale_cool_skin_with_light_hair_is_a_light_summer() {
        let colours = FaceColours { skin: lab(80.0, 14.0, 12.0), hair: Some(lab(70.0, 3.0, 10.0)), eyes: None };
        let analysis = analyse(&colours);
        assert_eq!(analysis.season, "Light Summer");
        assert_eq!((analysis.undertone, analysis.value), ("cool", "light"));
    }

    #[test]
    fn deep_warm_skin_with_dark_hair_is_a_deep_autumn() {
        let colours = FaceColours { skin: lab(38.0, 12.0, 24.0), hair: Some(lab(15.0, 2.0, 4.0)), eyes: None };
        assert_eq!(analyse(&colours).season, "Deep Autumn");
    }

    #[test]
    fn fair_skin_with_black_hair_is_clear_and_cool() {
        let colours = FaceColours { skin: lab(72.0, 14.0, 17.0), hair: Some(lab(12.0, 1.0, 1.0)), eyes: None };
        let analysis = analyse(&colours);
        assert_eq!(analysis.clarity, "clear");
        assert_eq!(analysis.season, "Bright Winter");
        assert_eq!(analysis.contrast, Some(60.0));
    }

    #[test]
    fn muted_warm_skin_is_a_soft_autumn() {
        let colours = FaceColours { skin: lab(56.0, 6.0, 12.0), hair: Some(lab(40.0, 4.0, 12.0)), eyes: None };
        let analysis = analyse(&colours);
        assert_eq!(analysis.season, "Soft Autumn", "{analysis:?}");
    }

    #[test]
    fn strongly_golden_skin_is_a_warm_season() {
        let colours = FaceColours { skin: lab(62.0, 4.0, 22.0), hair: None, eyes: None };
        let analysis = analyse(&colours);
        assert!(analysis.season.starts_with("Warm"), "{analysis:?}");
        assert_eq!(analysis.undertone, "warm");
    }

    #[test]
    fn confidence_is_low_on_boundaries_and_high_far_from_them() {
        let on_the_fence = FaceColours { skin: lab(55.0, 12.0, 19.0), hair: None, eyes: None };
        let clear_cut = FaceColours { skin: lab(85.0, 16.0, 10.0), hair: Some(lab(80.0, 2.0, 8.0)), eyes: None };
        let low = analyse(&on_the_fence).confidence;
        let high = analyse(&clear_cut).confidence;
        assert!(low < 0.5 && high > 0.7 && (0.0..=1.0).contains(&low) && high <= 1.0, "{low} {high}");
    }
}
