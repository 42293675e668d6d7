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

bin="${UPSHOT_BIN:-target/debug/upshot}"
if [[ ! -x "$bin" ]]; then
  echo "run.sh: $bin not found; build it with: cargo build" >&2
  exit 1
fi
export UPSHOT_ORT_LIB="${UPSHOT_ORT_LIB:-target/onnxruntime/libonnxruntime.so.1.31.1}"

port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
work="$(mktemp -d -t upshot-api.XXXXXX)"
log="$work/server.log"
server_pid=""
cleanup() {
  local status=$?
  if [[ -n "$server_pid" ]]; then
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  if [[ $status -ne 0 && -f "$log" ]]; then
    echo "run.sh: last server log lines:" >&2
    tail -n 20 "$log" >&2 || true
  fi
  rm -rf "$work"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

admin_key=schemathesis-admin-key-0123456789
base="http://127.0.0.1:$port"
UPSHOT_DATA_DIR="$work/data" ROCKET_PORT="$port" ROCKET_ADDRESS=127.0.0.1 UPSHOT_ADMIN_API_KEY="$admin_key" \
  UPSHOT_PUBLIC_URL="$base" UPSHOT_LOG=warn "$bin" serve >"$log" 2>&1 &
server_pid=$!
for _ in $(seq 1 120); do
  kill -0 "$server_pid" 2>/dev/null || { echo "run.sh: the server exited during start-up" >&2; exit 1; }
  curl -fs -o /dev/null --max-time 2 "$base/readyz" && break
  sleep 0.5
done

cd "$here"  # schemathesis.toml: what the checks expect where the document cannot say it
"$venv/bin/st" run "$base/api/v1/openapi.json" --checks all --max-examples 20 --max-time 150 \
  --header "Authorization: Bearer $admin_key" --no-color \
  --seed "${UPSHOT_API_SEED:-20261122}" "$@"
