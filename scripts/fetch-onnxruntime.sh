#!/usr/bin/env bash
# Installs the ONNX Runtime shared library that the `ort` crate loads at run time
# (feature `load-dynamic`; point UPSHOT_ORT_LIB at the printed path; the default path needs no setting).
#
# The library is taken from the official `onnxruntime==1.31.1` wheel on PyPI
# (manylinux_2_28 x86_64, built for CPython 3.11; the .so itself does not depend on
# Python). Only `onnxruntime/capi/libonnxruntime.so.1.31.1` is extracted and its sha256
# is checked against the constant below.
#
# Usage:   scripts/fetch-onnxruntime.sh
# Result:  ${UPSHOT_ORT_DIR:-<repo>/target/onnxruntime}/libonnxruntime.so.1.31.1
# Stdout:  the absolute path of the library (and nothing else); logs go to stderr.
# Needs:   python3 with pip (for `pip download`); no network if already installed.
set -euo pipefail

ORT_VERSION="1.31.1"
ORT_WHEEL_PLATFORM="manylinux_2_28_x86_64"
ORT_WHEEL_PYTHON="3.11"
ORT_LIB_NAME="libonnxruntime.so.${ORT_VERSION}"
ORT_LIB_MEMBER="onnxruntime/capi/${ORT_LIB_NAME}"
ORT_LIB_SHA256="fc44112fbe06d7d689c57e11d3862031f64711007e4ee020f8eed5185fd2c1d3"

log() { printf 'fetch-onnxruntime: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

script_dir="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)"
repo_root="$(cd -- "${script_dir}/.." && pwd -P)"
dest_dir="${UPSHOT_ORT_DIR:-${repo_root}/target/onnxruntime}"

case "$(uname -s)-$(uname -m)" in
    Linux-x86_64) ;;
    *) die "only Linux x86_64 is supported (got $(uname -s)-$(uname -m))" ;;
esac

command -v python3 >/dev/null 2>&1 || die "python3 is required"
command -v sha256sum >/dev/null 2>&1 || die "sha256sum is required"

sha256_of() { sha256sum -- "$1" | cut -d' ' -f1; }

check_loads() {
    python3 -c 'import ctypes, sys; ctypes.CDLL(sys.argv[1])' "$1" \
        || die "$1 does not load (ctypes.CDLL failed)"
}

mkdir -p -- "${dest_dir}"
dest_dir="$(cd -- "${dest_dir}" && pwd -P)"
dest="${dest_dir}/${ORT_LIB_NAME}"

if [[ -f "${dest}" ]] && [[ "$(sha256_of "${dest}")" == "${ORT_LIB_SHA256}" ]]; then
    log "already installed: ${dest}"
    check_loads "${dest}"
    printf '%s\n' "${dest}"
    exit 0
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/fetch-onnxruntime.XXXXXX")"
tmp_lib=""
cleanup() {
    rm -rf -- "${work}"
    if [[ -n "${tmp_lib}" ]]; then rm -f -- "${tmp_lib}"; fi
}
trap cleanup EXIT

log "downloading onnxruntime==${ORT_VERSION} (${ORT_WHEEL_PLATFORM}, cp${ORT_WHEEL_PYTHON/./}) from PyPI"
python3 -m pip download --quiet --no-deps --only-binary=:all: \
    --platform "${ORT_WHEEL_PLATFORM}" --python-version "${ORT_WHEEL_PYTHON}" \
    --implementation cp \
    --dest "${work}" "onnxruntime==${ORT_VERSION}" >&2 \
    || die "pip download of onnxruntime==${ORT_VERSION} failed"

shopt -s nullglob
wheels=("${work}"/onnxruntime-"${ORT_VERSION}"-*.whl)
shopt -u nullglob
[[ ${#wheels[@]} -eq 1 ]] || die "expected exactly one wheel in ${work}, found ${#wheels[@]}"
log "wheel: $(basename -- "${wheels[0]}")"

# Extract the one member into a temp file next to the destination (same filesystem),
# check it, then rename it into place atomically.
tmp_lib="$(mktemp "${dest_dir}/.${ORT_LIB_NAME}.XXXXXX")"
python3 - "${wheels[0]}" "${ORT_LIB_MEMBER}" "${tmp_lib}" <<'PY' || die "could not extract ${ORT_LIB_MEMBER}"
import shutil
import sys
import zipfile

wheel, member, out = sys.argv[1:4]
with zipfile.ZipFile(wheel) as zf, zf.open(member) as src, open(out, "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY

got="$(sha256_of "${tmp_lib}")"
[[ "${got}" == "${ORT_LIB_SHA256}" ]] \
    || die "sha256 mismatch for ${ORT_LIB_MEMBER}: got ${got}, expected ${ORT_LIB_SHA256}"
chmod 0644 -- "${tmp_lib}"
check_loads "${tmp_lib}"
mv -f -- "${tmp_lib}" "${dest}"
tmp_lib=""

log "installed ${dest}"
printf '%s\n' "${dest}"
