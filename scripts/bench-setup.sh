# Sourced by the benchmarks against a running server (load-bench.sh, abuse-bench.sh), from the repository's
# root: installs what they need, picks the binary (UPSHOT_BIN, or a release build), starts PostgreSQL and the
# S3/SNS/SQS endpoint in a throwaway state directory removed on exit, and sets the AWS environment.
# Defines: binary, state, venv, server_pid and stop_server.
# shellcheck shell=bash
repo=$(pwd)
scripts/install-deps.sh
UPSHOT_ORT_LIB=$(scripts/fetch-onnxruntime.sh)
export UPSHOT_ORT_LIB
binary=${UPSHOT_BIN:-}
if [ -z "$binary" ]; then
    cargo build --release --locked >&2
    binary=$repo/target/release/upshot
fi

state=$(mktemp -d -t upshot-bench.XXXXXX)
server_pid=''
stop_server() {
    if [ -n "$server_pid" ]; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
        server_pid=''
    fi
}
bench_cleanup() {
    stop_server
    scripts/test-services.sh stop "$state" || true
    rm -rf "$state"
}
trap bench_cleanup EXIT
eval "$(scripts/test-services.sh start "$state")"
# shellcheck disable=SC2034 # used by the scripts that source this one
venv=${UPSHOT_TOOLS_DIR:-$repo/target/tools}/venv

export AWS_ACCESS_KEY_ID=upshot-bench AWS_SECRET_ACCESS_KEY=upshot-bench AWS_REGION=us-east-1
export AWS_EC2_METADATA_DISABLED=true
unset AWS_PROFILE AWS_SESSION_TOKEN
