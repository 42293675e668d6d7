#!/usr/bin/env bash
# Offline checks of the deployment files (no AWS account, no network once the tools are installed):
#
#   cfn-lint        deploy/cloudformation/*.yaml, clean (no error, warning or informational finding)
#   checkov         deploy/cloudformation/upshot.yaml: no failed check; skips only in the template, with reasons
#   shellcheck      every shell script: scripts/*.sh, tests/*/run.sh, tests/support/*.sh, deploy/codedeploy/*.sh, the rehearsal's fake systemctl, .ci/run
#   systemd         `systemd-analyze verify` of deploy/systemd/upshot.service, silent. verify needs ExecStart to exist,
#                   so a temp copy is verified with /opt/upshot rewritten to a temp tree holding a staged binary
#                   (target/release/upshot or target/debug/upshot when built, else a stub executable)
#   appspec         check-jsonschema with deploy/schemas/appspec.schema.json
#   buildspec       check-jsonschema with deploy/schemas/buildspec.schema.json
#   references      every file appspec.yml's hooks and buildspec.yml's commands name exists (and is executable),
#                   and every file scripts/package.sh copies exists; deploy/cloudwatch/agent.json is valid JSON
#   contract        scripts/deploy-contract.py: liveness health checks, no stop alarm a broken fleet raises, the
#                   running revision never expires, CodeDeploy may launch from the template, /metrics not public
#   env-file        AfterInstall, run against a fake AWS CLI (deploy/codedeploy/testing/fake-aws), writes every
#                   setting production needs: database, bucket, topic, secret key, admin key, public URL
#   build-stage     buildspec.yml's build commands run with apt-get, apt, dpkg and the tools only they install here
#                   (shellcheck, systemd-analyze, chromium) failing on PATH: the CodeBuild image is Amazon Linux.
#                   cargo is recorded instead of run, since the suite has just built and tested the same tree
#
# Tools: cfn-lint, checkov and check-jsonschema (pinned below) go into ${UPSHOT_TOOLS_DIR:-target/tools}/deploy-venv
# when missing; shellcheck (and systemd for systemd-analyze) from Debian's archive when missing.
# Prints one line per check and `checks: N passed, M failed`; exits non-zero on any failure.
set -euo pipefail

CFN_LINT_VERSION=1.58.0
CHECKOV_VERSION=3.3.30
CHECK_JSONSCHEMA_VERSION=0.39.0

repo=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$repo"
tools=${UPSHOT_TOOLS_DIR:-$repo/target/tools}
venv=$tools/deploy-venv

