#!/usr/bin/env bash
# Run by upshot-db-password.timer (every 2 minutes, not a CodeDeploy hook): writes the current password of the
# RDS-managed database secret into libpq's password file. RDS rotates that secret every 7 days; the service's
# connections read the file whenever they open, so a rotation costs at most the connections opened before the
# next refresh, and no redeploy.
set -euo pipefail
HOOK_NAME=refresh-db-password
# shellcheck source-path=SCRIPTDIR source=common.sh
. "$(dirname -- "${BASH_SOURCE[0]}")/common.sh"

prefix=$(parameter_prefix)
use_instance_region >/dev/null
arn=$("$UPSHOT_AWS" ssm get-parameter --name "$prefix/db-secret-arn" --query Parameter.Value --output text) ||
    die "cannot read $prefix/db-secret-arn"
secret=$(secret_value "$arn" "the database secret")
write_db_passfile <<<"$secret"
log "database password file refreshed"
