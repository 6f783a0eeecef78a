#!/usr/bin/env bash
# The end-to-end benchmark, on a fresh local tansu broker and the local Redis:
#   0. the raw copy (host/examples/raw_copy.rs: a bare librdkafka
#      BaseConsumer -> BaseProducer with the host's producer settings),
#   1. native pass-through (`sluice passthrough`: consume -> produce, no stages),
#   2. the default pipeline, at-least-once, then exactly-once, then (when
#      PostgreSQL answers at DATABASE_URL) exactly-once with the tables of
#      examples/warehouse.toml,
#   3. end-to-end latency (p50/p99/p99.9/max) at half the at-least-once rate,
#      through the raw copy (the broker's and librdkafka's own floor), then
#      through the pipeline in each delivery mode,
# each over the same COUNT generated orders, with CPU seconds per million
# records and peak RSS. Usage: scripts/benchmark.sh [COUNT]   (default 1000000)
#        scripts/benchmark.sh --quick   (20000 orders: checks that every phase works)
set -euo pipefail
cd "$(dirname "$0")/.."
count=${1:-1000000}
quick=""
if [ "$count" = "--quick" ]; then quick=1; count=20000; fi
sluice=${SLUICE_BIN:-$PWD/target/release/sluice}  # SLUICE_BIN: compare another build
raw_copy=$PWD/target/release/examples/raw_copy
cargo build --release --quiet -p sluice --example raw_copy
out=target/bench
mkdir -p "$out"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port=$(free_port)
tansu=$(scripts/tansu.sh)
"$tansu" broker --listener-url "tcp://127.0.0.1:$port" --advertised-listener-url "tcp://127.0.0.1:$port" \
  --storage-engine memory://tansu/ >"$out/tansu.log" 2>&1 &
broker=$!
host=""
cleanup() {
  [ "$BASHPID" = "$$" ] || return 0 # not in subshells
  [ -n "$host" ] && kill "$host" 2>/dev/null || true
  kill "$broker" 2>/dev/null || true
  redis-cli -u "${REDIS_URL:-redis://127.0.0.1:6379}" --scan --pattern "bench:$port:*" |
    xargs -r -n 100 redis-cli -u "${REDIS_URL:-redis://127.0.0.1:6379}" del >/dev/null
}
trap cleanup EXIT
for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
for t in orders:3 orders.enriched:3 orders.dlq:1 orders.raw:3 orders.copy:3 orders.latency:3 orders.latency.out:3 orders.latency.raw:3 orders.latency.raw.out:3 orders.latency.eo:3 orders.latency.eo.out:3; do
  "$tansu" topic create "${t%%:*}" --broker "tcp://127.0.0.1:$port" --partitions "${t##*:}" >/dev/null
done
export KAFKA_BROKERS=127.0.0.1:$port SLUICE_LOOKUP_PREFIX=bench:$port: SLUICE_PLUGIN_DIR=$PWD/plugins/dist
"$sluice" gen --load-lookups --count 0 2>/dev/null
echo "benchmark: writing $count orders to a local tansu broker" >&2
"$sluice" gen --count "$count" --seed 5 --invalid-ratio 0.02 2>/dev/null
ticks=$(getconf CLK_TCK)

# CPU seconds per million records and peak RSS (MB) of process $1, over $2 records.
usage() {
  read -r utime stime < <(awk '{print $14, $15}' "/proc/$1/stat")
  awk -v u="$utime" -v s="$stime" -v t="$ticks" -v c="$2" -v h="$(awk '/VmHWM/ {print $2}' "/proc/$1/status")" \
    'BEGIN { printf "%.1f %.0f", (u + s) / t * 1e6 / c, h / 1024 }'
}

# CPU ticks used so far by the broker and by Redis (0 when not readable).
redis_pid=$(pgrep -x redis-server | head -n 1 || true)
ticks_of() { if [ -n "$1" ] && [ -r "/proc/$1/stat" ]; then awk '{print $14 + $15}' "/proc/$1/stat"; else echo 0; fi; }
# PostgreSQL's processes come and go (a backend per connection): the ticks of
# those alive now, their pids with them.
pg_ticks() { for pid in $(pgrep -x postgres || true); do echo "$pid:$(ticks_of "$pid")"; done | paste -sd, -; }
peers() { echo "$(ticks_of "$broker") $(ticks_of "$redis_pid") ${1:-$(pg_ticks)}"; }
# CPU seconds per million records of the broker, Redis and PostgreSQL between
# two `peers` readings (PostgreSQL: the processes alive at the second one).
peer_usage() { # before after count
  awk -v b="$1" -v a="$2" -v t="$ticks" -v c="$3" '
    function pg(list, into,   n, i, kv, parts) { n = split(list, parts, ","); for (i = 1; i <= n; i++) { split(parts[i], kv, ":"); into[kv[1]] = kv[2] } }
    BEGIN {
      split(b, x, " "); split(a, y, " "); pg(x[3], old); pg(y[3], new)
      for (pid in new) used += new[pid] - (pid in old ? old[pid] : 0)
      printf "%.1f %.1f %.1f", (y[1] - x[1]) / t * 1e6 / c, (y[2] - x[2]) / t * 1e6 / c, used / t * 1e6 / c
    }'
}

