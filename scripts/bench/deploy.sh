#!/usr/bin/env bash
# Deployment benchmark (figures in docs/benchmarks.md, "Deployment"): the
# ignored tests of crates/anvil/tests/deploy_bench.rs, one VM at a time
# (QEMU TCG behind an ipmi_sim BMC, Anvil's own DHCP/TFTP/HTTP, the real
# agent in the real ramdisk):
#   bios: ready -> booted from disk for the 64 MiB test image per step (1 GiB
#         RAM); then on 256 MiB of RAM: a plain `wget -O- | dd` and `wget -O- |
#         sha256sum` of a dense 512 MiB raw image in a rescue boot of the same
#         machine (over SSH), and deployments of 512 MiB and 2 GiB images,
#         sparse and dense, each booted from disk and released, with the
#         agent's write_image time and CPU seconds;
#   uefi: ready -> booted from disk for the 64 MiB test image per step.
# Prints the `deploy-bench:` lines of this run (also appended to
# target/e2e-boot/deploy-bench.txt).
#
# Usage: scripts/bench/deploy.sh [TESTS]
#   TESTS  space-separated, default "bios uefi"
# Needs root and ~8 GB free under target/ while it runs (scratch images and
# the imported copies are deleted as it goes). Takes ~30 min on 2 cores.
# Installs what it needs (the packages of scripts/test.sh's VM tests, and
# openssh-client for the rescue system).
set -euo pipefail
cd "$(dirname "$0")/../.."
TESTS=${1:-"bios uefi"}
bash scripts/boot-assets/install-deps.sh
PKGS=(openipmi ipmitool lldpd musl-tools zstd openssh-client syslinux syslinux-common
    mtools fdisk e2fsprogs systemd-boot-efi)
need=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
if ((${#need[@]})); then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
export ANVIL_RAMDISK_DIR="$PWD/target/ramdisk"
bash scripts/ramdisk/build.sh "$ANVIL_RAMDISK_DIR"
export ANVIL_TEST_IMAGE_DIR="$PWD/target/test-image"
bash scripts/test-image/build.sh "$ANVIL_TEST_IMAGE_DIR"

log=target/e2e-boot/deploy-bench.txt
mkdir -p target/e2e-boot
before=$(wc -l 2>/dev/null <"$log" || echo 0)
# Release build: importing a 2 GiB image (sha256, zstd) in a debug build
# takes minutes of the run; the figures are the VM's either way.
cargo test -q --release -p anvil --test deploy_bench --no-run
df -h target | tail -1 >&2
for t in $TESTS; do
    echo "deploy bench: $t (load $(cut -d' ' -f1-3 /proc/loadavg))" >&2
    cargo test -q --release -p anvil --test deploy_bench -- --ignored --exact "deploy_bench_$t" \
        --nocapture --test-threads=1 >&2
done
echo "Deployment (QEMU TCG), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg) at the end"
tail -n +"$((before + 1))" "$log" | sed 's/^deploy-bench: //'
