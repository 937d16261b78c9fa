#!/usr/bin/env bash
# Unpacks Debian's cloud-init into DIR (default target/cloud-init) WITHOUT
# installing it, and prints `export ANVIL_CLOUDINIT_ROOT=DIR`.
#
# Why not `apt-get install cloud-init`: the package enables systemd units that
# run at the next boot of the host and rewrite its network and SSH settings; the
# tests only need its Python module and its `cloud-init` entry point, which run
# from the unpacked tree with PYTHONPATH. Its Python dependencies
# (python3-yaml, -jsonschema, -configobj, -jinja2, -netifaces, -jsonpatch,
# -requests, -oauthlib, -serial) are plain libraries, installed by
# scripts/test.sh from its PACKAGES list.
set -euo pipefail
dir=${1:-"$(cd "$(dirname "$0")/../../.." && pwd)/target/cloud-init"}
mkdir -p "$dir"
if [[ ! -x "$dir/root/usr/bin/cloud-init" ]]; then
    (
        cd "$dir"
        rm -f cloud-init_*.deb
        # apt-get download fetches the candidate version of the configured
        # Debian mirror into the current directory (no root needed).
        # (Package lists may be missing on a machine that had everything
        # else installed: refresh them once and retry.)
        apt-get download -qq cloud-init >&2 || { apt-get update -qq >&2 && apt-get download -qq cloud-init >&2; }
        rm -rf root
        dpkg -x cloud-init_*.deb root
    )
fi
# Sanity check: the module imports with the system Python and its libraries.
PYTHONPATH="$dir/root/usr/lib/python3/dist-packages" /usr/bin/python3 -c 'import cloudinit.cmd.main' >&2
echo "export ANVIL_CLOUDINIT_ROOT=$dir/root"
