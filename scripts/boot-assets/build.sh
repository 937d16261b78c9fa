#!/usr/bin/env bash
# Builds the discovery kernel and initrd the end-to-end boot tests serve:
#   OUTDIR/vmlinuz     Debian's current linux-image-6.1.0-*-amd64 kernel
#   OUTDIR/initrd.img  busybox-static + the QEMU NIC modules + /init, which
#                      gets an address by DHCP, calls home to Anvil
#                      (POST /api/v1/discovery/callhome), prints
#                      ANVIL-CALLHOME-OK or ANVIL-CALLHOME-FAILED on the serial
#                      console and powers the machine off.
# Everything comes from Debian packages (apt-get download / install); nothing
# else is downloaded. Idempotent: when OUTDIR has both files and a stamp that
# matches the inputs (kernel package version, busybox version, this script),
# it does nothing. Concurrent runs on the same OUTDIR are serialised (flock).
#
# Usage: scripts/boot-assets/build.sh OUTDIR
set -euo pipefail

if [[ $# -ne 1 ]]; then
    echo "usage: $0 OUTDIR" >&2
    exit 2
fi
OUT=$1
SELF=$(readlink -f "$0")
export DEBIAN_FRONTEND=noninteractive

log() { printf 'boot-assets: %s\n' "$*" >&2; }

mkdir -p "$OUT"
OUT=$(readlink -f "$OUT")
exec 9>"$OUT/.lock"
flock 9

# --- tools the build needs (Debian packages) ---------------------------------
need=()
command -v cpio >/dev/null || need+=(cpio)
command -v depmod >/dev/null || need+=(kmod)
command -v gzip >/dev/null || need+=(gzip)
dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q "install ok installed" || need+=(busybox-static)
if ((${#need[@]})); then
    log "installing Debian packages: ${need[*]}"
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null 2>&1 || {
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    }
fi

# --- which kernel: the one linux-image-amd64 depends on in the apt index -----
kernel_pkg() {
    apt-cache depends linux-image-amd64 2>/dev/null |
        awk '/Depends: linux-image-[0-9].*-amd64$/ {print $2; exit}'
}
KPKG=$(kernel_pkg)
if [[ -z "$KPKG" ]]; then
    log "no linux-image-amd64 in the apt index: running apt-get update"
    apt-get update -qq
    KPKG=$(kernel_pkg)
fi
[[ -n "$KPKG" ]] || { log "cannot find linux-image-6.1.0-*-amd64 in the apt index"; exit 1; }
KVER_PKG=$(apt-cache policy "$KPKG" | awk '/Candidate:/ {print $2}')
BUSYBOX_VER=$(dpkg-query -W -f='${Version}' busybox-static)
STAMP="kernel=$KPKG $KVER_PKG busybox-static=$BUSYBOX_VER script=$(sha256sum "$SELF" | cut -c1-16)"

if [[ -f "$OUT/vmlinuz" && -f "$OUT/initrd.img" && -f "$OUT/stamp" ]] &&
    [[ "$(cat "$OUT/stamp")" == "$STAMP" ]]; then
    log "up to date ($STAMP)"
    ls -l "$OUT/vmlinuz" "$OUT/initrd.img" >&2
    exit 0
fi

log "building: $STAMP"
WORK=$(mktemp -d "$OUT/.work.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# --- kernel -------------------------------------------------------------------
(cd "$WORK" && apt-get download "$KPKG" >/dev/null 2>&1) || {
    apt-get update -qq
    (cd "$WORK" && apt-get download "$KPKG" >/dev/null)
}
dpkg -x "$WORK"/"$KPKG"_*.deb "$WORK/kernel"
KREL=$(ls "$WORK/kernel/lib/modules" | head -1)
MODROOT="$WORK/kernel/lib/modules/$KREL"
# The package ships no modules.dep (depmod runs at install time): make one.
depmod -b "$WORK/kernel" "$KREL"

# --- initrd -------------------------------------------------------------------
ROOT="$WORK/initrd"
mkdir -p "$ROOT"/{bin,sbin,etc,proc,sys,dev,tmp,run,lib/modules,usr/bin,usr/sbin,usr/share/udhcpc}
cp /bin/busybox "$ROOT/bin/busybox"
for a in sh mount; do ln -s busybox "$ROOT/bin/$a"; done

# The NIC drivers QEMU offers (e1000, virtio-net) and what they depend on,
# dependencies first, as modules.dep says.
WANTED=(e1000 virtio_pci virtio_net)
declare -A seen=()
order=()
add_module() { # path relative to MODROOT
    local rel=$1 dep
    [[ -n "${seen[$rel]:-}" ]] && return
    seen[$rel]=1
    for dep in $(awk -v m="$rel:" '$1 == m {for (i = 2; i <= NF; i++) print $i}' "$MODROOT/modules.dep"); do
        add_module "$dep"
    done
    order+=("$rel")
}
for m in "${WANTED[@]}"; do
    rel=$(awk -F: -v m="$m" '{n = $1; sub(/.*\//, "", n); sub(/\.ko(\.[a-z]+)?$/, "", n); if (n == m) {print $1; exit}}' "$MODROOT/modules.dep")
    [[ -n "$rel" ]] || { log "module $m not found in $KREL"; exit 1; }
    add_module "$rel"
done
: >"$ROOT/etc/modules"
for rel in "${order[@]}"; do
    name=$(basename "$rel")
    case "$name" in
    *.ko.xz) xz -dc "$MODROOT/$rel" >"$ROOT/lib/modules/${name%.xz}" ;;
    *.ko.zst) zstd -qdc "$MODROOT/$rel" >"$ROOT/lib/modules/${name%.zst}" ;;
    *.ko.gz) gzip -dc "$MODROOT/$rel" >"$ROOT/lib/modules/${name%.gz}" ;;
    *) cp "$MODROOT/$rel" "$ROOT/lib/modules/$name" ;;
    esac
    name=${name%.xz}
    name=${name%.zst}
    name=${name%.gz}
    echo "$name" >>"$ROOT/etc/modules"
done

cat >"$ROOT/usr/share/udhcpc/default.script" <<'EOF'
#!/bin/sh
# busybox udhcpc hook: configures the interface from the lease.
case "$1" in
deconfig)
    ip -4 addr flush dev "$interface"
    ip link set "$interface" up
    ;;
bound | renew)
    ip -4 addr flush dev "$interface"
    ip addr add "$ip/${mask:-24}" dev "$interface"
    for r in $router; do
        ip route add default via "$r" dev "$interface" && break
    done
    echo "$ip" >/tmp/dhcp-ip
    echo "ANVIL-DHCP: $interface $ip/${mask:-24} router=${router:-none} server=${serverid:-?}"
    ;;
