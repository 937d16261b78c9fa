#!/bin/bash
# Like capture.sh, but with Anvil's DHCP server (examples/dhcp-serve.rs)
# answering on the bridge, so that clients get as far as DHCPREQUEST.
# Usage: capture-requests.sh OUTDIR   (run from the workspace root)
set -euo pipefail
OUT=${1:?usage: capture-requests.sh OUTDIR}
mkdir -p "$OUT"
cargo build -q -p anvil-dhcp --example dhcp-serve
SERVE=$(pwd)/target/debug/examples/dhcp-serve
NS=anvil-dhcp-capreq-$$
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
ipn addr add 10.77.9.1/24 dev br0
ipn link set br0 up
for i in 0 1; do
    ipn tuntap add dev tap$i mode tap
    ipn link set tap$i master br0 up
done
ipn link add vc0 type veth peer name vb0
ipn link set vb0 master br0 up
ipn link set vc0 address 52:54:00:77:00:10 up

cat > "$OUT/dhcp.toml" <<'CONF'
[[network]]
name = "capture"
subnet = "10.77.9.0/24"
interface = "br0"
range_start = "10.77.9.100"
range_end = "10.77.9.200"
router = "10.77.9.1"
dns = ["10.77.9.1"]
server_address = "10.77.9.1"
CONF
ip netns exec "$NS" "$SERVE" "$OUT/dhcp.toml" > "$OUT/serve.log" 2>&1 &
PIDS+=($!)
ip netns exec "$NS" tcpdump -i br0 -U -w "$OUT/all.pcap" 'udp port 67 or udp port 68' &
PIDS+=($!)
sleep 2

UUID=4c4c4544-0042-3510-8052-b4c04f4d4e31
ip netns exec "$NS" timeout 60 qemu-system-x86_64 -display none -nodefaults -m 256 \
    -uuid "$UUID" -boot n \
    -netdev tap,id=n0,ifname=tap0,script=no,downscript=no \
    -device e1000,netdev=n0,mac=52:54:00:77:00:01 >/dev/null 2>&1 &
PIDS+=($!)
cp /usr/share/ovmf/OVMF.fd "$OUT/ovmf-pxe.fd"
ip netns exec "$NS" timeout 200 qemu-system-x86_64 -display none -nodefaults -m 256 \
    -uuid "$UUID" -bios "$OUT/ovmf-pxe.fd" \
    -netdev tap,id=n1,ifname=tap1,script=no,downscript=no \
    -device virtio-net-pci,netdev=n1,romfile=,mac=52:54:00:77:00:02 >/dev/null 2>&1 &
PIDS+=($!)
sleep 5
ip netns exec "$NS" busybox udhcpc -i vc0 -f -q -n -R -t 3 -T 2 -s /bin/true || true
ipn link set vc0 address 52:54:00:77:00:11
mkdir -p "$OUT/dhclient"
ip netns exec "$NS" dhclient -1 -v -lf "$OUT/dhclient/leases" -pf "$OUT/dhclient/pid" -sf /bin/true vc0 || true
sleep 1
ip netns exec "$NS" dhclient -r -v -lf "$OUT/dhclient/leases" -pf "$OUT/dhclient/pid" -sf /bin/true vc0 || true
for p in "${PIDS[@]:2}"; do wait "$p" 2>/dev/null || true; done
sleep 1
python3 "$(dirname "$0")/extract.py" "$OUT/all.pcap" "$OUT"
