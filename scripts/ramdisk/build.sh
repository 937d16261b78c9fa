#!/usr/bin/env bash
# Builds Anvil's ramdisk: the kernel and initramfs that commissioning (and
# later deployment and rescue) boot over HTTP. See docs/ramdisk.md.
#
#   OUTDIR/vmlinuz     the kernel of Debian's linux-image-amd64 (its current
#                      linux-image-6.1.0-*-amd64 dependency)
#   OUTDIR/initrd.img  zstd-compressed newc cpio: busybox-static, the static
#                      anvil-agent (PID 1 after /init), the kernel modules
#                      real servers need, loaded by modalias at boot, and the
#                      Debian tools the deploy steps run (resize2fs, e2fsck,
#                      efibootmgr, dropbear, hdparm, mdadm) with their libraries
#   OUTDIR/SHA256SUMS  sha256 of both
#   OUTDIR/stamp       the inputs the files were built from
#
# Reproducible: the same inputs (kernel package, busybox-static package, the
# tool packages' versions, agent binary, this script, SOURCE_DATE_EPOCH)
# give the same bytes. A re-run
# whose inputs match OUTDIR/stamp does nothing. Concurrent runs on one OUTDIR
# are serialised (flock). Everything comes from Debian packages and the
# workspace; nothing else is downloaded.
#
# Usage: scripts/ramdisk/build.sh OUTDIR [--agent PATH]
#   --agent PATH   use this static agent binary instead of building
#                  crates/anvil-agent for x86_64-unknown-linux-musl
#                  (into target/agent-musl, a target dir of its own so the
#                  build does not wait on the workspace's cargo lock)
set -euo pipefail

