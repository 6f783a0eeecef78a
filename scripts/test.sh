#!/usr/bin/env bash
# Runs every Rust test of the workspace (unit, golden, end to end, the host
# container), then the benchmarks in their quick mode (they must work and
# their outputs must be right; their speed is not judged here), and ends
# with one line that sums the tests up.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p target
status=0
# The container tests need a Docker engine and the images: start the one
# (stopped at the end if this run started it) and build the others, or say
# why they skip. A failed build fails the run, after the other tests.
trap '[ "${SLUICE_DOCKER_STARTED:-}" != 1 ] || bash scripts/container.sh stop' EXIT
prepared=0
bash scripts/container.sh prepare > target/container.env && prepared=1
# shellcheck disable=SC1091
. target/container.env
if [ "$prepared" = 0 ]; then
  status=1
  unset SLUICE_TEST_IMAGE
  echo "container: preparing the images failed; the container tests cannot run" >&2
fi
cargo test --release --workspace 2>&1 | tee target/test.log || status=$?
if [ "$status" = 0 ]; then
  ./target/release/sluice-native-bench --count 2000 --batch 64 || status=$?
  cargo bench -p sluice --bench micro -- --test 2>&1 | tail -n 12 || status=$?
  bash scripts/benchmark.sh --quick || status=$?
fi
awk '/^test result:/ { passed += $4; failed += $6 } END { printf "sluice: %d passed, %d failed\n", passed, failed }' target/test.log
[ -n "${SLUICE_TEST_IMAGE:-}" ] || echo "sluice: the container tests were skipped (see the container: lines above)"
[ "$status" = 0 ] && echo "sluice: benchmarks ok (quick mode)"
exit "$status"
