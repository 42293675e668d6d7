#!/usr/bin/env bash
# Start/stop throwaway backing services for Upshot's integration tests:
# a private PostgreSQL cluster and a moto (fake S3) server, both on 127.0.0.1.
#
# Usage:
#   dir=$(mktemp -d)
#   eval "$(scripts/test-services.sh start "$dir")"
#   trap 'scripts/test-services.sh stop "$dir"' EXIT
#
# On success `start` prints only these `export NAME=value` lines on stdout (all logs go
# to stderr; the lines are also saved in <state-dir>/env):
#   UPSHOT_TEST_PG_URL        postgres://postgres@127.0.0.1:PORT/postgres (trust auth)
#   UPSHOT_TEST_AWS_ENDPOINT  http://127.0.0.1:PORT  (moto; any access key/secret works)
# On failure `start` stops whatever it started, exits 1 and prints just `false`, so
# that the `eval` fails too (eval alone would ignore the exit status).
# `stop` stops both; it tolerates services that are already gone.
#
# For outage tests, a PostgreSQL cluster of its own that a test stops and starts again on the same port:
#   pg-start <state-dir>            create (first time) and start it; prints the export line for its URL
#                                   (with UPSHOT_TEST_PG_PASSWORD set: password authentication over TCP; with
#                                   UPSHOT_TEST_PG_TLS_DIR set to a directory holding server.crt and server.key:
#                                   TLS, as RDS serves it)
#   pg-stop <state-dir> [MODE]      stop it, keeping its data (MODE: fast, or immediate as a crash does)
#   pg-remove <state-dir>           stop it and remove it
#
# Works on a fresh Debian as root or with sudo: installs postgresql and python3-venv
# with apt-get when missing, and moto into ${UPSHOT_TOOLS_DIR:-<repo>/target/tools}/venv.
# Env overrides: UPSHOT_PG_BIN (dir holding initdb/pg_ctl), UPSHOT_TOOLS_DIR.
set -euo pipefail

MOTO_VERSION=5.2.5
WAIT_SECONDS=30

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TOOLS_DIR=${UPSHOT_TOOLS_DIR:-$REPO/target/tools}
VENV=$TOOLS_DIR/venv

