#!/usr/bin/env bash
# HTTP boot throughput: Anvil's /boot/files against nginx (Debian nginx-light),
# the same 64 MiB file, the same load generator (wrk), in the same run.
# Usage: scripts/bench/http.sh [ANVIL_BINARY]   (default target/release/anvil)
# Only loopback is used. Prints MB/s per server and the ratio Anvil/nginx.
set -euo pipefail
cd "$(dirname "$0")/../.."
ANVIL=${1:-target/release/anvil}
DURATION=${DURATION:-10}
RUNS=${RUNS:-3}
for tool in nginx wrk; do
    command -v "$tool" >/dev/null || { echo "missing $tool: apt-get install -y nginx-light wrk" >&2; exit 2; }
done
[[ -x "$ANVIL" ]] || { echo "build first: cargo build --release -p anvil" >&2; exit 2; }

work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

mkdir -p "$work/data/boot/bench" "$work/nginx"
head -c $((64 * 1024 * 1024)) /dev/urandom > "$work/data/boot/bench/image.raw"

NGINX_PORT=18090
cat > "$work/nginx/nginx.conf" <<CONF
daemon off;
master_process off;
user root;
worker_processes 1;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log;
events { worker_connections 1024; }
http {
    access_log off;
    sendfile on;
    tcp_nopush on;
    server {
        listen 127.0.0.1:$NGINX_PORT;
        root $work/data;
        location /boot/files/ { alias $work/data/boot/; }
    }
}
CONF
nginx -c "$work/nginx/nginx.conf" -p "$work/nginx" &
pids+=($!)

"$ANVIL" serve --data-dir "$work/data" --listen 127.0.0.1:0 --tftp-listen 127.0.0.1:0 --log-level warn > "$work/anvil.out" 2>"$work/anvil.err" &
pids+=($!)
for _ in $(seq 1 100); do grep -q "listening on" "$work/anvil.out" 2>/dev/null && break; sleep 0.1; done
ANVIL_URL=$(sed -n 's/^anvil: listening on //p' "$work/anvil.out")
sleep 0.5

# Both must serve the same bytes.
a=$(curl -s "$ANVIL_URL/boot/files/bench/image.raw" | sha256sum | cut -c1-16)
n=$(curl -s "http://127.0.0.1:$NGINX_PORT/boot/files/bench/image.raw" | sha256sum | cut -c1-16)
[[ "$a" == "$n" ]] || { echo "servers disagree on the file ($a vs $n)" >&2; exit 1; }

mbps() { # url connections -> MB/s (wrk's Transfer/sec, normalised to MB)
    wrk -t "$(( $2 < 2 ? 1 : 2 ))" -c "$2" -d "${DURATION}s" "$1" 2>/dev/null | awk '/Transfer\/sec/ {
        v=$2; u=substr(v, length(v)-1); n=substr(v, 1, length(v)-2);
        if (u=="GB") n*=1024; else if (u=="KB") n/=1024; printf "%.0f", n }'
}

echo "HTTP: 64 MiB file, wrk ${DURATION}s per run, median of $RUNS runs, load $(cut -d' ' -f1-3 /proc/loadavg), $(nproc) cores"
printf "%-12s %10s %10s %8s\n" connections anvil_MB/s nginx_MB/s ratio
for c in 1 100; do
    as=(); ns=()
    for _ in $(seq 1 "$RUNS"); do
        as+=("$(mbps "$ANVIL_URL/boot/files/bench/image.raw" "$c")")
        ns+=("$(mbps "http://127.0.0.1:$NGINX_PORT/boot/files/bench/image.raw" "$c")")
    done
    am=$(printf "%s\n" "${as[@]}" | sort -n | sed -n "$(( (RUNS + 1) / 2 ))p")
    nm=$(printf "%s\n" "${ns[@]}" | sort -n | sed -n "$(( (RUNS + 1) / 2 ))p")
    printf "%-12s %10s %10s %8s\n" "$c" "$am" "$nm" "$(awk -v a="$am" -v n="$nm" 'BEGIN { printf "%.2f", a / n }')"
done
