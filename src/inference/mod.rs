//! Inline inference with ONNX Runtime: the ImageNet classifier and the selfie analysis (face detection, then
//! seasonal colours). Models and their preprocessing come from `models/manifest.json`; each file's sha256 is
//! checked before it is loaded. Sessions live in a fixed pool; requests borrow a slot on a blocking thread.

pub mod classifier;
pub mod face;
mod manifest;
pub mod pool;
pub mod season;
pub mod selfie;

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use image::RgbImage;
use ort::session::Session;
use ort::value::TensorRef;
use serde::Serialize;

pub use classifier::Prediction;
pub use face::Face;
pub use manifest::ModelInfo;
pub use season::SeasonAnalysis;

use crate::error::{AppError, ErrorCode};
use manifest::Manifest;
use pool::Pool;

#[derive(Debug, thiserror::Error)]
pub enum InferenceError {
    #[error("cannot load the models: {0}")]
    Load(String),
    #[error(transparent)]
    Busy(#[from] pool::Busy),
    #[error("inference failed: {0}")]
    Failed(String),
}

impl From<ort::Error> for InferenceError {
    fn from(error: ort::Error) -> Self {
        InferenceError::Failed(error.to_string())
    }
}

impl From<InferenceError> for AppError {
    fn from(error: InferenceError) -> Self {
        match error {
            InferenceError::Busy(_) => {
                AppError::new(ErrorCode::InferenceBusy, "All image models are busy; try again in a moment.")
                    .with_detail(error)
                    .retry_after(1)
            }
            _ => AppError::new(ErrorCode::InferenceFailed, "The image could not be analysed.").with_detail(error),
        }
    }
}

/// How the engine is set up; from the settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub models_dir: PathBuf,
    pub ort_library: PathBuf,
    pub sessions: usize,
    pub threads_per_session: usize,
    pub wait: Duration,
    pub top_k: usize,
}

/// Why a selfie analysis has no body type: no model for it ships with Upshot.
pub const BODY_TYPE_REASON: &str = "no body-shape model is available, so body type is not estimated";

/// Everything the models say about one image.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Analysis {
    pub predictions: Vec<Prediction>,
    pub model: ModelInfo,
    pub face_model: ModelInfo,
    pub faces: Vec<Face>,
    /// Present only for exactly one clear face.
    pub selfie: Option<SeasonAnalysis>,
    /// Why `selfie` is absent.
    pub selfie_reason: Option<String>,
    pub inference_ms: f64,
    /// The CPU time of the two models' runs alone (their thread's, one ONNX Runtime thread per session): what
    /// an upload cannot cost less than.
    #[serde(skip)]
    pub models_cpu_ms: f64,
}

/// The face part of an `Analysis`, as an image's row keeps it (its `analysis` column) and the API serves it
/// back. Every field has a default, so rows written by older releases read as well.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct FaceDetails {
    #[serde(default)]
    pub faces: Vec<Face>,
    #[serde(default)]
    pub selfie: Option<serde_json::Value>,
    #[serde(default)]
    pub selfie_reason: Option<String>,
    #[serde(default)]
    pub face_model: Option<ModelInfo>,
}

impl From<&Analysis> for FaceDetails {
    fn from(analysis: &Analysis) -> Self {
        FaceDetails {
            faces: analysis.faces.clone(),
            selfie: analysis.selfie.as_ref().map(|s| serde_json::to_value(s).expect("a season analysis serializes")),
            selfie_reason: analysis.selfie_reason.clone(),
            face_model: Some(analysis.face_model.clone()),
        }
    }
}

struct Slot {
    classifier: Session,
    detector: Session,
}

pub struct Engine {
    pool: Arc<Pool<Slot>>,
    manifest: Arc<Manifest>,
    anchors: Arc<Vec<face::Anchor>>,
    wait: Duration,
    top_k: usize,
}

