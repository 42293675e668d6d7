#!/usr/bin/env bash
# A rehearsal of a CodeDeploy in-place deployment of the exact archive the pipeline ships, on a machine that
# boots real systemd, with no AWS account:
#
#   1. the archive: scripts/package.sh, zipped as CodeBuild uploads its artifact (modes kept);
#   2. the instance: a Debian root made by debootstrap (cached under target/rehearsal/, keyed by what makes it)
#      booted with systemd-nspawn (real systemd as PID 1, journald, the unit's hardening, cgroups), sharing the
#      host's network, with nothing of Upshot's installed: no libpq, no ONNX Runtime. What the instance's user
#      data does is done here: /etc/upshot/deploy.conf and the RDS CA bundle;
#   3. AWS: the AWS CLI is deploy/codedeploy/testing/fake-aws, answering the SSM parameters and secrets that
#      point at a PostgreSQL cluster with TLS and password authentication (as RDS serves) and at the moto
#      S3/SNS endpoint the suite started; a drop-in gives the units the endpoint and credentials, as the
#      instance role does through instance metadata. The optional upload-queue-url is left out;
#   4. the agent: deploy/codedeploy/testing/codedeploy-agent.py unpacks the archive and runs its appspec's
#      hooks, in the agent's order, as `runas`, within their timeouts. Deployment 1 on the fresh instance, then
#      deployment 2 of a second archive while a client uploads (loopback only; at most 60 s / 500 uploads).
#
# Asserted: every lifecycle event of both deployments succeeds and ValidateService sees /readyz 200; the unit
# runs as the service user under real systemd with its sandbox (seccomp filter, no new privileges, W^X); the
# shipped binary needs no library the instance lacks; the timers are enabled and the reconcile and password
# units run to success; the service connects as its own role over verified TLS, and that role cannot create
# tables; a rotated secret reaches the password file; uploads during deployment 2 are all answered 201 and
# readable afterwards; the previous release is kept; ValidateService is idempotent and fails when nothing
# answers; ApplicationStop stops the service gracefully.
#
# Usage: scripts/rehearse-deploy.sh [BINARY (target/release/upshot)]
# Needs root, UPSHOT_TEST_AWS_ENDPOINT (scripts/test-services.sh start), and port 8080 free on 127.0.0.1 (the
# service listens where the stack's target group expects it). Installs debootstrap and systemd-container from
# Debian's archive when missing. UPSHOT_KEEP_REHEARSAL=1 keeps the temp dir.
set -euo pipefail

repo=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$repo"
binary=$(realpath -- "${1:-target/release/upshot}")
[ -x "$binary" ] || { echo "rehearse-deploy: $binary not found (build it, or pass target/debug/upshot)" >&2; exit 2; }
[ "$(id -u)" -eq 0 ] || { echo "rehearse-deploy: run as root (nspawn and the hooks need it)" >&2; exit 2; }
: "${UPSHOT_TEST_AWS_ENDPOINT:?start the test services first (scripts/test-services.sh start)}"

CLIENT_MAX_SECONDS=${UPSHOT_REHEARSAL_CLIENT_SECONDS:-60}
CLIENT_MAX_UPLOADS=${UPSHOT_REHEARSAL_CLIENT_UPLOADS:-500}
SERVICE_URL=http://127.0.0.1:8080
ENVIRONMENT=rehearsal
# What the container has beyond a minimal Debian: what an Amazon Linux instance has (systemd, python3, curl),
# and python3-yaml for the stand-in agent. Part of the cache key.
PACKAGES=systemd,systemd-sysv,dbus,python3,python3-yaml,curl,ca-certificates,procps

