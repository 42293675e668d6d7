#!/usr/bin/env bash
# Runs the per-stage benchmarks (criterion, release build). Extra arguments go to `cargo bench`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
UPSHOT_ORT_LIB=$(scripts/fetch-onnxruntime.sh)
export UPSHOT_ORT_LIB
cargo bench --locked --bench pipeline "$@"