log() { printf 'test-services: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

is_root() { [ "$(id -u)" -eq 0 ]; }

# Run a command as root (directly, or through sudo).
as_root() {
    if is_root; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        die "need root or sudo to run: $*"
    fi
}

apt_install() {
    log "apt-get install $*"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >&2
}

# Run a command as the postgres user when we are root (initdb refuses root).
as_pg() {
    if is_root; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# Debian keeps the server binaries in /usr/lib/postgresql/<version>/bin; Amazon Linux in /usr/bin.
find_pg_bin() {
    local d
    for d in "${UPSHOT_PG_BIN:-}" \
        "$(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -name bin -type d 2>/dev/null | sort -V | tail -n 1)" \
        "$(dirname -- "$(command -v initdb 2>/dev/null || echo /nonexistent/initdb)")"; do
        if [ -n "$d" ] && [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ]; then
            printf '%s\n' "$d"
            return 0
        fi
    done
}

# ---------------------------------------------------------------- PostgreSQL

start_pg() {
    local state=$1 pgbin pgdir
    pgbin=$(find_pg_bin)
    if [ -z "$pgbin" ]; then
        apt_install postgresql
        pgbin=$(find_pg_bin)
        [ -n "$pgbin" ] || die "postgresql installed but no /usr/lib/postgresql/*/bin found"
    fi
    printf '%s\n' "$pgbin" >"$state/pg.bin"
    log "postgres binaries: $pgbin"

    pgdir=$state/pg
    rm -rf "$pgdir"
    mkdir -p "$pgdir"
    if is_root; then
        id -u postgres >/dev/null 2>&1 || useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres
        chmod a+x "$state"
        chown postgres: "$pgdir"
        chmod 0700 "$pgdir"
        if ! runuser -u postgres -- test -w "$pgdir"; then
            # A parent of the state dir is not searchable by postgres (e.g. under /root).
            rm -rf "$pgdir"
            pgdir=$(mktemp -d /tmp/upshot-pg.XXXXXX)
            chown postgres: "$pgdir"
            log "state dir not reachable by user postgres; cluster in $pgdir instead"
        fi
    fi
    printf '%s\n' "$pgdir" >"$state/pg.dir"

    # Trust by default; with UPSHOT_TEST_PG_PASSWORD, TCP connections must authenticate (scram-sha-256), as on RDS.
    local auth=(-A trust) userinfo=postgres
    if [ -n "${UPSHOT_TEST_PG_PASSWORD:-}" ]; then
        printf '%s\n' "$UPSHOT_TEST_PG_PASSWORD" >"$state/pg.pwfile"
        is_root && chown postgres: "$state/pg.pwfile"
        auth=(--auth-local=trust --auth-host=scram-sha-256 --pwfile="$state/pg.pwfile")
        userinfo=postgres:$UPSHOT_TEST_PG_PASSWORD
    fi
    log "initdb $pgdir"
    as_pg "$pgbin/initdb" -D "$pgdir" -U postgres "${auth[@]}" -E UTF8 --no-locale --no-sync >"$state/initdb.log" 2>&1 ||
        { cat "$state/initdb.log" >&2; die "initdb failed"; }
    rm -f "$state/pg.pwfile"
    if [ -n "${UPSHOT_TEST_PG_TLS_DIR:-}" ]; then
        install -m 0600 "$UPSHOT_TEST_PG_TLS_DIR/server.crt" "$UPSHOT_TEST_PG_TLS_DIR/server.key" "$pgdir/"
        is_root && chown postgres: "$pgdir/server.crt" "$pgdir/server.key"
        printf 'ssl = on\n' >>"$pgdir/postgresql.conf"
    fi

    free_port >"$state/pg.port"
    run_pg "$state"
    printf 'export UPSHOT_TEST_PG_URL=%q\n' "postgres://$userinfo@127.0.0.1:$(cat "$state/pg.port")/postgres" >>"$state/env"
}

# Starts the cluster that start_pg created, on the port it chose.
run_pg() {
    local state=$1 pgbin pgdir port sockdir
    pgbin=$(cat "$state/pg.bin")
    pgdir=$(cat "$state/pg.dir")
    port=$(cat "$state/pg.port")
    # Unix socket paths are limited to ~107 bytes; skip the socket if the dir is too deep.
    sockdir=$pgdir
    if [ $(( ${#pgdir} + 20 )) -gt 100 ]; then sockdir=''; fi
    log "starting postgres on 127.0.0.1:$port"
    if ! as_pg "$pgbin/pg_ctl" -D "$pgdir" -w -t "$WAIT_SECONDS" -l "$pgdir/log" \
        -o "-c listen_addresses=127.0.0.1 -p $port -k '$sockdir' -c fsync=off -c max_connections=200" \
        start >&2; then
        tail -n 30 "$pgdir/log" >&2 || true
        die "postgres failed to start"
    fi
}

# Stops the cluster and keeps it, as a database restart or failover would.
halt_pg() {
    local state=$1 mode=${2:-fast}
    case $mode in fast | immediate) ;; *) die "unknown stop mode: $mode" ;; esac
    log "stopping postgres (-m $mode)"
    as_pg "$(cat "$state/pg.bin")/pg_ctl" -D "$(cat "$state/pg.dir")" -w -t "$WAIT_SECONDS" -m "$mode" stop >&2
}

stop_pg() {
    local state=$1 pgbin pgdir
    [ -f "$state/pg.dir" ] || return 0
    pgdir=$(cat "$state/pg.dir")
    pgbin=$(cat "$state/pg.bin" 2>/dev/null || find_pg_bin)
    if [ -f "$pgdir/postmaster.pid" ] && [ -n "$pgbin" ]; then
        log "stopping postgres ($pgdir)"
        as_pg "$pgbin/pg_ctl" -D "$pgdir" -w -t "$WAIT_SECONDS" -m fast stop >&2 ||
            log "pg_ctl stop failed (already stopped?)"
    fi
    # Fallback cluster dir that start created outside the state dir.
    case $pgdir in
        /tmp/upshot-pg.*) rm -rf "$pgdir" ;;
    esac
    rm -f "$state/pg.dir"
}

# ---------------------------------------------------------------------- moto

ensure_moto() {
    local have=''
    if [ -x "$VENV/bin/python" ]; then
        have=$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("moto")); import flask' 2>/dev/null || true)
    fi
    if [ "$have" = "$MOTO_VERSION" ] && [ -x "$VENV/bin/moto_server" ]; then
        return 0
    fi
    if [ ! -x "$VENV/bin/pip" ]; then
        log "creating venv $VENV"
        mkdir -p "$TOOLS_DIR"
        if ! python3 -m venv "$VENV" >&2 2>/dev/null; then
            rm -rf "$VENV"
            apt_install python3-venv
            python3 -m venv "$VENV" >&2
        fi
    fi
    log "pip install moto[server]==$MOTO_VERSION"
    "$VENV/bin/pip" install -q --disable-pip-version-check "moto[server]==$MOTO_VERSION" >&2
}

start_moto() {
    local state=$1 port pid i
    ensure_moto
    port=$(free_port)
    log "starting moto on 127.0.0.1:$port"
    nohup "$VENV/bin/moto_server" -H 127.0.0.1 -p "$port" </dev/null >"$state/moto.log" 2>&1 &
    pid=$!
    printf '%s\n' "$pid" >"$state/moto.pid"
    for ((i = 0; i < WAIT_SECONDS * 5; i++)); do
        if "$VENV/bin/python" - "$port" <<'EOF' 2>/dev/null; then
import sys, urllib.request
urllib.request.urlopen("http://127.0.0.1:%s/moto-api/" % sys.argv[1], timeout=1).read()
EOF
            printf 'export UPSHOT_TEST_AWS_ENDPOINT=%q\n' "http://127.0.0.1:$port" >>"$state/env"
            return 0
        fi
        kill -0 "$pid" 2>/dev/null || { tail -n 30 "$state/moto.log" >&2; die "moto exited"; }
        sleep 0.2
    done
    tail -n 30 "$state/moto.log" >&2
    die "moto did not answer within ${WAIT_SECONDS}s"
}

stop_moto() {
    local state=$1 pid i
    [ -f "$state/moto.pid" ] || return 0
    pid=$(cat "$state/moto.pid")
    # Only signal the pid if it is still our moto_server (pids get reused).
    if [ -n "$pid" ] && grep -qs moto_server "/proc/$pid/cmdline"; then
        log "stopping moto (pid $pid)"
        kill "$pid" 2>/dev/null || true
        for ((i = 0; i < 50; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.2
        done
        kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$state/moto.pid"
}

# ---------------------------------------------------------------------- main

cleanup_failed_start() {
    if [ "$1" -ne 0 ]; then
        log "start failed; stopping what was started"
        stop_moto "$state"
        stop_pg "$state"
        # `eval "$(... start ...)"` ignores our exit status; make the eval itself fail.
        echo false
    fi
}

usage() { die "usage: $0 start|stop|pg-start|pg-stop|pg-remove <state-dir> [stop mode]"; }

[ $# -eq 2 ] || { [ $# -eq 3 ] && [ "$1" = pg-stop ]; } || usage
cmd=$1
mkdir -p "$2"
state=$(cd "$2" && pwd)

case $cmd in
    start)
        started=$SECONDS
        # Clean up whatever a previous run left in this state dir.
        stop_moto "$state"
        stop_pg "$state"
        # On any failure, do not leave half the services running.
        trap 'cleanup_failed_start $?' EXIT
        rm -f "$state/env"
        start_pg "$state"
        start_moto "$state"
        trap - EXIT
        cat "$state/env"
        log "services up in $((SECONDS - started))s"
        ;;
    stop)
        stop_moto "$state"
        stop_pg "$state"
        ;;
    pg-start)
        if [ -f "$state/pg.port" ] && [ -f "$state/pg.dir" ]; then
            run_pg "$state"
        else
            rm -f "$state/env"
            trap 'cleanup_failed_start $?' EXIT
            start_pg "$state"
            trap - EXIT
        fi
        cat "$state/env"
        ;;
    pg-stop) halt_pg "$state" "${3:-fast}" ;;
    pg-remove)
        stop_pg "$state"
        rm -f "$state/pg.port" "$state/env"
        ;;
    *) usage ;;
esac
