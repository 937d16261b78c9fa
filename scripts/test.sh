#!/usr/bin/env bash
# Runs every Anvil test on a fresh Debian 12 machine with Rust: installs what
# the tests need (Debian packages), starts PostgreSQL, then runs formatting,
# lint and the whole test suite. CI (.ci/run) calls exactly this script.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n=== %s\n' "$*"; }

# --- Debian packages -------------------------------------------------------
# postgresql                      the store suite's second backend
# chromium chromium-driver        the web UI test in a real browser
# iproute2 busybox-static         network namespaces; udhcpc, the initrd
# isc-dhcp-client                 dhclient against Anvil's DHCP
# atftp tftp-hpa curl             TFTP clients against Anvil's TFTP
# qemu-system-x86 qemu-utils      the network-boot VMs (TCG); qemu-utils in the
#                                 same command, or a newer qemu-img is removed
# ipxe ipxe-qemu ovmf             iPXE binaries and ROMs, UEFI firmware
# dnsmasq-base                    the baseline boot server and the "site" DHCP
#                                 server beside Anvil's proxyDHCP
# cpio kmod                       building the test initrd
# openipmi ipmitool               ipmi_sim BMCs and the IPMI fallback driver
# musl-tools zstd lldpd           the commissioning ramdisk (static agent,
#                                 compression) and the LLDP neighbour of its test
#                                 and of anvil-inventory's listen_lldp test
# xz-utils gzip (zstd, qemu-utils) image import: compressed and qcow2 test images
PACKAGES=(postgresql chromium chromium-driver iproute2 busybox-static isc-dhcp-client
    atftp tftp-hpa curl qemu-system-x86 qemu-utils ipxe ipxe-qemu ovmf dnsmasq-base
    cpio kmod openipmi ipmitool musl-tools zstd lldpd xz-utils gzip)
# python3-yaml … python3-serial   Debian cloud-init's Python dependencies: its
#                                 unpacked copy checks what anvil-cloudinit renders;
# dosfstools                      fsck.fat checks its CIDATA images (mtools reads them)
PACKAGES+=(python3-yaml python3-jsonschema python3-configobj python3-jinja2
    python3-netifaces python3-jsonpatch python3-requests python3-oauthlib python3-serial
    dosfstools)
# syslinux syslinux-common mtools   the deployment test disk images
# fdisk e2fsprogs systemd-boot-efi  (scripts/test-image/build.sh): boot loaders,
#                                   partition tables and file systems without mounts
PACKAGES+=(syslinux syslinux-common mtools fdisk e2fsprogs systemd-boot-efi)
# dropbear-bin                      the agent's rescue step test runs the real dropbear
PACKAGES+=(dropbear-bin)
# mdadm                             the RAID 1 deploy test examines its disks' md superblocks
PACKAGES+=(mdadm)
# debian-installer-12-netboot-amd64 python3   e2e_installer boots the real Debian installer; its mirror is http.server
PACKAGES+=(debian-installer-12-netboot-amd64 python3)
need=()
for pkg in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
if ((${#need[@]})); then
    log "installing Debian packages: ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # --allow-downgrades: Debian 12's qemu-system-x86 wants its own qemu-utils.
    apt-get install -y -qq --no-install-recommends --allow-downgrades "${PACKAGES[@]}" >/dev/null
fi

# --- PostgreSQL --------------------------------------------------------------
PG_VERSION=$(ls /usr/lib/postgresql | sort -n | tail -1)
if ! pg_lsclusters -h | awk '{print $4}' | grep -q online; then
    if ! pg_lsclusters -h | grep -q "^$PG_VERSION main"; then
        pg_createcluster "$PG_VERSION" main >/dev/null
    fi
    log "starting PostgreSQL $PG_VERSION"
    pg_ctlcluster "$PG_VERSION" main start
fi
PG_PORT=$(pg_lsclusters -h | awk '$4 == "online" {print $3; exit}')
for _ in $(seq 1 30); do
    runuser -u postgres -- pg_isready -q -p "$PG_PORT" && break
    sleep 1
done
# A role for the tests; each test creates and drops its own database.
runuser -u postgres -- psql -q -p "$PG_PORT" -v ON_ERROR_STOP=1 <<'SQL' >/dev/null
DO $$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'anvil_test') THEN
    CREATE ROLE anvil_test LOGIN CREATEDB PASSWORD 'anvil_test';
  END IF;
END $$;
SQL
runuser -u postgres -- psql -q -p "$PG_PORT" -tc "SELECT 1 FROM pg_database WHERE datname = 'anvil_test'" | grep -q 1 \
    || runuser -u postgres -- createdb -p "$PG_PORT" -O anvil_test anvil_test
export ANVIL_TEST_POSTGRES_URL="postgres://anvil_test:anvil_test@127.0.0.1:${PG_PORT}/anvil_test"

# --- Python venv for sushy-tools (the Redfish emulator) -----------------------
log "sushy-tools venv"
export ANVIL_SUSHY_VENV
ANVIL_SUSHY_VENV=$(bash crates/anvil-power-redfish/scripts/sushy-venv.sh "$PWD/target/sushy-venv")

# --- NetBox 4.7 (issue #5): venv from PyPI + a migrated template database -----
# Once per clean machine (~1-2 min pip, ~20 s to restore and check the template
# database), then a few psql round trips; each NetBox test clones the template.
log "NetBox (scripts/netbox/setup.sh)"
# (Assigned first: `eval "$(...)"` would ignore setup.sh failing.)
netbox_exports=$(bash scripts/netbox/setup.sh "$PWD/target/netbox")
eval "$netbox_exports"

if [[ "${1:-}" == "--setup-only" ]]; then
    echo "export ANVIL_TEST_POSTGRES_URL=$ANVIL_TEST_POSTGRES_URL"
    echo "export ANVIL_NETBOX_HOME=$ANVIL_NETBOX_HOME"
    exit 0
fi

# --- the commissioning ramdisk (rebuilt only when missing or stale) ----------
log "ramdisk (scripts/ramdisk/build.sh)"
export ANVIL_RAMDISK_DIR="$PWD/target/ramdisk"
bash scripts/ramdisk/build.sh "$ANVIL_RAMDISK_DIR"

# --- the deployment test disk images (rebuilt only when missing or stale) ----
log "test disk images (scripts/test-image/build.sh)"
export ANVIL_TEST_IMAGE_DIR="$PWD/target/test-image"
bash scripts/test-image/build.sh "$ANVIL_TEST_IMAGE_DIR"

# --- Debian's cloud-init, unpacked and not installed (its systemd units would
# reconfigure this host at boot): anvil-cloudinit's tests run it on what it renders
log "cloud-init (crates/anvil-cloudinit/scripts/cloud-init-env.sh)"
cloudinit_exports=$(bash crates/anvil-cloudinit/scripts/cloud-init-env.sh "$PWD/target/cloud-init")
eval "$cloudinit_exports"

# --- Rust ----------------------------------------------------------------------
# No incremental caches (3 GB of target/debug in a full test build): CI builds
# once from a clean clone, and disk space, not rebuild time, is what it lacks.
export CARGO_INCREMENTAL=0
log "disk space before the build"
df -h . || true
log "cargo fmt --check"
cargo fmt --all --check
log "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
log "cargo test"
status=0
cargo test --workspace --locked --no-fail-fast -- --test-threads="${ANVIL_TEST_THREADS:-4}" || status=$?
log "disk space after the tests"
df -h . || true
du -sh target/debug 2>/dev/null || true
exit "$status"
