#!/usr/bin/env bash
# Starts and stops one throw-away NetBox for a test or a benchmark, from the
# template database that scripts/netbox/setup.sh migrated once.
#
#   scripts/netbox/instance.sh start DIR    prints DIR/env's content when ready
#   scripts/netbox/instance.sh stop DIR
#
# start: a fresh database cloned from the template, a private redis-server on a
# unix socket in DIR, gunicorn (netbox.wsgi) on 127.0.0.1 on a port the kernel
# picks, `netbox rqworker` (webhooks are RQ jobs), a superuser with a v2 token
# (nbt_<key>.<secret>) and a v1 token (40 chars). Returns once /api/status/
# answers with a running worker. Writes DIR/env (shell syntax):
#   NETBOX_URL NETBOX_TOKEN_V2 NETBOX_TOKEN_V1 NETBOX_USERNAME NETBOX_PASSWORD
#   NETBOX_DB NETBOX_PIDS (redis gunicorn rqworker [watchdog])
# stop: kills exactly the PIDs in DIR/env (after checking each still belongs to
# this instance) and drops the database. Logs stay in DIR.
#
# Reads ANVIL_NETBOX_HOME (printed by setup.sh; default <target dir>/netbox).
# ANVIL_NETBOX_OWNER_PID (optional): stop the instance by itself once this
# process has exited (the Rust helper passes the test process).
# ANVIL_NETBOX_WORKERS sets the number of gunicorn workers (default 2),
# ANVIL_NETBOX_START_TIMEOUT the seconds to wait for readiness (default 300).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
workspace=$(cd "$here/../.." && pwd)
home=${ANVIL_NETBOX_HOME:-${CARGO_TARGET_DIR:-$workspace/target}/netbox}

log() { printf 'netbox-instance: %s\n' "$*" >&2; }
t0=$(date +%s.%N)
# Stage timings, for DIR/start.log: where an instance's start-up time goes.
stage() { awk -v t0="$t0" -v now="$(date +%s.%N)" -v what="$*" 'BEGIN { printf "%6.2f s  %s\n", now - t0, what }' >>"$dir/start.log"; }
die() { printf 'netbox-instance: error: %s\n' "$*" >&2; exit 1; }
usage() { die "usage: $0 start|stop DIR"; }

