#!/usr/bin/env bash
# DHCPv4 side by side: Anvil vs Kea 2.2 (memfile; PostgreSQL) vs dnsmasq 2.90,
# driven by the same relay-style load generator (anvil-dhcpperf) in the same
# run: DORA/s, p99 latency, server CPU per DORA, errors, and whether every
# ACKed lease is on disk after the server is SIGKILLed.
#
# Usage: scripts/bench/dhcp.sh [ANVIL_BINARY]   (default target/release/anvil)
# Knobs (environment):
#   CLIENTS=20000  INFLIGHT=64  MACS="seq random"  TIME_LIMIT=120 (s per run)
#   TIMEOUT_MS=2000 (retransmit)  SERVERS="kea-memfile anvil kea-pgsql dnsmasq"
#   RUNS=1: repeat the whole round; each round gives its own Anvil/Kea ratios
#   (on a busy shared host, compare within a round, not across rounds).
#   ANVIL_TEST_POSTGRES_URL=postgres://USER:PASS@127.0.0.1:5432/DB (kea-pgsql;
#   skipped without it; the role needs CREATEDB)
#   PROFILE=perf|strace|threads: attach to each server during its load and
#   keep the result in PROFILE_DIR (default target/dhcp-bench-profile):
#   perf record -g (then `perf report -i FILE --no-children`), strace -c -f
#   (syscall counts and time), or per-thread CPU from /proc/PID/task.
#   Profiling slows the server: use it to find where time goes, not for figures.
#   KEEP=1: keep the work directory (configs, logs, lease files, Anvil's DB).
#   ANVIL_DHCP_EXTRA='commit_delay_max_ms = 0': extra lines for Anvil's [dhcp].
#
# Topology: two network namespaces, created here and removed on exit, joined
# by a veth pair; nothing else is touched.
#   relay ns  adp-r-PID: 10.199.0.2/24, and 10.200.0.1/16 = giaddr; the
#             generator binds 10.200.0.1:67 (servers answer relays on 67).
#   server ns adp-s-PID: 10.199.0.1/24, route 10.200.0.0/16 via the relay;
#             the server listens on 10.199.0.1:67 and serves the relayed
#             subnet 10.200.0.0/16, pool 10.200.0.10-10.200.255.250.
# Why not plain loopback: dnsmasq binds 0.0.0.0:67 without SO_REUSEADDR, so
# on one stack it cannot coexist with the relay's port 67 (nor with another
# engineer's DHCP test on this shared host). A relay on its own stack is also
# what a server sees in a rack: unicast from a giaddr it routes back to.
#
# Each server starts fresh (empty lease storage) for each MAC pattern. Kea
# memfile never fsyncs (the issue's baseline: "on_disk" after SIGKILL only
# shows it wrote, not that it would survive a power cut); Kea on PostgreSQL
# commits each lease; dnsmasq rewrites its whole lease file in place and
# ACKs before doing so (a SIGKILL mid-rewrite has left it empty); Anvil must
# commit (fsync) before every ACK, and the run fails if its on-disk count is
# not its ACK count. dnsmasq runs with --no-ping (Kea and Anvil do not probe
# addresses either) and --quiet-dhcp (no per-packet logging). Server CPU is
# the server process's own: PostgreSQL's work for Kea is not in it.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
ANVIL=${1:-target/release/anvil}
[[ $ANVIL == /* ]] || ANVIL=$ROOT/$ANVIL
CLIENTS=${CLIENTS:-20000}
INFLIGHT=${INFLIGHT:-64}
MACS=${MACS:-seq random}
TIME_LIMIT=${TIME_LIMIT:-120}
TIMEOUT_MS=${TIMEOUT_MS:-2000}
# Anvil right after Kea memfile, so the two it is judged against run closest
# in time (the host's load drifts).
SERVERS=${SERVERS:-kea-memfile anvil kea-pgsql dnsmasq}
RUNS=${RUNS:-1}
GEN=$ROOT/target/release/anvil-dhcpperf
PROFILE_DIR=${PROFILE_DIR:-$ROOT/target/dhcp-bench-profile}

[[ $(id -u) == 0 ]] || { echo "needs root (network namespaces, port 67)" >&2; exit 2; }
for tool in ip ss jq; do
    command -v "$tool" >/dev/null || { echo "missing $tool" >&2; exit 2; }
done

# --- packages ---------------------------------------------------------------
# Install what is missing. A package's postinst may start its daemon (on a
# machine with a working invoke-rc.d); stop only the processes that appeared
# during the install, through the package's init script, by PID as a last
# resort. Nothing that ran before is touched.
pids_of() { pgrep -x "$1" 2>/dev/null | sort || true; }
need=()
command -v kea-dhcp4 >/dev/null || need+=(kea-dhcp4-server)
command -v dnsmasq >/dev/null || need+=(dnsmasq)
# kea-admin creates Kea's PostgreSQL schema.
[[ " $SERVERS " == *" kea-pgsql "* ]] && ! command -v kea-admin >/dev/null && need+=(kea-admin)
command -v sqlite3 >/dev/null || need+=(sqlite3)
if ((${#need[@]})); then
    before_kea=$(pids_of kea-dhcp4)
    before_dm=$(pids_of dnsmasq)
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
    for pair in "kea-dhcp4:kea-dhcp4-server:$before_kea" "dnsmasq:dnsmasq:$before_dm"; do
        IFS=: read -r proc svc before <<<"$pair"
        new=$(comm -13 <(tr ' ' '\n' <<<"$before" | sort) <(pids_of "$proc"))
        [[ -z $new ]] && continue
        echo "stopping $svc started by its package install (pids $new)" >&2
        if [[ -x /etc/init.d/$svc ]]; then
            /etc/init.d/"$svc" stop >/dev/null 2>&1 || true
        elif command -v service >/dev/null; then
            service "$svc" stop >/dev/null 2>&1 || true
        fi
        sleep 1
        for p in $new; do kill "$p" 2>/dev/null || true; done
    done
fi

cargo build --release -q -p anvil-dhcpperf

# --- namespaces ---------------------------------------------------------------
NS_S=adp-s-$$
NS_R=adp-r-$$
work=$(mktemp -d /tmp/anvil-dhcpbench.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    ip netns del "$NS_S" 2>/dev/null || true
    ip netns del "$NS_R" 2>/dev/null || true
    if [[ -n ${PG_DB:-} ]]; then
        psql "$ANVIL_TEST_POSTGRES_URL" -qc "DROP DATABASE IF EXISTS $PG_DB" >/dev/null 2>&1 || true
    fi
    if [[ -n ${KEEP:-} ]]; then echo "kept $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT

ip netns add "$NS_S"
ip netns add "$NS_R"
ip link add "vs$$" type veth peer name "vr$$"
ip link set "vs$$" netns "$NS_S"
ip link set "vr$$" netns "$NS_R"
ip -n "$NS_S" link set lo up
ip -n "$NS_R" link set lo up
ip -n "$NS_S" addr add 10.199.0.1/24 dev "vs$$"
ip -n "$NS_R" addr add 10.199.0.2/24 dev "vr$$"
ip -n "$NS_R" addr add 10.200.0.1/16 dev "vr$$"
ip -n "$NS_S" link set "vs$$" up
ip -n "$NS_R" link set "vr$$" up
ip -n "$NS_S" route add 10.200.0.0/16 via 10.199.0.2
IFACE=vs$$
SERVER_IP=10.199.0.1
GIADDR=10.200.0.1

in_s() { ip netns exec "$NS_S" "$@"; }
in_r() { ip netns exec "$NS_R" "$@"; }

# Waits until something in the server namespace listens on UDP 67.
wait_bound() {
    for _ in $(seq 1 200); do
        [[ -n $(in_s ss -Hlun 'sport = :67') ]] && return 0
        kill -0 "$1" 2>/dev/null || return 1
        sleep 0.05
    done
    return 1
}

# `ip netns exec` execs the command, so $! is the server's own PID (not so
# through a shell function, which would put a subshell in between).
start() { # log cmd... -> sets SPID
    local log=$1; shift
    ip netns exec "$NS_S" "$@" >"$log" 2>&1 &
    SPID=$!
    pids+=("$SPID")
}

# "TID NAME TICKS" per thread, sorted by TID (for join).
thread_cpu() {
    for t in /proc/"$1"/task/*; do
        awk '{ sub(/^[^(]*\(/, ""); name = $0; sub(/\).*/, "", name); gsub(/ /, "_", name);
               sub(/^[^)]*\) /, ""); split($0, f, " "); print name, f[12] + f[13] }' "$t/stat" |
            sed "s|^|${t##*/} |"
    done | sort -k1,1
}

