#!/usr/bin/env bash
# Image import against `qemu-img convert -O raw` of the same qcow2 file.
# Builds a cloud-image-shaped disk locally (no internet here): a 2 GiB virtual
# disk holding ~600 MiB of real files (this machine's /usr, the kind of bytes
# an OS image carries) spread in runs over mostly empty space, stored as plain
# and as compressed (-c) qcow2. Both sides read the same warm file and write
# to the same filesystem; each side runs RUNS times, alternating which goes
# first; per run the load, wall and CPU seconds and the ratio are printed,
# then the medians.
# Usage: scripts/bench/image-import.sh [RUNS] [WORKDIR]
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${1:-3}
WORK=${2:-target/bench-image}
mkdir -p "$WORK"
cargo build -q --release -p anvil-image --example import
IMPORT=target/release/examples/import

if [[ ! -f $WORK/disk.qcow2 ]]; then
    python3 - "$WORK/disk.raw" <<'PY'
import os, sys
out = sys.argv[1]
size = 2 << 30
want = 600 << 20
files = []
for root, _, names in os.walk("/usr"):
    for n in names:
        p = os.path.join(root, n)
        if os.path.isfile(p) and not os.path.islink(p):
            files.append(p)
files.sort()
with open(out, "wb") as f:
    f.truncate(size)
    pos, written, i = 1 << 20, 0, 0
    while written < want and i < len(files):
        run = 0
        # A run of ~8 MiB of files, then a gap, like files on a fresh filesystem.
        while run < (8 << 20) and i < len(files):
            try:
                data = open(files[i], "rb").read()
            except OSError:
                data = b""
            i += 1
            data = data[: (8 << 20) - run]
            f.seek(pos + run)
            f.write(data)
            run += len(data)
        written += run
        pos += run + (2 << 20) + (run // 2)
        if pos + (8 << 20) > size:
            break
print(f"wrote {written >> 20} MiB of data into a {size >> 30} GiB disk")
PY
    qemu-img convert -O qcow2 "$WORK/disk.raw" "$WORK/disk.qcow2"
    qemu-img convert -c -O qcow2 "$WORK/disk.raw" "$WORK/disk-c.qcow2"
    rm -f "$WORK/disk.raw"
fi

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
# Wall, user+sys CPU seconds of a command (bash's `time` counts its children).
timed() {
    local TIMEFORMAT='%R %U %S' out
    out=$({ time "$@" > /dev/null; } 2>&1 | tail -1)
    awk '{printf "%.3f %.3f\n", $1, $2 + $3}' <<< "$out"
}
qemu_side() { qemu-img convert -O raw "$1" "$WORK/out.raw" && sync -f "$WORK"; }

# The machine is shared: the load is printed with every run, the two sides
# alternate which goes first, and the ratio is taken per run (same load)
# before the median. CPU seconds do not depend on the load as wall time does.
echo "Image import vs qemu-img convert -O raw; $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
for img in disk.qcow2 disk-c.qcow2; do
    src=$WORK/$img
    cat "$src" > /dev/null
    ratios=() qw=() ow=() qc=() oc=()
    for run in $(seq 1 "$RUNS"); do
        load=$(cut -d' ' -f1 /proc/loadavg)
        rm -rf "$WORK/out.raw" "$WORK/lib"
        if (( run % 2 )); then
            read -r qwall qcpu < <(timed qemu_side "$src")
            read -r owall ocpu < <(timed "$IMPORT" "$src" "$WORK/lib")
        else
            read -r owall ocpu < <(timed "$IMPORT" "$src" "$WORK/lib")
            read -r qwall qcpu < <(timed qemu_side "$src")
        fi
        ratio=$(echo "scale=2; $owall / $qwall" | bc)
        echo "  $img run $run: load $load; qemu-img ${qwall}s (cpu ${qcpu}s), anvil ${owall}s (cpu ${ocpu}s), ratio $ratio"
        ratios+=("$ratio") qw+=("$qwall") ow+=("$owall") qc+=("$qcpu") oc+=("$ocpu")
    done
    line=$("$IMPORT" "$src" "$WORK/lib")
    med() { printf '%s\n' "$@" | median; }
    echo "$img ($(du -m "$src" | cut -f1) MiB file): median qemu-img convert $(med "${qw[@]}")s (cpu $(med "${qc[@]}")s), anvil import $(med "${ow[@]}")s (cpu $(med "${oc[@]}")s), median ratio $(med "${ratios[@]}")"
    echo "  $line"
done
rm -rf "$WORK/lib" "$WORK/out.raw"
