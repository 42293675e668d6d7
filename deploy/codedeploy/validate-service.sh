#!/usr/bin/env bash
# CodeDeploy ValidateService: wait until GET $UPSHOT_HEALTH_URL/readyz answers 200 (database, store and models
# ready), at most UPSHOT_VALIDATE_TIMEOUT seconds (default 120). A timeout exits 1, which fails the deployment
# on this instance and (auto-rollback) redeploys the last good revision. Prints the last answer either way.
set -euo pipefail
HOOK_NAME=ValidateService
# shellcheck source-path=SCRIPTDIR source=common.sh
. "$(dirname -- "${BASH_SOURCE[0]}")/common.sh"

timeout_s=${UPSHOT_VALIDATE_TIMEOUT:-120}
interval=${UPSHOT_VALIDATE_INTERVAL:-2}
url=${UPSHOT_HEALTH_URL%/}/readyz
body=$(mktemp)
trap 'rm -f -- "$body"' EXIT

deadline=$((SECONDS + timeout_s))
code=000
attempts=0
while :; do
    attempts=$((attempts + 1))
    code=$(curl -s -o "$body" -w '%{http_code}' --max-time 5 "$url" 2>/dev/null) || code=${code:-000}
    if [ "$code" = 200 ]; then
        log "ready after $attempts attempt(s): $url -> 200 $(head -c 400 "$body")"
        exit 0
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
        break
    fi
    sleep "$interval"
done
log "not ready within ${timeout_s}s ($attempts attempts): last answer $code $(head -c 400 "$body" 2>/dev/null)"
if [ -f "$UPSHOT_UNIT_FILE" ]; then
    systemctl_ status --no-pager "$UPSHOT_UNIT" >&2 || true
fi
exit 1
