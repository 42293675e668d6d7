#!/usr/bin/env bash
# Upshot's pages in a real headless browser: Debian's Chromium driven by playwright-core (no browser download),
# with node's built-in test runner. Starts its own server on a free loopback port with a throwaway data
# directory, and stops it on exit. Run from anywhere: tests/browser/run.sh
#
#   UPSHOT_BIN      the server binary (default target/debug/upshot; build it first with `cargo build`)
#   UPSHOT_ORT_LIB  the ONNX Runtime library (default target/onnxruntime/libonnxruntime.so.1.31.1)
#   Extra arguments go to `node --test` (e.g. --test-name-pattern=admin).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cd "$root"

chromium_bin=/usr/bin/chromium
if [[ ! -x "$chromium_bin" ]]; then
  echo "run.sh: installing Debian's chromium" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq chromium >/dev/null
fi

# npm ci only when node_modules is missing or older than the lock file.
stamp="$here/node_modules/.package-lock.json"
if [[ ! -f "$stamp" || "$here/package-lock.json" -nt "$stamp" ]]; then
  echo "run.sh: npm ci" >&2
  (cd "$here" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error)
fi

bin="${UPSHOT_BIN:-target/debug/upshot}"
if [[ ! -x "$bin" ]]; then
  echo "run.sh: $bin not found; build it with: cargo build" >&2
  exit 1
fi
export UPSHOT_ORT_LIB="${UPSHOT_ORT_LIB:-target/onnxruntime/libonnxruntime.so.1.31.1}"

port="$(node -e 'const s = require("net").createServer(); s.listen(0, "127.0.0.1", () => { console.log(s.address().port); s.close(); });')"
data_dir="$(mktemp -d -t upshot-browser.XXXXXX)"
log="$data_dir/server.log"
server_pid=""

cleanup() {
  local status=$?
  if [[ -n "$server_pid" ]] && kill -0 "$server_pid" 2>/dev/null; then
    kill "$server_pid" 2>/dev/null || true
    for _ in $(seq 1 50); do
      kill -0 "$server_pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -9 "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  if [[ $status -ne 0 && -f "$log" ]]; then
    echo "run.sh: last server log lines:" >&2
    tail -n 40 "$log" >&2 || true
  fi
  rm -rf "$data_dir"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

base="http://127.0.0.1:$port"
UPSHOT_DATA_DIR="$data_dir/data" \
  ROCKET_PORT="$port" \
  ROCKET_ADDRESS=127.0.0.1 \
  UPSHOT_ADMIN_API_KEY=browser-test-admin-key-123 \
  UPSHOT_PUBLIC_URL="$base" \
  UPSHOT_LOG=warn \
  "$bin" serve >"$log" 2>&1 &
server_pid=$!

ready=""
for _ in $(seq 1 120); do
  if ! kill -0 "$server_pid" 2>/dev/null; then
    echo "run.sh: the server exited during start-up" >&2
    exit 1
  fi
  if curl -fs -o /dev/null --max-time 2 "$base/readyz" 2>/dev/null; then
    ready=1
    break
  fi
  sleep 0.5
done
if [[ -z "$ready" ]]; then
  echo "run.sh: $base/readyz did not answer 200 within 60 s" >&2
  exit 1
fi

export UPSHOT_BASE_URL="$base"
export UPSHOT_ADMIN_API_KEY=browser-test-admin-key-123
# Screenshots go under target/ so a test run leaves the tracked tree as it found it; UPSHOT_SCREENSHOT_DIR=docs/screenshots
# refreshes the ones the README shows.
export UPSHOT_SCREENSHOT_DIR="${UPSHOT_SCREENSHOT_DIR:-$root/target/screenshots}"
export CHROMIUM_BIN="$chromium_bin"
mkdir -p "$UPSHOT_SCREENSHOT_DIR"

# One test file at a time: the machine is small, and each file drives its own Chromium.
node --test --test-concurrency=1 --test-timeout=180000 "$@" tests/browser/
