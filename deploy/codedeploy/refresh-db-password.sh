#!/usr/bin/env bash
# Run by upshot-db-password.timer (every 2 minutes, not a CodeDeploy hook): writes the current passwords of the
# database secrets (the RDS-managed master's and the application role's) into libpq's password files. RDS
# rotates the master's every 7 days; connections read the files whenever they open, so a rotation costs at most
# the connections opened before the next refresh, and no redeploy.
set -euo pipefail
HOOK_NAME=refresh-db-password
# shellcheck source-path=SCRIPTDIR source=common.sh
. "$(dirname -- "${BASH_SOURCE[0]}")/common.sh"

# Its outcome goes to the CloudWatch agent as a gauge; the stack alarms when it is not 1.
trap 'statsd_gauge upshot_db_password_refresh_ok "$(( $? == 0 ))"' EXIT
read_parameters
write_db_credentials "$(param db-secret-arn)" "$(param db-app-secret-arn)"
log "database password files refreshed"
