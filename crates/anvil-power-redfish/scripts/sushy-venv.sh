#!/usr/bin/env bash
# Creates, once, the Python virtualenv with sushy-tools (OpenStack's Redfish
# emulator) that the anvil-power-redfish tests run against, and prints its
# path. Idempotent and safe to run concurrently (flock); a finished venv is
# marked and reused. The tests call this script; so can CI before the tests.
#
#   crates/anvil-power-redfish/scripts/sushy-venv.sh [DIR]
#
# DIR defaults to $CARGO_TARGET_DIR/sushy-venv, else <workspace>/target/sushy-venv.
# Needs python3 with the venv module and access to PyPI (or a pip cache).
set -euo pipefail

SUSHY_TOOLS_VERSION=2.2.0

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
workspace=$(cd "$here/../../.." && pwd)
dir=${1:-${CARGO_TARGET_DIR:-$workspace/target}/sushy-venv}
marker="$dir/.anvil-sushy-tools-$SUSHY_TOOLS_VERSION"

if [[ -f $marker ]]; then
    echo "$dir"
    exit 0
fi

mkdir -p "$(dirname "$dir")"
exec 9>"$dir.lock"
flock 9
# Another process may have finished it while we waited for the lock.
if [[ -f $marker ]]; then
    echo "$dir"
    exit 0
fi

rm -rf "$dir"
if ! python3 -m venv "$dir" >&2; then
    echo "sushy-venv: 'python3 -m venv' failed (on Debian: apt-get install python3-venv)" >&2
    exit 1
fi
# bcrypt hashes the test users' passwords: sushy-tools accepts bcrypt only.
if ! "$dir/bin/pip" install --quiet --disable-pip-version-check \
    "sushy-tools==$SUSHY_TOOLS_VERSION" bcrypt >&2; then
    echo "sushy-venv: pip could not install sushy-tools==$SUSHY_TOOLS_VERSION (no access to PyPI?)" >&2
    rm -rf "$dir"
    exit 1
fi
touch "$marker"
echo "$dir"
