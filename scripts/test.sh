#!/usr/bin/env bash
# Runs the whole test suite: unit tests, the integration tests on both stacks (SQLite + local files, and a
# throwaway PostgreSQL cluster + a moto S3/SNS/SQS endpoint on 127.0.0.1, started here and stopped on exit),
# the offline deployment checks (cfn-lint, checkov, shellcheck, systemd, schemas) and a local rehearsal of a
# CodeDeploy deployment, then the pages in headless Chromium (tests/browser) and the API against its OpenAPI
# document with schemathesis (tests/api).
# Extra arguments go to `cargo test` (e.g. `scripts/test.sh dedup`). UPSHOT_TEST_SCOPE=rust runs only the Rust
# tests: what the CodeBuild image (Amazon Linux, no apt, no Debian Chromium) can run; CI runs everything.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
UPSHOT_ORT_LIB=$(scripts/fetch-onnxruntime.sh)
export UPSHOT_ORT_LIB

state=$(mktemp -d -t upshot-test.XXXXXX)
cleanup() {
    scripts/test-services.sh stop "$state" || true
    rm -rf "$state"
}
trap cleanup EXIT
eval "$(scripts/test-services.sh start "$state")"

# Dummy credentials for the local endpoint; never real ones, and no instance metadata look-ups.
export AWS_ACCESS_KEY_ID=upshot-test AWS_SECRET_ACCESS_KEY=upshot-test AWS_REGION=us-east-1
export AWS_EC2_METADATA_DISABLED=true
unset AWS_PROFILE AWS_SESSION_TOKEN

if [ "${UPSHOT_TEST_SCOPE:-all}" != rust ]; then
    # The full suite reads what metadata a stored photo keeps with exiftool (tests/it/heif.rs).
    if ! command -v exiftool >/dev/null 2>&1; then
        sudo_cmd=()
        [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
        "${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
        "${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libimage-exiftool-perl >&2
    fi
    export UPSHOT_REQUIRE_EXIFTOOL=1
fi
# A CI run builds once from a fresh clone: incremental state would only cost disk and time.
if [ -n "${CI:-}" ]; then
    export CARGO_INCREMENTAL=0
fi
cargo test --locked "$@"

# With a filter, only the matching Rust tests run; the whole suite also checks the deployment.
if [ $# -eq 0 ] && [ "${UPSHOT_TEST_SCOPE:-all}" != rust ]; then
    scripts/check-deploy.sh
    scripts/rehearse-deploy.sh target/debug/upshot
    tests/browser/run.sh
    tests/api/run.sh
fi
