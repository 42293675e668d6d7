#!/usr/bin/env bash
# Shared settings and helpers for the CodeDeploy hook scripts (sourced, not run).
#
# Every system path can be overridden so that the hooks run against a staging root (scripts/rehearse-deploy.sh):
#   UPSHOT_ROOT         /                         prefix of every default path below
#   UPSHOT_HOME         $ROOT/opt/upshot          releases/<id>, current -> releases/<id>, staging/ (CodeDeploy copies here)
#   UPSHOT_ETC_DIR      $ROOT/etc/upshot
#   UPSHOT_ENV_FILE     $ETC_DIR/upshot.env       the service's EnvironmentFile (0640 root:upshot)
#   UPSHOT_DEPLOY_CONF  $ETC_DIR/deploy.conf      written by the instance's user data (environment name, region)
#   UPSHOT_UNIT_DIR     $ROOT/etc/systemd/system
#   UPSHOT_STATE_DIR    $ROOT/var/lib/upshot      UPSHOT_DATA_DIR of the service
#   UPSHOT_LOG_DIR      $ROOT/var/log/upshot
#   UPSHOT_SYSTEMCTL    systemctl
#   UPSHOT_USER/GROUP   upshot
#   UPSHOT_HEALTH_URL   http://127.0.0.1:8080
# shellcheck disable=SC2034  # the variables are used by the scripts that source this file
set -euo pipefail

