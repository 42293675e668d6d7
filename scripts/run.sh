#!/usr/bin/env bash
# Runs Upshot on its embedded default: SQLite and local files under ./data, no cloud account needed.
# Extra arguments go to `upshot` (e.g. `scripts/run.sh check-config`). Environment overrides apply.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
UPSHOT_ORT_LIB=${UPSHOT_ORT_LIB:-$(scripts/fetch-onnxruntime.sh)}
export UPSHOT_ORT_LIB
exec cargo run --release -- "${@:-serve}"
