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

# shellcheck source=tests/support/server.sh
source "$root/tests/support/server.sh"
# Direct uploads up to 24 MiB: a file just over the form's 20 MiB takes the direct path, and one over 24 MiB is
# refused without making the browser hold hundreds of megabytes.
# Every page test is one client on 127.0.0.1: the per-client allowance is raised for the whole run.
start_test_server browser UPSHOT_ADMIN_API_KEY=browser-test-admin-key-123 UPSHOT_DIRECT_UPLOAD_MAX_BYTES=25165824 \
    UPSHOT_CLIENT_REQUESTS_PER_MINUTE=1000000 UPSHOT_CLIENT_REQUEST_BURST=1000000 UPSHOT_MAX_INTAKE_IN_FLIGHT_PER_CLIENT=1000000
base="$TEST_SERVER_BASE"

export UPSHOT_BASE_URL="$base"
# For the test that runs `upshot reconcile` against the server's own data.
export UPSHOT_TEST_DATA_DIR="$TEST_SERVER_DATA_DIR"
export UPSHOT_BIN="${UPSHOT_BIN:-$root/target/debug/upshot}"
export UPSHOT_ADMIN_API_KEY=browser-test-admin-key-123
# Screenshots go under target/ so a test run leaves the tracked tree as it found it; UPSHOT_SCREENSHOT_DIR=docs/screenshots
# refreshes the ones the README shows.
export UPSHOT_SCREENSHOT_DIR="${UPSHOT_SCREENSHOT_DIR:-$root/target/screenshots}"
export CHROMIUM_BIN="$chromium_bin"
mkdir -p "$UPSHOT_SCREENSHOT_DIR"

# One test file at a time: the machine is small, and each file drives its own Chromium.
node --test --test-concurrency=1 --test-timeout=180000 "$@" tests/browser/
