#!/usr/bin/env bash
# Runs every Rust test of the workspace (unit, golden, end to end, the host
# container), then the benchmarks in their quick mode (they must work and
# their outputs must be right; their speed is not judged here), and ends
# with one line that sums the tests up.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p target
status=0
# The container tests need a Docker engine and the images: start the one and
# build the others (or say why they skip), and stop the engine at the end.
trap 'bash scripts/container.sh stop' EXIT
bash scripts/container.sh prepare > target/container.env
# shellcheck disable=SC1091
. target/container.env
cargo test --release --workspace 2>&1 | tee target/test.log || status=$?
if [ "$status" = 0 ]; then
  ./target/release/sluice bench --count 2000 --batch 64 || status=$?
  cargo bench -p sluice --bench micro -- --test 2>&1 | tail -n 12 || status=$?
  bash scripts/benchmark.sh --quick || status=$?
fi
awk '/^test result:/ { passed += $4; failed += $6 } END { printf "sluice: %d passed, %d failed\n", passed, failed }' target/test.log
[ "$status" = 0 ] && echo "sluice: benchmarks ok (quick mode)"
exit "$status"