stop_hard() { # pid: SIGKILL, so only what was durable survives
    kill -9 "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}

# --- servers ------------------------------------------------------------------
kea_conf() { # dir lease-database-json
    cat >"$1/kea.json" <<CONF
{ "Dhcp4": {
  "interfaces-config": { "interfaces": ["$IFACE"], "dhcp-socket-type": "udp" },
  "lease-database": $2,
  "valid-lifetime": 3600,
  "subnet4": [ { "id": 1, "subnet": "10.200.0.0/16",
      "pools": [ { "pool": "10.200.0.10 - 10.200.255.250" } ],
      "relay": { "ip-addresses": ["$GIADDR"] } } ],
  "loggers": [ { "name": "kea-dhcp4", "severity": "WARN",
      "output_options": [ { "output": "$1/kea.log" } ] } ]
} }
CONF
}

start_kea() { # dir
    # Kea's PID and lock files go to the run's directory, not /run/kea.
    start "$1/out.log" env KEA_PIDFILE_DIR="$1" KEA_LOCKFILE_DIR="$1" kea-dhcp4 -c "$1/kea.json"
}

# Kea in the server namespace reaches the host's PostgreSQL through a Unix
# socket that forwards to 127.0.0.1:5432 (libpq takes a directory as host).
pg_bridge() { # dir port
    python3 - "$1/.s.PGSQL.$2" "$2" <<'PY' &
import asyncio, sys
path, port = sys.argv[1], int(sys.argv[2])
async def pipe(r, w):
    try:
        while data := await r.read(65536):
            w.write(data)
            await w.drain()
    finally:
        w.close()
async def handle(cr, cw):
    sr, sw = await asyncio.open_connection("127.0.0.1", port)
    await asyncio.gather(pipe(cr, sw), pipe(sr, cw), return_exceptions=True)
async def main():
    srv = await asyncio.start_unix_server(handle, path)
    async with srv:
        await srv.serve_forever()
asyncio.run(main())
PY
    pids+=($!)
    for _ in $(seq 1 100); do [[ -S $1/.s.PGSQL.$2 ]] && return 0; sleep 0.05; done
    return 1
}

PG_READY=
setup_pg() {
    [[ -n ${ANVIL_TEST_POSTGRES_URL:-} ]] || { echo "kea-pgsql: skipped (ANVIL_TEST_POSTGRES_URL unset)" >&2; return 1; }
    local re='^postgres(ql)?://([^:]+):([^@]+)@([^:/]+):([0-9]+)/'
    [[ $ANVIL_TEST_POSTGRES_URL =~ $re ]] || { echo "kea-pgsql: cannot parse ANVIL_TEST_POSTGRES_URL" >&2; return 1; }
    PG_USER=${BASH_REMATCH[2]} PG_PASS=${BASH_REMATCH[3]} PG_HOST=${BASH_REMATCH[4]} PG_PORT=${BASH_REMATCH[5]}
    mkdir -p "$work/pg"
    pg_bridge "$work/pg" "$PG_PORT" || { echo "kea-pgsql: bridge failed" >&2; return 1; }
    PG_READY=1
}

fresh_pg_db() { # -> PG_DB with Kea's schema
    if [[ -n ${PG_DB:-} ]]; then
        psql "$ANVIL_TEST_POSTGRES_URL" -qc "DROP DATABASE IF EXISTS $PG_DB" >/dev/null
    fi
    PG_DB=kea_bench_$$_$RANDOM
    psql "$ANVIL_TEST_POSTGRES_URL" -qc "CREATE DATABASE $PG_DB" >/dev/null
    kea-admin db-init pgsql -u "$PG_USER" -p "$PG_PASS" -n "$PG_DB" -h "$PG_HOST" -P "$PG_PORT" >"$work/pg/init.log" 2>&1
}

pg_url_db() { sed -E "s#/[^/?]*(\?|\$)#/$PG_DB\1#" <<<"$ANVIL_TEST_POSTGRES_URL"; }

# run_server NAME MACS KEY: starts NAME fresh, loads it, SIGKILLs it, counts
# the leases it had made durable. Writes $work/KEY.json (+ .durable, .rc).
run_server() {
    local name=$1 macs=$2 key=$3 dir=$work/$3 durable=-
    mkdir -p "$dir"
    case $name in
    kea-memfile)
        kea_conf "$dir" "{ \"type\": \"memfile\", \"persist\": true, \"name\": \"$dir/leases4.csv\", \"lfc-interval\": 0 }"
        start_kea "$dir"
        ;;
    kea-pgsql)
        fresh_pg_db
        kea_conf "$dir" "{ \"type\": \"postgresql\", \"name\": \"$PG_DB\", \"user\": \"$PG_USER\", \"password\": \"$PG_PASS\", \"host\": \"$work/pg\", \"port\": $PG_PORT }"
        start_kea "$dir"
        ;;
    dnsmasq)
        touch "$dir/leases"
        start "$dir/out.log" dnsmasq --keep-in-foreground --conf-file=/dev/null --port=0 \
            --interface="$IFACE" --dhcp-range=10.200.0.10,10.200.255.250,255.255.0.0,1h \
            --dhcp-leasefile="$dir/leases" --dhcp-lease-max=200000 --dhcp-authoritative \
            --no-ping --quiet-dhcp --pid-file="$dir/dnsmasq.pid" --log-facility="$dir/dnsmasq.log"
        ;;
    anvil)
        mkdir -p "$dir/data"
        cat >"$dir/anvil.toml" <<CONF
