#!/usr/bin/env bash
# Image import against `qemu-img convert -O raw` of the same qcow2 file.
# Builds a cloud-image-shaped disk locally (no internet here): a 2 GiB virtual
# disk holding ~600 MiB of real files (this machine's /usr, the kind of bytes
# an OS image carries) spread in runs over mostly empty space, stored as plain
# and as compressed (-c) qcow2. Both sides read the same warm file and write
# to the same filesystem; each side runs RUNS times, the median is printed.
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
now() { date +%s.%N; }

echo "Image import vs qemu-img convert -O raw; $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
for img in disk.qcow2 disk-c.qcow2; do
    src=$WORK/$img
    cat "$src" > /dev/null
    q=() o=()
    for _ in $(seq 1 "$RUNS"); do
        rm -f "$WORK/out.raw"
        t0=$(now); qemu-img convert -O raw "$src" "$WORK/out.raw"; sync -f "$WORK"; t1=$(now)
        q+=("$(echo "$t1 - $t0" | bc)")
        rm -f "$WORK/out.raw"
        rm -rf "$WORK/lib"
        t0=$(now); line=$("$IMPORT" "$src" "$WORK/lib"); t1=$(now)
        o+=("$(echo "$t1 - $t0" | bc)")
    done
    qm=$(printf '%s\n' "${q[@]}" | median)
    om=$(printf '%s\n' "${o[@]}" | median)
    echo "$img ($(du -m "$src" | cut -f1) MiB file): qemu-img convert ${qm}s, anvil import ${om}s, ratio $(echo "scale=2; $om / $qm" | bc)"
    echo "  $line"
done
rm -rf "$WORK/lib" "$WORK/out.raw"
