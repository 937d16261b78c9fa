#!/usr/bin/env bash
# Builds the small bootable disk images the deployment end-to-end tests
# deploy (issue #7). See docs/test-image.md for the layout and the lines the
# images print.
#
#   OUTDIR/bios.raw                 64 MiB, MBR: syslinux (FAT16 boot
#                                   partition 1) + an ext4 root (partition 2)
#   OUTDIR/uefi.raw                 64 MiB, GPT: systemd-boot on an EFI System
#                                   Partition (1) + the same ext4 root (2)
#   OUTDIR/{bios,uefi}.qcow2        the same disks as qcow2
#   OUTDIR/{bios,uefi}-compressed.qcow2   … and as compressed (zlib) qcow2
#   OUTDIR/SHA256SUMS               sha256 of all of the above
#   OUTDIR/stamp                    the inputs they were built from
#
# Both boot Debian's kernel with a busybox initramfs whose /init finds the
# cloud-init data partition (label CIDATA/cidata, or config-2), prints what
# it read as `ANVIL-DEPLOYED …` lines on the serial console (ttyS0) and
# powers the machine off. The rest of each disk (35 MiB) is free, so a
# deployment can grow the root partition and add CIDATA after it.
#
# Everything comes from Debian packages (apt-get download + dpkg -x for the
# kernel; syslinux, systemd-boot-efi, mtools, e2fsprogs, fdisk, qemu-utils as
# installed tools); nothing else is downloaded. No loop device, no mount, no
# root needed for the build itself (only for apt-get when a tool is missing):
# the file systems are written into the image files by mtools and
# `mkfs.ext4 -d`.
#
# Reproducible: the same inputs (the packages' versions, this script,
# SOURCE_DATE_EPOCH, default: the kernel's build time) give the same bytes.
# A re-run whose inputs match OUTDIR/stamp does nothing. Concurrent runs on
# one OUTDIR are serialised (flock).
#
# Usage: scripts/test-image/build.sh OUTDIR
set -euo pipefail

