#!/usr/bin/env bash
# Prepares, once, everything a throw-away NetBox needs for Anvil's tests and
# benchmarks (issue #5): Debian packages, a venv with NetBox from PyPI, a
# configuration, and a migrated *template database* in the local PostgreSQL
# cluster (the one scripts/test.sh starts). scripts/netbox/instance.sh then
# clones that template per test in about a second instead of running NetBox's
# ~330 migrations (minutes) every time.
#
#   scripts/netbox/setup.sh [STATE_DIR]       default: <target dir>/netbox
#
# Idempotent and fast when already done (a few psql round trips); safe to run
# concurrently (flock). Prints the `export` lines the tests read:
#   ANVIL_NETBOX_HOME   the STATE_DIR (instance.sh and the Rust helper read it)
# Progress goes to stderr, so `eval "$(scripts/netbox/setup.sh)"` works.
set -euo pipefail

NETBOX_VERSION=4.7.3
# Everything keyed by the version: bumping it builds a new venv and template
# beside the old ones instead of mixing them.
VERSION_TAG=${NETBOX_VERSION//./_}
# ANVIL_NETBOX_TEMPLATE_DB only to prove a from-scratch setup without dropping
# the template other runs on this machine are cloning.
TEMPLATE_DB=${ANVIL_NETBOX_TEMPLATE_DB:-anvil_netbox_tpl_${VERSION_TAG}}
PG_ROLE=anvil_netbox
PG_PASSWORD=anvil_netbox

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
workspace=$(cd "$here/../.." && pwd)
state=${1:-${CARGO_TARGET_DIR:-$workspace/target}/netbox}
mkdir -p "$state"
state=$(cd "$state" && pwd)

log() { printf 'netbox-setup: %s\n' "$*" >&2; }
die() { printf 'netbox-setup: error: %s\n' "$*" >&2; exit 1; }

# Every daemon started below gets `9>&- 8>&-`: one that inherited a lock fd
# would hold the lock for its whole life and hang the next setup.
exec 9>"$state/setup.flock"
flock 9

# --- Debian packages ------------------------------------------------------------
# redis-server          one private Redis per instance (cache + RQ queues)
# libpq-dev gcc         pip builds psycopg's C extension
# postgresql            the cluster that holds the template and instance databases
# curl                  instance.sh waits for /api/status/
PACKAGES=(redis-server libpq-dev gcc postgresql curl)
need=()
for pkg in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
if ((${#need[@]})); then
    log "installing Debian packages: ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
fi
# Debian starts a system-wide Redis on port 6379 when the package is installed;
# the instances never use it (each runs its own on a unix socket).

# --- PostgreSQL: the cluster scripts/test.sh uses (same discovery) --------------
PG_VERSION=$(ls /usr/lib/postgresql | sort -n | tail -1)
if ! pg_lsclusters -h | awk '{print $4}' | grep -q online; then
    if ! pg_lsclusters -h | grep -q "^$PG_VERSION main"; then
        pg_createcluster "$PG_VERSION" main >&2
    fi
    log "starting PostgreSQL $PG_VERSION"
    pg_ctlcluster "$PG_VERSION" main start >&2 9>&- 8>&-
fi
PG_PORT=$(pg_lsclusters -h | awk '$4 == "online" {print $3; exit}')
for _ in $(seq 1 30); do
    runuser -u postgres -- pg_isready -q -p "$PG_PORT" && break
    sleep 1
done
pg_super() {
    PGOPTIONS='-c client_min_messages=warning' runuser -u postgres -- \
        psql -X -q -p "$PG_PORT" -v ON_ERROR_STOP=1 "$@"
}
# A role of our own: instance.sh creates and drops databases with it over
# loopback, without root or the postgres user. synchronous_commit off: a test
# NetBox need not survive a crash, and migrating and seeding get much faster.
pg_super >/dev/null <<SQL
DO \$\$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$PG_ROLE') THEN
    CREATE ROLE $PG_ROLE LOGIN CREATEDB PASSWORD '$PG_PASSWORD';
  END IF;
END \$\$;
ALTER ROLE $PG_ROLE SET synchronous_commit = off;
SQL
template_exists() {
    pg_super -tAc "SELECT 1 FROM pg_database WHERE datname = '$TEMPLATE_DB'" | grep -q 1
}

# --- Python >= 3.12 (NetBox 4.7 needs it; Debian 12's python3 is 3.11) ----------
find_python() {
    if [[ -n ${ANVIL_NETBOX_PYTHON:-} ]]; then
        echo "$ANVIL_NETBOX_PYTHON"
        return
    fi
    local root minor candidate
    if command -v pyenv >/dev/null 2>&1; then
        root=$(pyenv root)
        for minor in 3.12 3.13; do
            candidate=$(ls -d "$root"/versions/"$minor".* 2>/dev/null | sort -V | tail -1)
            if [[ -n $candidate && -x $candidate/bin/python3 ]]; then
                echo "$candidate/bin/python3"
                return
            fi
        done
    fi
    for minor in 3.12 3.13; do
        if command -v "python$minor" >/dev/null 2>&1; then
            command -v "python$minor"
            return
        fi
    done
    return 1
}

venv="$state/venv-$NETBOX_VERSION"
venv_marker="$venv/.anvil-netbox-ok"
if [[ ! -f $venv_marker ]]; then
    python=$(find_python) || die "no Python 3.12 or 3.13 found (pyenv versions, python3.12 on PATH, or set ANVIL_NETBOX_PYTHON)"
    log "creating venv with $python and installing netbox==$NETBOX_VERSION (compiles psycopg-c: 1-2 min)"
    rm -rf "$venv"
    "$python" -m venv "$venv" >&2
    if ! "$venv/bin/pip" install --quiet --disable-pip-version-check "netbox==$NETBOX_VERSION" >&2; then
        rm -rf "$venv"
        die "pip could not install netbox==$NETBOX_VERSION (no access to PyPI?)"
    fi
    touch "$venv_marker"
fi

# --- configuration.py -----------------------------------------------------------
# One file for the template migration and for every instance: what differs per
# instance (database name, Redis socket, media dir) comes from the environment
# that instance.sh sets. The secrets are random per STATE_DIR; the pepper only
# has to match the tokens each instance creates for itself.
conf="$state/conf/configuration.py"
if [[ ! -f $conf ]]; then
    mkdir -p "$state/conf"
    secret_key=$("$venv/bin/python" -c 'import secrets; print(secrets.token_urlsafe(60))')
    pepper=$("$venv/bin/python" -c 'import secrets; print(secrets.token_urlsafe(60))')
    cat >"$conf.tmp" <<PY
# Written by scripts/netbox/setup.sh for Anvil's throw-away test NetBoxes.
# Loopback only; per-instance values come from instance.sh's environment.
import os


def _env(name):
    try:
        return os.environ[name]
    except KeyError:
        raise RuntimeError(f"{name} is not set: start NetBox through scripts/netbox/instance.sh") from None


ALLOWED_HOSTS = ['127.0.0.1', 'localhost', '[::1]']
DATABASES = {
    'default': {
        'ENGINE': 'django.db.backends.postgresql',
        'NAME': _env('ANVIL_NETBOX_DB_NAME'),
        'USER': '$PG_ROLE',
        'PASSWORD': '$PG_PASSWORD',
        'HOST': '127.0.0.1',
        'PORT': _env('ANVIL_NETBOX_DB_PORT'),
        'CONN_MAX_AGE': 300,
    }
}
_redis_url = 'unix://' + os.environ.get('ANVIL_NETBOX_REDIS_SOCKET', '/nonexistent/redis.sock')
REDIS = {
    'tasks': {'URL': _redis_url + '?db=0'},
    'caching': {'URL': _redis_url + '?db=1'},
}
SECRET_KEY = '$secret_key'
API_TOKEN_PEPPERS = {1: '$pepper'}
MEDIA_ROOT = os.environ.get('ANVIL_NETBOX_MEDIA_ROOT', '$state/media')
# A test instance never phones home.
CENSUS_REPORTING_ENABLED = False
RELEASE_CHECK_URL = None
PY
    mv "$conf.tmp" "$conf"
fi

# --- the template database, built once per NetBox version ----------------------
# Fast path: restore template-<version>.sql.gz (beside this script: a pg_dump of
# a database NetBox's own `migrate` produced, ~90 KB), then `migrate --check`
# proves the installed NetBox has no migration the dump lacks. Seconds instead
# of the 5-10 minutes of ~330 migrations on 2 cores. Without a dump, or if it
# does not restore or check, migrate for real. When bumping NETBOX_VERSION, run
# once with ANVIL_NETBOX_WRITE_DUMP=1: it migrates for real and writes the dump.
dump="$here/template-$NETBOX_VERSION.sql.gz"
# The template is per cluster, not per STATE_DIR: two checkouts setting up at
# once must not both build it.
exec 8>"/tmp/anvil-netbox-$TEMPLATE_DB-$PG_PORT.lock"
flock 8
if ! template_exists; then
    building="${TEMPLATE_DB}_build"
    fresh_db() {
        pg_super -c "DROP DATABASE IF EXISTS $building" >/dev/null
        pg_super -c "CREATE DATABASE $building OWNER $PG_ROLE" >/dev/null
    }
    start=$(date +%s)
    # Migrations touch the cache: give them a Redis of their own.
    redis_dir=$(mktemp -d)
    redis-server --port 0 --unixsocket "$redis_dir/redis.sock" --save '' --appendonly no \
        --daemonize no >"$redis_dir/redis.log" 2>&1 9>&- 8>&- &
    redis_pid=$!
    trap 'kill $redis_pid 2>/dev/null; rm -rf "$redis_dir"' EXIT
    for _ in $(seq 1 50); do [[ -S $redis_dir/redis.sock ]] && break; sleep 0.1; done
    netbox_on_build() {
        NETBOX_ROOT=$state ANVIL_NETBOX_DB_NAME=$building ANVIL_NETBOX_DB_PORT=$PG_PORT \
            ANVIL_NETBOX_REDIS_SOCKET="$redis_dir/redis.sock" "$venv/bin/netbox" "$@"
    }
    fresh_db
    how=""
    if [[ -f $dump && ${ANVIL_NETBOX_WRITE_DUMP:-} != 1 ]]; then
        log "restoring $(basename "$dump") and checking it against NetBox's migrations"
        if gunzip -c "$dump" | PGPASSWORD=$PG_PASSWORD psql -X -q -h 127.0.0.1 -p "$PG_PORT" \
            -U "$PG_ROLE" -d "$building" -v ON_ERROR_STOP=1 >"$state/restore.log" 2>&1 \
            && netbox_on_build migrate --check >>"$state/restore.log" 2>&1; then
            how="restored from $(basename "$dump")"
        else
            log "the dump did not restore or lacks migrations (see $state/restore.log); migrating instead"
            fresh_db
        fi
    fi
    if [[ -z $how ]]; then
        log "migrating a fresh NetBox $NETBOX_VERSION database (~330 migrations, 5-10 minutes)"
        netbox_on_build migrate --no-input >"$state/migrate.log" 2>&1 \
            || die "netbox migrate failed; see $state/migrate.log"
        how="migrated"
        if [[ ${ANVIL_NETBOX_WRITE_DUMP:-} == 1 ]]; then
            # -n: no timestamp in the gzip header, so an unchanged dump is byte-identical.
            runuser -u postgres -- pg_dump -p "$PG_PORT" --no-owner --no-privileges "$building" \
                | gzip -9n >"$dump.tmp"
            mv "$dump.tmp" "$dump"
            log "wrote $dump"
        fi
    fi
    kill "$redis_pid" 2>/dev/null || true
    wait "$redis_pid" 2>/dev/null || true
    rm -rf "$redis_dir"
    trap - EXIT
    # Renaming last makes the template's existence the "build finished" mark.
    pg_super -c "ALTER DATABASE $building RENAME TO $TEMPLATE_DB" >/dev/null
    pg_super -c "ALTER DATABASE $TEMPLATE_DB IS_TEMPLATE true" >/dev/null
    log "template $TEMPLATE_DB $how in $(($(date +%s) - start)) s"
fi

exec 8>&-

# --- what instance.sh reads ----------------------------------------------------
cat >"$state/netbox.env.tmp" <<ENV
NETBOX_VERSION=$NETBOX_VERSION
NETBOX_VENV=$venv
NETBOX_TEMPLATE_DB=$TEMPLATE_DB
NETBOX_PG_PORT=$PG_PORT
NETBOX_PG_ROLE=$PG_ROLE
NETBOX_PG_PASSWORD=$PG_PASSWORD
ENV
mv "$state/netbox.env.tmp" "$state/netbox.env"
echo "export ANVIL_NETBOX_HOME=$state"
