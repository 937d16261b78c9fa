#!/usr/bin/env bash
# Boot time: QEMU start -> call-home of the discovery ramdisk, with Anvil alone
# as the boot server and with dnsmasq (DHCP+TFTP) as the baseline, the same
# VMs in the same run (the end-to-end tests of crates/anvil/tests/e2e_boot.rs,
# one at a time so they do not share the 2 CPUs). Prints the median per case.
# Usage: scripts/bench/boot.sh [RUNS]   (needs root; installs what it needs)
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${1:-3}
bash scripts/boot-assets/install-deps.sh
log=target/e2e-boot/timings.txt
mkdir -p target/e2e-boot
before=$(wc -l < "$log" 2>/dev/null || echo 0)
for _ in $(seq 1 "$RUNS"); do
    cargo test -q --release -p anvil --test e2e_boot -- --test-threads=1 >/dev/null
done
echo "Boot: QEMU start -> call-home, $RUNS runs each, load $(cut -d' ' -f1-3 /proc/loadavg), $(nproc) cores"
tail -n +"$((before + 1))" "$log" | python3 -c '
import sys, statistics, collections
runs = collections.defaultdict(list)
for line in sys.stdin:
    kv = dict(f.split("=", 1) for f in line.split() if "=" in f)
    if "test" in kv and "qemu_start_to_callhome" in kv:
        runs[kv["test"]].append(float(kv["qemu_start_to_callhome"].rstrip("s")))
for t in sorted(runs):
    v = runs[t]
    print(f"{t:<48} median {statistics.median(v):5.1f} s  (min {min(v):.1f}, max {max(v):.1f}, n={len(v)})")
'
