#!/usr/bin/env bash
# CodeDeploy BeforeInstall: the service account and directories (created when missing), and an empty staging
# directory for CodeDeploy to copy the revision into (appspec.yml: files -> /opt/upshot/staging).
set -euo pipefail
HOOK_NAME=BeforeInstall
# shellcheck source-path=SCRIPTDIR source=common.sh
. "$(dirname -- "${BASH_SOURCE[0]}")/common.sh"

if ! getent group "$UPSHOT_GROUP" >/dev/null; then
    log "creating group $UPSHOT_GROUP"
    groupadd --system "$UPSHOT_GROUP"
fi
if ! getent passwd "$UPSHOT_USER" >/dev/null; then
    log "creating user $UPSHOT_USER"
    useradd --system --gid "$UPSHOT_GROUP" --home-dir /var/lib/upshot --no-create-home \
        --shell /sbin/nologin --comment "Upshot service" "$UPSHOT_USER"
fi

install -d -m 0755 "$UPSHOT_HOME" "$UPSHOT_RELEASES"
install -d -m 0750 -o root -g "$UPSHOT_GROUP" "$UPSHOT_ETC_DIR"
install -d -m 0750 -o "$UPSHOT_USER" -g "$UPSHOT_GROUP" "$UPSHOT_STATE_DIR"
install -d -m 0750 "$UPSHOT_LOG_DIR"
install -d -m 0755 "$UPSHOT_UNIT_DIR"

# Whatever a failed earlier deployment left in staging goes; CodeDeploy then copies into an empty directory.
rm -rf -- "$UPSHOT_STAGING"
install -d -m 0755 "$UPSHOT_STAGING"
log "ready: $UPSHOT_HOME (user $UPSHOT_USER)"
