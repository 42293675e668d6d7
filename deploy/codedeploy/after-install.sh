#!/usr/bin/env bash
# CodeDeploy AfterInstall: turns the copied revision (staging/) into releases/<deployment id>, writes the
# service's environment file, configures the CloudWatch agent and installs the systemd unit. The service is
# started (and `current` switched) by ApplicationStart.
#
# The environment file comes from the stack: /etc/upshot/deploy.conf (written by the instance's user data) names
# the environment and the RDS CA bundle; SSM parameters /upshot/<env>/* give the bucket, topic, database
# endpoint, public URL and the secrets' ARNs; Secrets Manager gives the database credentials (the master's for
# `upshot migrate`, the application role's for the service), UPSHOT_SECRET_KEY and UPSHOT_ADMIN_API_KEY. The
# AWS CLI uses the instance role (IMDSv2). Optional parameters (upload-queue-url, log-group, db-app-secret-arn)
# may be absent: their feature is then off.
set -euo pipefail
HOOK_NAME=AfterInstall
# shellcheck source-path=SCRIPTDIR source=common.sh
. "$(dirname -- "${BASH_SOURCE[0]}")/common.sh"

[ -x "$UPSHOT_STAGING/bin/upshot" ] || die "$UPSHOT_STAGING/bin/upshot missing: did CodeDeploy copy the revision?"
[ -f "$UPSHOT_STAGING/lib/$ORT_LIB_NAME" ] || die "$UPSHOT_STAGING/lib/$ORT_LIB_NAME missing"
# A binary linked against a library this instance lacks would only fail at ApplicationStart, mid-migration.
for object in "$UPSHOT_STAGING/bin/upshot" "$UPSHOT_STAGING/lib/$ORT_LIB_NAME"; do
    missing=$(ldd "$object" 2>&1 | awk '/not found/ { print $1 }' | tr '\n' ' ')
    [ -z "$missing" ] || die "$(basename -- "$object") needs libraries this instance does not have: $missing"
done

id=$(release_id)
release=$UPSHOT_RELEASES/$id
if [ -L "$UPSHOT_CURRENT" ] && [ "$(readlink -f -- "$UPSHOT_CURRENT")" = "$(readlink -f -- "$release")" ]; then
    die "release $id is the current one; refusing to replace it in place"
fi
rm -rf -- "$release"
mv -T -- "$UPSHOT_STAGING" "$release"
install -d -m 0755 "$UPSHOT_STAGING"
log "release $id: $(cat "$release/VERSION" 2>/dev/null || echo 'no VERSION')"

# Release files: owned by root, readable by all, nothing writable by the service.
chown -R root:root -- "$release"
chmod -R u=rwX,go=rX -- "$release"
chmod 0755 -- "$release/bin/upshot"
find "$release/deploy/codedeploy" -name '*.sh' -exec chmod 0755 {} +

# ------------------------------------------------------------------ environment file
write_env_from_aws() {
    local out=$1 migrate_out=$2 v
    local bucket topic endpoint db_name db_secret_arn db_app_secret_arn app_secret_arn admin_secret_arn
    local public_url upload_queue log_group trace_ratio ca
    read_parameters
    bucket=$(param s3-bucket)
    topic=$(param sns-topic-arn)
    endpoint=$(param db-endpoint)
    db_name=$(param db-name)
    db_secret_arn=$(param db-secret-arn)
    app_secret_arn=$(param app-secret-arn)
    admin_secret_arn=$(param admin-secret-arn)
    public_url=$(param public-url)
    for v in bucket topic endpoint db_name db_secret_arn app_secret_arn admin_secret_arn public_url; do
        [ -n "${!v}" ] || die "SSM parameter for $v missing under $PARAMETER_PREFIX/"
    done
    upload_queue=$(param upload-queue-url)
    log_group=$(param log-group)
    # The share of requests traced: /upshot/<env>/trace-sample-ratio when an operator set one, else 5 %.
    trace_ratio=$(param trace-sample-ratio)
    if ! [[ $trace_ratio =~ ^(0(\.[0-9]+)?|1(\.0+)?)$ ]]; then
        [ -z "$trace_ratio" ] || log "trace-sample-ratio '$trace_ratio' is not a number from 0 to 1: 0.05 is used"
        trace_ratio=0.05
    fi
    db_app_secret_arn=$(param db-app-secret-arn)
    ca=$(conf_value UPSHOT_DB_CA_FILE)
    ca=${ca:-$UPSHOT_ETC_DIR/rds-ca.pem}
    [ -s "$ca" ] || die "the RDS CA bundle $ca is missing (the instance's user data downloads it)"

    # Secrets travel through pipes, variables and 0600 files only, never through a command line. Passwords go
    # into libpq's password files, not the URLs: the refresher timer rewrites them when RDS rotates the master
    # secret, and libpq reads them at every new connection, so no restart is needed.
    local app_key admin_key
    write_db_credentials "$db_secret_arn" "$db_app_secret_arn"
    app_key=$(secret_value "$app_secret_arn" "the application secret")
    admin_key=$(secret_value "$admin_secret_arn" "the admin key")

    {
        echo "# Written by deploy/codedeploy/after-install.sh at deployment ${DEPLOYMENT_ID:-manual}; do not edit."
        echo "ROCKET_PROFILE=aws"
        echo "AWS_REGION=$AWS_REGION"
        echo "UPSHOT_DATABASE_URL=$(database_url "$endpoint" "$db_name" "$DB_APP_USER" "$UPSHOT_PASSFILE" "$ca")"
        echo "UPSHOT_S3_BUCKET=$bucket"
        echo "UPSHOT_SECRET_KEY=$app_key"
        echo "UPSHOT_ADMIN_API_KEY=$admin_key"
        echo "UPSHOT_PUBLIC_URL=$public_url"
        echo "UPSHOT_NOTIFIER=sns"
        echo "UPSHOT_SNS_TOPIC_ARN=$topic"
        [ -z "$upload_queue" ] || echo "UPSHOT_UPLOAD_QUEUE_URL=$upload_queue"
        echo "UPSHOT_DATA_DIR=/var/lib/upshot"
        echo "UPSHOT_ORT_LIB=$UPSHOT_CURRENT/lib/$ORT_LIB_NAME"
        # Traces go to the CloudWatch agent's OTLP/HTTP receiver (deploy/cloudwatch/agent.json), which sends
        # them on to X-Ray: a sampled share of requests, and every request whose caller sampled it.
        if [ -x "$UPSHOT_CWAGENT_CTL" ]; then
            echo "OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318"
            echo "OTEL_SERVICE_NAME=upshot"
            echo "OTEL_RESOURCE_ATTRIBUTES=deployment.environment.name=$(conf_value UPSHOT_ENVIRONMENT)"
            echo "OTEL_TRACES_SAMPLER=parentbased_traceidratio"
            echo "OTEL_TRACES_SAMPLER_ARG=$trace_ratio"
        fi
    } >"$out"
    # What `upshot migrate` adds, for ApplicationStart alone (root): the master's URL, and the role it provisions.
    {
        echo "# Written by deploy/codedeploy/after-install.sh for ApplicationStart's migration; do not edit."
        echo "UPSHOT_DATABASE_URL=$(database_url "$endpoint" "$db_name" "$DB_ADMIN_USER" "$UPSHOT_ADMIN_PASSFILE" "$ca")"
        if [ -n "$DB_APP_PASSWORD" ]; then
            echo "UPSHOT_DB_APP_ROLE=$DB_APP_USER"
            echo "UPSHOT_DB_APP_PASSWORD=$DB_APP_PASSWORD"
        fi
    } >"$migrate_out"

    configure_cloudwatch_agent "$log_group"
}

