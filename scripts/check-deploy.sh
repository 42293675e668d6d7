#!/usr/bin/env bash
# Offline checks of the deployment files (no AWS account, no network once the tools are installed):
#
#   cfn-lint        deploy/cloudformation/*.yaml, clean (no error, warning or informational finding)
#   checkov         deploy/cloudformation/upshot.yaml: no failed check; skips only in the template, with reasons
#   ShellCheck      every shell script: scripts/*.sh, tests/*/run.sh, tests/support/*.sh,
#                   deploy/codedeploy/*.sh, .ci/run
#   systemd         `systemd-analyze verify` of deploy/systemd/upshot.service, silent. verify needs ExecStart to exist,
#                   so a temp copy is verified with /opt/upshot rewritten to a temp tree holding a staged binary
#                   (target/release/upshot or target/debug/upshot when built, else a stub executable)
#   appspec         check-jsonschema with deploy/schemas/appspec.schema.json
#   buildspec       check-jsonschema with deploy/schemas/buildspec.schema.json
#   references      every file appspec.yml's hooks and buildspec.yml's commands name exists (and is executable);
#                   deploy/cloudwatch/agent.json is valid JSON. (That the archive holds what the hooks read is
#                   proven by scripts/rehearse-deploy.sh, which deploys the packaged archive.)
#   contract        scripts/deploy-contract.py: liveness health checks, no stop alarm a broken fleet raises, the
#                   running revision never expires, CodeDeploy may launch from the template, /metrics not public,
#                   a template CloudFormation accepts, a pipeline that updates the stack before CodeDeploy
#   status          scripts/deploy-status.sh against canned AWS answers (deploy/codedeploy/testing/fake-aws-status):
#                   every part of a deployment's state is shown, a failed hook with its script's output
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
    for f in scripts/*.sh tests/*/run.sh tests/support/*.sh deploy/codedeploy/*.sh .ci/run; do
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

check_status() {
    local bin=$work/status-bin out=$work/status.txt expect
    install -d "$bin"
    ln -sf "$repo/deploy/codedeploy/testing/fake-aws-status" "$bin/aws"
    PATH="$bin:$PATH" FAKE_AWS_PYTHON="$venv/bin/python" FAKE_AWS_CALLS="$work/status.calls" \
        scripts/deploy-status.sh upshot-prod >"$out" 2>&1 || { cat "$out"; return 1; }
    for expect in 'stage	Infrastructure	Succeeded' 'ValidateService	Failed	ScriptFailed' 'Target.ResponseCodeMismatch'; do
        grep -qF -- "$expect" "$out" || { cat "$out"; echo "the status lacks: $expect"; return 1; }
    done
    echo "scripts/deploy-status.sh shows the stack, pipeline, deployment, targets and logs ($(wc -l <"$work/status.calls") AWS calls)"
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
run status check_status
run build-stage check_build_stage

if [ "$failed" -gt 0 ]; then
    echo "failed: ${failures[*]}"
fi
echo "checks: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
