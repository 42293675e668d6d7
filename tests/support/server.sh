# shellcheck shell=bash
# Sourced by the test runners that need the real server (tests/browser/run.sh, tests/api/run.sh): starts
# `upshot serve` on a free loopback port with a throwaway data directory, waits for /readyz, and stops it on
# exit (printing the end of its log when the runner failed). Sets TEST_SERVER_BASE and TEST_SERVER_DATA_DIR.
#
#   start_test_server NAME [VAR=value ...]   # NAME names the temp directory; the rest is the server's env
#
# Needs UPSHOT_BIN (default target/debug/upshot) and UPSHOT_ORT_LIB (default: the fetched library).

test_server_pid=""
test_server_dir=""

stop_test_server() {
  local status=$?
  if [[ -n "$test_server_pid" ]] && kill -0 "$test_server_pid" 2>/dev/null; then
    kill "$test_server_pid" 2>/dev/null || true
    for _ in $(seq 1 50); do
      kill -0 "$test_server_pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -9 "$test_server_pid" 2>/dev/null || true
    wait "$test_server_pid" 2>/dev/null || true
  fi
  if [[ $status -ne 0 && -f "$test_server_dir/server.log" ]]; then
    echo "last server log lines:" >&2
    tail -n 40 "$test_server_dir/server.log" >&2 || true
  fi
  [[ -n "$test_server_dir" ]] && rm -rf "$test_server_dir"
  exit "$status"
}

start_test_server() {
  local name=$1
  shift
  local bin="${UPSHOT_BIN:-target/debug/upshot}"
  if [[ ! -x "$bin" ]]; then
    echo "$bin not found; build it with: cargo build" >&2
    exit 1
  fi
  export UPSHOT_ORT_LIB="${UPSHOT_ORT_LIB:-target/onnxruntime/libonnxruntime.so.1.31.1}"
  local port
  port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
  test_server_dir="$(mktemp -d -t "upshot-$name.XXXXXX")"
  trap stop_test_server EXIT
  trap 'exit 130' INT TERM
  TEST_SERVER_BASE="http://127.0.0.1:$port"
  TEST_SERVER_DATA_DIR="$test_server_dir/data"
  env UPSHOT_DATA_DIR="$TEST_SERVER_DATA_DIR" ROCKET_PORT="$port" ROCKET_ADDRESS=127.0.0.1 \
    UPSHOT_PUBLIC_URL="$TEST_SERVER_BASE" UPSHOT_LOG=warn "$@" "$bin" serve >"$test_server_dir/server.log" 2>&1 &
  test_server_pid=$!
  for _ in $(seq 1 120); do
    if ! kill -0 "$test_server_pid" 2>/dev/null; then
      echo "the server exited during start-up" >&2
      exit 1
    fi
    curl -fs -o /dev/null --max-time 2 "$TEST_SERVER_BASE/readyz" 2>/dev/null && return 0
    sleep 0.5
  done
  echo "$TEST_SERVER_BASE/readyz did not answer 200 within 60 s" >&2
  exit 1
}