[log]
level = "warn"

# Only DHCP is measured: no TFTP socket beside it.
[tftp]
enabled = false

[dhcp]
listen = ["$SERVER_IP:67"]
${ANVIL_DHCP_EXTRA:-}

[[dhcp.network]]
name = "bench"
subnet = "10.200.0.0/16"
relay = true
range_start = "10.200.0.10"
range_end = "10.200.255.250"
server_address = "$SERVER_IP"
CONF
        start "$dir/out.log" "$ANVIL" serve --config "$dir/anvil.toml" --data-dir "$dir/data" --listen 127.0.0.1:0
        ;;
    esac
    if ! wait_bound "$SPID"; then
        echo "$name: did not bind UDP 67; its output:" >&2
        tail -n 20 "$dir"/*.log >&2 || true
        stop_hard "$SPID"
        return 1
    fi
    local rc=0 prof=
    if [[ -n ${PROFILE:-} ]]; then
        mkdir -p "$PROFILE_DIR"
        case $PROFILE in
        perf) perf record -q -F 999 -g -p "$SPID" -o "$PROFILE_DIR/$key.perf.data" 2>/dev/null & prof=$! ;;
        strace) strace -c -f -p "$SPID" -o "$PROFILE_DIR/$key.strace.txt" 2>/dev/null & prof=$! ;;
        threads) thread_cpu "$SPID" >"$work/threads.before" ;;
        esac
        sleep 0.5
    fi
    in_r "$GEN" --server "$SERVER_IP:67" --relay "$GIADDR" --clients "$CLIENTS" --macs "$macs" \
        --inflight "$INFLIGHT" --timeout-ms "$TIMEOUT_MS" --time-limit-s "$TIME_LIMIT" \
        --server-pid "$SPID" --label "$name" --json "$work/$key.json" >"$dir/gen.txt" || rc=$?
    if [[ -n $prof ]]; then
        kill -INT "$prof" 2>/dev/null || true
        wait "$prof" 2>/dev/null || true
    fi
    if [[ ${PROFILE:-} == threads ]]; then
        thread_cpu "$SPID" | join -a 2 -e 0 -o 2.1,2.2,1.3,2.3 "$work/threads.before" - |
            awk '{ printf "%8d ms  %s (tid %s)\n", ($4 - $3) * 1000 / '"$(getconf CLK_TCK)"', $2, $1 }' |
            sort -rn >"$PROFILE_DIR/$key.threads.txt"
    fi
    stop_hard "$SPID"
    case $name in
    kea-memfile) durable=$(tail -n +2 "$dir/leases4.csv" | cut -d, -f1 | sort -u | wc -l) ;;
    kea-pgsql) durable=$(psql "$(pg_url_db)" -tAc "SELECT count(*) FROM lease4") ;;
    dnsmasq) durable=$(wc -l <"$dir/leases") ;;
    anvil) durable=$(sqlite3 "$dir/data/anvil.db" "SELECT count(*) FROM leases WHERE state = 'bound'") ;;
    esac
    echo "$durable" >"$work/$key.durable"
    echo "$rc" >"$work/$key.rc"
    sed 's/^/    /' "$dir/gen.txt" >&2
}

# --- run ----------------------------------------------------------------------------
echo "DHCP: $CLIENTS clients per run, inflight $INFLIGHT, retransmit ${TIMEOUT_MS} ms, load $(cut -d' ' -f1-3 /proc/loadavg), $(nproc) cores" >&2
ran=()
for run in $(seq 1 "$RUNS"); do
    for name in $SERVERS; do
        case $name in
        kea-pgsql) [[ -n $PG_READY ]] || setup_pg || continue ;;
        anvil)
            [[ -x $ANVIL ]] || { echo "anvil: skipped (build first: cargo build --release -p anvil)" >&2; continue; }
            ;;
        esac
        for macs in $MACS; do
            echo "== round $run: $name, $macs MACs (load $(cut -d' ' -f1 /proc/loadavg))" >&2
            run_server "$name" "$macs" "$name-$macs-$run" && ran+=("$name-$macs-$run")
        done
    done
done

# --- table ----------------------------------------------------------------------------
echo
echo "DHCP DORA, relayed over veth: $CLIENTS clients, inflight $INFLIGHT; load after: $(cut -d' ' -f1-3 /proc/loadavg); $(nproc) cores"
printf "%-5s %-12s %-7s %8s %8s %8s %9s %7s %7s %7s %7s %8s %8s\n" \
    round server macs DORA/s p50_ms p99_ms cpu_us/D acked naks retx failed errors on_disk
fail=0
for key in "${ran[@]}"; do
    j=$work/$key.json
    [[ -s $j ]] || { echo "$key: no result" >&2; fail=1; continue; }
    durable=$(cat "$work/$key.durable")
    jq -r --arg d "$durable" --arg run "${key##*-}" '[$run, .label, .macs, (.dora_per_s|floor), .latency_ms.p50, .latency_ms.p99,
        (.server_cpu_us_per_dora // 0 | . * 10 | round / 10), .acks, .naks,
        (.retransmits.discover + .retransmits.request), (.failed + .unfinished), .errors, $d] | @tsv' "$j" |
        awk -F'\t' '{ printf "%-5s %-12s %-7s %8s %8.2f %8.2f %9s %7s %7s %7s %7s %8s %8s\n", $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13 }'
    [[ $(cat "$work/$key.rc") == 0 ]] || fail=1
    # Anvil must have every ACKed lease on disk after SIGKILL.
    if [[ $key == anvil-* ]]; then
        acked=$(jq -r '.completed' "$j")
        if [[ $durable != "$acked" ]]; then
            echo "  $key: $durable leases durable but $acked ACKed" >&2
            fail=1
        fi
    fi
done
for run in $(seq 1 "$RUNS"); do for macs in $MACS; do
    a=$work/anvil-$macs-$run.json k=$work/kea-memfile-$macs-$run.json
    [[ -s $a && -s $k ]] || continue
    jq -rn --slurpfile a "$a" --slurpfile k "$k" --arg m "$macs" --arg run "$run" '
        def r(x; y): if (y // 0) > 0 and x != null then (x / y * 100 | round / 100 | tostring) else "-" end;
        "round \($run) anvil/kea-memfile (\($m)): DORA/s x" + r($a[0].dora_per_s; $k[0].dora_per_s)
        + ", p99 x" + r($a[0].latency_ms.p99; $k[0].latency_ms.p99)
        + ", CPU/DORA x" + r($a[0].server_cpu_us_per_dora; $k[0].server_cpu_us_per_dora)'
done; done
exit $fail