log() { printf 'check-deploy: %s\n' "$*" >&2; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

apt_install() {
    log "apt-get install $*"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >&2
}

have_pinned() {
    "$venv/bin/python" - "$CFN_LINT_VERSION" "$CHECKOV_VERSION" "$CHECK_JSONSCHEMA_VERSION" <<'PY' 2>/dev/null
import importlib.metadata as m, sys
want = dict(zip(["cfn-lint", "checkov", "check-jsonschema"], sys.argv[1:]))
sys.exit(0 if all(m.version(k) == v for k, v in want.items()) else 1)
PY
}

ensure_tools() {
    if [ ! -x "$venv/bin/python" ] || ! have_pinned; then
        log "installing cfn-lint==$CFN_LINT_VERSION checkov==$CHECKOV_VERSION check-jsonschema==$CHECK_JSONSCHEMA_VERSION into $venv"
        mkdir -p "$tools"
        if [ ! -x "$venv/bin/pip" ]; then
            python3 -m venv "$venv" >&2 2>/dev/null || { rm -rf "$venv"; apt_install python3-venv; python3 -m venv "$venv" >&2; }
        fi
        "$venv/bin/pip" install -q --disable-pip-version-check \
            "cfn-lint==$CFN_LINT_VERSION" "checkov==$CHECKOV_VERSION" "check-jsonschema==$CHECK_JSONSCHEMA_VERSION" >&2
    fi
    command -v shellcheck >/dev/null 2>&1 || apt_install shellcheck
    command -v systemd-analyze >/dev/null 2>&1 || apt_install systemd
}

work=$(mktemp -d "${TMPDIR:-/tmp}/check-deploy.XXXXXX")
trap 'rm -rf -- "$work"' EXIT

passed=0
failed=0
failures=()
# run NAME CMD...: runs a check with its output in a file; prints one line; the output on failure.
run() {
    local name=$1 out=$work/$1.out summary
    shift
    if "$@" >"$out" 2>&1; then
        passed=$((passed + 1))
        summary=$(tail -n 1 "$out")
        printf 'PASS %-11s %s\n' "$name" "$summary"
    else
        failed=$((failed + 1))
        failures+=("$name")
        printf 'FAIL %-11s\n' "$name"
        sed 's/^/    /' "$out"
    fi
}

check_cfn_lint() {
    local t
    "$venv/bin/cfn-lint" deploy/cloudformation/*.yaml
    for t in deploy/cloudformation/*.yaml; do printf '%s ' "$t"; done
    echo "clean (cfn-lint $CFN_LINT_VERSION)"
}

check_checkov() {
    local out=$work/checkov.json rc=0
    "$venv/bin/checkov" -f deploy/cloudformation/upshot.yaml --framework cloudformation --compact \
        --skip-download --quiet >"$work/checkov.txt" 2>&1 || rc=$?
    "$venv/bin/checkov" -f deploy/cloudformation/upshot.yaml --framework cloudformation \
        --skip-download --output json >"$out" 2>/dev/null || true
    cat "$work/checkov.txt"
    python3 - "$out" "$rc" <<'PY'
import json, sys
data = json.load(open(sys.argv[1]))
if isinstance(data, list):
    data = data[0]
res = data["results"]
skipped = res.get("skipped_checks", [])
failed = res.get("failed_checks", [])
missing_reason = [c["check_id"] for c in skipped if not (c.get("check_result", {}).get("suppress_comment") or "").strip()]
for c in failed:
    print("failed:", c["check_id"], c["resource"])
if missing_reason:
    print("skips without a reason:", ", ".join(missing_reason))
ids = sorted({c["check_id"] for c in skipped})
print(f"checkov: {len(res.get('passed_checks', []))} passed, {len(failed)} failed, {len(skipped)} skipped ({', '.join(ids)})")
sys.exit(1 if failed or missing_reason or sys.argv[2] != "0" else 0)
PY
}

shell_scripts() {
    local f
    for f in scripts/*.sh tests/*/run.sh tests/support/*.sh deploy/codedeploy/*.sh deploy/codedeploy/testing/fake-systemctl .ci/run; do
        [ -f "$f" ] && printf '%s\n' "$f"
    done
}

check_shellcheck() {
    local -a files
    mapfile -t files < <(shell_scripts)
    shellcheck -x "${files[@]}"
    echo "${#files[@]} scripts clean ($(shellcheck --version | sed -n 's/^version: //p'))"
}

check_systemd() {
    local stage=$work/systemd bin out
    install -d "$stage/opt/upshot/releases/check/bin" "$stage/etc/upshot"
    ln -sfn releases/check "$stage/opt/upshot/current"
    bin=$stage/opt/upshot/releases/check/bin/upshot
    if [ -x target/release/upshot ]; then
        ln -s "$repo/target/release/upshot" "$bin"
    elif [ -x target/debug/upshot ]; then
        ln -s "$repo/target/debug/upshot" "$bin"
    else
        printf '#!/bin/sh\nexit 0\n' >"$bin"
        chmod 0755 "$bin"
    fi
    : >"$stage/etc/upshot/upshot.env"
    sed -e "s#/opt/upshot#$stage/opt/upshot#g" -e "s#/etc/upshot/upshot.env#$stage/etc/upshot/upshot.env#g" \
        deploy/systemd/upshot.service >"$stage/upshot.service"
    install -d "$stage/opt/upshot/releases/check/deploy/codedeploy"
    printf '#!/bin/sh\nexit 0\n' >"$stage/opt/upshot/releases/check/deploy/codedeploy/refresh-db-password.sh"
    chmod 0755 "$stage/opt/upshot/releases/check/deploy/codedeploy/refresh-db-password.sh"
    sed -e "s#/opt/upshot#$stage/opt/upshot#g" deploy/systemd/upshot-db-password.service >"$stage/upshot-db-password.service"
    cp deploy/systemd/upshot-db-password.timer "$stage/upshot-db-password.timer"
    sed -e "s#/opt/upshot#$stage/opt/upshot#g" -e "s#/etc/upshot/upshot.env#$stage/etc/upshot/upshot.env#g" \
        deploy/systemd/upshot-reconcile.service >"$stage/upshot-reconcile.service"
    cp deploy/systemd/upshot-reconcile.timer "$stage/upshot-reconcile.timer"
    out=$(systemd-analyze verify "$stage/upshot.service" "$stage/upshot-db-password.service" \
        "$stage/upshot-db-password.timer" "$stage/upshot-reconcile.service" "$stage/upshot-reconcile.timer" 2>&1) ||
        { echo "$out"; return 1; }
    [ -z "$out" ] || { echo "$out"; return 1; }
    echo "deploy/systemd/*.service and *.timer verify silently ($(systemd-analyze --version | head -n 1))"
}

check_appspec() {
    "$venv/bin/check-jsonschema" --schemafile deploy/schemas/appspec.schema.json appspec.yml
    echo "appspec.yml matches deploy/schemas/appspec.schema.json"
}

check_buildspec() {
    "$venv/bin/check-jsonschema" --schemafile deploy/schemas/buildspec.schema.json buildspec.yml
    echo "buildspec.yml matches deploy/schemas/buildspec.schema.json"
}

check_references() {
    "$venv/bin/python" - <<'PY'
import json, os, re, sys
import yaml

bad = []
n = 0
def need(path, executable=False, why=""):
    global n
    n += 1
    if not os.path.exists(path):
        bad.append(f"{why}: {path} does not exist")
    elif executable and not os.access(path, os.X_OK):
        bad.append(f"{why}: {path} is not executable")

app = yaml.safe_load(open("appspec.yml"))
for hook, entries in app.get("hooks", {}).items():
    for e in entries:
        need(e["location"], True, f"appspec.yml {hook}")
need("deploy/systemd/upshot.service", why="after-install.sh")
need("deploy/cloudwatch/agent.json", why="after-install.sh")

build = yaml.safe_load(open("buildspec.yml"))
for phase, body in build["phases"].items():
    for cmd in body["commands"]:
        for ref in re.findall(r"(?<![\w/.$-])((?:scripts|deploy)/[\w./-]+)", cmd):
            need(ref, ref.endswith(".sh"), f"buildspec.yml {phase}")

# What scripts/package.sh copies into the revision.
for p in ["templates", "static", "models", "Rocket.toml", "appspec.yml", "README.md", "scripts/fetch-onnxruntime.sh"]:
    need(p, why="scripts/package.sh")
json.load(open("deploy/cloudwatch/agent.json"))
for s in ("deploy/schemas/appspec.schema.json", "deploy/schemas/buildspec.schema.json"):
    json.load(open(s))

for b in bad:
    print(b)
print(f"{n} referenced files present; agent.json and the schemas are valid JSON")
sys.exit(1 if bad else 0)
PY
}

check_contract() {
    "$venv/bin/python" scripts/deploy-contract.py deploy/cloudformation/upshot.yaml
}

check_env_file() {
    local root=$work/env-root staging state=$work/fake-aws.json env
    staging=$root/opt/upshot/staging
    # What BeforeInstall leaves: the staging copy of the revision and the releases directory.
    install -d "$staging/bin" "$staging/lib" "$root/opt/upshot/releases" "$root/etc/upshot" "$root/etc/systemd/system"
    cp -R deploy "$staging/deploy"
    printf '#!/bin/sh\nexit 0\n' >"$staging/bin/upshot"
    chmod 0755 "$staging/bin/upshot"
    : >"$staging/lib/libonnxruntime.so.1.31.1"
    printf 'UPSHOT_ENVIRONMENT=prod\nAWS_REGION=eu-west-1\n' >"$root/etc/upshot/deploy.conf"
    cat >"$state" <<'JSON'
{"parameters": {
  "/upshot/prod/s3-bucket": "upshot-images-prod", "/upshot/prod/sns-topic-arn": "arn:aws:sns:eu-west-1:123456789012:uploads",
  "/upshot/prod/db-endpoint": "db.internal:5432", "/upshot/prod/db-name": "upshot",
  "/upshot/prod/db-secret-arn": "arn:db", "/upshot/prod/app-secret-arn": "arn:app",
  "/upshot/prod/admin-secret-arn": "arn:admin", "/upshot/prod/public-url": "https://upshot.example.com",
  "/upshot/prod/upload-queue-url": "https://sqs.eu-west-1.amazonaws.com/123456789012/upshot-uploads",
  "/upshot/prod/log-group": "/upshot/prod/app"},
 "secrets": {"arn:db": "{\"username\": \"upshot\", \"password\": \"p@ss word\"}",
  "arn:app": "app-secret-key-0123456789-0123456789-0123456789", "arn:admin": "admin-key-0123456789-0123456789"}}
JSON
    printf '#!/bin/sh\necho "$*" >>"%s"\n' "$work/systemctl.calls" >"$work/systemctl"
    chmod 0755 "$work/systemctl"
    local hook_env=(UPSHOT_ROOT="$root" UPSHOT_AWS=deploy/codedeploy/testing/fake-aws FAKE_AWS_STATE="$state"
        UPSHOT_SYSTEMCTL="$work/systemctl" UPSHOT_USER="$(id -un)" UPSHOT_GROUP="$(id -gn)")
    env "${hook_env[@]}" UPSHOT_ENV_SOURCE=aws DEPLOYMENT_ID=d-CHECK deploy/codedeploy/after-install.sh || return 1
    env=$root/etc/upshot/upshot.env
    for line in ROCKET_PROFILE=aws UPSHOT_PUBLIC_URL=https://upshot.example.com \
        UPSHOT_ADMIN_API_KEY=admin-key-0123456789-0123456789 UPSHOT_S3_BUCKET=upshot-images-prod \
        UPSHOT_SECRET_KEY=app-secret-key-0123456789-0123456789-0123456789 \
        UPSHOT_UPLOAD_QUEUE_URL=https://sqs.eu-west-1.amazonaws.com/123456789012/upshot-uploads \
        "UPSHOT_DATABASE_URL=postgres://upshot@db.internal:5432/upshot?sslmode=require&passfile=${root//\//%2F}%2Fetc%2Fupshot%2Fpgpass"; do
        grep -qxF -- "$line" "$env" || { echo "the environment file lacks ${line%%=*} (or has another value)"; return 1; }
    done
    # The password lives in libpq's password file, readable by the service alone, and the timer refreshes it.
    grep -qxF '*:*:*:*:p@ss word' "$root/etc/upshot/pgpass" || { echo "the password file is wrong"; return 1; }
    [ "$(stat -c %a "$root/etc/upshot/pgpass")" = 600 ] || { echo "the password file is not 0600"; return 1; }
    grep -qx 'enable upshot-db-password.timer' "$work/systemctl.calls" || { echo "the refresh timer is not enabled"; return 1; }
    grep -qx 'enable upshot-reconcile.timer' "$work/systemctl.calls" || { echo "the reconcile timer is not enabled"; return 1; }
    python3 - "$state" <<'PY'
import json, sys
state = json.load(open(sys.argv[1]))
state["secrets"]["arn:db"] = json.dumps({"username": "upshot", "password": "rotated:pass"})
json.dump(state, open(sys.argv[1], "w"))
PY
    env "${hook_env[@]}" deploy/codedeploy/refresh-db-password.sh || return 1
    grep -qxF '*:*:*:*:rotated\:pass' "$root/etc/upshot/pgpass" || { echo "the refresh did not write the rotated password"; return 1; }
    echo "AfterInstall writes the production environment ($(grep -c = "$env") settings) and the password file; the timer's refresh follows a rotation"
}

check_build_stage() {
    local shims=$work/no-apt calls=$work/no-apt.calls cmd
    if [ -n "${UPSHOT_CHECKING_BUILD_STAGE:-}" ]; then
        echo "the build stage runs the deployment checks, which need Debian's tools"
        return 1
    fi
    install -d "$shims"
    # Debian's package tools, and what only they install here, are not on the CodeBuild image.
    for cmd in apt-get apt apt-cache dpkg shellcheck systemd-analyze chromium chromedriver; do
        printf '#!/bin/sh\necho "%s $*" >>"%s"\necho "%s is not on the CodeBuild image" >&2\nexit 127\n' \
            "$cmd" "$calls" "$cmd" >"$shims/$cmd"
    done
    printf '#!/bin/sh\necho "cargo $*" >>"%s.cargo"\n' "$calls" >"$shims/cargo"
    chmod 0755 "$shims"/*
    "$venv/bin/python" - >"$work/build-stage.sh" <<'PY'
import yaml
spec = yaml.safe_load(open("buildspec.yml"))
print("set -e")
for name, value in spec.get("env", {}).get("variables", {}).items():
    print(f"export {name}={value!r}")
for phase in ("pre_build", "build"):
    for command in spec["phases"][phase]["commands"]:
        print(command)
PY
    # A HOME of its own, so the buildspec's `PATH=$HOME/.cargo/bin:$PATH` cannot put the real cargo first.
    install -d "$work/build-home"
    UPSHOT_CHECKING_BUILD_STAGE=1 HOME=$work/build-home PATH=$shims:$PATH \
        bash "$work/build-stage.sh" >"$work/build-stage.log" 2>&1 || {
        tail -n 30 "$work/build-stage.log"
        [ -f "$calls" ] && cat "$calls"
        return 1
    }
    [ ! -f "$calls" ] || { echo "the build stage called what the image does not have:"; cat "$calls"; return 1; }
    echo "buildspec pre_build and build ran without apt ($(wc -l <"$calls.cargo") cargo commands recorded)"
}

ensure_tools
run cfn-lint check_cfn_lint
run checkov check_checkov
run shellcheck check_shellcheck
run systemd check_systemd
run appspec check_appspec
run buildspec check_buildspec
run references check_references
run contract check_contract
run env-file check_env_file
run build-stage check_build_stage

if [ "$failed" -gt 0 ]; then
    echo "failed: ${failures[*]}"
fi
echo "checks: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