static ENVIRONMENT: OnceLock<Result<ort::environment::Environment, String>> = OnceLock::new();

/// The process's ONNX Runtime, loaded from `library` on first use; later calls reuse it.
pub fn onnx_runtime(library: &Path) -> Result<ort::environment::Environment, InferenceError> {
    ENVIRONMENT
        .get_or_init(|| {
            if !library.is_file() {
                return Err(format!(
                    "the ONNX Runtime library {} does not exist: run scripts/fetch-onnxruntime.sh, or set \
                     UPSHOT_ORT_LIB to a libonnxruntime.so 1.31",
                    library.display()
                ));
            }
            let builder = ort::init_from(library).map_err(|e| {
                format!("cannot load ONNX Runtime from {}: {e} (run scripts/fetch-onnxruntime.sh)", library.display())
            })?;
            builder.with_name("upshot").build().map_err(|e| e.to_string())
        })
        .clone()
        .map_err(InferenceError::Load)
}

/// The models' input size as the manifest in `models_dir` gives it, without loading the models.
pub fn manifest_input_size(models_dir: &Path) -> Result<crate::imaging::WorkingSize, InferenceError> {
    Ok(Manifest::load(models_dir).map_err(InferenceError::Load)?.input_size())
}

impl Engine {
    /// Verifies and loads every model, and fills the session pool. Blocking: call it off the async workers.
    pub fn load(config: &EngineConfig) -> Result<Engine, InferenceError> {
        let manifest = Manifest::load(&config.models_dir).map_err(InferenceError::Load)?;
        let env = onnx_runtime(&config.ort_library)?;
        let classifier_bytes = manifest.classifier.read_verified(&config.models_dir).map_err(InferenceError::Load)?;
        let detector_bytes = manifest.detector.read_verified(&config.models_dir).map_err(InferenceError::Load)?;
        // Sessions of one model share their prepacked weights instead of each holding a copy.
        let (classifier_weights, detector_weights) =
            (ort::session::builder::PrepackedWeights::new(), ort::session::builder::PrepackedWeights::new());
        let session = |bytes: &[u8], weights: &ort::session::builder::PrepackedWeights| {
            Session::builder(&env)
                .and_then(|b| b.with_intra_threads(config.threads_per_session).map_err(Into::into))
                .and_then(|b| b.with_inter_threads(1).map_err(Into::into))
                .and_then(|b| b.with_prepacked_weights(weights).map_err(Into::into))
                .and_then(|mut b| b.commit_from_memory(bytes))
                .map_err(|e| InferenceError::Load(e.to_string()))
        };
        let mut slots = Vec::with_capacity(config.sessions);
        for _ in 0..config.sessions.max(1) {
            slots.push(Slot {
                classifier: session(&classifier_bytes, &classifier_weights)?,
                detector: session(&detector_bytes, &detector_weights)?,
            });
        }
        let anchors = face::anchors(&manifest.detector_spec.anchors);
        if anchors.len() != manifest.detector_spec.anchors.num_anchors {
            return Err(InferenceError::Load(format!(
                "{} anchors generated, the manifest expects {}",
                anchors.len(),
                manifest.detector_spec.anchors.num_anchors
            )));
        }
        Ok(Engine {
            pool: Pool::new(slots),
            manifest: Arc::new(manifest),
            anchors: Arc::new(anchors),
            wait: config.wait,
            top_k: config.top_k,
        })
    }

    pub fn sessions(&self) -> usize {
        self.pool.size()
    }

    pub fn idle_sessions(&self) -> usize {
        self.pool.available()
    }

    /// The classifier's labels, in class order.
    pub fn labels(&self) -> &[String] {
        &self.manifest.labels
    }

    /// The smallest image the models' preprocessing reduces from without enlarging.
    pub fn input_size(&self) -> crate::imaging::WorkingSize {
        self.manifest.input_size()
    }

    pub fn classifier_info(&self) -> &ModelInfo {
        &self.manifest.classifier.info
    }

