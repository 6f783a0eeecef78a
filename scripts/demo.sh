#!/usr/bin/env bash
# `make demo`: runs the default pipeline on this machine and shows it work.
#
# Without KAFKA_BROKERS it starts a local tansu broker (in memory) on port
# ${DEMO_KAFKA_PORT:-9092}; Redis is taken from REDIS_URL (default the local
# one). Counters are written under ${SLUICE_REDIS_PREFIX:-demo:}, which the
# demo clears first. DEMO_COUNT and DEMO_RATE size the generated load.
#
# When PostgreSQL answers at DATABASE_URL (default the local server's
# database `test`) and psql is installed, the demo runs
# examples/warehouse.toml instead: the same pipeline, with the orders and
# their daily revenue also upserted into tables of schema sluice_demo.
set -euo pipefail
cd "$(dirname "$0")/.."

sluice=./target/release/sluice
count=${DEMO_COUNT:-100000}
rate=${DEMO_RATE:-10000}
export REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379}
export SLUICE_REDIS_PREFIX=${SLUICE_REDIS_PREFIX:-demo:}
export SLUICE_HTTP_ADDR=${SLUICE_HTTP_ADDR:-127.0.0.1:8080}
logs=target/demo
mkdir -p "$logs"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

wait_port() {
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "demo: nothing listens on port $1" >&2
  return 1
}

if [ -z "${KAFKA_BROKERS:-}" ]; then
  port=${DEMO_KAFKA_PORT:-9092}
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "demo: port $port is taken; set KAFKA_BROKERS to use that broker, or DEMO_KAFKA_PORT for another port" >&2
    exit 1
  fi
  tansu=$(scripts/tansu.sh)
  url=tcp://127.0.0.1:$port
  "$tansu" broker --listener-url "$url" --advertised-listener-url "$url" --storage-engine memory://tansu/ \
    >"$logs/tansu.log" 2>&1 &
  pids+=($!)
  wait_port "$port"
  for topic in orders:3 orders.enriched:3 orders.dlq:1; do
    "$tansu" topic create "${topic%%:*}" --broker "$url" --partitions "${topic##*:}" >/dev/null
  done
  export KAFKA_BROKERS=127.0.0.1:$port
  echo "demo: started a local tansu broker at $KAFKA_BROKERS (log: $logs/tansu.log)"
fi

pipeline=pipeline.toml
export DATABASE_URL=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}
if command -v psql >/dev/null && psql "$DATABASE_URL" -qc 'select 1' >/dev/null 2>&1; then
  export SLUICE_PG_SCHEMA=sluice_demo
  psql "$DATABASE_URL" -q -c "drop schema if exists $SLUICE_PG_SCHEMA cascade" -c "create schema $SLUICE_PG_SCHEMA" \
    -c "delete from sluice_fences where target like '\"$SLUICE_PG_SCHEMA\".%'" 2>/dev/null ||
    psql "$DATABASE_URL" -q -c "create schema if not exists $SLUICE_PG_SCHEMA"
  pipeline=examples/warehouse.toml
  echo "demo: PostgreSQL answers at $DATABASE_URL: running $pipeline (tables in schema $SLUICE_PG_SCHEMA)"
fi

redis_cli() { redis-cli -u "$REDIS_URL" "$@"; }
redis_cli --scan --pattern "${SLUICE_REDIS_PREFIX}*" | while read -r key; do redis_cli del "$key" >/dev/null; done
"$sluice" gen --load-lookups --count 0

"$sluice" run "$pipeline" >"$logs/host.log" 2>&1 &
host=$!
pids+=($host)
echo "demo: sluice is starting (log: $logs/host.log); dashboard: http://$SLUICE_HTTP_ADDR/"
for _ in $(seq 1 300); do
  curl -fs "http://$SLUICE_HTTP_ADDR/ready" >/dev/null 2>&1 && break
  kill -0 "$host" 2>/dev/null || { cat "$logs/host.log"; exit 1; }
  sleep 0.2
done

"$sluice" gen --count "$count" --rate "$rate" --invalid-ratio 0.02 --seed "$RANDOM" 2>"$logs/gen.log" &
gen=$!
pids+=($gen)

metric() { curl -fs "http://$SLUICE_HTTP_ADDR/metrics" | awk -v m="$1" '$1 == m { print $2 }'; }
show() {
  local dead
  dead=$(curl -fs "http://$SLUICE_HTTP_ADDR/metrics" | awk '/^sluice_dead_letters_total/ { s += $2 } END { print s + 0 }')
  printf 'records in %8s | out %8s | dead letters %6s | filtered %6s | orders %8s | revenue %12s cents\n' \
    "$(metric sluice_records_in_total)" "$(metric sluice_records_out_total)" "$dead" "$(metric sluice_filtered_total)" \
    "$(redis_cli hget "${SLUICE_REDIS_PREFIX}totals" orders)" "$(redis_cli hget "${SLUICE_REDIS_PREFIX}totals" revenue_cents)"
}
started=$(date +%s)
while kill -0 "$gen" 2>/dev/null; do
  show
  sleep 2
done
wait "$gen"
for _ in $(seq 1 100); do
  [ "$(metric sluice_records_in_total)" = "$count" ] && break
  sleep 0.2
done
show
echo
echo "demo: $count records in $(( $(date +%s) - started )) s"
./target/release/sluice report "$pipeline" --top 5
if [ "$pipeline" = examples/warehouse.toml ]; then
  echo
  echo "demo: the PostgreSQL tables ($DATABASE_URL, schema $SLUICE_PG_SCHEMA):"
  psql "$DATABASE_URL" -c "select (select count(*) from $SLUICE_PG_SCHEMA.orders) as order_rows,
    (select count(*) from $SLUICE_PG_SCHEMA.daily_revenue) as day_rows,
    (select sum(revenue_cents) from $SLUICE_PG_SCHEMA.daily_revenue) as revenue_cents" | sed 's/^/  /'
fi
echo
echo "demo: the first canonical order on orders.enriched, and the first dead letter:"
"$sluice" peek orders.enriched --count 1 | sed 's/^/  /'
"$sluice" peek orders.dlq --count 1 | sed 's/^/  /'
kill -TERM "$host"
wait "$host" || true
echo "demo: stopped cleanly; see $logs/host.log"