# 0. The raw ceiling: librdkafka alone on one thread, no batches of our own, no commits.
before=$(peers)
/usr/bin/time -f "%U %S %M" -o "$out/raw.time" \
  "$raw_copy" "$KAFKA_BROKERS" orders orders.raw "$count" bench-raw >"$out/raw.txt" 2>"$out/raw.log"
raw_usage=$(awk -v c="$count" '{ printf "%.1f %.0f", ($1 + $2) * 1e6 / c, $3 / 1024 }' "$out/raw.time")
raw_rate=$(awk '{print $(NF-1)}' "$out/raw.txt")
raw_peers=$(peer_usage "$before" "$(peers)" "$count")
echo "benchmark: $(cat "$out/raw.txt")" >&2

# 1. The host's ceiling: the same consumer, producer and batching, no stages.
before=$(peers)
SLUICE_GROUP=bench-passthrough /usr/bin/time -f "%U %S %M" -o "$out/passthrough.time" \
  "$sluice" passthrough pipeline.toml --to orders.copy --count "$count" >"$out/passthrough.txt" 2>"$out/passthrough.log"
pass_usage=$(awk -v c="$count" '{ printf "%.1f %.0f", ($1 + $2) * 1e6 / c, $3 / 1024 }' "$out/passthrough.time")
pass_rate=$(awk '{print $(NF-1)}' "$out/passthrough.txt")
pass_peers=$(peer_usage "$before" "$(peers)" "$count")
echo "benchmark: $(cat "$out/passthrough.txt")" >&2

# 2. The default pipeline, until every record is committed.
pipeline() { # mode group pipeline-file [name] -> "records/s cpu rss broker-cpu redis-cpu"
  local http name=${4:-$1}; http=$(free_port)
  SLUICE_DELIVERY=$1 SLUICE_GROUP=$2 SLUICE_HTTP_ADDR=127.0.0.1:$http SLUICE_REDIS_PREFIX=bench:$port:$name: \
    "$sluice" run "$3" >"$out/host-$name.log" 2>&1 &
  host=$!
  local ready="" end
  until curl -fs "localhost:$http/ready" >/dev/null 2>&1; do sleep 0.05; done
  ready=$(date +%s%N)
  local before; before=$(peers)
  until [ "$(curl -fs "localhost:$http/metrics" | awk '$1=="sluice_records_in_total"{print $2}')" = "$count" ]; do
    kill -0 "$host" || { echo "benchmark: the host died, see $out/host-$name.log" >&2; exit 1; }
    sleep 0.05
  done
  end=$(date +%s%N)
  local used; used="$(usage "$host" "$count") $(peer_usage "$before" "$(peers)" "$count")"
  kill -TERM "$host"; wait "$host" || true; host=""
  awk -v c="$count" -v r="$ready" -v e="$end" -v u="$used" 'BEGIN { printf "%.0f %s\n", c / ((e - r) / 1e9), u }'
}
pipeline at-least-once bench-alo pipeline.toml >"$out/at-least-once.txt"
read -r alo_rate alo_cpu alo_rss alo_broker alo_redis alo_pg <"$out/at-least-once.txt"
echo "benchmark: at-least-once $alo_rate records/s" >&2
pipeline exactly-once bench-eo pipeline.toml >"$out/exactly-once.txt"
read -r eo_rate eo_cpu eo_rss eo_broker eo_redis eo_pg <"$out/exactly-once.txt"
echo "benchmark: exactly-once $eo_rate records/s" >&2
# The same with every order also upserted into PostgreSQL (orders, and revenue per day).
export DATABASE_URL=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}
pg_rate=""
if command -v psql >/dev/null && psql "$DATABASE_URL" -qc 'select 1' >/dev/null 2>&1; then
  export SLUICE_PG_SCHEMA=bench_$port
  psql "$DATABASE_URL" -qc "create schema $SLUICE_PG_SCHEMA"
  pipeline exactly-once bench-pg examples/warehouse.toml postgres >"$out/postgres.txt"
  read -r pg_rate pg_cpu pg_rss pg_broker pg_redis pg_pg <"$out/postgres.txt"
  pg_rows=$(psql "$DATABASE_URL" -tAc "select count(*) from $SLUICE_PG_SCHEMA.orders")
  psql "$DATABASE_URL" -qc "drop schema $SLUICE_PG_SCHEMA cascade" \
    -c "delete from sluice_fences where target like '\"$SLUICE_PG_SCHEMA\".%'"
  echo "benchmark: exactly-once with PostgreSQL tables $pg_rate records/s ($pg_rows order rows)" >&2
