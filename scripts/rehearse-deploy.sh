#!/usr/bin/env bash
# A local rehearsal of a CodeDeploy in-place deployment, with no AWS: the real hook scripts, in CodeDeploy's order,
# against a staging root under a temp directory, with deploy/codedeploy/testing/fake-systemctl standing in for
# systemd (it runs the installed unit's ExecStart as a background process) and the embedded default stack
# (SQLite + local store) instead of RDS + S3.
#
#   1. package the revision (scripts/package.sh; the ONNX Runtime library already under target/ is reused)
#   2. deployment 1: ApplicationStop (no unit yet: must be tolerated), BeforeInstall, Install (the copy into
#      /opt/upshot/staging that the CodeDeploy agent does, done here), AfterInstall, ApplicationStart,
#      ValidateService (must pass)
#   3. deployment 2 of a new revision (same binary, new VERSION and release directory) while a client uploads
#      tests/fixtures/cat.jpg in a loop (loopback only; at most 60 s / 500 uploads). ApplicationStop runs from the
#      previous revision's scripts, as CodeDeploy does.
#
# What "no upload fails" means here: a single instance without a load balancer has a restart window in which
# connections are refused (CodeDeploy's traffic control drains the instance from the ALB instead). The client
# retries an attempt that got no HTTP response, with the same Idempotency-Key, until it gets one. Asserted:
# every upload that got a response got 201 (no 5xx, no other status), every upload eventually got a response,
# and afterwards every uploaded id is readable (metadata and file 200) from the new release.
# Also asserted: the hooks' exit codes, `current` switched to the new release, the previous release kept, the
# env file's mode, the service restarted, ValidateService idempotent, and ValidateService failing (non-zero) on
# a timeout when nothing answers.
#
# Usage: scripts/rehearse-deploy.sh [BINARY (target/release/upshot)]
# Needs root (the hooks chown to root); leaves nothing behind (UPSHOT_KEEP_REHEARSAL=1 keeps the temp dir).
set -euo pipefail

repo=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$repo"
binary=$(realpath -- "${1:-target/release/upshot}")
[ -x "$binary" ] || { echo "rehearse-deploy: $binary not found (build it, or pass target/debug/upshot)" >&2; exit 2; }
[ "$(id -u)" -eq 0 ] || { echo "rehearse-deploy: run as root (the hooks chown files to root)" >&2; exit 2; }

CLIENT_MAX_SECONDS=${UPSHOT_REHEARSAL_CLIENT_SECONDS:-60}
CLIENT_MAX_UPLOADS=${UPSHOT_REHEARSAL_CLIENT_UPLOADS:-500}
declare -A HOOK_TIMEOUT=([ApplicationStop]=90 [BeforeInstall]=60 [AfterInstall]=180 [ApplicationStart]=720 [ValidateService]=180)

work=$(mktemp -d "${TMPDIR:-/tmp}/upshot-rehearsal.XXXXXX")
root=$work/root
home=$root/opt/upshot
shim=$repo/deploy/codedeploy/testing/fake-systemctl
client_pid=''

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}
port=$(free_port)

export UPSHOT_ROOT=$root
export UPSHOT_SYSTEMCTL=$shim
export UPSHOT_FAKE_SYSTEMD_DIR=$root/run/fake-systemd
UPSHOT_USER=$(id -un)
UPSHOT_GROUP=$(id -gn)
export UPSHOT_USER UPSHOT_GROUP
export UPSHOT_ENV_SOURCE=file:$work/app.env
export UPSHOT_HEALTH_URL=http://127.0.0.1:$port
export UPSHOT_VALIDATE_TIMEOUT=${UPSHOT_VALIDATE_TIMEOUT:-120}
unset JOURNAL_STREAM