log() { printf 'rehearse-deploy: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

work=$(mktemp -d "${TMPDIR:-/tmp}/upshot-rehearsal.XXXXXX")
chmod 0755 "$work"
container_pid=''
nspawn_pid=''
client_pid=''
otlp_pid=''

# ------------------------------------------------------------------ the instance's root (cached)
ensure_tools() {
    local missing=()
    command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
    command -v systemd-nspawn >/dev/null 2>&1 || missing+=(systemd-container)
    command -v openssl >/dev/null 2>&1 || missing+=(openssl)
    [ ${#missing[@]} -eq 0 ] && return 0
    log "apt-get install ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
}

instance_root() {
    local suite mirror key root
    suite=$(. /etc/os-release && echo "$VERSION_CODENAME")
    mirror=$(apt-cache policy | awk -v s="$suite/main" '$3 == s && $4 == "amd64" { print $2; exit }')
    if [ -z "$mirror" ]; then   # apt's lists not fetched yet on this machine
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
        mirror=$(apt-cache policy | awk -v s="$suite/main" '$3 == s && $4 == "amd64" { print $2; exit }')
    fi
    [ -n "$mirror" ] || die "no Debian mirror for $suite in apt's sources"
    key=$(printf '%s %s %s' "$suite" "$PACKAGES" "$(dpkg --print-architecture)" | sha256sum | cut -c1-16)
    root=$repo/target/rehearsal/root-$key
    if [ ! -f "$root/.complete" ]; then
        log "debootstrap $suite ($PACKAGES) into $root"
        rm -rf -- "$root"
        mkdir -p "$(dirname -- "$root")"
        debootstrap --variant=minbase --include="$PACKAGES" "$suite" "$root" "$mirror" >"$work/debootstrap.log" 2>&1 ||
            { tail -n 30 "$work/debootstrap.log" >&2; die "debootstrap failed"; }
        # No console login in a container; what is left boots to `running`.
        rm -f "$root/etc/systemd/system/getty.target.wants/"* 2>/dev/null || true
        touch "$root/.complete"
    fi
    printf '%s\n' "$root"
}

# ------------------------------------------------------------------ helpers
inside() { # inside COMMAND...: a command in the container, with a clean environment
    nsenter -t "$container_pid" -a -- env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        LANG=C.UTF-8 "$@"
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

psql_as_postgres() { # psql_as_postgres DB SQL: one value
    PGPASSWORD=$pg_password psql -X -A -t -q "host=127.0.0.1 port=$pg_port user=postgres dbname=$1 sslmode=require" -c "$2"
}

cleanup() {
    local rc=$?
    if [ -n "$otlp_pid" ]; then kill "$otlp_pid" 2>/dev/null || true; wait "$otlp_pid" 2>/dev/null || true; fi
    if [ -n "$client_pid" ]; then kill "$client_pid" 2>/dev/null || true; wait "$client_pid" 2>/dev/null || true; fi
    if [ -n "$nspawn_pid" ] && kill -0 "$nspawn_pid" 2>/dev/null; then
        kill -TERM "$nspawn_pid" 2>/dev/null || true   # nspawn asks the container's systemd to power off
        for _ in $(seq 1 60); do kill -0 "$nspawn_pid" 2>/dev/null || break; sleep 0.5; done
        kill -KILL "$nspawn_pid" 2>/dev/null || true
        wait "$nspawn_pid" 2>/dev/null || true
    fi
    "$repo/scripts/test-services.sh" pg-remove "$work/pg" >/dev/null 2>&1 || true
    if [ "${UPSHOT_KEEP_REHEARSAL:-0}" = 1 ]; then
        log "kept $work"
    else
        rm -rf -- "$work"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

passed=0
failed=0
check() { # check NAME COMMAND... : one line per assertion
    local name=$1
    shift
    if "$@"; then
        passed=$((passed + 1)); echo "PASS $name"
    else
        failed=$((failed + 1)); echo "FAIL $name"
    fi
}

# ------------------------------------------------------------------ 1. the archives, as CodeBuild uploads them
ensure_tools
if python3 - <<'PY'; then :; else die "port 8080 on 127.0.0.1 is taken: the rehearsal's service listens there"; fi
import socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 8080))
PY
# The CloudWatch agent's OTLP/HTTP receiver, as the service sees it: 127.0.0.1:4318 (the container shares the
# host's network), keeping each export it is sent.
python3 scripts/otlp-receiver.py 4318 "$work/otlp" &
otlp_pid=$!
sleep 0.5
kill -0 "$otlp_pid" 2>/dev/null || die "port 4318 on 127.0.0.1 is taken: the rehearsal plays the agent's OTLP receiver there"
mkdir -p "$work/share"
for n in 1 2; do
    UPSHOT_VERSION="rehearsal-$n $(git describe --always --dirty 2>/dev/null || echo unknown)" \
        scripts/package.sh "$binary" "$work/dist-$n" >/dev/null 2>>"$work/package.log"
    # CodeBuild zips the artifact's base directory with each file's mode.
    python3 - "$work/dist-$n" "$work/share/revision-$n.zip" <<'PY'
import os, sys, zipfile
base, out = sys.argv[1:]
with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
    for top, dirs, names in os.walk(base):
        dirs.sort()
        for name in sorted(names):
            path = os.path.join(top, name)
            z.write(path, os.path.relpath(path, base))
PY
done
check "package: two archives built ($(du -h "$work/share/revision-1.zip" | cut -f1) each)" \
    test -s "$work/share/revision-1.zip" -a -s "$work/share/revision-2.zip"

# ------------------------------------------------------------------ 3. AWS: database, bucket, topic, secrets
pg_password=$(python3 -c 'import secrets; print(secrets.token_urlsafe(18))')
master_password="master:$(python3 -c 'import secrets; print(secrets.token_urlsafe(12))') w@rd"
app_password=$(python3 -c 'import secrets; print(secrets.token_urlsafe(24))')
mkdir -p "$work/tls"
(
    cd "$work/tls"
    openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=Rehearsal RDS CA" -keyout ca.key -out ca.crt \
        -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign
    openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" -keyout server.key -out server.csr
    printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n' >ext.cnf
    openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -extfile ext.cnf -out server.crt
) >"$work/tls.log" 2>&1 || { cat "$work/tls.log" >&2; die "cannot make the test CA"; }
eval "$(UPSHOT_TEST_PG_PASSWORD=$pg_password UPSHOT_TEST_PG_TLS_DIR=$work/tls scripts/test-services.sh pg-start "$work/pg")"
pg_port=${UPSHOT_TEST_PG_URL##*:}
pg_port=${pg_port%%/*}
# As on RDS: a master user that owns the database and may create roles, not a superuser.
psql_as_postgres postgres "CREATE ROLE upshot_master LOGIN CREATEROLE PASSWORD '${master_password//\'/\'\'}'" >/dev/null
psql_as_postgres postgres "CREATE DATABASE upshot OWNER upshot_master" >/dev/null

aws_py=$repo/target/tools/venv/bin/python
bucket=upshot-rehearsal-$(python3 -c 'import secrets; print(secrets.token_hex(4))')
topic=$("$aws_py" - "$UPSHOT_TEST_AWS_ENDPOINT" "$bucket" <<'PY'
import sys, boto3
endpoint, bucket = sys.argv[1:]
kw = dict(endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="rehearsal", aws_secret_access_key="rehearsal")
boto3.client("s3", **kw).create_bucket(Bucket=bucket)
print(boto3.client("sns", **kw).create_topic(Name=bucket)["TopicArn"])
PY
)

mkdir -p "$work/share/aws"
state=$work/share/aws/state.json
python3 - "$state" "$pg_port" "$bucket" "$topic" "$master_password" "$app_password" <<'PY'
import json, secrets, sys
out, port, bucket, topic, master, app = sys.argv[1:]
p = "/upshot/rehearsal/"
json.dump({
    "parameters": {
        p + "s3-bucket": bucket, p + "sns-topic-arn": topic, p + "db-endpoint": f"127.0.0.1:{port}",
        p + "db-name": "upshot", p + "db-secret-arn": "arn:db", p + "db-app-secret-arn": "arn:db-app",
        p + "app-secret-arn": "arn:app", p + "admin-secret-arn": "arn:admin",
        p + "public-url": "http://127.0.0.1:8080",
    },
    "secrets": {
        "arn:db": json.dumps({"username": "upshot_master", "password": master}),
        "arn:db-app": json.dumps({"username": "upshot_app", "password": app}),
        "arn:app": secrets.token_hex(24), "arn:admin": secrets.token_hex(16),
    },
}, open(out, "w"), indent=1)
PY
cp deploy/codedeploy/testing/fake-aws deploy/codedeploy/testing/fake-cwagent-ctl deploy/codedeploy/testing/codedeploy-agent.py \
    deploy/codedeploy/testing/upload-client.py "$work/share/"
cp tests/fixtures/cat.jpg tests/fixtures/cat-gps.heic "$work/share/"

# ------------------------------------------------------------------ 2. boot the instance
root=$(instance_root)
log "booting $root (volatile: nothing it writes survives)"
systemd-nspawn --quiet --register=no --keep-unit --volatile=overlay -D "$root" -M upshot-rehearsal \
    --bind-ro="$work/share:/rehearsal" -b --console=pipe </dev/null >"$work/boot.log" 2>&1 &
nspawn_pid=$!
for _ in $(seq 1 120); do
    container_pid=$(pgrep -P "$nspawn_pid" -x systemd 2>/dev/null | head -n 1 || true)
    [ -n "$container_pid" ] && break
    kill -0 "$nspawn_pid" 2>/dev/null || { tail -n 30 "$work/boot.log" >&2; die "systemd-nspawn exited"; }
    sleep 0.5
done
[ -n "$container_pid" ] || { tail -n 30 "$work/boot.log" >&2; die "no systemd in the container"; }
boot_state=$(inside timeout 90 systemctl is-system-running --wait 2>/dev/null || true)
echo "instance: systemd $(inside systemctl --version | head -n 1 | cut -d' ' -f2) is PID 1 in the container, system $boot_state"
check "instance: real systemd booted (system running)" test "$boot_state" = running

# What the instance's user data does (deploy/cloudformation/upshot.yaml): deploy.conf and the RDS CA bundle.
# What the instance role does through instance metadata: credentials, here for moto, in a drop-in. The upload
# client is one address sending as fast as it can: its allowance is raised there too.
inside sh -c "
    set -e
    install -d -m 0755 /etc/upshot /usr/local/bin /etc/systemd/system/upshot.service.d /etc/systemd/system/upshot-reconcile.service.d
    install -m 0755 /rehearsal/fake-aws /usr/local/bin/aws
    install -d -m 0755 /opt/aws/amazon-cloudwatch-agent/bin /opt/aws/amazon-cloudwatch-agent/etc
    install -m 0755 /rehearsal/fake-cwagent-ctl /opt/aws/amazon-cloudwatch-agent/bin/amazon-cloudwatch-agent-ctl
    printf 'UPSHOT_ENVIRONMENT=$ENVIRONMENT\nAWS_REGION=us-east-1\nUPSHOT_DB_CA_FILE=/etc/upshot/rds-ca.pem\n' >/etc/upshot/deploy.conf
    for unit in upshot.service upshot-reconcile.service; do
        printf '[Service]\nEnvironment=AWS_ENDPOINT_URL=$UPSHOT_TEST_AWS_ENDPOINT AWS_ACCESS_KEY_ID=rehearsal AWS_SECRET_ACCESS_KEY=rehearsal UPSHOT_S3_FORCE_PATH_STYLE=true UPSHOT_CLIENT_REQUESTS_PER_MINUTE=1000000 UPSHOT_CLIENT_REQUEST_BURST=1000000 UPSHOT_MAX_INTAKE_IN_FLIGHT_PER_CLIENT=1000000\n' \
            >/etc/systemd/system/\$unit.d/instance-role.conf
    done
"
install -m 0644 "$work/tls/ca.crt" "/proc/$container_pid/root/etc/upshot/rds-ca.pem"
inside install -d -m 0755 /var/lib/fake-aws
inside ln -s /rehearsal/aws/state.json /var/lib/fake-aws/state.json

# ------------------------------------------------------------------ 4. deployment 1 (fresh instance)
agent() { inside python3 /rehearsal/codedeploy-agent.py "$@"; }
echo "deployment 1 (first install):"
check "deployment 1: every lifecycle event succeeds, ValidateService sees /readyz 200" \
    agent /rehearsal/revision-1.zip d-REHEARSAL1
main_pid() { inside systemctl show -P MainPID upshot.service; }
pid1=$(main_pid)
check "deployment 1: current -> releases/d-REHEARSAL1" \
    test "$(inside readlink /opt/upshot/current)" = releases/d-REHEARSAL1
check "service: active under systemd as user upshot" \
    test "$(inside systemctl is-active upshot.service)" = active -a "$(inside ps -o user= -p "$pid1" | tr -d ' ')" = upshot
sandboxed() {
    local status
    status=$(inside cat "/proc/$pid1/status")
    grep -qE '^Seccomp:\s+2$' <<<"$status" && grep -qE '^NoNewPrivs:\s+1$' <<<"$status" &&
        grep -qE '^CapEff:\s+0+$' <<<"$status" &&
        [ "$(inside systemctl show -P MemoryDenyWriteExecute upshot.service)" = yes ]
}
check "service: sandboxed (seccomp filter, no new privileges, no capabilities, W^X) with ONNX Runtime loaded" sandboxed
needs_only_c_runtime() {
    local libs
    libs=$(inside ldd /opt/upshot/current/bin/upshot)
    printf '    %s\n' "${libs//$'\n'/$'\n    '}"
    ! grep -q 'not found' <<<"$libs" &&
        ! grep -vE '^\s*(linux-vdso\.so|/lib64/ld-linux|lib(c|m|gcc_s|dl|pthread|rt)\.so)' <<<"$libs" | grep -q .
}
check "binary: ldd names only the C runtime, nothing missing (no libpq, no libssl)" needs_only_c_runtime
check "service: logs to the journal" sh -c "nsenter -t $container_pid -a journalctl -u upshot.service -o cat | grep -q 'listening on'"
check "env file: 0640 root:upshot; migrate.env and pgpass-admin: root only; pgpass: upshot only" test \
    "$(inside stat -c '%a %U:%G' /etc/upshot/upshot.env /etc/upshot/migrate.env /etc/upshot/pgpass-admin /etc/upshot/pgpass | tr '\n' ' ')" \
    = "640 root:upshot 600 root:root 600 root:root 600 upshot:upshot "
check "env file: no upload queue (its parameter is optional and absent)" \
    sh -c "! nsenter -t $container_pid -a grep -q UPSHOT_UPLOAD_QUEUE_URL /etc/upshot/upshot.env"
role_and_tls() {
    local seen
    seen=$(psql_as_postgres upshot "SELECT string_agg(DISTINCT a.usename || ':' || s.ssl, ',') FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) WHERE a.datname = 'upshot' AND a.pid <> pg_backend_pid()")
    echo "    connections to the database: $seen"
    [ "$seen" = upshot_app:true ]
}
check "database: the service connects as upshot_app, over TLS verified against the CA" role_and_tls
check "database: upshot_app may not create tables" \
    test "$(psql_as_postgres upshot "SELECT has_schema_privilege('upshot_app', 'public', 'CREATE')")" = f
check "timers: reconcile and password refresh enabled" \
    test "$(inside systemctl is-enabled upshot-reconcile.timer upshot-db-password.timer | tr '\n' ' ')" = "enabled enabled "
check "reconcile unit: runs to success under its sandbox" inside systemctl start upshot-reconcile.service
rotate() {
    python3 - "$state" <<'PY'
import json, sys
state = json.load(open(sys.argv[1]))
state["secrets"]["arn:db"] = json.dumps({"username": "upshot_master", "password": "rotated:pass"})
json.dump(state, open(sys.argv[1], "w"))
PY
    inside systemctl start upshot-db-password.service &&
        inside grep -qxF '*:*:*:*:rotated\:pass' /etc/upshot/pgpass-admin
}
check "password refresh: a rotated master secret reaches its password file" rotate
psql_as_postgres postgres "ALTER ROLE upshot_master PASSWORD 'rotated:pass'" >/dev/null

heic_upload() { # what the packaged binary makes of an iPhone photo, on the instance
    inside python3 - "$SERVICE_URL" /rehearsal/cat-gps.heic <<'PY'
import json, sys, urllib.request, uuid
url, path = sys.argv[1], sys.argv[2]
boundary = uuid.uuid4().hex
body = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="IMG_0001.HEIC"\r\n\r\n'.encode()
        + open(path, "rb").read() + f"\r\n--{boundary}--\r\n".encode())
request = urllib.request.Request(url + "/api/v1/images", data=body,
                                 headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
image = json.load(urllib.request.urlopen(request, timeout=60))
shown = urllib.request.urlopen(url + image["urls"]["display"], timeout=60)
print(f"    HEIC stored as {image['content_type']}, {image['width']}x{image['height']}, shown as "
      f"{shown.headers['Content-Type']}, placeholder {image['thumbhash']}")
sys.exit(0 if image["format"] == "heic" and shown.headers["Content-Type"] == "image/jpeg" and image["thumbhash"] else 1)
PY
}
check "upload: an iPhone HEIC photo is stored, and shown from its display rendition" heic_upload

traced_upload() { # an upload whose caller samples its trace reaches the agent's receiver as spans of that trace
    local trace
    trace=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
    inside python3 - "$SERVICE_URL" /rehearsal/cat.jpg "$trace" <<'PY' || return 1
import sys, urllib.request, uuid
url, path, trace = sys.argv[1:]
boundary = uuid.uuid4().hex
body = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="cat.jpg"\r\n\r\n'.encode()
        + open(path, "rb").read() + f"\r\n--{boundary}--\r\n".encode())
request = urllib.request.Request(url + "/api/v1/images", data=body, headers={
    "Content-Type": f"multipart/form-data; boundary={boundary}", "traceparent": f"00-{trace}-00f067aa0ba902b7-01"})
answer = urllib.request.urlopen(request, timeout=60)
sys.exit(0 if answer.headers["traceparent"].startswith(f"00-{trace}-") else 1)
PY
    # The service sends its spans every 5 s (the batch processor's default delay).
    python3 - "$work/otlp" "$trace" <<'PY'
import glob, sys, time
out, trace = sys.argv[1], bytes.fromhex(sys.argv[2])
wanted = [b"POST /api/v1/images", b"upload.store", b"store.put", b"db.commit", b"outbox.publish"]
deadline = time.time() + 30
while time.time() < deadline:
    bodies = [open(f, "rb").read() for f in sorted(glob.glob(f"{out}/*_v1_traces.pb"))]
    ours = b"".join(b for b in bodies if trace in b)
    if all(name in ours for name in wanted):
        print(f"    {len(bodies)} OTLP export(s) received; the traced upload's spans among them")
        sys.exit(0)
    time.sleep(0.5)
print(f"    spans of the traced upload missing: {[n.decode() for n in wanted if n not in ours]}", file=sys.stderr)
sys.exit(1)
PY
}
agent_receives_otlp() {
    inside python3 -c '
import json, sys
otlp = json.load(open("/var/lib/fake-aws/cwagent.json"))["traces"]["traces_collected"]["otlp"]
env = open("/etc/upshot/upshot.env").read()
sys.exit(0 if otlp["http_endpoint"] == "127.0.0.1:4318" and "OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318" in env
         and "OTEL_TRACES_SAMPLER=parentbased_traceidratio" in env else 1)'
}
check "traces: the agent receives OTLP/HTTP on 127.0.0.1:4318, and the service's environment exports there" agent_receives_otlp
check "traces: a traced upload's spans, from the request to the notification's publish, reach the agent" traced_upload

# ------------------------------------------------------------------ deployment 2 under load
echo "deployment 2 (new revision while uploading):"
inside python3 /rehearsal/upload-client.py "$SERVICE_URL" /rehearsal/cat.jpg /run/stop-client /run/client.json \
    "$CLIENT_MAX_SECONDS" "$CLIENT_MAX_UPLOADS" &
client_pid=$!
sleep 2
dep2_ok=0
agent /rehearsal/revision-2.zip d-REHEARSAL2 || dep2_ok=$?
sleep 2   # a few uploads against the new release
inside touch /run/stop-client
client_rc=0
wait "$client_pid" || client_rc=$?
client_pid=''
check "deployment 2: every lifecycle event succeeds, ValidateService sees /readyz 200" test "$dep2_ok" -eq 0
pid2=$(main_pid)
check "deployment 2: current -> releases/d-REHEARSAL2 (new VERSION)" test \
    "$(inside readlink /opt/upshot/current) $(inside cut -d' ' -f1 /opt/upshot/current/VERSION)" = "releases/d-REHEARSAL2 rehearsal-2"
check "deployment 2: previous release kept for a manual switch back" inside test -x /opt/upshot/releases/d-REHEARSAL1/bin/upshot
check "deployment 2: the service was restarted (pid $pid1 -> $pid2)" test -n "$pid2" -a "$pid1" != "$pid2"
check "upload client finished" test "$client_rc" -eq 0
inside cat /run/client.json >"$work/client.json" 2>/dev/null || true

if [ -s "$work/client.json" ]; then
    read -r uploads attempts created conn_errors retried unanswered readable others longest secs < <(python3 - "$work/client.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
s = r["statuses"]
others = sum(v for k, v in s.items() if k != "201")
print(r["uploads"], r["attempts"], s.get("201", 0), r["connection_errors"], r["retried_uploads"],
      r["unanswered_uploads"], r["readable"], others, r["longest_unanswered_s"], r["upload_seconds"])
for e in r["errors"][:10]:
    print("client error:", e, file=sys.stderr)
PY
    )
    echo "uploads: $uploads attempted ($attempts HTTP attempts), $created got 201, $others got another status, $unanswered never answered; $retried retried after $conn_errors connection errors (longest wait for an answer ${longest} s); $readable/$created readable after the deployment; ${secs} s of uploading"
    check "uploads: at least 5 made during the deployment" test "$uploads" -ge 5
    check "uploads: every answer was 201 (no 5xx, no other status)" test "$others" -eq 0 -a "$created" -eq "$uploads"
    check "uploads: every upload got an answer (after retries)" test "$unanswered" -eq 0
    check "uploads: every uploaded id readable afterwards (metadata + file 200)" test "$readable" -eq "$created"
fi

# ------------------------------------------------------------------ idempotency and failure paths
hook() { # hook SCRIPT [VAR=VALUE...]: one hook of the current revision, as the agent runs it
    local script=$1
    shift
    inside env DEPLOYMENT_ID=d-REHEARSAL2 "$@" "/opt/upshot/current/deploy/codedeploy/$script"
}
check "ValidateService again: still 200 (idempotent)" hook validate-service.sh
dead_port=$(free_port)
check "ValidateService fails (non-zero) within its timeout when nothing answers" \
    sh -c "! timeout 20 nsenter -t $container_pid -a env UPSHOT_HEALTH_URL=http://127.0.0.1:$dead_port UPSHOT_VALIDATE_TIMEOUT=3 UPSHOT_VALIDATE_INTERVAL=1 /opt/upshot/current/deploy/codedeploy/validate-service.sh 2>/dev/null"
t0=$SECONDS
check "ApplicationStop: graceful stop (SIGTERM) of the running service" hook application-stop.sh
check "ApplicationStop: stopped within TimeoutStopSec ($((SECONDS - t0)) s)" \
    test "$(inside systemctl is-active upshot.service || true)" = inactive
check "ApplicationStop: the service exited cleanly (no SIGKILL)" \
    test "$(inside systemctl show -P Result upshot.service)" = success

if [ "$failed" -gt 0 ]; then
    echo "--- agent log (last 60 lines)"
    inside tail -n 60 /opt/codedeploy-agent/deployment-logs/codedeploy-agent-deployments.log 2>/dev/null || true
    echo "--- journal of upshot.service (last 40 lines)"
    inside journalctl -u upshot.service -o cat --no-pager 2>/dev/null | tail -n 40 || true
    echo "--- journal of upshot-reconcile.service (last 40 lines)"
    inside journalctl -u upshot-reconcile.service --no-pager 2>/dev/null | tail -n 40 || true
fi
echo "rehearsal: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