else
  echo "benchmark: no PostgreSQL at $DATABASE_URL: the table outputs are not measured" >&2
fi

# 3. Latency at half the at-least-once rate (500/s in quick mode) for 20 s (the
# first second, the sender's own start, left out), in each delivery mode,
# through a copy of the pipeline from orders.latency[.eo] to
# orders.latency[.eo].out, read with read_committed.
rate=$([ -n "$quick" ] && echo 500 || echo $(( alo_rate / 2 )))
stamped=$(( rate * $([ -n "$quick" ] && echo 5 || echo 20) ))
# "measured p50 p99 p99.9 max" from what `sluice latency` printed to file $1.
percentiles() {
  awk '{gsub(/,/, ""); for (i = 1; i <= NF; i++) { if ($i == "p50") a = $(i+1); if ($i == "p99") b = $(i+1); if ($i == "p99.9") c = $(i+1); if ($i == "max") d = $(i+1) } print $2, a, b, c, d}' "$1"
}
latency() { # mode input-topic -> "measured p50 p99 p99.9 max"
  local http; http=$(free_port)
  sed -e "s/^topics = \[\"orders\"\]/topics = [\"$2\"]/" -e "s/^topic = \"orders.enriched\"/topic = \"$2.out\"/" \
    pipeline.toml >"$out/pipeline-$2.toml"
  [ "$(grep -c "$2" "$out/pipeline-$2.toml")" = 2 ]
  SLUICE_DELIVERY=$1 SLUICE_GROUP=bench-$2 SLUICE_HTTP_ADDR=127.0.0.1:$http \
    SLUICE_REDIS_PREFIX=bench:$port:$2: "$sluice" run "$out/pipeline-$2.toml" >"$out/host-$2.log" 2>&1 &
  host=$!
  until curl -fs "localhost:$http/ready" >/dev/null 2>&1; do sleep 0.05; done
  "$sluice" latency "$2.out" --count "$stamped" --idle-s 5 >"$out/$2.txt" 2>"$out/$2.log" &
  local reader=$!
  sleep 2
  "$sluice" gen --count "$stamped" --rate "$rate" --seed 9 --stamp --topic "$2" 2>/dev/null
  wait "$reader"
  kill -TERM "$host"; wait "$host" || true; host=""
  echo "benchmark: $1 $(cat "$out/$2.txt") at $rate records/s" >&2
  percentiles "$out/$2.txt"
}
# The floor: the same load through the raw copy, measured the same way.
latency_raw() { # input-topic -> "measured p50 p99 p99.9 max"
  "$raw_copy" "$KAFKA_BROKERS" "$1" "$1.out" "$stamped" bench-$1 >"$out/raw-$1.txt" 2>"$out/raw-$1.log" &
  local copy=$!
  local deadline=$(( $(date +%s) + 120 ))
  until grep -q "raw copy: assigned" "$out/raw-$1.log"; do
    kill -0 "$copy" 2>/dev/null || { echo "benchmark: the raw copy died, see $out/raw-$1.log" >&2; exit 1; }
    [ "$(date +%s)" -lt "$deadline" ] || { echo "benchmark: the raw copy was given no partitions in 120 s" >&2; exit 1; }
    sleep 0.05
  done
  # The reader reads from the start and latency is taken from timestamps,
  # so the load need not wait for it.
  "$sluice" latency "$1.out" --count "$stamped" --idle-s 5 >"$out/$1.txt" 2>"$out/$1.log" &
  local reader=$!
  "$sluice" gen --count "$stamped" --rate "$rate" --seed 9 --stamp --topic "$1" 2>/dev/null
  wait "$reader"
  wait "$copy"
  echo "benchmark: raw copy $(cat "$out/$1.txt") at $rate records/s" >&2
  percentiles "$out/$1.txt"
}
latency_raw orders.latency.raw >"$out/latency-raw.txt"
read -r raw_measured raw_p50 raw_p99 raw_p999 raw_max <"$out/latency-raw.txt"
latency at-least-once orders.latency >"$out/latency-alo.txt"
read -r measured p50 p99 p999 max <"$out/latency-alo.txt"
latency exactly-once orders.latency.eo >"$out/latency-eo.txt"
read -r eo_measured eo_p50 eo_p99 eo_p999 eo_max <"$out/latency-eo.txt"

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
{
  read -r raw_broker raw_redis _ <<<"$raw_peers"
  read -r pass_broker pass_redis _ <<<"$pass_peers"
  echo "| | records/s | vs raw copy | vs pass-through | CPU s per million: host | broker | Redis | PostgreSQL | peak RSS MB |"
  echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
  echo "| raw copy (librdkafka) | $raw_rate | 1.00 | $(ratio "$raw_rate" "$pass_rate") | ${raw_usage% *} | $raw_broker | $raw_redis | - | ${raw_usage#* } |"
  echo "| native pass-through | $pass_rate | $(ratio "$pass_rate" "$raw_rate") | 1.00 | ${pass_usage% *} | $pass_broker | $pass_redis | - | ${pass_usage#* } |"
  echo "| pipeline, at-least-once | $alo_rate | $(ratio "$alo_rate" "$raw_rate") | $(ratio "$alo_rate" "$pass_rate") | $alo_cpu | $alo_broker | $alo_redis | - | $alo_rss |"
  echo "| pipeline, exactly-once | $eo_rate | $(ratio "$eo_rate" "$raw_rate") | $(ratio "$eo_rate" "$pass_rate") | $eo_cpu | $eo_broker | $eo_redis | - | $eo_rss |"
  [ -z "$pg_rate" ] ||
    echo "| pipeline + PostgreSQL tables, exactly-once | $pg_rate | $(ratio "$pg_rate" "$raw_rate") | $(ratio "$pg_rate" "$pass_rate") | $pg_cpu | $pg_broker | $pg_redis | $pg_pg | $pg_rss |"
  echo
  [ -z "$pg_rate" ] ||
    echo "With PostgreSQL tables, exactly-once keeps $(ratio "$pg_rate" "$eo_rate") of its Kafka-only rate (target 0.7)."
  echo "Against the raw copy: pass-through $(ratio "$pass_rate" "$raw_rate") (target 0.7)," \
    "at-least-once $(ratio "$alo_rate" "$raw_rate") (target 0.5), exactly-once $(ratio "$eo_rate" "$raw_rate") (target 0.4)."
  echo "Latency at $rate records/s ($([ -n "$quick" ] && echo "quick mode's fixed rate" || echo "half the at-least-once rate")), raw copy, $raw_measured records: p50 $raw_p50 ms, p99 $raw_p99 ms, p99.9 $raw_p999 ms, max $raw_max ms (the floor)."
  echo "Latency at $rate records/s, at-least-once, $measured records: p50 $p50 ms, p99 $p99 ms, p99.9 $p999 ms, max $max ms (target p99 50 ms)."
  echo "Latency at $rate records/s, exactly-once, $eo_measured records: p50 $eo_p50 ms, p99 $eo_p99 ms, p99.9 $eo_p999 ms, max $eo_max ms (target p99 150 ms)."
} | tee "$out/results.md"

# Quick mode checks what each phase did, not how fast.
if [ -n "$quick" ]; then
  [ "$(awk '{print $3}' "$out/raw.txt")" -ge "$count" ] || { echo "benchmark: the raw copy fell short" >&2; exit 1; }
  [ "$(awk '{print $2}' "$out/passthrough.txt")" -ge "$count" ] || { echo "benchmark: pass-through fell short" >&2; exit 1; }
  for seen in "$raw_measured" "$measured" "$eo_measured"; do
    [ "$seen" -ge $(( stamped * 7 / 10 )) ] || { echo "benchmark: latency saw $seen of $stamped records" >&2; exit 1; }
  done
  [ -z "$pg_rate" ] || [ "$pg_rows" -gt $(( count * 9 / 10 )) ] ||
    { echo "benchmark: $pg_rows order rows in PostgreSQL for $count orders" >&2; exit 1; }
  echo "benchmark: quick mode ok" >&2
fi