cleanup() {
    local rc=$?
    if [ -n "$client_pid" ]; then kill "$client_pid" 2>/dev/null || true; wait "$client_pid" 2>/dev/null || true; fi
    "$shim" stop upshot.service 2>/dev/null || true
    if [ "${UPSHOT_KEEP_REHEARSAL:-0}" = 1 ]; then
        echo "rehearse-deploy: kept $work" >&2
    else
        rm -rf -- "$work"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

passed=0
failed=0
check() { # check NAME COMMAND... : one line per assertion
    local name=$1
    shift
    if "$@"; then
        passed=$((passed + 1)); echo "PASS $name"
    else
        failed=$((failed + 1)); echo "FAIL $name"
    fi
}

now() { date +%s.%N; }
elapsed() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$1" "$(now)"; }

run_hook() { # run_hook NAME SCRIPT: as the agent does, bounded by the appspec timeout; output kept in a log
    local name=$1 script=$2 t0 rc=0
    t0=$(now)
    timeout "${HOOK_TIMEOUT[$name]}" bash "$script" >>"$work/hooks.log" 2>&1 || rc=$?
    echo "  $DEPLOYMENT_ID $name: exit $rc ($(elapsed "$t0") s)"
    if [ "$rc" -ne 0 ]; then tail -n 20 "$work/hooks.log" | sed 's/^/    /'; fi
    return "$rc"
}

deploy() { # deploy ARTIFACT DEPLOYMENT_ID PREVIOUS_ARTIFACT: one in-place deployment; returns non-zero on a failed hook
    local artifact=$1 previous=$3 t0
    export DEPLOYMENT_ID=$2
    t0=$(now)
    # ApplicationStop comes from the last deployed revision (here: the previous artifact).
    run_hook ApplicationStop "$previous/deploy/codedeploy/application-stop.sh" || return 1
    run_hook BeforeInstall "$artifact/deploy/codedeploy/before-install.sh" || return 1
    cp -a -- "$artifact/." "$home/staging/"   # Install: the agent copies `files` (appspec) into the destination
    run_hook AfterInstall "$artifact/deploy/codedeploy/after-install.sh" || return 1
    run_hook ApplicationStart "$artifact/deploy/codedeploy/application-start.sh" || return 1
    run_hook ValidateService "$artifact/deploy/codedeploy/validate-service.sh" || return 1
    echo "  $DEPLOYMENT_ID: deployed in $(elapsed "$t0") s"
}

service_pid() { cat "$UPSHOT_FAKE_SYSTEMD_DIR/upshot.service.pid" 2>/dev/null || true; }

# ------------------------------------------------------------------ package two revisions
echo "rehearse-deploy: staging root $root, service on 127.0.0.1:$port, binary $binary"
UPSHOT_VERSION="rehearsal-1 $(git describe --always --dirty 2>/dev/null || echo unknown)" \
    scripts/package.sh "$binary" "$work/artifact-1" >/dev/null 2>>"$work/package.log"
UPSHOT_VERSION="rehearsal-2 $(git describe --always --dirty 2>/dev/null || echo unknown)" \
    scripts/package.sh "$binary" "$work/artifact-2" >/dev/null 2>>"$work/package.log"
check "package: two revisions built" test -x "$work/artifact-2/bin/upshot" -a -f "$work/artifact-2/lib/libonnxruntime.so.1.31.1"

cat >"$work/app.env" <<ENV
# Rehearsal: the embedded default stack (SQLite + local files), loopback only, no AWS.
UPSHOT_DATA_DIR=$root/var/lib/upshot
ROCKET_ADDRESS=127.0.0.1
ROCKET_PORT=$port
UPSHOT_ORT_LIB=$home/current/lib/libonnxruntime.so.1.31.1
UPSHOT_SECRET_KEY=$(python3 -c 'import secrets; print(secrets.token_hex(24))')
ENV

# ------------------------------------------------------------------ deployment 1 (fresh instance)
echo "deployment 1 (first install):"
check "deployment 1: every hook exits 0, ValidateService sees /readyz 200" deploy "$work/artifact-1" d-REHEARSAL1 "$work/artifact-1"
pid1=$(service_pid)
check "deployment 1: current -> releases/d-REHEARSAL1" test "$(readlink "$home/current")" = releases/d-REHEARSAL1
check "deployment 1: env file is mode 0640" test "$(stat -c %a "$root/etc/upshot/upshot.env")" = 640
check "deployment 1: unit installed with the staging paths" grep -q "^ExecStart=$home/current/bin/upshot serve$" "$root/etc/systemd/system/upshot.service"

# ------------------------------------------------------------------ deployment 2 under load
echo "deployment 2 (new revision while uploading):"
python3 deploy/codedeploy/testing/upload-client.py "$UPSHOT_HEALTH_URL" tests/fixtures/cat.jpg "$work/stop-client" \
    "$work/client.json" "$CLIENT_MAX_SECONDS" "$CLIENT_MAX_UPLOADS" &
client_pid=$!
sleep 2
dep2_ok=0
deploy "$work/artifact-2" d-REHEARSAL2 "$work/artifact-1" || dep2_ok=$?
sleep 2   # a few uploads against the new release
touch "$work/stop-client"
client_rc=0
wait "$client_pid" || client_rc=$?
client_pid=''
check "deployment 2: every hook exits 0, ValidateService sees /readyz 200" test "$dep2_ok" -eq 0
pid2=$(service_pid)
check "deployment 2: current -> releases/d-REHEARSAL2 (new VERSION)" \
    test "$(readlink "$home/current")" = releases/d-REHEARSAL2 -a "$(cut -d' ' -f1 "$home/current/VERSION")" = rehearsal-2
check "deployment 2: previous release kept for a manual switch back" test -x "$home/releases/d-REHEARSAL1/bin/upshot"
check "deployment 2: the service was restarted (pid $pid1 -> $pid2)" test -n "$pid2" -a "$pid1" != "$pid2"
check "upload client finished" test "$client_rc" -eq 0 -a -f "$work/client.json"

if [ -f "$work/client.json" ]; then
    read -r uploads attempts created conn_errors retried unanswered readable others longest secs < <(python3 - "$work/client.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
s = r["statuses"]
others = sum(v for k, v in s.items() if k != "201")
print(r["uploads"], r["attempts"], s.get("201", 0), r["connection_errors"], r["retried_uploads"],
      r["unanswered_uploads"], r["readable"], others, r["longest_unanswered_s"], r["upload_seconds"])
for e in r["errors"][:10]:
    print("client error:", e, file=sys.stderr)
PY
    )
    echo "uploads: $uploads attempted ($attempts HTTP attempts), $created got 201, $others got another status, $unanswered never answered; $retried retried after $conn_errors connection errors (longest wait for an answer ${longest} s); $readable/$created readable after the deployment; ${secs} s of uploading"
    check "uploads: at least 5 made during the deployment" test "$uploads" -ge 5
    check "uploads: every answer was 201 (no 5xx, no other status)" test "$others" -eq 0 -a "$created" -eq "$uploads"
    check "uploads: every upload got an answer (after retries)" test "$unanswered" -eq 0
    check "uploads: every uploaded id readable afterwards (metadata + file 200)" test "$readable" -eq "$created"
fi

# ------------------------------------------------------------------ idempotency and failure paths
export DEPLOYMENT_ID=d-REHEARSAL2
check "ValidateService again: still 200 (idempotent)" run_hook ValidateService "$work/artifact-2/deploy/codedeploy/validate-service.sh"
dead_port=$(free_port)
validate_dead_port_fails() {
    ! UPSHOT_HEALTH_URL=http://127.0.0.1:$dead_port UPSHOT_VALIDATE_TIMEOUT=3 UPSHOT_VALIDATE_INTERVAL=1 \
        timeout 20 bash "$work/artifact-2/deploy/codedeploy/validate-service.sh" >>"$work/hooks.log" 2>&1
}
check "ValidateService fails (non-zero) within its timeout when nothing answers" validate_dead_port_fails
t0=$(now)
check "ApplicationStop: graceful stop (SIGTERM) of the running service" run_hook ApplicationStop "$work/artifact-2/deploy/codedeploy/application-stop.sh"
service_inactive() { ! "$shim" is-active --quiet upshot.service; }
check "ApplicationStop: stopped within TimeoutStopSec ($(elapsed "$t0") s)" service_inactive

echo "rehearsal: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