    /// Classifies the image and analyses faces. Waits at most the configured time for a free session.
    pub async fn analyse(&self, rgb: Arc<RgbImage>) -> Result<Analysis, InferenceError> {
        let mut lease = self.pool.acquire(self.wait).await?;
        let (manifest, anchors, top_k) = (self.manifest.clone(), self.anchors.clone(), self.top_k);
        tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let cpu_started = thread_cpu_ms();
            let slot = lease.get();
            let predictions = classify(&mut slot.classifier, &manifest, &rgb, top_k)?;
            let faces = detect_faces(&mut slot.detector, &manifest, &anchors, &rgb)?;
            let models_cpu_ms = thread_cpu_ms() - cpu_started;
            drop(lease);
            let (selfie, selfie_reason) = analyse_selfie(&rgb, &faces);
            Ok(Analysis {
                predictions,
                model: manifest.classifier.info.clone(),
                face_model: manifest.detector.info.clone(),
                faces,
                selfie,
                selfie_reason,
                inference_ms: (started.elapsed().as_secs_f64() * 10_000.0).round() / 10.0,
                models_cpu_ms,
            })
        })
        .await
        .map_err(|e| InferenceError::Failed(format!("inference task failed: {e}")))?
    }
}

/// The CPU time the calling thread has used, in milliseconds: work measured without the time it waited.
fn thread_cpu_ms() -> f64 {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec, which `now` is; CLOCK_THREAD_CPUTIME_ID is always there on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    now.tv_sec as f64 * 1000.0 + now.tv_nsec as f64 / 1_000_000.0
}

fn classify(
    session: &mut Session,
    manifest: &Manifest,
    image: &RgbImage,
    top_k: usize,
) -> Result<Vec<Prediction>, InferenceError> {
    let tensor = classifier::preprocess(image, &manifest.classifier_spec);
    let spec = &manifest.classifier;
    let outputs = session.run(ort::inputs![spec.input.as_str() => TensorRef::from_array_view(tensor.view())?])?;
    let logits = outputs[spec.outputs[0].as_str()].try_extract_array::<f32>()?;
    let logits: Vec<f32> = logits.iter().copied().collect();
    Ok(classifier::top_k(&logits, &manifest.labels, top_k))
}

fn detect_faces(
    session: &mut Session,
    manifest: &Manifest,
    anchors: &[face::Anchor],
    image: &RgbImage,
) -> Result<Vec<Face>, InferenceError> {
    let spec = &manifest.detector_spec;
    let (tensor, letterbox) = face::preprocess(image, spec.anchors.input_size_width);
    let model = &manifest.detector;
    let outputs = session.run(ort::inputs![model.input.as_str() => TensorRef::from_array_view(tensor.view())?])?;
    let regressors = outputs[model.outputs[0].as_str()].try_extract_array::<f32>()?;
    let logits = outputs[model.outputs[1].as_str()].try_extract_array::<f32>()?;
    let regressors: Vec<f32> = regressors.iter().copied().collect();
    let logits: Vec<f32> = logits.iter().copied().collect();
    if regressors.len() != anchors.len() * spec.decoding.num_coords || logits.len() != anchors.len() {
        return Err(InferenceError::Failed("the face detector's outputs do not match its anchors".into()));
    }
    Ok(face::decode(&regressors, &logits, anchors, &spec.decoding, &letterbox))
}

fn analyse_selfie(image: &RgbImage, faces: &[Face]) -> (Option<SeasonAnalysis>, Option<String>) {
    match faces {
        [] => (None, Some("no face found".to_owned())),
        [face] => match selfie::face_colours(image, face) {
            Some(colours) => (Some(season::analyse(&colours)), None),
            None => (None, Some("the face is too small or too dark to read its colours".to_owned())),
        },
        many => (None, Some(format!("{} faces found; the analysis needs exactly one", many.len()))),
    }
}
