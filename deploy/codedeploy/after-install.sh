#!/usr/bin/env bash
# CodeDeploy AfterInstall: turns the copied revision (staging/) into releases/<deployment id>, writes the
# service's environment file, configures the CloudWatch agent and installs the systemd unit. The service is
# started (and `current` switched) by ApplicationStart.
#
# Environment file sources (UPSHOT_ENV_SOURCE):
#   aws        (default) /etc/upshot/deploy.conf names the environment; SSM parameters /upshot/<env>/* give the
#              bucket, topic, database endpoint, public URL and the three secret ARNs; Secrets Manager gives the
#              RDS-managed master credentials (-> UPSHOT_DATABASE_URL with sslmode=require), UPSHOT_SECRET_KEY and
#              UPSHOT_ADMIN_API_KEY. The AWS CLI uses the instance role (IMDSv2).
#   file:PATH  copy PATH as it is (tests and the local rehearsal; no AWS call).
set -euo pipefail
HOOK_NAME=AfterInstall
# shellcheck source-path=SCRIPTDIR source=common.sh
. "$(dirname -- "${BASH_SOURCE[0]}")/common.sh"

[ -x "$UPSHOT_STAGING/bin/upshot" ] || die "$UPSHOT_STAGING/bin/upshot missing: did CodeDeploy copy the revision?"
[ -f "$UPSHOT_STAGING/lib/$ORT_LIB_NAME" ] || die "$UPSHOT_STAGING/lib/$ORT_LIB_NAME missing"

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
    local out=$1 region prefix params bucket topic endpoint db_name db_secret_arn app_secret_arn
    local admin_secret_arn public_url db_user upload_queue
    prefix=$(parameter_prefix)
    use_instance_region >/dev/null
    region=$AWS_REGION

    params=$("$UPSHOT_AWS" ssm get-parameters-by-path --path "$prefix/" \
        --query 'Parameters[].[Name,Value]' --output text) || die "cannot read SSM parameters under $prefix/"
    param() { awk -v n="$prefix/$1" '$1 == n { print $2 }' <<<"$params"; }
    bucket=$(param s3-bucket)
    topic=$(param sns-topic-arn)
    endpoint=$(param db-endpoint)
    db_name=$(param db-name)
    db_secret_arn=$(param db-secret-arn)
    app_secret_arn=$(param app-secret-arn)
    admin_secret_arn=$(param admin-secret-arn)
    public_url=$(param public-url)
    upload_queue=$(param upload-queue-url)
    log_group=$(param log-group)
    for v in bucket topic endpoint db_name db_secret_arn app_secret_arn admin_secret_arn public_url upload_queue; do
        [ -n "${!v}" ] || die "SSM parameter for $v missing under $prefix/"
    done

    # Secrets travel through pipes, variables and 0600 files only, never through a command line. The database
    # password goes into libpq's password file, not the URL: the refresher timer rewrites it when RDS rotates
    # the secret, and libpq reads it at every new connection, so no restart is needed.
    local app_key admin_key db_json db_url
    db_json=$(secret_value "$db_secret_arn" "the database secret")
    write_db_passfile <<<"$db_json"
    db_user=$(db_username <<<"$db_json")
    app_key=$(secret_value "$app_secret_arn" "the application secret")
    admin_key=$(secret_value "$admin_secret_arn" "the admin key")
    db_url=$(DB_ENDPOINT=$endpoint DB_NAME=$db_name DB_USER=$db_user PASSFILE=$UPSHOT_PASSFILE python3 -c '
import os, urllib.parse as u
e = os.environ
q = lambda v: u.quote(v, safe="")
print("postgres://%s@%s/%s?sslmode=require&passfile=%s" % (q(e["DB_USER"]), e["DB_ENDPOINT"], q(e["DB_NAME"]), q(e["PASSFILE"])))
') || die "cannot form the database URL"

    {
        echo "# Written by deploy/codedeploy/after-install.sh at deployment ${DEPLOYMENT_ID:-manual}; do not edit."
        echo "ROCKET_PROFILE=aws"
        echo "AWS_REGION=$region"
        echo "UPSHOT_DATABASE_URL=$db_url"
        echo "UPSHOT_S3_BUCKET=$bucket"
        echo "UPSHOT_SECRET_KEY=$app_key"
        echo "UPSHOT_ADMIN_API_KEY=$admin_key"
        echo "UPSHOT_PUBLIC_URL=$public_url"
        echo "UPSHOT_NOTIFIER=sns"
        echo "UPSHOT_SNS_TOPIC_ARN=$topic"
        echo "UPSHOT_UPLOAD_QUEUE_URL=$upload_queue"
        echo "UPSHOT_DATA_DIR=/var/lib/upshot"
        echo "UPSHOT_ORT_LIB=$UPSHOT_CURRENT/lib/$ORT_LIB_NAME"
    } >"$out"

    configure_cloudwatch_agent "$log_group"
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
trap 'rm -f -- "$tmp_env"' EXIT
case $UPSHOT_ENV_SOURCE in
    file:*)
        src=${UPSHOT_ENV_SOURCE#file:}
        [ -f "$src" ] || die "UPSHOT_ENV_SOURCE file $src not found"
        cat -- "$src" >"$tmp_env"
        log "environment file copied from $src (test mode: no AWS calls)"
        ;;
    aws)
        write_env_from_aws "$tmp_env"
        log "environment file written from SSM parameters and Secrets Manager"
        ;;
    *) die "UPSHOT_ENV_SOURCE must be 'aws' or 'file:PATH' (got '$UPSHOT_ENV_SOURCE')" ;;
esac
chown "root:$UPSHOT_GROUP" -- "$tmp_env"
chmod 0640 -- "$tmp_env"
mv -f -- "$tmp_env" "$UPSHOT_ENV_FILE"
trap - EXIT
umask 022

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
install_unit "$UPSHOT_UNIT"
if [ "$UPSHOT_ENV_SOURCE" = aws ]; then
    install_unit upshot-db-password.service
    install_unit upshot-db-password.timer
    install_unit upshot-reconcile.service
    install_unit upshot-reconcile.timer
fi
systemctl_ daemon-reload
if [ "$UPSHOT_ENV_SOURCE" = aws ]; then
    systemctl_ enable upshot-db-password.timer
    systemctl_ restart upshot-db-password.timer
    # Hourly on every instance; the run that takes the database's advisory lock does the work.
    systemctl_ enable upshot-reconcile.timer
    systemctl_ restart upshot-reconcile.timer
fi

printf '%s\n' "$id" >"$UPSHOT_PENDING"
log "installed $release; ApplicationStart switches $UPSHOT_CURRENT to it"
