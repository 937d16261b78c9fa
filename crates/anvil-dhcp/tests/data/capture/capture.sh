#!/bin/bash
# Captures the DHCP packets of real boot clients, with no server answering,
# inside a network namespace of its own (nothing leaves it). Used once to
# produce tests/data/*.bin; see tests/data/README.md.
#
# Needs root and: iproute2 tcpdump qemu-system-x86 ipxe-qemu ovmf
#                 busybox-static isc-dhcp-client python3
# Usage: capture.sh OUTDIR
set -euo pipefail
OUT=${1:?usage: capture.sh OUTDIR}
mkdir -p "$OUT"
NS=anvil-dhcp-capture-$$
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    sleep 1
    ip netns del "$NS" 2>/dev/null || true
}
trap cleanup EXIT

ip netns add "$NS"
ipn() { ip -n "$NS" "$@"; }
ipn link set lo up
ipn link add br0 type bridge
ipn link set br0 up
for i in 0 1 2; do
    ipn tuntap add dev tap$i mode tap
    ipn link set tap$i master br0 up
done
ipn link add vc0 type veth peer name vb0
ipn link set vb0 master br0 up
ipn link set vc0 address 52:54:00:77:00:10 up

ip netns exec "$NS" tcpdump -i br0 -U -w "$OUT/all.pcap" 'udp port 67 or udp port 68 or udp port 4011' &
PIDS+=($!)
sleep 2

UUID=4c4c4544-0042-3510-8052-b4c04f4d4e31
# 1. BIOS + QEMU's iPXE option ROM (e1000, ipxe-qemu's efi-e1000.rom).
ip netns exec "$NS" timeout 90 qemu-system-x86_64 -display none -nodefaults -m 256 \
    -uuid "$UUID" -boot n \
    -netdev tap,id=n0,ifname=tap0,script=no,downscript=no \
    -device e1000,netdev=n0,mac=52:54:00:77:00:01 >/dev/null 2>&1 &
PIDS+=($!)
# 2. UEFI (OVMF) with no option ROM: OVMF's own PXE (arch 7), then its HTTP
#    boot client (arch 16, HTTPClient) once PXE has timed out.
cp /usr/share/ovmf/OVMF.fd "$OUT/ovmf-pxe.fd"
ip netns exec "$NS" timeout 240 qemu-system-x86_64 -display none -nodefaults -m 256 \
    -uuid "$UUID" -bios "$OUT/ovmf-pxe.fd" \
    -netdev tap,id=n1,ifname=tap1,script=no,downscript=no \
    -device virtio-net-pci,netdev=n1,romfile=,mac=52:54:00:77:00:02 >/dev/null 2>&1 &
PIDS+=($!)
# 3. UEFI (OVMF) with QEMU's iPXE EFI ROM (efi-virtio.rom): iPXE under UEFI.
cp /usr/share/ovmf/OVMF.fd "$OUT/ovmf-ipxe.fd"
ip netns exec "$NS" timeout 120 qemu-system-x86_64 -display none -nodefaults -m 256 \
    -uuid "$UUID" -bios "$OUT/ovmf-ipxe.fd" \
    -netdev tap,id=n2,ifname=tap2,script=no,downscript=no \
    -device virtio-net-pci,netdev=n2,mac=52:54:00:77:00:03 >/dev/null 2>&1 &
PIDS+=($!)

sleep 5
# 4. busybox udhcpc, plain.
ip netns exec "$NS" busybox udhcpc -i vc0 -f -q -n -t 2 -T 2 -s /bin/true || true
# 5. ISC dhclient (one try; it gives up after -timeout).
ipn link set vc0 address 52:54:00:77:00:11
mkdir -p "$OUT/dhclient"
cat > "$OUT/dhclient/dhclient.conf" <<'CONF'
timeout 8;
retry 1;
CONF
ip netns exec "$NS" timeout 20 dhclient -1 -d -v -cf "$OUT/dhclient/dhclient.conf" \
    -lf "$OUT/dhclient/leases" -pf "$OUT/dhclient/pid" -sf /bin/true vc0 || true

# Wait for the VMs (their timeouts end them).
for p in "${PIDS[@]:1}"; do wait "$p" 2>/dev/null || true; done
sleep 1
python3 "$(dirname "$0")/extract.py" "$OUT/all.pcap" "$OUT"
