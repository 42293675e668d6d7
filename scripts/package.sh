#!/usr/bin/env bash
# Builds the deployable artifact (the CodeDeploy revision) from the repository:
#
#   OUT/appspec.yml                    CodeDeploy's description (hooks under deploy/codedeploy/)
#   OUT/bin/upshot                     the binary (BINARY), refused if `ldd` names more than the C runtime
#   OUT/lib/libonnxruntime.so.1.31.1   ONNX Runtime (scripts/fetch-onnxruntime.sh, sha256-checked)
#   OUT/Rocket.toml, templates/, static/, models/, README.md
#   OUT/deploy/codedeploy/*.sh         hook scripts (not the testing/ shim)
#   OUT/deploy/systemd/*.{service,timer}, OUT/deploy/cloudwatch/agent.json
#   OUT/VERSION                        UPSHOT_VERSION, else `git describe`, else CodeBuild's source version
# Migrations are embedded in the binary.
#
# Usage: scripts/package.sh [BINARY (target/release/upshot)] [OUT_DIR (dist)]
# Idempotent: OUT_DIR is rebuilt from scratch. An already fetched library is reused (UPSHOT_ORT_LIB_SRC, default
# target/onnxruntime/libonnxruntime.so.1.31.1); its sha256 is checked either way. Prints OUT_DIR.
set -euo pipefail

repo=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)
binary=${1:-$repo/target/release/upshot}
out=${2:-$repo/dist}
ort_name=libonnxruntime.so.1.31.1
ort_src=${UPSHOT_ORT_LIB_SRC:-$repo/target/onnxruntime/$ort_name}

log() { printf 'package: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

{ [ -f "$binary" ] && [ -x "$binary" ]; } || die "binary $binary not found (build it first)"
mkdir -p -- "$out"
out=$(cd -- "$out" && pwd -P)
case $out in
    / | "$repo" | "$HOME") die "refusing to use $out as the output directory" ;;
esac

# Rebuild from scratch (idempotent).
find "$out" -mindepth 1 -maxdepth 1 -exec rm -rf -- {} +
install -d "$out/bin" "$out/lib" "$out/deploy/codedeploy" "$out/deploy/systemd" "$out/deploy/cloudwatch"

cp -- "$binary" "$out/bin/upshot"
chmod 0755 "$out/bin/upshot"
# The instances have the C runtime and little else (no libpq on Amazon Linux): refuse a binary that needs more.
extra=$(ldd "$out/bin/upshot" | grep -vE '^\s*(linux-vdso\.so|/lib64/ld-linux|lib(c|m|gcc_s|dl|pthread|rt)\.so)' || true)
[ -z "$extra" ] || die "bin/upshot needs libraries beyond the C runtime, which the instances may lack: $extra"

if [ -f "$ort_src" ]; then
    cp -- "$ort_src" "$out/lib/$ort_name"
fi
UPSHOT_ORT_DIR=$out/lib "$repo/scripts/fetch-onnxruntime.sh" >/dev/null

cd "$repo"
cp -R templates static models "$out/"
cp Rocket.toml appspec.yml README.md "$out/"
for f in deploy/codedeploy/*.sh; do
    install -m 0755 "$f" "$out/$f"
done
# Every unit and the agent's configuration: the hooks install them from the release, so one left out would fail
# AfterInstall on every instance.
for f in deploy/systemd/*.service deploy/systemd/*.timer deploy/cloudwatch/*.json; do
    install -m 0644 "$f" "$out/$f"
done

version=${UPSHOT_VERSION:-}
if [ -z "$version" ] && git -C "$repo" rev-parse --git-dir >/dev/null 2>&1; then
    version=$(git -C "$repo" describe --always --dirty --tags 2>/dev/null || true)
fi
version=${version:-${CODEBUILD_RESOLVED_SOURCE_VERSION:-unknown}}
printf '%s\n' "$version" >"$out/VERSION"

log "packaged $version into $out ($(du -sh "$out" | cut -f1))"
printf '%s\n' "$out"
