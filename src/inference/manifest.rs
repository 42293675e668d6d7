//! `models/manifest.json`: which files to load, their checksums, tensor names and preprocessing numbers.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::classifier::ClassifierPreprocessing;
use super::face::{AnchorSpec, DecodingSpec};
use crate::domain::sha256_hex;

/// Recorded with every result, so a prediction can always be traced to the exact model file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
#[schema(as = Model)]
pub struct ModelInfo {
    pub name: String,
    pub version: String,
    pub sha256: String,
}

#[derive(Deserialize)]
struct RawManifest {
    labels: RawFile,
    models: Vec<RawModel>,
}

#[derive(Deserialize)]
struct RawFile {
    file: String,
    sha256: String,
}

#[derive(Deserialize)]
struct RawModel {
    name: String,
    version: String,
    file: String,
    sha256: String,
    inputs: Vec<RawTensor>,
    outputs: Vec<RawTensor>,
    preprocessing: serde_json::Value,
    #[serde(default)]
    anchors: Option<AnchorSpec>,
    #[serde(default)]
    decoding: Option<DecodingSpec>,
}

#[derive(Deserialize)]
struct RawTensor {
    name: String,
}

pub struct ModelFile {
    pub info: ModelInfo,
    file_name: String,
    pub input: String,
    pub outputs: Vec<String>,
}

pub struct DetectorSpec {
    pub anchors: AnchorSpec,
    pub decoding: DecodingSpec,
}

pub struct Manifest {
    pub classifier: ModelFile,
    pub classifier_spec: ClassifierPreprocessing,
    pub detector: ModelFile,
    pub detector_spec: DetectorSpec,
    pub labels: Vec<String>,
}

pub const CLASSIFIER: &str = "mobilenet_v2";
pub const DETECTOR: &str = "face_detection_short_range";

/// Files are named in the manifest relative to the repository; they are looked up in the models directory.
fn file_name(path: &str) -> String {
    Path::new(path).file_name().map_or_else(|| path.to_owned(), |n| n.to_string_lossy().into_owned())
}

fn read_checked(dir: &Path, name: &str, expected: &str) -> Result<Vec<u8>, String> {
    let path = dir.join(name);
    let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let actual = sha256_hex(&bytes);
    if actual != expected {
        return Err(format!(
            "{} has sha256 {actual}, the manifest expects {expected}: the file is damaged or not the released \
             model (scripts/export-models.py rebuilds it)",
            path.display()
        ));
    }
    Ok(bytes)
}

impl ModelFile {
    fn from_raw(raw: &RawModel) -> Result<Self, String> {
        let input = raw.inputs.first().ok_or_else(|| format!("model {} names no input", raw.name))?.name.clone();
        Ok(ModelFile {
            info: ModelInfo { name: raw.name.clone(), version: raw.version.clone(), sha256: raw.sha256.clone() },
            file_name: file_name(&raw.file),
            input,
            outputs: raw.outputs.iter().map(|o| o.name.clone()).collect(),
        })
    }

    pub fn read_verified(&self, dir: &Path) -> Result<Vec<u8>, String> {
        read_checked(dir, &self.file_name, &self.info.sha256)
    }
}

impl Manifest {
    /// The smallest image the models' preprocessing reduces from without enlarging: the classifier's shorter
    /// side, the face detector's square. Read from the manifest alone, so tools that make thumbnails without
    /// running the models decode to the same size as uploads do.
    pub fn input_size(&self) -> crate::imaging::WorkingSize {
        let [crop_width, crop_height] = self.classifier_spec.center_crop.size;
        let detector = &self.detector_spec.anchors;
        crate::imaging::WorkingSize {
            min_short_side: self.classifier_spec.resize.shorter_side.max(crop_width).max(crop_height),
            min_long_side: detector.input_size_width.max(detector.input_size_height),
        }
    }

    pub fn load(dir: &Path) -> Result<Manifest, String> {
        let path = dir.join("manifest.json");
        let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let raw: RawManifest = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        let find = |name: &str| {
            raw.models
                .iter()
                .find(|m| m.name == name)
                .ok_or_else(|| format!("{} lists no model {name}", path.display()))
        };
        let (classifier, detector) = (find(CLASSIFIER)?, find(DETECTOR)?);
        let classifier_spec: ClassifierPreprocessing = serde_json::from_value(classifier.preprocessing.clone())
            .map_err(|e| format!("{CLASSIFIER} preprocessing in {}: {e}", path.display()))?;
        let detector_spec = DetectorSpec {
            anchors: detector.anchors.clone().ok_or_else(|| format!("{DETECTOR} has no anchors in the manifest"))?,
            decoding: detector.decoding.clone().ok_or_else(|| format!("{DETECTOR} has no decoding in the manifest"))?,
        };
        if detector.outputs.len() < 2 || classifier.outputs.is_empty() {
            return Err(format!("{}: a model lacks its outputs", path.display()));
        }
        let labels_bytes = read_checked(dir, &file_name(&raw.labels.file), &raw.labels.sha256)?;
        let labels: Vec<String> = String::from_utf8_lossy(&labels_bytes).lines().map(str::to_owned).collect();
        Ok(Manifest {
            classifier: ModelFile::from_raw(classifier)?,
            classifier_spec,
            detector: ModelFile::from_raw(detector)?,
            detector_spec,
            labels,
        })
    }
}
