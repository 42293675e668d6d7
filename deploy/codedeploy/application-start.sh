#!/usr/bin/env bash
# CodeDeploy ApplicationStart: migrate the database with the new release (`upshot migrate` takes a PostgreSQL
# advisory lock, so instances deploying one after another never race, and provisions the service's own role), switch `current` to the new release
# atomically (rename of a symlink), start the service, and keep the last UPSHOT_KEEP_RELEASES releases.
set -euo pipefail
HOOK_NAME=ApplicationStart
# shellcheck source-path=SCRIPTDIR source=common.sh
. "$(dirname -- "${BASH_SOURCE[0]}")/common.sh"

[ -f "$UPSHOT_PENDING" ] || die "no pending release ($UPSHOT_PENDING): AfterInstall did not run"
id=$(cat -- "$UPSHOT_PENDING")
release=$UPSHOT_RELEASES/$id
[ -x "$release/bin/upshot" ] || die "$release/bin/upshot missing"
[ -f "$UPSHOT_ENV_FILE" ] || die "$UPSHOT_ENV_FILE missing"

[ -f "$UPSHOT_MIGRATE_ENV_FILE" ] || die "$UPSHOT_MIGRATE_ENV_FILE missing"
# As root with the master's credentials (readable by root alone): the migration owns the tables and grants the
# service's role what it uses, nothing more.
log "migrating the database with release $id"
run_with_service_env root "$release" "$UPSHOT_MIGRATE_ENV_FILE" -- \
    timeout "${UPSHOT_MIGRATE_TIMEOUT:-600}" "$release/bin/upshot" migrate || die "upshot migrate failed"

ln -sfn -- "releases/$id" "$UPSHOT_CURRENT.new"
mv -T -- "$UPSHOT_CURRENT.new" "$UPSHOT_CURRENT"
log "current -> releases/$id"

systemctl_ enable "$UPSHOT_UNIT"
systemctl_ restart "$UPSHOT_UNIT"
rm -f -- "$UPSHOT_PENDING"

# Prune: keep the newest releases (the current one always), for a quick manual switch back.
keep=$UPSHOT_KEEP_RELEASES
current_target=$(readlink -f -- "$UPSHOT_CURRENT")
n=0
while IFS= read -r dir; do
    [ -n "$dir" ] || continue
    n=$((n + 1))
    if [ "$n" -gt "$keep" ] && [ "$(readlink -f -- "$dir")" != "$current_target" ]; then
        log "removing old release $(basename -- "$dir")"
        rm -rf -- "$dir"
    fi
done < <(find "$UPSHOT_RELEASES" -mindepth 1 -maxdepth 1 -type d -printf '%T@ %p\n' | sort -rn | cut -d' ' -f2-)
log "started $UPSHOT_UNIT"
