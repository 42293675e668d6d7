//! Per-stage cost of an upload on the fixtures: decode, metadata strip + decode + thumbnail (`prepare`),
//! classifier preprocessing and run, face detector preprocessing and run, and the whole analysis; then a
//! 12 MP photo (the 4000x3000 JPEG of `../shared/bench/images`) through `prepare` and the models.
//!
//! Run with `scripts/bench.sh` (it fetches ONNX Runtime first), or `cargo bench --bench pipeline` with
//! `UPSHOT_ORT_LIB` set.

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use ort::session::Session;
use ort::value::TensorRef;
use upshot::inference::{classifier, face, Engine, EngineConfig};
use upshot::ingest::{self, IngestPolicy, Upload};

fn repo(path: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(repo("tests/fixtures").join(name)).unwrap()
}

fn ort_lib() -> std::path::PathBuf {
    std::env::var("UPSHOT_ORT_LIB").map_or_else(|_| repo(upshot::config::DEFAULT_ORT_LIB), Into::into)
}

fn manifest_model(name: &str) -> serde_json::Value {
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(repo("models/manifest.json")).unwrap()).unwrap();
    manifest["models"].as_array().unwrap().iter().find(|m| m["name"] == name).unwrap().clone()
}

/// One single-threaded session, as each slot of the server's pool has.
fn session(env: &ort::environment::Environment, file: &str) -> Session {
    Session::builder(env).unwrap().with_intra_threads(1).unwrap().commit_from_file(repo("models").join(file)).unwrap()
}

fn stages(c: &mut Criterion) {
    let engine_config = EngineConfig {
        models_dir: repo("models"),
        ort_library: ort_lib(),
        sessions: 1,
        threads_per_session: 1,
        wait: Duration::from_secs(60),
        top_k: 5,
    };
    let engine = Arc::new(Engine::load(&engine_config).expect("models load"));
    let env = upshot::inference::onnx_runtime(&engine_config.ort_library).unwrap();
    let policy = IngestPolicy::new(&upshot::config::ImageSettings::default(), engine.input_size());
    let cat_bytes = fixture("cat-gps-rotated.jpg");
    let cat = image::load_from_memory(&fixture("cat.jpg")).unwrap().to_rgb8();
    let astronaut = image::load_from_memory(&fixture("astronaut.webp")).unwrap().to_rgb8();
    let astronaut_image = Arc::new(astronaut.clone());

    let mut group = c.benchmark_group("stages");
    group.sample_size(30).measurement_time(Duration::from_secs(4));
    group.bench_function("decode jpeg 451x300", |b| b.iter(|| image::load_from_memory(black_box(&cat_bytes)).unwrap()));
    group.bench_function("prepare jpeg (strip, keep the orientation, decode, thumbnail, sha256)", |b| {
        b.iter(|| ingest::prepare(&Upload::new(black_box(&cat_bytes).clone()), &policy).unwrap())
    });

    let spec: classifier::ClassifierPreprocessing =
        serde_json::from_value(manifest_model("mobilenet_v2")["preprocessing"].clone()).unwrap();
    group.bench_function("classifier preprocess", |b| b.iter(|| classifier::preprocess(black_box(&cat), &spec)));
    let mut mobilenet = session(&env, "mobilenet_v2.onnx");
    let input = classifier::preprocess(&cat, &spec);
    group.bench_function("classifier run (mobilenet_v2)", |b| {
        b.iter(|| {
            let outputs =
                mobilenet.run(ort::inputs!["input" => TensorRef::from_array_view(input.view()).unwrap()]).unwrap();
            black_box(outputs["logits"].try_extract_array::<f32>().unwrap().sum())
        })
    });

    group.bench_function("face preprocess", |b| b.iter(|| face::preprocess(black_box(&astronaut), 128)));
    let mut blazeface = session(&env, "face_detection_short_range.onnx");
    let (face_input, _) = face::preprocess(&astronaut, 128);
    group.bench_function("face detector run (blazeface)", |b| {
        b.iter(|| {
            let outputs =
                blazeface.run(ort::inputs!["input" => TensorRef::from_array_view(face_input.view()).unwrap()]).unwrap();
            black_box(outputs["classificators"].try_extract_array::<f32>().unwrap().sum())
        })
    });

    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    group.bench_function("whole analysis (classify + faces + season)", |b| {
        b.iter(|| runtime.block_on(engine.analyse(astronaut_image.clone())).unwrap())
    });
    group.finish();

    let photo = large_photo();
    let mut group = c.benchmark_group("12 MP photo");
    group.sample_size(20).measurement_time(Duration::from_secs(6));
    group.bench_function("prepare 4000x3000 jpeg", |b| {
        b.iter(|| ingest::prepare(&Upload::new(black_box(&photo).clone()), &policy).unwrap())
    });
    group.bench_function("prepare + models, 4000x3000 jpeg", |b| {
        b.iter(|| {
            let prepared = ingest::prepare(&Upload::new(black_box(&photo).clone()), &policy).unwrap();
            runtime.block_on(engine.analyse(prepared.pixels)).unwrap()
        })
    });
    group.finish();
}

/// The benchmark mix's 12 MP JPEG, or (without `../shared` beside the repository) the astronaut fixture
/// enlarged to the same size.
fn large_photo() -> Vec<u8> {
    let shared = std::env::var("BENCH_IMAGES")
        .map_or_else(|_| repo("../shared/bench/images"), Into::into)
        .join("astronaut_4000x3000.jpg");
    std::fs::read(&shared).unwrap_or_else(|_| {
        let large = image::load_from_memory(&fixture("astronaut.webp"))
            .unwrap()
            .resize_exact(4000, 3000, image::imageops::FilterType::Triangle)
            .to_rgb8();
        let mut bytes = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 90).encode_image(&large).unwrap();
        bytes
    })
}

criterion_group!(benches, stages);
criterion_main!(benches);