esac
exit 0
EOF
chmod 0755 "$ROOT/usr/share/udhcpc/default.script"

cat >"$ROOT/init" <<'EOF'
#!/bin/sh
# Anvil discovery ramdisk for the end-to-end boot tests.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null || mount -t tmpfs dev /dev
mount -t tmpfs tmp /tmp

say() { echo "$*"; }
finish() {
    say "$1"
    sync
    poweroff -f
    sleep 30
}

say "ANVIL-INIT: up after $(cut -d' ' -f1 /proc/uptime) s"
while read -r m; do
    insmod "/lib/modules/$m" 2>/dev/null || say "ANVIL-INIT: insmod $m failed"
done </etc/modules

URL=
MAC=
for arg in $(cat /proc/cmdline); do
    case "$arg" in
    anvil.url=*) URL=${arg#anvil.url=} ;;
    anvil.mac=*) MAC=${arg#anvil.mac=} ;;
    esac
done
MAC=$(echo "$MAC" | tr 'A-F-' 'a-f:')
say "ANVIL-INIT: url=$URL mac=$MAC"
[ -n "$URL" ] && [ -n "$MAC" ] || finish "ANVIL-CALLHOME-FAILED: no anvil.url/anvil.mac on the kernel command line"

# The interface with that MAC (drivers may take a moment to register it).
IF=
i=0
while [ -z "$IF" ] && [ $i -lt 50 ]; do
    for d in /sys/class/net/*; do
        [ "$(cat "$d/address" 2>/dev/null)" = "$MAC" ] && IF=${d##*/}
    done
    [ -n "$IF" ] || sleep 0.2
    i=$((i + 1))
done
[ -n "$IF" ] || finish "ANVIL-CALLHOME-FAILED: no interface has MAC $MAC ($(ls /sys/class/net))"
ip link set lo up
ip link set "$IF" up
say "ANVIL-INIT: interface $IF"

udhcpc -i "$IF" -n -q -t 10 -s /usr/share/udhcpc/default.script ||
    finish "ANVIL-CALLHOME-FAILED: no DHCP lease on $IF"
IP=$(cat /tmp/dhcp-ip)

MACS=
for d in /sys/class/net/*; do
    [ "${d##*/}" = lo ] && continue
    a=$(cat "$d/address" 2>/dev/null) || continue
    MACS="$MACS${MACS:+, }\"$a\""
done

n=1
while [ $n -le 5 ]; do
    UP=$(cut -d' ' -f1 /proc/uptime)
    BODY="{\"mac\": \"$MAC\", \"macs\": [$MACS], \"ip\": \"$IP\", \"uptime_secs\": $UP}"
    say "ANVIL-CALLHOME: try $n: POST $URL/api/v1/discovery/callhome $BODY"
    if timeout 20 wget -q -O /tmp/callhome.out --header 'Content-Type: application/json' \
        --post-data "$BODY" "$URL/api/v1/discovery/callhome"; then
        say "ANVIL-CALLHOME: answer $(cat /tmp/callhome.out)"
        finish "ANVIL-CALLHOME-OK"
    fi
    say "ANVIL-CALLHOME: try $n failed: $(cat /tmp/callhome.out 2>/dev/null)"
    n=$((n + 1))
    sleep 2
done
finish "ANVIL-CALLHOME-FAILED: no answer from $URL"
EOF
chmod 0755 "$ROOT/init"

(cd "$ROOT" && find . | LC_ALL=C sort | cpio -o -H newc --quiet -R 0:0) | gzip -9 >"$WORK/initrd.img"
cp "$WORK/kernel/boot/vmlinuz-$KREL" "$WORK/vmlinuz"
mv -f "$WORK/vmlinuz" "$OUT/vmlinuz"
mv -f "$WORK/initrd.img" "$OUT/initrd.img"
echo "$STAMP" >"$OUT/stamp"
log "built for $KREL, modules: $(tr '\n' ' ' <"$ROOT/etc/modules")"
ls -l "$OUT/vmlinuz" "$OUT/initrd.img" >&2
