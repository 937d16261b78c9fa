#!/usr/bin/env bash
# Installs the Debian packages the end-to-end network-boot tests
# (crates/anvil/tests/e2e_boot.rs) need, if any is missing:
#   qemu-system-x86 qemu-utils  the VMs (TCG); qemu-utils in the same command,
#                               or installing Debian 12's qemu-system-x86
#                               removes a newer qemu-utils (qemu-img)
#   ipxe-qemu                   QEMU's NIC option ROMs (iPXE) for BIOS boots
#   ipxe                        ipxe.efi / undionly.kpxe served over TFTP
#   ovmf                        UEFI firmware
#   dnsmasq-base                the baseline DHCP+TFTP server, and the "site"
#                               DHCP server of the proxyDHCP test (the binary
#                               only: `dnsmasq` would also start a system
#                               service)
#   busybox-static              the discovery initrd, and udhcpc test clients
#   iproute2                    ip netns / bridge / tap / veth
#   cpio kmod                   building the initrd (depmod)
# Usage: scripts/boot-assets/install-deps.sh
set -euo pipefail
PKGS=(qemu-system-x86 qemu-utils ipxe-qemu ipxe ovmf dnsmasq-base busybox-static iproute2 cpio kmod)
need=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
if ((${#need[@]})); then
    echo "installing Debian packages for the network-boot tests: ${need[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # One command, with qemu-utils among them (see above).
    apt-get install -y -qq --no-install-recommends "${PKGS[@]}" >/dev/null
fi