if [[ $# -ne 1 || "$1" == -* ]]; then
    echo "usage: $0 OUTDIR" >&2
    exit 2
fi
OUT=$1
SELF=$(readlink -f "$0")
ROOT_DIR=$(cd "$(dirname "$SELF")/../.." && pwd)
export DEBIAN_FRONTEND=noninteractive

log() { printf 'test-image: %s\n' "$*" >&2; }

# --- the layout (sectors of 512 bytes); docs/test-image.md describes it -------
DISK_MIB=64
BOOT_START=2048   # 1 MiB: partition 1, boot (FAT16 / EFI System Partition)
BOOT_SECTORS=40960 # 20 MiB
ROOT_START=43008  # 21 MiB: partition 2, root (ext4, label anvil-root)
ROOT_SECTORS=16384 # 8 MiB; 29 MiB .. 64 MiB stay free
# Fixed identifiers, so the bytes do not depend on a random generator.
MBR_ID=0x414e5649 # "ANVI"
FAT_SERIAL=414e5649
GPT_DISK_UUID=414e5649-4c00-4000-8000-000000000000
GPT_ESP_UUID=414e5649-4c00-4000-8000-000000000001
GPT_ROOT_UUID=414e5649-4c00-4000-8000-000000000002
EXT4_UUID=414e5649-4c00-4000-8000-0000000000e4
EXT4_HASH_SEED=414e5649-4c00-4000-8000-0000000000a5
KERNEL_CMDLINE="console=ttyS0 quiet panic=10"

# --- tools the build needs (Debian packages) -----------------------------------
# command -> package
declare -A TOOLS=(
    [cpio]=cpio [depmod]=kmod [zstd]=zstd [sfdisk]=fdisk [mformat]=mtools
    [syslinux]=syslinux [mkfs.ext4]=e2fsprogs [qemu-img]=qemu-utils
)
need=()
for cmd in "${!TOOLS[@]}"; do
    command -v "$cmd" >/dev/null || need+=("${TOOLS[$cmd]}")
done
for pkg in busybox-static syslinux-common systemd-boot-efi; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
if ((${#need[@]})); then
    log "installing Debian packages: ${need[*]}"
    # Another apt may hold the lock for a while (parallel setup scripts).
    apt-get install -o DPkg::Lock::Timeout=600 -y -qq --no-install-recommends "${need[@]}" >/dev/null 2>&1 || {
        apt-get update -qq
        apt-get install -o DPkg::Lock::Timeout=600 -y -qq --no-install-recommends "${need[@]}" >/dev/null
    }
fi
MBR_BIN=/usr/lib/syslinux/mbr/mbr.bin
SDBOOT_EFI=/usr/lib/systemd/boot/efi/systemd-bootx64.efi
for f in "$MBR_BIN" "$SDBOOT_EFI" /bin/busybox; do
    [[ -f "$f" ]] || {
        log "$f is missing although its package is installed"
        exit 1
    }
done

mkdir -p "$OUT"
OUT=$(readlink -f "$OUT")
exec 9>"$OUT/.lock"
flock 9

# --- which kernel: the one linux-image-amd64 depends on in the apt index -------
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
ver() { dpkg-query -W -f='${Version}' "$1"; }
STAMP="kernel=$KPKG $KVER_PKG busybox-static=$(ver busybox-static) syslinux=$(ver syslinux-common)"
STAMP+=" systemd-boot-efi=$(ver systemd-boot-efi) mtools=$(ver mtools) e2fsprogs=$(ver e2fsprogs)"
STAMP+=" fdisk=$(ver fdisk) qemu-img=$(qemu-img --version | awk 'NR == 1 {print $3}')"
STAMP+=" script=$(cat "$SELF" "$(dirname "$SELF")/init" | sha256sum | cut -c1-16) epoch=${SOURCE_DATE_EPOCH:-kernel}"
OUTPUTS=(bios.raw uefi.raw bios.qcow2 uefi.qcow2 bios-compressed.qcow2 uefi-compressed.qcow2)

up_to_date() {
    [[ -f "$OUT/stamp" && -f "$OUT/SHA256SUMS" && "$(cat "$OUT/stamp")" == "$STAMP" ]] || return 1
    local f
    for f in "${OUTPUTS[@]}"; do [[ -f "$OUT/$f" ]] || return 1; done
}
if up_to_date; then
    log "up to date ($STAMP)"
    exit 0
fi

log "building: $STAMP"
started=$SECONDS
WORK=$(mktemp -d "$OUT/.work.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# --- kernel ------------------------------------------------------------------------
# The .deb is kept in OUTDIR/.debs; the ramdisk build's copy of the same
# package (target/ramdisk/.debs) is reused instead of fetching 70 MB again.
DEB_NAME="${KPKG}_${KVER_PKG//:/%3a}_amd64.deb"
mkdir -p "$OUT/.debs"
if [[ ! -f "$OUT/.debs/$DEB_NAME" ]]; then
    rm -f "$OUT"/.debs/*.deb
    for cache in "$ROOT_DIR/target/ramdisk/.debs" /var/cache/apt/archives; do
        if [[ -f "$cache/$DEB_NAME" ]]; then
            # A hard link when on the same file system: no second 70 MB copy.
            ln -f "$cache/$DEB_NAME" "$OUT/.debs/$DEB_NAME.part" 2>/dev/null ||
                cp "$cache/$DEB_NAME" "$OUT/.debs/$DEB_NAME.part"
            mv "$OUT/.debs/$DEB_NAME.part" "$OUT/.debs/$DEB_NAME"
            log "kernel package from $cache"
            break
        fi
    done
fi
if [[ ! -f "$OUT/.debs/$DEB_NAME" ]]; then
    (cd "$OUT/.debs" && apt-get download "$KPKG" >/dev/null 2>&1) || {
        apt-get update -qq
        (cd "$OUT/.debs" && apt-get download "$KPKG" >/dev/null)
    }
fi
dpkg -x "$OUT/.debs/$DEB_NAME" "$WORK/kernel"
KREL=$(ls "$WORK/kernel/lib/modules" | head -1)
KMOD="$WORK/kernel/lib/modules/$KREL"
depmod -b "$WORK/kernel" "$KREL"
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(stat -c %Y "$WORK/kernel/boot/vmlinuz-$KREL")}

# --- initramfs: busybox, the disk and file-system drivers, /init -------------------
# Disk controllers a deployed machine (or a QEMU VM) may have, and the file
# systems cloud-init data comes on (NoCloud: vfat or iso9660; config-2:
# iso9660 or vfat). Their dependencies come from modules.dep.
MODULES=(virtio_pci virtio_blk virtio_scsi nvme ahci ata_piix sd_mod sr_mod
    vfat isofs nls_ascii nls_cp437 nls_iso8859_1 nls_utf8)
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
        grep -q "/${m}.ko" "$KMOD/modules.builtin" 2>/dev/null && continue
        missing+=("$m")
        continue
    fi
    add_module "$rel"
done
((${#missing[@]} == 0)) || {
    log "modules neither in $KREL as files nor built in: ${missing[*]}"
    exit 1
}
IRD="$WORK/initrd"
mkdir -p "$IRD"/{bin,sbin,etc,proc,sys,dev,tmp,mnt,lib/modules/"$KREL"}
for rel in "${mods[@]}"; do
    mkdir -p "$IRD/lib/modules/$KREL/$(dirname "$rel")"
    case "$rel" in
    *.ko.xz) xz -dc "$KMOD/$rel" >"$IRD/lib/modules/$KREL/${rel%.xz}" ;;
    *.ko.zst) zstd -qdc "$KMOD/$rel" >"$IRD/lib/modules/$KREL/${rel%.zst}" ;;
    *) cp "$KMOD/$rel" "$IRD/lib/modules/$KREL/$rel" ;;
    esac
done
cp "$KMOD/modules.builtin" "$KMOD/modules.order" "$IRD/lib/modules/$KREL/"
[[ -f "$KMOD/modules.builtin.modinfo" ]] && cp "$KMOD/modules.builtin.modinfo" "$IRD/lib/modules/$KREL/"
depmod -b "$IRD" "$KREL"
rm -f "$IRD/lib/modules/$KREL"/*.bin
cp /bin/busybox "$IRD/bin/busybox"
ln -s busybox "$IRD/bin/sh"
printf '%s\n' "${MODULES[@]}" >"$IRD/etc/modules"
install -m 0755 "$(dirname "$SELF")/init" "$IRD/init"

find "$IRD" -type d -exec chmod 0755 {} +
find "$IRD" -type f ! -perm -u+x -exec chmod 0644 {} +
find "$IRD" -type f -perm -u+x -exec chmod 0755 {} +
find "$IRD" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
(cd "$IRD" && find . -mindepth 1 | LC_ALL=C sort |
    cpio -o -H newc --quiet --reproducible -R 0:0) |
    zstd -q -19 -T1 --no-progress >"$WORK/initrd.img"
cp "$WORK/kernel/boot/vmlinuz-$KREL" "$WORK/vmlinuz"

# --- boot files ------------------------------------------------------------------------
cat >"$WORK/syslinux.cfg" <<EOF
SERIAL 0 115200
PROMPT 0
TIMEOUT 0
DEFAULT anvil
LABEL anvil
  KERNEL /vmlinuz
  INITRD /initrd.img
  APPEND $KERNEL_CMDLINE
EOF
cat >"$WORK/loader.conf" <<'EOF'
default anvil.conf
timeout 0
editor no
EOF
cat >"$WORK/anvil.conf" <<EOF
title Anvil test image
linux /vmlinuz
initrd /initrd.img
options $KERNEL_CMDLINE
EOF
cp "$SDBOOT_EFI" "$WORK/BOOTX64.EFI"

# --- the root file system (ext4, written without mounting) ---------------------------
RFS="$WORK/rootfs"
mkdir -p "$RFS/etc"
cat >"$RFS/etc/anvil-test-image" <<EOF
Anvil deployment test image (scripts/test-image/build.sh, docs/test-image.md).
Its initramfs does the work; this file system is here to be grown.
kernel $KREL
EOF
find "$RFS" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
# E2FSPROGS_FAKE_TIME: the superblock's times (SOURCE_DATE_EPOCH is not read
# by this e2fsprogs).
truncate -s "$((ROOT_SECTORS * 512))" "$WORK/root.ext4"
E2FSPROGS_FAKE_TIME=$SOURCE_DATE_EPOCH mkfs.ext4 -q -F -b 4096 -L anvil-root -m 0 \
    -U "$EXT4_UUID" -E "hash_seed=$EXT4_HASH_SEED,root_owner=0:0" \
    -d "$RFS" "$WORK/root.ext4" "$((ROOT_SECTORS / 8))"
# mkfs.ext4 -d copies the sources' ctime (which touch cannot set): pin every
# inode's times.
{
    for f in / /lost+found $(cd "$RFS" && find . -mindepth 1 | LC_ALL=C sort | cut -c2-); do
        for t in atime ctime mtime crtime; do echo "set_inode_field $f $t @$SOURCE_DATE_EPOCH"; done
    done
} | E2FSPROGS_FAKE_TIME=$SOURCE_DATE_EPOCH debugfs -w -f - "$WORK/root.ext4" >/dev/null 2>"$WORK/debugfs.err" || {
    cat "$WORK/debugfs.err" >&2
    exit 1
}

# --- the two disks -----------------------------------------------------------------
BOOT_OFF=$((BOOT_START * 512))
# FAT16 file system of partition 1 inside the disk file (mtools at an
# offset; the boot sector's hidden-sector count is the partition start, which
# syslinux's boot sector needs). mtools stamps files with SOURCE_DATE_EPOCH.
fat_in_disk() { # DISK LABEL
    mformat -i "$1@@$BOOT_OFF" -T "$BOOT_SECTORS" -h 64 -s 32 -H "$BOOT_START" \
        -N "$FAT_SERIAL" -v "$2" ::
}
put() { # DISK SRC DEST
    touch -d "@$SOURCE_DATE_EPOCH" "$2"
    mcopy -m -o -i "$1@@$BOOT_OFF" "$2" "::$3"
}
new_disk() {
    rm -f "$1"
    truncate -s "${DISK_MIB}M" "$1"
}
root_into() { # DISK
    dd if="$WORK/root.ext4" of="$1" bs=512 seek="$ROOT_START" conv=notrunc,sparse status=none
}

# BIOS: MBR with syslinux's boot code, partition 1 active.
BIOS="$WORK/bios.raw"
new_disk "$BIOS"
sfdisk -q --no-reread --no-tell-kernel "$BIOS" <<EOF
label: dos
label-id: $MBR_ID
unit: sectors
start=$BOOT_START, size=$BOOT_SECTORS, type=e, bootable
start=$ROOT_START, size=$ROOT_SECTORS, type=83
EOF
fat_in_disk "$BIOS" ANVILBOOT
put "$BIOS" "$WORK/vmlinuz" /vmlinuz
put "$BIOS" "$WORK/initrd.img" /initrd.img
put "$BIOS" "$WORK/syslinux.cfg" /syslinux.cfg
syslinux --offset "$BOOT_OFF" --install "$BIOS"
dd if="$MBR_BIN" of="$BIOS" bs=440 count=1 conv=notrunc status=none
root_into "$BIOS"

# UEFI: GPT, EFI System Partition with systemd-boot as the removable-media
# loader (no NVRAM boot entry needed), root as "Linux root (x86-64)".
UEFI="$WORK/uefi.raw"
new_disk "$UEFI"
sfdisk -q --no-reread --no-tell-kernel "$UEFI" <<EOF
label: gpt
label-id: $GPT_DISK_UUID
unit: sectors
first-lba: 2048
start=$BOOT_START, size=$BOOT_SECTORS, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, uuid=$GPT_ESP_UUID, name="EFI System"
start=$ROOT_START, size=$ROOT_SECTORS, type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709, uuid=$GPT_ROOT_UUID, name="anvil-root"
EOF
fat_in_disk "$UEFI" ANVILESP
for d in /EFI /EFI/BOOT /loader /loader/entries; do
    mmd -i "$UEFI@@$BOOT_OFF" "::$d"
done
put "$UEFI" "$WORK/BOOTX64.EFI" /EFI/BOOT/BOOTX64.EFI
put "$UEFI" "$WORK/loader.conf" /loader/loader.conf
put "$UEFI" "$WORK/anvil.conf" /loader/entries/anvil.conf
put "$UEFI" "$WORK/vmlinuz" /vmlinuz
put "$UEFI" "$WORK/initrd.img" /initrd.img
root_into "$UEFI"

for d in bios uefi; do
    qemu-img convert -q -f raw -O qcow2 "$WORK/$d.raw" "$WORK/$d.qcow2"
    qemu-img convert -q -c -f raw -O qcow2 "$WORK/$d.raw" "$WORK/$d-compressed.qcow2"
done
(cd "$WORK" && sha256sum "${OUTPUTS[@]}" >SHA256SUMS)
for f in "${OUTPUTS[@]}" SHA256SUMS; do
    touch -d "@$SOURCE_DATE_EPOCH" "$WORK/$f"
    mv -f "$WORK/$f" "$OUT/$f"
done
echo "$STAMP" >"$OUT/stamp"
log "built for $KREL in $((SECONDS - started)) s: vmlinuz $(stat -c %s "$WORK/vmlinuz") B, initrd.img $(stat -c %s "$WORK/initrd.img") B (${#mods[@]} modules)"
(cd "$OUT" && ls -ls "${OUTPUTS[@]}" && cat SHA256SUMS) >&2