(($# == 2)) || usage
action=$1
mkdir -p "$2"
dir=$(cd "$2" && pwd)

[[ -f $home/netbox.env ]] || die "$home/netbox.env is missing: run scripts/netbox/setup.sh first"
# shellcheck source=/dev/null
source "$home/netbox.env"

psql_nb() {
    PGPASSWORD=$NETBOX_PG_PASSWORD psql -X -q -h 127.0.0.1 -p "$NETBOX_PG_PORT" -U "$NETBOX_PG_ROLE" \
        -d postgres -v ON_ERROR_STOP=1 "$@"
}

# True if PID is alive and was started for this instance, so that a recycled
# PID is never killed: its environment names DIR, or (redis-server overwrites
# its environment with its process title) its command line contains DIR.
ours() {
    local pid=$1
    {
        tr '\0' '\n' <"/proc/$pid/environ" | grep -qxF "ANVIL_NETBOX_INSTANCE=$dir" \
            || tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF "$dir/"
    } 2>/dev/null
}

kill_ours() {
    local pid pids=() alive
    for pid in "$@"; do
        # $$: stop run by the watchdog, which is one of the instance's PIDs.
        if [[ $pid != "$$" ]] && ours "$pid"; then
            kill -TERM "$pid" 2>/dev/null || true
            pids+=("$pid")
        fi
    done
    # gunicorn and rq shut down gracefully on TERM; give them a few seconds.
    for _ in $(seq 1 50); do
        alive=0
        for pid in "${pids[@]}"; do
            ours "$pid" && alive=1
        done
        ((alive)) || return 0
        sleep 0.1
    done
    for pid in "${pids[@]}"; do
        ours "$pid" && kill -KILL "$pid" 2>/dev/null || true
    done
}

stop() {
    local NETBOX_PIDS="" NETBOX_DB=""
    if [[ -f $dir/env ]]; then
        # shellcheck source=/dev/null
        source "$dir/env"
    elif [[ -f $dir/starting ]]; then
        # shellcheck source=/dev/null
        source "$dir/starting"
    fi
    # shellcheck disable=SC2086
    [[ -n $NETBOX_PIDS ]] && kill_ours $NETBOX_PIDS
    if [[ -n $NETBOX_DB ]]; then
        psql_nb -c "DROP DATABASE IF EXISTS \"$NETBOX_DB\" WITH (FORCE)" >/dev/null
    fi
    rm -f "$dir/env" "$dir/starting" "$dir/redis.sock"
}

# What configuration.py and ours() read, in every process of the instance.
export_instance_env() {
    export ANVIL_NETBOX_INSTANCE="$dir" NETBOX_ROOT="$home" ANVIL_NETBOX_DB_NAME="$db" \
        ANVIL_NETBOX_DB_PORT="$NETBOX_PG_PORT" ANVIL_NETBOX_REDIS_SOCKET="$dir/redis.sock" \
        ANVIL_NETBOX_MEDIA_ROOT="$dir/media"
}

# Remembers what is running so far, so that a failed start can be undone by stop.
note_started() {
    printf 'NETBOX_DB=%s\nNETBOX_PIDS="%s"\n' "$db" "${pids[*]}" >"$dir/starting"
}

start() {
    [[ -f $dir/env ]] && die "$dir/env exists: this instance is running (stop it first)"
    : >"$dir/start.log"
    db="anvil_nb_$(date +%s)_$$_$RANDOM"
    pids=()
    # Any failure from here on (die, set -e) undoes what was started.
    trap 'log "start failed; logs in $dir"; stop' EXIT
    note_started
    export_instance_env

    # The template cannot be copied while a session is connected to it; such a
    # session is short (setup.sh), so retry.
    local created=0
    for _ in $(seq 1 20); do
        if psql_nb -c "CREATE DATABASE \"$db\" TEMPLATE $NETBOX_TEMPLATE_DB" >/dev/null 2>"$dir/createdb.err"; then
            created=1
            break
        fi
        sleep 0.5
    done
    ((created)) || die "could not create $db from $NETBOX_TEMPLATE_DB: $(cat "$dir/createdb.err")"
    stage "database $db created from $NETBOX_TEMPLATE_DB"

    mkdir -p "$dir/media"
    # setsid: the servers must not die with the shell or the test that started
    # them, only by stop (which a test's Drop calls).
    setsid redis-server --port 0 --unixsocket "$dir/redis.sock" --unixsocketperm 700 \
        --save '' --appendonly no --daemonize no </dev/null >"$dir/redis.log" 2>&1 &
    pids+=($!)
    note_started
    for _ in $(seq 1 100); do [[ -S $dir/redis.sock ]] && break; sleep 0.05; done
    [[ -S $dir/redis.sock ]] || die "redis-server did not create $dir/redis.sock"
    stage "redis-server ready"

    # Port 0: the kernel picks a free port, gunicorn logs which one.
    # --preload loads Django once in the master before forking the workers.
    setsid "$NETBOX_VENV/bin/gunicorn" netbox.wsgi --bind 127.0.0.1:0 \
        --workers "${ANVIL_NETBOX_WORKERS:-2}" --threads 3 --preload --timeout 300 \
        --graceful-timeout 5 --pid "$dir/gunicorn.pid" \
        </dev/null >"$dir/gunicorn.log" 2>&1 &
    pids+=($!)
    note_started
    setsid "$NETBOX_VENV/bin/netbox" rqworker high default low \
        </dev/null >"$dir/rqworker.log" 2>&1 &
    pids+=($!)
    note_started

    # A test process killed before its Drop runs (SIGKILL, a timeout) would
    # leave the instance running: a watchdog stops it when the owner is gone.
    if [[ -n ${ANVIL_NETBOX_OWNER_PID:-} ]]; then
        setsid bash -c 'while kill -0 "$1" 2>/dev/null; do sleep 1; done
            exec bash "$2" stop "$3"' watchdog "$ANVIL_NETBOX_OWNER_PID" "$here/instance.sh" "$dir" \
            </dev/null >>"$dir/watchdog.log" 2>&1 &
        pids+=($!)
        note_started
    fi

    # The superuser and its tokens, while gunicorn and the worker load.
    local password
    password=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
    # Plain django.setup() rather than `netbox shell`: the shell's auto-imports
    # cost another second or two of CPU while gunicorn and the worker load.
    ANVIL_NETBOX_PASSWORD="$password" DJANGO_SETTINGS_MODULE=netbox.settings \
        "$NETBOX_VENV/bin/python" -c '
import os
import django
django.setup()
from users.models import Token, User
user = User.objects.create_superuser("admin", "admin@example.invalid", os.environ["ANVIL_NETBOX_PASSWORD"])
v2 = Token(user=user, version=2, description="anvil tests v2")
v2.save()
v1 = Token(user=user, version=1, description="anvil tests v1")
v1.save()
print(f"NETBOX_TOKEN_V2=nbt_{v2.key}.{v2.token}")
print(f"NETBOX_TOKEN_V1={v1.token}")
' </dev/null >"$dir/tokens" 2>"$dir/tokens.log"
    # shellcheck source=/dev/null
    source <(grep -E '^NETBOX_TOKEN_V[12]=[A-Za-z0-9_.]+$' "$dir/tokens")
    [[ -n ${NETBOX_TOKEN_V2:-} && -n ${NETBOX_TOKEN_V1:-} ]] || die "creating the tokens failed: $(cat "$dir/tokens.log")"
    stage "superuser and tokens created"

    local port="" url status=""
    # Four instances starting at once on a busy 2-core machine took ~50 s.
    local timeout=${ANVIL_NETBOX_START_TIMEOUT:-300}
    local deadline=$((SECONDS + timeout))
    while ((SECONDS < deadline)); do
        port=$(sed -n 's#.*Listening at: http://127\.0\.0\.1:\([0-9]*\).*#\1#p' "$dir/gunicorn.log" | head -1)
        [[ -n $port ]] && break
        ours "${pids[1]}" || die "gunicorn exited: $(tail -20 "$dir/gunicorn.log")"
        sleep 0.1
    done
    [[ -n $port ]] || die "gunicorn did not start listening in $timeout s: $(tail -20 "$dir/gunicorn.log")"
    url="http://127.0.0.1:$port"
    stage "gunicorn listening on $url"
    # Ready = the API answers and the RQ worker has registered (no worker, no webhooks).
    while ((SECONDS < deadline)); do
        status=$(curl -s --max-time 10 -H "Authorization: Bearer $NETBOX_TOKEN_V2" "$url/api/status/" || true)
        if [[ $status =~ \"rq-workers-running\":\ *[1-9] ]]; then
            break
        fi
        status=""
        ours "${pids[2]}" || die "rqworker exited: $(tail -20 "$dir/rqworker.log")"
        sleep 0.1
    done
    [[ -n $status ]] || die "NetBox at $url did not become ready (API + RQ worker) in $timeout s"
    stage "ready: /api/status/ answers, RQ worker running"

    # Plain KEY=value lines (every value is [A-Za-z0-9_.:/]; the PIDs are quoted),
    # readable by `source DIR/env` and by the Rust helper alike.
    cat >"$dir/env.tmp" <<ENV
NETBOX_URL=$url
NETBOX_TOKEN_V2=$NETBOX_TOKEN_V2
NETBOX_TOKEN_V1=$NETBOX_TOKEN_V1
NETBOX_USERNAME=admin
NETBOX_PASSWORD=$password
NETBOX_DB=$db
NETBOX_PIDS="${pids[*]}"
ENV
    mv "$dir/env.tmp" "$dir/env"
    rm -f "$dir/starting" "$dir/tokens"
    trap - EXIT
    cat "$dir/env"
}

case $action in
start) start ;;
stop) stop ;;
*) usage ;;
esac
