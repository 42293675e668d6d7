#!/usr/bin/env bash
# CodeDeploy ApplicationStop (runs the scripts of the previous revision). CodeDeploy's traffic control has
# already deregistered the instance from the target group and waited for the deregistration delay; this stops
# the service gracefully: `systemctl stop` sends SIGTERM and waits up to TimeoutStopSec (35 s: Rocket's
# grace 20 s + mercy 5 s + margin) for in-flight requests. A first deployment has no unit: nothing to stop.
set -euo pipefail
HOOK_NAME=ApplicationStop
# shellcheck source-path=SCRIPTDIR source=common.sh
. "$(dirname -- "${BASH_SOURCE[0]}")/common.sh"

if [ ! -f "$UPSHOT_UNIT_FILE" ]; then
    log "no $UPSHOT_UNIT installed (first deployment): nothing to stop"
    exit 0
fi
if systemctl_ is-active --quiet "$UPSHOT_UNIT"; then
    log "stopping $UPSHOT_UNIT"
    systemctl_ stop "$UPSHOT_UNIT"
else
    log "$UPSHOT_UNIT is not running"
fi
if systemctl_ is-active --quiet "$UPSHOT_UNIT"; then
    die "$UPSHOT_UNIT is still active after stop"
fi
log "stopped"
