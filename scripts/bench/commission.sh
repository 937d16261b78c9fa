#!/usr/bin/env bash
# Commissioning benchmark (figures in docs/benchmarks.md): the ramdisk's size,
# and for 1 and 4 machines at once, BIOS and UEFI (QEMU TCG, each behind an
# ipmi_sim BMC, lldpd as the switch): power-on -> `ready` including the LLDP
# window, kernel start -> facts posted (the agent's "facts posted at uptime N
# s" console line), and Anvil's CPU seconds per commissioning (utime+stime of
# the server from /proc/<pid>/stat, before and after). Runs the ignored test
# `bench_commission` of crates/anvil/tests/e2e_commission.rs once per case.
#
# Usage: scripts/bench/commission.sh [CASES]
#   CASES  space-separated VMSxFIRMWARE, default "1xbios 1xuefi 4xbios 4xuefi"
#   ANVIL_BENCH_LLDP_WINDOW  LLDP window in seconds (default 30, the product
#                            default; lldpd sends every 2 s, so a window
#                            ends early once every connected port heard it)
# Needs root; installs what it needs (the same packages as scripts/test.sh).
set -euo pipefail
cd "$(dirname "$0")/../.."
CASES=${1:-"1xbios 1xuefi 4xbios 4xuefi"}
bash scripts/boot-assets/install-deps.sh
for p in openipmi ipmitool lldpd; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$p" >/dev/null
done
export ANVIL_RAMDISK_DIR="$PWD/target/ramdisk"
bash scripts/ramdisk/build.sh "$ANVIL_RAMDISK_DIR"
k=$(stat -c %s "$ANVIL_RAMDISK_DIR/vmlinuz")
i=$(stat -c %s "$ANVIL_RAMDISK_DIR/initrd.img")
echo "Ramdisk: vmlinuz $k B + initrd.img $i B = $((k + i)) B ($(python3 -c "print(f'{($k + $i) / 1e6:.1f}')") MB; budget 30 MB)"

log=target/e2e-boot/timings.txt
mkdir -p target/e2e-boot
before=$(wc -l <"$log" 2>/dev/null || echo 0)
cargo build -q --release -p anvil --tests
for c in $CASES; do
    n=${c%x*}
    fw=${c#*x}
    echo "case: $n VM(s), $fw" >&2
    ANVIL_BENCH_VMS=$n ANVIL_BENCH_FIRMWARE=$fw \
        cargo test -q --release -p anvil --test e2e_commission -- --ignored bench_commission --nocapture >/dev/null
done
echo "Commissioning (TCG), load $(cut -d' ' -f1-3 /proc/loadavg), $(nproc) cores"
tail -n +"$((before + 1))" "$log" | grep '^bench-commission:' | python3 -c '
import sys, collections
per = collections.defaultdict(list)
tot = {}
for line in sys.stdin:
    kv = dict(f.split("=", 1) for f in line.split() if "=" in f)
    key = (int(kv["vms"]), kv["firmware"])
    if "machine" in kv:
        per[key].append((float(kv["power_on_to_ready"].rstrip("s")), kv["kernel_uptime_at_facts_posted"]))
    else:
        tot[key] = kv
for key in sorted(per):
    v = per[key]
    p = [x for x, _ in v]
    f = ", ".join(y for _, y in v)
    t = tot.get(key, {})
    print(f"{key[0]} VM(s) {key[1]:<4}: power-on -> ready {min(p):.1f}-{max(p):.1f} s; kernel start -> facts posted {f}; "
          f"all ready after {t.get(\"all_ready\", \"?\")}; Anvil CPU per commissioning {t.get(\"anvil_cpu_per_commissioning\", \"?\")}")
'