# A libpq URL that verifies RDS's certificate against the CA bundle and gives up connecting after 5 s.
#   database_url ENDPOINT DB_NAME USER PASSFILE CA_FILE
database_url() {
    python3 - "$@" <<'PY' || die "cannot form the database URL"
import sys, urllib.parse as u
endpoint, name, user, passfile, ca = sys.argv[1:]
q = lambda v: u.quote(v, safe="")
print(f"postgres://{q(user)}@{endpoint}/{q(name)}"
      f"?sslmode=verify-full&sslrootcert={q(ca)}&connect_timeout=5&passfile={q(passfile)}")
PY
}

configure_cloudwatch_agent() {
    local log_group=$1 tmp
    if [ ! -x "$UPSHOT_CWAGENT_CTL" ]; then
        log "CloudWatch agent not installed ($UPSHOT_CWAGENT_CTL): skipped"
        return 0
    fi
    tmp=$(mktemp "$UPSHOT_CWAGENT_CONFIG.XXXXXX")
    sed "s#@LOG_GROUP@#${log_group:-/upshot/app}#g" "$release/deploy/cloudwatch/agent.json" >"$tmp"
    mv -f -- "$tmp" "$UPSHOT_CWAGENT_CONFIG"
    "$UPSHOT_CWAGENT_CTL" -a fetch-config -m ec2 -s -c "file:$UPSHOT_CWAGENT_CONFIG" >&2
}

umask 077
tmp_env=$(mktemp "$UPSHOT_ETC_DIR/.upshot.env.XXXXXX")
tmp_migrate=$(mktemp "$UPSHOT_ETC_DIR/.migrate.env.XXXXXX")
trap 'rm -f -- "$tmp_env" "$tmp_migrate"' EXIT
write_env_from_aws "$tmp_env" "$tmp_migrate"
chown "root:$UPSHOT_GROUP" -- "$tmp_env"
chmod 0640 -- "$tmp_env"
mv -f -- "$tmp_env" "$UPSHOT_ENV_FILE"
chown root:root -- "$tmp_migrate"
chmod 0600 -- "$tmp_migrate"
mv -f -- "$tmp_migrate" "$UPSHOT_MIGRATE_ENV_FILE"
trap - EXIT
umask 022
log "environment file written from SSM parameters and Secrets Manager"

# ------------------------------------------------------------------ systemd units
install_unit() {
    local name=$1 tmp
    tmp=$(mktemp "$UPSHOT_UNIT_DIR/.$name.XXXXXX")
    sed -e "s#/etc/upshot/upshot.env#$UPSHOT_ENV_FILE#g" \
        -e "s#/opt/upshot#$UPSHOT_HOME#g" \
        -e "s#/var/lib/upshot#$UPSHOT_STATE_DIR#g" \
        -e "s#^User=.*#User=$UPSHOT_USER#" \
        -e "s#^Group=.*#Group=$UPSHOT_GROUP#" \
        "$release/deploy/systemd/$name" >"$tmp"
    chmod 0644 -- "$tmp"
    mv -f -- "$tmp" "$UPSHOT_UNIT_DIR/$name"
}
for unit in "$UPSHOT_UNIT" upshot-db-password.service upshot-db-password.timer upshot-reconcile.service \
    upshot-reconcile.timer; do
    install_unit "$unit"
done
systemctl_ daemon-reload
systemctl_ enable upshot-db-password.timer
systemctl_ restart upshot-db-password.timer
# Hourly on every instance; the run that takes the database's advisory lock does the work.
systemctl_ enable upshot-reconcile.timer
systemctl_ restart upshot-reconcile.timer

printf '%s\n' "$id" >"$UPSHOT_PENDING"
log "installed $release; ApplicationStart switches $UPSHOT_CURRENT to it"
