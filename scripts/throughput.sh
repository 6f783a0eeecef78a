#!/usr/bin/env bash
# End-to-end throughput of the default pipeline on this machine: writes
# COUNT generated orders to a fresh local tansu broker, then times
# `sluice run` from start until every record is committed, and reports CPU
# time and peak memory. Usage: scripts/throughput.sh [exactly-once|at-least-once] [COUNT]
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-exactly-once}
count=${2:-300000}
sluice=./target/release/sluice
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port=$(free_port)
http=$(free_port)
tansu=$(scripts/tansu.sh)
log=target/throughput
mkdir -p "$log"
"$tansu" broker --listener-url "tcp://127.0.0.1:$port" --advertised-listener-url "tcp://127.0.0.1:$port" \
  --storage-engine memory://tansu/ >"$log/tansu.log" 2>&1 &
broker=$!
trap 'kill $broker 2>/dev/null || true' EXIT
for _ in $(seq 1 50); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
for t in orders:3 orders.enriched:3 orders.dlq:1; do
  "$tansu" topic create "${t%%:*}" --broker "tcp://127.0.0.1:$port" --partitions "${t##*:}" >/dev/null
done
export KAFKA_BROKERS=127.0.0.1:$port SLUICE_HTTP_ADDR=127.0.0.1:$http SLUICE_DELIVERY=$mode
export SLUICE_LOOKUP_PREFIX=throughput: SLUICE_REDIS_PREFIX=throughput:$mode:$port: SLUICE_GROUP=throughput
"$sluice" gen --load-lookups --count 0 2>/dev/null
"$sluice" gen --count "$count" --seed 5 --invalid-ratio 0.02 2>/dev/null
start=$(date +%s%N)
"$sluice" run >"$log/host-$mode.log" 2>&1 &
host=$!
ready=""
until [ "$(curl -fs "localhost:$http/metrics" 2>/dev/null | awk '$1=="sluice_records_in_total"{print $2}')" = "$count" ]; do
  if [ -z "$ready" ] && curl -fs "localhost:$http/ready" >/dev/null 2>&1; then ready=$(date +%s%N); fi
  sleep 0.05
done
end=$(date +%s%N)
read -r utime stime < <(awk '{print $14, $15}' "/proc/$host/stat")
hwm=$(awk '/VmHWM/ {print $2}' "/proc/$host/status")
kill -TERM "$host"; wait "$host" || true
redis-cli -u "${REDIS_URL:-redis://127.0.0.1:6379}" --scan --pattern "$SLUICE_REDIS_PREFIX*" | xargs -r -n 100 redis-cli -u "${REDIS_URL:-redis://127.0.0.1:6379}" del >/dev/null
ticks=$(getconf CLK_TCK)
awk -v c="$count" -v s="$start" -v r="${ready:-$start}" -v e="$end" -v u="$utime" -v y="$stime" -v t="$ticks" -v h="$hwm" -v m="$mode" 'BEGIN {
  total = (e - s) / 1e9; steady = (e - r) / 1e9; cpu = (u + y) / t
  printf "%s: %d records in %.1f s (%.1f s after ready): %.0f records/s after ready; %.1f CPU s per million records; peak RSS %.0f MB\n",
    m, c, total, steady, c / steady, cpu * 1e6 / c, h / 1024 }'