usage() {
    echo "usage: $0 OUTDIR [--agent PATH]" >&2
    exit 2
}
OUT=
AGENT=
while (($#)); do
    case "$1" in
    --agent)
        [[ $# -ge 2 ]] || usage
        AGENT=$2
        shift 2
        ;;
    -h | --help) usage ;;
    *)
        [[ -z "$OUT" ]] || usage
        OUT=$1
        shift
        ;;
    esac
done
[[ -n "$OUT" ]] || usage

SELF=$(readlink -f "$0")
ROOT_DIR=$(cd "$(dirname "$SELF")/../.." && pwd)
export DEBIAN_FRONTEND=noninteractive
MUSL_TARGET=x86_64-unknown-linux-musl
# The 30 MB budget of kernel + initramfs (issue #6).
MAX_BYTES=$((30 * 1000 * 1000))

log() { printf 'ramdisk: %s\n' "$*" >&2; }

# --- tools the build needs (Debian packages) ---------------------------------
need=()
command -v cpio >/dev/null || need+=(cpio)
command -v depmod >/dev/null || need+=(kmod)
command -v zstd >/dev/null || need+=(zstd)
command -v readelf >/dev/null || need+=(binutils)
dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q "install ok installed" || need+=(busybox-static)
if [[ -z "$AGENT" ]]; then
    command -v musl-gcc >/dev/null || need+=(musl-tools)
fi
if ((${#need[@]})); then
    log "installing Debian packages: ${need[*]}"
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null 2>&1 || {
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    }
fi

# --- the agent ------------------------------------------------------------------
if [[ -z "$AGENT" ]]; then
    if ! rustup target list --installed 2>/dev/null | grep -qx "$MUSL_TARGET"; then
        log "rustup target add $MUSL_TARGET"
        rustup target add "$MUSL_TARGET" >&2
    fi
    log "building anvil-agent for $MUSL_TARGET"
    # --remap-path-prefix: the binary does not depend on where the checkout
    # or the cargo home is, so two checkouts build the same bytes.
    (cd "$ROOT_DIR" &&
        CC_x86_64_unknown_linux_musl=musl-gcc \
        CARGO_TARGET_X86_64_UNKNOWN_LINUX_MUSL_RUSTFLAGS="-C target-feature=+crt-static --remap-path-prefix=$ROOT_DIR=/anvil --remap-path-prefix=${CARGO_HOME:-$HOME/.cargo}=/cargo" \
            cargo build --quiet --release --locked -p anvil-agent \
            --target "$MUSL_TARGET" --target-dir "$ROOT_DIR/target/agent-musl") >&2
    AGENT=$ROOT_DIR/target/agent-musl/$MUSL_TARGET/release/anvil-agent
fi
AGENT=$(readlink -f "$AGENT")
[[ -x "$AGENT" ]] || {
    log "agent $AGENT is not an executable file"
    exit 1
}
if file "$AGENT" 2>/dev/null | grep -q "dynamically linked"; then
    log "agent $AGENT is dynamically linked: the ramdisk has no libc, it must be static"
    exit 1
fi

mkdir -p "$OUT"
OUT=$(readlink -f "$OUT")
exec 9>"$OUT/.lock"
flock 9

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
[[ -n "$KPKG" ]] || {
    log "cannot find linux-image-*-amd64 in the apt index"
    exit 1
}
KVER_PKG=$(apt-cache policy "$KPKG" | awk '/Candidate:/ {print $2}')

# --- the deploy steps' tools: Debian packages and the libraries they link ---
# resize2fs/e2fsck (grow_root), efibootmgr (boot_entry), dropbear (rescue),
# hdparm (ATA secure erase; NVMe's format is an ioctl in the agent, nvme-cli
# would bring 7 MB of D-Bus, systemd and OpenSSL libraries). Their library packages are the closure of
# their lib* Depends in the apt index, each pinned to its candidate version
# (in the stamp); only the shared objects the binaries actually need end up
# in the initramfs.
# mdadm (raid: software RAID 1 at deploy with metadata 1.0, whose
# superblock the kernel's md ioctls do not write; libudev is its only library).
TOOL_PKGS=(e2fsprogs efibootmgr dropbear-bin hdparm mdadm)
TOOL_BINS=(resize2fs e2fsck efibootmgr dropbear dropbearkey hdparm mdadm)
tool_closure() {
    local -A seen_pkg=()
    local todo=("${TOOL_PKGS[@]}") p d
    while ((${#todo[@]})); do
        p=${todo[0]}
        todo=("${todo[@]:1}")
        [[ -n "${seen_pkg[$p]:-}" ]] && continue
        seen_pkg[$p]=1
        echo "$p"
        for d in $(apt-cache depends "$p" 2>/dev/null |
            awk '/^ +(Pre)?Depends: / {print $2}' | grep -E '^(lib|zlib)[a-z0-9.+-]*$'); do
            todo+=("$d")
        done
    done | LC_ALL=C sort
}
mapfile -t TOOL_ALL < <(tool_closure)
TOOL_VERS=()
for p in "${TOOL_ALL[@]}"; do
    v=$(apt-cache policy "$p" | awk '/Candidate:/ {print $2}')
    [[ -n "$v" && "$v" != "(none)" ]] || {
        log "package $p (needed by the deploy tools) is not in the apt index"
        exit 1
    }
    TOOL_VERS+=("$p=$v")
done
TOOLS_SUM=$(printf '%s\n' "${TOOL_VERS[@]}" | sha256sum | cut -c1-16)
BUSYBOX_VER=$(dpkg-query -W -f='${Version}' busybox-static)
AGENT_SHA=$(sha256sum "$AGENT" | cut -d' ' -f1)
STAMP="kernel=$KPKG $KVER_PKG busybox-static=$BUSYBOX_VER tools=$TOOLS_SUM agent=${AGENT_SHA:0:16} script=$(sha256sum "$SELF" | cut -c1-16) epoch=${SOURCE_DATE_EPOCH:-kernel}"

if [[ -f "$OUT/vmlinuz" && -f "$OUT/initrd.img" && -f "$OUT/SHA256SUMS" && -f "$OUT/stamp" ]] &&
    [[ "$(cat "$OUT/stamp")" == "$STAMP" ]]; then
    log "up to date ($STAMP)"
    (cd "$OUT" && cat SHA256SUMS) >&2
    exit 0
fi

log "building: $STAMP"
WORK=$(mktemp -d "$OUT/.work.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# --- kernel -------------------------------------------------------------------
# A downloaded .deb is kept in OUTDIR/.debs so a rebuild for another agent
# does not fetch the 70 MB package again.
mkdir -p "$OUT/.debs"
if ! ls "$OUT/.debs/${KPKG}_${KVER_PKG//:/%3a}_amd64.deb" >/dev/null 2>&1; then
    rm -f "$OUT"/.debs/*.deb
    (cd "$OUT/.debs" && apt-get download "$KPKG" >/dev/null 2>&1) || {
        apt-get update -qq
        (cd "$OUT/.debs" && apt-get download "$KPKG" >/dev/null)
    }
fi
dpkg -x "$OUT"/.debs/"$KPKG"_*.deb "$WORK/kernel"
KREL=$(ls "$WORK/kernel/lib/modules" | head -1)
KMOD="$WORK/kernel/lib/modules/$KREL"
depmod -b "$WORK/kernel" "$KREL"
# Fixed times: the kernel's own build date unless the caller sets one.
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(stat -c %Y "$WORK/kernel/boot/vmlinuz-$KREL")}

# --- modules --------------------------------------------------------------------
# What real servers need, by name; their dependencies come from modules.dep.
# Modules this kernel has built in (af_packet, unix, …) are simply not
# found as files and skipped.
MODULES=(
    # Ethernet: Intel, Broadcom, Mellanox/NVIDIA, Realtek, Emulex, QLogic, virtual
    e1000 e1000e igb igc ixgbe ixgbevf i40e iavf ice
    tg3 bnx2 bnx2x bnxt_en mlx4_en mlx5_core r8169 be2net qede
    virtio_pci virtio_net vmxnet3 af_packet
    # Storage: NVMe, AHCI/SATA, SAS and RAID HBAs, virtual
    nvme ahci ata_piix megaraid_sas mpt3sas smartpqi hpsa aacraid
    virtio_blk virtio_scsi vmw_pvscsi sd_mod sr_mod sg
    # Software RAID and the filesystems a deployed disk has
    md_mod raid0 raid1 raid10 dm_mod ext4 xfs vfat
    nls_cp437 nls_iso8859_1 nls_utf8 crc32c_generic crc32c_intel efivarfs
)
declare -A seen=()
mods=()
add_module() { # path relative to KMOD
    local rel=$1 dep
    [[ -n "${seen[$rel]:-}" ]] && return
    seen[$rel]=1
    for dep in $(awk -v m="$rel:" '$1 == m {for (i = 2; i <= NF; i++) print $i}' "$KMOD/modules.dep"); do
        add_module "$dep"
    done
    mods+=("$rel")
}
missing=()
for m in "${MODULES[@]}"; do
    rel=$(awk -F: -v m="$m" '{n = $1; sub(/.*\//, "", n); sub(/\.ko(\.[a-z]+)?$/, "", n); gsub(/-/, "_", n); if (n == m) {print $1; exit}}' "$KMOD/modules.dep")
    if [[ -z "$rel" ]]; then
        if grep -q "/${m}.ko" "$KMOD/modules.builtin" 2>/dev/null; then
            continue
        fi
        missing+=("$m")
        continue
    fi
    add_module "$rel"
done
((${#missing[@]} == 0)) || {
    log "modules neither in $KREL as files nor built in: ${missing[*]}"
    exit 1
}

ROOT="$WORK/initrd"
mkdir -p "$ROOT"/{bin,sbin,etc,proc,sys,dev,tmp,run,root,usr/bin,usr/sbin,var} "$ROOT/lib/modules/$KREL"
for rel in "${mods[@]}"; do
    mkdir -p "$ROOT/lib/modules/$KREL/$(dirname "$rel")"
    case "$rel" in
    *.ko.xz) xz -dc "$KMOD/$rel" >"$ROOT/lib/modules/$KREL/${rel%.xz}" ;;
    *.ko.zst) zstd -qdc "$KMOD/$rel" >"$ROOT/lib/modules/$KREL/${rel%.zst}" ;;
    *) cp "$KMOD/$rel" "$ROOT/lib/modules/$KREL/$rel" ;;
    esac
done
cp "$KMOD"/modules.builtin "$KMOD"/modules.order "$ROOT/lib/modules/$KREL/"
[[ -f "$KMOD/modules.builtin.modinfo" ]] && cp "$KMOD/modules.builtin.modinfo" "$ROOT/lib/modules/$KREL/"
# modules.dep and modules.alias for exactly the modules inside, so
# `modprobe <modalias>` finds the driver and its dependencies.
depmod -b "$ROOT" "$KREL"
# Binary indexes busybox does not read: smaller without them.
rm -f "$ROOT/lib/modules/$KREL"/*.bin

# --- busybox, the agent, /init ---------------------------------------------------
cp /bin/busybox "$ROOT/bin/busybox"
ln -s busybox "$ROOT/bin/sh"
install -m 0755 "$AGENT" "$ROOT/sbin/anvil-agent"
printf 'root:x:0:0:root:/root:/bin/sh\n' >"$ROOT/etc/passwd"
printf 'root:x:0:\n' >"$ROOT/etc/group"
# dropbear accepts logins only for shells listed here.
printf '/bin/sh\n' >"$ROOT/etc/shells"

# The deploy tools (see TOOL_PKGS above): .debs kept in OUTDIR/.debs-tools.
mkdir -p "$OUT/.debs-tools"
missing_debs=()
for pv in "${TOOL_VERS[@]}"; do
    p=${pv%%=*} v=${pv#*=}
    compgen -G "$OUT/.debs-tools/${p}_${v//:/%3a}_*.deb" >/dev/null || missing_debs+=("$pv")
done
if ((${#missing_debs[@]})); then
    log "downloading ${#missing_debs[@]} Debian packages for the deploy tools"
    (cd "$OUT/.debs-tools" && apt-get download "${missing_debs[@]}" >/dev/null 2>&1) || {
        apt-get update -qq
        (cd "$OUT/.debs-tools" && apt-get download "${missing_debs[@]}" >/dev/null)
    }
fi
TOOLS="$WORK/tools"
mkdir -p "$TOOLS"
for pv in "${TOOL_VERS[@]}"; do
    p=${pv%%=*} v=${pv#*=}
    dpkg -x "$(compgen -G "$OUT/.debs-tools/${p}_${v//:/%3a}_*.deb" | head -1)" "$TOOLS"
done
LIBDIR=lib/x86_64-linux-gnu
mkdir -p "$ROOT/$LIBDIR" "$ROOT/lib64"
declare -A have_lib=()
copy_needed() { # ELF file: copy the shared objects it needs, recursively
    local so src
    for so in $(readelf -d "$1" | awk '/\(NEEDED\)/ {gsub(/[][]/, "", $5); print $5}'); do
        [[ -n "${have_lib[$so]:-}" ]] && continue
        src=
        for d in lib/x86_64-linux-gnu usr/lib/x86_64-linux-gnu lib usr/lib; do
            [[ -e "$TOOLS/$d/$so" ]] && src="$TOOLS/$d/$so" && break
        done
        [[ -n "$src" ]] || {
            log "$(basename "$1") needs $so, which no package of ${TOOL_ALL[*]} has"
            exit 1
        }
        have_lib[$so]=1
        cp -L "$src" "$ROOT/$LIBDIR/$so"
        copy_needed "$ROOT/$LIBDIR/$so"
    done
}
for b in "${TOOL_BINS[@]}"; do
    src=$(find "$TOOLS" -type f -name "$b" -path '*bin/*' | LC_ALL=C sort | head -1)
    [[ -n "$src" ]] || {
        log "no $b in ${TOOL_PKGS[*]}"
        exit 1
    }
    # /sbin comes first in PATH: these win over busybox applets of the same
    # name (busybox has an hdparm of its own, without security erase).
    install -m 0755 "$src" "$ROOT/sbin/$b"
    copy_needed "$ROOT/sbin/$b"
done
# The program interpreter the binaries name (PT_INTERP).
cp -L "$TOOLS/$LIBDIR/ld-linux-x86-64.so.2" "$ROOT/$LIBDIR/ld-linux-x86-64.so.2"
ln -s "../$LIBDIR/ld-linux-x86-64.so.2" "$ROOT/lib64/ld-linux-x86-64.so.2"
# Each tool must start inside the ramdisk's own tree (no library missing).
if [[ $(id -u) == 0 ]]; then
    for b in resize2fs efibootmgr dropbearkey hdparm mdadm; do
        case $b in
        resize2fs) args=(-h) ;; efibootmgr) args=(--version) ;; dropbearkey) args=(-h) ;;
        hdparm) args=(-V) ;; mdadm) args=(--version) ;;
        esac
        out=$(chroot "$ROOT" "/sbin/$b" "${args[@]}" 2>&1) || true
        if grep -qE "error while loading shared libraries|not found|No such file" <<<"$out"; then
            log "/sbin/$b does not start in the ramdisk: $out"
            exit 1
        fi
    done
    # Without devtmpfs some of them create files such as dev/urandom
    # (random bytes: the archive would differ every build).
    find "$ROOT/dev" "$ROOT/tmp" "$ROOT/run" "$ROOT/var" -mindepth 1 -delete
fi

cat >"$ROOT/init" <<'INIT'
#!/bin/sh
# Anvil ramdisk: mount the kernel filesystems, load the drivers this
# machine's hardware asks for (by modalias), then become anvil-agent.
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null || mount -t tmpfs dev /dev
mount -t tmpfs -o mode=0755 run /run
mount -t tmpfs tmp /tmp
# The kernel's own module requests (a file system, efivarfs, …) run this.
echo /bin/modprobe >/proc/sys/kernel/modprobe
# PTYs for the rescue SSH server (dropbear).
mkdir -p /dev/pts
mount -t devpts devpts /dev/pts 2>/dev/null
echo "anvil-init: up after $(cut -d' ' -f1 /proc/uptime) s"
modprobe -q efivarfs 2>/dev/null
[ -d /sys/firmware/efi/efivars ] && mount -t efivarfs efivarfs /sys/firmware/efi/efivars 2>/dev/null
# Drivers by modalias: a loaded bus driver (virtio_pci, an HBA) brings new
# devices with modaliases of their own, so repeat until nothing new shows.
# Every device with a modalias sits on a bus: /sys/bus/*/devices/* is a much
# shorter walk than all of /sys/devices (which costs ~0.5 s a pass in TCG).
pass=0
prev=
while [ $pass -lt 4 ]; do
    aliases=$(cat /sys/bus/*/devices/*/modalias 2>/dev/null | sort -u)
    [ "$aliases" = "$prev" ] && break
    prev=$aliases
    # One modprobe for all: it reads modules.dep and modules.alias once.
    modprobe -q -a $aliases 2>/dev/null
    pass=$((pass + 1))
    echo "anvil-init: modalias pass $pass done after $(cut -d' ' -f1 /proc/uptime) s"
done
# Disks behind SCSI HBAs need sd_mod (no modalias of its own). Filesystem
# and RAID modules are loaded by the steps that use them (deployment).
modprobe -q sd_mod 2>/dev/null
echo "anvil-init: modules loaded after $(cut -d' ' -f1 /proc/uptime) s: $(cut -d' ' -f1 /proc/modules | tr '\n' ' ')"
exec /sbin/anvil-agent
INIT
chmod 0755 "$ROOT/init"

# --- reproducible archive ------------------------------------------------------
# Fixed modes (umask-independent), owner root:root, mtimes SOURCE_DATE_EPOCH,
# sorted names, cpio --reproducible (inode numbers and device ids zeroed),
# zstd single-threaded without the file name or time.
find "$ROOT" -type d -exec chmod 0755 {} +
find "$ROOT" -type f ! -perm -u+x -exec chmod 0644 {} +
find "$ROOT" -type f -perm -u+x -exec chmod 0755 {} +
find "$ROOT" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
(cd "$ROOT" && find . -mindepth 1 | LC_ALL=C sort |
    cpio -o -H newc --quiet --reproducible -R 0:0) |
    zstd -q -19 -T1 --no-progress >"$WORK/initrd.img"
cp "$WORK/kernel/boot/vmlinuz-$KREL" "$WORK/vmlinuz"
touch -d "@$SOURCE_DATE_EPOCH" "$WORK/vmlinuz" "$WORK/initrd.img"

total=$(($(stat -c %s "$WORK/vmlinuz") + $(stat -c %s "$WORK/initrd.img")))
if ((total > MAX_BYTES)); then
    log "kernel + initramfs are $total bytes, over the budget of $MAX_BYTES"
    exit 1
fi
mv -f "$WORK/vmlinuz" "$OUT/vmlinuz"
mv -f "$WORK/initrd.img" "$OUT/initrd.img"
# The name some tools expect; the same file.
ln -f "$OUT/initrd.img" "$OUT/initramfs.img"
(cd "$OUT" && sha256sum vmlinuz initrd.img >SHA256SUMS)
echo "$STAMP" >"$OUT/stamp"
log "built for $KREL: ${#mods[@]} modules, ${#TOOL_BINS[@]} tools with ${#have_lib[@]} libraries; vmlinuz $(stat -c %s "$OUT/vmlinuz") B + initrd.img $(stat -c %s "$OUT/initrd.img") B = $total B (budget $MAX_BYTES)"
(cd "$OUT" && cat SHA256SUMS) >&2