UPSHOT_ROOT=${UPSHOT_ROOT:-/}
_root=${UPSHOT_ROOT%/}
UPSHOT_HOME=${UPSHOT_HOME:-$_root/opt/upshot}
UPSHOT_ETC_DIR=${UPSHOT_ETC_DIR:-$_root/etc/upshot}
UPSHOT_ENV_FILE=${UPSHOT_ENV_FILE:-$UPSHOT_ETC_DIR/upshot.env}
UPSHOT_DEPLOY_CONF=${UPSHOT_DEPLOY_CONF:-$UPSHOT_ETC_DIR/deploy.conf}
UPSHOT_PASSFILE=${UPSHOT_PASSFILE:-$UPSHOT_ETC_DIR/pgpass}
UPSHOT_ADMIN_PASSFILE=${UPSHOT_ADMIN_PASSFILE:-$UPSHOT_ETC_DIR/pgpass-admin}
UPSHOT_MIGRATE_ENV_FILE=${UPSHOT_MIGRATE_ENV_FILE:-$UPSHOT_ETC_DIR/migrate.env}
UPSHOT_UNIT_DIR=${UPSHOT_UNIT_DIR:-$_root/etc/systemd/system}
UPSHOT_STATE_DIR=${UPSHOT_STATE_DIR:-$_root/var/lib/upshot}
UPSHOT_LOG_DIR=${UPSHOT_LOG_DIR:-$_root/var/log/upshot}
UPSHOT_SYSTEMCTL=${UPSHOT_SYSTEMCTL:-systemctl}
UPSHOT_USER=${UPSHOT_USER:-upshot}
UPSHOT_GROUP=${UPSHOT_GROUP:-$UPSHOT_USER}
UPSHOT_HEALTH_URL=${UPSHOT_HEALTH_URL:-http://127.0.0.1:8080}
UPSHOT_KEEP_RELEASES=${UPSHOT_KEEP_RELEASES:-3}
UPSHOT_AWS=${UPSHOT_AWS:-aws}
UPSHOT_IMDS_URL=${UPSHOT_IMDS_URL:-http://169.254.169.254}
UPSHOT_CWAGENT_CTL=${UPSHOT_CWAGENT_CTL:-$_root/opt/aws/amazon-cloudwatch-agent/bin/amazon-cloudwatch-agent-ctl}
UPSHOT_CWAGENT_CONFIG=${UPSHOT_CWAGENT_CONFIG:-$_root/opt/aws/amazon-cloudwatch-agent/etc/upshot.json}
# The CloudWatch agent's StatsD listener (deploy/cloudwatch/agent.json).
UPSHOT_STATSD=${UPSHOT_STATSD:-127.0.0.1/8125}

UPSHOT_UNIT=upshot.service
UPSHOT_UNIT_FILE=$UPSHOT_UNIT_DIR/$UPSHOT_UNIT
UPSHOT_STAGING=$UPSHOT_HOME/staging
UPSHOT_RELEASES=$UPSHOT_HOME/releases
UPSHOT_CURRENT=$UPSHOT_HOME/current
UPSHOT_PENDING=$UPSHOT_HOME/pending-release
ORT_LIB_NAME=libonnxruntime.so.1.31.1

log() { printf '%s: %s\n' "${HOOK_NAME:-hook}" "$*" >&2; }
die() { log "error: $*"; exit 1; }

systemctl_() { "$UPSHOT_SYSTEMCTL" "$@"; }

# Exports the KEY=VALUE lines of a systemd-style environment file, literally (no shell expansion).
load_env_file() {
    local line
    while IFS= read -r line || [ -n "$line" ]; do
        case $line in
            '' | '#'*) continue ;;
        esac
        [[ $line =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || continue
        export "${line?}"
    done <"$1"
}

# Runs a command as USER, in DIR, with only PATH and the service's environment file (the same environment
# systemd gives the service), then the lines of any further ENV_FILEs given before `--` over it.
#   run_with_service_env USER DIR [ENV_FILE...] -- COMMAND...
run_with_service_env() {
    local _user=$1 _dir=$2 _name
    local -a _extra=()
    shift 2
    while [ "$1" != -- ]; do _extra+=("$1"); shift; done
    shift
    (
        cd "$_dir"
        while IFS= read -r _name; do
            unset "$_name" 2>/dev/null || true
        done < <(compgen -e)
        export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8
        load_env_file "$UPSHOT_ENV_FILE"
        for _name in "${_extra[@]}"; do load_env_file "$_name"; done
        if [ "$(id -un)" = "$_user" ]; then
            exec "$@"
        fi
        exec runuser -u "$_user" -- "$@"
    )
}

# A release id from the CodeDeploy deployment id (or a timestamp outside CodeDeploy).
release_id() {
    local id=${DEPLOYMENT_ID:-manual-$(date -u +%Y%m%dT%H%M%SZ)}
    id=${id//[^A-Za-z0-9_.-]/_}
    printf '%s\n' "$id"
}

# ------------------------------------------------------------------ AWS: parameters and secrets (instance role)
imds_token() {
    curl -fsS --max-time 2 -X PUT "$UPSHOT_IMDS_URL/latest/api/token" \
        -H 'X-aws-ec2-metadata-token-ttl-seconds: 300'
}

# Reads deploy.conf (KEY=VALUE lines written by the instance's user data) without executing it.
conf_value() {
    local key=$1 line
    [ -f "$UPSHOT_DEPLOY_CONF" ] || return 0
    while IFS= read -r line || [ -n "$line" ]; do
        case $line in "$key="*) printf '%s\n' "${line#*=}"; return 0 ;; esac
    done <"$UPSHOT_DEPLOY_CONF"
}

# /upshot/<environment>, where the stack keeps the parameters the instances read.
parameter_prefix() {
    local env_name prefix
    env_name=$(conf_value UPSHOT_ENVIRONMENT)
    [ -n "$env_name" ] || die "UPSHOT_ENVIRONMENT missing in $UPSHOT_DEPLOY_CONF"
    prefix=$(conf_value UPSHOT_PARAMETER_PREFIX)
    printf '%s\n' "${prefix:-/upshot/$env_name}"
}

# Exports AWS_REGION (deploy.conf, else instance metadata) for the AWS CLI and prints it.
use_instance_region() {
    local region token
    region=$(conf_value AWS_REGION)
    if [ -z "$region" ]; then
        token=$(imds_token) || die "no IMDSv2 token"
        region=$(curl -fsS --max-time 2 -H "X-aws-ec2-metadata-token: $token" \
            "$UPSHOT_IMDS_URL/latest/meta-data/placement/region") || die "region not in instance metadata"
    fi
    export AWS_REGION=$region AWS_DEFAULT_REGION=$region
    printf '%s\n' "$region"
}

# The string value of Secrets Manager secret $1 ($2 names it in the error).
secret_value() {
    "$UPSHOT_AWS" secretsmanager get-secret-value --secret-id "$1" --query SecretString --output text ||
        die "cannot read $2"
}

# The user name of an RDS secret (its JSON on standard input).
db_username() {
    python3 -c 'import json, sys; print(json.load(sys.stdin)["username"])' ||
        die "the database secret is not the RDS JSON form"
}

# Writes the password of a database secret (its RDS JSON form on standard input) into a libpq password file
# (named by passfile= in a database URL), atomically, readable by OWNER alone (libpq ignores a file others can
# read).   write_passfile PATH OWNER
write_passfile() {
    local path=$1 owner=$2 tmp
    tmp=$(mktemp "$(dirname -- "$path")/.pgpass.XXXXXX")
    if ! python3 -c '
import json, sys
password = json.load(sys.stdin)["password"]
print("*:*:*:*:" + password.replace("\\", "\\\\").replace(":", "\\:"))
' >"$tmp"; then
        rm -f -- "$tmp"
        die "the database secret is not the RDS JSON form"
    fi
    chown "$owner" -- "$tmp"
    chmod 0600 -- "$tmp"
    mv -f -- "$tmp" "$path"
}

# Reads every SSM parameter under the environment's prefix; `param NAME` then prints one ('' when absent).
read_parameters() {
    PARAMETER_PREFIX=$(parameter_prefix)
    use_instance_region >/dev/null
    PARAMETERS=$("$UPSHOT_AWS" ssm get-parameters-by-path --path "$PARAMETER_PREFIX/" \
        --query 'Parameters[].[Name,Value]' --output text) || die "cannot read SSM parameters under $PARAMETER_PREFIX/"
}
param() { awk -v n="$PARAMETER_PREFIX/$1" '$1 == n { print $2 }' <<<"$PARAMETERS"; }

# Writes the database password files from Secrets Manager: the master's (ARN $1) for `upshot migrate`,
# readable by root alone, and the application role's (ARN $2) for the service. Without $2 (a stack that has
# no application role yet) the service gets the master's. Sets DB_ADMIN_USER, DB_APP_USER, DB_APP_PASSWORD.
write_db_credentials() {
    local admin_json app_json
    admin_json=$(secret_value "$1" "the database secret")
    write_passfile "$UPSHOT_ADMIN_PASSFILE" root:root <<<"$admin_json"
    DB_ADMIN_USER=$(db_username <<<"$admin_json")
    if [ -n "${2:-}" ]; then
        app_json=$(secret_value "$2" "the application's database secret")
        DB_APP_USER=$(db_username <<<"$app_json")
        DB_APP_PASSWORD=$(db_password <<<"$app_json")
    else
        log "warning: no db-app-secret-arn parameter: the service connects as the master user $DB_ADMIN_USER"
        app_json=$admin_json
        DB_APP_USER=$DB_ADMIN_USER
        DB_APP_PASSWORD=''
    fi
    write_passfile "$UPSHOT_PASSFILE" "$UPSHOT_USER:$UPSHOT_GROUP" <<<"$app_json"
}

# The password of a database secret (its RDS JSON form on standard input).
db_password() {
    python3 -c 'import json, sys; print(json.load(sys.stdin)["password"])' ||
        die "the database secret is not the RDS JSON form"
}

# Sends one StatsD gauge to the CloudWatch agent (UDP; nothing happens when no agent listens).
statsd_gauge() {
    printf '%s:%s|g\n' "$1" "$2" >"/dev/udp/$UPSHOT_STATSD" 2>/dev/null || true
}
