#!/usr/bin/env bash
# The API document against the server: schemathesis (PyPI, pinned) generates requests from
# /api/v1/openapi.json, both valid and invalid ones, and runs every check (`--checks all`): no 5xx, no status
# or body the document does not declare, no valid request refused, no invalid request accepted, 405 with
# `Allow` for undeclared methods. Starts its own server (embedded default, admin key set) on a free loopback
# port; bounded to 20 examples per operation and 150 s. Exits non-zero on any failure.
#
#   UPSHOT_BIN      the server binary (default target/debug/upshot; build it first with `cargo build`)
#   UPSHOT_ORT_LIB  the ONNX Runtime library (default target/onnxruntime/libonnxruntime.so.1.31.1)
#   Extra arguments go to `st run` (e.g. --seed 1 or --include-path /api/v1/images).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cd "$root"

schemathesis_version=4.32.5
venv="${UPSHOT_TOOLS_DIR:-$root/target/tools}/api-venv"
if ! "$venv/bin/st" --version 2>/dev/null | grep -q "$schemathesis_version"; then
  echo "run.sh: installing schemathesis==$schemathesis_version into $venv" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "schemathesis==$schemathesis_version" >&2
fi

admin_key=schemathesis-admin-key-0123456789
# shellcheck source=tests/support/server.sh
source "$root/tests/support/server.sh"
# One client sends every generated case: the per-client allowance is not what this run checks.
start_test_server api UPSHOT_ADMIN_API_KEY="$admin_key" UPSHOT_CLIENT_REQUESTS_PER_MINUTE=1000000 \
    UPSHOT_CLIENT_REQUEST_BURST=1000000 UPSHOT_MAX_INTAKE_IN_FLIGHT_PER_CLIENT=1000000
base="$TEST_SERVER_BASE"

cd "$here"  # schemathesis.toml: what the checks expect where the document cannot say it
"$venv/bin/st" run "$base/api/v1/openapi.json" --checks all --max-examples 20 --max-time 150 \
  --header "Authorization: Bearer $admin_key" --no-color \
  --seed "${UPSHOT_API_SEED:-20261122}" "$@"
